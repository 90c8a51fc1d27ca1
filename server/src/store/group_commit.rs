//! Group commit: one flusher thread makes writes durable in batches.
//!
//! Writers take a ticket after their writes and wait for it. The flusher
//! thread sleeps until some ticket is waited for, notes the newest ticket
//! taken so far, flushes once, and then declares every ticket up to the
//! noted one durable: a hundred concurrent writers share one fsync instead
//! of queueing for a hundred.
//!
//! The flush runs on a thread of its own, called synchronously, rather than
//! through sled's `flush_async`: that hands each flush to sled's shared IO
//! pool, whose queue wakes every idle pool thread on every job. Under a
//! steady stream of flushes those wake-ups cost more CPU than the flushes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// What the flusher has made durable so far.
#[derive(Debug, Clone)]
enum Durable {
    /// Every ticket up to this one is on disk.
    UpTo(u64),
    /// A flush failed; the store cannot promise durability any more.
    Failed(sled::Error),
}

/// The flusher's inbox: the newest ticket somebody waits for, and whether
/// the store is closing.
#[derive(Debug, Default)]
struct Wanted {
    ticket: u64,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    tickets: AtomicU64,
    wanted: Mutex<Wanted>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    #[cfg(test)]
    control: std::sync::Arc<super::flush_control::FlushControl>,
}

/// Owns the flusher thread; stops and joins it when the last handle to the
/// store goes away.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`.
    pub(crate) fn start(db: sled::Db) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            tickets: AtomicU64::new(0),
            wanted: Mutex::new(Wanted::default()),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable::UpTo(0)),
            #[cfg(test)]
            control: std::sync::Arc::default(),
        });
        let flusher = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || flush_loop(&shared, &db)
            })?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// A ticket covering every write finished before this call.
    pub(crate) fn ticket(&self) -> u64 {
        self.shared.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The test's hand on this engine's flushes.
    #[cfg(test)]
    pub(crate) fn control(&self) -> std::sync::Arc<super::flush_control::FlushControl> {
        std::sync::Arc::clone(&self.shared.control)
    }

    /// The newest ticket handed out.
    pub(crate) fn latest(&self) -> u64 {
        self.shared.tickets.load(Ordering::SeqCst)
    }

    /// Whether the writes behind `ticket` are on disk.
    pub(crate) fn is_durable(&self, ticket: u64) -> bool {
        matches!(*self.shared.durable.borrow(), Durable::UpTo(done) if done >= ticket)
    }

    /// Waits until the writes behind `ticket` are on disk.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), sled::Error> {
        let mut durable = self.shared.durable.subscribe();
        if let Some(outcome) = settled(&durable.borrow_and_update(), ticket) {
            return outcome;
        }
        {
            let mut wanted = lock(&self.shared.wanted);
            if wanted.ticket < ticket {
                wanted.ticket = ticket;
                self.shared.wake.notify_one();
            }
        }
        loop {
            // The sender lives as long as `self`, so `changed` cannot fail
            // while we borrow `self`.
            if durable.changed().await.is_err() {
                return Err(closed());
            }
            if let Some(outcome) = settled(&durable.borrow_and_update(), ticket) {
                return outcome;
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // A flush a test left held would never let the flusher stop.
        #[cfg(test)]
        self.shared
            .control
            .set(super::flush_control::FlushMode::Pass);
        lock(&self.shared.wanted).stop = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            // A panicking flusher has already reported itself; there is
            // nothing more to do with it here.
            let _ = flusher.join();
        }
    }
}

fn settled(durable: &Durable, ticket: u64) -> Option<Result<(), sled::Error>> {
    match durable {
        Durable::UpTo(done) if *done >= ticket => Some(Ok(())),
        Durable::UpTo(_) => None,
        Durable::Failed(error) => Some(Err(error.clone())),
    }
}

