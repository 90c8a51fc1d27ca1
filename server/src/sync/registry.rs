//! Which peer ids and how many connections each user has.
//!
//! automerge-repo peer ids are chosen by peers, so a bare protocol lets one
//! client disconnect another by joining with its id. Here a peer id is bound
//! to the user whose connection holds it: another user's join with that id is
//! refused, and the same user's new join replaces the old connection (as the
//! reference server does after a reconnect).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use codeedex_schema::id::UserId;
use tokio::sync::oneshot;

use super::hub::ConnectionId;

/// The answer to a join.
#[derive(Debug)]
pub(crate) enum Bind {
    /// The peer id is now this connection's.
    Bound,
    /// Another user's live connection holds the id.
    TakenByAnotherUser,
}

#[derive(Debug)]
struct Holder {
    user: UserId,
    conn: ConnectionId,
    replaced: Option<oneshot::Sender<()>>,
}

/// Live bindings and per-user connection counts.
#[derive(Debug, Default)]
pub struct PeerRegistry {
    peers: Mutex<HashMap<String, Holder>>,
    connections: Mutex<HashMap<UserId, usize>>,
    /// The sum of `connections`, kept beside it so that the connection gate
    /// reads it on every upgrade without walking every user.
    total: AtomicUsize,
}

/// A connection counted against its user's limit, for as long as it lives:
/// dropping it releases the slot, however the connection ends.
#[derive(Debug)]
pub(crate) struct Admission {
    registry: Arc<PeerRegistry>,
    user: UserId,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.registry.release(self.user);
    }
}

impl PeerRegistry {
    /// Counts a new connection for `user`, unless the user already has `max`.
    pub(crate) fn admit(self: &Arc<Self>, user: UserId, max: usize) -> Option<Admission> {
        let mut counts = self.connections.lock().expect("never poisoned");
        let count = counts.entry(user).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            registry: Arc::clone(self),
            user,
        })
    }

    /// How many connections `user` holds.
    #[cfg(test)]
    pub(crate) fn connections_of(&self, user: UserId) -> usize {
        self.connections
            .lock()
            .expect("never poisoned")
            .get(&user)
            .copied()
            .unwrap_or(0)
    }

    /// How many connections are open, over all users.
    pub(crate) fn total_connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn release(&self, user: UserId) {
        let mut counts = self.connections.lock().expect("never poisoned");
        if let Some(count) = counts.get_mut(&user) {
            *count = count.saturating_sub(1);
            self.total.fetch_sub(1, Ordering::Relaxed);
            if *count == 0 {
                counts.remove(&user);
            }
        }
    }

    /// Binds `peer_id` to a connection. `replaced` fires if a later join of
    /// the same user takes the id over.
    pub(crate) fn bind(
        &self,
        peer_id: &str,
        user: UserId,
        conn: ConnectionId,
        replaced: oneshot::Sender<()>,
    ) -> Bind {
        let mut peers = self.peers.lock().expect("never poisoned");
        if let Some(holder) = peers.get_mut(peer_id) {
            if holder.user != user {
                return Bind::TakenByAnotherUser;
            }
            if let Some(tx) = holder.replaced.take() {
                let _ = tx.send(());
            }
        }
        peers.insert(
            peer_id.to_owned(),
            Holder {
                user,
                conn,
                replaced: Some(replaced),
            },
        );
        Bind::Bound
    }

    /// Releases a binding if this connection still holds it.
    pub(crate) fn unbind(&self, peer_id: &str, conn: ConnectionId) {
        let mut peers = self.peers.lock().expect("never poisoned");
        if peers.get(peer_id).is_some_and(|h| h.conn == conn) {
            peers.remove(peer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_user_cannot_take_a_bound_peer_id() {
        let r = PeerRegistry::default();
        let (ann, bob) = (
            UserId::from_random_bytes([1; 16]),
            UserId::from_random_bytes([2; 16]),
        );
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(r.bind("p", ann, 1, tx), Bind::Bound));
        let (tx, _rx2) = oneshot::channel();
        assert!(matches!(r.bind("p", bob, 2, tx), Bind::TakenByAnotherUser));
    }

    #[test]
    fn the_same_user_rejoining_replaces_the_old_connection() {
        let r = PeerRegistry::default();
        let ann = UserId::from_random_bytes([1; 16]);
        let (tx, mut old) = oneshot::channel();
        r.bind("p", ann, 1, tx);
        let (tx, _new) = oneshot::channel();
        assert!(matches!(r.bind("p", ann, 2, tx), Bind::Bound));
        assert!(
            old.try_recv().is_ok(),
            "the old connection is told to close"
        );
        r.unbind("p", 1);
        let bob = UserId::from_random_bytes([2; 16]);
        let (tx, _rx) = oneshot::channel();
        assert!(
            matches!(r.bind("p", bob, 3, tx), Bind::TakenByAnotherUser),
            "the stale unbind did not free it"
        );
    }

    #[test]
    fn connections_per_user_are_capped_and_released_when_dropped() {
        let r = Arc::new(PeerRegistry::default());
        let ann = UserId::from_random_bytes([1; 16]);
        let first = r.admit(ann, 2).expect("room for one");
        let _second = r.admit(ann, 2).expect("room for two");
        assert!(r.admit(ann, 2).is_none());
        drop(first);
        assert_eq!(r.connections_of(ann), 1);
        assert!(r.admit(ann, 2).is_some());
    }

    #[test]
    fn a_connection_task_that_panics_still_releases_its_slot() {
        let r = Arc::new(PeerRegistry::default());
        let ann = UserId::from_random_bytes([1; 16]);
        let admission = r.admit(ann, 1).expect("room");
        let crashed = std::thread::spawn(move || {
            let _held = admission;
            panic!("a connection task dies");
        })
        .join();
        assert!(crashed.is_err());
        assert_eq!(r.connections_of(ann), 0);
    }
}
