//! Appends in PostgreSQL: one writer task writes the appends waiting for it
//! in one transaction, as the sled engine's flusher does.
//!
//! Callers hand their [`Append`] to the writer over a bounded channel (a
//! full channel makes them wait: the writer is the bottleneck, and queueing
//! more in memory would not make it faster). The writer takes the first
//! waiting append and whatever else is waiting, up to a cap, and writes them
//! in one transaction: per-document sequence numbers come from the locked
//! document rows and per-user feed sequences from the locked per-user
//! counters, both allocated inside the transaction, so that the numbers of
//! one document or one user's feed are gap-free and commit in order (a
//! global serial would commit out of order and a reader of "changed since
//! N" could skip a row). Each append is validated against the locked rows
//! before anything is written, so that a refused append (deleted document,
//! over quota) fails alone while the others are written. Each caller hears
//! its outcome only after COMMIT has returned; if the transaction fails as
//! a whole, every caller in it gets the error.
//!
//! Lock order, to stay clear of deadlocks with claims and deletes on any
//! node: document rows (sorted by id), then usage rows (sorted), then feed
//! counters (sorted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, UserId};
use deadpool_postgres::{Pool, PoolError, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;

use super::documents::{META_COLUMNS, meta_from};
use super::usage::usage_from;
use super::{Outage, PgEngine, RETRIES, classify, id16, is_retryable, signed, unsigned};
use crate::store::quota::Usage;
use crate::store::{Append, Appended, DocumentMeta, IndexUpdate, StoreError};

/// Appends that may wait for the writer; beyond this, callers wait to hand
/// theirs over.
const QUEUE: usize = 1024;

/// The most appends one transaction takes; the rest wait for the next.
const MAX_BATCH_APPENDS: usize = 256;

/// The most change bytes one transaction takes (at least one append).
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// An append handed to the writer, and where its outcome goes.
struct Pending {
    append: Append,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The writer's inbox. The writer stops when every handle is dropped.
#[derive(Clone)]
pub(super) struct Appender {
    inbox: mpsc::Sender<Pending>,
}

impl Appender {
    /// Starts the writer task on `runtime` (the engine's).
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        pool: Pool,
        outage: Arc<Outage>,
        node: u64,
    ) -> Self {
        let (inbox, waiting) = mpsc::channel(QUEUE);
        runtime.spawn(write_loop(pool, outage, waiting, node));
        Self { inbox }
    }
}

impl PgEngine {
    /// Appends changes to a document's log, bumps its feed position and its
    /// owner's usage, and updates its task-index entry, all in one
    /// transaction with the other appends waiting at the same time.
    /// Returns where it landed (its first event's sequence in the
    /// document's log, its position in the owner's feed) once committed.
    /// Refused, with nothing written, if the document is unknown or
    /// deleted, or if the owner's quota would be exceeded.
    pub(crate) async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.appends
            .inbox
            .send(Pending { append, reply })
            .await
            .map_err(|_| StoreError::Unavailable)?;
        // The writer drops the reply only if it stopped (the runtime is
        // shutting down): nothing is known about the append then.
        outcome.await.unwrap_or(Err(StoreError::Unavailable))
    }
}

async fn write_loop(
    pool: Pool,
    outage: Arc<Outage>,
    mut waiting: mpsc::Receiver<Pending>,
    node: u64,
) {
    let mut held: Option<Pending> = None;
    loop {
        let first = match held.take() {
            Some(pending) => pending,
            None => match waiting.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = first.append.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_APPENDS {
            let Ok(next) = waiting.try_recv() else { break };
            bytes = bytes.saturating_add(next.append.bytes());
            if bytes > MAX_BATCH_BYTES {
                held = Some(next);
                break;
            }
            batch.push(next);
        }
        let (appends, replies): (Vec<Append>, Vec<_>) =
            batch.into_iter().map(|p| (p.append, p.reply)).unzip();
        // The batch is written by a task of its own, so that a bug that
        // panics fails its callers but not the writer: every later append
        // of this node would be refused otherwise.
        let written = tokio::spawn({
            let (pool, outage) = (pool.clone(), Arc::clone(&outage));
            async move {
                let appends: Vec<&Append> = appends.iter().collect();
                write_with_retries(&pool, &outage, &appends, node).await
            }
        })
        .await
        .unwrap_or_else(|error| {
            tracing::error!(error = %error, "writing a batch of appends panicked");
            Err(StoreError::Unavailable)
        });
        match written {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A caller that gave up waiting does not mind.
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                let shared = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::shared(&shared)));
                }
            }
        }
    }
}

