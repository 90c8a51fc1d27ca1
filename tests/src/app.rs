//! A server under test: a real `codeedex-server` process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codeedex_schema::api::auth::{SignInResponse, TokenPair};
use serde_json::Value;

use crate::mail_catcher::{MailCatcher, MailOptions};
use crate::sms_provider::SmsProviderStub;

/// The SMS account the stub accepts and the server is configured with.
pub const SMS_ACCOUNT: &str = "AC0123456789abcdef";
const SMS_TOKEN: &str = "sms-test-token-not-a-secret";
/// How long to wait for a code to arrive.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the server binary built for these tests.
pub fn server_binary() -> PathBuf {
    built_binary("CODEEDEX_SERVER_BIN", "server-under-test")
}

/// A binary of this crate built for the tests, or the one `variable` names.
pub fn built_binary(variable: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A running server process with its mail and SMS fixtures.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The port the server listens on.
    pub port: u16,
    /// An HTTP client for the tests.
    pub client: reqwest::Client,
    /// Receives the code mails.
    pub mail: MailCatcher,
    /// Receives the code SMS.
    pub sms: SmsProviderStub,
    /// The server's data directory.
    pub data_dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    process: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    secrets: Mutex<Vec<String>>,
}

/// Extra settings for one test's server, as `--flag value` pairs.
#[derive(Debug, Default, Clone)]
pub struct AppConfig {
    /// Flags added after the harness's defaults (later flags win in clap).
    pub args: Vec<(String, String)>,
    /// Environment variables of the server process, at every start (for
    /// example, to preload libfiu: see [`crate::disk_faults`]).
    pub env: Vec<(String, String)>,
    /// What the mail catcher asks of the server (TLS, AUTH); plain SMTP by
    /// default. A test that sets it also sets the matching `--smtp-*` flags.
    pub mail: MailOptions,
}

impl AppConfig {
    /// Adds one setting.
    pub fn with(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push((flag.to_owned(), value.to_string()));
        self
    }

    /// Runs the mail catcher with TLS or AUTH.
    pub fn with_mail(mut self, mail: MailOptions) -> Self {
        self.mail = mail;
        self
    }

    /// Sets an environment variable of the server process.
    pub fn with_env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

/// Starts a server with the harness defaults: mail over SMTP to the catcher,
/// SMS to the stub, per-IP limits and per-identifier send caps high enough
/// that tests sharing 127.0.0.1 do not trip them, and no resend cooldown.
/// Tests of those limits set them back with [`spawn_app_with`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppConfig::default()).await
}

