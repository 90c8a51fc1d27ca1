//! Why the sign-in and session service refuses: one enum per operation,
//! each with the one answer the HTTP layer gives for it.

use crate::store::StoreError;

/// Why a code request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestCodeError {
    /// Per-IP limit, cooldown or send cap.
    #[error("too many code requests")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The identifier is locked after too many wrong codes.
    #[error("identifier locked after too many wrong codes")]
    Locked {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why a verification failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    /// Wrong, expired, used or never-issued code: one answer for all.
    #[error("invalid code")]
    InvalidCode,
    /// Per-IP limit.
    #[error("too many verifications from this address")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// Too many wrong codes for this identifier.
    #[error("identifier locked after too many wrong codes")]
    Locked {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    /// Unknown, expired, revoked or reused token: one answer for all.
    #[error("invalid refresh token")]
    Invalid,
    /// Per-IP limit.
    #[error("too many refreshes from this address")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why an access token was refused, for the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthenticateError {
    /// Valid but expired: the client should refresh.
    #[error("access token expired")]
    Expired,
    /// Anything else, including a session that has ended.
    #[error("not authenticated")]
    Invalid,
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}
