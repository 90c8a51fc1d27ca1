//! A stock JavaScript automerge-repo client, run as a Node process.
//!
//! [`JsClient`] runs `node tests/js/client.mjs <url> <storage>` (the script
//! documents its commands and events) with piped stdin and stdout: commands
//! go in as JSON lines, events come back as JSON lines. Every wait is
//! bounded; a failed expectation panics with the client's stdout and stderr
//! (the script logs every frame in and out on stderr). The process is killed
//! when the client is dropped.
//!
//! The npm packages are installed on first use when `tests/js/node_modules`
//! is missing or incomplete (`npm ci`), once per process and, through a lock
//! file, once across test binaries running at the same time.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The longest any single wait lasts.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long `npm ci` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A lock file older than this belongs to a process that died.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// `tests/js`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Written by npm as the last step of an install.
fn install_marker(dir: &Path) -> PathBuf {
    dir.join("node_modules").join(".package-lock.json")
}

/// Installs the npm packages of `tests/js` unless they are there. Panics with
/// npm's output if the install fails.
pub fn ensure_npm_packages() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let result = INSTALLED.get_or_init(|| install(&js_dir()));
    if let Err(e) = result {
        panic!("cannot install the npm packages of tests/js: {e}");
    }
}

fn install(dir: &Path) -> Result<(), String> {
    let marker = install_marker(dir);
    if marker.exists() {
        return Ok(());
    }
    let lock = dir.join(".npm-install.lock");
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    // Another test binary may be installing: take the lock or wait for it.
    loop {
        match OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_LOCK);
                if stale {
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} is held by another process for too long",
                        lock.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(format!("cannot create {}: {e}", lock.display())),
        }
    }
    struct Unlock(PathBuf);
    impl Drop for Unlock {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlock = Unlock(lock);
    if marker.exists() {
        // The other process finished while we waited.
        return Ok(());
    }
    let output = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run npm (is Node.js installed?): {e}"))?;
    if !output.status.success() || !marker.exists() {
        return Err(format!(
            "npm ci failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// The sync URL the stock adapter can use: the token in the query.
pub fn sync_url(port: u16, access_token: &str) -> String {
    format!("ws://127.0.0.1:{port}/v1/sync?access_token={access_token}")
}

/// Where a client keeps its documents.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory only; the repo announces itself as ephemeral.
    None,
    /// `NodeFSStorageAdapter` in this directory; not ephemeral.
    Fs(PathBuf),
}

/// How to start a client.
#[derive(Debug, Clone)]
pub struct JsClientOptions {
    /// A name for messages (for example "alice-laptop").
    pub label: String,
    /// `ws://…/v1/sync?access_token=…`.
    pub url: String,
    /// Storage.
    pub storage: Storage,
    /// A fixed peer id; random when `None`.
    pub peer_id: Option<String>,
    /// The adapter's reconnect interval (the stock default is 5 s).
    pub retry: Option<Duration>,
    /// Leave the adapter's socket error handling as it ships, as a plain
    /// Node application has it, instead of imitating a browser's.
    pub stock_errors: bool,
}

impl JsClientOptions {
    /// An in-memory client of `url`.
    pub fn new(label: &str, url: String) -> Self {
        Self {
            label: label.to_owned(),
            url,
            storage: Storage::None,
            peer_id: None,
            retry: None,
            stock_errors: false,
        }
    }

    /// With the adapter's socket error handling as it ships (see
    /// `tests/js/client.mjs`): on Node, a refused upgrade ends the process.
    pub fn stock_errors(mut self) -> Self {
        self.stock_errors = true;
        self
    }

    /// With storage.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// With a fixed peer id.
    pub fn peer_id(mut self, peer_id: &str) -> Self {
        self.peer_id = Some(peer_id.to_owned());
        self
    }

    /// With another reconnect interval than the stock 5 s.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }
}

/// The answer to `find`.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The document, as JSON.
    Doc(Value),
    /// `find` rejected: the document is unavailable.
    Unavailable,
}

/// A running `client.mjs`.
#[derive(Debug)]
pub struct JsClient {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    stdout_log: Arc<Mutex<Vec<String>>>,
    stderr_log: Arc<Mutex<Vec<String>>>,
    next_tag: u64,
    peer_id: Option<String>,
}

impl JsClient {
    /// Starts a client and waits until the server answered its `join`.
    pub async fn connect(options: JsClientOptions) -> Self {
        let mut client = Self::start(options).await;
        client.wait_ready().await;
        client
    }

    /// Starts a client without waiting for the server.
    pub async fn start(options: JsClientOptions) -> Self {
        ensure_npm_packages();
        let dir = js_dir();
        let storage = match &options.storage {
            Storage::None => "none".to_owned(),
            Storage::Fs(path) => format!("fs:{}", path.display()),
        };
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("client.mjs"))
            .arg(&options.url)
            .arg(storage)
            .args(["--max-seconds", "300"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(peer_id) = &options.peer_id {
            cmd.args(["--peer-id", peer_id]);
        }
        if let Some(retry) = options.retry {
            cmd.args(["--retry-ms", &retry.as_millis().to_string()]);
        }
        if options.stock_errors {
            cmd.arg("--stock-errors");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node (is Node.js 20 installed?): {e}"));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let stdout_log = Arc::new(Mutex::new(Vec::new()));
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::unbounded_channel();
        let show = std::env::var_os("TEST_LOG").is_some();
        {
            let log = Arc::clone(&stdout_log);
            let label = options.label.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if show {
                        eprintln!("[{label} out] {line}");
                    }
                    log.lock().expect("log lock").push(line.clone());
                    match serde_json::from_str::<Value>(&line) {
                        Ok(event) => {
                            let _ = tx.send(event);
                        }
                        Err(_) => {
                            let _ = tx.send(json!({ "event": "garbage", "line": line }));
                        }
                    }
                }
            });
        }
        {
            let log = Arc::clone(&stderr_log);
            let label = options.label.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if show {
                        eprintln!("[{label} err] {line}");
                    }
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let stdin = child.stdin.take();
        Self {
            label: options.label,
            child,
            stdin,
            events,
            backlog: VecDeque::new(),
            stdout_log,
            stderr_log,
            next_tag: 0,
            peer_id: options.peer_id,
        }
    }

    /// The label given at start.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The client's peer id (known once it started).
    pub fn peer_id(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    /// Everything the client printed, for failure messages.
    pub fn diagnostics(&self) -> String {
        let stdout = self.stdout_log.lock().expect("log lock").join("\n");
        let stderr = self.stderr_log.lock().expect("log lock");
        // The frame log can be long; the end is what matters.
        let skip = stderr.len().saturating_sub(300);
        let stderr = stderr[skip..].join("\n");
        format!(
            "--- JS client {label} stdout ---\n{stdout}\n--- JS client {label} stderr (last 300 lines) ---\n{stderr}\n--- end of {label} ---",
            label = self.label
        )
    }

    /// Panics with `message` and the client's output.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "JS client {}: {message}\n{}",
            self.label,
            self.diagnostics()
        )
    }

    /// Waits for the first event (in arrival order, including ones seen
    /// before but not consumed) that `matches`, and removes it. Fails when
    /// `timeout` passes, or when the client dies.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.backlog.iter().position(&mut matches) {
            return self.backlog.remove(i).expect("position is in range");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if matches(&event) {
                        return event;
                    }
                    if event["event"] == "fatal" {
                        self.fail(&format!("died while waiting for {what}: {event}"));
                    }
                    self.backlog.push_back(event);
                }
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    self.fail(&format!("exited ({status:?}) while waiting for {what}"));
                }
                Err(_) => self.fail(&format!("no {what} within {timeout:?}")),
            }
        }
    }

    /// Whether an event matching `matches` arrived (without waiting).
    pub fn saw(&mut self, mut matches: impl FnMut(&Value) -> bool) -> bool {
        while let Ok(event) = self.events.try_recv() {
            self.backlog.push_back(event);
        }
        self.backlog.iter().any(&mut matches)
    }

    /// Waits until the server answered `join` with `peer`.
    pub async fn wait_ready(&mut self) -> Value {
        let ready = self
            .wait_for("ready (the server's peer message)", WAIT, |e| {
                e["event"] == "ready"
            })
            .await;
        if self.peer_id.is_none() {
            self.peer_id = ready["peerId"].as_str().map(str::to_owned);
        }
        ready
    }

    /// Sends one command; returns its tag.
    pub async fn send(&mut self, mut command: Value) -> String {
        self.next_tag += 1;
        let tag = format!("t{}", self.next_tag);
        command["tag"] = json!(tag);
        let mut line = command.to_string();
        line.push('\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .await
                .and(stdin.flush().await),
            None => Err(std::io::Error::other("stdin closed")),
        };
        if let Err(e) = written {
            self.fail(&format!("cannot send {command}: {e}"));
        }
        tag
    }

    /// Sends a command and waits for its answer (whatever the event), at
    /// most `timeout` plus a margin for the client's own timeout.
    pub async fn request_within(&mut self, command: Value, timeout: Duration) -> Value {
        let what = format!("the answer to {command}");
        let tag = self.send(command).await;
        self.wait_for(&what, timeout, |e| e["tag"] == tag.as_str())
            .await
    }

    /// Sends a command and waits for its answer.
    pub async fn request(&mut self, command: Value) -> Value {
        self.request_within(command, WAIT).await
    }

    fn expect_event(&self, answer: &Value, event: &str, doing: &str) {
        if answer["event"] != event {
            self.fail(&format!(
                "{doing}: expected a {event:?} event, got {answer}"
            ));
        }
    }

    /// Creates a task document; returns its id (bs58check, without `automerge:`).
    pub async fn create_task(&mut self, title: &str) -> String {
        let answer = self
            .request(json!({ "cmd": "create", "title": title }))
            .await;
        self.expect_event(&answer, "created", "create");
        answer["id"].as_str().expect("created has an id").to_owned()
    }

    /// Creates a task document and waits until the server has it (see
    /// [`Self::wait_synced`]), so that other clients can find it.
    pub async fn create_synced_task(&mut self, title: &str) -> String {
        let id = self.create_task(title).await;
        self.wait_synced(&id).await;
        id
    }

    /// Waits until the heads the server last reported for a document equal
    /// the client's own: the server has every local change. (A document is
    /// uploaded asynchronously; another client asking before that gets
    /// `doc-unavailable`.)
    pub async fn wait_synced(&mut self, id: &str) {
        let client_timeout = Duration::from_secs(12);
        let answer = self
            .request_within(
                json!({ "cmd": "synced", "id": id, "timeout_ms": client_timeout.as_millis() as u64 }),
                client_timeout + Duration::from_secs(3),
            )
            .await;
        self.expect_event(
            &answer,
            "synced",
            &format!("wait until the server has {id}"),
        );
    }

    /// `repo.find(id)`: the document, or `Unavailable`. Fails on timeouts and errors.
    pub async fn find(&mut self, id: &str) -> Found {
        let client_timeout = Duration::from_secs(10);
        let answer = self
            .request_within(
                json!({ "cmd": "find", "id": id, "timeout_ms": client_timeout.as_millis() as u64 }),
                client_timeout + Duration::from_secs(5),
            )
            .await;
        match answer["event"].as_str() {
            Some("doc") => Found::Doc(answer["value"].clone()),
            Some("unavailable") => Found::Unavailable,
            _ => self.fail(&format!("find {id}: {answer}")),
        }
    }

    /// `repo.find(id)`, failing unless the document is found.
    pub async fn find_doc(&mut self, id: &str) -> Value {
        match self.find(id).await {
            Found::Doc(value) => value,
            Found::Unavailable => self.fail(&format!("find {id}: the document is unavailable")),
        }
    }

    /// The client's current view of a document it created or found.
    pub async fn print(&mut self, id: &str) -> Value {
        let answer = self.request(json!({ "cmd": "print", "id": id })).await;
        self.expect_event(&answer, "doc", "print");
        answer["value"].clone()
    }

    /// Changes one field (`title`/`notes` as text edits, `tags.<t>`, `done`, …).
    pub async fn change(&mut self, id: &str, field: &str, value: Value) -> Value {
        let answer = self
            .request(json!({ "cmd": "change", "id": id, "field": field, "value": value }))
            .await;
        self.expect_event(&answer, "changed", "change");
        answer["value"].clone()
    }

    /// Splices text into a text field.
    pub async fn splice(
        &mut self,
        id: &str,
        field: &str,
        index: usize,
        delete: usize,
        insert: &str,
    ) -> Value {
        let answer = self
            .request(json!({ "cmd": "splice", "id": id, "field": field, "index": index, "delete": delete, "insert": insert }))
            .await;
        self.expect_event(&answer, "changed", "splice");
        answer["value"].clone()
    }

    /// Appends text at the end of a text field (the end as this client
    /// sees it when the command runs).
    pub async fn append(&mut self, id: &str, field: &str, insert: &str) -> Value {
        let answer = self
            .request(json!({ "cmd": "splice", "id": id, "field": field, "index": "end", "delete": 0, "insert": insert }))
            .await;
        self.expect_event(&answer, "changed", "append");
        answer["value"].clone()
    }

    /// Makes a local document under an id this client never received, which
    /// its repo then pushes to the server with `sync`.
    pub async fn forge(&mut self, id: &str, title: &str) -> Value {
        let answer = self
            .request(json!({ "cmd": "forge", "id": id, "title": title }))
            .await;
        self.expect_event(&answer, "forged", "forge");
        answer["value"].clone()
    }

    async fn wait_field(&mut self, id: &str, field: &str, condition: (&str, Value)) -> Value {
        let client_timeout = Duration::from_secs(12);
        let mut command = json!({ "cmd": "wait", "id": id, "field": field, "timeout_ms": client_timeout.as_millis() as u64 });
        command[condition.0] = condition.1.clone();
        let answer = self
            .request_within(command, client_timeout + Duration::from_secs(3))
            .await;
        if answer["event"] != "matched" {
            self.fail(&format!(
                "{field} of {id} did not become ({} {}) within {client_timeout:?}; the client's document: {}",
                condition.0, condition.1, answer["value"]
            ));
        }
        answer["value"].clone()
    }

    /// Waits until `field` (a dotted path) equals `value`; returns the document.
    pub async fn wait_until(&mut self, id: &str, field: &str, value: Value) -> Value {
        self.wait_field(id, field, ("equals", value)).await
    }

    /// Waits until the text of `field` contains `part`; returns the document.
    pub async fn wait_contains(&mut self, id: &str, field: &str, part: &str) -> Value {
        self.wait_field(id, field, ("contains", json!(part))).await
    }

    /// Sends an ephemeral message on a document (`DocHandle.broadcast`).
    pub async fn broadcast(&mut self, id: &str, message: Value) {
        let answer = self
            .request(json!({ "cmd": "broadcast", "id": id, "message": message }))
            .await;
        self.expect_event(&answer, "broadcast", "broadcast");
    }

    /// Kills the TCP connection under the adapter without a close handshake,
    /// as a network failure would; the adapter reconnects by itself after
    /// its retry interval.
    pub async fn drop_connection(&mut self) {
        let answer = self.request(json!({ "cmd": "drop" })).await;
        self.expect_event(&answer, "dropped", "drop");
    }

    /// Closes the socket through the adapter (`disconnect()`); it does not
    /// reconnect until [`Self::reconnect`].
    pub async fn disconnect(&mut self) {
        let answer = self.request(json!({ "cmd": "disconnect" })).await;
        self.expect_event(&answer, "disconnected", "disconnect");
    }

    /// Connects the adapter again and waits for the server's `peer`.
    pub async fn reconnect(&mut self) {
        let answer = self
            .request(json!({ "cmd": "connect", "timeout_ms": 12_000 }))
            .await;
        self.expect_event(&answer, "connected", "reconnect");
    }

    /// Waits for the process to end by itself; returns its exit status and
    /// what it wrote to stderr.
    pub async fn wait_for_exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            other => self.fail(&format!("did not end within {timeout:?}: {other:?}")),
        };
        // The reader task may still be taking the last lines: the pipe closes
        // with the process, so it ends soon after.
        let deadline = tokio::time::Instant::now() + WAIT;
        while Arc::strong_count(&self.stderr_log) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stderr = self.stderr_log.lock().expect("log lock").join("\n");
        (status, stderr)
    }

    /// Kills the process (SIGKILL): no storage flush, no close handshake.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Flushes storage, disconnects and waits for the process to end.
    pub async fn exit(mut self) {
        self.send(json!({ "cmd": "exit" })).await;
        self.wait_for("bye", WAIT, |e| e["event"] == "bye").await;
        self.stdin = None;
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            other => self.fail(&format!("did not exit cleanly: {other:?}")),
        }
    }
}
