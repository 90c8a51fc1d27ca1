//! The one error type of the public API.

use codeedex_schema::problem::ErrorCode;
use codeedex_schema::task::TaskError;

use crate::store::StoreError;

/// Why a client operation failed. Every message is one line, fit to show.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A task field is out of limits.
    #[error("{0}")]
    InvalidTask(#[from] TaskError),
    /// Input other than task fields is unusable (a date, an id, an email).
    #[error("{0}")]
    InvalidInput(String),
    /// No task has this id (or id prefix).
    #[error("no task matches {0:?}")]
    NotFound(String),
    /// More than one task starts with this prefix.
    #[error("{prefix:?} matches {count} tasks; give more characters")]
    AmbiguousId {
        /// The prefix given.
        prefix: String,
        /// How many tasks it matches.
        count: usize,
    },
    /// The operation needs a signed-in account.
    #[error("not logged in (run `codeedex login`)")]
    NotLoggedIn,
    /// The session ended (logged out elsewhere, or the refresh token was refused).
    #[error("the session has ended; log in again")]
    SessionEnded,
    /// This data directory belongs to another account.
    #[error("this data directory belongs to {0}; use another data directory for this account")]
    OtherAccount(String),
    /// The server cannot be reached.
    #[error("the server is unreachable: {0}")]
    Offline(String),
    /// The server refused the request.
    #[error("{message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The problem's stable code, when the server sent one.
        code: Option<ErrorCode>,
        /// What the server said.
        message: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The token store failed.
    #[error("token store: {0}")]
    TokenStore(String),
    /// Waiting for the server took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A bug or a corrupt document.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// Whether the failure is only that the server could not be reached.
    pub fn is_offline(&self) -> bool {
        matches!(self, ClientError::Offline(_) | ClientError::Timeout(_))
    }

    /// The problem code the server answered with, if any.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => *code,
            _ => None,
        }
    }
}

impl From<codeedex_schema::task_document::TaskDocumentError> for ClientError {
    fn from(e: codeedex_schema::task_document::TaskDocumentError) -> Self {
        ClientError::Internal(e.to_string())
    }
}
