//! `GET /v1/sync`: the WebSocket transport of the sync protocol.
//!
//! Authentication happens before the upgrade: an access token from the
//! `Authorization: Bearer` header, from a `Sec-WebSocket-Protocol` entry
//! `codeedex.bearer.<token>` (offer `codeedex.v1` too; that is the one the
//! server selects, so the token is never echoed), or from an `access_token`
//! query parameter, for clients such as the stock automerge-repo adapter that
//! can only set a URL. Request logs never include the query string.
//!
//! This module only moves frames between actix-ws and
//! [`Connection`](crate::sync::connection::Connection), and runs the
//! timers: handshake timeout, token expiry, keep-alive pings. Every decision
//! about what to send or when to close is the session machine's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use chrono::Utc;
use codeedex_schema::problem::ErrorCode;
use codeedex_schema::wire::close;
use tokio::sync::broadcast;

use super::AppState;
use super::caller::bearer_token;
use super::problem::{ProblemParts, endpoint_error};
use crate::auth::tokens::LEEWAY_SECS;
use crate::auth::{AuthenticateError, SessionNotice};
use crate::metrics::Metrics;
use crate::sync::connection::{Connection, Output};
use crate::sync::registry::Admission;
use crate::sync::session::TransportFault;

/// The subprotocol the server selects.
pub const SUBPROTOCOL: &str = "codeedex.v1";
const BEARER_PROTOCOL_PREFIX: &str = "codeedex.bearer.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/sync", web::get().to(sync_socket));
}

/// Why an upgrade was refused.
#[derive(thiserror::Error)]
pub enum SyncSocketError {
    /// No valid token.
    #[error("not authenticated")]
    Unauthorized,
    /// The token expired.
    #[error("access token expired")]
    Expired,
    /// The Origin is not on the allow-list.
    #[error("origin not allowed")]
    Origin,
    /// The user has too many connections.
    #[error("too many connections")]
    TooManyConnections,
    /// The server is shutting down: come back to the restarted one.
    #[error("shutting down")]
    ShuttingDown,
    /// The node is opening connections at its rate, or holds its maximum.
    #[error("server busy")]
    Busy(Duration),
    /// Not a WebSocket handshake.
    #[error("bad handshake")]
    Handshake(String),
    /// Anything on our side.
    #[error("cannot open the sync connection")]
    Unexpected(#[source] anyhow::Error),
}

impl SyncSocketError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::Unauthorized => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "Not authenticated",
            ),
            Self::Expired => ProblemParts::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::TokenExpired,
                "Access token expired",
            ),
            Self::Origin => ProblemParts::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Unauthorized,
                "Origin not allowed",
            ),
            Self::TooManyConnections => ProblemParts::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "Too many connections",
            )
            .detail("close another sync connection of this account first")
            .retry_after(5),
            Self::Busy(retry_after) => ProblemParts::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServerBusy,
                "Server busy",
            )
            .detail("many devices are connecting; try again after Retry-After seconds")
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            Self::ShuttingDown => ProblemParts::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServerBusy,
                "Server shutting down",
            )
            .detail("the server is restarting; reconnect after Retry-After seconds")
            .retry_after(1),
            Self::Handshake(detail) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "Not a WebSocket handshake",
            )
            .detail(detail.clone()),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(SyncSocketError);

fn token_from(req: &HttpRequest) -> Option<String> {
    if let Some(token) = bearer_token(req) {
        return Some(token.to_owned());
    }
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',') {
            if let Some(token) = protocol.trim().strip_prefix(BEARER_PROTOCOL_PREFIX) {
                return Some(token.to_owned());
            }
        }
    }
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()?;
    query.get("access_token").cloned()
}

