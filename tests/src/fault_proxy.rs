//! A fault-injecting TCP proxy, controlled from the test.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every
//! connection to a target port on 127.0.0.1. Faults can be switched at any
//! time through the proxy (or a [`FaultHandle`] cloned from it, which can be
//! moved into other tasks) and apply to current and new connections alike:
//!
//! - [`FaultHandle::set_latency`]: every piece of data is delivered `latency`
//!   plus a random `0..=jitter` after it was read, in order;
//! - [`FaultHandle::set_bandwidth`]: at most so many bytes per second in each
//!   direction of each connection;
//! - [`FaultHandle::set_tiny_writes`]: data is written in pieces of at most
//!   so many bytes, each a write of its own (`TCP_NODELAY` is set, so the
//!   pieces become segments of their own);
//! - [`FaultHandle::black_hole`]: for a while nothing is forwarded; the data
//!   is held and delivered afterwards, as a real network partition delays TCP
//!   traffic (retransmission) rather than losing or corrupting it.
//!   [`FaultHandle::black_hole_then_reset`] is the partition that outlives
//!   the connection (a NAT mapping or a mobile link that expired): the held
//!   data is lost and both sides are reset when it ends;
//!   [`FaultHandle::black_hole_dropping`] discards what it reads and leaves
//!   the connection open, as a broken relay does: whole messages go missing
//!   mid-stream;
//! - [`FaultHandle::reset_after_bytes`]: each connection is reset once this
//!   many bytes (both directions together, counted from when the fault is
//!   set or the connection opened) have been forwarded: the cut falls at
//!   exactly that byte, in the middle of whatever frame it is in;
//! - [`FaultHandle::reset_all`]: resets every current connection now;
//! - [`FaultHandle::abandon_all`]: resets the client's side of every current
//!   connection now and leaves the target's side open and silent, as when a
//!   device's network changes under it (or a NAT forgets the mapping): the
//!   server learns of it only from its keep-alive, or from the client's
//!   next connection; what it sends meanwhile is lost;
//! - [`FaultHandle::refuse_for`] / [`FaultHandle::set_refusing`]: the
//!   listening socket is closed, so connection attempts get a real
//!   `ECONNREFUSED`, and reopened on the same port afterwards.
//!
//! A reset is a TCP RST on both sides (`SO_LINGER` 0, then close): whatever
//! was in flight through the proxy is lost, as when a middlebox drops a
//! connection. [`FaultHandle::clear`] lifts every fault.
//!
//! Any client can be put behind it: the JS client through the port in its
//! `ws://` URL, client-core through its server URL, `SyncPeer` through the
//! port it connects to.
//!
//! The file is longer than 600 lines because every fault acts on the same
//! forwarding loop of one connection; it holds that loop, the handle that
//! switches the faults, and their tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A small deterministic random number generator (SplitMix64), so that a
/// seed replays the same faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration in `low..=high`, in whole milliseconds.
    pub fn duration(&mut self, low: Duration, high: Duration) -> Duration {
        Duration::from_millis(self.between(low.as_millis() as u64, high.as_millis() as u64))
    }

    /// A new generator derived from this one (for another task).
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// The faults in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every delivery.
    pub latency: Duration,
    /// A random extra delay in `0..=jitter` per delivery (order is kept).
    pub jitter: Duration,
    /// Bytes per second per direction of a connection.
    pub bandwidth: Option<u64>,
    /// Largest write, in bytes.
    pub tiny_writes: Option<usize>,
    /// Reset a connection after this many bytes.
    pub reset_after: Option<u64>,
    /// Nothing is forwarded before this moment.
    pub black_hole_until: Option<Instant>,
    /// Whether the black hole ends in a reset (and the held data is lost).
    pub black_hole_resets: bool,
    /// Whether the black hole discards what it reads instead of holding it.
    pub black_hole_drops: bool,
    /// New connections are refused (the listener is closed).
    pub refusing: bool,
}

/// What the proxy did, for test assertions and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by a fault.
    pub resets: u64,
    /// Bytes forwarded towards the target.
    pub bytes_up: u64,
    /// Bytes forwarded towards the client.
    pub bytes_down: u64,
    /// Black holes started.
    pub black_holes: u64,
    /// Refusal periods started.
    pub refusals: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    black_holes: AtomicU64,
    refusals: AtomicU64,
}

struct Connection {
    reset: Arc<Notify>,
    abandon: Arc<Notify>,
    sever: Arc<Notify>,
    /// Bytes forwarded (both directions) since the reset-after budget started.
    forwarded: Arc<AtomicU64>,
}

