//! Soak: an hour (or a minute) of mixed load, with the server's resources
//! sampled at a fixed interval, to catch anything that grows without bound.
//!
//! The mix, all at once for the whole run:
//! - sign-ins, each followed by refreshes and a logout (sessions churn);
//! - devices editing their own task documents over sync, each edit timed
//!   from the change to the server's acknowledgement, each device moving
//!   on to a new document every 300 edits (so the live data stays the same
//!   size and memory must stay flat);
//! - REST: list, create and update tasks;
//! - reconnects: a device drops its socket and joins again;
//! - idle sockets held open throughout.
//!
//! Every sample records the server's RSS, open file descriptors, threads,
//! the data directory's size on disk, and the latency of the interval.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::sync;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use codeedex_schema::api::auth::{
    LogoutRequest, LogoutScope, RefreshRequest, SignInResponse, TokenPair,
};
use codeedex_schema::id::DocumentId;
use futures_util::StreamExt;
use serde_json::json;

use crate::peer::{self, Peer, Replicas};
use crate::stats::{Summary, rss_kib};

/// The soak's settings.
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// How long the load runs.
    pub duration: Duration,
    /// How often the server is sampled.
    pub sample_every: Duration,
    /// Devices editing over sync (one edit per second each).
    pub editors: usize,
    /// Idle sockets held open.
    pub idle: usize,
    /// Run the sign-in/refresh/logout worker.
    pub sessions: bool,
    /// Run the REST worker.
    pub rest: bool,
    /// The server's process id.
    pub server_pid: u32,
    /// The server's data directory.
    pub data_dir: PathBuf,
}

/// One sample of the server.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the start.
    pub at: Duration,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Bytes under the data directory.
    pub disk_bytes: u64,
    /// Sync edits acknowledged in the interval, and their latency.
    pub edits: Summary,
    /// REST requests in the interval, and their latency.
    pub rest: Summary,
    /// Sign-ins, refreshes, logouts and reconnects in the interval.
    pub sign_ins: u64,
    /// Refreshes.
    pub refreshes: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Operations that failed in the interval.
    pub errors: u64,
}

/// What one interval's workers recorded.
#[derive(Default)]
struct Interval {
    edits: Vec<Duration>,
    rest: Vec<Duration>,
}

#[derive(Default)]
struct Shared {
    interval: Mutex<Interval>,
    sign_ins: AtomicU64,
    refreshes: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn edit(&self, latency: Duration) {
        self.interval
            .lock()
            .expect("never poisoned")
            .edits
            .push(latency);
    }
    fn rest(&self, latency: Duration) {
        self.interval
            .lock()
            .expect("never poisoned")
            .rest
            .push(latency);
    }
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("soak: {what} failed: {e}");
        }
    }
}

/// A signed-in session whose access token is refreshed before it expires,
/// as a real device's is: the soak outlives the 15-minute tokens.
struct Session {
    server: String,
    client: reqwest::Client,
    pair: tokio::sync::Mutex<TokenPair>,
}

impl Session {
    async fn sign_in(
        server: &str,
        client: &reqwest::Client,
        email: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let pair = sign_in(server, client, email).await?.tokens;
        Ok(Arc::new(Self {
            server: server.to_owned(),
            client: client.clone(),
            pair: tokio::sync::Mutex::new(pair),
        }))
    }

    /// An access token valid for at least two more minutes.
    async fn access_token(&self) -> anyhow::Result<String> {
        let mut pair = self.pair.lock().await;
        if pair.expires_at - chrono::Utc::now() < chrono::TimeDelta::minutes(2) {
            *pair = refresh(&self.server, &self.client, &pair.refresh_token).await?;
        }
        Ok(pair.access_token.clone())
    }
}

async fn sign_in(
    server: &str,
    client: &reqwest::Client,
    email: &str,
) -> anyhow::Result<SignInResponse> {
    let sent = client
        .post(format!("{server}/v1/auth/otp"))
        .json(&json!({ "email": email }))
        .send()
        .await?;
    anyhow::ensure!(sent.status() == 202, "otp answered {}", sent.status());
    let verified = client
        .post(format!("{server}/v1/auth/verify"))
        .json(&json!({ "email": email, "code": "123456", "device_name": "soak" }))
        .send()
        .await?;
    anyhow::ensure!(
        verified.status() == 200,
        "verify answered {}",
        verified.status()
    );
    Ok(verified.json().await?)
}

