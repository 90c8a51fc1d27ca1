//! The async driver of the sync machine: connects, reconnects, refreshes
//! tokens, and performs the machine's effects.
//!
//! One tokio task per client. It reads the clock and draws randomness (for
//! backoff jitter) and hands the machine only data. Reconnects back off
//! exponentially with jitter, except after an expired token (refresh, then
//! reconnect at once). A close because the session ended, or a refused
//! refresh token, signs the client out.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use codeedex_schema::wire::close;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::machine::{Effect, SyncMachine};
use crate::device::Device;
use crate::error::ClientError;
use crate::events::SyncStatus;
use crate::store::meta_key;
use crate::transport::{self, ConnectError, Connection, Incoming};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long local changes to a document may wait for the server to answer
/// the previous message of that document before they are sent anyway (the
/// server's default coalescing bound is the same).
const COALESCE_BOUND: Duration = Duration::from_millis(50);
/// How long to wait before retrying a refresh that failed for lack of network.
const REFRESH_RETRY: Duration = Duration::from_secs(2);

/// A running engine (and the task that sends deletions beside it).
#[derive(Debug)]
pub(crate) struct EngineHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    deletions: JoinHandle<()>,
}

impl EngineHandle {
    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the engine to stop, without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the engine and waits for it.
    pub async fn stop(self) {
        self.signal_stop();
        let _ = self.task.await;
        let _ = self.deletions.await;
    }
}

/// Starts the engine of a client on the current runtime.
pub(crate) fn start(device: Arc<Device>) -> EngineHandle {
    let (stop, stopped) = watch::channel(false);
    let deletions = tokio::spawn(super::deletions::run(Arc::clone(&device), stop.subscribe()));
    let task = tokio::spawn(run(device, stopped));
    EngineHandle {
        stop,
        task,
        deletions,
    }
}

enum Ended {
    Stopped,
    LoggedOut,
    Closed { code: Option<u16>, reason: String },
}

fn record_failure(device: &Device, why: String) {
    tracing::info!(%why, "sync connection failed");
    device.set_last_error(Some(why));
    device.set_status(SyncStatus::Offline);
}

/// Sleeps for `delay` unless told to stop; returns true when told to stop.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn run(device: Arc<Device>, mut stop: watch::Receiver<bool>) {
    let saved = device.store().sync_states().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the saved sync states; syncing from scratch");
        Vec::new()
    });
    let cursor = device.store().meta_u64(meta_key::CURSOR).unwrap_or(0);
    let mut machine = SyncMachine::new(
        device.peer_id().to_owned(),
        device.storage_id().to_owned(),
        saved,
        cursor,
    );
    let mut backoff = Backoff::default();
    let mut auth_changes = device.auth().watch();
    loop {
        if *stop.borrow() {
            break;
        }
        let has_root = device.replicas().root().is_some();
        if !device.auth().is_logged_in() || !has_root {
            device.set_status(SyncStatus::Offline);
            tokio::select! {
                _ = stop.changed() => {}
                _ = auth_changes.changed() => {}
            }
            continue;
        }
        device.set_status(SyncStatus::Connecting);
        let token = match device.auth().access_token(Utc::now()).await {
            Ok(token) => token,
            Err(ClientError::SessionEnded) => {
                device.logged_out();
                continue;
            }
            Err(ClientError::NotLoggedIn) => continue,
            Err(e) => {
                record_failure(&device, e.to_string());
                if pause(&mut stop, backoff.next_delay(rand::random())).await {
                    break;
                }
                continue;
            }
        };
        let url = transport::sync_url(&device.config().server_url);
        let mut connection = match transport::connect(&url, &token, CONNECT_TIMEOUT).await {
            Ok(connection) => connection,
            Err(e) => {
                record_failure(&device, e.to_string());
                let delay = match e {
                    ConnectError::Refused { status: 401, .. } => {
                        // The token was refused: a refresh tells whether the session lives.
                        if let Err(ClientError::SessionEnded) =
                            device.auth().refresh(Some(&token)).await
                        {
                            device.logged_out();
                            continue;
                        }
                        backoff.next_delay(rand::random())
                    }
                    // A busy server said when to come back: after a restart
                    // every device returns at once, and the server hands
                    // each a different time so that they come back in turn.
                    ConnectError::Refused {
                        retry_after: Some(retry_after),
                        ..
                    } => {
                        tracing::info!(
                            seconds = retry_after.as_secs(),
                            "the server is busy; reconnecting after its Retry-After"
                        );
                        backoff.next_delay_after(retry_after, rand::random())
                    }
                    _ => backoff.next_delay(rand::random()),
                };
                if pause(&mut stop, delay).await {
                    break;
                }
                continue;
            }
        };
        device.set_last_error(None);
        let ended = drive(
            &device,
            &mut machine,
            &mut connection,
            &mut stop,
            &mut auth_changes,
            &mut backoff,
            token,
        )
        .await;
        machine.disconnected();
        if let Err(e) = device.store().flush_async().await {
            tracing::warn!(error = %e, "cannot flush the local store");
        }
        match ended {
            Ended::Stopped => {
                connection.close().await;
                break;
            }
            Ended::LoggedOut => {
                connection.close().await;
                device.set_status(SyncStatus::Offline);
            }
            Ended::Closed { code, reason } => {
                record_failure(
                    &device,
                    if reason.is_empty() {
                        "the connection closed".to_owned()
                    } else {
                        reason
                    },
                );
                match code {
                    Some(close::TOKEN_EXPIRED) => {
                        // Reconnect at once; the loop refreshes the token first.
                    }
                    Some(close::SESSION_ENDED) => match device.auth().refresh(None).await {
                        Err(ClientError::SessionEnded) => device.logged_out(),
                        Ok(_) | Err(ClientError::NotLoggedIn) => {}
                        Err(_) => {
                            if pause(&mut stop, backoff.next_delay(rand::random())).await {
                                break;
                            }
                        }
                    },
                    _ => {
                        if pause(&mut stop, backoff.next_delay(rand::random())).await {
                            break;
                        }
                    }
                }
            }
        }
    }
    device.set_status(SyncStatus::Offline);
    if let Err(e) = device.store().flush_async().await {
        tracing::warn!(error = %e, "cannot flush the local store");
    }
}

