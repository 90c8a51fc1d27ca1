//! Sign-in and sessions: the rules, independent of HTTP.
//!
//! [`Auth`] turns requests ("send a code", "verify this code", "refresh this
//! token") into store updates and tokens. The HTTP layer parses requests and
//! renders answers; this module decides. Time is passed in as `now`.
//!
//! This file holds the service itself and what every operation shares
//! (rate limits, the audit trail, session liveness, sign-out and the
//! account's views). By concept: `sign_in` (send and verify a code),
//! `refresh` (rotate a refresh token, reuse detection, the grace window),
//! `rotation_cache` (what refreshing keeps in memory), `errors` (why each
//! operation refuses); `otp`, `tokens`, `keys`, `rate_limit` and `span` are
//! the pure rules and primitives they use.

pub mod keys;
pub(crate) mod otp;
pub(crate) mod rate_limit;
pub(crate) mod span;
pub(crate) mod tokens;

mod errors;
mod hs256;
mod refresh;
mod rotation_cache;
mod sign_in;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::{
    AuditEventView, AuditKind, LogoutScope, SessionView, TokenPair, UserView,
};
use codeedex_schema::contact::Contact;
use codeedex_schema::id::{SessionId, UserId};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;

use crate::configuration::{OtpPolicy, Settings, TokenPolicy};
use crate::delivery::CodeDelivery;
use crate::metrics::Metrics;
use crate::store::{AuditRecord, SessionRecord, Store, StoreError, UserRecord};
pub(crate) use errors::{AuthenticateError, RefreshError, RequestCodeError, VerifyError};
use keys::{HashPurpose, ServerKeys};
use rate_limit::{IpRateLimiter, LimitedAction};
use rotation_cache::RotationCache;
use tokens::{AccessClaims, AccessTokens, TokenRejection};

/// Who is asking, for rate limits and the audit trail.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientContext {
    /// The client's address, after trusted-proxy resolution.
    pub(crate) ip: Option<IpAddr>,
    /// The User-Agent header, truncated.
    pub(crate) user_agent: Option<String>,
}

/// An access token that passed every check, including that its session lives.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    /// The user.
    pub(crate) user_id: UserId,
    /// The session the token belongs to.
    pub(crate) session_id: SessionId,
    /// The token's expiry, seconds since the epoch.
    pub(crate) expires_at: i64,
}

/// The outcome of a successful sign-in.
#[derive(Debug)]
pub(crate) struct SignIn {
    /// The new tokens.
    pub(crate) tokens: TokenPair,
    /// The user.
    pub(crate) user: UserView,
    /// Whether this sign-in created the account.
    pub(crate) new_user: bool,
}

/// What a code request promises the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeRequested {
    /// Seconds the code is valid.
    pub(crate) expires_in: u64,
    /// Seconds before another code can be requested.
    pub(crate) resend_after: u64,
}

/// The sign-in and session service.
pub struct Auth {
    store: Store,
    keys: ServerKeys,
    tokens: AccessTokens,
    otp_policy: OtpPolicy,
    token_policy: TokenPolicy,
    limiter: IpRateLimiter,
    delivery: Arc<CodeDelivery>,
    test_codes: Vec<(Contact, SecretString)>,
    rotations: RotationCache,
    revocations: broadcast::Sender<SessionNotice>,
    metrics: Arc<Metrics>,
}

