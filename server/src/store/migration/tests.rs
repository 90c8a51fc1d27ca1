//! The migration from a sled store to a fresh PostgreSQL database (the
//! test harness's cluster): a store with accounts and a thousand task
//! documents with history moves whole, reads back the same through the
//! store's interface, and goes on numbering after what it moved; a second
//! run into the now non-empty database is refused and changes nothing; a
//! store that a server has open is refused.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ROOT};
use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::AuditKind;
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::SessionId;
use codeedex_test_postgres::Cluster;

use super::*;
use crate::configuration::limits::Quota;
use crate::store::{Append, IndexUpdate, PendingCode, Store};

const DOCUMENTS: usize = 1000;
const CHANGES_PER_DOCUMENT: usize = 4;
const STORAGE: &str = "device-storage-1";
const SECRETS: [(&str, [u8; 32]); 2] = [("jwt-hs256", [7; 32]), ("hmac-sha256", [8; 32])];

/// Now, to the microsecond PostgreSQL keeps, so that records read back
/// compare equal to those written.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

fn view(title: &str, doc: DocumentId) -> TaskView {
    let task = codeedex_schema::task::Task {
        title: codeedex_schema::task::Title::parse(title).unwrap(),
        notes: Default::default(),
        done: false,
        due: None,
        priority: Default::default(),
        tags: Default::default(),
        created_at: now(),
        updated_at: now(),
        completed_at: None,
    };
    TaskView::new(doc, &task)
}

/// What the test wrote into the sled store, and what it read back from it
/// before the migration, to compare the database with.
struct Written {
    users: Vec<UserRecord>,
    /// Each session as rotated once, with its first and second token hash.
    sessions: Vec<(SessionRecord, [u8; 32], [u8; 32])>,
    documents: Vec<DocumentId>,
    deleted: DocumentId,
    heads: HashMap<DocumentId, Vec<ChangeHash>>,
    feeds: HashMap<UserId, (Vec<DocumentId>, u64)>,
    summaries: HashMap<UserId, Vec<(DocumentId, TaskView)>>,
    audits: HashMap<UserId, Vec<AuditRecord>>,
    storage_id: String,
}

/// One task document with `CHANGES_PER_DOCUMENT` appends of one change
/// each, every tenth with a snapshot after its second change; returns
/// its heads.
async fn write_document(store: Store, doc: DocumentId, owner: UserId, n: usize) -> Vec<ChangeHash> {
    let quota = Quota::default();
    assert!(matches!(
        store
            .claim_document(doc, owner, now(), &quota)
            .await
            .unwrap(),
        crate::store::Claim::Owned(_)
    ));
    let mut replica = AutoCommit::new();
    for version in 0..CHANGES_PER_DOCUMENT {
        let title = format!("task {n} version {version}");
        replica.put(ROOT, "title", title.as_str()).unwrap();
        let change = replica
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec();
        store
            .append_events(Append {
                doc,
                user: owner,
                session: None,
                at: now(),
                changes: vec![change],
                quota,
                index: IndexUpdate::Put(view(&title, doc)),
            })
            .await
            .unwrap();
        if n.is_multiple_of(10) && version == 1 {
            store.write_snapshot(doc, 2, &replica.save()).await.unwrap();
        }
    }
    replica.get_heads()
}

