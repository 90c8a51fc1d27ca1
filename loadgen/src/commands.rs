//! One function per scenario: it bounds the flags, runs the scenario,
//! prints its figures and fails when the run did not do its work (a run
//! that measured nothing must not pass as a result).

use std::time::Duration;

use anyhow::bail;

use crate::args::{
    AuthArgs, AutomergeFloorArgs, CatchupArgs, ColdstartArgs, CrashArgs, EchoArgs, FanoutArgs,
    FsyncArgs, IdleArgs, IngestArgs, SaturationArgs, SoakArgs, StormArgs,
};
use crate::scenario::catchup::CatchUp;
use crate::{account, scenario, server_process, stats};

/// The server under load, as the command line named it.
#[derive(Debug)]
pub(crate) struct Target {
    /// The base URL (loopback).
    pub(crate) server: String,
    /// The sync WebSocket URL.
    pub(crate) ws_url: String,
    /// The sync WebSocket URLs the fan-out scenarios spread devices over:
    /// `ws_url` first, then those of the other nodes named.
    pub(crate) fanout_ws_urls: Vec<String>,
    /// No sign-in: the server has no auth.
    pub(crate) no_auth: bool,
    /// The fixed code of the bench identities.
    pub(crate) code: String,
    /// The server's process, to sample.
    pub(crate) server_pid: Option<u32>,
}

/// An access token for each of `users` bench identities (`None` each
/// without auth).
async fn tokens(target: &Target, users: usize) -> anyhow::Result<Vec<Option<String>>> {
    if target.no_auth {
        return Ok(vec![None; users]);
    }
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(users);
    for i in 0..users {
        let signed = account::sign_in(
            &client,
            &target.server,
            &format!("bench-{i}@example.com"),
            &target.code,
        )
        .await?;
        out.push(Some(signed.access_token));
    }
    Ok(out)
}

pub(crate) async fn auth(target: &Target, args: &AuthArgs) -> anyhow::Result<()> {
    let AuthArgs {
        identities,
        sign_ins,
        seconds,
    } = args;
    scenario::auth::run(
        &target.server,
        *identities,
        &target.code,
        *sign_ins,
        (*seconds).min(300),
    )
    .await
}

