//! Refreshing: a refresh token is exchanged for a new pair and is then
//! spent. Presenting a spent token again means it was stolen (or a client
//! misbehaved), so the session ends, except within the grace window right
//! after a rotation, when the caller gets the pair just issued.
//!
//! The token a rotation issues is derived from the one it spends (a keyed
//! hash of the session, the new generation and the spent token), not drawn
//! at random. So whichever node is asked, and however often, spending one
//! token yields one successor: the grace rule hands it out again without
//! any node remembering it (the store keeps only hashes), two nodes that
//! rotate the same token at once issue the same pair, and a restart
//! forgets nothing. It is as unguessable as a random token: computing it
//! takes the spent token and the server's key. Only the first token of a
//! session, issued at sign-in, is random.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::{AuditKind, TokenPair};
use secrecy::{ExposeSecret, SecretString};

use super::keys::{HashPurpose, random_bytes};
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
            // The immediate parent within the grace window: the current
            // token is its successor.
            let current = self.successor(token, &session);
            return Ok(self.pair(&session, current, now));
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
        self.rotate(session, token, ctx, now).await
    }

    /// Spends `token`, the current refresh token of `session`.
    async fn rotate(
        &self,
        mut session: SessionRecord,
        token: &str,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, RefreshError> {
        session.generation += 1;
        session.rotated_at = now;
        session.last_used_at = now;
        let refresh = self.successor(token, &session);
        if !self
            .store
            .rotate_session(&session, &self.refresh_hash(refresh.expose_secret()))
            .await?
        {
            // Another node spent the same token a moment ago, so it issued
            // this very successor: the caller gets the pair, as the grace
            // rule would give it a moment later. Anything else (the session
            // ended, or moved on further) refuses.
            let grace = self.token_policy.refresh_grace.as_delta();
            return match self.store.session(session.id).await? {
                Some(now_current)
                    if now_current.generation == session.generation
                        && now - now_current.rotated_at <= grace
                        && self.is_live(&now_current, now) =>
                {
                    Ok(self.pair(&now_current, refresh, now))
                }
                _ => Err(RefreshError::Invalid),
            };
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
        Ok(self.pair(&session, refresh, now))
    }

    /// The refresh token that spending `spent` issues for `session` at its
    /// current generation (the one a rotation moves it to).
    fn successor(&self, spent: &str, session: &SessionRecord) -> SecretString {
        let derived = self.keys.keyed_hash(
            HashPurpose::RefreshChild,
            &[
                session.id.as_bytes().as_slice(),
                session.generation.to_be_bytes().as_slice(),
                spent.as_bytes(),
            ],
        );
        SecretString::from(format!("{REFRESH_PREFIX}{}", B64.encode(derived)))
    }
}

/// A fresh refresh token: the prefix and 32 random bytes.
pub(super) fn new_refresh_token() -> SecretString {
    SecretString::from(format!(
        "{REFRESH_PREFIX}{}",
        B64.encode(random_bytes::<32>())
    ))
}
