//! Idle connections: open N joined sockets and measure the server's memory
//! per connection and the handshake rate.

use std::time::{Duration, Instant};

use crate::peer::{self, Peer};
use crate::stats::rss_kib;

/// Results.
#[derive(Debug)]
pub struct IdleResult {
    /// Sockets open at the end.
    pub open: usize,
    /// Handshakes (upgrade + join + peer) per second while opening.
    pub handshakes_per_second: f64,
    /// Server RSS before, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every socket open, in KiB.
    pub rss_after_kib: Option<u64>,
}

impl IdleResult {
    /// Server memory per open socket, in KiB.
    pub fn kib_per_connection(&self) -> Option<f64> {
        Some((self.rss_after_kib? as f64 - self.rss_before_kib? as f64) / self.open.max(1) as f64)
    }
}

/// Opens `count` sockets with `concurrency` handshakes in flight, spreading
/// them over `tokens` (one per user), holds them for `hold`, then closes.
pub async fn run(
    ws_url: &str,
    tokens: &[Option<String>],
    count: usize,
    concurrency: usize,
    hold: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<IdleResult> {
    let rss_before_kib = server_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut peers: Vec<Peer> = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch = concurrency.min(count - next);
        let mut joins = Vec::with_capacity(batch);
        for i in next..next + batch {
            let url = ws_url.to_owned();
            let token = tokens[i % tokens.len()].clone();
            joins.push(tokio::spawn(async move {
                peer::join(
                    &url,
                    token.as_deref(),
                    &format!("idle-{i}-{}", std::process::id()),
                    &[],
                )
                .await
            }));
        }
        for join in joins {
            peers.push(join.await??);
        }
        next += batch;
    }
    let handshakes_per_second = count as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let rss_after_kib = server_pid.and_then(rss_kib);
    let open = peers.len();
    drop(peers);
    Ok(IdleResult {
        open,
        handshakes_per_second,
        rss_before_kib,
        rss_after_kib,
    })
}
