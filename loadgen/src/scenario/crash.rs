//! Crash durability: writers change documents under load; the server is
//! killed with SIGKILL at random moments and restarted; after each restart,
//! every change the server had acknowledged must be there.

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use crate::account;
use crate::peer::{self, Replicas, int_field};
use crate::server_process::ServerProcess;

/// Results.
#[derive(Debug)]
pub struct CrashResult {
    /// Kill/restart cycles.
    pub cycles: usize,
    /// Changes the server acknowledged before being killed, over all cycles.
    pub acknowledged: u64,
    /// Acknowledged changes missing after a restart.
    pub lost: u64,
}

/// Runs `cycles` kill/restart cycles with `writers` writers.
pub async fn run(
    binary: &Path,
    data: &Path,
    port: u16,
    cycles: usize,
    writers: usize,
    seed: u64,
) -> anyhow::Result<CrashResult> {
    let (mut server, _) = ServerProcess::start(binary, data, port, 1).await?;
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
    let ids: Vec<DocumentId> = (0..writers)
        .map(|w| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            bytes[8..].copy_from_slice(&(w as u64).to_le_bytes());
            DocumentId::from_random_bytes(bytes)
        })
        .collect();
    let mut replicas: Vec<AutoCommit> = (0..writers).map(|_| AutoCommit::new()).collect();
    let mut acknowledged_values = vec![0i64; writers];
    let mut acknowledged_total = 0u64;
    let mut lost = 0u64;
    let mut rng = seed | 1;
    for cycle in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(300 + rng % 1200);
        let deadline = Instant::now() + run_for;
        let mut tasks = Vec::new();
        for (w, doc) in replicas.drain(..).enumerate() {
            let (ws, token, id) = (ws.clone(), token.clone(), ids[w]);
            tasks.push(tokio::spawn(async move {
                write_until(&ws, &token, id, doc, deadline, cycle, w).await
            }));
        }
        // Kill while the writers are mid-flight.
        tokio::time::sleep(run_for).await;
        server.kill();
        for (w, task) in tasks.into_iter().enumerate() {
            let (doc, acked) = task.await?;
            if acked > acknowledged_values[w] {
                acknowledged_total += (acked - acknowledged_values[w]) as u64;
                acknowledged_values[w] = acked;
            }
            replicas.push(doc);
        }
        let (restarted, _) = ServerProcess::start(binary, data, port, 1).await?;
        server = restarted;
        // A fresh peer reads every document back from the restarted server.
        let mut reader = peer::join(
            &ws,
            Some(&token),
            &format!("verify-{cycle}-{}", std::process::id()),
            &[],
        )
        .await?;
        let mut mine = Replicas::default();
        for id in &ids {
            let frame = mine.request(&reader.peer_id, &reader.server_id, *id);
            reader.sink.send(frame).await?;
        }
        let verify_deadline = Instant::now() + Duration::from_secs(20);
        let mut satisfied = vec![false; writers];
        while satisfied.iter().any(|s| !s) && Instant::now() < verify_deadline {
            let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(500), reader.stream.next()).await
            else {
                continue;
            };
            let tungstenite::Message::Binary(bytes) = frame? else {
                continue;
            };
            let message = wire::decode(&bytes)?;
            if let Some(id) = mine.apply(&message)? {
                if let Some(w) = ids.iter().position(|x| *x == id) {
                    let (doc, _) = mine.docs.get(&id).expect("applied");
                    satisfied[w] = int_field(doc, "n") >= acknowledged_values[w];
                }
                if let Some(frame) = mine.outgoing(&reader.peer_id, &reader.server_id, id) {
                    reader.sink.send(frame).await?;
                }
            }
        }
        for (w, ok) in satisfied.iter().enumerate() {
            if !ok && acknowledged_values[w] > 0 {
                let seen = mine
                    .docs
                    .get(&ids[w])
                    .map(|(d, _)| int_field(d, "n"))
                    .unwrap_or(0);
                eprintln!(
                    "cycle {cycle}: writer {w} acknowledged {} but the server has {seen}",
                    acknowledged_values[w]
                );
                lost += (acknowledged_values[w] - seen).max(0) as u64;
            }
        }
        let _ = reader.sink.close().await;
    }
    Ok(CrashResult {
        cycles,
        acknowledged: acknowledged_total,
        lost,
    })
}

/// Writes until `deadline` or until the server dies; returns the replica and
/// the highest value the server acknowledged.
async fn write_until(
    ws: &str,
    token: &str,
    id: DocumentId,
    doc: AutoCommit,
    deadline: Instant,
    cycle: usize,
    w: usize,
) -> (AutoCommit, i64) {
    let mut replicas = Replicas::default();
    replicas
        .docs
        .insert(id, (doc, automerge::sync::State::new()));
    let mut acked = 0;
    let result: anyhow::Result<()> = async {
        let mut peer = peer::join(
            ws,
            Some(token),
            &format!("crash-{cycle}-{w}-{}", std::process::id()),
            &[],
        )
        .await?;
        loop {
            let sent_value = {
                let (doc, _) = replicas.docs.get_mut(&id).expect("inserted");
                let next = int_field(doc, "n") + 1;
                doc.put(ROOT, "n", next)?;
                doc.commit();
                next
            };
            peer.sync_until_acknowledged(&mut replicas, id, Duration::from_secs(5))
                .await?;
            acked = sent_value;
            if Instant::now() > deadline + Duration::from_secs(5) {
                return Ok(());
            }
        }
    }
    .await;
    // The server being killed ends the loop with an error; that is the point.
    let _ = result;
    let (doc, _) = replicas.docs.remove(&id).expect("inserted");
    (doc, acked)
}