async fn fill(store: &Store) -> Written {
    let users: Vec<UserRecord> = (0..3u8)
        .map(|i| UserRecord {
            id: UserId::from_random_bytes([i + 1; 16]),
            contact_key: format!("email:user{i}@example.com"),
            created_at: now(),
            root_document_id: None,
        })
        .collect();
    for user in &users {
        assert!(store.find_or_create_user(user).await.unwrap().1);
    }
    store
        .update_otp("email:user0@example.com", |_| {
            (
                Some(OtpRecord {
                    pending: Some(PendingCode {
                        hash: "ab".repeat(32),
                        issued_at: now(),
                        attempts: 1,
                    }),
                    sends: vec![now()],
                    failures: vec![now()],
                }),
                (),
            )
        })
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let first = SessionRecord {
            id: SessionId::from_random_bytes([0x40 + i as u8; 16]),
            user_id: user.id,
            device_name: Some(format!("device {i}")),
            created_at: now(),
            last_used_at: now(),
            generation: 0,
            rotated_at: now(),
        };
        let (hash0, hash1) = ([0x50 + i as u8; 32], [0x60 + i as u8; 32]);
        store.insert_session(&first, &hash0).await.unwrap();
        let rotated = SessionRecord {
            generation: 1,
            last_used_at: now(),
            rotated_at: now(),
            ..first
        };
        assert!(store.rotate_session(&rotated, &hash1).await.unwrap());
        sessions.push((rotated, hash0, hash1));
        for kind in [AuditKind::CodeSent, AuditKind::Login, AuditKind::Refresh] {
            let event = AuditRecord {
                at: now(),
                kind,
                session_id: Some(sessions[i].0.id),
                ip: Some("192.0.2.1".to_owned()),
                user_agent: (kind == AuditKind::Login).then(|| "test agent".to_owned()),
            };
            store.append_audit(user.id, &event).await.unwrap();
        }
    }

    let documents: Vec<DocumentId> = (0..DOCUMENTS)
        .map(|n| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            bytes[8] = 0xd0;
            DocumentId::from_random_bytes(bytes)
        })
        .collect();
    let mut writers = tokio::task::JoinSet::new();
    for (n, doc) in documents.iter().enumerate() {
        let (store, doc, owner) = (store.clone(), *doc, users[n % users.len()].id);
        writers.spawn(async move { (doc, write_document(store, doc, owner, n).await) });
    }
    let mut heads = HashMap::new();
    while let Some(written) = writers.join_next().await {
        let (doc, doc_heads) = written.unwrap();
        heads.insert(doc, doc_heads);
    }
    let deleted = documents[7];
    assert!(store.tombstone_document(deleted, now()).await.unwrap());
    for doc in &documents[..50] {
        store
            .put_sync_state(*doc, STORAGE, b"a sync state")
            .await
            .unwrap();
    }
    let storage_id = store
        .server_storage_id(|| "the-server-storage".to_owned())
        .await
        .unwrap();

    let mut feeds = HashMap::new();
    let mut summaries = HashMap::new();
    let mut audits = HashMap::new();
    for user in &users {
        feeds.insert(
            user.id,
            store.changed_since(user.id, 0, 10_000).await.unwrap(),
        );
        summaries.insert(user.id, store.task_summaries(user.id).await.unwrap());
        audits.insert(user.id, store.audit_of(user.id, 100).await.unwrap());
    }
    store.persist().await.unwrap();
    Written {
        users,
        sessions,
        documents,
        deleted,
        heads,
        feeds,
        summaries,
        audits,
        storage_id,
    }
}

fn heads_of(stored: &StoredDocument) -> Vec<ChangeHash> {
    heads(stored).expect("the document loads")
}