async fn refresh(
    server: &str,
    client: &reqwest::Client,
    refresh_token: &str,
) -> anyhow::Result<TokenPair> {
    let answered = client
        .post(format!("{server}/v1/auth/refresh"))
        .json(&RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        })
        .send()
        .await?;
    anyhow::ensure!(
        answered.status() == 200,
        "refresh answered {}",
        answered.status()
    );
    Ok(answered.json().await?)
}

/// Runs the soak against a server on `server` (http) and `ws_url`; returns
/// the samples.
pub async fn run(
    server: &str,
    ws_url: &str,
    settings: &SoakSettings,
) -> anyhow::Result<Vec<Sample>> {
    let shared = Arc::new(Shared::default());
    let client = reqwest::Client::new();
    let mut workers = Vec::new();

    // Idle sockets: one user, held for the whole run; a socket closed at
    // its token's expiry joins again with a fresh token.
    let idle_session = Session::sign_in(server, &client, "bench-0@example.com").await?;
    let mut idle = Vec::with_capacity(settings.idle);
    for i in 0..settings.idle {
        let token = idle_session.access_token().await?;
        let peer_id = format!("soak-idle-{i}-{}", std::process::id());
        let peer = peer::join(ws_url, Some(&token), &peer_id, &[]).await?;
        let (shared, session, ws) = (
            Arc::clone(&shared),
            Arc::clone(&idle_session),
            ws_url.to_owned(),
        );
        idle.push(tokio::spawn(async move {
            idle_socket(peer, peer_id, ws, session, shared).await
        }));
    }

    // Editors: bench-1.. each with its own task document.
    for e in 0..settings.editors {
        let email = format!("bench-{}@example.com", 1 + e % 8);
        let session = Session::sign_in(server, &client, &email).await?;
        let (ws, shared) = (ws_url.to_owned(), Arc::clone(&shared));
        workers.push(tokio::spawn(
            async move { editor(e, ws, session, shared).await },
        ));
    }
    // Sessions: sign in, refresh a few times, log out; over and over.
    if settings.sessions {
        let (server, shared, client) = (server.to_owned(), Arc::clone(&shared), client.clone());
        workers.push(tokio::spawn(async move {
            sessions(server, client, shared).await
        }));
    }
    // REST.
    if settings.rest {
        let session = Session::sign_in(server, &client, "bench-9@example.com").await?;
        let (server, shared, client) = (server.to_owned(), Arc::clone(&shared), client.clone());
        workers.push(tokio::spawn(async move {
            rest(server, client, session, shared).await
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = started + settings.sample_every;
    while next <= started + settings.duration {
        tokio::time::sleep_until(next.into()).await;
        let interval = std::mem::take(&mut *shared.interval.lock().expect("never poisoned"));
        let mut edits = interval.edits;
        let mut rest = interval.rest;
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(settings.server_pid).unwrap_or(0),
            fds: count_entries(&format!("/proc/{}/fd", settings.server_pid)),
            threads: status_field(settings.server_pid, "Threads:").unwrap_or(0),
            disk_bytes: disk_usage(&settings.data_dir),
            edits: Summary::of(&mut edits),
            rest: Summary::of(&mut rest),
            sign_ins: shared.sign_ins.swap(0, Ordering::Relaxed),
            refreshes: shared.refreshes.swap(0, Ordering::Relaxed),
            reconnects: shared.reconnects.swap(0, Ordering::Relaxed),
            errors: shared.errors.swap(0, Ordering::Relaxed),
        };
        println!("{}", row(&sample));
        samples.push(sample);
        next += settings.sample_every;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    }
    for socket in idle {
        socket.abort();
    }
    Ok(samples)
}

/// The header of the table [`row`] prints.
pub const HEADER: &str = "  min | RSS MiB | fds | threads | disk MiB | edits | edit p50/p99 ms | REST | REST p99 ms | sign-ins | refreshes | reconnects | errors";

fn row(s: &Sample) -> String {
    format!(
        "{:5.1} | {:7.1} | {:3} | {:7} | {:8.1} | {:5} | {:6.1} / {:6.1} | {:4} | {:11.1} | {:8} | {:9} | {:10} | {:6}",
        s.at.as_secs_f64() / 60.0,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.disk_bytes as f64 / (1024.0 * 1024.0),
        s.edits.count,
        ms(s.edits.p50),
        ms(s.edits.p99),
        s.rest.count,
        ms(s.rest.p99),
        s.sign_ins,
        s.refreshes,
        s.reconnects,
        s.errors
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One device: one edit a second on its own document, acknowledged; every
/// thirtieth edit it drops the socket and joins again.
async fn editor(e: usize, ws: String, session: Arc<Session>, shared: Arc<Shared>) {
    // A user's work moves on: every EDITS_PER_DOCUMENT edits the device
    // starts a new task, so that the live set of documents (and the
    // history each holds in memory) stays the same size for the whole run,
    // and a server that keeps nothing it should not stays flat. Documents
    // left behind are evicted once idle.
    const EDITS_PER_DOCUMENT: i64 = 300;
    let document = |generation: i64| {
        let mut seed = [0u8; 16];
        seed[..4].copy_from_slice(&(e as u32).to_le_bytes());
        seed[4..8].copy_from_slice(&(generation as u32).to_le_bytes());
        seed[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        DocumentId::from_random_bytes(seed)
    };
    let mut id = document(0);
    let peer_id = format!("soak-editor-{e}-{}", std::process::id());
    let mut replicas = Replicas::default();
    replicas
        .docs
        .insert(id, (AutoCommit::new(), sync::State::new()));
    let mut peer: Option<Peer> = None;
    let mut peer_token = String::new();
    let mut n = 0i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let token = match session.access_token().await {
            Ok(token) => token,
            Err(err) => {
                shared.error("refresh", err);
                continue;
            }
        };
        // The server closes a socket when its token expires; a device
        // reconnects with the refreshed one first.
        if peer.is_some() && token != peer_token {
            peer = None;
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if peer.is_none() {
            match peer::join(&ws, Some(&token), &peer_id, &[]).await {
                Ok(joined) => {
                    peer_token = token;
                    // A new connection starts a new sync state.
                    if let Some((_, state)) = replicas.docs.get_mut(&id) {
                        *state = sync::State::new();
                    }
                    peer = Some(joined);
                }
                Err(err) => {
                    shared.error("join", err);
                    continue;
                }
            }
        }
        let Some(connected) = peer.as_mut() else {
            continue;
        };
        n += 1;
        if n % EDITS_PER_DOCUMENT == 0 {
            replicas.docs.remove(&id);
            id = document(n / EDITS_PER_DOCUMENT);
            replicas
                .docs
                .insert(id, (AutoCommit::new(), sync::State::new()));
        }
        if let Some((doc, _)) = replicas.docs.get_mut(&id) {
            let _ = doc.put(ROOT, "n", n);
            let _ = doc.put(ROOT, "title", format!("soak task {e}, edit {n}"));
        }
        let started = Instant::now();
        match connected
            .sync_until_acknowledged(&mut replicas, id, Duration::from_secs(10))
            .await
        {
            Ok(()) => shared.edit(started.elapsed()),
            Err(err) => {
                shared.error("edit", err);
                peer = None;
                continue;
            }
        }
        if n % 30 == 0 {
            peer = None;
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds an idle socket open, reading (which answers the server's
/// keep-alive pings); when the server closes it at its token's expiry, it
/// joins again with a fresh token.
async fn idle_socket(
    mut peer: Peer,
    peer_id: String,
    ws: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
) {
    loop {
        while let Some(Ok(_)) = peer.stream.next().await {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let joined = async {
            let token = session.access_token().await?;
            peer::join(&ws, Some(&token), &peer_id, &[]).await
        }
        .await;
        match joined {
            Ok(again) => peer = again,
            Err(err) => {
                shared.error("idle socket", err);
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        }
    }
}

/// Sign in, refresh three times, log out, every two seconds.
async fn sessions(server: String, client: reqwest::Client, shared: Arc<Shared>) {
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        i += 1;
        let email = format!("bench-{}@example.com", 10 + i % 40);
        let outcome: anyhow::Result<()> = async {
            let mut pair = sign_in(&server, &client, &email).await?.tokens;
            shared.sign_ins.fetch_add(1, Ordering::Relaxed);
            for _ in 0..3 {
                pair = refresh(&server, &client, &pair.refresh_token).await?;
                shared.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            let out = client
                .post(format!("{server}/v1/auth/logout"))
                .bearer_auth(&pair.access_token)
                .json(&LogoutRequest {
                    scope: LogoutScope::This,
                })
                .send()
                .await?;
            anyhow::ensure!(
                out.status().is_success(),
                "logout answered {}",
                out.status()
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            shared.error("session", e);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Five REST requests a second: create a task, update it, list, read;
/// tasks are deleted again so the list stays short.
async fn rest(server: String, client: reqwest::Client, session: Arc<Session>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut live: std::collections::VecDeque<String> = Default::default();
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        i += 1;
        let started = Instant::now();
        let outcome: anyhow::Result<()> = async {
            let token = session.access_token().await?;
            match i % 5 {
                0 | 1 => {
                    let created = client
                        .post(format!("{server}/v1/tasks"))
                        .bearer_auth(&token)
                        .json(&json!({ "title": format!("rest task {i}") }))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        created.status() == 201,
                        "create answered {}",
                        created.status()
                    );
                    let body: serde_json::Value = created.json().await?;
                    live.push_back(body["id"].as_str().unwrap_or_default().to_owned());
                }
                2 => {
                    let Some(id) = live.back() else { return Ok(()) };
                    let updated = client
                        .patch(format!("{server}/v1/tasks/{id}"))
                        .bearer_auth(&token)
                        .json(&json!({ "done": true }))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        updated.status() == 200,
                        "update answered {}",
                        updated.status()
                    );
                }
                3 => {
                    let listed = client
                        .get(format!("{server}/v1/tasks"))
                        .bearer_auth(&token)
                        .send()
                        .await?;
                    anyhow::ensure!(listed.status() == 200, "list answered {}", listed.status());
                }
                _ => {
                    if live.len() > 20 {
                        let id = live.pop_front().unwrap_or_default();
                        let deleted = client
                            .delete(format!("{server}/v1/tasks/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await?;
                        anyhow::ensure!(
                            deleted.status().is_success(),
                            "delete answered {}",
                            deleted.status()
                        );
                    }
                }
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => shared.rest(started.elapsed()),
            Err(e) => shared.error("REST", e),
        }
    }
}

fn count_entries(dir: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&entry.path()),
            // Blocks actually allocated, not the apparent length: sled's
            // files are sparse.
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Whether anything grew without bound: after a warm-up (the first fifth
/// of the run), the worst of the last quarter of samples is compared with
/// the worst of the first quarter after the warm-up. Returns what grew.
/// Disk is judged per edit: the log keeps every change, so it grows with
/// the work done; what must not grow is the bytes each edit costs.
pub fn verdict(samples: &[Sample]) -> Result<Vec<String>, String> {
    if samples.len() < 8 {
        return Err(format!(
            "{} samples are too few to judge growth (at least 8: run longer or sample more often)",
            samples.len()
        ));
    }
    let warm = &samples[samples.len() / 5..];
    let quarter = (warm.len() / 4).max(1);
    let early = &warm[..quarter];
    let late = &warm[warm.len() - quarter..];
    let worst =
        |part: &[Sample], f: &dyn Fn(&Sample) -> f64| part.iter().map(f).fold(f64::MIN, f64::max);
    let mut grew = Vec::new();
    let mut check = |name: &str, f: &dyn Fn(&Sample) -> f64, ratio: f64, slack: f64| {
        let (before, after) = (worst(early, f), worst(late, f));
        if after > before * ratio + slack {
            grew.push(format!("{name}: {before:.1} early, {after:.1} late"));
        }
    };
    check("RSS MiB", &|s| s.rss_kib as f64 / 1024.0, 1.25, 16.0);
    check("open fds", &|s| s.fds as f64, 1.1, 16.0);
    check("threads", &|s| s.threads as f64, 1.0, 4.0);
    check("edit p99 ms", &|s| ms(s.edits.p99), 3.0, 20.0);
    check("REST p99 ms", &|s| ms(s.rest.p99), 3.0, 20.0);
    // Disk bytes per edit over each half of the warm run.
    let per_edit = |part: &[Sample]| {
        let edits: u64 = part
            .iter()
            .map(|s| s.edits.count as u64 + s.rest.count as u64)
            .sum();
        let grown = part
            .last()
            .map(|l| l.disk_bytes)
            .unwrap_or(0)
            .saturating_sub(part.first().map(|f| f.disk_bytes).unwrap_or(0));
        grown as f64 / edits.max(1) as f64
    };
    let half = warm.len() / 2;
    let (first, second) = (per_edit(&warm[..=half]), per_edit(&warm[half..]));
    if second > first * 2.0 + 4096.0 {
        grew.push(format!(
            "disk bytes per write: {first:.0} in the first half, {second:.0} in the second"
        ));
    }
    Ok(grew)
}
