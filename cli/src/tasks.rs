//! The commands on tasks: `add`, `ls`, `show`, `edit`, `done`, `undo`, `rm`
//! and `history`. All but `history` work on the local store, so they work
//! offline; the ones that change a task try a short sync afterwards, the
//! ones that read try one before.

use std::time::Duration;

use chrono::{Local, NaiveDate};
use codeedex_client_core::{
    AuthStatus, Client, ClientError, DocumentId, NewTask, StatusFilter, TaskFilter, TaskView,
    UpdateTask,
};

use crate::args::FieldArgs;
use crate::dates;
use crate::failure::{Failure, note};
use crate::output::{self, Output, Style, Table, short_id};

/// How long local commands spend trying to sync before giving up quietly.
const QUICK_SYNC: Duration = Duration::from_secs(5);

/// Whether this invocation may contact the server (`--offline` says not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    Online,
    Offline,
}

/// What `edit` does with the task's tags and the `--tag`s given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagEdit {
    /// Add them to the task's tags.
    Add,
    /// Replace the task's tags with them (`--clear-tags`).
    Replace,
}

/// What `done` and `undo` make of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Done,
    Open,
}

/// What `ls` lists, as given on the command line.
#[derive(Debug)]
pub(crate) struct ListQuery {
    /// `--all`: open and done tasks.
    pub all: bool,
    /// `--done`: done tasks only.
    pub done: bool,
    pub due: Option<String>,
    pub tag: Option<String>,
    pub search: Option<String>,
}

pub(crate) async fn add(
    client: &Client,
    out: &Output,
    reach: Reach,
    title: String,
    fields: FieldArgs,
) -> Result<(), Failure> {
    let due = due_given(&fields)?.flatten();
    let new = NewTask {
        title,
        notes: fields.notes,
        due,
        priority: fields.priority,
        tags: fields.tags,
    };
    let task = client.create_task(&new)?;
    changed(client, out, reach, "added", &task).await
}

pub(crate) async fn ls(
    client: &Client,
    out: &Output,
    reach: Reach,
    query: ListQuery,
) -> Result<(), Failure> {
    quick_sync(client, reach).await;
    let filter = task_filter(query)?;
    output::tasks(out, &client.list_tasks(&filter));
    Ok(())
}

/// The library's filter for what `ls` was asked.
fn task_filter(query: ListQuery) -> Result<TaskFilter, Failure> {
    let status = if query.all {
        StatusFilter::All
    } else if query.done {
        StatusFilter::Done
    } else {
        StatusFilter::Open
    };
    let filter = TaskFilter {
        status,
        tag: query.tag,
        text: query.search,
        ..TaskFilter::default()
    };
    // The due words are the library's, so that every front end reads them
    // alike.
    match query.due {
        Some(when) => Ok(filter.due_within(&when, Local::now().date_naive())?),
        None => Ok(filter),
    }
}

pub(crate) async fn show(
    client: &Client,
    out: &Output,
    reach: Reach,
    id: &str,
) -> Result<(), Failure> {
    quick_sync(client, reach).await;
    let id = client.resolve_task_id(id)?;
    output::task(out, &client.task(id)?);
    Ok(())
}

pub(crate) async fn edit(
    client: &Client,
    out: &Output,
    reach: Reach,
    id: &str,
    title: Option<String>,
    fields: FieldArgs,
    tags: TagEdit,
) -> Result<(), Failure> {
    let id = client.resolve_task_id(id)?;
    let update = edit_body(client, id, title, fields, tags)?;
    let task = client.update_task(id, &update)?;
    changed(client, out, reach, "changed", &task).await
}

/// `done` (`Mark::Done`) or `undo` (`Mark::Open`).
pub(crate) async fn mark(
    client: &Client,
    out: &Output,
    reach: Reach,
    id: &str,
    mark: Mark,
) -> Result<(), Failure> {
    let id = client.resolve_task_id(id)?;
    let (task, verb) = match mark {
        Mark::Done => (client.complete_task(id)?, "done"),
        Mark::Open => (client.reopen_task(id)?, "reopened"),
    };
    changed(client, out, reach, verb, &task).await
}

