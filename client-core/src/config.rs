//! How a [`Client`](crate::Client) is opened.

use std::path::PathBuf;
use std::time::Duration;

/// Where the tokens are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenStorage {
    /// The OS keyring if one answers, otherwise a file (the default).
    #[default]
    Auto,
    /// The OS keyring only (Linux: the kernel key retention service).
    Keyring,
    /// A file in the data directory, readable only by the user (mode 0600).
    File,
}

impl TokenStorage {
    /// Parses `auto`, `keyring` or `file`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "keyring" => Some(Self::Keyring),
            "file" => Some(Self::File),
            _ => None,
        }
    }
}

/// Settings of one client: a data directory (one per device and account)
/// and a server.
///
/// ```
/// use codeedex_client_core::ClientConfig;
/// let config = ClientConfig::new("/tmp/codeedex-doc-example", "http://127.0.0.1:8080");
/// assert_eq!(config.server_url, "http://127.0.0.1:8080");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The directory holding the local store (and the token file, if used).
    pub data_dir: PathBuf,
    /// The server's base URL, `http://` or `https://`, without a trailing path.
    pub server_url: String,
    /// Where tokens are kept.
    pub token_storage: TokenStorage,
    /// The name shown in the session list for this device.
    pub device_name: Option<String>,
    /// How long the sync connection may stay silent before the device takes
    /// it for dead and reconnects. The server pings every 15 s; after two
    /// thirds of this without a frame the device pings too. The default is
    /// 30 s.
    pub sync_silence_limit: Duration,
}

impl ClientConfig {
    /// A configuration with the default token storage and no device name.
    pub fn new(data_dir: impl Into<PathBuf>, server_url: &str) -> Self {
        Self {
            data_dir: data_dir.into(),
            server_url: server_url.trim_end_matches('/').to_owned(),
            token_storage: TokenStorage::Auto,
            device_name: None,
            sync_silence_limit: Duration::from_secs(30),
        }
    }
}