async fn sync_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, SyncSocketError> {
    if !state.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        // Browsers always send Origin; native clients usually do not. The
        // allow-list stops other web sites from opening sockets with a
        // user's credentials, so only a present, unlisted Origin is refused.
        if origin.is_some_and(|o| !state.allowed_origins.iter().any(|allowed| allowed == o)) {
            return Err(SyncSocketError::Origin);
        }
    }
    // A connection accepted now would be told to go away at once, and its
    // device would come straight back: while the server drains, devices
    // that reconnect early would keep it from ever finishing.
    if *state.shutting_down.borrow() {
        return Err(SyncSocketError::ShuttingDown);
    }
    let token = token_from(&req).ok_or(SyncSocketError::Unauthorized)?;
    let who = state
        .auth
        .authenticate(&token, Utc::now())
        .await
        .map_err(|e| match e {
            AuthenticateError::Expired => SyncSocketError::Expired,
            AuthenticateError::Invalid => SyncSocketError::Unauthorized,
            AuthenticateError::Store(e) => SyncSocketError::Unexpected(e.into()),
        })?;
    let limits = state.sync.limits;
    let Some(admission) = state
        .sync
        .registry
        .admit(who.user_id, limits.max_connections_per_user)
    else {
        return Err(SyncSocketError::TooManyConnections);
    };
    // The gate comes after authentication, so that only signed-in devices
    // spend its tokens, and after the per-user cap, which is cheaper.
    // The registry already counts this connection.
    let open = state.sync.registry.total_connections().saturating_sub(1);
    let gate = state
        .connection_gate
        .lock()
        .map_err(|_| {
            SyncSocketError::Unexpected(anyhow::anyhow!("the connection gate is poisoned"))
        })?
        .admit(open, Instant::now());
    if let Err(refused) = gate {
        Metrics::bump(&state.metrics.sync_connections_shed);
        return Err(SyncSocketError::Busy(refused.retry_after));
    }
    let (response, session, stream) = actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL])
        .map_err(|e| SyncSocketError::Handshake(e.to_string()))?;
    let stream = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);
    let conn = state.next_connection.fetch_add(1, Ordering::Relaxed);
    let peer = Connection::new(
        state.sync.clone(),
        conn,
        who.user_id,
        who.session_id,
        who.expires_at,
        Instant::now(),
    );
    let ends = state.auth.session_ends();
    let state = state.into_inner();
    // actix-ws streams are not Send: the connection runs on this worker.
    // The admission and the peer release everything they hold when dropped,
    // so a task that ends in any way, a panic included, leaks nothing.
    actix_web::rt::spawn(drive(admission, peer, session, stream, ends, state));
    Ok(response)
}

fn until_epoch(seconds: i64) -> Duration {
    let now = Utc::now().timestamp();
    Duration::from_secs(u64::try_from(seconds - now).unwrap_or(0))
}

/// A connection's task, from the upgrade to its end.
///
/// This future lives as long as the socket, idle or not, so its size is
/// memory per connection: every part is held here once and lent to
/// `exchange`, and the work each event starts (applying a frame, answering
/// a notice) is boxed, so that the idle state does not reserve room for
/// the largest of them.
async fn drive(
    _admission: Admission,
    mut peer: Connection,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut ends: broadcast::Receiver<SessionNotice>,
    state: Arc<AppState>,
) {
    exchange(&mut peer, &mut session, &mut stream, &mut ends, &state).await;
    Box::pin(peer.finish()).await;
}