/// What live connections hear about sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionNotice {
    /// The session ended (logout, revocation, reuse detection), here or on
    /// another node: its sockets close.
    Ended(SessionId),
    /// Notices of ended sessions may have been missed (another node's were
    /// rung while this node's listener was down): every socket asks the
    /// store whether its session still lives.
    MayHaveEnded,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Auth {
    /// Builds the service.
    pub fn new(
        settings: &Settings,
        store: Store,
        keys: ServerKeys,
        delivery: CodeDelivery,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (revocations, _) = broadcast::channel(1024);
        Self {
            tokens: AccessTokens::new(&keys, &settings.tokens),
            store,
            keys,
            otp_policy: settings.otp,
            token_policy: settings.tokens.clone(),
            limiter: IpRateLimiter::new(settings.ip_limits),
            delivery: Arc::new(delivery),
            test_codes: settings.test_codes.clone(),
            rotations: RotationCache::default(),
            revocations,
            metrics,
        }
    }

    /// Subscribes to session ends (logout, revocation, reuse detection), so
    /// that live connections of an ended session can be closed.
    pub(crate) fn session_ends(&self) -> broadcast::Receiver<SessionNotice> {
        self.revocations.subscribe()
    }

    fn limit(&self, action: LimitedAction, ctx: &ClientContext) -> Result<(), u64> {
        let Some(ip) = ctx.ip else { return Ok(()) };
        self.limiter
            .check(action, ip, Instant::now())
            .inspect_err(|_| Metrics::bump(&self.metrics.rate_limited))
    }

    async fn audit(
        &self,
        user: UserId,
        kind: AuditKind,
        session: Option<SessionId>,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) {
        let record = AuditRecord {
            at: now,
            kind,
            session_id: session,
            ip: ctx.ip.map(|ip| ip.to_string()),
            user_agent: ctx.user_agent.as_deref().map(|ua| truncate(ua, 200)),
        };
        // The audit trail is a record, not a gate: a failure to write it is
        // logged and does not fail the user's request.
        if let Err(e) = self.store.append_audit(user, &record).await {
            tracing::error!(error = ?e, "cannot append audit event");
        }
    }

    fn code_hash(&self, contact: &Contact, code: &str) -> [u8; 32] {
        self.keys.keyed_hash(
            HashPurpose::OneTimeCode,
            &[contact.key().as_bytes(), code.as_bytes()],
        )
    }

    fn refresh_hash(&self, token: &str) -> [u8; 32] {
        self.keys
            .keyed_hash(HashPurpose::RefreshToken, &[token.as_bytes()])
    }

    fn pair(
        &self,
        session: &SessionRecord,
        refresh: SecretString,
        now: DateTime<Utc>,
    ) -> TokenPair {
        let access = self.tokens.issue(session.user_id, session.id, now);
        TokenPair {
            access_token: access.token,
            token_type: "Bearer".to_owned(),
            expires_in: access.expires_in,
            expires_at: access.expires_at,
            refresh_token: refresh.expose_secret().to_owned(),
            session_id: session.id,
        }
    }

    /// Whether a session still exists and is live: not logged out, not
    /// revoked, not idle or older than the policy allows.
    pub(crate) async fn session_is_live(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .session(id)
            .await?
            .is_some_and(|session| self.is_live(&session, now)))
    }

    fn is_live(&self, session: &SessionRecord, now: DateTime<Utc>) -> bool {
        let idle = self.token_policy.session_idle.as_delta();
        let max = self.token_policy.session_max.as_delta();
        now - session.last_used_at < idle && now - session.created_at < max
    }

    /// Closes this node's sockets of a session another node ended (the
    /// session is gone from the shared store already).
    pub(crate) fn session_ended_elsewhere(&self, id: SessionId) {
        let _ = self.revocations.send(SessionNotice::Ended(id));
    }

    /// Has every socket here ask whether its session still lives: notices
    /// of sessions ended on other nodes may have been missed.
    pub(crate) fn sessions_may_have_ended(&self) {
        let _ = self.revocations.send(SessionNotice::MayHaveEnded);
    }

    async fn end_session(&self, id: SessionId) -> Result<bool, StoreError> {
        let existed = self.store.delete_session(id).await?;
        // Nobody listening is fine: no socket is open for this session.
        let _ = self.revocations.send(SessionNotice::Ended(id));
        Ok(existed)
    }

    /// Checks an access token: signature, claims, and that its session lives.
    pub(crate) async fn authenticate(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, AuthenticateError> {
        let claims: AccessClaims = self.tokens.verify(token, now).map_err(|e| match e {
            TokenRejection::Expired => AuthenticateError::Expired,
            TokenRejection::Invalid => AuthenticateError::Invalid,
        })?;
        let Some(session) = self.store.session(claims.sid).await? else {
            return Err(AuthenticateError::Invalid);
        };
        if session.user_id != claims.sub || !self.is_live(&session, now) {
            return Err(AuthenticateError::Invalid);
        }
        Ok(Authenticated {
            user_id: claims.sub,
            session_id: claims.sid,
            expires_at: claims.exp,
        })
    }

    /// Ends sessions of the caller's user. Returns how many ended.
    pub(crate) async fn logout(
        &self,
        who: &Authenticated,
        scope: LogoutScope,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let targets: Vec<SessionId> = match scope {
            LogoutScope::This => vec![who.session_id],
            LogoutScope::Others | LogoutScope::All => self
                .store
                .sessions_of(who.user_id)
                .await?
                .into_iter()
                .map(|s| s.id)
                .filter(|id| scope == LogoutScope::All || *id != who.session_id)
                .collect(),
        };
        let mut ended = 0;
        for id in targets {
            if self.end_session(id).await? {
                ended += 1;
                self.audit(who.user_id, AuditKind::Logout, Some(id), ctx, now)
                    .await;
            }
        }
        self.store.persist().await?;
        Ok(ended)
    }

    /// Revokes one of the caller's sessions. `Ok(false)` if it is not theirs
    /// or does not exist (one answer for both).
    pub(crate) async fn revoke_session(
        &self,
        who: &Authenticated,
        id: SessionId,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self.store.session(id).await? {
            Some(s) if s.user_id == who.user_id => {
                self.end_session(id).await?;
                self.audit(who.user_id, AuditKind::SessionRevoked, Some(id), ctx, now)
                    .await;
                self.store.persist().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The caller's account.
    pub(crate) async fn me(&self, who: &Authenticated) -> Result<Option<UserView>, StoreError> {
        Ok(self.store.user(who.user_id).await?.map(|u| user_view(&u)))
    }

    /// The caller's live sessions, newest first.
    pub(crate) async fn sessions(
        &self,
        who: &Authenticated,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionView>, StoreError> {
        let idle = self.token_policy.session_idle.as_delta();
        let max = self.token_policy.session_max.as_delta();
        let mut sessions: Vec<SessionView> = self
            .store
            .sessions_of(who.user_id)
            .await?
            .into_iter()
            .filter(|s| self.is_live(s, now))
            .map(|s| SessionView {
                id: s.id,
                device_name: s.device_name.clone(),
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: span::after(s.last_used_at, idle).min(span::after(s.created_at, max)),
                current: s.id == who.session_id,
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sessions)
    }

    /// The caller's newest audit events.
    pub(crate) async fn audit_events(
        &self,
        who: &Authenticated,
    ) -> Result<Vec<AuditEventView>, StoreError> {
        Ok(self
            .store
            .audit_of(who.user_id, 200)
            .await?
            .into_iter()
            .map(|r| AuditEventView {
                at: r.at,
                kind: r.kind,
                session_id: r.session_id,
                ip: r.ip,
                user_agent: r.user_agent,
            })
            .collect())
    }
}

fn user_view(user: &UserRecord) -> UserView {
    let contact = Contact::from_key(&user.contact_key).ok();
    UserView {
        id: user.id,
        email: match &contact {
            Some(Contact::Email(e)) => Some(e.to_string()),
            _ => None,
        },
        phone: match &contact {
            Some(Contact::Phone(p)) => Some(p.to_string()),
            _ => None,
        },
        created_at: user.created_at,
        root_document_id: user.root_document_id,
    }
}
