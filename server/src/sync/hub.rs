//! The document hub: documents in memory, durably updated, fanned out.
//!
//! Invariant: a change is in the event log and flushed to disk before any
//! peer is sent a sync message that includes it. Changes are applied and
//! appended to the log under the document's lock, which records the store's
//! durability ticket; `DocumentHub::undurable` is the one check of that
//! ticket: generating for a peer is refused until it is durable (the
//! connection waits and asks again), and a REST read waits for it. The lock
//! is not held during the flush, so concurrent changes to one document, and
//! to all documents, share flushes through the store's group commit.
//!
//! The file is long (about 870 lines before its tests) because loading,
//! applying, recording, reloading after a failure and fanning out all work
//! under the one per-document lock, and the order in which they take and
//! release it is what the invariant rests on; read apart, that order would
//! be hidden.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, ChangeHash};
use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::task_document::{self, TaskDocumentError};

use super::doorbell::{Doorbell, Ring};
use super::mailbox::Mailbox;
use crate::configuration::limits::HubLimits;
use crate::metrics::Metrics;
use crate::store::{Append, Claim, IndexUpdate, QuotaExceeded, Store, StoreError, Ticket};

/// Write a snapshot once this many events accumulated after the last one.
const SNAPSHOT_EVERY: u64 = 256;

/// Identifies one live connection.
pub type ConnectionId = u64;

/// Connections waiting for a document, with the user each belongs to.
type Waiters = HashMap<ConnectionId, (UserId, Arc<Mailbox>)>;

/// Who made a change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Author {
    /// The user.
    pub(crate) user: UserId,
    /// The session (device), when the change came from one.
    pub(crate) session: Option<SessionId>,
}

/// What [`DocumentHub::apply`] did with a peer's message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applied {
    /// Must be durable before anything generated from the document
    /// reaches a peer.
    pub(crate) ticket: Ticket,
    /// The message brought changes, now recorded.
    pub(crate) changed: bool,
    /// The peer's heads name changes the document lacks, and the message
    /// brought none: the peer holds changes it is not sending.
    pub(crate) withheld: bool,
}

/// Heads in a canonical order, for comparing sets of heads.
fn sorted(heads: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut heads = heads.to_vec();
    heads.sort_unstable();
    heads
}

/// What receiving a message under the document's lock produced.
enum Received {
    /// New changes, still to be recorded.
    Changes(Vec<Vec<u8>>),
    Nothing {
        withheld: bool,
    },
}

/// What [`DocumentHub::generate`] has for a peer.
#[derive(Debug)]
pub(crate) enum Generation {
    /// The message to send.
    Message(sync::Message),
    /// The peer is up to date.
    Nothing,
    /// The document holds a change that is not durable yet; ask again once
    /// this ticket is.
    NotDurable(Ticket),
}

/// Why a hub operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
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
    /// The change would take the user or the document over its quota.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// Too many changes are waiting for dependencies the peer never sent.
    #[error("too many changes with missing dependencies: {changes} changes, {bytes} bytes")]
    MissingDependencies {
        /// Changes waiting.
        changes: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// Automerge panicked; the panic was caught and the document reloaded
    /// from the log.
    #[error("automerge panicked while {0}")]
    Panicked(&'static str),
    /// The document in memory could not be reloaded after a failure; it was
    /// dropped, and whoever held it must open it again.
    #[error("the document was unloaded after a failure")]
    Unloaded,
    /// A root document was asked for a user the store does not know.
    #[error("no such user")]
    UnknownUser,
    /// A freshly drawn random document id was already taken.
    #[error("a fresh document id was taken")]
    FreshIdTaken,
}

/// What [`DocumentHub::open`] does with an id nobody has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfUnseen {
    /// Answer unavailable.
    Refuse,
    /// Claim it for the user: that is how devices upload new documents.
    Claim,
}

impl HubError {
    /// Whether the store was unavailable (the disk failed): nothing was
    /// acknowledged, and the same request may succeed later.
    pub(crate) fn is_storage_unavailable(&self) -> bool {
        matches!(self, HubError::Store(StoreError::Unavailable))
    }
}

/// Runs Automerge code on bytes a peer chose. Automerge was written for
/// trusted input and panics on some inconsistent input; a panic must cost the
/// peer its message, never the process or the other users of the document.
/// The caller reloads the document after a panic, because Automerge may have
/// been half-way through changing it.
fn contained<T>(what: &'static str, work: impl FnOnce() -> T) -> Result<T, HubError> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|_| HubError::Panicked(what))
}

struct DocState {
    doc: Automerge,
    /// Every event of the log below this sequence is in `doc`. The
    /// document may hold later ones too: this node's own appends land after
    /// events other nodes appended meanwhile, which it reads only when it
    /// catches up ([`DocumentHub::catch_up`]). A snapshot covers exactly
    /// this many events, so that loading one never skips an event.
    events: u64,
    /// How many events the snapshot in the store covers.
    snapshot_covers: u64,
    /// The task summary last written to the index for this document.
    last_summary: Option<TaskView>,
    /// The store's durability ticket for the newest change applied to `doc`:
    /// nothing generated from `doc` may be sent before it is durable.
    needs_durable: Ticket,
    /// The message generated last from `doc` as it is now, for the peers
    /// that are in the same sync state.
    shared: Option<SharedGeneration>,
}

