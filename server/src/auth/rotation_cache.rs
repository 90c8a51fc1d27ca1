//! What refreshing keeps in memory: a lock per session, so that concurrent
//! refreshes of one session on this node run one at a time. Refreshes on
//! different nodes meet in the database instead (see `refresh.rs`); the
//! lock only spares them a lost race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use codeedex_schema::id::SessionId;

/// Per-session refresh locks.
#[derive(Debug, Default)]
pub(super) struct RotationCache {
    session_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
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
}
