//! `/v1/browser/*`: sign-in, refresh and logout for the web app.
//!
//! The browser never sees a refresh token: these endpoints keep it in an
//! `HttpOnly; SameSite=Strict` cookie scoped to `/v1/browser` (`Secure` when
//! the page was served over HTTPS) and answer with the access token only,
//! which the page keeps in memory. The rules are the ones of
//! `/v1/auth/*` (the same [`Auth`](crate::auth::Auth) service: rotation on
//! every refresh, reuse detection, the grace window for two tabs refreshing
//! at once); only the transport of the refresh token differs.
//!
//! Because a cookie is sent by the browser on its own, every request must
//! also prove it comes from the app's own page: it must carry the
//! [`CSRF_HEADER`], which no other site can add without a CORS preflight
//! that this server never grants, and its `Origin` (and `Sec-Fetch-Site`,
//! when sent) must name this origin.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use codeedex_schema::api::auth::{LogoutRequest, LogoutResponse, VerifyRequest};
use codeedex_schema::api::browser::{BrowserSignIn, BrowserTokens, CSRF_HEADER, REFRESH_COOKIE};
use codeedex_schema::problem::ErrorCode;

use super::AppState;
use super::json_body::JsonBody;
use super::origin::RequestOrigin;
use super::problem::{ProblemParts, endpoint_error, method_not_allowed};
use crate::auth::otp::OtpCode;
use crate::auth::{AuthenticateError, RefreshError, VerifyError};

/// How long the browser keeps the cookie. The server decides when a
/// session really ends (idle and absolute limits); the cookie only has to
/// outlive it, and is renewed at every refresh.
const COOKIE_MAX_AGE_SECS: u64 = 400 * 24 * 3600;
const COOKIE_PATH: &str = "/v1/browser";

pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, route) in [
        ("/v1/browser/session", web::post().to(sign_in)),
        ("/v1/browser/refresh", web::post().to(refresh)),
        ("/v1/browser/logout", web::post().to(logout)),
    ] {
        cfg.service(
            web::resource(path)
                .route(route)
                .default_service(method_not_allowed("POST")),
        );
    }
}

/// Errors of the browser-session endpoints.
#[derive(thiserror::Error)]
pub enum BrowserSessionError {
    /// The request does not come from the app's own page.
    #[error("cross-site request refused")]
    CrossSite,
    /// The identifier is malformed.
    #[error("invalid identifier")]
    InvalidIdentifier(#[source] codeedex_schema::contact::ContactError),
    /// Wrong, expired, used or unknown code.
    #[error("invalid code")]
    InvalidCode,
    /// No cookie, or one the session service refuses.
    #[error("no live browser session")]
    NoSession,
    /// Per-IP limit.
    #[error("rate limited")]
    RateLimited(u64),
    /// Locked after too many wrong codes.
    #[error("locked")]
    Locked(u64),
    /// Anything on our side.
    #[error("browser session failed")]
    Unexpected(#[source] anyhow::Error),
}

impl BrowserSessionError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::CrossSite => ProblemParts::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Unauthorized,
                "Cross-site request refused",
            )
            .detail(format!(
                "browser session requests must come from this origin and carry {CSRF_HEADER}"
            )),
            Self::InvalidIdentifier(e) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidIdentifier,
                "Invalid email or phone",
            )
            .detail(e.to_string()),
            Self::InvalidCode => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidCode,
                "Invalid code",
            )
            .detail("the code is wrong, expired or already used; request a new one if needed"),
            Self::NoSession => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidRefreshToken,
                "Not signed in",
            )
            .detail("sign in again"),
            Self::RateLimited(s) => ProblemParts::rate_limited(*s),
            Self::Locked(s) => ProblemParts::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyAttempts,
                "Too many wrong codes",
            )
            .detail("too many wrong codes were entered for this identifier; try again later")
            .retry_after(*s),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(BrowserSessionError);

/// The authority (`host[:port]`) of an origin such as `https://a.example:8443`.
fn authority(origin: &str) -> Option<&str> {
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
}

