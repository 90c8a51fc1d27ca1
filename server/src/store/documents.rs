//! Documents: who owns them, their append-only change log, snapshots, sync
//! states, the per-user feed of changed documents, and the task index.
//!
//! The log is the source of truth: a document is its latest snapshot plus
//! the events after it. Events are never rewritten; a snapshot is written
//! before anything it covers could be pruned, and by default nothing is.

use chrono::{DateTime, TimeZone, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::quota::{QuotaExceeded, decode_usage};
use super::{Engine, Store, StoreError, TxResult, decode, encode, pair_key};
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
        let corrupt = |what: &str| StoreError::Corrupt {
            tree: "events",
            source: serde::de::Error::custom(what),
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

pub(crate) fn seq_key(doc: DocumentId, seq: u64) -> Vec<u8> {
    pair_key(doc.as_bytes(), &seq.to_be_bytes())
}

impl Store {
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

    /// Appends changes to a document's log and moves the document to the
    /// front of its owner's feed, in one transaction, unless that would take
    /// the document or its owner over `quota`. Returns the feed position.
    /// The caller makes it durable with [`Store::persist`].
    pub(crate) fn append_events(
        &self,
        doc: DocumentId,
        user: UserId,
        session: Option<SessionId>,
        at: DateTime<Utc>,
        changes: &[Vec<u8>],
        quota: &Quota,
    ) -> Result<u64, StoreError> {
        self.run(|e| {
            let feed_seq = e.db.generate_id()?;
            let added: u64 = changes.iter().map(|c| c.len() as u64).sum();
            (
                &e.documents,
                &e.events,
                &e.user_feed,
                &e.user_feed_position,
                &e.usage,
            )
                .transaction(
                    |(documents, events, feed, positions, usage)| -> TxResult<u64> {
                        let Some(meta) = documents.get(doc.as_bytes())? else {
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                                tree: "documents",
                                source: serde::de::Error::custom(
                                    "appending to a document nobody claimed",
                                ),
                            }));
                        };
                        let mut meta: DocumentMeta = decode("documents", &meta)
                            .map_err(ConflictableTransactionError::Abort)?;
                        if meta.deleted_at.is_some() {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::DocumentDeleted,
                            ));
                        }
                        let used = decode_usage(usage.get(meta.owner.as_bytes())?)
                            .map_err(ConflictableTransactionError::Abort)?;
                        let (used, document_bytes) =
                            used.grow(meta.bytes, added, quota).map_err(|e| {
                                ConflictableTransactionError::Abort(StoreError::QuotaExceeded(e))
                            })?;
                        usage.insert(meta.owner.as_bytes(), encode(&used))?;
                        meta.bytes = document_bytes;
                        for change in changes {
                            let record = EventRecord {
                                seq: meta.next_seq,
                                user,
                                session,
                                at,
                                change: change.clone(),
                            };
                            events.insert(seq_key(doc, meta.next_seq), record.encode())?;
                            meta.next_seq += 1;
                        }
                        documents.insert(doc.as_bytes(), encode(&meta))?;
                        let owner = meta.owner;
                        let position_key = pair_key(owner.as_bytes(), doc.as_bytes());
                        if let Some(old) = positions.get(&position_key)? {
                            feed.remove(pair_key(owner.as_bytes(), &old))?;
                        }
                        positions.insert(position_key, &feed_seq.to_be_bytes())?;
                        feed.insert(
                            pair_key(owner.as_bytes(), &feed_seq.to_be_bytes()),
                            doc.as_bytes(),
                        )?;
                        Ok(feed_seq)
                    },
                )?;
            Ok(feed_seq)
        })
    }

    /// The document's snapshot and the changes after it.
    pub fn load_document(&self, doc: DocumentId) -> Result<StoredDocument, StoreError> {
        self.run(|e| {
            let mut stored = StoredDocument::default();
            if let Some(snapshot) = e.snapshots.get(doc.as_bytes())? {
                if snapshot.len() < 8 {
                    return Err(StoreError::Corrupt {
                        tree: "snapshots",
                        source: serde::de::Error::custom("too short"),
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
                let seq = u64::from_be_bytes(key[16..24].try_into().map_err(|_| {
                    StoreError::Corrupt {
                        tree: "events",
                        source: serde::de::Error::custom("key is not document ‖ sequence"),
                    }
                })?);
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
        self.run(|e| e.events_of(doc))
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
                last = u64::from_be_bytes(key[16..24].try_into().map_err(|_| {
                    StoreError::Corrupt {
                        tree: "user_feed",
                        source: serde::de::Error::custom("key is not user ‖ sequence"),
                    }
                })?);
                let bytes: [u8; 16] =
                    value.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        tree: "user_feed",
                        source: serde::de::Error::custom("value is not a document id"),
                    })?;
                docs.push(DocumentId::from_random_bytes(bytes));
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

    /// The persisted sync state of a document with a peer's storage.
    pub fn sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|e| {
            Ok(e.sync_states
                .get(pair_key(doc.as_bytes(), storage_id.as_bytes()))?
                .map(|v| v.to_vec()))
        })
    }

    /// Persists the sync state of a document with a peer's storage.
    pub(crate) fn put_sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.sync_states
                .insert(pair_key(doc.as_bytes(), storage_id.as_bytes()), state)?;
            Ok(())
        })
    }

    /// Records a task's summary for listing.
    pub(crate) fn put_task_summary(
        &self,
        user: UserId,
        doc: DocumentId,
        summary: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.task_index
                .insert(pair_key(user.as_bytes(), doc.as_bytes()), encode(summary))?;
            Ok(())
        })
    }

    /// Drops a document's summary from the task list, if it has one.
    pub(crate) fn remove_task_summary(
        &self,
        user: UserId,
        doc: DocumentId,
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.task_index
                .remove(pair_key(user.as_bytes(), doc.as_bytes()))?;
            Ok(())
        })
    }

    /// Every task summary of a user, ordered by document id.
    pub(crate) fn task_summaries(
        &self,
        user: UserId,
    ) -> Result<Vec<(DocumentId, serde_json::Value)>, StoreError> {
        self.run(|e| {
            e.task_index
                .scan_prefix(user.as_bytes())
                .map(|item| {
                    let (key, value) = item?;
                    let id: [u8; 16] = key[16..].try_into().map_err(|_| StoreError::Corrupt {
                        tree: "task_index",
                        source: serde::de::Error::custom("key is not user ‖ document"),
                    })?;
                    Ok((
                        DocumentId::from_random_bytes(id),
                        decode("task_index", &value)?,
                    ))
                })
                .collect()
        })
    }

    /// The server's storage id, created on first use.
    pub(crate) fn server_storage_id(
        &self,
        fresh: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        self.run(|e| {
            let _ = e.meta.compare_and_swap(
                b"storage_id",
                None as Option<&[u8]>,
                Some(fresh().as_bytes()),
            )?;
            let value = e
                .meta
                .get(b"storage_id")?
                .expect("written just above if it was missing");
            Ok(String::from_utf8_lossy(&value).into_owned())
        })
    }
}

