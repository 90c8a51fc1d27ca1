//! Several server nodes on one PostgreSQL database, end to end: real server
//! processes sharing a fresh database of the test's own PostgreSQL
//! ([`Cluster::shared`]), client-core devices and the stock JS client on
//! different nodes, a node killed in the middle of a burst, refreshes of one
//! session racing on two nodes, and two nodes behind nginx rendered from
//! `deploy/nginx.conf`.
//!
//! Every wait polls with a deadline; no test asserts how fast anything is.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use codeedex_client_core::{
    Client, ClientConfig, DocumentId, NewTask, SignInIdentifier, SyncStatus, TokenStorage,
    UpdateTask,
};
use codeedex_schema::api::auth::{AuditEventList, AuditKind, SignInResponse, TokenPair};
use codeedex_test_postgres::{Cluster, TestDatabase};
use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use codeedex_tests::js_client::{JsClient, JsClientOptions, sync_url};
use codeedex_tests::sync_peer::SyncPeer;
use serde_json::{Value, json};

/// The longest any wait lasts.
const WAIT: Duration = Duration::from_secs(20);

/// A node on `db`, with `extra` settings.
async fn node_with(db: &TestDatabase, config: AppConfig) -> TestApp {
    spawn_app_with(
        config
            .with("--database-url", db.url())
            .with("--database-pool-size", 4),
    )
    .await
}

/// A node on `db`.
async fn node(db: &TestDatabase) -> TestApp {
    node_with(db, AppConfig::default()).await
}

/// Polls `check` until it returns `Ok`, for at most [`WAIT`]; the panic
/// shows the last reason it gave.
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One device: a client-core client on its own data directory.
struct Device {
    client: Client,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Device {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

fn device_config(dir: &Path, server_url: &str, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(dir, server_url);
    config.token_storage = TokenStorage::File;
    config.device_name = Some(name.to_owned());
    config
}

/// Opens a device on `server_url` and signs it in as `email`; the code
/// arrives in the mail catcher of one of `nodes` (behind a balancer, the
/// device does not choose which). Sync is not started.
async fn signed_in_device(server_url: &str, nodes: &[&TestApp], email: &str, name: &str) -> Device {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let client =
        Client::open(device_config(dir.path(), server_url, name)).expect("the client opens");
    let who = SignInIdentifier::Email(email.to_owned());
    client.request_code(&who).await.expect("a code is sent");
    let code = code_from_any(nodes, email).await;
    client
        .verify_code(&who, &code)
        .await
        .expect("the code signs in");
    Device { client, dir }
}

/// The next code mailed to `email` by any of `nodes`.
async fn code_from_any(nodes: &[&TestApp], email: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for node in nodes {
            if let Ok(mail) = node
                .mail
                .wait_for_mail_to(email, Duration::from_millis(100))
                .await
            {
                let code = mail.code(6).expect("the mail holds a 6-digit code");
                node.remember_secret(&code);
                return code;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node mailed a code to {email}"
        );
    }
}

async fn up_to_date(client: &Client) {
    eventually("the device is up to date", || async {
        match client.sync_status() {
            SyncStatus::UpToDate { .. } => Ok(()),
            other => Err(format!(
                "{other:?}, last error {:?}",
                client.last_sync_error()
            )),
        }
    })
    .await;
}

/// `GET /v1/tasks/{id}` on `node`: status and body.
async fn rest_task(node: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let response = node.get_as(token, &format!("/v1/tasks/{id}")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every task `GET /v1/tasks` lists on `node`, page by page.
async fn rest_list(node: &TestApp, token: &str) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/tasks?limit=100&after={after}"),
            None => "/v1/tasks?limit=100".to_owned(),
        };
        let response = node.get_as(token, &path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let page: Value = response.json().await.expect("a task page");
        tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return tasks,
        }
    }
}

/// Server log lines of both nodes, for failures that may be theirs.
fn logs_of(nodes: &[&TestApp]) -> String {
    let mut out = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let logs = node.logs();
        let skip = logs.len().saturating_sub(60);
        out.push_str(&format!(
            "--- node {} (last 60 lines) ---\n{}\n",
            i + 1,
            logs[skip..].join("\n")
        ));
    }
    out
}