/// Refuses requests that may come from another site (see the module docs).
fn same_origin(req: &HttpRequest, state: &AppState) -> Result<(), BrowserSessionError> {
    let header_value = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header_value(header::HeaderName::from_static(CSRF_HEADER)) != Some("1") {
        return Err(BrowserSessionError::CrossSite);
    }
    if let Some(site) = header_value(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
    {
        return Err(BrowserSessionError::CrossSite);
    }
    if let Some(origin) = header_value(header::ORIGIN) {
        let host = header_value(header::HOST);
        let own = host.is_some_and(|host| authority(origin) == Some(host));
        let listed = state.allowed_origins.iter().any(|o| o == origin);
        if !own && !listed {
            return Err(BrowserSessionError::CrossSite);
        }
    }
    Ok(())
}

/// Whether the page talks to us over HTTPS (directly or through a proxy
/// that terminates TLS): then the cookie is `Secure`.
fn over_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
        || req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| o.starts_with("https://"))
}

fn set_cookie(response: &mut HttpResponse, req: &HttpRequest, value: &str, max_age: u64) {
    let secure = if over_https(req) { "; Secure" } else { "" };
    let cookie = format!(
        "{REFRESH_COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    // The token is URL-safe ASCII (prefix, base64url), so the header is valid.
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn clear_cookie(response: &mut HttpResponse, req: &HttpRequest) {
    set_cookie(response, req, "", 0);
}

/// The refresh token from the cookie, if the request has one.
fn cookie_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == REFRESH_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

fn refresh_error(e: RefreshError) -> BrowserSessionError {
    match e {
        RefreshError::Invalid => BrowserSessionError::NoSession,
        RefreshError::RateLimited { retry_after } => BrowserSessionError::RateLimited(retry_after),
        RefreshError::Store(e) => BrowserSessionError::Unexpected(e.into()),
    }
}

/// Answers an error; a request whose cookie no longer opens a session also
/// loses the cookie.
fn fail(req: &HttpRequest, e: BrowserSessionError) -> HttpResponse {
    let forget = matches!(e, BrowserSessionError::NoSession);
    let mut response = actix_web::ResponseError::error_response(&e);
    if forget {
        clear_cookie(&mut response, req);
    }
    response
}

/// Verifies a code like `POST /v1/auth/verify`, but puts the refresh token
/// in the cookie.
#[utoipa::path(
    post, path = "/v1/browser/session", tag = "browser", request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in; the refresh token is in the cookie", body = BrowserSignIn),
        (status = 400, description = "Wrong, expired or used code, or a malformed body", body = codeedex_schema::problem::Problem),
        (status = 403, description = "Not from this origin, or without the CSRF header", body = codeedex_schema::problem::Problem),
        (status = 429, description = "Rate limited or locked; see Retry-After", body = codeedex_schema::problem::Problem),
    )
)]
pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    origin: RequestOrigin,
    body: JsonBody<VerifyRequest>,
) -> HttpResponse {
    let result = async {
        same_origin(&req, &state)?;
        let body = body.into_inner();
        let contact = body
            .contact()
            .map_err(BrowserSessionError::InvalidIdentifier)?;
        // The app names itself from the User-Agent; a name the rules refuse
        // is dropped rather than failing the sign-in.
        let device_name = body.device_name().ok().flatten();
        let code = OtpCode::presented(&body.code);
        state
            .auth
            .verify_code(&contact, &code, device_name, &origin.0, Utc::now())
            .await
            .map_err(|e| match e {
                VerifyError::InvalidCode => BrowserSessionError::InvalidCode,
                VerifyError::RateLimited { retry_after } => {
                    BrowserSessionError::RateLimited(retry_after)
                }
                VerifyError::Locked { retry_after } => BrowserSessionError::Locked(retry_after),
                VerifyError::Store(e) => BrowserSessionError::Unexpected(e.into()),
            })
    }
    .await;
    match result {
        Ok(signed_in) => {
            let mut response = HttpResponse::Ok().json(BrowserSignIn {
                tokens: BrowserTokens::without_refresh(&signed_in.tokens),
                user: signed_in.user,
                new_user: signed_in.new_user,
            });
            set_cookie(
                &mut response,
                &req,
                &signed_in.tokens.refresh_token,
                COOKIE_MAX_AGE_SECS,
            );
            response
        }
        Err(e) => fail(&req, e),
    }
}

