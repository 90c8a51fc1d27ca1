//! Documents in PostgreSQL: who owns them, their change log, snapshots,
//! and the per-user feed. Appends, which write the log and the feed, are
//! batched by the writer in `appends.rs`.
//!
//! Lock order: every transaction that locks a document row and a usage row
//! locks the document first (claims, appends, deletes), so that they
//! cannot deadlock each other.

use chrono::{DateTime, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::usage::locked_usage;
use super::{PgEngine, id16, signed, unsigned};
use crate::configuration::limits::Quota;
use crate::store::{Claim, DocumentMeta, EventRecord, StoreError, StoredDocument};

pub(super) const META_COLUMNS: &str = "owner, created_at, next_seq, deleted_at, bytes";

/// A document's record from a row of [`META_COLUMNS`] starting at `first`.
pub(super) fn meta_from(row: &Row, first: usize) -> Result<DocumentMeta, StoreError> {
    Ok(DocumentMeta {
        owner: UserId::from_bytes(id16(row.get(first), "documents")?),
        created_at: row.get(first + 1),
        next_seq: unsigned(row.get(first + 2), "documents", "negative next_seq")?,
        deleted_at: row.get(first + 3),
        bytes: unsigned(row.get(first + 4), "documents", "negative byte count")?,
    })
}

impl PgEngine {
    /// What the store knows about a document.
    pub(crate) async fn document_meta(
        &self,
        doc: DocumentId,
    ) -> Result<Option<DocumentMeta>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {META_COLUMNS} FROM documents WHERE doc = $1"),
                &[&doc.as_bytes().as_slice()],
            )
            .await?;
        row.map(|row| meta_from(&row, 0)).transpose()
    }

    /// Records `user` as the owner of `doc` unless someone already owns it
    /// or the user has as many documents as `quota` allows. Of concurrent
    /// first claims (on any node) exactly one inserts the row; the others
    /// wait for its transaction and then read the owner it wrote.
    pub(crate) async fn claim_document(
        &self,
        doc: DocumentId,
        user: UserId,
        now: DateTime<Utc>,
        quota: &Quota,
    ) -> Result<Claim, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO documents (doc, owner, created_at, next_seq, deleted_at, bytes) \
                 VALUES ($1, $2, $3, 0, NULL, 0) ON CONFLICT (doc) DO NOTHING",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let inserted = tx
            .execute(
                &insert,
                &[
                    &doc.as_bytes().as_slice(),
                    &user.as_bytes().as_slice(),
                    &now,
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        if inserted == 0 {
            let select = tx
                .prepare_cached(&format!(
                    "SELECT {META_COLUMNS} FROM documents WHERE doc = $1"
                ))
                .await
                .map_err(|e| self.fail(e))?;
            let row = tx
                .query_one(&select, &[&doc.as_bytes().as_slice()])
                .await
                .map_err(|e| self.fail(e))?;
            let meta = meta_from(&row, 0)?;
            tx.commit().await.map_err(|e| self.fail(e))?;
            return Ok(if meta.owner == user && meta.deleted_at.is_none() {
                Claim::Owned(meta)
            } else {
                Claim::Unavailable
            });
        }
        let used = locked_usage(self, &tx, user).await?;
        let used = match used.add_document(quota) {
            Ok(used) => used,
            Err(exceeded) => {
                // Rolls the inserted row back: nobody owns the document.
                drop(tx);
                return Ok(Claim::OverQuota(exceeded));
            }
        };
        super::usage::write_usage(self, &tx, user, used).await?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(Claim::Owned(DocumentMeta {
            owner: user,
            created_at: now,
            next_seq: 0,
            deleted_at: None,
            bytes: 0,
        }))
    }

    /// The document's snapshot and the changes after it.
    pub(crate) async fn load_document(
        &self,
        doc: DocumentId,
    ) -> Result<StoredDocument, StoreError> {
        let mut client = self.client().await?;
        // One snapshot of the database for both reads, so that the events
        // read are those after the snapshot read.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.fail(e))?;
        let snapshot = tx
            .prepare_cached("SELECT covers, bytes FROM snapshots WHERE doc = $1")
            .await
            .map_err(|e| self.fail(e))?;
        let mut stored = StoredDocument::default();
        if let Some(row) = tx
            .query_opt(&snapshot, &[&doc.as_bytes().as_slice()])
            .await
            .map_err(|e| self.fail(e))?
        {
            stored.snapshot_covers = unsigned(row.get(0), "snapshots", "negative cover")?;
            stored.snapshot = Some(row.get(1));
        }
        let events = tx
            .prepare_cached("SELECT change FROM events WHERE doc = $1 AND seq >= $2 ORDER BY seq")
            .await
            .map_err(|e| self.fail(e))?;
        let from = signed(stored.snapshot_covers, "snapshots", "cover beyond bigint")?;
        let rows = tx
            .query(&events, &[&doc.as_bytes().as_slice(), &from])
            .await
            .map_err(|e| self.fail(e))?;
        stored.changes = rows.iter().map(|row| row.get(0)).collect();
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(stored)
    }

    /// Stores a snapshot covering the first `covers` events. Events are
    /// kept: the snapshot only makes loading faster.
    pub(crate) async fn write_snapshot(
        &self,
        doc: DocumentId,
        covers: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO snapshots (doc, covers, bytes) VALUES ($1, $2, $3) \
                 ON CONFLICT (doc) DO UPDATE SET covers = EXCLUDED.covers, bytes = EXCLUDED.bytes",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let covers = signed(covers, "snapshots", "cover beyond bigint")?;
        client
            .execute(&statement, &[&doc.as_bytes().as_slice(), &covers, &bytes])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Every event of a document, oldest first.
    pub(crate) async fn events_of(&self, doc: DocumentId) -> Result<Vec<EventRecord>, StoreError> {
        self.events_from(doc, 0).await
    }

    /// The events of a document's log from sequence `from` on, in order:
    /// what another node appended since this one last read.
    pub(crate) async fn events_from(
        &self,
        doc: DocumentId,
        from: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        // A sequence past every bigint has nothing at or after it.
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT seq, user_id, session_id, at, change FROM events \
                 WHERE doc = $1 AND seq >= $2 ORDER BY seq",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let rows = client
            .query(&statement, &[&doc.as_bytes().as_slice(), &from])
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                let session: Option<&[u8]> = row.get(2);
                Ok(EventRecord {
                    seq: unsigned(row.get(0), "events", "negative sequence")?,
                    user: UserId::from_bytes(id16(row.get(1), "events")?),
                    session: session
                        .map(|s| id16(s, "events").map(SessionId::from_bytes))
                        .transpose()?,
                    at: row.get(3),
                    change: row.get(4),
                })
            })
            .collect()
    }

    /// The user's documents that changed after feed position `cursor`,
    /// oldest change first, at most `limit`, and the position to ask from
    /// next time.
    pub(crate) async fn changed_since(
        &self,
        user: UserId,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<DocumentId>, u64), StoreError> {
        // A cursor past every bigint has nothing after it.
        let Ok(after) = i64::try_from(cursor) else {
            return Ok((Vec::new(), cursor));
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT feed_seq, doc FROM user_feed WHERE user_id = $1 AND feed_seq > $2 \
                 ORDER BY feed_seq LIMIT $3",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&user.as_bytes().as_slice(), &after, &limit])
            .await
            .map_err(|e| self.fail(e))?;
        let mut docs = Vec::with_capacity(rows.len());
        let mut last = cursor;
        for row in &rows {
            last = unsigned(row.get(0), "user_feed", "negative feed sequence")?;
            docs.push(DocumentId::from_bytes(id16(row.get(1), "user_feed")?));
        }
        Ok((docs, last))
    }

    /// Marks a document deleted and gives its bytes back to the owner's
    /// quota. It keeps its log (for history) but never syncs again.
    pub(crate) async fn tombstone_document(
        &self,
        doc: DocumentId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        let Some(meta) = lock_document(self, &tx, doc).await? else {
            return Ok(false);
        };
        if meta.deleted_at.is_some() {
            return Ok(false);
        }
        let mark = tx
            .prepare_cached("UPDATE documents SET deleted_at = $2 WHERE doc = $1")
            .await
            .map_err(|e| self.fail(e))?;
        tx.execute(&mark, &[&doc.as_bytes().as_slice(), &at])
            .await
            .map_err(|e| self.fail(e))?;
        let used = locked_usage(self, &tx, meta.owner).await?;
        super::usage::write_usage(self, &tx, meta.owner, used.remove_document(meta.bytes)).await?;
        let unlist = tx
            .prepare_cached("DELETE FROM task_index WHERE user_id = $1 AND doc = $2")
            .await
            .map_err(|e| self.fail(e))?;
        tx.execute(
            &unlist,
            &[
                &meta.owner.as_bytes().as_slice(),
                &doc.as_bytes().as_slice(),
            ],
        )
        .await
        .map_err(|e| self.fail(e))?;
        // The other nodes drop the document from memory and tell its peers.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &super::doorbell::CHANNEL,
                &super::doorbell::deleted_payload(self.node, doc),
            ],
        )
        .await
        .map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(true)
    }
}

/// A document's record, locked for the rest of `tx`.
async fn lock_document(
    engine: &PgEngine,
    tx: &Transaction<'_>,
    doc: DocumentId,
) -> Result<Option<DocumentMeta>, StoreError> {
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {META_COLUMNS} FROM documents WHERE doc = $1 FOR UPDATE"
        ))
        .await
        .map_err(|e| engine.fail(e))?;
    let row = tx
        .query_opt(&statement, &[&doc.as_bytes().as_slice()])
        .await
        .map_err(|e| engine.fail(e))?;
    row.map(|row| meta_from(&row, 0)).transpose()
}
