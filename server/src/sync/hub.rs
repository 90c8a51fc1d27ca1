//! The document hub: documents in memory, durably updated, fanned out.
//!
//! Invariant: a change is in the event log and flushed to disk before any
//! peer is sent a sync message that includes it. Changes are applied and
//! appended to the log under the document's lock, which records the store's
//! durability ticket; every path that generates a message for a peer (or
//! reads the document for REST) first waits until that ticket is durable.
//! The lock is not held during the flush, so concurrent changes to one
//! document, and to all documents, share flushes through the store's group
//! commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, ChangeHash};
use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::task_document::{self, TaskDocumentError};
use tokio::sync::mpsc;

use crate::store::{Claim, Store, StoreError};

/// Write a snapshot once this many events accumulated after the last one.
const SNAPSHOT_EVERY: u64 = 256;

/// Identifies one live connection.
pub type ConnectionId = u64;

/// What the hub tells a connection.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A document it syncs changed; generate a sync message for it.
    Changed(DocumentId),
    /// An ephemeral message from another peer of the same user, to forward.
    Ephemeral(Arc<codeedex_schema::wire::Message>),
}

/// A connection's mailbox.
pub type NoticeSender = mpsc::UnboundedSender<Notice>;

/// Connections waiting for a document, with the user each belongs to.
type Waiters = HashMap<ConnectionId, (UserId, NoticeSender)>;

/// Who made a change.
#[derive(Debug, Clone, Copy)]
pub struct Author {
    /// The user.
    pub user: UserId,
    /// The session (device), when the change came from one.
    pub session: Option<SessionId>,
}

/// Why a hub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The store failed.
    #[error("storage failed")]
    Store(#[from] StoreError),
    /// Automerge refused the data (a corrupt message or stored change).
    #[error("automerge refused the data")]
    Automerge(#[from] automerge::AutomergeError),
    /// The document is not a task.
    #[error("not a task document")]
    Task(#[from] TaskDocumentError),
    /// The document was deleted; it takes no more changes.
    #[error("the document was deleted")]
    Deleted,
}

struct DocState {
    doc: Automerge,
    /// Events in the log, and how many of them the snapshot covers.
    events: u64,
    snapshot_covers: u64,
    /// The task summary last written to the index for this document.
    last_summary: Option<TaskView>,
    /// The store's durability ticket for the newest change applied to `doc`:
    /// nothing generated from `doc` may be sent before it is durable.
    needs_durable: u64,
}

/// A document loaded in memory.
pub struct LiveDocument {
    /// Its id.
    pub id: DocumentId,
    /// Its owner: the only user who may sync it.
    pub owner: UserId,
    state: tokio::sync::Mutex<DocState>,
    subscribers: Mutex<HashMap<ConnectionId, NoticeSender>>,
    last_used: Mutex<Instant>,
    /// Set, under the state lock, when the document is deleted; every later
    /// change is refused.
    deleted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LiveDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDocument")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LiveDocument {
    /// Whether the document was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn touch(&self) {
        *self.last_used.lock().expect("never poisoned") = Instant::now();
    }
}

/// Documents in memory and the connections that sync them.
pub struct DocumentHub {
    store: Store,
    actor: ActorId,
    live: Mutex<HashMap<DocumentId, Arc<LiveDocument>>>,
    /// Connections that asked for a document nobody had, by document: told
    /// when their user's other device uploads it.
    waiting: Mutex<HashMap<DocumentId, Waiters>>,
    root_creation: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DocumentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentHub").finish_non_exhaustive()
    }
}

impl DocumentHub {
    /// A hub over the store. `actor` signs the server's own changes (REST
    /// edits and root documents).
    pub fn new(store: Store, actor: ActorId) -> Self {
        Self {
            store,
            actor,
            live: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            root_creation: tokio::sync::Mutex::new(()),
        }
    }

    /// The store behind the hub.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How many documents are in memory.
    pub fn live_count(&self) -> usize {
        self.live.lock().expect("never poisoned").len()
    }

