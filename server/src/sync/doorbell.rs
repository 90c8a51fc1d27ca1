//! The doorbell: how server nodes that share one database tell each other
//! that a document's log grew.
//!
//! The log is the truth and a ring only says "read it": a node that hears
//! one for a document it has in memory reads the events it has not applied
//! yet ([`DocumentHub::catch_up`]), and its connections sync them to their
//! peers as they sync any change. A node that may have missed rings (its
//! listening connection dropped, or rings came faster than it read them)
//! catches up every document it has in memory. So a lost ring costs time,
//! never a change.
//!
//! PostgreSQL rings inside the append's own transaction (NOTIFY is
//! delivered at COMMIT, so no commit goes without its ring) and hears on a
//! LISTEN connection of its own; both are the store's. [`Doorbell`] is for
//! a carrier outside the database, such as a message bus, which the hub
//! rings after each append. Either way what is heard reaches [`answer`]
//! through a bounded channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use codeedex_schema::id::{DocumentId, UserId};
use tokio::sync::mpsc;

use super::hub::DocumentHub;
use crate::auth::SessionNotice;
pub use crate::store::{HEARD_QUEUE, Heard, Ring};

/// Tells the other nodes that a document's log grew. Ringing never waits
/// and never fails the append that rang: the append is committed already,
/// and a lost ring is made up by catching up.
pub trait Doorbell: Send + Sync {
    /// Rings for an append that has committed.
    fn ring(&self, ring: Ring);
}

/// Answers what `heard` delivers until it closes: catches up each rung
/// document that is in memory here, and all of them when notices may have
/// been missed; drops documents deleted elsewhere; and hands sessions ended
/// elsewhere to `sessions`, which closes their sockets here (and, when
/// notices may have been missed, has every socket ask whether its session
/// lives). Notices from `node`, this one, are ignored: this node acted on
/// them already.
pub async fn answer(
    hub: Arc<DocumentHub>,
    node: u64,
    mut heard: mpsc::Receiver<Heard>,
    sessions: impl Fn(SessionNotice) + Send,
) {
    while let Some(first) = heard.recv().await {
        // Take what else is waiting, so that a document rung many times
        // meanwhile is read once: under load the work follows the documents
        // that changed, not the changes.
        let mut waiting = vec![first];
        while waiting.len() < ANSWER_BATCH {
            match heard.try_recv() {
                Ok(next) => waiting.push(next),
                Err(_) => break,
            }
        }
        let mut rung: BTreeMap<DocumentId, Option<UserId>> = BTreeMap::new();
        let mut everything = false;
        for notice in waiting {
            match notice {
                Heard::Ring(ring) if ring.node == node => {}
                Heard::Ring(ring) => {
                    rung.insert(ring.doc, Some(ring.user));
                }
                Heard::Deleted { node: from, .. } | Heard::SessionEnded { node: from, .. }
                    if from == node => {}
                Heard::Deleted { doc, .. } => {
                    rung.remove(&doc);
                    hub.deleted_elsewhere(doc).await;
                }
                Heard::SessionEnded { session, .. } => sessions(SessionNotice::Ended(session)),
                Heard::MayHaveMissed => everything = true,
            }
        }
        if everything {
            sessions(SessionNotice::MayHaveEnded);
            let loaded = hub.loaded_ids();
            tracing::info!(
                documents = loaded.len(),
                "catching up every loaded document after missed notices"
            );
            for doc in loaded {
                // A deletion's notice may be among those missed, and the
                // log of a deleted document reads like any other.
                match hub.deleted_in_store(doc).await {
                    Ok(true) => {
                        rung.remove(&doc);
                        hub.deleted_elsewhere(doc).await;
                    }
                    Ok(false) => {
                        rung.entry(doc).or_insert(None);
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, %doc, "cannot tell whether a document was deleted elsewhere");
                        rung.entry(doc).or_insert(None);
                    }
                }
            }
        }
        for (doc, owner) in rung {
            catch_up(&hub, doc).await;
            if let Some(owner) = owner {
                hub.uploaded_elsewhere(doc, owner);
            }
        }
    }
}

