//! Tasks: list, get, create, update, complete, reopen, delete, history.
//!
//! Tasks are the REST API's JSON objects (`TaskView`: `id`, `title`,
//! `notes`, `done`, `due`, `priority`, `tags`, `created_at`, `updated_at`,
//! `completed_at`), and the create and update bodies are the REST API's, so
//! that every front end speaks one shape. Everything but the history works
//! offline, on the local store.

use std::ffi::c_char;

use codeedex_client_core::{DocumentId, NewTask, StatusFilter, TaskFilter, UpdateTask};
use codeedex_schema::api::tasks::CreateTask;
use serde::Deserialize;

use crate::client::{CdxClient, handle};
use crate::status::{CdxStatus, Failure, call};
use crate::strings::{self, OutString};

/// The list filter: the command line's `ls` options as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFilter {
    /// `open` (the default), `done` or `all`.
    #[serde(default)]
    status: Option<String>,
    /// `overdue`, `today`, `tomorrow`, `week`, `+N` or `YYYY-MM-DD`.
    #[serde(default)]
    due: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    /// Text in the title or notes, case-insensitive.
    #[serde(default)]
    search: Option<String>,
}

impl ListFilter {
    fn parse(self) -> Result<TaskFilter, Failure> {
        let status = match self.status.as_deref() {
            None | Some("open") => StatusFilter::Open,
            Some("done") => StatusFilter::Done,
            Some("all") => StatusFilter::All,
            Some(other) => {
                return Err(Failure::invalid(format!(
                    "status {other:?} is none of open, done, all"
                )));
            }
        };
        let filter = TaskFilter {
            status,
            tag: self.tag,
            text: self.search,
            ..TaskFilter::default()
        };
        match self.due {
            // The device's own calendar day, as the command line means it.
            Some(words) => Ok(filter.due_within(&words, chrono::Local::now().date_naive())?),
            None => Ok(filter),
        }
    }
}

/// The listed task whose id is `text` or begins with it.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn task_id(open: &CdxClient, text: *const c_char) -> Result<DocumentId, Failure> {
    // SAFETY: the caller's promise.
    let text = unsafe { strings::text(text, "task_id") }?;
    Ok(open.client.resolve_task_id(text)?)
}

/// The shape of the calls that take one task and answer JSON: checks the
/// arguments, resolves the id, and writes what `action` answers.
///
/// # Safety
/// `client` is NULL or a live handle; `task_id` is NULL or a NUL-terminated
/// string; `out_json` is NULL or writable.
unsafe fn on_task<T: serde::Serialize>(
    client: *const CdxClient,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
    action: impl FnOnce(&CdxClient, DocumentId) -> Result<T, Failure>,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open) = unsafe { (OutString::new(out_json, "out_json")?, handle(client)?) };
        // SAFETY: as above.
        let id = unsafe { self::task_id(open, task_id) }?;
        out.put_json(&action(open, id)?)
    })
}

/// Lists tasks. `filter_json`: `{"status": "open" | "done" | "all",
/// "due": "overdue" | "today" | "tomorrow" | "week" | "+N" | "YYYY-MM-DD",
/// "tag": "home", "search": "milk"}`, every field optional (`{}` lists the
/// open tasks); the due words are those of `codeedex ls --due`, against the
/// device's local date. `*out_json`: an array of tasks, open before done,
/// then by due date, priority and age.
///
/// # Safety
/// `client` is NULL or a live handle; `filter_json` is NULL or a
/// NUL-terminated string; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_tasks_list(
    client: *const CdxClient,
    filter_json: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open, filter) = unsafe {
            (
                OutString::new(out_json, "out_json")?,
                handle(client)?,
                strings::json::<ListFilter>(filter_json, "filter_json")?,
            )
        };
        out.put_json(&open.client.list_tasks(&filter.parse()?))
    })
}

/// One task, by id or unique id prefix (`CDX_STATUS_NOT_FOUND`,
/// `CDX_STATUS_AMBIGUOUS_ID`). `*out_json`: the task.
///
/// # Safety
/// `client` is NULL or a live handle; `task_id` is NULL or a NUL-terminated
/// string; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_get(
    client: *const CdxClient,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        on_task(client, task_id, out_json, |open, id| {
            Ok(open.client.task(id)?)
        })
    }
}

/// Creates a task, offline; it is sent when sync runs. `task_json`: the
/// REST API's create body, `{"title": "...", "notes", "due":
/// "YYYY-MM-DD", "priority": "none" | "low" | "medium" | "high", "tags":
/// [...]}` (only the title is required). `*out_json`: the new task.
///
/// # Safety
/// `client` is NULL or a live handle; `task_json` is NULL or a
/// NUL-terminated string; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_create(
    client: *const CdxClient,
    task_json: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open, body) = unsafe {
            (
                OutString::new(out_json, "out_json")?,
                handle(client)?,
                strings::json::<CreateTask>(task_json, "task_json")?,
            )
        };
        let new = NewTask {
            title: body.title,
            notes: body.notes,
            due: body.due,
            priority: body.priority,
            tags: body.tags.unwrap_or_default(),
        };
        out.put_json(&open.client.create_task(&new)?)
    })
}

/// Changes the fields named in `update_json`, the REST API's patch body:
/// `{"title", "notes", "done", "due": "YYYY-MM-DD" | null, "priority",
/// "tags": [...]}`, each optional; `"due": null` clears the date, `"tags"`
/// replaces the set. `*out_json`: the task as it is now.
///
/// # Safety
/// `client` is NULL or a live handle; `task_id` and `update_json` are NULL
/// or NUL-terminated strings; `out_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_update(
    client: *const CdxClient,
    task_id: *const c_char,
    update_json: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let (out, open, update) = unsafe {
            (
                OutString::new(out_json, "out_json")?,
                handle(client)?,
                strings::json::<UpdateTask>(update_json, "update_json")?,
            )
        };
        // SAFETY: as above.
        let id = unsafe { self::task_id(open, task_id) }?;
        out.put_json(&open.client.update_task(id, &update)?)
    })
}

/// Marks a task done. `*out_json`: the task.
///
/// # Safety
/// As for `cdx_task_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_complete(
    client: *const CdxClient,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        on_task(client, task_id, out_json, |open, id| {
            Ok(open.client.complete_task(id)?)
        })
    }
}

/// Marks a task not done. `*out_json`: the task.
///
/// # Safety
/// As for `cdx_task_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_reopen(
    client: *const CdxClient,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        on_task(client, task_id, out_json, |open, id| {
            Ok(open.client.reopen_task(id)?)
        })
    }
}

/// Deletes a task, offline: it leaves the list at once, here and, once
/// synced, on every device and in the REST API.
///
/// # Safety
/// `client` is NULL or a live handle; `task_id` is NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_delete(
    client: *const CdxClient,
    task_id: *const c_char,
) -> CdxStatus {
    call(|| {
        // SAFETY: the caller's promises.
        let open = unsafe { handle(client) }?;
        // SAFETY: as above.
        let id = unsafe { self::task_id(open, task_id) }?;
        open.client.delete_task(id)?;
        Ok(())
    })
}

/// A task's change history, from the server (online only). `*out_json`:
/// `{"entries": [{"seq", "at", "user_id", "session_id", "fields": [...]}]}`,
/// oldest first (the REST API's answer).
///
/// # Safety
/// As for `cdx_task_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cdx_task_history(
    client: *const CdxClient,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> CdxStatus {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        on_task(client, task_id, out_json, |open, id| {
            Ok(open.block_on(open.client.task_history(id))?)
        })
    }
}
