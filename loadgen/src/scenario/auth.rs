//! Sign-in throughput: code request, verification and token issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::Summary;

/// Runs `identities` concurrent sign-in loops for at most `seconds` or
/// `sign_ins` sign-ins, and prints the results.
pub async fn run(
    server: &str,
    identities: usize,
    code: &str,
    sign_ins: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(identities)
        .build()?;
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
    let n = issued.load(Ordering::Relaxed);
    println!(
        "scenario: auth (code request + verification + token issue, {identities} concurrent identities)"
    );
    println!(
        "sign-ins: {n} in {:.2} s, failures: {}",
        elapsed.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "sign-ins per second (each also requests a code): {:.0}",
        n as f64 / elapsed.as_secs_f64()
    );
    println!("verify latency: {}", Summary::of(&mut latencies));
    judge(n, failures.load(Ordering::Relaxed))
}

/// The run fails unless it signed in at least once and nothing failed: a
/// benchmark whose every sign-in was refused measures nothing.
fn judge(sign_ins: u64, failures: u64) -> anyhow::Result<()> {
    if sign_ins == 0 {
        anyhow::bail!(
            "no sign-in succeeded ({failures} failures): wrong --code, or no test codes on the server?"
        );
    }
    if failures > 0 {
        anyhow::bail!("{failures} sign-in steps failed ({sign_ins} succeeded)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn a_run_without_sign_ins_or_with_failures_fails() {
        assert!(judge(0, 0).is_err());
        assert!(judge(0, 10).is_err());
        assert!(judge(100, 1).is_err());
        assert!(judge(100, 0).is_ok());
    }
}
