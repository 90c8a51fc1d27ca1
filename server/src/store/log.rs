//! The change log's types, shared by both engines: what is known about a
//! document, its events, what an append carries, and a document as loaded.

use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use serde::{Deserialize, Serialize};

use super::quota::QuotaExceeded;
use crate::configuration::limits::Quota;

/// What the store knows about a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DocumentMeta {
    /// The user whose document it is: the first to push it.
    pub(crate) owner: UserId,
    /// When the server first saw it.
    pub(crate) created_at: DateTime<Utc>,
    /// The sequence number the next event gets.
    pub(crate) next_seq: u64,
    /// Set when the document was deleted; it then never syncs again.
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    /// Bytes of change log, counted against the owner's quota. Records
    /// written before quotas have 0 here until the store counts them.
    #[serde(default)]
    pub(crate) bytes: u64,
}

/// The outcome of claiming a document for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The user owns it (already, or from now on).
    Owned(DocumentMeta),
    /// Another user owns it, or it was deleted: treat as unavailable.
    Unavailable,
    /// Nobody owns it, and the user has as many documents as allowed.
    OverQuota(QuotaExceeded),
}

/// One accepted change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventRecord {
    /// Position in the document's log.
    pub(crate) seq: u64,
    /// Who made it.
    pub(crate) user: UserId,
    /// From which session, if it came from a device.
    pub(crate) session: Option<SessionId>,
    /// When the server accepted it.
    pub(crate) at: DateTime<Utc>,
    /// The Automerge change, as bytes.
    pub(crate) change: Vec<u8>,
}

/// A document as stored: its snapshot and the changes after it.
#[derive(Debug, Default)]
pub struct StoredDocument {
    /// A saved document covering events before `snapshot_covers`.
    pub snapshot: Option<Vec<u8>>,
    /// The number of events the snapshot covers.
    pub snapshot_covers: u64,
    /// The changes after the snapshot, in log order.
    pub changes: Vec<Vec<u8>>,
}

/// What an append does to the document's task-index entry: the hub reads
/// the document after the change and says; the entry is written in the
/// append's transaction, so that the flush that makes the change durable
/// makes its summary durable too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexUpdate {
    /// The summary did not change.
    Keep,
    /// The document reads as this task.
    Put(TaskView),
    /// The document is not a task (or no longer one).
    Remove,
}

/// Changes accepted into a document, to be appended to its log.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    pub(crate) doc: DocumentId,
    pub(crate) user: UserId,
    pub(crate) session: Option<SessionId>,
    pub(crate) at: DateTime<Utc>,
    pub(crate) changes: Vec<Vec<u8>>,
    pub(crate) quota: Quota,
    pub(crate) index: IndexUpdate,
}

impl Append {
    /// Bytes of change the append adds to the log.
    pub(crate) fn bytes(&self) -> u64 {
        self.changes.iter().map(|c| c.len() as u64).sum()
    }
}

/// Where an append landed: the sequence of its first event in the
/// document's log (the others follow it without a gap) and its position in
/// the owner's feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) first_seq: u64,
    pub(crate) feed_seq: u64,
}

/// One document's log grew on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// The node that appended, so that it does not answer its own ring.
    pub node: u64,
    /// The document's owner.
    pub user: UserId,
    /// The document.
    pub doc: DocumentId,
    /// The sequence of the last event appended.
    pub seq: u64,
}

/// What a node hears from the doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A node appended to a document.
    Ring(Ring),
    /// A node deleted a document.
    Deleted {
        /// The node that deleted it.
        node: u64,
        /// The document.
        doc: DocumentId,
    },
    /// A node ended a session (sign-out, revocation, a reused refresh
    /// token): its sockets close on every node.
    SessionEnded {
        /// The node that ended it.
        node: u64,
        /// The session.
        session: SessionId,
    },
    /// Notices may have been lost: read every document in memory again.
    MayHaveMissed,
}

/// How many rings may wait for a node to read them. A node that falls
/// further behind drops rings and catches up every loaded document instead.
pub const HEARD_QUEUE: usize = 4096;
