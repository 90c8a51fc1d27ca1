//! End-to-end tests of the sync WebSocket: real server process, real
//! WebSocket clients, Automerge replicas on the test side.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT};
use codeedex_schema::id::DocumentId;
use codeedex_tests::app::spawn_app;
use codeedex_tests::sync_peer::{Received, SyncPeer, read_string};

const WAIT: Duration = Duration::from_secs(10);

fn new_doc_id() -> DocumentId {
    DocumentId::from_random_bytes(rand_bytes())
}

fn rand_bytes() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut out = [0u8; 16];
    out.copy_from_slice(&nanos.to_le_bytes());
    out[15] ^= std::process::id() as u8;
    out
}

fn put_title(doc: &mut automerge::AutoCommit, title: &str) {
    let t = doc.put_object(ROOT, "title", ObjType::Text).unwrap();
    doc.splice_text(&t, 0, 0, title).unwrap();
}

#[tokio::test]
async fn a_change_from_one_device_reaches_another_live() {
    let app = codeedex_tests::app::spawn_app_with(
        codeedex_tests::app::AppConfig::default().with("--log", "info,codeedex_server::sync=debug"),
    )
    .await;
    let ann = app.sign_in_email("ann@example.com").await;
    let ann2 = app.sign_in_email("ann@example.com").await;
    let mut a = SyncPeer::join(
        app.port,
        &ann.tokens.access_token,
        "device-a",
        Some("storage-a"),
        &[],
    )
    .await
    .unwrap();
    let mut b = SyncPeer::join(
        app.port,
        &ann2.tokens.access_token,
        "device-b",
        Some("storage-b"),
        &[],
    )
    .await
    .unwrap();

    let id = new_doc_id();
    a.create(id, |d| put_title(d, "buy milk"));
    a.sync_to_server(id, WAIT).await.unwrap();
    // B asks for the document and receives it.
    b.track(id);
    b.push(id, true).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        read_string(d, "title").as_deref() == Some("buy milk")
    })
    .await
    .unwrap();

    // A edits; B gets it without asking.
    a.change(id, |d| {
        d.put(ROOT, "done", true).unwrap();
    });
    a.sync_to_server(id, WAIT).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        matches!(automerge::ReadDoc::get(d, ROOT, "done"), Ok(Some((automerge::Value::Scalar(s), _))) if s.as_bool() == Some(true))
    })
    .await
    .unwrap();
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn another_users_document_is_unavailable() {
    let app = spawn_app().await;
    let ann = app.sign_in_email("ann@example.com").await;
    let bob = app.sign_in_email("bob@example.com").await;
    let mut a = SyncPeer::join(
        app.port,
        &ann.tokens.access_token,
        "ann-1",
        Some("s-ann"),
        &[],
    )
    .await
    .unwrap();
    let mut b = SyncPeer::join(
        app.port,
        &bob.tokens.access_token,
        "bob-1",
        Some("s-bob"),
        &[],
    )
    .await
    .unwrap();
    let id = new_doc_id();
    a.create(id, |d| put_title(d, "secret"));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.track(id);
    b.push(id, true).await.unwrap();
    match b.recv(WAIT).await.unwrap() {
        Received::Message(codeedex_schema::wire::Message::DocUnavailable {
            document_id, ..
        }) => {
            assert_eq!(document_id, id.to_string())
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Shared by the test modules below.

#[path = "sync/auth.rs"]
mod auth;
#[path = "sync/documents.rs"]
mod documents;
#[path = "sync/eviction.rs"]
mod eviction;
#[path = "sync/hostile.rs"]
mod hostile;
#[path = "sync/limits.rs"]
mod limits;
#[path = "sync/schema.rs"]
mod schema;
#[path = "sync/stories.rs"]
mod stories;
#[path = "sync/wire.rs"]
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};

use automerge::sync::{self as am_sync, SyncDoc};
use automerge::{AutoCommit, ObjId, ReadDoc, Value};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::wire::Message;
use codeedex_tests::app::TestApp;

/// A document id that differs from every other one this process makes.
fn fresh_id() -> DocumentId {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut bytes = rand_bytes();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    for (b, x) in bytes[8..].iter_mut().zip(n.to_le_bytes()) {
        *b ^= x;
    }
    DocumentId::from_random_bytes(bytes)
}

/// Signs `email` in (a new session each time) and returns its access token.
async fn token_of(app: &TestApp, email: &str) -> String {
    app.sign_in_email(email).await.tokens.access_token
}

/// The REST view of task `id`, as the holder of `token` sees it.
async fn rest_task(app: &TestApp, token: &str, id: DocumentId) -> TaskView {
    app.get_as(token, &format!("/v1/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Signs in and joins with a storage id named after the peer.
async fn joined(app: &TestApp, email: &str, peer_id: &str) -> SyncPeer {
    let token = token_of(app, email).await;
    SyncPeer::join(
        app.port,
        &token,
        peer_id,
        Some(&format!("storage-{peer_id}")),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("{peer_id} cannot join: {e:#}"))
}

/// Sends `count` ephemeral messages of 32 KiB about `id` from `peer`, for
/// the server to relay to the document's other subscribers.
async fn flood_ephemeral(peer: &mut SyncPeer, id: DocumentId, count: u64) {
    let payload = vec![7u8; 32 * 1024];
    for count in 0..count {
        peer.send(&Message::Ephemeral {
            sender_id: peer.peer_id.clone(),
            target_id: peer.server_peer_id.clone(),
            document_id: id.to_string(),
            count,
            session_id: "cursor".into(),
            data: payload.clone(),
        })
        .await
        .unwrap();
    }
}

/// A task-shaped replica: title and notes as collaborative text.
fn task(doc: &mut AutoCommit, title: &str, notes: &str) {
    put_title(doc, title);
    let n = doc.put_object(ROOT, "notes", ObjType::Text).unwrap();
    doc.splice_text(&n, 0, 0, notes).unwrap();
}

fn text_id(doc: &AutoCommit, key: &str) -> ObjId {
    match doc.get(ROOT, key).unwrap() {
        Some((Value::Object(ObjType::Text), id)) => id,
        other => panic!("{key} is not text: {other:?}"),
    }
}

/// Inserts `text` into the text field `key` at character `at`.
fn insert_text(doc: &mut AutoCommit, key: &str, at: usize, text: &str) {
    let id = text_id(doc, key);
    doc.splice_text(&id, at, 0, text).unwrap();
}

/// Appends `text` to the text field `key`.
fn append_text(doc: &mut AutoCommit, key: &str, text: &str) {
    let id = text_id(doc, key);
    let len = doc.length(&id);
    doc.splice_text(&id, len, 0, text).unwrap();
}

fn is_true(doc: &AutoCommit, key: &str) -> bool {
    matches!(doc.get(ROOT, key), Ok(Some((Value::Scalar(s), _))) if s.as_bool() == Some(true))
}

/// Waits for the close and checks that an `error` message came right before it.
async fn expect_error_then_close(peer: &mut SyncPeer, code: u16, within: Duration) -> String {
    let closed = peer
        .expect_close(within)
        .await
        .unwrap_or_else(|e| panic!("no close {code} within {within:?}: {e:#}"));
    assert_eq!(
        closed,
        Some(code),
        "close code (messages before it: {:?})",
        peer.backlog
    );
    match peer.backlog.last() {
        Some(Message::Error { message }) => message.clone(),
        other => panic!("expected an error message right before close {code}, got {other:?}"),
    }
}

/// One encoded Automerge sync message that carries every change of `doc`,
/// as a peer sends it to the server once the server said what it has (the
/// first message of a sync carries no changes).
fn message_with_changes(doc: &mut AutoCommit) -> Vec<u8> {
    let mut empty = AutoCommit::new();
    let (mut ours, mut theirs) = (am_sync::State::new(), am_sync::State::new());
    let first = doc
        .sync()
        .generate_sync_message(&mut ours)
        .expect("a first message");
    empty
        .sync()
        .receive_sync_message(&mut theirs, first)
        .unwrap();
    let mut answer = empty
        .sync()
        .generate_sync_message(&mut theirs)
        .expect("an answer");
    // As the server answers: without the flags that would invite a whole
    // document (sync v2), which the server does not take from peers.
    answer.flags = None;
    doc.sync().receive_sync_message(&mut ours, answer).unwrap();
    let with_changes = doc
        .sync()
        .generate_sync_message(&mut ours)
        .expect("a message with changes");
    assert!(
        !with_changes.changes.is_empty(),
        "the crafted message carries changes"
    );
    with_changes.encode()
}

/// A `sync` message from `peer` about `id` with raw data.
fn sync_message(peer: &SyncPeer, id: &str, data: Vec<u8>) -> Message {
    Message::Sync {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        document_id: id.to_owned(),
        data,
    }
}

/// A `request` message from `peer` about `id` with the first sync message of
/// an empty replica.
fn request_message(peer: &SyncPeer, id: &str) -> Message {
    let data = AutoCommit::new()
        .sync()
        .generate_sync_message(&mut am_sync::State::new())
        .expect("a first message")
        .encode();
    Message::Request {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        document_id: id.to_owned(),
        data,
    }
}

/// Asks for `id` and checks that the server answers `doc-unavailable`.
async fn told_unavailable(peer: &mut SyncPeer, id: DocumentId) {
    peer.request(id).await.unwrap();
    match peer.next_message(WAIT).await.unwrap() {
        Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, id.to_string()),
        other => panic!(
            "{}: expected doc-unavailable for {id}, got {other:?}",
            peer.peer_id
        ),
    }
}

/// Waits for the next `sync` about `id` without sending anything first, and
/// applies it (answering it). Other messages go to the backlog.
async fn receive_sync_unasked(peer: &mut SyncPeer, id: DocumentId, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.recv(left).await {
            Ok(Received::Message(m @ Message::Sync { .. }))
                if m.document_id() == Some(id.to_string().as_str()) =>
            {
                peer.apply(&m).await.unwrap();
                peer.backlog.splice(0..0, skipped);
                return;
            }
            Ok(Received::Message(other)) => skipped.push(other),
            Ok(Received::Closed(frame)) => {
                panic!("the socket closed while waiting for {id}: {frame:?}")
            }
            Err(e) => panic!("no sync message for {id} arrived unasked within {within:?}: {e:#}"),
        }
    }
}
