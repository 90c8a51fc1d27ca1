//! Moving a server from its embedded store to PostgreSQL, end to end: a
//! real server on sled, a real client-core device that signs in and syncs,
//! `codeedex-server migrate` as a real process, and the server started
//! again on the database alone. The device keeps its session and its sync
//! state: it resyncs with heads only, as it would have against the old
//! store, and the tokens issued before the move still work.

use std::process::Command;
use std::time::Duration;

use codeedex_client_core::{Client, ClientConfig, NewTask, SignInIdentifier, TokenStorage};
use codeedex_test_postgres::Cluster;
use codeedex_tests::app::{TestApp, server_binary, spawn_app};
use codeedex_tests::fault_proxy::FaultProxy;

/// The longest any wait lasts.
const WAIT: Duration = Duration::from_secs(30);
const TASKS: usize = 6;
/// Characters of notes per task: enough that a change carrying them is far
/// larger than a sync message that carries only heads.
const NOTES: usize = 19_000;
const EMAIL: &str = "mover@example.com";

/// Notes that do not compress (a change's columns are deflated): letters
/// from a xorshift generator.
fn incompressible_notes(seed: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..NOTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The task ids REST lists for `token`.
async fn rest_listed(app: &TestApp, token: &str) -> Vec<String> {
    let response = app.get_as(token, "/v1/tasks?limit=500").await;
    assert_eq!(response.status(), 200, "listing tasks");
    let page: serde_json::Value = response.json().await.expect("a task page");
    let mut ids: Vec<String> = page["tasks"]
        .as_array()
        .expect("a task list")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Bytes both ways through the proxy while the device at `dir` opens and
/// syncs once: what a device that restarts costs the network.
async fn resync_bytes(proxy: &FaultProxy, config: &ClientConfig) -> u64 {
    let device = Client::open(config.clone()).expect("the device opens");
    assert_eq!(device.status().unsynced_documents, 0);
    let before = proxy.stats();
    device.sync_once(WAIT).await.expect("the device syncs");
    let after = proxy.stats();
    assert_eq!(device.status().unsynced_documents, 0);
    assert_eq!(device.status().tasks, TASKS);
    device.stop_sync().await;
    (after.bytes_up + after.bytes_down) - (before.bytes_up + before.bytes_down)
}

#[tokio::test]
async fn a_device_that_synced_before_the_move_resyncs_with_heads_only_after_it() {
    let mut app = spawn_app().await;
    // The device talks to the server through a proxy that counts bytes.
    let proxy = FaultProxy::start(app.port, 14).await;
    let device_dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = ClientConfig::new(
        device_dir.path(),
        &format!("http://127.0.0.1:{}", proxy.port()),
    );
    config.token_storage = TokenStorage::File;
    config.device_name = Some("laptop".to_owned());

    let (upload, mut created) = {
        let device = Client::open(config.clone()).expect("the device opens");
        let who = SignInIdentifier::Email(EMAIL.to_owned());
        device.request_code(&who).await.expect("a code is sent");
        let code = app.next_email_code(EMAIL).await;
        device.verify_code(&who, &code).await.expect("signed in");
        let mut created = Vec::new();
        for n in 0..TASKS {
            let task = device
                .create_task(&NewTask {
                    notes: Some(incompressible_notes(n as u64 + 1)),
                    ..NewTask::titled(&format!("task {n} to move"))
                })
                .expect("created");
            created.push(task.id.to_string());
        }
        let before = proxy.stats();
        device.sync_once(WAIT).await.expect("the device syncs");
        assert_eq!(device.status().unsynced_documents, 0);
        device.stop_sync().await;
        let after = proxy.stats();
        (after.bytes_up - before.bytes_up, created)
    };
    created.sort();
    // A second session, for REST and the refresh after the move.
    let rest = app.sign_in_email(EMAIL).await.tokens;
    assert_eq!(rest_listed(&app, &rest.access_token).await, created);
    // What sending one task costs, on average: a resync that sent or
    // received any change would cost at least about that much.
    let one_task = upload / TASKS as u64;
    let on_sled = resync_bytes(&proxy, &config).await;
    assert!(
        on_sled < one_task,
        "on the old store, a resync with nothing new ({on_sled} bytes) costs less than one task ({one_task} bytes)"
    );

    // While the server runs, its store is not copied.
    let database = Cluster::shared().database();
    let data_dir = app.data_dir.path().to_owned();
    let migrate = || {
        Command::new(server_binary())
            .arg("migrate")
            .arg("--from-data-dir")
            .arg(&data_dir)
            .env("CODEEDEX_DATABASE_URL", database.url())
            .output()
            .expect("the migration runs")
    };
    let refused = migrate();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop the server"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Stop the server and move its store.
    assert!(app.terminate().success());
    let migrate = migrate();
    let stdout = String::from_utf8_lossy(&migrate.stdout);
    let stderr = String::from_utf8_lossy(&migrate.stderr);
    assert!(
        migrate.status.success(),
        "the migration failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("the database holds the same as the embedded store"),
        "{stdout}"
    );
    assert!(stderr.contains("copied"), "progress on stderr: {stderr}");
    assert!(
        !stdout.contains(&database.url()) && !stderr.contains(&database.url()),
        "the database URL is never printed"
    );

    // A second run finds the database taken and changes nothing in it.
    let again = Command::new(server_binary())
        .arg("migrate")
        .arg("--from-data-dir")
        .arg(app.data_dir.path())
        .arg("--to-database-url")
        .arg(database.url())
        .output()
        .expect("the migration runs");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The server starts on the database alone: the sled store and the key
    // files are out of its reach.
    for moved in ["store", "secrets"] {
        std::fs::rename(
            app.data_dir.path().join(moved),
            app.data_dir.path().join(format!("{moved}.before-the-move")),
        )
        .expect("moving the old store away");
    }
    app.set_env("CODEEDEX_DATABASE_URL", database.url());
    app.start_again();
    assert!(
        app.logs()
            .iter()
            .any(|l| l.contains("store=\"postgres\"") || l.contains("store=postgres")),
        "the server runs on PostgreSQL"
    );

    // Same device, same tokens, same sync state: nothing to send or
    // receive but heads, as on the old store.
    let on_postgres = resync_bytes(&proxy, &config).await;
    assert!(
        on_postgres < one_task,
        "resyncing after the move cost {on_postgres} bytes, more than sending one task ({one_task} bytes); before it {on_sled}"
    );
    // The REST session made before the move lists the tasks, and its
    // refresh token still works.
    assert_eq!(rest_listed(&app, &rest.access_token).await, created);
    let refreshed = app.refresh(&rest.refresh_token).await;
    assert_eq!(refreshed.status(), 200, "the refresh token still works");

    // And the device goes on working: a new task reaches the database.
    let device = Client::open(config.clone()).expect("the device opens");
    let task = device
        .create_task(&NewTask::titled("after the move"))
        .expect("created");
    device.sync_once(WAIT).await.expect("the device syncs");
    device.stop_sync().await;
    created.push(task.id.to_string());
    created.sort();
    assert_eq!(rest_listed(&app, &rest.access_token).await, created);
}
