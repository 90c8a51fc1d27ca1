//! The device: the state of one data directory that the [`crate::Client`]
//! handle and the sync engine both work on.
//!
//! It holds the local store, the replicas in memory, the sign-in tokens,
//! the event channel, the sync status and the set of documents changed
//! locally that the engine has not picked up yet. The handle changes tasks
//! and marks what it changed; the engine sends what was marked, saves what
//! it receives and reports its status. Both go through these methods, so
//! the rules that tie the parts together (a status announced only when it
//! changes, the time of the last sync recorded, a local change ending "up
//! to date") live here once.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use automerge::ActorId;
use codeedex_schema::api::auth::UserView;
use codeedex_schema::id::DocumentId;
use tokio::sync::{Notify, broadcast};

use crate::api::ApiClient;
use crate::auth::Authenticator;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::events::{AuthStatus, ClientEvent, EVENT_BUFFER, SyncStatus};
use crate::replicas::Replicas;
use crate::store::{LocalStore, meta_key};
use crate::token_store::TokenStore;

/// One device's data directory, open.
pub(crate) struct Device {
    config: ClientConfig,
    store: LocalStore,
    replicas: Mutex<Replicas>,
    auth: Authenticator,
    events: broadcast::Sender<ClientEvent>,
    status: Mutex<SyncStatus>,
    /// Documents changed locally since the engine last looked.
    changed: Mutex<BTreeSet<DocumentId>>,
    changed_notify: Notify,
    /// Wakes `sync::deletions` when a task is deleted here.
    deletions_notify: Notify,
    /// This process's peer id (fresh per process, as automerge-repo does).
    peer_id: String,
    /// This data directory's storage id.
    storage_id: String,
    /// Why the last connection attempt failed, if it did.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("config", &self.config)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the data directory of `config` (creating it if needed): the
    /// store, this device's actor and storage ids (made on first use), the
    /// stored documents, the root and the waiting tasks, and the tokens.
    pub(crate) fn open(config: ClientConfig) -> Result<Device, ClientError> {
        let store = LocalStore::open(&config.data_dir)?;
        let actor = match store.meta(meta_key::ACTOR)? {
            Some(bytes) if !bytes.is_empty() => ActorId::from(bytes),
            _ => {
                let bytes = random_bytes();
                store.put_meta(meta_key::ACTOR, &bytes)?;
                ActorId::from(bytes)
            }
        };
        let storage_id = match store.meta(meta_key::STORAGE_ID)? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| ClientError::Internal("corrupt storage id".into()))?,
            None => {
                let id = uuid_v4_string(random_bytes());
                store.put_meta(meta_key::STORAGE_ID, id.as_bytes())?;
                id
            }
        };
        let mut replicas = Replicas::new(actor);
        for (id, bytes) in store.documents()? {
            if let Err(e) = replicas.load(id, &bytes) {
                tracing::warn!(doc = %id, error = %e, "a stored document does not load; it will sync again");
            }
        }
        let root = store
            .meta(meta_key::ROOT)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<DocumentId>().ok());
        replicas.set_root(root);
        replicas.set_unlisted(store.unlisted()?);
        store.flush()?;
        let api = ApiClient::new(&config.server_url)?;
        let tokens = TokenStore::open(config.token_storage, &config.data_dir, &storage_id)
            .map_err(ClientError::TokenStore)?;
        let auth = Authenticator::new(api, tokens)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Device {
            config,
            store,
            replicas: Mutex::new(replicas),
            auth,
            events,
            status: Mutex::new(SyncStatus::Offline),
            changed: Mutex::new(BTreeSet::new()),
            changed_notify: Notify::new(),
            deletions_notify: Notify::new(),
            peer_id: format!("codeedex-{}", hex(&random_bytes()[..8])),
            storage_id,
            last_error: Mutex::new(None),
        })
    }

    /// The configuration the device was opened with.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The local store.
    pub(crate) fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The documents in memory, locked. Hold the guard only briefly and
    /// never across an await.
    pub(crate) fn replicas(&self) -> MutexGuard<'_, Replicas> {
        self.replicas.lock().expect("never poisoned")
    }

    /// Tokens and the REST client.
    pub(crate) fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// This process's peer id.
    pub(crate) fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// This data directory's storage id.
    pub(crate) fn storage_id(&self) -> &str {
        &self.storage_id
    }

    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Tells the subscribers, if any.
    pub(crate) fn emit(&self, event: ClientEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Sets the sync status, announcing it if it changed.
    pub(crate) fn set_status(&self, status: SyncStatus) {
        let mut current = self.status.lock().expect("never poisoned");
        if *current == status {
            return;
        }
        // Up to date stays up to date: only the first moment counts.
        if matches!(
            (*current, status),
            (SyncStatus::UpToDate { .. }, SyncStatus::UpToDate { .. })
        ) {
            return;
        }
        *current = status;
        drop(current);
        if let SyncStatus::UpToDate { last_sync } = status
            && let Err(e) = self.store.put_meta(
                meta_key::LAST_SYNC,
                &last_sync.timestamp_millis().to_be_bytes(),
            )
        {
            tracing::warn!(error = %e, "cannot record the time of the last sync");
        }
        self.emit(ClientEvent::SyncStatus { status });
    }

    /// The sync status right now.
    pub(crate) fn status(&self) -> SyncStatus {
        *self.status.lock().expect("never poisoned")
    }

    /// Why the last connection attempt failed, if the last one did.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("never poisoned").clone()
    }

    /// Records why the last connection attempt failed (`None`: it did not).
    pub(crate) fn set_last_error(&self, why: Option<String>) {
        *self.last_error.lock().expect("never poisoned") = why;
    }

    /// The session ended: tokens are gone; tell the app.
    pub(crate) fn logged_out(&self) {
        if let Err(e) = self.auth.forget() {
            tracing::warn!(error = %e, "cannot clear the token store");
        }
        self.emit(ClientEvent::AuthStatus {
            status: AuthStatus::LoggedOut,
        });
    }

    /// Marks documents changed on this device for the engine to send.
    pub(crate) fn changed_locally(&self, ids: &[DocumentId]) {
        let pending = {
            let mut changed = self.changed.lock().expect("never poisoned");
            changed.extend(ids.iter().copied());
            changed.len()
        };
        // Connected and up to date until now: not any more, until the
        // engine has sent the change and the server has it.
        if matches!(self.status(), SyncStatus::UpToDate { .. }) && pending > 0 {
            self.set_status(SyncStatus::Syncing { pending });
        }
        self.changed_notify.notify_one();
    }

    /// Waits until [`Device::changed_locally`] marks something.
    pub(crate) async fn local_change(&self) {
        self.changed_notify.notified().await;
    }

    /// Records a task deleted here, for `sync::deletions` to tell the server
    /// (not flushed; wake it with [`Device::deletions_recorded`] once it is).
    pub(crate) fn record_deletion(&self, id: DocumentId) -> Result<(), ClientError> {
        Ok(self.store.add_deletion(id)?)
    }

    /// Wakes `sync::deletions`: a deletion is recorded and durable.
    pub(crate) fn deletions_recorded(&self) {
        self.deletions_notify.notify_one();
    }

    /// Waits until [`Device::deletions_recorded`] is called.
    pub(crate) async fn deletion_recorded(&self) {
        self.deletions_notify.notified().await;
    }

    /// The documents marked since the last call, now unmarked.
    pub(crate) fn take_changed(&self) -> Vec<DocumentId> {
        std::mem::take(&mut *self.changed.lock().expect("never poisoned"))
            .into_iter()
            .collect()
    }

    /// How many documents are marked and not yet taken.
    pub(crate) fn changed_count(&self) -> usize {
        self.changed.lock().expect("never poisoned").len()
    }

    /// Saves documents from the replicas to the store (not flushed).
    pub(crate) fn save_documents(
        &self,
        replicas: &Replicas,
        ids: &[DocumentId],
    ) -> Result<(), ClientError> {
        for id in ids {
            if let Some(doc) = replicas.get(*id) {
                self.store.put_document(*id, &doc.save())?;
            }
        }
        Ok(())
    }

    /// The signed-in account as last seen.
    pub(crate) fn account(&self) -> Option<UserView> {
        self.store
            .meta(meta_key::ACCOUNT)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }
}

/// 16 bytes from the operating system's generator.
pub(crate) fn random_bytes() -> [u8; 16] {
    rand::random()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats 16 random bytes as a version 4 UUID string.
fn uuid_v4_string(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
