//! One sync connection's protocol logic, server side, as a pure state machine.
//!
//! Events go in: a frame arrived, the hub posted notices, a timer fired, the
//! group commit made a ticket durable, and the answers to the machine's own
//! requests. [`Effect`]s come out: messages to send, a close, and requests
//! (sync this message into that document, generate a reply, check a token,
//! list changes since a cursor). No IO, no clock, no store and no hub: time
//! is passed in, and [`super::connection`] performs the effects and feeds
//! their outcomes back, one at a time, in order.
//!
//! The machine enforces, in order: the handshake, the peer-id binding, the
//! message rate, the sender id, and the per-connection document limit. Every
//! sync message is checked by [`admission`] against explicit limits before
//! any of its bytes leave the machine. A document the user may not see is
//! answered `doc-unavailable`, exactly like one that does not exist.
//!
//! Replies are owed, not sent: an applied message or a change notice makes
//! the document's next message due once a durability ticket is durable
//! ([`Session::owed_ticket`]); the driver waits for it while the machine
//! goes on taking frames, and [`Session::durable`] asks for the due
//! messages. The hub refuses to generate from a document whose newest
//! change is not durable yet ([`Generated::NotDurable`]), and the machine
//! then owes the document again for that ticket. So nothing reaches a peer
//! before it is durable, and the rule lives in the hub alone.
//!
//! A connection the server ends for something wrong gets an `error` message
//! first, then a close code from [`codeedex_schema::wire::close`], which says
//! what each code means and what a client should do.
//!
//! The machine's vocabulary (effects and outcomes) lives in `effects`; the
//! machine itself stays in this one file, over 600 lines, because its rules
//! are read in order (rate, decode, handshake, sender, admission, limits,
//! then requests) and split apart they would no longer show that order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use automerge::sync;
use codeedex_schema::admission;
use codeedex_schema::id::{DocumentId, PeerId, SessionId, UserId};
use codeedex_schema::wire::{self, DecodeError, Message, PeerMetadata, close, message_type};

use crate::configuration::limits::SyncLimits;
use crate::durability::Ticket;
use crate::metrics::Metrics;

mod effects;

pub use effects::{
    Authenticated, Bound, Effect, Failure, Generated, Reconciled, SyncKind, Synced, TransportFault,
};

/// The extension message types this server understands.
pub const EXTENSIONS: [&str; 2] = [message_type::AUTH_REFRESH, message_type::CATCH_UP_REQUEST];

/// How many recent ephemeral messages a connection remembers, to drop the
/// repeats that gossip between peers produces.
const EPHEMERAL_MEMORY: usize = 1024;

/// Messages of one document that may go to a peer at once, one after
/// another, before the coalescing bound paces the rest: light load (a few
/// edits a second, arriving at random) never waits, and a steady stream
/// still goes out at most once per bound, with everything that gathered.
const PACE_BURST: u32 = 3;

/// The server's identity in the protocol, and the limits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The server's peer id.
    pub server_peer_id: String,
    /// The server's storage id.
    pub server_storage_id: String,
    /// Limits.
    pub limits: SyncLimits,
}

#[derive(Debug)]
struct Joined {
    peer_id: String,
    storage_id: Option<String>,
    ephemeral: bool,
    extensions: Vec<String>,
}

/// A token bucket for the message rate.
#[derive(Debug)]
struct MessageRate {
    available: f64,
    refilled_at: Instant,
}

/// Ephemeral messages seen lately, oldest first.
#[derive(Debug, Default)]
struct RecentEphemeral {
    seen: HashSet<(String, String, u64)>,
    order: VecDeque<(String, String, u64)>,
}