struct Shared {
    target: u16,
    port: u16,
    faults: watch::Sender<Faults>,
    connections: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
    black_hole_generation: AtomicU64,
    counters: Counters,
    rng: Mutex<Rng>,
}

/// Controls a running proxy; cheap to clone.
#[derive(Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("port", &self.shared.port)
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// A running proxy. Dropping it stops accepting and resets every
/// connection.
#[derive(Debug)]
pub struct FaultProxy {
    handle: FaultHandle,
    acceptor: JoinHandle<()>,
}

impl std::ops::Deref for FaultProxy {
    type Target = FaultHandle;
    fn deref(&self) -> &FaultHandle {
        &self.handle
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.handle.reset_all();
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Reopening the same port after a refusal period must not wait for
    // TIME_WAIT connections of the previous listener.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:target`, without faults. `seed` drives the
    /// jitter.
    pub async fn start(target: u16, seed: u64) -> Self {
        let listener = bind(0).expect("the proxy can listen");
        let port = listener.local_addr().expect("a bound port").port();
        let (faults, _) = watch::channel(Faults::default());
        let shared = Arc::new(Shared {
            target,
            port,
            faults,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            black_hole_generation: AtomicU64::new(0),
            counters: Counters::default(),
            rng: Mutex::new(Rng::new(seed)),
        });
        let acceptor = tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        Self {
            handle: FaultHandle { shared },
            acceptor,
        }
    }

    /// A handle that can be moved into other tasks.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

impl FaultHandle {
    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// The port the proxy forwards to.
    pub fn target(&self) -> u16 {
        self.shared.target
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    fn modify(&self, change: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(change);
    }

    /// Lifts every fault. A black hole in progress ends now: one that holds
    /// delivers what it held, one that resets resets.
    pub fn clear(&self) {
        let resets = {
            let f = self.shared.faults.borrow();
            f.black_hole_resets && f.black_hole_until.is_some()
        };
        self.shared
            .black_hole_generation
            .fetch_add(1, Ordering::SeqCst);
        if resets {
            self.reset_all();
        }
        self.modify(|f| *f = Faults::default());
    }

    /// Latency and jitter on every delivery.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.modify(|f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// A bandwidth limit per direction of a connection, or none.
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.modify(|f| f.bandwidth = bytes_per_second.filter(|b| *b > 0));
    }

    /// Writes of at most `bytes` bytes each, or normal writes.
    pub fn set_tiny_writes(&self, bytes: Option<usize>) {
        self.modify(|f| f.tiny_writes = bytes.filter(|b| *b > 0));
    }

    /// Holds all traffic for `duration`, then delivers it.
    pub fn black_hole(&self, duration: Duration) {
        bump(&self.shared.counters.black_holes);
        self.shared
            .black_hole_generation
            .fetch_add(1, Ordering::SeqCst);
        self.modify(|f| {
            f.black_hole_until = Some(Instant::now() + duration);
            f.black_hole_resets = false;
            f.black_hole_drops = false;
        });
    }

    /// Discards all traffic read for `duration`, whole reads at a time, and
    /// leaves the connections open: a middlebox that loses what it relays.
    /// TCP itself never does this; a user-space relay that drops its buffers
    /// does, and the stream then goes on with whole messages missing.
    pub fn black_hole_dropping(&self, duration: Duration) {
        bump(&self.shared.counters.black_holes);
        self.shared
            .black_hole_generation
            .fetch_add(1, Ordering::SeqCst);
        self.modify(|f| {
            f.black_hole_until = Some(Instant::now() + duration);
            f.black_hole_resets = false;
            f.black_hole_drops = true;
        });
    }

    /// Holds all traffic for `duration`, then resets every connection open
    /// at that moment; what was held is lost.
    pub fn black_hole_then_reset(&self, duration: Duration) {
        bump(&self.shared.counters.black_holes);
        let generation = self
            .shared
            .black_hole_generation
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let until = Instant::now() + duration;
        self.modify(|f| {
            f.black_hole_until = Some(until);
            f.black_hole_resets = true;
        });
        let handle = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            // Unless another black hole or a clear took over meanwhile.
            if handle.shared.black_hole_generation.load(Ordering::SeqCst) == generation {
                // Connections poll their reset before their data, so the
                // reset wins over delivering what was held.
                handle.reset_all();
                handle.modify(|f| {
                    f.black_hole_until = None;
                    f.black_hole_resets = false;
                });
            }
        });
    }

    /// Resets each connection after `bytes` more bytes (or not).
    pub fn reset_after_bytes(&self, bytes: Option<u64>) {
        for connection in self.shared.connections.lock().expect("lock").values() {
            connection.forwarded.store(0, Ordering::SeqCst);
        }
        self.modify(|f| f.reset_after = bytes);
    }

