//! Eviction and reload with real documents: a document edited past the
//! server's snapshot interval and after it, dropped from memory while a
//! device is offline, then loaded again from its snapshot and the events
//! after it. Every device that syncs afterwards ends with exactly the right
//! state.

use automerge::ObjType;
use automerge::transaction::Transactable;
use codeedex_tests::app::{AppConfig, spawn_app_with};

use super::*;

/// More edits than the server's snapshot interval (one snapshot every 256
/// events), so that the first upload leaves a snapshot behind.
const BEFORE_SNAPSHOT: usize = 300;

/// Edits after the snapshot: events that only the log holds.
const AFTER_SNAPSHOT: usize = 10;

fn append(doc: &mut AutoCommit, entry: &str) {
    let (_, log) = doc.get(ROOT, "log").unwrap().expect("the log list");
    let len = doc.length(&log);
    doc.insert(&log, len, entry).unwrap();
    // One change per edit, as a device that syncs after every edit makes.
    doc.commit();
}

fn entries(doc: &AutoCommit) -> Vec<String> {
    let Some((_, log)) = doc.get(ROOT, "log").unwrap() else {
        return Vec::new();
    };
    (0..doc.length(&log))
        .map(|i| match doc.get(&log, i).unwrap() {
            Some((Value::Scalar(s), _)) => s.as_str().expect("a string").to_owned(),
            other => panic!("entry {i} is {other:?}"),
        })
        .collect()
}

fn sorted_heads(doc: &mut AutoCommit) -> Vec<automerge::ChangeHash> {
    let mut heads = doc.get_heads();
    heads.sort();
    heads
}

fn replica(peer: &mut SyncPeer, id: DocumentId) -> &mut AutoCommit {
    &mut peer.docs.get_mut(&id).expect("a replica").0
}

/// Waits until the server holds no document in memory.
async fn wait_until_evicted(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.metric("codeedex_documents_in_memory").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle documents were not evicted within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests `id` as a device that does not have it, and syncs until its
/// replica has `heads`.
async fn fetch(peer: &mut SyncPeer, id: DocumentId, heads: &[automerge::ChangeHash]) {
    peer.track(id);
    peer.push(id, true).await.unwrap();
    peer.sync_until(id, WAIT, |d| {
        let mut ours = d.clone().get_heads();
        ours.sort();
        ours == heads
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_document_evicted_while_a_device_is_offline_reloads_with_every_edit() {
    let app = spawn_app_with(AppConfig::default().with("--document-idle-secs", 1)).await;
    let phone_token = token_of(&app, "ann@example.com").await;
    let mut laptop = joined(&app, "ann@example.com", "ann-laptop").await;
    let mut phone = SyncPeer::join(
        app.port,
        &phone_token,
        "ann-phone",
        Some("storage-ann-phone"),
        &[],
    )
    .await
    .unwrap();

    // Edits before the snapshot, all of which the phone gets.
    let id = fresh_id();
    laptop.create(id, |d| {
        put_title(d, "many edits");
        d.put_object(ROOT, "log", ObjType::List).unwrap();
    });
    for n in 0..BEFORE_SNAPSHOT {
        laptop.change(id, |d| append(d, &format!("before {n}")));
    }
    laptop.sync_to_server(id, WAIT).await.unwrap();
    let before = sorted_heads(replica(&mut laptop, id));
    fetch(&mut phone, id, &before).await;

    // The phone goes offline and edits there; the laptop edits after the
    // snapshot, then leaves too.
    let mut offline = phone.go_offline().await;
    offline
        .get_mut(&id)
        .unwrap()
        .0
        .put(ROOT, "done", true)
        .unwrap();
    append(&mut offline.get_mut(&id).unwrap().0, "phone, offline");
    for n in 0..AFTER_SNAPSHOT {
        laptop.change(id, |d| append(d, &format!("after {n}")));
    }
    laptop.sync_to_server(id, WAIT).await.unwrap();
    let laptop_heads = sorted_heads(replica(&mut laptop, id));
    let laptop_entries = entries(replica(&mut laptop, id));
    assert_eq!(laptop_entries.len(), BEFORE_SNAPSHOT + AFTER_SNAPSHOT);
    laptop.close().await;

    // Nobody syncs the document any more: once idle, it leaves memory.
    wait_until_evicted(&app).await;

    // A device that never had it gets everything, from the snapshot and
    // the events after it. It goes first, so that no device that still
    // holds the edits can upload them again.
    let mut tablet = joined(&app, "ann@example.com", "ann-tablet").await;
    fetch(&mut tablet, id, &laptop_heads).await;
    assert_eq!(entries(replica(&mut tablet, id)), laptop_entries);
    assert_eq!(
        read_string(replica(&mut tablet, id), "title").as_deref(),
        Some("many edits")
    );

    // The phone comes back with its saved sync state: it gets exactly the
    // laptop's later edits, and the server its offline ones.
    let mut phone = SyncPeer::rejoin(
        app.port,
        &phone_token,
        "ann-phone",
        Some("storage-ann-phone"),
        &[],
        offline,
    )
    .await
    .unwrap();
    phone.sync_to_server(id, WAIT).await.unwrap();
    phone
        .sync_until(id, WAIT, |d| {
            laptop_heads
                .iter()
                .all(|h| d.clone().get_change_by_hash(h).is_some())
        })
        .await
        .unwrap();
    phone.sync_to_server(id, WAIT).await.unwrap();
    let merged = entries(replica(&mut phone, id));
    let mut expected = laptop_entries.clone();
    expected.push("phone, offline".into());
    let (mut merged_sorted, mut expected_sorted) = (merged.clone(), expected);
    merged_sorted.sort();
    expected_sorted.sort();
    assert_eq!(
        merged_sorted, expected_sorted,
        "the phone's log: {merged:?}"
    );

    // The tablet, still online, receives the phone's edits: all three
    // replicas hold one document.
    let phone_heads = sorted_heads(replica(&mut phone, id));
    tablet
        .sync_until(id, WAIT, |d| {
            let mut ours = d.clone().get_heads();
            ours.sort();
            ours == phone_heads
        })
        .await
        .unwrap();
    assert_eq!(entries(replica(&mut tablet, id)), merged);
    let task = rest_task(&app, &phone_token, id).await;
    assert!(
        task.done,
        "REST reads the reloaded copy with the phone's edit"
    );
}