pub(crate) async fn fanout(target: &Target, args: &FanoutArgs) -> anyhow::Result<()> {
    let FanoutArgs {
        users,
        devices,
        tasks,
        rate,
        seconds,
        arrivals,
    } = args;
    if *devices < 2 {
        bail!("fan-out needs at least two devices per user");
    }
    let tokens = tokens(target, *users).await?;
    let cpu_before = target.server_pid.and_then(stats::cpu_time);
    let params = scenario::fanout::FanOut {
        users: *users,
        devices: *devices,
        tasks: (*tasks).clamp(1, 1_000),
        rate: *rate,
        duration: Duration::from_secs((*seconds).min(120)),
        arrivals: *arrivals,
    };
    let result = scenario::fanout::run(&target.fanout_ws_urls, &tokens, &params).await?;
    println!(
        "scenario: fan-out, {users} users x {devices} devices x {tasks} tasks, {rate} edits/s per device, {seconds} s, arrivals {arrivals:?}"
    );
    println!("edit-to-device latency: {}", result.latency);
    println!(
        "edits: {}, deliveries/s: {:.0}, missing deliveries: {}",
        result.edits, result.delivered_per_second, result.missing
    );
    let [frames_up, frames_down, bytes_up, bytes_down] = result.traffic.per_edit(result.edits);
    // An edit concerns the devices of its own user.
    let per_device = (*devices).max(1) as f64;
    println!(
        "per edit: frames up {frames_up:.1} / down {frames_down:.1}, bytes up {bytes_up:.0} / down {bytes_down:.0}; per edit per device: frames {:.2}, bytes {:.0}",
        (frames_up + frames_down) / per_device,
        (bytes_up + bytes_down) / per_device
    );
    if let (Some(pid), Some(before)) = (target.server_pid, cpu_before) {
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

pub(crate) async fn saturation(target: &Target, args: &SaturationArgs) -> anyhow::Result<()> {
    let SaturationArgs {
        users,
        devices,
        tasks,
        start_rate,
        steps,
        seconds,
    } = args;
    if *devices < 2 {
        bail!("saturation needs at least two devices per user");
    }
    let tokens = tokens(target, *users).await?;
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
            arrivals: scenario::fanout::Arrivals::Together,
        };
        let result = scenario::fanout::run(&target.fanout_ws_urls, &tokens, &params).await?;
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

pub(crate) async fn idle(target: &Target, args: &IdleArgs) -> anyhow::Result<()> {
    let IdleArgs {
        connections,
        users,
        concurrency,
        hold,
    } = args;
    let tokens = tokens(target, (*users).max(1)).await?;
    let result = scenario::idle::run(
        &target.ws_url,
        &tokens,
        (*connections).min(50_000),
        (*concurrency).max(1),
        Duration::from_secs(*hold),
        target.server_pid,
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

pub(crate) async fn ingest(target: &Target, args: &IngestArgs) -> anyhow::Result<()> {
    let IngestArgs {
        devices,
        users,
        batch,
        seconds,
    } = args;
    let tokens = tokens(target, (*users).max(1)).await?;
    let result = scenario::ingest::run(
        &target.ws_url,
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

pub(crate) async fn crash(args: &CrashArgs) -> anyhow::Result<()> {
    let CrashArgs {
        server_bin,
        cycles,
        writers,
        port,
    } = args;
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

pub(crate) async fn coldstart(args: &ColdstartArgs) -> anyhow::Result<()> {
    let ColdstartArgs {
        server_bin,
        documents,
        connections,
        port,
    } = args;
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

pub(crate) async fn storm(args: &StormArgs) -> anyhow::Result<()> {
    let StormArgs {
        server_bin,
        devices,
        users,
        restart,
        connections_per_second,
        connection_burst,
        deadline,
        port,
    } = args;
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

pub(crate) async fn soak(target: &Target, args: &SoakArgs) -> anyhow::Result<()> {
    let SoakArgs {
        seconds,
        sample_secs,
        editors,
        idle,
        data_dir,
        no_verdict,
        no_sessions,
        no_rest,
    } = args;
    let Some(server_pid) = target.server_pid else {
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
    let samples = scenario::soak::run(&target.server, &target.ws_url, &settings).await?;
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

pub(crate) fn fsync(args: &FsyncArgs) -> anyhow::Result<()> {
    let FsyncArgs { dir, rounds } = args;
    let summary = scenario::fsync::run(dir, (*rounds).clamp(1, 100_000))?;
    println!(
        "scenario: 4 KiB write + fsync in {} (durability floor)",
        dir.display()
    );
    println!("write+fsync: {summary}");
    Ok(())
}

pub(crate) fn automerge_floor(args: &AutomergeFloorArgs) -> anyhow::Result<()> {
    let AutomergeFloorArgs { edits, devices } = args;
    let floor =
        scenario::automerge_floor::run((*edits).clamp(1, 100_000), (*devices).clamp(2, 100))?;
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

pub(crate) async fn echo(args: &EchoArgs) -> anyhow::Result<()> {
    let EchoArgs { round_trips } = args;
    let summary = scenario::echo::run((*round_trips).clamp(1, 1_000_000)).await?;
    println!("scenario: bare WebSocket echo round trip (floor)");
    println!("round trip: {summary}");
    Ok(())
}

pub(crate) async fn catchup(target: &Target, args: &CatchupArgs) -> anyhow::Result<()> {
    let CatchupArgs {
        tasks,
        edits,
        without_extension,
    } = args;
    let how = if *without_extension {
        CatchUp::EveryDocument
    } else {
        CatchUp::Extension
    };
    let tokens = tokens(target, 1).await?;
    let result = scenario::catchup::run(
        &target.ws_url,
        tokens[0].as_deref(),
        (*tasks).min(100_000),
        *edits,
        how,
    )
    .await?;
    println!(
        "scenario: catch-up, {} tasks x {} edits, {}",
        result.tasks,
        result.edits,
        how.describe()
    );
    println!("upload (setup): {:.3} s", result.upload.as_secs_f64());
    println!("catch-up: {:.3} s", result.catch_up.as_secs_f64());
    Ok(())
}