impl RecentEphemeral {
    /// Remembers `key`; false if it was seen already.
    fn first_sight(&mut self, key: (String, String, u64)) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= EPHEMERAL_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// Whose connection this is: what the upgrade authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The connection's number, as logged.
    pub conn: u64,
    /// The signed-in user.
    pub user: UserId,
    /// The session (device sign-in) whose token opened the socket.
    pub session: SessionId,
    /// When that token expires (seconds since the epoch); an in-place
    /// refresh moves it.
    pub token_expires_at: i64,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    metrics: Arc<Metrics>,
    identity: Identity,
    joined: Option<Joined>,
    /// Documents attached to the connection: the peer syncs them and the
    /// hub tells the connection of their changes.
    attached: HashSet<DocumentId>,
    /// Documents this peer asked for that nobody had; they count towards the
    /// document limit, so a peer cannot make the server remember unbounded ids.
    waiting: HashSet<DocumentId>,
    rate: MessageRate,
    ephemeral: RecentEphemeral,
    /// Documents whose next message to this peer is due, and the earliest
    /// durability ticket to wait for before asking for them.
    owed: BTreeSet<DocumentId>,
    owed_ticket: Ticket,
    /// When each document's last message went to this peer.
    last_sent: HashMap<DocumentId, Instant>,
    /// Each document's pace towards this peer (see [`Session::durable`]):
    /// the time at which its allowance would be spent, one coalescing bound
    /// per message sent (the generic cell rate algorithm's theoretical
    /// arrival time).
    paced: HashMap<DocumentId, Instant>,
    /// Documents whose next message waits, each until its deadline.
    held: BTreeMap<DocumentId, Instant>,
    /// Owed documents whose peer sent changes it waits to see acknowledged:
    /// their message never waits.
    urgent: HashSet<DocumentId>,
}

fn fail(code: u16, message: &str) -> Vec<Effect> {
    vec![
        Effect::Send(Message::Error {
            message: message.to_owned(),
        }),
        Effect::Close {
            code,
            reason: message.to_owned(),
        },
    ]
}

fn close(code: u16, reason: &str) -> Vec<Effect> {
    vec![Effect::Close {
        code,
        reason: reason.to_owned(),
    }]
}

impl Session {
    /// A connection of an authenticated session, before its join.
    pub fn new(
        config: SessionConfig,
        metrics: Arc<Metrics>,
        identity: Identity,
        now: Instant,
    ) -> Self {
        let burst = f64::from(config.limits.message_burst);
        Self {
            config,
            metrics,
            identity,
            joined: None,
            attached: HashSet::new(),
            waiting: HashSet::new(),
            rate: MessageRate {
                available: burst,
                refilled_at: now,
            },
            ephemeral: RecentEphemeral::default(),
            owed: BTreeSet::new(),
            owed_ticket: Ticket::NONE,
            last_sent: HashMap::new(),
            paced: HashMap::new(),
            held: BTreeMap::new(),
            urgent: HashSet::new(),
        }
    }

    /// The user this connection belongs to.
    pub fn user(&self) -> UserId {
        self.identity.user
    }

    /// The session this connection belongs to.
    pub fn session(&self) -> SessionId {
        self.identity.session
    }

    /// When the access token behind this connection expires (seconds since
    /// the epoch).
    pub fn token_expires_at(&self) -> i64 {
        self.identity.token_expires_at
    }

    /// Whether the join has happened.
    pub fn has_joined(&self) -> bool {
        self.joined.is_some()
    }

    /// The peer id the connection is bound to, once joined.
    pub fn peer_id(&self) -> Option<&str> {
        self.joined.as_ref().map(|j| j.peer_id.as_str())
    }

    /// Where the peer's sync states are saved: its storage id, unless it is
    /// ephemeral or announced none.
    pub fn storage_id(&self) -> Option<String> {
        self.joined
            .as_ref()
            .filter(|j| !j.ephemeral)
            .and_then(|j| j.storage_id.clone())
    }

    /// The durability ticket to wait for before [`Session::durable`] has
    /// messages to ask for, when some document's message is due. The driver
    /// keeps handling frames and notices while it waits, so one connection's
    /// messages share flushes instead of queueing behind one flush each.
    pub fn owed_ticket(&self) -> Option<Ticket> {
        (!self.owed.is_empty()).then_some(self.owed_ticket)
    }

