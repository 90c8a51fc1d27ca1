//! The server as a process: probes, metrics, the API description, stopping
//! and crashing, refusals at startup, and the command line.

use std::process::{Output, Stdio};
use std::time::Duration;

use codeedex_schema::api::auth::TokenPair;
use codeedex_server::store::Store;
use codeedex_tests::app::{AppConfig, TestApp, server_binary, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn server_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(server_binary());
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("CODEEDEX_") && key != "CODEEDEX_SERVER_BIN" {
            command.env_remove(key);
        }
    }
    command
}

/// Runs the server binary with `args` and waits for it to exit by itself.
async fn run_to_exit(args: &[&str]) -> Output {
    let child = server_command(args)
        .spawn()
        .expect("the server binary starts");
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the server with {args:?} did not exit within 20 s"))
        .expect("the server's output")
}

/// Runs the server binary and expects it to refuse to start: a non-zero exit
/// and a message on stderr containing every one of `expected`.
async fn expect_refusal(args: &[&str], expected: &[&str]) -> String {
    let output = run_to_exit(args).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the server with {args:?} exited successfully; stderr:\n{stderr}"
    );
    for text in expected {
        assert!(
            stderr.contains(text),
            "stderr of {args:?} lacks {text:?}:\n{stderr}"
        );
    }
    stderr
}

