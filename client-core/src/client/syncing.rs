//! The handle's sync operations: start and stop the engine, sync once, and
//! the status of this device.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{Client, ClientStatus};
use crate::error::ClientError;
use crate::events::SyncStatus;
use crate::store::meta_key;
use crate::sync::engine;
use crate::sync::machine;

impl Client {
    /// The sync status right now.
    pub fn sync_status(&self) -> SyncStatus {
        self.device().status()
    }

    /// Why the last connection attempt failed, if the last one did.
    pub fn last_sync_error(&self) -> Option<String> {
        self.device().last_error()
    }

    /// Starts the sync engine on the current tokio runtime (no-op if it
    /// runs). It connects whenever someone is signed in and the server is
    /// reachable, and keeps going until [`Client::stop_sync`].
    pub async fn start_sync(&self) {
        let mut engine = self.inner.engine.lock().await;
        if engine.as_ref().is_some_and(|e| !e.is_finished()) {
            return;
        }
        *engine = Some(engine::start(Arc::clone(&self.inner.device)));
    }

    /// Stops the sync engine and waits for it to close its connection.
    pub async fn stop_sync(&self) {
        let engine = self.inner.engine.lock().await.take();
        if let Some(engine) = engine {
            engine.stop().await;
        }
        self.device().set_status(SyncStatus::Offline);
    }

    /// Syncs until up to date, for at most `timeout`; starts the engine if
    /// needed and stops it again if it was not running. Fails with
    /// [`ClientError::Offline`] when the server cannot be reached and
    /// [`ClientError::NotLoggedIn`] when nobody is signed in.
    pub async fn sync_once(&self, timeout: Duration) -> Result<DateTime<Utc>, ClientError> {
        if !self.device().auth().is_logged_in() {
            return Err(ClientError::NotLoggedIn);
        }
        let was_running = self
            .inner
            .engine
            .lock()
            .await
            .as_ref()
            .is_some_and(|e| !e.is_finished());
        let mut events = self.subscribe();
        self.start_sync().await;
        let outcome = tokio::time::timeout(timeout, async {
            let mut connecting_seen = false;
            loop {
                match self.sync_status() {
                    SyncStatus::UpToDate { last_sync } => return Ok(last_sync),
                    SyncStatus::Connecting | SyncStatus::Syncing { .. } => connecting_seen = true,
                    SyncStatus::Offline if connecting_seen => {
                        if !self.device().auth().is_logged_in() {
                            return Err(ClientError::SessionEnded);
                        }
                        let why = self
                            .last_sync_error()
                            .unwrap_or_else(|| "the connection failed".into());
                        return Err(ClientError::Offline(why));
                    }
                    SyncStatus::Offline => {}
                }
                if events.next().await.is_none() {
                    return Err(ClientError::Internal("the client closed".into()));
                }
            }
        })
        .await;
        if !was_running {
            self.stop_sync().await;
        }
        match outcome {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(format!(
                "not up to date after {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// A summary for a status line (no network).
    pub fn status(&self) -> ClientStatus {
        let device = self.device();
        let saved = device.store().sync_states().unwrap_or_default();
        let replicas = device.replicas();
        let tasks = replicas.tasks();
        let unsynced = machine::unsynced_documents(&replicas, &saved);
        drop(replicas);
        let last_sync = device
            .store()
            .meta(meta_key::LAST_SYNC)
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| Utc.timestamp_millis_opt(i64::from_be_bytes(b)).single());
        ClientStatus {
            server_url: device.config().server_url.clone(),
            data_dir: device.config().data_dir.display().to_string(),
            account: device.account(),
            logged_in: device.auth().is_logged_in(),
            token_storage: device.auth().storage_name().to_owned(),
            sync: device.status(),
            last_sync,
            unsynced_documents: unsynced,
            open_tasks: tasks.iter().filter(|t| !t.done).count(),
            tasks: tasks.len(),
        }
    }
}
