//! The typed form of every protocol message.

use std::collections::BTreeMap;
use std::fmt;

use super::message_type;

/// One message of the automerge-repo network protocol v1, or one of our
/// `codeedex/...` extensions.
///
/// Field names follow the wire names (`sender_id` is `senderId`, and so on).
/// Identifiers are the strings the peer sent, unvalidated.
///
/// `Debug` never prints an access token and prints `data` as its length only,
/// so a message can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// `join`: the first message of a connection, client → server.
    Join {
        /// The client's ephemeral peer id (self-asserted).
        sender_id: String,
        /// Protocol versions the client speaks; `["1"]` when the field was
        /// missing on the wire.
        supported_protocol_versions: Vec<String>,
        /// The client's storage id and flags, if it sent any.
        peer_metadata: Option<PeerMetadata>,
    },
    /// `peer`: the server's answer to `join`.
    Peer {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id, from its `join`.
        target_id: String,
        /// The version both sides will speak (`"1"`).
        selected_protocol_version: String,
        /// The server's storage id and flags.
        peer_metadata: Option<PeerMetadata>,
    },
    /// `leave`: advisory; the sender is about to disconnect.
    Leave {
        /// The departing peer.
        sender_id: String,
    },
    /// `error`: fatal; the sender closes the connection afterwards.
    Error {
        /// Human-readable reason.
        message: String,
    },
    /// `request`: "sync this document with me, or tell me it is unavailable".
    Request {
        /// The requesting peer.
        sender_id: String,
        /// The peer asked.
        target_id: String,
        /// The document, as sent (bs58check or a legacy UUID string).
        document_id: String,
        /// One encoded Automerge sync message; never empty.
        data: Vec<u8>,
    },
    /// `sync`: one round of the Automerge sync protocol for one document.
    Sync {
        /// The sending peer.
        sender_id: String,
        /// The receiving peer.
        target_id: String,
        /// The document, as sent.
        document_id: String,
        /// One encoded Automerge sync message; never empty.
        data: Vec<u8>,
    },
    /// `doc-unavailable`: neither the sender nor its peers have the document
    /// (not final: it may appear later).
    DocUnavailable {
        /// The peer that does not have it.
        sender_id: String,
        /// The peer that asked.
        target_id: String,
        /// The document, as sent.
        document_id: String,
    },
    /// `ephemeral`: presence-style data about a document, never stored.
    /// Receivers deduplicate on (`sender_id`, `session_id`, `count`).
    Ephemeral {
        /// The originating peer (kept when relayed).
        sender_id: String,
        /// The next hop.
        target_id: String,
        /// The document the data is about.
        document_id: String,
        /// Sequence number within the session.
        count: u64,
        /// Random per-process session id of the originating peer.
        session_id: String,
        /// Application bytes (CBOR in the JS client); never empty.
        data: Vec<u8>,
    },
    /// `remote-subscription-change`: subscribe to or unsubscribe from
    /// remote-heads gossip about some storage ids.
    RemoteSubscriptionChange {
        /// The subscribing peer.
        sender_id: String,
        /// The peer asked to gossip.
        target_id: String,
        /// Storage ids to add; `None` when the field was absent.
        add: Option<Vec<String>>,
        /// Storage ids to remove; empty when the field was absent.
        remove: Vec<String>,
    },
    /// `remote-heads-changed`: the heads of a document changed at some
    /// storage ids.
    RemoteHeadsChanged {
        /// The gossiping peer.
        sender_id: String,
        /// The subscribed peer.
        target_id: String,
        /// The document whose heads changed.
        document_id: String,
        /// New heads per storage id.
        new_heads: BTreeMap<String, RemoteHeads>,
    },
    /// `codeedex/auth-refresh` (extension): the client replaces its access
    /// token in place, without reconnecting.
    AuthRefresh {
        /// The client's peer id.
        sender_id: String,
        /// The server's peer id.
        target_id: String,
        /// The new access token. A secret: `Debug` prints it redacted.
        access_token: String,
    },
    /// `codeedex/auth-accepted` (extension): the server accepted a refreshed
    /// token.
    AuthAccepted {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id.
        target_id: String,
        /// When the accepted token expires, in seconds since the Unix epoch.
        expires_at: i64,
    },
    /// `codeedex/catch-up-request` (extension): "which documents changed
    /// since this cursor?", sent by a reconnecting client.
    CatchUpRequest {
        /// The client's peer id.
        sender_id: String,
        /// The server's peer id.
        target_id: String,
        /// The position in the server's change log the client has seen up to.
        cursor: u64,
    },
    /// `codeedex/catch-up` (extension): the answer to a catch-up request.
    CatchUpResponse {
        /// The server's peer id.
        sender_id: String,
        /// The client's peer id.
        target_id: String,
        /// Documents the client can access that changed after its cursor.
        document_ids: Vec<String>,
        /// The cursor to send next time.
        cursor: u64,
    },
}

