//! Interoperability with the stock JavaScript automerge-repo client.
//!
//! Every test starts its own server ([`spawn_app`]) and drives one or more
//! `tests/js/client.mjs` processes (`@automerge/automerge-repo` 2.5.x with
//! `WebSocketClientAdapter`, the access token in the URL) through
//! [`JsClient`]. Waits are bounded (15 s at most each) and wait for an event
//! or a state, never for a fixed time; a failure shows the JS client's
//! output, including every frame it sent and received.

use std::future::Future;
use std::time::Duration;

use codeedex_tests::app::{AppConfig, TestApp, spawn_app, spawn_app_with};
use codeedex_tests::js_client::{Found, JsClient, JsClientOptions, Storage, WAIT, sync_url};
use serde_json::{Value, json};

/// The server's tolerance on access token expiry (`LEEWAY_SECS` in
/// server/src/auth/tokens.rs), for messages.
const LEEWAY: u64 = 5;

/// Signs `email` in; returns an access token.
async fn token_of(app: &TestApp, email: &str) -> String {
    app.sign_in_email(email).await.tokens.access_token
}

/// A connected in-memory JS client of the user behind `token`.
async fn js_client(app: &TestApp, label: &str, token: &str) -> JsClient {
    JsClient::connect(JsClientOptions::new(label, sync_url(app.port, token))).await
}

