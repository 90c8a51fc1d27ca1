//! `/v1/tasks`: the REST view of the same task documents devices sync.
//!
//! Each handler parses the request into the task service's types
//! ([`crate::tasks`]), calls it, and renders the answer; what creating,
//! listing, changing, deleting and history mean lives in the service.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{NaiveDate, Utc};
use codeedex_schema::api::tasks::{CreateTask, TaskHistory, TaskPage, TaskView, UpdateTask};
use codeedex_schema::id::DocumentId;
use codeedex_schema::problem::{ErrorCode, Problem};
use codeedex_schema::task::{Tag, TaskError};
use serde::Deserialize;

use super::AppState;
use super::caller::Caller;
use super::json_body::JsonBody;
use super::problem::{ProblemParts, endpoint_error, method_not_allowed};
use crate::tasks::{PageLimit, Requester, TaskQuery, TasksError};

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

impl From<TasksError> for TaskApiError {
    fn from(e: TasksError) -> Self {
        match e {
            TasksError::NotFound => TaskApiError::NotFound,
            TasksError::Quota(exceeded) => TaskApiError::Quota(exceeded),
            other => TaskApiError::Unexpected(other.into()),
        }
    }
}

fn requester(caller: &Caller) -> Requester {
    Requester {
        user: caller.0.user_id,
        session: caller.0.session_id,
    }
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

impl ListQuery {
    /// The service's query: the limit in range, the tag a tag.
    fn parse(self) -> Result<TaskQuery, TaskApiError> {
        let limit = match self.limit {
            None => PageLimit::DEFAULT,
            Some(n) => PageLimit::new(n).ok_or_else(|| {
                TaskApiError::Query(format!("limit must be between 1 and {}", PageLimit::MAX))
            })?,
        };
        let tag = self
            .tag
            .as_deref()
            .map(Tag::parse)
            .transpose()
            .map_err(TaskApiError::Invalid)?;
        Ok(TaskQuery {
            done: self.done,
            due_before: self.due_before,
            due_after: self.due_after,
            tag,
            limit,
            after: self.after,
        })
    }
}

/// Lists the user's tasks, ordered by id.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, TaskApiError> {
    let query = query.into_inner().parse()?;
    let page = state.tasks.list(caller.0.user_id, &query).await?;
    Ok(HttpResponse::Ok().json(page))
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
    let view = state
        .tasks
        .create(requester(&caller), &task, Utc::now())
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/tasks/{}", view.id)))
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
    let view = state.tasks.get(caller.0.user_id, *id, Utc::now()).await?;
    Ok(HttpResponse::Ok().json(view))
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
    let view = state
        .tasks
        .update(requester(&caller), *id, &patch, Utc::now())
        .await?;
    Ok(HttpResponse::Ok().json(view))
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
    state
        .tasks
        .delete(requester(&caller), *id, Utc::now())
        .await?;
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
    let history = state
        .tasks
        .history(caller.0.user_id, *id, Utc::now())
        .await?;
    Ok(HttpResponse::Ok().json(history))
}
