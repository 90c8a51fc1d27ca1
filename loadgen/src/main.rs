//! `codeedex-loadgen`: drives a sync server on this machine and reports
//! throughput, latency and memory. It speaks the automerge-repo protocol
//! itself, in Rust, so that the generator is not the bottleneck, and works
//! against any protocol-v1 server, with or without auth. Every scenario is
//! bounded in count and time and refuses targets that are not loopback.

mod account;
mod args;
mod commands;
mod peer;
mod scenario;
mod server_process;
mod stats;

use std::net::IpAddr;

use anyhow::{Context, bail};
use clap::Parser;

use args::{Cli, Scenario};
use commands::Target;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_loopback(&cli.server)?;
    for other in &cli.also_server {
        ensure_loopback(other)?;
    }
    let ws = |base: &str| format!("{}{}", base.replacen("http", "ws", 1), cli.ws_path);
    let target = Target {
        ws_url: ws(&cli.server),
        fanout_ws_urls: std::iter::once(&cli.server)
            .chain(&cli.also_server)
            .map(|base| ws(base))
            .collect(),
        server: cli.server,
        no_auth: cli.no_auth,
        code: cli.code,
        server_pid: cli.server_pid,
    };
    match &cli.scenario {
        Scenario::Auth(args) => commands::auth(&target, args).await,
        Scenario::Fanout(args) => commands::fanout(&target, args).await,
        Scenario::Saturation(args) => commands::saturation(&target, args).await,
        Scenario::Idle(args) => commands::idle(&target, args).await,
        Scenario::Ingest(args) => commands::ingest(&target, args).await,
        Scenario::Crash(args) => commands::crash(args).await,
        Scenario::Coldstart(args) => commands::coldstart(args).await,
        Scenario::Storm(args) => commands::storm(args).await,
        Scenario::Soak(args) => commands::soak(&target, args).await,
        Scenario::Fsync(args) => commands::fsync(args),
        Scenario::AutomergeFloor(args) => commands::automerge_floor(args),
        Scenario::Echo(args) => commands::echo(args).await,
        Scenario::Catchup(args) => commands::catchup(&target, args).await,
    }
}