/// Polls `check` until it returns `Ok`, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what} did not happen within {WAIT:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/tasks/{id}`: status and body.
async fn rest_task(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let response = app.get_as(token, &format!("/v1/tasks/{id}")).await;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits until the REST view of a task satisfies `check`.
async fn rest_task_until(
    app: &TestApp,
    token: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("REST GET /v1/tasks/{id}: {what}"), || async {
        let (status, body) = rest_task(app, token, id).await;
        if status == 200 && check(&body) {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

/// Server log lines, for failures that may be the server's.
fn server_log(app: &TestApp) -> String {
    let logs = app.logs();
    let skip = logs.len().saturating_sub(100);
    format!(
        "--- server log (last 100 lines) ---\n{}",
        logs[skip..].join("\n")
    )
}

#[tokio::test]
async fn two_js_clients_of_one_user_converge_live() {
    let app = spawn_app().await;
    let token = token_of(&app, "alice@example.com").await;
    let mut a = js_client(&app, "alice-a", &token).await;
    let mut b = js_client(&app, "alice-b", &token).await;

    let id = a.create_synced_task("Water the plants").await;
    let seen = b.find_doc(&id).await;
    assert_eq!(
        seen["title"], "Water the plants",
        "B's first view of A's task: {seen}"
    );
    assert_eq!(seen["done"], false);

    // A edits; B sees it live.
    a.change(&id, "title", json!("Water the plants and the cat"))
        .await;
    b.wait_until(&id, "title", json!("Water the plants and the cat"))
        .await;

    // And the other way round, on other fields.
    b.change(&id, "done", json!(true)).await;
    b.change(&id, "tags.home", json!(true)).await;
    b.change(&id, "notes", json!("twice a week")).await;
    a.wait_until(&id, "done", json!(true)).await;
    a.wait_until(&id, "tags.home", json!(true)).await;
    let a_view = a.wait_until(&id, "notes", json!("twice a week")).await;

    // Concurrent character-level edits of the title merge.
    a.splice(&id, "title", 0, 0, "Please: ").await;
    b.append(&id, "title", "!").await;
    let merged = json!("Please: Water the plants and the cat!");
    a.wait_until(&id, "title", merged.clone()).await;
    let b_view = b.wait_until(&id, "title", merged).await;
    // Each view holds both edits, so every change: they must be equal.
    assert_eq!(a.print(&id).await, b_view, "A and B did not converge");
    assert_eq!(a_view["tags"], json!({ "home": true }));

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn rest_api_reads_js_documents_and_rest_patches_reach_js_clients_live() {
    let app = spawn_app().await;
    let token = token_of(&app, "rest@example.com").await;
    let mut js = js_client(&app, "rest-js", &token).await;

    // A document created by the JS client reaches the server by `sync`.
    let id = js.create_task("Call the plumber").await;
    let task = rest_task_until(&app, &token, &id, "title is the JS client's", |t| {
        t["title"] == "Call the plumber"
    })
    .await;
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["done"], false);
    assert_eq!(task["priority"], "none");

    // The list uses a summary updated on sync.
    eventually("GET /v1/tasks lists the JS client's task", || async {
        let response = app.get_as(&token, "/v1/tasks").await;
        let page: Value = response.json().await.map_err(|e| e.to_string())?;
        let listed = page["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == id.as_str()));
        if listed {
            Ok(())
        } else {
            Err(page.to_string())
        }
    })
    .await;

    // A JS edit shows in REST.
    js.change(&id, "notes", json!("before noon")).await;
    rest_task_until(&app, &token, &id, "notes from the JS edit", |t| {
        t["notes"] == "before noon"
    })
    .await;

    // A REST PATCH reaches the connected client without it asking.
    let response = app
        .client
        .patch(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(&token)
        .json(&json!({ "title": "Call the plumber today", "done": true, "tags": ["house"] }))
        .send()
        .await
        .expect("the server answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "PATCH failed: {body}");
    js.wait_until(&id, "title", json!("Call the plumber today"))
        .await;
    js.wait_until(&id, "done", json!(true)).await;
    let doc = js.wait_until(&id, "tags.house", json!(true)).await;
    assert_eq!(
        doc["notes"], "before noon",
        "the PATCH must not touch other fields: {doc}"
    );
    assert!(
        doc["completedAt"].is_string(),
        "done through REST stamps completedAt: {doc}"
    );

    // A task created through REST can be found by the JS client.
    let response = app
        .post_json_as(&token, "/v1/tasks", &json!({ "title": "Made by REST" }))
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("a task body");
    let rest_id = created["id"].as_str().expect("an id").to_owned();
    let doc = js.find_doc(&rest_id).await;
    assert_eq!(doc["title"], "Made by REST", "{doc}");
    assert_eq!(doc["tags"], json!({}), "{doc}");

    js.exit().await;
}

#[tokio::test]
async fn edits_made_while_disconnected_converge_after_reconnecting() {
    let app = spawn_app().await;
    let token = token_of(&app, "offline@example.com").await;
    let storage = tempfile::tempdir().expect("a temporary directory");
    let mut a = JsClient::connect(
        JsClientOptions::new("offline-a", sync_url(app.port, &token))
            .storage(Storage::Fs(storage.path().to_owned())),
    )
    .await;
    let mut b = js_client(&app, "online-b", &token).await;

    let id = a.create_synced_task("Pack").await;
    assert_eq!(b.find_doc(&id).await["title"], "Pack");

    a.disconnect().await;
    // A edits offline: several fields and several changes.
    a.splice(&id, "title", 4, 0, " the bags").await;
    a.change(&id, "tags.travel", json!(true)).await;
    a.change(&id, "done", json!(true)).await;
    // B edits the same document at the same time, online.
    b.splice(&id, "title", 0, 0, "Tonight: ").await;
    b.change(&id, "notes", json!("passports!")).await;
    // The server has B's edits; A, offline, cannot have them.
    rest_task_until(&app, &token, &id, "B's online edits", |t| {
        t["notes"] == "passports!"
    })
    .await;
    let offline_view = a.print(&id).await;
    assert_eq!(
        offline_view["title"], "Pack the bags",
        "A is offline: {offline_view}"
    );
    assert_eq!(offline_view["notes"], "", "A is offline: {offline_view}");

    a.reconnect().await;
    // Nothing lost on either side. Each client's last change implies its
    // earlier ones (sync delivers changes in causal order).
    b.wait_until(&id, "title", json!("Tonight: Pack the bags"))
        .await;
    b.wait_until(&id, "tags.travel", json!(true)).await;
    b.wait_until(&id, "done", json!(true)).await;
    a.wait_until(&id, "title", json!("Tonight: Pack the bags"))
        .await;
    a.wait_until(&id, "notes", json!("passports!")).await;
    let (a_view, b_view) = (a.print(&id).await, b.print(&id).await);
    assert_eq!(
        a_view, b_view,
        "A and B did not converge after the reconnect"
    );
    let rest = rest_task_until(&app, &token, &id, "every edit from both clients", |t| {
        t["title"] == "Tonight: Pack the bags" && t["done"] == true && t["notes"] == "passports!"
    })
    .await;
    assert_eq!(rest["tags"], json!(["travel"]), "{rest}");

    a.exit().await;
    b.exit().await;
}

/// A `doc-unavailable` the server sent for `id`.
fn is_unavailable(event: &Value, id: &str) -> bool {
    event["event"] == "incoming" && event["type"] == "doc-unavailable" && event["documentId"] == id
}

#[tokio::test]
async fn another_user_can_neither_read_nor_change_a_document() {
    let app = spawn_app().await;
    let alice = token_of(&app, "alice@example.com").await;
    let mallory = token_of(&app, "mallory@example.com").await;
    let mut a1 = js_client(&app, "alice-1", &alice).await;
    let mut a2 = js_client(&app, "alice-2", &alice).await;
    let mut m = js_client(&app, "mallory", &mallory).await;

    let id = a1.create_synced_task("Alice's secret plan").await;
    assert_eq!(a2.find_doc(&id).await["title"], "Alice's secret plan");
    rest_task_until(&app, &alice, &id, "stored", |t| {
        t["title"] == "Alice's secret plan"
    })
    .await;

    // Mallory knows the id but cannot read the document.
    assert_eq!(
        m.find(&id).await,
        Found::Unavailable,
        "{}",
        server_log(&app)
    );
    m.wait_for("doc-unavailable answering the request", WAIT, |e| {
        is_unavailable(e, &id)
    })
    .await;
    let (status, body) = rest_task(&app, &mallory, &id).await;
    assert_eq!(
        status, 404,
        "REST must hide another user's task from Mallory: {body}"
    );

    // Mallory makes a document under the same id and pushes it with `sync`,
    // the way devices upload documents they created offline.
    m.forge(&id, "Mallory was here").await;
    m.change(&id, "notes", json!("pwned")).await;
    // The server refuses it the way it hides unknown documents.
    m.wait_for(
        "doc-unavailable answering the forged document's sync",
        WAIT,
        |e| is_unavailable(e, &id),
    )
    .await;

    // A later change of Alice's travels to her other client; Mallory's
    // changes, sent earlier, must not have come along.
    a1.change(&id, "tags.after-mallory", json!(true)).await;
    let seen = a2.wait_until(&id, "tags.after-mallory", json!(true)).await;
    assert_eq!(
        seen["title"], "Alice's secret plan",
        "Mallory's change reached Alice's client: {seen}"
    );
    assert_eq!(
        seen["notes"], "",
        "Mallory's change reached Alice's client: {seen}"
    );
    let rest = rest_task_until(&app, &alice, &id, "Alice's later change", |t| {
        t["tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t == "after-mallory"))
    })
    .await;
    assert_eq!(
        rest["title"], "Alice's secret plan",
        "Mallory's change reached the server: {rest}"
    );
    assert_eq!(
        rest["notes"], "",
        "Mallory's change reached the server: {rest}"
    );
    let a1_view = a1.print(&id).await;
    assert_eq!(a1_view["title"], "Alice's secret plan", "{a1_view}");

    // Mallory got nothing of Alice's document either.
    let forged = m.print(&id).await;
    assert_eq!(
        forged["title"], "Mallory was here",
        "Alice's data reached Mallory: {forged}"
    );
    assert!(
        forged["tags"].get("after-mallory").is_none(),
        "Alice's data reached Mallory: {forged}"
    );

    // A fresh client of Mallory's still cannot find it.
    let mut m2 = js_client(&app, "mallory-2", &mallory).await;
    assert_eq!(m2.find(&id).await, Found::Unavailable);

    a1.exit().await;
    a2.exit().await;
    m.exit().await;
    m2.exit().await;
}

#[tokio::test]
async fn the_root_document_from_me_is_found_by_a_js_client() {
    let app = spawn_app().await;
    let token = token_of(&app, "root@example.com").await;
    let response = app.get_as(&token, "/v1/me").await;
    assert_eq!(response.status(), 200);
    let me: Value = response.json().await.expect("a user body");
    let root = me["root_document_id"]
        .as_str()
        .expect("GET /v1/me has root_document_id")
        .to_owned();

    let mut js = js_client(&app, "root-js", &token).await;
    let doc = js.find_doc(&root).await;
    assert!(
        doc["tasks"].is_object(),
        "the root document holds a tasks map: {doc}"
    );

    // A task created through REST is listed in the root document, live.
    let response = app
        .post_json_as(&token, "/v1/tasks", &json!({ "title": "Listed" }))
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("a task body");
    let task_id = created["id"].as_str().expect("an id").to_owned();
    let doc = js
        .wait_until(
            &root,
            &format!("tasks.{task_id}"),
            json!(format!("automerge:{task_id}")),
        )
        .await;
    assert_eq!(doc["tasks"].as_object().map(|t| t.len()), Some(1), "{doc}");
    assert_eq!(js.find_doc(&task_id).await["title"], "Listed");

    js.exit().await;
}

#[tokio::test]
async fn a_document_created_offline_is_uploaded_and_reaches_a_client_that_asked_too_early() {
    let app = spawn_app().await;
    let token = token_of(&app, "upload@example.com").await;
    let mut a = js_client(&app, "uploader", &token).await;
    let mut b = js_client(&app, "early-asker", &token).await;

    a.disconnect().await;
    let id = a.create_task("Made offline").await;
    a.change(&id, "notes", json!("still offline")).await;
    // B asks before anyone has the document: unavailable, for now.
    assert_eq!(b.find(&id).await, Found::Unavailable);
    let (status, _) = rest_task(&app, &token, &id).await;
    assert_eq!(
        status, 404,
        "the server cannot have a document made offline"
    );

    // A reconnects and announces the document with `sync`; the server takes
    // it and syncs it to B, which asked earlier (doc-unavailable is not final).
    a.reconnect().await;
    let doc = b.wait_until(&id, "notes", json!("still offline")).await;
    assert_eq!(doc["title"], "Made offline", "{doc}");
    rest_task_until(&app, &token, &id, "the uploaded document", |t| {
        t["title"] == "Made offline" && t["notes"] == "still offline"
    })
    .await;

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn a_client_restarted_on_its_storage_catches_up_and_keeps_syncing() {
    let app = spawn_app().await;
    let token = token_of(&app, "restart@example.com").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = || {
        JsClientOptions::new("stored", sync_url(app.port, &token))
            .storage(Storage::Fs(dir.path().to_owned()))
    };
    let mut a = JsClient::connect(options()).await;
    let mut b = js_client(&app, "always-on", &token).await;

    let id = a.create_synced_task("Stored").await;
    b.find_doc(&id).await;
    a.change(&id, "notes", json!("first run")).await;
    b.wait_until(&id, "notes", json!("first run")).await;
    a.exit().await;

    // While A is gone, B edits.
    b.change(&id, "title", json!("Stored and edited")).await;
    rest_task_until(&app, &token, &id, "B's edit", |t| {
        t["title"] == "Stored and edited"
    })
    .await;

    // A new process on the same storage (same storageId, new peer id) loads
    // its copy, then gets B's edit from the server.
    let mut a = JsClient::connect(options()).await;
    let doc = a.find_doc(&id).await;
    assert_eq!(doc["notes"], "first run", "A's stored copy: {doc}");
    a.wait_until(&id, "title", json!("Stored and edited")).await;
    a.change(&id, "notes", json!("second run")).await;
    b.wait_until(&id, "notes", json!("second run")).await;

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn a_dropped_connection_reconnects_by_itself_and_catches_up() {
    let app = spawn_app().await;
    let token = token_of(&app, "drop@example.com").await;
    let mut a = JsClient::connect(
        JsClientOptions::new("dropped", sync_url(app.port, &token))
            .retry(Duration::from_millis(500)),
    )
    .await;
    let mut b = js_client(&app, "steady", &token).await;
    let id = a.create_synced_task("Flaky network").await;
    b.find_doc(&id).await;

    // The TCP connection dies without a close handshake.
    a.drop_connection().await;
    a.wait_for("the socket to close", WAIT, |e| {
        e["event"] == "socket-closed"
    })
    .await;
    a.change(&id, "notes", json!("written while cut off")).await;
    b.change(&id, "title", json!("Flaky network, fixed")).await;

    // The stock adapter reconnects on its own (same URL, same peer id).
    a.wait_ready().await;
    a.wait_until(&id, "title", json!("Flaky network, fixed"))
        .await;
    b.wait_until(&id, "notes", json!("written while cut off"))
        .await;

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn ephemeral_messages_reach_the_other_clients_of_the_document_once() {
    let app = spawn_app().await;
    let token = token_of(&app, "presence@example.com").await;
    let mut a = js_client(&app, "presence-a", &token).await;
    let mut b = js_client(&app, "presence-b", &token).await;
    let id = a.create_synced_task("Presence").await;
    b.find_doc(&id).await;

    a.broadcast(&id, json!({ "cursor": 3 })).await;
    let got = b
        .wait_for("A's ephemeral message", WAIT, |e| e["event"] == "ephemeral")
        .await;
    assert_eq!(got["message"], json!({ "cursor": 3 }), "{got}");
    assert_eq!(got["id"], id.as_str());
    assert_eq!(
        got["senderId"].as_str(),
        a.peer_id(),
        "the relay keeps the original sender"
    );

    b.broadcast(&id, json!({ "cursor": 5 })).await;
    let got = a
        .wait_for("B's ephemeral message", WAIT, |e| e["event"] == "ephemeral")
        .await;
    assert_eq!(got["message"], json!({ "cursor": 5 }), "{got}");

    // A sync round trip after the broadcasts: any echo would have arrived.
    a.change(&id, "notes", json!("after the broadcasts")).await;
    b.wait_until(&id, "notes", json!("after the broadcasts"))
        .await;
    b.change(&id, "notes", json!("and back")).await;
    a.wait_until(&id, "notes", json!("and back")).await;
    assert!(
        !a.saw(|e| e["event"] == "ephemeral"),
        "A got its own or a repeated ephemeral message\n{}",
        a.diagnostics()
    );
    assert!(
        !b.saw(|e| e["event"] == "ephemeral"),
        "B got its own or a repeated ephemeral message\n{}",
        b.diagnostics()
    );

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn a_client_with_an_invalid_token_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let mut js = JsClient::start(JsClientOptions::new(
        "no-token",
        sync_url(app.port, "not-a-valid-token"),
    ))
    .await;
    let error = js
        .wait_for("the refused upgrade", WAIT, |e| {
            e["event"] == "socket-error"
        })
        .await;
    assert_eq!(
        error["message"], "Unexpected server response: 401",
        "{error}"
    );
    assert!(!js.saw(|e| e["event"] == "ready"), "{}", js.diagnostics());
}

#[tokio::test]
async fn a_client_killed_before_saving_gets_its_change_back_from_the_server() {
    let app = spawn_app().await;
    let token = token_of(&app, "killed@example.com").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = || {
        JsClientOptions::new("stored", sync_url(app.port, &token))
            .storage(Storage::Fs(dir.path().to_owned()))
    };
    let mut a = JsClient::connect(options()).await;
    let id = a.create_synced_task("Stored").await;
    a.exit().await;

    // The server has the change, the client's storage (saved after a 100 ms
    // debounce) most likely not: the process is killed right away. The
    // server keeps a sync state for the client's storageId meanwhile.
    let mut a = JsClient::connect(options()).await;
    a.find_doc(&id).await;
    a.wait_until(&id, "title", json!("Stored")).await;
    a.change(&id, "notes", json!("only on the server")).await;
    a.wait_synced(&id).await;
    a.kill().await;
    rest_task_until(&app, &token, &id, "the change", |t| {
        t["notes"] == "only on the server"
    })
    .await;

    // The next process on that storage gets the change from the server.
    let mut a = JsClient::connect(options()).await;
    a.find_doc(&id).await;
    a.wait_until(&id, "notes", json!("only on the server"))
        .await;
    a.exit().await;
}

#[tokio::test]
async fn a_task_deleted_through_rest_stays_deleted_for_js_clients() {
    let app = spawn_app().await;
    let token = token_of(&app, "delete@example.com").await;
    let mut a = js_client(&app, "holder", &token).await;
    let id = a.create_synced_task("To delete").await;

    let response = app
        .client
        .delete(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 204);
    // The connected client is told at once.
    a.wait_for("doc-unavailable after the delete", WAIT, |e| {
        is_unavailable(e, &id)
    })
    .await;

    // Its later edits are refused, not stored: the task stays deleted.
    a.change(&id, "title", json!("Resurrected")).await;
    a.wait_for("doc-unavailable answering the edit", WAIT, |e| {
        is_unavailable(e, &id)
    })
    .await;
    let (status, body) = rest_task(&app, &token, &id).await;
    assert_eq!(status, 404, "the deleted task came back: {body}");
    let page: Value = app
        .get_as(&token, "/v1/tasks")
        .await
        .json()
        .await
        .expect("a task page");
    assert_eq!(page["tasks"], json!([]), "{page}");
    let mut b = js_client(&app, "newcomer", &token).await;
    assert_eq!(b.find(&id).await, Found::Unavailable);

    a.exit().await;
    b.exit().await;
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_4001_and_is_refused_on_reconnect() {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 3)).await;
    let token = token_of(&app, "expiry@example.com").await;
    let mut js = JsClient::connect(
        JsClientOptions::new("expiring", sync_url(app.port, &token))
            .retry(Duration::from_millis(500)),
    )
    .await;

    // At expiry the server says why, then closes with 4001.
    let error = js
        .wait_for("the expiry error", WAIT, |e| e["event"] == "server-error")
        .await;
    assert_eq!(error["message"], "access token expired", "{error}");
    let closed = js
        .wait_for("the close", WAIT, |e| e["event"] == "socket-closed")
        .await;
    assert_eq!(closed["code"], 4001, "{closed}");

    // The stock adapter reconnects with the same URL, hence the same expired
    // token: the upgrade must be refused, not accepted and closed again.
    let next = js
        .wait_for("the reconnect's outcome", WAIT, |e| {
            e["event"] == "socket-error" || e["event"] == "ready"
        })
        .await;
    if next["event"] != "socket-error" {
        js.fail(&format!(
            "the server accepted the expired token again (upgrade 101 and `peer`, then close 4001); \
             it authenticates with {LEEWAY} s of leeway after `exp` but closes the socket at `exp`: {next}\n{}",
            server_log(&app)
        ));
    }
    assert_eq!(next["message"], "Unexpected server response: 401", "{next}");
}

/// What a Node application gets from the stock adapter as it ships (the
/// other tests imitate a browser, see `tests/js/client.mjs`): once the token
/// in its URL has expired, the reconnect is refused with 401, the adapter
/// rethrows the error, and Node ends the process. README's interop notes
/// say what a Node application does instead.
#[tokio::test]
async fn on_node_the_unpatched_stock_adapter_ends_the_process_at_a_refused_reconnect() {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 3)).await;
    let token = token_of(&app, "node-user@example.com").await;
    let mut js = JsClient::connect(
        JsClientOptions::new("stock-node", sync_url(app.port, &token))
            .retry(Duration::from_millis(500))
            .stock_errors(),
    )
    .await;
    let closed = js
        .wait_for("the close at expiry", WAIT, |e| {
            e["event"] == "socket-closed"
        })
        .await;
    assert_eq!(closed["code"], 4001, "{closed}");
    let refused = js
        .wait_for("the refused reconnect", WAIT, |e| {
            e["event"] == "socket-error"
        })
        .await;
    assert_eq!(
        refused["message"], "Unexpected server response: 401",
        "{refused}"
    );
    let (status, stderr) = js.wait_for_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(1),
        "Node ends the process on the rethrown error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("Unexpected server response: 401"),
        "the uncaught error is the refused upgrade; stderr:\n{stderr}"
    );
}

// ---- A third peer written in Rust -----------------------------------------

/// Two stock JS clients and a Rust peer (a frame-level automerge-repo peer
/// built on the `automerge` crate) of one user edit one task: every edit
/// reaches the other two live, and all three end with the same document.
#[tokio::test]
async fn two_js_clients_and_a_rust_peer_of_one_user_converge_live() {
    use automerge::transaction::Transactable;
    use codeedex_schema::id::DocumentId;
    use codeedex_tests::sync_peer::{SyncPeer, read_string};

    let app = spawn_app().await;
    let token = token_of(&app, "alice@example.com").await;
    let mut a = js_client(&app, "alice-a", &token).await;
    let mut b = js_client(&app, "alice-b", &token).await;
    let mut rust = SyncPeer::join(app.port, &token, "alice-rust", Some("rust-storage"), &[])
        .await
        .expect("the Rust peer joins");

    let id = a.create_synced_task("Plan the trip").await;
    let doc: DocumentId = id.parse().expect("a JS document id parses");
    b.find_doc(&id).await;
    rust.track(doc);
    rust.push(doc, true).await.unwrap();
    rust.sync_until(doc, WAIT, |d| {
        read_string(d, "title").as_deref() == Some("Plan the trip")
    })
    .await
    .expect("the Rust peer receives the JS client's task");

    // The Rust peer edits the notes (plain string); both JS clients see it.
    rust.change(doc, |d| {
        d.put(automerge::ROOT, "notes", "from rust").unwrap();
    });
    rust.sync_to_server(doc, WAIT).await.unwrap();
    a.wait_until(&id, "notes", json!("from rust")).await;
    b.wait_until(&id, "notes", json!("from rust")).await;

    // A JS client edits; the Rust peer sees it live.
    b.change(&id, "done", json!(true)).await;
    rust.sync_until(doc, WAIT, |d| {
        matches!(
            automerge::ReadDoc::get(d, automerge::ROOT, "done"),
            Ok(Some((automerge::Value::Scalar(s), _))) if s.as_bool() == Some(true)
        )
    })
    .await
    .expect("the Rust peer sees the JS client's edit");
    let a_view = a.wait_until(&id, "done", json!(true)).await;
    assert_eq!(a_view["notes"], "from rust");
    assert_eq!(
        read_string(&rust.docs[&doc].0, "title").as_deref(),
        Some("Plan the trip")
    );
    rust.close().await;
    a.exit().await;
    b.exit().await;
}
