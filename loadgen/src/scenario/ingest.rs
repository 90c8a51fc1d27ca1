//! Durable ingest: devices push changes as fast as the server acknowledges
//! them. The server acknowledges a change only after it is on disk, so the
//! rate is that of durable changes.

use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use codeedex_schema::id::DocumentId;
use futures_util::SinkExt;

use crate::peer::{self, Replicas};

/// Results.
#[derive(Debug)]
pub struct IngestResult {
    /// Changes the server acknowledged.
    pub changes: u64,
    /// Over this long.
    pub elapsed: Duration,
}

/// Runs `devices` writers, each on its own document, each sending `batch`
/// changes per round trip, for `duration`.
pub async fn run(
    ws_url: &str,
    tokens: &[Option<String>],
    devices: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<IngestResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for device in 0..devices {
        let url = ws_url.to_owned();
        let token = tokens[device % tokens.len()].clone();
        tasks.push(tokio::spawn(async move {
            writer(url, token, device, batch, deadline).await
        }));
    }
    let mut changes = 0;
    for task in tasks {
        changes += task.await??;
    }
    Ok(IngestResult {
        changes,
        elapsed: started.elapsed(),
    })
}

async fn writer(
    url: String,
    token: Option<String>,
    device: usize,
    batch: usize,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut peer = peer::join(
        &url,
        token.as_deref(),
        &format!("ingest-{device}-{}", std::process::id()),
        &[],
    )
    .await?;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(device as u64).to_le_bytes());
    bytes[8..].copy_from_slice(
        &(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64)
            .to_le_bytes(),
    );
    let id = DocumentId::from_random_bytes(bytes);
    let mut replicas = Replicas::default();
    replicas
        .docs
        .insert(id, (AutoCommit::new(), automerge::sync::State::new()));
    let mut acknowledged = 0u64;
    let mut pending = 0u64;
    let mut n = 0i64;
    while Instant::now() < deadline {
        {
            let (doc, _) = replicas.docs.get_mut(&id).expect("inserted");
            for _ in 0..batch {
                n += 1;
                doc.put(automerge::ROOT, "n", n)?;
                doc.commit();
            }
            pending += batch as u64;
        }
        peer.sync_until_acknowledged(&mut replicas, id, Duration::from_secs(30))
            .await?;
        acknowledged += pending;
        pending = 0;
    }
    let _ = peer.sink.close().await;
    Ok(acknowledged)
}
