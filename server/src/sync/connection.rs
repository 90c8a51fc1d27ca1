//! The driver of one sync connection: it performs what the [`Session`]
//! machine asks of the hub, the peer registry, the store and [`Auth`], and
//! feeds the outcomes back, until the machine has nothing more to ask.
//!
//! The transport (in `api`) hands it frames, notices and timer events, and
//! gets back [`Output`]s: frames to send and at most one close. The
//! connection holds what the machine may not name: the documents it has
//! attached (the hub's shared copy and this peer's sync state of each), the
//! mailbox the hub posts to, and the peer-id binding. Dropping it saves the
//! sync states and releases all of them, so a connection task that ends in
//! any way leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync;
use chrono::{DateTime, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::wire;
use tokio::sync::oneshot;

use super::hub::{Author, ConnectionId, DocumentHub, Generation, HubError, IfUnseen, LiveDocument};
use super::mailbox::{Mailbox, Notices};
use super::registry::{Bind, PeerRegistry};
use super::session::{
    Authenticated, Bound, Effect, Failure, Generated, Identity, Reconciled, Session, SessionConfig,
    SyncKind, Synced, TransportFault,
};
use crate::auth::{Auth, AuthenticateError};
use crate::configuration::limits::SyncLimits;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// What the transport should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this binary frame.
    Frame(Vec<u8>),
    /// Close the socket with this code and reason (after the frames before it).
    Close {
        /// WebSocket close code.
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
}

/// Everything a connection needs from the rest of the server.
#[derive(Clone)]
pub struct PeerContext {
    /// The documents.
    pub hub: Arc<DocumentHub>,
    /// The store: sync states, the change feed, and durability.
    pub store: Store,
    /// Peer-id bindings.
    pub registry: Arc<PeerRegistry>,
    /// Token checks for in-place refresh.
    pub auth: Arc<Auth>,
    /// The server's peer id.
    pub server_peer_id: String,
    /// The server's storage id.
    pub server_storage_id: String,
    /// Limits.
    pub limits: SyncLimits,
    /// Counters for refusals and what the hub contained.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PeerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerContext")
            .field("server_peer_id", &self.server_peer_id)
            .finish_non_exhaustive()
    }
}

/// A document attached to this connection.
struct Attachment {
    live: Arc<LiveDocument>,
    state: sync::State,
    /// Messages in a row whose heads named changes we lack without
    /// bringing them.
    withheld_in_a_row: u32,
}

/// How many messages in a row may name changes without bringing them before
/// the peer is asked to send again everything we lack. One is the normal
/// opening of an exchange (heads first, changes in answer to ours), and a
/// second can cross our answer on the wire; three means the peer believes
/// it sent those changes. That happens when a relay lost its message while
/// the connection stayed open, or when a client recorded a message as sent
/// and then failed to send it (the stock JS client does when its socket is
/// closing). Automerge never sends a change twice on one sync state, so
/// without the reset the two sides would trade empty messages until the
/// connection ends.
const WITHHELD_BEFORE_RESET: u32 = 3;

/// One connection: the machine, and what it attached.
pub struct Connection {
    ctx: PeerContext,
    conn: ConnectionId,
    session: Session,
    mailbox: Arc<Mailbox>,
    attachments: HashMap<DocumentId, Attachment>,
    /// The peer id this connection holds in the registry, once bound.
    bound_peer_id: Option<String>,
    replaced: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("conn", &self.conn)
            .field("user", &self.session.user())
            .finish_non_exhaustive()
    }
}

/// What a failed hub call means for the peer. Failures that are the
/// server's own are logged here, with their cause, where an operator sees
/// them; the machine only learns that they happened.
fn hub_failure(conn: ConnectionId, doc: DocumentId, e: HubError) -> Failure {
    if e.is_storage_unavailable() {
        return Failure::StorageUnavailable;
    }
    match e {
        HubError::Quota(exceeded) => Failure::Quota(exceeded.to_string()),
        e @ HubError::MissingDependencies { .. } => Failure::MissingDependencies(e.to_string()),
        HubError::Automerge(cause) => Failure::Unapplicable(cause.to_string()),
        HubError::Panicked(_) => Failure::Panicked,
        e @ (HubError::Store(_)
        | HubError::Task(_)
        | HubError::Deleted
        | HubError::Unloaded
        | HubError::UnknownUser
        | HubError::FreshIdTaken) => {
            tracing::error!(error = ?e, conn, %doc, "sync connection failed");
            Failure::Internal
        }
    }
}

