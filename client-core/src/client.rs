//! The public handle: [`Client`].
//!
//! A `Client` owns one data directory: the local store, the replicas in
//! memory, the tokens, and (once started) the sync engine. Task operations
//! are synchronous, work offline and return as soon as the change is
//! durable on this device; the engine sends it when it can. Account
//! operations talk to the server and are `async`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::ActorId;
use chrono::{DateTime, TimeZone, Utc};
use codeedex_schema::api::auth::{
    LogoutScope, OtpAccepted, OtpRequest, SessionView, UserView, VerifyRequest,
};
use codeedex_schema::api::tasks::{TaskHistory, TaskView, UpdateTask};
use codeedex_schema::id::{DocumentId, SessionId};
use codeedex_schema::problem::ErrorCode;
use codeedex_schema::task_document::{self, TaskPatch};
use tokio::sync::{Notify, broadcast};

use crate::api::ApiClient;
use crate::auth::Authenticator;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::events::{AuthStatus, ChangeOrigin, ClientEvent, EVENT_BUFFER, EventStream, SyncStatus};
use crate::replicas::Replicas;
use crate::store::{LocalStore, meta_key};
use crate::sync::engine::{self, EngineHandle};
use crate::sync::machine;
use crate::tasks::{NewTask, TaskFilter, display_order, patch_of};
use crate::token_store::TokenStore;

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

