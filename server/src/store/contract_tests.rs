//! The store's contract: the same scenarios, run against both engines
//! through the facade every other module uses. Each scenario is an async
//! function of a fresh `Store`; `contract!` makes one test per engine.

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::AuditKind;
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, SessionId, UserId};

use super::{
    Append, AuditRecord, Claim, IndexUpdate, SessionRecord, Store, StoreError, UserRecord,
};
use crate::configuration::limits::Quota;

/// Now, to the microsecond: PostgreSQL keeps no finer time, and records
/// are compared whole.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now is in range")
}

fn id(byte: u8) -> [u8; 16] {
    [byte; 16]
}

async fn user(store: &Store, contact: &str, byte: u8) -> UserRecord {
    store
        .find_or_create_user(&UserRecord {
            id: UserId::from_bytes(id(byte)),
            contact_key: contact.to_owned(),
            created_at: now(),
            root_document_id: None,
        })
        .await
        .unwrap()
        .0
}

fn append(doc: DocumentId, user: UserId, changes: &[&[u8]], index: IndexUpdate) -> Append {
    Append {
        doc,
        user,
        session: None,
        at: now(),
        changes: changes.iter().map(|c| c.to_vec()).collect(),
        quota: Quota::default(),
        index,
    }
}

fn task(doc: DocumentId, title: &str) -> TaskView {
    serde_json::from_value(serde_json::json!({
        "id": doc, "title": title, "notes": "", "done": false, "due": null,
        "priority": "none", "tags": [], "created_at": now(), "updated_at": now(),
    }))
    .expect("a task summary")
}

async fn accounts(store: Store) {
    let ann = user(&store, "email:ann@example.com", 1).await;
    let (again, created) = store
        .find_or_create_user(&UserRecord {
            id: UserId::from_bytes(id(2)),
            contact_key: "email:ann@example.com".into(),
            created_at: now(),
            root_document_id: None,
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, ann);
    assert_eq!(
        store
            .user_by_contact("email:ann@example.com")
            .await
            .unwrap(),
        Some(ann.clone())
    );
    let (a, b) = (DocumentId::from_bytes(id(3)), DocumentId::from_bytes(id(4)));
    assert_eq!(store.set_root_document(ann.id, a).await.unwrap(), Some(a));
    assert_eq!(store.set_root_document(ann.id, b).await.unwrap(), Some(a));

    // Every concurrent code update counts.
    let updates = (0..4).map(|_| {
        let store = store.clone();
        async move {
            for _ in 0..25 {
                store
                    .update_otp("email:ann@example.com", |r| {
                        let mut r = r.unwrap_or_default();
                        r.failures.push(now());
                        (Some(r), ())
                    })
                    .await
                    .unwrap();
            }
        }
    });
    let handles: Vec<_> = updates.map(tokio::spawn).collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let count = store
        .update_otp("email:ann@example.com", |r| {
            let n = r.as_ref().map_or(0, |r| r.failures.len());
            (r, n)
        })
        .await
        .unwrap();
    assert_eq!(count, 100);

    // Sessions rotate only from the generation they are at; deleting one
    // takes its tokens along.
    let t = now();
    let mut session = SessionRecord {
        id: SessionId::from_bytes(id(5)),
        user_id: ann.id,
        device_name: Some("laptop".into()),
        created_at: t,
        last_used_at: t,
        generation: 0,
        rotated_at: t,
    };
    store.insert_session(&session, &[10; 32]).await.unwrap();
    assert_eq!(
        store.session(session.id).await.unwrap(),
        Some(session.clone())
    );
    session.generation = 1;
    assert!(store.rotate_session(&session, &[11; 32]).await.unwrap());
    assert!(
        !store.rotate_session(&session, &[12; 32]).await.unwrap(),
        "rotated already"
    );
    let entry = store.refresh_entry(&[11; 32]).await.unwrap().unwrap();
    assert_eq!((entry.session_id, entry.generation), (session.id, 1));
    assert_eq!(
        store
            .refresh_entry(&[10; 32])
            .await
            .unwrap()
            .unwrap()
            .generation,
        0
    );
    assert_eq!(
        store.sessions_of(ann.id).await.unwrap(),
        vec![session.clone()]
    );
    assert!(store.delete_session(session.id).await.unwrap());
    assert!(!store.delete_session(session.id).await.unwrap());
    assert_eq!(store.refresh_entry(&[11; 32]).await.unwrap(), None);
    assert_eq!(store.session(session.id).await.unwrap(), None);

    // The audit trail, newest first.
    for (i, kind) in [AuditKind::Login, AuditKind::Refresh, AuditKind::Logout]
        .into_iter()
        .enumerate()
    {
        let record = AuditRecord {
            at: t + chrono::Duration::seconds(i as i64),
            kind,
            session_id: Some(session.id),
            ip: Some("127.0.0.1".into()),
            user_agent: None,
        };
        store.append_audit(ann.id, &record).await.unwrap();
    }
    let audit = store.audit_of(ann.id, 2).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].kind, AuditKind::Logout);
    assert_eq!(audit[1].kind, AuditKind::Refresh);
}

