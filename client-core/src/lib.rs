//! The offline-first CodeeDex client: tasks on this device, in sync with
//! the server whenever it is reachable.
//!
//! Every front end (the `codeedex` command line in `cli/` now; desktop, web
//! and mobile later) uses one [`Client`] per device and data directory:
//!
//! - **Tasks** ([`Client::create_task`], [`Client::list_tasks`],
//!   [`Client::update_task`], [`Client::complete_task`],
//!   [`Client::reopen_task`], [`Client::delete_task`]) work on local
//!   Automerge documents kept in a local store and return at once, online or
//!   not.
//! - **Account** ([`Client::request_code`], [`Client::verify_code`],
//!   [`Client::refresh_account`], [`Client::sessions`], [`Client::logout`]):
//!   sign-in with a one-time code; tokens in the OS keyring or a 0600 file,
//!   refreshed before they expire.
//! - **Sync** ([`Client::start_sync`], [`Client::sync_once`]): the
//!   automerge-repo protocol over a WebSocket, with the server's extensions
//!   (token refresh in place, catch-up cursor); reconnects with backoff.
//! - **Events** ([`Client::subscribe`]): tasks added, changed and removed,
//!   sync status, auth status.
//!
//! The public API has no generic parameters and no borrowed return types, so
//! that a C or Dart binding can wrap it.
//!
//! ```no_run
//! use std::time::Duration;
//! use codeedex_client_core::{Client, ClientConfig, NewTask, SignInIdentifier, TaskFilter};
//!
//! # async fn example() -> Result<(), codeedex_client_core::ClientError> {
//! let client = Client::open(ClientConfig::new("/tmp/codeedex-a", "http://127.0.0.1:8080"))?;
//! let me = SignInIdentifier::Email("ann@example.com".into());
//! client.request_code(&me).await?;
//! client.verify_code(&me, "123456").await?;
//! client.create_task(&NewTask::titled("water the plants"))?;
//! client.sync_once(Duration::from_secs(10)).await?;
//! for task in client.list_tasks(&TaskFilter::default()) {
//!     println!("{} {}", task.id, task.title);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//! `client` (the handle), `device` (the state of one data directory that
//! the handle and the sync engine share), `tasks` (inputs and filters), `replicas` (the
//! documents in memory), `store` (the only module that names sled),
//! `sync` (the pure protocol machine, backoff, and its async driver),
//! `transport` (the only module that names tungstenite), `api` (REST),
//! `auth` (token refresh), `token_store` (keyring or file), `events`,
//! `config` and `error`. The `codeedex` command line is a crate of its own
//! (`cli/`), so this library depends on no CLI machinery.

#![warn(missing_docs)]

mod api;
mod auth;
mod client;
mod config;
mod device;
mod error;
mod events;
mod replicas;
mod store;
mod sync;
mod tasks;
mod token_store;
mod transport;

/// The pure sync protocol machine and the replicas it works on, exposed only
/// for the fuzz targets in `fuzz/` and the simulation in `tests/` (feature
/// `fuzzing`): not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::replicas::Replicas;
    pub use crate::sync::machine::{Effect, SyncMachine, unsynced_documents};
}

pub use client::{Client, ClientStatus, SignInIdentifier};
pub use codeedex_schema::api::auth::{LogoutScope, OtpAccepted, SessionView, UserView};
pub use codeedex_schema::api::tasks::{HistoryEntry, TaskHistory, TaskView, UpdateTask};
pub use codeedex_schema::id::{DocumentId, SessionId, UserId};
pub use codeedex_schema::problem::ErrorCode;
pub use config::{ClientConfig, TokenStorage};
pub use error::ClientError;
pub use events::{AuthStatus, ChangeOrigin, ClientEvent, EventStream, SyncStatus};
pub use store::StoreError;
pub use tasks::{NewTask, StatusFilter, TaskFilter};
