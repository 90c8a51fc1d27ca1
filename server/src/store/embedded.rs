//! The embedded engine: everything in one sled database under the data
//! directory, in named trees. Records are JSON so that a person can inspect
//! a store with a sled shell; keys are fixed-width bytes so that prefix
//! scans never match a longer neighbouring key.
//!
//! sled writes to disk in the background; `Embedded::persist` waits until
//! every write made so far is on disk. Callers await it before answering a
//! request whose effect must survive a crash.
//!
//! This file holds the handle and durability. What is kept, by concept:
//! `accounts` (users, codes, sessions, refresh tokens, audit), `documents`
//! (ownership, change log, snapshots, feed), `sync_states`, `task_index`,
//! `usage`; how: `recovery` (the engine in use and its replacement after a
//! disk failure), `group_commit` (shared flushes and batched appends),
//! `verify` (consistency check).

mod accounts;
mod documents;
mod export;
#[cfg(test)]
pub(crate) mod flush_control;
mod group_commit;
mod recovery;
mod secrets;
mod sync_states;
mod task_index;
mod usage;
mod verify;

use std::path::Path;

use sled::Tree;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    Append, Appended, AuditRecord, Claim, DocumentMeta, EventRecord, IndexUpdate, OtpRecord,
    RefreshEntry, SessionRecord, StoreError, StoreOptions, StoredDocument, Ticket, UserRecord,
    decode, encode,
};
pub(crate) use recovery::StoreHealth;

/// The on-disk format this build reads and writes. Bump it with a migration.
pub(crate) const FORMAT_VERSION: u32 = 1;

const FORMAT_KEY: &[u8] = b"format_version";

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e)
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Engine(e),
        }
    }
}

pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// One open database: the sled handle, its trees and its flusher. The store
/// keeps one at a time and replaces it, whole, after the disk failed (see
/// [`recovery`]).
pub(crate) struct Engine {
    /// Which engine this is: 1 for the first one the process opened, one
    /// more for each reopen. Durability tickets carry it, so that no ticket
    /// of a failed engine is ever reported durable by its successor.
    epoch: u64,
    db: sled::Db,
    /// user id → [`UserRecord`].
    users: Tree,
    /// contact key (`email:…` / `phone:…`) → user id.
    identities: Tree,
    /// contact key → [`OtpRecord`]: the pending code and the send and failure history.
    otp: Tree,
    /// session id → [`SessionRecord`].
    sessions: Tree,
    /// user id ‖ session id → nothing: the sessions of a user.
    user_sessions: Tree,
    /// keyed hash of a refresh token → [`RefreshEntry`].
    refresh_tokens: Tree,
    /// session id ‖ generation → keyed hash: the whole chain, to delete it with the session.
    session_tokens: Tree,
    /// user id ‖ sequence → [`AuditRecord`].
    audit: Tree,
    /// document id → [`DocumentMeta`](documents::DocumentMeta): owner, tombstone, log position.
    documents: Tree,
    /// document id ‖ sequence → [`EventRecord`](documents::EventRecord): the append-only change log.
    events: Tree,
    /// document id → snapshot (`u64` sequence the snapshot covers, then Automerge bytes).
    snapshots: Tree,
    /// user id ‖ feed sequence → document id: the user's documents in order of last change.
    user_feed: Tree,
    /// document id ‖ storage id → encoded Automerge sync state.
    sync_states: Tree,
    /// user id ‖ document id → task summary (JSON), for listing without loading documents.
    task_index: Tree,
    /// user id → [`Usage`](quota::Usage): live documents and their stored bytes, for quotas.
    usage: Tree,
    /// Server-wide values: the format version, the server's storage id.
    meta: Tree,
    /// Coalesces concurrent [`Embedded::persist`] calls into shared flushes.
    group_commit: group_commit::GroupCommit,
}

/// The server's persistent state: a cheap handle, cloned into every part of
/// the server, over the engine in use.
///
/// When the disk fails, the store refuses every operation with
/// [`StoreError::Unavailable`] until a fresh engine, reopened from what is
/// on disk, has proved that it can write and flush again.
#[derive(Clone)]
pub(crate) struct Embedded {
    shared: std::sync::Arc<recovery::Shared>,
    /// When set, the handle works only while the engine of this epoch is in
    /// use (see [`Embedded::pinned`]).
    pinned: Option<u64>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

/// The big-endian sequence number after the 16-byte id of a key in
/// `tree`; a key of another length is malformed (`what` says which layout
/// was expected).
pub(crate) fn seq_in_key(
    key: &[u8],
    tree: &'static str,
    what: &'static str,
) -> Result<u64, StoreError> {
    key.get(16..24)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Malformed { tree, what })
}

pub(crate) fn pair_key(a: &[u8; 16], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + b.len());
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