impl StoreError {
    /// One of several callers' copy of an error that failed them all.
    fn shared(error: &Arc<StoreError>) -> StoreError {
        match **error {
            StoreError::Unavailable => StoreError::Unavailable,
            _ => StoreError::BatchFailed(Arc::clone(error)),
        }
    }
}

/// Writes the batch, running it again when it lost a race with another
/// transaction (a deadlock or serialization failure rolls all of it back).
pub(super) async fn write_with_retries(
    pool: &Pool,
    outage: &Outage,
    batch: &[&Append],
    node: u64,
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(PoolError::Backend(e)) => return Err(classify(e, outage)),
        Err(e) => {
            outage.report(&e);
            return Err(StoreError::Unavailable);
        }
    };
    let mut attempts = 0;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(|e| classify(e, outage))?;
        let written = match write_batch(&tx, outage, batch, node).await {
            Ok(outcomes) => match tx.commit().await {
                Ok(()) => {
                    outage.over();
                    Ok(outcomes)
                }
                Err(e) => Err(classify(e, outage)),
            },
            Err(e) => Err(e),
        };
        match written {
            Err(e) if is_retryable(&e) && attempts < RETRIES => attempts += 1,
            other => return other,
        }
    }
}

/// What the batch does to one document, validated in memory against the
/// locked rows.
struct Planned {
    meta: DocumentMeta,
    /// Whether an accepted append changed it.
    touched: bool,
}

/// The rows one batch writes, gathered so that each table gets one
/// statement for the whole batch.
#[derive(Default)]
struct Rows<'a> {
    event_docs: Vec<&'a [u8]>,
    event_seqs: Vec<i64>,
    event_users: Vec<&'a [u8]>,
    event_sessions: Vec<Option<&'a [u8]>>,
    event_times: Vec<DateTime<Utc>>,
    event_changes: Vec<&'a [u8]>,
    /// (owner, document) → the feed sequence of its last accepted append.
    feed: BTreeMap<(UserId, DocumentId), i64>,
    /// (owner, document) → the last index update other than "keep".
    index: BTreeMap<(UserId, DocumentId), &'a IndexUpdate>,
}

