//! A lean automerge-repo v1 peer: one WebSocket, one sync state per
//! document. Kept minimal so that the generator is never the bottleneck.

use std::collections::HashMap;

use anyhow::{Context, bail};
use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::{self, Message, PeerMetadata};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A joined peer, split into halves so a reader task and a writer can run at once.
pub struct Peer {
    /// Our peer id.
    pub peer_id: String,
    /// The server's peer id.
    pub server_id: String,
    /// Outgoing half.
    pub sink: SplitSink<Socket, tungstenite::Message>,
    /// Incoming half.
    pub stream: SplitStream<Socket>,
}

/// Connects to `ws_url` (e.g. ws://127.0.0.1:8080/v1/sync), with a bearer
/// token if given, and joins.
pub async fn join(
    ws_url: &str,
    token: Option<&str>,
    peer_id: &str,
    extensions: &[&str],
) -> anyhow::Result<Peer> {
    let mut request = ws_url.into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    // Nagle's algorithm off, as a latency-minded client would have it, so
    // the generator measures the server rather than delayed ACKs.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .context("websocket connect")?;
    let (mut sink, mut stream) = socket.split();
    let join = Message::Join {
        sender_id: peer_id.to_owned(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: Some(PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
        }),
    };
    sink.send(tungstenite::Message::binary(wire::encode(&join)))
        .await?;
    loop {
        match stream.next().await {
            Some(Ok(tungstenite::Message::Binary(bytes))) => match wire::decode(&bytes)? {
                Message::Peer { sender_id, .. } => {
                    return Ok(Peer {
                        peer_id: peer_id.to_owned(),
                        server_id: sender_id,
                        sink,
                        stream,
                    });
                }
                other => bail!("expected peer, got {other:?}"),
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during the handshake"),
        }
    }
}

impl Peer {
    /// Sends what the replica of `id` has to say, then exchanges messages
    /// until the server reports holding our heads: every change we made is
    /// then durable on the server.
    pub async fn sync_until_acknowledged(
        &mut self,
        replicas: &mut Replicas,
        id: DocumentId,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        if let Some(frame) = replicas.outgoing(&self.peer_id, &self.server_id, id) {
            self.sink.send(frame).await?;
        }
        while !replicas.acknowledged(id) {
            let Some(frame) = tokio::time::timeout(timeout, self.stream.next()).await? else {
                bail!("closed")
            };
            let tungstenite::Message::Binary(bytes) = frame? else {
                continue;
            };
            replicas.apply(&wire::decode(&bytes)?)?;
            if let Some(frame) = replicas.outgoing(&self.peer_id, &self.server_id, id) {
                self.sink.send(frame).await?;
            }
        }
        Ok(())
    }
}

/// Replicas and sync states of the documents one peer syncs.
#[derive(Default)]
pub struct Replicas {
    /// By document.
    pub docs: HashMap<DocumentId, (AutoCommit, sync::State)>,
}

impl Replicas {
    /// The next sync message for a document, as a frame, if any.
    pub fn outgoing(
        &mut self,
        peer_id: &str,
        server_id: &str,
        id: DocumentId,
    ) -> Option<tungstenite::Message> {
        let (doc, state) = self.docs.get_mut(&id)?;
        let message = doc.sync().generate_sync_message(state)?;
        Some(tungstenite::Message::binary(wire::encode(&Message::Sync {
            sender_id: peer_id.to_owned(),
            target_id: server_id.to_owned(),
            document_id: id.to_string(),
            data: message.encode(),
        })))
    }

    /// Whether the server has told us it holds exactly our heads for `id`.
    pub fn acknowledged(&mut self, id: DocumentId) -> bool {
        self.docs.get_mut(&id).is_some_and(|(doc, state)| {
            let heads = doc.get_heads();
            state.their_heads.as_ref().is_some_and(|h| *h == heads)
        })
    }

    /// A `request` frame for a document this peer does not have yet.
    pub fn request(
        &mut self,
        peer_id: &str,
        server_id: &str,
        id: DocumentId,
    ) -> tungstenite::Message {
        let (doc, state) = self
            .docs
            .entry(id)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
        let data = doc
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
            .unwrap_or_default();
        tungstenite::Message::binary(wire::encode(&Message::Request {
            sender_id: peer_id.to_owned(),
            target_id: server_id.to_owned(),
            document_id: id.to_string(),
            data,
        }))
    }

    /// Applies an incoming sync message; returns the document it was for.
    pub fn apply(&mut self, message: &Message) -> anyhow::Result<Option<DocumentId>> {
        let Message::Sync {
            document_id, data, ..
        } = message
        else {
            return Ok(None);
        };
        let id: DocumentId = document_id.parse()?;
        let (doc, state) = self
            .docs
            .entry(id)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
        doc.sync()
            .receive_sync_message(state, sync::Message::decode(data)?)?;
        Ok(Some(id))
    }
}

/// An integer at the root of a replica, or 0 when absent or not an integer.
pub fn int_field(doc: &AutoCommit, key: &str) -> i64 {
    use automerge::{ROOT, ReadDoc, ScalarValue, Value};
    match doc.get(ROOT, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Int(n) => *n,
            _ => 0,
        },
        _ => 0,
    }
}
