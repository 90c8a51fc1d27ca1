//! The JSON request body extractor every endpoint uses.
//!
//! It adds three rules to actix's `Json`: the body must be a JSON object (serde
//! would otherwise read a struct from an array, so `["a@b.co"]` would pass as
//! a code request); reading the body has a deadline, so a client that sends
//! headers and then stalls cannot hold a connection forever; and every
//! failure is a problem document (through [`super::problem::json_config`]).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use codeedex_schema::problem::ErrorCode;
use serde::de::DeserializeOwned;

use super::problem::{ProblemParts, endpoint_error};

/// How long a client has to deliver its whole body.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A JSON object body deserialised into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> JsonBody<T> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Why a body was refused after actix accepted it as JSON.
#[derive(thiserror::Error)]
pub enum BodyShapeError {
    /// Valid JSON, but not an object.
    #[error("the body must be a JSON object")]
    NotAnObject,
    /// An object that does not fit the endpoint's fields.
    #[error("{0}")]
    Fields(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {} seconds", BODY_DEADLINE.as_secs())]
    Timeout,
}

impl BodyShapeError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::Timeout => ProblemParts::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::InvalidRequest,
                "Request timeout",
            )
            .detail(self.to_string()),
            _ => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "Invalid request body",
            )
            .detail(self.to_string()),
        }
    }
}

endpoint_error!(BodyShapeError);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let value = match tokio::time::timeout(BODY_DEADLINE, value).await {
                Ok(result) => result?.into_inner(),
                Err(_) => return Err(BodyShapeError::Timeout.into()),
            };
            if !value.is_object() {
                return Err(BodyShapeError::NotAnObject.into());
            }
            serde_json::from_value(value)
                .map(JsonBody)
                .map_err(|e| BodyShapeError::Fields(e.to_string()).into())
        })
    }
}
