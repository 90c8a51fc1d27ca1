//! The WebSocket connection to `/v1/sync`: the only module that names
//! tungstenite.
//!
//! It turns binary frames into [`Message`]s and back and reports closes with
//! their code. Frames that are not protocol messages (text, undecodable or
//! unknown types) are skipped with a log line: bad input from the server
//! never panics the client. Pings are answered by tungstenite itself; every
//! frame, a pong included, counts as hearing from the server, which is what
//! the engine's liveness check reads.

use std::time::Duration;

use tokio::time::Instant;

use codeedex_schema::wire::{self, DecodeError, Message};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Frames above this size are refused (the server's own limit is 16 MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The server refused the upgrade (401: the token; 429: too many
    /// connections of this account; 503: the server is busy, for example
    /// with every device reconnecting after a restart).
    #[error("the server refused the sync connection with HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// How long the server asked us to wait (`Retry-After`, in seconds).
        retry_after: Option<Duration>,
    },
    /// No connection.
    #[error("{0}")]
    Network(String),
}

/// What arrived.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A protocol message.
    Message(Message),
    /// The connection ended; the close code, if the server sent one.
    Closed {
        /// WebSocket close code.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

/// An open sync connection.
#[derive(Debug)]
pub(crate) struct Connection {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// When the last frame of any kind arrived.
    last_heard: Instant,
}

/// The sync endpoint's URL for a server base URL.
pub(crate) fn sync_url(server_url: &str) -> String {
    let base = server_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/v1/sync")
}

/// Opens the sync socket with the access token in the `Authorization`
/// header.
pub(crate) async fn connect(
    url: &str,
    access_token: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Network(format!("bad sync URL {url}: {e}")))?;
    let header = http::HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
        ConnectError::Network("the access token is not a valid header value".to_owned())
    })?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, header);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    // Nagle's algorithm off: sync frames are small and latency-bound.
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ConnectError::Network("connecting timed out".to_owned())),
        Ok(Err(tungstenite::Error::Http(response))) => Err(ConnectError::Refused {
            status: response.status().as_u16(),
            retry_after: retry_after(response.headers()),
        }),
        Ok(Err(e)) => Err(ConnectError::Network(e.to_string())),
        Ok(Ok((socket, _response))) => Ok(Connection {
            socket,
            last_heard: Instant::now(),
        }),
    }
}

/// A `Retry-After` header in seconds (the only form the server sends; an
/// HTTP date is ignored and the ordinary backoff applies), capped at an hour
/// so that a broken header cannot park the device for days.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3_600)))
}

impl Connection {
    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), String> {
        self.socket
            .send(tungstenite::Message::binary(wire::encode(message)))
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks the server for a pong; its answer (or any other frame) moves
    /// [`Connection::last_heard`].
    pub async fn ping(&mut self) -> Result<(), String> {
        self.socket
            .send(tungstenite::Message::Ping(Default::default()))
            .await
            .map_err(|e| e.to_string())
    }

    /// When the server was last heard from: any frame, pings and pongs
    /// included.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The next protocol message, or the end of the connection.
    pub async fn next(&mut self) -> Incoming {
        loop {
            let frame = match self.socket.next().await {
                None => {
                    return Incoming::Closed {
                        code: None,
                        reason: "the connection ended".to_owned(),
                    };
                }
                Some(Err(e)) => {
                    return Incoming::Closed {
                        code: None,
                        reason: e.to_string(),
                    };
                }
                Some(Ok(frame)) => frame,
            };
            self.last_heard = Instant::now();
            match frame {
                tungstenite::Message::Binary(bytes) => match wire::decode(&bytes) {
                    Ok(message) => return Incoming::Message(message),
                    Err(DecodeError::UnknownType(kind)) => {
                        tracing::debug!(%kind, "skipped a message of an unknown type")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "skipped an undecodable frame from the server")
                    }
                },
                tungstenite::Message::Close(frame) => {
                    return Incoming::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                }
                tungstenite::Message::Text(_) => {
                    tracing::warn!("skipped a text frame from the server")
                }
                // Pings are answered by tungstenite; pongs need nothing.
                _ => {}
            }
        }
    }

    /// Closes the connection politely (best effort).
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(" 7"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("99999999"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3_600)));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn the_sync_url_follows_the_scheme() {
        assert_eq!(
            sync_url("http://127.0.0.1:8080/"),
            "ws://127.0.0.1:8080/v1/sync"
        );
        assert_eq!(
            sync_url("https://tasks.example.com"),
            "wss://tasks.example.com/v1/sync"
        );
    }
}
