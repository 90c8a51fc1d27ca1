//! Delivery of one-time codes, behind one interface.
//!
//! `CodeDelivery::deliver` routes by identifier kind: email goes to the log
//! sender or to SMTP, phone numbers to the log sender or to an SMS provider's
//! HTTPS API. The code is a [`SecretString`] all the way to the transport.

mod log_sender;
mod sms;
mod smtp;

use codeedex_schema::contact::Contact;
use secrecy::SecretString;

use crate::configuration::{DeliverySettings, EmailSenderKind, PhoneSenderKind};

pub(crate) use log_sender::LogSender;
pub(crate) use sms::SmsSender;
pub(crate) use smtp::SmtpSender;

/// Why a code could not be handed to its transport.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The SMTP conversation failed.
    #[error("SMTP delivery failed")]
    Smtp(#[source] anyhow::Error),
    /// The SMS provider refused or could not be reached.
    #[error("SMS delivery failed")]
    Sms(#[source] anyhow::Error),
}

enum EmailChannel {
    Log(LogSender),
    Smtp(Box<SmtpSender>),
}

enum PhoneChannel {
    Log(LogSender),
    Sms(SmsSender),
}

/// Routes codes to the configured senders.
pub struct CodeDelivery {
    email: EmailChannel,
    phone: PhoneChannel,
}

impl std::fmt::Debug for CodeDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeDelivery").finish_non_exhaustive()
    }
}

impl CodeDelivery {
    /// Builds the senders the settings ask for.
    pub fn from_settings(
        settings: &DeliverySettings,
        code_ttl_minutes: u64,
    ) -> anyhow::Result<Self> {
        let email = match settings.email {
            EmailSenderKind::Log => EmailChannel::Log(LogSender),
            EmailSenderKind::Smtp => {
                EmailChannel::Smtp(Box::new(SmtpSender::new(&settings.smtp, code_ttl_minutes)?))
            }
        };
        let phone = match settings.phone {
            PhoneSenderKind::Log => PhoneChannel::Log(LogSender),
            PhoneSenderKind::Sms => {
                PhoneChannel::Sms(SmsSender::new(&settings.sms, code_ttl_minutes)?)
            }
        };
        Ok(Self { email, phone })
    }

    /// Sends `code` to `contact`.
    pub(crate) async fn deliver(
        &self,
        contact: &Contact,
        code: &SecretString,
    ) -> Result<(), DeliveryError> {
        match (contact, &self.email, &self.phone) {
            (Contact::Email(_), EmailChannel::Log(log), _)
            | (Contact::Phone(_), _, PhoneChannel::Log(log)) => {
                log.send(contact, code);
                Ok(())
            }
            (Contact::Email(address), EmailChannel::Smtp(smtp), _) => {
                smtp.send(address, code).await.map_err(DeliveryError::Smtp)
            }
            (Contact::Phone(number), _, PhoneChannel::Sms(sms)) => {
                sms.send(number, code).await.map_err(DeliveryError::Sms)
            }
        }
    }
}