/// Starts the server binary with `args` and reports whether it came up
/// (wrote its "listening" line) within 20 s; stops it either way.
async fn comes_up(args: &[&str]) -> bool {
    let mut child = server_command(args)
        .spawn()
        .expect("the server binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let listening = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.kill().await;
    listening
}

/// Restarts drop the connections the client pooled; a new client does not
/// try to reuse them.
fn reconnect(app: &mut TestApp) {
    app.client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
}

async fn expect_status(response: reqwest::Response, status: u16) -> Value {
    let got = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Refreshes and checks the new pair works; returns it.
async fn refresh_works(app: &TestApp, refresh_token: &str) -> TokenPair {
    let response = app.refresh(refresh_token).await;
    let pair: TokenPair =
        serde_json::from_value(expect_status(response, 200).await).expect("a pair");
    app.remember_tokens(&pair);
    expect_status(app.get_as(&pair.access_token, "/v1/me").await, 200).await;
    pair
}

#[tokio::test]
async fn health_and_readiness_probes_answer_200() {
    let app = spawn_app().await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.expect("a body"), body, "{path}");
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_sign_ins() {
    let app = spawn_app().await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("a body");
    assert!(
        text.contains("# TYPE codeedex_otp_verified_total counter\n"),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(name.starts_with("codeedex_"), "{line:?}");
        assert!(value.parse::<u64>().is_ok(), "{line:?}");
        // Counters end in `_total`; gauges (values read at the moment) do not.
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} has no TYPE {kind} line"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP line"
        );
    }
    assert_eq!(app.metric("codeedex_otp_verified_total").await, 0);

    app.sign_in_email("counted@example.com").await;
    assert_eq!(app.metric("codeedex_otp_verified_total").await, 1);
    assert_eq!(app.metric("codeedex_otp_requested_total").await, 1);
    assert_eq!(app.metric("codeedex_sessions_created_total").await, 1);
    assert_eq!(app.metric("codeedex_otp_rejected_total").await, 0);

    let response = app.verify_email("counted@example.com", "000000").await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.metric("codeedex_otp_rejected_total").await, 1);
    assert_eq!(app.metric("codeedex_otp_verified_total").await, 1);
    assert!(app.metric("codeedex_http_requests_total").await >= 4);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_openapi_document_lists_the_auth_paths() {
    let app = spawn_app().await;
    let response = app.get("/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("valid JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("a paths object");
    for (path, method) in [
        ("/v1/auth/otp", "post"),
        ("/v1/auth/verify", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/me", "get"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/audit-events", "get"),
    ] {
        let operation = &paths.get(path).unwrap_or_else(|| {
            panic!(
                "{path} is missing from {:?}",
                paths.keys().collect::<Vec<_>>()
            )
        })[method];
        assert!(operation.is_object(), "{path} has no {method} operation");
        assert!(
            operation["responses"].is_object(),
            "{path} {method} has no responses"
        );
    }
    let otp = &paths["/v1/auth/otp"]["post"];
    for status in ["202", "400", "429"] {
        assert!(
            otp["responses"][status].is_object(),
            "/v1/auth/otp lacks {status}"
        );
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    for schema in ["OtpRequest", "VerifyRequest", "TokenPair", "Problem"] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "schema {schema} is missing"
        );
    }
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_sessions_survive_a_restart() {
    let mut app = spawn_app().await;
    let signed_in = app.sign_in_email("durable@example.com").await;
    let status = app.terminate();
    assert!(status.success(), "SIGTERM ended the server with {status}");
    assert!(
        app.logs().iter().any(|l| l.contains("stopped")),
        "the server did not log a clean stop"
    );

    app.start_again();
    reconnect(&mut app);
    let me = expect_status(
        app.get_as(&signed_in.tokens.access_token, "/v1/me").await,
        200,
    )
    .await;
    assert_eq!(me["id"], signed_in.user.id.to_string());
    let pair = refresh_works(&app, &signed_in.tokens.refresh_token).await;
    assert_eq!(pair.session_id, signed_in.tokens.session_id);
    let again = app.sign_in_email("durable@example.com").await;
    assert!(!again.new_user, "the account survived the restart");
    assert_eq!(again.user.id, signed_in.user.id);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_crash_right_after_sign_in_keeps_the_session_and_refresh_token() {
    let mut app = spawn_app().await;
    let signed_in = app.sign_in_email("crashy@example.com").await;
    app.crash_and_restart();
    reconnect(&mut app);
    expect_status(
        app.get_as(&signed_in.tokens.access_token, "/v1/me").await,
        200,
    )
    .await;
    let pair = refresh_works(&app, &signed_in.tokens.refresh_token).await;

    // A rotation right before a crash is not lost either.
    let rotated = refresh_works(&app, &pair.refresh_token).await;
    app.crash_and_restart();
    reconnect(&mut app);
    refresh_works(&app, &rotated.refresh_token).await;
    let sessions =
        expect_status(app.get_as(&rotated.access_token, "/v1/sessions").await, 200).await;
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(1),
        "{sessions}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_pending_code_and_the_failure_count_survive_a_crash() {
    let mut app = spawn_app_with(AppConfig::default().with("--otp-failure-cap", 3)).await;
    assert_eq!(
        app.request_email_code("pending@example.com").await.status(),
        202
    );
    let code = app.next_email_code("pending@example.com").await;
    assert_eq!(
        app.request_email_code("locked@example.com").await.status(),
        202
    );
    for _ in 0..3 {
        let response = app.verify_email("locked@example.com", "000000").await;
        assert_eq!(response.status(), 400);
    }

    app.crash_and_restart();
    reconnect(&mut app);
    let response = app.verify_email("pending@example.com", &code).await;
    let signed_in = expect_status(response, 200).await;
    app.remember_secret(signed_in["access_token"].as_str().expect("a token"));
    app.remember_secret(signed_in["refresh_token"].as_str().expect("a token"));
    let response = app.request_email_code("locked@example.com").await;
    let problem = expect_status(response, 429).await;
    assert_eq!(problem["code"], "too_many_attempts");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_production_profile_refuses_unsafe_settings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    let base = [
        "--profile",
        "production",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
    ];
    let smtp = ["--email-sender", "smtp", "--smtp-host", "127.0.0.1"];
    let sms = [
        "--phone-sender",
        "sms",
        "--sms-account-sid",
        "AC1",
        "--sms-auth-token",
        "t",
        "--sms-from",
        "+15005550006",
    ];
    let tls = ["--smtp-tls", "starttls"];
    let test_codes = [
        "--allow-test-codes",
        "--test-codes",
        "a@example.com=123456",
        "--test-codes-expire",
        "2999-12-31",
    ];

    // The default (log) senders.
    expect_refusal(&base, &["production profile refuses the log sender"]).await;
    // The log sender for one channel only.
    expect_refusal(&[&base[..], &smtp, &tls].concat(), &["log sender"]).await;
    expect_refusal(&[&base[..], &sms].concat(), &["log sender"]).await;
    // Fixed test codes, even with an expiry date.
    let stderr = expect_refusal(
        &[&base[..], &smtp, &tls, &sms, &test_codes].concat(),
        &["production profile refuses fixed test codes"],
    )
    .await;
    assert!(
        !stderr.contains("123456"),
        "the refusal prints the test code"
    );
    // SMTP in plain text.
    expect_refusal(
        &[&base[..], &smtp, &sms, &["--smtp-tls", "none"]].concat(),
        &["production profile refuses SMTP without TLS"],
    )
    .await;

    // The same profile with safe settings starts.
    let args = [&base[..], &smtp, &tls, &sms].concat();
    assert!(
        comes_up(&args).await,
        "production with SMTP over TLS and SMS did not start"
    );
}

#[tokio::test]
async fn invalid_settings_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    for (extra, expected) in [
        (&["--otp-ttl-secs", "601"][..], "otp_ttl_secs"),
        (&["--otp-ttl-secs", "0"][..], "otp_ttl_secs"),
        (&["--otp-digits", "5"][..], "otp_digits"),
        (&["--otp-digits", "11"][..], "otp_digits"),
        (&["--otp-failure-cap", "101"][..], "otp_failure_cap"),
        (&["--otp-max-attempts", "0"][..], "otp_max_attempts"),
        (
            &["--allow-test-codes", "--test-codes", "a@example.com=123456"][..],
            "test_codes_expire",
        ),
        (
            &[
                "--allow-test-codes",
                "--test-codes",
                "a@example.com=12345",
                "--test-codes-expire",
                "2999-12-31",
            ][..],
            "6 digits",
        ),
        (&["--email-sender", "smtp"][..], "smtp_host"),
        (&["--ip-send-limit", "0"][..], "per-IP limits"),
        (
            &["--refresh-grace-secs", "18446744073709551615"][..],
            "refresh_grace_secs",
        ),
        (
            &["--otp-resend-cooldown-secs", "18446744073709551615"][..],
            "otp_resend_cooldown_secs",
        ),
        (
            &["--sync-handshake-timeout-secs", "18446744073709551615"][..],
            "sync_handshake_timeout_secs",
        ),
        (&["--otp-tll-secs", "60"][..], "--otp-tll-secs"),
        (&["--profile", "staging"][..], "staging"),
    ] {
        let mut args = vec!["--data-dir", data_dir, "--listen", "127.0.0.1:0"];
        args.extend(extra);
        expect_refusal(&args, &[expected]).await;
    }
}

#[tokio::test]
async fn a_stray_test_codes_variable_without_the_opt_in_stops_the_server() {
    // Fixed codes once came on with the list alone: a CODEEDEX_TEST_CODES
    // left in a shell or unit file opened test accounts on any server not
    // started with the production profile.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    let args = ["--data-dir", data_dir, "--listen", "127.0.0.1:0"];
    let child = server_command(&args)
        .env("CODEEDEX_TEST_CODES", "stray@example.com=123456")
        .env("CODEEDEX_TEST_CODES_EXPIRE", "2999-12-31")
        .spawn()
        .expect("the server binary starts");
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the server exits within 20 s")
        .expect("the server's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the server started with a test code list and no opt-in; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("allow_test_codes") && stderr.contains("--allow-test-codes"),
        "the refusal does not name the opt-in:\n{stderr}"
    );
    assert!(!stderr.contains("123456"), "the refusal prints the code");
}

#[tokio::test]
async fn a_session_limit_too_large_for_date_arithmetic_is_refused_at_startup() {
    // Accepted, this made every request that checks a session panic.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    let args = [
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--session-max-secs",
        "18446744073709551615",
    ];
    expect_refusal(&args, &["session_max_secs", "at most"]).await;
}

