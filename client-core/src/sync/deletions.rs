//! Deletions the server has still to hear of.
//!
//! Deleting a task on a device removes it from the root document at once,
//! offline, and that change syncs like any other. But the task's own
//! document would stay on the server, still listed by the REST API and
//! kept for ever, if nothing told the server. So the client also records
//! the deletion in its store, and this task sends `DELETE /v1/tasks/{id}`
//! for each one recorded: at start, as soon as a deletion is made, and
//! each time the engine is up to date with the server (back online). The
//! server's 204, or 404 (already gone), ends the record; anything else
//! keeps it for the next chance.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{broadcast, watch};

use crate::device::Device;
use crate::error::ClientError;
use crate::events::{ClientEvent, SyncStatus};

/// Runs until told to stop (alongside the engine).
pub(crate) async fn run(device: Arc<Device>, mut stop: watch::Receiver<bool>) {
    let mut events = device.subscribe();
    loop {
        tell_server(&device).await;
        // Wait for a reason to try again.
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = device.deletion_recorded() => break,
                event = events.recv() => match event {
                    Ok(ClientEvent::SyncStatus { status: SyncStatus::UpToDate { .. } })
                    | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Sends every recorded deletion; stops at the first that fails for
/// another reason than the task being gone already.
async fn tell_server(device: &Device) {
    if !device.auth().is_logged_in() {
        return;
    }
    let pending = match device.store().deletions() {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the deletions to send");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    for id in pending {
        let Ok(token) = device.auth().access_token(Utc::now()).await else {
            return;
        };
        match device.auth().api().delete_task(&token, id).await {
            Ok(()) | Err(ClientError::Server { status: 404, .. }) => {
                if let Err(e) = device.store().remove_deletion(id) {
                    tracing::warn!(error = %e, doc = %id, "cannot forget a sent deletion");
                }
            }
            Err(e) => {
                tracing::info!(error = %e, doc = %id, "the server has not taken a deletion yet");
                break;
            }
        }
    }
    if let Err(e) = device.store().flush_async().await {
        tracing::warn!(error = %e, "cannot flush the local store");
    }
}
