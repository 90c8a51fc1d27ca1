//! Group commit: one flusher thread makes writes durable in batches.
//!
//! Writers take a ticket after their writes and wait for it. The flusher
//! thread sleeps until some ticket is waited for, notes the newest ticket
//! taken so far, flushes once, and then declares every ticket up to the
//! noted one durable: a hundred concurrent writers share one fsync instead
//! of queueing for a hundred.
//!
//! Appends to the document log go through the same thread: writers hand
//! their [`Append`] over, and the flusher writes every append waiting at
//! the start of a round in one transaction, then flushes. Concurrent edits
//! of different users share one transaction and one flush instead of
//! queueing behind each other's transactions on the request threads.
//!
//! The flush runs on a thread of its own, called synchronously, rather than
//! through sled's `flush_async`: that hands each flush to sled's shared IO
//! pool, whose queue wakes every idle pool thread on every job. Under a
//! steady stream of flushes those wake-ups cost more CPU than the flushes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::StoreError;
use super::documents::AppendLog;
use super::{Append, Appended};

/// The most change bytes one transaction takes; the rest waits for the next
/// round. sled holds a transaction's writes in memory until it commits.
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// An append handed to the flusher, and where its outcome goes: the feed
/// sequence and the ticket that makes it durable.
struct PendingAppend {
    append: Append,
    reply: oneshot::Sender<Result<(Appended, u64), StoreError>>,
}

/// What the flusher has made durable so far.
#[derive(Debug, Clone)]
enum Durable {
    /// Every ticket up to this one is on disk.
    UpTo(u64),
    /// A flush failed; the store cannot promise durability any more.
    Failed(sled::Error),
}

/// The flusher's inbox: the newest ticket somebody waits for, the appends
/// to write, and whether the store is closing (or the flusher has stopped).
/// Appends are bounded by their writers: each holds its document's lock
/// while it waits, and each connection performs one request at a time.
#[derive(Default)]
struct Wanted {
    ticket: u64,
    appends: Vec<PendingAppend>,
    stop: bool,
    stopped: bool,
}

