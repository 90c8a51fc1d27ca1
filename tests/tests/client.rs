//! client-core end to end: real server processes, real client-core devices.
//!
//! Every test starts its own server ([`spawn_app`]) and opens one or more
//! [`Client`]s, each on its own temporary data directory (a device), signed
//! in with a code read from the server's mail. Waits poll for a state with a
//! bound, never sleep for a fixed time to let something happen.

use std::future::Future;
use std::time::Duration;

use codeedex_client_core::{
    AuthStatus, Client, ClientConfig, ClientEvent, DocumentId, LogoutScope, NewTask,
    SignInIdentifier, StatusFilter, SyncStatus, TaskFilter, TaskView, TokenStorage, UpdateTask,
};
use codeedex_tests::app::{AppConfig, TestApp, spawn_app, spawn_app_with};
use codeedex_tests::js_client::{JsClient, JsClientOptions, sync_url};
use codeedex_tests::sync_peer::{TokenIn, connect};
use serde_json::json;

/// The longest any wait lasts.
const WAIT: Duration = Duration::from_secs(30);

/// One device: a client on its own data directory.
struct Device {
    client: Client,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Device {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Opens a device and signs it in as `email`; sync is not started.
async fn signed_in_device(app: &TestApp, email: &str, name: &str) -> Device {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = ClientConfig::new(dir.path(), &app.address);
    config.token_storage = TokenStorage::File;
    config.device_name = Some(name.to_owned());
    let client = Client::open(config).expect("the client opens");
    let who = SignInIdentifier::Email(email.to_owned());
    client.request_code(&who).await.expect("a code is sent");
    let code = app.next_email_code(email).await;
    let me = client
        .verify_code(&who, &code)
        .await
        .expect("the code signs in");
    assert!(
        me.root_document_id.is_some(),
        "the server names the root document"
    );
    Device { client, _dir: dir }
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_tasks(client: &Client) -> Vec<TaskView> {
    client.list_tasks(&TaskFilter {
        status: StatusFilter::All,
        ..TaskFilter::default()
    })
}

fn find(client: &Client, id: DocumentId) -> Option<TaskView> {
    client.task(id).ok()
}

async fn up_to_date(client: &Client) {
    eventually("up to date", || async {
        matches!(client.sync_status(), SyncStatus::UpToDate { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_devices_and_a_js_client_merge_concurrent_edits_made_while_one_device_was_offline() {
    let app = spawn_app().await;
    let a = signed_in_device(&app, "ann@example.com", "laptop").await;
    let b = signed_in_device(&app, "ann@example.com", "phone").await;
    a.start_sync().await;
    b.start_sync().await;

    let task = a.create_task(&NewTask::titled("draft")).expect("created");
    eventually("B sees the new task", || async { find(&b, task.id) }).await;

    // A stock JS automerge-repo client of the same user opens the task too.
    let token = app
        .sign_in_email("ann@example.com")
        .await
        .tokens
        .access_token;
    let mut js =
        JsClient::connect(JsClientOptions::new("ann-js", sync_url(app.port, &token))).await;
    let js_id = task.id.to_string();
    assert_eq!(js.find_doc(&js_id).await["title"], json!("draft"));

    // B goes offline; A changes the title, B the notes, the JS client the priority.
    b.stop_sync().await;
    a.update_task(
        task.id,
        &UpdateTask {
            title: Some("final".into()),
            ..Default::default()
        },
    )
    .expect("A edits");
    b.update_task(
        task.id,
        &UpdateTask {
            notes: Some("from b".into()),
            ..Default::default()
        },
    )
    .expect("B edits offline");
    js.wait_until(&js_id, "title", json!("final")).await;
    js.change(&js_id, "priority", json!("high")).await;
    eventually("A holds the JS edit", || async {
        find(&a, task.id).filter(|t| t.priority == "high")
    })
    .await;
    b.start_sync().await;

    for (name, device) in [("A", &a), ("B", &b)] {
        eventually(&format!("{name} holds all three edits"), || async {
            find(device, task.id)
                .filter(|t| t.title == "final" && t.notes == "from b" && t.priority == "high")
        })
        .await;
    }
    let merged = js.wait_until(&js_id, "notes", json!("from b")).await;
    assert_eq!(
        (&merged["title"], &merged["priority"]),
        (&json!("final"), &json!("high"))
    );
    js.exit().await;
}

#[tokio::test]
async fn five_hundred_offline_edits_across_a_hundred_tasks_arrive_once() {
    let app = spawn_app().await;
    let a = signed_in_device(&app, "bo@example.com", "laptop").await;
    // A learns the root, then works offline.
    a.sync_once(WAIT).await.expect("A syncs once");
    let offline_started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            a.create_task(&NewTask::titled(&format!("task {i}")))
                .expect("created")
                .id,
        );
    }
    for round in 0..4 {
        for (i, id) in ids.iter().enumerate() {
            let update = match round {
                0 => UpdateTask {
                    notes: Some(format!("notes {i}")),
                    ..Default::default()
                },
                1 => UpdateTask {
                    priority: Some("high".into()),
                    ..Default::default()
                },
                2 => UpdateTask {
                    tags: Some(vec![format!("t{}", i % 7)]),
                    ..Default::default()
                },
                _ => UpdateTask {
                    title: Some(format!("task {i} final")),
                    ..Default::default()
                },
            };
            a.update_task(*id, &update).expect("edited offline");
        }
    }
    assert_eq!(
        a.status().unsynced_documents,
        101,
        "100 tasks and the root wait to be sent"
    );

    let b = signed_in_device(&app, "bo@example.com", "phone").await;
    let offline_took = offline_started.elapsed();
    b.start_sync().await;
    let reconnected = std::time::Instant::now();
    a.start_sync().await;
    up_to_date(&a).await;
    let uploaded = reconnected.elapsed();
    let seen = eventually("B holds every task in its final state", || async {
        let tasks = all_tasks(&b);
        (tasks.len() == 100 && tasks.iter().all(|t| t.title.ends_with("final"))).then_some(tasks)
    })
    .await;
    eprintln!(
        "500 offline edits: {offline_took:?} locally; A up to date {uploaded:?} after reconnecting; \
         B holds all {:?} after A reconnected",
        reconnected.elapsed()
    );
    let mut seen_ids: Vec<DocumentId> = seen.iter().map(|t| t.id).collect();
    seen_ids.sort();
    seen_ids.dedup();
    assert_eq!(seen_ids.len(), 100, "no task twice");
    for (i, id) in ids.iter().enumerate() {
        let t = seen.iter().find(|t| t.id == *id).expect("every task of A");
        assert_eq!(t.title, format!("task {i} final"));
        assert_eq!(t.notes, format!("notes {i}"));
        assert_eq!(t.priority, "high");
        assert_eq!(t.tags, vec![format!("t{}", i % 7)]);
    }
    // The server agrees: exactly 100 tasks.
    let token = app
        .sign_in_email("bo@example.com")
        .await
        .tokens
        .access_token;
    let page: serde_json::Value = app
        .get_as(&token, "/v1/tasks?limit=500")
        .await
        .json()
        .await
        .expect("a task page");
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(100), "{page}");
    assert_eq!(a.status().unsynced_documents, 0);
}

#[tokio::test]
async fn clients_reconnect_on_their_own_after_the_server_restarts() {
    let mut app = spawn_app().await;
    let a = signed_in_device(&app, "cy@example.com", "laptop").await;
    let b = signed_in_device(&app, "cy@example.com", "phone").await;
    a.start_sync().await;
    b.start_sync().await;
    let before = a
        .create_task(&NewTask::titled("before the crash"))
        .expect("created");
    eventually("B sees the first task", || async { find(&b, before.id) }).await;

    app.crash_and_restart();
    let after = a
        .create_task(&NewTask::titled("after the crash"))
        .expect("created");
    eventually("B sees a task made after the restart", || async {
        find(&b, after.id)
    })
    .await;
    b.complete_task(before.id).expect("B edits");
    eventually("A sees B's edit", || async {
        find(&a, before.id).filter(|t| t.done)
    })
    .await;
}

#[tokio::test]
async fn an_access_token_expiring_mid_session_is_refreshed_without_losing_an_edit() {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 3)).await;
    let a = signed_in_device(&app, "di@example.com", "laptop").await;
    let b = signed_in_device(&app, "di@example.com", "phone").await;
    a.start_sync().await;
    b.start_sync().await;
    up_to_date(&a).await;
    let mut a_events = a.subscribe();
    let task = a.create_task(&NewTask::titled("edit 0")).expect("created");
    // Edits for 8 s: the access tokens (3 s) expire at least twice meanwhile.
    for i in 1..=16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.update_task(
            task.id,
            &UpdateTask {
                title: Some(format!("edit {i}")),
                notes: Some(format!("{i}")),
                ..Default::default()
            },
        )
        .expect("edited");
    }
    eventually("B holds the last edit", || async {
        find(&b, task.id).filter(|t| t.title == "edit 16")
    })
    .await;
    assert!(matches!(a.auth_status(), AuthStatus::LoggedIn { .. }));
    // The tokens were replaced in place: A never dropped its connection.
    while let Some(event) = a_events.try_next() {
        assert!(
            !matches!(
                event,
                ClientEvent::AuthStatus {
                    status: AuthStatus::LoggedOut
                } | ClientEvent::SyncStatus {
                    status: SyncStatus::Offline | SyncStatus::Connecting
                }
            ),
            "A was signed out or disconnected: {event:?}"
        );
    }
    // The sessions still work over REST with the refreshed tokens.
    assert_eq!(a.sessions().await.expect("sessions").len(), 2);
}

#[tokio::test]
async fn a_session_revoked_from_another_device_reports_logged_out() {
    let app = spawn_app().await;
    let a = signed_in_device(&app, "ed@example.com", "laptop").await;
    let b = signed_in_device(&app, "ed@example.com", "phone").await;
    a.start_sync().await;
    up_to_date(&a).await;
    let mut events = a.subscribe();
    assert_eq!(
        b.logout(LogoutScope::Others)
            .await
            .expect("B ends the other sessions"),
        1
    );
    let logged_out = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if matches!(
                event,
                ClientEvent::AuthStatus {
                    status: AuthStatus::LoggedOut
                }
            ) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        logged_out,
        Ok(true),
        "A did not report logged-out within {WAIT:?}"
    );
    assert_eq!(a.auth_status(), AuthStatus::LoggedOut);
    // Local work goes on offline.
    a.create_task(&NewTask::titled("still works offline"))
        .expect("created offline");
    assert!(matches!(b.auth_status(), AuthStatus::LoggedIn { .. }));
}

#[tokio::test]
async fn a_restarted_device_resends_nothing_and_picks_up_what_changed_meanwhile() {
    let app = spawn_app().await;
    let b = signed_in_device(&app, "fa@example.com", "phone").await;
    b.start_sync().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = || {
        let mut config = ClientConfig::new(dir.path(), &app.address);
        config.token_storage = TokenStorage::File;
        config
    };
    let task = {
        let a = Client::open(config()).expect("opens");
        let who = SignInIdentifier::Email("fa@example.com".into());
        a.request_code(&who).await.expect("sent");
        let code = app.next_email_code("fa@example.com").await;
        a.verify_code(&who, &code).await.expect("signed in");
        let task = a.create_task(&NewTask::titled("from a")).expect("created");
        a.sync_once(WAIT).await.expect("synced");
        assert_eq!(a.status().unsynced_documents, 0);
        a.stop_sync().await;
        task
    };
    eventually("B sees A's task", || async { find(&b, task.id) }).await;
    b.update_task(
        task.id,
        &UpdateTask {
            notes: Some("while A was off".into()),
            ..Default::default()
        },
    )
    .expect("edited");
    up_to_date(&b).await;

    // A starts again from its data directory: still signed in, nothing to
    // send, and B's change arrives.
    let a = Client::open(config()).expect("reopens");
    assert_eq!(a.status().unsynced_documents, 0);
    a.sync_once(WAIT).await.expect("synced again");
    assert_eq!(
        find(&a, task.id).expect("still there").notes,
        "while A was off"
    );
}

#[tokio::test]
async fn a_device_refused_by_a_busy_server_comes_back_after_retry_after_and_not_before() {
    // One new connection a second, burst one. Other devices that were just
    // refused have taken the next return slots, so this device is told to
    // wait several seconds; with its own backoff alone it would retry
    // within a quarter of a second, and again and again.
    let app = spawn_app_with(
        AppConfig::default()
            .with("--sync-connections-per-second", 1)
            .with("--sync-connection-burst", 1),
    )
    .await;
    let device = signed_in_device(&app, "dee@example.com", "phone").await;
    let other = app
        .sign_in_email("dee@example.com")
        .await
        .tokens
        .access_token;
    let herd = || connect(app.port, Some(&other), TokenIn::Header, None);
    let _admitted = herd()
        .await
        .expect("the first connection takes the one token");
    for _ in 0..3 {
        herd().await.expect_err("the herd is refused");
    }
    let shed = "codeedex_sync_connections_shed_total";
    assert_eq!(app.metric(shed).await, 3);

    let started = tokio::time::Instant::now();
    device.start_sync().await;
    eventually("the device is refused once", || async {
        (app.metric(shed).await == 4).then_some(())
    })
    .await;
    // The device was told to come back in four seconds (the fourth slot):
    // it does not knock again before then. Had it knocked early, it would
    // have been refused again (a fifth refusal) or let in before its slot.
    up_to_date(&device).await;
    assert_eq!(
        app.metric(shed).await,
        4,
        "the device retried before its Retry-After"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the device connected {:?} after starting, before its slot",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_the_default_token_storage_a_restarted_device_stays_signed_in_until_it_logs_out() {
    // Every other test here forces the file store; devices run with the
    // default, which picks the OS keyring when it takes the tokens.
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = || ClientConfig::new(dir.path(), &app.address);
    assert_eq!(config().token_storage, TokenStorage::Auto);
    let token_file = dir.path().join("tokens.json");
    let task = {
        let a = Client::open(config()).expect("opens");
        let who = SignInIdentifier::Email("auto@example.com".into());
        a.request_code(&who).await.expect("sent");
        let code = app.next_email_code("auto@example.com").await;
        a.verify_code(&who, &code).await.expect("signed in");
        a.create_task(&NewTask::titled("before the restart"))
            .expect("created")
    };

    // Restarted: still signed in, from wherever the tokens went, and the
    // server takes them.
    let a = Client::open(config()).expect("reopens");
    assert!(matches!(a.auth_status(), AuthStatus::LoggedIn { .. }));
    let place = a.status().token_storage;
    assert_eq!(
        place,
        if token_file.exists() {
            "file"
        } else {
            "keyring"
        },
        "the status names another place than the one holding the tokens"
    );
    a.sync_once(WAIT)
        .await
        .expect("synced with the restored tokens");
    assert_eq!(a.status().unsynced_documents, 0);
    assert!(find(&a, task.id).is_some());

    // Logged out: a restart finds no tokens in either place.
    a.logout(LogoutScope::This).await.expect("logged out");
    drop(a);
    assert!(!token_file.exists(), "the token file outlived the logout");
    let a = Client::open(config()).expect("reopens");
    assert!(
        !matches!(a.auth_status(), AuthStatus::LoggedIn { .. }),
        "still signed in after logging out ({place})"
    );
}

/// The ids `GET /v1/tasks` lists.
async fn rest_listed(app: &TestApp, token: &str) -> Vec<String> {
    let page: serde_json::Value = app
        .get_as(token, "/v1/tasks?limit=500")
        .await
        .json()
        .await
        .expect("a task page");
    page["tasks"]
        .as_array()
        .expect("a task list")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_task_deleted_on_a_device_leaves_the_rest_api_too_even_when_deleted_offline() {
    let app = spawn_app().await;
    let a = signed_in_device(&app, "ida@example.com", "laptop").await;
    let token = app
        .sign_in_email("ida@example.com")
        .await
        .tokens
        .access_token;
    a.start_sync().await;
    let online = a
        .create_task(&NewTask::titled("deleted online"))
        .expect("created");
    let offline = a
        .create_task(&NewTask::titled("deleted offline"))
        .expect("created");
    let kept = a.create_task(&NewTask::titled("kept")).expect("created");
    up_to_date(&a).await;
    eventually("REST lists the three tasks", || async {
        (rest_listed(&app, &token).await.len() == 3).then_some(())
    })
    .await;

    // Online: the deletion reaches REST while sync runs.
    a.delete_task(online.id).expect("deleted");
    eventually("REST drops the task deleted online", || async {
        (!rest_listed(&app, &token)
            .await
            .contains(&online.id.to_string()))
        .then_some(())
    })
    .await;
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{}", online.id))
            .await
            .status(),
        404
    );

    // Offline (sync stopped): REST keeps listing it until the device is
    // back; then it is gone, and the kept task stays.
    a.stop_sync().await;
    a.delete_task(offline.id).expect("deleted");
    assert!(
        rest_listed(&app, &token)
            .await
            .contains(&offline.id.to_string())
    );
    a.start_sync().await;
    eventually("REST drops the task deleted offline", || async {
        let listed = rest_listed(&app, &token).await;
        (listed == vec![kept.id.to_string()]).then_some(())
    })
    .await;
    assert_eq!(
        all_tasks(&a).iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![kept.id]
    );
}