impl Engine {
    /// Every event of a document, oldest first.
    pub(crate) fn events_of(&self, doc: DocumentId) -> Result<Vec<EventRecord>, StoreError> {
        self.events
            .scan_prefix(doc.as_bytes())
            .map(|item| {
                let (key, value) = item?;
                let seq = u64::from_be_bytes(key[16..24].try_into().map_err(|_| {
                    StoreError::Corrupt {
                        tree: "events",
                        source: serde::de::Error::custom("key is not document ‖ sequence"),
                    }
                })?);
                EventRecord::decode(seq, &value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (UserId, UserId, DocumentId, DocumentId) {
        (
            UserId::from_random_bytes([1; 16]),
            UserId::from_random_bytes([2; 16]),
            DocumentId::from_random_bytes([3; 16]),
            DocumentId::from_random_bytes([4; 16]),
        )
    }

    #[test]
    fn the_first_claimant_owns_a_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (ann, bob, doc, _) = ids();
        assert!(matches!(
            store
                .claim_document(doc, ann, Utc::now(), &Quota::default())
                .unwrap(),
            Claim::Owned(_)
        ));
        assert_eq!(
            store
                .claim_document(doc, bob, Utc::now(), &Quota::default())
                .unwrap(),
            Claim::Unavailable
        );
        assert!(matches!(
            store
                .claim_document(doc, ann, Utc::now(), &Quota::default())
                .unwrap(),
            Claim::Owned(_)
        ));
    }

    #[test]
    fn events_append_in_order_and_reload_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (ann, _, doc, _) = ids();
        store
            .claim_document(doc, ann, Utc::now(), &Quota::default())
            .unwrap();
        store
            .append_events(
                doc,
                ann,
                None,
                Utc::now(),
                &[b"a".to_vec(), b"b".to_vec()],
                &Quota::default(),
            )
            .unwrap();
        store
            .append_events(
                doc,
                ann,
                None,
                Utc::now(),
                &[b"c".to_vec()],
                &Quota::default(),
            )
            .unwrap();
        assert_eq!(
            store.load_document(doc).unwrap().changes,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        store.write_snapshot(doc, 2, b"snap").unwrap();
        let loaded = store.load_document(doc).unwrap();
        assert_eq!(loaded.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!(loaded.changes, vec![b"c".to_vec()]);
        assert_eq!(
            store
                .events_of(doc)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn the_feed_lists_each_changed_document_once_in_order_of_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (ann, _, d1, d2) = ids();
        store
            .claim_document(d1, ann, Utc::now(), &Quota::default())
            .unwrap();
        store
            .claim_document(d2, ann, Utc::now(), &Quota::default())
            .unwrap();
        let first = store
            .append_events(
                d1,
                ann,
                None,
                Utc::now(),
                &[b"1".to_vec()],
                &Quota::default(),
            )
            .unwrap();
        store
            .append_events(
                d2,
                ann,
                None,
                Utc::now(),
                &[b"2".to_vec()],
                &Quota::default(),
            )
            .unwrap();
        store
            .append_events(
                d1,
                ann,
                None,
                Utc::now(),
                &[b"3".to_vec()],
                &Quota::default(),
            )
            .unwrap();
        let (docs, cursor) = store.changed_since(ann, 0, 100).unwrap();
        assert_eq!(docs, vec![d2, d1]);
        assert_eq!(
            store.changed_since(ann, cursor, 100).unwrap().0,
            Vec::<DocumentId>::new()
        );
        assert_eq!(
            store.changed_since(ann, first, 100).unwrap().0,
            vec![d2, d1]
        );
    }

    #[test]
    fn usage_follows_claims_appends_and_deletes_and_quotas_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (ann, _, d1, d2) = ids();
        let quota = Quota {
            documents_per_user: 1,
            bytes_per_user: 10,
            bytes_per_document: 10,
        };
        store.claim_document(d1, ann, Utc::now(), &quota).unwrap();
        assert_eq!(
            store.claim_document(d2, ann, Utc::now(), &quota).unwrap(),
            Claim::OverQuota(QuotaExceeded::Documents { limit: 1 })
        );
        store
            .append_events(d1, ann, None, Utc::now(), &[vec![0; 6]], &quota)
            .unwrap();
        assert!(matches!(
            store.append_events(d1, ann, None, Utc::now(), &[vec![0; 5]], &quota),
            Err(StoreError::QuotaExceeded(
                QuotaExceeded::DocumentBytes { .. }
            ))
        ));
        assert_eq!(
            store.load_document(d1).unwrap().changes.len(),
            1,
            "nothing of a refused append is kept"
        );
        assert_eq!(
            store.usage(ann).unwrap(),
            crate::store::quota::Usage {
                documents: 1,
                bytes: 6
            }
        );
        store.tombstone_document(d1, Utc::now()).unwrap();
        assert_eq!(
            store.usage(ann).unwrap(),
            crate::store::quota::Usage::default()
        );
        assert!(matches!(
            store.claim_document(d2, ann, Utc::now(), &quota).unwrap(),
            Claim::Owned(_)
        ));
    }

    #[test]
    fn usage_is_counted_once_for_a_store_written_before_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let (ann, _, d1, _) = ids();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .claim_document(d1, ann, Utc::now(), &Quota::default())
                .unwrap();
            store
                .append_events(d1, ann, None, Utc::now(), &[vec![0; 7]], &Quota::default())
                .unwrap();
            // What an older build left behind: no usage tree, no byte count.
            let mut meta = store.document_meta(d1).unwrap().unwrap();
            meta.bytes = 0;
            store
                .run(|e| {
                    e.documents.insert(d1.as_bytes(), encode(&meta))?;
                    e.db.drop_tree("usage")?;
                    e.db.flush()?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let usage = store.usage(ann).unwrap();
        assert_eq!(usage.documents, 1);
        assert_eq!(usage.bytes, 7, "the log's bytes are counted");
    }
}