/// Runs the connection until either side ends it.
async fn exchange(
    peer: &mut Connection,
    session: &mut actix_ws::Session,
    stream: &mut actix_ws::AggregatedMessageStream,
    ends: &mut broadcast::Receiver<SessionNotice>,
    state: &AppState,
) {
    let mailbox = peer.mailbox();
    let write_timeout = state.sync.limits.write_timeout;
    let mut shutting_down = state.shutting_down.clone();
    let handshake_deadline = tokio::time::Instant::now() + state.sync.limits.handshake_timeout;
    let mut replaced = None;
    let ping_every = state.sync.limits.ping_interval;
    let silence_limit = ping_every * 3;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        if replaced.is_none() {
            replaced = peer.replaced_signal();
        }
        // The socket lives exactly as long as the token would be accepted
        // for a new upgrade (expiry plus the clock-skew leeway), so that a
        // reconnect with the same token is refused rather than accepted and
        // closed again.
        let token_deadline = until_epoch(peer.token_expires_at() + LEEWAY_SECS as i64);
        // Replies and relayed changes go out once the group commit has made
        // what they reveal durable; meanwhile the other branches go on
        // applying this peer's frames.
        let owed = peer.owed_durability();
        let owed_pending = owed.is_some();
        let hold_deadline = peer.hold_deadline();
        let outputs = tokio::select! {
            incoming = stream.recv() => match incoming {
                None | Some(Ok(AggregatedMessage::Close(_))) => break,
                Some(Ok(AggregatedMessage::Binary(bytes))) => {
                    last_heard = Instant::now();
                    Box::pin(peer.frame(&bytes, Instant::now(), Utc::now())).await
                }
                Some(Ok(AggregatedMessage::Text(_))) => peer.transport_fault(TransportFault::TextFrame),
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    last_heard = Instant::now();
                    match tokio::time::timeout(write_timeout, session.pong(&bytes)).await {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {
                    last_heard = Instant::now();
                    continue;
                }
                Some(Err(ProtocolError::Overflow)) => peer.transport_fault(TransportFault::FrameTooBig),
                // actix-ws reports a fragmented message over the limit as an
                // IO error rather than an overflow; it is the same violation.
                Some(Err(ProtocolError::Io(e))) if e.to_string().contains("maximum continuation size") => {
                    peer.transport_fault(TransportFault::MessageTooBig)
                }
                // The peer's connection ended in the middle of a frame (the
                // process or its network went away): a lost connection, not
                // a protocol violation.
                Some(Err(ProtocolError::Io(e))) if e.to_string().contains("payload reached EOF") => break,
                Some(Err(e)) => peer.transport_fault(TransportFault::Protocol(e.to_string())),
            },
            notices = mailbox.next() => Box::pin(peer.notices(notices, Instant::now(), Utc::now())).await,
            waited = async { owed.expect("guarded").await }, if owed_pending => {
                Box::pin(peer.durable(waited, Instant::now(), Utc::now())).await
            }
            // Messages held for the peer's answer go out at their deadline
            // even without it.
            () = async { tokio::time::sleep_until(hold_deadline.expect("guarded").into()).await }, if hold_deadline.is_some() => {
                Box::pin(peer.hold_elapsed(Instant::now(), Utc::now())).await
            }
            // A clean shutdown tells every peer to reconnect later; the
            // connection then saves its sync states as it ends.
            Ok(_) = shutting_down.wait_for(|down| *down) => peer.shutting_down(),
            ended = ends.recv() => match ended {
                Ok(SessionNotice::Ended(id)) if id == peer.session() => peer.session_ended(),
                Ok(SessionNotice::Ended(_)) => continue,
                // Some notices were lost, here or between nodes; ask
                // whether ours ended.
                Ok(SessionNotice::MayHaveEnded) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    Box::pin(peer.session_may_have_ended(Utc::now())).await
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = tokio::time::sleep_until(handshake_deadline), if !peer.has_joined() => {
                peer.handshake_timed_out()
            }
            () = tokio::time::sleep(token_deadline) => peer.token_expired(),
            _ = async { replaced.as_mut().expect("guarded").await }, if replaced.is_some() => {
                peer.replaced()
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silence_limit {
                    peer.transport_fault(TransportFault::Silent)
                } else {
                    match tokio::time::timeout(write_timeout, session.ping(b"")).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                    // What a live peer has left unanswered for a whole
                    // period, though heard from since, was lost.
                    Box::pin(peer.resend_unanswered(ping_every, last_heard, Instant::now(), Utc::now()))
                        .await
                }
            }
        };
        let mut closing = None;
        for output in outputs {
            match output {
                Output::Frame(bytes) => {
                    // A peer that stops reading fills its socket; the send
                    // then waits. Waiting for ever would keep the connection
                    // and what it holds alive, so the peer gets a deadline.
                    match tokio::time::timeout(write_timeout, session.binary(bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            closing = Some(None);
                            break;
                        }
                        Err(_) => {
                            Metrics::bump(&state.metrics.sync_slow_readers_closed);
                            closing =
                                Some(Some((close::LIMIT, "the peer does not read".to_owned())));
                            break;
                        }
                    }
                }
                Output::Close { code, reason } => {
                    closing = Some(Some((code, reason)));
                    break;
                }
            }
        }
        if let Some(reason) = closing {
            if let Some((code, reason)) = reason {
                log_close(peer, code, &reason);
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: Some(reason),
                };
                // A peer that does not read would not take the close frame
                // either; do not wait for it longer than for any frame.
                let _ =
                    tokio::time::timeout(write_timeout, session.clone().close(Some(reason))).await;
            } else {
                tracing::info!(conn = peer.id(), user = %peer.user(), "sync connection lost");
            }
            return;
        }
    }
    tracing::info!(conn = peer.id(), user = %peer.user(), "sync connection closed by the peer");
    let _ = tokio::time::timeout(write_timeout, session.clone().close(None)).await;
}

/// Logs why the server closed a connection, where an operator sees it:
/// normal ends at info, everything else at warn.
fn log_close(peer: &Connection, code: u16, reason: &str) {
    if code == close::NORMAL {
        tracing::info!(conn = peer.id(), user = %peer.user(), code, reason, "sync connection closed");
    } else {
        tracing::warn!(conn = peer.id(), user = %peer.user(), code, reason, "sync connection closed");
    }
}
