//! Email delivery over SMTP with lettre.

use std::time::Duration;

use anyhow::Context;
use codeedex_schema::contact::EmailAddress;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::configuration::{SmtpSettings, SmtpTls};

/// Sends code mails through one SMTP relay.
pub(crate) struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    ttl_minutes: u64,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Builds the transport; connections are opened per message, from a pool.
    pub(crate) fn new(settings: &SmtpSettings, ttl_minutes: u64) -> anyhow::Result<Self> {
        // `builder_dangerous` only means "no TLS unless set": every mode
        // but `none` sets it, with certificate checks on.
        let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host);
        let builder = match settings.tls {
            SmtpTls::None => builder,
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters(settings)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls_parameters(settings)?)),
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(Duration::from_secs(10)));
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        let from = settings
            .from
            .parse()
            .context("smtp_from is not a mailbox")?;
        Ok(Self {
            transport: builder.build(),
            from,
            ttl_minutes,
        })
    }

    /// Sends one code mail.
    pub(crate) async fn send(&self, to: &EmailAddress, code: &SecretString) -> anyhow::Result<()> {
        let to: Mailbox = to.as_str().parse().context("recipient is not a mailbox")?;
        let body = format!(
            "Your CodeeDex sign-in code is {code}\n\n\
             It expires in {ttl} minutes and works once. If you did not ask for it, ignore this mail.\n",
            code = code.expose_secret(),
            ttl = self.ttl_minutes,
        );
        let message = Message::builder()
            .message_id(None)
            .from(self.from.clone())
            .to(to)
            .subject("Your CodeeDex sign-in code")
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .context("cannot build the code mail")?;
        self.transport
            .send(message)
            .await
            .context("the SMTP server did not accept the code mail")?;
        Ok(())
    }
}

/// Certificate checks for the SMTP host: the system's authorities, plus
/// those of `smtp_ca_file`. The certificate must name the host.
fn tls_parameters(settings: &SmtpSettings) -> anyhow::Result<TlsParameters> {
    let mut parameters = TlsParameters::builder(settings.host.clone());
    if let Some(pem) = &settings.extra_roots {
        let roots = Certificate::from_pem(pem).context("smtp_ca_file holds no certificate")?;
        parameters = parameters.add_root_certificate(roots);
    }
    parameters
        .build_rustls()
        .context("cannot set up TLS for the SMTP host")
}
