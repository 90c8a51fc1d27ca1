//! What refreshing keeps in memory: a lock per session, so that concurrent
//! refreshes of one session run one at a time, and the refresh token most
//! recently issued for each session, for the grace window.
//!
//! Both are a cache: after a restart they are empty, and a refresh within
//! the grace window then rotates once more instead (see `refresh.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use codeedex_schema::id::SessionId;
use secrecy::SecretString;

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

/// Per-session refresh locks and recent rotations.
#[derive(Debug, Default)]
pub(super) struct RotationCache {
    session_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    recent: Mutex<HashMap<SessionId, RecentRotation>>,
}

impl RotationCache {
    /// The lock that serialises refreshes of `id`.
    pub(super) fn session_lock(&self, id: SessionId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.session_locks.lock().expect("lock holders never panic");
        // Drop locks nobody holds, so the map stays as small as the number of
        // refreshes in flight.
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(id).or_default())
    }

    /// The refresh token issued for `session` at `generation`, if it was
    /// issued within `grace` of `now`.
    pub(super) fn current(
        &self,
        session: SessionId,
        generation: u64,
        now: DateTime<Utc>,
        grace: TimeDelta,
    ) -> Option<SecretString> {
        let recent = self.recent.lock().expect("lock holders never panic");
        recent
            .get(&session)
            .filter(|r| r.generation == generation && now - r.at <= grace)
            .map(|r| r.token.clone())
    }

    /// Remembers the token just issued for `session`, and forgets every
    /// rotation older than `grace`.
    pub(super) fn remember(
        &self,
        session: SessionId,
        generation: u64,
        token: SecretString,
        now: DateTime<Utc>,
        grace: TimeDelta,
    ) {
        let mut recent = self.recent.lock().expect("lock holders never panic");
        recent.retain(|_, r| now - r.at <= grace);
        recent.insert(
            session,
            RecentRotation {
                generation,
                token,
                at: now,
            },
        );
    }

    /// Forgets the session's recent rotation (the session ended).
    pub(super) fn forget(&self, session: SessionId) {
        self.recent
            .lock()
            .expect("lock holders never panic")
            .remove(&session);
    }
}
