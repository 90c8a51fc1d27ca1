//! One connection's protocol logic, independent of the transport.
//!
//! A [`PeerConnection`] takes frames and hub notices in and returns frames
//! (and a close) to send. It enforces, in order: the handshake, the peer-id
//! binding, the message rate, the sender id, and for every message that
//! names a document, that the authenticated user owns it. A document the
//! user may not see is answered `doc-unavailable`, exactly like one that does
//! not exist.
//!
//! A connection the server ends for something wrong gets an `error` message
//! first, then a close code from [`codeedex_schema::wire::close`], which says
//! what each code means and what a client should do.
//!
//! Every sync message is checked by [`admission`] against explicit limits
//! before Automerge sees any of its bytes; the hub contains whatever slips
//! through.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use automerge::sync;
use chrono::{DateTime, Utc};
use codeedex_schema::admission;
use codeedex_schema::id::{DocumentId, PeerId, SessionId, UserId};
use codeedex_schema::wire::{self, DecodeError, Message, PeerMetadata, close, message_type};
use tokio::sync::oneshot;

use super::hub::{Author, ConnectionId, DocumentHub, HubError, LiveDocument};
use super::mailbox::{Mailbox, Notices};
use super::registry::{Bind, PeerRegistry};
use crate::auth::{Auth, AuthenticateError};
use crate::configuration::limits::SyncLimits;
use crate::metrics::Metrics;
use crate::store::{StoreError, Ticket};

/// The extension message types this server understands.
pub(crate) const EXTENSIONS: [&str; 2] =
    [message_type::AUTH_REFRESH, message_type::CATCH_UP_REQUEST];

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

#[derive(Debug)]
struct Joined {
    peer_id: String,
    storage_id: Option<String>,
    ephemeral: bool,
    extensions: Vec<String>,
}

struct PeerDoc {
    live: Arc<LiveDocument>,
    state: sync::State,
}

/// Everything a connection needs from the rest of the server.
#[derive(Clone)]
pub struct PeerContext {
    /// The documents.
    pub hub: Arc<DocumentHub>,
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

/// One connection's state.
pub struct PeerConnection {
    ctx: PeerContext,
    conn: ConnectionId,
    user: UserId,
    session: SessionId,
    mailbox: Arc<Mailbox>,
    joined: Option<Joined>,
    replaced: Option<oneshot::Receiver<()>>,
    docs: HashMap<DocumentId, PeerDoc>,
    /// Documents this peer asked for that nobody had; they count towards the
    /// document limit, so a peer cannot make the server remember unbounded ids.
    waiting: HashSet<DocumentId>,
    tokens: f64,
    tokens_at: Instant,
    seen_ephemeral: HashSet<(String, String, u64)>,
    seen_order: VecDeque<(String, String, u64)>,
    token_expires_at: i64,
    /// Documents whose next message to this peer is due, and the
    /// durability ticket to wait for before generating them (see
    /// [`PeerConnection::owed_ticket`]).
    owed: BTreeSet<DocumentId>,
    owed_ticket: Ticket,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("conn", &self.conn)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn frame(message: &Message) -> Output {
    Output::Frame(wire::encode(message))
}

/// The close for a connection whose changes the store may have lost.
fn storage_unavailable() -> Vec<Output> {
    fail(
        close::STORAGE_UNAVAILABLE,
        "server storage unavailable; reconnect later",
    )
}

fn fail(code: u16, message: &str) -> Vec<Output> {
    vec![
        frame(&Message::Error {
            message: message.to_owned(),
        }),
        Output::Close {
            code,
            reason: message.to_owned(),
        },
    ]
}

impl PeerConnection {
    /// A connection of an authenticated session, before its join.
    pub fn new(
        ctx: PeerContext,
        conn: ConnectionId,
        user: UserId,
        session: SessionId,
        token_expires_at: i64,
        now: Instant,
    ) -> Self {
        let burst = f64::from(ctx.limits.message_burst);
        let mailbox = Arc::new(Mailbox::new(ctx.limits.mailbox, Arc::clone(&ctx.metrics)));
        Self {
            ctx,
            conn,
            user,
            session,
            mailbox,
            joined: None,
            replaced: None,
            docs: HashMap::new(),
            waiting: HashSet::new(),
            tokens: burst,
            tokens_at: now,
            seen_ephemeral: HashSet::new(),
            seen_order: VecDeque::new(),
            owed: BTreeSet::new(),
            owed_ticket: Ticket::NONE,
            token_expires_at,
        }
    }

