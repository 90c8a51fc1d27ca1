//! The `codeedex` command line: a thin layer over [`Client`].
//!
//! Local commands (`add`, `ls`, `show`, `edit`, `done`, `undo`, `rm`) work
//! offline: they act on the local store and then try a short sync, and a
//! server that cannot be reached is a note on standard error, not a failure.
//! Account and server commands (`login`, `logout`, `whoami`, `sessions`,
//! `history`, `sync`) fail when offline. Errors are one line on standard
//! error with a non-zero exit code: 1 in general, 2 for bad usage, 3 when
//! nobody is signed in, 4 when the server cannot be reached, 5 when no
//! (or more than one) task matches an id.
//!
//! ```text
//! codeedex login --email ann@example.com
//! codeedex add "water the plants" --due tomorrow --tag home
//! codeedex ls --json
//! ```

mod args;
mod dates;
mod output;
mod settings;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use chrono::Local;
use clap::Parser;
use codeedex_schema::api::auth::LogoutScope;
use codeedex_schema::api::tasks::UpdateTask;

use crate::client::{Client, SignInIdentifier};
use crate::error::ClientError;
use crate::events::{AuthStatus, ClientEvent, SyncStatus};
use crate::tasks::{NewTask, StatusFilter, TaskFilter};
use args::{Cli, Command, FieldArgs};
use output::{Output, Style, Table, short_id};

/// How long local commands spend trying to sync before giving up quietly.
const QUICK_SYNC: Duration = Duration::from_secs(5);

/// A failure: the message and the exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotLoggedIn | ClientError::SessionEnded => 3,
            ClientError::Offline(_) | ClientError::Timeout(_) => 4,
            ClientError::NotFound(_) | ClientError::AmbiguousId { .. } => 5,
            ClientError::InvalidTask(_) | ClientError::InvalidInput(_) => 2,
            _ => 1,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }
}