/// What the engine and the handle share.
pub(crate) struct Shared {
    pub config: ClientConfig,
    pub store: LocalStore,
    pub replicas: Mutex<Replicas>,
    pub auth: Authenticator,
    pub events: broadcast::Sender<ClientEvent>,
    pub status: Mutex<SyncStatus>,
    /// Documents changed locally since the engine last looked.
    pub dirty: Mutex<BTreeSet<DocumentId>>,
    pub dirty_notify: Notify,
    /// Wakes `sync::deletions` when a task is deleted here.
    pub deletions_made: Notify,
    /// This process's peer id (fresh per process, as automerge-repo does).
    pub peer_id: String,
    /// This data directory's storage id.
    pub storage_id: String,
    /// Why the last connection attempt failed, if it did.
    pub last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn emit(&self, event: ClientEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Sets the sync status, announcing it if it changed.
    pub fn set_status(&self, status: SyncStatus) {
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

    pub fn status(&self) -> SyncStatus {
        *self.status.lock().expect("never poisoned")
    }

    /// The session ended: tokens are gone; tell the app.
    pub fn logged_out(&self) {
        if let Err(e) = self.auth.forget() {
            tracing::warn!(error = %e, "cannot clear the token store");
        }
        self.emit(ClientEvent::AuthStatus {
            status: AuthStatus::LoggedOut,
        });
    }

    /// Marks documents for the engine to send.
    fn changed_locally(&self, ids: &[DocumentId]) {
        let pending = {
            let mut dirty = self.dirty.lock().expect("never poisoned");
            dirty.extend(ids.iter().copied());
            dirty.len()
        };
        // Connected and up to date until now: not any more, until the
        // engine has sent the change and the server has it.
        if matches!(self.status(), SyncStatus::UpToDate { .. }) && pending > 0 {
            self.set_status(SyncStatus::Syncing { pending });
        }
        self.dirty_notify.notify_one();
    }

    /// Saves documents from the replicas to the store (not flushed).
    pub fn save_documents(
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

    fn account(&self) -> Option<UserView> {
        self.store
            .meta(meta_key::ACCOUNT)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }
}

struct Inner {
    shared: Arc<Shared>,
    engine: tokio::sync::Mutex<Option<EngineHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.get_mut().take() {
            engine.signal_stop();
        }
        let _ = self.shared.store.flush();
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
            .field("data_dir", &self.inner.shared.config.data_dir)
            .finish_non_exhaustive()
    }
}

fn random_bytes() -> [u8; 16] {
    rand::random()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Client {
    /// Opens the client of a data directory (creating it if needed).
    ///
    /// Fails with [`ClientError::Storage`] when another process has the
    /// directory open.
    pub fn open(config: ClientConfig) -> Result<Client, ClientError> {
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
        let shared = Shared {
            config,
            store,
            replicas: Mutex::new(replicas),
            auth,
            events,
            status: Mutex::new(SyncStatus::Offline),
            dirty: Mutex::new(BTreeSet::new()),
            dirty_notify: Notify::new(),
            deletions_made: Notify::new(),
            peer_id: format!("codeedex-{}", hex(&random_bytes()[..8])),
            storage_id,
            last_error: Mutex::new(None),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                shared: Arc::new(shared),
                engine: tokio::sync::Mutex::new(None),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The configuration the client was opened with.
    pub fn config(&self) -> ClientConfig {
        self.shared().config.clone()
    }

    /// A new subscription to the client's events.
    pub fn subscribe(&self) -> EventStream {
        EventStream::new(self.shared().events.subscribe())
    }

    // ---- tasks (offline) ----

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    /// Applies a local change under the replicas lock, saves and flushes the
    /// documents it touched, and hands them to the engine.
    fn commit_local(
        &self,
        touched: &[DocumentId],
        replicas: &Replicas,
        unlisted_changed: bool,
    ) -> Result<(), ClientError> {
        let shared = self.shared();
        shared.save_documents(replicas, touched)?;
        if unlisted_changed {
            shared.store.put_unlisted(&replicas.unlisted())?;
        }
        shared.store.flush()?;
        shared.changed_locally(touched);
        Ok(())
    }

    /// Creates a task, offline. It is listed at once and sent when the
    /// engine is connected.
    pub fn create_task(&self, new: &NewTask) -> Result<TaskView, ClientError> {
        let task = new.validate(Self::now())?;
        let id = DocumentId::from_random_bytes(random_bytes());
        let mut replicas = self.shared().replicas.lock().expect("never poisoned");
        replicas
            .get_or_empty(id)
            .transact(|tx| task_document::write_new_task(tx, &task))
            .map_err(|f| f.error)?;
        let root_changed = replicas.list(id)?;
        let mut touched = vec![id];
        if root_changed {
            touched.extend(replicas.root());
        }
        self.commit_local(&touched, &replicas, !root_changed)?;
        let view = replicas
            .task(id)
            .ok_or_else(|| ClientError::Internal("a new task does not read back".into()))?;
        drop(replicas);
        self.shared().emit(ClientEvent::TaskAdded {
            task: view.clone(),
            origin: ChangeOrigin::Local,
        });
        Ok(view)
    }

    /// The listed tasks passing `filter`, open before done, by due date.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Vec<TaskView> {
        let mut tasks: Vec<TaskView> = self
            .shared()
            .replicas
            .lock()
            .expect("never poisoned")
            .tasks()
            .into_iter()
            .filter(|t| filter.matches(t))
            .collect();
        tasks.sort_by(display_order);
        tasks
    }

    /// One listed task.
    pub fn task(&self, id: DocumentId) -> Result<TaskView, ClientError> {
        let replicas = self.shared().replicas.lock().expect("never poisoned");
        if !replicas.is_listed(id) {
            return Err(ClientError::NotFound(id.to_string()));
        }
        replicas
            .task(id)
            .ok_or_else(|| ClientError::NotFound(id.to_string()))
    }

    /// The listed task whose id is `text` or starts with it.
    pub fn resolve_task_id(&self, text: &str) -> Result<DocumentId, ClientError> {
        let text = text.trim();
        let text = text.strip_prefix("automerge:").unwrap_or(text);
        if text.is_empty() {
            return Err(ClientError::InvalidInput(
                "a task id must not be empty".into(),
            ));
        }
        let replicas = self.shared().replicas.lock().expect("never poisoned");
        let listed: Vec<DocumentId> = replicas
            .listed()
            .into_iter()
            .filter(|id| replicas.has_content(*id))
            .collect();
        if let Ok(id) = text.parse::<DocumentId>()
            && listed.contains(&id)
        {
            return Ok(id);
        }
        let matches: Vec<DocumentId> = listed
            .into_iter()
            .filter(|id| id.to_string().starts_with(text))
            .collect();
        match matches.as_slice() {
            [] => Err(ClientError::NotFound(text.to_owned())),
            [one] => Ok(*one),
            many => Err(ClientError::AmbiguousId {
                prefix: text.to_owned(),
                count: many.len(),
            }),
        }
    }

    fn patch(&self, id: DocumentId, patch: &TaskPatch) -> Result<TaskView, ClientError> {
        let mut replicas = self.shared().replicas.lock().expect("never poisoned");
        if !replicas.is_listed(id) || replicas.task(id).is_none() {
            return Err(ClientError::NotFound(id.to_string()));
        }
        let before = replicas.task(id);
        if !patch.is_empty() {
            let now = Self::now();
            replicas
                .get_or_empty(id)
                .transact(|tx| task_document::apply_patch(tx, patch, now))
                .map_err(|f| f.error)?;
            self.commit_local(&[id], &replicas, false)?;
        }
        let view = replicas
            .task(id)
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        drop(replicas);
        if before.as_ref() != Some(&view) {
            self.shared().emit(ClientEvent::TaskChanged {
                task: view.clone(),
                origin: ChangeOrigin::Local,
            });
        }
        Ok(view)
    }

    /// Changes the fields named in `update` (the REST API's PATCH body).
    pub fn update_task(
        &self,
        id: DocumentId,
        update: &UpdateTask,
    ) -> Result<TaskView, ClientError> {
        let patch = patch_of(update)?;
        self.patch(id, &patch)
    }

    /// Marks a task done.
    pub fn complete_task(&self, id: DocumentId) -> Result<TaskView, ClientError> {
        self.patch(
            id,
            &TaskPatch {
                done: Some(true),
                ..TaskPatch::default()
            },
        )
    }

    /// Marks a task not done.
    pub fn reopen_task(&self, id: DocumentId) -> Result<TaskView, ClientError> {
        self.patch(
            id,
            &TaskPatch {
                done: Some(false),
                ..TaskPatch::default()
            },
        )
    }

    /// Deletes a task, offline: it leaves the list (the root document) at
    /// once, and while sync runs the server is told to delete its document
    /// too (`DELETE /v1/tasks/{id}`, as soon as it can be reached), so that
    /// the REST API stops listing it.
    pub fn delete_task(&self, id: DocumentId) -> Result<(), ClientError> {
        let mut replicas = self.shared().replicas.lock().expect("never poisoned");
        if !replicas.is_listed(id) {
            return Err(ClientError::NotFound(id.to_string()));
        }
        let root_changed = replicas.unlist(id)?;
        let touched: Vec<DocumentId> = if root_changed {
            replicas.root().into_iter().collect()
        } else {
            Vec::new()
        };
        self.shared().store.add_deletion(id)?;
        self.commit_local(&touched, &replicas, !root_changed)?;
        drop(replicas);
        self.shared().deletions_made.notify_one();
        self.shared().emit(ClientEvent::TaskRemoved {
            id,
            origin: ChangeOrigin::Local,
        });
        Ok(())
    }

    // ---- account ----

    /// The signed-in account as last seen (no network).
    pub fn account(&self) -> Option<UserView> {
        self.shared().account()
    }

    /// Whether someone is signed in on this device.
    pub fn auth_status(&self) -> AuthStatus {
        match (self.shared().auth.is_logged_in(), self.account()) {
            (true, Some(account)) => AuthStatus::LoggedIn {
                user_id: account.id,
            },
            _ => AuthStatus::LoggedOut,
        }
    }

    /// Asks the server to send a sign-in code.
    pub async fn request_code(
        &self,
        identifier: &SignInIdentifier,
    ) -> Result<OtpAccepted, ClientError> {
        let (email, phone) = identifier.parts();
        self.shared()
            .auth
            .api()
            .request_code(&OtpRequest { email, phone })
            .await
    }

    /// Signs in with a code: keeps the tokens, learns the account and its
    /// root document. A data directory belongs to one account: signing in
    /// as another fails with [`ClientError::OtherAccount`].
    pub async fn verify_code(
        &self,
        identifier: &SignInIdentifier,
        code: &str,
    ) -> Result<UserView, ClientError> {
        let (email, phone) = identifier.parts();
        let shared = self.shared();
        let body = VerifyRequest {
            email,
            phone,
            code: code.trim().to_owned(),
            device_name: shared.config.device_name.clone(),
        };
        let signed_in = shared.auth.api().verify(&body).await?;
        if let Some(previous) = shared.account()
            && previous.id != signed_in.user.id
        {
            let _ = shared
                .auth
                .api()
                .logout(&signed_in.tokens.access_token, LogoutScope::This)
                .await;
            let who = previous
                .email
                .or(previous.phone)
                .unwrap_or_else(|| previous.id.to_string());
            return Err(ClientError::OtherAccount(who));
        }
        shared.auth.store_pair(&signed_in.tokens)?;
        let me = self.refresh_account().await?;
        shared.emit(ClientEvent::AuthStatus {
            status: AuthStatus::LoggedIn { user_id: me.id },
        });
        Ok(me)
    }

    /// An access token, refreshed if needed; a refused refresh signs out.
    async fn access_token(&self) -> Result<String, ClientError> {
        let shared = self.shared();
        match shared.auth.access_token(Self::now()).await {
            Err(ClientError::SessionEnded) => {
                shared.logged_out();
                Err(ClientError::SessionEnded)
            }
            other => other,
        }
    }

    /// Runs an authorised call; an expired or refused token is refreshed
    /// once and the call repeated.
    async fn authorized<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(ApiClient, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let shared = self.shared();
        let token = self.access_token().await?;
        match call(shared.auth.api().clone(), token.clone()).await {
            Err(ClientError::Server {
                status: 401,
                code: Some(ErrorCode::TokenExpired) | Some(ErrorCode::Unauthorized) | None,
                ..
            }) => {
                let token = match shared.auth.refresh(Some(&token)).await {
                    Err(ClientError::SessionEnded) => {
                        shared.logged_out();
                        return Err(ClientError::SessionEnded);
                    }
                    other => other?,
                };
                call(shared.auth.api().clone(), token).await
            }
            other => other,
        }
    }

    /// Fetches the account from the server (`GET /v1/me`) and remembers it
    /// and its root document.
    pub async fn refresh_account(&self) -> Result<UserView, ClientError> {
        let me = self
            .authorized(|api, token| async move { api.me(&token).await })
            .await?;
        let shared = self.shared();
        shared.store.put_meta(
            meta_key::ACCOUNT,
            &serde_json::to_vec(&me).expect("serialisable"),
        )?;
        if let Some(root) = me.root_document_id {
            shared
                .store
                .put_meta(meta_key::ROOT, root.to_string().as_bytes())?;
            shared
                .replicas
                .lock()
                .expect("never poisoned")
                .set_root(Some(root));
        }
        shared.store.flush()?;
        Ok(me)
    }

    /// The account's signed-in devices.
    pub async fn sessions(&self) -> Result<Vec<SessionView>, ClientError> {
        Ok(self
            .authorized(|api, token| async move { api.sessions(&token).await })
            .await?
            .sessions)
    }

    /// Ends one of the account's sessions (signs that device out). Revoking
    /// this device's own session signs it out here too, as
    /// [`Client::logout`] does.
    pub async fn revoke_session(&self, id: SessionId) -> Result<(), ClientError> {
        let current = self
            .sessions()
            .await?
            .into_iter()
            .any(|s| s.id == id && s.current);
        self.authorized(|api, token| async move { api.revoke_session(&token, id).await })
            .await?;
        if current {
            self.stop_sync().await;
            self.shared().logged_out();
        }
        Ok(())
    }

    /// Ends sessions: this one, the others, or all. Ending this one (or all)
    /// forgets the tokens here even when the server cannot be told; the
    /// local tasks stay. Returns how many sessions the server ended.
    pub async fn logout(&self, scope: LogoutScope) -> Result<usize, ClientError> {
        let result = self
            .authorized(|api, token| async move { api.logout(&token, scope).await })
            .await;
        if scope != LogoutScope::Others {
            self.stop_sync().await;
            self.shared().logged_out();
        }
        result.map(|r| r.sessions_ended)
    }

    /// A task's change history, from the server (`GET /v1/tasks/{id}/history`).
    pub async fn task_history(&self, id: DocumentId) -> Result<TaskHistory, ClientError> {
        self.authorized(|api, token| async move { api.history(&token, id).await })
            .await
    }

    // ---- sync ----

    /// The sync status right now.
    pub fn sync_status(&self) -> SyncStatus {
        self.shared().status()
    }

    /// Why the last connection attempt failed, if the last one did.
    pub fn last_sync_error(&self) -> Option<String> {
        self.shared()
            .last_error
            .lock()
            .expect("never poisoned")
            .clone()
    }

    /// Starts the sync engine on the current tokio runtime (no-op if it
    /// runs). It connects whenever someone is signed in and the server is
    /// reachable, and keeps going until [`Client::stop_sync`].
    pub async fn start_sync(&self) {
        let mut engine = self.inner.engine.lock().await;
        if engine.as_ref().is_some_and(|e| !e.is_finished()) {
            return;
        }
        *engine = Some(engine::start(Arc::clone(&self.inner.shared)));
    }

    /// Stops the sync engine and waits for it to close its connection.
    pub async fn stop_sync(&self) {
        let engine = self.inner.engine.lock().await.take();
        if let Some(engine) = engine {
            engine.stop().await;
        }
        self.shared().set_status(SyncStatus::Offline);
    }

    /// Syncs until up to date, for at most `timeout`; starts the engine if
    /// needed and stops it again if it was not running. Fails with
    /// [`ClientError::Offline`] when the server cannot be reached and
    /// [`ClientError::NotLoggedIn`] when nobody is signed in.
    pub async fn sync_once(&self, timeout: Duration) -> Result<DateTime<Utc>, ClientError> {
        if !self.shared().auth.is_logged_in() {
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
                        if !self.shared().auth.is_logged_in() {
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
        let shared = self.shared();
        let saved = shared.store.sync_states().unwrap_or_default();
        let replicas = shared.replicas.lock().expect("never poisoned");
        let tasks = replicas.tasks();
        let unsynced = machine::unsynced_documents(&replicas, &saved);
        drop(replicas);
        let last_sync = shared
            .store
            .meta(meta_key::LAST_SYNC)
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| Utc.timestamp_millis_opt(i64::from_be_bytes(b)).single());
        ClientStatus {
            server_url: shared.config.server_url.clone(),
            data_dir: shared.config.data_dir.display().to_string(),
            account: shared.account(),
            logged_in: shared.auth.is_logged_in(),
            token_storage: shared.auth.storage_name().to_owned(),
            sync: shared.status(),
            last_sync,
            unsynced_documents: unsynced,
            open_tasks: tasks.iter().filter(|t| !t.done).count(),
            tasks: tasks.len(),
        }
    }
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

#[cfg(test)]
mod tests;