async fn documents(store: Store) {
    let ann = user(&store, "email:ann@example.com", 1).await.id;
    let bob = user(&store, "email:bob@example.com", 2).await.id;
    let (one, two) = (
        DocumentId::from_bytes(id(21)),
        DocumentId::from_bytes(id(22)),
    );
    let quota = Quota::default();
    assert!(matches!(
        store.claim_document(one, ann, now(), &quota).await.unwrap(),
        Claim::Owned(_)
    ));
    assert_eq!(
        store.claim_document(one, bob, now(), &quota).await.unwrap(),
        Claim::Unavailable
    );
    assert!(matches!(
        store.claim_document(two, ann, now(), &quota).await.unwrap(),
        Claim::Owned(_)
    ));
    assert_eq!(store.document_meta(one).await.unwrap().unwrap().owner, ann);

    // Events are numbered without gaps; the feed orders documents by
    // their last change.
    let (first, _) = store
        .append_events(append(
            one,
            ann,
            &[b"a", b"b"],
            IndexUpdate::Put(task(one, "one")),
        ))
        .await
        .unwrap();
    let (second, _) = store
        .append_events(append(
            two,
            ann,
            &[b"c"],
            IndexUpdate::Put(task(two, "two")),
        ))
        .await
        .unwrap();
    let (third, ticket) = store
        .append_events(append(one, ann, &[b"d"], IndexUpdate::Keep))
        .await
        .unwrap();
    store.wait_durable(ticket).await.unwrap();
    assert_eq!(
        (first.first_seq, second.first_seq, third.first_seq),
        (0, 0, 2)
    );
    assert!(first.feed_seq < second.feed_seq && second.feed_seq < third.feed_seq);
    let (changed, cursor) = store.changed_since(ann, 0, 100).await.unwrap();
    assert_eq!(changed, vec![two, one]);
    assert_eq!(cursor, third.feed_seq);
    assert_eq!(
        store.changed_since(ann, cursor, 100).await.unwrap().0,
        vec![]
    );
    let later: Vec<Vec<u8>> = store
        .events_from(one, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.change)
        .collect();
    assert_eq!(later, vec![b"b".to_vec(), b"d".to_vec()]);

    // A snapshot covers a prefix; loading gives it and the events after.
    store.write_snapshot(one, 2, b"snapshot").await.unwrap();
    let loaded = store.load_document(one).await.unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"snapshot"[..]));
    assert_eq!(loaded.snapshot_covers, 2);
    assert_eq!(loaded.changes, vec![b"d".to_vec()]);

    let titles: Vec<String> = store
        .task_summaries(ann)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, view)| view.title)
        .collect();
    assert_eq!(titles, vec!["one", "two"]);

    // A deleted document takes no change and leaves the task list.
    assert!(store.tombstone_document(two, now()).await.unwrap());
    assert!(!store.tombstone_document(two, now()).await.unwrap());
    assert!(matches!(
        store
            .append_events(append(two, ann, &[b"e"], IndexUpdate::Keep))
            .await,
        Err(StoreError::DocumentDeleted)
    ));
    assert_eq!(store.task_summaries(ann).await.unwrap().len(), 1);
    // A summary written outside an append (after catching up) replaces the
    // entry, and never brings a deleted document back.
    let renamed = IndexUpdate::Put(task(one, "renamed"));
    store.put_task_summary(ann, one, &renamed).await.unwrap();
    let gone = IndexUpdate::Put(task(two, "deleted"));
    store.put_task_summary(ann, two, &gone).await.unwrap();
    let titles: Vec<String> = store
        .task_summaries(ann)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, view)| view.title)
        .collect();
    assert_eq!(titles, vec!["renamed"]);
    assert_eq!(store.verify().await.unwrap(), Vec::<String>::new());
}

async fn server_state(store: Store) {
    let doc = DocumentId::from_bytes(id(31));
    assert_eq!(store.sync_state(doc, "peer").await.unwrap(), None);
    store.put_sync_state(doc, "peer", b"state-1").await.unwrap();
    store.put_sync_state(doc, "peer", b"state-2").await.unwrap();
    assert_eq!(
        store.sync_state(doc, "peer").await.unwrap().as_deref(),
        Some(&b"state-2"[..])
    );
    let storage = store.server_storage_id(|| "first".into()).await.unwrap();
    assert_eq!(storage, "first");
    assert_eq!(
        store.server_storage_id(|| "second".into()).await.unwrap(),
        "first"
    );
    let secret = store.shared_secret("key", [1; 32]).await.unwrap();
    assert_eq!(secret, [1; 32]);
    assert_eq!(store.shared_secret("key", [2; 32]).await.unwrap(), [1; 32]);
    assert!(store.is_healthy().await);
}

macro_rules! contract {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$scenario(super::Store::open(dir.path()).unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let db = codeedex_test_postgres::Cluster::shared().database();
                    super::$scenario(super::Store::connect(&db.url(), 4).await.unwrap()).await;
                }
            )*
        }
    };
}

contract!(accounts, documents, server_state);