/// Performs effects; fails only when the connection does.
async fn perform(
    device: &Device,
    connection: &mut Connection,
    effects: Vec<Effect>,
) -> Result<(), Ended> {
    let mut saved = false;
    for effect in effects {
        match effect {
            Effect::Send(message) => {
                connection
                    .send(&message)
                    .await
                    .map_err(|reason| Ended::Closed { code: None, reason })?;
            }
            Effect::SaveDocument(id) => {
                let replicas = device.replicas();
                if let Err(e) = device.save_documents(&replicas, &[id]) {
                    tracing::warn!(error = %e, doc = %id, "cannot save a document");
                }
                saved = true;
            }
            Effect::SaveSyncState(id, bytes) => {
                if let Err(e) = device.store().put_sync_state(id, &bytes) {
                    tracing::warn!(error = %e, doc = %id, "cannot save a sync state");
                }
                saved = true;
            }
            Effect::SaveUnlisted => {
                let unlisted = device.replicas().unlisted();
                if let Err(e) = device.store().put_unlisted(&unlisted) {
                    tracing::warn!(error = %e, "cannot save the waiting tasks");
                }
                saved = true;
            }
            Effect::SaveCursor(cursor) => {
                if let Err(e) = device.store().put_meta_u64(meta_key::CURSOR, cursor) {
                    tracing::warn!(error = %e, "cannot save the catch-up cursor");
                }
                saved = true;
            }
            Effect::Emit(event) => device.emit(event),
            Effect::ServerError(message) => {
                tracing::warn!(%message, "the server reported an error");
                device.set_last_error(Some(message));
            }
        }
    }
    if saved && let Err(e) = device.store().flush_async().await {
        tracing::warn!(error = %e, "cannot flush the local store");
    }
    Ok(())
}

/// Publishes the device's sync status; returns how many documents wait for
/// the server.
fn update_status(device: &Device, machine: &SyncMachine) -> usize {
    if !machine.is_joined() {
        device.set_status(SyncStatus::Connecting);
        return 0;
    }
    // Local changes the loop has not picked up yet count too.
    let waiting = device.changed_count();
    let unsettled = machine.pending(&device.replicas());
    let pending = unsettled + waiting;
    device.set_status(if pending == 0 {
        SyncStatus::UpToDate {
            last_sync: Utc::now(),
        }
    } else {
        SyncStatus::Syncing { pending }
    });
    unsettled
}