    /// The connection's inbox of hub notices; the driver waits on it.
    pub fn mailbox(&self) -> Arc<Mailbox> {
        Arc::clone(&self.mailbox)
    }

    /// The user this connection belongs to.
    pub(crate) fn user(&self) -> UserId {
        self.user
    }

    /// The connection's number, as logged.
    pub(crate) fn id(&self) -> ConnectionId {
        self.conn
    }

    /// The session this connection belongs to.
    pub(crate) fn session(&self) -> SessionId {
        self.session
    }

    /// When the access token behind this connection expires (seconds since the epoch).
    pub(crate) fn token_expires_at(&self) -> i64 {
        self.token_expires_at
    }

    /// Whether the join has happened.
    pub(crate) fn has_joined(&self) -> bool {
        self.joined.is_some()
    }

    /// Resolves when a newer connection takes this one's peer id over.
    pub(crate) fn replaced_signal(&mut self) -> Option<oneshot::Receiver<()>> {
        self.replaced.take()
    }

    fn supports(&self, extension: &str) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|j| j.extensions.iter().any(|e| e == extension))
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.ctx.limits.messages_per_second);
        let burst = f64::from(self.ctx.limits.message_burst);
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.tokens_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The outputs for an access token that expired on the open socket.
    pub(crate) fn token_expired(&self) -> Vec<Output> {
        fail(close::TOKEN_EXPIRED, "access token expired")
    }

    /// Handles one binary frame.
    pub async fn handle_frame(
        &mut self,
        bytes: &[u8],
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        if !self.take_token(now) {
            return fail(close::LIMIT, "message rate limit exceeded");
        }
        let message = match wire::decode(bytes) {
            Ok(message) => message,
            // Unknown message types are skipped, so that newer clients can
            // add messages without breaking older servers.
            Err(DecodeError::UnknownType(_)) => return Vec::new(),
            Err(e) => return fail(close::PROTOCOL_ERROR, &format!("malformed message: {e}")),
        };
        tracing::debug!(
            conn = self.conn,
            kind = message.message_type(),
            doc = message.document_id(),
            "received"
        );
        let Some(joined) = &self.joined else {
            return self.handle_join(message);
        };
        let peer_id = joined.peer_id.clone();
        // An error from the peer is fatal by the protocol; it carries no
        // sender id, so it is handled before the sender check.
        if let Message::Error { .. } = message {
            return vec![Output::Close {
                code: close::NORMAL,
                reason: "peer sent an error".to_owned(),
            }];
        }
        // Messages claiming to come from another peer are dropped, as the
        // reference server does: they cannot be from this socket's peer.
        match message.sender_id() {
            Some(sender) if sender == peer_id => {}
            _ => return Vec::new(),
        }
        match message {
            Message::Request {
                document_id, data, ..
            } => self.handle_sync(&document_id, &data, false, wall).await,
            Message::Sync {
                document_id, data, ..
            } => self.handle_sync(&document_id, &data, true, wall).await,
            Message::Ephemeral {
                ref document_id,
                ref session_id,
                count,
                ref data,
                ..
            } => {
                let bytes = data.len();
                let key = (peer_id.clone(), session_id.clone(), count);
                let Ok(doc) = document_id.parse::<DocumentId>() else {
                    return Vec::new();
                };
                if self.seen_ephemeral.contains(&key) {
                    return Vec::new();
                }
                self.remember_ephemeral(key);
                if let Some(peer_doc) = self.docs.get(&doc) {
                    self.ctx.hub.forward_ephemeral(
                        &peer_doc.live,
                        self.conn,
                        Arc::new(message),
                        bytes,
                    );
                }
                Vec::new()
            }
            Message::AuthRefresh { access_token, .. }
                if self.supports(message_type::AUTH_REFRESH) =>
            {
                match self.ctx.auth.authenticate(&access_token, wall) {
                    // The refreshed token must be of this connection's own
                    // session: the socket belongs to that session, and ends
                    // when it is logged out or revoked. A token of another
                    // session, even the same user's, would move the socket
                    // out of reach of that logout.
                    Ok(who) if who.user_id == self.user && who.session_id == self.session => {
                        self.token_expires_at = who.expires_at;
                        vec![frame(&Message::AuthAccepted {
                            sender_id: self.ctx.server_peer_id.clone(),
                            target_id: peer_id,
                            expires_at: who.expires_at,
                        })]
                    }
                    Ok(_) | Err(AuthenticateError::Invalid) | Err(AuthenticateError::Expired) => {
                        fail(
                            close::TOKEN_EXPIRED,
                            "the refreshed access token is not valid for this connection",
                        )
                    }
                    Err(AuthenticateError::Store(e)) => self.internal(e),
                }
            }
            Message::CatchUpRequest { cursor, .. }
                if self.supports(message_type::CATCH_UP_REQUEST) =>
            {
                match self
                    .ctx
                    .hub
                    .store()
                    .changed_since(self.user, cursor, 100_000)
                {
                    Ok((docs, cursor)) => vec![frame(&Message::CatchUpResponse {
                        sender_id: self.ctx.server_peer_id.clone(),
                        target_id: peer_id,
                        document_ids: docs.iter().map(ToString::to_string).collect(),
                        cursor,
                    })],
                    Err(e) => self.internal(e),
                }
            }
            Message::Leave { .. } | Message::Error { .. } => {
                vec![Output::Close {
                    code: close::NORMAL,
                    reason: "peer left".to_owned(),
                }]
            }
            Message::Join { .. } | Message::Peer { .. } => {
                fail(close::PROTOCOL_ERROR, "unexpected handshake message")
            }
            // Remote-heads gossip is not offered; doc-unavailable from a
            // peer needs no answer; extensions the peer did not announce are
            // ignored like unknown types.
            _ => Vec::new(),
        }
    }

