//! A consistency check of the document records in PostgreSQL, the same as
//! the sled engine's (`store/verify.rs`), plus the feed, which PostgreSQL
//! numbers per user. It reads one snapshot of the database, so that writes
//! running meanwhile cannot show up as half-written.

use std::collections::HashMap;

use codeedex_schema::id::{DocumentId, UserId};

use super::usage::usage_from;
use super::{PgEngine, id16, unsigned};
use crate::store::StoreError;
use crate::store::quota::Usage;

impl PgEngine {
    /// Checks that the document records agree with each other, and returns
    /// what does not (empty when the store is consistent):
    /// - every document's log holds exactly the events `0..next_seq`, and
    ///   their bytes are the document's byte count;
    /// - a snapshot covers no more events than the log holds;
    /// - every user's usage counts their live documents and bytes;
    /// - every task summary belongs to a live document of its user;
    /// - every feed entry is a document of its user, numbered no higher
    ///   than the user's feed counter.
    pub(crate) async fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.fail(e))?;
        let mut problems = Vec::new();
        let mut counted: HashMap<UserId, Usage> = HashMap::new();

        let documents = tx
            .query(
                "SELECT d.doc, d.owner, d.next_seq, d.bytes, d.deleted_at IS NULL, \
                 count(e.seq), min(e.seq), max(e.seq), \
                 coalesce(sum(octet_length(e.change)), 0)::bigint \
                 FROM documents d LEFT JOIN events e ON e.doc = d.doc \
                 GROUP BY d.doc ORDER BY d.doc",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?;
        for row in &documents {
            let doc = DocumentId::from_bytes(id16(row.get(0), "documents")?);
            let owner = UserId::from_bytes(id16(row.get(1), "documents")?);
            let next_seq = unsigned(row.get(2), "documents", "negative next_seq")?;
            let bytes = unsigned(row.get(3), "documents", "negative byte count")?;
            let live: bool = row.get(4);
            let count = unsigned(row.get(5), "events", "negative count")?;
            let first: Option<i64> = row.get(6);
            let last: Option<i64> = row.get(7);
            let logged = unsigned(row.get(8), "events", "negative byte sum")?;
            // Sequence numbers of a document are distinct (its primary key),
            // so `count` of them from 0 to `count - 1` are exactly 0..count.
            let exact = count == next_seq
                && (count == 0
                    || (first == Some(0)
                        && last.and_then(|l| u64::try_from(l).ok()) == Some(count - 1)));
            if !exact {
                problems.push(format!(
                    "document {doc}: next_seq is {next_seq} but the log holds {count} events (first {first:?}, last {last:?})"
                ));
            }
            if logged != bytes {
                problems.push(format!(
                    "document {doc}: counts {bytes} bytes, its log holds {logged}"
                ));
            }
            if live {
                let used = counted.entry(owner).or_default();
                used.documents += 1;
                used.bytes += bytes;
            }
        }

        for row in tx
            .query(
                "SELECT s.doc, s.covers, d.next_seq FROM snapshots s \
                 JOIN documents d ON d.doc = s.doc WHERE s.covers > d.next_seq ORDER BY s.doc",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?
        {
            let doc = DocumentId::from_bytes(id16(row.get(0), "snapshots")?);
            let (covers, next_seq): (i64, i64) = (row.get(1), row.get(2));
            problems.push(format!(
                "document {doc}: its snapshot covers {covers} events, the log holds {next_seq}"
            ));
        }

        for row in tx
            .query(
                "SELECT user_id, documents, bytes FROM usage ORDER BY user_id",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?
        {
            let user = UserId::from_bytes(id16(row.get(0), "usage")?);
            let stored = usage_from(row.get(1), row.get(2))?;
            let counted = counted.remove(&user).unwrap_or_default();
            if stored != counted {
                problems.push(format!(
                    "user {user}: usage says {stored:?}, the documents add up to {counted:?}"
                ));
            }
        }
        for (user, counted) in counted {
            problems.push(format!(
                "user {user}: has {counted:?} in documents but no usage record"
            ));
        }

        for row in tx
            .query(
                "SELECT t.user_id, t.doc FROM task_index t LEFT JOIN documents d \
                 ON d.doc = t.doc AND d.owner = t.user_id AND d.deleted_at IS NULL \
                 WHERE d.doc IS NULL ORDER BY t.user_id, t.doc",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?
        {
            let user = UserId::from_bytes(id16(row.get(0), "task_index")?);
            let doc = DocumentId::from_bytes(id16(row.get(1), "task_index")?);
            problems.push(format!(
                "the task list of user {user} shows {doc}, which is not a live document of theirs"
            ));
        }

        for row in tx
            .query(
                "SELECT f.user_id, f.doc FROM user_feed f LEFT JOIN documents d \
                 ON d.doc = f.doc AND d.owner = f.user_id \
                 WHERE d.doc IS NULL ORDER BY f.user_id, f.doc",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?
        {
            let user = UserId::from_bytes(id16(row.get(0), "user_feed")?);
            let doc = DocumentId::from_bytes(id16(row.get(1), "user_feed")?);
            problems.push(format!(
                "the feed of user {user} lists {doc}, which is not a document of theirs"
            ));
        }
        for row in tx
            .query(
                "SELECT f.user_id, max(f.feed_seq), c.last_seq FROM user_feed f \
                 LEFT JOIN user_feed_counters c ON c.user_id = f.user_id \
                 GROUP BY f.user_id, c.last_seq \
                 HAVING c.last_seq IS NULL OR max(f.feed_seq) > c.last_seq ORDER BY f.user_id",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?
        {
            let user = UserId::from_bytes(id16(row.get(0), "user_feed")?);
            let (highest, counter): (i64, Option<i64>) = (row.get(1), row.get(2));
            problems.push(format!(
                "the feed of user {user} reaches {highest}, its counter is at {counter:?}"
            ));
        }
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(problems)
    }
}
