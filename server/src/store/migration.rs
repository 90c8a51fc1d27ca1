//! Moving an embedded (sled) store into an empty PostgreSQL database
//! (`codeedex-server migrate`, issue 14).
//!
//! The embedded engine exports what it keeps page by page, in key order,
//! as the engine-neutral [`Batch`]es below (`embedded/export.rs`); the
//! PostgreSQL engine writes each batch in one transaction with multi-row
//! inserts (`postgres/import.rs`). Pages are bounded by records and bytes,
//! so that neither memory nor a transaction grows with the store.
//!
//! What moves: users (with their contact keys), one-time-code records,
//! sessions with every refresh-token hash of their chains, the audit trail
//! (with its order), documents with every event and its sequence number,
//! snapshots, each user's feed (with its positions, so that a device's
//! catch-up cursor stays valid, and the feed counter set past them), the
//! task index, usage, sync states (so that a device that synced before
//! resyncs with heads only), the server's storage id (the key of every
//! device's own sync state with the server) and the two server keys (so
//! that every token issued before stays valid). What sled keeps only as an
//! index of these (contact keys → users, users → sessions, sessions →
//! refresh tokens, documents → feed positions) PostgreSQL derives from the
//! columns.
//!
//! The database must be empty: the first transaction checks that it holds
//! no user, document or server value and writes the keys and storage id in
//! the same transaction, so that of two concurrent migrations one fails.
//! At the end every kind is counted on both sides, and every document is
//! loaded from both (snapshot and events) and its Automerge heads
//! compared.

use std::path::{Path, PathBuf};

use codeedex_schema::id::{DocumentId, UserId};

use super::embedded::Embedded;
use super::postgres::PgEngine;
use super::quota::Usage;
use super::{
    AuditRecord, DocumentMeta, EventRecord, OtpRecord, RefreshEntry, SessionRecord, StoreError,
    StoreOptions, StoredDocument, UserRecord,
};

/// What the store keeps, kind by kind, in the order the migration copies
/// them (sessions before their refresh tokens, users before what is theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// User accounts.
    Users,
    /// One-time-code records.
    Otp,
    /// Sessions.
    Sessions,
    /// Refresh-token hashes, current and old generations.
    RefreshTokens,
    /// Audit events.
    Audit,
    /// Documents (ownership, tombstone, log position).
    Documents,
    /// Events of the documents' logs (copied with their documents).
    Events,
    /// Snapshots.
    Snapshots,
    /// Entries of the per-user feed.
    Feed,
    /// Task summaries.
    TaskIndex,
    /// Per-user usage records.
    Usage,
    /// Sync states.
    SyncStates,
}

impl Kind {
    /// Every kind, in the order they are copied and reported.
    pub const ALL: [Kind; 12] = [
        Kind::Users,
        Kind::Otp,
        Kind::Sessions,
        Kind::RefreshTokens,
        Kind::Audit,
        Kind::Documents,
        Kind::Events,
        Kind::Snapshots,
        Kind::Feed,
        Kind::TaskIndex,
        Kind::Usage,
        Kind::SyncStates,
    ];

    /// The kind's name in progress lines and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Otp => "otp records",
            Kind::Sessions => "sessions",
            Kind::RefreshTokens => "refresh tokens",
            Kind::Audit => "audit events",
            Kind::Documents => "documents",
            Kind::Events => "events",
            Kind::Snapshots => "snapshots",
            Kind::Feed => "feed entries",
            Kind::TaskIndex => "task summaries",
            Kind::Usage => "usage records",
            Kind::SyncStates => "sync states",
        }
    }
}

/// One page of one kind, as the embedded engine exports it and the
/// PostgreSQL engine imports it.
#[derive(Debug)]
pub(crate) enum Batch {
    Users(Vec<UserRecord>),
    Otp(Vec<(String, OtpRecord)>),
    Sessions(Vec<SessionRecord>),
    RefreshTokens(Vec<([u8; 32], RefreshEntry)>),
    /// Each user's audit events with their sequence in sled, which orders them.
    Audit(Vec<(UserId, u64, AuditRecord)>),
    /// Documents with every event of their logs.
    Documents(Vec<ExportedDocument>),
    /// Snapshots: document, events covered, Automerge bytes.
    Snapshots(Vec<(DocumentId, u64, Vec<u8>)>),
    /// Feed entries: user, feed sequence, document.
    Feed(Vec<(UserId, u64, DocumentId)>),
    /// Task summaries as stored (JSON of whatever shape they were written in).
    TaskIndex(Vec<(UserId, DocumentId, serde_json::Value)>),
    Usage(Vec<(UserId, Usage)>),
    /// Sync states: document, peer storage id, encoded state.
    SyncStates(Vec<(DocumentId, String, Vec<u8>)>),
}