    /// The outputs for a store failure: 4013 when the store is unavailable
    /// (the disk failed), else an internal error.
    pub(crate) fn store_failed(&self, e: StoreError) -> Vec<Output> {
        self.internal(e)
    }

    fn internal(&self, e: StoreError) -> Vec<Output> {
        if let StoreError::Unavailable = e {
            tracing::warn!(conn = self.conn, user = %self.user, "closing a sync connection: the store is unavailable");
            return storage_unavailable();
        }
        tracing::error!(error = ?e, "sync connection failed");
        fail(close::PROTOCOL_ERROR, "internal server error")
    }

    fn remember_ephemeral(&mut self, key: (String, String, u64)) {
        if self.seen_order.len() >= 1024
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen_ephemeral.remove(&old);
        }
        self.seen_ephemeral.insert(key.clone());
        self.seen_order.push_back(key);
    }

    fn handle_join(&mut self, message: Message) -> Vec<Output> {
        let Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata,
        } = message
        else {
            return fail(close::PROTOCOL_ERROR, "the first message must be join");
        };
        if !supported_protocol_versions
            .iter()
            .any(|v| v == wire::PROTOCOL_VERSION)
        {
            return fail(
                close::PROTOCOL_ERROR,
                "unsupported protocol version: this server speaks version 1",
            );
        }
        if sender_id.parse::<PeerId>().is_err() {
            return fail(close::PROTOCOL_ERROR, "invalid peer id");
        }
        let (tx, rx) = oneshot::channel();
        if let Bind::TakenByAnotherUser =
            self.ctx.registry.bind(&sender_id, self.user, self.conn, tx)
        {
            return fail(close::PEER_ID_TAKEN, "peer id in use by another account");
        }
        self.replaced = Some(rx);
        let metadata = peer_metadata.unwrap_or_default();
        self.joined = Some(Joined {
            peer_id: sender_id.clone(),
            storage_id: metadata
                .storage_id
                .filter(|s| !s.is_empty() && s.len() <= 128),
            ephemeral: metadata.is_ephemeral,
            extensions: metadata
                .extensions
                .into_iter()
                .filter(|e| EXTENSIONS.contains(&e.as_str()))
                .collect(),
        });
        vec![frame(&Message::Peer {
            sender_id: self.ctx.server_peer_id.clone(),
            target_id: sender_id,
            selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(self.ctx.server_storage_id.clone()),
                is_ephemeral: false,
                extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
            }),
        })]
    }

    fn unavailable(&self, document_id: &str) -> Output {
        let joined = self.joined.as_ref().expect("only called after the join");
        frame(&Message::DocUnavailable {
            sender_id: self.ctx.server_peer_id.clone(),
            target_id: joined.peer_id.clone(),
            document_id: document_id.to_owned(),
        })
    }

    fn sync_frame(&self, doc: DocumentId, mut message: sync::Message) -> Output {
        let joined = self.joined.as_ref().expect("only called after the join");
        // The flags section tells the peer that we take sync v2 messages,
        // which may carry a whole compressed document. We take only lists of
        // uncompressed changes, whose every byte the admission check can see
        // before Automerge does; without the flags, conforming peers (the
        // stock JavaScript client included) send nothing else. We still send
        // v2 to peers that announce it.
        message.flags = None;
        frame(&Message::Sync {
            sender_id: self.ctx.server_peer_id.clone(),
            target_id: joined.peer_id.clone(),
            document_id: doc.to_string(),
            data: message.encode(),
        })
    }

    fn initial_state(&self, doc: DocumentId) -> sync::State {
        let joined = self.joined.as_ref().expect("only called after the join");
        if let (Some(storage), false) = (&joined.storage_id, joined.ephemeral)
            && let Ok(Some(bytes)) = self.ctx.hub.store().sync_state(doc, storage)
            && let Ok(state) = sync::State::decode(&bytes)
        {
            return state;
        }
        sync::State::new()
    }

    /// Opens a document for this connection, checking ownership.
    fn attach(
        &mut self,
        doc: DocumentId,
        create: bool,
        wall: DateTime<Utc>,
    ) -> Result<Option<()>, Vec<Output>> {
        if self.docs.contains_key(&doc) {
            return Ok(Some(()));
        }
        let counted =
            self.docs.len() + self.waiting.len() - usize::from(self.waiting.contains(&doc));
        if counted >= self.ctx.limits.max_documents {
            return Err(fail(close::LIMIT, "too many documents on one connection"));
        }
        match self.ctx.hub.open(doc, self.user, create, wall) {
            Ok(Some(live)) => {
                self.ctx.hub.subscribe(&live, self.conn, self.mailbox());
                let state = self.initial_state(doc);
                self.docs.insert(doc, PeerDoc { live, state });
                self.waiting.remove(&doc);
                Ok(Some(()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.hub_failure(doc, e)),
        }
    }

    async fn handle_sync(
        &mut self,
        document_id: &str,
        data: &[u8],
        is_sync: bool,
        wall: DateTime<Utc>,
    ) -> Vec<Output> {
        let Ok(doc) = document_id.parse::<DocumentId>() else {
            return vec![self.unavailable(document_id)];
        };
        let message = match admission::admit_sync_message(data, &self.ctx.limits.input) {
            Ok(admitted) => admitted.into_message(),
            Err(refusal) => {
                Metrics::bump(&self.ctx.metrics.sync_messages_refused);
                tracing::warn!(conn = self.conn, user = %self.user, %doc, reason = %refusal, "refused a sync message");
                let code = if refusal.is_limit() {
                    close::LIMIT
                } else {
                    close::PROTOCOL_ERROR
                };
                return fail(code, &format!("sync message refused: {refusal}"));
            }
        };
        match self.attach(doc, is_sync, wall) {
            Err(outputs) => return outputs,
            Ok(None) => {
                if !is_sync && self.waiting.insert(doc) {
                    self.ctx
                        .hub
                        .wait_for(doc, self.user, self.conn, self.mailbox());
                }
                return vec![self.unavailable(document_id)];
            }
            Ok(Some(())) => {}
        }
        let author = Author {
            user: self.user,
            session: Some(self.session),
        };
        let Some(peer_doc) = self.docs.get_mut(&doc) else {
            return vec![self.unavailable(document_id)];
        };
        let live = Arc::clone(&peer_doc.live);
        match self
            .ctx
            .hub
            .apply(&live, &mut peer_doc.state, message, author, self.conn, wall)
            .await
        {
            Ok(ticket) => {
                self.owe(doc, ticket);
                Vec::new()
            }
            Err(HubError::Deleted) => {
                if let Some(old) = self.docs.remove(&doc) {
                    self.ctx.hub.unsubscribe(&old.live, self.conn);
                }
                vec![self.unavailable(document_id)]
            }
            Err(e) => self.hub_failure(doc, e),
        }
    }

    /// The answer to a hub failure on `doc`: the protocol's `error` message
    /// and a close code that says whose fault it was. What the peer sent
    /// is logged where an operator sees it.
    fn hub_failure(&self, doc: DocumentId, e: HubError) -> Vec<Output> {
        if e.is_storage_unavailable() {
            tracing::warn!(conn = self.conn, user = %self.user, %doc, "closing a sync connection: the store is unavailable");
            return storage_unavailable();
        }
        let (code, message) = match &e {
            HubError::Quota(exceeded) => (close::QUOTA, exceeded.to_string()),
            HubError::MissingDependencies { .. } => (close::LIMIT, e.to_string()),
            HubError::Automerge(cause) => (
                close::PROTOCOL_ERROR,
                format!("the sync message could not be applied: {cause}"),
            ),
            HubError::Panicked(_) => (
                close::PROTOCOL_ERROR,
                "the sync message could not be applied".to_owned(),
            ),
            HubError::Store(_) | HubError::Task(_) | HubError::Deleted | HubError::Unloaded => {
                tracing::error!(error = ?e, conn = self.conn, %doc, "sync connection failed");
                return fail(close::PROTOCOL_ERROR, "internal server error");
            }
        };
        tracing::warn!(conn = self.conn, user = %self.user, %doc, error = %e, "refused a sync message");
        fail(code, &message)
    }

    /// Notes that `doc` has something to tell this peer once `ticket` is
    /// durable. Several messages and notices for one document before then
    /// are answered with one generated message.
    fn owe(&mut self, doc: DocumentId, ticket: Ticket) {
        // The driver wakes when the earliest owed ticket is durable, not the
        // newest: a peer that streams changes moves the newest ticket on with
        // every frame, and waiting for it would hold back every reply and
        // relayed change until the stream paused.
        self.owed_ticket = if self.owed.is_empty() {
            ticket
        } else {
            self.owed_ticket.min(ticket)
        };
        self.owed.insert(doc);
    }

    /// The durability ticket to wait for before [`PeerConnection::send_owed`]
    /// can answer without blocking, when some document's message is due.
    /// The driver keeps handling frames and notices while it waits, so one
    /// connection's messages share flushes instead of queueing behind one
    /// flush each.
    pub(crate) fn owed_ticket(&self) -> Option<Ticket> {
        (!self.owed.is_empty()).then_some(self.owed_ticket)
    }

    /// Generates the due message of every owed document.
    pub async fn send_owed(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        // Wait once for the newest change of every owed document, so that
        // generating them below rarely waits again: waiting document by
        // document could cost a flush each while other peers keep changing
        // them.
        let mut newest = Ticket::NONE;
        for doc in &self.owed {
            if let Some(peer_doc) = self.docs.get(doc) {
                newest = newest.max(self.ctx.hub.pending_ticket(&peer_doc.live).await);
            }
        }
        if let Err(e) = self.ctx.hub.store().wait_durable(newest).await {
            return self.internal(e);
        }
        for doc in std::mem::take(&mut self.owed) {
            let Some(peer_doc) = self.docs.get_mut(&doc) else {
                continue;
            };
            let live = Arc::clone(&peer_doc.live);
            match self.ctx.hub.generate(&live, &mut peer_doc.state).await {
                Ok(Some(message)) => {
                    tracing::debug!(conn = self.conn, %doc, changes = message.changes.len(), "sending sync message");
                    outputs.push(self.sync_frame(doc, message));
                }
                Ok(None) => {}
                Err(e) => {
                    outputs.extend(self.hub_failure(doc, e));
                    return outputs;
                }
            }
        }
        outputs
    }

    /// Handles what the hub posted to this connection's mailbox.
    pub async fn handle_notices(&mut self, notices: Notices, wall: DateTime<Utc>) -> Vec<Output> {
        let Some(joined) = &self.joined else {
            return Vec::new();
        };
        let mut outputs: Vec<Output> = notices
            .ephemeral
            .iter()
            .filter_map(|message| match message.as_ref() {
                Message::Ephemeral {
                    sender_id,
                    document_id,
                    count,
                    session_id,
                    data,
                    ..
                } => Some(frame(&Message::Ephemeral {
                    sender_id: sender_id.clone(),
                    target_id: joined.peer_id.clone(),
                    document_id: document_id.clone(),
                    count: *count,
                    session_id: session_id.clone(),
                    data: data.clone(),
                })),
                _ => None,
            })
            .collect();
        for doc in notices.changed {
            let done = self.document_changed(doc, wall, &mut outputs);
            if done {
                break;
            }
        }
        outputs
    }

    /// Handles a change notice for `doc`. Returns true when the connection
    /// must close (the outputs then end with the close).
    fn document_changed(
        &mut self,
        doc: DocumentId,
        wall: DateTime<Utc>,
        outputs: &mut Vec<Output>,
    ) -> bool {
        // The copy this peer synced was loaded before the store failed: it
        // may have told the peer of changes that are lost now.
        if self.docs.get(&doc).is_some_and(|d| !d.live.is_current()) {
            tracing::warn!(conn = self.conn, user = %self.user, %doc, "closing a sync connection: the store failed under it");
            outputs.extend(storage_unavailable());
            return true;
        }
        // The document may have been deleted, or may be one this peer asked
        // for before anyone had it.
        match self.ctx.hub.open(doc, self.user, false, wall) {
            Ok(Some(live))
                if self
                    .docs
                    .get(&doc)
                    .is_some_and(|d| Arc::ptr_eq(&d.live, &live)) => {}
            Ok(Some(_)) if !self.docs.contains_key(&doc) => match self.attach(doc, false, wall) {
                Ok(Some(())) => {}
                Ok(None) => return false,
                Err(closing) => {
                    outputs.extend(closing);
                    return true;
                }
            },
            Ok(_) => {
                if let Some(old) = self.docs.remove(&doc) {
                    self.ctx.hub.unsubscribe(&old.live, self.conn);
                    outputs.push(self.unavailable(&doc.to_string()));
                }
                return false;
            }
            Err(e) if e.is_storage_unavailable() => {
                outputs.extend(self.hub_failure(doc, e));
                return true;
            }
            Err(e) => {
                tracing::error!(error = ?e, %doc, "cannot reopen document");
                return false;
            }
        }
        // The change that caused the notice was recorded before it was
        // posted, so the newest ticket covers it.
        self.owe(doc, self.ctx.hub.store().latest_ticket());
        false
    }

    /// Ends the connection: saves sync states, drops subscriptions and the
    /// peer-id binding. Idempotent; dropping the connection calls it too, so
    /// that a connection task that ends in any way leaves nothing behind.
    pub fn finish(&mut self) {
        let storage = self
            .joined
            .as_ref()
            .and_then(|j| (!j.ephemeral).then(|| j.storage_id.clone()).flatten());
        for (doc, peer_doc) in self.docs.drain() {
            self.ctx.hub.unsubscribe(&peer_doc.live, self.conn);
            // A sync state of a copy loaded before the store failed may
            // name changes that are lost: the peer starts afresh instead.
            if let Some(storage) = &storage
                && peer_doc.live.is_current()
                && let Err(e) =
                    self.ctx
                        .hub
                        .store()
                        .put_sync_state(doc, storage, &peer_doc.state.encode())
            {
                tracing::warn!(error = ?e, %doc, "cannot save a sync state");
            }
        }
        self.ctx.hub.stop_waiting(self.conn);
        self.waiting.clear();
        if let Some(joined) = &self.joined {
            self.ctx.registry.unbind(&joined.peer_id, self.conn);
        }
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.finish();
    }
}
