//! The web app (`web/`): the bundle the server embeds is exactly what the
//! committed sources build, and the app passes its browser tests
//! (`web/e2e/`, Playwright) in Debian's Chromium against real server
//! processes on free ports with temporary data directories.
//!
//! Needs `npm ci` in `web/` and the `chromium` package (`.ci/run` installs
//! both). Playwright never downloads a browser here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use codeedex_tests::command_line::cli_binary;
use tokio::process::Command;

/// The code every test identity signs in with.
const TEST_CODE: &str = "246810";
/// The access-token lifetime of the second server, in seconds.
const SHORT_TOKEN_SECS: u64 = 4;
/// The resend cooldown of the third server, in seconds: long enough to see
/// the countdown, short enough to wait out twice.
const LIMITS_COOLDOWN_SECS: u64 = 3;
/// The whole browser suite; it takes about a minute and a half on two cores.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("web")
}

fn node_module(path: &str) -> PathBuf {
    let file = web_dir().join("node_modules").join(path);
    assert!(
        file.exists(),
        "{} is missing: run `npm ci` in web/ (.ci/run does)",
        file.display()
    );
    file
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A stale bundle fails here: `web/dist` must be byte for byte what
/// `npm run build` makes from the committed sources and lock file.
#[test]
fn the_committed_bundle_is_exactly_what_the_sources_build() {
    let web = web_dir();
    let fresh = tempfile::tempdir().expect("a temporary directory");
    let typecheck = std::process::Command::new("node")
        .arg(node_module("typescript/bin/tsc"))
        .args(["--noEmit", "-p", "."])
        .current_dir(&web)
        .output()
        .expect("node runs");
    assert!(
        typecheck.status.success(),
        "the web app does not type-check:\n{}{}",
        String::from_utf8_lossy(&typecheck.stdout),
        String::from_utf8_lossy(&typecheck.stderr)
    );
    let build = std::process::Command::new("node")
        .arg(node_module("vite/bin/vite.js"))
        .args(["build", "--logLevel", "warn", "--emptyOutDir", "--outDir"])
        .arg(fresh.path())
        .current_dir(&web)
        .output()
        .expect("node runs");
    assert!(
        build.status.success(),
        "the web app does not build:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let committed = web.join("dist");
    let stale = "web/dist is not what the sources build: run `npm ci && npm run build` in web/ and commit web/dist";
    assert_eq!(
        files_under(&committed),
        files_under(fresh.path()),
        "{stale} (the file lists differ)"
    );
    for file in files_under(&committed) {
        let a = std::fs::read(committed.join(&file)).expect("readable");
        let b = std::fs::read(fresh.path().join(&file)).expect("readable");
        assert!(a == b, "{stale} ({} differs)", file.display());
    }
}

/// The identities the browser tests use, each with the fixed test code.
fn test_codes() -> String {
    (1..=40)
        .map(|n| format!("web{n}@example.com={TEST_CODE}"))
        .chain((1..=40).map(|n| format!("+1415555{}={TEST_CODE}", 2600 + n)))
        .collect::<Vec<_>>()
        .join(",")
}

async fn server(extra: &[(&str, String)]) -> TestApp {
    let mut config = AppConfig::default()
        .with("--test-codes", test_codes())
        .with("--test-codes-expire", "2099-12-31")
        .with_env("CODEEDEX_ALLOW_TEST_CODES", "true");
    for (flag, value) in extra {
        config = config.with(flag, value);
    }
    spawn_app_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_passes_its_browser_tests_in_chromium() {
    let chromium =
        std::env::var("CODEEDEX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (`apt-get install chromium`; .ci/run does)"
    );
    let cli = cli_binary();
    assert!(cli.exists(), "{} is missing", cli.display());
    let app = server(&[]).await;
    let short = server(&[("--access-token-ttl-secs", SHORT_TOKEN_SECS.to_string())]).await;
    // Limits low enough to reach from the browser: a resend cooldown, two
    // codes an hour per address, a lock after two wrong codes, and one new
    // sync connection a second.
    let limits = server(&[
        (
            "--otp-resend-cooldown-secs",
            LIMITS_COOLDOWN_SECS.to_string(),
        ),
        ("--otp-hourly-cap", "2".into()),
        ("--otp-failure-cap", "2".into()),
        ("--sync-connections-per-second", "1".into()),
        ("--sync-connection-burst", "1".into()),
    ])
    .await;

    // The browser tests write the tokens they saw here, for the log check.
    let secrets = tempfile::NamedTempFile::new().expect("a temporary file");
    // CODEEDEX_WEB_E2E_ARGS passes more arguments to Playwright when working
    // on the app (a file name or `--grep`); the README's test command sets none.
    let extra: Vec<String> = std::env::var("CODEEDEX_WEB_E2E_ARGS")
        .map(|args| args.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let run = Command::new("node")
        .arg(node_module("@playwright/test/cli.js"))
        .arg("test")
        .args(&extra)
        .current_dir(web_dir())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CODEEDEX_APP_URL", &app.address)
        .env("CODEEDEX_SHORT_TOKEN_APP_URL", &short.address)
        .env("CODEEDEX_SHORT_TOKEN_SECS", SHORT_TOKEN_SECS.to_string())
        .env("CODEEDEX_LIMITS_APP_URL", &limits.address)
        .env(
            "CODEEDEX_LIMITS_COOLDOWN_SECS",
            LIMITS_COOLDOWN_SECS.to_string(),
        )
        .env("CODEEDEX_TEST_CODE", TEST_CODE)
        .env("CODEEDEX_CLI", &cli)
        .env("CODEEDEX_CHROMIUM", &chromium)
        .env("CODEEDEX_SECRETS_FILE", secrets.path())
        .env_remove("CODEEDEX_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .expect("the browser suite finishes in time")
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    if !output.status.success() {
        // What the servers said about sockets and refusals, to tell a
        // server-side cause from an app-side one. The logs hold no secrets
        // (checked below on success).
        for (name, server) in [("app", &app), ("short-token", &short), ("limits", &limits)] {
            let lines = server.logs();
            let notable: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("sync"))
                .collect();
            let from = notable.len().saturating_sub(150);
            println!("--- {name} server, last notable log lines ---");
            for line in &notable[from..] {
                println!("{line}");
            }
        }
    }
    assert!(output.status.success(), "browser tests failed:\n{report}");
    if !extra.is_empty() {
        // Part of the suite ran: the checks below need all of it.
        return;
    }

    // The short-lived tokens really expired on open sockets (the server
    // closed them for it) while the test saw sync go on.
    let expiries = short
        .logs()
        .iter()
        .filter(|line| line.contains("access token expired"))
        .count();
    assert!(
        expiries >= 2,
        "no socket was closed for an expired token, so the expiry test proved nothing"
    );
    let seen = std::fs::read_to_string(secrets.path()).expect("the secrets file is readable");
    let tokens: Vec<&str> = seen.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        tokens.len() >= 2,
        "the browser tests reported no tokens to look for in the log"
    );
    for token in tokens {
        app.remember_secret(token);
    }
    app.remember_secret(TEST_CODE);
    short.remember_secret(TEST_CODE);
    limits.remember_secret(TEST_CODE);
    app.assert_no_secrets_in_logs();
    short.assert_no_secrets_in_logs();
    limits.assert_no_secrets_in_logs();
}
