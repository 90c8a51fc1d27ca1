//! Faults: devices on bad networks, a server killed with SIGKILL.
//!
//! Every device connects through its own [`FaultProxy`], whose faults a
//! seeded random schedule switches while the devices edit; meanwhile the
//! server is killed with SIGKILL and restarted on the same port and data
//! directory. At the end the faults are lifted and everything must agree:
//! every device, REST and a fresh device, with every edit present and every
//! device acknowledged by the server.
//!
//! A failure prints its seed; `FAULTS_SEED=<seed>` replays the same
//! schedule (the timing of processes still varies from run to run).

use std::time::Duration;

use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use codeedex_tests::fault_proxy::{FaultHandle, FaultProxy, Rng};
use codeedex_tests::js_client::{JsClient, JsClientOptions, Storage, sync_url};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The seed from `FAULTS_SEED`, or `default`.
fn seed_or(default: u64) -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A number from the environment, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Panics with the seed in the message when `ok` is false.
macro_rules! check {
    ($seed:expr, $ok:expr, $($arg:tt)+) => {
        if !$ok {
            panic!("[seed {} — replay with FAULTS_SEED={}] {}", $seed, $seed, format!($($arg)+));
        }
    };
}

/// A server with the sync debug log, pinging every 5 s, so that what a
/// relay lost is sent again within the tests' waits.
async fn server_with_sync_logs() -> TestApp {
    spawn_app_with(
        AppConfig::default()
            .with("--log", "info,codeedex_server::sync=debug")
            .with("--sync-ping-interval-secs", 5),
    )
    .await
}

/// The server log lines about sync connections, for failure messages
/// (`FAULTS_LOG_LINES` raises the count, to follow one device through a run).
fn sync_log_tail(app: &TestApp, lines: usize) -> String {
    let lines = env_or("FAULTS_LOG_LINES", lines as u64) as usize;
    let logs: Vec<String> = app
        .logs()
        .into_iter()
        .filter(|l| l.contains("sync") || l.contains("listening"))
        .collect();
    let skip = logs.len().saturating_sub(lines);
    format!(
        "--- server sync log (last {lines} lines) ---\n{}",
        logs[skip..].join("\n")
    )
}

/// The token of edit `n` of device `d`: distinct, and intact in a text that
/// others append to concurrently (Automerge keeps one insertion together).
fn token(device: usize, n: usize) -> String {
    format!("<{device}:{n:03}>")
}

fn tokens_in(text: &str, devices: usize, edits: usize) -> Vec<Vec<bool>> {
    (0..devices)
        .map(|d| (0..edits).map(|n| text.contains(&token(d, n))).collect())
        .collect()
}

fn count(present: &[Vec<bool>]) -> usize {
    present.iter().flatten().filter(|p| **p).count()
}