/// Rotates the cookie's refresh token and answers a fresh access token.
#[utoipa::path(
    post, path = "/v1/browser/refresh", tag = "browser",
    responses(
        (status = 200, description = "A fresh access token; the cookie holds the rotated refresh token", body = BrowserTokens),
        (status = 401, description = "No live session; the cookie is cleared", body = codeedex_schema::problem::Problem),
        (status = 403, description = "Not from this origin, or without the CSRF header", body = codeedex_schema::problem::Problem),
    )
)]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    origin: RequestOrigin,
) -> HttpResponse {
    let result = async {
        same_origin(&req, &state)?;
        let token = cookie_token(&req).ok_or(BrowserSessionError::NoSession)?;
        state
            .auth
            .refresh(&token, &origin.0, Utc::now())
            .await
            .map_err(refresh_error)
    }
    .await;
    match result {
        Ok(pair) => {
            let mut response = HttpResponse::Ok().json(BrowserTokens::without_refresh(&pair));
            set_cookie(
                &mut response,
                &req,
                &pair.refresh_token,
                COOKIE_MAX_AGE_SECS,
            );
            response
        }
        Err(e) => fail(&req, e),
    }
}

/// Ends this browser's session (or all of the user's) and clears the
/// cookie. The cookie is the credential, so a page whose access token
/// expired can still sign out.
#[utoipa::path(
    post, path = "/v1/browser/logout", tag = "browser", request_body = LogoutRequest,
    responses(
        (status = 200, description = "Sessions ended; the cookie is cleared", body = LogoutResponse),
        (status = 401, description = "No live session; the cookie is cleared", body = codeedex_schema::problem::Problem),
        (status = 403, description = "Not from this origin, or without the CSRF header", body = codeedex_schema::problem::Problem),
    )
)]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    origin: RequestOrigin,
    body: JsonBody<LogoutRequest>,
) -> HttpResponse {
    if let Err(e) = same_origin(&req, &state) {
        return fail(&req, e);
    }
    let result = async {
        let token = cookie_token(&req).ok_or(BrowserSessionError::NoSession)?;
        let now = Utc::now();
        // Rotating first turns the cookie into a checked session and an
        // access token, which is what the logout rules take.
        let pair = state
            .auth
            .refresh(&token, &origin.0, now)
            .await
            .map_err(refresh_error)?;
        let who = state
            .auth
            .authenticate(&pair.access_token, now)
            .await
            .map_err(|e| match e {
                AuthenticateError::Store(e) => BrowserSessionError::Unexpected(e.into()),
                AuthenticateError::Expired | AuthenticateError::Invalid => {
                    BrowserSessionError::NoSession
                }
            })?;
        state
            .auth
            .logout(&who, body.scope, &origin.0, now)
            .await
            .map_err(|e| BrowserSessionError::Unexpected(e.into()))
    }
    .await;
    let mut response = match result {
        Ok(ended) => HttpResponse::Ok().json(LogoutResponse {
            sessions_ended: ended,
        }),
        Err(e) => actix_web::ResponseError::error_response(&e),
    };
    clear_cookie(&mut response, &req);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::COOKIE, "a=1; codeedex_refresh=cdxr_abc; b=2"))
            .to_http_request();
        assert_eq!(cookie_token(&req).as_deref(), Some("cdxr_abc"));
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::COOKIE, "codeedex_refresh=; x=y"))
            .to_http_request();
        assert_eq!(cookie_token(&req), None);
    }

    #[test]
    fn origins_compare_by_authority() {
        assert_eq!(authority("http://127.0.0.1:8080"), Some("127.0.0.1:8080"));
        assert_eq!(authority("https://tasks.example"), Some("tasks.example"));
        assert_eq!(authority("null"), None);
    }
}
