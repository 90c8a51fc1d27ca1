//! The handle's task operations: offline, on the replicas and the local
//! store, each change handed to the sync engine once it is durable here.

use codeedex_schema::api::tasks::{TaskView, UpdateTask};
use codeedex_schema::id::DocumentId;
use codeedex_schema::task_document::{self, TaskPatch};

use super::Client;
use crate::device::random_bytes;
use crate::error::ClientError;
use crate::events::{ChangeOrigin, ClientEvent};
use crate::replicas::Replicas;
use crate::tasks::{NewTask, TaskFilter, display_order, patch_of};

/// Whether a local change touched the list of tasks waiting for the root
/// document (tasks created or removed before this device knew its root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitingList {
    Changed,
    Unchanged,
}

impl WaitingList {
    /// Listing or unlisting a task changes the root document when there is
    /// one, and the waiting list when there is none yet.
    fn after(root_changed: bool) -> Self {
        if root_changed {
            WaitingList::Unchanged
        } else {
            WaitingList::Changed
        }
    }
}

impl Client {
    /// Applies a local change under the replicas lock, saves and flushes the
    /// documents it touched (and the list of tasks waiting for the root
    /// document, when `waiting` says it changed), and hands them to the
    /// engine.
    fn commit_local(
        &self,
        touched: &[DocumentId],
        replicas: &Replicas,
        waiting: WaitingList,
    ) -> Result<(), ClientError> {
        let device = self.device();
        device.save_documents(replicas, touched)?;
        if waiting == WaitingList::Changed {
            device.store().put_unlisted(&replicas.unlisted())?;
        }
        device.store().flush()?;
        device.changed_locally(touched);
        Ok(())
    }

    /// Creates a task, offline. It is listed at once and sent when the
    /// engine is connected.
    pub fn create_task(&self, new: &NewTask) -> Result<TaskView, ClientError> {
        let task = new.validate(Self::now())?;
        let id = DocumentId::from_random_bytes(random_bytes());
        let mut replicas = self.device().replicas();
        replicas
            .get_or_empty(id)
            .transact(|tx| task_document::write_new_task(tx, &task))
            .map_err(|f| f.error)?;
        let root_changed = replicas.list(id)?;
        let mut touched = vec![id];
        if root_changed {
            touched.extend(replicas.root());
        }
        self.commit_local(&touched, &replicas, WaitingList::after(root_changed))?;
        let view = replicas
            .task(id)
            .ok_or_else(|| ClientError::Internal("a new task does not read back".into()))?;
        drop(replicas);
        self.device().emit(ClientEvent::TaskAdded {
            task: view.clone(),
            origin: ChangeOrigin::Local,
        });
        Ok(view)
    }

    /// The listed tasks passing `filter`, open before done, by due date.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Vec<TaskView> {
        let mut tasks: Vec<TaskView> = self
            .device()
            .replicas()
            .tasks()
            .into_iter()
            .filter(|t| filter.matches(t))
            .collect();
        tasks.sort_by(display_order);
        tasks
    }

    /// One listed task.
    pub fn task(&self, id: DocumentId) -> Result<TaskView, ClientError> {
        let replicas = self.device().replicas();
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
        let replicas = self.device().replicas();
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
        let mut replicas = self.device().replicas();
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
            self.commit_local(&[id], &replicas, WaitingList::Unchanged)?;
        }
        let view = replicas
            .task(id)
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        drop(replicas);
        if before.as_ref() != Some(&view) {
            self.device().emit(ClientEvent::TaskChanged {
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
        let mut replicas = self.device().replicas();
        if !replicas.is_listed(id) {
            return Err(ClientError::NotFound(id.to_string()));
        }
        let root_changed = replicas.unlist(id)?;
        let touched: Vec<DocumentId> = if root_changed {
            replicas.root().into_iter().collect()
        } else {
            Vec::new()
        };
        self.device().record_deletion(id)?;
        self.commit_local(&touched, &replicas, WaitingList::after(root_changed))?;
        drop(replicas);
        self.device().deletions_recorded();
        self.device().emit(ClientEvent::TaskRemoved {
            id,
            origin: ChangeOrigin::Local,
        });
        Ok(())
    }
}