/// For each device: how many of its edits are present, and the first missing.
fn describe(present: &[Vec<bool>]) -> String {
    present
        .iter()
        .enumerate()
        .map(|(d, edits)| {
            let have = edits.iter().filter(|p| **p).count();
            let first_missing = edits.iter().position(|p| !*p);
            format!(
                "device {d}: {have}/{} (first missing: {first_missing:?})",
                edits.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which faults a schedule may inject.
#[derive(Debug, Clone, Copy)]
struct FaultMix {
    resets: bool,
    black_holes: bool,
    tiny_writes: bool,
}

/// Switches faults on one proxy at random moments until `stop`.
fn fault_schedule(
    proxy: FaultHandle,
    mut rng: Rng,
    mix: FaultMix,
    stop: Instant,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut injected = 0;
        loop {
            let longest = std::env::var("FAULTS_MAX_PAUSE_MS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3000);
            let pause = rng.duration(Duration::from_millis(200), Duration::from_millis(longest));
            if Instant::now() + pause >= stop {
                break;
            }
            tokio::time::sleep(pause).await;
            match rng.below(4) {
                0 if mix.resets => {
                    // Both sides reset, or only the device's (the server's
                    // side left open and silent).
                    if rng.chance(50) {
                        proxy.reset_all();
                    } else {
                        proxy.abandon_all();
                    }
                    injected += 1;
                }
                1 if mix.black_holes => {
                    proxy.black_hole(rng.duration(Duration::from_secs(1), Duration::from_secs(3)));
                    injected += 1;
                }
                // A relay that loses what it carries while the connection
                // stays open: whole messages go missing mid-stream (TCP
                // never does this; a user-space relay that drops its
                // buffers does). Each direction mends itself on the open
                // connection (the tests in `sync/stories.rs` and below show
                // each mechanism). `FAULTS_DROPPING=0` leaves it out, to
                // tell its failures from the others'.
                3 if mix.black_holes && std::env::var("FAULTS_DROPPING").as_deref() != Ok("0") => {
                    proxy.black_hole_dropping(
                        rng.duration(Duration::from_millis(300), Duration::from_secs(1)),
                    );
                    injected += 1;
                }
                2 if mix.tiny_writes => {
                    let on = proxy.faults().tiny_writes.is_none();
                    proxy.set_tiny_writes(on.then_some(7));
                    injected += 1;
                }
                _ => {}
            }
        }
        injected
    })
}

/// A JS device of the issue: its own repo, storage and socket, behind its
/// own proxy, reconnecting on close as a browser does.
async fn js_device(label: &str, port: u16, token: &str, dir: &std::path::Path) -> JsClient {
    let retry = std::env::var("FAULTS_RETRY_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let storage = match std::env::var("FAULTS_STORAGE").as_deref() {
        Ok("none") => Storage::None,
        _ => Storage::Fs(dir.to_path_buf()),
    };
    JsClient::connect(
        JsClientOptions::new(label, sync_url(port, token))
            .storage(storage)
            .retry(Duration::from_millis(retry)),
    )
    .await
}

/// The reproduction: three stock JS devices of one user each make
/// 100 edits to one shared document at about 4 edits a second, each through
/// its own proxy that at random moments resets every connection, black-holes
/// traffic for 1 to 3 s, or switches 7-byte writes on and off, while the
/// server is killed with SIGKILL and restarted twice.
async fn js_devices_under_faults(seed: u64, mix: FaultMix) {
    const DEVICES: usize = 3;
    const EDITS: usize = 100;
    let mut rng = Rng::new(seed);
    let mut app = server_with_sync_logs().await;
    let dirs: Vec<tempfile::TempDir> = (0..DEVICES).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut proxies = Vec::new();
    let mut tokens = Vec::new();
    for d in 0..DEVICES {
        proxies.push(FaultProxy::start(app.port, rng.next_u64()).await);
        tokens.push(
            app.sign_in_email("faults@example.com")
                .await
                .tokens
                .access_token,
        );
        let _ = d;
    }
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(
            js_device(
                &format!("device-{d}"),
                proxies[d].port(),
                &tokens[d],
                dirs[d].path(),
            )
            .await,
        );
    }
    let id = devices[0].create_synced_task("Shared under faults").await;
    for device in devices.iter_mut().skip(1) {
        device.find_doc(&id).await;
    }

    // Edits at about 4 a second, faults at random, two crashes.
    let edit_time = Duration::from_millis(250) * EDITS as u32;
    let stop = Instant::now() + edit_time;
    let schedules: Vec<_> = proxies
        .iter()
        .map(|p| fault_schedule(p.handle(), rng.fork(), mix, stop))
        .collect();
    let editors: Vec<JoinHandle<JsClient>> = devices
        .into_iter()
        .enumerate()
        .map(|(d, mut device)| {
            let id = id.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                for n in 0..EDITS {
                    device.append(&id, "notes", &token(d, n)).await;
                    tokio::time::sleep_until(start + Duration::from_millis(250) * (n as u32 + 1))
                        .await;
                }
                device
            })
        })
        .collect();
    let crashes: Vec<Duration> = match std::env::var("FAULTS_CRASHES_MS") {
        Ok(list) => list
            .split(',')
            .filter_map(|ms| ms.trim().parse().ok())
            .map(Duration::from_millis)
            .collect(),
        Err(_) => vec![edit_time / 3, edit_time * 2 / 3],
    };
    let started = Instant::now();
    for at in crashes {
        tokio::time::sleep_until(started + at).await;
        tokio::task::block_in_place(|| app.crash_and_restart());
    }
    let mut devices = Vec::new();
    for editor in editors {
        devices.push(editor.await.expect("an editing device failed"));
    }
    let mut injected = 0;
    for schedule in schedules {
        injected += schedule.await.expect("a fault schedule failed");
    }

    // Lift the faults; every device must be acknowledged.
    for proxy in &proxies {
        proxy.clear();
    }
    let mut unacknowledged = Vec::new();
    for device in devices.iter_mut() {
        let answer = device
            .request_within(
                json!({ "cmd": "synced", "id": id, "timeout_ms": 30_000 }),
                Duration::from_secs(35),
            )
            .await;
        if answer["event"] != "synced" {
            unacknowledged.push(format!("{}: {answer}", device.label()));
        }
    }
    let rest = app.get_as(&tokens[0], &format!("/v1/tasks/{id}")).await;
    check!(
        seed,
        rest.status() == 200,
        "GET /v1/tasks/{id}: {}",
        rest.status()
    );
    let rest: Value = rest.json().await.expect("a task body");
    let rest_notes = rest["notes"].as_str().unwrap_or_default().to_owned();
    let present = tokens_in(&rest_notes, DEVICES, EDITS);
    let summary = format!(
        "{} of {} edits on the server ({}); faults injected: {injected}; proxies: {:?}; unacknowledged: {unacknowledged:?}",
        count(&present),
        DEVICES * EDITS,
        describe(&present),
        proxies.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    eprintln!("seed {seed}: {summary}");
    if count(&present) != DEVICES * EDITS || !unacknowledged.is_empty() {
        let mut diagnostics = String::new();
        for device in &devices {
            diagnostics.push_str(&device.diagnostics());
            diagnostics.push('\n');
        }
        check!(
            seed,
            false,
            "{summary}\n{diagnostics}\n{}",
            sync_log_tail(&app, 400)
        );
    }
    // Acknowledged devices may still be receiving the others' last edits.
    for device in devices.iter_mut() {
        let answer = device
            .request_within(
                json!({ "cmd": "wait", "id": id, "field": "notes", "equals": rest_notes, "timeout_ms": 20_000 }),
                Duration::from_secs(25),
            )
            .await;
        check!(
            seed,
            answer["event"] == "matched",
            "{} and REST differ:\n{}\n{rest_notes}",
            device.label(),
            answer["value"]["notes"]
        );
    }
    let fresh_token = app
        .sign_in_email("faults@example.com")
        .await
        .tokens
        .access_token;
    let mut fresh = JsClient::connect(JsClientOptions::new(
        "fresh",
        sync_url(app.port, &fresh_token),
    ))
    .await;
    let fresh_view = fresh.find_doc(&id).await["notes"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    check!(
        seed,
        fresh_view == rest_notes,
        "a fresh device and REST differ:\n{fresh_view}\n{rest_notes}"
    );
    for device in devices {
        device.exit().await;
    }
    fresh.exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_devices_converge_through_resets_black_holes_tiny_writes_and_crashes() {
    js_devices_under_faults(
        seed_or(10),
        FaultMix {
            resets: true,
            black_holes: true,
            tiny_writes: true,
        },
    )
    .await;
}

/// A client-core device behind its own proxy.
struct CoreDevice {
    client: codeedex_client_core::Client,
    _dir: tempfile::TempDir,
}

async fn core_device(app: &TestApp, proxy_port: u16, email: &str, name: &str) -> CoreDevice {
    core_device_with(app, proxy_port, email, name, |_| {}).await
}

async fn core_device_with(
    app: &TestApp,
    proxy_port: u16,
    email: &str,
    name: &str,
    adjust: impl FnOnce(&mut codeedex_client_core::ClientConfig),
) -> CoreDevice {
    use codeedex_client_core::{Client, ClientConfig, SignInIdentifier, TokenStorage};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = ClientConfig::new(dir.path(), &format!("http://127.0.0.1:{proxy_port}"));
    config.token_storage = TokenStorage::File;
    config.device_name = Some(name.to_owned());
    adjust(&mut config);
    let client = Client::open(config).expect("the client opens");
    let who = SignInIdentifier::Email(email.to_owned());
    client.request_code(&who).await.expect("a code is sent");
    let code = app.next_email_code(email).await;
    client
        .verify_code(&who, &code)
        .await
        .expect("the code signs in");
    CoreDevice { client, _dir: dir }
}

fn core_tasks(client: &codeedex_client_core::Client) -> Vec<codeedex_client_core::TaskView> {
    use codeedex_client_core::{StatusFilter, TaskFilter};
    client.list_tasks(&TaskFilter {
        status: StatusFilter::All,
        ..TaskFilter::default()
    })
}

/// Every task REST lists, by id, as (title, notes, done).
async fn rest_tasks(
    app: &TestApp,
    token: &str,
) -> std::collections::BTreeMap<String, (String, String, bool)> {
    let mut all = std::collections::BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/v1/tasks?limit=500&after={id}"),
            None => "/v1/tasks?limit=500".to_owned(),
        };
        let page: Value = app
            .get_as(token, &path)
            .await
            .json()
            .await
            .expect("a page of tasks");
        for task in page["tasks"].as_array().expect("a list of tasks") {
            let id = task["id"].as_str().expect("an id").to_owned();
            let view = (
                task["title"].as_str().unwrap_or_default().to_owned(),
                task["notes"].as_str().unwrap_or_default().to_owned(),
                task["done"].as_bool().unwrap_or_default(),
            );
            assert!(
                all.insert(id.clone(), view).is_none(),
                "REST lists task {id} twice"
            );
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// What a device's task hands back: what it did and the device.
type Worked = (Done, Option<CoreDevice>, Option<JsClient>);

/// What a device did, for the final checks.
#[derive(Debug, Default)]
struct Done {
    created: Vec<String>,
    deleted: Vec<String>,
    /// Tokens appended to the notes of shared tasks.
    tokens: Vec<(String, String)>,
    ops: usize,
}

/// Convergence under faults: `core` client-core devices and `js` stock JS
/// devices of one user edit for `seconds` at random (client-core: add,
/// retitle, complete or reopen, delete its own tasks; JS: append to the
/// notes of the shared tasks), each through its own proxy whose faults
/// change at random, while the server is killed with SIGKILL `crashes`
/// times. Then, with the faults lifted: every device is acknowledged, every
/// device, REST and a fresh device agree exactly, every task exists once,
/// exactly the tasks created and not deleted exist, and every appended
/// token is present.
async fn convergence(seed: u64, core: usize, js: usize, seconds: u64, crashes: usize) {
    use codeedex_client_core::{NewTask, UpdateTask};
    const EMAIL: &str = "converge@example.com";
    const SHARED: usize = 3;
    let mut rng = Rng::new(seed);
    let mut app = server_with_sync_logs().await;
    let mut proxies = Vec::new();
    for _ in 0..core + js {
        proxies.push(FaultProxy::start(app.port, rng.next_u64()).await);
    }
    let mut cores = Vec::new();
    for (d, proxy) in proxies.iter().take(core).enumerate() {
        let device = core_device(&app, proxy.port(), EMAIL, &format!("core-{d}")).await;
        device.client.start_sync().await;
        cores.push(device);
    }
    // The shared tasks, made by the first client-core device.
    let mut shared = Vec::new();
    for n in 0..SHARED {
        let task = cores[0]
            .client
            .create_task(&NewTask::titled(&format!("shared {n}")))
            .expect("a task");
        shared.push(task.id.to_string());
    }
    cores[0]
        .client
        .sync_once(Duration::from_secs(20))
        .await
        .expect("the shared tasks reach the server");
    let token = app.sign_in_email(EMAIL).await.tokens.access_token;
    let js_dirs: Vec<tempfile::TempDir> = (0..js).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut jss = Vec::new();
    for j in 0..js {
        let mut device = js_device(
            &format!("js-{j}"),
            proxies[core + j].port(),
            &token,
            js_dirs[j].path(),
        )
        .await;
        for id in &shared {
            device.find_doc(id).await;
        }
        jss.push(device);
    }

    let run = Duration::from_secs(seconds);
    let stop = Instant::now() + run;
    let mix = FaultMix {
        resets: true,
        black_holes: true,
        tiny_writes: true,
    };
    let schedules: Vec<_> = proxies
        .iter()
        .map(|p| fault_schedule(p.handle(), rng.fork(), mix, stop))
        .collect();
    let mut workers: Vec<JoinHandle<Worked>> = Vec::new();
    for (d, device) in cores.into_iter().enumerate() {
        let mut rng = rng.fork();
        workers.push(tokio::spawn(async move {
            let client = &device.client;
            let mut done = Done::default();
            while Instant::now() < stop {
                tokio::time::sleep(
                    rng.duration(Duration::from_millis(100), Duration::from_millis(400)),
                )
                .await;
                let mine: Vec<_> = core_tasks(client);
                let pick = |rng: &mut Rng| {
                    (!mine.is_empty()).then(|| mine[rng.below(mine.len() as u64) as usize].id)
                };
                done.ops += 1;
                match rng.below(10) {
                    0..=2 => {
                        let n = done.created.len();
                        let task = client
                            .create_task(&NewTask::titled(&format!("core {d} task {n}")))
                            .expect("a local add never fails");
                        done.created.push(task.id.to_string());
                    }
                    3..=5 => {
                        if let Some(id) = pick(&mut rng) {
                            let title = format!("retitled by {d} #{}", done.ops);
                            // The task may have been deleted by another device meanwhile.
                            let _ = client.update_task(
                                id,
                                &UpdateTask {
                                    title: Some(title),
                                    ..Default::default()
                                },
                            );
                        }
                    }
                    6..=8 => {
                        if let Some(id) = pick(&mut rng) {
                            let _ = client.complete_task(id).or_else(|_| client.reopen_task(id));
                        }
                    }
                    _ => {
                        // Delete a task this device made (never a shared one).
                        if let Some(victim) = done
                            .created
                            .iter()
                            .find(|id| !done.deleted.contains(id))
                            .cloned()
                        {
                            let id = client.resolve_task_id(&victim).expect("our own task");
                            client.delete_task(id).expect("a local delete never fails");
                            done.deleted.push(victim);
                        }
                    }
                }
            }
            (done, Some(device), None)
        }));
    }
    for (j, mut device) in jss.into_iter().enumerate() {
        let mut rng = rng.fork();
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Done::default();
            while Instant::now() < stop {
                tokio::time::sleep(
                    rng.duration(Duration::from_millis(100), Duration::from_millis(400)),
                )
                .await;
                let id = &shared[rng.below(shared.len() as u64) as usize];
                let token = format!("<js{j}:{:03}>", done.ops);
                device.append(id, "notes", &token).await;
                done.tokens.push((id.clone(), token));
                done.ops += 1;
            }
            (done, None, Some(device))
        }));
    }
    let mut crash_at: Vec<Duration> = (0..crashes)
        .map(|_| {
            rng.duration(
                Duration::from_secs(2),
                run.saturating_sub(Duration::from_secs(2)),
            )
        })
        .collect();
    crash_at.sort();
    let started = Instant::now();
    for at in crash_at {
        tokio::time::sleep_until(started + at).await;
        tokio::task::block_in_place(|| app.crash_and_restart());
    }
    let mut dones = Vec::new();
    let mut cores = Vec::new();
    let mut jss = Vec::new();
    for worker in workers {
        let (done, core_device, js_device) = worker.await.expect("a device failed");
        dones.push(done);
        cores.extend(core_device);
        jss.extend(js_device);
    }
    let mut injected = 0;
    for schedule in schedules {
        injected += schedule.await.expect("a fault schedule failed");
    }
    for proxy in &proxies {
        proxy.clear();
    }

    // Every device is acknowledged.
    for (d, device) in cores.iter().enumerate() {
        // A connection cut in the middle of a frame near the end may be
        // noticed only by a silence limit (the device's 30 s, the server's
        // 45 s); `sync_once` reports the reconnect as offline, so ask again.
        let within = Instant::now() + Duration::from_secs(60);
        let synced = loop {
            let left = within.saturating_duration_since(Instant::now());
            match device.client.sync_once(left).await {
                Err(codeedex_client_core::ClientError::Offline(_)) if !left.is_zero() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        };
        check!(
            seed,
            synced.is_ok(),
            "client-core device {d} is not up to date: {synced:?} (status {:?}, last error {:?})\n{}",
            device.client.sync_status(),
            device.client.last_sync_error(),
            sync_log_tail(&app, 200)
        );
    }
    for device in jss.iter_mut() {
        for id in &shared {
            let answer = device
                .request_within(
                    json!({ "cmd": "synced", "id": id, "timeout_ms": 30_000 }),
                    Duration::from_secs(35),
                )
                .await;
            if answer["event"] != "synced" {
                device.fail(&format!(
                    "[seed {seed}] not acknowledged for {id}: {answer}"
                ));
            }
        }
    }
    // Client-core devices may still be receiving the last changes of others:
    // sync each again until nothing moves.
    for device in &cores {
        device
            .client
            .sync_once(Duration::from_secs(30))
            .await
            .expect("up to date");
    }

    let rest = rest_tasks(&app, &token).await;
    let created: std::collections::BTreeSet<String> = shared
        .iter()
        .cloned()
        .chain(dones.iter().flat_map(|d| d.created.iter().cloned()))
        .collect();
    let deleted: std::collections::BTreeSet<String> = dones
        .iter()
        .flat_map(|d| d.deleted.iter().cloned())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        created.difference(&deleted).cloned().collect();
    let listed: std::collections::BTreeSet<String> = rest.keys().cloned().collect();
    let ops: usize = dones.iter().map(|d| d.ops).sum();
    let summary = format!(
        "{ops} edits ({} tasks created, {} deleted, {} tokens), {crashes} crashes, {injected} faults; proxies: {:?}",
        created.len(),
        deleted.len(),
        dones.iter().map(|d| d.tokens.len()).sum::<usize>(),
        proxies.iter().map(|p| p.stats()).collect::<Vec<_>>()
    );
    eprintln!("seed {seed}: {summary}");
    // A client-core delete unlists the task from the root document at once
    // and tells the server over REST when it next can (client-core's
    // sync::deletions); until the server has taken it, REST still lists the
    // task. So REST lists every task created and not deleted, once, perhaps
    // some deleted ones, and nothing else; devices list exactly those not
    // deleted.
    check!(
        seed,
        expected.is_subset(&listed) && listed.is_subset(&created),
        "REST lists other tasks than those created ({summary}):\nmissing: {:?}\nunexpected: {:?}",
        expected.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&created).collect::<Vec<_>>()
    );
    for (id, token) in dones.iter().flat_map(|d| d.tokens.iter()) {
        check!(
            seed,
            rest[id].1.contains(token.as_str()),
            "edit {token} of task {id} is lost ({summary}); notes: {}",
            rest[id].1
        );
    }
    let fresh = core_device(&app, app.port, EMAIL, "fresh").await;
    fresh
        .client
        .sync_once(Duration::from_secs(30))
        .await
        .expect("a fresh device syncs");
    let mut views: Vec<(String, &codeedex_client_core::Client)> = cores
        .iter()
        .enumerate()
        .map(|(d, c)| (format!("client-core device {d}"), &c.client))
        .collect();
    views.push(("a fresh client-core device".to_owned(), &fresh.client));
    let rest_listed: std::collections::BTreeMap<String, (String, String, bool)> = rest
        .iter()
        .filter(|(id, _)| expected.contains(*id))
        .map(|(id, view)| (id.clone(), view.clone()))
        .collect();
    for (who, client) in views {
        // A device is up to date as far as it knows; a change the server
        // relayed to it and a relay lost is sent again after a ping
        // interval (5 s here) in which the device stayed silent about it.
        let settle = Instant::now() + Duration::from_secs(20);
        let tasks = loop {
            let tasks: std::collections::BTreeMap<String, (String, String, bool)> =
                core_tasks(client)
                    .into_iter()
                    .map(|t| (t.id.to_string(), (t.title, t.notes, t.done)))
                    .collect();
            if tasks == rest_listed || Instant::now() >= settle {
                break tasks;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        check!(
            seed,
            tasks == rest_listed,
            "{who} and REST differ ({summary}):\n{tasks:#?}\n{rest_listed:#?}\n{}",
            sync_log_tail(&app, 200)
        );
    }
    for device in jss.iter_mut() {
        for id in &shared {
            let answer = device
                .request_within(
                    json!({ "cmd": "wait", "id": id, "field": "notes", "equals": rest[id].1, "timeout_ms": 20_000 }),
                    Duration::from_secs(25),
                )
                .await;
            check!(
                seed,
                answer["event"] == "matched",
                "{} and REST differ on {id}: {answer}",
                device.label()
            );
        }
    }
    for device in jss {
        device.exit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_core_and_js_devices_converge_under_random_faults_and_crashes() {
    // bench/faults.sh runs longer rounds with more crashes.
    let seconds = env_or("FAULTS_SECONDS", 20).clamp(5, 600);
    let crashes = env_or("FAULTS_CRASH_COUNT", 2).clamp(0, 20) as usize;
    convergence(seed_or(1), 2, 2, seconds, crashes).await;
}

/// A device's sync state that the server saved when a connection ended,
/// just before a SIGKILL, must not claim changes the log lost: the next
/// connection's `have` would otherwise tell the device that the server
/// holds changes it does not. Each round pushes one new change, closes the
/// socket as soon as the change is sent (the server saves the connection's
/// sync state) and kills the server at once; the next round checks the
/// server's first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_states_saved_just_before_a_crash_claim_only_what_the_log_kept() {
    use automerge::sync;
    use automerge::transaction::Transactable;
    use automerge::{ChangeHash, ROOT};
    use codeedex_schema::id::DocumentId;
    use codeedex_schema::wire::Message;
    use codeedex_tests::sync_peer::{Received, SyncPeer};
    use std::collections::HashSet;

    const ROUNDS: usize = 12;
    let mut app = server_with_sync_logs().await;
    let token = app
        .sign_in_email("probe@example.com")
        .await
        .tokens
        .access_token;
    let id: DocumentId = "2szvaPZVBmzWcLndqapzMyL7PdMu".parse().expect("an id");
    let mut doc = automerge::AutoCommit::new();
    doc.put(ROOT, "title", "probe").unwrap();
    let mut lost = 0;
    let mut claimed = 0;
    for round in 0..=ROUNDS {
        let mut peer = SyncPeer::join(app.port, &token, "probe-device", Some("probe-storage"), &[])
            .await
            .expect("join");
        peer.docs.insert(id, (doc.clone(), sync::State::new()));
        peer.push(id, false).await.expect("push");
        // The server's first answer: its heads, and in `have` the heads it
        // believes this storage shares with it.
        let first = loop {
            match peer.recv(Duration::from_secs(10)).await.expect("an answer") {
                Received::Message(m @ Message::Sync { .. }) => break m,
                Received::Message(_) => continue,
                Received::Closed(frame) => panic!("closed: {frame:?}"),
            }
        };
        let Message::Sync { data, .. } = &first else {
            unreachable!()
        };
        let message = sync::Message::decode(data).expect("a sync message");
        // Everything the server claims to share must be in its history.
        let mut history: HashSet<ChangeHash> = HashSet::new();
        let mut stack = message.heads.clone();
        while let Some(hash) = stack.pop() {
            if history.insert(hash) {
                let change = doc
                    .get_change_by_hash(&hash)
                    .expect("the server's heads are ours");
                stack.extend(change.deps().iter().copied());
            }
        }
        if round > 0 && !message.heads.contains(&doc.get_heads()[0]) {
            lost += 1;
        }
        if message.have.iter().any(|h| !h.last_sync.is_empty()) {
            claimed += 1;
        }
        for have in &message.have {
            for hash in &have.last_sync {
                assert!(
                    history.contains(hash),
                    "round {round}: the server's `have` claims {hash}, which its heads {:?} do not include",
                    message.heads
                );
            }
        }
        if round == ROUNDS {
            break;
        }
        // One new change, sent as soon as the server's answer allows, then
        // the socket closes and the server is killed.
        peer.change(id, |d| {
            d.put(ROOT, "notes", format!("round {round}")).unwrap();
        });
        doc = peer.docs[&id].0.clone();
        peer.apply(&first).await.expect("apply");
        peer.close().await;
        // From at once to well after sled's own periodic flush (every
        // 500 ms), so that some rounds lose the change and some keep it.
        tokio::time::sleep(Duration::from_millis(120) * round as u32).await;
        tokio::task::block_in_place(|| app.crash_and_restart());
    }
    // How many crashes lost the unacknowledged change depends on the disk
    // and the machine's load; the assertions above hold either way, so this
    // is reported, not asserted (asserting it made the test flaky).
    eprintln!(
        "{lost} of {ROUNDS} last changes were lost by the crash; {claimed} first answers claimed shared heads"
    );
}

/// A client-core device behind `proxy_port` with the given silence limit,
/// syncing and up to date.
async fn syncing_device(
    app: &TestApp,
    proxy_port: u16,
    email: &str,
    silence: Duration,
) -> CoreDevice {
    use codeedex_client_core::SyncStatus;
    let device = core_device_with(app, proxy_port, email, "phone", |config| {
        config.sync_silence_limit = silence;
    })
    .await;
    device.client.start_sync().await;
    let up_to_date = Instant::now() + Duration::from_secs(20);
    while !matches!(device.client.sync_status(), SyncStatus::UpToDate { .. }) {
        assert!(Instant::now() < up_to_date, "the device never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    device
}

/// Waits until REST lists a task titled `title` for `email`.
async fn wait_for_task_on_server(app: &TestApp, email: &str, title: &str, device: &CoreDevice) {
    let token = app.sign_in_email(email).await.tokens.access_token;
    let arrived = Instant::now() + Duration::from_secs(20);
    loop {
        let rest = rest_tasks(app, &token).await;
        if rest.values().any(|(listed, _, _)| listed == title) {
            return;
        }
        assert!(
            Instant::now() < arrived,
            "the task {title:?} never reached the server: {:?}\n{}",
            device.client.sync_status(),
            sync_log_tail(app, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_connection_dies_silently_reconnects_and_delivers_its_change() {
    // The path between a device and the server dies without a reset, as
    // when a phone changes networks: both ends stay open and hear nothing.
    // The device takes the silence for a dead connection, reconnects and
    // delivers the task it created meanwhile. Without a silence limit it
    // would wait on the dead socket for as long as TCP retries, and the
    // server's close after its own silence limit never reaches it.
    use codeedex_client_core::NewTask;
    const EMAIL: &str = "severed@example.com";
    let app = spawn_app_with(AppConfig::default()).await;
    let proxy = FaultProxy::start(app.port, 7).await;
    let device = syncing_device(&app, proxy.port(), EMAIL, Duration::from_secs(2)).await;
    let connections = proxy.stats().accepted;
    proxy.sever_all();
    device
        .client
        .create_task(&NewTask::titled("made after the cut"))
        .expect("a local task");
    wait_for_task_on_server(&app, EMAIL, "made after the cut", &device).await;
    assert!(
        proxy.stats().accepted > connections,
        "the device delivered its change over a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_a_relay_lost_is_sent_again_on_the_same_connection() {
    // A relay loses the device's message with a new task and keeps the
    // connection open. The server never hears of the change, so nothing
    // asks for it; the device, after a silence, pings, hears the server
    // answer, and sends again what the server left unanswered, on the same
    // connection.
    use codeedex_client_core::NewTask;
    const EMAIL: &str = "dropped@example.com";
    let app = server_with_sync_logs().await;
    let proxy = FaultProxy::start(app.port, 11).await;
    // The device pings after 4 s of silence, well after the relay is back:
    // the ping and its answer must not be lost too.
    let device = syncing_device(&app, proxy.port(), EMAIL, Duration::from_secs(6)).await;
    let connections = proxy.stats().accepted;
    proxy.black_hole_dropping(Duration::from_millis(500));
    device
        .client
        .create_task(&NewTask::titled("lost once"))
        .expect("a local task");
    wait_for_task_on_server(&app, EMAIL, "lost once", &device).await;
    assert_eq!(
        proxy.stats().accepted,
        connections,
        "the change was delivered on the same connection\n{}",
        sync_log_tail(&app, 40)
    );
}
