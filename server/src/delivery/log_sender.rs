//! The development sender: prints the identifier and the code to the log.
//!
//! This is the one place where a code is written out on purpose, and the
//! production profile refuses to start with it.

use codeedex_schema::contact::Contact;
use secrecy::{ExposeSecret, SecretString};

/// Prints codes to the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogSender;

impl LogSender {
    /// Writes one line naming the identifier and the code.
    pub(crate) fn send(&self, contact: &Contact, code: &SecretString) {
        tracing::warn!(
            target: "codeedex_server::dev_otp",
            "development sign-in code for {contact}: {}",
            code.expose_secret()
        );
    }
}
