//! Signing in and out, the session on start-up, and the account's
//! sessions.

use std::ffi::c_char;

use codeedex_client_core::{
    AuthStatus, Client, ClientError, LogoutScope, SessionId, SignInIdentifier, UserView,
};
use serde::{Deserialize, Serialize};

use crate::client::{CdxClient, handle};
use crate::status::{CdxStatus, Failure, call};
use crate::strings::{self, OutString};

/// `cdx_sign_out` scope: this device only.
pub const CDX_SIGN_OUT_THIS_DEVICE: i32 = 0;
/// `cdx_sign_out` scope: every other device of the account.
pub const CDX_SIGN_OUT_OTHERS: i32 = 1;
/// `cdx_sign_out` scope: every device, this one included.
pub const CDX_SIGN_OUT_ALL: i32 = 2;

/// `{"email": "..."}` or `{"phone": "+..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identifier {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
}

impl Identifier {
    fn parse(self) -> Result<SignInIdentifier, Failure> {
        match (self.email, self.phone) {
            (Some(email), None) => Ok(SignInIdentifier::Email(email)),
            (None, Some(phone)) => Ok(SignInIdentifier::Phone(phone)),
            _ => Err(Failure::invalid(
                "the identifier needs exactly one of \"email\" and \"phone\"",
            )),
        }
    }
}

/// What `cdx_auth_status` and `cdx_auth_check` answer.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum SessionState {
    SignedIn { account: UserView },
    SignedOut,
}

fn local_state(client: &Client) -> SessionState {
    match (client.auth_status(), client.account()) {
        (AuthStatus::LoggedIn { .. }, Some(account)) => SessionState::SignedIn { account },
        _ => SessionState::SignedOut,
    }
}

/// Whether someone is signed in on this device, without the network: an
/// app calls it on start-up to skip the sign-in screen. `*out_json`:
/// `{"state": "signed_in", "account": {"id", "email", "phone",
/// "created_at", "root_document_id"}}` or `{"state": "signed_out"}`.
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_auth_status(
    client: *const CdxClient,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        out.put_json(&local_state(&open.client))
    })
}

/// Confirms the stored session with the server, refreshing the access
/// token if it has expired: the same answer as `cdx_auth_status`, but
/// `signed_out` also when the server refused the refresh token (the session
/// ended elsewhere; an `auth_status` event says so too).
/// `CDX_STATUS_OFFLINE` when the server cannot be reached: the local answer
/// then stands.
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_auth_check(
    client: *const CdxClient,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        let state = if matches!(open.client.auth_status(), AuthStatus::LoggedOut) {
            SessionState::SignedOut
        } else {
            match open.block_on(open.client.refresh_account()) {
                Ok(account) => SessionState::SignedIn { account },
                Err(ClientError::SessionEnded | ClientError::NotLoggedIn) => {
                    SessionState::SignedOut
                }
                Err(e) => return Err(e.into()),
            }
        };
        out.put_json(&state)
    })
}

/// Asks the server to send a sign-in code. `identifier_json`:
/// `{"email": "ann@example.com"}` or `{"phone": "+14155552671"}`.
/// `*out_json`: `{"expires_in": seconds, ...}` (the REST API's answer).
///
/// # Safety
/// `client` is NULL or a live handle; `identifier_json` is NULL or a
/// NUL-terminated string; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_request_code(
    client: *const CdxClient,
    identifier_json: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open, identifier) = unsafe {
            (
                OutString::new(out_json, "out_json")?,
                handle(client)?,
                strings::json::<Identifier>(identifier_json, "identifier_json")?,
            )
        };
        let identifier = identifier.parse()?;
        let accepted = open.block_on(open.client.request_code(&identifier))?;
        out.put_json(&accepted)
    })
}

/// Signs in with the code the user received for `identifier_json` (as for
/// `cdx_request_code`). Keeps the tokens in the token store and emits an
/// `auth_status` event. `*out_json`: the account, as in `cdx_auth_status`.
/// A data directory belongs to one account: another account's code gives
/// `CDX_STATUS_OTHER_ACCOUNT`.
///
/// # Safety
/// `client` is NULL or a live handle; `identifier_json` and `code` are NULL
/// or NUL-terminated strings; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_verify_code(
    client: *const CdxClient,
    identifier_json: *const c_char,
    code: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open, identifier, code) = unsafe {
            (
                OutString::new(out_json, "out_json")?,
                handle(client)?,
                strings::json::<Identifier>(identifier_json, "identifier_json")?,
                strings::text(code, "code")?,
            )
        };
        let identifier = identifier.parse()?;
        let account = open.block_on(open.client.verify_code(&identifier, code))?;
        out.put_json(&SessionState::SignedIn { account })
    })
}

#[derive(Debug, Serialize)]
struct SignedOut {
    /// How many sessions the server ended.
    sessions_ended: usize,
    /// Whether the server was told (signing this device out works offline).
    server_told: bool,
}

/// Signs out: `scope` is `CDX_SIGN_OUT_THIS_DEVICE`, `CDX_SIGN_OUT_OTHERS`
/// or `CDX_SIGN_OUT_ALL`. Signing this device out (alone or with all)
/// stops sync and forgets the tokens here even when the server cannot be
/// told; the local tasks stay. `*out_json`: `{"sessions_ended": n,
/// "server_told": true|false}`.
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sign_out(
    client: *const CdxClient,
    scope: i32,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        let scope = match scope {
            CDX_SIGN_OUT_THIS_DEVICE => LogoutScope::This,
            CDX_SIGN_OUT_OTHERS => LogoutScope::Others,
            CDX_SIGN_OUT_ALL => LogoutScope::All,
            other => return Err(Failure::invalid(format!("{other} is not a sign-out scope"))),
        };
        let outcome = match open.block_on(open.client.logout(scope)) {
            Ok(ended) => SignedOut {
                sessions_ended: ended,
                server_told: true,
            },
            // Signed out here all the same; only the server does not know.
            Err(e) if e.is_offline() && scope != LogoutScope::Others => SignedOut {
                sessions_ended: 0,
                server_told: false,
            },
            Err(e) => return Err(e.into()),
        };
        out.put_json(&outcome)
    })
}

/// The account's signed-in devices. `*out_json`: an array of `{"id",
/// "device_name", "created_at", "last_used_at", "current"}`, newest first
/// (`current` is this device).
///
/// # Safety
/// `client` is NULL or a live handle; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_sessions(
    client: *const CdxClient,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        let sessions = open.block_on(open.client.sessions())?;
        out.put_json(&sessions)
    })
}

/// Ends one session of the account by its id (from `cdx_sessions`),
/// signing that device out. Revoking this device's own session signs it
/// out here as `cdx_sign_out` does. An unknown id is `CDX_STATUS_NOT_FOUND`.
///
/// # Safety
/// `client` is NULL or a live handle; `session_id` is NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_revoke_session(
    client: *const CdxClient,
    session_id: *const c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (open, text) = unsafe { (handle(client)?, strings::text(session_id, "session_id")?) };
        let id: SessionId = text
            .trim()
            .parse()
            .map_err(|_| Failure::invalid(format!("{text:?} is not a session id")))?;
        open.block_on(open.client.revoke_session(id))?;
        Ok(())
    })
}