    /// Resets every current connection now.
    pub fn reset_all(&self) {
        for connection in self.shared.connections.lock().expect("lock").values() {
            connection.reset.notify_one();
        }
    }

    /// Refuses new connections (or accepts them again).
    pub fn set_refusing(&self, refusing: bool) {
        if refusing && !self.faults().refusing {
            bump(&self.shared.counters.refusals);
        }
        self.modify(|f| f.refusing = refusing);
    }

    /// Refuses new connections for `duration`, from a task of its own.
    pub fn refuse_for(&self, duration: Duration) {
        self.set_refusing(true);
        let handle = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            handle.set_refusing(false);
        });
    }

    /// Resets the client side of every current connection now; the target
    /// side stays open, hears nothing more, and what it sends is dropped.
    pub fn abandon_all(&self) {
        for connection in self.shared.connections.lock().expect("lock").values() {
            connection.abandon.notify_one();
        }
    }

    /// Cuts the path of every current connection without telling either
    /// end: both stay open, hear nothing more, and what they send is lost,
    /// as when a phone changes networks. New connections are unaffected.
    pub fn sever_all(&self) {
        for connection in self.shared.connections.lock().expect("lock").values() {
            connection.sever.notify_one();
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.lock().expect("lock").len()
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            black_holes: c.black_holes.load(Ordering::SeqCst),
            refusals: c.refusals.load(Ordering::SeqCst),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut faults = shared.faults.subscribe();
    let mut listener = Some(listener);
    loop {
        let refusing = faults.borrow_and_update().refusing;
        match (&listener, refusing) {
            (Some(_), true) => listener = None,
            (None, false) => loop {
                // The port is ours: nobody else binds to it but by chance.
                match bind(shared.port) {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            },
            _ => {}
        }
        match &listener {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((client, _)) = accepted {
                            bump(&shared.counters.accepted);
                            tokio::spawn(serve(Arc::clone(&shared), client));
                        }
                    }
                    changed = faults.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if faults.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One piece of data on its way, or the end of the stream.
enum Piece {
    Data { bytes: Vec<u8>, due: Instant },
    Eof { due: Instant },
}

/// Why a direction ended.
enum End {
    /// The stream ended normally; the other side was told (FIN).
    Eof,
    /// Something failed or a fault demands a reset.
    Reset,
}

async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)).await else {
        // The target is down: the client sees its connection reset, as it
        // would see a refusal from the real server.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let reset = Arc::new(Notify::new());
    let abandon = Arc::new(Notify::new());
    let sever = Arc::new(Notify::new());
    let forwarded = Arc::new(AtomicU64::new(0));
    shared.connections.lock().expect("lock").insert(
        id,
        Connection {
            reset: Arc::clone(&reset),
            abandon: Arc::clone(&abandon),
            sever: Arc::clone(&sever),
            forwarded: Arc::clone(&forwarded),
        },
    );
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let ending = {
        let shared = &shared;
        let forwarded = &forwarded;
        let up = direction(
            shared,
            forwarded,
            &mut client_read,
            &mut server_write,
            &shared.counters.bytes_up,
        );
        let down = direction(
            shared,
            forwarded,
            &mut server_read,
            &mut client_write,
            &shared.counters.bytes_down,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                // A reset wins over data that became due at the same time.
                biased;
                () = reset.notified() => break Ending::Reset,
                () = abandon.notified() => break Ending::Abandon,
                () = sever.notified() => break Ending::Sever,
                end = &mut up, if !up_done => match end {
                    End::Eof => up_done = true,
                    End::Reset => break Ending::Reset,
                },
                end = &mut down, if !down_done => match end {
                    End::Eof => down_done = true,
                    End::Reset => break Ending::Reset,
                },
            }
            if up_done && down_done {
                break Ending::Clean;
            }
        }
    };
    shared.connections.lock().expect("lock").remove(&id);
    if ending == Ending::Clean {
        return;
    }
    if ending == Ending::Sever {
        // Both sides stay open and hear nothing more; what either sends is
        // lost, until each gives up on its connection.
        let sink = |mut from: ReadHalf<TcpStream>| async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            from
        };
        let (client_read, server_read) = tokio::join!(sink(client_read), sink(server_read));
        drop((client_read, client_write, server_read, server_write));
        return;
    }
    bump(&shared.counters.resets);
    let client = client_read.unsplit(client_write);
    // SO_LINGER 0: close sends RST and discards unsent data.
    let _ = client.set_zero_linger();
    drop(client);
    let server = server_read.unsplit(server_write);
    if ending == Ending::Abandon {
        // Nothing reaches the target any more, and what it sends is lost,
        // until it gives up on the connection.
        let mut server = server;
        let mut sink = vec![0u8; 16 * 1024];
        while let Ok(n) = server.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let _ = server.set_zero_linger();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Clean,
    Reset,
    Abandon,
    Sever,
}

/// Moves data from `from` to `to` under the faults in force, until the
/// stream ends or a fault or failure calls for a reset. A reader task and a
/// writer, joined by a queue, so that latency delays data without slowing
/// the reading of what follows.
async fn direction(
    shared: &Shared,
    forwarded: &AtomicU64,
    from: &mut ReadHalf<TcpStream>,
    to: &mut WriteHalf<TcpStream>,
    counter: &AtomicU64,
) -> End {
    let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
    let reader = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(n) => n,
                Err(_) => return End::Reset,
            };
            let faults = shared.faults.borrow().clone();
            let jitter = if faults.jitter.is_zero() {
                Duration::ZERO
            } else {
                let mut rng = shared.rng.lock().expect("lock");
                rng.duration(Duration::ZERO, faults.jitter)
            };
            // Keep order: nothing is due before what was read earlier.
            let due = (Instant::now() + faults.latency + jitter).max(last_due);
            last_due = due;
            if n == 0 {
                let _ = tx.send(Piece::Eof { due });
                return End::Eof;
            }
            if tx
                .send(Piece::Data {
                    bytes: buf[..n].to_vec(),
                    due,
                })
                .is_err()
            {
                return End::Reset;
            }
        }
    };
    let writer = async {
        let mut faults_rx = shared.faults.subscribe();
        while let Some(piece) = rx.recv().await {
            let due = match &piece {
                Piece::Data { due, .. } | Piece::Eof { due } => *due,
            };
            tokio::time::sleep_until(due).await;
            if matches!(piece, Piece::Data { .. }) && dropping(&faults_rx) {
                continue;
            }
            pass_black_hole(&mut faults_rx).await;
            let bytes = match piece {
                Piece::Eof { .. } => {
                    let _ = to.shutdown().await;
                    return End::Eof;
                }
                Piece::Data { bytes, .. } => bytes,
            };
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                pass_black_hole(&mut faults_rx).await;
                let faults = faults_rx.borrow().clone();
                let mut take = rest.len().min(faults.tiny_writes.unwrap_or(usize::MAX));
                let mut reset_here = false;
                if let Some(limit) = faults.reset_after {
                    (take, reset_here) = take_budget(forwarded, limit, take);
                }
                if take > 0 {
                    if to.write_all(&rest[..take]).await.is_err() || to.flush().await.is_err() {
                        return End::Reset;
                    }
                    counter.fetch_add(take as u64, Ordering::SeqCst);
                    rest = &rest[take..];
                }
                if reset_here {
                    return End::Reset;
                }
                if let Some(rate) = faults.bandwidth {
                    let pause = Duration::from_secs_f64(take as f64 / rate as f64);
                    tokio::time::sleep(pause).await;
                }
            }
        }
        End::Reset
    };
    tokio::pin!(reader, writer);
    let mut read_done = false;
    loop {
        tokio::select! {
            end = &mut reader, if !read_done => match end {
                End::Eof => read_done = true,
                End::Reset => return End::Reset,
            },
            end = &mut writer => return end,
        }
    }
}

