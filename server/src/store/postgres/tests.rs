//! The PostgreSQL engine against a real PostgreSQL (the test harness's
//! cluster, a fresh database per test): the sled engine's store tests that
//! apply, and the races that PostgreSQL settles across nodes.

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::AuditKind;
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_test_postgres::{Cluster, TestDatabase};

use super::PgEngine;
use super::appends::write_with_retries;
use crate::configuration::limits::Quota;
use crate::store::quota::{QuotaExceeded, Usage};
use crate::store::{
    Append, AuditRecord, Claim, IndexUpdate, OtpRecord, SessionRecord, StoreError, StoreHealth,
    UserRecord,
};

/// A fresh database and an engine on it.
async fn engine() -> (TestDatabase, PgEngine) {
    let db = Cluster::shared().database();
    let engine = PgEngine::connect(&db.url(), 8).await.expect("connects");
    (db, engine)
}

/// Now, to the microsecond PostgreSQL keeps, so that records read back
/// compare equal to those written.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

fn user(contact: &str, byte: u8) -> UserRecord {
    UserRecord {
        id: UserId::from_random_bytes([byte; 16]),
        contact_key: contact.to_owned(),
        created_at: now(),
        root_document_id: None,
    }
}

fn ids() -> (UserId, UserId, DocumentId, DocumentId) {
    (
        UserId::from_random_bytes([1; 16]),
        UserId::from_random_bytes([2; 16]),
        DocumentId::from_random_bytes([3; 16]),
        DocumentId::from_random_bytes([4; 16]),
    )
}

fn doc(byte: u8) -> DocumentId {
    DocumentId::from_random_bytes([byte; 16])
}

fn append_of(doc: DocumentId, user: UserId, changes: &[Vec<u8>], quota: &Quota) -> Append {
    Append {
        doc,
        user,
        session: None,
        at: now(),
        changes: changes.to_vec(),
        quota: *quota,
        index: IndexUpdate::Keep,
    }
}

async fn append(
    engine: &PgEngine,
    doc: DocumentId,
    user: UserId,
    changes: &[Vec<u8>],
    quota: &Quota,
) -> Result<u64, StoreError> {
    engine
        .append(append_of(doc, user, changes, quota))
        .await
        .map(|appended| appended.feed_seq)
}

