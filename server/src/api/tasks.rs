//! `/v1/tasks`: the REST view of the same task documents devices sync.
//!
//! Writes become Automerge changes made by the server's actor, recorded in
//! the event log and pushed to connected devices at once; reads reflect every
//! change accepted over sync. Deleting a task removes it from the user's root
//! document and tombstones it: the server then answers `doc-unavailable` for
//! it and refuses its changes, so a device syncing old state cannot bring it
//! back.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use automerge::ROOT;
use chrono::{NaiveDate, Utc};
use codeedex_schema::api::tasks::{
    CreateTask, HistoryEntry, TaskHistory, TaskPage, TaskView, UpdateTask,
};
use codeedex_schema::id::{DocumentId, UserId};
use codeedex_schema::problem::{ErrorCode, Problem};
use codeedex_schema::task::{Tag, TaskError};
use codeedex_schema::task_document;
use serde::Deserialize;

use super::AppState;
use super::caller::Caller;
use super::json_body::JsonBody;
use super::problem::{ProblemParts, endpoint_error, method_not_allowed};
use crate::auth::Authenticated;
use crate::auth::keys::random_bytes;
use crate::sync::hub::{Author, HubError, LiveDocument};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/tasks")
            .route(web::get().to(list))
            .route(web::post().to(create))
            .default_service(method_not_allowed("GET, POST")),
    )
    .service(
        web::resource("/v1/tasks/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete))
            .default_service(method_not_allowed("GET, PATCH, DELETE")),
    )
    .service(
        web::resource("/v1/tasks/{id}/history")
            .route(web::get().to(history))
            .default_service(method_not_allowed("GET")),
    );
}

/// Errors of the task endpoints.
#[derive(thiserror::Error)]
pub enum TaskApiError {
    /// A field is out of its limits.
    #[error("invalid task")]
    Invalid(#[source] TaskError),
    /// A query parameter is malformed.
    #[error("invalid query")]
    Query(String),
    /// No such task for this user.
    #[error("no such task")]
    NotFound,
    /// The user's quota does not allow the write.
    #[error("quota exceeded")]
    Quota(#[source] crate::store::QuotaExceeded),
    /// Anything on our side.
    #[error("task operation failed")]
    Unexpected(#[source] anyhow::Error),
}

impl TaskApiError {
    fn parts(&self) -> ProblemParts {
        match self {
            Self::Invalid(e) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "Invalid task",
            )
            .detail(e.to_string()),
            Self::Query(detail) => ProblemParts::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "Invalid query",
            )
            .detail(detail.clone()),
            Self::NotFound => {
                ProblemParts::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "Not found")
            }
            Self::Quota(exceeded) => ProblemParts::new(
                StatusCode::FORBIDDEN,
                ErrorCode::QuotaExceeded,
                "Quota exceeded",
            )
            .detail(exceeded.to_string()),
            Self::Unexpected(_) => ProblemParts::internal(),
        }
    }
}

endpoint_error!(TaskApiError);

impl From<HubError> for TaskApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Task(_) | HubError::Deleted => TaskApiError::NotFound,
            HubError::Quota(exceeded) => TaskApiError::Quota(exceeded),
            other => TaskApiError::Unexpected(other.into()),
        }
    }
}

fn author(who: &Authenticated) -> Author {
    Author {
        user: who.user_id,
        session: Some(who.session_id),
    }
}

fn open(
    state: &AppState,
    who: &Authenticated,
    id: DocumentId,
) -> Result<std::sync::Arc<LiveDocument>, TaskApiError> {
    state
        .sync
        .hub
        .open(id, who.user_id, false, Utc::now())?
        .ok_or(TaskApiError::NotFound)
}

/// The user's root document, if it was made yet.
fn root_of(state: &AppState, user: UserId) -> Result<Option<DocumentId>, TaskApiError> {
    Ok(state
        .sync
        .hub
        .store()
        .user(user)
        .map_err(|e| TaskApiError::Unexpected(e.into()))?
        .and_then(|u| u.root_document_id))
}

/// Opens one of the caller's tasks. The root document is never a task,
/// whatever a device wrote into it: it is answered like any other document
/// that is not one, so that it can be neither patched nor deleted here.
fn open_task(
    state: &AppState,
    who: &Authenticated,
    id: DocumentId,
) -> Result<std::sync::Arc<LiveDocument>, TaskApiError> {
    if root_of(state, who.user_id)? == Some(id) {
        return Err(TaskApiError::NotFound);
    }
    open(state, who, id)
}

async fn view(state: &AppState, live: &LiveDocument) -> Result<TaskView, TaskApiError> {
    let task = state
        .sync
        .hub
        .read(live, task_document::read_task)
        .await?
        .map_err(|_| TaskApiError::NotFound)?;
    Ok(TaskView::new(live.id, &task))
}

/// Filters and paging of `GET /v1/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only done (true) or open (false) tasks.
    done: Option<bool>,
    /// Only tasks due on or before this day.
    due_before: Option<NaiveDate>,
    /// Only tasks due on or after this day.
    due_after: Option<NaiveDate>,
    /// Only tasks with this tag.
    tag: Option<String>,
    /// Page size, 1 to 500 (default 100).
    limit: Option<usize>,
    /// Continue after this task id (from `next`).
    after: Option<DocumentId>,
}