struct Shared {
    tickets: AtomicU64,
    wanted: Mutex<Wanted>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    #[cfg(test)]
    control: std::sync::Arc<super::flush_control::FlushControl>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Owns the flusher thread; stops and joins it when the last handle to the
/// store goes away.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `log`'s database.
    pub(crate) fn start(log: AppendLog) -> std::io::Result<Self> {
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
                move || {
                    // This thread commits each group and then flushes it:
                    // writing sled's log buffers here, not on its IO pool,
                    // makes that one write and one sync per group instead
                    // of two of each racing on one page (the transaction's
                    // batch manifest and its data; vendor/sled/PATCHES.md).
                    let _own_writes = sled::write_log_buffers_on_this_thread();
                    flush_loop(&shared, &log);
                    // Whoever hands over an append from now on, or handed
                    // one over that was not written, hears at once.
                    let left = {
                        let mut wanted = lock(&shared.wanted);
                        wanted.stopped = true;
                        std::mem::take(&mut wanted.appends)
                    };
                    for pending in left {
                        let _ = pending.reply.send(Err(StoreError::Engine(closed())));
                    }
                }
            })?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Writes `append` with the next group, and returns its feed sequence
    /// and the ticket that makes it durable.
    pub(crate) async fn append(&self, append: Append) -> Result<(Appended, u64), StoreError> {
        let (reply, outcome) = oneshot::channel();
        {
            let mut wanted = lock(&self.shared.wanted);
            if wanted.stopped {
                return Err(StoreError::Engine(closed()));
            }
            wanted.appends.push(PendingAppend { append, reply });
            self.shared.wake.notify_one();
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(StoreError::Engine(closed())))
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

fn flush_loop(shared: &Shared, log: &AppendLog) {
    let mut done = 0;
    let mut last_start: Option<std::time::Instant> = None;
    loop {
        let batch = {
            let mut wanted = lock(&shared.wanted);
            while wanted.ticket <= done && wanted.appends.is_empty() && !wanted.stop {
                wanted = shared
                    .wake
                    .wait(wanted)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wanted.stop {
                return;
            }
            take_batch(&mut wanted.appends)
        };
        if !batch.is_empty() && write_batch(shared, log, batch).is_err() {
            return;
        }
        if let Some(rest) = last_start.and_then(|at| MIN_FLUSH_INTERVAL.checked_sub(at.elapsed())) {
            std::thread::sleep(rest);
        }
        last_start = Some(std::time::Instant::now());
        // Every ticket up to here was taken after its writes finished, so
        // this flush covers all of them.
        let covered = shared.tickets.load(Ordering::SeqCst);
        match flush(shared, &log.db) {
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

/// The appends waiting, oldest first, up to [`MAX_BATCH_BYTES`] (at least
/// one); the rest stay for the next round.
fn take_batch(waiting: &mut Vec<PendingAppend>) -> Vec<PendingAppend> {
    let mut bytes = 0;
    let mut take = 0;
    for pending in waiting.iter() {
        bytes += pending.append.bytes();
        if take > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        take += 1;
    }
    waiting.drain(..take).collect()
}

/// Writes one group of appends in one transaction and tells each writer its
/// outcome with a ticket the next flush covers. An engine error fails them
/// all and stops the flusher, as a failed flush does.
fn write_batch(shared: &Shared, log: &AppendLog, batch: Vec<PendingAppend>) -> Result<(), ()> {
    let appends: Vec<&Append> = batch.iter().map(|p| &p.append).collect();
    match log.write(&appends) {
        Ok(outcomes) => {
            let ticket = shared.tickets.fetch_add(1, Ordering::SeqCst) + 1;
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending
                    .reply
                    .send(outcome.map(|appended| (appended, ticket)));
            }
            Ok(())
        }
        Err(error) => {
            tracing::error!(error = %error, "writing to the store failed");
            for pending in batch {
                let _ = pending.reply.send(Err(StoreError::Engine(error.clone())));
            }
            shared.durable.send_replace(Durable::Failed(error));
            Err(())
        }
    }
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

    fn log(db: &sled::Db) -> AppendLog {
        let tree = |name: &str| db.open_tree(name).expect("open tree");
        AppendLog {
            db: db.clone(),
            documents: tree("documents"),
            events: tree("events"),
            user_feed: tree("user_feed"),
            user_feed_position: tree("user_feed_position"),
            usage: tree("usage"),
            task_index: tree("task_index"),
        }
    }

    #[tokio::test]
    async fn a_waited_ticket_becomes_durable_and_later_tickets_do_not() {
        let (_dir, db) = open();
        let commit = GroupCommit::start(log(&db)).expect("flusher starts");
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
        let commit = Arc::new(GroupCommit::start(log(&db)).expect("flusher starts"));
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

    /// A transaction over two trees on a thread that writes its own log
    /// buffers: sled keeps its buffers (the batch manifest's and the
    /// data's) for that thread's next flush.
    fn transaction_kept_for_the_next_flush(db: &sled::Db, key: &[u8]) {
        use sled::Transactional;
        let (a, b) = (
            db.open_tree("a").expect("open tree"),
            db.open_tree("b").expect("open tree"),
        );
        (&a, &b)
            .transaction(|(a, b)| {
                a.insert(key, b"v")?;
                b.insert(key, b"v")?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .expect("transaction");
    }

    #[test]
    fn buffers_a_thread_keeps_for_its_flush_do_not_hold_other_threads_for_ever() {
        // Each step runs on threads of its own and reports here, so that a
        // step that never returns fails the test instead of hanging it
        // (the stuck threads and the database are left behind).
        let (_dir, db) = open();
        let (report, reports) = std::sync::mpsc::channel();
        type Report = std::sync::mpsc::Sender<(&'static str, bool)>;
        fn flush_elsewhere(db: &sled::Db, report: &Report, step: &'static str) {
            let (db, report) = (db.clone(), report.clone());
            std::thread::spawn(move || {
                let _ = report.send((step, db.flush().is_ok()));
            });
        }
        {
            let (db, report) = (db.clone(), report.clone());
            std::thread::spawn(move || {
                let own = sled::write_log_buffers_on_this_thread();
                transaction_kept_for_the_next_flush(&db, b"first");
                // Another thread's flush waits for the kept buffers, and
                // this thread's flush releases it.
                flush_elsewhere(
                    &db,
                    &report,
                    "another thread's flush, released by the keeper's",
                );
                let _ = report.send(("the keeping thread's flush", db.flush().is_ok()));
                // A thread that stops writing its own buffers without a
                // flush writes what it kept.
                transaction_kept_for_the_next_flush(&db, b"second");
                drop(own);
                flush_elsewhere(&db, &report, "a flush after the keeper dropped its guard");
            });
        }
        let mut finished = Vec::new();
        while finished.len() < 3 {
            match reports.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok((step, ok)) => {
                    assert!(ok, "{step} failed");
                    finished.push(step);
                }
                Err(_) => {
                    std::mem::forget(db);
                    panic!("a flush never returned; finished: {finished:?}");
                }
            }
        }
    }

    #[test]
    fn what_a_thread_wrote_itself_is_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().expect("open sled");
            let _own = sled::write_log_buffers_on_this_thread();
            for i in 0..100u32 {
                transaction_kept_for_the_next_flush(&db, &i.to_be_bytes());
                if i % 10 == 9 {
                    db.flush().expect("flush");
                }
            }
        }
        let db = sled::Config::new().path(&path).open().expect("reopen sled");
        for name in ["a", "b"] {
            let tree = db.open_tree(name).expect("open tree");
            assert_eq!(tree.len(), 100, "tree {name} lost writes");
        }
    }

    #[test]
    fn dropping_the_last_handle_stops_the_flusher() {
        let (_dir, db) = open();
        let commit = GroupCommit::start(log(&db)).expect("flusher starts");
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
