//! Access tokens: kept, refreshed before they expire, one refresh at a time.
//!
//! The [`Authenticator`] holds the current [`Credentials`] in memory and in
//! the [`TokenStore`]. [`Authenticator::access_token`] hands out a token
//! that is not about to expire, refreshing first when needed; refreshes are
//! serialised by a lock and a caller that waited for the lock reuses the
//! pair the previous holder obtained, so at most one refresh is in flight
//! (refresh tokens are single use: two concurrent refreshes would make the
//! server see a reuse and end the session). A refused refresh token ends
//! the session: the credentials are forgotten and the generation counter
//! moves, which the client turns into a logged-out event.

use std::sync::Mutex;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use codeedex_schema::api::auth::TokenPair;
use codeedex_schema::problem::ErrorCode;
use tokio::sync::watch;

use crate::api::ApiClient;
use crate::error::ClientError;
use crate::token_store::{Credentials, TokenStore};

/// The longest margin before expiry at which a token is refreshed.
const MAX_REFRESH_MARGIN_SECS: i64 = 60;

/// When a token with this lifetime and expiry should be refreshed: a third
/// of its lifetime before expiry, at most a minute before. The expiry is
/// first rounded down to the second, as the token's own `exp` claim is
/// (the server's `expires_at` keeps the milliseconds the claim drops).
pub(crate) fn refresh_at(expires_at: DateTime<Utc>, lifetime_secs: u64) -> DateTime<Utc> {
    let lifetime_ms = i64::try_from(lifetime_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let margin_ms = (lifetime_ms / 3).min(MAX_REFRESH_MARGIN_SECS * 1000);
    let whole_seconds = DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at);
    whole_seconds - ChronoDuration::milliseconds(margin_ms)
}

fn credentials_of(pair: &TokenPair) -> Credentials {
    Credentials {
        access_token: pair.access_token.clone(),
        refresh_token: pair.refresh_token.clone(),
        expires_at: pair.expires_at,
        lifetime_secs: pair.expires_in,
        session_id: pair.session_id,
    }
}

/// The tokens of one client.
#[derive(Debug)]
pub(crate) struct Authenticator {
    api: ApiClient,
    store: TokenStore,
    current: Mutex<Option<Credentials>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Bumped on every sign-in, refresh and sign-out, so that waiters (the
    /// sync engine) notice.
    generation: watch::Sender<u64>,
}

impl Authenticator {
    /// Loads any stored credentials.
    pub fn new(api: ApiClient, store: TokenStore) -> Result<Self, ClientError> {
        let current = store.load().map_err(ClientError::TokenStore)?;
        Ok(Self {
            api,
            store,
            current: Mutex::new(current),
            refresh_lock: tokio::sync::Mutex::new(()),
            generation: watch::Sender::new(0),
        })
    }

    /// The REST client.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// Where the tokens are kept (`keyring` or `file`).
    pub fn storage_name(&self) -> &'static str {
        self.store.describe()
    }

