//! Cold start: a store holding N task documents; the server's start time
//! and idle memory after a restart.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::transaction::Transactable;
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use crate::account;
use crate::peer::{self, Replicas};
use crate::server_process::ServerProcess;
use crate::stats::rss_kib;

/// Results.
#[derive(Debug)]
pub struct ColdStartResult {
    /// Documents stored.
    pub documents: usize,
    /// Time to upload them (setup).
    pub upload: Duration,
    /// From spawning the process to `/healthz` answering.
    pub start: Duration,
    /// Resident memory two seconds after start, in KiB.
    pub idle_rss_kib: Option<u64>,
}

/// Uploads `documents` task documents over `connections` sockets, restarts
/// the server and measures it.
pub async fn run(
    binary: &Path,
    data: &Path,
    port: u16,
    documents: usize,
    connections: usize,
) -> anyhow::Result<ColdStartResult> {
    let (server, _) = ServerProcess::start(binary, data, port, 1).await?;
    let http = format!("http://127.0.0.1:{port}");
    let ws = format!("ws://127.0.0.1:{port}/v1/sync");
    let token = account::sign_in(
        &reqwest::Client::new(),
        &http,
        "bench-0@example.com",
        "123456",
    )
    .await?
    .access_token;
    let started = Instant::now();
    let per = documents.div_ceil(connections);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let count = per.min(documents.saturating_sub(c * per));
        let (ws, token) = (ws.clone(), token.clone());
        tasks.push(tokio::spawn(
            async move { upload(&ws, &token, c, count).await },
        ));
    }
    for task in tasks {
        task.await??;
    }
    let upload_time = started.elapsed();
    server.terminate()?;
    let (server, start) = ServerProcess::start(binary, data, port, 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_kib = rss_kib(server.pid());
    server.terminate()?;
    Ok(ColdStartResult {
        documents,
        upload: upload_time,
        start,
        idle_rss_kib,
    })
}

async fn upload(ws: &str, token: &str, connection: usize, count: usize) -> anyhow::Result<()> {
    let mut peer = peer::join(
        ws,
        Some(token),
        &format!("cold-{connection}-{}", std::process::id()),
        &[],
    )
    .await?;
    let mut replicas = Replicas::default();
    let mut pending = HashSet::new();
    // Keep a bounded window of uploads in flight.
    const WINDOW: usize = 256;
    let mut next = 0;
    while next < count || !pending.is_empty() {
        while next < count && pending.len() < WINDOW {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(connection as u64).to_le_bytes());
            bytes[8..].copy_from_slice(&(next as u64).to_le_bytes());
            let id = DocumentId::from_random_bytes(bytes);
            let mut doc = AutoCommit::new();
            let title = doc.put_object(automerge::ROOT, "title", automerge::ObjType::Text)?;
            doc.splice_text(&title, 0, 0, &format!("task {connection}-{next}"))?;
            doc.put(automerge::ROOT, "done", false)?;
            doc.commit();
            replicas
                .docs
                .insert(id, (doc, automerge::sync::State::new()));
            if let Some(frame) = replicas.outgoing(&peer.peer_id, &peer.server_id, id) {
                peer.sink.send(frame).await?;
            }
            pending.insert(id);
            next += 1;
        }
        let frame = tokio::time::timeout(Duration::from_secs(60), peer.stream.next()).await?;
        let Some(frame) = frame else {
            anyhow::bail!("closed")
        };
        let tungstenite::Message::Binary(bytes) = frame? else {
            continue;
        };
        if let Some(id) = replicas.apply(&wire::decode(&bytes)?)? {
            if let Some(frame) = replicas.outgoing(&peer.peer_id, &peer.server_id, id) {
                peer.sink.send(frame).await?;
            }
            if replicas.acknowledged(id) {
                pending.remove(&id);
                // Done with it: free the replica so the generator stays small.
                replicas.docs.remove(&id);
            }
        }
    }
    let _ = peer.sink.close().await;
    Ok(())
}