/// How long an open waits for another handle in this process to let go of
/// the store's file lock.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens a sled database, waiting briefly while its file lock is held.
///
/// Dropping a `sled::Db` does not release the lock at once: a write job on
/// sled's IO thread pool may still hold the file for a moment after the
/// flush it belongs to has completed. A store closed and opened again in one
/// process (a restart in the simulation, a test that reopens) would then be
/// refused at random, so the open retries for a bounded time. Another
/// process that keeps the store open is still refused, only later.
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl Engine {
    /// Opens (or creates) the database, checking its format version.
    fn open(options: &StoreOptions, epoch: u64) -> Result<Self, StoreError> {
        let dir = options.dir.as_path();
        let db = open_waiting_for_lock(
            &sled::Config::new()
                .path(dir.join("store"))
                .cache_capacity(options.cache_bytes),
        )?;
        let meta = db.open_tree("meta")?;
        let usage_was_kept = db.tree_names().iter().any(|name| name.as_ref() == b"usage");
        match meta.get(FORMAT_KEY)? {
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())?;
                db.flush()?;
            }
            Some(found) if found.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(found) => {
                return Err(StoreError::IncompatibleFormat {
                    path: dir.display().to_string(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: FORMAT_VERSION,
                });
            }
        }
        let documents = db.open_tree("documents")?;
        let events = db.open_tree("events")?;
        let user_feed = db.open_tree("user_feed")?;
        let user_feed_position = db.open_tree("user_feed_position")?;
        let task_index = db.open_tree("task_index")?;
        let usage = db.open_tree("usage")?;
        let log = documents::AppendLog {
            db: db.clone(),
            documents: documents.clone(),
            events: events.clone(),
            user_feed: user_feed.clone(),
            user_feed_position,
            usage: usage.clone(),
            task_index: task_index.clone(),
        };
        let engine = Self {
            epoch,
            users: db.open_tree("users")?,
            identities: db.open_tree("identities")?,
            otp: db.open_tree("otp")?,
            sessions: db.open_tree("sessions")?,
            user_sessions: db.open_tree("user_sessions")?,
            refresh_tokens: db.open_tree("refresh_tokens")?,
            session_tokens: db.open_tree("session_tokens")?,
            audit: db.open_tree("audit")?,
            documents,
            events,
            snapshots: db.open_tree("snapshots")?,
            user_feed,
            sync_states: db.open_tree("sync_states")?,
            task_index,
            usage,
            meta,
            group_commit: group_commit::GroupCommit::start(log).map_err(sled::Error::Io)?,
            db,
        };
        // Stores written before quotas existed have documents but no usage:
        // count it once, so that quotas hold for existing users too.
        if !usage_was_kept {
            engine.rebuild_usage()?;
        }
        Ok(engine)
    }

    /// Proves that the disk takes writes again: rewrites the format version
    /// (the value it already has) and flushes it.
    fn check_writable(&self) -> Result<(), StoreError> {
        self.meta
            .insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

impl Embedded {
    /// Opens (or creates) the store in `dir` with the default cache,
    /// checking its format version.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(StoreOptions::new(dir))
    }

    /// Opens (or creates) the store as `options` say.
    pub fn open_with(options: StoreOptions) -> Result<Self, StoreError> {
        let engine = Engine::open(&options, 1)?;
        Ok(Self {
            shared: recovery::Shared::new(options, engine),
            pinned: None,
        })
    }

    /// Runs `op` on the engine in use, or fails at once with
    /// [`StoreError::Unavailable`] while there is none that works. An IO
    /// error from sled marks the engine failed (sled refuses every later
    /// operation on it anyway) and starts the recovery; the caller sees
    /// `Unavailable`.
    fn run<T>(&self, op: impl FnOnce(&Engine) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let engine = self.engine()?;
        match op(&engine) {
            Err(StoreError::Engine(sled::Error::Io(error))) => {
                self.shared.fail(&engine, &error);
                Err(StoreError::Unavailable)
            }
            other => other,
        }
    }

    /// The engine in use, if it works (and is the pinned one, for a pinned
    /// handle).
    fn engine(&self) -> Result<std::sync::Arc<Engine>, StoreError> {
        self.shared
            .current()
            .filter(|engine| self.pinned.is_none_or(|epoch| epoch == engine.epoch))
            .ok_or(StoreError::Unavailable)
    }

    /// A handle on the engine in use now: every operation through it fails
    /// with [`StoreError::Unavailable`] once that engine has failed, even
    /// after a fresh one took over. Whoever keeps state derived from the
    /// store in memory (the hub's documents) reads and writes through one,
    /// so that nothing it derived from an engine that lost writes reaches
    /// the next one.
    pub(crate) fn pinned(&self) -> Result<Embedded, StoreError> {
        let engine = self.engine()?;
        Ok(Self {
            shared: std::sync::Arc::clone(&self.shared),
            pinned: Some(engine.epoch),
        })
    }

    /// Whether operations through this handle can succeed now: the store
    /// works, and for a pinned handle, on the engine it was pinned to.
    pub(crate) fn is_current(&self) -> bool {
        self.engine().is_ok()
    }

    /// Follows the store's availability: it changes when the disk fails and
    /// when the store has recovered.
    pub(crate) fn health(&self) -> tokio::sync::watch::Receiver<StoreHealth> {
        self.shared.health()
    }

    /// Waits until every write made so far is on disk.
    pub(crate) async fn persist(&self) -> Result<(), StoreError> {
        let ticket = self.durability_ticket();
        self.wait_durable(ticket).await
    }

    /// A ticket for every write made so far: once [`Embedded::is_durable`]
    /// says so for it, those writes are on disk. While the store is
    /// unavailable, a ticket that never becomes durable.
    pub(crate) fn durability_ticket(&self) -> Ticket {
        match self.engine() {
            Ok(engine) => Ticket::new(engine.epoch, engine.group_commit.ticket()),
            Err(_) => self.unreachable_ticket(),
        }
    }

    /// The newest ticket handed out, without taking a new one: it covers
    /// every write finished before any caller took its ticket.
    pub(crate) fn latest_ticket(&self) -> Ticket {
        match self.engine() {
            Ok(engine) => Ticket::new(engine.epoch, engine.group_commit.latest()),
            Err(_) => self.unreachable_ticket(),
        }
    }

    fn unreachable_ticket(&self) -> Ticket {
        Ticket::unreachable(self.pinned.unwrap_or_else(|| self.shared.epoch()))
    }

    /// Whether the writes behind `ticket` are on disk. A ticket of an
    /// engine that is no longer in use never is: whatever it covered was
    /// either flushed and acknowledged back then, or lost with the engine.
    pub(crate) fn is_durable(&self, ticket: Ticket) -> bool {
        if ticket.is_none() {
            return true;
        }
        self.engine_of(ticket)
            .is_some_and(|engine| engine.group_commit.is_durable(ticket.sequence()))
    }

    fn engine_of(&self, ticket: Ticket) -> Option<std::sync::Arc<Engine>> {
        self.shared
            .current()
            .filter(|engine| engine.epoch == ticket.epoch())
    }

    /// Waits until the writes behind `ticket` are on disk; one flush covers
    /// every ticket taken before it started. Fails with
    /// [`StoreError::Unavailable`] when the flush fails, and at once while
    /// the store is unavailable or when the ticket belongs to an engine
    /// that is gone.
    pub(crate) async fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        if ticket.is_none() {
            return Ok(());
        }
        let engine = self.engine_of(ticket).ok_or(StoreError::Unavailable)?;
        match engine.group_commit.wait(ticket.sequence()).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.shared.fail(&engine, &error);
                Err(StoreError::Unavailable)
            }
        }
    }

    /// The test's hand on the flushes of the engine in use.
    #[cfg(test)]
    pub(crate) fn flush_control(&self) -> std::sync::Arc<flush_control::FlushControl> {
        self.engine()
            .expect("the store is available")
            .group_commit
            .control()
    }

    /// Writes a value to the store's metadata, for the format version test.
    #[doc(hidden)]
    pub fn overwrite_format_version_for_tests(dir: &Path, version: &str) -> Result<(), StoreError> {
        let db = open_waiting_for_lock(&sled::Config::new().path(dir.join("store")))?;
        db.open_tree("meta")?
            .insert(FORMAT_KEY, version.as_bytes())?;
        db.flush()?;
        Ok(())
    }

    /// True when the database answers; for the readiness probe.
    pub(crate) fn is_healthy(&self) -> bool {
        self.run(|e| Ok(e.meta.get(FORMAT_KEY)?)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use codeedex_schema::id::UserId;

    fn user(contact: &str, byte: u8) -> UserRecord {
        UserRecord {
            id: UserId::from_random_bytes([byte; 16]),
            contact_key: contact.to_owned(),
            created_at: Utc::now(),
            root_document_id: None,
        }
    }

    #[test]
    fn a_store_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Embedded::open(dir.path()).unwrap());
        Embedded::overwrite_format_version_for_tests(dir.path(), "999").unwrap();
        let err = Embedded::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("format version 999"), "{err}");
    }

    #[test]
    fn find_or_create_user_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap();
        let (first, created) = store.find_or_create_user(&user("email:a@b.co", 1)).unwrap();
        assert!(created);
        let (second, created) = store.find_or_create_user(&user("email:a@b.co", 2)).unwrap();
        assert!(!created);
        assert_eq!(first.id, second.id);
    }

    #[test]
    fn otp_updates_are_atomic_under_contention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        store
                            .update_otp("email:a@b.co", |r| {
                                let mut r = r.unwrap_or_default();
                                r.failures.push(Utc::now());
                                (Some(r), ())
                            })
                            .unwrap();
                    }
                });
            }
        });
        let count = store
            .update_otp("email:a@b.co", |r| (r.clone(), r.unwrap().failures.len()))
            .unwrap();
        assert_eq!(count, 400);
    }
}
