//! Documents: who owns them, their append-only change log, snapshots, and
//! the per-user feed of changed documents. (Sync states are in
//! `sync_states.rs`, the task index in `task_index.rs`.)
//!
//! The log is the source of truth: a document is its latest snapshot plus
//! the events after it. Events are never rewritten; a snapshot is written
//! before anything it covers could be pruned, and by default nothing is.

use chrono::{DateTime, TimeZone, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::usage::decode_usage;
use super::{
    Append, Appended, Claim, DocumentMeta, Embedded, Engine, EventRecord, IndexUpdate, StoreError,
    StoredDocument, Ticket, TxResult, decode, encode, pair_key, seq_in_key,
};
use crate::configuration::limits::Quota;

const EVENT_FORMAT: u8 = 1;

impl EventRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(42 + self.change.len());
        out.push(EVENT_FORMAT);
        out.extend_from_slice(self.user.as_bytes());
        match self.session {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(s.as_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 16]);
            }
        }
        out.extend_from_slice(&self.at.timestamp_millis().to_be_bytes());
        out.extend_from_slice(&self.change);
        out
    }

    fn decode(seq: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |what: &'static str| StoreError::Malformed {
            tree: "events",
            what,
        };
        if bytes.len() < 42 || bytes[0] != EVENT_FORMAT {
            return Err(corrupt("event record too short or of an unknown format"));
        }
        let user = UserId::from_bytes(
            bytes[1..17]
                .try_into()
                .expect("16 bytes by the length check"),
        );
        let session = (bytes[17] == 1).then(|| {
            SessionId::from_bytes(
                bytes[18..34]
                    .try_into()
                    .expect("16 bytes by the length check"),
            )
        });
        let millis = i64::from_be_bytes(
            bytes[34..42]
                .try_into()
                .expect("8 bytes by the length check"),
        );
        let at = Utc
            .timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| corrupt("event time out of range"))?;
        Ok(Self {
            seq,
            user,
            session,
            at,
            change: bytes[42..].to_vec(),
        })
    }
}

/// The trees an append writes, for the flusher thread, which writes each
/// flush group's appends in one transaction: one transaction seals one of
/// sled's log buffers, so a hundred concurrent appends cost one seal, not a
/// hundred.
#[derive(Clone)]
pub(crate) struct AppendLog {
    pub(crate) db: sled::Db,
    pub(crate) documents: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) user_feed: sled::Tree,
    /// user id ‖ document id → feed sequence: where a document sits in the
    /// feed; only appends read and write it.
    pub(crate) user_feed_position: sled::Tree,
    pub(crate) usage: sled::Tree,
    pub(crate) task_index: sled::Tree,
}

impl AppendLog {
    /// Writes `batch` in one transaction. Each append gets its own outcome
    /// (its feed sequence, or why it was refused, with nothing of it
    /// written); an error of the engine fails them all.
    pub(crate) fn write(
        &self,
        batch: &[&Append],
    ) -> Result<Vec<Result<Appended, StoreError>>, sled::Error> {
        let feed_seqs = batch
            .iter()
            .map(|_| self.db.generate_id())
            .collect::<Result<Vec<u64>, sled::Error>>()?;
        let written = (
            &self.documents,
            &self.events,
            &self.user_feed,
            &self.user_feed_position,
            &self.usage,
            &self.task_index,
        )
            .transaction(
                |(documents, events, feed, positions, usage, index)| -> TxResult<Vec<Result<Appended, StoreError>>> {
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for (append, feed_seq) in batch.iter().zip(&feed_seqs) {
                        let Some(meta) = documents.get(append.doc.as_bytes())? else {
                            outcomes.push(Err(StoreError::Malformed {
                                tree: "documents",
                                what: "appending to a document nobody claimed",
                            }));
                            continue;
                        };
                        let mut meta: DocumentMeta = match decode("documents", &meta) {
                            Ok(meta) => meta,
                            Err(e) => {
                                outcomes.push(Err(e));
                                continue;
                            }
                        };
                        if meta.deleted_at.is_some() {
                            outcomes.push(Err(StoreError::DocumentDeleted));
                            continue;
                        }
                        // Reads see this transaction's earlier writes, so two
                        // appends of one owner in a batch count together.
                        let used = match decode_usage(usage.get(meta.owner.as_bytes())?) {
                            Ok(used) => used,
                            Err(e) => {
                                outcomes.push(Err(e));
                                continue;
                            }
                        };
                        let (used, document_bytes) =
                            match used.grow(meta.bytes, append.bytes(), &append.quota) {
                                Ok(grown) => grown,
                                Err(exceeded) => {
                                    outcomes.push(Err(StoreError::QuotaExceeded(exceeded)));
                                    continue;
                                }
                            };
                        usage.insert(meta.owner.as_bytes(), encode(&used))?;
                        meta.bytes = document_bytes;
                        let first_seq = meta.next_seq;
                        for change in &append.changes {
                            let record = EventRecord {
                                seq: meta.next_seq,
                                user: append.user,
                                session: append.session,
                                at: append.at,
                                change: change.clone(),
                            };
                            events.insert(seq_key(append.doc, meta.next_seq), record.encode())?;
                            meta.next_seq += 1;
                        }
                        documents.insert(append.doc.as_bytes(), encode(&meta))?;
                        let owner = meta.owner;
                        let position_key = pair_key(owner.as_bytes(), append.doc.as_bytes());
                        if let Some(old) = positions.get(&position_key)? {
                            feed.remove(pair_key(owner.as_bytes(), &old))?;
                        }
                        positions.insert(position_key.clone(), &feed_seq.to_be_bytes())?;
                        feed.insert(
                            pair_key(owner.as_bytes(), &feed_seq.to_be_bytes()),
                            append.doc.as_bytes(),
                        )?;
                        match &append.index {
                            IndexUpdate::Keep => {}
                            IndexUpdate::Put(view) => {
                                index.insert(position_key, encode(view))?;
                            }
                            IndexUpdate::Remove => {
                                index.remove(position_key)?;
                            }
                        }
                        outcomes.push(Ok(Appended {
                            first_seq,
                            feed_seq: *feed_seq,
                        }));
                    }
                    Ok(outcomes)
                },
            );
        // Nothing above aborts: a refused append is an outcome, so that it
        // does not take the rest of its group down with it.
        match written {
            Ok(outcomes) => Ok(outcomes),
            Err(TransactionError::Storage(e)) => Err(e),
            Err(TransactionError::Abort(e)) => Err(sled::Error::Unsupported(e.to_string())),
        }
    }
}