/// A message generated for one peer, with that peer's sync state before and
/// after. Automerge's generation is a function of the document and the sync
/// state alone, so another peer whose state equals `before` would get the
/// same message and end in the same state: a change fanned out to many
/// peers that were all up to date is looked up (what they lack, the bloom
/// filter of what we have) once, not once per peer. It is valid only while
/// the document is unchanged; [`DocState::doc_mut`] drops it.
struct SharedGeneration {
    before: sync::State,
    after: sync::State,
    message: sync::Message,
}

/// Messages larger than this are not kept for sharing: copying them would
/// cost about what generating does, and such messages are rarely alike.
const MAX_SHARED_MESSAGE_BYTES: usize = 64 * 1024;

impl DocState {
    fn loaded(doc: Automerge, events: u64, snapshot_covers: u64) -> Self {
        Self {
            doc,
            events,
            snapshot_covers,
            last_summary: None,
            needs_durable: Ticket::NONE,
            shared: None,
        }
    }

    /// The document, for a change: what was generated from it before is
    /// no longer shared.
    fn doc_mut(&mut self) -> &mut Automerge {
        self.shared = None;
        &mut self.doc
    }

    /// Generates the next message for a peer in `state`, or takes the one
    /// generated for a peer that was in the same state. With `keep`, the
    /// new message is kept for the others; a document with one peer keeps
    /// nothing, so its every message costs no copies.
    fn generate_for(
        &mut self,
        state: &mut sync::State,
        keep: bool,
        metrics: &Metrics,
    ) -> Option<sync::Message> {
        if let Some(shared) = &self.shared
            && shared.before == *state
        {
            state.clone_from(&shared.after);
            Metrics::bump(&metrics.sync_messages_shared);
            return Some(shared.message.clone());
        }
        let before = keep.then(|| state.clone());
        let message = self.doc.generate_sync_message(state)?;
        let bytes: usize = message.changes.iter().map(<[u8]>::len).sum();
        self.shared = before
            .filter(|_| bytes <= MAX_SHARED_MESSAGE_BYTES)
            .map(|before| SharedGeneration {
                before,
                after: state.clone(),
                message: message.clone(),
            });
        Some(message)
    }
}

/// A document loaded in memory.
pub(crate) struct LiveDocument {
    /// Its id.
    pub(crate) id: DocumentId,
    /// Its owner: the only user who may sync it.
    pub(crate) owner: UserId,
    /// The store, pinned to the engine the document was loaded from: once
    /// that engine has failed, this copy may hold changes that never became
    /// durable, so it reads and writes nothing more (see
    /// [`DocumentHub::forget_stale`]).
    store: Store,
    state: tokio::sync::Mutex<DocState>,
    subscribers: Mutex<HashMap<ConnectionId, Arc<Mailbox>>>,
    last_used: Mutex<Instant>,
    /// Set, under the state lock, when the document is deleted; every later
    /// change is refused.
    deleted: AtomicBool,
    /// Set, under the state lock, when the document could not be reloaded
    /// after a failure: this copy is no longer used.
    unloaded: AtomicBool,
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
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Whether this copy can still be used: it was not unloaded, and the
    /// store engine it was loaded from is still the one in use.
    pub(crate) fn is_current(&self) -> bool {
        self.store.is_current() && !self.unloaded.load(Ordering::SeqCst)
    }

    /// Refuses use of a copy that was unloaded after a failure, or loaded
    /// from a store engine that failed since.
    fn check_loaded(&self) -> Result<(), HubError> {
        if !self.store.is_current() {
            Err(HubError::Store(StoreError::Unavailable))
        } else if self.unloaded.load(Ordering::SeqCst) {
            Err(HubError::Unloaded)
        } else {
            Ok(())
        }
    }

    fn touch(&self) {
        *self.last_used.lock().expect("never poisoned") = Instant::now();
    }
}

/// Documents in memory and the connections that sync them.
pub struct DocumentHub {
    store: Store,
    actor: ActorId,
    limits: HubLimits,
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<DocumentId, Arc<LiveDocument>>>,
    /// Connections that asked for a document nobody had, by document: told
    /// when their user's other device uploads it.
    waiting: Mutex<HashMap<DocumentId, Waiters>>,
    root_creation: tokio::sync::Mutex<()>,
    /// This node's number and the doorbell it rings after every append,
    /// when other nodes share the store.
    doorbell: Option<(u64, Arc<dyn Doorbell>)>,
}

impl std::fmt::Debug for DocumentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentHub").finish_non_exhaustive()
    }
}

