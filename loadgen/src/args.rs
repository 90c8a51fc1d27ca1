//! The load generator's command line: the target (shared by every
//! scenario) and one subcommand per scenario with its own flags.

use clap::{Args, Parser, Subcommand};

use crate::scenario;

#[derive(Debug, Parser)]
#[command(
    name = "codeedex-loadgen",
    about = "Benchmarks for CodeeDex Task Sync (loopback only)"
)]
pub(crate) struct Cli {
    /// The server's base URL; must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// The sync WebSocket path.
    #[arg(long, default_value = "/v1/sync")]
    pub(crate) ws_path: String,
    /// Target a server without auth (the reference server): no sign-in, no tokens.
    #[arg(long)]
    pub(crate) no_auth: bool,
    /// The fixed code configured for the bench identities `bench-<i>@example.com`.
    #[arg(long, default_value = "123456")]
    pub(crate) code: String,
    /// The server's process id, to read its memory and CPU time.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Another node of the same service (loopback), repeatable: the fan-out
    /// scenarios spread each user's devices over `--server` and these in
    /// turn, so that an edit reaches devices on other nodes.
    #[arg(long)]
    pub(crate) also_server: Vec<String>,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// OTP verification plus token issue per second. The server must run with
    /// fixed test codes for `bench-<i>@example.com` (i in 0..identities), no
    /// resend cooldown, and per-IP limits above the request count.
    Auth(AuthArgs),
    /// Users × devices editing shared documents; edit-to-device latency.
    Fanout(FanoutArgs),
    /// Raise the fan-out edit rate step by step until delivered edits per
    /// second stop rising; report the knee.
    Saturation(SaturationArgs),
    /// Idle authenticated sockets: server memory per socket, handshakes per second.
    Idle(IdleArgs),
    /// Durable changes per second: writers push as fast as the server acknowledges.
    Ingest(IngestArgs),
    /// Kill -9 the server at random moments under load, restart it, and
    /// check that every acknowledged change survived.
    Crash(CrashArgs),
    /// A store with N task documents: start time and idle memory after a restart.
    Coldstart(ColdstartArgs),
    /// Reconnect storm: N devices connected and synced, the server restarted,
    /// all N reconnecting at once with client-core's backoff and Retry-After.
    Storm(StormArgs),
    /// Soak: mixed load (sign-ins, refreshes, sync edits, REST, reconnects,
    /// idle sockets) with the server's RSS, fds, threads, disk and latency
    /// sampled at an interval; fails if any grows without bound. Needs
    /// --server-pid, and fixed codes for bench-0 to bench-49 (the identities
    /// it signs in).
    Soak(SoakArgs),
    /// The durability floor: one 4 KiB write plus fsync on the disk of a directory.
    Fsync(FsyncArgs),
    /// The protocol floor: Automerge work for one edit relayed A → server → B, in memory.
    AutomergeFloor(AutomergeFloorArgs),
    /// The floor: a bare WebSocket echo round trip in this process.
    Echo(EchoArgs),
    /// A device returns after T tasks got E edits each elsewhere.
    Catchup(CatchupArgs),
}

// The flags of `Auth`.
#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    /// How many distinct identifiers to cycle through (one in flight each).
    #[arg(long, default_value_t = 64)]
    pub(crate) identities: usize,
    /// Stop after this many sign-ins.
    #[arg(long, default_value_t = 5000)]
    pub(crate) sign_ins: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) seconds: u64,
}

// The flags of `Fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Users.
    #[arg(long, default_value_t = 4)]
    pub(crate) users: usize,
    /// Devices per user.
    #[arg(long, default_value_t = 3)]
    pub(crate) devices: usize,
    /// Task documents per user (at most 1,000); each device edits them in turn.
    #[arg(long, default_value_t = 20)]
    pub(crate) tasks: usize,
    /// Edits per second per device.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) rate: f64,
    /// Seconds of editing (at most 120).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Edits at fixed intervals, device d of every user at the same instant
    /// (together), or as a seeded Poisson process of the same mean (random).
    #[arg(long, value_enum, default_value_t = scenario::fanout::Arrivals::Together)]
    pub(crate) arrivals: scenario::fanout::Arrivals,
}

// The flags of `Saturation`.
#[derive(Debug, Args)]
pub(crate) struct SaturationArgs {
    /// Users.
    #[arg(long, default_value_t = 4)]
    pub(crate) users: usize,
    /// Devices per user.
    #[arg(long, default_value_t = 3)]
    pub(crate) devices: usize,
    /// Task documents per user (at most 1,000); each device edits them in turn.
    #[arg(long, default_value_t = 20)]
    pub(crate) tasks: usize,
    /// The first rate, in edits per second per device; each step doubles it.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) start_rate: f64,
    /// Steps (at most 16).
    #[arg(long, default_value_t = 8)]
    pub(crate) steps: usize,
    /// Seconds per step (at most 60).
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
}

// The flags of `Idle`.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Sockets to open (at most 50,000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Users to spread them over.
    #[arg(long, default_value_t = 10)]
    pub(crate) users: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Seconds to hold them open before measuring.
    #[arg(long, default_value_t = 2)]
    pub(crate) hold: u64,
}

