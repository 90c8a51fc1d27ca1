//! Problem documents (RFC 9457) and the JSON body rules.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, error::JsonPayloadError, web};
use codeedex_schema::problem::{ErrorCode, PROBLEM_CONTENT_TYPE, Problem};

/// Seconds a client waits before retrying while the store is unavailable:
/// the store tries to reopen itself about twice a second.
const STORAGE_RETRY_AFTER_SECS: u64 = 1;

/// Builds a problem response, with `Retry-After` when given.
pub fn respond(
    status: StatusCode,
    code: ErrorCode,
    title: &str,
    detail: Option<String>,
    retry_after: Option<u64>,
) -> HttpResponse {
    let body = Problem::new(status.as_u16(), code, title, detail);
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE));
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(seconds) = retry_after {
        response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
    }
    response.json(body)
}

/// The parts of an endpoint error that the client sees.
#[derive(Debug)]
pub struct ProblemParts {
    /// Status code.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Short title.
    pub title: &'static str,
    /// Detail for this occurrence.
    pub detail: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ProblemParts {
    /// A problem without detail or retry hint.
    pub fn new(status: StatusCode, code: ErrorCode, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            retry_after: None,
        }
    }

    /// Adds a detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a retry hint.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The generic answer for failures on our side; the cause goes to the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "Internal server error",
        )
    }

    /// The store is unavailable after a disk failure: nothing was changed
    /// durably, and the server recovers by itself.
    pub fn storage_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StorageUnavailable,
            "Storage unavailable",
        )
        .detail("the server's storage is unavailable; nothing was saved, try again later")
        .retry_after(STORAGE_RETRY_AFTER_SECS)
    }

    /// These parts, or [`ProblemParts::storage_unavailable`] when the store
    /// was unavailable anywhere in `error`'s chain of causes: whatever an
    /// endpoint makes of storage errors, a failing disk is "try again
    /// later", never an internal error.
    pub fn or_storage_unavailable(self, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(crate::store::StoreError::Unavailable) = e.downcast_ref() {
                return Self::storage_unavailable();
            }
            cause = e.source();
        }
        self
    }

    /// Too many requests.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "Too many requests",
        )
        .retry_after(retry_after)
    }
}

/// Writes an error and its whole chain of causes, for `Debug` impls of
/// endpoint errors: the log gets the chain, the client only the problem.
pub fn fmt_error_chain(e: &impl std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{e}")?;
    let mut cause = e.source();
    while let Some(c) = cause {
        writeln!(f, "Caused by:\n\t{c}")?;
        cause = c.source();
    }
    Ok(())
}

/// Implements `Debug` (with the cause chain) and `ResponseError` for an
/// endpoint error that has a `fn parts(&self) -> ProblemParts`.
macro_rules! endpoint_error {
    ($ty:ty) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::api::problem::fmt_error_chain(self, f)
            }
        }

        impl actix_web::ResponseError for $ty {
            fn status_code(&self) -> actix_web::http::StatusCode {
                self.parts().or_storage_unavailable(self).status
            }

            fn error_response(&self) -> actix_web::HttpResponse {
                let parts = self.parts().or_storage_unavailable(self);
                // A failing disk is logged once, as an error, by the store;
                // each request it refuses meanwhile is only a warning.
                if parts.code == codeedex_schema::problem::ErrorCode::StorageUnavailable {
                    tracing::warn!(error = %self, "request refused: the store is unavailable");
                } else if parts.code == codeedex_schema::problem::ErrorCode::ServerBusy {
                    // Shedding load (a reconnect storm, a clean stop) is the
                    // server working as designed, not a failure.
                    tracing::warn!(error = %self, "request refused: the server is busy");
                } else if parts.status.is_server_error() {
                    tracing::error!(error = ?self, "request failed");
                }
                $crate::api::problem::respond(parts.status, parts.code, parts.title, parts.detail, parts.retry_after)
            }
        }
    };
}
pub(crate) use endpoint_error;

/// Why a request body was refused before any handler saw it.
#[derive(thiserror::Error)]
#[error("{detail}")]
pub struct BodyError {
    status: StatusCode,
    code: ErrorCode,
    title: &'static str,
    detail: String,
}

impl BodyError {
    fn parts(&self) -> ProblemParts {
        ProblemParts::new(self.status, self.code, self.title).detail(self.detail.clone())
    }
}

endpoint_error!(BodyError);

/// JSON bodies: at most [`super::MAX_JSON_BODY`] bytes, `application/json`
/// only, and every decoding error answered with a problem that says what was
/// wrong (serde's message names the field and the expected type).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(super::MAX_JSON_BODY)
        .content_type_required(true)
        .error_handler(|err, _req: &HttpRequest| {
            let (status, code, title, detail) = match &err {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "Request body too large",
                    format!(
                        "request bodies are limited to {} bytes",
                        super::MAX_JSON_BODY
                    ),
                ),
                JsonPayloadError::ContentType => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "Unsupported media type",
                    "send the body as application/json".to_owned(),
                ),
                JsonPayloadError::Deserialize(e) => (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    "Invalid request body",
                    e.to_string(),
                ),
                other => (
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    "Invalid request body",
                    other.to_string(),
                ),
            };
            BodyError {
                status,
                code,
                title,
                detail,
            }
            .into()
        })
}

/// Path parameters that do not parse (a malformed id) are answered as 404:
/// no resource has that name.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err, _req| {
        BodyError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NotFound,
            title: "Not found",
            detail: "no such resource".to_owned(),
        }
        .into()
    })
}

/// The answer for unknown paths.
pub async fn not_found() -> HttpResponse {
    respond(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "Not found",
        None,
        None,
    )
}

/// The default service of a resource: 405 with the `Allow` header naming
/// the methods it does support (RFC 9110 §15.5.6).
pub fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "Method not allowed",
            Some(format!("this resource supports {allow}")),
            None,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        response
    })
}