#[tokio::test]
async fn help_lists_every_setting_with_its_environment_variable() {
    let output = run_to_exit(&["--help"]).await;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let flags = [
        "config",
        "listen",
        "data-dir",
        "profile",
        "log-format",
        "log",
        "workers",
        "email-sender",
        "phone-sender",
        "smtp-host",
        "smtp-port",
        "smtp-tls",
        "smtp-username",
        "smtp-password",
        "smtp-from",
        "sms-api-base",
        "sms-account-sid",
        "sms-auth-token",
        "sms-from",
        "trusted-proxies",
        "otp-digits",
        "otp-ttl-secs",
        "otp-max-attempts",
        "otp-resend-cooldown-secs",
        "otp-hourly-cap",
        "otp-daily-cap",
        "otp-failure-cap",
        "ip-send-limit",
        "ip-verify-limit",
        "ip-refresh-limit",
        "ip-limit-window-secs",
        "access-token-ttl-secs",
        "jwt-issuer",
        "jwt-audience",
        "refresh-grace-secs",
        "session-idle-secs",
        "session-max-secs",
        "test-codes",
        "test-codes-expire",
    ];
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag} <")),
            "--{flag} is not in --help:\n{help}"
        );
        let env = format!("CODEEDEX_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            help.contains(&format!("[env: {env}")),
            "{env} is not in --help:\n{help}"
        );
    }
    // The opt-in for fixed test codes takes an optional value.
    assert!(
        help.contains("--allow-test-codes [<") && help.contains("[env: CODEEDEX_ALLOW_TEST_CODES"),
        "--allow-test-codes is not in --help:\n{help}"
    );
    // Defaults are documented next to the flags.
    for default in [
        "[default: 600]",
        "[default: 900]",
        "[default: 60]",
        "[default: 20]",
    ] {
        assert!(help.contains(default), "{default} is not in --help");
    }
}