    fn load(&self, id: DocumentId, owner: UserId) -> Result<Arc<LiveDocument>, HubError> {
        let stored = self.store.load_document(id)?;
        let mut doc = match &stored.snapshot {
            Some(bytes) => Automerge::load(bytes)?,
            None => Automerge::new(),
        };
        for change in &stored.changes {
            doc.load_incremental(change)?;
        }
        doc.set_actor(self.actor.clone());
        let events = stored.snapshot_covers + stored.changes.len() as u64;
        Ok(Arc::new(LiveDocument {
            id,
            owner,
            state: tokio::sync::Mutex::new(DocState {
                needs_durable: 0,
                last_summary: None,
                doc,
                events,
                snapshot_covers: stored.snapshot_covers,
            }),
            subscribers: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
            deleted: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The document if `user` may sync it. With `create`, a document nobody
    /// has seen is claimed for `user` (that is how devices upload new
    /// documents). `None` means unavailable: unknown, someone else's, or
    /// deleted, which peers must not be able to tell apart.
    pub fn open(
        &self,
        id: DocumentId,
        user: UserId,
        create: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<LiveDocument>>, HubError> {
        if let Some(live) = self.live.lock().expect("never poisoned").get(&id) {
            live.touch();
            return Ok((live.owner == user).then(|| Arc::clone(live)));
        }
        let meta = self.store.document_meta(id)?;
        let owner = match meta {
            Some(meta) if meta.owner == user && meta.deleted_at.is_none() => user,
            Some(_) => return Ok(None),
            None if create => match self.store.claim_document(id, user, now)? {
                Claim::Owned(_) => user,
                Claim::Unavailable => return Ok(None),
            },
            None => return Ok(None),
        };
        let loaded = self.load(id, owner)?;
        let mut live = self.live.lock().expect("never poisoned");
        // Another connection may have loaded it meanwhile; keep the first.
        let entry = live.entry(id).or_insert(loaded);
        Ok(Some(Arc::clone(entry)))
    }

    /// Registers a connection for change notices on a document.
    pub fn subscribe(&self, live: &LiveDocument, conn: ConnectionId, notices: NoticeSender) {
        live.subscribers
            .lock()
            .expect("never poisoned")
            .insert(conn, notices);
    }

    /// Removes a connection from a document's notices.
    pub fn unsubscribe(&self, live: &LiveDocument, conn: ConnectionId) {
        live.subscribers
            .lock()
            .expect("never poisoned")
            .remove(&conn);
    }

    /// Remembers that a connection asked for a document nobody had.
    pub fn wait_for(
        &self,
        id: DocumentId,
        user: UserId,
        conn: ConnectionId,
        notices: NoticeSender,
    ) {
        self.waiting
            .lock()
            .expect("never poisoned")
            .entry(id)
            .or_default()
            .insert(conn, (user, notices));
    }

    /// Forgets every wait of a connection.
    pub fn stop_waiting(&self, conn: ConnectionId) {
        let mut waiting = self.waiting.lock().expect("never poisoned");
        waiting.retain(|_, conns| {
            conns.remove(&conn);
            !conns.is_empty()
        });
    }

    /// Generates the next sync message for a peer, if there is one, once
    /// every change applied to the document is durable.
    pub async fn generate(
        &self,
        live: &LiveDocument,
        state: &mut sync::State,
    ) -> Result<Option<sync::Message>, HubError> {
        let guard = self.lock_durable(live).await?;
        Ok(guard.doc.generate_sync_message(state))
    }

    /// Locks a document once every change applied to it is on disk. Changes
    /// are applied and logged under the lock, which is then released while
    /// the group commit flushes, so that many changes to one document share
    /// a flush; anything that reads the document for a peer waits here.
    async fn lock_durable<'a>(
        &self,
        live: &'a LiveDocument,
    ) -> Result<tokio::sync::MutexGuard<'a, DocState>, HubError> {
        loop {
            let guard = live.state.lock().await;
            if self.store.is_durable(guard.needs_durable) {
                return Ok(guard);
            }
            let ticket = guard.needs_durable;
            drop(guard);
            self.store.wait_durable(ticket).await?;
        }
    }

    /// The durability ticket of the newest change applied to the document:
    /// nothing generated from it can be sent before that ticket is durable.
    pub async fn pending_ticket(&self, live: &LiveDocument) -> u64 {
        live.state.lock().await.needs_durable
    }

    /// The document's current heads.
    pub async fn heads(&self, live: &LiveDocument) -> Result<Vec<ChangeHash>, HubError> {
        Ok(self.lock_durable(live).await?.doc.get_heads())
    }

    /// Applies a peer's sync message, records any new changes and tells the
    /// document's other peers. Returns the durability ticket that must be
    /// durable before anything generated from the document reaches a peer;
    /// the reply to this peer is generated later, with [`DocumentHub::generate`],
    /// so that a connection can go on applying messages while the group
    /// commit flushes.
    pub async fn apply(
        &self,
        live: &Arc<LiveDocument>,
        state: &mut sync::State,
        message: sync::Message,
        author: Author,
        from: ConnectionId,
        now: DateTime<Utc>,
    ) -> Result<u64, HubError> {
        live.touch();
        let mut guard = live.state.lock().await;
        if live.is_deleted() {
            return Err(HubError::Deleted);
        }
        let before = guard.doc.get_heads();
        let told = state.last_sent_heads.clone();
        guard.doc.receive_sync_message(state, message)?;
        // Automerge takes a message without changes whose heads equal ours
        // as if we had sent those heads ourselves, and then has nothing to
        // say. Here replies are generated later and coalesced, so the peer
        // may not have heard our heads yet: it would never learn that we hold
        // its changes. Keep the record of what we really sent, unless the
        // peer reset (empty heads), which Automerge handles by clearing it.
        if !state.last_sent_heads.is_empty() {
            state.last_sent_heads = told;
        }
        // Most messages (acknowledgements, heads) add no change; comparing
        // heads is far cheaper than asking the change graph.
        let changes: Vec<Vec<u8>> = if guard.doc.get_heads() == before {
            Vec::new()
        } else {
            guard
                .doc
                .get_changes(&before)
                .iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect()
        };
        let changed = !changes.is_empty();
        tracing::debug!(doc = %live.id, changes = changes.len(), "received sync message");
        if changed {
            self.record(live, &mut guard, &changes, author, now)?;
        }
        let ticket = guard.needs_durable;
        drop(guard);
        if changed {
            // Other connections generate their messages only once the ticket
            // is durable, so telling them now reveals nothing early.
            self.notify_changed(live, Some(from));
        }
        Ok(ticket)
    }

    /// Appends changes to the log and updates the index; the caller waits for
    /// durability (through `needs_durable`) before anything reveals them.
    fn record(
        &self,
        live: &LiveDocument,
        state: &mut DocState,
        changes: &[Vec<u8>],
        author: Author,
        now: DateTime<Utc>,
    ) -> Result<(), HubError> {
        self.store
            .append_events(live.id, author.user, author.session, now, changes)
            .map_err(|e| match e {
                StoreError::DocumentDeleted => HubError::Deleted,
                other => HubError::Store(other),
            })?;
        state.events += changes.len() as u64;
        // The task list shows what REST reads: every document that reads as
        // a task (leniently: fields of the wrong type read as absent), so a
        // listed task can always be read and deleted. A document that stops
        // being a task leaves the list, and the root never enters it,
        // whatever a device wrote into it.
        match task_document::read_task(&state.doc) {
            Ok(task) => {
                let view = TaskView::new(live.id, &task);
                // Most changes to a busy document leave its summary as it was
                // (edits outside the task fields, or repeated values): write
                // the index only when the summary differs from the last one
                // written. Whether the document is the root is asked before
                // its first summary only; once one is written, it is not.
                if state.last_summary.as_ref() != Some(&view) {
                    let is_root = state.last_summary.is_none()
                        && self
                            .store
                            .user(live.owner)?
                            .and_then(|u| u.root_document_id)
                            == Some(live.id);
                    if is_root {
                        self.store.remove_task_summary(live.owner, live.id)?;
                    } else {
                        self.store.put_task_summary(
                            live.owner,
                            live.id,
                            &serde_json::to_value(&view).expect("serialisable"),
                        )?;
                        state.last_summary = Some(view);
                    }
                }
            }
            Err(_) => {
                state.last_summary = None;
                self.store.remove_task_summary(live.owner, live.id)?;
            }
        }
        if state.events - state.snapshot_covers >= SNAPSHOT_EVERY {
            self.store
                .write_snapshot(live.id, state.events, &state.doc.save())?;
            state.snapshot_covers = state.events;
        }
        state.needs_durable = self.store.durability_ticket();
        Ok(())
    }

    /// Tells every subscriber except `except` (and any connection waiting for
    /// this document) that it changed.
    pub fn notify_changed(&self, live: &LiveDocument, except: Option<ConnectionId>) {
        let subscribers = live.subscribers.lock().expect("never poisoned");
        for (conn, tx) in subscribers.iter() {
            if Some(*conn) != except {
                let _ = tx.send(Notice::Changed(live.id));
            }
        }
        drop(subscribers);
        let waiting = self
            .waiting
            .lock()
            .expect("never poisoned")
            .remove(&live.id);
        for (conn, (user, tx)) in waiting.into_iter().flatten() {
            if user == live.owner && Some(conn) != except {
                let _ = tx.send(Notice::Changed(live.id));
            }
        }
    }

    /// Forwards an ephemeral message to the document's other peers.
    pub fn forward_ephemeral(
        &self,
        live: &LiveDocument,
        from: ConnectionId,
        message: Arc<codeedex_schema::wire::Message>,
    ) {
        let subscribers = live.subscribers.lock().expect("never poisoned");
        for (conn, tx) in subscribers.iter() {
            if *conn != from {
                let _ = tx.send(Notice::Ephemeral(Arc::clone(&message)));
            }
        }
    }

    /// Makes a change on the server's behalf (REST edits), durably, and tells
    /// every peer of the document.
    pub async fn change<F>(
        &self,
        live: &Arc<LiveDocument>,
        author: Author,
        now: DateTime<Utc>,
        edit: F,
    ) -> Result<bool, HubError>
    where
        F: FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), TaskDocumentError>,
    {
        live.touch();
        let mut guard = live.state.lock().await;
        if live.is_deleted() {
            return Err(HubError::Deleted);
        }
        let before = guard.doc.get_heads();
        let mut tx = guard.doc.transaction();
        if let Err(e) = edit(&mut tx) {
            tx.rollback();
            return Err(e.into());
        }
        tx.commit();
        let changes: Vec<Vec<u8>> = guard
            .doc
            .get_changes(&before)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        if changes.is_empty() {
            return Ok(false);
        }
        self.record(live, &mut guard, &changes, author, now)?;
        let ticket = guard.needs_durable;
        drop(guard);
        self.store.wait_durable(ticket).await?;
        self.notify_changed(live, None);
        Ok(true)
    }

    /// Reads a document under its lock.
    pub async fn read<T>(
        &self,
        live: &LiveDocument,
        read: impl FnOnce(&Automerge) -> T,
    ) -> Result<T, HubError> {
        live.touch();
        let guard = self.lock_durable(live).await?;
        Ok(read(&guard.doc))
    }

    /// Deletes a document: tombstones it, drops it from memory and tells its
    /// peers (who will then be answered `doc-unavailable`).
    ///
    /// The flag is set under the document's lock, so a change that is being
    /// applied finishes first and every later one is refused: nothing can be
    /// appended to the log of a deleted document.
    pub async fn tombstone(&self, id: DocumentId, now: DateTime<Utc>) -> Result<bool, HubError> {
        let live = self.live.lock().expect("never poisoned").get(&id).cloned();
        let removed = match &live {
            Some(live) => {
                let _guard = live.state.lock().await;
                live.deleted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.store.tombstone_document(id, now)?
            }
            None => self.store.tombstone_document(id, now)?,
        };
        self.live.lock().expect("never poisoned").remove(&id);
        if let Some(live) = live {
            self.notify_changed(&live, None);
        }
        Ok(removed)
    }

    /// The user's root document, created once, on first use, by the server:
    /// devices never create it, so two offline devices cannot make two.
    pub async fn ensure_root(
        &self,
        user: UserId,
        fresh_id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<DocumentId, HubError> {
        let missing = || {
            HubError::Store(StoreError::Corrupt {
                tree: "users",
                source: serde::de::Error::custom(
                    "a root document was asked for a user that does not exist",
                ),
            })
        };
        if let Some(id) = self.store.user(user)?.ok_or_else(missing)?.root_document_id {
            return Ok(id);
        }
        let _one_at_a_time = self.root_creation.lock().await;
        let mut record = self.store.user(user)?.ok_or_else(missing)?;
        if let Some(id) = record.root_document_id {
            return Ok(id);
        }
        let Some(live) = self.open(fresh_id, user, true, now)? else {
            return Err(HubError::Store(StoreError::Corrupt {
                tree: "documents",
                source: serde::de::Error::custom("a fresh root document id was already taken"),
            }));
        };
        self.change(
            &live,
            Author {
                user,
                session: None,
            },
            now,
            |tx| task_document::init_root(tx),
        )
        .await?;
        record.root_document_id = Some(fresh_id);
        self.store.put_user(&record)?;
        self.store.persist().await?;
        Ok(fresh_id)
    }

    /// Drops documents that no connection syncs and nobody used for `idle`,
    /// so that memory follows activity rather than the number of stored
    /// documents. Returns how many were dropped.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let mut live = self.live.lock().expect("never poisoned");
        let before = live.len();
        live.retain(|_, doc| {
            let unused = doc.last_used.lock().expect("never poisoned").elapsed() >= idle;
            let unwatched = doc.subscribers.lock().expect("never poisoned").is_empty();
            // A document someone holds a handle to (an in-flight request) stays.
            !(unused && unwatched && Arc::strong_count(doc) == 1)
        });
        before - live.len()
    }
}