/// Takes up to `want` bytes of the connection's reset budget; returns how
/// many may be written and whether the budget is then spent.
fn take_budget(forwarded: &AtomicU64, limit: u64, want: usize) -> (usize, bool) {
    let mut done = forwarded.load(Ordering::SeqCst);
    loop {
        let allowed = (limit.saturating_sub(done)).min(want as u64);
        match forwarded.compare_exchange(done, done + allowed, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return (allowed as usize, done + allowed >= limit),
            Err(now) => done = now,
        }
    }
}

/// Whether a dropping black hole is in force now.
fn dropping(faults: &watch::Receiver<Faults>) -> bool {
    let f = faults.borrow();
    f.black_hole_drops
        && f.black_hole_until
            .is_some_and(|until| Instant::now() < until)
}

/// Waits while a black hole is in force.
async fn pass_black_hole(faults: &mut watch::Receiver<Faults>) {
    loop {
        let (until, resets) = {
            let f = faults.borrow_and_update();
            (f.black_hole_until, f.black_hole_resets)
        };
        let Some(until) = until else { return };
        if faults.borrow().black_hole_drops {
            return;
        }
        // A black hole that ends in a reset holds until the reset (which
        // the task that ends it sends before lifting the hole).
        if !resets && Instant::now() >= until {
            return;
        }
        if resets {
            if faults.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                changed = faults.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo-less sink server: accepts one connection and returns what it
    /// read until EOF or an error, and whether it ended in an error.
    async fn sink() -> (u16, JoinHandle<(Vec<u8>, bool)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return (got, false),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => return (got, true),
                }
            }
        });
        (port, task)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_arrive_intact_under_latency_jitter_and_tiny_writes() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 1).await;
        proxy.set_latency(Duration::from_millis(20), Duration::from_millis(30));
        proxy.set_tiny_writes(Some(7));
        let data = pattern(50_000);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        for part in data.chunks(1000) {
            client.write_all(part).await.unwrap();
        }
        client.shutdown().await.unwrap();
        let (got, errored) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        assert!(!errored, "the stream ended in an error");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrived changed or reordered");
    }

    #[tokio::test]
    async fn latency_delays_delivery() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 2).await;
        proxy.set_latency(Duration::from_millis(300), Duration::ZERO);
        let started = std::time::Instant::now();
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let (got, _) = task.await.unwrap();
        assert_eq!(got, b"hello");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn bandwidth_limits_throughput() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 3).await;
        proxy.set_bandwidth(Some(20_000));
        let data = pattern(10_000);
        let started = std::time::Instant::now();
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let (got, _) = task.await.unwrap();
        assert!(got == data);
        // 10,000 bytes at 20,000 bytes/s: about half a second.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn reset_after_bytes_cuts_at_exactly_that_byte() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 4).await;
        proxy.reset_after_bytes(Some(1234));
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let data = pattern(10_000);
        // The proxy may reset us while we write.
        let _ = client.write_all(&data).await;
        let (got, errored) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(errored, "the target saw a clean end, not a reset");
        assert_eq!(got.len(), 1234);
        assert!(got == data[..1234]);
        // The client sees the reset too.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        assert_eq!(proxy.stats().resets, 1);
    }

    #[tokio::test]
    async fn black_hole_holds_then_delivers() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 5).await;
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        proxy.black_hole(Duration::from_millis(500));
        let started = std::time::Instant::now();
        client.write_all(b"held").await.unwrap();
        client.shutdown().await.unwrap();
        let (got, errored) = task.await.unwrap();
        assert!(!errored);
        assert_eq!(got, b"held");
        assert!(started.elapsed() >= Duration::from_millis(450));
    }

    #[tokio::test]
    async fn a_dropping_black_hole_loses_what_it_reads_and_the_connection_goes_on() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 7).await;
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(b"kept ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.black_hole_dropping(Duration::from_millis(300));
        client.write_all(b"lost ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(b"after").await.unwrap();
        client.shutdown().await.unwrap();
        let (got, errored) = task.await.unwrap();
        assert!(!errored, "the connection was reset");
        assert_eq!(got, b"kept after");
    }

    #[tokio::test]
    async fn black_hole_then_reset_loses_what_it_held() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 6).await;
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(b"before").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.black_hole_then_reset(Duration::from_millis(300));
        client.write_all(b"lost").await.unwrap();
        let (got, errored) = task.await.unwrap();
        assert!(errored);
        assert_eq!(got, b"before");
    }

    #[tokio::test]
    async fn reset_all_resets_current_connections() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 7).await;
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(b"x").await.unwrap();
        while proxy.open_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.reset_all();
        let (got, errored) = task.await.unwrap();
        assert!(errored);
        assert_eq!(got, b"x");
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn abandon_resets_the_client_and_leaves_the_target_silent() {
        let (port, task) = sink().await;
        let proxy = FaultProxy::start(port, 9).await;
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        client.write_all(b"x").await.unwrap();
        while proxy.open_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.abandon_all();
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        // The target hears neither an end nor a reset.
        let mut task = task;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut task)
                .await
                .is_err(),
            "the target saw its connection end"
        );
        drop(proxy);
        task.abort();
    }

    #[tokio::test]
    async fn refusal_refuses_then_accepts_again_on_the_same_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = stream.write_all(b"hi").await;
                });
            }
        });
        let proxy = FaultProxy::start(port, 8).await;
        proxy.set_refusing(true);
        // The listener closes asynchronously.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(("127.0.0.1", proxy.port())).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => assert!(std::time::Instant::now() < deadline, "never refused"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.set_refusing(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", proxy.port())).await {
                break stream;
            }
            assert!(std::time::Instant::now() < deadline, "never accepted again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        assert_eq!(proxy.stats().refusals, 1);
    }
}
