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
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
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
    let app = codeedex_tests::app::spawn_app_with(codeedex_tests::app::AppConfig::default().with("--log", "info,codeedex_server::sync=debug")).await;
    let ann = app.sign_in_email("ann@example.com").await;
    let ann2 = app.sign_in_email("ann@example.com").await;
    let mut a = SyncPeer::join(app.port, &ann.tokens.access_token, "device-a", Some("storage-a"), &[]).await.unwrap();
    let mut b = SyncPeer::join(app.port, &ann2.tokens.access_token, "device-b", Some("storage-b"), &[]).await.unwrap();

    let id = new_doc_id();
    a.create(id, |d| put_title(d, "buy milk"));
    a.sync_to_server(id, WAIT).await.unwrap();
    // B asks for the document and receives it.
    b.track(id);
    b.push(id, true).await.unwrap();
    b.sync_until(id, WAIT, |d| read_string(d, "title").as_deref() == Some("buy milk")).await.unwrap();

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
    let mut a = SyncPeer::join(app.port, &ann.tokens.access_token, "ann-1", Some("s-ann"), &[]).await.unwrap();
    let mut b = SyncPeer::join(app.port, &bob.tokens.access_token, "bob-1", Some("s-bob"), &[]).await.unwrap();
    let id = new_doc_id();
    a.create(id, |d| put_title(d, "secret"));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.track(id);
    b.push(id, true).await.unwrap();
    match b.recv(WAIT).await.unwrap() {
        Received::Message(codeedex_schema::wire::Message::DocUnavailable { document_id, .. }) => {
            assert_eq!(document_id, id.to_string())
        }
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
}
