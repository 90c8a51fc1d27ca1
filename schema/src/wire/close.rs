//! WebSocket close codes of the sync connection, as the server sends them.
//!
//! When the server ends a connection because something is wrong, it sends
//! an `error` message first (its text says what), then closes with one of
//! these codes. Codes below 4000 are the standard ones (RFC 6455); 4000 to
//! 4999 are ours. Each constant says what the code means and what a client
//! should do about it.

/// Normal closure: the peer said `leave` or sent an `error` of its own.
/// Nothing to do; reconnect when there is something to sync.
pub const NORMAL: u16 = 1000;

/// The server is shutting down (each connection saved its sync states
/// first). Reconnect with backoff, to it or to another node.
pub const GOING_AWAY: u16 = 1001;

/// The peer broke the protocol (a malformed or unexpected message, a sync
/// message Automerge could not apply), or the server failed to handle a
/// message. Reconnect with backoff: the same message is likely refused again.
pub const PROTOCOL_ERROR: u16 = 1002;

/// A text frame: the protocol is binary only. A client bug.
pub const UNSUPPORTED_DATA: u16 = 1003;

/// A policy was broken: no `join` within the handshake timeout, or nothing
/// heard within the keep-alive limit. Reconnect with backoff.
pub const POLICY: u16 = 1008;

/// A frame above the size limit. The same frame is refused again; reconnect
/// with backoff.
pub const TOO_BIG: u16 = 1009;

/// The access token expired and was not refreshed in place
/// (`codeedex/auth-refresh`). Refresh the token, then reconnect at once.
pub const TOKEN_EXPIRED: u16 = 4001;

/// The session was logged out or revoked. Try a refresh; if the session
/// is gone, the user must sign in again.
pub const SESSION_ENDED: u16 = 4003;

/// A limit was exceeded: the message rate, documents per connection, the
/// contents of a sync message, changes waiting for missing dependencies, or
/// a peer that does not read. Reconnect with backoff, sending less.
pub const LIMIT: u16 = 4008;

/// The peer id is bound to another account. It is refused again for this
/// account, so reconnect with a different peer id.
pub const PEER_ID_TAKEN: u16 = 4009;

/// A newer connection of the same user joined with the same peer id (usually
/// the same device, reconnecting before the server noticed that its old
/// connection was gone). The newer connection carries on; this one has
/// nothing left to do.
pub const REPLACED: u16 = 4010;

/// The user's document or storage quota is exhausted. Reconnecting helps
/// only once the user has deleted something.
pub const QUOTA: u16 = 4011;

/// The server's storage is unavailable: its disk failed, and changes it had
/// not acknowledged are lost. Like 1013, "try again later": reconnect later
/// (the server recovers by itself) with a fresh sync state, and send again.
pub const STORAGE_UNAVAILABLE: u16 = 4013;

/// The peer is out of step: the server asked several times for changes the
/// peer's messages depend on, and the peer never sent them, because its sync
/// state counts them as sent (a relay between the two lost a message while
/// the connection stayed open). Reconnect at once with a fresh sync state,
/// as automerge-repo does on every reconnect, and the changes go again.
pub const OUT_OF_STEP: u16 = 4014;
