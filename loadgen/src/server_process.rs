//! Starting and killing a `codeedex-server` process for the scenarios that
//! need to control it (crash, cold start).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Connection gate settings that never refuse a benchmark's connections.
const WIDE_GATE: [&str; 4] = [
    "--sync-connections-per-second",
    "1000000",
    "--sync-connection-burst",
    "1000000",
];

/// A server process on loopback with the bench settings.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `binary` on `port` with `data` as its data directory, fixed
    /// test codes for `bench-<i>@example.com` (i < identities), and limits
    /// raised for load. Returns once `/healthz` answers, with the time that took.
    pub async fn start(
        binary: &Path,
        data: &Path,
        port: u16,
        identities: usize,
    ) -> anyhow::Result<(Self, Duration)> {
        Self::start_with(binary, data, port, identities, &[]).await
    }

    /// As [`ServerProcess::start`], with `extra` flags. The connection gate
    /// is opened wide unless `extra` sets it: the other scenarios measure
    /// the server, not its pacing of new connections.
    pub async fn start_with(
        binary: &Path,
        data: &Path,
        port: u16,
        identities: usize,
        extra: &[String],
    ) -> anyhow::Result<(Self, Duration)> {
        let codes: Vec<String> = (0..identities)
            .map(|i| format!("bench-{i}@example.com=123456"))
            .collect();
        let expire = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).to_string();
        let started = Instant::now();
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args([
                "--log",
                "warn",
                "--allow-test-codes",
                "--test-codes-expire",
                &expire,
            ])
            .args([
                "--otp-resend-cooldown-secs",
                "0",
                "--otp-hourly-cap",
                "100000",
                "--otp-daily-cap",
                "100000",
            ])
            .args([
                "--ip-send-limit",
                "1000000",
                "--ip-verify-limit",
                "1000000",
                "--ip-refresh-limit",
                "1000000",
            ])
            .args([
                "--sync-max-connections-per-user",
                "100000",
                "--sync-messages-per-second",
                "100000",
            ])
            .args([
                "--sync-message-burst",
                "100000",
                "--sync-max-documents",
                "200000",
            ])
            .args(
                if extra.iter().any(|a| a.starts_with("--sync-connection")) {
                    &[][..]
                } else {
                    &WIDE_GATE[..]
                },
            )
            .args(["--sync-max-connections", "100000"])
            .args(extra)
            .env("CODEEDEX_TEST_CODES", codes.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self { child };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok((server, started.elapsed()));
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                server.kill();
                bail!("the server did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        bail!("the server did not stop within 30 s of SIGTERM")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh temporary data directory under the system temp dir.
pub fn temp_data_dir(label: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("codeedex-loadgen-{label}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
