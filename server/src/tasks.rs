//! Tasks: the service behind `/v1/tasks`, as [`crate::auth::Auth`] is the
//! one behind sign-in. It creates, reads, changes, deletes, lists and
//! explains the history of a user's task documents; the HTTP layer only
//! translates requests into these calls and their results into responses.
//!
//! Writes become Automerge changes made by the server's actor through the
//! document hub, so they are recorded in the event log and pushed to
//! connected devices at once; reads reflect every change accepted over sync.
//! Deleting a task removes it from the user's root document and tombstones
//! it: the hub then answers `doc-unavailable` for it and refuses its
//! changes, so a device syncing old state cannot bring it back.
//!
//! Every operation takes the caller's user; a document that is not theirs
//! is answered exactly like one that does not exist.

mod history;
mod query;

use std::sync::Arc;

use automerge::transaction::Transaction;
use chrono::{DateTime, Utc};
use codeedex_schema::api::tasks::{TaskHistory, TaskPage, TaskView};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::task::Task;
use codeedex_schema::task_document::{self, TaskDocumentError, TaskPatch};

use crate::auth::keys::random_bytes;
use crate::store::{QuotaExceeded, Store, StoreError};
use crate::sync::hub::{Author, DocumentHub, HubError, IfUnseen, LiveDocument};

pub(crate) use query::{PageLimit, TaskQuery};

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TasksError {
    /// No such task for this user (or not a task, or deleted): one answer,
    /// so that nobody can learn which.
    #[error("no such task")]
    NotFound,
    /// The user's or the document's quota does not allow the write.
    #[error(transparent)]
    Quota(QuotaExceeded),
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] StoreError),
    /// The hub failed otherwise (boxed: hub errors are large, and this is
    /// the rare path).
    #[error("the document hub failed")]
    Hub(#[source] Box<HubError>),
    /// A stored change of the task could not be replayed for its history.
    #[error("a stored change could not be replayed")]
    Replay(#[source] automerge::AutomergeError),
    /// A freshly drawn random document id was already taken.
    #[error("a fresh document id was taken")]
    FreshIdTaken,
}

impl From<HubError> for TasksError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Task(_) | HubError::Deleted => TasksError::NotFound,
            HubError::Quota(exceeded) => TasksError::Quota(exceeded),
            HubError::FreshIdTaken => TasksError::FreshIdTaken,
            other => TasksError::Hub(Box::new(other)),
        }
    }
}

/// Who asks: the user, and the session (device) the request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requester {
    /// The user.
    pub(crate) user: UserId,
    /// The session whose token the request carried.
    pub(crate) session: SessionId,
}

impl Requester {
    fn author(self) -> Author {
        Author {
            user: self.user,
            session: Some(self.session),
        }
    }
}

/// The task service.
#[derive(Debug)]
pub(crate) struct Tasks {
    hub: Arc<DocumentHub>,
    store: Store,
}

impl Tasks {
    /// Tasks kept by this hub over this store (the hub's own).
    pub(crate) fn new(hub: Arc<DocumentHub>, store: Store) -> Self {
        Self { hub, store }
    }

