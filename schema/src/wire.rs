//! The automerge-repo network protocol, version 1: bytes ↔ [`Message`].
//!
//! This module is the bottom layer of the sync stack and knows nothing else:
//! it turns one WebSocket binary frame (one CBOR map with text keys) into a
//! typed [`Message`] and back. It does no IO, keeps no state and does not
//! interpret what it decodes: identifiers stay plain `String`s (validated id
//! types are built one layer up), `data` stays opaque bytes (the Automerge sync
//! protocol, or application bytes for `ephemeral`), and whether a message is
//! allowed at this point of a conversation (handshake first, `senderId` bound to
//! the authenticated peer, extensions only for peers that announced them) is
//! the business of the session layer above.
//!
//! # Leniency
//!
//! The stock JavaScript client (cbor-x) writes CBOR that a strict decoder would
//! reject, so [`decode`] accepts:
//! - non-minimal lengths (`b9 00 05` for a 5-entry map) and indefinite-length
//!   maps, arrays, byte strings and text strings;
//! - keys in any order, and keys it does not know (their values, of any shape,
//!   are skipped);
//! - integers encoded as floats (`count`, `timestamp`, ...), when finite,
//!   integral and in range;
//! - `null` and `undefined` wherever a field is optional, meaning "absent";
//! - `metadata` as an alias of `peerMetadata`;
//! - `documentId` as a byte string holding UTF-8 text;
//! - a `join` without `supportedProtocolVersions`, meaning `["1"]`;
//! - a `remote-subscription-change` without `remove`, meaning an empty list.
//!
//! # Strictness
//!
//! [`decode`] rejects, with a [`DecodeError`] naming the field:
//! - anything that is not exactly one well-formed CBOR map (trailing bytes,
//!   truncated input, invalid UTF-8 in any text string);
//! - values nested deeper than [`MAX_NESTING_DEPTH`], even inside keys that are
//!   otherwise skipped, so hostile input cannot exhaust the stack;
//! - a known key that appears twice in the same map (`metadata` and
//!   `peerMetadata` count as the same key). A JS object cannot carry duplicate
//!   keys, so no real client sends them, and two different `senderId`s in one
//!   frame must not be read one way here and another way elsewhere. Unknown
//!   keys are not checked for duplicates: their values are never looked at;
//! - a `data` field that is empty, or that is not a byte string;
//! - tagged values in known fields (the reference encoder writes no tags).
//!
//! An unknown `type` is reported as [`DecodeError::UnknownType`], apart from
//! the other errors, so a caller may ignore such frames instead of failing.
//!
//! # Close codes
//!
//! [`close`] names the WebSocket close codes of the sync connection, what
//! each means and what a client should do about it.
//!
//! # Extensions
//!
//! The `codeedex/...` message types are ours. A peer announces the ones it
//! understands in `peerMetadata.codeedexExtensions` (which other decoders
//! skip); they must only ever be sent to peers that announced them, because the
//! stock clients and samod reject unknown types. [`encode`] does not enforce
//! this; see [`PeerMetadata::supports`].

pub mod close;
mod decode;
mod encode;
mod message;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, decode};
pub use encode::encode;
pub use message::{Message, PeerMetadata, RemoteHeads};

/// The only protocol version this module speaks, as it appears in
/// `supportedProtocolVersions` and `selectedProtocolVersion`.
pub const PROTOCOL_VERSION: &str = "1";

/// How deeply CBOR containers (maps and arrays) may nest in one frame,
/// counting the message map itself as level 1.
///
/// Real messages nest at most four levels (`newHeads` → entry → `heads`), so
/// this only bounds hostile input; deeper frames fail with
/// [`DecodeError::TooDeep`].
pub const MAX_NESTING_DEPTH: usize = 32;

/// The `type` strings of every message, as they appear on the wire.
pub mod message_type {
    /// Client → server, first message: [`Message::Join`](super::Message::Join).
    pub const JOIN: &str = "join";
    /// Server → client, handshake answer: [`Message::Peer`](super::Message::Peer).
    pub const PEER: &str = "peer";
    /// Advisory goodbye: [`Message::Leave`](super::Message::Leave).
    pub const LEAVE: &str = "leave";
    /// Fatal error, then close: [`Message::Error`](super::Message::Error).
    pub const ERROR: &str = "error";
    /// Ask for a document: [`Message::Request`](super::Message::Request).
    pub const REQUEST: &str = "request";
    /// One round of Automerge sync: [`Message::Sync`](super::Message::Sync).
    pub const SYNC: &str = "sync";
    /// Nobody has the document: [`Message::DocUnavailable`](super::Message::DocUnavailable).
    pub const DOC_UNAVAILABLE: &str = "doc-unavailable";
    /// Presence-style data: [`Message::Ephemeral`](super::Message::Ephemeral).
    pub const EPHEMERAL: &str = "ephemeral";
    /// Remote-heads gossip subscription:
    /// [`Message::RemoteSubscriptionChange`](super::Message::RemoteSubscriptionChange).
    pub const REMOTE_SUBSCRIPTION_CHANGE: &str = "remote-subscription-change";
    /// Remote-heads gossip: [`Message::RemoteHeadsChanged`](super::Message::RemoteHeadsChanged).
    pub const REMOTE_HEADS_CHANGED: &str = "remote-heads-changed";
    /// Our extension: [`Message::AuthRefresh`](super::Message::AuthRefresh).
    pub const AUTH_REFRESH: &str = "codeedex/auth-refresh";
    /// Our extension: [`Message::AuthAccepted`](super::Message::AuthAccepted).
    pub const AUTH_ACCEPTED: &str = "codeedex/auth-accepted";
    /// Our extension: [`Message::CatchUpRequest`](super::Message::CatchUpRequest).
    pub const CATCH_UP_REQUEST: &str = "codeedex/catch-up-request";
    /// Our extension: [`Message::CatchUpResponse`](super::Message::CatchUpResponse).
    pub const CATCH_UP_RESPONSE: &str = "codeedex/catch-up";

    /// Every extension type, in the form a peer lists them in
    /// `peerMetadata.codeedexExtensions`.
    pub const EXTENSIONS: [&str; 4] = [
        AUTH_REFRESH,
        AUTH_ACCEPTED,
        CATCH_UP_REQUEST,
        CATCH_UP_RESPONSE,
    ];
}