fn store_failure(conn: ConnectionId, e: StoreError) -> Failure {
    if let StoreError::Unavailable = e {
        return Failure::StorageUnavailable;
    }
    tracing::error!(error = ?e, conn, "sync connection failed");
    Failure::Internal
}

impl Connection {
    /// A connection of an authenticated session, before its join.
    pub fn new(
        ctx: PeerContext,
        conn: ConnectionId,
        user: UserId,
        session: SessionId,
        token_expires_at: i64,
        now: Instant,
    ) -> Self {
        let mailbox = Arc::new(Mailbox::new(ctx.limits.mailbox, Arc::clone(&ctx.metrics)));
        let config = SessionConfig {
            server_peer_id: ctx.server_peer_id.clone(),
            server_storage_id: ctx.server_storage_id.clone(),
            limits: ctx.limits,
        };
        let identity = Identity {
            conn,
            user,
            session,
            token_expires_at,
        };
        let session = Session::new(config, Arc::clone(&ctx.metrics), identity, now);
        Self {
            ctx,
            conn,
            session,
            mailbox,
            attachments: HashMap::new(),
            bound_peer_id: None,
            replaced: None,
        }
    }

    /// The connection's inbox of hub notices; the transport waits on it.
    pub fn mailbox(&self) -> Arc<Mailbox> {
        Arc::clone(&self.mailbox)
    }

    /// The user this connection belongs to.
    pub(crate) fn user(&self) -> UserId {
        self.session.user()
    }

    /// The connection's number, as logged.
    pub(crate) fn id(&self) -> ConnectionId {
        self.conn
    }

    /// The session this connection belongs to.
    pub(crate) fn session(&self) -> SessionId {
        self.session.session()
    }

    /// When the access token behind this connection expires (seconds since
    /// the epoch).
    pub(crate) fn token_expires_at(&self) -> i64 {
        self.session.token_expires_at()
    }

    /// Whether the join has happened.
    pub(crate) fn has_joined(&self) -> bool {
        self.session.has_joined()
    }

    /// Resolves when a newer connection takes this one's peer id over.
    pub(crate) fn replaced_signal(&mut self) -> Option<oneshot::Receiver<()>> {
        self.replaced.take()
    }

    /// Resolves when what this connection owes its peer may be generated:
    /// the earliest owed durability ticket is durable (or the store failed).
    /// `None` when nothing is owed.
    pub fn owed_durability(&self) -> Option<impl Future<Output = Result<(), StoreError>> + use<>> {
        let ticket = self.session.owed_ticket()?;
        let store = self.ctx.store.clone();
        Some(async move { store.wait_durable(ticket).await })
    }

    /// Handles one binary frame.
    pub async fn frame(&mut self, bytes: &[u8], now: Instant, wall: DateTime<Utc>) -> Vec<Output> {
        let effects = self.session.frame(bytes, now);
        self.perform(effects, now, wall).await
    }

    /// Handles what the hub posted to this connection's mailbox.
    pub async fn notices(
        &mut self,
        notices: Notices,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        let effects = self.session.notices(&notices.ephemeral, notices.changed);
        self.perform(effects, now, wall).await
    }

    /// The wait of [`Connection::owed_durability`] ended.
    pub async fn durable(
        &mut self,
        waited: Result<(), StoreError>,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        let effects = match waited {
            Ok(()) => self.session.durable(now),
            Err(e) => {
                let failure = store_failure(self.conn, e);
                self.session.durability_failed(failure)
            }
        };
        self.perform(effects, now, wall).await
    }

