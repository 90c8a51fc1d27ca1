//! Reconnect storm: N devices connected and synced, the server restarted,
//! every device coming back at once. Measures how long until all N are
//! back and how fast the server lets them in, and checks that it stays up.
//!
//! Each device behaves as client-core does: after a lost connection it
//! retries with capped exponential backoff and equal jitter (base 250 ms,
//! cap 30 s), and when the server answers 429 or 503 with `Retry-After` it
//! waits that long plus up to a second of jitter. A device counts as back
//! once it has joined and the server has answered its first sync message
//! (heads exchanged) for its user's task document.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::sync;
use automerge::transaction::Transactable;
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use crate::account;
use crate::peer::{self, Replicas};
use crate::server_process::ServerProcess;
use crate::stats::rss_kib;

/// How the server goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// SIGTERM: the server closes every socket with 1001 and exits.
    Graceful,
    /// SIGKILL: sockets just break.
    Kill,
}

/// The storm's settings.
#[derive(Debug, Clone)]
pub struct StormSettings {
    /// Devices.
    pub devices: usize,
    /// Users the devices belong to, round robin.
    pub users: usize,
    /// How the server goes away.
    pub restart: Restart,
    /// Extra server flags (the connection gate's settings).
    pub server_args: Vec<String>,
    /// How long to wait for every device to come back.
    pub deadline: Duration,
}

/// Results.
#[derive(Debug)]
pub struct StormResult {
    /// Devices connected before the restart.
    pub devices: usize,
    /// Time from first connect until every device was connected and synced.
    pub initial: Duration,
    /// Devices back after the restart.
    pub back: usize,
    /// From the moment the server was stopped to every device back.
    pub all_back_after_stop: Option<Duration>,
    /// From the restarted server answering `/healthz` to every device back.
    pub all_back_after_ready: Option<Duration>,
    /// Time the server took to stop and start again.
    pub downtime: Duration,
    /// Of which stopping (SIGTERM to exit, or SIGKILL).
    pub stop_took: Duration,
    /// Of which starting (spawn to `/healthz`).
    pub start_took: Duration,
    /// Successful reconnections per second after the server was ready:
    /// mean over the reconnection window, and the busiest second.
    pub mean_per_second: f64,
    /// The busiest second.
    pub peak_per_second: u64,
    /// Attempts answered 429/503 with Retry-After, over the whole run.
    pub refused: u64,
    /// Attempts that failed otherwise (connection refused while the server
    /// was down, resets, timeouts).
    pub failed: u64,
    /// Server RSS after every device was back, in KiB.
    pub rss_kib: Option<u64>,
    /// Whether the server was still running at the end.
    pub server_alive: bool,
}

enum Report {
    /// The device is connected and synced (again).
    Back(Instant),
}

/// Counters shared by the devices.
#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    failed: AtomicU64,
}