async fn write_batch(
    tx: &Transaction<'_>,
    outage: &Outage,
    batch: &[&Append],
    node: u64,
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let fail = |e| classify(e, outage);

    // Lock the documents, then their owners' usage.
    let docs: BTreeSet<DocumentId> = batch.iter().map(|a| a.doc).collect();
    let doc_keys: Vec<&[u8]> = docs.iter().map(|d| d.as_bytes().as_slice()).collect();
    let select = tx
        .prepare_cached(&format!(
            "SELECT doc, {META_COLUMNS} FROM documents WHERE doc = ANY($1) ORDER BY doc FOR UPDATE"
        ))
        .await
        .map_err(fail)?;
    let mut planned: HashMap<DocumentId, Planned> = HashMap::new();
    for row in tx.query(&select, &[&doc_keys]).await.map_err(fail)? {
        let doc = DocumentId::from_bytes(id16(row.get(0), "documents")?);
        planned.insert(
            doc,
            Planned {
                meta: meta_from(&row, 1)?,
                touched: false,
            },
        );
    }
    let owners: BTreeSet<UserId> = planned.values().map(|p| p.meta.owner).collect();
    let mut usage = lock_usage(tx, outage, &owners).await?;

    // Decide each append against the rows as the earlier appends of the
    // batch left them, so that two appends of one owner count together.
    let mut rows = Rows::default();
    let mut accepted: Vec<Option<UserId>> = Vec::with_capacity(batch.len());
    let mut outcomes: Vec<Result<Appended, StoreError>> = Vec::with_capacity(batch.len());
    for append in batch {
        let Some(plan) = planned.get_mut(&append.doc) else {
            accepted.push(None);
            outcomes.push(Err(StoreError::Malformed {
                tree: "documents",
                what: "appending to a document nobody claimed",
            }));
            continue;
        };
        if plan.meta.deleted_at.is_some() {
            accepted.push(None);
            outcomes.push(Err(StoreError::DocumentDeleted));
            continue;
        }
        let owner = plan.meta.owner;
        let used = usage.get(&owner).copied().unwrap_or_default();
        let (used, document_bytes) = match used.grow(plan.meta.bytes, append.bytes(), &append.quota)
        {
            Ok(grown) => grown,
            Err(exceeded) => {
                accepted.push(None);
                outcomes.push(Err(StoreError::QuotaExceeded(exceeded)));
                continue;
            }
        };
        usage.insert(owner, used);
        plan.meta.bytes = document_bytes;
        plan.touched = true;
        let first_seq = plan.meta.next_seq;
        for change in &append.changes {
            rows.event_docs.push(append.doc.as_bytes());
            rows.event_seqs.push(signed(
                plan.meta.next_seq,
                "events",
                "sequence beyond bigint",
            )?);
            rows.event_users.push(append.user.as_bytes());
            rows.event_sessions
                .push(append.session.as_ref().map(|s| s.as_bytes().as_slice()));
            rows.event_times.push(append.at);
            rows.event_changes.push(change);
            plan.meta.next_seq += 1;
        }
        if !matches!(append.index, IndexUpdate::Keep) {
            rows.index.insert((owner, append.doc), &append.index);
        }
        accepted.push(Some(owner));
        // The feed sequence is filled in once the counters are locked.
        outcomes.push(Ok(Appended {
            first_seq,
            feed_seq: 0,
        }));
    }

    // Take the feed sequences from the owners' counters, in batch order.
    let feed_owners: BTreeSet<UserId> = accepted.iter().flatten().copied().collect();
    let mut counters = lock_counters(tx, outage, &feed_owners).await?;
    for ((append, owner), outcome) in batch.iter().zip(&accepted).zip(&mut outcomes) {
        let Some(owner) = owner else { continue };
        let counter = counters.get_mut(owner).ok_or(StoreError::Malformed {
            tree: "user_feed_counters",
            what: "a counter locked a moment ago is missing",
        })?;
        *counter += 1;
        rows.feed.insert((*owner, append.doc), *counter);
        if let Ok(appended) = outcome {
            appended.feed_seq = unsigned(*counter, "user_feed_counters", "negative counter")?;
        }
    }

    write_events(tx, outage, &rows).await?;
    write_documents(tx, outage, &planned).await?;
    write_usage(tx, outage, &usage).await?;
    write_feed(tx, outage, &counters, &rows.feed).await?;
    write_index(tx, outage, &rows.index).await?;
    ring(tx, outage, node, batch, &outcomes).await?;
    Ok(outcomes)
}

/// Notifies the other nodes of every document the batch grew, inside the
/// transaction: PostgreSQL delivers the notices at COMMIT, so a committed
/// append always rings and a rolled-back one never does.
async fn ring(
    tx: &Transaction<'_>,
    outage: &Outage,
    node: u64,
    batch: &[&Append],
    outcomes: &[Result<Appended, StoreError>],
) -> Result<(), StoreError> {
    let mut last: BTreeMap<DocumentId, (UserId, u64)> = BTreeMap::new();
    for (append, outcome) in batch.iter().zip(outcomes) {
        // An append without changes grew nothing (and has no last event).
        if let (Ok(appended), false) = (outcome, append.changes.is_empty()) {
            let seq = appended.first_seq + append.changes.len() as u64 - 1;
            last.insert(append.doc, (append.user, seq));
        }
    }
    if last.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = last
        .into_iter()
        .map(|(doc, (user, seq))| {
            super::doorbell::ring_payload(&crate::store::Ring {
                node,
                user,
                doc,
                seq,
            })
        })
        .collect();
    let notify = tx
        .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .await
        .map_err(|e| classify(e, outage))?;
    tx.execute(&notify, &[&super::doorbell::CHANNEL, &payloads])
        .await
        .map_err(|e| classify(e, outage))?;
    Ok(())
}