/// Runs one connection until it ends.
async fn drive(
    device: &Device,
    machine: &mut SyncMachine,
    connection: &mut Connection,
    stop: &mut watch::Receiver<bool>,
    auth_changes: &mut watch::Receiver<u64>,
    backoff: &mut Backoff,
    mut token: String,
) -> Ended {
    let effects = machine.connected();
    if let Err(ended) = perform(device, connection, effects).await {
        return ended;
    }
    let join_deadline = Instant::now() + JOIN_TIMEOUT;
    let mut refresh_not_before = Instant::now();
    let mut release_at: Option<Instant> = None;
    // A connection whose path died without a reset (a phone that changed
    // networks, a relay that stopped forwarding) reports no error by itself:
    // TCP would retry for many minutes while every change the device sends
    // goes nowhere. So silence ends it: after two thirds of the limit
    // without a frame the device pings, and if no frame answers within the
    // last third, it reconnects. While a document waits for the server, a
    // lack of sync messages counts as silence too, even if the server's own
    // pings arrive: the answer we wait for may be what was lost.
    let silence_limit = device.config().sync_silence_limit;
    let ping_when_quiet_for = silence_limit * 2 / 3;
    let mut pinged_at: Option<Instant> = None;
    let mut messages_expected_since = Instant::now();
    let mut was_waiting = false;
    // Documents waiting for the server, as the last status update counted.
    let mut unsettled = 0;
    loop {
        let heard = connection.last_heard();
        if pinged_at.is_some_and(|at| at < heard) {
            pinged_at = None;
            // The server is there after all; what it left unanswered
            // through that silence was lost on the way.
            let effects = {
                let mut replicas = device.replicas();
                machine.resend_unanswered(&mut replicas)
            };
            messages_expected_since = Instant::now();
            if !effects.is_empty() {
                tracing::info!(
                    documents = effects.len(),
                    "changes the server never answered are sent again"
                );
            }
            if let Err(ended) = perform(device, connection, effects).await {
                return ended;
            }
        }
        // The next moment to act on silence: a ping once quiet, then the
        // limit once a ping went unanswered.
        let waiting = unsettled > 0;
        if waiting && !was_waiting {
            messages_expected_since = Instant::now();
        }
        was_waiting = waiting;
        let quiet_since = if waiting {
            messages_expected_since
        } else {
            heard
        };
        let silence_check = match pinged_at {
            None => quiet_since + ping_when_quiet_for,
            Some(at) => at + (silence_limit - ping_when_quiet_for),
        };
        let refresh_in = device
            .auth()
            .refresh_due()
            .map(|due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        let refresh_at = (Instant::now() + refresh_in).max(refresh_not_before);
        let effects = tokio::select! {
            incoming = connection.next() => match incoming {
                Incoming::Message(message) => {
                    messages_expected_since = Instant::now();
                    let mut replicas = device.replicas();
                    machine.receive(message, &mut replicas)
                }
                Incoming::Closed { code, reason } => return Ended::Closed { code, reason },
            },
            () = device.local_change() => {
                let ids = device.take_changed();
                let mut replicas = device.replicas();
                machine.local_change(&ids, &mut replicas)
            }
            () = async { tokio::time::sleep_until(release_at.expect("guarded")).await }, if release_at.is_some() => {
                release_at = None;
                let mut replicas = device.replicas();
                machine.release_held(&mut replicas)
            }
            () = tokio::time::sleep_until(refresh_at) => {
                match device.auth().access_token(Utc::now()).await {
                    Ok(fresh) if fresh != token => {
                        token = fresh;
                        machine.token_refreshed(&token).into_iter().collect()
                    }
                    Ok(_) => {
                        refresh_not_before = Instant::now() + REFRESH_RETRY;
                        Vec::new()
                    }
                    Err(ClientError::SessionEnded) => {
                        device.logged_out();
                        return Ended::LoggedOut;
                    }
                    Err(ClientError::NotLoggedIn) => return Ended::LoggedOut,
                    Err(e) => {
                        tracing::info!(error = %e, "cannot refresh the access token yet");
                        refresh_not_before = Instant::now() + REFRESH_RETRY;
                        Vec::new()
                    }
                }
            }
            _ = stop.changed() => return Ended::Stopped,
            _ = auth_changes.changed() => {
                if !device.auth().is_logged_in() {
                    return Ended::LoggedOut;
                }
                Vec::new()
            }
            () = tokio::time::sleep_until(silence_check) => {
                // Pings and pongs arrive inside `next`, which returns only
                // messages: look again at when the server was last heard.
                if connection.last_heard() > heard && (pinged_at.is_some() || !waiting) {
                    continue;
                }
                if pinged_at.is_some() {
                    tracing::info!(
                        seconds = silence_limit.as_secs_f64(),
                        "the server has been silent too long; reconnecting"
                    );
                    return Ended::Closed { code: None, reason: "the server stopped answering".to_owned() };
                }
                if let Err(e) = connection.ping().await {
                    return Ended::Closed { code: None, reason: e };
                }
                pinged_at = Some(Instant::now());
                continue;
            }
            () = tokio::time::sleep_until(join_deadline), if !machine.is_joined() => {
                return Ended::Closed { code: None, reason: "the server did not answer join".to_owned() };
            }
        };
        if let Err(ended) = perform(device, connection, effects).await {
            return ended;
        }
        // Held changes go out within the bound of the first one held.
        if !machine.holding() {
            release_at = None;
        } else if release_at.is_none() {
            release_at = Some(Instant::now() + COALESCE_BOUND);
        }
        if machine.is_joined() {
            backoff.reset();
        }
        unsettled = update_status(device, machine);
    }
}
