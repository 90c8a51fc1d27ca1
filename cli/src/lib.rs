//! The `codeedex` command line: a thin layer over the client library's
//! [`Client`].
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
//!
//! The command line is a crate of its own, not a module of the client
//! library, so that the library (which C, Dart or Swift bindings will link)
//! depends on no argument parser, log formatter or config-file reader.
//!
//! # Modules
//! `args` (the grammar), `settings` (flags, environment, config file),
//! `failure` (errors and exit codes), `tasks`, `account` and `syncing` (the
//! commands, by what they act on), `output` (tables, colour, JSON) and
//! `dates` (dates as people type them).

mod account;
mod args;
mod dates;
mod failure;
mod output;
mod settings;
mod syncing;
mod tasks;

use std::process::ExitCode;

use clap::Parser;
use codeedex_client_core::{Client, LogoutScope};

use args::{Cli, Command};
use failure::Failure;
use output::Output;
use tasks::{Mark, Reach, TagEdit};

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

/// Opens the device's client and hands the command to its module.
async fn run(cli: Cli, out: Output) -> Result<(), Failure> {
    let device_name = match &cli.command {
        Command::Login { device_name, .. } => device_name.clone(),
        _ => None,
    };
    let config = settings::client_config(&cli, device_name).map_err(Failure::usage)?;
    let client = Client::open(config)?;
    let reach = if cli.offline {
        Reach::Offline
    } else {
        Reach::Online
    };
    let out = &out;
    let client = &client;
    match cli.command {
        Command::Login { email, phone, .. } => account::login(client, out, email, phone).await,
        Command::Logout { others, all } => {
            let scope = match (others, all) {
                (true, _) => LogoutScope::Others,
                (_, true) => LogoutScope::All,
                _ => LogoutScope::This,
            };
            account::logout(client, out, scope).await
        }
        Command::Whoami => account::whoami(client, out, reach).await,
        Command::Sessions => account::sessions(client, out).await,
        Command::Add { title, fields } => tasks::add(client, out, reach, title, fields).await,
        Command::Ls {
            all,
            done,
            due,
            tag,
            search,
        } => {
            let query = tasks::ListQuery {
                all,
                done,
                due,
                tag,
                search,
            };
            tasks::ls(client, out, reach, query).await
        }
        Command::Show { id } => tasks::show(client, out, reach, &id).await,
        Command::Edit {
            id,
            title,
            fields,
            clear_tags,
        } => {
            let tags = if clear_tags {
                TagEdit::Replace
            } else {
                TagEdit::Add
            };
            tasks::edit(client, out, reach, &id, title, fields, tags).await
        }
        Command::Done { id } => tasks::mark(client, out, reach, &id, Mark::Done).await,
        Command::Undo { id } => tasks::mark(client, out, reach, &id, Mark::Open).await,
        Command::Rm { id } => tasks::rm(client, out, reach, &id).await,
        Command::History { id } => tasks::history(client, out, &id).await,
        Command::Sync { timeout } => syncing::sync(client, out, timeout).await,
        Command::Watch => syncing::watch(client, out).await,
        Command::Status => {
            syncing::status(client, out);
            Ok(())
        }
    }
}