/// The usage of `owners`, locked in id order (rows are created at zero
/// first where missing, so that there is a row to lock).
async fn lock_usage(
    tx: &Transaction<'_>,
    outage: &Outage,
    owners: &BTreeSet<UserId>,
) -> Result<BTreeMap<UserId, Usage>, StoreError> {
    let fail = |e| classify(e, outage);
    let keys: Vec<&[u8]> = owners.iter().map(|u| u.as_bytes().as_slice()).collect();
    let ensure = tx
        .prepare_cached(
            "INSERT INTO usage (user_id, documents, bytes) \
             SELECT u, 0, 0 FROM unnest($1::bytea[]) AS u ON CONFLICT (user_id) DO NOTHING",
        )
        .await
        .map_err(fail)?;
    tx.execute(&ensure, &[&keys]).await.map_err(fail)?;
    let select = tx
        .prepare_cached(
            "SELECT user_id, documents, bytes FROM usage WHERE user_id = ANY($1) \
             ORDER BY user_id FOR UPDATE",
        )
        .await
        .map_err(fail)?;
    let mut usage = BTreeMap::new();
    for row in tx.query(&select, &[&keys]).await.map_err(fail)? {
        let user = UserId::from_bytes(id16(row.get(0), "usage")?);
        usage.insert(user, usage_from(row.get(1), row.get(2))?);
    }
    Ok(usage)
}

/// The feed counters of `owners`, locked in id order.
async fn lock_counters(
    tx: &Transaction<'_>,
    outage: &Outage,
    owners: &BTreeSet<UserId>,
) -> Result<BTreeMap<UserId, i64>, StoreError> {
    if owners.is_empty() {
        return Ok(BTreeMap::new());
    }
    let fail = |e| classify(e, outage);
    let keys: Vec<&[u8]> = owners.iter().map(|u| u.as_bytes().as_slice()).collect();
    let ensure = tx
        .prepare_cached(
            "INSERT INTO user_feed_counters (user_id, last_seq) \
             SELECT u, 0 FROM unnest($1::bytea[]) AS u ON CONFLICT (user_id) DO NOTHING",
        )
        .await
        .map_err(fail)?;
    tx.execute(&ensure, &[&keys]).await.map_err(fail)?;
    let select = tx
        .prepare_cached(
            "SELECT user_id, last_seq FROM user_feed_counters WHERE user_id = ANY($1) \
             ORDER BY user_id FOR UPDATE",
        )
        .await
        .map_err(fail)?;
    let mut counters = BTreeMap::new();
    for row in tx.query(&select, &[&keys]).await.map_err(fail)? {
        let user = UserId::from_bytes(id16(row.get(0), "user_feed_counters")?);
        counters.insert(user, row.get::<_, i64>(1));
    }
    Ok(counters)
}

async fn write_events(
    tx: &Transaction<'_>,
    outage: &Outage,
    rows: &Rows<'_>,
) -> Result<(), StoreError> {
    if rows.event_docs.is_empty() {
        return Ok(());
    }
    let fail = |e| classify(e, outage);
    let insert = tx
        .prepare_cached(
            "INSERT INTO events (doc, seq, user_id, session_id, at, change) \
             SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::bytea[], \
             $5::timestamptz[], $6::bytea[])",
        )
        .await
        .map_err(fail)?;
    tx.execute(
        &insert,
        &[
            &rows.event_docs,
            &rows.event_seqs,
            &rows.event_users,
            &rows.event_sessions,
            &rows.event_times,
            &rows.event_changes,
        ],
    )
    .await
    .map_err(fail)?;
    Ok(())
}

async fn write_documents(
    tx: &Transaction<'_>,
    outage: &Outage,
    planned: &HashMap<DocumentId, Planned>,
) -> Result<(), StoreError> {
    let mut docs = Vec::new();
    let mut next_seqs = Vec::new();
    let mut bytes = Vec::new();
    for (doc, plan) in planned.iter().filter(|(_, plan)| plan.touched) {
        docs.push(doc.as_bytes().as_slice());
        next_seqs.push(signed(
            plan.meta.next_seq,
            "documents",
            "next_seq beyond bigint",
        )?);
        bytes.push(signed(plan.meta.bytes, "documents", "bytes beyond bigint")?);
    }
    if docs.is_empty() {
        return Ok(());
    }
    let fail = |e| classify(e, outage);
    let update = tx
        .prepare_cached(
            "UPDATE documents AS d SET next_seq = u.next_seq, bytes = u.bytes \
             FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS u(doc, next_seq, bytes) \
             WHERE d.doc = u.doc",
        )
        .await
        .map_err(fail)?;
    tx.execute(&update, &[&docs, &next_seqs, &bytes])
        .await
        .map_err(fail)?;
    Ok(())
}