impl Batch {
    /// How many records of its kind the batch holds (documents, not events).
    pub(crate) fn len(&self) -> usize {
        match self {
            Batch::Users(v) => v.len(),
            Batch::Otp(v) => v.len(),
            Batch::Sessions(v) => v.len(),
            Batch::RefreshTokens(v) => v.len(),
            Batch::Audit(v) => v.len(),
            Batch::Documents(v) => v.len(),
            Batch::Snapshots(v) => v.len(),
            Batch::Feed(v) => v.len(),
            Batch::TaskIndex(v) => v.len(),
            Batch::Usage(v) => v.len(),
            Batch::SyncStates(v) => v.len(),
        }
    }
}

/// A document with its whole log.
#[derive(Debug)]
pub(crate) struct ExportedDocument {
    pub(crate) id: DocumentId,
    pub(crate) meta: DocumentMeta,
    pub(crate) events: Vec<EventRecord>,
}

/// How much one page (and so one transaction) holds at most: records of
/// the small kinds, documents, and bytes of documents' logs (a page holds
/// at least one document, however large).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageLimits {
    pub(crate) records: usize,
    pub(crate) documents: usize,
    pub(crate) bytes: u64,
}

const PAGE: PageLimits = PageLimits {
    records: 1000,
    documents: 100,
    bytes: 8 * 1024 * 1024,
};

/// What the migration has done so far, for its progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `copied` records of `kind` are in the database (documents: with
    /// their events), of `total`.
    Copied {
        /// The kind.
        kind: Kind,
        /// Copied so far.
        copied: u64,
        /// How many the embedded store holds.
        total: u64,
    },
    /// `checked` of `total` documents had their heads compared.
    Verified {
        /// Compared so far.
        checked: u64,
        /// Documents to compare.
        total: u64,
    },
}

/// A kind counted on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindCount {
    /// The kind.
    pub kind: Kind,
    /// How many the embedded store holds.
    pub embedded: u64,
    /// How many the database holds after the copy.
    pub postgres: u64,
}

/// What the migration copied and what its verification found.
#[derive(Debug, Clone, Default)]
pub struct MigrationSummary {
    /// Every kind, counted on both sides.
    pub counts: Vec<KindCount>,
    /// Documents whose heads were compared.
    pub documents_checked: u64,
    /// Every difference found, in words; empty when the copy is exact.
    pub mismatches: Vec<String>,
    /// What the database's own consistency check reports after the copy
    /// (a store that was inconsistent before is so after, faithfully).
    pub warnings: Vec<String>,
}

impl MigrationSummary {
    /// Whether both stores hold the same.
    pub fn is_exact(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Why a migration did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The directory holds no embedded store.
    #[error("{0} holds no store (expected a data directory with a `store` subdirectory)")]
    NoStore(PathBuf),
    /// Another process has the embedded store open.
    #[error("the store in {0} is in use by another process: stop the server that runs on it first")]
    InUse(PathBuf),
    /// The database cannot be reached (its cause is logged as a warning).
    #[error("cannot reach the PostgreSQL database")]
    Unreachable,
    /// The database already holds data; nothing was written.
    #[error(
        "the database is not empty ({0}); the migration writes only into an empty database, and wrote nothing"
    )]
    NotEmpty(String),
    /// Either store failed.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

fn failed(what: &'static str) -> impl FnOnce(StoreError) -> MigrationError {
    move |source| MigrationError::Store { what, source }
}

/// Opens the embedded store in `dir` for the migration: it must exist
/// (opening would create an empty one) and no server may have it open.
fn open_embedded(dir: &Path) -> Result<Embedded, MigrationError> {
    if !dir.join("store").is_dir() {
        return Err(MigrationError::NoStore(dir.to_owned()));
    }
    match Embedded::open_with(StoreOptions::new(dir)) {
        Ok(store) => Ok(store),
        // sled holds an exclusive lock on its files while a process has
        // the database open.
        Err(StoreError::Engine(sled::Error::Io(e)))
            if e.to_string().contains("could not acquire lock") =>
        {
            Err(MigrationError::InUse(dir.to_owned()))
        }
        Err(e) => Err(failed("cannot open the embedded store")(e)),
    }
}

