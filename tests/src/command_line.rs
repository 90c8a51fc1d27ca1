//! The `codeedex` command line as the tests run it: the binary built for
//! them, and a command on a device's own data directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::app::built_binary;

/// The CLI binary built for these tests (`codeedex-under-test`), next to
/// the server's; `CODEEDEX_CLI_BIN` names another.
pub fn cli_binary() -> PathBuf {
    built_binary("CODEEDEX_CLI_BIN", "codeedex-under-test")
}

/// `codeedex <args>` for a device whose data and configuration live under
/// `home`, talking to `server`, with tokens in a file (no keyring) and every
/// stream piped; the process dies with the handle.
pub fn cli_command(home: &Path, server: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(cli_binary());
    cmd.args(args)
        .env("CODEEDEX_HOME", home.join("data"))
        .env("CODEEDEX_SERVER", server)
        .env("CODEEDEX_TOKEN_STORE", "file")
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("NO_COLOR", "1")
        .env_remove("CODEEDEX_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}
