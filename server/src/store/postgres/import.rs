//! Import for the migration from the embedded store (`store/migration.rs`):
//! each [`Batch`] in one transaction, each table of it in one multi-row
//! `INSERT ... SELECT FROM unnest(...)`, so that a page of a thousand
//! records costs a few round trips, not a thousand.
//!
//! Values are copied as they are: sequence numbers, feed positions, audit
//! order, byte counts. Only the counters that allocate the next ones (the
//! audit identity, the feed counters) are set at the end, past them.

use codeedex_schema::id::{DocumentId, UserId};
use deadpool_postgres::Transaction;
use tokio_postgres::types::{Json, ToSql};

use super::{PgEngine, signed};
use crate::store::StoreError;
use crate::store::migration::{Batch, Kind};

/// Serialises migrations into one database, with the engine's migration
/// lock's key plus one ("codeedey").
const IMPORT_LOCK: i64 = 0x636f_6465_6564_6579;

fn id(bytes: &[u8; 16]) -> &[u8] {
    bytes.as_slice()
}

impl PgEngine {
    /// Checks that the database is empty and, in the same transaction,
    /// writes the server keys and storage id into it. Returns what the
    /// database holds instead when it is not empty (and then writes
    /// nothing).
    pub(crate) async fn claim_for_migration(
        &self,
        secrets: &[(&str, [u8; 32])],
        storage_id: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IMPORT_LOCK])
            .await
            .map_err(|e| self.fail(e))?;
        let row = tx
            .query_one(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM documents), \
                 (SELECT count(*) FROM meta WHERE key LIKE 'secret:%'), \
                 (SELECT count(*) FROM meta), (SELECT count(*) FROM sessions)",
                &[],
            )
            .await
            .map_err(|e| self.fail(e))?;
        let held: Vec<String> = [
            ("users", row.get::<_, i64>(0)),
            ("documents", row.get(1)),
            ("secrets", row.get(2)),
            ("server values", row.get::<_, i64>(3) - row.get::<_, i64>(2)),
            ("sessions", row.get(4)),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
        if !held.is_empty() {
            return Ok(Some(held.join(", ")));
        }
        for (name, key) in secrets {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)",
                &[&format!("secret:{name}"), &hex::encode(key)],
            )
            .await
            .map_err(|e| self.fail(e))?;
        }
        if let Some(storage_id) = storage_id {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('storage_id', $1)",
                &[&storage_id],
            )
            .await
            .map_err(|e| self.fail(e))?;
        }
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(None)
    }

    /// Writes one exported page in one transaction.
    pub(crate) async fn import(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        self.import_in(&tx, batch).await?;
        tx.commit().await.map_err(|e| self.fail(e))
    }

    async fn run(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        tx.execute(sql, params).await.map_err(|e| self.fail(e))
    }

    async fn import_in(&self, tx: &Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
        match batch {
            Batch::Users(users) => {
                let ids: Vec<&[u8]> = users.iter().map(|u| id(u.id.as_bytes())).collect();
                let contacts: Vec<&str> = users.iter().map(|u| u.contact_key.as_str()).collect();
                let created: Vec<_> = users.iter().map(|u| u.created_at).collect();
                let roots: Vec<Option<&[u8]>> = users
                    .iter()
                    .map(|u| u.root_document_id.as_ref().map(|d| id(d.as_bytes())))
                    .collect();
                self.run(
                    tx,
                    "INSERT INTO users (id, contact_key, created_at, root_document_id) \
                     SELECT * FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::bytea[])",
                    &[&ids, &contacts, &created, &roots],
                )
                .await?;
            }
            Batch::Otp(records) => {
                let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
                let values: Vec<Json<_>> = records.iter().map(|(_, r)| Json(r)).collect();
                self.run(
                    tx,
                    "INSERT INTO otp (contact_key, record) \
                     SELECT * FROM unnest($1::text[], $2::jsonb[])",
                    &[&keys, &values],
                )
                .await?;
            }
            Batch::Sessions(sessions) => {
                let ids: Vec<&[u8]> = sessions.iter().map(|s| id(s.id.as_bytes())).collect();
                let users: Vec<&[u8]> = sessions.iter().map(|s| id(s.user_id.as_bytes())).collect();
                let names: Vec<Option<&str>> =
                    sessions.iter().map(|s| s.device_name.as_deref()).collect();
                let created: Vec<_> = sessions.iter().map(|s| s.created_at).collect();
                let used: Vec<_> = sessions.iter().map(|s| s.last_used_at).collect();
                let generations = sessions
                    .iter()
                    .map(|s| signed(s.generation, "sessions", "generation beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let rotated: Vec<_> = sessions.iter().map(|s| s.rotated_at).collect();
                self.run(
                    tx,
                    "INSERT INTO sessions (id, user_id, device_name, created_at, last_used_at, \
                     generation, rotated_at) SELECT * FROM unnest($1::bytea[], $2::bytea[], \
                     $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int8[], $7::timestamptz[])",
                    &[
                        &ids,
                        &users,
                        &names,
                        &created,
                        &used,
                        &generations,
                        &rotated,
                    ],
                )
                .await?;
            }
            Batch::RefreshTokens(tokens) => {
                let hashes: Vec<&[u8]> = tokens.iter().map(|(h, _)| h.as_slice()).collect();
                let sessions: Vec<&[u8]> = tokens
                    .iter()
                    .map(|(_, e)| id(e.session_id.as_bytes()))
                    .collect();
                let generations = tokens
                    .iter()
                    .map(|(_, e)| {
                        signed(e.generation, "refresh_tokens", "generation beyond bigint")
                    })
                    .collect::<Result<Vec<i64>, _>>()?;
                // A token of a session that is gone could not be used in
                // sled either; it is left behind (and the count shows it).
                self.run(
                    tx,
                    "INSERT INTO refresh_tokens (hash, session_id, generation) \
                     SELECT t.* FROM unnest($1::bytea[], $2::bytea[], $3::int8[]) \
                     AS t(hash, session_id, generation) \
                     WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id)",
                    &[&hashes, &sessions, &generations],
                )
                .await?;
            }
            Batch::Audit(events) => {
                let users: Vec<&[u8]> = events.iter().map(|(u, _, _)| id(u.as_bytes())).collect();
                let seqs = events
                    .iter()
                    .map(|(_, s, _)| signed(*s, "audit", "sequence beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let at: Vec<_> = events.iter().map(|(_, _, e)| e.at).collect();
                let kinds = events
                    .iter()
                    .map(|(_, _, e)| super::accounts::kind_name(e))
                    .collect::<Result<Vec<String>, _>>()?;
                let sessions: Vec<Option<&[u8]>> = events
                    .iter()
                    .map(|(_, _, e)| e.session_id.as_ref().map(|s| id(s.as_bytes())))
                    .collect();
                let ips: Vec<Option<&str>> =
                    events.iter().map(|(_, _, e)| e.ip.as_deref()).collect();
                let agents: Vec<Option<&str>> = events
                    .iter()
                    .map(|(_, _, e)| e.user_agent.as_deref())
                    .collect();
                // sled's sequence orders a user's trail; it is kept, and the
                // identity set past the largest at the end.
                self.run(
                    tx,
                    "INSERT INTO audit (user_id, seq, at, kind, session_id, ip, user_agent) \
                     OVERRIDING SYSTEM VALUE SELECT * FROM unnest($1::bytea[], $2::int8[], \
                     $3::timestamptz[], $4::text[], $5::bytea[], $6::text[], $7::text[])",
                    &[&users, &seqs, &at, &kinds, &sessions, &ips, &agents],
                )
                .await?;
            }
            Batch::Documents(documents) => {
                let ids: Vec<&[u8]> = documents.iter().map(|d| id(d.id.as_bytes())).collect();
                let owners: Vec<&[u8]> = documents
                    .iter()
                    .map(|d| id(d.meta.owner.as_bytes()))
                    .collect();
                let created: Vec<_> = documents.iter().map(|d| d.meta.created_at).collect();
                let next = documents
                    .iter()
                    .map(|d| signed(d.meta.next_seq, "documents", "next_seq beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let deleted: Vec<_> = documents.iter().map(|d| d.meta.deleted_at).collect();
                let bytes = documents
                    .iter()
                    .map(|d| signed(d.meta.bytes, "documents", "bytes beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.run(
                    tx,
                    "INSERT INTO documents (doc, owner, created_at, next_seq, deleted_at, bytes) \
                     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[], \
                     $4::int8[], $5::timestamptz[], $6::int8[])",
                    &[&ids, &owners, &created, &next, &deleted, &bytes],
                )
                .await?;
                let mut docs: Vec<&[u8]> = Vec::new();
                let mut seqs = Vec::new();
                let mut users: Vec<&[u8]> = Vec::new();
                let mut sessions: Vec<Option<&[u8]>> = Vec::new();
                let mut at = Vec::new();
                let mut changes: Vec<&[u8]> = Vec::new();
                for document in documents {
                    for event in &document.events {
                        docs.push(id(document.id.as_bytes()));
                        seqs.push(signed(event.seq, "events", "sequence beyond bigint")?);
                        users.push(id(event.user.as_bytes()));
                        sessions.push(event.session.as_ref().map(|s| id(s.as_bytes())));
                        at.push(event.at);
                        changes.push(event.change.as_slice());
                    }
                }
                if !docs.is_empty() {
                    self.run(
                        tx,
                        "INSERT INTO events (doc, seq, user_id, session_id, at, change) \
                         SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[], $4::bytea[], \
                         $5::timestamptz[], $6::bytea[])",
                        &[&docs, &seqs, &users, &sessions, &at, &changes],
                    )
                    .await?;
                }
            }
            Batch::Snapshots(snapshots) => {
                let docs: Vec<&[u8]> = snapshots.iter().map(|(d, _, _)| id(d.as_bytes())).collect();
                let covers = snapshots
                    .iter()
                    .map(|(_, c, _)| signed(*c, "snapshots", "cover beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let bytes: Vec<&[u8]> = snapshots.iter().map(|(_, _, b)| b.as_slice()).collect();
                self.run(
                    tx,
                    "INSERT INTO snapshots (doc, covers, bytes) \
                     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[])",
                    &[&docs, &covers, &bytes],
                )
                .await?;
            }
            Batch::Feed(entries) => {
                let users: Vec<&[u8]> = entries.iter().map(|(u, _, _)| id(u.as_bytes())).collect();
                let seqs = entries
                    .iter()
                    .map(|(_, s, _)| signed(*s, "user_feed", "sequence beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let docs: Vec<&[u8]> = entries.iter().map(|(_, _, d)| id(d.as_bytes())).collect();
                self.run(
                    tx,
                    "INSERT INTO user_feed (user_id, feed_seq, doc) \
                     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[])",
                    &[&users, &seqs, &docs],
                )
                .await?;
            }
            Batch::TaskIndex(summaries) => {
                let users: Vec<&[u8]> =
                    summaries.iter().map(|(u, _, _)| id(u.as_bytes())).collect();
                let docs: Vec<&[u8]> = summaries.iter().map(|(_, d, _)| id(d.as_bytes())).collect();
                let values: Vec<&serde_json::Value> = summaries.iter().map(|(_, _, v)| v).collect();
                self.run(
                    tx,
                    "INSERT INTO task_index (user_id, doc, summary) \
                     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::jsonb[])",
                    &[&users, &docs, &values],
                )
                .await?;
            }
            Batch::Usage(usage) => {
                let users: Vec<&[u8]> = usage.iter().map(|(u, _)| id(u.as_bytes())).collect();
                let documents = usage
                    .iter()
                    .map(|(_, u)| signed(u.documents, "usage", "count beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                let bytes = usage
                    .iter()
                    .map(|(_, u)| signed(u.bytes, "usage", "bytes beyond bigint"))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.run(
                    tx,
                    "INSERT INTO usage (user_id, documents, bytes) \
                     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[])",
                    &[&users, &documents, &bytes],
                )
                .await?;
            }
            Batch::SyncStates(states) => {
                let docs: Vec<&[u8]> = states.iter().map(|(d, _, _)| id(d.as_bytes())).collect();
                let storages: Vec<&str> = states.iter().map(|(_, s, _)| s.as_str()).collect();
                let values: Vec<&[u8]> = states.iter().map(|(_, _, v)| v.as_slice()).collect();
                self.run(
                    tx,
                    "INSERT INTO sync_states (doc, storage_id, state) \
                     SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[])",
                    &[&docs, &storages, &values],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Sets the counters that number what comes next past what was copied:
    /// the audit identity, and each user's feed counter. `first_feed_entry`
    /// is a feed entry sled numbered 0, which goes after its user's others.
    pub(crate) async fn finish_migration(
        &self,
        first_feed_entry: Option<(UserId, u64, DocumentId)>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        if let Some((user, _, doc)) = first_feed_entry {
            self.run(
                &tx,
                "INSERT INTO user_feed (user_id, feed_seq, doc) SELECT $1, \
                 coalesce((SELECT max(feed_seq) FROM user_feed WHERE user_id = $1), 0) + 1, $2",
                &[&id(user.as_bytes()), &id(doc.as_bytes())],
            )
            .await?;
        }
        self.run(
            &tx,
            "INSERT INTO user_feed_counters (user_id, last_seq) \
             SELECT user_id, max(feed_seq) FROM user_feed GROUP BY user_id",
            &[],
        )
        .await?;
        self.run(
            &tx,
            "SELECT setval(pg_get_serial_sequence('audit', 'seq'), max(seq)) FROM audit \
             HAVING count(*) > 0",
            &[],
        )
        .await?;
        tx.commit().await.map_err(|e| self.fail(e))
    }

    /// How many records of `kind` the database holds.
    pub(crate) async fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        let table = match kind {
            Kind::Users => "users",
            Kind::Otp => "otp",
            Kind::Sessions => "sessions",
            Kind::RefreshTokens => "refresh_tokens",
            Kind::Audit => "audit",
            Kind::Documents => "documents",
            Kind::Events => "events",
            Kind::Snapshots => "snapshots",
            Kind::Feed => "user_feed",
            Kind::TaskIndex => "task_index",
            Kind::Usage => "usage",
            Kind::SyncStates => "sync_states",
        };
        let client = self.client().await?;
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(|e| self.fail(e))?;
        super::unsigned(row.get(0), table, "negative count")
    }
}