pub(crate) async fn rm(
    client: &Client,
    out: &Output,
    reach: Reach,
    id: &str,
) -> Result<(), Failure> {
    let id = client.resolve_task_id(id)?;
    let task = client.task(id)?;
    client.delete_task(id)?;
    removed(out, id, &task);
    quick_sync(client, reach).await;
    Ok(())
}

/// Says that `task` was removed.
fn removed(out: &Output, id: DocumentId, task: &TaskView) {
    if out.json {
        out.json(&serde_json::json!({ "removed": id }));
    } else {
        out.line(&format!(
            "removed {}  {}",
            out.paint(&short_id(&id.to_string()), Style::Cyan),
            task.title
        ));
    }
}

pub(crate) async fn history(client: &Client, out: &Output, id: &str) -> Result<(), Failure> {
    let id = client.resolve_task_id(id)?;
    let history = client.task_history(id).await?;
    if out.json {
        out.json(&history);
        return Ok(());
    }
    let me = client.account().and_then(|a| a.email.or(a.phone));
    let mut table = Table::new(&["#", "when", "device", "fields"]);
    for entry in &history.entries {
        let device = match entry.session_id {
            Some(session) => session.to_string().chars().take(8).collect(),
            None => "server".to_owned(),
        };
        table.row(vec![
            (entry.seq.to_string(), Style::Dim),
            (output::local_time(entry.at), Style::Plain),
            (device, Style::Cyan),
            (entry.fields.join(", "), Style::Plain),
        ]);
    }
    table.print(out);
    if let Some(me) = me {
        out.line(&out.paint(
            &format!("{} change(s) by {me}", history.entries.len()),
            Style::Dim,
        ));
    }
    Ok(())
}

/// Says what a command did to a task, then syncs for a moment.
async fn changed(
    client: &Client,
    out: &Output,
    reach: Reach,
    verb: &str,
    task: &TaskView,
) -> Result<(), Failure> {
    output::changed(out, verb, task);
    quick_sync(client, reach).await;
    Ok(())
}

/// After a local change (or before a read): sync for a moment if signed in.
/// Failing to reach the server is only a note.
async fn quick_sync(client: &Client, reach: Reach) {
    if reach == Reach::Offline || !matches!(client.auth_status(), AuthStatus::LoggedIn { .. }) {
        return;
    }
    match client.sync_once(QUICK_SYNC).await {
        Ok(_) => {}
        Err(ClientError::SessionEnded) => note(
            "codeedex: the session has ended; changes stay on this device (run `codeedex login`)",
        ),
        Err(e) => note(&format!(
            "codeedex: working offline ({e}); changes stay on this device until the next sync"
        )),
    }
}

/// The `--due` given: `None` when absent, `Some(None)` for `none`.
fn due_given(fields: &FieldArgs) -> Result<Option<Option<NaiveDate>>, Failure> {
    let today = Local::now().date_naive();
    fields
        .due
        .as_deref()
        .map(|d| dates::parse_due(d, today))
        .transpose()
        .map_err(Failure::usage)
}

/// The change `edit` asks for.
fn edit_body(
    client: &Client,
    id: DocumentId,
    title: Option<String>,
    fields: FieldArgs,
    tag_edit: TagEdit,
) -> Result<UpdateTask, Failure> {
    let due = due_given(&fields)?;
    let tags = if tag_edit == TagEdit::Replace || !fields.tags.is_empty() {
        let mut tags = match tag_edit {
            TagEdit::Replace => Vec::new(),
            TagEdit::Add => client.task(id)?.tags,
        };
        tags.extend(fields.tags);
        Some(tags)
    } else {
        None
    };
    let update = UpdateTask {
        title,
        notes: fields.notes,
        done: None,
        due,
        priority: fields.priority,
        tags,
    };
    if update.title.is_none()
        && update.notes.is_none()
        && update.due.is_none()
        && update.priority.is_none()
        && update.tags.is_none()
    {
        return Err(Failure::usage(
            "nothing to change: give --title, --notes, --due, --priority, --tag or --clear-tags",
        ));
    }
    Ok(update)
}