async fn counts(url: &str) -> Vec<u64> {
    let engine = PgEngine::connect(url, 2).await.unwrap();
    let mut counts = Vec::new();
    for kind in Kind::ALL {
        counts.push(engine.count(kind).await.unwrap());
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_whole_into_an_empty_database_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = Cluster::shared().database();
    let url = database.url();
    let sled = Store::open(dir.path()).unwrap();
    let written = fill(&sled).await;

    // A store that a server has open is refused, and the database is
    // left alone.
    let mut ignore = |_: Progress| {};
    let refused = migrate(dir.path(), &url, &SECRETS, &mut ignore).await;
    assert!(
        matches!(refused, Err(MigrationError::InUse(_))),
        "{refused:?}"
    );
    drop(sled);

    let mut documents_copied = 0;
    let mut record = |step: Progress| {
        if let Progress::Copied {
            kind: Kind::Documents,
            copied,
            ..
        } = step
        {
            documents_copied = copied;
        }
    };
    let summary = migrate(dir.path(), &url, &SECRETS, &mut record)
        .await
        .unwrap();
    assert!(summary.is_exact(), "{:?}", summary.mismatches);
    assert_eq!(summary.warnings, Vec::<String>::new());
    assert_eq!(summary.documents_checked, DOCUMENTS as u64);
    assert_eq!(documents_copied, DOCUMENTS as u64);
    let count = |kind: Kind| {
        summary
            .counts
            .iter()
            .find(|c| c.kind == kind)
            .map(|c| (c.embedded, c.postgres))
            .unwrap()
    };
    assert_eq!(count(Kind::Users), (3, 3));
    assert_eq!(count(Kind::Sessions), (3, 3));
    assert_eq!(count(Kind::RefreshTokens), (6, 6));
    assert_eq!(count(Kind::Audit), (9, 9));
    assert_eq!(count(Kind::Documents), (1000, 1000));
    assert_eq!(count(Kind::Events), (4000, 4000));
    assert_eq!(count(Kind::Snapshots), (100, 100));
    assert_eq!(count(Kind::SyncStates), (50, 50));
    // The deleted document left the index but stays in the feed.
    assert_eq!(count(Kind::TaskIndex), (999, 999));
    assert_eq!(count(Kind::Feed), (1000, 1000));

    // Read back through the store's interface, the database holds what
    // the sled store held.
    let pg = Store::connect(&url, 4).await.unwrap();
    for (doc, heads) in &written.heads {
        assert_eq!(
            &heads_of(&pg.load_document(*doc).await.unwrap()),
            heads,
            "{doc}"
        );
    }
    let snapshotted = pg.load_document(written.documents[10]).await.unwrap();
    assert_eq!(snapshotted.snapshot_covers, 2);
    assert_eq!(snapshotted.changes.len(), CHANGES_PER_DOCUMENT - 2);
    assert!(
        pg.document_meta(written.deleted)
            .await
            .unwrap()
            .unwrap()
            .deleted_at
            .is_some()
    );
    for user in &written.users {
        assert_eq!(pg.user(user.id).await.unwrap().as_ref(), Some(user));
        assert_eq!(
            pg.user_by_contact(&user.contact_key)
                .await
                .unwrap()
                .as_ref(),
            Some(user)
        );
        assert_eq!(
            pg.changed_since(user.id, 0, 10_000).await.unwrap(),
            written.feeds[&user.id]
        );
        assert_eq!(
            pg.task_summaries(user.id).await.unwrap(),
            written.summaries[&user.id]
        );
        assert_eq!(
            pg.audit_of(user.id, 100).await.unwrap(),
            written.audits[&user.id]
        );
    }
    for (session, hash0, hash1) in &written.sessions {
        assert_eq!(
            pg.session(session.id).await.unwrap().as_ref(),
            Some(session)
        );
        for (hash, generation) in [(hash0, 0), (hash1, 1)] {
            let entry = pg.refresh_entry(hash).await.unwrap().unwrap();
            assert_eq!(
                (entry.session_id, entry.generation),
                (session.id, generation)
            );
        }
    }
    let otp = pg
        .update_otp("email:user0@example.com", |r| (r.clone(), r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(otp.pending.unwrap().attempts, 1);
    assert_eq!(
        pg.sync_state(written.documents[0], STORAGE).await.unwrap(),
        Some(b"a sync state".to_vec())
    );
    assert_eq!(
        pg.server_storage_id(|| "another".to_owned()).await.unwrap(),
        written.storage_id
    );
    for (name, key) in SECRETS {
        assert_eq!(pg.shared_secret(name, [0; 32]).await.unwrap(), key);
    }
    assert_eq!(pg.verify().await.unwrap(), Vec::<String>::new());

    // What the database numbers next follows what was moved: a change
    // lands after the document's last event and the user's last feed
    // position, and a new audit event is the newest.
    let user = written.users[0].id;
    let (_, cursor) = &written.feeds[&user];
    let doc = written.documents[3];
    let stored = pg.load_document(doc).await.unwrap();
    let mut replica = match &stored.snapshot {
        Some(snapshot) => AutoCommit::load(snapshot).unwrap(),
        None => AutoCommit::new(),
    };
    for change in &stored.changes {
        replica.load_incremental(change).unwrap();
    }
    replica.put(ROOT, "title", "after the move").unwrap();
    let (appended, _) = pg
        .append_events(Append {
            doc,
            user,
            session: None,
            at: now(),
            changes: vec![
                replica
                    .get_last_local_change()
                    .unwrap()
                    .raw_bytes()
                    .to_vec(),
            ],
            quota: Quota::default(),
            index: IndexUpdate::Keep,
        })
        .await
        .unwrap();
    assert_eq!(appended.first_seq, CHANGES_PER_DOCUMENT as u64);
    assert!(appended.feed_seq > *cursor);
    assert_eq!(
        pg.changed_since(user, *cursor, 10).await.unwrap(),
        (vec![doc], appended.feed_seq)
    );
    let event = AuditRecord {
        at: now(),
        kind: AuditKind::Logout,
        session_id: None,
        ip: None,
        user_agent: None,
    };
    pg.append_audit(user, &event).await.unwrap();
    assert_eq!(pg.audit_of(user, 1).await.unwrap(), vec![event]);

    // A second run into the now non-empty database is refused and writes
    // nothing.
    let before = counts(&url).await;
    let again = migrate(dir.path(), &url, &SECRETS, &mut ignore).await;
    assert!(
        matches!(&again, Err(MigrationError::NotEmpty(held)) if held.contains("3 users")),
        "{again:?}"
    );
    assert_eq!(counts(&url).await, before);

    // The check finds a copy that lost events: the counts differ (by one:
    // the database also took one more above), and so do the heads of the
    // document they belonged to.
    let damaged = written.documents[20];
    Cluster::shared().psql(
        database.name(),
        &format!(
            "DELETE FROM events WHERE doc = '\\x{}' AND seq >= 2",
            hex::encode(damaged.as_bytes()),
        ),
    );
    let embedded = Embedded::open(dir.path()).unwrap();
    let postgres = PgEngine::connect(&url, 2).await.unwrap();
    let checked = verify(&embedded, &postgres, &mut ignore).await.unwrap();
    assert!(!checked.is_exact());
    assert!(
        checked
            .mismatches
            .iter()
            .any(|m| m.starts_with(&format!("document {damaged}: heads"))),
        "{:?}",
        checked.mismatches
    );
    assert!(
        checked.mismatches.iter().any(|m| m.starts_with("events:")),
        "{:?}",
        checked.mismatches
    );
}

#[tokio::test]
async fn a_directory_without_a_store_is_refused_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let database = Cluster::shared().database();
    let mut ignore = |_: Progress| {};
    let refused = migrate(dir.path(), &database.url(), &SECRETS, &mut ignore).await;
    assert!(
        matches!(refused, Err(MigrationError::NoStore(_))),
        "{refused:?}"
    );
    assert!(!dir.path().join("store").exists());
}

#[tokio::test]
async fn a_feed_entry_numbered_zero_moves_after_the_users_others() {
    // sled numbers feed entries from its database-wide id generator, whose
    // first id is 0; PostgreSQL's feed starts at 1. A store whose first
    // write was an append has such an entry.
    let dir = tempfile::tempdir().unwrap();
    let database = Cluster::shared().database();
    let sled = Store::open(dir.path()).unwrap();
    let user = UserId::from_random_bytes([9; 16]);
    let (first, second) = (
        DocumentId::from_random_bytes([0xa1; 16]),
        DocumentId::from_random_bytes([0xa2; 16]),
    );
    // One append to the first document takes id 0; the second document's
    // appends come after it.
    let quota = Quota::default();
    sled.claim_document(first, user, now(), &quota)
        .await
        .unwrap();
    let mut replica = AutoCommit::new();
    replica.put(ROOT, "title", "first").unwrap();
    let (appended, _) = sled
        .append_events(Append {
            doc: first,
            user,
            session: None,
            at: now(),
            changes: vec![
                replica
                    .get_last_local_change()
                    .unwrap()
                    .raw_bytes()
                    .to_vec(),
            ],
            quota,
            index: IndexUpdate::Keep,
        })
        .await
        .unwrap();
    assert_eq!(appended.feed_seq, 0);
    write_document(sled.clone(), second, user, 1).await;
    let (sled_docs, sled_last) = sled.changed_since(user, 0, 10).await.unwrap();
    // sled never shows the entry numbered 0: "changed after 0" starts at 1.
    assert_eq!(sled_docs, vec![second]);
    sled.persist().await.unwrap();
    drop(sled);
    let mut ignore = |_: Progress| {};
    let summary = migrate(dir.path(), &database.url(), &SECRETS, &mut ignore)
        .await
        .unwrap();
    assert!(summary.is_exact(), "{:?}", summary.mismatches);

    let pg = Store::connect(&database.url(), 2).await.unwrap();
    let (docs, last) = pg.changed_since(user, 0, 10).await.unwrap();
    assert_eq!(docs, vec![second, first]);
    assert!(last > sled_last, "{last} after {sled_last}");
    // The entry sled numbered 0 comes after the user's others: a device
    // at any cursor catches up on it, where sled never showed it.
    assert_eq!(
        pg.changed_since(user, sled_last, 10).await.unwrap(),
        (vec![first], last)
    );
}
