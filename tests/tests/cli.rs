//! The `codeedex` command line end to end: the real binary (built in this
//! package as `codeedex-under-test`) against a real server process, with the
//! sign-in code read from the server's mail and piped in on standard input.

use std::time::Duration;

use codeedex_tests::app::{TestApp, spawn_app};
use codeedex_tests::command_line::{cli_binary, cli_command};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The longest one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One device: a data directory (and a config directory with nothing in it).
struct Device {
    home: tempfile::TempDir,
    server: String,
}

/// What a command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "the command failed: {self:?}");
        self
    }
}

impl Device {
    fn new(server: &str) -> Self {
        Self {
            home: tempfile::tempdir().expect("a temporary directory"),
            server: server.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        cli_command(self.home.path(), &self.server, args)
    }

    async fn finish(child: tokio::process::Child) -> Run {
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .expect("the command finishes in time")
            .expect("the command runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli_binary().display()));
        drop(child.stdin.take());
        Self::finish(child).await
    }

    /// `codeedex login --email E`, answering the code prompt from the mail.
    async fn login(&self, app: &TestApp, email: &str) -> Run {
        let mut child = self
            .command(&["login", "--email", email, "--json"])
            .spawn()
            .expect("login runs");
        let code = app.next_email_code(email).await;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(format!("{code}\n").as_bytes())
            .await
            .expect("the code is written");
        drop(stdin);
        Self::finish(child).await
    }
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn the_cli_logs_in_adds_lists_completes_and_removes_with_json_output() {
    let app = spawn_app().await;
    let laptop = Device::new(&app.address);
    let me = laptop.login(&app, "gus@example.com").await.ok().json();
    assert_eq!(me["email"], "gus@example.com");
    assert!(me["root_document_id"].is_string());
    assert_eq!(
        laptop.run(&["whoami", "--json"]).await.ok().json()["email"],
        "gus@example.com"
    );

    let added = laptop
        .run(&[
            "add",
            "buy milk",
            "--tag",
            "home",
            "--due",
            "2030-01-02",
            "--priority",
            "high",
            "--json",
        ])
        .await
        .ok()
        .json();
    let id = added["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        (added["title"].as_str(), added["due"].as_str()),
        (Some("buy milk"), Some("2030-01-02"))
    );
    laptop.run(&["add", "file taxes"]).await.ok();

    let listed = laptop.run(&["ls", "--json"]).await.ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(ids(&listed).contains(&id));
    let table = laptop.run(&["ls"]).await.ok().stdout;
    assert!(
        table.starts_with("ID") && table.contains("buy milk") && table.contains("#home"),
        "{table}"
    );
    let tagged = laptop
        .run(&["ls", "--tag", "home", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(ids(&tagged), vec![id.clone()]);
    // --due takes the library's due words (client-core's TaskFilter::due_within).
    let due = laptop
        .run(&["ls", "--due", "2030-01-02", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(ids(&due), vec![id.clone()]);
    let overdue = laptop
        .run(&["ls", "--due", "overdue", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(overdue.as_array().map(Vec::len), Some(0));
    assert_eq!(laptop.run(&["ls", "--due", "someday"]).await.code, 2);

    // Another device of the same account sees the tasks.
    let phone = Device::new(&app.address);
    phone.login(&app, "gus@example.com").await.ok();
    let seen = phone.run(&["ls", "--json"]).await.ok().json();
    assert!(ids(&seen).contains(&id), "{seen}");
    assert_eq!(
        phone
            .run(&["sessions", "--json"])
            .await
            .ok()
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A unique prefix is enough.
    let prefix = &id[..6];
    let done = laptop.run(&["done", prefix, "--json"]).await.ok().json();
    assert_eq!(done["done"], true);
    assert!(!ids(&laptop.run(&["ls", "--json"]).await.ok().json()).contains(&id));
    let finished = laptop.run(&["ls", "--done", "--json"]).await.ok().json();
    assert_eq!(ids(&finished), vec![id.clone()]);
    let reopened = laptop.run(&["undo", prefix, "--json"]).await.ok().json();
    assert_eq!(reopened["done"], false);
    let history = laptop.run(&["history", prefix, "--json"]).await.ok().json();
    assert!(
        history["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{history}"
    );

    laptop.run(&["rm", prefix]).await.ok();
    assert!(!ids(&laptop.run(&["ls", "--all", "--json"]).await.ok().json()).contains(&id));
    let synced = phone.run(&["sync", "--json"]).await.ok().json();
    assert_eq!(synced["tasks"], 1, "{synced}");

    // Errors: one line, a non-zero code.
    let missing = laptop.run(&["show", "nosuchid"]).await;
    assert_eq!(missing.code, 5, "{missing:?}");
    assert_eq!(missing.stderr.trim().lines().count(), 1, "{missing:?}");
    assert!(missing.stderr.starts_with("codeedex: "), "{missing:?}");
    let usage = laptop.run(&["add"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");

    // Logging out ends the session; local commands still work.
    laptop.run(&["logout"]).await.ok();
    let whoami = laptop.run(&["whoami"]).await;
    assert_eq!(whoami.code, 3, "{whoami:?}");
    laptop.run(&["add", "offline after logout"]).await.ok();
}

#[tokio::test]
async fn local_commands_work_when_the_server_is_unreachable() {
    let app = spawn_app().await;
    let device = Device::new(&app.address);
    device.login(&app, "hal@example.com").await.ok();
    // Point the device at a port where nothing listens.
    let offline = Device {
        home: device.home,
        server: "http://127.0.0.1:9".to_owned(),
    };
    let added = offline
        .run(&["add", "written offline", "--json"])
        .await
        .ok();
    assert!(added.stderr.contains("offline"), "{added:?}");
    assert_eq!(added.json()["title"], "written offline");
    let listed = offline.run(&["ls", "--json"]).await.ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let status = offline.run(&["status", "--json"]).await.ok().json();
    assert!(
        status["unsynced_documents"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    let sync = offline.run(&["sync", "--timeout", "5"]).await;
    assert_eq!(sync.code, 4, "{sync:?}");
}