impl DocumentHub {
    /// A hub over the store. `actor` signs the server's own changes (REST
    /// edits and root documents).
    pub fn new(store: Store, actor: ActorId, limits: HubLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            actor,
            limits,
            metrics,
            live: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            root_creation: tokio::sync::Mutex::new(()),
            doorbell: None,
        }
    }

    /// The hub, ringing `doorbell` as node `node` after every append, so
    /// that other nodes on the same store catch up.
    pub fn with_doorbell(mut self, node: u64, doorbell: Arc<dyn Doorbell>) -> Self {
        self.doorbell = Some((node, doorbell));
        self
    }

    /// The ids of the documents in memory.
    pub(crate) fn loaded_ids(&self) -> Vec<DocumentId> {
        self.live
            .lock()
            .expect("never poisoned")
            .keys()
            .copied()
            .collect()
    }

    /// The store behind the hub (for tests: outside the hub, only the
    /// task service and the session driver reach the store, by their own
    /// handles).
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// How many documents are in memory.
    pub(crate) fn live_count(&self) -> usize {
        self.live.lock().expect("never poisoned").len()
    }

    /// Loads a document from its snapshot and the events after it. The log
    /// holds only changes that Automerge accepted, but loading is contained
    /// all the same: one bad document must not take the server down.
    async fn load_state(&self, store: &Store, id: DocumentId) -> Result<DocState, HubError> {
        let stored = store.load_document(id).await?;
        let mut doc = contained("loading a stored document", || {
            let mut doc = match &stored.snapshot {
                Some(bytes) => Automerge::load(bytes)?,
                None => Automerge::new(),
            };
            for change in &stored.changes {
                doc.load_incremental(change)?;
            }
            Ok::<_, automerge::AutomergeError>(doc)
        })??;
        doc.set_actor(self.actor.clone());
        let events = stored.snapshot_covers + stored.changes.len() as u64;
        Ok(DocState::loaded(doc, events, stored.snapshot_covers))
    }

    async fn load(&self, id: DocumentId, owner: UserId) -> Result<Arc<LiveDocument>, HubError> {
        let store = self.store.pinned()?;
        Ok(Arc::new(LiveDocument {
            id,
            owner,
            state: tokio::sync::Mutex::new(self.load_state(&store, id).await?),
            store,
            subscribers: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
            deleted: AtomicBool::new(false),
            unloaded: AtomicBool::new(false),
        }))
    }

    /// Puts the document in memory back to what the log holds, after a
    /// failure that may have left Automerge half-way through a change. The
    /// log holds only what was accepted whole, so whatever the failed
    /// message added is gone. If even that fails, this copy is dropped from
    /// memory, and the next to open the document loads it afresh.
    async fn reload(&self, live: &LiveDocument, state: &mut DocState) {
        Metrics::bump(&self.metrics.sync_documents_reloaded);
        match self.load_state(&live.store, live.id).await {
            Ok(fresh) => {
                let needs_durable = state.needs_durable;
                *state = fresh;
                state.needs_durable = needs_durable;
            }
            Err(e) => {
                tracing::error!(error = ?e, doc = %live.id, "cannot reload a document after a failure; unloading it");
                live.unloaded.store(true, Ordering::SeqCst);
                let mut docs = self.live.lock().expect("never poisoned");
                if docs
                    .get(&live.id)
                    .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), live))
                {
                    docs.remove(&live.id);
                }
            }
        }
    }

    /// The document if `user` may sync it. A document nobody has seen is
    /// claimed for `user` only with [`IfUnseen::Claim`]. `None` means unavailable: unknown, someone else's, or
    /// deleted, which peers must not be able to tell apart.
    pub(crate) async fn open(
        &self,
        id: DocumentId,
        user: UserId,
        if_unseen: IfUnseen,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<LiveDocument>>, HubError> {
        {
            let mut docs = self.live.lock().expect("never poisoned");
            match docs.get(&id) {
                Some(live) if live.store.is_current() => {
                    live.touch();
                    return Ok((live.owner == user).then(|| Arc::clone(live)));
                }
                // Loaded from a store engine that failed since: load afresh.
                Some(_) => {
                    docs.remove(&id);
                }
                None => {}
            }
        }
        let meta = self.store.document_meta(id).await?;
        let owner = match meta {
            Some(meta) if meta.owner == user && meta.deleted_at.is_none() => user,
            Some(_) => return Ok(None),
            None if if_unseen == IfUnseen::Claim => {
                match self
                    .store
                    .claim_document(id, user, now, &self.limits.quota)
                    .await?
                {
                    Claim::Owned(_) => user,
                    Claim::Unavailable => return Ok(None),
                    Claim::OverQuota(exceeded) => {
                        Metrics::bump(&self.metrics.quota_refusals);
                        return Err(exceeded.into());
                    }
                }
            }
            None => return Ok(None),
        };
        let loaded = self.load(id, owner).await?;
        let mut live = self.live.lock().expect("never poisoned");
        // Another connection may have loaded it meanwhile; keep the first,
        // unless it came from a store engine that failed since.
        let entry = live
            .entry(id)
            .and_modify(|current| {
                if !current.store.is_current() {
                    *current = Arc::clone(&loaded);
                }
            })
            .or_insert(loaded);
        Ok(Some(Arc::clone(entry)))
    }

    /// How many connections are subscribed to a document.
    pub(crate) fn subscriber_count(&self, live: &LiveDocument) -> usize {
        live.subscribers.lock().expect("never poisoned").len()
    }

    /// Registers a connection for change notices on a document.
    pub(crate) fn subscribe(&self, live: &LiveDocument, conn: ConnectionId, mailbox: Arc<Mailbox>) {
        live.subscribers
            .lock()
            .expect("never poisoned")
            .insert(conn, mailbox);
    }

    /// Removes a connection from a document's notices.
    pub(crate) fn unsubscribe(&self, live: &LiveDocument, conn: ConnectionId) {
        live.subscribers
            .lock()
            .expect("never poisoned")
            .remove(&conn);
    }

    /// Remembers that a connection asked for a document nobody had.
    pub(crate) fn wait_for(
        &self,
        id: DocumentId,
        user: UserId,
        conn: ConnectionId,
        mailbox: Arc<Mailbox>,
    ) {
        self.waiting
            .lock()
            .expect("never poisoned")
            .entry(id)
            .or_default()
            .insert(conn, (user, mailbox));
    }

    /// Forgets every wait of a connection.
    pub(crate) fn stop_waiting(&self, conn: ConnectionId) {
        let mut waiting = self.waiting.lock().expect("never poisoned");
        waiting.retain(|_, conns| {
            conns.remove(&conn);
            !conns.is_empty()
        });
    }

    /// Generates the next sync message for a peer, if there is one. Nothing
    /// is generated from a document whose newest change is not durable yet:
    /// the message could reveal it, and a crash would then lose a change the
    /// peer was told the server has. The caller waits for the ticket and
    /// asks again.
    pub(crate) async fn generate(
        &self,
        live: &LiveDocument,
        state: &mut sync::State,
    ) -> Result<Generation, HubError> {
        let mut guard = live.state.lock().await;
        live.check_loaded()?;
        if let Some(ticket) = self.undurable(&guard) {
            return Ok(Generation::NotDurable(ticket));
        }
        // The peer's bloom filters and heads, kept in `state`, steer this.
        let keep = self.subscriber_count(live) > 1;
        let generated = contained("generating a sync message", || {
            guard.generate_for(state, keep, &self.metrics)
        });
        match generated {
            Ok(Some(message)) => Ok(Generation::Message(message)),
            Ok(None) => Ok(Generation::Nothing),
            Err(e) => {
                self.contained_panic(live, &mut guard).await;
                Err(e)
            }
        }
    }

    async fn contained_panic(&self, live: &LiveDocument, state: &mut DocState) {
        Metrics::bump(&self.metrics.sync_panics_contained);
        self.reload(live, state).await;
    }

    /// The ticket to wait for before anything read from the document may
    /// leave the server, if its newest change is not durable yet. This is
    /// the one place that decides it: sync replies ([`DocumentHub::generate`])
    /// and REST reads ([`DocumentHub::lock_durable`]) both ask here.
    fn undurable(&self, state: &DocState) -> Option<Ticket> {
        (!self.store.is_durable(state.needs_durable)).then_some(state.needs_durable)
    }

    /// Locks a document once every change applied to it is on disk. Changes
    /// are applied and logged under the lock, which is then released while
    /// the group commit flushes, so that many changes to one document share
    /// a flush; a REST read waits here.
    async fn lock_durable<'a>(
        &self,
        live: &'a LiveDocument,
    ) -> Result<tokio::sync::MutexGuard<'a, DocState>, HubError> {
        loop {
            let guard = live.state.lock().await;
            live.check_loaded()?;
            let Some(ticket) = self.undurable(&guard) else {
                return Ok(guard);
            };
            drop(guard);
            self.store.wait_durable(ticket).await?;
        }
    }

    /// The document's current heads.
    #[cfg(test)]
    pub(crate) async fn heads(
        &self,
        live: &LiveDocument,
    ) -> Result<Vec<automerge::ChangeHash>, HubError> {
        Ok(self.lock_durable(live).await?.doc.get_heads())
    }

    /// Applies a peer's sync message, records any new changes and tells the
    /// document's other peers. Returns whether the message brought changes,
    /// and the durability ticket that must be
    /// durable before anything generated from the document reaches a peer;
    /// the reply to this peer is generated later, with [`DocumentHub::generate`],
    /// so that a connection can go on applying messages while the group
    /// commit flushes.
    pub(crate) async fn apply(
        &self,
        live: &Arc<LiveDocument>,
        state: &mut sync::State,
        message: sync::Message,
        author: Author,
        from: ConnectionId,
        now: DateTime<Utc>,
    ) -> Result<Applied, HubError> {
        live.touch();
        let mut guard = live.state.lock().await;
        live.check_loaded()?;
        if live.is_deleted() {
            return Err(HubError::Deleted);
        }
        let received = match self.receive_locked(&mut guard, state, message) {
            Ok(Received::Changes(changes)) => self
                .record(live, &mut guard, changes, author, now)
                .await
                .map(|()| (true, false)),
            Ok(Received::Nothing { withheld }) => Ok((false, withheld)),
            Err(e) => Err(e),
        };
        let (changed, withheld) = match received {
            Ok(outcome) => outcome,
            Err(e) => {
                // Automerge may have taken some of the message's changes
                // before it failed, and none of them is in the log: put the
                // document back to what the log holds, so that nothing
                // unlogged ever reaches another peer.
                if matches!(e, HubError::Panicked(_)) {
                    self.contained_panic(live, &mut guard).await;
                } else if !matches!(e, HubError::Deleted) {
                    self.reload(live, &mut guard).await;
                }
                return Err(e);
            }
        };
        let ticket = guard.needs_durable;
        drop(guard);
        if changed {
            // Other connections generate their messages only once the ticket
            // is durable, so telling them now reveals nothing early.
            self.notify_changed(live, Some(from));
        }
        Ok(Applied {
            ticket,
            changed,
            withheld,
        })
    }

    /// Receives a peer's message into the document under its lock. Returns
    /// the new changes to record, if any. On error the document may hold
    /// changes that are not in the log; the caller reloads it.
    fn receive_locked(
        &self,
        guard: &mut DocState,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<Received, HubError> {
        let before = guard.doc.get_heads();
        let told = state.last_sent_heads.clone();
        // What a message without changes says the peer believes we both
        // have, before Automerge takes the message.
        let peer_believes = message
            .changes
            .is_empty()
            .then(|| message.have.first().map(|have| have.last_sync.clone()))
            .flatten();
        contained("applying a sync message", || {
            guard.doc_mut().receive_sync_message(state, message)
        })??;
        // A peer that asks for a change we count as sent never got it (a
        // relay lost the message while the connection stayed open).
        // Automerge never sends a change twice on one sync state, so without
        // this the two sides would trade empty messages for ever; forgetting
        // that it was sent makes the next message carry it.
        if let Some(need) = &state.their_need {
            for hash in need {
                state.sent_hashes.remove(hash);
            }
        }
        let (queued_changes, queued_bytes) =
            (guard.doc.queued_changes(), guard.doc.queued_change_bytes());
        if queued_changes > self.limits.max_queued_changes
            || queued_bytes > self.limits.max_queued_bytes
        {
            return Err(HubError::MissingDependencies {
                changes: queued_changes,
                bytes: queued_bytes,
            });
        }
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
        if guard.doc.get_heads() == before {
            // A peer with exactly our heads that does not know we have them
            // never heard our last message (a relay lost it). Automerge
            // would say nothing, since it counts those heads as told, and
            // the peer would wait for ever: tell it again.
            let ours = sorted(&before);
            if state.their_heads.as_deref().map(sorted).as_ref() == Some(&ours)
                && peer_believes.is_some_and(|believed| sorted(&believed) != ours)
            {
                state.last_sent_heads.clear();
            }
            let withheld = state
                .their_heads
                .as_ref()
                .is_some_and(|heads| heads.iter().any(|head| !guard.doc.has_change(head)));
            return Ok(Received::Nothing { withheld });
        }
        let changes: Vec<Vec<u8>> = contained("listing new changes", || {
            guard
                .doc
                .get_changes(&before)
                .iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect()
        })?;
        Ok(if changes.is_empty() {
            Received::Nothing { withheld: false }
        } else {
            Received::Changes(changes)
        })
    }

    /// Appends changes to the log, with the document's task-index entry, in
    /// the flush group's transaction; the caller waits for durability
    /// (through `needs_durable`) before anything reveals them.
    async fn record(
        &self,
        live: &LiveDocument,
        state: &mut DocState,
        changes: Vec<Vec<u8>>,
        author: Author,
        now: DateTime<Utc>,
    ) -> Result<(), HubError> {
        tracing::debug!(doc = %live.id, changes = changes.len(), "recording changes");
        let count = changes.len() as u64;
        let (index, summary) = self.index_update(live, state).await?;
        let (appended, ticket) = live
            .store
            .append_events(Append {
                doc: live.id,
                user: author.user,
                session: author.session,
                at: now,
                changes,
                quota: self.limits.quota,
                index,
            })
            .await
            .map_err(|e| match e {
                StoreError::DocumentDeleted => HubError::Deleted,
                StoreError::QuotaExceeded(exceeded) => {
                    Metrics::bump(&self.metrics.quota_refusals);
                    HubError::Quota(exceeded)
                }
                other => HubError::Store(other),
            })?;
        // The append follows everything this node had applied only if no
        // other node appended in between; otherwise the events before it
        // are read when this node catches up.
        if appended.first_seq == state.events {
            state.events += count;
        }
        if let Some((node, doorbell)) = &self.doorbell {
            doorbell.ring(Ring {
                node: *node,
                user: live.owner,
                doc: live.id,
                seq: appended.first_seq + count - 1,
            });
        }
        state.needs_durable = ticket;
        state.last_summary = summary;
        if state.events - state.snapshot_covers >= SNAPSHOT_EVERY {
            match contained("saving a snapshot", || state.doc.save()) {
                Ok(bytes) => {
                    live.store
                        .write_snapshot(live.id, state.events, &bytes)
                        .await?;
                    state.snapshot_covers = state.events;
                    state.needs_durable = live.store.durability_ticket();
                }
                Err(e) => tracing::error!(error = ?e, doc = %live.id, "cannot save a snapshot"),
            }
        }
        Ok(())
    }

    /// What the append does to the document's task-index entry, and the
    /// summary last written afterwards.
    ///
    /// The task list shows what REST reads: every document that reads as
    /// a task (leniently: fields of the wrong type read as absent), so a
    /// listed task can always be read and deleted. A document that stops
    /// being a task leaves the list, and the root never enters it,
    /// whatever a device wrote into it.
    async fn index_update(
        &self,
        live: &LiveDocument,
        state: &DocState,
    ) -> Result<(IndexUpdate, Option<TaskView>), HubError> {
        match contained("reading a task", || task_document::read_task(&state.doc)) {
            Ok(Ok(task)) => {
                let view = TaskView::new(live.id, &task);
                // Most changes to a busy document leave its summary as it was
                // (edits outside the task fields, or repeated values): write
                // the index only when the summary differs from the last one
                // written. Whether the document is the root is asked before
                // its first summary only; once one is written, it is not.
                if state.last_summary.as_ref() == Some(&view) {
                    return Ok((IndexUpdate::Keep, Some(view)));
                }
                let is_root = state.last_summary.is_none()
                    && live
                        .store
                        .user(live.owner)
                        .await?
                        .and_then(|u| u.root_document_id)
                        == Some(live.id);
                if is_root {
                    Ok((IndexUpdate::Remove, None))
                } else {
                    Ok((IndexUpdate::Put(view.clone()), Some(view)))
                }
            }
            Ok(Err(_)) | Err(_) => Ok((IndexUpdate::Remove, None)),
        }
    }

    /// Tells every subscriber except `except` (and any connection waiting for
    /// this document) that it changed.
    pub(crate) fn notify_changed(&self, live: &LiveDocument, except: Option<ConnectionId>) {
        let subscribers = live.subscribers.lock().expect("never poisoned");
        for (conn, mailbox) in subscribers.iter() {
            if Some(*conn) != except {
                mailbox.changed(live.id);
            }
        }
        drop(subscribers);
        let waiting = self
            .waiting
            .lock()
            .expect("never poisoned")
            .remove(&live.id);
        for (conn, (user, mailbox)) in waiting.into_iter().flatten() {
            if user == live.owner && Some(conn) != except {
                mailbox.changed(live.id);
            }
        }
    }

    /// Applies what other nodes appended to a document's log since this
    /// node last read it, if the document is in memory here, and tells its
    /// peers. Returns whether the document changed. Events this node
    /// appended itself come back too; Automerge ignores changes it has.
    ///
    /// Nodes that share one database call this when another node rings
    /// that the document changed, and for every loaded document when they
    /// may have missed a ring. What it applies is in the log already, so it
    /// is durable: no ticket to wait for.
    pub(crate) async fn catch_up(&self, id: DocumentId) -> Result<bool, HubError> {
        let Some(live) = self.live.lock().expect("never poisoned").get(&id).cloned() else {
            return Ok(false);
        };
        let mut guard = live.state.lock().await;
        live.check_loaded()?;
        let events = live.store.events_from(id, guard.events).await?;
        let before = guard.doc.get_heads();
        let mut read = guard.events;
        for event in &events {
            // The log has no gaps; an event out of order means the read
            // raced a writer in a way the engine should not allow. Stop at
            // the gap and read the rest next time.
            if event.seq != read {
                break;
            }
            let applied = contained("applying a change from the log", || {
                guard.doc_mut().load_incremental(&event.change)
            });
            match applied {
                Ok(Ok(_)) => read += 1,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, doc = %id, seq = event.seq, "cannot apply a logged change");
                    self.reload(&live, &mut guard).await;
                    return Err(e.into());
                }
                Err(e) => {
                    self.contained_panic(&live, &mut guard).await;
                    return Err(e);
                }
            }
        }
        guard.events = read;
        let changed = guard.doc.get_heads() != before;
        if changed {
            // The index holds the summary of whichever node appended last,
            // which may not have held what this node holds now: write the
            // summary of the merged document. Every node that catches up
            // does, after every ring, so the last write follows a read of
            // every event committed before it.
            let (update, summary) = self.index_update(&live, &guard).await?;
            // "Unchanged" means unchanged from what this node wrote last,
            // which another node may have overwritten since.
            let update = match (update, &summary) {
                (IndexUpdate::Keep, Some(view)) => IndexUpdate::Put(view.clone()),
                (update, _) => update,
            };
            live.store.put_task_summary(live.owner, id, &update).await?;
            guard.last_summary = summary;
        }
        drop(guard);
        if changed {
            self.notify_changed(&live, None);
        }
        Ok(changed)
    }

    /// Forwards an ephemeral message of `bytes` payload bytes to the
    /// document's other peers.
    pub(crate) fn forward_ephemeral(
        &self,
        live: &LiveDocument,
        from: ConnectionId,
        message: Arc<codeedex_schema::wire::Message>,
        bytes: usize,
    ) {
        let subscribers = live.subscribers.lock().expect("never poisoned");
        for (conn, mailbox) in subscribers.iter() {
            if *conn != from {
                mailbox.ephemeral(Arc::clone(&message), bytes);
            }
        }
    }

    /// Makes a change on the server's behalf (REST edits), durably, and tells
    /// every peer of the document.
    pub(crate) async fn change<F>(
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
        live.check_loaded()?;
        if live.is_deleted() {
            return Err(HubError::Deleted);
        }
        let before = guard.doc.get_heads();
        let mut tx = guard.doc_mut().transaction();
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
        if let Err(e) = self.record(live, &mut guard, changes, author, now).await {
            // The edit is in memory but not in the log (over quota, or the
            // store failed): take it back out.
            if !matches!(e, HubError::Deleted) {
                self.reload(live, &mut guard).await;
            }
            return Err(e);
        }
        let ticket = guard.needs_durable;
        drop(guard);
        self.store.wait_durable(ticket).await?;
        self.notify_changed(live, None);
        Ok(true)
    }

    /// Reads a document under its lock.
    pub(crate) async fn read<T>(
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
    pub(crate) async fn tombstone(
        &self,
        id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<bool, HubError> {
        let live = self.live.lock().expect("never poisoned").get(&id).cloned();
        let removed = match &live {
            Some(live) => {
                let _guard = live.state.lock().await;
                live.deleted.store(true, Ordering::SeqCst);
                self.store.tombstone_document(id, now).await?
            }
            None => self.store.tombstone_document(id, now).await?,
        };
        self.live.lock().expect("never poisoned").remove(&id);
        if let Some(live) = live {
            self.notify_changed(&live, None);
        }
        Ok(removed)
    }

    /// Tells this node's connections of `owner` that asked for a document
    /// nobody had that another node now has it; they then open it here.
    pub(crate) fn uploaded_elsewhere(&self, id: DocumentId, owner: UserId) {
        let waiting = self.waiting.lock().expect("never poisoned").remove(&id);
        for (_, (user, mailbox)) in waiting.into_iter().flatten() {
            if user == owner {
                mailbox.changed(id);
            }
        }
    }

    /// Whether the store holds `id` as deleted: for a node that may have
    /// missed the deletion's notice.
    pub(crate) async fn deleted_in_store(&self, id: DocumentId) -> Result<bool, StoreError> {
        Ok(self
            .store
            .document_meta(id)
            .await?
            .is_some_and(|meta| meta.deleted_at.is_some()))
    }

    /// Drops a document another node deleted from memory here, and tells
    /// its peers here, who are then answered `doc-unavailable`.
    pub(crate) async fn deleted_elsewhere(&self, id: DocumentId) {
        let live = self.live.lock().expect("never poisoned").get(&id).cloned();
        if let Some(live) = live {
            // Under the document's lock, as a deletion here: a change being
            // applied finishes first (and the store refuses it), every later
            // one is refused here.
            let _guard = live.state.lock().await;
            live.deleted.store(true, Ordering::SeqCst);
            drop(_guard);
            self.live.lock().expect("never poisoned").remove(&id);
            self.notify_changed(&live, None);
        }
    }

    /// The user's root document, created once, on first use, by the server:
    /// devices never create it, so two offline devices cannot make two.
    pub(crate) async fn ensure_root(
        &self,
        user: UserId,
        fresh_id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<DocumentId, HubError> {
        if let Some(id) = self
            .store
            .user(user)
            .await?
            .ok_or(HubError::UnknownUser)?
            .root_document_id
        {
            return Ok(id);
        }
        let _one_at_a_time = self.root_creation.lock().await;
        let record = self.store.user(user).await?.ok_or(HubError::UnknownUser)?;
        if let Some(id) = record.root_document_id {
            return Ok(id);
        }
        let Some(live) = self.open(fresh_id, user, IfUnseen::Claim, now).await? else {
            return Err(HubError::FreshIdTaken);
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
        // Another node may have made a root meanwhile (this lock holds only
        // here): the first one written wins, and the loser is deleted.
        let root = self
            .store
            .set_root_document(user, fresh_id)
            .await?
            .ok_or(HubError::UnknownUser)?;
        self.store.persist().await?;
        if root != fresh_id {
            tracing::info!(%user, "another node created the user's root document first");
            self.tombstone(fresh_id, now).await?;
        }
        Ok(root)
    }

    /// Drops every document loaded from a store engine that has failed, and
    /// tells the connections that sync them, which then close (see
    /// [`codeedex_schema::wire::close::STORAGE_UNAVAILABLE`]): such a copy may hold
    /// changes that never became durable. The next to open a document loads
    /// it from the recovered store. Returns how many were dropped.
    pub(crate) fn forget_stale(&self) -> usize {
        let stale: Vec<Arc<LiveDocument>> = {
            let mut live = self.live.lock().expect("never poisoned");
            let stale = live
                .values()
                .filter(|doc| !doc.store.is_current())
                .map(Arc::clone)
                .collect();
            live.retain(|_, doc| doc.store.is_current());
            stale
        };
        for doc in &stale {
            self.notify_changed(doc, None);
        }
        stale.len()
    }

    /// Follows the store's health for as long as the store lives: counts
    /// its failures and recoveries, and forgets documents loaded before a
    /// failure.
    pub(crate) async fn follow_store(&self) {
        let mut health = self.store.health();
        let mut seen = *health.borrow_and_update();
        while health.changed().await.is_ok() {
            let now = *health.borrow_and_update();
            self.metrics.store_failures.fetch_add(
                now.failures - seen.failures,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.metrics.store_recoveries.fetch_add(
                now.recoveries - seen.recoveries,
                std::sync::atomic::Ordering::Relaxed,
            );
            seen = now;
            let forgotten = self.forget_stale();
            if forgotten > 0 {
                tracing::warn!(
                    documents = forgotten,
                    "forgot documents loaded before the store failed; their connections close"
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    use super::*;
    use crate::configuration::limits::Quota;

    fn hub(dir: &std::path::Path, quota: Quota) -> DocumentHub {
        DocumentHub::new(
            Store::open(dir).unwrap(),
            ActorId::from(vec![9u8; 16]),
            HubLimits {
                quota,
                ..HubLimits::default()
            },
            Arc::new(Metrics::default()),
        )
    }

    /// A new document, claimed for a user.
    async fn claimed(hub: &DocumentHub) -> (UserId, DocumentId, Arc<LiveDocument>) {
        let user = UserId::from_random_bytes([1; 16]);
        let id = DocumentId::from_random_bytes([2; 16]);
        let live = hub
            .open(id, user, IfUnseen::Claim, Utc::now())
            .await
            .unwrap()
            .unwrap();
        (user, id, live)
    }

    /// The message a device sends once the server said what it has: it
    /// carries every change of `doc`.
    async fn push_all(
        hub: &DocumentHub,
        live: &Arc<LiveDocument>,
        doc: &mut AutoCommit,
        user: UserId,
    ) -> Result<Ticket, HubError> {
        let (mut ours, mut theirs) = (sync::State::new(), sync::State::new());
        let author = Author {
            user,
            session: None,
        };
        let hello = doc.sync().generate_sync_message(&mut ours).unwrap();
        hub.apply(live, &mut theirs, hello, author, 1, Utc::now())
            .await?;
        let Generation::Message(answer) = hub.generate(live, &mut theirs).await? else {
            panic!("the hub has something to say to a new peer");
        };
        doc.sync().receive_sync_message(&mut ours, answer).unwrap();
        let changes = doc.sync().generate_sync_message(&mut ours).unwrap();
        hub.apply(live, &mut theirs, changes, author, 1, Utc::now())
            .await
            .map(|applied| applied.ticket)
    }

    /// Generates for `state` once the document is durable.
    async fn generated(
        hub: &DocumentHub,
        live: &Arc<LiveDocument>,
        state: &mut sync::State,
    ) -> Option<sync::Message> {
        loop {
            match hub.generate(live, state).await.unwrap() {
                Generation::Message(message) => return Some(message),
                Generation::Nothing => return None,
                Generation::NotDurable(ticket) => hub.store.wait_durable(ticket).await.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn peers_in_the_same_state_share_one_generation_until_the_document_changes() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), Quota::default());
        let (user, _, live) = claimed(&hub).await;
        let mut device = AutoCommit::new();
        device.put(ROOT, "title", "shared").unwrap();
        push_all(&hub, &live, &mut device, user).await.unwrap();

        // Three peers, subscribed as their connections would be, that know
        // nothing yet: the same state.
        for conn in 1..=3 {
            let mailbox = Arc::new(Mailbox::new(
                crate::configuration::limits::MailboxLimits::default(),
                Arc::clone(&hub.metrics),
            ));
            hub.subscribe(&live, conn, mailbox);
        }
        let mut states = [sync::State::new(), sync::State::new(), sync::State::new()];
        let first = generated(&hub, &live, &mut states[0])
            .await
            .unwrap()
            .encode();
        let second = generated(&hub, &live, &mut states[1])
            .await
            .unwrap()
            .encode();
        assert_eq!(hub.metrics.sync_messages_shared.load(Ordering::Relaxed), 1);
        assert_eq!(first, second);
        assert_eq!(
            states[0], states[1],
            "a shared message leaves the same state"
        );
        // The shared result is exactly what generating would have given.
        let mut fresh = sync::State::new();
        let direct = live
            .state
            .lock()
            .await
            .doc
            .generate_sync_message(&mut fresh)
            .unwrap();
        assert_eq!(direct.encode(), second);
        assert_eq!(fresh, states[1]);

        // A peer in another state gets its own message.
        assert!(generated(&hub, &live, &mut states[0]).await.is_none());
        assert_eq!(hub.metrics.sync_messages_shared.load(Ordering::Relaxed), 1);

        // Once the document changes (here by a server-side edit, with no
        // generation in between), nothing generated before is shared: the
        // third peer is still in the state the shared message was made for.
        let author = Author {
            user,
            session: None,
        };
        hub.change(&live, author, Utc::now(), |tx| {
            tx.put(ROOT, "title", "changed")?;
            Ok(())
        })
        .await
        .unwrap();
        let third = generated(&hub, &live, &mut states[2]).await.unwrap();
        assert_eq!(hub.metrics.sync_messages_shared.load(Ordering::Relaxed), 1);
        assert_eq!(third.heads, live.state.lock().await.doc.get_heads());
        assert_ne!(third.encode(), first);
    }

    #[tokio::test]
    async fn changes_the_store_refuses_are_taken_back_out_of_memory() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(
            dir.path(),
            Quota {
                bytes_per_document: 2_000,
                ..Quota::default()
            },
        );
        let (user, id, live) = claimed(&hub).await;
        let mut device = AutoCommit::new();
        device.put(ROOT, "title", "small").unwrap();
        push_all(&hub, &live, &mut device, user).await.unwrap();
        let accepted = hub.heads(&live).await.unwrap();
        assert_eq!(accepted, device.get_heads());

        let notes = device.put_object(ROOT, "notes", ObjType::Text).unwrap();
        device
            .splice_text(&notes, 0, 0, &"x".repeat(4_000))
            .unwrap();
        let refused = push_all(&hub, &live, &mut device, user).await;
        assert!(
            matches!(
                refused,
                Err(HubError::Quota(QuotaExceeded::DocumentBytes { .. }))
            ),
            "{refused:?}"
        );
        // Automerge had taken the changes; the log did not. Nothing that is
        // not in the log may stay in memory, where it would reach peers.
        assert_eq!(hub.heads(&live).await.unwrap(), accepted);
        assert_eq!(
            hub.store().load_document(id).await.unwrap().changes.len(),
            1
        );
    }

    #[tokio::test]
    async fn a_contained_panic_is_an_error_and_the_document_is_reloaded_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), Quota::default());
        let (user, _, live) = claimed(&hub).await;
        let mut device = AutoCommit::new();
        device.put(ROOT, "title", "kept").unwrap();
        push_all(&hub, &live, &mut device, user).await.unwrap();
        let logged = hub.heads(&live).await.unwrap();

        let mut guard = live.state.lock().await;
        let panicked = contained("testing", || {
            // What a panic half-way through applying a message leaves
            // behind: a change in memory that the log never got.
            let mut tx = guard.doc_mut().transaction();
            tx.put(ROOT, "half-applied", true).unwrap();
            tx.commit();
            panic!("automerge gave up half-way");
        });
        assert!(matches!(panicked, Err(HubError::Panicked("testing"))));
        assert_ne!(guard.doc.get_heads(), logged);
        hub.contained_panic(&live, &mut guard).await;
        assert_eq!(guard.doc.get_heads(), logged);
        drop(guard);
        assert_eq!(
            hub.metrics
                .sync_panics_contained
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