/// Copies the embedded store in `from_dir` into the empty PostgreSQL
/// database at `to_url` (never logged), with the server keys `secrets`
/// (name and bytes, as [`super::Store::shared_secret`] names them), then
/// verifies the copy. `progress` hears how far it got.
///
/// Returns the summary whether or not the verification found differences
/// (see [`MigrationSummary::is_exact`]); an error means the copy did not
/// finish (or, for [`MigrationError::NotEmpty`], did not start).
pub async fn migrate(
    from_dir: &Path,
    to_url: &str,
    secrets: &[(&str, [u8; 32])],
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<MigrationSummary, MigrationError> {
    let embedded = open_embedded(from_dir)?;
    let postgres = match PgEngine::connect(to_url, 4).await {
        Ok(postgres) => postgres,
        Err(StoreError::Unavailable) => return Err(MigrationError::Unreachable),
        Err(e) => return Err(failed("cannot open the PostgreSQL database")(e)),
    };
    copy(&embedded, &postgres, secrets, progress).await?;
    verify(&embedded, &postgres, progress).await
}

async fn copy(
    embedded: &Embedded,
    postgres: &PgEngine,
    secrets: &[(&str, [u8; 32])],
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), MigrationError> {
    let storage_id = embedded
        .exported_storage_id()
        .map_err(failed("cannot read the embedded store"))?;
    if let Some(held) = postgres
        .claim_for_migration(secrets, storage_id.as_deref())
        .await
        .map_err(failed("cannot write to the database"))?
    {
        return Err(MigrationError::NotEmpty(held));
    }
    // The one feed entry sled may have numbered 0 (the first id its
    // database generated), which PostgreSQL's feed does not allow; it is
    // appended after the user's others.
    let mut first_feed_entry = None;
    for kind in Kind::ALL {
        if kind == Kind::Events {
            continue;
        }
        let total = embedded
            .count(kind)
            .map_err(failed("cannot read the embedded store"))?;
        let mut after: Option<Vec<u8>> = None;
        let mut copied = 0u64;
        loop {
            let (mut batch, last) = embedded
                .export(kind, after.as_deref(), PAGE)
                .map_err(failed("cannot read the embedded store"))?;
            if batch.len() == 0 {
                break;
            }
            copied += batch.len() as u64;
            if let Batch::Feed(entries) = &mut batch
                && let Some(at) = entries.iter().position(|(_, seq, _)| *seq == 0)
            {
                first_feed_entry = Some(entries.remove(at));
            }
            postgres
                .import(&batch)
                .await
                .map_err(failed("cannot write to the database"))?;
            progress(Progress::Copied {
                kind,
                copied,
                total,
            });
            after = Some(last);
        }
    }
    postgres
        .finish_migration(first_feed_entry)
        .await
        .map_err(failed("cannot write to the database"))?;
    Ok(())
}

async fn verify(
    embedded: &Embedded,
    postgres: &PgEngine,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<MigrationSummary, MigrationError> {
    let mut summary = MigrationSummary::default();
    for kind in Kind::ALL {
        let count = KindCount {
            kind,
            embedded: embedded
                .count(kind)
                .map_err(failed("cannot count in the embedded store"))?,
            postgres: postgres
                .count(kind)
                .await
                .map_err(failed("cannot count in the database"))?,
        };
        if count.embedded != count.postgres {
            summary.mismatches.push(format!(
                "{}: {} in the embedded store, {} in the database",
                kind.name(),
                count.embedded,
                count.postgres
            ));
        }
        summary.counts.push(count);
    }
    let total = embedded
        .count(Kind::Documents)
        .map_err(failed("cannot count in the embedded store"))?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let ids = embedded
            .document_ids(after.as_deref(), PAGE.documents)
            .map_err(failed("cannot read the embedded store"))?;
        let Some(last) = ids.last() else { break };
        after = Some(last.as_bytes().to_vec());
        for id in ids {
            let from = embedded
                .load_document(id)
                .map_err(failed("cannot load a document from the embedded store"))?;
            let to = postgres
                .load_document(id)
                .await
                .map_err(failed("cannot load a document from the database"))?;
            match (heads(&from), heads(&to)) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(a), Ok(b)) => summary.mismatches.push(format!(
                    "document {id}: heads {} in the embedded store, {} in the database",
                    hex_heads(&a),
                    hex_heads(&b)
                )),
                (Err(a), Ok(_)) => summary.warnings.push(format!(
                    "document {id}: does not load from the embedded store either ({a})"
                )),
                (from, to) => summary.mismatches.push(format!(
                    "document {id}: loads as {:?} from the embedded store, as {:?} from the database",
                    from.map(|h| hex_heads(&h)),
                    to.map(|h| hex_heads(&h))
                )),
            }
            summary.documents_checked += 1;
        }
        progress(Progress::Verified {
            checked: summary.documents_checked,
            total,
        });
    }
    summary.warnings.extend(
        postgres
            .verify()
            .await
            .map_err(failed("cannot check the database"))?,
    );
    Ok(summary)
}

/// The heads of a stored document: its snapshot with the events after it
/// applied, as the hub loads it. Loading is contained: the bytes came from
/// disk, and one bad document must not stop the check of the others.
fn heads(stored: &StoredDocument) -> Result<Vec<automerge::ChangeHash>, String> {
    let loaded = std::panic::catch_unwind(|| {
        let mut doc = match &stored.snapshot {
            Some(bytes) => automerge::Automerge::load(bytes)?,
            None => automerge::Automerge::new(),
        };
        for change in &stored.changes {
            doc.load_incremental(change)?;
        }
        Ok::<_, automerge::AutomergeError>(doc.get_heads())
    });
    match loaded {
        Ok(Ok(heads)) => Ok(heads),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("loading panicked".to_owned()),
    }
}

fn hex_heads(heads: &[automerge::ChangeHash]) -> String {
    let hashes: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    format!("[{}]", hashes.join(", "))
}

#[cfg(test)]
mod tests;
