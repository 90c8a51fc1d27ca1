//! The REST task API's bodies.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::id::{DocumentId, SessionId, UserId};
use crate::task::{Notes, Priority, Tag, Tags, Task, TaskError, Title};
use crate::task_document::TaskPatch;

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// The task's document id (also its automerge-repo id).
    pub id: DocumentId,
    /// What to do.
    pub title: String,
    /// Details.
    pub notes: String,
    /// Whether it is done.
    pub done: bool,
    /// The day it is due.
    #[schema(value_type = Option<String>, format = Date)]
    pub due: Option<NaiveDate>,
    /// none, low, medium or high.
    pub priority: String,
    /// Labels.
    pub tags: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was completed, if done.
    pub completed_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// The view of a task read from its document.
    pub fn new(id: DocumentId, task: &Task) -> Self {
        Self {
            id,
            title: task.title.as_str().to_owned(),
            notes: task.notes.as_str().to_owned(),
            done: task.done,
            due: task.due,
            priority: task.priority.as_str().to_owned(),
            tags: task.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            completed_at: task.completed_at,
        }
    }
}

/// `GET /v1/tasks`: one page of tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    /// The tasks, ordered by id.
    pub tasks: Vec<TaskView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<DocumentId>,
}

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What to do: 1 to 200 characters.
    pub title: String,
    /// Details, up to 20,000 characters.
    #[serde(default)]
    pub notes: Option<String>,
    /// The day it is due (YYYY-MM-DD).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub due: Option<NaiveDate>,
    /// none, low, medium or high.
    #[serde(default)]
    pub priority: Option<String>,
    /// Up to 20 tags of a-z, 0-9, '-', '_'.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl CreateTask {
    /// The task this body describes, created at `now`: every field parsed
    /// into its checked type, or the first field that is wrong.
    pub fn to_task(&self, now: DateTime<Utc>) -> Result<Task, TaskError> {
        let tags = self
            .tags
            .iter()
            .flatten()
            .map(|t| Tag::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Task {
            title: Title::parse(&self.title)?,
            notes: Notes::parse(self.notes.as_deref().unwrap_or(""))?,
            done: false,
            due: self.due,
            priority: self
                .priority
                .as_deref()
                .map(Priority::parse)
                .transpose()?
                .unwrap_or_default(),
            tags: Tags::new(tags)?,
            created_at: now,
            updated_at: now,
            completed_at: None,
        })
    }
}

/// `PATCH /v1/tasks/{id}`: fields to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    /// New title.
    #[serde(default)]
    pub title: Option<String>,
    /// New notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// Done or not.
    #[serde(default)]
    pub done: Option<bool>,
    /// New due date; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub due: Option<Option<NaiveDate>>,
    /// New priority.
    #[serde(default)]
    pub priority: Option<String>,
    /// New tag set (replaces the old one).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<NaiveDate>>, D::Error> {
    Option::<NaiveDate>::deserialize(d).map(Some)
}

impl UpdateTask {
    /// The validated patch.
    pub fn to_patch(&self) -> Result<TaskPatch, TaskError> {
        use crate::task::{Notes, Priority, Tag, Tags, Title};
        Ok(TaskPatch {
            title: self.title.as_deref().map(Title::parse).transpose()?,
            notes: self.notes.as_deref().map(Notes::parse).transpose()?,
            done: self.done,
            due: self.due,
            priority: self.priority.as_deref().map(Priority::parse).transpose()?,
            tags: self
                .tags
                .as_ref()
                .map(|tags| {
                    tags.iter()
                        .map(|t| Tag::parse(t))
                        .collect::<Result<Vec<_>, _>>()
                        .and_then(Tags::new)
                })
                .transpose()?,
        })
    }
}

/// One entry of a task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// Position in the task's change log.
    pub seq: u64,
    /// When the server accepted the change.
    pub at: DateTime<Utc>,
    /// Who made it.
    pub user_id: UserId,
    /// From which session (device), if known.
    pub session_id: Option<SessionId>,
    /// The task fields the change touched.
    pub fields: Vec<String>,
}

/// `GET /v1/tasks/{id}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskHistory {
    /// Oldest first.
    pub entries: Vec<HistoryEntry>,
}
