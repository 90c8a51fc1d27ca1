//! Where the command line's settings come from: flags, then environment
//! variables, then a TOML config file, then defaults.
//!
//! The config file is `<config dir>/codeedex/config.toml` (on Linux
//! `~/.config/codeedex/config.toml`), or the file named by `--config` or
//! `CODEEDEX_CONFIG`:
//!
//! ```toml
//! server = "https://tasks.example.com"
//! home = "/home/ann/.local/share/codeedex"
//! token_store = "auto"       # auto, keyring or file
//! device_name = "ann's laptop"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::args::Cli;
use codeedex_client_core::{ClientConfig, TokenStorage};

/// The server when nothing says otherwise.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    home: Option<String>,
    token_store: Option<String>,
    device_name: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_config_file(cli: &Cli) -> Result<ConfigFile, String> {
    let (path, explicit) = match cli.config.clone().or_else(|| env("CODEEDEX_CONFIG")) {
        Some(path) => (PathBuf::from(path), true),
        None => match dirs::config_dir() {
            Some(dir) => (dir.join("codeedex").join("config.toml"), false),
            None => return Ok(ConfigFile::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(ConfigFile::default())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The client configuration for this invocation.
pub(crate) fn client_config(
    cli: &Cli,
    device_name: Option<String>,
) -> Result<ClientConfig, String> {
    let file = read_config_file(cli)?;
    let server = cli
        .server
        .clone()
        .or_else(|| env("CODEEDEX_SERVER"))
        .or(file.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(format!(
            "the server URL must start with http:// or https://, got {server:?}"
        ));
    }
    let home = match cli
        .home
        .clone()
        .or_else(|| env("CODEEDEX_HOME"))
        .or(file.home)
    {
        Some(home) => PathBuf::from(home),
        None => dirs::data_dir()
            .map(|d| d.join("codeedex"))
            .ok_or("no data directory: set --home or CODEEDEX_HOME")?,
    };
    let token_store = match cli
        .token_store
        .clone()
        .or_else(|| env("CODEEDEX_TOKEN_STORE"))
        .or(file.token_store)
    {
        Some(name) => TokenStorage::parse(&name).ok_or(format!(
            "token store must be auto, keyring or file, got {name:?}"
        ))?,
        None => TokenStorage::Auto,
    };
    let mut config = ClientConfig::new(home, &server);
    config.token_storage = token_store;
    config.device_name = device_name
        .or(file.device_name)
        .or_else(|| Some(default_device_name()));
    Ok(config)
}

/// `codeedex on <host>`, from the host name when the system tells it.
fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| env("HOSTNAME"));
    match host {
        Some(host) => format!("codeedex on {}", host.chars().take(40).collect::<String>()),
        None => "codeedex".to_owned(),
    }
}
