//! The authenticated caller: an extractor that checks the bearer token and
//! that its session still exists, on every request.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use codeedex_schema::problem::ErrorCode;

use super::AppState;
use super::problem::{ProblemParts, endpoint_error};
use crate::auth::{AuthenticateError, Authenticated};

/// A request whose bearer token passed every check.
#[derive(Debug, Clone)]
pub struct Caller(pub Authenticated);

/// Why a request is not authenticated. Everything except expiry is one answer.
#[derive(thiserror::Error)]
pub enum CallerError {
    /// No usable token, or one for an ended session.
    #[error("not authenticated")]
    Unauthorized,
    /// The token expired; refresh it.
    #[error("access token expired")]
    Expired,
    /// The store failed.
    #[error("cannot check the session")]
    Unexpected(#[source] anyhow::Error),
}

impl CallerError {
    fn parts(&self) -> ProblemParts {
        match self {
            CallerError::Unauthorized => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "Not authenticated",
            ),
            CallerError::Expired => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::TokenExpired,
                "Access token expired",
            )
            .detail("refresh the access token with POST /v1/auth/refresh"),
            CallerError::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(CallerError);

/// The bearer token of a request, if it has exactly one well-formed one.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Checking a session reads the store, which may be across the
        // network; the extractor reads what it needs from the request first,
        // so that the future owns its inputs.
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req).map(str::to_owned);
        Box::pin(async move {
            let result = async {
                let state = state.ok_or_else(|| {
                    CallerError::Unexpected(anyhow::anyhow!("application state missing"))
                })?;
                let token = token.ok_or(CallerError::Unauthorized)?;
                state
                    .auth
                    .authenticate(&token, chrono::Utc::now())
                    .await
                    .map(Caller)
                    .map_err(|e| match e {
                        AuthenticateError::Expired => CallerError::Expired,
                        AuthenticateError::Invalid => CallerError::Unauthorized,
                        AuthenticateError::Store(e) => CallerError::Unexpected(e.into()),
                    })
            }
            .await;
            result.map_err(Into::into)
        })
    }
}