    fn supports(&self, extension: &str) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|j| j.extensions.iter().any(|e| e == extension))
    }

    fn take_message_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.config.limits.messages_per_second);
        let burst = f64::from(self.config.limits.message_burst);
        let elapsed = now
            .saturating_duration_since(self.rate.refilled_at)
            .as_secs_f64();
        self.rate.available = (self.rate.available + elapsed * rate).min(burst);
        self.rate.refilled_at = now;
        if self.rate.available >= 1.0 {
            self.rate.available -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles one binary frame.
    pub fn frame(&mut self, bytes: &[u8], now: Instant) -> Vec<Effect> {
        if !self.take_message_token(now) {
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
            conn = self.identity.conn,
            kind = message.message_type(),
            doc = message.document_id(),
            "received"
        );
        let Some(joined) = &self.joined else {
            return self.join(message);
        };
        // An error from the peer is fatal by the protocol; it carries no
        // sender id, so it is handled before the sender check.
        if let Message::Error { .. } = message {
            return close(close::NORMAL, "peer sent an error");
        }
        // Messages claiming to come from another peer are dropped, as the
        // reference server does: they cannot be from this socket's peer.
        if message.sender_id() != Some(joined.peer_id.as_str()) {
            return Vec::new();
        }
        match message {
            Message::Request {
                document_id, data, ..
            } => self.sync_message(&document_id, &data, SyncKind::Request),
            Message::Sync {
                document_id, data, ..
            } => self.sync_message(&document_id, &data, SyncKind::Sync),
            Message::Ephemeral { .. } => self.ephemeral(message),
            Message::AuthRefresh { access_token, .. }
                if self.supports(message_type::AUTH_REFRESH) =>
            {
                vec![Effect::Authenticate {
                    token: access_token,
                }]
            }
            Message::CatchUpRequest { cursor, .. }
                if self.supports(message_type::CATCH_UP_REQUEST) =>
            {
                vec![Effect::CatchUp { cursor }]
            }
            Message::Leave { .. } => close(close::NORMAL, "peer left"),
            Message::Join { .. } | Message::Peer { .. } => {
                fail(close::PROTOCOL_ERROR, "unexpected handshake message")
            }
            // Remote-heads gossip is not offered; doc-unavailable from a
            // peer needs no answer; extensions the peer did not announce are
            // ignored like unknown types.
            _ => Vec::new(),
        }
    }

    fn join(&mut self, message: Message) -> Vec<Effect> {
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
        vec![Effect::Bind { peer_id: sender_id }]
    }

    /// The answer to [`Effect::Bind`].
    pub fn bound(&mut self, outcome: Bound) -> Vec<Effect> {
        let Some(joined) = &self.joined else {
            return Vec::new();
        };
        if outcome == Bound::TakenByAnotherUser {
            // Not bound, so there is nothing to unbind when the connection ends.
            self.joined = None;
            return fail(close::PEER_ID_TAKEN, "peer id in use by another account");
        }
        vec![Effect::Send(Message::Peer {
            sender_id: self.config.server_peer_id.clone(),
            target_id: joined.peer_id.clone(),
            selected_protocol_version: wire::PROTOCOL_VERSION.to_owned(),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(self.config.server_storage_id.clone()),
                is_ephemeral: false,
                extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
            }),
        })]
    }

    fn target(&self) -> String {
        self.joined
            .as_ref()
            .map(|j| j.peer_id.clone())
            .unwrap_or_default()
    }

    fn unavailable(&self, document_id: String) -> Effect {
        Effect::Send(Message::DocUnavailable {
            sender_id: self.config.server_peer_id.clone(),
            target_id: self.target(),
            document_id,
        })
    }

    /// Whether attaching one more document would pass the limit.
    fn over_document_limit(&self, doc: DocumentId) -> bool {
        let counted =
            self.attached.len() + self.waiting.len() - usize::from(self.waiting.contains(&doc));
        counted >= self.config.limits.max_documents
    }

    fn sync_message(&mut self, document_id: &str, data: &[u8], kind: SyncKind) -> Vec<Effect> {
        let Ok(doc) = document_id.parse::<DocumentId>() else {
            return vec![self.unavailable(document_id.to_owned())];
        };
        let message = match admission::admit_sync_message(data, &self.config.limits.input) {
            Ok(admitted) => admitted.into_message(),
            Err(refusal) => {
                Metrics::bump(&self.metrics.sync_messages_refused);
                tracing::warn!(conn = self.identity.conn, user = %self.identity.user, %doc, reason = %refusal, "refused a sync message");
                let code = if refusal.is_limit() {
                    close::LIMIT
                } else {
                    close::PROTOCOL_ERROR
                };
                return fail(code, &format!("sync message refused: {refusal}"));
            }
        };
        if !self.attached.contains(&doc) && self.over_document_limit(doc) {
            return fail(close::LIMIT, "too many documents on one connection");
        }
        vec![Effect::Sync { doc, kind, message }]
    }

    /// The answer to [`Effect::Sync`].
    pub fn synced(&mut self, doc: DocumentId, kind: SyncKind, outcome: Synced) -> Vec<Effect> {
        match outcome {
            Synced::Applied(ticket) => {
                self.attach(doc, ticket);
                Vec::new()
            }
            Synced::Changed(ticket) => {
                self.attach(doc, ticket);
                self.urgent.insert(doc);
                Vec::new()
            }
            Synced::Unavailable => {
                let mut effects = Vec::new();
                // A peer that asks for a document nobody has hears of it
                // when somebody uploads it.
                if kind == SyncKind::Request && self.waiting.insert(doc) {
                    effects.push(Effect::WaitFor(doc));
                }
                effects.push(self.unavailable(doc.to_string()));
                effects
            }
            Synced::Deleted => {
                self.attached.remove(&doc);
                self.forget(doc);
                vec![self.unavailable(doc.to_string())]
            }
            Synced::Failed(failure) => self.failed(Some(doc), failure),
        }
    }

    fn ephemeral(&mut self, message: Message) -> Vec<Effect> {
        let Message::Ephemeral {
            ref sender_id,
            ref document_id,
            ref session_id,
            count,
            ref data,
            ..
        } = message
        else {
            return Vec::new();
        };
        let Ok(doc) = document_id.parse::<DocumentId>() else {
            return Vec::new();
        };
        let bytes = data.len();
        if !self
            .ephemeral
            .first_sight((sender_id.clone(), session_id.clone(), count))
        {
            return Vec::new();
        }
        if !self.attached.contains(&doc) {
            return Vec::new();
        }
        vec![Effect::Forward {
            doc,
            message: Arc::new(message),
            bytes,
        }]
    }

    /// The answer to [`Effect::Authenticate`].
    pub fn authenticated(&mut self, outcome: Authenticated) -> Vec<Effect> {
        match outcome {
            // The refreshed token must be of this connection's own session:
            // the socket belongs to that session, and ends when it is logged
            // out or revoked. A token of another session, even the same
            // user's, would move the socket out of reach of that logout.
            Authenticated::Valid {
                user,
                session,
                expires_at,
            } if user == self.identity.user && session == self.identity.session => {
                self.identity.token_expires_at = expires_at;
                vec![Effect::Send(Message::AuthAccepted {
                    sender_id: self.config.server_peer_id.clone(),
                    target_id: self.target(),
                    expires_at,
                })]
            }
            Authenticated::Valid { .. } | Authenticated::Invalid => fail(
                close::TOKEN_EXPIRED,
                "the refreshed access token is not valid for this connection",
            ),
            Authenticated::Failed(failure) => self.failed(None, failure),
        }
    }

    /// The answer to [`Effect::CatchUp`].
    pub fn caught_up(&mut self, outcome: Result<(Vec<DocumentId>, u64), Failure>) -> Vec<Effect> {
        match outcome {
            Ok((docs, cursor)) => vec![Effect::Send(Message::CatchUpResponse {
                sender_id: self.config.server_peer_id.clone(),
                target_id: self.target(),
                document_ids: docs.iter().map(ToString::to_string).collect(),
                cursor,
            })],
            Err(failure) => self.failed(None, failure),
        }
    }

    /// Handles what the hub posted to this connection's mailbox: ephemeral
    /// messages to relay, and documents that changed.
    pub fn notices(
        &mut self,
        ephemeral: &[Arc<Message>],
        changed: impl IntoIterator<Item = DocumentId>,
    ) -> Vec<Effect> {
        let Some(joined) = &self.joined else {
            return Vec::new();
        };
        let mut effects: Vec<Effect> = ephemeral
            .iter()
            .filter_map(|message| match message.as_ref() {
                Message::Ephemeral {
                    sender_id,
                    document_id,
                    count,
                    session_id,
                    data,
                    ..
                } => Some(Effect::Send(Message::Ephemeral {
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
        for doc in changed {
            // A document nobody attached here yet (one this peer waited for)
            // is attached by the reconcile: it must pass the limit.
            if !self.attached.contains(&doc) && self.over_document_limit(doc) {
                effects.extend(fail(close::LIMIT, "too many documents on one connection"));
                break;
            }
            effects.push(Effect::Reconcile(doc));
        }
        effects
    }

    /// The answer to [`Effect::Reconcile`].
    pub fn reconciled(&mut self, doc: DocumentId, outcome: Reconciled) -> Vec<Effect> {
        match outcome {
            Reconciled::Current(ticket) => {
                self.attach(doc, ticket);
                Vec::new()
            }
            Reconciled::Gone => {
                self.forget(doc);
                if self.attached.remove(&doc) {
                    vec![self.unavailable(doc.to_string())]
                } else {
                    Vec::new()
                }
            }
            Reconciled::Stale => {
                tracing::warn!(conn = self.identity.conn, user = %self.identity.user, %doc, "closing a sync connection: the store failed under it");
                self.storage_unavailable()
            }
            // Only a store that is down ends the connection: anything else
            // leaves the document as it was, and the next notice retries.
            Reconciled::Failed(Failure::StorageUnavailable) => {
                self.failed(Some(doc), Failure::StorageUnavailable)
            }
            Reconciled::Failed(_) => Vec::new(),
        }
    }

    /// Drops what the machine remembers of sending `doc`: it is no longer
    /// synced here.
    fn forget(&mut self, doc: DocumentId) {
        self.last_sent.remove(&doc);
        self.paced.remove(&doc);
        self.held.remove(&doc);
        self.urgent.remove(&doc);
    }

    /// The driver attached `doc` (or it was attached already) and the peer
    /// is owed its next message once `ticket` is durable.
    fn attach(&mut self, doc: DocumentId, ticket: Ticket) {
        self.attached.insert(doc);
        self.waiting.remove(&doc);
        self.owe(doc, ticket);
    }

    /// Notes that `doc` has something to tell this peer once `ticket` is
    /// durable. Several messages and notices for one document before then
    /// are answered with one generated message.
    fn owe(&mut self, doc: DocumentId, ticket: Ticket) {
        // The driver waits for the earliest owed ticket, not the newest: a
        // peer that streams changes moves the newest ticket on with every
        // frame, and waiting for it would hold back every reply and relayed
        // change until the stream paused.
        self.owed_ticket = if self.owed.is_empty() {
            ticket
        } else {
            self.owed_ticket.min(ticket)
        };
        self.owed.insert(doc);
    }

    /// The owed ticket is durable: ask for every owed document's message.
    /// Those whose documents moved on since come back
    /// [`Generated::NotDurable`] and are owed again.
    ///
    /// Coalescing: each document's messages to this peer are paced. A few
    /// ([`PACE_BURST`]) go out at once; beyond that, one per coalescing
    /// bound, and whatever changed meanwhile goes out in one message instead
    /// of one message per change, each of which the peer would decode,
    /// apply and acknowledge (the stock client acknowledges at once, so
    /// waiting for its answer alone saves little). The allowance comes back
    /// at one message per bound, so light load, even edits arriving in
    /// clumps, waits for nothing, while a steady stream goes out at most
    /// once per bound. A peer that sent changes gets its acknowledgement at
    /// once, with whatever was waiting for it.
    pub fn durable(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for doc in std::mem::take(&mut self.owed) {
            if self.urgent.contains(&doc) {
                self.held.remove(&doc);
                effects.push(Effect::Generate(doc));
            } else if self.held.contains_key(&doc) {
                // Already waiting; it goes out at its deadline.
            } else if let Some(until) = self.hold_until(doc, now) {
                self.held.insert(doc, until);
            } else {
                effects.push(Effect::Generate(doc));
            }
        }
        effects
    }

    /// Until when a message of `doc` waits: until the pace allows one
    /// more, if that is still ahead.
    fn hold_until(&self, doc: DocumentId, now: Instant) -> Option<Instant> {
        let spent_at = *self.paced.get(&doc)?;
        let burst = self.config.limits.coalesce * (PACE_BURST - 1);
        let until = spent_at.checked_sub(burst)?;
        (until > now).then_some(until)
    }

    /// When the last sync message of `doc` went to the peer, if one did on
    /// this connection.
    pub fn last_sent(&self, doc: DocumentId) -> Option<Instant> {
        self.last_sent.get(&doc).copied()
    }

    /// The earliest deadline of a waiting message, for the driver's timer.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.held.values().min().copied()
    }

    /// The hold timer fired: every waiting message whose deadline has
    /// passed is generated now.
    pub fn hold_elapsed(&mut self, now: Instant) -> Vec<Effect> {
        let due: Vec<DocumentId> = self
            .held
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(doc, _)| *doc)
            .collect();
        due.into_iter()
            .map(|doc| {
                self.held.remove(&doc);
                Effect::Generate(doc)
            })
            .collect()
    }

    /// Waiting for the owed ticket failed.
    pub fn durability_failed(&mut self, failure: Failure) -> Vec<Effect> {
        self.failed(None, failure)
    }

    /// The answer to [`Effect::Generate`].
    pub fn generated(&mut self, doc: DocumentId, outcome: Generated, now: Instant) -> Vec<Effect> {
        match outcome {
            Generated::Message(message) => {
                tracing::debug!(conn = self.identity.conn, %doc, changes = message.changes.len(), "sending sync message");
                self.last_sent.insert(doc, now);
                // An empty allowance stays empty rather than going into
                // debt, so that acknowledgements sent at once (which spend
                // it too) cannot push the next message further than one
                // bound after this one: nothing waits longer than the bound.
                let bound = self.config.limits.coalesce;
                let spent_at = self.paced.get(&doc).map_or(now, |at| (*at).max(now)) + bound;
                self.paced
                    .insert(doc, spent_at.min(now + bound * PACE_BURST));
                self.urgent.remove(&doc);
                vec![self.sync_frame(doc, message)]
            }
            Generated::Nothing => {
                self.urgent.remove(&doc);
                Vec::new()
            }
            Generated::Detached => {
                self.forget(doc);
                Vec::new()
            }
            Generated::NotDurable(ticket) => {
                self.owe(doc, ticket);
                Vec::new()
            }
            Generated::Failed(failure) => self.failed(Some(doc), failure),
        }
    }

    fn sync_frame(&self, doc: DocumentId, mut message: sync::Message) -> Effect {
        // The flags section tells the peer that we take sync v2 messages,
        // which may carry a whole compressed document. We take only lists of
        // uncompressed changes, whose every byte the admission check can see
        // before Automerge does; without the flags, conforming peers (the
        // stock JavaScript client included) send nothing else. We still send
        // v2 to peers that announce it.
        //
        // A reset (the peer is to forget which changes it sent, see
        // `WITHHELD_BEFORE_RESET`) travels in the flags too; without them it
        // takes the older form every peer understands: empty heads, which a
        // peer reads as "I lost everything" and so clears the same record.
        if message
            .flags
            .is_some_and(|flags| flags.contains(sync::MessageFlags::SYNC_RESET))
        {
            message.heads.clear();
        }
        message.flags = None;
        Effect::Send(Message::Sync {
            sender_id: self.config.server_peer_id.clone(),
            target_id: self.target(),
            document_id: doc.to_string(),
            data: message.encode(),
        })
    }

    fn storage_unavailable(&self) -> Vec<Effect> {
        fail(
            close::STORAGE_UNAVAILABLE,
            "server storage unavailable; reconnect later",
        )
    }

    /// The answer to a failed request: the protocol's `error` message and a
    /// close code that says whose fault it was. What the peer sent is logged
    /// where an operator sees it.
    fn failed(&self, doc: Option<DocumentId>, failure: Failure) -> Vec<Effect> {
        let doc = doc.map(|d| d.to_string()).unwrap_or_default();
        let (code, message) = match failure {
            Failure::StorageUnavailable => {
                tracing::warn!(conn = self.identity.conn, user = %self.identity.user, doc, "closing a sync connection: the store is unavailable");
                return self.storage_unavailable();
            }
            Failure::Internal => return fail(close::PROTOCOL_ERROR, "internal server error"),
            Failure::Quota(exceeded) => (close::QUOTA, exceeded),
            Failure::MissingDependencies(described) => (close::LIMIT, described),
            Failure::Unapplicable(cause) => (
                close::PROTOCOL_ERROR,
                format!("the sync message could not be applied: {cause}"),
            ),
            Failure::Panicked => (
                close::PROTOCOL_ERROR,
                "the sync message could not be applied".to_owned(),
            ),
        };
        tracing::warn!(conn = self.identity.conn, user = %self.identity.user, doc, error = %message, "refused a sync message");
        fail(code, &message)
    }

    /// The handshake timeout fired.
    pub fn handshake_timed_out(&self) -> Vec<Effect> {
        if self.has_joined() {
            return Vec::new();
        }
        fail(
            close::POLICY,
            "no join message within the handshake timeout",
        )
    }

    /// The access token behind the connection expired.
    pub fn token_expired(&self) -> Vec<Effect> {
        fail(close::TOKEN_EXPIRED, "access token expired")
    }

    /// A newer connection with the same peer id took over.
    pub fn replaced(&self) -> Vec<Effect> {
        fail(
            close::REPLACED,
            "replaced by a newer connection with the same peer id",
        )
    }

    /// The session was logged out or revoked.
    pub fn session_ended(&self) -> Vec<Effect> {
        fail(close::SESSION_ENDED, "session ended")
    }

    /// The server is shutting down: the peer reconnects to the restarted one.
    pub fn shutting_down(&self) -> Vec<Effect> {
        close(close::GOING_AWAY, "the server is shutting down; reconnect")
    }

    /// The transport saw something the protocol does not allow.
    pub fn transport_fault(&self, fault: TransportFault) -> Vec<Effect> {
        match fault {
            TransportFault::TextFrame => fail(
                close::UNSUPPORTED_DATA,
                "text frames are not part of the protocol",
            ),
            TransportFault::FrameTooBig => fail(close::TOO_BIG, "frame larger than the limit"),
            TransportFault::MessageTooBig => fail(close::TOO_BIG, "message larger than the limit"),
            TransportFault::Protocol(e) => fail(
                close::PROTOCOL_ERROR,
                &format!("websocket protocol error: {e}"),
            ),
            TransportFault::Silent => {
                fail(close::POLICY, "nothing heard within the keep-alive limit")
            }
        }
    }
}

#[cfg(test)]
mod tests;