/// Runs the storm against a server it starts itself on `port`.
pub async fn run(
    binary: &Path,
    data: &Path,
    port: u16,
    settings: &StormSettings,
) -> anyhow::Result<StormResult> {
    let start = |data: &Path| {
        let args = settings.server_args.clone();
        let data = data.to_owned();
        let binary = binary.to_owned();
        async move { ServerProcess::start_with(&binary, &data, port, settings.users, &args).await }
    };
    let (mut server, _) = start(data).await?;
    let http = format!("http://127.0.0.1:{port}");
    let ws = format!("ws://127.0.0.1:{port}/v1/sync");
    let client = reqwest::Client::new();

    // One signed-in session and one task document per user.
    let mut tokens = Vec::with_capacity(settings.users);
    let mut documents = Vec::with_capacity(settings.users);
    for u in 0..settings.users {
        let token = account::sign_in(&client, &http, &format!("bench-{u}@example.com"), "123456")
            .await?
            .access_token;
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&(u as u64).to_le_bytes());
        seed[8..].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
        let id = DocumentId::from_random_bytes(seed);
        let mut uploader = peer::join(&ws, Some(&token), &format!("storm-seed-{u}"), &[]).await?;
        let mut replicas = Replicas::default();
        let mut doc = AutoCommit::new();
        doc.put(automerge::ROOT, "title", format!("task of user {u}"))?;
        replicas.docs.insert(id, (doc, sync::State::new()));
        uploader
            .sync_until_acknowledged(&mut replicas, id, Duration::from_secs(30))
            .await?;
        tokens.push(token);
        documents.push(id);
    }

    let counters = Arc::new(Counters::default());
    let (reports, mut reported) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut devices = Vec::with_capacity(settings.devices);
    for d in 0..settings.devices {
        let u = d % settings.users;
        let device = Device {
            ws: ws.clone(),
            token: tokens[u].clone(),
            document: documents[u],
            peer_id: format!("storm-{d}-{}", std::process::id()),
            rng: (d as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            counters: Arc::clone(&counters),
            reports: reports.clone(),
        };
        devices.push(tokio::spawn(device.run()));
    }
    drop(reports);
    let mut connected = 0;
    let initial_deadline = Instant::now() + settings.deadline;
    while connected < settings.devices {
        match tokio::time::timeout_at(initial_deadline.into(), reported.recv()).await {
            Ok(Some(Report::Back(_))) => connected += 1,
            Ok(None) => anyhow::bail!("every device task ended"),
            Err(_) => anyhow::bail!(
                "only {connected} of {} devices connected within {:?}",
                settings.devices,
                settings.deadline
            ),
        }
    }
    let initial = started.elapsed();

    let stopped = Instant::now();
    match settings.restart {
        Restart::Graceful => server.terminate()?,
        Restart::Kill => server.kill(),
    }
    let stop_took = stopped.elapsed();
    let (restarted, start_took) = start(data).await?;
    server = restarted;
    let ready = Instant::now();
    let downtime = ready - stopped;

    let mut back_times = Vec::with_capacity(settings.devices);
    let deadline = ready + settings.deadline;
    while back_times.len() < settings.devices {
        match tokio::time::timeout_at(deadline.into(), reported.recv()).await {
            Ok(Some(Report::Back(at))) => back_times.push(at),
            Ok(None) | Err(_) => break,
        }
    }
    let back = back_times.len();
    let last = back_times.iter().max().copied();
    let all_back = back == settings.devices;
    let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
    for at in &back_times {
        *per_second
            .entry(at.saturating_duration_since(ready).as_secs())
            .or_default() += 1;
    }
    let window = last
        .map(|l| l.saturating_duration_since(ready).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-3);
    let rss_kib = rss_kib(server.pid());
    let server_alive = client
        .get(format!("{http}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    for device in devices {
        device.abort();
    }
    let result = StormResult {
        devices: settings.devices,
        initial,
        back,
        all_back_after_stop: all_back.then(|| last.map(|l| l - stopped)).flatten(),
        all_back_after_ready: all_back
            .then(|| last.map(|l| l.saturating_duration_since(ready)))
            .flatten(),
        downtime,
        stop_took,
        start_took,
        mean_per_second: back as f64 / window,
        peak_per_second: per_second.values().copied().max().unwrap_or(0),
        refused: counters.refused.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        rss_kib,
        server_alive,
    };
    server.terminate()?;
    Ok(result)
}

/// One simulated device.
struct Device {
    ws: String,
    token: String,
    document: DocumentId,
    peer_id: String,
    rng: u64,
    counters: Arc<Counters>,
    reports: mpsc::UnboundedSender<Report>,
}

/// Why an attempt failed.
enum Attempt {
    /// 429 or 503 with this Retry-After.
    Refused(Option<Duration>),
    /// Anything else.
    Failed,
}

impl Device {
    async fn run(mut self) {
        let mut replica = AutoCommit::new();
        let mut failures = 0u32;
        loop {
            match self.connect(&mut replica).await {
                Ok(mut peer) => {
                    failures = 0;
                    if self.reports.send(Report::Back(Instant::now())).is_err() {
                        return;
                    }
                    // Hold the connection until the server goes away.
                    while let Some(Ok(frame)) = peer.stream.next().await {
                        if let tungstenite::Message::Close(_) = frame {
                            break;
                        }
                    }
                    let delay = self.backoff(&mut failures, None);
                    tokio::time::sleep(delay).await;
                }
                Err(Attempt::Refused(retry_after)) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff(&mut failures, retry_after);
                    tokio::time::sleep(delay).await;
                }
                Err(Attempt::Failed) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff(&mut failures, None);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Joins and exchanges heads for the device's document.
    async fn connect(&self, replica: &mut AutoCommit) -> Result<peer::Peer, Attempt> {
        let mut peer = match tokio::time::timeout(
            Duration::from_secs(30),
            peer::join(&self.ws, Some(&self.token), &self.peer_id, &[]),
        )
        .await
        {
            Ok(Ok(peer)) => peer,
            Ok(Err(e)) => {
                return Err(match e.downcast_ref::<tungstenite::Error>() {
                    Some(tungstenite::Error::Http(response))
                        if matches!(response.status().as_u16(), 429 | 503) =>
                    {
                        Attempt::Refused(retry_after(response.headers()))
                    }
                    _ => Attempt::Failed,
                });
            }
            Err(_) => return Err(Attempt::Failed),
        };
        // A new connection starts a new sync state: what was shared before
        // is re-established from heads, as automerge-repo does.
        let mut replicas = Replicas::default();
        replicas
            .docs
            .insert(self.document, (replica.clone(), sync::State::new()));
        let first = if replica.get_heads().is_empty() {
            replicas.request(&peer.peer_id, &peer.server_id, self.document)
        } else {
            match replicas.outgoing(&peer.peer_id, &peer.server_id, self.document) {
                Some(frame) => frame,
                None => return Err(Attempt::Failed),
            }
        };
        if peer.sink.send(first).await.is_err() {
            return Err(Attempt::Failed);
        }
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(frame)) = peer.stream.next().await {
                let tungstenite::Message::Binary(bytes) = frame else {
                    continue;
                };
                let Ok(message) = wire::decode(&bytes) else {
                    continue;
                };
                if let Ok(Some(_)) = replicas.apply(&message) {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            return Err(Attempt::Failed);
        }
        if let Some((doc, _)) = replicas.docs.remove(&self.document) {
            *replica = doc;
        }
        Ok(peer)
    }

    /// client-core's reconnect delay: equal-jitter exponential backoff,
    /// with the server's Retry-After (plus up to a second) as a floor.
    fn backoff(&mut self, failures: &mut u32, retry_after: Option<Duration>) -> Duration {
        let jitter = self.random();
        let ceiling = (Duration::from_millis(250) * 2u32.saturating_pow((*failures).min(16)))
            .min(Duration::from_secs(30));
        *failures = failures.saturating_add(1);
        let own = ceiling / 2 + ceiling.mul_f64(jitter / 2.0);
        match retry_after {
            Some(wait) => own.max(wait + Duration::from_secs(1).mul_f64(jitter)),
            None => own,
        }
    }

    /// A number in [0, 1) from the device's xorshift generator.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn retry_after(headers: &tungstenite::http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(tungstenite::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3_600)))
}
