//! The signed-in user: `/v1/me`, `/v1/sessions`, `/v1/audit-events`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use codeedex_schema::api::auth::{AuditEventList, SessionList, UserView};
use codeedex_schema::id::SessionId;
use codeedex_schema::problem::{ErrorCode, Problem};

use super::AppState;
use super::caller::Caller;
use super::origin::RequestOrigin;
use super::problem::{ProblemParts, endpoint_error, method_not_allowed};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/me")
            .route(web::get().to(me))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/v1/sessions")
            .route(web::get().to(sessions))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/v1/sessions/{id}")
            .route(web::delete().to(revoke_session))
            .default_service(method_not_allowed("DELETE")),
    )
    .service(
        web::resource("/v1/audit-events")
            .route(web::get().to(audit_events))
            .default_service(method_not_allowed("GET")),
    );
}

/// Errors of the account endpoints.
#[derive(thiserror::Error)]
pub enum AccountError {
    /// The session does not exist or is not the caller's.
    #[error("no such session")]
    NotFound,
    /// Anything on our side.
    #[error("cannot read the account")]
    Unexpected(#[source] anyhow::Error),
}

impl AccountError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::NotFound => {
                ProblemParts::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "Not found")
            }
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(AccountError);

fn unexpected(e: impl Into<anyhow::Error>) -> AccountError {
    AccountError::Unexpected(e.into())
}

/// The signed-in user, with the root document that lists their tasks
/// (created on first use).
#[utoipa::path(get, path = "/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = Problem)))]
pub async fn me(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, AccountError> {
    let root = state
        .tasks
        .root_document(caller.0.user_id, Utc::now())
        .await
        .map_err(unexpected)?;
    let mut user = state
        .auth
        .me(&caller.0)
        .await
        .map_err(unexpected)?
        .ok_or(AccountError::NotFound)?;
    user.root_document_id = Some(root);
    Ok(HttpResponse::Ok().json(user))
}

/// The user's live sessions.
#[utoipa::path(get, path = "/v1/sessions", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = Problem)))]
pub async fn sessions(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, AccountError> {
    let sessions = state
        .auth
        .sessions(&caller.0, Utc::now())
        .await
        .map_err(unexpected)?;
    Ok(HttpResponse::Ok().json(SessionList { sessions }))
}

/// Revokes one of the user's sessions (sign a device out).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = SessionId, Path, description = "The session to revoke")),
    responses((status = 204, description = "Revoked"), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_session(
    state: web::Data<AppState>,
    caller: Caller,
    origin: RequestOrigin,
    id: web::Path<SessionId>,
) -> Result<HttpResponse, AccountError> {
    if state
        .auth
        .revoke_session(&caller.0, *id, &origin.0, Utc::now())
        .await
        .map_err(unexpected)?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AccountError::NotFound)
    }
}

/// The user's newest auth audit events.
#[utoipa::path(get, path = "/v1/audit-events", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = AuditEventList), (status = 401, body = Problem)))]
pub async fn audit_events(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, AccountError> {
    let events = state
        .auth
        .audit_events(&caller.0)
        .await
        .map_err(unexpected)?;
    Ok(HttpResponse::Ok().json(AuditEventList { events }))
}