    /// The user's root document (the list of their tasks), created on first
    /// use with a fresh id.
    pub(crate) async fn root_document(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<DocumentId, TasksError> {
        let fresh = DocumentId::from_random_bytes(random_bytes());
        Ok(self.hub.ensure_root(user, fresh, now).await?)
    }

    /// Creates a task document and lists it in the user's root document.
    pub(crate) async fn create(
        &self,
        who: Requester,
        task: &Task,
        now: DateTime<Utc>,
    ) -> Result<TaskView, TasksError> {
        let root = self.root_document(who.user, now).await?;
        let id = DocumentId::from_random_bytes(random_bytes());
        let live = self
            .open(who.user, id, IfUnseen::Claim, now)
            .await?
            .ok_or(TasksError::FreshIdTaken)?;
        self.hub
            .change(&live, who.author(), now, |tx| {
                task_document::write_new_task(tx, task)
            })
            .await?;
        self.change_root(who, root, now, |tx| task_document::add_to_root(tx, id))
            .await?;
        Ok(TaskView::new(id, task))
    }

    /// One of the user's tasks.
    pub(crate) async fn get(
        &self,
        user: UserId,
        id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<TaskView, TasksError> {
        let live = self.open_task(user, id, now).await?;
        self.view(&live).await
    }

    /// Changes the named fields of a task (nothing when the patch is empty)
    /// and returns the task as it is then.
    pub(crate) async fn update(
        &self,
        who: Requester,
        id: DocumentId,
        patch: &TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<TaskView, TasksError> {
        let live = self.open_task(who.user, id, now).await?;
        if !patch.is_empty() {
            self.hub
                .change(&live, who.author(), now, |tx| {
                    task_document::apply_patch(tx, patch, now)
                })
                .await?;
        }
        self.view(&live).await
    }

    /// Deletes a task: it leaves the root document and is tombstoned, and
    /// both are durable before this returns.
    pub(crate) async fn delete(
        &self,
        who: Requester,
        id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<(), TasksError> {
        let live = self.open_task(who.user, id, now).await?;
        self.view(&live).await?;
        drop(live);
        let root = self.root_document(who.user, now).await?;
        self.change_root(who, root, now, |tx| task_document::remove_from_root(tx, id))
            .await?;
        self.hub.tombstone(id, now).await?;
        self.store.persist().await?;
        Ok(())
    }

    /// One page of the user's tasks that pass the query, ordered by id, from
    /// the task index (no document is loaded).
    pub(crate) async fn list(
        &self,
        user: UserId,
        query: &TaskQuery,
    ) -> Result<TaskPage, TasksError> {
        let summaries = self.store.task_summaries(user).await?;
        // The index never takes the root, but one written before that rule
        // may still hold it.
        let root = self.root_of(user).await?;
        let candidates = summaries
            .into_iter()
            .filter(|(id, _)| Some(*id) != root)
            .map(|(_, task)| task);
        Ok(query.page(candidates))
    }

    /// Who changed what, when: rebuilt from the event log.
    pub(crate) async fn history(
        &self,
        user: UserId,
        id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<TaskHistory, TasksError> {
        // Opening proves ownership; the history itself comes from the log.
        self.open_task(user, id, now).await?;
        let events = self.store.events_of(id).await?;
        history::replay(events).map_err(TasksError::Replay)
    }

    /// Changes the user's root document `root` (the list of their tasks).
    async fn change_root(
        &self,
        who: Requester,
        root: DocumentId,
        now: DateTime<Utc>,
        edit: impl FnOnce(&mut Transaction<'_>) -> Result<(), TaskDocumentError>,
    ) -> Result<(), TasksError> {
        let root = self
            .open(who.user, root, IfUnseen::Refuse, now)
            .await?
            .ok_or(TasksError::NotFound)?;
        self.hub.change(&root, who.author(), now, edit).await?;
        Ok(())
    }

    /// The document if it is the user's; `None` when it is unknown, someone
    /// else's or deleted.
    async fn open(
        &self,
        user: UserId,
        id: DocumentId,
        if_unseen: IfUnseen,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<LiveDocument>>, TasksError> {
        Ok(self.hub.open(id, user, if_unseen, now).await?)
    }

    /// The user's root document, if it was made yet.
    async fn root_of(&self, user: UserId) -> Result<Option<DocumentId>, TasksError> {
        Ok(self
            .store
            .user(user)
            .await?
            .and_then(|u| u.root_document_id))
    }

    /// Opens one of the user's tasks. The root document is never a task,
    /// whatever a device wrote into it: it is answered like any other
    /// document that is not one, so that it can be neither patched nor
    /// deleted here.
    async fn open_task(
        &self,
        user: UserId,
        id: DocumentId,
        now: DateTime<Utc>,
    ) -> Result<Arc<LiveDocument>, TasksError> {
        if self.root_of(user).await? == Some(id) {
            return Err(TasksError::NotFound);
        }
        self.open(user, id, IfUnseen::Refuse, now)
            .await?
            .ok_or(TasksError::NotFound)
    }

    /// The task as it is in the document; a document that is not a task is
    /// not found.
    async fn view(&self, live: &LiveDocument) -> Result<TaskView, TasksError> {
        let task = self
            .hub
            .read(live, task_document::read_task)
            .await?
            .map_err(|_| TasksError::NotFound)?;
        Ok(TaskView::new(live.id, &task))
    }
}