impl Message {
    /// The message's `type` string on the wire (see [`message_type`]).
    pub fn message_type(&self) -> &'static str {
        match self {
            Message::Join { .. } => message_type::JOIN,
            Message::Peer { .. } => message_type::PEER,
            Message::Leave { .. } => message_type::LEAVE,
            Message::Error { .. } => message_type::ERROR,
            Message::Request { .. } => message_type::REQUEST,
            Message::Sync { .. } => message_type::SYNC,
            Message::DocUnavailable { .. } => message_type::DOC_UNAVAILABLE,
            Message::Ephemeral { .. } => message_type::EPHEMERAL,
            Message::RemoteSubscriptionChange { .. } => message_type::REMOTE_SUBSCRIPTION_CHANGE,
            Message::RemoteHeadsChanged { .. } => message_type::REMOTE_HEADS_CHANGED,
            Message::AuthRefresh { .. } => message_type::AUTH_REFRESH,
            Message::AuthAccepted { .. } => message_type::AUTH_ACCEPTED,
            Message::CatchUpRequest { .. } => message_type::CATCH_UP_REQUEST,
            Message::CatchUpResponse { .. } => message_type::CATCH_UP_RESPONSE,
        }
    }

    /// Whether this is one of our `codeedex/...` extensions, which may only be
    /// sent to a peer whose [`PeerMetadata::supports`] it.
    pub fn is_extension(&self) -> bool {
        matches!(
            self,
            Message::AuthRefresh { .. }
                | Message::AuthAccepted { .. }
                | Message::CatchUpRequest { .. }
                | Message::CatchUpResponse { .. }
        )
    }

    /// The `senderId`, for every message that carries one (all but `error`).
    pub fn sender_id(&self) -> Option<&str> {
        match self {
            Message::Error { .. } => None,
            Message::Join { sender_id, .. }
            | Message::Peer { sender_id, .. }
            | Message::Leave { sender_id }
            | Message::Request { sender_id, .. }
            | Message::Sync { sender_id, .. }
            | Message::DocUnavailable { sender_id, .. }
            | Message::Ephemeral { sender_id, .. }
            | Message::RemoteSubscriptionChange { sender_id, .. }
            | Message::RemoteHeadsChanged { sender_id, .. }
            | Message::AuthRefresh { sender_id, .. }
            | Message::AuthAccepted { sender_id, .. }
            | Message::CatchUpRequest { sender_id, .. }
            | Message::CatchUpResponse { sender_id, .. } => Some(sender_id),
        }
    }

    /// The `targetId`, for every message that carries one (all but `join`,
    /// `leave` and `error`).
    pub fn target_id(&self) -> Option<&str> {
        match self {
            Message::Join { .. } | Message::Leave { .. } | Message::Error { .. } => None,
            Message::Peer { target_id, .. }
            | Message::Request { target_id, .. }
            | Message::Sync { target_id, .. }
            | Message::DocUnavailable { target_id, .. }
            | Message::Ephemeral { target_id, .. }
            | Message::RemoteSubscriptionChange { target_id, .. }
            | Message::RemoteHeadsChanged { target_id, .. }
            | Message::AuthRefresh { target_id, .. }
            | Message::AuthAccepted { target_id, .. }
            | Message::CatchUpRequest { target_id, .. }
            | Message::CatchUpResponse { target_id, .. } => Some(target_id),
        }
    }

    /// The `documentId`, for the messages about one document.
    pub fn document_id(&self) -> Option<&str> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. }
            | Message::RemoteHeadsChanged { document_id, .. } => Some(document_id),
            _ => None,
        }
    }
}

