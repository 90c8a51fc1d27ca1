//! A protocol-level sync peer for tests: a real WebSocket client
//! (tokio-tungstenite) that speaks automerge-repo v1 frame by frame, with
//! Automerge replicas it keeps in sync by hand. Tests use it to check the
//! server's answers to every message, well-formed or not.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::{self, Message, PeerMetadata};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What arrived on the socket.
#[derive(Debug)]
pub enum Received {
    /// A decoded protocol message.
    Message(Message),
    /// The server closed the socket with this code and reason.
    Closed(Option<(u16, String)>),
}

/// How to present the access token.
#[derive(Debug, Clone, Copy)]
pub enum TokenIn {
    /// `Authorization: Bearer`.
    Header,
    /// `Sec-WebSocket-Protocol: codeedex.v1, codeedex.bearer.<token>`.
    Subprotocol,
    /// `?access_token=`.
    Query,
}

/// Opens the sync socket. `Err` carries the HTTP status of a refused upgrade.
pub async fn connect(
    port: u16,
    token: Option<&str>,
    how: TokenIn,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let request = sync_request(port, token, how, origin)?;
    let (socket, _response) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// The HTTP status of a refused upgrade, if that is what the error is.
pub fn refused_status(error: &tungstenite::Error) -> Option<u16> {
    match error {
        tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// One test peer: a socket, a peer id, and Automerge replicas with their
/// sync states.
#[derive(Debug)]
pub struct SyncPeer {
    socket: Socket,
    /// This peer's id.
    pub peer_id: String,
    /// The server's peer id, from its `peer` message.
    pub server_peer_id: String,
    /// The server's `peer` message.
    pub peer_message: Option<Message>,
    /// Replicas by document.
    pub docs: HashMap<DocumentId, (AutoCommit, sync::State)>,
    /// Messages received but not yet consumed by a wait.
    pub backlog: Vec<Message>,
}

impl SyncPeer {
    /// Wraps a connected socket without joining.
    pub fn unjoined(socket: Socket, peer_id: &str) -> Self {
        Self {
            socket,
            peer_id: peer_id.to_owned(),
            server_peer_id: String::new(),
            peer_message: None,
            docs: HashMap::new(),
            backlog: Vec::new(),
        }
    }

    /// Connects with a bearer header and joins.
    pub async fn join(
        port: u16,
        token: &str,
        peer_id: &str,
        storage_id: Option<&str>,
        extensions: &[&str],
    ) -> anyhow::Result<Self> {
        let socket = connect(port, Some(token), TokenIn::Header, None)
            .await
            .context("connect")?;
        let mut peer = Self::unjoined(socket, peer_id);
        peer.send(&Message::Join {
            sender_id: peer_id.to_owned(),
            supported_protocol_versions: vec!["1".to_owned()],
            peer_metadata: Some(PeerMetadata {
                storage_id: storage_id.map(str::to_owned),
                is_ephemeral: storage_id.is_none(),
                extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
            }),
        })
        .await?;
        match peer.recv(Duration::from_secs(5)).await? {
            Received::Message(m @ Message::Peer { .. }) => {
                if let Message::Peer { sender_id, .. } = &m {
                    peer.server_peer_id = sender_id.clone();
                }
                peer.peer_message = Some(m);
                Ok(peer)
            }
            other => bail!("expected peer, got {other:?}"),
        }
    }

    /// Sends a message.
    pub async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        self.send_raw(tungstenite::Message::binary(wire::encode(message)))
            .await
    }

    /// Sends any WebSocket frame.
    pub async fn send_raw(&mut self, frame: tungstenite::Message) -> anyhow::Result<()> {
        self.socket.send(frame).await.context("send")
    }

    /// The next message or close, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        if !self.backlog.is_empty() {
            return Ok(Received::Message(self.backlog.remove(0)));
        }
        self.recv_socket(timeout).await
    }

    async fn recv_socket(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .context("nothing received in time")?;
            match frame {
                None => return Ok(Received::Closed(None)),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    return Ok(Received::Closed(None));
                }
                Some(Err(tungstenite::Error::Protocol(_))) => return Ok(Received::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(tungstenite::Message::Binary(bytes))) => {
                    return Ok(Received::Message(
                        wire::decode(&bytes).context("the server sent an undecodable frame")?,
                    ));
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return Ok(Received::Closed(frame.map(
                        |CloseFrame { code, reason }| (u16::from(code), reason.to_string()),
                    )));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the socket to close; returns the close code. Messages that
    /// arrive first go to the backlog.
    pub async fn expect_close(&mut self, timeout: Duration) -> anyhow::Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_socket(left).await? {
                Received::Closed(frame) => return Ok(frame.map(|(code, _)| code)),
                Received::Message(m) => self.backlog.push(m),
            }
        }
    }

    /// Creates a document locally with `edit` applied.
    pub fn create(&mut self, id: DocumentId, edit: impl FnOnce(&mut AutoCommit)) {
        let mut doc = AutoCommit::new();
        edit(&mut doc);
        self.docs.insert(id, (doc, sync::State::new()));
    }

    /// Changes a local replica.
    pub fn change(&mut self, id: DocumentId, edit: impl FnOnce(&mut AutoCommit)) {
        let (doc, _) = self.docs.get_mut(&id).expect("a replica of that document");
        edit(doc);
    }

    /// Starts tracking a document this peer does not have (an empty replica).
    pub fn track(&mut self, id: DocumentId) {
        self.docs
            .entry(id)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
    }

    /// Sends a `sync` (or, with `request`, a `request`) for a document if the
    /// replica has something to say.
    pub async fn push(&mut self, id: DocumentId, request: bool) -> anyhow::Result<bool> {
        let (doc, state) = self.docs.get_mut(&id).expect("a replica of that document");
        let Some(message) = doc.sync().generate_sync_message(state) else {
            return Ok(false);
        };
        let data = message.encode();
        let (sender_id, target_id, document_id) = (
            self.peer_id.clone(),
            self.server_peer_id.clone(),
            id.to_string(),
        );
        let message = if request {
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
        } else {
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            }
        };
        self.send(&message).await?;
        Ok(true)
    }

    /// Applies a received sync message to its replica and answers it.
    pub async fn apply(&mut self, message: &Message) -> anyhow::Result<()> {
        let Message::Sync {
            document_id, data, ..
        } = message
        else {
            bail!("not a sync message: {message:?}")
        };
        let id: DocumentId = document_id.parse()?;
        self.track(id);
        let (doc, state) = self.docs.get_mut(&id).expect("tracked above");
        doc.sync()
            .receive_sync_message(state, sync::Message::decode(data)?)?;
        self.push(id, false).await?;
        Ok(())
    }

    /// Exchanges messages until `done` holds for the replica of `id`,
    /// answering every sync message; other messages go to the backlog.
    pub async fn sync_until(
        &mut self,
        id: DocumentId,
        timeout: Duration,
        done: impl Fn(&AutoCommit) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.push(id, false).await?;
        loop {
            if self.docs.get(&id).is_some_and(|(d, _)| done(d)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("document {id} did not reach the expected state in {timeout:?}");
            }
            match self.recv_socket(left).await {
                Ok(Received::Message(m @ Message::Sync { .. })) => self.apply(&m).await?,
                Ok(Received::Message(m)) => self.backlog.push(m),
                Ok(Received::Closed(frame)) => bail!("the socket closed: {frame:?}"),
                Err(e) => bail!("document {id} did not reach the expected state: {e:#}"),
            }
        }
    }

    /// Exchanges messages until the server has told us it holds exactly our
    /// heads for `id`: every local change is on the server.
    pub async fn sync_to_server(
        &mut self,
        id: DocumentId,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.push(id, false).await?;
        loop {
            if let Some((doc, state)) = self.docs.get_mut(&id)
                && state.their_heads.as_ref().is_some_and(|theirs| {
                    let mut theirs = theirs.clone();
                    let mut ours = doc.get_heads();
                    theirs.sort();
                    ours.sort();
                    theirs == ours
                })
            {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_socket(left).await {
                Ok(Received::Message(m @ Message::Sync { .. })) => self.apply(&m).await?,
                Ok(Received::Message(m)) => self.backlog.push(m),
                Ok(Received::Closed(frame)) => bail!("the socket closed: {frame:?}"),
                Err(e) => bail!("document {id} was not acknowledged by the server: {e:#}"),
            }
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Reads a string field at the document root (text or plain string).
pub fn read_string(doc: &AutoCommit, key: &str) -> Option<String> {
    use automerge::{ObjType, ROOT, ReadDoc, Value};
    match doc.get(ROOT, key).ok()?? {
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The upgrade request [`connect`] sends, for tests that need the response
/// (for example the selected subprotocol).
pub fn sync_request(
    port: u16,
    token: Option<&str>,
    how: TokenIn,
    origin: Option<&str>,
) -> Result<http::Request<()>, tungstenite::Error> {
    let mut url = format!("ws://127.0.0.1:{port}/v1/sync");
    if let (Some(t), TokenIn::Query) = (token, how) {
        url.push_str(&format!("?access_token={t}"));
    }
    let mut request = url.into_client_request()?;
    if let Some(t) = token {
        match how {
            TokenIn::Header => {
                request.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    format!("Bearer {t}").parse().expect("header"),
                );
            }
            TokenIn::Subprotocol => {
                request.headers_mut().insert(
                    http::header::SEC_WEBSOCKET_PROTOCOL,
                    format!("codeedex.v1, codeedex.bearer.{t}")
                        .parse()
                        .expect("header"),
                );
            }
            TokenIn::Query => {}
        }
    }
    if let Some(o) = origin {
        request
            .headers_mut()
            .insert(http::header::ORIGIN, o.parse().expect("header"));
    }
    Ok(request)
}

/// Like [`connect`], but also returns the `Sec-WebSocket-Protocol` the
/// server selected, if any.
pub async fn connect_with_protocol(
    port: u16,
    token: Option<&str>,
    how: TokenIn,
    origin: Option<&str>,
) -> Result<(Socket, Option<String>), tungstenite::Error> {
    let request = sync_request(port, token, how, origin)?;
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let selected = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
    Ok((socket, selected))
}

/// A CBOR map of text keys and text values, written by hand, for frames the
/// codec cannot produce (unknown message types).
pub fn cbor_text_map(entries: &[(&str, &str)]) -> Vec<u8> {
    fn head(out: &mut Vec<u8>, major: u8, len: usize) {
        let major = major << 5;
        match len {
            0..=23 => out.push(major | len as u8),
            24..=0xff => out.extend([major | 24, len as u8]),
            0x100..=0xffff => {
                out.push(major | 25);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(major | 26);
                out.extend((len as u32).to_be_bytes());
            }
        }
    }
    let mut out = Vec::new();
    head(&mut out, 5, entries.len());
    for (key, value) in entries {
        for text in [key, value] {
            head(&mut out, 3, text.len());
            out.extend(text.as_bytes());
        }
    }
    out
}

/// What a device keeps across a disconnect: its replicas, with sync states
/// reduced to what survives a reconnect (the shared heads), as automerge
/// recommends.
pub type Replicas = HashMap<DocumentId, (AutoCommit, sync::State)>;

impl SyncPeer {
    /// Joins with a custom `join` message on an already connected socket;
    /// returns the first thing the server answers.
    pub async fn join_with(mut self, join: &Message) -> anyhow::Result<(Self, Received)> {
        self.send(join).await?;
        let answer = self.recv(Duration::from_secs(5)).await?;
        if let Received::Message(m @ Message::Peer { sender_id, .. }) = &answer {
            self.server_peer_id = sender_id.clone();
            self.peer_message = Some(m.clone());
        }
        Ok((self, answer))
    }

    /// Joins like [`Self::join`] and takes over a device's replicas kept
    /// while it was offline (see [`Self::go_offline`]).
    pub async fn rejoin(
        port: u16,
        token: &str,
        peer_id: &str,
        storage_id: Option<&str>,
        extensions: &[&str],
        replicas: Replicas,
    ) -> anyhow::Result<Self> {
        let mut peer = Self::join(port, token, peer_id, storage_id, extensions).await?;
        peer.docs = replicas;
        Ok(peer)
    }

    /// Closes the socket and returns the replicas, as a device that goes
    /// offline keeps them.
    pub async fn go_offline(mut self) -> Replicas {
        let docs = std::mem::take(&mut self.docs);
        self.close().await;
        Self::keep_replicas(docs)
    }

    /// The replicas with their sync states reset for a new connection.
    pub fn keep_replicas(docs: Replicas) -> Replicas {
        docs.into_iter()
            .map(|(id, (doc, state))| {
                let state = sync::State::decode(&state.encode()).expect("a sync state decodes");
                (id, (doc, state))
            })
            .collect()
    }

    /// Sends a `request` for a document this peer does not have.
    pub async fn request(&mut self, id: DocumentId) -> anyhow::Result<()> {
        self.track(id);
        let sent = self.push(id, true).await?;
        anyhow::ensure!(sent, "an empty replica always has a first sync message");
        Ok(())
    }

    /// The next protocol message; fails on a close or a timeout.
    pub async fn next_message(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        match self.recv(timeout).await? {
            Received::Message(m) => Ok(m),
            Received::Closed(frame) => bail!("the socket closed: {frame:?}"),
        }
    }

    /// A round trip through the server: sends a `request` for the invalid
    /// document id `marker` (answered at once with `doc-unavailable`) and
    /// returns every other message that arrived before that answer (`sync`
    /// messages among them are also applied and answered). The
    /// server handles one connection's frames in order, so an empty result
    /// shows that the frames sent before the marker were answered with
    /// nothing.
    pub async fn ping(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<Vec<Message>> {
        let data = AutoCommit::new()
            .sync()
            .generate_sync_message(&mut sync::State::new())
            .expect("a first message")
            .encode();
        self.send(&Message::Request {
            sender_id: self.peer_id.clone(),
            target_id: self.server_peer_id.clone(),
            document_id: marker.to_owned(),
            data,
        })
        .await?;
        let mut before = Vec::new();
        loop {
            match self.next_message(timeout).await? {
                Message::DocUnavailable { document_id, .. } if document_id == marker => {
                    return Ok(before);
                }
                m @ Message::Sync { .. } => {
                    self.apply(&m).await?;
                    before.push(m);
                }
                other => before.push(other),
            }
        }
    }

    /// [`Self::ping`] without the `sync` messages (which it applies and
    /// answers): what arrived apart from ordinary sync traffic.
    pub async fn quiet_ping(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Message>> {
        let all = self.ping(marker, timeout).await?;
        Ok(all
            .into_iter()
            .filter(|m| !matches!(m, Message::Sync { .. }))
            .collect())
    }

    /// The next message that is not `sync`; `sync` messages on the way are
    /// applied and answered.
    pub async fn next_non_sync(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await? {
                m @ Message::Sync { .. } => self.apply(&m).await?,
                other => return Ok(other),
            }
        }
    }

    /// Whether the socket is still open once the server has acted on every
    /// event already pending for this connection (a session that ended, a
    /// relayed change): two round trips ([`Self::ping`]). The server's task
    /// for a connection writes the first answer and goes straight back to
    /// its pending events, before the second request can have arrived (it
    /// is sent only once the first answer is here); so a close those events
    /// call for comes before the second answer. Other messages go to the
    /// backlog. For an event still in the future (a timer), see
    /// [`Self::still_open`].
    pub async fn open_after_pending(&mut self, timeout: Duration) -> bool {
        for marker in ["pending-events-1", "pending-events-2"] {
            match self.ping(marker, timeout).await {
                Ok(before) => self.backlog.extend(before),
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether the socket is still open: nothing but a close within `wait`
    /// counts as open; messages go to the backlog.
    pub async fn still_open(&mut self, wait: Duration) -> bool {
        match self.expect_close(wait).await {
            Ok(_) => false,
            Err(e) => e.downcast_ref::<tokio::time::error::Elapsed>().is_some(),
        }
    }
}