/// The shortest time between the starts of two flushes. Under a steady
/// stream of writes the flusher would otherwise flush back to back, as fast
/// as the disk allows, and spend a core's worth of CPU doing it; waiting for
/// the rest of this interval lets one flush cover more writes. A write that
/// arrives after a quiet spell is flushed at once.
const MIN_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_micros(500);

fn flush_loop(shared: &Shared, db: &sled::Db) {
    let mut done = 0;
    let mut last_start: Option<std::time::Instant> = None;
    loop {
        {
            let mut wanted = lock(&shared.wanted);
            while wanted.ticket <= done && !wanted.stop {
                wanted = shared
                    .wake
                    .wait(wanted)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wanted.stop {
                return;
            }
        }
        if let Some(rest) = last_start.and_then(|at| MIN_FLUSH_INTERVAL.checked_sub(at.elapsed())) {
            std::thread::sleep(rest);
        }
        last_start = Some(std::time::Instant::now());
        // Every ticket up to here was taken after its writes finished, so
        // this flush covers all of them.
        let covered = shared.tickets.load(Ordering::SeqCst);
        match flush(shared, db) {
            Ok(_) => {
                done = covered;
                shared.durable.send_replace(Durable::UpTo(covered));
            }
            Err(error) => {
                tracing::error!(error = %error, "flushing the store failed");
                shared.durable.send_replace(Durable::Failed(error));
                return;
            }
        }
    }
}

/// Flushes `db`; in the server's tests, after the test's gate
/// ([`super::flush_control`]) lets it.
fn flush(
    #[cfg_attr(not(test), allow(unused_variables))] shared: &Shared,
    db: &sled::Db,
) -> sled::Result<usize> {
    #[cfg(test)]
    if let Some(error) = shared.control.before_flush() {
        return Err(error);
    }
    db.flush()
}

fn lock(wanted: &Mutex<Wanted>) -> std::sync::MutexGuard<'_, Wanted> {
    // The flusher's inbox holds two plain values that are always valid, so
    // a panic elsewhere while holding the lock leaves nothing to repair.
    wanted.lock().unwrap_or_else(PoisonError::into_inner)
}

fn closed() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the store's flusher has stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        (dir, db)
    }

    #[tokio::test]
    async fn a_waited_ticket_becomes_durable_and_later_tickets_do_not() {
        let (_dir, db) = open();
        let commit = GroupCommit::start(db.clone()).expect("flusher starts");
        db.insert(b"k", b"v").expect("insert");
        let first = commit.ticket();
        assert!(!commit.is_durable(first));
        commit.wait(first).await.expect("flush");
        assert!(commit.is_durable(first));
        let second = commit.ticket();
        assert!(
            !commit.is_durable(second),
            "a flush covers only earlier tickets"
        );
    }

    #[tokio::test]
    async fn every_concurrent_waiter_is_released() {
        let (_dir, db) = open();
        let commit = Arc::new(GroupCommit::start(db.clone()).expect("flusher starts"));
        let waiters: Vec<_> = (0..64u32)
            .map(|i| {
                let (commit, db) = (Arc::clone(&commit), db.clone());
                tokio::spawn(async move {
                    db.insert(i.to_be_bytes(), b"v").expect("insert");
                    let ticket = commit.ticket();
                    commit.wait(ticket).await.expect("flush");
                    ticket
                })
            })
            .collect();
        let mut newest = 0;
        for waiter in waiters {
            newest = newest.max(waiter.await.expect("no panic"));
        }
        assert!(commit.is_durable(newest));
    }

    #[test]
    fn dropping_the_last_handle_stops_the_flusher() {
        let (_dir, db) = open();
        let commit = GroupCommit::start(db).expect("flusher starts");
        // Drop joins the flusher thread, so it returns only once the thread
        // has stopped.
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(commit);
            let _ = done.send(());
        });
        assert!(
            dropped
                .recv_timeout(std::time::Duration::from_secs(5))
                .is_ok(),
            "the flusher did not stop"
        );
    }
}
