//! The limits the server enforces, as plain settings: what a user, a
//! document, a connection and the node are held to, with their defaults.
//!
//! They live here, with the rest of the settings, so that configuration
//! depends on nothing else in the crate; the modules that enforce them
//! (`store::quota`, `sync::hub`, `sync::session`, `sync::mailbox`,
//! `sync::gate`) import them from here.

use std::time::Duration;

use codeedex_schema::admission::InputLimits;

/// Per-user quotas and the per-document log limit. Defaults are generous for a task manager and finite for an
/// abuser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Live documents per user, the root document included.
    pub documents_per_user: u64,
    /// Bytes of change log per user, over their live documents.
    pub bytes_per_user: u64,
    /// Bytes of change log per document.
    pub bytes_per_document: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            documents_per_user: 100_000,
            bytes_per_user: 1024 * 1024 * 1024,
            bytes_per_document: 64 * 1024 * 1024,
        }
    }
}

/// What the hub holds a document and its users to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// Documents and bytes per user, bytes per document.
    pub quota: Quota,
    /// Changes a document may hold back while their dependencies are
    /// missing. Automerge keeps them in memory until the dependencies
    /// arrive; a peer must not be able to fill memory with orphans.
    pub max_queued_changes: usize,
    /// Bytes of such changes.
    pub max_queued_bytes: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            quota: Quota::default(),
            max_queued_changes: 1_000,
            max_queued_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Sustained messages per second.
    pub messages_per_second: u32,
    /// Messages accepted in a burst above the sustained rate.
    pub message_burst: u32,
    /// Documents one connection may sync.
    pub max_documents: usize,
    /// Connections one user may hold.
    pub max_connections_per_user: usize,
    /// Time allowed between upgrade and join.
    pub handshake_timeout: Duration,
    /// What one sync message may contain.
    pub input: InputLimits,
    /// Relayed traffic waiting for a connection.
    pub mailbox: MailboxLimits,
    /// How long one frame may take to go out before the peer is taken to
    /// have stopped reading, and is closed.
    pub write_timeout: Duration,
    /// How often the server pings a sync peer. A peer silent for three
    /// intervals is closed; changes a live peer left unacknowledged for one
    /// are sent again.
    pub ping_interval: Duration,
    /// The pace of a document's messages to a peer: after a few at once,
    /// one per this long, so that changes arriving meanwhile go out
    /// together; no message waits longer than this after the last. Zero
    /// sends every message at once.
    pub coalesce: Duration,
}

impl Default for SyncLimits {
    fn default() -> Self {
        let max_frame_bytes = 16 * 1024 * 1024;
        Self {
            max_frame_bytes,
            messages_per_second: 500,
            message_burst: 5_000,
            max_documents: 20_000,
            max_connections_per_user: 32,
            handshake_timeout: Duration::from_secs(10),
            input: InputLimits {
                max_message_bytes: max_frame_bytes,
                ..InputLimits::default()
            },
            mailbox: MailboxLimits::default(),
            write_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            coalesce: Duration::from_millis(50),
        }
    }
}

/// How much relayed ephemeral traffic one connection may have waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Ephemeral messages waiting; older ones are dropped beyond it.
    pub max_ephemeral: usize,
    /// Bytes of ephemeral payload waiting; older messages are dropped beyond it.
    pub max_ephemeral_bytes: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            max_ephemeral: 256,
            max_ephemeral_bytes: 1024 * 1024,
        }
    }
}

/// The gate's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Connections opened per second, sustained.
    pub connections_per_second: u32,
    /// Connections opened at once above the sustained rate.
    pub burst: u32,
    /// Connections open on this node at any time.
    pub max_connections: usize,
}

/// The defaults: a node here re-admitted 5,000 devices (one document each)
/// in under a second with no gate at all, so the burst lets a storm of that
/// size straight in, and the rate paces larger ones, whose devices may each
/// hold many documents to sync (see BENCHMARKS.md, reconnect storms).
impl Default for GateLimits {
    fn default() -> Self {
        Self {
            connections_per_second: 2_000,
            burst: 5_000,
            max_connections: 20_000,
        }
    }
}
