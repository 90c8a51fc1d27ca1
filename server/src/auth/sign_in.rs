//! Signing in: a one-time code is sent to a contact, and the right code
//! opens a session (creating the account on first sign-in).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::{AuditKind, DeviceName};
use codeedex_schema::contact::Contact;
use codeedex_schema::id::{SessionId, UserId};
use secrecy::ExposeSecret;

use super::keys::random_bytes;
use super::otp::{self, OtpCode, SendRefusal, VerifyOutcome};
use super::rate_limit::LimitedAction;
use super::refresh::new_refresh_token;
use super::{Auth, ClientContext, CodeRequested, RequestCodeError, SignIn, VerifyError, user_view};
use crate::metrics::Metrics;
use crate::store::{AuditRecord, SessionRecord, UserRecord};

impl Auth {
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
            Some((_, fixed)) => OtpCode::fixed(fixed.clone()),
            None => OtpCode::generate(self.otp_policy.digits),
        };
        let hash = self.code_hash(contact, code.expose_secret());
        let policy = self.otp_policy;
        let outcome = self
            .store
            .update_otp(&contact.key(), |r| otp::record_send(r, &hash, now, &policy))
            .await?;
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
        let user = self.store.user_by_contact(&contact.key()).await?;
        if let Some(user) = &user {
            self.audit(user.id, AuditKind::CodeRequested, None, ctx, now)
                .await;
        }
        self.store.persist().await?;
        Metrics::bump(&self.metrics.otp_requested);
        let delivery = Arc::clone(&self.delivery);
        let metrics = Arc::clone(&self.metrics);
        let store = self.store.clone();
        let contact = contact.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match delivery.deliver(&contact, code.as_secret()).await {
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
                        if let Err(e) = store.append_audit(user.id, &record).await {
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
        code: &OtpCode,
        device_name: Option<DeviceName>,
        ctx: &ClientContext,
        now: DateTime<Utc>,
    ) -> Result<SignIn, VerifyError> {
        self.limit(LimitedAction::VerifyCode, ctx)
            .map_err(|retry_after| VerifyError::RateLimited { retry_after })?;
        // A malformed code is hashed and counted like any wrong code, so that
        // its shape reveals nothing and still costs an attempt.
        let well_formed = code.is_well_formed(self.otp_policy.digits);
        let hash = if well_formed {
            self.code_hash(contact, code.expose_secret())
        } else {
            [0u8; 32]
        };
        let policy = self.otp_policy;
        let outcome = self
            .store
            .update_otp(&contact.key(), |r| {
                otp::record_attempt(r, &hash, now, &policy)
            })
            .await?;
        let existing = self.store.user_by_contact(&contact.key()).await?;
        match outcome {
            VerifyOutcome::Accepted if well_formed => {}
            VerifyOutcome::Locked { retry_after } => {
                Metrics::bump(&self.metrics.rate_limited);
                return Err(VerifyError::Locked { retry_after });
            }
            VerifyOutcome::Rejected { now_locked } => {
                Metrics::bump(&self.metrics.otp_rejected);
                if let Some(user) = existing {
                    self.audit(user.id, AuditKind::CodeFailed, None, ctx, now)
                        .await;
                    if now_locked {
                        self.audit(user.id, AuditKind::Locked, None, ctx, now).await;
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
        let (user, new_user) = self.store.find_or_create_user(&candidate).await?;
        let session = SessionRecord {
            id: SessionId::from_random_bytes(random_bytes()),
            user_id: user.id,
            device_name: device_name.map(DeviceName::into_string),
            created_at: now,
            last_used_at: now,
            generation: 0,
            rotated_at: now,
        };
        let refresh = new_refresh_token();
        self.store
            .insert_session(&session, &self.refresh_hash(refresh.expose_secret()))
            .await?;
        self.audit(user.id, AuditKind::Login, Some(session.id), ctx, now)
            .await;
        self.store.persist().await?;
        Metrics::bump(&self.metrics.sessions_created);
        let tokens = self.pair(&session, refresh, now);
        Ok(SignIn {
            tokens,
            user: user_view(&user),
            new_user,
        })
    }
}