pub(crate) fn seq_key(doc: DocumentId, seq: u64) -> Vec<u8> {
    pair_key(doc.as_bytes(), &seq.to_be_bytes())
}

impl Embedded {
    /// What the store knows about a document.
    pub(crate) fn document_meta(
        &self,
        doc: DocumentId,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        self.run(|e| {
            e.documents
                .get(doc.as_bytes())?
                .map(|v| decode("documents", &v))
                .transpose()
        })
    }

    /// Records `user` as the owner of `doc` unless someone already owns it
    /// or the user has as many documents as `quota` allows.
    pub(crate) fn claim_document(
        &self,
        doc: DocumentId,
        user: UserId,
        now: DateTime<Utc>,
        quota: &Quota,
    ) -> Result<Claim, StoreError> {
        self.run(|e| {
            let claim = (&e.documents, &e.usage).transaction(|(documents, usage)| {
                if let Some(bytes) = documents.get(doc.as_bytes())? {
                    let meta: DocumentMeta =
                        decode("documents", &bytes).map_err(ConflictableTransactionError::Abort)?;
                    return Ok(if meta.owner == user && meta.deleted_at.is_none() {
                        Claim::Owned(meta)
                    } else {
                        Claim::Unavailable
                    });
                }
                let used = decode_usage(usage.get(user.as_bytes())?)
                    .map_err(ConflictableTransactionError::Abort)?;
                let used = match used.add_document(quota) {
                    Ok(used) => used,
                    Err(exceeded) => return Ok(Claim::OverQuota(exceeded)),
                };
                let meta = DocumentMeta {
                    owner: user,
                    created_at: now,
                    next_seq: 0,
                    deleted_at: None,
                    bytes: 0,
                };
                documents.insert(doc.as_bytes(), encode(&meta))?;
                usage.insert(user.as_bytes(), encode(&used))?;
                Ok(Claim::Owned(meta))
            })?;
            Ok(claim)
        })
    }

    /// Appends changes to a document's log, bumps its feed position and
    /// usage, and updates its task-index entry, all in one transaction with
    /// the other appends of the same flush group (see `group_commit`).
    /// Returns the document's new feed sequence and the ticket that makes
    /// the append durable. Refused, with nothing written, if the document
    /// is unknown or deleted, or if the owner's quota would be exceeded.
    pub(crate) async fn append_events(
        &self,
        append: Append,
    ) -> Result<(Appended, Ticket), StoreError> {
        let engine = self.engine()?;
        match engine.group_commit.append(append).await {
            Ok((appended, ticket)) => Ok((appended, Ticket::new(engine.epoch, ticket))),
            Err(StoreError::Engine(sled::Error::Io(error))) => {
                self.shared.fail(&engine, &error);
                Err(StoreError::Unavailable)
            }
            Err(other) => Err(other),
        }
    }

