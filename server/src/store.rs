//! The store: everything the server keeps, behind one interface with two
//! engines. Only this module knows them.
//!
//! - `embedded`: sled in the data directory, the default. Writes reach the
//!   disk in the background; a [`Ticket`] says when they have.
//! - `postgres`: a PostgreSQL database that several server nodes share. A
//!   write is durable when its commit returns, so its tickets are always
//!   durable.
//!
//! [`Store`] is the handle every other part of the server holds. Its
//! operations are async so that an engine across the network never blocks a
//! worker thread; the embedded engine answers them without waiting.
//!
//! This file holds the handle, its errors and the record encoding; `records`
//! and `log` hold the types both engines keep, `quota` the limits on them.

#[cfg(test)]
mod contract_tests;
mod embedded;
mod log;
pub mod migration;
mod postgres;
mod quota;
mod records;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};

use crate::configuration::limits::Quota;
pub(crate) use crate::durability::Ticket;
use embedded::Embedded;
pub(crate) use embedded::StoreHealth;
#[cfg(test)]
pub(crate) use embedded::flush_control;
pub(crate) use log::{Append, Appended, Claim, DocumentMeta, EventRecord, IndexUpdate};
pub use log::{HEARD_QUEUE, Heard, Ring, StoredDocument};
pub use quota::QuotaExceeded;
pub(crate) use records::{AuditRecord, OtpRecord, PendingCode, RefreshEntry};
pub use records::{SessionRecord, UserRecord};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory holds a store written by an incompatible version.
    #[error("the store in {path} has format version {found}; this server reads version {expected}")]
    IncompatibleFormat {
        /// Where the store is.
        path: String,
        /// The version found on disk.
        found: String,
        /// The version this build reads.
        expected: u32,
    },
    /// The database itself failed (IO error, corruption, lock held by another process).
    #[error("storage engine error")]
    Engine(#[source] sled::Error),
    /// A change was appended to a deleted document.
    #[error("the document was deleted")]
    DocumentDeleted,
    /// The write would take the user or the document over its quota.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// The disk failed: the store refuses every operation until it has
    /// reopened the database and written to it again. Nothing the failed
    /// operation did can be relied on; the caller answers "try again later".
    #[error("the store is unavailable after a disk failure; try again later")]
    Unavailable,
    /// A key or value does not have the layout this version writes: damage
    /// the engine did not catch, or a record written by other code.
    #[error("malformed {what} in {tree}")]
    Malformed {
        /// The tree holding it.
        tree: &'static str,
        /// What is wrong, in words.
        what: &'static str,
    },
    /// The PostgreSQL database refused a statement for a reason other than
    /// being unreachable (which is [`StoreError::Unavailable`]).
    #[error("database error")]
    Postgres(#[source] tokio_postgres::Error),
    /// The PostgreSQL transaction that held this write with others failed
    /// as a whole; every write in it failed with the same cause.
    #[error("the transaction holding this write failed")]
    BatchFailed(#[source] std::sync::Arc<StoreError>),
    /// The PostgreSQL database's schema could not be brought up to date.
    #[error("migrating the database failed")]
    Migration(#[source] Box<refinery::Error>),
    /// A JSON record could not be decoded.
    #[error("corrupt record in {tree}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Where a store lives and how much memory its engine may cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The data directory; the database is its `store` subdirectory.
    pub dir: PathBuf,
    /// Bytes of pages sled keeps in memory. sled caches up to 1 GiB by
    /// default; memory should follow activity, so the cache is kept small
    /// and the operating system's page cache does the rest.
    pub cache_bytes: u64,
}

impl StoreOptions {
    /// The default cache size, 16 MiB. The hub holds the documents being
    /// edited, so sled's cache serves little but the pages being written:
    /// ingest and catch-up ran as fast with 16 MiB as with 64 (BENCHMARKS.md,
    /// "The store's cache"), while a cache that takes hours of steady
    /// writing to fill cannot be told from a leak by whoever watches the
    /// process's memory.
    pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

    /// The store in `dir` with the default cache.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
        }
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs to JSON cannot fail: they have string
    // keys and no custom serialisers that error.
    serde_json::to_vec(value).expect("records always serialise")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

/// The server's persistent state: a cheap handle, cloned into every part of
/// the server, over the engine chosen at start.
#[derive(Clone, Debug)]
pub struct Store {
    engine: EngineHandle,
}

#[derive(Clone, Debug)]
enum EngineHandle {
    Embedded(Embedded),
    Postgres(std::sync::Arc<postgres::PgEngine>),
}

/// Runs one operation on whichever engine the store uses: the embedded
/// engine answers at once, PostgreSQL over the network.
macro_rules! dispatch {
    ($store:expr, $method:ident($($arg:expr),*)) => {
        match &$store.engine {
            EngineHandle::Embedded(engine) => engine.$method($($arg),*),
            EngineHandle::Postgres(engine) => engine.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens (or creates) the embedded store in `dir` with the default
    /// cache, checking its format version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(StoreOptions::new(dir))
    }

    /// Opens (or creates) the embedded store as `options` say.
    pub fn open_with(options: StoreOptions) -> Result<Self, StoreError> {
        Ok(Self {
            engine: EngineHandle::Embedded(Embedded::open_with(options)?),
        })
    }

    /// Connects to the PostgreSQL database at `url` with up to `pool_size`
    /// connections, and brings its schema up to date.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Ok(Self {
            engine: EngineHandle::Postgres(std::sync::Arc::new(
                postgres::PgEngine::connect(url, pool_size).await?,
            )),
        })
    }

    /// Starts hearing the other nodes' appends, on an engine that nodes
    /// share; `None` for the embedded engine, which has one node. Also this
    /// node's number, which its own rings carry.
    pub(crate) fn listen(&self) -> Option<(u64, tokio::sync::mpsc::Receiver<Heard>)> {
        match &self.engine {
            EngineHandle::Embedded(_) => None,
            EngineHandle::Postgres(e) => Some((e.node(), e.listen())),
        }
    }

    /// Writes a value to the embedded store's metadata, for the format
    /// version test.
    #[doc(hidden)]
    pub fn overwrite_format_version_for_tests(dir: &Path, version: &str) -> Result<(), StoreError> {
        Embedded::overwrite_format_version_for_tests(dir, version)
    }

    // Availability and durability.

    /// A handle on the engine in use now: every operation through it fails
    /// with [`StoreError::Unavailable`] once that engine has failed, even
    /// after a fresh one took over. Whoever keeps state derived from the
    /// store in memory (the hub's documents) reads and writes through one,
    /// so that nothing it derived from an engine that lost writes reaches
    /// the next one.
    pub(crate) fn pinned(&self) -> Result<Store, StoreError> {
        match &self.engine {
            EngineHandle::Embedded(e) => Ok(Self {
                engine: EngineHandle::Embedded(e.pinned()?),
            }),
            // A database outage loses no committed write: what a node holds
            // in memory stays true, so there is nothing to pin.
            EngineHandle::Postgres(_) => Ok(self.clone()),
        }
    }

    /// Whether operations through this handle can succeed now.
    pub(crate) fn is_current(&self) -> bool {
        match &self.engine {
            EngineHandle::Embedded(e) => e.is_current(),
            EngineHandle::Postgres(_) => true,
        }
    }

    /// Follows the store's availability: it changes when the engine fails
    /// and when it has recovered.
    pub(crate) fn health(&self) -> tokio::sync::watch::Receiver<StoreHealth> {
        match &self.engine {
            EngineHandle::Embedded(e) => e.health(),
            // Outages of the database: counted as the embedded engine's
            // failures are; nothing acknowledged is lost in one, and
            // handles stay current, so no document is forgotten.
            EngineHandle::Postgres(e) => e.health(),
        }
    }

    /// True when the engine answers; for the readiness probe.
    pub(crate) async fn is_healthy(&self) -> bool {
        dispatch!(self, is_healthy())
    }

    /// Waits until every write made so far is durable.
    pub(crate) async fn persist(&self) -> Result<(), StoreError> {
        match &self.engine {
            EngineHandle::Embedded(e) => e.persist().await,
            EngineHandle::Postgres(_) => Ok(()),
        }
    }

    /// A ticket for every write made so far: once [`Store::is_durable`]
    /// says so for it, those writes are durable.
    pub(crate) fn durability_ticket(&self) -> Ticket {
        match &self.engine {
            EngineHandle::Embedded(e) => e.durability_ticket(),
            EngineHandle::Postgres(_) => Ticket::NONE,
        }
    }

    /// The newest ticket handed out, without taking a new one: it covers
    /// every write finished before any caller took its ticket.
    pub(crate) fn latest_ticket(&self) -> Ticket {
        match &self.engine {
            EngineHandle::Embedded(e) => e.latest_ticket(),
            EngineHandle::Postgres(_) => Ticket::NONE,
        }
    }

    /// Whether the writes behind `ticket` are durable.
    pub(crate) fn is_durable(&self, ticket: Ticket) -> bool {
        match &self.engine {
            EngineHandle::Embedded(e) => e.is_durable(ticket),
            EngineHandle::Postgres(_) => true,
        }
    }

    /// Waits until the writes behind `ticket` are durable; fails with
    /// [`StoreError::Unavailable`] when they cannot be made so.
    pub(crate) async fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        match &self.engine {
            EngineHandle::Embedded(e) => e.wait_durable(ticket).await,
            EngineHandle::Postgres(_) => Ok(()),
        }
    }

    /// The test's hand on the embedded engine's flushes.
    #[cfg(test)]
    pub(crate) fn flush_control(&self) -> std::sync::Arc<flush_control::FlushControl> {
        match &self.engine {
            EngineHandle::Embedded(e) => e.flush_control(),
            EngineHandle::Postgres(_) => panic!("PostgreSQL has no flusher to hold"),
        }
    }

    // Accounts.

    /// The user with this id.
    pub(crate) async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        dispatch!(self, user(id))
    }

    /// The user who signs in with this contact key.
    pub(crate) async fn user_by_contact(
        &self,
        contact_key: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        dispatch!(self, user_by_contact(contact_key))
    }

    /// The user with `candidate`'s contact key, created from `candidate` if
    /// there is none; `true` when it was created.
    pub async fn find_or_create_user(
        &self,
        candidate: &UserRecord,
    ) -> Result<(UserRecord, bool), StoreError> {
        dispatch!(self, find_or_create_user(candidate))
    }

    /// Makes `doc` the user's root document unless it has one; returns the
    /// root it has afterwards (`None` for an unknown user).
    pub(crate) async fn set_root_document(
        &self,
        user: UserId,
        doc: DocumentId,
    ) -> Result<Option<DocumentId>, StoreError> {
        dispatch!(self, set_root_document(user, doc))
    }

    /// Atomically reads and replaces the code state of one identifier.
    /// `change` may run more than once when another request changes the
    /// same record at the same time; only its last run takes effect, so it
    /// must be a pure function of its input.
    pub(crate) async fn update_otp<T: Send>(
        &self,
        contact_key: &str,
        change: impl FnMut(Option<OtpRecord>) -> (Option<OtpRecord>, T) + Send,
    ) -> Result<T, StoreError> {
        dispatch!(self, update_otp(contact_key, change))
    }

    /// Stores a new session with its first refresh token.
    pub async fn insert_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        dispatch!(self, insert_session(session, refresh_hash))
    }

    /// Stores a rotated session and its new refresh token together; `false`
    /// if the session is gone or was rotated meanwhile.
    pub(crate) async fn rotate_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        dispatch!(self, rotate_session(session, refresh_hash))
    }

    /// The session with this id.
    pub(crate) async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self, session(id))
    }

    /// What a refresh token's keyed hash belongs to.
    pub(crate) async fn refresh_entry(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<RefreshEntry>, StoreError> {
        dispatch!(self, refresh_entry(hash))
    }

    /// Every session of a user.
    pub(crate) async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, sessions_of(user))
    }

    /// Deletes a session with every refresh token it had; `false` if there
    /// was none.
    pub(crate) async fn delete_session(&self, id: SessionId) -> Result<bool, StoreError> {
        dispatch!(self, delete_session(id))
    }

    /// Adds an event to a user's audit trail.
    pub(crate) async fn append_audit(
        &self,
        user: UserId,
        event: &AuditRecord,
    ) -> Result<(), StoreError> {
        dispatch!(self, append_audit(user, event))
    }

    /// A user's newest audit events, newest first, at most `limit`.
    pub(crate) async fn audit_of(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        dispatch!(self, audit_of(user, limit))
    }

    // Documents.

    /// What the store knows about a document.
    pub(crate) async fn document_meta(
        &self,
        doc: DocumentId,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        dispatch!(self, document_meta(doc))
    }

    /// Claims a document nobody has seen for `user`, within the quota.
    pub(crate) async fn claim_document(
        &self,
        doc: DocumentId,
        user: UserId,
        now: DateTime<Utc>,
        quota: &Quota,
    ) -> Result<Claim, StoreError> {
        dispatch!(self, claim_document(doc, user, now, quota))
    }

    /// Appends accepted changes to a document's log, with its feed and
    /// task-index entries; returns where they landed and the ticket that
    /// says when the append is durable.
    pub(crate) async fn append_events(
        &self,
        append: Append,
    ) -> Result<(Appended, Ticket), StoreError> {
        match &self.engine {
            EngineHandle::Embedded(e) => e.append_events(append).await,
            EngineHandle::Postgres(e) => Ok((e.append(append).await?, Ticket::NONE)),
        }
    }

    /// A document as stored: its snapshot and the changes after it.
    pub async fn load_document(&self, doc: DocumentId) -> Result<StoredDocument, StoreError> {
        dispatch!(self, load_document(doc))
    }

    /// Saves a snapshot covering the first `covers` events.
    pub(crate) async fn write_snapshot(
        &self,
        doc: DocumentId,
        covers: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        dispatch!(self, write_snapshot(doc, covers, bytes))
    }

    /// Every event of a document's log, in order.
    pub(crate) async fn events_of(&self, doc: DocumentId) -> Result<Vec<EventRecord>, StoreError> {
        dispatch!(self, events_of(doc))
    }

    /// The events of a document's log from sequence `from` on, in order:
    /// what another node appended since this one last read.
    pub(crate) async fn events_from(
        &self,
        doc: DocumentId,
        from: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        dispatch!(self, events_from(doc, from))
    }

    /// A user's documents changed after feed position `cursor`, oldest
    /// change first, at most `limit`, with the position to ask from next.
    pub(crate) async fn changed_since(
        &self,
        user: UserId,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<DocumentId>, u64), StoreError> {
        dispatch!(self, changed_since(user, cursor, limit))
    }

    /// Marks a document deleted; `false` if it already was.
    pub(crate) async fn tombstone_document(
        &self,
        doc: DocumentId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, tombstone_document(doc, at))
    }

    // Sync states and the task index.

    /// The persisted sync state of a document with a peer's storage.
    pub async fn sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, sync_state(doc, storage_id))
    }

    /// Persists the sync state of a document with a peer's storage.
    pub(crate) async fn put_sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        dispatch!(self, put_sync_state(doc, storage_id, state))
    }

    /// The server's storage id, created on first use.
    pub(crate) async fn server_storage_id(
        &self,
        fresh: impl FnOnce() -> String + Send,
    ) -> Result<String, StoreError> {
        dispatch!(self, server_storage_id(fresh))
    }

    /// The server secret called `name`, stored from `fresh` on first use:
    /// every node on a shared database reads the same one.
    pub(crate) async fn shared_secret(
        &self,
        name: &str,
        fresh: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        dispatch!(self, shared_secret(name, fresh))
    }

    /// Writes a document's task-index entry outside an append (never for a
    /// deleted document).
    pub(crate) async fn put_task_summary(
        &self,
        owner: UserId,
        doc: DocumentId,
        update: &IndexUpdate,
    ) -> Result<(), StoreError> {
        dispatch!(self, put_task_summary(owner, doc, update))
    }

    /// Every task summary of a user, ordered by document id.
    pub(crate) async fn task_summaries(
        &self,
        user: UserId,
    ) -> Result<Vec<(DocumentId, TaskView)>, StoreError> {
        dispatch!(self, task_summaries(user))
    }

    /// Checks the store's invariants; every problem found, in words.
    pub async fn verify(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, verify())
    }
}
