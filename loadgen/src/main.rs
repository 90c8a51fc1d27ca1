//! `codeedex-loadgen`: drives a CodeeDex server on this machine and reports
//! throughput and latency. Every scenario is bounded in requests and time and
//! refuses any target that is not a loopback address.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "codeedex-loadgen", about = "Benchmarks for CodeeDex Task Sync (loopback only)")]
struct Cli {
    /// The server's base URL; must be a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
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
        /// The fixed code configured for every bench identity.
        #[arg(long, default_value = "123456")]
        code: String,
        /// Stop after this many sign-ins.
        #[arg(long, default_value_t = 5000)]
        sign_ins: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("--server is not a URL")?;
    let host = parsed.host_str().context("--server has no host")?;
    let loopback = host == "localhost"
        || host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("refusing to load {host}: benchmarks target loopback addresses only");
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

async fn auth(server: &str, identities: usize, code: &str, sign_ins: u64, seconds: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(identities).build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..identities {
        let client = client.clone();
        let server = server.to_owned();
        let code = code.to_owned();
        let issued = Arc::clone(&issued);
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let email = format!("bench-{i}@example.com");
            let mut latencies = Vec::new();
            while Instant::now() < deadline && issued.load(Ordering::Relaxed) < sign_ins {
                let sent = client
                    .post(format!("{server}/v1/auth/otp"))
                    .json(&serde_json::json!({ "email": email }))
                    .send()
                    .await;
                if !matches!(&sent, Ok(r) if r.status() == 202) {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t = Instant::now();
                let verified = client
                    .post(format!("{server}/v1/auth/verify"))
                    .json(&serde_json::json!({ "email": email, "code": code }))
                    .send()
                    .await;
                match verified {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                        issued.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let n = issued.load(Ordering::Relaxed);
    println!("scenario: auth (code request + verification + token issue, {identities} concurrent identities)");
    println!("sign-ins: {n} in {:.2} s, failures: {}", elapsed.as_secs_f64(), failures.load(Ordering::Relaxed));
    println!("sign-ins per second (each also requests a code): {:.0}", n as f64 / elapsed.as_secs_f64());
    println!(
        "verify latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure_loopback(&cli.server)?;
    match cli.scenario {
        Scenario::Auth { identities, code, sign_ins, seconds } => {
            auth(&cli.server, identities, &code, sign_ins, seconds).await
        }
    }
}
