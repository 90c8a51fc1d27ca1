//! What every call returns ([`CdxStatus`]) and the per-thread last error.
//!
//! Every entry point runs its body through [`call`], which catches panics,
//! turns a [`Failure`] into its status and records its message for
//! `cdx_last_error` on the calling thread.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use codeedex_client_core::ClientError;

/// The outcome of a call. Every function except `cdx_abi_version`,
/// `cdx_last_error` and `cdx_string_free` returns one.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdxStatus {
    /// The call succeeded.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// A JSON argument does not parse as JSON.
    InvalidJson = 3,
    /// An argument is well-formed but unusable: an unknown or missing JSON
    /// field, a task field out of its limits, an unknown scope, a bad id.
    InvalidInput = 4,
    /// No task (or session) matches the id.
    NotFound = 5,
    /// More than one task starts with the id prefix given.
    AmbiguousId = 6,
    /// Nobody is signed in, or the session has ended (the refresh token was
    /// refused): show the sign-in screen.
    NotSignedIn = 7,
    /// The data directory belongs to another account.
    OtherAccount = 8,
    /// The server cannot be reached. Local data is still there.
    Offline = 9,
    /// The server was reached but the operation did not finish in time.
    Timeout = 10,
    /// The server refused the request (a wrong or expired code, too many
    /// attempts, a quota); the last error says why.
    ServerRefused = 11,
    /// The local store or the token store failed (for example, another
    /// process has the data directory open).
    Storage = 12,
    /// The call is not allowed on this thread (closing a client, or
    /// replacing its callback, from inside its own event callback).
    WrongThread = 13,
    /// The library panicked; the panic was caught at the boundary. The
    /// client may be unusable: close it and open it again.
    Panic = 14,
    /// A bug or a corrupt document.
    Internal = 15,
}

/// A failed call: its status and a message fit to show or log.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: CdxStatus,
    pub message: String,
}

impl Failure {
    pub fn new(status: CdxStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn null(argument: &str) -> Self {
        Self::new(
            CdxStatus::NullArgument,
            format!("{argument} must not be NULL"),
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(CdxStatus::InvalidInput, message)
    }

    fn panic(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Self::new(CdxStatus::Panic, format!("the library panicked: {what}"))
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let status = match &e {
            ClientError::InvalidTask(_) | ClientError::InvalidInput(_) => CdxStatus::InvalidInput,
            ClientError::NotFound(_) => CdxStatus::NotFound,
            ClientError::AmbiguousId { .. } => CdxStatus::AmbiguousId,
            ClientError::NotLoggedIn | ClientError::SessionEnded => CdxStatus::NotSignedIn,
            ClientError::OtherAccount(_) => CdxStatus::OtherAccount,
            ClientError::Offline(_) => CdxStatus::Offline,
            ClientError::Timeout(_) => CdxStatus::Timeout,
            ClientError::Server {
                code: Some(codeedex_client_core::ErrorCode::NotFound),
                ..
            } => CdxStatus::NotFound,
            ClientError::Server { .. } => CdxStatus::ServerRefused,
            ClientError::Storage(_) | ClientError::TokenStore(_) => CdxStatus::Storage,
            ClientError::Internal(_) => CdxStatus::Internal,
        };
        // The server's stable problem code lets an app tell a wrong code
        // from a locked account without parsing prose.
        let message = match &e {
            ClientError::Server {
                status,
                code: Some(code),
                ..
            } => format!("{e} (HTTP {status}, {})", code.as_str()),
            ClientError::NotLoggedIn => "nobody is signed in".to_owned(),
            _ => e.to_string(),
        };
        Self::new(status, message)
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn set_last_error(message: Option<String>) {
    // During thread teardown the slot may be gone; there is no one left to
    // read it then.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = message);
}

/// The last failure's message on this thread, if the last call failed.
pub(crate) fn last_error() -> Option<String> {
    LAST_ERROR
        .try_with(|slot| slot.borrow().clone())
        .ok()
        .flatten()
}

/// Runs an entry point's body: a panic becomes [`CdxStatus::Panic`], a
/// failure its status, and the thread's last error says what happened
/// (cleared on success).
pub(crate) fn call(body: impl FnOnce() -> Result<(), Failure>) -> CdxStatus {
    let result = panic::catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(Failure::panic(payload)));
    match result {
        Ok(()) => {
            set_last_error(None);
            CdxStatus::Ok
        }
        Err(failure) => {
            set_last_error(Some(failure.message));
            failure.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = call(|| panic!("boom {}", 42));
        assert_eq!(status, CdxStatus::Panic);
        assert!(last_error().is_some_and(|m| m.contains("boom 42")));
        assert_eq!(call(|| Ok(())), CdxStatus::Ok);
        assert_eq!(last_error(), None);
    }

    #[test]
    fn client_errors_map_to_statuses() {
        let f = Failure::from(ClientError::Offline("refused".into()));
        assert_eq!(f.status, CdxStatus::Offline);
        let f = Failure::from(ClientError::Server {
            status: 400,
            code: Some(codeedex_client_core::ErrorCode::InvalidCode),
            message: "Invalid code".into(),
        });
        assert_eq!(f.status, CdxStatus::ServerRefused);
        assert!(f.message.contains("invalid_code"), "{}", f.message);
    }
}
