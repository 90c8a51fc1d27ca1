//! The records the store keeps. They are the on-disk format: change them only
//! together with [`super::FORMAT_VERSION`].

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::AuditKind;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id.
    pub id: UserId,
    /// The contact key the user signs in with (`email:…` or `phone:…`).
    pub contact_key: String,
    /// When the first sign-in created the account.
    pub created_at: DateTime<Utc>,
    /// The document listing the user's tasks, once created.
    #[serde(default)]
    pub root_document_id: Option<DocumentId>,
}

/// The code state of one identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OtpRecord {
    /// The live code, if any.
    pub(crate) pending: Option<PendingCode>,
    /// When codes were sent in the last 24 hours (for cooldown and caps).
    pub(crate) sends: Vec<DateTime<Utc>>,
    /// When wrong codes were entered in the last 24 hours, across resends.
    pub(crate) failures: Vec<DateTime<Utc>>,
}

/// A code waiting to be entered. Only its keyed hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingCode {
    /// HMAC-SHA256 of the code, bound to its purpose and identifier, in hex.
    pub(crate) hash: String,
    /// When it was issued.
    pub(crate) issued_at: DateTime<Utc>,
    /// Wrong attempts against this code.
    pub(crate) attempts: u32,
}

/// One signed-in device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's id.
    pub id: SessionId,
    /// Whose session it is.
    pub user_id: UserId,
    /// The device name given at sign-in.
    pub device_name: Option<String>,
    /// When the session began.
    pub created_at: DateTime<Utc>,
    /// When it was last refreshed (for the inactivity limit).
    pub last_used_at: DateTime<Utc>,
    /// The generation of the current refresh token; 0 for the first.
    pub generation: u64,
    /// When the current refresh token was issued.
    pub rotated_at: DateTime<Utc>,
}

/// What a refresh-token hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefreshEntry {
    /// The session.
    pub(crate) session_id: SessionId,
    /// Which generation of the chain this token was.
    pub(crate) generation: u64,
}

/// One audit event. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuditRecord {
    /// When.
    pub(crate) at: DateTime<Utc>,
    /// What.
    pub(crate) kind: AuditKind,
    /// Which session, if any.
    pub(crate) session_id: Option<SessionId>,
    /// The client address.
    pub(crate) ip: Option<String>,
    /// The client's User-Agent, truncated to 200 characters.
    pub(crate) user_agent: Option<String>,
}