/// Lists the user's tasks, ordered by id.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, TaskApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(TaskApiError::Query(
            "limit must be between 1 and 500".into(),
        ));
    }
    let tag = query
        .tag
        .as_deref()
        .map(Tag::parse)
        .transpose()
        .map_err(TaskApiError::Invalid)?;
    let summaries = state
        .sync
        .hub
        .store()
        .task_summaries(caller.0.user_id)
        .map_err(|e| TaskApiError::Unexpected(e.into()))?;
    // The index never takes the root, but one written before that rule may
    // still hold it.
    let root = root_of(&state, caller.0.user_id)?;
    let mut tasks = Vec::new();
    let mut next = None;
    for (id, summary) in summaries {
        if Some(id) == root {
            continue;
        }
        if query
            .after
            .is_some_and(|after| id.as_bytes() <= after.as_bytes())
        {
            continue;
        }
        let Ok(task) = serde_json::from_value::<TaskView>(summary) else {
            continue;
        };
        let keep = query.done.is_none_or(|d| task.done == d)
            && query
                .due_before
                .is_none_or(|d| task.due.is_some_and(|due| due <= d))
            && query
                .due_after
                .is_none_or(|d| task.due.is_some_and(|due| due >= d))
            && tag
                .as_ref()
                .is_none_or(|t| task.tags.iter().any(|x| x == t.as_str()));
        if !keep {
            continue;
        }
        if tasks.len() == limit {
            next = tasks.last().map(|t: &TaskView| t.id);
            break;
        }
        tasks.push(task);
    }
    Ok(HttpResponse::Ok().json(TaskPage { tasks, next }))
}

/// Creates a task document and lists it in the user's root document.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = CreateTask,
    responses((status = 201, body = TaskView), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<CreateTask>,
) -> Result<HttpResponse, TaskApiError> {
    let task = body.to_task(Utc::now()).map_err(TaskApiError::Invalid)?;
    let hub = &state.sync.hub;
    let now = Utc::now();
    let root = state.root_document(caller.0.user_id).await?;
    let id = DocumentId::from_random_bytes(random_bytes());
    let live = hub
        .open(id, caller.0.user_id, true, now)?
        .ok_or_else(|| TaskApiError::Unexpected(anyhow::anyhow!("fresh id taken")))?;
    hub.change(&live, author(&caller.0), now, |tx| {
        task_document::write_new_task(tx, &task)
    })
    .await?;
    let root = open(&state, &caller.0, root)?;
    hub.change(&root, author(&caller.0), now, |tx| {
        task_document::add_to_root(tx, id)
    })
    .await?;
    let view = TaskView::new(id, &task);
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/tasks/{id}")))
        .json(view))
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task document id")),
    responses((status = 200, body = TaskView), (status = 404, body = Problem)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<DocumentId>,
) -> Result<HttpResponse, TaskApiError> {
    let live = open_task(&state, &caller.0, *id)?;
    Ok(HttpResponse::Ok().json(view(&state, &live).await?))
}

/// Changes the named fields of a task; connected devices get the change at once.
#[utoipa::path(patch, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])), request_body = UpdateTask,
    params(("id" = String, Path, description = "Task document id")),
    responses((status = 200, body = TaskView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<DocumentId>,
    body: JsonBody<UpdateTask>,
) -> Result<HttpResponse, TaskApiError> {
    let patch = body.to_patch().map_err(TaskApiError::Invalid)?;
    let live = open_task(&state, &caller.0, *id)?;
    if !patch.is_empty() {
        state
            .sync
            .hub
            .change(&live, author(&caller.0), Utc::now(), |tx| {
                task_document::apply_patch(tx, &patch, Utc::now())
            })
            .await?;
    }
    Ok(HttpResponse::Ok().json(view(&state, &live).await?))
}

/// Deletes a task: it leaves the root document and is tombstoned.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task document id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<DocumentId>,
) -> Result<HttpResponse, TaskApiError> {
    let id = *id;
    let live = open_task(&state, &caller.0, id)?;
    view(&state, &live).await?;
    drop(live);
    let hub = &state.sync.hub;
    let now = Utc::now();
    let root = state.root_document(caller.0.user_id).await?;
    let root = open(&state, &caller.0, root)?;
    hub.change(&root, author(&caller.0), now, |tx| {
        task_document::remove_from_root(tx, id)
    })
    .await?;
    hub.tombstone(id, now).await?;
    hub.store()
        .persist()
        .await
        .map_err(|e| TaskApiError::Unexpected(e.into()))?;
    Ok(HttpResponse::NoContent().finish())
}

/// Who changed what, when: rebuilt from the event log.
#[utoipa::path(get, path = "/v1/tasks/{id}/history", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task document id")),
    responses((status = 200, body = TaskHistory), (status = 404, body = Problem)))]
pub async fn history(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<DocumentId>,
) -> Result<HttpResponse, TaskApiError> {
    // Opening proves ownership; the history itself comes from the log.
    open_task(&state, &caller.0, *id)?;
    let events = state
        .sync
        .hub
        .store()
        .events_of(*id)
        .map_err(|e| TaskApiError::Unexpected(e.into()))?;
    let mut doc = automerge::Automerge::new();
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        let before = doc.get_heads();
        doc.load_incremental(&event.change)
            .map_err(|e| TaskApiError::Unexpected(e.into()))?;
        let after = doc.get_heads();
        let mut fields: Vec<String> = doc
            .diff(&before, &after)
            .into_iter()
            .filter_map(|patch| match patch.path.first() {
                Some((_, automerge::Prop::Map(key))) => Some(key.clone()),
                Some(_) => None,
                None if patch.obj == ROOT => match patch.action {
                    automerge::PatchAction::PutMap { key, .. }
                    | automerge::PatchAction::DeleteMap { key } => Some(key),
                    _ => None,
                },
                None => None,
            })
            .collect();
        fields.sort();
        fields.dedup();
        entries.push(HistoryEntry {
            seq: event.seq,
            at: event.at,
            user_id: event.user,
            session_id: event.session,
            fields,
        });
    }
    Ok(HttpResponse::Ok().json(TaskHistory { entries }))
}
