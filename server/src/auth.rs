//! Sign-in and sessions: the rules, independent of HTTP.
//!
//! [`Auth`] turns requests ("send a code", "verify this code", "refresh this
//! token") into store updates and tokens. The HTTP layer parses requests and
//! renders answers; this module decides. Time is passed in as `now`.

pub mod keys;
pub(crate) mod otp;
pub(crate) mod rate_limit;
pub(crate) mod span;
pub(crate) mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
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
use keys::{HashPurpose, ServerKeys, random_bytes};
use otp::{SendRefusal, VerifyOutcome};
use rate_limit::{IpRateLimiter, LimitedAction};
use tokens::{AccessClaims, AccessTokens, TokenRejection};

/// The prefix of refresh tokens, so that leaked ones are easy to recognise
/// (for example by secret scanners).
const REFRESH_PREFIX: &str = "cdxr_";

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

/// Why a code request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestCodeError {
    /// Per-IP limit, cooldown or send cap.
    #[error("too many code requests")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The identifier is locked after too many wrong codes.
    #[error("identifier locked after too many wrong codes")]
    Locked {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why a verification failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    /// Wrong, expired, used or never-issued code: one answer for all.
    #[error("invalid code")]
    InvalidCode,
    /// Per-IP limit.
    #[error("too many verifications from this address")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// Too many wrong codes for this identifier.
    #[error("identifier locked after too many wrong codes")]
    Locked {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    /// Unknown, expired, revoked or reused token: one answer for all.
    #[error("invalid refresh token")]
    Invalid,
    /// Per-IP limit.
    #[error("too many refreshes from this address")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// Why an access token was refused, for the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthenticateError {
    /// Valid but expired: the client should refresh.
    #[error("access token expired")]
    Expired,
    /// Anything else, including a session that has ended.
    #[error("not authenticated")]
    Invalid,
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
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

/// The refresh token most recently issued for a session, kept in memory for
/// the grace window so that a client that lost the response, or a second tab
/// refreshing at the same time, receives the current pair instead of being
/// treated as a thief.
#[derive(Debug)]
struct RecentRotation {
    generation: u64,
    token: SecretString,
    at: DateTime<Utc>,
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
    session_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    recent_rotations: Mutex<HashMap<SessionId, RecentRotation>>,
    revocations: broadcast::Sender<SessionId>,
    metrics: Arc<Metrics>,
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
            session_locks: Mutex::new(HashMap::new()),
            recent_rotations: Mutex::new(HashMap::new()),
            revocations,
            metrics,
        }
    }

    /// Subscribes to session ends (logout, revocation, reuse detection), so
    /// that live connections of an ended session can be closed.
    pub(crate) fn session_ends(&self) -> broadcast::Receiver<SessionId> {
        self.revocations.subscribe()
    }

    fn limit(&self, action: LimitedAction, ctx: &ClientContext) -> Result<(), u64> {
        let Some(ip) = ctx.ip else { return Ok(()) };
        self.limiter
            .check(action, ip, Instant::now())
            .inspect_err(|_| Metrics::bump(&self.metrics.rate_limited))
    }

    fn audit(
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
        if let Err(e) = self.store.append_audit(user, &record) {
            tracing::error!(error = ?e, "cannot append audit event");
        }
    }

    fn code_hash(&self, contact: &Contact, code: &str) -> [u8; 32] {
        self.keys.keyed_hash(
            HashPurpose::OneTimeCode,
            &[contact.key().as_bytes(), code.as_bytes()],
        )
    }

    /// Sends a code to `contact`. The answer and its timing are the same
    /// whether or not an account exists: delivery happens in the background.
    pub(crate) async fn request_code(
        &self,
        contact: &Contact,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<CodeRequested, RequestCodeError> {
        self.limit(LimitedAction::SendCode, ctx)
            .map_err(|retry_after| RequestCodeError::RateLimited { retry_after })?;
        let code = match self.test_codes.iter().find(|(c, _)| c == contact) {
            Some((_, fixed)) => fixed.clone(),
            None => SecretString::from(otp::generate_code(self.otp_policy.digits)),
        };
        let hash = self.code_hash(contact, code.expose_secret());
        let policy = self.otp_policy;
        let outcome = self
            .store
            .update_otp(&contact.key(), |r| otp::record_send(r, &hash, now, &policy))?;
        match outcome {
            Ok(()) => {}
            Err(SendRefusal::RateLimited { retry_after }) => {
                Metrics::bump(&self.metrics.rate_limited);
                return Err(RequestCodeError::RateLimited { retry_after });
            }
            Err(SendRefusal::Locked { retry_after }) => {
                Metrics::bump(&self.metrics.rate_limited);
                return Err(RequestCodeError::Locked { retry_after });
            }
        }
        let user = self.store.user_by_contact(&contact.key())?;
        if let Some(user) = &user {
            self.audit(user.id, AuditKind::CodeRequested, None, ctx, now);
        }
        self.store.persist().await?;
        Metrics::bump(&self.metrics.otp_requested);
        let delivery = Arc::clone(&self.delivery);
        let metrics = Arc::clone(&self.metrics);
        let store = self.store.clone();
        let contact = contact.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match delivery.deliver(&contact, &code).await {
                Ok(()) => {
                    Metrics::bump(&metrics.otp_delivered);
                    if let Some(user) = user {
                        let record = AuditRecord {
                            at: Utc::now(),
                            kind: AuditKind::CodeSent,
                            session_id: None,
                            ip: ctx.ip.map(|ip| ip.to_string()),
                            user_agent: ctx.user_agent.clone(),
                        };
                        if let Err(e) = store.append_audit(user.id, &record) {
                            tracing::error!(error = ?e, "cannot append audit event");
                        } else if let Err(e) = store.persist().await {
                            tracing::error!(error = ?e, "cannot flush audit event");
                        }
                    }
                }
                Err(e) => {
                    Metrics::bump(&metrics.otp_delivery_failed);
                    tracing::error!(error = ?e, "code delivery failed");
                }
            }
        });
        Ok(CodeRequested {
            expires_in: policy.ttl.as_secs(),
            resend_after: policy.resend_cooldown.as_secs(),
        })
    }

    /// Verifies a code and, if right, signs the user in on a new session,
    /// creating the account on first sign-in.
    pub(crate) async fn verify_code(
        &self,
        contact: &Contact,
        code: &str,
        device_name: Option<String>,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<SignIn, VerifyError> {
        self.limit(LimitedAction::VerifyCode, ctx)
            .map_err(|retry_after| VerifyError::RateLimited { retry_after })?;
        let code = code.trim();
        // A malformed code is hashed and counted like any wrong code, so that
        // its shape reveals nothing and still costs an attempt.
        let well_formed = otp::is_well_formed(code, self.otp_policy.digits);
        let hash = if well_formed {
            self.code_hash(contact, code)
        } else {
            [0u8; 32]
        };
        let policy = self.otp_policy;
        let outcome = self.store.update_otp(&contact.key(), |r| {
            otp::record_attempt(r, &hash, now, &policy)
        })?;
        let existing = self.store.user_by_contact(&contact.key())?;
        match outcome {
            VerifyOutcome::Accepted if well_formed => {}
            VerifyOutcome::Locked { retry_after } => {
                Metrics::bump(&self.metrics.rate_limited);
                return Err(VerifyError::Locked { retry_after });
            }
            VerifyOutcome::Rejected { now_locked } => {
                Metrics::bump(&self.metrics.otp_rejected);
                if let Some(user) = existing {
                    self.audit(user.id, AuditKind::CodeFailed, None, ctx, now);
                    if now_locked {
                        self.audit(user.id, AuditKind::Locked, None, ctx, now);
                    }
                }
                self.store.persist().await?;
                return Err(VerifyError::InvalidCode);
            }
            VerifyOutcome::Accepted => return Err(VerifyError::InvalidCode),
        }
        Metrics::bump(&self.metrics.otp_verified);
        let candidate = UserRecord {
            id: UserId::from_random_bytes(random_bytes()),
            contact_key: contact.key(),
            created_at: now,
            root_document_id: None,
        };
        let (user, new_user) = self.store.find_or_create_user(&candidate)?;
        let session = SessionRecord {
            id: SessionId::from_random_bytes(random_bytes()),
            user_id: user.id,
            device_name,
            created_at: now,
            last_used_at: now,
            generation: 0,
            rotated_at: now,
        };
        let refresh = new_refresh_token();
        self.store
            .insert_session(&session, &self.refresh_hash(refresh.expose_secret()))?;
        self.audit(user.id, AuditKind::Login, Some(session.id), ctx, now);
        self.store.persist().await?;
        Metrics::bump(&self.metrics.sessions_created);
        let tokens = self.pair(&session, refresh, now);
        Ok(SignIn {
            tokens,
            user: user_view(&user),
            new_user,
        })
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

    fn session_lock(&self, id: SessionId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.session_locks.lock().expect("lock holders never panic");
        // Drop locks nobody holds, so the map stays as small as the number of
        // refreshes in flight.
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(id).or_default())
    }

    /// Whether a session still exists and is live: not logged out, not
    /// revoked, not idle or older than the policy allows.
    pub(crate) fn session_is_live(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store
            .session(id)?
            .is_some_and(|session| self.is_live(&session, now)))
    }

    fn is_live(&self, session: &SessionRecord, now: DateTime<Utc>) -> bool {
        let idle = span::delta(self.token_policy.session_idle);
        let max = span::delta(self.token_policy.session_max);
        now - session.last_used_at < idle && now - session.created_at < max
    }

    /// Rotates a refresh token. Concurrent refreshes of one session are
    /// serialised: the first rotates, the others (presenting the token that
    /// was current a moment ago) get the same new pair.
    pub(crate) async fn refresh(
        &self,
        token: &str,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, RefreshError> {
        self.limit(LimitedAction::Refresh, ctx)
            .map_err(|retry_after| RefreshError::RateLimited { retry_after })?;
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Err(RefreshError::Invalid);
        }
        let hash = self.refresh_hash(token);
        let Some(entry) = self.store.refresh_entry(&hash)? else {
            return Err(RefreshError::Invalid);
        };
        let lock = self.session_lock(entry.session_id);
        let _guard = lock.lock().await;
        let Some(session) = self.store.session(entry.session_id)? else {
            return Err(RefreshError::Invalid);
        };
        if !self.is_live(&session, now) {
            self.end_session(session.id)?;
            return Err(RefreshError::Invalid);
        }
        let grace = span::delta(self.token_policy.refresh_grace);
        if entry.generation + 1 == session.generation && now - session.rotated_at <= grace {
            let recent = {
                let recent = self
                    .recent_rotations
                    .lock()
                    .expect("lock holders never panic");
                recent
                    .get(&session.id)
                    .filter(|r| r.generation == session.generation && now - r.at <= grace)
                    .map(|r| r.token.clone())
            };
            if let Some(current) = recent {
                return Ok(self.pair(&session, current, now));
            }
            // The current token was issued before a restart and is not in
            // memory: rotate once more from the current generation, which the
            // grace rule already allows this caller to obtain.
            return self.rotate(session, ctx, now).await;
        }
        if entry.generation != session.generation {
            Metrics::bump(&self.metrics.refresh_reuse_detected);
            tracing::warn!(session = %session.id, "refresh token reuse detected; session revoked");
            self.end_session(session.id)?;
            self.audit(
                session.user_id,
                AuditKind::ReuseDetected,
                Some(session.id),
                ctx,
                now,
            );
            self.store.persist().await?;
            return Err(RefreshError::Invalid);
        }
        self.rotate(session, ctx, now).await
    }

    async fn rotate(
        &self,
        mut session: SessionRecord,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, RefreshError> {
        let refresh = new_refresh_token();
        session.generation += 1;
        session.rotated_at = now;
        session.last_used_at = now;
        if !self
            .store
            .rotate_session(&session, &self.refresh_hash(refresh.expose_secret()))?
        {
            return Err(RefreshError::Invalid);
        }
        self.audit(
            session.user_id,
            AuditKind::Refresh,
            Some(session.id),
            ctx,
            now,
        );
        self.store.persist().await?;
        Metrics::bump(&self.metrics.refreshes);
        {
            let mut recent = self
                .recent_rotations
                .lock()
                .expect("lock holders never panic");
            let grace = span::delta(self.token_policy.refresh_grace);
            recent.retain(|_, r| now - r.at <= grace);
            recent.insert(
                session.id,
                RecentRotation {
                    generation: session.generation,
                    token: refresh.clone(),
                    at: now,
                },
            );
        }
        Ok(self.pair(&session, refresh, now))
    }

    fn end_session(&self, id: SessionId) -> Result<bool, StoreError> {
        let existed = self.store.delete_session(id)?;
        self.recent_rotations
            .lock()
            .expect("lock holders never panic")
            .remove(&id);
        // Nobody listening is fine: no socket is open for this session.
        let _ = self.revocations.send(id);
        Ok(existed)
    }

    /// Checks an access token: signature, claims, and that its session lives.
    pub(crate) fn authenticate(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, AuthenticateError> {
        let claims: AccessClaims = self.tokens.verify(token, now).map_err(|e| match e {
            TokenRejection::Expired => AuthenticateError::Expired,
            TokenRejection::Invalid => AuthenticateError::Invalid,
        })?;
        let Some(session) = self.store.session(claims.sid)? else {
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
                .sessions_of(who.user_id)?
                .into_iter()
                .map(|s| s.id)
                .filter(|id| scope == LogoutScope::All || *id != who.session_id)
                .collect(),
        };
        let mut ended = 0;
        for id in targets {
            if self.end_session(id)? {
                ended += 1;
                self.audit(who.user_id, AuditKind::Logout, Some(id), ctx, now);
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
        match self.store.session(id)? {
            Some(s) if s.user_id == who.user_id => {
                self.end_session(id)?;
                self.audit(who.user_id, AuditKind::SessionRevoked, Some(id), ctx, now);
                self.store.persist().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The caller's account.
    pub(crate) fn me(&self, who: &Authenticated) -> Result<Option<UserView>, StoreError> {
        Ok(self.store.user(who.user_id)?.map(|u| user_view(&u)))
    }

    /// The caller's live sessions, newest first.
    pub(crate) fn sessions(
        &self,
        who: &Authenticated,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionView>, StoreError> {
        let idle = span::delta(self.token_policy.session_idle);
        let max = span::delta(self.token_policy.session_max);
        let mut sessions: Vec<SessionView> = self
            .store
            .sessions_of(who.user_id)?
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
    pub(crate) fn audit_events(
        &self,
        who: &Authenticated,
    ) -> Result<Vec<AuditEventView>, StoreError> {
        Ok(self
            .store
            .audit_of(who.user_id, 200)?
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

fn new_refresh_token() -> SecretString {
    SecretString::from(format!(
        "{REFRESH_PREFIX}{}",
        B64.encode(random_bytes::<32>())
    ))
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