    /// When the earliest message held for the peer's answer is due anyway;
    /// the transport calls [`Connection::hold_elapsed`] then.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.session.hold_deadline()
    }

    /// The hold deadline passed: the held messages go out.
    pub async fn hold_elapsed(&mut self, now: Instant, wall: DateTime<Utc>) -> Vec<Output> {
        let effects = self.session.hold_elapsed(now);
        self.perform(effects, now, wall).await
    }

    /// The transport's ping timer: the peer is alive (it was heard from at
    /// `last_heard`, after our message), yet our last message of some
    /// documents has gone unanswered for `unanswered_for`, though it
    /// carried changes or heads the peer was not known to have. A peer
    /// answers either at once, so that message was lost on the way (a relay
    /// dropped it while the connection stayed open), and the peer cannot
    /// ask for what it never heard of. Automerge never sends a change twice
    /// on one sync state: forget what was sent and send it again.
    ///
    /// Heads alone matter for a document that arrived while the peer waited
    /// for it: our first message then has no changes (the peer's state is
    /// new), the peer had been told the document was unavailable, and if
    /// that message is lost neither side would speak again.
    pub async fn resend_unanswered(
        &mut self,
        unanswered_for: Duration,
        last_heard: Instant,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        let Some(before) = now.checked_sub(unanswered_for) else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for (doc, attachment) in &mut self.attachments {
            let state = &mut attachment.state;
            // Sent long enough ago, and the peer was heard from since.
            let stale = self
                .session
                .last_sent(*doc)
                .is_some_and(|at| at <= before && at < last_heard);
            // A message of heads the peer already had needs no answer.
            let news = !state.sent_hashes.is_empty()
                || state.their_heads.as_ref() != Some(&state.last_sent_heads);
            if state.in_flight && news && stale {
                state.sent_hashes.clear();
                state.in_flight = false;
                lost.push(*doc);
            }
        }
        if lost.is_empty() {
            return Vec::new();
        }
        Metrics::bump(&self.ctx.metrics.sync_messages_resent);
        tracing::info!(
            conn = self.conn,
            user = %self.session.user(),
            documents = lost.len(),
            "changes the peer never acknowledged are sent again"
        );
        let effects = self.session.notices(&[], lost);
        self.perform(effects, now, wall).await
    }

    /// The outputs for something the transport saw.
    pub(crate) fn transport_fault(&self, fault: TransportFault) -> Vec<Output> {
        Self::outputs(self.session.transport_fault(fault))
    }

    /// The outputs for the handshake timeout.
    pub(crate) fn handshake_timed_out(&self) -> Vec<Output> {
        Self::outputs(self.session.handshake_timed_out())
    }

    /// The outputs for an access token that expired on the open socket.
    pub(crate) fn token_expired(&self) -> Vec<Output> {
        Self::outputs(self.session.token_expired())
    }

    /// The outputs for a newer connection that took the peer id over.
    pub(crate) fn replaced(&self) -> Vec<Output> {
        Self::outputs(self.session.replaced())
    }

    /// The outputs for a clean shutdown.
    pub(crate) fn shutting_down(&self) -> Vec<Output> {
        Self::outputs(self.session.shutting_down())
    }

    /// The outputs for the end of this connection's session.
    pub(crate) fn session_ended(&self) -> Vec<Output> {
        Self::outputs(self.session.session_ended())
    }

    /// Some session-end notices were missed: asks whether this
    /// connection's session is still live, and ends the connection if not
    /// (or if nobody can tell).
    pub(crate) async fn session_may_have_ended(&self, now: DateTime<Utc>) -> Vec<Output> {
        match self
            .ctx
            .auth
            .session_is_live(self.session.session(), now)
            .await
        {
            Ok(true) => Vec::new(),
            Ok(false) | Err(_) => self.session_ended(),
        }
    }

    /// Effects that only send and close.
    fn outputs(effects: Vec<Effect>) -> Vec<Output> {
        let mut outputs = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send(message) => outputs.push(Output::Frame(wire::encode(&message))),
                Effect::Close { code, reason } => {
                    outputs.push(Output::Close { code, reason });
                    break;
                }
                other => {
                    tracing::error!(effect = ?other, "a timer event asked for work; ignored");
                }
            }
        }
        outputs
    }

    /// Performs effects in order, feeding each request's outcome back to the
    /// machine, whose further effects go to the back of the queue. Stops at
    /// the first close.
    async fn perform(
        &mut self,
        effects: Vec<Effect>,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        let mut queue = VecDeque::from(effects);
        let mut outputs = Vec::new();
        while let Some(effect) = queue.pop_front() {
            let more = match effect {
                Effect::Send(message) => {
                    outputs.push(Output::Frame(wire::encode(&message)));
                    continue;
                }
                Effect::Close { code, reason } => {
                    outputs.push(Output::Close { code, reason });
                    break;
                }
                Effect::Bind { peer_id } => self.bind(peer_id),
                Effect::Sync { doc, kind, message } => {
                    let outcome = self.sync(doc, kind, message, wall).await;
                    self.session.synced(doc, kind, outcome)
                }
                Effect::WaitFor(doc) => {
                    self.ctx
                        .hub
                        .wait_for(doc, self.session.user(), self.conn, self.mailbox());
                    continue;
                }
                Effect::Reconcile(doc) => {
                    let outcome = self.reconcile(doc, wall).await;
                    self.session.reconciled(doc, outcome)
                }
                Effect::Generate(doc) => {
                    let outcome = self.generate(doc).await;
                    self.session.generated(doc, outcome, now)
                }
                Effect::Forward {
                    doc,
                    message,
                    bytes,
                } => {
                    if let Some(attachment) = self.attachments.get(&doc) {
                        self.ctx
                            .hub
                            .forward_ephemeral(&attachment.live, self.conn, message, bytes);
                    }
                    continue;
                }
                Effect::Authenticate { token } => {
                    let outcome = match self.ctx.auth.authenticate(&token, wall).await {
                        Ok(who) => Authenticated::Valid {
                            user: who.user_id,
                            session: who.session_id,
                            expires_at: who.expires_at,
                        },
                        Err(AuthenticateError::Invalid | AuthenticateError::Expired) => {
                            Authenticated::Invalid
                        }
                        Err(AuthenticateError::Store(e)) => {
                            Authenticated::Failed(store_failure(self.conn, e))
                        }
                    };
                    self.session.authenticated(outcome)
                }
                Effect::CatchUp { cursor } => {
                    let outcome = self
                        .ctx
                        .store
                        .changed_since(self.session.user(), cursor, 100_000)
                        .await
                        .map_err(|e| store_failure(self.conn, e));
                    self.session.caught_up(outcome)
                }
            };
            queue.extend(more);
        }
        outputs
    }

    fn bind(&mut self, peer_id: String) -> Vec<Effect> {
        let (tx, rx) = oneshot::channel();
        let outcome = match self
            .ctx
            .registry
            .bind(&peer_id, self.session.user(), self.conn, tx)
        {
            Bind::Bound => {
                self.bound_peer_id = Some(peer_id);
                self.replaced = Some(rx);
                Bound::Bound
            }
            Bind::TakenByAnotherUser => Bound::TakenByAnotherUser,
        };
        self.session.bound(outcome)
    }

    /// The peer's saved sync state of `doc`, or a fresh one.
    async fn initial_state(&self, doc: DocumentId) -> sync::State {
        if let Some(storage) = self.session.storage_id()
            && let Ok(Some(bytes)) = self.ctx.store.sync_state(doc, &storage).await
            && let Ok(state) = sync::State::decode(&bytes)
        {
            return state;
        }
        sync::State::new()
    }

    /// Attaches `live` to this connection: subscribes to its changes and
    /// restores the peer's sync state.
    async fn attach(&mut self, doc: DocumentId, live: Arc<LiveDocument>) {
        self.ctx.hub.subscribe(&live, self.conn, self.mailbox());
        let state = self.initial_state(doc).await;
        self.attachments.insert(
            doc,
            Attachment {
                live,
                state,
                withheld_in_a_row: 0,
            },
        );
    }

    fn detach(&mut self, doc: DocumentId) {
        if let Some(old) = self.attachments.remove(&doc) {
            self.ctx.hub.unsubscribe(&old.live, self.conn);
        }
    }

    async fn sync(
        &mut self,
        doc: DocumentId,
        kind: SyncKind,
        message: sync::Message,
        wall: DateTime<Utc>,
    ) -> Synced {
        let user = self.session.user();
        if !self.attachments.contains_key(&doc) {
            // A `sync` may upload a document nobody has; a `request` asks
            // for one.
            let if_unseen = match kind {
                SyncKind::Sync => IfUnseen::Claim,
                SyncKind::Request => IfUnseen::Refuse,
            };
            match self.ctx.hub.open(doc, user, if_unseen, wall).await {
                Ok(Some(live)) => self.attach(doc, live).await,
                Ok(None) => return Synced::Unavailable,
                Err(e) => return Synced::Failed(hub_failure(self.conn, doc, e)),
            }
        }
        let author = Author {
            user,
            session: Some(self.session.session()),
        };
        let Some(attachment) = self.attachments.get_mut(&doc) else {
            return Synced::Unavailable;
        };
        let live = Arc::clone(&attachment.live);
        match self
            .ctx
            .hub
            .apply(
                &live,
                &mut attachment.state,
                message,
                author,
                self.conn,
                wall,
            )
            .await
        {
            Ok(applied) => {
                if applied.withheld {
                    attachment.withheld_in_a_row += 1;
                } else {
                    attachment.withheld_in_a_row = 0;
                }
                if attachment.withheld_in_a_row >= WITHHELD_BEFORE_RESET {
                    attachment.withheld_in_a_row = 0;
                    // The next message we generate carries Automerge's
                    // reset (a flag, or empty heads for peers that predate
                    // it): the peer forgets what it sent and sends again
                    // what our bloom filter does not list.
                    attachment.state.needs_reset = true;
                    Metrics::bump(&self.ctx.metrics.sync_resets_requested);
                    tracing::info!(
                        conn = self.conn,
                        user = %user,
                        doc = %doc,
                        "the peer names changes it does not send; asking it to send them again"
                    );
                }
                if applied.changed {
                    Synced::Changed(applied.ticket)
                } else {
                    Synced::Applied(applied.ticket)
                }
            }
            Err(HubError::Deleted) => {
                self.detach(doc);
                Synced::Deleted
            }
            Err(e) => Synced::Failed(hub_failure(self.conn, doc, e)),
        }
    }

    async fn reconcile(&mut self, doc: DocumentId, wall: DateTime<Utc>) -> Reconciled {
        let attached = self.attachments.get(&doc).map(|a| Arc::clone(&a.live));
        if attached.as_ref().is_some_and(|live| !live.is_current()) {
            return Reconciled::Stale;
        }
        // The document may have been deleted, or may be one this peer asked
        // for before anyone had it.
        match self
            .ctx
            .hub
            .open(doc, self.session.user(), IfUnseen::Refuse, wall)
            .await
        {
            Ok(Some(live)) => match &attached {
                Some(current) if Arc::ptr_eq(current, &live) => {}
                Some(_) => {
                    self.detach(doc);
                    return Reconciled::Gone;
                }
                None => self.attach(doc, live).await,
            },
            Ok(None) => {
                self.detach(doc);
                return Reconciled::Gone;
            }
            Err(e) => return Reconciled::Failed(hub_failure(self.conn, doc, e)),
        }
        // The change that caused the notice was recorded before it was
        // posted, so the newest ticket covers it.
        Reconciled::Current(self.ctx.store.latest_ticket())
    }

    async fn generate(&mut self, doc: DocumentId) -> Generated {
        let Some(attachment) = self.attachments.get_mut(&doc) else {
            return Generated::Detached;
        };
        let live = Arc::clone(&attachment.live);
        match self.ctx.hub.generate(&live, &mut attachment.state).await {
            Ok(Generation::Message(message)) => Generated::Message(message),
            Ok(Generation::Nothing) => Generated::Nothing,
            Ok(Generation::NotDurable(ticket)) => Generated::NotDurable(ticket),
            Err(e) => Generated::Failed(hub_failure(self.conn, doc, e)),
        }
    }
    /// Ends the connection: leaves every document and the registry, and
    /// saves the peer's sync states so that its next connection exchanges
    /// heads only. The socket driver awaits it when the connection ends.
    pub async fn finish(&mut self) {
        let states = self.release();
        save_sync_states(&self.ctx.store, states).await;
    }

    /// The part of ending that needs no waiting: unsubscribes, unbinds, and
    /// returns the sync states to save (none for a peer without a storage
    /// id, or of a copy loaded before the store failed: such a state may
    /// name changes that are lost, so the peer starts afresh instead).
    fn release(&mut self) -> Vec<(DocumentId, String, Vec<u8>)> {
        let storage = self.session.storage_id();
        let mut states = Vec::new();
        for (doc, attachment) in self.attachments.drain() {
            self.ctx.hub.unsubscribe(&attachment.live, self.conn);
            if let Some(storage) = &storage
                && attachment.live.is_current()
            {
                states.push((doc, storage.clone(), attachment.state.encode()));
            }
        }
        self.ctx.hub.stop_waiting(self.conn);
        if let Some(peer_id) = self.bound_peer_id.take() {
            self.ctx.registry.unbind(&peer_id, self.conn);
        }
        states
    }
}

async fn save_sync_states(store: &Store, states: Vec<(DocumentId, String, Vec<u8>)>) {
    for (doc, storage, state) in states {
        if let Err(e) = store.put_sync_state(doc, &storage, &state).await {
            tracing::warn!(error = ?e, %doc, "cannot save a sync state");
        }
    }
}

/// A connection dropped without [`Connection::finish`] (its task was
/// cancelled, or panicked) still leaves everything it joined, and saves its
/// sync states on the runtime if there is one.
impl Drop for Connection {
    fn drop(&mut self) {
        let states = self.release();
        if !states.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = self.ctx.store.clone();
            runtime.spawn(async move { save_sync_states(&store, states).await });
        }
    }
}
