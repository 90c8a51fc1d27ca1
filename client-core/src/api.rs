//! The server's REST API, as typed calls (reqwest).
//!
//! Every call maps failures the same way: no answer is
//! [`ClientError::Offline`]; an error status is [`ClientError::Server`] with
//! the problem document's stable code when there is one.

use std::time::Duration;

use codeedex_schema::api::auth::{
    LogoutRequest, LogoutResponse, LogoutScope, OtpAccepted, OtpRequest, RefreshRequest,
    SessionList, SignInResponse, TokenPair, UserView, VerifyRequest,
};
use codeedex_schema::api::tasks::TaskHistory;
use codeedex_schema::id::{DocumentId, SessionId};
use codeedex_schema::problem::Problem;
use serde::de::DeserializeOwned;

use crate::error::ClientError;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A REST client of one server.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// A client of the server at `base` (`http(s)://host:port`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("codeedex-client-core/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Internal(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.send().await.map_err(network_error)?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|e| ClientError::Server {
                status: status.as_u16(),
                code: None,
                message: format!("the server sent an unexpected body: {e}"),
            });
        }
        Err(problem_error(status.as_u16(), response).await)
    }

    /// Sends a request whose success has no body (204).
    async fn send_no_content(&self, request: reqwest::RequestBuilder) -> Result<(), ClientError> {
        let response = request.send().await.map_err(network_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(problem_error(status.as_u16(), response).await)
    }

    /// `POST /v1/auth/otp`.
    pub async fn request_code(&self, body: &OtpRequest) -> Result<OtpAccepted, ClientError> {
        self.send(self.http.post(self.url("/v1/auth/otp")).json(body))
            .await
    }

    /// `POST /v1/auth/verify`.
    pub async fn verify(&self, body: &VerifyRequest) -> Result<SignInResponse, ClientError> {
        self.send(self.http.post(self.url("/v1/auth/verify")).json(body))
            .await
    }

    /// `POST /v1/auth/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ClientError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.send(self.http.post(self.url("/v1/auth/refresh")).json(&body))
            .await
    }

    /// `GET /v1/me`.
    pub async fn me(&self, token: &str) -> Result<UserView, ClientError> {
        self.send(self.http.get(self.url("/v1/me")).bearer_auth(token))
            .await
    }

    /// `GET /v1/sessions`.
    pub async fn sessions(&self, token: &str) -> Result<SessionList, ClientError> {
        self.send(self.http.get(self.url("/v1/sessions")).bearer_auth(token))
            .await
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn revoke_session(&self, token: &str, id: SessionId) -> Result<(), ClientError> {
        self.send_no_content(
            self.http
                .delete(self.url(&format!("/v1/sessions/{id}")))
                .bearer_auth(token),
        )
        .await
    }

    /// `POST /v1/auth/logout`.
    pub async fn logout(
        &self,
        token: &str,
        scope: LogoutScope,
    ) -> Result<LogoutResponse, ClientError> {
        let body = LogoutRequest { scope };
        self.send(
            self.http
                .post(self.url("/v1/auth/logout"))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// `DELETE /v1/tasks/{id}`.
    pub async fn delete_task(&self, token: &str, id: DocumentId) -> Result<(), ClientError> {
        self.send_no_content(
            self.http
                .delete(self.url(&format!("/v1/tasks/{id}")))
                .bearer_auth(token),
        )
        .await
    }

    /// `GET /v1/tasks/{id}/history`.
    pub async fn history(&self, token: &str, id: DocumentId) -> Result<TaskHistory, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/tasks/{id}/history")))
                .bearer_auth(token),
        )
        .await
    }
}

fn network_error(e: reqwest::Error) -> ClientError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    ClientError::Offline(message)
}

async fn problem_error(status: u16, response: reqwest::Response) -> ClientError {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(problem) => ClientError::Server {
            status,
            code: Some(problem.code),
            message: {
                let mut message = match problem.detail {
                    Some(detail) => format!("{}: {detail}", problem.title),
                    None => problem.title,
                };
                if let Some(seconds) = retry_after {
                    message.push_str(&format!(" (try again in {seconds} s)"));
                }
                message
            },
        },
        Err(_) => ClientError::Server {
            status,
            code: None,
            message: format!("the server answered HTTP {status}"),
        },
    }
}
