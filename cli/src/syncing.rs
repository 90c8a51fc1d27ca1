//! The commands about syncing: `sync` (once, with progress), `watch` (stay
//! connected and show changes as they arrive) and `status` (this device's
//! account, server and unsent changes).

use std::time::Duration;

use chrono::Local;
use codeedex_client_core::{
    AuthStatus, ChangeOrigin, Client, ClientError, ClientEvent, SyncStatus,
};

use crate::failure::{Failure, note};
use crate::output::{self, Output, Style, short_id};

/// Syncs once, giving up after `timeout_secs` (at least one second).
pub(crate) async fn sync(client: &Client, out: &Output, timeout_secs: u64) -> Result<(), Failure> {
    let timeout = Duration::from_secs(timeout_secs.max(1));
    let mut events = client.subscribe();
    let progress = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Some(line) = progress_line(event) {
                note(&line);
            }
        }
    });
    let result = client.sync_once(timeout).await;
    progress.abort();
    let last_sync = result?;
    let status = client.status();
    if out.json {
        out.json(&serde_json::json!({ "last_sync": last_sync, "tasks": status.tasks, "unsynced_documents": status.unsynced_documents }));
    } else {
        out.line(&format!("up to date: {} task(s)", status.tasks));
    }
    Ok(())
}

/// What `sync` says on standard error about an event while it runs.
fn progress_line(event: ClientEvent) -> Option<String> {
    match event {
        ClientEvent::SyncStatus {
            status: status @ (SyncStatus::Connecting | SyncStatus::Syncing { .. }),
        } => Some(describe(status)),
        ClientEvent::TaskAdded { task, .. } => Some(format!(
            "+ {}  {}",
            short_id(&task.id.to_string()),
            task.title
        )),
        ClientEvent::TaskChanged { task, .. } => Some(format!(
            "~ {}  {}",
            short_id(&task.id.to_string()),
            task.title
        )),
        ClientEvent::TaskRemoved { id, .. } => Some(format!("- {}", short_id(&id.to_string()))),
        _ => None,
    }
}

fn describe(status: SyncStatus) -> String {
    match status {
        SyncStatus::Offline => "offline".to_owned(),
        SyncStatus::Connecting => "connecting…".to_owned(),
        SyncStatus::Syncing { pending } => format!("syncing ({pending} document(s) to go)…"),
        SyncStatus::UpToDate { last_sync } => {
            format!("up to date ({})", output::local_time(last_sync))
        }
    }
}

pub(crate) async fn watch(client: &Client, out: &Output) -> Result<(), Failure> {
    if !matches!(client.auth_status(), AuthStatus::LoggedIn { .. }) {
        return Err(ClientError::NotLoggedIn.into());
    }
    let mut events = client.subscribe();
    client.start_sync().await;
    if !out.json {
        note("watching for changes (ctrl-c to stop)");
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
        };
        if out.json {
            out.line(&serde_json::to_string(&event).expect("events serialise"));
        } else if let Some(line) = watch_line(out, &event) {
            out.line(&line);
        }
    }
    client.stop_sync().await;
    Ok(())
}

/// The line `watch` prints for an event, if any.
fn watch_line(out: &Output, event: &ClientEvent) -> Option<String> {
    let time = out.paint(&Local::now().format("%H:%M:%S").to_string(), Style::Dim);
    let line = match event {
        ClientEvent::TaskAdded { task, origin } => format!(
            "{time} {} {}  {}{}",
            out.paint("+", Style::Green),
            out.paint(&short_id(&task.id.to_string()), Style::Cyan),
            task.title,
            if *origin == ChangeOrigin::Local {
                " (here)"
            } else {
                ""
            }
        ),
        ClientEvent::TaskChanged { task, .. } => format!(
            "{time} {} {}  {}{}",
            out.paint("~", Style::Yellow),
            out.paint(&short_id(&task.id.to_string()), Style::Cyan),
            task.title,
            if task.done { " (done)" } else { "" }
        ),
        ClientEvent::TaskRemoved { id, .. } => {
            format!(
                "{time} {} {}",
                out.paint("-", Style::Red),
                out.paint(&short_id(&id.to_string()), Style::Cyan)
            )
        }
        ClientEvent::SyncStatus { status } => {
            format!("{time} {}", out.paint(&describe(*status), Style::Dim))
        }
        ClientEvent::AuthStatus {
            status: AuthStatus::LoggedOut,
        } => {
            format!(
                "{time} {}",
                out.paint("logged out: the session ended", Style::Red)
            )
        }
        ClientEvent::AuthStatus { .. } => return None,
        ClientEvent::Lagged { missed } => format!("{time} missed {missed} event(s)"),
    };
    Some(line)
}

/// This device: the account, the server, the data directory, the tasks and
/// what has not been sent yet.
pub(crate) fn status(client: &Client, out: &Output) {
    let status = client.status();
    if out.json {
        out.json(&status);
        return;
    }
    let account = status
        .account
        .as_ref()
        .and_then(|a| a.email.clone().or(a.phone.clone()));
    let who = match (status.logged_in, account) {
        (true, Some(who)) => who,
        (false, Some(who)) => format!("logged out (was {who})"),
        _ => "logged out".to_owned(),
    };
    out.line(&format!("account   {who}"));
    out.line(&format!("server    {}", status.server_url));
    out.line(&format!("data      {}", status.data_dir));
    out.line(&format!("tokens    {}", status.token_storage));
    out.line(&format!(
        "tasks     {} open, {} done",
        status.open_tasks,
        status.tasks - status.open_tasks
    ));
    let unsynced = match status.unsynced_documents {
        0 => "everything sent".to_owned(),
        n => format!("{n} document(s) with changes not yet sent"),
    };
    out.line(&format!("changes   {unsynced}"));
    out.line(&format!(
        "last sync {}",
        status
            .last_sync
            .map(output::local_time)
            .unwrap_or_else(|| "never".to_owned())
    ));
}
