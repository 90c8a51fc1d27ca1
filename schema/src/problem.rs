//! Errors as RFC 9457 problem details, with a stable machine-readable code.
//!
//! Clients act on `code`; `title` and `detail` are for people and may change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The stable codes a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or query is malformed: bad JSON, wrong types, unknown or missing fields.
    InvalidRequest,
    /// The email address or phone number cannot be used.
    InvalidIdentifier,
    /// The one-time code is wrong, expired, used, or was never issued. One answer for all.
    InvalidCode,
    /// Too many requests; wait for the number of seconds in `Retry-After`.
    RateLimited,
    /// Too many failed codes for this identifier; wait before trying again.
    TooManyAttempts,
    /// No usable credentials: missing, malformed, forged, or for a session that ended.
    Unauthorized,
    /// The access token was valid but has expired; refresh it.
    TokenExpired,
    /// The refresh token cannot be used: unknown, expired, revoked, or reused.
    InvalidRefreshToken,
    /// The resource does not exist or is not yours.
    NotFound,
    /// The request body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// The request body is not `application/json`.
    UnsupportedMediaType,
    /// The HTTP method is not allowed on this resource.
    MethodNotAllowed,
    /// The server cannot deliver the code right now.
    DeliveryFailed,
    /// The account's document or storage quota is used up; delete tasks to make room.
    QuotaExceeded,
    /// The server is busy (many devices reconnecting at once, or full);
    /// try again after the number of seconds in `Retry-After`.
    ServerBusy,
    /// The server's storage is unavailable (its disk failed); nothing was
    /// changed durably. Retry after `Retry-After` seconds: the server
    /// recovers by itself.
    StorageUnavailable,
    /// Something went wrong on the server; the cause is in its log.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidIdentifier => "invalid_identifier",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidRefreshToken => "invalid_refresh_token",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::DeliveryFailed => "delivery_failed",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:codeedex:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// The stable machine-readable code.
    pub code: ErrorCode,
}

impl Problem {
    /// A problem with the given status, code, title and optional detail.
    pub fn new(status: u16, code: ErrorCode, title: &str, detail: Option<String>) -> Self {
        Self {
            problem_type: format!("urn:codeedex:problem:{}", code.as_str()),
            title: title.to_owned(),
            status,
            detail,
            code,
        }
    }
}
