//! Refreshing: a refresh token is exchanged for a new pair and is then
//! spent. Presenting a spent token again means it was stolen (or a client
//! misbehaved), so the session ends, except within the grace window right
//! after a rotation, when the caller gets the pair just issued.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::{AuditKind, TokenPair};
use secrecy::{ExposeSecret, SecretString};

use super::keys::random_bytes;
use super::rate_limit::LimitedAction;
use super::{Auth, ClientContext, RefreshError};
use crate::metrics::Metrics;
use crate::store::SessionRecord;

/// The prefix of refresh tokens, so that leaked ones are easy to recognise
/// (for example by secret scanners).
const REFRESH_PREFIX: &str = "cdxr_";

impl Auth {
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
        let Some(entry) = self.store.refresh_entry(&hash).await? else {
            return Err(RefreshError::Invalid);
        };
        let lock = self.rotations.session_lock(entry.session_id);
        let _guard = lock.lock().await;
        let Some(session) = self.store.session(entry.session_id).await? else {
            return Err(RefreshError::Invalid);
        };
        if !self.is_live(&session, now) {
            self.end_session(session.id).await?;
            return Err(RefreshError::Invalid);
        }
        let grace = self.token_policy.refresh_grace.as_delta();
        if entry.generation + 1 == session.generation && now - session.rotated_at <= grace {
            let recent = self
                .rotations
                .current(session.id, session.generation, now, grace);
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
            self.end_session(session.id).await?;
            self.audit(
                session.user_id,
                AuditKind::ReuseDetected,
                Some(session.id),
                ctx,
                now,
            )
            .await;
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
            .rotate_session(&session, &self.refresh_hash(refresh.expose_secret()))
            .await?
        {
            return Err(RefreshError::Invalid);
        }
        self.audit(
            session.user_id,
            AuditKind::Refresh,
            Some(session.id),
            ctx,
            now,
        )
        .await;
        self.store.persist().await?;
        Metrics::bump(&self.metrics.refreshes);
        let grace = self.token_policy.refresh_grace.as_delta();
        self.rotations
            .remember(session.id, session.generation, refresh.clone(), now, grace);
        Ok(self.pair(&session, refresh, now))
    }
}

/// A fresh refresh token: the prefix and 32 random bytes.
pub(super) fn new_refresh_token() -> SecretString {
    SecretString::from(format!(
        "{REFRESH_PREFIX}{}",
        B64.encode(random_bytes::<32>())
    ))
}
