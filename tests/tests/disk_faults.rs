//! Disk faults: the server's disk fails under it, then works again.
//!
//! The server runs with libfiu preloaded ([`DiskFaults`]); the test makes
//! every write and sync to disk fail with `EIO` while a device syncs and
//! REST clients write. While the disk fails, nothing is acknowledged: REST
//! answers 503 `storage_unavailable`, the device is closed with 4013,
//! `/readyz` says not ready, and the process keeps running. Once the disk
//! works again the store reopens itself, service resumes without a restart,
//! and a SIGKILL afterwards loses nothing that was acknowledged and keeps
//! nothing that was refused.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjType, ROOT, sync};
use codeedex_schema::api::tasks::{TaskPage, TaskView};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::Message;
use codeedex_schema::wire::close::STORAGE_UNAVAILABLE;
use codeedex_tests::app::{AppConfig, TestApp, problem_code, spawn_app_with};
use codeedex_tests::disk_faults::DiskFaults;
use codeedex_tests::sync_peer::SyncPeer;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn fresh_id() -> DocumentId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&nanos.to_le_bytes());
    bytes[15] ^= std::process::id() as u8;
    DocumentId::from_random_bytes(bytes)
}

fn put_title(doc: &mut AutoCommit, title: &str) {
    let text = doc.put_object(ROOT, "title", ObjType::Text).unwrap();
    doc.splice_text(&text, 0, 0, title).unwrap();
}

async fn create_task(app: &TestApp, token: &str, title: &str) -> reqwest::Response {
    app.post_json_as(token, "/v1/tasks", &json!({ "title": title }))
        .await
}

async fn titles(app: &TestApp, token: &str) -> Vec<String> {
    let response = app.get_as(token, "/v1/tasks").await;
    assert_eq!(response.status(), 200);
    let page: TaskPage = response.json().await.unwrap();
    page.tasks.into_iter().map(|t| t.title).collect()
}

