//! Fan-out: U users × D devices share T task documents per user; each
//! device edits its user's tasks in turn at a fixed rate; for every edit,
//! the time until every other device of that user has it.
//!
//! Arrivals are either together (device d of every user edits at the same
//! instant, the worst case for work that concurrent edits could share) or
//! random (each device's edits a Poisson process of the same mean rate,
//! seeded, so that a run can be repeated).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use crate::peer::{self, Replicas};
use crate::stats::Summary;

/// Parameters.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// Users.
    pub users: usize,
    /// Devices per user.
    pub devices: usize,
    /// Task documents per user; a device's edits go to them in turn.
    pub tasks: usize,
    /// Edits per second per device.
    pub rate: f64,
    /// How long to edit.
    pub duration: Duration,
    /// When the devices' edits happen.
    pub arrivals: Arrivals,
}

/// When the devices' edits happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Fixed intervals; device d of every user edits at the same instant.
    Together,
    /// Exponentially distributed intervals of the same mean, from a fixed
    /// seed per device.
    Random,
}

/// The wait before a device's next edit: `interval` itself, or an
/// exponentially distributed wait of that mean drawn from `state` (an
/// xorshift generator, so runs repeat).
fn next_wait(arrivals: Arrivals, interval: Duration, state: &mut u64) -> Duration {
    match arrivals {
        Arrivals::Together => interval,
        Arrivals::Random => {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            // A uniform draw in (0, 1]: never 0, whose logarithm is infinite.
            let uniform = ((*state >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            interval.mul_f64(-uniform.ln())
        }
    }
}

/// The seed of one device's arrivals. xorshift's first outputs from seeds
/// that differ only in their low bits differ only in their low bits, so the
/// devices of one user would draw nearly the same first waits and edit in
/// one clump; splitmix64's finaliser spreads every input bit over the whole
/// seed first, so that each device's stream stands on its own.
fn device_seed(user: usize, device: usize) -> u64 {
    let mut z = ((user as u64) << 32 | device as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    // xorshift never leaves the all-zero state.
    (z ^ (z >> 31)).max(1)
}

/// Results.
#[derive(Debug)]
pub struct FanOutResult {
    /// Edit-to-every-other-device latency.
    pub latency: Summary,
    /// Deliveries per second (edit × receiving device).
    pub delivered_per_second: f64,
    /// Edits made.
    pub edits: u64,
    /// Deliveries expected but not seen by the end.
    pub missing: u64,
    /// What the devices sent and received from the start of the edits to
    /// the end of the drain.
    pub traffic: Traffic,
}

/// Frames and bytes through the devices' sockets, both ways.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Frames the devices sent.
    pub frames_up: std::sync::atomic::AtomicU64,
    /// Bytes of those frames' payloads.
    pub bytes_up: std::sync::atomic::AtomicU64,
    /// Frames the devices received.
    pub frames_down: std::sync::atomic::AtomicU64,
    /// Bytes of those frames' payloads.
    pub bytes_down: std::sync::atomic::AtomicU64,
}

impl Traffic {
    fn count(
        frames: &std::sync::atomic::AtomicU64,
        bytes: &std::sync::atomic::AtomicU64,
        len: usize,
    ) {
        frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Frames up, frames down, bytes up, bytes down, each per edit.
    pub fn per_edit(&self, edits: u64) -> [f64; 4] {
        let edits = edits.max(1) as f64;
        [
            &self.frames_up,
            &self.frames_down,
            &self.bytes_up,
            &self.bytes_down,
        ]
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed) as f64 / edits)
    }
}

type SendTimes = Arc<Mutex<HashMap<(usize, usize, i64), Instant>>>;

/// Runs the scenario. `tokens[u]` signs user `u`'s devices in (or none for
/// a server without auth); device `d` of each user connects to
/// `ws_urls[d % ws_urls.len()]`.
pub async fn run(
    ws_urls: &[String],
    tokens: &[Option<String>],
    params: &FanOut,
) -> anyhow::Result<FanOutResult> {
    let sent: SendTimes = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = Arc::new(Traffic::default());
    let mut tasks = Vec::new();
    let start_at =
        Instant::now() + Duration::from_millis(500 + 20 * (params.users * params.devices) as u64);
    for (user, token) in tokens.iter().enumerate().take(params.users) {
        let mut bases = Vec::with_capacity(params.tasks);
        for task in 0..params.tasks {
            let id = DocumentId::from_random_bytes(rand_bytes(user * 100_000 + task));
            let mut base = AutoCommit::new();
            base.put(ROOT, "title", format!("fan-out {task}"))
                .expect("put on a fresh doc");
            bases.push((id, base));
        }
        for device in 0..params.devices {
            let actor = automerge::ActorId::from(rand_bytes(user * 1000 + device + 7).to_vec());
            let replicas: Vec<(DocumentId, AutoCommit)> = bases
                .iter_mut()
                .map(|(id, base)| {
                    let mut replica = base.fork();
                    replica.set_actor(actor.clone());
                    (*id, replica)
                })
                .collect();
            let token = token.clone();
            let url = ws_urls[device % ws_urls.len()].clone();
            let (sent, latencies, delivered, traffic) = (
                Arc::clone(&sent),
                Arc::clone(&latencies),
                Arc::clone(&delivered),
                Arc::clone(&traffic),
            );
            let params = params.clone();
            tasks.push(tokio::spawn(async move {
                device_loop(
                    url, token, user, device, replicas, params, start_at, sent, latencies,
                    delivered, traffic,
                )
                .await
            }));
        }
    }
    let mut edits = 0;
    for task in tasks {
        edits += task.await??;
    }
    let mut samples = latencies.lock().expect("no panics").clone();
    let expected = edits * (params.devices as u64 - 1);
    let got = delivered.load(std::sync::atomic::Ordering::Relaxed);
    Ok(FanOutResult {
        latency: Summary::of(&mut samples),
        delivered_per_second: got as f64 / params.duration.as_secs_f64(),
        edits,
        missing: expected.saturating_sub(got),
        traffic: Arc::try_unwrap(traffic).unwrap_or_default(),
    })
}

fn rand_bytes(seed: usize) -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = (nanos ^ (seed as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
    out[0] ^= seed as u8;
    out
}

/// The task that edit number `seq` (counted from 1) of `device` goes to:
/// devices start at different tasks so that they edit different documents
/// at any moment, as people on several devices usually do.
fn task_of(device: usize, seq: i64, tasks: usize) -> usize {
    (device + seq as usize) % tasks
}

#[allow(clippy::too_many_arguments)]
async fn device_loop(
    url: String,
    token: Option<String>,
    user: usize,
    device: usize,
    documents: Vec<(DocumentId, AutoCommit)>,
    params: FanOut,
    start_at: Instant,
    sent: SendTimes,
    latencies: Arc<Mutex<Vec<Duration>>>,
    delivered: Arc<std::sync::atomic::AtomicU64>,
    traffic: Arc<Traffic>,
) -> anyhow::Result<u64> {
    let peer_id = format!("lg-{user}-{device}-{}", std::process::id());
    let mut peer = peer::join(&url, token.as_deref(), &peer_id, &[]).await?;
    let ids: Vec<DocumentId> = documents.iter().map(|(id, _)| *id).collect();
    let task_by_id: HashMap<DocumentId, usize> = ids
        .iter()
        .enumerate()
        .map(|(task, id)| (*id, task))
        .collect();
    let mut replicas = Replicas::default();
    for (id, replica) in documents {
        replicas
            .docs
            .insert(id, (replica, automerge::sync::State::new()));
    }
    for id in &ids {
        if let Some(frame) = replicas.outgoing(&peer.peer_id, &peer.server_id, *id) {
            peer.sink.send(frame).await?;
        }
    }
    // (other device, task) → the newest of that device's edits seen there.
    let mut seen: HashMap<(usize, usize), i64> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / params.rate);
    tokio::time::sleep_until(start_at.into()).await;
    let stop_edits = Instant::now() + params.duration;
    let drain_until = stop_edits + Duration::from_secs(3);
    let mut draws = device_seed(user, device);
    let first_wait = match params.arrivals {
        Arrivals::Together => interval.mul_f64((device as f64 + 1.0) / params.devices as f64),
        Arrivals::Random => next_wait(params.arrivals, interval, &mut draws),
    };
    let mut next_edit = tokio::time::Instant::now() + first_wait;
    let mut edits = 0i64;
    loop {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_edit), if now < stop_edits => {
                next_edit += next_wait(params.arrivals, interval, &mut draws);
                edits += 1;
                let id = ids[task_of(device, edits, params.tasks)];
                let (doc, _) = replicas.docs.get_mut(&id).expect("inserted above");
                doc.put(ROOT, format!("d{device}"), edits)?;
                sent.lock().expect("no panics").insert((user, device, edits), Instant::now());
                if let Some(frame) = replicas.outgoing(&peer.peer_id, &peer.server_id, id) {
                    Traffic::count(&traffic.frames_up, &traffic.bytes_up, frame.len());
                    peer.sink.send(frame).await?;
                }
            }
            () = tokio::time::sleep_until(drain_until.into()) => break,
            frame = peer.stream.next() => {
                let Some(frame) = frame else { anyhow::bail!("server closed the socket") };
                let tungstenite::Message::Binary(bytes) = frame? else { continue };
                Traffic::count(&traffic.frames_down, &traffic.bytes_down, bytes.len());
                let message = wire::decode(&bytes)?;
                let Some(id) = replicas.apply(&message)? else { continue };
                let Some(&task) = task_by_id.get(&id) else { continue };
                let arrived = Instant::now();
                let (doc, _) = replicas.docs.get(&id).expect("inserted above");
                for other in (0..params.devices).filter(|d| *d != device) {
                    let value = peer::int_field(doc, &format!("d{other}"));
                    let last = seen.entry((other, task)).or_insert(0);
                    // Every edit of `other` up to `value` that went to this
                    // task has now arrived.
                    let sent = sent.lock().expect("no panics");
                    let mut latencies = latencies.lock().expect("no panics");
                    for seq in (*last + 1)..=value {
                        if task_of(other, seq, params.tasks) == task
                            && let Some(at) = sent.get(&(user, other, seq))
                        {
                            latencies.push(arrived - *at);
                            delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    *last = (*last).max(value);
                }
                if let Some(frame) = replicas.outgoing(&peer.peer_id, &peer.server_id, id) {
                    Traffic::count(&traffic.frames_up, &traffic.bytes_up, frame.len());
                    peer.sink.send(frame).await?;
                }
            }
        }
    }
    let _ = peer.sink.close().await;
    Ok(edits as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_arrivals_keep_the_mean_rate_spread_like_poisson_and_repeat() {
        let interval = Duration::from_millis(100);
        let draw = |seed: u64| {
            let mut state = seed;
            (0..20_000)
                .map(|_| next_wait(Arrivals::Random, interval, &mut state))
                .collect::<Vec<_>>()
        };
        let waits = draw(42);
        let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
        assert!(
            (95..=105).contains(&mean.as_millis()),
            "mean wait {mean:?}, not about {interval:?}"
        );
        // An exponential wait exceeds its mean with probability 1/e.
        let longer = waits.iter().filter(|w| **w > interval).count() as f64 / waits.len() as f64;
        assert!(
            (0.34..0.40).contains(&longer),
            "{longer} of waits exceed the mean"
        );
        assert_eq!(waits, draw(42), "one seed, one sequence");
        assert_ne!(waits, draw(43));
    }

    #[test]
    fn the_devices_of_one_user_draw_their_first_waits_independently() {
        // Were the devices' streams alike, device 0's and device 1's first
        // waits would rise and fall together across users.
        let interval = Duration::from_millis(100);
        let first = |user, device| {
            let mut state = device_seed(user, device);
            next_wait(Arrivals::Random, interval, &mut state).as_secs_f64()
        };
        let pairs: Vec<(f64, f64)> = (0..2_000).map(|u| (first(u, 0), first(u, 1))).collect();
        let n = pairs.len() as f64;
        let (ma, mb) = (
            pairs.iter().map(|p| p.0).sum::<f64>() / n,
            pairs.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let cov = pairs.iter().map(|(a, b)| (a - ma) * (b - mb)).sum::<f64>();
        let va = pairs.iter().map(|(a, _)| (a - ma).powi(2)).sum::<f64>();
        let vb = pairs.iter().map(|(_, b)| (b - mb).powi(2)).sum::<f64>();
        let correlation = cov / (va * vb).sqrt();
        assert!(
            correlation.abs() < 0.1,
            "first waits of two devices correlate: {correlation}"
        );
        // Nor do a user's five devices start within a millisecond of each
        // other, as they did: look at the first hundred users.
        let clumped = (0..100)
            .filter(|&u| {
                let waits: Vec<f64> = (0..5).map(|d| first(u, d)).collect();
                let spread = waits.iter().cloned().fold(f64::MIN, f64::max)
                    - waits.iter().cloned().fold(f64::MAX, f64::min);
                spread < 0.001
            })
            .count();
        assert_eq!(clumped, 0, "users whose devices all edit at once");
    }

    #[test]
    fn together_arrivals_are_the_interval() {
        let mut state = 7;
        let interval = Duration::from_millis(250);
        assert_eq!(
            next_wait(Arrivals::Together, interval, &mut state),
            interval
        );
        assert_eq!(state, 7, "fixed intervals draw nothing");
    }
}