    /// A receiver that changes whenever the credentials do.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn current(&self) -> Option<Credentials> {
        self.current.lock().expect("never poisoned").clone()
    }

    /// Whether credentials are held.
    pub fn is_logged_in(&self) -> bool {
        self.current.lock().expect("never poisoned").is_some()
    }

    /// When the current access token should be refreshed, if signed in.
    pub fn refresh_due(&self) -> Option<DateTime<Utc>> {
        self.current()
            .map(|c| refresh_at(c.expires_at, c.lifetime_secs))
    }

    /// Keeps a new pair from a sign-in or refresh.
    pub fn store_pair(&self, pair: &TokenPair) -> Result<(), ClientError> {
        let credentials = credentials_of(pair);
        self.store
            .save(&credentials)
            .map_err(ClientError::TokenStore)?;
        *self.current.lock().expect("never poisoned") = Some(credentials);
        self.bump();
        Ok(())
    }

    /// Forgets the credentials (logout, or a session that ended).
    pub fn forget(&self) -> Result<(), ClientError> {
        let had = self
            .current
            .lock()
            .expect("never poisoned")
            .take()
            .is_some();
        let stored = self.store.clear().map_err(ClientError::TokenStore);
        if had {
            self.bump();
        }
        stored
    }

    /// An access token that is not about to expire.
    pub async fn access_token(&self, now: DateTime<Utc>) -> Result<String, ClientError> {
        let credentials = self.current().ok_or(ClientError::NotLoggedIn)?;
        if now < refresh_at(credentials.expires_at, credentials.lifetime_secs) {
            return Ok(credentials.access_token);
        }
        self.refresh(Some(&credentials.access_token)).await
    }

    /// Refreshes the pair unless someone else already replaced `stale`
    /// (the token the caller found wanting); `None` refreshes regardless.
    /// Returns the new access token.
    pub async fn refresh(&self, stale: Option<&str>) -> Result<String, ClientError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let credentials = self.current().ok_or(ClientError::NotLoggedIn)?;
        if stale.is_some_and(|s| s != credentials.access_token) {
            return Ok(credentials.access_token);
        }
        match self.api.refresh(&credentials.refresh_token).await {
            Ok(pair) => {
                self.store_pair(&pair)?;
                tracing::debug!(expires_at = %pair.expires_at, "access token refreshed");
                Ok(pair.access_token)
            }
            Err(ClientError::Server { status: 401, .. })
            | Err(ClientError::Server {
                code: Some(ErrorCode::InvalidRefreshToken),
                ..
            }) => {
                tracing::info!("the refresh token was refused: signed out");
                self.forget()?;
                Err(ClientError::SessionEnded)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn tokens_are_refreshed_a_third_of_their_life_early_at_most_a_minute() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(refresh_at(at, 900), at - ChronoDuration::seconds(60));
        assert_eq!(refresh_at(at, 3), at - ChronoDuration::seconds(1));
        assert_eq!(refresh_at(at, 0), at);
        let with_millis = at + ChronoDuration::milliseconds(900);
        assert_eq!(refresh_at(with_millis, 3), at - ChronoDuration::seconds(1));
    }

    fn pair(token: &str, expires_at: DateTime<Utc>) -> TokenPair {
        TokenPair {
            access_token: token.into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            expires_at,
            refresh_token: format!("refresh-{token}"),
            session_id: codeedex_schema::id::SessionId::from_random_bytes([2; 16]),
        }
    }

    /// A stand-in for `POST /v1/auth/refresh`: counts calls, answers slowly
    /// with `status` and `body`.
    async fn refresh_stub(status: u16, body: String) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (address, calls)
    }

    fn authenticator(address: &str, dir: &std::path::Path) -> Authenticator {
        let store = TokenStore::open(crate::config::TokenStorage::File, dir, "test").unwrap();
        Authenticator::new(ApiClient::new(address).unwrap(), store).unwrap()
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh() {
        let fresh =
            serde_json::to_string(&pair("new", Utc::now() + ChronoDuration::minutes(15))).unwrap();
        let (address, calls) = refresh_stub(200, fresh).await;
        let dir = tempfile::tempdir().unwrap();
        let auth = Arc::new(authenticator(&address, dir.path()));
        auth.store_pair(&pair("old", Utc::now())).unwrap();
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let auth = Arc::clone(&auth);
                tokio::spawn(async move { auth.access_token(Utc::now()).await.unwrap() })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), "new");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one refresh for five callers"
        );
        // The new pair is what the token store holds.
        assert_eq!(
            authenticator(&address, dir.path())
                .current()
                .unwrap()
                .access_token,
            "new"
        );
    }

    #[tokio::test]
    async fn a_refused_refresh_token_signs_out() {
        let problem = r#"{"type":"urn:codeedex:problem:invalid_refresh_token","title":"Invalid refresh token","status":401,"code":"invalid_refresh_token"}"#;
        let (address, _) = refresh_stub(401, problem.to_owned()).await;
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&address, dir.path());
        auth.store_pair(&pair("old", Utc::now())).unwrap();
        let mut changes = auth.watch();
        changes.borrow_and_update();
        assert!(matches!(
            auth.access_token(Utc::now()).await,
            Err(ClientError::SessionEnded)
        ));
        assert!(!auth.is_logged_in());
        assert!(changes.has_changed().unwrap());
        assert!(
            authenticator(&address, dir.path()).current().is_none(),
            "the token store is cleared"
        );
    }
}