/// Runs the command line with these arguments (the first is the program
/// name) and returns the process's exit code. The `codeedex` binary is
/// `fn main() { main_with_args(std::env::args()) }`.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.verbose {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "codeedex_client_core=debug",
            ))
            .try_init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("codeedex: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Output::new(cli.json);
    match runtime.block_on(run(cli, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("codeedex: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Says something on standard error (never mixed into `--json` output).
fn note(text: &str) {
    eprintln!("{text}");
}

fn read_line(prompt: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    match stdin.lock().read_line(&mut line) {
        Ok(0) => Err(Failure::usage(format!(
            "no input for {:?}",
            prompt.trim().trim_end_matches(':')
        ))),
        Ok(_) => Ok(line.trim().to_owned()),
        Err(e) => Err(Failure {
            message: format!("cannot read standard input: {e}"),
            code: 1,
        }),
    }
}

async fn run(cli: Cli, out: Output) -> Result<(), Failure> {
    let device_name = match &cli.command {
        Command::Login { device_name, .. } => device_name.clone(),
        _ => None,
    };
    let config = settings::client_config(&cli, device_name).map_err(Failure::usage)?;
    let client = Client::open(config)?;
    let online = !cli.offline;
    match cli.command {
        Command::Login { email, phone, .. } => login(&client, &out, email, phone).await,
        Command::Logout { others, all } => logout(&client, &out, others, all).await,
        Command::Whoami => whoami(&client, &out, online).await,
        Command::Sessions => sessions(&client, &out).await,
        Command::Add { title, fields } => {
            let today = Local::now().date_naive();
            let due = fields
                .due
                .as_deref()
                .map(|d| dates::parse_due(d, today))
                .transpose()
                .map_err(Failure::usage)?
                .flatten();
            let new = NewTask {
                title,
                notes: fields.notes,
                due,
                priority: fields.priority,
                tags: fields.tags,
            };
            let task = client.create_task(&new)?;
            output::changed(&out, "added", &task);
            quick_sync(&client, online).await;
            Ok(())
        }
        Command::Ls {
            all,
            done,
            due,
            tag,
            search,
        } => {
            quick_sync(&client, online).await;
            let status = if all {
                StatusFilter::All
            } else if done {
                StatusFilter::Done
            } else {
                StatusFilter::Open
            };
            let (due_on_or_before, due_before) = match due {
                Some(when) => {
                    dates::due_filter(&when, Local::now().date_naive()).map_err(Failure::usage)?
                }
                None => (None, None),
            };
            let filter = TaskFilter {
                status,
                due_on_or_before,
                due_before,
                tag,
                text: search,
            };
            output::tasks(&out, &client.list_tasks(&filter));
            Ok(())
        }
        Command::Show { id } => {
            quick_sync(&client, online).await;
            let id = client.resolve_task_id(&id)?;
            output::task(&out, &client.task(id)?);
            Ok(())
        }
        Command::Edit {
            id,
            title,
            fields,
            clear_tags,
        } => {
            let id = client.resolve_task_id(&id)?;
            let update = edit_body(&client, id, title, fields, clear_tags)?;
            let task = client.update_task(id, &update)?;
            output::changed(&out, "changed", &task);
            quick_sync(&client, online).await;
            Ok(())
        }
        Command::Done { id } => {
            let task = client.complete_task(client.resolve_task_id(&id)?)?;
            output::changed(&out, "done", &task);
            quick_sync(&client, online).await;
            Ok(())
        }
        Command::Undo { id } => {
            let task = client.reopen_task(client.resolve_task_id(&id)?)?;
            output::changed(&out, "reopened", &task);
            quick_sync(&client, online).await;
            Ok(())
        }
        Command::Rm { id } => {
            let id = client.resolve_task_id(&id)?;
            let task = client.task(id)?;
            client.delete_task(id)?;
            if out.json {
                out.json(&serde_json::json!({ "removed": id }));
            } else {
                out.line(&format!(
                    "removed {}  {}",
                    out.paint(&short_id(&id.to_string()), Style::Cyan),
                    task.title
                ));
            }
            quick_sync(&client, online).await;
            Ok(())
        }
        Command::History { id } => history(&client, &out, &id).await,
        Command::Sync { timeout } => sync(&client, &out, Duration::from_secs(timeout.max(1))).await,
        Command::Watch => watch(&client, &out).await,
        Command::Status => {
            let status = client.status();
            if out.json {
                out.json(&status);
                return Ok(());
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
            Ok(())
        }
    }
}

/// After a local change (or before a read): sync for a moment if signed in.
/// Failing to reach the server is only a note.
async fn quick_sync(client: &Client, online: bool) {
    if !online || !matches!(client.auth_status(), AuthStatus::LoggedIn { .. }) {
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

fn edit_body(
    client: &Client,
    id: crate::DocumentId,
    title: Option<String>,
    fields: FieldArgs,
    clear_tags: bool,
) -> Result<UpdateTask, Failure> {
    let today = Local::now().date_naive();
    let due = fields
        .due
        .as_deref()
        .map(|d| dates::parse_due(d, today))
        .transpose()
        .map_err(Failure::usage)?;
    let tags = if clear_tags || !fields.tags.is_empty() {
        let mut tags = if clear_tags {
            Vec::new()
        } else {
            client.task(id)?.tags
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

async fn login(
    client: &Client,
    out: &Output,
    email: Option<String>,
    phone: Option<String>,
) -> Result<(), Failure> {
    let identifier = match (email, phone) {
        (Some(email), _) => SignInIdentifier::Email(email),
        (None, Some(phone)) => SignInIdentifier::Phone(phone),
        (None, None) => {
            let answer = read_line("Email or phone number: ")?;
            if answer.starts_with('+')
                || answer
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
            {
                SignInIdentifier::Phone(answer)
            } else {
                SignInIdentifier::Email(answer)
            }
        }
    };
    let sent = client.request_code(&identifier).await?;
    let (SignInIdentifier::Email(to) | SignInIdentifier::Phone(to)) = &identifier;
    note(&format!(
        "A sign-in code was sent to {to}; it is valid for {} minutes.",
        sent.expires_in.div_ceil(60)
    ));
    let code = read_line("Code: ")?;
    let me = client.verify_code(&identifier, &code).await?;
    if let Err(e) = client.sync_once(Duration::from_secs(15)).await {
        note(&format!(
            "codeedex: signed in, but the first sync did not finish: {e}"
        ));
    }
    if out.json {
        out.json(&me);
    } else {
        let who = me
            .email
            .clone()
            .or(me.phone.clone())
            .unwrap_or_else(|| me.id.to_string());
        out.line(&format!("logged in as {}", out.paint(&who, Style::Bold)));
    }
    Ok(())
}

async fn logout(client: &Client, out: &Output, others: bool, all: bool) -> Result<(), Failure> {
    let scope = match (others, all) {
        (true, _) => LogoutScope::Others,
        (_, true) => LogoutScope::All,
        _ => LogoutScope::This,
    };
    let ended = match client.logout(scope).await {
        Ok(n) => n,
        Err(e) if e.is_offline() && scope != LogoutScope::Others => {
            note(&format!(
                "codeedex: signed out on this device; the server could not be told ({e})"
            ));
            0
        }
        Err(e) => return Err(e.into()),
    };
    if out.json {
        out.json(&serde_json::json!({ "sessions_ended": ended }));
    } else {
        match scope {
            LogoutScope::Others => out.line(&format!("ended {ended} other session(s)")),
            _ => out.line(&format!("logged out ({ended} session(s) ended)")),
        }
    }
    Ok(())
}

async fn whoami(client: &Client, out: &Output, online: bool) -> Result<(), Failure> {
    if !matches!(client.auth_status(), AuthStatus::LoggedIn { .. }) {
        return Err(ClientError::NotLoggedIn.into());
    }
    let me = if online {
        client.refresh_account().await?
    } else {
        client.account().ok_or(ClientError::NotLoggedIn)?
    };
    if out.json {
        out.json(&me);
        return Ok(());
    }
    if let Some(email) = &me.email {
        out.line(&format!("email     {email}"));
    }
    if let Some(phone) = &me.phone {
        out.line(&format!("phone     {phone}"));
    }
    out.line(&format!("user id   {}", me.id));
    out.line(&format!("since     {}", output::local_time(me.created_at)));
    Ok(())
}

async fn sessions(client: &Client, out: &Output) -> Result<(), Failure> {
    let sessions = client.sessions().await?;
    if out.json {
        out.json(&sessions);
        return Ok(());
    }
    let mut table = Table::new(&["session", "device", "signed in", "last used", ""]);
    for s in &sessions {
        table.row(vec![
            (s.id.to_string().chars().take(8).collect(), Style::Cyan),
            (
                s.device_name.clone().unwrap_or_else(|| "-".into()),
                Style::Plain,
            ),
            (output::local_time(s.created_at), Style::Plain),
            (output::local_time(s.last_used_at), Style::Plain),
            (
                if s.current {
                    "this device".into()
                } else {
                    String::new()
                },
                Style::Green,
            ),
        ]);
    }
    table.print(out);
    Ok(())
}

async fn history(client: &Client, out: &Output, id: &str) -> Result<(), Failure> {
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

async fn sync(client: &Client, out: &Output, timeout: Duration) -> Result<(), Failure> {
    let mut events = client.subscribe();
    let progress = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                ClientEvent::SyncStatus {
                    status: status @ (SyncStatus::Connecting | SyncStatus::Syncing { .. }),
                } => {
                    note(&describe(status));
                }
                ClientEvent::TaskAdded { task, .. } => note(&format!(
                    "+ {}  {}",
                    short_id(&task.id.to_string()),
                    task.title
                )),
                ClientEvent::TaskChanged { task, .. } => note(&format!(
                    "~ {}  {}",
                    short_id(&task.id.to_string()),
                    task.title
                )),
                ClientEvent::TaskRemoved { id, .. } => {
                    note(&format!("- {}", short_id(&id.to_string())))
                }
                _ => {}
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

async fn watch(client: &Client, out: &Output) -> Result<(), Failure> {
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
            continue;
        }
        let time = out.paint(&Local::now().format("%H:%M:%S").to_string(), Style::Dim);
        let line = match &event {
            ClientEvent::TaskAdded { task, origin } => format!(
                "{time} {} {}  {}{}",
                out.paint("+", Style::Green),
                out.paint(&short_id(&task.id.to_string()), Style::Cyan),
                task.title,
                if *origin == crate::events::ChangeOrigin::Local {
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
            ClientEvent::AuthStatus { .. } => continue,
            ClientEvent::Lagged { missed } => format!("{time} missed {missed} event(s)"),
        };
        out.line(&line);
    }
    client.stop_sync().await;
    Ok(())
}
