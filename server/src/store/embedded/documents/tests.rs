//! Ownership, the change log and snapshots, the feed, and usage.

use super::*;
use crate::store::QuotaExceeded;
use codeedex_schema::api::tasks::TaskView;

/// Appends through the flusher, as the hub does, from a synchronous test.
pub(crate) fn append(
    store: &Embedded,
    doc: DocumentId,
    user: UserId,
    session: Option<SessionId>,
    at: DateTime<Utc>,
    changes: &[Vec<u8>],
    quota: &Quota,
) -> Result<u64, StoreError> {
    let append = Append {
        doc,
        user,
        session,
        at,
        changes: changes.to_vec(),
        quota: *quota,
        index: IndexUpdate::Keep,
    };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(store.append_events(append))
        .map(|(appended, _)| appended.feed_seq)
}

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
    let store = Embedded::open(dir.path()).unwrap();
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
    let store = Embedded::open(dir.path()).unwrap();
    let (ann, _, doc, _) = ids();
    store
        .claim_document(doc, ann, Utc::now(), &Quota::default())
        .unwrap();
    append(
        &store,
        doc,
        ann,
        None,
        Utc::now(),
        &[b"a".to_vec(), b"b".to_vec()],
        &Quota::default(),
    )
    .unwrap();
    append(
        &store,
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
    let store = Embedded::open(dir.path()).unwrap();
    let (ann, _, d1, d2) = ids();
    store
        .claim_document(d1, ann, Utc::now(), &Quota::default())
        .unwrap();
    store
        .claim_document(d2, ann, Utc::now(), &Quota::default())
        .unwrap();
    let first = append(
        &store,
        d1,
        ann,
        None,
        Utc::now(),
        &[b"1".to_vec()],
        &Quota::default(),
    )
    .unwrap();
    append(
        &store,
        d2,
        ann,
        None,
        Utc::now(),
        &[b"2".to_vec()],
        &Quota::default(),
    )
    .unwrap();
    append(
        &store,
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
    let store = Embedded::open(dir.path()).unwrap();
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
    append(&store, d1, ann, None, Utc::now(), &[vec![0; 6]], &quota).unwrap();
    assert!(matches!(
        append(&store, d1, ann, None, Utc::now(), &[vec![0; 5]], &quota),
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
        let store = Embedded::open(dir.path()).unwrap();
        store
            .claim_document(d1, ann, Utc::now(), &Quota::default())
            .unwrap();
        append(
            &store,
            d1,
            ann,
            None,
            Utc::now(),
            &[vec![0; 7]],
            &Quota::default(),
        )
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
    let store = Embedded::open(dir.path()).unwrap();
    let usage = store.usage(ann).unwrap();
    assert_eq!(usage.documents, 1);
    assert_eq!(usage.bytes, 7, "the log's bytes are counted");
}

#[test]
fn a_group_of_appends_is_one_transaction_with_an_outcome_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let (ann, bob, d1, d2) = ids();
    let (d3, d4) = (
        DocumentId::from_random_bytes([5; 16]),
        DocumentId::from_random_bytes([6; 16]),
    );
    let quota = Quota {
        documents_per_user: 10,
        bytes_per_user: 10,
        bytes_per_document: 10,
    };
    for (doc, owner) in [(d1, ann), (d2, ann), (d3, bob), (d4, bob)] {
        store
            .claim_document(doc, owner, Utc::now(), &quota)
            .unwrap();
    }
    store.tombstone_document(d4, Utc::now()).unwrap();
    let append = |doc, user, bytes: usize, index| Append {
        doc,
        user,
        session: None,
        at: Utc::now(),
        changes: vec![vec![7; bytes]],
        quota,
        index,
    };
    let view = |title: &str, doc| {
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
    };
    let batch = [
        append(d1, ann, 6, IndexUpdate::Put(view("first", d1))),
        // Ann's second append of the group counts with her first: over her 10 bytes.
        append(d2, ann, 6, IndexUpdate::Put(view("second", d2))),
        append(d3, bob, 4, IndexUpdate::Put(view("bob's", d3))),
        append(d4, bob, 1, IndexUpdate::Keep),
    ];
    let outcomes = store
        .run(|e| {
            let log = AppendLog {
                db: e.db.clone(),
                documents: e.documents.clone(),
                events: e.events.clone(),
                user_feed: e.user_feed.clone(),
                user_feed_position: e.db.open_tree("user_feed_position")?,
                usage: e.usage.clone(),
                task_index: e.task_index.clone(),
            };
            Ok(log.write(&batch.iter().collect::<Vec<_>>())?)
        })
        .unwrap();
    assert!(outcomes[0].is_ok());
    assert!(matches!(
        outcomes[1],
        Err(StoreError::QuotaExceeded(QuotaExceeded::UserBytes { .. }))
    ));
    assert!(outcomes[2].is_ok());
    assert!(matches!(outcomes[3], Err(StoreError::DocumentDeleted)));
    // What was accepted is written whole, with its index entry; nothing of
    // what was refused is.
    assert_eq!(store.load_document(d1).unwrap().changes.len(), 1);
    assert!(store.load_document(d2).unwrap().changes.is_empty());
    assert_eq!(store.load_document(d3).unwrap().changes.len(), 1);
    let listed = |user| {
        store
            .task_summaries(user)
            .unwrap()
            .into_iter()
            .map(|(doc, _)| doc)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(ann), vec![d1]);
    assert_eq!(listed(bob), vec![d3]);
    assert_eq!(store.usage(ann).unwrap().bytes, 6);
}