/// Starts a server with extra settings.
pub async fn spawn_app_with(config: AppConfig) -> TestApp {
    let mail = MailCatcher::start_with(config.mail).await;
    let sms = SmsProviderStub::start(SMS_ACCOUNT, SMS_TOKEN).await;
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut args: Vec<String> = [
        ("--data-dir", data_dir.path().display().to_string()),
        ("--email-sender", "smtp".into()),
        ("--smtp-host", "127.0.0.1".into()),
        ("--smtp-port", mail.port().to_string()),
        ("--smtp-tls", "none".into()),
        ("--phone-sender", "sms".into()),
        ("--sms-api-base", sms.base_url()),
        ("--sms-account-sid", SMS_ACCOUNT.into()),
        ("--sms-auth-token", SMS_TOKEN.into()),
        ("--sms-from", "+15005550006".into()),
        ("--ip-send-limit", "10000".into()),
        ("--ip-verify-limit", "10000".into()),
        ("--ip-refresh-limit", "10000".into()),
        // Tests sign in repeatedly with one identifier; the cooldown has its own tests.
        ("--otp-resend-cooldown-secs", "0".into()),
        ("--otp-hourly-cap", "1000".into()),
        ("--otp-daily-cap", "1000".into()),
        ("--workers", "2".into()),
        ("--log", "info".into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    let env = config.env;
    for (k, v) in config.args {
        args.push(k);
        args.push(v);
    }
    let mut app = TestApp {
        address: String::new(),
        port: 0,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        mail,
        sms,
        data_dir,
        args,
        env,
        process: None,
        logs: Arc::new(Mutex::new(Vec::new())),
        secrets: Mutex::new(Vec::new()),
    };
    app.start_process(0);
    app
}

impl TestApp {
    fn start_process(&mut self, port: u16) {
        let mut cmd = Command::new(server_binary());
        cmd.args(&self.args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("CODEEDEX_") && key != "CODEEDEX_SERVER_BIN" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let logs = Arc::clone(&self.logs);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[server] {line}");
                    }
                    if let Some(port) = listening_port(&line) {
                        let _ = tx.send(port);
                    }
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not start; its output:\n{}",
                    self.logs.lock().expect("log lock").join("\n")
                );
            }
        };
        self.port = port;
        self.address = format!("http://127.0.0.1:{port}");
        // Pooled connections to a killed process are dead: start afresh.
        self.client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        self.process = Some(child);
    }

    /// The server's resident memory in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.process.as_ref().expect("the server is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the server is running").id()
    }

    /// Whether the server process is still running (it has not exited or
    /// been killed by an abort).
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Every line the server has written to stdout and stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Waits until some line of the log contains `needle`; false if none
    /// does within `within`. The log reaches the test through a pipe read
    /// by another thread, so a line written just before a counter moved may
    /// still be on its way when the counter is read.
    pub async fn log_appears(&self, needle: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.logs().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Remembers a secret (code or token) that must never appear in the log.
    pub fn remember_secret(&self, secret: &str) {
        self.secrets
            .lock()
            .expect("secret lock")
            .push(secret.to_owned());
    }

    /// Fails if any remembered secret appears in the server's output, as a
    /// whole token (a six-digit code may occur by chance inside a longer
    /// number, and the leading timestamp of each line is not looked at).
    pub fn assert_no_secrets_in_logs(&self) {
        let logs = self.logs();
        let secrets = self.secrets.lock().expect("secret lock");
        assert!(
            !secrets.is_empty(),
            "the test remembered no secrets to look for"
        );
        for line in &logs {
            let body = match line.split_once(' ') {
                Some((first, rest)) if first.len() >= 20 && first.starts_with("20") => rest,
                _ => line.as_str(),
            };
            for secret in secrets.iter() {
                assert!(
                    !contains_token(body, secret),
                    "a secret ({} characters) appears in the server log",
                    secret.len()
                );
            }
        }
    }

    /// Kills the server with SIGKILL and starts it again on the same port
    /// and data directory.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.port;
        self.start_process(port);
    }

    /// Kills the server with SIGKILL and leaves it down (a node lost for
    /// good, say); [`Self::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take().expect("the server is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets an environment variable of the server process from its next
    /// start on (for example, to start it again on another store).
    pub fn set_env(&mut self, key: &str, value: impl ToString) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
    }

    /// Starts the server again after [`Self::terminate`].
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "the server is still running");
        let port = self.port;
        self.start_process(port);
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("the server answers")
    }

    /// `POST path` with a JSON body and a bearer token.
    pub async fn post_json_as(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("the server answers")
    }

    /// `GET path` with a bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("the server answers")
    }

    /// `GET path` without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the server answers")
    }

    /// Asks for a code for an email address; returns the response.
    pub async fn request_email_code(&self, email: &str) -> reqwest::Response {
        self.post_json("/v1/auth/otp", &serde_json::json!({ "email": email }))
            .await
    }

    /// Asks for a code for a phone number; returns the response.
    pub async fn request_phone_code(&self, phone: &str) -> reqwest::Response {
        self.post_json("/v1/auth/otp", &serde_json::json!({ "phone": phone }))
            .await
    }

    /// Waits for the next code mailed to `email`.
    pub async fn next_email_code(&self, email: &str) -> String {
        let mail = self
            .mail
            .wait_for_mail_to(email, DELIVERY_TIMEOUT)
            .await
            .expect("a code mail arrives");
        let code = mail.code(6).expect("the mail holds a 6-digit code");
        self.remember_secret(&code);
        code
    }

    /// Waits for the next code texted to `phone` (E.164).
    pub async fn next_sms_code(&self, phone: &str) -> String {
        let sms = self
            .sms
            .wait_for_sms_to(phone, DELIVERY_TIMEOUT)
            .await
            .expect("a code SMS arrives");
        let code =
            crate::mail_catcher::extract_code(&sms.body, 6).expect("the SMS holds a 6-digit code");
        self.remember_secret(&code);
        code
    }

    /// Posts a verification; returns the response.
    pub async fn verify_email(&self, email: &str, code: &str) -> reqwest::Response {
        self.post_json(
            "/v1/auth/verify",
            &serde_json::json!({ "email": email, "code": code }),
        )
        .await
    }

    /// Signs in by email end to end: request, read the mail, verify.
    pub async fn sign_in_email(&self, email: &str) -> SignInResponse {
        let response = self.request_email_code(email).await;
        assert_eq!(
            response.status(),
            202,
            "code request failed: {}",
            response.text().await.unwrap_or_default()
        );
        let code = self.next_email_code(email).await;
        let response = self
            .post_json(
                "/v1/auth/verify",
                &serde_json::json!({ "email": email, "code": code, "device_name": "test device" }),
            )
            .await;
        self.expect_signed_in(response).await
    }

    /// Expects a verification to have signed in; remembers the tokens.
    pub async fn expect_signed_in(&self, response: reqwest::Response) -> SignInResponse {
        assert_eq!(
            response.status(),
            200,
            "verification failed: {}",
            response.text().await.unwrap_or_default()
        );
        let signed_in: SignInResponse = response.json().await.expect("a sign-in body");
        self.remember_tokens(&signed_in.tokens);
        signed_in
    }

    /// The value of a counter at `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("a metrics body");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
    }

    /// Remembers both tokens of a pair as secrets.
    pub fn remember_tokens(&self, tokens: &TokenPair) {
        self.remember_secret(&tokens.access_token);
        self.remember_secret(&tokens.refresh_token);
    }

    /// Posts a refresh; returns the response.
    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.post_json(
            "/v1/auth/refresh",
            &serde_json::json!({ "refresh_token": refresh_token }),
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `needle` occurs in `haystack` with no letter or digit right
/// before or after it.
fn contains_token(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// The port in the server's "listening" log line, if this is that line.
fn listening_port(line: &str) -> Option<u16> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("address=")? + "address=".len()..];
    let address = rest.split_whitespace().next()?;
    address.rsplit(':').next()?.parse().ok()
}

/// The `code` field of a problem document.
pub async fn problem_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON problem body");
    body["code"]
        .as_str()
        .expect("a problem has a code")
        .to_owned()
}