// The flags of `Ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Concurrent writers, each on its own document.
    #[arg(long, default_value_t = 32)]
    pub(crate) devices: usize,
    /// Users to spread them over.
    #[arg(long, default_value_t = 8)]
    pub(crate) users: usize,
    /// Changes per round trip.
    #[arg(long, default_value_t = 16)]
    pub(crate) batch: usize,
    /// Seconds to run (at most 120).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
}

// The flags of `Crash`.
#[derive(Debug, Args)]
pub(crate) struct CrashArgs {
    /// The server binary to start (it is started and killed by this scenario).
    #[arg(long)]
    pub(crate) server_bin: std::path::PathBuf,
    /// Kill/restart cycles (at most 100).
    #[arg(long, default_value_t = 20)]
    pub(crate) cycles: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub(crate) writers: usize,
    /// Port for the server.
    #[arg(long, default_value_t = 18400)]
    pub(crate) port: u16,
}

// The flags of `Coldstart`.
#[derive(Debug, Args)]
pub(crate) struct ColdstartArgs {
    /// The server binary to start.
    #[arg(long)]
    pub(crate) server_bin: std::path::PathBuf,
    /// Task documents to store (at most 200,000).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) documents: usize,
    /// Upload connections.
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Port for the server.
    #[arg(long, default_value_t = 18401)]
    pub(crate) port: u16,
}

// The flags of `Storm`.
#[derive(Debug, Args)]
pub(crate) struct StormArgs {
    /// The server binary to start (it is started and restarted by this scenario).
    #[arg(long)]
    pub(crate) server_bin: std::path::PathBuf,
    /// Devices (at most 20,000).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) devices: usize,
    /// Users the devices belong to (at most 1,000).
    #[arg(long, default_value_t = 100)]
    pub(crate) users: usize,
    /// How the server goes away.
    #[arg(long, value_enum, default_value_t = scenario::storm::Restart::Graceful)]
    pub(crate) restart: scenario::storm::Restart,
    /// The server's new connections per second (its gate); unset keeps the server's default.
    #[arg(long)]
    pub(crate) connections_per_second: Option<u32>,
    /// The server's connection burst; unset keeps the server's default.
    #[arg(long)]
    pub(crate) connection_burst: Option<u32>,
    /// Seconds to wait for every device to come back (at most 600).
    #[arg(long, default_value_t = 120)]
    pub(crate) deadline: u64,
    /// Port for the server.
    #[arg(long, default_value_t = 18402)]
    pub(crate) port: u16,
}

// The flags of `Soak`.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Seconds of load (at most 7,200).
    #[arg(long, default_value_t = 3_600)]
    pub(crate) seconds: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    pub(crate) sample_secs: u64,
    /// Devices editing over sync, one edit a second each (0 to 200).
    #[arg(long, default_value_t = 20)]
    pub(crate) editors: usize,
    /// Idle sockets held open (at most 5,000).
    #[arg(long, default_value_t = 200)]
    pub(crate) idle: usize,
    /// The server's data directory, for its size on disk.
    #[arg(long)]
    pub(crate) data_dir: std::path::PathBuf,
    /// Print the samples but do not judge growth (for runs too short to judge).
    #[arg(long)]
    pub(crate) no_verdict: bool,
    /// Leave out the sign-in/refresh/logout worker (to find what grows).
    #[arg(long)]
    pub(crate) no_sessions: bool,
    /// Leave out the REST worker (to find what grows).
    #[arg(long)]
    pub(crate) no_rest: bool,
}

// The flags of `Fsync`.
#[derive(Debug, Args)]
pub(crate) struct FsyncArgs {
    /// The directory (on the disk the server's data directory uses).
    #[arg(long, default_value = ".")]
    pub(crate) dir: std::path::PathBuf,
    /// Rounds (at most 100,000).
    #[arg(long, default_value_t = 500)]
    pub(crate) rounds: usize,
}

// The flags of `AutomergeFloor`.
#[derive(Debug, Args)]
pub(crate) struct AutomergeFloorArgs {
    /// Edits (at most 100,000), all to one document.
    #[arg(long, default_value_t = 2000)]
    pub(crate) edits: usize,
    /// Devices of the user (at least 2): one edits, the others receive.
    #[arg(long, default_value_t = 2)]
    pub(crate) devices: usize,
}

// The flags of `Echo`.
#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// Round trips.
    #[arg(long, default_value_t = 2000)]
    pub(crate) round_trips: usize,
}

// The flags of `Catchup`.
#[derive(Debug, Args)]
pub(crate) struct CatchupArgs {
    /// Tasks changed while away.
    #[arg(long, default_value_t = 1000)]
    pub(crate) tasks: usize,
    /// Edits per task.
    #[arg(long, default_value_t = 10)]
    pub(crate) edits: usize,
    /// Request every document instead of asking the server what changed.
    #[arg(long)]
    pub(crate) without_extension: bool,
}