async fn write_usage(
    tx: &Transaction<'_>,
    outage: &Outage,
    usage: &BTreeMap<UserId, Usage>,
) -> Result<(), StoreError> {
    if usage.is_empty() {
        return Ok(());
    }
    let mut users = Vec::new();
    let mut documents = Vec::new();
    let mut bytes = Vec::new();
    for (user, used) in usage {
        users.push(user.as_bytes().as_slice());
        documents.push(signed(
            used.documents,
            "usage",
            "document count beyond bigint",
        )?);
        bytes.push(signed(used.bytes, "usage", "byte count beyond bigint")?);
    }
    let fail = |e| classify(e, outage);
    let update = tx
        .prepare_cached(
            "UPDATE usage AS t SET documents = u.documents, bytes = u.bytes \
             FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS u(user_id, documents, bytes) \
             WHERE t.user_id = u.user_id",
        )
        .await
        .map_err(fail)?;
    tx.execute(&update, &[&users, &documents, &bytes])
        .await
        .map_err(fail)?;
    Ok(())
}

async fn write_feed(
    tx: &Transaction<'_>,
    outage: &Outage,
    counters: &BTreeMap<UserId, i64>,
    feed: &BTreeMap<(UserId, DocumentId), i64>,
) -> Result<(), StoreError> {
    if feed.is_empty() {
        return Ok(());
    }
    let fail = |e| classify(e, outage);
    let counter_users: Vec<&[u8]> = counters.keys().map(|u| u.as_bytes().as_slice()).collect();
    let counter_values: Vec<i64> = counters.values().copied().collect();
    let update = tx
        .prepare_cached(
            "UPDATE user_feed_counters AS c SET last_seq = u.last_seq \
             FROM unnest($1::bytea[], $2::bigint[]) AS u(user_id, last_seq) \
             WHERE c.user_id = u.user_id",
        )
        .await
        .map_err(fail)?;
    tx.execute(&update, &[&counter_users, &counter_values])
        .await
        .map_err(fail)?;
    let users: Vec<&[u8]> = feed.keys().map(|(u, _)| u.as_bytes().as_slice()).collect();
    let docs: Vec<&[u8]> = feed.keys().map(|(_, d)| d.as_bytes().as_slice()).collect();
    let seqs: Vec<i64> = feed.values().copied().collect();
    // A document sits once in its owner's feed: a change moves it to the
    // end.
    let upsert = tx
        .prepare_cached(
            "INSERT INTO user_feed (user_id, feed_seq, doc) \
             SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (user_id, doc) DO UPDATE SET feed_seq = EXCLUDED.feed_seq",
        )
        .await
        .map_err(fail)?;
    tx.execute(&upsert, &[&users, &seqs, &docs])
        .await
        .map_err(fail)?;
    Ok(())
}

async fn write_index(
    tx: &Transaction<'_>,
    outage: &Outage,
    index: &BTreeMap<(UserId, DocumentId), &IndexUpdate>,
) -> Result<(), StoreError> {
    let fail = |e| classify(e, outage);
    let mut put_users = Vec::new();
    let mut put_docs = Vec::new();
    let mut put_views: Vec<Json<&TaskView>> = Vec::new();
    let mut removed_users = Vec::new();
    let mut removed_docs = Vec::new();
    for ((user, doc), update) in index {
        match update {
            IndexUpdate::Keep => {}
            IndexUpdate::Put(view) => {
                put_users.push(user.as_bytes().as_slice());
                put_docs.push(doc.as_bytes().as_slice());
                put_views.push(Json(view));
            }
            IndexUpdate::Remove => {
                removed_users.push(user.as_bytes().as_slice());
                removed_docs.push(doc.as_bytes().as_slice());
            }
        }
    }
    if !put_users.is_empty() {
        let upsert = tx
            .prepare_cached(
                "INSERT INTO task_index (user_id, doc, summary) \
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::jsonb[]) \
                 ON CONFLICT (user_id, doc) DO UPDATE SET summary = EXCLUDED.summary",
            )
            .await
            .map_err(fail)?;
        tx.execute(&upsert, &[&put_users, &put_docs, &put_views])
            .await
            .map_err(fail)?;
    }
    if !removed_users.is_empty() {
        let delete = tx
            .prepare_cached(
                "DELETE FROM task_index AS t USING unnest($1::bytea[], $2::bytea[]) \
                 AS u(user_id, doc) WHERE t.user_id = u.user_id AND t.doc = u.doc",
            )
            .await
            .map_err(fail)?;
        tx.execute(&delete, &[&removed_users, &removed_docs])
            .await
            .map_err(fail)?;
    }
    Ok(())
}
