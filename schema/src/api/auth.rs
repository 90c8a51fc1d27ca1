//! Sign-in with a one-time code, token refresh, sessions and audit events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::contact::{Contact, ContactError, EmailAddress, PhoneNumber};
use crate::id::{DocumentId, SessionId, UserId};

/// The identifier part shared by the code request and the verification.
fn contact_from(email: Option<&str>, phone: Option<&str>) -> Result<Contact, ContactError> {
    match (email, phone) {
        (Some(e), None) => EmailAddress::parse(e).map(Contact::Email),
        (None, Some(p)) => PhoneNumber::parse(p).map(Contact::Phone),
        (None, None) => Err(ContactError::Empty("email or phone")),
        (Some(_), Some(_)) => Err(ContactError::InvalidEmail(
            "give either email or phone, not both".into(),
        )),
    }
}

/// `POST /v1/auth/otp`: send a one-time code to an email address or phone number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OtpRequest {
    /// The email address to send the code to. Give this or `phone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The phone number (international format) to send the code to. Give this or `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl OtpRequest {
    /// The normalised identifier, or why it cannot be used.
    pub fn contact(&self) -> Result<Contact, ContactError> {
        contact_from(self.email.as_deref(), self.phone.as_deref())
    }
}

/// The answer to a code request. Identical whether or not an account exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OtpAccepted {
    /// Always `"sent"` when the request was accepted.
    pub status: String,
    /// How long a code stays valid, in seconds.
    pub expires_in: u64,
    /// How long to wait before asking for another code, in seconds.
    pub resend_after: u64,
}

/// `POST /v1/auth/verify`: exchange a one-time code for tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The email address the code was sent to. Give this or `phone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The phone number the code was sent to. Give this or `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The code, as received.
    pub code: String,
    /// A name for this device, shown in the session list (at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

impl VerifyRequest {
    /// The longest device name kept; longer names are refused.
    pub const MAX_DEVICE_NAME: usize = DeviceName::MAX_CHARS;

    /// The device name, trimmed; `None` when absent or blank.
    pub fn device_name(&self) -> Result<Option<DeviceName>, DeviceNameError> {
        DeviceName::parse(self.device_name.as_deref().unwrap_or(""))
    }

    /// The normalised identifier, or why it cannot be used.
    pub fn contact(&self) -> Result<Contact, ContactError> {
        contact_from(self.email.as_deref(), self.phone.as_deref())
    }
}

/// The name a device gives itself at sign-in, shown in the session list:
/// trimmed, at most [`DeviceName::MAX_CHARS`] characters, no control
/// characters (it is printed in lists and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName(String);

/// Why a device name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device_name must be at most {max} characters without control characters", max = DeviceName::MAX_CHARS)]
pub struct DeviceNameError;

impl DeviceName {
    /// The longest device name kept, in characters.
    pub const MAX_CHARS: usize = 64;

    /// The name in `text`, trimmed: `None` when blank, an error when too
    /// long or when it holds a control character.
    pub fn parse(text: &str) -> Result<Option<Self>, DeviceNameError> {
        let name = text.trim();
        if name.is_empty() {
            return Ok(None);
        }
        if name.chars().count() > Self::MAX_CHARS || name.chars().any(char::is_control) {
            return Err(DeviceNameError);
        }
        Ok(Some(Self(name.to_owned())))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// `POST /v1/auth/refresh`: exchange a refresh token for a new pair.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last sign-in or refresh.
    pub refresh_token: String,
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogoutScope {
    /// The session of the token used for this request.
    This,
    /// Every session of the user except this one.
    Others,
    /// Every session of the user.
    All,
}

/// `POST /v1/auth/logout`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Which sessions to end; `this` when absent.
    #[serde(default = "default_scope")]
    pub scope: LogoutScope,
}

fn default_scope() -> LogoutScope {
    LogoutScope::This
}

/// How many sessions a logout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogoutResponse {
    /// The number of sessions ended.
    pub sessions_ended: usize,
}

/// A new access token and refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    /// A JWT to send as `Authorization: Bearer`.
    pub access_token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// An opaque token for `POST /v1/auth/refresh`. Single use: each refresh returns a new one.
    pub refresh_token: String,
    /// The session these tokens belong to.
    pub session_id: SessionId,
}

/// The answer to a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignInResponse {
    /// The tokens.
    #[serde(flatten)]
    pub tokens: TokenPair,
    /// The signed-in user.
    pub user: UserView,
    /// True when this verification created the account.
    pub new_user: bool,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// The user's id.
    pub id: UserId,
    /// The email address the user signs in with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The phone number the user signs in with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// The user's root document, listing their task documents, for automerge-repo clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_document_id: Option<DocumentId>,
}

/// One signed-in device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The session's id.
    pub id: SessionId,
    /// The name given at sign-in.
    pub device_name: Option<String>,
    /// When the session began.
    pub created_at: DateTime<Utc>,
    /// When the session was last refreshed.
    pub last_used_at: DateTime<Utc>,
    /// When the session ends if it is not used before then.
    pub expires_at: DateTime<Utc>,
    /// True for the session of the token used to ask.
    pub current: bool,
}

/// `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// The user's live sessions, newest first.
    pub sessions: Vec<SessionView>,
}

/// What happened in an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A code was requested for the user's identifier.
    CodeRequested,
    /// A code was handed to the delivery provider.
    CodeSent,
    /// A wrong code was entered.
    CodeFailed,
    /// Too many wrong codes: the identifier is locked for a while.
    Locked,
    /// A sign-in created a session.
    Login,
    /// A session's tokens were refreshed.
    Refresh,
    /// An old refresh token was presented again; the session was revoked.
    ReuseDetected,
    /// A session ended by logout.
    Logout,
    /// A session was revoked from another device.
    SessionRevoked,
}

/// One entry of the user's audit trail. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: AuditKind,
    /// The session concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The client address, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The client's User-Agent, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// `GET /v1/audit-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEventList {
    /// The newest events first, at most 200.
    pub events: Vec<AuditEventView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_trimmed_bounded_and_printable() {
        assert_eq!(DeviceName::parse("  "), Ok(None));
        assert_eq!(
            DeviceName::parse(" ann's laptop ")
                .unwrap()
                .unwrap()
                .as_str(),
            "ann's laptop"
        );
        assert!(DeviceName::parse(&"é".repeat(64)).unwrap().is_some());
        assert_eq!(DeviceName::parse(&"é".repeat(65)), Err(DeviceNameError));
        assert_eq!(DeviceName::parse("a\u{7}b"), Err(DeviceNameError));
    }

    #[test]
    fn requests_reject_unknown_fields() {
        let err = serde_json::from_str::<OtpRequest>(r#"{"email":"a@b.co","admin":true}"#);
        assert!(err.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn exactly_one_identifier_is_required() {
        let both: OtpRequest =
            serde_json::from_str(r#"{"email":"a@b.co","phone":"+14155552671"}"#).unwrap();
        assert!(both.contact().is_err());
        let none: OtpRequest = serde_json::from_str("{}").unwrap();
        assert!(none.contact().is_err());
    }

    #[test]
    fn logout_scope_defaults_to_this_device() {
        let r: LogoutRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.scope, LogoutScope::This);
        assert!(serde_json::from_str::<LogoutRequest>(r#"{"scope":"everyone"}"#).is_err());
    }
}
