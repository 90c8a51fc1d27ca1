//! `/v1/auth/*`: request a code, verify it, refresh, log out.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use codeedex_schema::api::auth::{
    LogoutRequest, LogoutResponse, OtpAccepted, OtpRequest, RefreshRequest, SignInResponse,
    VerifyRequest,
};
use codeedex_schema::contact::ContactError;
use codeedex_schema::problem::{ErrorCode, Problem};

use super::AppState;
use super::caller::Caller;
use super::json_body::JsonBody;
use super::origin::RequestOrigin;
use super::problem::{ProblemParts, endpoint_error, method_not_allowed};
use crate::auth::otp::OtpCode;
use crate::auth::{RefreshError, RequestCodeError, VerifyError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, route) in [
        ("/v1/auth/otp", web::post().to(request_code)),
        ("/v1/auth/verify", web::post().to(verify)),
        ("/v1/auth/refresh", web::post().to(refresh)),
        ("/v1/auth/logout", web::post().to(logout)),
    ] {
        cfg.service(
            web::resource(path)
                .route(route)
                .default_service(method_not_allowed("POST")),
        );
    }
}

fn no_store(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Errors of `POST /v1/auth/otp`.
#[derive(thiserror::Error)]
pub enum OtpEndpointError {
    /// The identifier is malformed.
    #[error("invalid identifier")]
    InvalidIdentifier(#[source] ContactError),
    /// Per-IP limit, cooldown or cap.
    #[error("rate limited")]
    RateLimited(u64),
    /// Locked after too many wrong codes.
    #[error("locked")]
    Locked(u64),
    /// Anything on our side.
    #[error("cannot send a code")]
    Unexpected(#[source] anyhow::Error),
}

impl OtpEndpointError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::InvalidIdentifier(e) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidIdentifier,
                "Invalid email or phone",
            )
            .detail(e.to_string()),
            Self::RateLimited(s) => ProblemParts::rate_limited(*s),
            Self::Locked(s) => too_many_attempts(*s),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(OtpEndpointError);

fn too_many_attempts(retry_after: u64) -> ProblemParts {
    ProblemParts::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyAttempts,
        "Too many wrong codes",
    )
    .detail("too many wrong codes were entered for this identifier; try again later")
    .retry_after(retry_after)
}

/// Sends a one-time code. The answer is the same whether or not an account exists.
#[utoipa::path(
    post, path = "/v1/auth/otp", tag = "auth", request_body = OtpRequest,
    responses(
        (status = 202, description = "A code is on its way", body = OtpAccepted),
        (status = 400, description = "Malformed body or identifier", body = Problem),
        (status = 429, description = "Rate limited; see Retry-After", body = Problem),
    )
)]
pub async fn request_code(
    state: web::Data<AppState>,
    origin: RequestOrigin,
    body: JsonBody<OtpRequest>,
) -> Result<HttpResponse, OtpEndpointError> {
    let contact = body
        .contact()
        .map_err(OtpEndpointError::InvalidIdentifier)?;
    let sent = state
        .auth
        .request_code(&contact, &origin.0, Utc::now())
        .await
        .map_err(|e| match e {
            RequestCodeError::RateLimited { retry_after } => {
                OtpEndpointError::RateLimited(retry_after)
            }
            RequestCodeError::Locked { retry_after } => OtpEndpointError::Locked(retry_after),
            RequestCodeError::Store(e) => OtpEndpointError::Unexpected(e.into()),
        })?;
    Ok(no_store(HttpResponse::Accepted().json(OtpAccepted {
        status: "sent".to_owned(),
        expires_in: sent.expires_in,
        resend_after: sent.resend_after,
    })))
}

/// Errors of `POST /v1/auth/verify`.
#[derive(thiserror::Error)]
pub enum VerifyEndpointError {
    /// The identifier is malformed.
    #[error("invalid identifier")]
    InvalidIdentifier(#[source] ContactError),
    /// The device name is too long or has control characters.
    #[error("invalid device name")]
    InvalidDeviceName,
    /// Wrong, expired, used or unknown code.
    #[error("invalid code")]
    InvalidCode,
    /// Per-IP limit.
    #[error("rate limited")]
    RateLimited(u64),
    /// Locked after too many wrong codes.
    #[error("locked")]
    Locked(u64),
    /// Anything on our side.
    #[error("cannot verify the code")]
    Unexpected(#[source] anyhow::Error),
}

impl VerifyEndpointError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::InvalidIdentifier(e) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidIdentifier,
                "Invalid email or phone",
            )
            .detail(e.to_string()),
            Self::InvalidDeviceName => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "Invalid request body",
            )
            .detail(format!(
                "device_name must be at most {} characters without control characters",
                VerifyRequest::MAX_DEVICE_NAME
            )),
            Self::InvalidCode => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidCode,
                "Invalid code",
            )
            .detail("the code is wrong, expired or already used; request a new one if needed"),
            Self::RateLimited(s) => ProblemParts::rate_limited(*s),
            Self::Locked(s) => too_many_attempts(*s),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(VerifyEndpointError);

