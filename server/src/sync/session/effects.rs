//! The session machine's vocabulary: the [`Effect`]s it asks its driver
//! for, and the outcomes the driver feeds back.

use std::sync::Arc;

use automerge::sync;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::wire::Message;

use crate::durability::Ticket;

/// Something for the driver to do.
#[derive(Debug)]
pub enum Effect {
    /// Send this message.
    Send(Message),
    /// Close the socket with this code and reason, after what was sent
    /// before. Nothing after it is performed.
    Close {
        /// WebSocket close code, from [`close`].
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
    /// Bind the peer id to this connection; answer with [`super::Session::bound`].
    Bind {
        /// The peer id the join claimed.
        peer_id: String,
    },
    /// Apply a peer's sync message to the document, attaching the document
    /// to this connection first if it is not yet (with the peer's saved sync
    /// state, see [`super::Session::storage_id`]); answer with [`super::Session::synced`].
    Sync {
        /// The document.
        doc: DocumentId,
        /// Whether the message was a `request` or a `sync`.
        kind: SyncKind,
        /// The admitted message.
        message: sync::Message,
    },
    /// Tell this connection when somebody makes `doc` available.
    WaitFor(DocumentId),
    /// A change notice for the document arrived: check that the connection
    /// may still sync it (attaching it if it was waited for); answer with
    /// [`super::Session::reconciled`].
    Reconcile(DocumentId),
    /// Generate the document's next message for this peer; answer with
    /// [`super::Session::generated`].
    Generate(DocumentId),
    /// Relay an ephemeral message to the document's other peers.
    Forward {
        /// The document.
        doc: DocumentId,
        /// The message as received.
        message: Arc<Message>,
        /// Its payload size, for the receivers' mailbox limits.
        bytes: usize,
    },
    /// Check an access token presented on the open socket; answer with
    /// [`super::Session::authenticated`].
    Authenticate {
        /// The token.
        token: String,
    },
    /// List the user's documents changed since a cursor; answer with
    /// [`super::Session::caught_up`].
    CatchUp {
        /// The cursor the peer holds.
        cursor: u64,
    },
}

/// Which sync message arrived: a `request` may not create a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// `request`: the peer asks for a document it does not have.
    Request,
    /// `sync`: the peer has the document (and may be uploading it).
    Sync,
}

/// Why a request the machine made failed on the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The store cannot take writes (the disk failed); the peer reconnects
    /// later.
    StorageUnavailable,
    /// The user is over a quota.
    Quota(String),
    /// The peer's changes depend on too many changes nobody sent.
    MissingDependencies(String),
    /// Automerge refused the message.
    Unapplicable(String),
    /// Automerge panicked on the message (the document was reloaded).
    Panicked,
    /// Anything else; the driver logged it.
    Internal,
}

/// The outcome of [`Effect::Bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The peer id is this connection's now (a connection of the same user
    /// holding it was told it is replaced).
    Bound,
    /// Another account's connection holds the peer id.
    TakenByAnotherUser,
}

/// The outcome of [`Effect::Sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// Applied, and it brought no new change (an acknowledgement, heads,
    /// a request); the reply is due once `ticket` is durable.
    Applied(Ticket),
    /// Applied, and it brought new changes: the peer waits for them to be
    /// acknowledged, so the reply goes out as soon as `ticket` is durable.
    Changed(Ticket),
    /// The user may not sync the document (unknown, someone else's, or
    /// deleted); nothing was attached.
    Unavailable,
    /// The document was deleted while attached; the driver detached it.
    Deleted,
    /// The message could not be applied.
    Failed(Failure),
}

/// The outcome of [`Effect::Reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The connection syncs the document (it may have just been attached);
    /// its next message is due once `ticket` is durable.
    Current(Ticket),
    /// The document is not (or no longer) available to this user; the
    /// driver detached it if it was attached.
    Gone,
    /// The copy this connection synced was loaded from a store engine that
    /// failed since: it may have told the peer of changes that are lost.
    Stale,
    /// The document could not be checked.
    Failed(Failure),
}

/// The outcome of [`Effect::Generate`].
#[derive(Debug)]
pub enum Generated {
    /// The message to send.
    Message(sync::Message),
    /// The peer is up to date.
    Nothing,
    /// The document is not attached any more.
    Detached,
    /// The document holds a change that is not durable yet.
    NotDurable(Ticket),
    /// Generating failed.
    Failed(Failure),
}

/// The outcome of [`Effect::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A valid token of this user and session... or of another: the machine
    /// checks.
    Valid {
        /// Whose token it is.
        user: UserId,
        /// Of which session.
        session: SessionId,
        /// When it expires (seconds since the epoch).
        expires_at: i64,
    },
    /// Not a valid token (expired ones included).
    Invalid,
    /// The check failed.
    Failed(Failure),
}

/// What went wrong below the protocol, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportFault {
    /// A text frame: the protocol is binary.
    TextFrame,
    /// A frame over the size limit.
    FrameTooBig,
    /// A fragmented message over the size limit.
    MessageTooBig,
    /// The WebSocket framing was broken.
    Protocol(String),
    /// Nothing heard within the keep-alive limit.
    Silent,
}
