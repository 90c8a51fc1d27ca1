//! What a client announces: task changes, sync status and auth status.
//!
//! Events go out on a tokio broadcast channel; each
//! [`Client::subscribe`](crate::Client::subscribe) gets its own
//! [`EventStream`]. A subscriber that falls more than
//! [`EVENT_BUFFER`] events behind gets [`ClientEvent::Lagged`] and should
//! re-read what it shows.

use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, UserId};
use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it misses some.
pub const EVENT_BUFFER: usize = 4096;

/// Where a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOrigin {
    /// On this device.
    Local,
    /// On another device (or through the REST API), received by sync.
    Remote,
}

/// Where the client stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SyncStatus {
    /// Not connected: sync is stopped, the server is unreachable, or no one
    /// is signed in. Local changes wait.
    Offline,
    /// Opening the connection.
    Connecting,
    /// Connected, exchanging changes for this many documents.
    Syncing {
        /// Documents whose exchange with the server is not finished.
        pending: usize,
    },
    /// Connected, and the server has everything this device has (and the
    /// other way round).
    UpToDate {
        /// When that was last established.
        last_sync: DateTime<Utc>,
    },
}

/// Whether someone is signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum AuthStatus {
    /// Signed in; tokens are kept in the token store.
    LoggedIn {
        /// The account.
        user_id: UserId,
    },
    /// Nobody is signed in: never, after a logout, or because the session
    /// ended elsewhere (the refresh token was refused).
    LoggedOut,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum ClientEvent {
    /// A task appeared in the list.
    TaskAdded {
        /// The task as it is now.
        task: TaskView,
        /// Where it was made.
        origin: ChangeOrigin,
    },
    /// A listed task changed.
    TaskChanged {
        /// The task as it is now.
        task: TaskView,
        /// Where the change was made.
        origin: ChangeOrigin,
    },
    /// A task left the list.
    TaskRemoved {
        /// Its id.
        id: DocumentId,
        /// Where it was removed.
        origin: ChangeOrigin,
    },
    /// The sync status changed.
    SyncStatus {
        /// The new status.
        status: SyncStatus,
    },
    /// The auth status changed.
    AuthStatus {
        /// The new status.
        status: AuthStatus,
    },
    /// This subscriber fell behind and missed events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// A subscription to a client's events.
///
/// ```no_run
/// # async fn example(client: codeedex_client_core::Client) {
/// let mut events = client.subscribe();
/// while let Some(event) = events.next().await {
///     println!("{event:?}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<ClientEvent>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<ClientEvent>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(ClientEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        match self.rx.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(ClientEvent::Lagged { missed })
            }
            Err(_) => None,
        }
    }
}