/// The most notices [`answer`] takes at once.
const ANSWER_BATCH: usize = 1024;

async fn catch_up(hub: &DocumentHub, doc: DocumentId) {
    if let Err(e) = hub.catch_up(doc).await {
        tracing::warn!(error = ?e, %doc, "cannot catch up a document from the log");
    }
}

/// Rings within one process: every hub attached hears every ring. For
/// tests of several nodes over one store.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct LocalDoorbell {
    listeners: std::sync::Mutex<Vec<mpsc::Sender<Heard>>>,
}

#[cfg(test)]
impl LocalDoorbell {
    pub(crate) fn listen(&self) -> mpsc::Receiver<Heard> {
        let (tx, rx) = mpsc::channel(HEARD_QUEUE);
        self.listeners.lock().expect("never poisoned").push(tx);
        rx
    }
}

#[cfg(test)]
impl Doorbell for LocalDoorbell {
    fn ring(&self, ring: Ring) {
        for listener in self.listeners.lock().expect("never poisoned").iter() {
            let _ = listener.try_send(Heard::Ring(ring));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ROOT, ReadDoc, sync};
    use chrono::Utc;

    use super::*;
    use crate::configuration::limits::HubLimits;
    use crate::metrics::Metrics;
    use crate::store::Store;
    use crate::sync::hub::{Author, Generation, IfUnseen, LiveDocument};

    const USER: [u8; 16] = [1; 16];
    const DOC: [u8; 16] = [2; 16];

    fn author() -> Author {
        Author {
            user: UserId::from_bytes(USER),
            session: None,
        }
    }

    /// A node: a hub of its own over the shared store.
    fn node(store: &Store, number: u8) -> DocumentHub {
        DocumentHub::new(
            store.clone(),
            ActorId::from(vec![number; 16]),
            HubLimits::default(),
            Arc::new(Metrics::default()),
        )
    }

    async fn open(hub: &DocumentHub) -> Arc<LiveDocument> {
        hub.open(
            DocumentId::from_bytes(DOC),
            UserId::from_bytes(USER),
            IfUnseen::Claim,
            Utc::now(),
        )
        .await
        .unwrap()
        .expect("the user's document")
    }

    async fn put(hub: &DocumentHub, live: &Arc<LiveDocument>, key: &str, value: i64) {
        let changed = hub
            .change(live, author(), Utc::now(), |tx| {
                tx.put(ROOT, key, value)?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(changed);
    }

    /// What a device in sync state `state` is sent next by `hub`, applied to
    /// its replica.
    async fn device_hears(
        hub: &DocumentHub,
        live: &Arc<LiveDocument>,
        replica: &mut AutoCommit,
        ours: &mut sync::State,
        theirs: &mut sync::State,
    ) {
        loop {
            let message = match hub.generate(live, theirs).await.unwrap() {
                Generation::Message(message) => message,
                Generation::Nothing => return,
                Generation::NotDurable(ticket) => {
                    hub.store().wait_durable(ticket).await.unwrap();
                    continue;
                }
            };
            replica.sync().receive_sync_message(ours, message).unwrap();
            if let Some(reply) = replica.sync().generate_sync_message(ours) {
                hub.apply(live, theirs, reply, author(), 7, Utc::now())
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_change_made_on_one_node_reaches_a_device_of_another_through_the_doorbell() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doorbell = Arc::new(LocalDoorbell::default());
        let one = Arc::new(node(&store, 1).with_doorbell(1, doorbell.clone()));
        let two = Arc::new(node(&store, 2).with_doorbell(2, doorbell.clone()));
        tokio::spawn(answer(Arc::clone(&one), 1, doorbell.listen(), |_| {}));
        tokio::spawn(answer(Arc::clone(&two), 2, doorbell.listen(), |_| {}));

        let on_one = open(&one).await;
        put(&one, &on_one, "before", 1).await;
        // A device syncs the document through node two, which loads it now.
        let on_two = open(&two).await;
        let mut replica = AutoCommit::new();
        let (mut ours, mut theirs) = (sync::State::new(), sync::State::new());
        device_hears(&two, &on_two, &mut replica, &mut ours, &mut theirs).await;
        assert_eq!(
            replica.get(ROOT, "before").unwrap().unwrap().0.as_i64(),
            Some(1)
        );

        // A change through node one: node two hears the ring, reads the log,
        // and its device is sent the change.
        put(&one, &on_one, "after", 2).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while two.heads(&on_two).await.unwrap() != one.heads(&on_one).await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node two never caught up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        device_hears(&two, &on_two, &mut replica, &mut ours, &mut theirs).await;
        assert_eq!(
            replica.get(ROOT, "after").unwrap().unwrap().0.as_i64(),
            Some(2)
        );

        // And back: a change through node two reaches node one.
        put(&two, &on_two, "back", 3).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while one.heads(&on_one).await.unwrap() != two.heads(&on_two).await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node one never caught up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_device_waiting_on_one_node_for_a_document_hears_when_another_node_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doorbell = Arc::new(LocalDoorbell::default());
        let one = Arc::new(node(&store, 1).with_doorbell(1, doorbell.clone()));
        let two = Arc::new(node(&store, 2).with_doorbell(2, doorbell.clone()));
        tokio::spawn(answer(Arc::clone(&two), 2, doorbell.listen(), |_| {}));
        let mailbox = Arc::new(crate::sync::mailbox::Mailbox::new(
            Default::default(),
            Arc::new(Metrics::default()),
        ));
        let doc = DocumentId::from_bytes(DOC);
        two.wait_for(doc, UserId::from_bytes(USER), 9, Arc::clone(&mailbox));
        let on_one = open(&one).await;
        put(&one, &on_one, "uploaded", 1).await;
        let notices = tokio::time::timeout(Duration::from_secs(5), mailbox.next())
            .await
            .expect("the waiting connection was told");
        assert!(notices.changed.contains(&doc));
    }

    /// Sets a text field of a task document.
    async fn put_text(hub: &DocumentHub, live: &Arc<LiveDocument>, key: &str, value: &str) {
        let changed = hub
            .change(live, author(), Utc::now(), |tx| {
                match tx.get(ROOT, key)? {
                    Some((automerge::Value::Object(automerge::ObjType::Text), id)) => {
                        tx.update_text(&id, value)?
                    }
                    _ => {
                        let id = tx.put_object(ROOT, key, automerge::ObjType::Text)?;
                        tx.splice_text(&id, 0, 0, value)?;
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        assert!(changed);
    }

    #[tokio::test]
    async fn after_catching_up_a_node_writes_the_merged_task_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (one, two) = (node(&store, 1), node(&store, 2));
        let on_one = open(&one).await;
        put_text(&one, &on_one, "title", "first title").await;
        let on_two = open(&two).await;
        // Node one renames the task; node two, not having read that yet,
        // edits the notes: its append writes the summary it holds, with
        // the old title, last.
        put_text(&one, &on_one, "title", "renamed on one").await;
        put_text(&two, &on_two, "notes", "notes from two").await;
        let listed = |store: Store| async move {
            let summaries = store
                .task_summaries(UserId::from_bytes(USER))
                .await
                .unwrap();
            summaries
                .into_iter()
                .map(|(_, view)| (view.title, view.notes))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(store.clone()).await,
            vec![("first title".to_owned(), "notes from two".to_owned())],
            "the stale summary node two wrote"
        );
        // Once node two catches up, the index lists the merged task.
        assert!(two.catch_up(on_two.id).await.unwrap());
        assert_eq!(
            listed(store.clone()).await,
            vec![("renamed on one".to_owned(), "notes from two".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_node_that_missed_rings_catches_up_every_loaded_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = node(&store, 1);
        let two = Arc::new(node(&store, 2));
        let on_one = open(&one).await;
        let on_two = open(&two).await;
        // Node one rings no doorbell: node two hears nothing of this.
        put(&one, &on_one, "unheard", 1).await;
        assert_ne!(
            two.heads(&on_two).await.unwrap(),
            one.heads(&on_one).await.unwrap()
        );
        let (tx, rx) = mpsc::channel(HEARD_QUEUE);
        tx.send(Heard::MayHaveMissed).await.unwrap();
        drop(tx);
        answer(Arc::clone(&two), 2, rx, |_| {}).await;
        assert_eq!(
            two.heads(&on_two).await.unwrap(),
            one.heads(&on_one).await.unwrap()
        );
    }

    #[tokio::test]
    async fn a_deletion_or_session_end_whose_notice_was_missed_is_looked_for_when_catching_up() {
        // Node two misses the deletion's notice (its listener was not yet
        // listening, or reconnecting). When the listener reports that it
        // may have missed notices, node two looks at every document it
        // holds, finds this one deleted, and drops it. Without the look it
        // would catch up the deleted document's log and keep serving it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = node(&store, 1);
        let two = Arc::new(node(&store, 2));
        let on_one = open(&one).await;
        put(&one, &on_one, "doomed", 1).await;
        let on_two = open(&two).await;
        one.tombstone(on_one.id, Utc::now()).await.unwrap();
        let (tx, rx) = mpsc::channel(HEARD_QUEUE);
        tx.send(Heard::MayHaveMissed).await.unwrap();
        drop(tx);
        let notices = std::sync::Mutex::new(Vec::new());
        answer(Arc::clone(&two), 2, rx, |notice| {
            notices.lock().unwrap().push(notice)
        })
        .await;
        assert!(!two.loaded_ids().contains(&on_two.id));
        assert!(on_two.is_deleted());
        // Sessions ended meanwhile are looked for the same way.
        assert_eq!(
            notices.into_inner().unwrap(),
            vec![SessionNotice::MayHaveEnded]
        );
    }

    #[tokio::test]
    async fn a_snapshot_never_covers_an_event_its_node_has_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = node(&store, 1);
        let two = node(&store, 2);
        let on_one = open(&one).await;
        let on_two = open(&two).await;
        // Node one appends an event node two never reads; node two then
        // appends enough of its own to be due a snapshot many times over.
        put(&one, &on_one, "from-one", 1).await;
        for i in 0..300 {
            put(&two, &on_two, "from-two", i).await;
        }
        // A third node loads the document from the store: snapshot plus the
        // events after it. Nothing of either node may be missing.
        let three = node(&store, 3);
        let on_three = open(&three).await;
        let read = |doc: &automerge::Automerge| {
            (
                doc.get(ROOT, "from-one").unwrap().map(|(v, _)| v.as_i64()),
                doc.get(ROOT, "from-two").unwrap().map(|(v, _)| v.as_i64()),
            )
        };
        assert_eq!(
            three.read(&on_three, read).await.unwrap(),
            (Some(Some(1)), Some(Some(299)))
        );
    }

    #[tokio::test]
    async fn two_nodes_creating_a_users_root_at_once_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .find_or_create_user(&crate::store::UserRecord {
                id: UserId::from_bytes(USER),
                contact_key: "email:ann@example.com".into(),
                created_at: Utc::now(),
                root_document_id: None,
            })
            .await
            .unwrap();
        let (one, two) = (node(&store, 1), node(&store, 2));
        let (a, b) = (
            DocumentId::from_bytes([31; 16]),
            DocumentId::from_bytes([32; 16]),
        );
        let user = UserId::from_bytes(USER);
        let (root_one, root_two) = tokio::join!(
            one.ensure_root(user, a, Utc::now()),
            two.ensure_root(user, b, Utc::now())
        );
        let root = root_one.unwrap();
        assert_eq!(root_two.unwrap(), root);
        // The other one is deleted, so the user has one root and no stray
        // document that reads as one.
        let loser = if root == a { b } else { a };
        let meta = store
            .document_meta(loser)
            .await
            .unwrap()
            .expect("it was claimed");
        assert!(meta.deleted_at.is_some());
        assert!(
            store
                .document_meta(root)
                .await
                .unwrap()
                .unwrap()
                .deleted_at
                .is_none()
        );
    }

    /// Waits until `two` holds what `one` holds.
    async fn converged(one: &DocumentHub, a: &LiveDocument, two: &DocumentHub, b: &LiveDocument) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while two.heads(b).await.unwrap() != one.heads(a).await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes never converged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A node on a shared PostgreSQL database, answering its doorbell.
    async fn pg_node(url: &str, number: u8) -> Arc<DocumentHub> {
        let store = Store::connect(url, 4).await.unwrap();
        let hub = Arc::new(node(&store, number));
        let (id, heard) = store.listen().expect("PostgreSQL rings");
        tokio::spawn(answer(Arc::clone(&hub), id, heard, |_| {}));
        hub
    }

    #[tokio::test]
    async fn on_postgres_a_commit_rings_every_other_node_and_a_lost_listener_catches_up() {
        let cluster = codeedex_test_postgres::Cluster::shared();
        let db = cluster.database();
        let one = pg_node(&db.url(), 1).await;
        let two = pg_node(&db.url(), 2).await;
        let on_one = open(&one).await;
        let on_two = open(&two).await;
        put(&one, &on_one, "first", 1).await;
        converged(&one, &on_one, &two, &on_two).await;
        put(&two, &on_two, "second", 2).await;
        converged(&two, &on_two, &one, &on_one).await;

        // End every LISTEN connection and keep new ones out, so that a
        // change made now rings nobody (the pools keep the connections they
        // have). Once connections are let in again, the listeners reconnect
        // and catch up what they missed.
        let database = db.name();
        cluster.psql(
            "postgres",
            &format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"),
        );
        let ended = cluster.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND query LIKE 'LISTEN%'"
            ),
        );
        assert_eq!(ended.trim(), "2", "both nodes listened");
        put(&one, &on_one, "while-deaf", 3).await;
        cluster.psql(
            "postgres",
            &format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"),
        );
        converged(&one, &on_one, &two, &on_two).await;
        let seen = two
            .read(&on_two, |doc| {
                doc.get(ROOT, "while-deaf")
                    .unwrap()
                    .and_then(|(v, _)| v.as_i64())
            })
            .await
            .unwrap();
        assert_eq!(seen, Some(3));
    }

    #[tokio::test]
    async fn on_postgres_a_deletion_and_a_session_end_reach_every_other_node() {
        let db = codeedex_test_postgres::Cluster::shared().database();
        let url = db.url();
        // Node two hands the sessions it hears of to a channel.
        let one = pg_node(&url, 1).await;
        let store = Store::connect(&url, 4).await.unwrap();
        let two = Arc::new(node(&store, 2));
        let (id, heard) = store.listen().expect("PostgreSQL rings");
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        tokio::spawn(answer(Arc::clone(&two), id, heard, move |session| {
            let _ = ended_tx.send(session);
        }));

        let on_one = open(&one).await;
        put(&one, &on_one, "doomed", 1).await;
        let on_two = open(&two).await;
        assert!(two.loaded_ids().contains(&on_two.id));
        one.tombstone(on_one.id, Utc::now()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while two.loaded_ids().contains(&on_two.id) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node two kept the deleted document"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(on_two.is_deleted());

        let now = Utc::now();
        let (user, _) = one
            .store()
            .find_or_create_user(&crate::store::UserRecord {
                id: UserId::from_bytes(USER),
                contact_key: "email:ann@example.com".into(),
                created_at: now,
                root_document_id: None,
            })
            .await
            .unwrap();
        let session = crate::store::SessionRecord {
            id: codeedex_schema::id::SessionId::from_bytes([5; 16]),
            user_id: user.id,
            device_name: None,
            created_at: now,
            last_used_at: now,
            generation: 0,
            rotated_at: now,
        };
        one.store()
            .insert_session(&session, &[6; 32])
            .await
            .unwrap();
        assert!(one.store().delete_session(session.id).await.unwrap());
        // Node two may first hear that it might have missed notices (its
        // listener's start); the end itself must follow.
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ended.recv().await {
                    Some(SessionNotice::MayHaveEnded) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("node two heard of the session's end");
        assert_eq!(heard, Some(SessionNotice::Ended(session.id)));
    }
}