/// Prints `data` fields as their length: sync messages can be large and are
/// unreadable as numbers.
struct ByteCount(usize);

impl fmt::Debug for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// Stands in for secrets in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Join {
                sender_id,
                supported_protocol_versions,
                peer_metadata,
            } => f
                .debug_struct("Join")
                .field("sender_id", sender_id)
                .field("supported_protocol_versions", supported_protocol_versions)
                .field("peer_metadata", peer_metadata)
                .finish(),
            Message::Peer {
                sender_id,
                target_id,
                selected_protocol_version,
                peer_metadata,
            } => f
                .debug_struct("Peer")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("selected_protocol_version", selected_protocol_version)
                .field("peer_metadata", peer_metadata)
                .finish(),
            Message::Leave { sender_id } => f
                .debug_struct("Leave")
                .field("sender_id", sender_id)
                .finish(),
            Message::Error { message } => {
                f.debug_struct("Error").field("message", message).finish()
            }
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            } => f
                .debug_struct("Request")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_id", document_id)
                .field("data", &ByteCount(data.len()))
                .finish(),
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => f
                .debug_struct("Sync")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_id", document_id)
                .field("data", &ByteCount(data.len()))
                .finish(),
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => f
                .debug_struct("DocUnavailable")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_id", document_id)
                .finish(),
            Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                count,
                session_id,
                data,
            } => f
                .debug_struct("Ephemeral")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_id", document_id)
                .field("count", count)
                .field("session_id", session_id)
                .field("data", &ByteCount(data.len()))
                .finish(),
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            } => f
                .debug_struct("RemoteSubscriptionChange")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("add", add)
                .field("remove", remove)
                .finish(),
            Message::RemoteHeadsChanged {
                sender_id,
                target_id,
                document_id,
                new_heads,
            } => f
                .debug_struct("RemoteHeadsChanged")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_id", document_id)
                .field("new_heads", new_heads)
                .finish(),
            Message::AuthRefresh {
                sender_id,
                target_id,
                access_token: _,
            } => f
                .debug_struct("AuthRefresh")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("access_token", &Redacted)
                .finish(),
            Message::AuthAccepted {
                sender_id,
                target_id,
                expires_at,
            } => f
                .debug_struct("AuthAccepted")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("expires_at", expires_at)
                .finish(),
            Message::CatchUpRequest {
                sender_id,
                target_id,
                cursor,
            } => f
                .debug_struct("CatchUpRequest")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("cursor", cursor)
                .finish(),
            Message::CatchUpResponse {
                sender_id,
                target_id,
                document_ids,
                cursor,
            } => f
                .debug_struct("CatchUpResponse")
                .field("sender_id", sender_id)
                .field("target_id", target_id)
                .field("document_ids", document_ids)
                .field("cursor", cursor)
                .finish(),
        }
    }
}

/// What a peer says about itself in `join` and `peer`.
///
/// On the wire: `peerMetadata: {storageId?, isEphemeral, codeedexExtensions?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// The UUID string naming the peer's persistent store, shared by its tabs.
    /// Sync states can only be persisted per storage id; `None` for a peer
    /// without storage (the JS client then sends `undefined`).
    pub storage_id: Option<String>,
    /// Whether the peer will not come back with this storage id, so its sync
    /// state is not worth persisting. `false` when absent on the wire.
    pub is_ephemeral: bool,
    /// The `codeedex/...` message types this peer understands
    /// (`codeedexExtensions`); empty for stock clients, and then not written.
    pub extensions: Vec<String>,
}

impl PeerMetadata {
    /// Whether the peer announced that it understands `message_type` (one of
    /// [`message_type::EXTENSIONS`]).
    pub fn supports(&self, message_type: &str) -> bool {
        self.extensions.iter().any(|known| known == message_type)
    }
}

/// The heads of one document at one storage id, in `remote-heads-changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHeads {
    /// The document's heads there: encoded change hashes, as the strings the
    /// peer sent.
    pub heads: Vec<String>,
    /// When the originating peer saw these heads, in milliseconds since the
    /// Unix epoch by its own clock.
    pub timestamp: u64,
}
