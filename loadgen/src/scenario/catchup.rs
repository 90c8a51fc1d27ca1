//! Catch-up: while one device is away, another changes T tasks E times each;
//! the time from the first device's reconnect until it holds every change.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::{self, Message, message_type};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use crate::peer::{self, Replicas, int_field};

/// Results.
#[derive(Debug)]
pub struct CatchUpResult {
    /// Tasks changed while away.
    pub tasks: usize,
    /// Edits per task.
    pub edits: usize,
    /// Time to upload everything from the writer (setup, for reference).
    pub upload: Duration,
    /// Time from reconnect to holding every change.
    pub catch_up: Duration,
}

fn doc_id(i: usize) -> DocumentId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut bytes = nanos.to_le_bytes();
    bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    DocumentId::from_random_bytes(bytes)
}

/// How the returning device learns what changed while it was away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// It asks the server (our catch-up extension).
    Extension,
    /// It requests every document it knows, as a stock client does.
    EveryDocument,
}

impl CatchUp {
    /// How the report names it.
    pub fn describe(self) -> &'static str {
        match self {
            CatchUp::Extension => "with the catch-up extension",
            CatchUp::EveryDocument => "requesting every document",
        }
    }
}

/// Runs the scenario: a writer makes `tasks` tasks with `edits` edits each,
/// then a device that knew none of it catches up the `how` way.
pub async fn run(
    ws_url: &str,
    token: Option<&str>,
    tasks: usize,
    edits: usize,
    how: CatchUp,
) -> anyhow::Result<CatchUpResult> {
    // The writer creates and edits every task, then waits until the server
    // has acknowledged all of them.
    let upload_started = Instant::now();
    let mut writer = peer::join(
        ws_url,
        token,
        &format!("writer-{}", std::process::id()),
        &[],
    )
    .await?;
    let mut replicas = Replicas::default();
    let ids: Vec<DocumentId> = (0..tasks).map(doc_id).collect();
    for id in &ids {
        let mut doc = AutoCommit::new();
        for n in 1..=edits {
            doc.put(ROOT, "n", n as i64)?;
            doc.commit();
        }
        replicas
            .docs
            .insert(*id, (doc, automerge::sync::State::new()));
        if let Some(frame) = replicas.outgoing(&writer.peer_id, &writer.server_id, *id) {
            writer.sink.send(frame).await?;
        }
    }
    let mut acknowledged = HashSet::new();
    while acknowledged.len() < tasks {
        let frame = tokio::time::timeout(Duration::from_secs(60), writer.stream.next()).await?;
        let Some(frame) = frame else {
            anyhow::bail!("closed")
        };
        let tungstenite::Message::Binary(bytes) = frame? else {
            continue;
        };
        let message = wire::decode(&bytes)?;
        if let Some(id) = replicas.apply(&message)? {
            if replicas.acknowledged(id) {
                acknowledged.insert(id);
            }
            if let Some(frame) = replicas.outgoing(&writer.peer_id, &writer.server_id, id) {
                writer.sink.send(frame).await?;
            }
        }
    }
    let upload = upload_started.elapsed();
    let _ = writer.sink.close().await;

    // The returning device.
    let started = Instant::now();
    let extensions: &[&str] = if how == CatchUp::Extension {
        &[message_type::CATCH_UP_REQUEST]
    } else {
        &[]
    };
    let mut reader = peer::join(
        ws_url,
        token,
        &format!("reader-{}", std::process::id()),
        extensions,
    )
    .await?;
    let mut mine = Replicas::default();
    let wanted: Vec<DocumentId> = if how == CatchUp::Extension {
        let request = Message::CatchUpRequest {
            sender_id: reader.peer_id.clone(),
            target_id: reader.server_id.clone(),
            cursor: 0,
        };
        reader
            .sink
            .send(tungstenite::Message::binary(wire::encode(&request)))
            .await?;
        loop {
            let Some(frame) = reader.stream.next().await else {
                anyhow::bail!("closed")
            };
            let tungstenite::Message::Binary(bytes) = frame? else {
                continue;
            };
            if let Message::CatchUpResponse { document_ids, .. } = wire::decode(&bytes)? {
                break document_ids.iter().filter_map(|d| d.parse().ok()).collect();
            }
        }
    } else {
        ids.clone()
    };
    for id in &wanted {
        let frame = mine.request(&reader.peer_id, &reader.server_id, *id);
        reader.sink.send(frame).await?;
    }
    let mut complete = HashSet::new();
    let target: HashSet<DocumentId> = ids.iter().copied().collect();
    while complete.len() < tasks {
        let frame = tokio::time::timeout(Duration::from_secs(60), reader.stream.next()).await?;
        let Some(frame) = frame else {
            anyhow::bail!("closed")
        };
        let tungstenite::Message::Binary(bytes) = frame? else {
            continue;
        };
        let message = wire::decode(&bytes)?;
        if let Some(id) = mine.apply(&message)? {
            let (doc, _) = mine.docs.get(&id).expect("applied");
            if target.contains(&id) && int_field(doc, "n") == edits as i64 {
                complete.insert(id);
            }
            if let Some(frame) = mine.outgoing(&reader.peer_id, &reader.server_id, id) {
                reader.sink.send(frame).await?;
            }
        }
    }
    let catch_up = started.elapsed();
    let _ = reader.sink.close().await;
    Ok(CatchUpResult {
        tasks,
        edits,
        upload,
        catch_up,
    })
}
