//! The browser session: sign-in, refresh and logout for the web app, where
//! the refresh token lives in an `HttpOnly` cookie and never in a body that
//! page JavaScript could read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{TokenPair, UserView};
use crate::id::SessionId;

/// The header every browser-session request must carry. Another site can
/// neither send it cross-origin without a CORS preflight (which the server
/// never grants) nor read the answer, so together with the `SameSite=Strict`
/// cookie and the Origin check it stops cross-site request forgery.
pub const CSRF_HEADER: &str = "x-codeedex-csrf";

/// The name of the cookie that holds the refresh token.
pub const REFRESH_COOKIE: &str = "codeedex_refresh";

/// An access token for the page to keep in memory; the refresh token went
/// into the cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BrowserTokens {
    /// A JWT to send as `Authorization: Bearer` (or `?access_token=` on the sync socket).
    pub access_token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// The session these tokens belong to.
    pub session_id: SessionId,
}

impl BrowserTokens {
    /// The pair without its refresh token, which the caller puts in the cookie.
    pub fn without_refresh(pair: &TokenPair) -> Self {
        Self {
            access_token: pair.access_token.clone(),
            token_type: pair.token_type.clone(),
            expires_in: pair.expires_in,
            expires_at: pair.expires_at,
            session_id: pair.session_id,
        }
    }
}

/// The answer to a browser sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BrowserSignIn {
    /// The access token.
    #[serde(flatten)]
    pub tokens: BrowserTokens,
    /// The signed-in user.
    pub user: UserView,
    /// True when this verification created the account.
    pub new_user: bool,
}
