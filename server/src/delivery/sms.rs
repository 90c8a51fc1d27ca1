//! SMS delivery through a Twilio-style HTTPS API: a form post to
//! `{base}/2010-04-01/Accounts/{sid}/Messages.json` with basic auth.

use std::time::Duration;

use anyhow::{Context, bail};
use codeedex_schema::contact::PhoneNumber;
use secrecy::{ExposeSecret, SecretString};

use crate::configuration::SmsSettings;

/// Sends code messages through the provider. `Debug` omits the token.
pub(crate) struct SmsSender {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: SecretString,
    from: String,
    ttl_minutes: u64,
}

impl std::fmt::Debug for SmsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsSender")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SmsSender {
    /// Builds the HTTP client.
    pub(crate) fn new(settings: &SmsSettings, ttl_minutes: u64) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the SMS HTTP client")?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            settings.api_base.trim_end_matches('/'),
            settings.account_sid
        );
        Ok(Self {
            client,
            url,
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            from: settings.from.clone(),
            ttl_minutes,
        })
    }

    /// Sends one code message.
    pub(crate) async fn send(&self, to: &PhoneNumber, code: &SecretString) -> anyhow::Result<()> {
        let body = format!(
            "Your CodeeDex code is {}. It expires in {} minutes.",
            code.expose_secret(),
            self.ttl_minutes
        );
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&[
                ("To", to.as_str()),
                ("From", self.from.as_str()),
                ("Body", body.as_str()),
            ])
            .send()
            .await
            .context("cannot reach the SMS provider")?;
        let status = response.status();
        if !status.is_success() {
            bail!("the SMS provider answered {status}");
        }
        Ok(())
    }
}