async fn join(app: &TestApp, token: &str, peer_id: &str) -> SyncPeer {
    SyncPeer::join(
        app.port,
        token,
        peer_id,
        Some(&format!("storage-{peer_id}")),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{peer_id} cannot join: {e:#}"))
}

fn heads(peer: &mut SyncPeer, id: DocumentId) -> Vec<ChangeHash> {
    let mut heads = peer.docs.get_mut(&id).expect("a replica").0.get_heads();
    heads.sort();
    heads
}

/// Whether any sync message the server sent claims to hold `change`.
fn acknowledges(messages: &[Message], change: ChangeHash) -> bool {
    messages.iter().any(|m| match m {
        Message::Sync { data, .. } => sync::Message::decode(data)
            .map(|m| m.heads.contains(&change))
            .unwrap_or(false),
        _ => false,
    })
}

async fn wait_until_ready(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.get("/readyz").await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not become ready within {WAIT:?} of the disk recovering"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_panic(app: &mut TestApp) {
    assert!(app.is_running(), "the server process died");
    let panics: Vec<String> = app
        .logs()
        .into_iter()
        .filter(|line| line.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

/// Whether any sync message the server sent carries `change` or says it
/// holds it.
fn reveals(messages: &[Message], change: ChangeHash) -> bool {
    acknowledges(messages, change)
        || messages.iter().any(|m| match m {
            Message::Sync { data, .. } => sync::Message::decode(data)
                .map(|m| {
                    m.changes.iter().any(|bytes| {
                        automerge::Change::from_bytes(bytes.to_vec())
                            .is_ok_and(|c| c.hash() == change)
                    })
                })
                .unwrap_or(false),
            _ => false,
        })
}

/// Only the flush fails (fsync and sync_file_range answer `EIO`, writes
/// still succeed): the change is in the page cache, never on disk, and
/// neither its sender nor the user's other device hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_only_the_flush_fails_nothing_is_acknowledged_or_relayed() {
    let faults = DiskFaults::new();
    let app = spawn_app_with(faults.preload(AppConfig::default())).await;
    let laptop_token = app
        .sign_in_email("cat@example.com")
        .await
        .tokens
        .access_token;
    let phone_token = app
        .sign_in_email("cat@example.com")
        .await
        .tokens
        .access_token;
    let mut laptop = join(&app, &laptop_token, "cat-laptop").await;
    let mut phone = join(&app, &phone_token, "cat-phone").await;
    let doc = fresh_id();
    laptop.create(doc, |d| put_title(d, "flushed"));
    laptop.sync_to_server(doc, WAIT).await.unwrap();
    phone.request(doc).await.unwrap();
    let synced = heads(&mut laptop, doc);
    phone
        .sync_until(doc, WAIT, |d| {
            let mut heads = d.clone().get_heads();
            heads.sort();
            heads == synced
        })
        .await
        .unwrap();

    faults.fail_syncs(app.pid());
    laptop.change(doc, |d| {
        d.put(ROOT, "never flushed", true).unwrap();
    });
    let change = heads(&mut laptop, doc)[0];
    laptop.push(doc, false).await.unwrap();
    assert_eq!(
        laptop.expect_close(WAIT).await.unwrap(),
        Some(STORAGE_UNAVAILABLE),
        "the sender: {:?}",
        laptop.backlog
    );
    assert!(
        !reveals(&laptop.backlog, change),
        "the server acknowledged a change whose flush failed"
    );
    // The other device's copy came from the failed engine: it is closed too,
    // never having been sent the change.
    assert_eq!(
        phone.expect_close(WAIT).await.unwrap(),
        Some(STORAGE_UNAVAILABLE),
        "the other device: {:?}",
        phone.backlog
    );
    assert!(
        !reveals(&phone.backlog, change),
        "the server relayed a change whose flush failed"
    );
    faults.heal(app.pid());
    wait_until_ready(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_disk_fails_nothing_is_acknowledged_and_service_resumes_by_itself() {
    let faults = DiskFaults::new();
    let mut app = spawn_app_with(faults.preload(AppConfig::default())).await;
    let token = app
        .sign_in_email("ann@example.com")
        .await
        .tokens
        .access_token;

    // Before the fault: a REST task and a synced document, acknowledged.
    assert_eq!(
        create_task(&app, &token, "before the fault").await.status(),
        201
    );
    let mut laptop = join(&app, &token, "ann-laptop").await;
    let doc = fresh_id();
    laptop.create(doc, |d| put_title(d, "synced before the fault"));
    laptop.sync_to_server(doc, WAIT).await.unwrap();

    faults.fail_writes(app.pid());

    // A change pushed while the disk fails is never acknowledged, and the
    // connection is closed with 4013, after the protocol's error message.
    laptop.change(doc, |d| {
        d.put(ROOT, "edited during the fault", true).unwrap();
    });
    let during = heads(&mut laptop, doc)[0];
    laptop.push(doc, false).await.unwrap();
    let closed = laptop.expect_close(WAIT).await.unwrap();
    assert_eq!(
        closed,
        Some(STORAGE_UNAVAILABLE),
        "messages before the close: {:?}",
        laptop.backlog
    );
    assert!(
        !acknowledges(&laptop.backlog, during),
        "the server acknowledged a change the disk never took"
    );
    match laptop.backlog.last() {
        Some(Message::Error { message }) => assert!(message.contains("storage"), "{message}"),
        other => panic!("expected an error message before the close, got {other:?}"),
    }

    // REST writes are refused with a problem document and a retry hint.
    let refused = create_task(&app, &token, "during the fault").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(problem_code(refused).await, "storage_unavailable");

    // Not ready, and it stays so while the disk fails, through the store's
    // attempts to reopen itself: once one of them has failed (it says so in
    // the log), the server is still not ready.
    assert_eq!(app.get("/readyz").await.status(), 503);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !app
        .logs()
        .iter()
        .any(|l| l.contains("the store is still unavailable"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never tried to reopen itself"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(
        create_task(&app, &token, "during the fault, again")
            .await
            .status(),
        503
    );
    assert!(app.metric("codeedex_store_failures_total").await >= 1);
    assert_eq!(app.metric("codeedex_store_recoveries_total").await, 0);
    assert_no_panic(&mut app);

    // The disk works again: the server recovers by itself.
    faults.heal(app.pid());
    wait_until_ready(&app).await;
    assert_eq!(app.metric("codeedex_store_recoveries_total").await, 1);
    let after = create_task(&app, &token, "after the fault").await;
    assert_eq!(after.status(), 201);
    let after: TaskView = after.json().await.unwrap();

    // The device reconnects and sends again what was never acknowledged.
    let replicas = SyncPeer::keep_replicas(std::mem::take(&mut laptop.docs));
    let mut laptop = SyncPeer::rejoin(
        app.port,
        &token,
        "ann-laptop",
        Some("storage-ann-laptop"),
        &[],
        replicas,
    )
    .await
    .unwrap();
    laptop.sync_to_server(doc, WAIT).await.unwrap();
    let acknowledged = heads(&mut laptop, doc);
    assert!(acknowledged.contains(&during));
    assert_no_panic(&mut app);
    assert!(
        app.logs()
            .iter()
            .any(|l| l.contains("the store failed") && l.contains("ERROR")),
        "the failure was not logged"
    );
    assert!(
        app.logs().iter().any(|l| l.contains("the store recovered")),
        "the recovery was not logged"
    );

    // A SIGKILL now loses nothing that was acknowledged and keeps nothing
    // that was refused.
    tokio::task::block_in_place(|| app.crash_and_restart());
    let mut kept = titles(&app, &token).await;
    kept.sort();
    assert_eq!(
        kept,
        [
            "after the fault",
            "before the fault",
            "synced before the fault"
        ]
    );
    let got = app.get_as(&token, &format!("/v1/tasks/{}", after.id)).await;
    assert_eq!(got.status(), 200);
    let mut phone = join(&app, &token, "ann-phone").await;
    phone.request(doc).await.unwrap();
    phone
        .sync_until(doc, WAIT, |d| {
            let mut heads = d.clone().get_heads();
            heads.sort();
            heads == acknowledged
        })
        .await
        .unwrap();

    // And the records agree with each other.
    let status = app.terminate();
    assert!(status.success(), "the server exited with {status}");
    let store = codeedex_server::store::Store::open(app.data_dir.path()).unwrap();
    assert_eq!(store.verify().await.unwrap(), Vec::<String>::new());
}

/// Changes a round makes at most; the server snapshots a document every
/// 256 events.
const MOST_CHANGES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_snapshotting_reopens_and_keeps_every_acknowledged_change() {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x005e_ed0f_5a17);
    let mut rng = codeedex_tests::fault_proxy::Rng::new(seed);
    let mut app = spawn_app_with(AppConfig::default()).await;
    let token = app
        .sign_in_email("ann@example.com")
        .await
        .tokens
        .access_token;
    let mut documents = Vec::new();
    for round in 0..3 {
        let mut peer = join(&app, &token, &format!("ann-streamer-{round}")).await;
        let id = fresh_id();
        peer.create(id, |d| {
            put_title(d, &format!("round {round}"));
            d.put_object(ROOT, "notes", ObjType::Text).unwrap();
        });
        let notes = match automerge::ReadDoc::get(&peer.docs[&id].0, ROOT, "notes") {
            Ok(Some((_, notes))) => notes,
            other => panic!("no notes: {other:?}"),
        };
        // Batches of edits, each synced until the server acknowledges it.
        // Once the log passed its first snapshot, a timer kills the server
        // at a random moment while the batches go on: within a snapshot,
        // between two, or while the log grows towards the next.
        let mut acknowledged: Vec<ChangeHash> = Vec::new();
        let mut changes = 0;
        let mut kill: Option<std::thread::JoinHandle<()>> = None;
        while changes < MOST_CHANGES {
            peer.change(id, |d| {
                for _ in 0..16 {
                    d.splice_text(&notes, 0, 0, "twenty characters...").unwrap();
                    d.commit();
                }
            });
            changes += 16;
            if peer.sync_to_server(id, WAIT).await.is_err() {
                break;
            }
            acknowledged = heads(&mut peer, id);
            if kill.is_none() && changes > 256 {
                let (pid, after) = (app.pid(), Duration::from_millis(rng.below(600)));
                kill = Some(std::thread::spawn(move || {
                    std::thread::sleep(after);
                    let _ = std::process::Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .status();
                }));
            }
        }
        kill.expect("the round passed a snapshot")
            .join()
            .expect("the killer ran");
        assert!(
            changes < MOST_CHANGES,
            "[seed {seed}] round {round}: the server outlived its kill"
        );
        tokio::task::block_in_place(|| app.crash_and_restart());
        // The restarted server has every change it acknowledged.
        let mut reader = join(&app, &token, &format!("ann-reader-{round}")).await;
        reader.request(id).await.unwrap();
        reader
            .sync_until(id, WAIT, |d| {
                automerge::ReadDoc::get_missing_deps(d, &acknowledged).is_empty()
            })
            .await
            .unwrap_or_else(|e| {
                panic!("[seed {seed}] round {round}: the server lost acknowledged changes: {e:#}")
            });
        let task = app.get_as(&token, &format!("/v1/tasks/{id}")).await;
        assert_eq!(task.status(), 200, "[seed {seed}] round {round}");
        documents.push(id);
    }
    let status = app.terminate();
    assert!(status.success(), "the server exited with {status}");
    let store = codeedex_server::store::Store::open(app.data_dir.path()).unwrap();
    assert_eq!(
        store.verify().await.unwrap(),
        Vec::<String>::new(),
        "[seed {seed}]"
    );
    // Every kill came after the first snapshot of its document.
    for id in &documents {
        let stored = store.load_document(*id).await.unwrap();
        assert!(
            stored.snapshot.is_some(),
            "[seed {seed}] no snapshot of {id}"
        );
    }
}
