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

mod workers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::peer;
use crate::stats::{Summary, rss_kib};
use workers::{Session, Shared, editor, idle_socket, rest, sessions};

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