/// Exchanges a one-time code for tokens. The first sign-in creates the account.
#[utoipa::path(
    post, path = "/v1/auth/verify", tag = "auth", request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in", body = SignInResponse),
        (status = 400, description = "Wrong, expired or used code, or a malformed body", body = Problem),
        (status = 429, description = "Rate limited or locked; see Retry-After", body = Problem),
    )
)]
pub async fn verify(
    state: web::Data<AppState>,
    origin: RequestOrigin,
    body: JsonBody<VerifyRequest>,
) -> Result<HttpResponse, VerifyEndpointError> {
    let body = body.into_inner();
    let contact = body
        .contact()
        .map_err(VerifyEndpointError::InvalidIdentifier)?;
    let device_name = body
        .device_name()
        .map_err(|_| VerifyEndpointError::InvalidDeviceName)?;
    let code = OtpCode::presented(&body.code);
    let signed_in = state
        .auth
        .verify_code(&contact, &code, device_name, &origin.0, Utc::now())
        .await
        .map_err(|e| match e {
            VerifyError::InvalidCode => VerifyEndpointError::InvalidCode,
            VerifyError::RateLimited { retry_after } => {
                VerifyEndpointError::RateLimited(retry_after)
            }
            VerifyError::Locked { retry_after } => VerifyEndpointError::Locked(retry_after),
            VerifyError::Store(e) => VerifyEndpointError::Unexpected(e.into()),
        })?;
    Ok(no_store(HttpResponse::Ok().json(SignInResponse {
        tokens: signed_in.tokens,
        user: signed_in.user,
        new_user: signed_in.new_user,
    })))
}

/// Errors of `POST /v1/auth/refresh`.
#[derive(thiserror::Error)]
pub enum RefreshEndpointError {
    /// Unknown, expired, revoked or reused.
    #[error("invalid refresh token")]
    Invalid,
    /// Per-IP limit.
    #[error("rate limited")]
    RateLimited(u64),
    /// Anything on our side.
    #[error("cannot refresh")]
    Unexpected(#[source] anyhow::Error),
}

impl RefreshEndpointError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::Invalid => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidRefreshToken,
                "Invalid refresh token",
            )
            .detail("sign in again"),
            Self::RateLimited(s) => ProblemParts::rate_limited(*s),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(RefreshEndpointError);

/// Rotates the refresh token and issues a new access token.
#[utoipa::path(
    post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = codeedex_schema::api::auth::TokenPair),
        (status = 401, description = "The refresh token cannot be used", body = Problem),
        (status = 429, description = "Rate limited; see Retry-After", body = Problem),
    )
)]
pub async fn refresh(
    state: web::Data<AppState>,
    origin: RequestOrigin,
    body: JsonBody<RefreshRequest>,
) -> Result<HttpResponse, RefreshEndpointError> {
    let pair = state
        .auth
        .refresh(&body.refresh_token, &origin.0, Utc::now())
        .await
        .map_err(|e| match e {
            RefreshError::Invalid => RefreshEndpointError::Invalid,
            RefreshError::RateLimited { retry_after } => {
                RefreshEndpointError::RateLimited(retry_after)
            }
            RefreshError::Store(e) => RefreshEndpointError::Unexpected(e.into()),
        })?;
    Ok(no_store(HttpResponse::Ok().json(pair)))
}

/// Errors of `POST /v1/auth/logout`.
#[derive(thiserror::Error)]
pub enum LogoutEndpointError {
    /// Anything on our side.
    #[error("cannot log out")]
    Unexpected(#[source] anyhow::Error),
}

impl LogoutEndpointError {
    fn parts(&self) -> ProblemParts {
        ProblemParts::internal()
    }
}

endpoint_error!(LogoutEndpointError);

/// Ends this session, the others, or all of the user's sessions.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth", request_body = LogoutRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Sessions ended", body = LogoutResponse),
        (status = 401, description = "Not authenticated", body = Problem),
    )
)]
pub async fn logout(
    state: web::Data<AppState>,
    caller: Caller,
    origin: RequestOrigin,
    body: JsonBody<LogoutRequest>,
) -> Result<HttpResponse, LogoutEndpointError> {
    let ended = state
        .auth
        .logout(&caller.0, body.scope, &origin.0, Utc::now())
        .await
        .map_err(|e| LogoutEndpointError::Unexpected(e.into()))?;
    Ok(no_store(HttpResponse::Ok().json(LogoutResponse {
        sessions_ended: ended,
    })))
}
