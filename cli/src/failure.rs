//! How a command fails: one line on standard error and an exit code that
//! says what kind of failure it was, so that scripts can tell them apart.

use codeedex_client_core::ClientError;

/// A failure: the message and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Bad usage: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotLoggedIn | ClientError::SessionEnded => 3,
            ClientError::Offline(_) | ClientError::Timeout(_) => 4,
            ClientError::NotFound(_) | ClientError::AmbiguousId { .. } => 5,
            ClientError::InvalidTask(_) | ClientError::InvalidInput(_) => 2,
            _ => 1,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }
}

/// Says something on standard error (never mixed into `--json` output).
pub(crate) fn note(text: &str) {
    eprintln!("{text}");
}
