//! The command line's grammar (clap).

use clap::{Args, Parser, Subcommand};

/// Tasks on every device, in sync.
#[derive(Debug, Parser)]
#[command(name = "codeedex", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The server URL [env: CODEEDEX_SERVER; config: server; default: http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// The data directory of this device [env: CODEEDEX_HOME; config: home].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<String>,
    /// A config file instead of the one in the user's config directory [env: CODEEDEX_CONFIG].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<String>,
    /// Where tokens are kept: auto, keyring or file [env: CODEEDEX_TOKEN_STORE; config: token_store].
    #[arg(long, global = true, value_name = "STORE")]
    pub token_store: Option<String>,
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not contact the server (local commands only).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Log what happens to standard error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Sign in with a code sent by email or SMS.
    Login {
        /// The email address to send the code to.
        #[arg(long, conflicts_with = "phone")]
        email: Option<String>,
        /// The phone number (international format) to send the code to.
        #[arg(long)]
        phone: Option<String>,
        /// The name of this device in the session list.
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Sign out this device, the others, or all.
    Logout {
        /// End every other session of the account (this one stays).
        #[arg(long, conflicts_with = "all")]
        others: bool,
        /// End every session of the account, this one included.
        #[arg(long)]
        all: bool,
    },
    /// Show the signed-in account.
    Whoami,
    /// List the account's signed-in devices.
    Sessions,
    /// Add a task.
    Add {
        /// What to do.
        title: String,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// List tasks (open ones by default).
    Ls {
        /// Open and done tasks.
        #[arg(long, conflicts_with = "done")]
        all: bool,
        /// Done tasks only.
        #[arg(long)]
        done: bool,
        /// Due: overdue, today, tomorrow, week, or a date (YYYY-MM-DD): due on or before it.
        #[arg(long, value_name = "WHEN")]
        due: Option<String>,
        /// Only tasks with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only tasks whose title or notes contain this text.
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one task.
    Show {
        /// The task's id, or a unique prefix of it.
        id: String,
    },
    /// Change fields of a task.
    Edit {
        /// The task's id, or a unique prefix of it.
        id: String,
        /// A new title.
        #[arg(long)]
        title: Option<String>,
        #[command(flatten)]
        fields: FieldArgs,
        /// Remove every tag (before adding any --tag).
        #[arg(long)]
        clear_tags: bool,
    },
    /// Mark a task done.
    Done {
        /// The task's id, or a unique prefix of it.
        id: String,
    },
    /// Mark a task not done.
    Undo {
        /// The task's id, or a unique prefix of it.
        id: String,
    },
    /// Remove a task from the list.
    Rm {
        /// The task's id, or a unique prefix of it.
        id: String,
    },
    /// Show who changed a task, and when (asks the server).
    History {
        /// The task's id, or a unique prefix of it.
        id: String,
    },
    /// Sync with the server once, showing progress.
    Sync {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stay connected and show changes as they arrive (ctrl-c stops).
    Watch,
    /// Show the account, the server and the sync state of this device.
    Status,
}

/// Task fields shared by `add` and `edit`.
#[derive(Debug, Args)]
pub(crate) struct FieldArgs {
    /// Due date: YYYY-MM-DD, today, tomorrow, +N (days from today); `none` clears it.
    #[arg(long, value_name = "WHEN")]
    pub due: Option<String>,
    /// A tag (repeat for several).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// none, low, medium or high.
    #[arg(long)]
    pub priority: Option<String>,
    /// Details.
    #[arg(long)]
    pub notes: Option<String>,
}
