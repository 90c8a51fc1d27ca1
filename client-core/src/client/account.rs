//! The handle's account operations: sign-in with a code, the account and
//! its sessions, sign-out, and calls that need a fresh access token.

use codeedex_schema::api::auth::{
    LogoutScope, OtpAccepted, OtpRequest, SessionView, UserView, VerifyRequest,
};
use codeedex_schema::api::tasks::TaskHistory;
use codeedex_schema::id::{DocumentId, SessionId};
use codeedex_schema::problem::ErrorCode;

use super::{Client, SignInIdentifier};
use crate::api::ApiClient;
use crate::error::ClientError;
use crate::events::{AuthStatus, ClientEvent};
use crate::store::meta_key;

impl Client {
    /// The signed-in account as last seen (no network).
    pub fn account(&self) -> Option<UserView> {
        self.device().account()
    }

    /// Whether someone is signed in on this device.
    pub fn auth_status(&self) -> AuthStatus {
        match (self.device().auth().is_logged_in(), self.account()) {
            (true, Some(account)) => AuthStatus::LoggedIn {
                user_id: account.id,
            },
            _ => AuthStatus::LoggedOut,
        }
    }

    /// Asks the server to send a sign-in code.
    pub async fn request_code(
        &self,
        identifier: &SignInIdentifier,
    ) -> Result<OtpAccepted, ClientError> {
        let (email, phone) = identifier.parts();
        self.device()
            .auth()
            .api()
            .request_code(&OtpRequest { email, phone })
            .await
    }

    /// Signs in with a code: keeps the tokens, learns the account and its
    /// root document. A data directory belongs to one account: signing in
    /// as another fails with [`ClientError::OtherAccount`].
    pub async fn verify_code(
        &self,
        identifier: &SignInIdentifier,
        code: &str,
    ) -> Result<UserView, ClientError> {
        let (email, phone) = identifier.parts();
        let device = self.device();
        let body = VerifyRequest {
            email,
            phone,
            code: code.trim().to_owned(),
            device_name: device.config().device_name.clone(),
        };
        let signed_in = device.auth().api().verify(&body).await?;
        if let Some(previous) = device.account()
            && previous.id != signed_in.user.id
        {
            let _ = device
                .auth()
                .api()
                .logout(&signed_in.tokens.access_token, LogoutScope::This)
                .await;
            let who = previous
                .email
                .or(previous.phone)
                .unwrap_or_else(|| previous.id.to_string());
            return Err(ClientError::OtherAccount(who));
        }
        device.auth().store_pair(&signed_in.tokens)?;
        let me = self.refresh_account().await?;
        device.emit(ClientEvent::AuthStatus {
            status: AuthStatus::LoggedIn { user_id: me.id },
        });
        Ok(me)
    }

    /// An access token, refreshed if needed; a refused refresh signs out.
    async fn access_token(&self) -> Result<String, ClientError> {
        let device = self.device();
        match device.auth().access_token(Self::now()).await {
            Err(ClientError::SessionEnded) => {
                device.logged_out();
                Err(ClientError::SessionEnded)
            }
            other => other,
        }
    }

    /// Runs an authorised call; an expired or refused token is refreshed
    /// once and the call repeated.
    async fn authorized<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(ApiClient, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let device = self.device();
        let token = self.access_token().await?;
        match call(device.auth().api().clone(), token.clone()).await {
            Err(ClientError::Server {
                status: 401,
                code: Some(ErrorCode::TokenExpired) | Some(ErrorCode::Unauthorized) | None,
                ..
            }) => {
                let token = match device.auth().refresh(Some(&token)).await {
                    Err(ClientError::SessionEnded) => {
                        device.logged_out();
                        return Err(ClientError::SessionEnded);
                    }
                    other => other?,
                };
                call(device.auth().api().clone(), token).await
            }
            other => other,
        }
    }

    /// Fetches the account from the server (`GET /v1/me`) and remembers it
    /// and its root document.
    pub async fn refresh_account(&self) -> Result<UserView, ClientError> {
        let me = self
            .authorized(|api, token| async move { api.me(&token).await })
            .await?;
        let device = self.device();
        device.store().put_meta(
            meta_key::ACCOUNT,
            &serde_json::to_vec(&me).expect("serialisable"),
        )?;
        if let Some(root) = me.root_document_id {
            device
                .store()
                .put_meta(meta_key::ROOT, root.to_string().as_bytes())?;
            device.replicas().set_root(Some(root));
        }
        device.store().flush()?;
        Ok(me)
    }

    /// The account's signed-in devices.
    pub async fn sessions(&self) -> Result<Vec<SessionView>, ClientError> {
        Ok(self
            .authorized(|api, token| async move { api.sessions(&token).await })
            .await?
            .sessions)
    }

    /// Ends one of the account's sessions (signs that device out). Revoking
    /// this device's own session signs it out here too, as
    /// [`Client::logout`] does.
    pub async fn revoke_session(&self, id: SessionId) -> Result<(), ClientError> {
        let current = self
            .sessions()
            .await?
            .into_iter()
            .any(|s| s.id == id && s.current);
        self.authorized(|api, token| async move { api.revoke_session(&token, id).await })
            .await?;
        if current {
            self.stop_sync().await;
            self.device().logged_out();
        }
        Ok(())
    }

    /// Ends sessions: this one, the others, or all. Ending this one (or all)
    /// forgets the tokens here even when the server cannot be told; the
    /// local tasks stay. Returns how many sessions the server ended.
    pub async fn logout(&self, scope: LogoutScope) -> Result<usize, ClientError> {
        let result = self
            .authorized(|api, token| async move { api.logout(&token, scope).await })
            .await;
        if scope != LogoutScope::Others {
            self.stop_sync().await;
            self.device().logged_out();
        }
        result.map(|r| r.sessions_ended)
    }

    /// A task's change history, from the server (`GET /v1/tasks/{id}/history`).
    pub async fn task_history(&self, id: DocumentId) -> Result<TaskHistory, ClientError> {
        self.authorized(|api, token| async move { api.history(&token, id).await })
            .await
    }
}