fn view(title: &str, doc: DocumentId) -> TaskView {
    let task = codeedex_schema::task::Task {
        title: codeedex_schema::task::Title::parse(title).unwrap(),
        notes: Default::default(),
        done: false,
        due: None,
        priority: Default::default(),
        tags: Default::default(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
        completed_at: None,
    };
    TaskView::new(doc, &task)
}

fn session(byte: u8, owner: UserId) -> SessionRecord {
    SessionRecord {
        id: SessionId::from_random_bytes([byte; 16]),
        user_id: owner,
        device_name: Some(format!("device {byte}")),
        created_at: now(),
        last_used_at: now(),
        generation: 0,
        rotated_at: now(),
    }
}

// Accounts.

#[tokio::test]
async fn find_or_create_user_creates_once() {
    let (_db, engine) = engine().await;
    let (first, created) = engine
        .find_or_create_user(&user("email:a@b.co", 1))
        .await
        .unwrap();
    assert!(created);
    let (second, created) = engine
        .find_or_create_user(&user("email:a@b.co", 2))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(first, second);
    assert_eq!(engine.user(first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(
        engine.user_by_contact("email:a@b.co").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(engine.user_by_contact("email:x@b.co").await.unwrap(), None);

    let mut changed = first.clone();
    changed.root_document_id = Some(doc(9));
    engine.put_user(&changed).await.unwrap();
    assert_eq!(engine.user(first.id).await.unwrap(), Some(changed));
}

#[tokio::test]
async fn the_first_root_document_written_stays_the_root() {
    let (_db, engine) = engine().await;
    let (ann, _) = engine
        .find_or_create_user(&user("email:ann@example.com", 1))
        .await
        .unwrap();
    let (one, two) = (doc(21), doc(22));
    let (first, second) = tokio::join!(
        engine.set_root_document(ann.id, one),
        engine.set_root_document(ann.id, two)
    );
    let winner = first.unwrap().unwrap();
    assert_eq!(second.unwrap(), Some(winner), "both writers agree");
    assert!(winner == one || winner == two);
    assert_eq!(
        engine.set_root_document(ann.id, doc(23)).await.unwrap(),
        Some(winner)
    );
    assert_eq!(
        engine.user(ann.id).await.unwrap().unwrap().root_document_id,
        Some(winner)
    );
    assert_eq!(
        engine
            .set_root_document(UserId::from_random_bytes([99; 16]), one)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sign_ins_of_one_contact_create_one_user() {
    let (_db, engine) = engine().await;
    let tasks: Vec<_> = (0..8u8)
        .map(|byte| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .find_or_create_user(&user("email:race@b.co", byte + 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (user, was_created) = task.await.unwrap();
        created += usize::from(was_created);
        ids.insert(user.id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "every sign-in sees the one user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otp_updates_are_atomic_under_contention() {
    let (_db, engine) = engine().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    engine
                        .update_otp("email:a@b.co", |r| {
                            let mut r = r.unwrap_or_default();
                            r.failures.push(Utc::now());
                            (Some(r), ())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let count = engine
        .update_otp("email:a@b.co", |r| (r.clone(), r.unwrap().failures.len()))
        .await
        .unwrap();
    assert_eq!(count, 400);
}

#[tokio::test]
async fn an_otp_record_is_replaced_and_removed() {
    let (_db, engine) = engine().await;
    let missing = engine
        .update_otp("phone:+4412345", |r| (None, r.is_none()))
        .await
        .unwrap();
    assert!(missing, "there is no record before the first update");
    let record = OtpRecord {
        pending: None,
        sends: vec![Utc::now()],
        failures: Vec::new(),
    };
    let before = engine
        .update_otp("phone:+4412345", |r| (Some(record.clone()), r))
        .await
        .unwrap();
    assert_eq!(
        before, None,
        "nothing was stored by a change that kept None"
    );
    let stored = engine
        .update_otp("phone:+4412345", |r| (None, r))
        .await
        .unwrap();
    assert_eq!(stored, Some(record));
    let after = engine
        .update_otp("phone:+4412345", |r| (r.clone(), r))
        .await
        .unwrap();
    assert_eq!(after, None, "the record was removed");
}

#[tokio::test]
async fn sessions_keep_their_refresh_chain_until_deleted() {
    let (_db, engine) = engine().await;
    let (ann, bob, _, _) = ids();
    let first = session(10, ann);
    engine.insert_session(&first, &[1; 32]).await.unwrap();
    engine
        .insert_session(&session(11, ann), &[2; 32])
        .await
        .unwrap();
    engine
        .insert_session(&session(12, bob), &[3; 32])
        .await
        .unwrap();
    assert_eq!(engine.session(first.id).await.unwrap(), Some(first.clone()));

    let mut rotated = first.clone();
    rotated.generation = 1;
    rotated.rotated_at = now();
    assert!(engine.rotate_session(&rotated, &[4; 32]).await.unwrap());
    assert!(
        !engine.rotate_session(&rotated, &[5; 32]).await.unwrap(),
        "a rotation from a generation that is gone fails"
    );
    assert_eq!(
        engine.session(first.id).await.unwrap(),
        Some(rotated.clone())
    );
    let old = engine.refresh_entry(&[1; 32]).await.unwrap().unwrap();
    assert_eq!((old.session_id, old.generation), (first.id, 0));
    let new = engine.refresh_entry(&[4; 32]).await.unwrap().unwrap();
    assert_eq!((new.session_id, new.generation), (first.id, 1));
    assert_eq!(engine.refresh_entry(&[5; 32]).await.unwrap(), None);

    let mut of_ann: Vec<SessionId> = engine
        .sessions_of(ann)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    of_ann.sort();
    assert_eq!(
        of_ann,
        vec![first.id, SessionId::from_random_bytes([11; 16])]
    );

    assert!(engine.delete_session(first.id).await.unwrap());
    assert!(!engine.delete_session(first.id).await.unwrap());
    assert_eq!(engine.session(first.id).await.unwrap(), None);
    assert_eq!(engine.refresh_entry(&[1; 32]).await.unwrap(), None);
    assert_eq!(engine.refresh_entry(&[4; 32]).await.unwrap(), None);
    assert_eq!(engine.sessions_of(ann).await.unwrap().len(), 1);
    assert!(engine.refresh_entry(&[3; 32]).await.unwrap().is_some());
    let mut gone = session(13, ann);
    gone.generation = 1;
    assert!(
        !engine.rotate_session(&gone, &[6; 32]).await.unwrap(),
        "a session that does not exist is not rotated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_rotations_of_one_session_exactly_one_wins() {
    let (_db, engine) = engine().await;
    let (ann, _, _, _) = ids();
    for round in 0..5u8 {
        let base = session(20 + round, ann);
        engine.insert_session(&base, &[round; 32]).await.unwrap();
        let tasks: Vec<_> = (0..6u8)
            .map(|n| {
                let (engine, mut next) = (engine.clone(), base.clone());
                next.generation = 1;
                next.device_name = Some(format!("rotation {n}"));
                tokio::spawn(async move {
                    let hash = [100 + round * 10 + n; 32];
                    (n, engine.rotate_session(&next, &hash).await.unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (n, won) = task.await.unwrap();
            if won {
                winners.push(n);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let winner = winners[0];
        let stored = engine.session(base.id).await.unwrap().unwrap();
        assert_eq!(stored.generation, 1);
        assert_eq!(stored.device_name, Some(format!("rotation {winner}")));
        for n in 0..6u8 {
            let entry = engine
                .refresh_entry(&[100 + round * 10 + n; 32])
                .await
                .unwrap();
            assert_eq!(entry.is_some(), n == winner, "round {round}, rotation {n}");
        }
    }
}

#[tokio::test]
async fn the_audit_trail_lists_the_newest_first() {
    let (_db, engine) = engine().await;
    let (ann, bob, _, _) = ids();
    let event = |kind, ip: &str| AuditRecord {
        at: now(),
        kind,
        session_id: Some(SessionId::from_random_bytes([7; 16])),
        ip: Some(ip.to_owned()),
        user_agent: None,
    };
    let events = [
        event(AuditKind::CodeRequested, "1"),
        event(AuditKind::Login, "2"),
        event(AuditKind::ReuseDetected, "3"),
    ];
    for e in &events {
        engine.append_audit(ann, e).await.unwrap();
    }
    engine
        .append_audit(bob, &event(AuditKind::Logout, "4"))
        .await
        .unwrap();
    assert_eq!(
        engine.audit_of(ann, 2).await.unwrap(),
        vec![events[2].clone(), events[1].clone()]
    );
    assert_eq!(engine.audit_of(bob, 10).await.unwrap().len(), 1);
}

// Documents.

#[tokio::test]
async fn the_first_claimant_owns_a_document() {
    let (_db, engine) = engine().await;
    let (ann, bob, doc, _) = ids();
    let quota = Quota::default();
    assert!(matches!(
        engine
            .claim_document(doc, ann, now(), &quota)
            .await
            .unwrap(),
        Claim::Owned(_)
    ));
    assert_eq!(
        engine
            .claim_document(doc, bob, now(), &quota)
            .await
            .unwrap(),
        Claim::Unavailable
    );
    assert!(matches!(
        engine
            .claim_document(doc, ann, now(), &quota)
            .await
            .unwrap(),
        Claim::Owned(_)
    ));
    let meta = engine.document_meta(doc).await.unwrap().unwrap();
    assert_eq!((meta.owner, meta.next_seq, meta.bytes), (ann, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_users_claiming_a_new_document_at_once_exactly_one_owns_it() {
    let (_db, engine) = engine().await;
    let (ann, bob, _, _) = ids();
    for byte in 0..20u8 {
        let doc = doc(100 + byte);
        let claim = |user| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .claim_document(doc, user, now(), &Quota::default())
                    .await
                    .unwrap()
            })
        };
        let (a, b) = (claim(ann), claim(bob));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let owners: Vec<UserId> = [(ann, &a), (bob, &b)]
            .into_iter()
            .filter(|(_, claim)| matches!(claim, Claim::Owned(_)))
            .map(|(user, _)| user)
            .collect();
        assert_eq!(owners.len(), 1, "{a:?} {b:?}");
        assert!(matches!(a, Claim::Owned(_) | Claim::Unavailable));
        assert!(matches!(b, Claim::Owned(_) | Claim::Unavailable));
        let meta = engine.document_meta(doc).await.unwrap().unwrap();
        assert_eq!(meta.owner, owners[0]);
    }
    let counted =
        engine.usage(ann).await.unwrap().documents + engine.usage(bob).await.unwrap().documents;
    assert_eq!(counted, 20, "each document is counted once, for its owner");
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn events_append_in_order_and_reload_after_a_snapshot() {
    let (_db, engine) = engine().await;
    let (ann, _, doc, _) = ids();
    let quota = Quota::default();
    engine
        .claim_document(doc, ann, now(), &quota)
        .await
        .unwrap();
    append(&engine, doc, ann, &[b"a".to_vec(), b"b".to_vec()], &quota)
        .await
        .unwrap();
    append(&engine, doc, ann, &[b"c".to_vec()], &quota)
        .await
        .unwrap();
    assert_eq!(
        engine.load_document(doc).await.unwrap().changes,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    engine.write_snapshot(doc, 2, b"snap").await.unwrap();
    let loaded = engine.load_document(doc).await.unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"snap"[..]));
    assert_eq!(loaded.snapshot_covers, 2);
    assert_eq!(loaded.changes, vec![b"c".to_vec()]);
    let events = engine.events_of(doc).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    let later = engine.events_from(doc, 1).await.unwrap();
    assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(engine.events_from(doc, 3).await.unwrap().is_empty());
    assert!(engine.events_from(doc, u64::MAX).await.unwrap().is_empty());
    assert!(events.iter().all(|e| e.user == ann && e.session.is_none()));
    assert_eq!(events[2].change, b"c".to_vec());
}

#[tokio::test]
async fn the_feed_lists_each_changed_document_once_in_order_of_last_change() {
    let (_db, engine) = engine().await;
    let (ann, _, d1, d2) = ids();
    let quota = Quota::default();
    engine.claim_document(d1, ann, now(), &quota).await.unwrap();
    engine.claim_document(d2, ann, now(), &quota).await.unwrap();
    let first = append(&engine, d1, ann, &[b"1".to_vec()], &quota)
        .await
        .unwrap();
    append(&engine, d2, ann, &[b"2".to_vec()], &quota)
        .await
        .unwrap();
    append(&engine, d1, ann, &[b"3".to_vec()], &quota)
        .await
        .unwrap();
    let (docs, cursor) = engine.changed_since(ann, 0, 100).await.unwrap();
    assert_eq!(docs, vec![d2, d1]);
    assert_eq!(
        engine.changed_since(ann, cursor, 100).await.unwrap(),
        (Vec::new(), cursor)
    );
    assert_eq!(
        engine.changed_since(ann, first, 100).await.unwrap().0,
        vec![d2, d1]
    );
    let (page, next) = engine.changed_since(ann, 0, 1).await.unwrap();
    assert_eq!(page, vec![d2]);
    assert_eq!(
        engine.changed_since(ann, next, 1).await.unwrap().0,
        vec![d1]
    );
}

#[tokio::test]
async fn usage_follows_claims_appends_and_deletes_and_quotas_hold() {
    let (_db, engine) = engine().await;
    let (ann, _, d1, d2) = ids();
    let quota = Quota {
        documents_per_user: 1,
        bytes_per_user: 10,
        bytes_per_document: 10,
    };
    engine.claim_document(d1, ann, now(), &quota).await.unwrap();
    assert_eq!(
        engine.claim_document(d2, ann, now(), &quota).await.unwrap(),
        Claim::OverQuota(QuotaExceeded::Documents { limit: 1 })
    );
    assert_eq!(
        engine.document_meta(d2).await.unwrap(),
        None,
        "a claim over quota leaves the document unowned"
    );
    append(&engine, d1, ann, &[vec![0; 6]], &quota)
        .await
        .unwrap();
    assert!(matches!(
        append(&engine, d1, ann, &[vec![0; 5]], &quota).await,
        Err(StoreError::QuotaExceeded(
            QuotaExceeded::DocumentBytes { .. }
        ))
    ));
    assert_eq!(
        engine.load_document(d1).await.unwrap().changes.len(),
        1,
        "nothing of a refused append is kept"
    );
    assert_eq!(
        engine.usage(ann).await.unwrap(),
        Usage {
            documents: 1,
            bytes: 6
        }
    );
    assert!(engine.tombstone_document(d1, now()).await.unwrap());
    assert!(
        !engine.tombstone_document(d1, now()).await.unwrap(),
        "a document is deleted once"
    );
    assert_eq!(engine.usage(ann).await.unwrap(), Usage::default());
    assert!(matches!(
        engine.claim_document(d2, ann, now(), &quota).await.unwrap(),
        Claim::Owned(_)
    ));
    assert!(!engine.tombstone_document(doc(77), now()).await.unwrap());
}

#[tokio::test]
async fn a_deleted_document_takes_no_changes_and_leaves_the_task_list() {
    let (_db, engine) = engine().await;
    let (ann, _, d1, _) = ids();
    let quota = Quota::default();
    engine.claim_document(d1, ann, now(), &quota).await.unwrap();
    let task = view("a task", d1);
    let mut put = append_of(d1, ann, &[b"x".to_vec()], &quota);
    put.index = IndexUpdate::Put(task.clone());
    engine.append(put).await.unwrap();
    assert_eq!(engine.task_summaries(ann).await.unwrap(), vec![(d1, task)]);
    let mut unlisted = append_of(d1, ann, &[b"y".to_vec()], &quota);
    unlisted.index = IndexUpdate::Remove;
    engine.append(unlisted).await.unwrap();
    assert!(engine.task_summaries(ann).await.unwrap().is_empty());
    let mut again = append_of(d1, ann, &[b"z".to_vec()], &quota);
    again.index = IndexUpdate::Put(view("again", d1));
    engine.append(again).await.unwrap();
    assert_eq!(engine.task_summaries(ann).await.unwrap().len(), 1);
    assert!(engine.tombstone_document(d1, now()).await.unwrap());
    assert!(engine.task_summaries(ann).await.unwrap().is_empty());
    assert!(matches!(
        append(&engine, d1, ann, &[b"y".to_vec()], &quota).await,
        Err(StoreError::DocumentDeleted)
    ));
    assert_eq!(
        engine.claim_document(d1, ann, now(), &quota).await.unwrap(),
        Claim::Unavailable,
        "a deleted document is unavailable even to its owner"
    );
    assert!(matches!(
        append(&engine, doc(55), ann, &[b"z".to_vec()], &quota).await,
        Err(StoreError::Malformed { .. })
    ));
}

#[tokio::test]
async fn a_group_of_appends_is_one_transaction_with_an_outcome_each() {
    let (_db, engine) = engine().await;
    let (ann, bob, d1, d2) = ids();
    let (d3, d4) = (doc(5), doc(6));
    let quota = Quota {
        documents_per_user: 10,
        bytes_per_user: 10,
        bytes_per_document: 10,
    };
    for (doc, owner) in [(d1, ann), (d2, ann), (d3, bob), (d4, bob)] {
        engine
            .claim_document(doc, owner, now(), &quota)
            .await
            .unwrap();
    }
    engine.tombstone_document(d4, now()).await.unwrap();
    let with = |doc, user, bytes: usize, index| Append {
        index,
        ..append_of(doc, user, &[vec![7; bytes]], &quota)
    };
    let (v1, v2, v3) = (view("first", d1), view("second", d2), view("bob's", d3));
    let batch = [
        with(d1, ann, 6, IndexUpdate::Put(v1.clone())),
        // Ann's second append of the group counts with her first: over her 10 bytes.
        with(d2, ann, 6, IndexUpdate::Put(v2)),
        with(d3, bob, 4, IndexUpdate::Put(v3.clone())),
        with(d4, bob, 1, IndexUpdate::Keep),
        with(doc(66), bob, 1, IndexUpdate::Keep),
    ];
    let outcomes = write_with_retries(
        &engine.pool,
        &engine.outage,
        &batch.iter().collect::<Vec<_>>(),
        engine.node(),
    )
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 5);
    let landed = |n: usize| outcomes[n].as_ref().ok().map(|a| (a.first_seq, a.feed_seq));
    assert_eq!(landed(0), Some((0, 1)));
    assert!(matches!(
        outcomes[1],
        Err(StoreError::QuotaExceeded(QuotaExceeded::UserBytes { .. }))
    ));
    assert_eq!(landed(2), Some((0, 1)), "bob's feed counts apart");
    assert!(matches!(outcomes[3], Err(StoreError::DocumentDeleted)));
    assert!(matches!(outcomes[4], Err(StoreError::Malformed { .. })));
    // What was accepted is written whole, with its index entry; nothing of
    // what was refused is.
    assert_eq!(engine.load_document(d1).await.unwrap().changes.len(), 1);
    assert!(engine.load_document(d2).await.unwrap().changes.is_empty());
    assert_eq!(engine.load_document(d3).await.unwrap().changes.len(), 1);
    assert!(engine.load_document(d4).await.unwrap().changes.is_empty());
    assert_eq!(engine.task_summaries(ann).await.unwrap(), vec![(d1, v1)]);
    assert_eq!(engine.task_summaries(bob).await.unwrap(), vec![(d3, v3)]);
    assert_eq!(engine.usage(ann).await.unwrap().bytes, 6);
    assert_eq!(engine.changed_since(ann, 0, 10).await.unwrap().0, vec![d1]);
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_batch_of_several_documents_and_users_numbers_without_gaps() {
    let (_db, engine) = engine().await;
    let (ann, bob, _, _) = ids();
    let quota = Quota::default();
    let docs: Vec<(DocumentId, UserId)> = (0..6u8)
        .map(|n| (doc(30 + n), if n % 2 == 0 { ann } else { bob }))
        .collect();
    for (doc, owner) in &docs {
        engine
            .claim_document(*doc, *owner, now(), &quota)
            .await
            .unwrap();
    }
    // One earlier append each, so that the batch continues numbers.
    for (doc, owner) in &docs[..2] {
        append(&engine, *doc, *owner, &[b"before".to_vec()], &quota)
            .await
            .unwrap();
    }
    // Three rounds over every document, the appends of one round in one
    // transaction; each append carries two changes.
    let batch: Vec<Append> = (0..3)
        .flat_map(|round| {
            docs.iter().map(move |(doc, owner)| {
                append_of(
                    *doc,
                    *owner,
                    &[vec![round; 3], vec![round + 10; 2]],
                    &Quota::default(),
                )
            })
        })
        .collect();
    let outcomes = write_with_retries(
        &engine.pool,
        &engine.outage,
        &batch.iter().collect::<Vec<_>>(),
        engine.node(),
    )
    .await
    .unwrap();
    let landed: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    let feed_seqs: Vec<u64> = landed.iter().map(|a| a.feed_seq).collect();
    // Each append's events follow the document's earlier ones: two a round.
    for (n, appended) in landed.iter().enumerate() {
        let (round, d) = ((n / docs.len()) as u64, n % docs.len());
        let before = if d < 2 { 1 } else { 0 };
        assert_eq!(appended.first_seq, before + 2 * round, "append {n}");
    }
    // Ann had one feed sequence before (doc 30), Bob one (doc 31): each
    // user's appends in the batch continue from there, in batch order.
    let of = |user| {
        batch
            .iter()
            .zip(&feed_seqs)
            .filter(|(a, _)| docs.iter().any(|(d, o)| *d == a.doc && *o == user))
            .map(|(_, seq)| *seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(ann), (2..=10).collect::<Vec<_>>());
    assert_eq!(of(bob), (2..=10).collect::<Vec<_>>());
    for (n, (doc, _)) in docs.iter().enumerate() {
        let seqs: Vec<u64> = engine
            .events_of(*doc)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let expected = if n < 2 { 7 } else { 6 };
        assert_eq!(seqs, (0..expected).collect::<Vec<_>>(), "document {n}");
    }
    // Each document once in its owner's feed, in order of last change.
    let (ann_feed, cursor) = engine.changed_since(ann, 0, 100).await.unwrap();
    assert_eq!(ann_feed, vec![docs[0].0, docs[2].0, docs[4].0]);
    assert_eq!(cursor, 10);
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_numbered_without_gaps_and_each_answered() {
    let (_db, engine) = engine().await;
    let (ann, bob, _, _) = ids();
    let quota = Quota::default();
    let docs: Vec<(DocumentId, UserId)> = (0..4u8)
        .map(|n| (doc(40 + n), if n < 2 { ann } else { bob }))
        .collect();
    for (doc, owner) in &docs {
        engine
            .claim_document(*doc, *owner, now(), &quota)
            .await
            .unwrap();
    }
    let writers: Vec<_> = docs
        .iter()
        .flat_map(|&(doc, owner)| (0..3).map(move |writer| (doc, owner, writer)))
        .map(|(doc, owner, writer)| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..20u8 {
                    seqs.push(
                        append(&engine, doc, owner, &[vec![writer, n]], &Quota::default())
                            .await
                            .unwrap(),
                    );
                }
                (owner, seqs)
            })
        })
        .collect();
    let mut feed: std::collections::HashMap<UserId, Vec<u64>> = Default::default();
    for writer in writers {
        let (owner, seqs) = writer.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        feed.entry(owner).or_default().extend(seqs);
    }
    for (_, mut seqs) in feed {
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=120).collect::<Vec<_>>(),
            "one feed sequence per append"
        );
    }
    for (doc, _) in &docs {
        let seqs: Vec<u64> = engine
            .events_of(*doc)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (0..60).collect::<Vec<_>>());
    }
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_failing_transaction_fails_every_append_in_it() {
    let (db, engine) = engine().await;
    let (ann, _, d1, _) = ids();
    engine
        .claim_document(d1, ann, now(), &Quota::default())
        .await
        .unwrap();
    // A constraint the engine does not know of makes the batch's insert
    // fail as a whole.
    Cluster::shared().psql(
        db.name(),
        "ALTER TABLE events ADD CONSTRAINT small CHECK (octet_length(change) < 4)",
    );
    let batch = [
        append_of(d1, ann, &[vec![1; 2]], &Quota::default()),
        append_of(d1, ann, &[vec![1; 8]], &Quota::default()),
    ];
    let failed = write_with_retries(
        &engine.pool,
        &engine.outage,
        &batch.iter().collect::<Vec<_>>(),
        engine.node(),
    )
    .await;
    assert!(matches!(failed, Err(StoreError::Postgres(_))), "{failed:?}");
    let appends: Vec<_> = [vec![1; 2], vec![1; 8]]
        .into_iter()
        .map(|change| {
            let engine = engine.clone();
            tokio::spawn(
                async move { append(&engine, d1, ann, &[change], &Quota::default()).await },
            )
        })
        .collect();
    let mut failures = 0;
    for outcome in appends {
        match outcome.await.unwrap() {
            Ok(_) => {}
            Err(StoreError::Postgres(_) | StoreError::BatchFailed(_)) => failures += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(
        failures >= 1,
        "the long change fails, with whatever shared its transaction"
    );
    assert!(engine.load_document(d1).await.unwrap().changes.len() <= 1);
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}

// Sync states, the storage id, verification, connections.

#[tokio::test]
async fn sync_states_and_the_storage_id_are_kept() {
    let (_db, engine) = engine().await;
    let (_, _, d1, d2) = ids();
    assert_eq!(engine.sync_state(d1, "peer-a").await.unwrap(), None);
    engine.put_sync_state(d1, "peer-a", b"one").await.unwrap();
    engine.put_sync_state(d1, "peer-a", b"two").await.unwrap();
    engine.put_sync_state(d1, "peer-b", b"b").await.unwrap();
    assert_eq!(
        engine.sync_state(d1, "peer-a").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(
        engine.sync_state(d1, "peer-b").await.unwrap().as_deref(),
        Some(&b"b"[..])
    );
    assert_eq!(engine.sync_state(d2, "peer-a").await.unwrap(), None);
    let id = engine
        .server_storage_id(|| "first".to_owned())
        .await
        .unwrap();
    assert_eq!(id, "first");
    assert_eq!(
        engine
            .server_storage_id(|| "second".to_owned())
            .await
            .unwrap(),
        "first"
    );
}

#[tokio::test]
async fn a_store_written_through_its_api_verifies_and_a_half_written_log_does_not() {
    let (db, engine) = engine().await;
    let (ann, _, kept, deleted) = ids();
    for doc in [kept, deleted] {
        engine
            .claim_document(doc, ann, now(), &Quota::default())
            .await
            .unwrap();
        append(
            &engine,
            doc,
            ann,
            &[vec![1; 5], vec![2; 3]],
            &Quota::default(),
        )
        .await
        .unwrap();
    }
    engine.write_snapshot(kept, 2, b"snapshot").await.unwrap();
    engine.tombstone_document(deleted, now()).await.unwrap();
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());

    // What a torn write would leave: an event the document does not count.
    Cluster::shared().psql(
        db.name(),
        "INSERT INTO events (doc, seq, user_id, session_id, at, change) \
         SELECT doc, 7, user_id, session_id, at, change FROM events WHERE seq = 0 \
         AND doc = (SELECT doc FROM snapshots)",
    );
    let problems = engine.verify().await.unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("next_seq is 2"), "{problems:?}");

    // A feed counter behind its feed would hand out a sequence twice.
    Cluster::shared().psql(db.name(), "UPDATE user_feed_counters SET last_seq = 1");
    let problems = engine.verify().await.unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[2].contains("reaches 2"), "{problems:?}");
}

#[tokio::test]
async fn connecting_again_runs_no_migration_and_keeps_the_data() {
    let (db, engine) = engine().await;
    let (ann, _, d1, _) = ids();
    engine
        .claim_document(d1, ann, now(), &Quota::default())
        .await
        .unwrap();
    let again = PgEngine::connect(&db.url(), 2)
        .await
        .expect("connects again");
    assert!(again.document_meta(d1).await.unwrap().is_some());
    let history = Cluster::shared().psql(
        db.name(),
        "SELECT version, name FROM refinery_schema_history ORDER BY version",
    );
    assert_eq!(history.trim(), "1|initial");
}

#[tokio::test]
async fn a_database_written_by_a_newer_build_is_refused() {
    let (db, engine) = engine().await;
    drop(engine);
    // What a build with a second migration leaves behind.
    Cluster::shared().psql(
        db.name(),
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (2, 'from_the_future', '2026-11-26T00:00:00Z', '1')",
    );
    let refused = PgEngine::connect(&db.url(), 1).await;
    let Err(StoreError::Migration(error)) = refused else {
        panic!("expected a migration error, got {refused:?}");
    };
    assert!(error.to_string().contains("from_the_future"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let db = Cluster::shared().database();
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            let url = db.url();
            tokio::spawn(async move { PgEngine::connect(&url, 1).await.map(|_| ()) })
        })
        .collect();
    for node in nodes {
        node.await.unwrap().expect("every node connects");
    }
    let history = Cluster::shared().psql(db.name(), "SELECT count(*) FROM refinery_schema_history");
    assert_eq!(history.trim(), "1");
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_unavailable() {
    // Nothing listens on port 1 of the loopback.
    let refused = PgEngine::connect("postgres://postgres@127.0.0.1:1/none", 1).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn lost_connections_are_unavailable_and_the_pool_reconnects() {
    let (db, engine) = engine().await;
    let (ann, _, _, _) = ids();
    assert!(engine.is_healthy().await);
    // Hold several connections in the pool, then have the server end them.
    let held = hold_connections(&engine, ann).await;
    assert!(held);
    Cluster::shared().psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name()
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut failures = 0;
    loop {
        match engine.user(ann).await {
            Ok(_) => break,
            Err(StoreError::Unavailable) => failures += 1,
            Err(other) => panic!("a lost connection must be Unavailable, got {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never reconnected"
        );
    }
    assert!(
        failures <= 8,
        "each lost connection fails at most one operation"
    );
    assert!(engine.is_healthy().await);
    append_after_reconnect(&engine, ann).await;
}

/// Uses several connections at once, so that the pool keeps them.
async fn hold_connections(engine: &PgEngine, user: UserId) -> bool {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.user(user).await.is_ok() })
        })
        .collect();
    let mut all = true;
    for task in tasks {
        all &= task.await.unwrap();
    }
    all
}

/// The writer's connection was ended too: its next batch gets a new one.
async fn append_after_reconnect(engine: &PgEngine, user: UserId) {
    let d = doc(88);
    engine
        .claim_document(d, user, now(), &Quota::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match append(engine, d, user, &[b"after".to_vec()], &Quota::default()).await {
            Ok(_) => break,
            Err(StoreError::Unavailable) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(engine.load_document(d).await.unwrap().changes.len(), 1);
}

// Several nodes on one database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_users_documents_number_without_gaps() {
    let (db, first) = engine().await;
    let second = PgEngine::connect(&db.url(), 4).await.unwrap();
    let (ann, bob, _, _) = ids();
    let quota = Quota::default();
    let docs: Vec<(DocumentId, UserId)> = (0..4u8)
        .map(|n| (doc(50 + n), if n < 3 { ann } else { bob }))
        .collect();
    for (doc, owner) in &docs {
        first
            .claim_document(*doc, *owner, now(), &quota)
            .await
            .unwrap();
    }
    // Each node has its own writer, so their batches are concurrent
    // transactions that meet on the same document rows and counters.
    let writers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .flat_map(|node| {
            docs.iter()
                .map(move |&(doc, owner)| (node.clone(), doc, owner))
                .collect::<Vec<_>>()
        })
        .map(|(node, doc, owner)| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..15u8 {
                    seqs.push(
                        append(&node, doc, owner, &[vec![n; 3]], &Quota::default())
                            .await
                            .unwrap(),
                    );
                }
                (owner, seqs)
            })
        })
        .collect();
    let mut feed: std::collections::HashMap<UserId, Vec<u64>> = Default::default();
    for writer in writers {
        let (owner, seqs) = writer.await.unwrap();
        feed.entry(owner).or_default().extend(seqs);
    }
    let mut of_ann = feed.remove(&ann).unwrap();
    of_ann.sort();
    assert_eq!(of_ann, (1..=90).collect::<Vec<_>>());
    let mut of_bob = feed.remove(&bob).unwrap();
    of_bob.sort();
    assert_eq!(of_bob, (1..=30).collect::<Vec<_>>());
    for (doc, _) in &docs {
        let seqs: Vec<u64> = second
            .events_of(*doc)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>());
    }
    assert_eq!(second.verify().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_appends_and_deletes_on_two_nodes_stay_consistent() {
    let (db, first) = engine().await;
    let second = PgEngine::connect(&db.url(), 4).await.unwrap();
    let (ann, bob, _, _) = ids();
    let quota = Quota {
        documents_per_user: 12,
        bytes_per_user: 400,
        bytes_per_document: 100,
    };
    // Both users work on both nodes at once: each task claims documents
    // (some of them the other user's), appends to what it owns and deletes
    // some of it, so that every kind of transaction meets every other on
    // the same rows.
    let tasks: Vec<_> = [
        (first.clone(), ann),
        (second.clone(), bob),
        (second.clone(), ann),
        (first.clone(), bob),
    ]
    .into_iter()
    .enumerate()
    .map(|(t, (node, user))| {
        tokio::spawn(async move {
            let mut refused = 0;
            for n in 0..16u8 {
                let d = doc(120 + (n + t as u8 * 3) % 20);
                match node.claim_document(d, user, now(), &quota).await.unwrap() {
                    Claim::Owned(_) => {}
                    Claim::Unavailable | Claim::OverQuota(_) => {
                        refused += 1;
                        continue;
                    }
                }
                match append(&node, d, user, &[vec![n; 10]], &quota).await {
                    Ok(_) => {}
                    Err(StoreError::DocumentDeleted | StoreError::QuotaExceeded(_)) => refused += 1,
                    Err(other) => panic!("{other:?}"),
                }
                if n % 5 == 4 {
                    node.tombstone_document(d, now()).await.unwrap();
                }
            }
            refused
        })
    })
    .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(first.verify().await.unwrap(), Vec::<String>::new());
    for user in [ann, bob] {
        let used = first.usage(user).await.unwrap();
        assert!(used.documents <= quota.documents_per_user, "{used:?}");
        assert!(used.bytes <= quota.bytes_per_user, "{used:?}");
    }
}

#[test]
fn the_engine_does_not_wait_for_the_runtime_it_was_made_on() {
    // The HTTP layer runs a runtime per worker thread, and they stop one by
    // one at shutdown: connections and the writer must not depend on them.
    let db = Cluster::shared().database();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let (ann, _, d1, _) = ids();
    let first = runtime();
    let engine = first.block_on(async {
        let engine = PgEngine::connect(&db.url(), 2).await.unwrap();
        engine
            .claim_document(d1, ann, now(), &Quota::default())
            .await
            .unwrap();
        append(&engine, d1, ann, &[b"one".to_vec()], &Quota::default())
            .await
            .unwrap();
        engine
    });
    // The first runtime is idle now (a current-thread runtime runs only
    // inside `block_on`), as a busy worker would be: nothing may wait for it.
    let used = runtime().block_on(async move {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            append(&engine, d1, ann, &[b"two".to_vec()], &Quota::default())
                .await
                .unwrap();
            engine.load_document(d1).await.unwrap().changes
        })
        .await
    });
    assert_eq!(
        used.expect("the engine does not wait for an idle runtime"),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_append_is_readable_at_once_on_another_node() {
    // Each caller hears only after COMMIT: another node (another pool,
    // other connections) reading right after the answer finds the events.
    let (db, first) = engine().await;
    let second = PgEngine::connect(&db.url(), 4).await.unwrap();
    let (ann, _, _, _) = ids();
    let docs: Vec<DocumentId> = (0..4u8).map(|n| doc(140 + n)).collect();
    for d in &docs {
        first
            .claim_document(*d, ann, now(), &Quota::default())
            .await
            .unwrap();
    }
    let tasks: Vec<_> = docs
        .iter()
        .flat_map(|&d| (0..2u8).map(move |w| (d, w)))
        .map(|(d, w)| {
            let (first, second) = (first.clone(), second.clone());
            tokio::spawn(async move {
                for n in 0..25u8 {
                    let change = vec![w, n];
                    let appended = first
                        .append(append_of(
                            d,
                            ann,
                            std::slice::from_ref(&change),
                            &Quota::default(),
                        ))
                        .await
                        .unwrap();
                    let seen = second.events_from(d, appended.first_seq).await.unwrap();
                    assert_eq!(
                        seen.first().map(|e| (e.seq, &e.change)),
                        Some((appended.first_seq, &change)),
                        "the other node reads the answered append"
                    );
                    let (changed, _) = second
                        .changed_since(ann, appended.feed_seq - 1, 1)
                        .await
                        .unwrap();
                    assert!(!changed.is_empty(), "its feed entry is readable too");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn an_outage_is_reported_once_and_its_end_too() {
    // A role that is not a superuser, so that a connection limit holds it
    // out; it owns the database (and so, in PostgreSQL 15, its schema).
    let cluster = Cluster::shared();
    let db = cluster.database();
    let role = format!("app_{}", db.name());
    cluster.psql(db.name(), &format!("CREATE ROLE {role} LOGIN"));
    cluster.psql(
        db.name(),
        &format!("ALTER DATABASE {} OWNER TO {role}", db.name()),
    );
    let url = format!(
        "postgres://{role}@127.0.0.1:{}/{}",
        cluster.port(),
        db.name()
    );
    let engine = PgEngine::connect(&url, 2).await.unwrap();
    let health = engine.health();
    assert!(health.borrow().available);
    let (ann, _, _, _) = ids();

    // No new connections, and the open ones ended: every operation fails
    // to reach the database, and that is one outage.
    cluster.psql(
        "postgres",
        &format!("ALTER DATABASE {} CONNECTION LIMIT 0", db.name()),
    );
    cluster.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            db.name()
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut unavailable = 0;
    while unavailable < 3 {
        match engine.user(ann).await {
            Err(StoreError::Unavailable) => unavailable += 1,
            // A connection the pool had not yet seen end may answer once
            // more, or fail as closed.
            Ok(_) => {}
            Err(other) => panic!("refused connections are an outage, not {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outage never showed"
        );
    }
    assert!(!engine.is_healthy().await);
    assert_eq!(
        *health.borrow(),
        StoreHealth {
            available: false,
            failures: 1,
            recoveries: 0
        }
    );

    cluster.psql(
        "postgres",
        &format!("ALTER DATABASE {} CONNECTION LIMIT -1", db.name()),
    );
    assert_eq!(engine.user(ann).await.unwrap(), None);
    assert!(engine.is_healthy().await);
    assert_eq!(
        *health.borrow(),
        StoreHealth {
            available: true,
            failures: 1,
            recoveries: 1
        }
    );
}

/// The store's facade holds the engine in handles shared across threads
/// and awaits these inside futures that must be `Send` (spawned hub and
/// connection tasks): checked when the tests compile.
#[allow(dead_code)]
fn every_operation_is_send(engine: &PgEngine, record: &UserRecord, session: &SessionRecord) {
    fn send<T: Send>(_: T) {}
    fn shared<T: Send + Sync>(_: &T) {}
    shared(engine);
    let (ann, _, d1, _) = ids();
    let sid = session.id;
    let quota = Quota::default();
    let audit = AuditRecord {
        at: now(),
        kind: AuditKind::Login,
        session_id: None,
        ip: None,
        user_agent: None,
    };
    send(PgEngine::connect("", 1));
    send(engine.user(ann));
    send(engine.user_by_contact(""));
    send(engine.find_or_create_user(record));
    send(engine.put_user(record));
    send(engine.update_otp("", |r| (r, ())));
    send(engine.insert_session(session, &[0; 32]));
    send(engine.rotate_session(session, &[0; 32]));
    send(engine.session(sid));
    send(engine.refresh_entry(&[0; 32]));
    send(engine.sessions_of(ann));
    send(engine.delete_session(sid));
    send(engine.append_audit(ann, &audit));
    send(engine.audit_of(ann, 1));
    send(engine.document_meta(d1));
    send(engine.claim_document(d1, ann, now(), &quota));
    send(engine.append(append_of(d1, ann, &[], &quota)));
    send(engine.load_document(d1));
    send(engine.write_snapshot(d1, 0, &[]));
    send(engine.events_of(d1));
    send(engine.events_from(d1, 0));
    send(engine.changed_since(ann, 0, 1));
    send(engine.tombstone_document(d1, now()));
    send(engine.usage(ann));
    send(engine.sync_state(d1, ""));
    send(engine.put_sync_state(d1, "", &[]));
    send(engine.server_storage_id(String::new));
    send(engine.task_summaries(ann));
    send(engine.verify());
    send(engine.is_healthy());
}

#[tokio::test]
async fn an_append_without_changes_moves_the_feed_and_writes_no_event() {
    let (_db, engine) = engine().await;
    let (ann, _, d1, _) = ids();
    engine
        .claim_document(d1, ann, now(), &Quota::default())
        .await
        .unwrap();
    let mut put = append_of(d1, ann, &[], &Quota::default());
    put.index = IndexUpdate::Put(view("no change", d1));
    let appended = engine.append(put).await.unwrap();
    assert_eq!((appended.first_seq, appended.feed_seq), (0, 1));
    assert!(engine.events_of(d1).await.unwrap().is_empty());
    assert_eq!(engine.task_summaries(ann).await.unwrap().len(), 1);
    // The writer is still there for the next append.
    let next = append(&engine, d1, ann, &[b"x".to_vec()], &Quota::default())
        .await
        .unwrap();
    assert_eq!(next, 2);
    assert_eq!(engine.verify().await.unwrap(), Vec::<String>::new());
}