#[tokio::test]
async fn a_device_on_one_node_and_a_js_client_on_the_other_converge_live_and_rest_sees_it() {
    let db = Cluster::shared().database();
    let one = node(&db).await;
    let two = node(&db).await;
    let email = "nora@example.com";
    let a = signed_in_device(&one.address, &[&one], email, "laptop").await;
    a.start_sync().await;
    up_to_date(&a).await;

    // The stock JS client of the same user, signed in on and syncing with
    // node 2 only.
    let token = two.sign_in_email(email).await.tokens.access_token;
    let mut js =
        JsClient::connect(JsClientOptions::new("nora-js", sync_url(two.port, &token))).await;

    // A task made over sync on node 1 is at once in node 2's REST view and
    // reaches the JS client on node 2.
    let task = a
        .create_task(&NewTask::titled("made on node 1"))
        .expect("created");
    let id = task.id.to_string();
    eventually("REST on node 2 lists the task made on node 1", || async {
        let listed = rest_list(&two, &token).await;
        if listed.iter().any(|t| t["id"] == id.as_str()) {
            Ok(())
        } else {
            Err(format!("{listed:?}\n{}", logs_of(&[&one, &two])))
        }
    })
    .await;
    let (status, body) = rest_task(&two, &token, &id).await;
    assert_eq!((status, &body["title"]), (200, &json!("made on node 1")));
    assert_eq!(js.find_doc(&id).await["title"], json!("made on node 1"));

    // Node 2 to node 1, live: the JS client's edit reaches the device.
    js.change(&id, "title", json!("edited on node 2")).await;
    eventually("the device holds the edit made on node 2", || async {
        match a.task(task.id) {
            Ok(t) if t.title == "edited on node 2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // And node 1 to node 2 again, on a document both already hold.
    a.update_task(
        task.id,
        &UpdateTask {
            notes: Some("from the laptop".into()),
            ..Default::default()
        },
    )
    .expect("A edits");
    js.wait_until(&id, "notes", json!("from the laptop")).await;

    // A task made over REST on node 2 (which lists it in the user's root
    // document) reaches the device on node 1, and the JS client opens it.
    let response = two
        .post_json_as(&token, "/v1/tasks", &json!({ "title": "made on node 2" }))
        .await;
    assert_eq!(response.status(), 201);
    let made: Value = response.json().await.expect("a task");
    let made_id = made["id"].as_str().expect("an id").to_owned();
    let made_doc: DocumentId = made_id.parse().expect("a document id");
    eventually("the device lists the task made on node 2", || async {
        match a.task(made_doc) {
            Ok(t) if t.title == "made on node 2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        js.find_doc(&made_id).await["title"],
        json!("made on node 2")
    );
    js.exit().await;
}

/// How many times the same change bytes are in one document's log.
fn duplicated_changes(db: &TestDatabase) -> String {
    Cluster::shared()
        .psql(
            db.name(),
            "SELECT count(*) FROM (SELECT doc, md5(change) FROM events \
             GROUP BY doc, md5(change) HAVING count(*) > 1) AS twice",
        )
        .trim()
        .to_owned()
}

/// Opens the device's client again, on another server: the previous client
/// may still be letting go of its store.
async fn reopen(dir: &Path, server_url: &str) -> Client {
    eventually("the device's store opens again", || async {
        Client::open(device_config(dir, server_url, "laptop")).map_err(|e| e.to_string())
    })
    .await
}

#[tokio::test]
async fn a_node_killed_in_a_burst_of_writes_loses_no_acknowledged_change_and_doubles_none() {
    let db = Cluster::shared().database();
    let mut one = node(&db).await;
    let two = node(&db).await;
    let email = "kit@example.com";
    let a = signed_in_device(&one.address, &[&one], email, "laptop").await;
    a.start_sync().await;
    up_to_date(&a).await;
    let token = two.sign_in_email(email).await.tokens.access_token;

    // A burst of tasks, each also bumping a counter in the first task's
    // notes. Every tenth write waits until the server holds everything, so
    // that some changes are surely acknowledged before the kill and the
    // last few surely are in flight when it comes. `acknowledged` is how
    // many of the tasks the device knew the server held.
    let first = a.create_task(&NewTask::titled("burst 0")).expect("created");
    let mut made: Vec<(DocumentId, String)> = vec![(first.id, "burst 0".to_owned())];
    let mut acknowledged = 0;
    let mut acknowledged_notes = None;
    const KILL_AT: usize = 35;
    for i in 1..KILL_AT {
        if i % 10 == 0 {
            eventually("the server holds the burst so far", || async {
                match a.status().unsynced_documents {
                    0 => Ok(()),
                    n => Err(format!("{n} documents unsynced")),
                }
            })
            .await;
        }
        if a.status().unsynced_documents == 0 {
            acknowledged = made.len();
            acknowledged_notes = a.task(first.id).ok().map(|t| t.notes);
        }
        let title = format!("burst {i}");
        let task = a.create_task(&NewTask::titled(&title)).expect("created");
        made.push((task.id, title));
        a.update_task(
            first.id,
            &UpdateTask {
                notes: Some(format!("count {i}")),
                ..Default::default()
            },
        )
        .expect("edited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    one.kill();
    assert!(
        acknowledged >= 30,
        "the burst waited for the server three times"
    );

    // Every change the device saw acknowledged is in the database: node 2,
    // which never held these documents, reads each one fresh from it.
    for (id, title) in &made[..acknowledged] {
        let (status, body) = rest_task(&two, &token, &id.to_string()).await;
        assert_eq!(
            (status, &body["title"]),
            (200, &json!(title)),
            "acknowledged task {title} on node 2: {body}\n{}",
            logs_of(&[&one, &two])
        );
    }
    let (_, body) = rest_task(&two, &token, &first.id.to_string()).await;
    let acknowledged_notes = acknowledged_notes.expect("the first task was acknowledged");
    let seen: u32 = body["notes"]
        .as_str()
        .and_then(|n| n.strip_prefix("count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let expected: u32 = acknowledged_notes
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        seen >= expected,
        "node 2 holds the counter at {seen}, the device saw {expected} acknowledged"
    );

    // The device goes on offline, then is pointed at node 2 and sends what
    // node 1 never acknowledged; nothing is lost or doubled.
    for i in KILL_AT..KILL_AT + 5 {
        let title = format!("burst {i}");
        let task = a.create_task(&NewTask::titled(&title)).expect("created");
        made.push((task.id, title));
    }
    let dir = a.dir.path().to_owned();
    a.stop_sync().await;
    let Device { client, dir: _keep } = a;
    drop(client);
    let a = reopen(&dir, &two.address).await;
    a.start_sync().await;
    up_to_date(&a).await;
    let listed = eventually("node 2 lists every task once", || async {
        let listed = rest_list(&two, &token).await;
        if listed.len() >= made.len() {
            Ok(listed)
        } else {
            Err(format!("{} of {} listed", listed.len(), made.len()))
        }
    })
    .await;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for task in &listed {
        *by_id
            .entry(task["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for (id, title) in &made {
        assert_eq!(
            by_id.get(&id.to_string()),
            Some(&1),
            "{title} is listed once on node 2"
        );
    }
    assert_eq!(
        listed.len(),
        made.len(),
        "no task appeared twice or from nowhere"
    );
    let titles: HashSet<&str> = listed.iter().filter_map(|t| t["title"].as_str()).collect();
    assert_eq!(titles.len(), made.len(), "every title once: {titles:?}");
    let (_, body) = rest_task(&two, &token, &first.id.to_string()).await;
    assert_eq!(body["notes"], json!(format!("count {}", KILL_AT - 1)));
    assert_eq!(
        duplicated_changes(&db),
        "0",
        "a change resent after the kill was appended to the log again"
    );
    a.stop_sync().await;
}

/// Posts a refresh to `node` with `client` (so that many can go at once).
async fn refresh_on(client: &reqwest::Client, node: &str, token: &str) -> (u16, String) {
    let response = client
        .post(format!("{node}/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .expect("the node answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// Sends `token` to both nodes at once, `per_node` times each; returns
/// every answer.
async fn refresh_on_both(
    nodes: [&TestApp; 2],
    token: &str,
    per_node: usize,
) -> Vec<(usize, u16, String)> {
    let start = Arc::new(tokio::sync::Barrier::new(2 * per_node));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, node) in nodes.into_iter().enumerate() {
        for _ in 0..per_node {
            let (client, address, token, start) = (
                node.client.clone(),
                node.address.clone(),
                token.to_owned(),
                Arc::clone(&start),
            );
            tasks.spawn(async move {
                start.wait().await;
                let (status, body) = refresh_on(&client, &address, &token).await;
                (n + 1, status, body)
            });
        }
    }
    tasks.join_all().await
}

/// `GET /v1/me` status on `node`.
async fn me_status(node: &TestApp, access: &str) -> u16 {
    node.get_as(access, "/v1/me").await.status().as_u16()
}

/// The kinds of the user's audit events, as node `node` reports them.
async fn audit_kinds(node: &TestApp, access: &str) -> Vec<(AuditKind, Option<String>)> {
    let response = node.get_as(access, "/v1/audit-events").await;
    assert_eq!(response.status(), 200);
    let list: AuditEventList = response.json().await.expect("an audit list");
    list.events.into_iter().map(|e| (e.kind, e.ip)).collect()
}

#[tokio::test]
async fn one_session_refreshed_on_two_nodes_at_once_rotates_once_and_a_reuse_ends_it_on_both() {
    let db = Cluster::shared().database();
    let one = node(&db).await;
    let two = node(&db).await;
    let email = "rhea@example.com";
    let signed_in = one.sign_in_email(email).await;
    let other_device = two.sign_in_email(email).await;
    let r0 = signed_in.tokens.refresh_token.clone();

    // Round after round, the current refresh token goes to both nodes at
    // once, three times to each: as on one node, every request gets the
    // same new pair, and the session rotates once a round.
    const ROUNDS: usize = 8;
    let mut current = r0.clone();
    let mut chain = vec![r0.clone()];
    for round in 0..ROUNDS {
        let answers = refresh_on_both([&one, &two], &current, 3).await;
        let mut issued = HashSet::new();
        for (n, status, body) in &answers {
            assert_eq!(
                *status,
                200,
                "round {round}: a refresh on node {n} was refused: {body}\n{}",
                logs_of(&[&one, &two])
            );
            let pair: TokenPair = serde_json::from_str(body).expect("a token pair");
            one.remember_tokens(&pair);
            assert_eq!(pair.session_id, signed_in.tokens.session_id);
            issued.insert(pair.refresh_token.clone());
        }
        assert_eq!(
            issued.len(),
            1,
            "round {round}: both nodes hand out one new refresh token"
        );
        current = issued.into_iter().next().expect("one token");
        assert!(!chain.contains(&current), "round {round}: a new token");
        chain.push(current.clone());
    }

    // A client that lost node 1's answer retries on node 2 within the grace
    // window, and gets the pair node 1 issued, not a third token.
    let parent = current.clone();
    let (status, body) = refresh_on(&one.client, &one.address, &parent).await;
    assert_eq!(status, 200, "{body}");
    let issued: TokenPair = serde_json::from_str(&body).expect("a pair");
    one.remember_tokens(&issued);
    let (status, body) = refresh_on(&two.client, &two.address, &parent).await;
    assert_eq!(
        status, 200,
        "the retry on node 2 within the grace window: {body}"
    );
    let retried: TokenPair = serde_json::from_str(&body).expect("a pair");
    one.remember_tokens(&retried);
    assert_eq!(
        retried.refresh_token, issued.refresh_token,
        "node 2 hands out the token node 1 issued"
    );
    current = issued.refresh_token;
    let last_access = retried.access_token;
    for node in [&one, &two] {
        assert_eq!(me_status(node, &last_access).await, 200);
    }
    let refreshes = audit_kinds(&two, &last_access)
        .await
        .iter()
        .filter(|(kind, _)| *kind == AuditKind::Refresh)
        .count();
    assert_eq!(
        refreshes,
        ROUNDS + 1,
        "one rotation a round, and one for the retry"
    );

    // r0 is many generations old: replayed on node 2, the session ends on
    // both nodes, every token of it at once; the user's other session
    // stays.
    let (status, _) = refresh_on(&two.client, &two.address, &r0).await;
    assert_eq!(status, 401, "a reused refresh token is refused");
    for (n, node) in [(1, &one), (2, &two)] {
        let (status, _) = refresh_on(&node.client, &node.address, &current).await;
        assert_eq!(status, 401, "the current token after the reuse, node {n}");
        assert_eq!(
            me_status(node, &last_access).await,
            401,
            "the session's access token after the reuse, node {n}"
        );
        assert_eq!(
            me_status(node, &other_device.tokens.access_token).await,
            200,
            "the user's other session, node {n}"
        );
    }
    let kinds = audit_kinds(&one, &other_device.tokens.access_token).await;
    assert!(
        kinds
            .iter()
            .any(|(kind, _)| *kind == AuditKind::ReuseDetected),
        "the reuse is in the audit trail: {kinds:?}"
    );
    one.assert_no_secrets_in_logs();
    two.remember_secret(&r0);
    two.remember_secret(&current);
    two.assert_no_secrets_in_logs();
}

/// nginx in front of the nodes, configured from `deploy/nginx.conf`.
struct Balancer {
    /// The watchdog nginx runs under, and the pipe whose end stops it.
    watchdog: Child,
    stop: Option<ChildStdin>,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The shell nginx runs under: `$@` is nginx's command line. When its
/// standard input ends (the balancer is dropped, or the test process is
/// gone however it ended) it sends nginx SIGTERM, on which the master stops
/// its workers too (a SIGKILL would leave them running). When nginx exits
/// by itself (it could not bind its port) the shell exits with it.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
nginx=$!
{ cat <&3 >/dev/null; kill -TERM "$nginx" 2>/dev/null; } &
wait "$nginx"
"#;

impl Drop for Balancer {
    fn drop(&mut self) {
        drop(self.stop.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// Where nginx is (Debian's `nginx` or `nginx-light`, installed by
/// `.ci/run`).
fn nginx_binary() -> PathBuf {
    std::env::var_os("CODEEDEX_NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `deploy/nginx.conf` with the test's addresses: each placeholder of the
/// file must be there, so that the file and the test cannot drift apart
/// unnoticed.
fn render_nginx_conf(dir: &Path, listen: u16, upstreams: [u16; 2]) -> String {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf"))
            .expect("deploy/nginx.conf");
    let temp = dir.display();
    let substitutions = [
        ("10.0.0.11:8080", format!("127.0.0.1:{}", upstreams[0])),
        ("10.0.0.12:8080", format!("127.0.0.1:{}", upstreams[1])),
        ("listen 80;", format!("listen 127.0.0.1:{listen};")),
        (
            "/var/log/nginx/codeedex-access.log",
            format!("{temp}/access.log"),
        ),
        // The temporary files of buffered bodies: nginx's defaults are
        // under /var/lib/nginx, which a test must not touch.
        (
            "http {",
            format!(
                "http {{\n    client_body_temp_path {temp}/body;\n    proxy_temp_path {temp}/proxy;\n    \
                 fastcgi_temp_path {temp}/fastcgi;\n    uwsgi_temp_path {temp}/uwsgi;\n    scgi_temp_path {temp}/scgi;"
            ),
        ),
    ];
    let mut rendered = template;
    for (from, to) in substitutions {
        assert!(
            rendered.contains(from),
            "deploy/nginx.conf no longer holds {from:?}"
        );
        rendered = rendered.replacen(from, &to, 1);
    }
    rendered
}

impl Balancer {
    /// Starts nginx as the current user, in the foreground, with its
    /// prefix, pid file and logs in a temporary directory.
    async fn start(upstreams: [u16; 2]) -> Balancer {
        assert!(
            nginx_binary().exists(),
            "{} is missing: install Debian's nginx-light (.ci/run does) or set CODEEDEX_NGINX_BIN",
            nginx_binary().display()
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, render_nginx_conf(dir.path(), port, upstreams))
                .expect("writing nginx.conf");
            // As root, nginx's workers would switch to `nobody`; the test
            // keeps them its own user.
            let running_as_root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
            let globals = format!(
                "daemon off; master_process on; pid {}/nginx.pid;{}",
                dir.path().display(),
                if running_as_root { " user root;" } else { "" }
            );
            let log = std::fs::File::create(dir.path().join("error.log")).expect("a log file");
            let mut process = Command::new("sh")
                .args(["-c", WATCHDOG, "sh"])
                .arg(nginx_binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr", "-g", &globals])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx_binary().display()));
            let stop = process.stdin.take();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Some(status) = process.try_wait().expect("polling nginx") {
                    last = format!(
                        "nginx exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Balancer {
                        watchdog: process,
                        stop,
                        port,
                        _dir: dir,
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx did not listen"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn two_nodes_behind_nginx_a_device_fails_over_and_the_nodes_see_the_client_address() {
    let db = Cluster::shared().database();
    // The balancer connects from 127.0.0.1, so that is the trusted proxy;
    // the test's HTTP client connects from 127.0.0.3, which only
    // X-Forwarded-For can tell the nodes.
    let trusting = || AppConfig::default().with("--trusted-proxies", "127.0.0.1");
    let mut nodes = [
        node_with(&db, trusting()).await,
        node_with(&db, trusting()).await,
    ];
    let balancer = Balancer::start([nodes[0].port, nodes[1].port]).await;
    let email = "lb@example.com";

    // Sign in through the balancer from 127.0.0.3, with a forged
    // X-Forwarded-For that the balancer must overwrite.
    let from = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        .timeout(WAIT)
        .build()
        .expect("an HTTP client");
    let response = from
        .post(format!("{}/v1/auth/otp", balancer.address()))
        .json(&json!({ "email": email }))
        .send()
        .await
        .expect("the balancer answers");
    assert_eq!(response.status(), 202);
    let code = code_from_any(&[&nodes[0], &nodes[1]], email).await;
    let response = from
        .post(format!("{}/v1/auth/verify", balancer.address()))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({ "email": email, "code": code, "device_name": "browser" }))
        .send()
        .await
        .expect("the balancer answers");
    assert_eq!(response.status(), 200);
    let signed_in: SignInResponse = response.json().await.expect("a sign-in body");
    let token = signed_in.tokens.access_token.clone();
    nodes[0].remember_tokens(&signed_in.tokens);
    let events = audit_kinds(&nodes[1], &token).await;
    let sign_in_ip = events
        .iter()
        .find(|(kind, _)| *kind == AuditKind::Login)
        .and_then(|(_, ip)| ip.clone());
    assert_eq!(
        sign_in_ip.as_deref(),
        Some("127.0.0.3"),
        "the node records the client's address from X-Forwarded-For, not the \
         balancer's nor a forged one: {events:?}"
    );

    // A device syncs through the balancer.
    let a = signed_in_device(
        &balancer.address(),
        &[&nodes[0], &nodes[1]],
        email,
        "laptop",
    )
    .await;
    a.start_sync().await;
    up_to_date(&a).await;
    let before = a
        .create_task(&NewTask::titled("before the kill"))
        .expect("created");
    eventually(
        "the task made through the balancer is on both nodes",
        || async {
            for node in &nodes {
                let (status, _) = rest_task(node, &token, &before.id.to_string()).await;
                if status != 200 {
                    return Err(format!("{status} on {}", node.address));
                }
            }
            Ok(())
        },
    )
    .await;

    // Kill the node that holds the device's socket.
    let mut holder = None;
    for (i, node) in nodes.iter().enumerate() {
        if node.metric("codeedex_sync_connections").await > 0 {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one node holds the device's socket");
    let survivor = 1 - holder;
    nodes[holder].kill();

    // The device reconnects through the balancer to the other node and
    // converges: what it makes now is there, and so is a REST edit made on
    // the surviving node.
    let after = a
        .create_task(&NewTask::titled("after the kill"))
        .expect("created");
    let response = nodes[survivor]
        .client
        .patch(format!(
            "{}/v1/tasks/{}",
            nodes[survivor].address, before.id
        ))
        .bearer_auth(&token)
        .json(&json!({ "notes": "edited on the survivor" }))
        .send()
        .await
        .expect("the surviving node answers");
    assert_eq!(response.status(), 200);
    eventually("the device converges with the surviving node", || async {
        let (status, body) = rest_task(&nodes[survivor], &token, &after.id.to_string()).await;
        let edited = a.task(before.id).map(|t| t.notes).unwrap_or_default();
        if status == 200 && body["title"] == "after the kill" && edited == "edited on the survivor"
        {
            Ok(())
        } else {
            Err(format!(
                "{status} {body}; the device's notes: {edited:?}; {:?}\n{}",
                a.sync_status(),
                logs_of(&[&nodes[survivor]])
            ))
        }
    })
    .await;
    up_to_date(&a).await;
    assert!(
        nodes[survivor].metric("codeedex_sync_connections").await > 0,
        "the device's socket is on the surviving node"
    );
    a.stop_sync().await;
    nodes[0].assert_no_secrets_in_logs();
}

/// Waits at most `within` for `peer`'s socket to close; the close code, or
/// a panic naming `what`.
async fn closed_within(peer: &mut SyncPeer, within: Duration, what: &str) -> Option<u16> {
    peer.expect_close(within)
        .await
        .unwrap_or_else(|e| panic!("{what}: the socket did not close within {within:?}: {e:#}"))
}

#[tokio::test]
async fn a_session_ended_on_one_node_closes_its_socket_on_the_other_within_a_second() {
    let db = Cluster::shared().database();
    let one = node(&db).await;
    let two = node(&db).await;
    let email = "sol@example.com";
    let logged_out = one.sign_in_email(email).await;
    let reused = one.sign_in_email(email).await;
    let stays = one.sign_in_email(email).await;

    // Three sessions of one user, each with a socket on node 2.
    let mut sockets = Vec::new();
    for (name, session) in [("a", &logged_out), ("b", &reused), ("c", &stays)] {
        let peer = SyncPeer::join(
            two.port,
            &session.tokens.access_token,
            &format!("sol-{name}"),
            Some(&format!("storage-sol-{name}")),
            &[],
        )
        .await
        .expect("the socket joins on node 2");
        sockets.push(peer);
    }
    let [mut a, mut b, mut c] = <[SyncPeer; 3]>::try_from(sockets).expect("three sockets");

    // Logout on node 1: the session's socket on node 2 closes within 1 s
    // (the bound of auth requirement 22), as on one node, with 4003.
    let response = one
        .post_json_as(
            &logged_out.tokens.access_token,
            "/v1/auth/logout",
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let code = closed_within(&mut a, Duration::from_secs(1), "logout on node 1").await;
    assert_eq!(code, Some(4003), "messages before it: {:?}", a.backlog);

    // A refresh token reused on node 1 ends its session: its socket on
    // node 2 closes within 1 s too.
    let r0 = reused.tokens.refresh_token.clone();
    let (status, body) = refresh_on(&one.client, &one.address, &r0).await;
    assert_eq!(status, 200, "{body}");
    let r1: TokenPair = serde_json::from_str(&body).expect("a pair");
    let (status, _) = refresh_on(&one.client, &one.address, &r1.refresh_token).await;
    assert_eq!(status, 200);
    one.remember_tokens(&r1);
    let (status, _) = refresh_on(&one.client, &one.address, &r0).await;
    assert_eq!(status, 401, "r0 after two rotations is a reuse");
    let code = closed_within(&mut b, Duration::from_secs(1), "reuse on node 1").await;
    assert_eq!(code, Some(4003), "messages before it: {:?}", b.backlog);

    // The user's third session keeps its socket.
    assert!(
        c.open_after_pending(WAIT).await,
        "the other session's socket stays"
    );
    one.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_node_cut_off_from_its_doorbell_catches_up_and_its_device_gets_what_it_missed() {
    let cluster = Cluster::shared();
    let db = cluster.database();
    let one = node(&db).await;
    let two = node(&db).await;
    let email = "lina@example.com";
    let phone = signed_in_device(&two.address, &[&two], email, "phone").await;
    phone.start_sync().await;
    let task = phone
        .create_task(&NewTask::titled("before the cut"))
        .expect("created");
    up_to_date(&phone).await;
    let token = one.sign_in_email(email).await.tokens.access_token;
    let id = task.id.to_string();
    // Node 1 loads the document (its pool keeps the connections it made).
    assert_eq!(rest_task(&one, &token, &id).await.0, 200);

    // End both nodes' LISTEN connections and keep new connections out, so
    // that the edit below rings nobody; then let them in again.
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
    assert_eq!(ended.trim(), "2", "each node listened");
    let client = reqwest::Client::new();
    let response = client
        .patch(format!("{}/v1/tasks/{id}", one.address))
        .bearer_auth(&token)
        .json(&json!({ "title": "while node 2 was deaf" }))
        .send()
        .await
        .expect("node 1 answers");
    assert_eq!(response.status(), 200, "the edit is made on node 1");
    cluster.psql(
        "postgres",
        &format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"),
    );

    // Node 2 listens again, catches up the documents it holds, and the
    // device syncing with it gets the edit.
    eventually("the device on node 2 gets the edit it missed", || async {
        match phone.task(task.id) {
            Ok(t) if t.title == "while node 2 was deaf" => Ok(()),
            other => Err(format!("{other:?}\n{}", logs_of(&[&one, &two]))),
        }
    })
    .await;
    assert!(
        two.log_appears("LISTEN connection", WAIT).await,
        "node 2 logged that it lost its listening connection"
    );
}
