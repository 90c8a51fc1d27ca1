//! The public handle: [`Client`].
//!
//! A `Client` owns one data directory (a [`Device`]): the local store, the
//! replicas in memory, the tokens, and (once started) the sync engine. Task
//! operations (`client/tasks.rs`) are synchronous, work offline and return
//! as soon as the change is durable on this device; the engine sends it
//! when it can. Account operations (`client/account.rs`) talk to the server
//! and are `async`; `client/syncing.rs` starts, stops and reports sync.

mod account;
mod syncing;
mod tasks;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use codeedex_schema::api::auth::UserView;

use crate::config::ClientConfig;
use crate::device::Device;
use crate::error::ClientError;
use crate::events::{EventStream, SyncStatus};
use crate::sync::engine::EngineHandle;

/// How a user signs in: the email address or phone number a code goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInIdentifier {
    /// An email address.
    Email(String),
    /// A phone number in international format (`+14155552671`).
    Phone(String),
}

impl SignInIdentifier {
    fn parts(&self) -> (Option<String>, Option<String>) {
        match self {
            SignInIdentifier::Email(e) => (Some(e.clone()), None),
            SignInIdentifier::Phone(p) => (None, Some(p.clone())),
        }
    }
}

/// A summary of the device's state, for a status line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientStatus {
    /// The server URL.
    pub server_url: String,
    /// The data directory.
    pub data_dir: String,
    /// The signed-in account, if any.
    pub account: Option<UserView>,
    /// Whether tokens are held.
    pub logged_in: bool,
    /// Where tokens are kept (`keyring` or `file`).
    pub token_storage: String,
    /// The sync status right now.
    pub sync: SyncStatus,
    /// When the device was last up to date with the server.
    pub last_sync: Option<DateTime<Utc>>,
    /// Documents with changes the server is not known to have.
    pub unsynced_documents: usize,
    /// Tasks in the list (open and done).
    pub tasks: usize,
    /// Open tasks.
    pub open_tasks: usize,
}

struct Inner {
    device: Arc<Device>,
    engine: tokio::sync::Mutex<Option<EngineHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.get_mut().take() {
            engine.signal_stop();
        }
        let _ = self.device.store().flush();
    }
}

/// The client of one device: tasks offline, sign-in, and sync.
///
/// Cloning is cheap and every clone is the same client. Task operations need
/// no runtime; the async ones (account, sync) run on tokio.
///
/// ```no_run
/// use codeedex_client_core::{Client, ClientConfig, NewTask, TaskFilter};
/// # fn main() -> Result<(), codeedex_client_core::ClientError> {
/// let client = Client::open(ClientConfig::new("/tmp/codeedex-device-a", "http://127.0.0.1:8080"))?;
/// let task = client.create_task(&NewTask::titled("buy milk"))?;
/// client.complete_task(task.id)?;
/// assert!(client.list_tasks(&TaskFilter::default()).is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("data_dir", &self.inner.device.config().data_dir)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens the client of a data directory (creating it if needed).
    ///
    /// Fails with [`ClientError::Storage`] when another process has the
    /// directory open.
    pub fn open(config: ClientConfig) -> Result<Client, ClientError> {
        let device = Device::open(config)?;
        Ok(Client {
            inner: Arc::new(Inner {
                device: Arc::new(device),
                engine: tokio::sync::Mutex::new(None),
            }),
        })
    }

    fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The configuration the client was opened with.
    pub fn config(&self) -> ClientConfig {
        self.device().config().clone()
    }

    /// A new subscription to the client's events.
    pub fn subscribe(&self) -> EventStream {
        EventStream::new(self.device().subscribe())
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }
}

#[cfg(test)]
mod tests;