    /// The document's snapshot and the changes after it.
    pub fn load_document(&self, doc: DocumentId) -> Result<StoredDocument, StoreError> {
        self.run(|e| {
            let mut stored = StoredDocument::default();
            if let Some(snapshot) = e.snapshots.get(doc.as_bytes())? {
                if snapshot.len() < 8 {
                    return Err(StoreError::Malformed {
                        tree: "snapshots",
                        what: "too short",
                    });
                }
                stored.snapshot_covers = u64::from_be_bytes(
                    snapshot[..8]
                        .try_into()
                        .expect("8 bytes by the length check"),
                );
                stored.snapshot = Some(snapshot[8..].to_vec());
            }
            for item in e
                .events
                .range(seq_key(doc, stored.snapshot_covers)..seq_key(doc, u64::MAX))
            {
                let (key, value) = item?;
                let seq = seq_in_key(&key, "events", "key is not document ‖ sequence")?;
                stored
                    .changes
                    .push(EventRecord::decode(seq, &value)?.change);
            }
            Ok(stored)
        })
    }

    /// Stores a snapshot covering the first `covers` events. Events are kept:
    /// the snapshot only makes loading faster.
    pub(crate) fn write_snapshot(
        &self,
        doc: DocumentId,
        covers: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.run(|e| {
            let mut value = Vec::with_capacity(8 + bytes.len());
            value.extend_from_slice(&covers.to_be_bytes());
            value.extend_from_slice(bytes);
            e.snapshots.insert(doc.as_bytes(), value)?;
            Ok(())
        })
    }

    /// Every event of a document, oldest first.
    pub(crate) fn events_of(&self, doc: DocumentId) -> Result<Vec<EventRecord>, StoreError> {
        self.run(|e| e.events_from(doc, 0))
    }

    /// The events of a document's log from sequence `from` on, in order.
    pub(crate) fn events_from(
        &self,
        doc: DocumentId,
        from: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.run(|e| e.events_from(doc, from))
    }

    /// The user's documents that changed after feed position `cursor`, oldest
    /// change first, at most `limit`, and the position to ask from next time.
    pub(crate) fn changed_since(
        &self,
        user: UserId,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<DocumentId>, u64), StoreError> {
        self.run(|e| {
            let start = pair_key(user.as_bytes(), &cursor.saturating_add(1).to_be_bytes());
            let end = pair_key(user.as_bytes(), &u64::MAX.to_be_bytes());
            let mut docs = Vec::new();
            let mut last = cursor;
            for item in e.user_feed.range(start..end).take(limit) {
                let (key, value) = item?;
                last = seq_in_key(&key, "user_feed", "key is not user ‖ sequence")?;
                let bytes: [u8; 16] =
                    value
                        .as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Malformed {
                            tree: "user_feed",
                            what: "value is not a document id",
                        })?;
                docs.push(DocumentId::from_bytes(bytes));
            }
            Ok((docs, last))
        })
    }

    /// Marks a document deleted and gives its bytes back to the owner's
    /// quota. It keeps its log (for history) but never syncs again.
    pub(crate) fn tombstone_document(
        &self,
        doc: DocumentId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.run(|e| {
            let removed = (&e.documents, &e.usage, &e.task_index).transaction(
                |(documents, usage, task_index)| -> TxResult<bool> {
                    let Some(current) = documents.get(doc.as_bytes())? else {
                        return Ok(false);
                    };
                    let mut meta: DocumentMeta = decode("documents", &current)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if meta.deleted_at.is_some() {
                        return Ok(false);
                    }
                    meta.deleted_at = Some(at);
                    documents.insert(doc.as_bytes(), encode(&meta))?;
                    let used = decode_usage(usage.get(meta.owner.as_bytes())?)
                        .map_err(ConflictableTransactionError::Abort)?;
                    usage.insert(
                        meta.owner.as_bytes(),
                        encode(&used.remove_document(meta.bytes)),
                    )?;
                    task_index.remove(pair_key(meta.owner.as_bytes(), doc.as_bytes()))?;
                    Ok(true)
                },
            )?;
            Ok(removed)
        })
    }
}

impl Engine {
    /// Every event of a document, oldest first.
    pub(crate) fn events_from(
        &self,
        doc: DocumentId,
        from: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.events
            .range(seq_key(doc, from)..=seq_key(doc, u64::MAX))
            .map(|item| {
                let (key, value) = item?;
                let seq = seq_in_key(&key, "events", "key is not document ‖ sequence")?;
                EventRecord::decode(seq, &value)
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