#[tokio::test]
async fn a_store_with_an_incompatible_format_version_refuses_to_start() {
    let mut app = spawn_app().await;
    let signed_in = app.sign_in_email("old@example.com").await;
    assert!(app.terminate().success());
    let data_dir = app.data_dir.path().to_path_buf();
    Store::overwrite_format_version_for_tests(&data_dir, "999").expect("the store opens");

    let dir = data_dir.to_str().expect("a UTF-8 path");
    let args = ["--data-dir", dir, "--listen", "127.0.0.1:0"];
    expect_refusal(&args, &["format version 999", "reads version 1"]).await;
    // The refusal left the store alone: it is refused again, and not rewritten.
    expect_refusal(&args, &["format version 999"]).await;

    // Back at the right version, the data is all there.
    Store::overwrite_format_version_for_tests(&data_dir, "1").expect("the store opens");
    app.start_again();
    reconnect(&mut app);
    expect_status(
        app.get_as(&signed_in.tokens.access_token, "/v1/me").await,
        200,
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email("shared@example.com").await;
    let dir = app.data_dir.path().to_str().expect("a UTF-8 path");
    expect_refusal(
        &["--data-dir", dir, "--listen", "127.0.0.1:0"],
        &["cannot open the store"],
    )
    .await;
    // The first server is unaffected.
    expect_status(
        app.get_as(&signed_in.tokens.access_token, "/v1/me").await,
        200,
    )
    .await;
    let pair = refresh_works(&app, &signed_in.tokens.refresh_token).await;
    let response = app
        .post_json_as(&pair.access_token, "/v1/auth/logout", &json!({}))
        .await;
    expect_status(response, 200).await;
    app.assert_no_secrets_in_logs();
}

/// Sends `request` on a new connection, then waits up to `limit` for the
/// server to answer or close it. Returns the answer's status line (empty if
/// the server closed without answering), or `None` if it kept waiting.
async fn cut_off_within(app: &TestApp, request: &[u8], limit: Duration) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("send");
    let mut buffer = vec![0; 1024];
    match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
        Ok(Ok(n)) => Some(
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_stops_sending_is_cut_off() {
    let app = spawn_app().await;
    // The server gives a request head 10 s; allow some slack for the body too.
    let limit = Duration::from_secs(15);
    let stalled_head =
        b"POST /v1/auth/otp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    let stalled_body =
        b"POST /v1/auth/otp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                         Content-Length: 100\r\n\r\n{\"email\": ";
    let (head, body) = tokio::join!(
        cut_off_within(&app, stalled_head, limit),
        cut_off_within(&app, stalled_body, limit),
    );
    assert!(
        head.as_deref()
            .is_some_and(|line| line.is_empty() || line.starts_with("HTTP/1.1 408")),
        "a stalled request head: {head:?}"
    );
    assert!(
        body.as_deref()
            .is_some_and(|line| line.is_empty() || line.starts_with("HTTP/1.1 408")),
        "a request whose body stops arriving still holds its connection after {limit:?}: {body:?}"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}
