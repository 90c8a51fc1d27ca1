//! `codeedex-loadgen`: drives a sync server on this machine and reports
//! throughput, latency and memory. It speaks the automerge-repo protocol
//! itself, in Rust, so that the generator is not the bottleneck, and works
//! against any protocol-v1 server, with or without auth. Every scenario is
//! bounded in count and time and refuses targets that are not loopback.

mod account;
mod peer;
mod scenario;
mod server_process;
mod stats;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "codeedex-loadgen",
    about = "Benchmarks for CodeeDex Task Sync (loopback only)"
)]
struct Cli {
    /// The server's base URL; must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The sync WebSocket path.
    #[arg(long, default_value = "/v1/sync")]
    ws_path: String,
    /// Target a server without auth (the reference server): no sign-in, no tokens.
    #[arg(long)]
    no_auth: bool,
    /// The fixed code configured for the bench identities `bench-<i>@example.com`.
    #[arg(long, default_value = "123456")]
    code: String,
    /// The server's process id, to read its memory and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// OTP verification plus token issue per second. The server must run with
    /// fixed test codes for `bench-<i>@example.com` (i in 0..identities), no
    /// resend cooldown, and per-IP limits above the request count.
    Auth {
        /// How many distinct identifiers to cycle through (one in flight each).
        #[arg(long, default_value_t = 64)]
        identities: usize,
        /// Stop after this many sign-ins.
        #[arg(long, default_value_t = 5000)]
        sign_ins: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Users × devices editing shared documents; edit-to-device latency.
    Fanout {
        /// Users.
        #[arg(long, default_value_t = 4)]
        users: usize,
        /// Devices per user.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Task documents per user (at most 1,000); each device edits them in turn.
        #[arg(long, default_value_t = 20)]
        tasks: usize,
        /// Edits per second per device.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Seconds of editing (at most 120).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Raise the fan-out edit rate step by step until delivered edits per
    /// second stop rising; report the knee.
    Saturation {
        /// Users.
        #[arg(long, default_value_t = 4)]
        users: usize,
        /// Devices per user.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Task documents per user (at most 1,000); each device edits them in turn.
        #[arg(long, default_value_t = 20)]
        tasks: usize,
        /// The first rate, in edits per second per device; each step doubles it.
        #[arg(long, default_value_t = 5.0)]
        start_rate: f64,
        /// Steps (at most 16).
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Seconds per step (at most 60).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Idle authenticated sockets: server memory per socket, handshakes per second.
    Idle {
        /// Sockets to open (at most 50,000).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Users to spread them over.
        #[arg(long, default_value_t = 10)]
        users: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to hold them open before measuring.
        #[arg(long, default_value_t = 2)]
        hold: u64,
    },
    /// Durable changes per second: writers push as fast as the server acknowledges.
    Ingest {
        /// Concurrent writers, each on its own document.
        #[arg(long, default_value_t = 32)]
        devices: usize,
        /// Users to spread them over.
        #[arg(long, default_value_t = 8)]
        users: usize,
        /// Changes per round trip.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Seconds to run (at most 120).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Kill -9 the server at random moments under load, restart it, and
    /// check that every acknowledged change survived.
    Crash {
        /// The server binary to start (it is started and killed by this scenario).
        #[arg(long)]
        server_bin: std::path::PathBuf,
        /// Kill/restart cycles (at most 100).
        #[arg(long, default_value_t = 20)]
        cycles: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Port for the server.
        #[arg(long, default_value_t = 18400)]
        port: u16,
    },
    /// A store with N task documents: start time and idle memory after a restart.
    Coldstart {
        /// The server binary to start.
        #[arg(long)]
        server_bin: std::path::PathBuf,
        /// Task documents to store (at most 200,000).
        #[arg(long, default_value_t = 100_000)]
        documents: usize,
        /// Upload connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Port for the server.
        #[arg(long, default_value_t = 18401)]
        port: u16,
    },
    /// Reconnect storm: N devices connected and synced, the server restarted,
    /// all N reconnecting at once with client-core's backoff and Retry-After.
    Storm {
        /// The server binary to start (it is started and restarted by this scenario).
        #[arg(long)]
        server_bin: std::path::PathBuf,
        /// Devices (at most 20,000).
        #[arg(long, default_value_t = 5_000)]
        devices: usize,
        /// Users the devices belong to (at most 1,000).
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// How the server goes away.
        #[arg(long, value_enum, default_value_t = scenario::storm::Restart::Graceful)]
        restart: scenario::storm::Restart,
        /// The server's new connections per second (its gate); unset keeps the server's default.
        #[arg(long)]
        connections_per_second: Option<u32>,
        /// The server's connection burst; unset keeps the server's default.
        #[arg(long)]
        connection_burst: Option<u32>,
        /// Seconds to wait for every device to come back (at most 600).
        #[arg(long, default_value_t = 120)]
        deadline: u64,
        /// Port for the server.
        #[arg(long, default_value_t = 18402)]
        port: u16,
    },
    /// Soak: mixed load (sign-ins, refreshes, sync edits, REST, reconnects,
    /// idle sockets) with the server's RSS, fds, threads, disk and latency
    /// sampled at an interval; fails if any grows without bound. Needs
    /// --server-pid, and fixed codes for bench-0 to bench-49 (the identities
    /// it signs in).
    Soak {
        /// Seconds of load (at most 7,200).
        #[arg(long, default_value_t = 3_600)]
        seconds: u64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        sample_secs: u64,
        /// Devices editing over sync, one edit a second each (0 to 200).
        #[arg(long, default_value_t = 20)]
        editors: usize,
        /// Idle sockets held open (at most 5,000).
        #[arg(long, default_value_t = 200)]
        idle: usize,
        /// The server's data directory, for its size on disk.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Print the samples but do not judge growth (for runs too short to judge).
        #[arg(long)]
        no_verdict: bool,
        /// Leave out the sign-in/refresh/logout worker (to find what grows).
        #[arg(long)]
        no_sessions: bool,
        /// Leave out the REST worker (to find what grows).
        #[arg(long)]
        no_rest: bool,
    },
    /// The durability floor: one 4 KiB write plus fsync on the disk of a directory.
    Fsync {
        /// The directory (on the disk the server's data directory uses).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// Rounds (at most 100,000).
        #[arg(long, default_value_t = 500)]
        rounds: usize,
    },
    /// The protocol floor: Automerge work for one edit relayed A → server → B, in memory.
    AutomergeFloor {
        /// Edits (at most 100,000), all to one document.
        #[arg(long, default_value_t = 2000)]
        edits: usize,
        /// Devices of the user (at least 2): one edits, the others receive.
        #[arg(long, default_value_t = 2)]
        devices: usize,
    },
    /// The floor: a bare WebSocket echo round trip in this process.
    Echo {
        /// Round trips.
        #[arg(long, default_value_t = 2000)]
        round_trips: usize,
    },
    /// A device returns after T tasks got E edits each elsewhere.
    Catchup {
        /// Tasks changed while away.
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// Edits per task.
        #[arg(long, default_value_t = 10)]
        edits: usize,
        /// Request every document instead of asking the server what changed.
        #[arg(long)]
        without_extension: bool,
    },
}

fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("--server is not a URL")?;
    let host = parsed.host_str().context("--server has no host")?;
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("refusing to load {host}: benchmarks target loopback addresses only");
    }
    Ok(())
}

async fn tokens(cli: &Cli, users: usize) -> anyhow::Result<Vec<Option<String>>> {
    if cli.no_auth {
        return Ok(vec![None; users]);
    }
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(users);
    for i in 0..users {
        let signed = account::sign_in(
            &client,
            &cli.server,
            &format!("bench-{i}@example.com"),
            &cli.code,
        )
        .await?;
        out.push(Some(signed.access_token));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_loopback(&cli.server)?;
    let ws_url = format!("{}{}", cli.server.replacen("http", "ws", 1), cli.ws_path);
    match &cli.scenario {
        Scenario::Auth {
            identities,
            sign_ins,
            seconds,
        } => {
            scenario::auth::run(
                &cli.server,
                *identities,
                &cli.code,
                *sign_ins,
                (*seconds).min(300),
            )
            .await
        }
        Scenario::Fanout {
            users,
            devices,
            tasks,
            rate,
            seconds,
        } => {
            if *devices < 2 {
                bail!("fan-out needs at least two devices per user");
            }
            let tokens = tokens(&cli, *users).await?;
            let cpu_before = cli.server_pid.and_then(stats::cpu_time);
            let params = scenario::fanout::FanOut {
                users: *users,
                devices: *devices,
                tasks: (*tasks).clamp(1, 1_000),
                rate: *rate,
                duration: Duration::from_secs((*seconds).min(120)),
            };
            let result = scenario::fanout::run(&ws_url, &tokens, &params).await?;
            println!(
                "scenario: fan-out, {users} users x {devices} devices x {tasks} tasks, {rate} edits/s per device, {seconds} s"
            );
            println!("edit-to-device latency: {}", result.latency);
            println!(
                "edits: {}, deliveries/s: {:.0}, missing deliveries: {}",
                result.edits, result.delivered_per_second, result.missing
            );
            if let (Some(pid), Some(before)) = (cli.server_pid, cpu_before) {
                let used = stats::cpu_time(pid).map(|after| after.saturating_sub(before));
                println!(
                    "server CPU: {:.2} s, server RSS: {} KiB",
                    used.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
                    stats::rss_kib(pid).unwrap_or(0)
                );
            }
            if result.edits == 0 {
                bail!("no device made an edit");
            }
            if result.missing > 0 {
                bail!(
                    "{} of {} deliveries were missing at the end",
                    result.missing,
                    result.edits * (*devices as u64 - 1)
                );
            }
            Ok(())
        }
        Scenario::Saturation {
            users,
            devices,
            tasks,
            start_rate,
            steps,
            seconds,
        } => {
            if *devices < 2 {
                bail!("saturation needs at least two devices per user");
            }
            let tokens = tokens(&cli, *users).await?;
            println!(
                "scenario: saturation, {users} users x {devices} devices x {tasks} tasks, doubling from {start_rate} edits/s per device"
            );
            let mut best = 0.0f64;
            let mut knee = None;
            let mut rate = *start_rate;
            for _ in 0..(*steps).clamp(1, 16) {
                let params = scenario::fanout::FanOut {
                    users: *users,
                    devices: *devices,
                    tasks: (*tasks).clamp(1, 1_000),
                    rate,
                    duration: Duration::from_secs((*seconds).clamp(1, 60)),
                };
                let result = scenario::fanout::run(&ws_url, &tokens, &params).await?;
                let offered = rate * (*users * *devices * (*devices - 1)) as f64;
                println!(
                    "rate {rate:>8.1}/s/device: offered {offered:>9.0} deliveries/s, delivered {:>9.0}/s, p99 {:.2} ms, missing {}",
                    result.delivered_per_second,
                    result.latency.p99.as_secs_f64() * 1e3,
                    result.missing
                );
                if result.edits == 0 || result.delivered_per_second == 0.0 {
                    bail!("rate {rate}/s/device: nothing was delivered");
                }
                if result.delivered_per_second < best * 1.05 && knee.is_none() {
                    knee = Some(best);
                }
                best = best.max(result.delivered_per_second);
                if knee.is_some() {
                    break;
                }
                rate *= 2.0;
            }
            match knee {
                Some(k) => println!("knee: about {k:.0} delivered edits/s"),
                None => println!("no knee within the steps: at least {best:.0} delivered edits/s"),
            }
            Ok(())
        }
        Scenario::Idle {
            connections,
            users,
            concurrency,
            hold,
        } => {
            let tokens = tokens(&cli, (*users).max(1)).await?;
            let result = scenario::idle::run(
                &ws_url,
                &tokens,
                (*connections).min(50_000),
                (*concurrency).max(1),
                Duration::from_secs(*hold),
                cli.server_pid,
            )
            .await?;
            println!("scenario: idle, {} sockets over {users} users", result.open);
            println!("handshakes/s: {:.0}", result.handshakes_per_second);
            match result.kib_per_connection() {
                Some(kib) => println!(
                    "server RSS: {} KiB -> {} KiB, {kib:.1} KiB per connection",
                    result.rss_before_kib.unwrap_or(0),
                    result.rss_after_kib.unwrap_or(0)
                ),
                None => println!("server RSS: unknown (pass --server-pid)"),
            }
            Ok(())
        }
        Scenario::Ingest {
            devices,
            users,
            batch,
            seconds,
        } => {
            let tokens = tokens(&cli, (*users).max(1)).await?;
            let result = scenario::ingest::run(
                &ws_url,
                &tokens,
                (*devices).clamp(1, 10_000),
                (*batch).max(1),
                Duration::from_secs((*seconds).min(120)),
            )
            .await?;
            println!("scenario: durable ingest, {devices} writers, {batch} changes per round trip");
            println!(
                "acknowledged changes: {} in {:.2} s = {:.0} durable changes/s",
                result.changes,
                result.elapsed.as_secs_f64(),
                result.changes as f64 / result.elapsed.as_secs_f64()
            );
            if result.changes == 0 {
                bail!("the server acknowledged no change");
            }
            Ok(())
        }
        Scenario::Crash {
            server_bin,
            cycles,
            writers,
            port,
        } => {
            let data = server_process::temp_data_dir("crash")?;
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64;
            let result = scenario::crash::run(
                server_bin,
                &data,
                *port,
                (*cycles).clamp(1, 100),
                (*writers).clamp(1, 256),
                seed,
            )
            .await;
            let _ = std::fs::remove_dir_all(&data);
            let result = result?;
            println!(
                "scenario: crash, {} kill -9 cycles, {writers} writers",
                result.cycles
            );
            println!(
                "acknowledged changes: {}, lost after restart: {}",
                result.acknowledged, result.lost
            );
            if result.lost > 0 {
                bail!("{} acknowledged changes were lost", result.lost);
            }
            if result.acknowledged == 0 {
                bail!("the server acknowledged no change, so nothing was tested");
            }
            Ok(())
        }
        Scenario::Coldstart {
            server_bin,
            documents,
            connections,
            port,
        } => {
            let data = server_process::temp_data_dir("coldstart")?;
            let result = scenario::coldstart::run(
                server_bin,
                &data,
                *port,
                (*documents).clamp(1, 200_000),
                (*connections).clamp(1, 64),
            )
            .await;
            let _ = std::fs::remove_dir_all(&data);
            let result = result?;
            println!(
                "scenario: cold start with {} stored task documents",
                result.documents
            );
            println!("upload (setup): {:.1} s", result.upload.as_secs_f64());
            println!("start to /healthz: {:.3} s", result.start.as_secs_f64());
            println!(
                "idle RSS 2 s after start: {} KiB",
                result.idle_rss_kib.unwrap_or(0)
            );
            Ok(())
        }
        Scenario::Storm {
            server_bin,
            devices,
            users,
            restart,
            connections_per_second,
            connection_burst,
            deadline,
            port,
        } => {
            let data = server_process::temp_data_dir("storm")?;
            let mut server_args = Vec::new();
            // Always pass both gate flags, so that the bench's wide gate is
            // not applied: the storm measures the server's own pacing (these
            // are the server's defaults).
            let defaults = (2_000u32, 5_000u32);
            server_args.extend([
                "--sync-connections-per-second".to_owned(),
                connections_per_second.unwrap_or(defaults.0).to_string(),
                "--sync-connection-burst".to_owned(),
                connection_burst.unwrap_or(defaults.1).to_string(),
            ]);
            let settings = scenario::storm::StormSettings {
                devices: (*devices).clamp(1, 20_000),
                users: (*users).clamp(1, 1_000),
                restart: *restart,
                server_args,
                deadline: Duration::from_secs((*deadline).clamp(1, 600)),
            };
            let result = scenario::storm::run(server_bin, &data, *port, &settings).await;
            let _ = std::fs::remove_dir_all(&data);
            let r = result?;
            println!(
                "scenario: reconnect storm, {} devices of {} users, {:?} restart, gate {}",
                r.devices,
                settings.users,
                settings.restart,
                settings.server_args.join(" ")
            );
            println!(
                "initial connect of all devices: {:.2} s",
                r.initial.as_secs_f64()
            );
            println!(
                "server down for: {:.2} s (stopping {:.2} s, starting {:.2} s)",
                r.downtime.as_secs_f64(),
                r.stop_took.as_secs_f64(),
                r.start_took.as_secs_f64()
            );
            match (r.all_back_after_stop, r.all_back_after_ready) {
                (Some(stop), Some(ready)) => println!(
                    "all {} back: {:.2} s after the stop, {:.2} s after the server was ready",
                    r.back,
                    stop.as_secs_f64(),
                    ready.as_secs_f64()
                ),
                _ => println!("only {} of {} devices came back", r.back, r.devices),
            }
            println!(
                "reconnections per second after ready: mean {:.0}, busiest second {}",
                r.mean_per_second, r.peak_per_second
            );
            println!(
                "attempts refused with Retry-After: {}, failed otherwise: {}",
                r.refused, r.failed
            );
            println!(
                "server RSS with all back: {} KiB; server alive: {}",
                r.rss_kib.unwrap_or(0),
                r.server_alive
            );
            if r.back < r.devices || !r.server_alive {
                bail!("the storm did not end with every device back on a live server");
            }
            Ok(())
        }
        Scenario::Soak {
            seconds,
            sample_secs,
            editors,
            idle,
            data_dir,
            no_verdict,
            no_sessions,
            no_rest,
        } => {
            let Some(server_pid) = cli.server_pid else {
                bail!("the soak samples the server: pass --server-pid");
            };
            let settings = scenario::soak::SoakSettings {
                duration: Duration::from_secs((*seconds).clamp(1, 7_200)),
                sample_every: Duration::from_secs((*sample_secs).clamp(1, 600)),
                editors: (*editors).clamp(0, 200),
                idle: (*idle).min(5_000),
                server_pid,
                data_dir: data_dir.clone(),
                sessions: !*no_sessions,
                rest: !*no_rest,
            };
            println!(
                "scenario: soak, {} s, {} editors, {} idle sockets, a sample every {} s",
                settings.duration.as_secs(),
                settings.editors,
                settings.idle,
                settings.sample_every.as_secs()
            );
            println!("{}", scenario::soak::HEADER);
            let samples = scenario::soak::run(&cli.server, &ws_url, &settings).await?;
            let errors: u64 = samples.iter().map(|s| s.errors).sum();
            if !stats::process_alive(server_pid) {
                bail!("the server died during the soak");
            }
            if *no_verdict {
                println!(
                    "verdict: not judged ({} samples), {errors} errors",
                    samples.len()
                );
            } else {
                match scenario::soak::verdict(&samples) {
                    Err(why) => bail!(why),
                    Ok(grew) if !grew.is_empty() => {
                        bail!("grew without bound: {}", grew.join("; "))
                    }
                    Ok(_) => println!("verdict: nothing grew without bound; {errors} errors"),
                }
            }
            if errors > 0 {
                bail!("{errors} operations failed during the soak");
            }
            Ok(())
        }
        Scenario::Fsync { dir, rounds } => {
            let summary = scenario::fsync::run(dir, (*rounds).clamp(1, 100_000))?;
            println!(
                "scenario: 4 KiB write + fsync in {} (durability floor)",
                dir.display()
            );
            println!("write+fsync: {summary}");
            Ok(())
        }
        Scenario::AutomergeFloor { edits, devices } => {
            let floor = scenario::automerge_floor::run(
                (*edits).clamp(1, 100_000),
                (*devices).clamp(2, 100),
            )?;
            println!(
                "scenario: Automerge work for one edit relayed from one device through the server to {} others (no IO)",
                devices - 1
            );
            println!("per edit, until every device has it: {}", floor.latency);
            println!(
                "server replica's share: {:.1} us per edit, so at most {:.0} deliveries/s per core",
                floor.server_per_edit.as_secs_f64() * 1e6,
                floor.deliveries_per_core_second
            );
            println!(
                "all replicas (devices and server): {:.1} us per edit",
                floor.all_per_edit.as_secs_f64() * 1e6
            );
            Ok(())
        }
        Scenario::Echo { round_trips } => {
            let summary = scenario::echo::run((*round_trips).clamp(1, 1_000_000)).await?;
            println!("scenario: bare WebSocket echo round trip (floor)");
            println!("round trip: {summary}");
            Ok(())
        }
        Scenario::Catchup {
            tasks,
            edits,
            without_extension,
        } => {
            let tokens = tokens(&cli, 1).await?;
            let result = scenario::catchup::run(
                &ws_url,
                tokens[0].as_deref(),
                (*tasks).min(100_000),
                *edits,
                !without_extension,
            )
            .await?;
            println!(
                "scenario: catch-up, {} tasks x {} edits, {}",
                result.tasks,
                result.edits,
                if *without_extension {
                    "requesting every document"
                } else {
                    "with the catch-up extension"
                }
            );
            println!("upload (setup): {:.3} s", result.upload.as_secs_f64());
            println!("catch-up: {:.3} s", result.catch_up.as_secs_f64());
            Ok(())
        }
    }
}
