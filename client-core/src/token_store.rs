//! Where the tokens live between runs: the OS keyring or a 0600 file.
//!
//! One entry per data directory, named after the device's storage id, so
//! two devices (two data directories) of one machine never share tokens.
//! With [`TokenStorage::Auto`] the keyring is tried first and the file is
//! the fallback; loading looks in both, saving clears the other place.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use codeedex_schema::id::SessionId;
use serde::{Deserialize, Serialize};

use crate::config::TokenStorage;

/// The keyring service name of every entry.
const SERVICE: &str = "codeedex";
/// The token file's name inside the data directory.
const FILE_NAME: &str = "tokens.json";

/// A signed-in session's tokens. `Debug` prints no secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// The single-use refresh token.
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// How long access tokens live, in seconds (to refresh before expiry).
    pub lifetime_secs: u64,
    /// The session.
    pub session_id: SessionId,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("expires_at", &self.expires_at)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// A token store of one data directory.
pub(crate) struct TokenStore {
    storage: TokenStorage,
    file: PathBuf,
    keyring: Option<keyring_core::Entry>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("storage", &self.storage)
            .field("file", &self.file)
            .finish()
    }
}

#[cfg(target_os = "linux")]
fn keyring_entry(account: &str) -> Result<keyring_core::Entry, String> {
    use keyring_core::api::CredentialStoreApi;
    let store = linux_keyutils_keyring_store::Store::new().map_err(|e| e.to_string())?;
    store
        .build(SERVICE, account, None)
        .map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn keyring_entry(_account: &str) -> Result<keyring_core::Entry, String> {
    Err("no keyring store is built in for this platform".to_owned())
}

impl TokenStore {
    /// The token store of the data directory `dir`, whose device has
    /// `storage_id`.
    pub fn open(storage: TokenStorage, dir: &Path, storage_id: &str) -> Result<Self, String> {
        let keyring = match storage {
            TokenStorage::File => None,
            TokenStorage::Keyring => Some(keyring_entry(storage_id)?),
            TokenStorage::Auto => keyring_entry(storage_id).ok(),
        };
        Ok(Self {
            storage,
            file: dir.join(FILE_NAME),
            keyring,
        })
    }

    /// Where tokens go: `keyring` or `file`.
    pub fn describe(&self) -> &'static str {
        match (self.storage, &self.keyring) {
            (TokenStorage::File, _) | (TokenStorage::Auto, None) => "file",
            (TokenStorage::Keyring, _) => "keyring",
            (TokenStorage::Auto, Some(entry)) => match entry.get_secret() {
                Ok(_) => "keyring",
                Err(_) if self.file.exists() => "file",
                Err(keyring_core::Error::NoEntry) => "keyring",
                Err(_) => "file",
            },
        }
    }

    /// The stored credentials, if any.
    pub fn load(&self) -> Result<Option<Credentials>, String> {
        if let Some(entry) = &self.keyring {
            match entry.get_secret() {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(|_| "the keyring entry is corrupt".to_owned());
                }
                Err(keyring_core::Error::NoEntry) => {}
                Err(e) if self.storage == TokenStorage::Keyring => {
                    return Err(format!("keyring: {e}"));
                }
                Err(_) => {}
            }
        }
        if self.storage == TokenStorage::Keyring {
            return Ok(None);
        }
        match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| format!("{} is corrupt", self.file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.file.display())),
        }
    }

    /// Stores credentials, replacing any.
    pub fn save(&self, credentials: &Credentials) -> Result<(), String> {
        let bytes = serde_json::to_vec(credentials).map_err(|e| e.to_string())?;
        if let Some(entry) = &self.keyring {
            match entry.set_secret(&bytes) {
                Ok(()) => {
                    remove_file(&self.file)?;
                    return Ok(());
                }
                Err(e) if self.storage == TokenStorage::Keyring => {
                    return Err(format!("keyring: {e}"));
                }
                Err(_) => {}
            }
        }
        write_private_file(&self.file, &bytes)
    }

    /// Forgets the credentials.
    pub fn clear(&self) -> Result<(), String> {
        if let Some(entry) = &self.keyring {
            match entry.delete_credential() {
                Ok(()) | Err(keyring_core::Error::NoEntry) => {}
                Err(e) if self.storage == TokenStorage::Keyring => {
                    return Err(format!("keyring: {e}"));
                }
                Err(_) => {}
            }
        }
        remove_file(&self.file)
    }
}

fn remove_file(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Writes a file only the user can read, atomically (a temporary file
/// created with mode 0600, then renamed over the old one).
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            access_token: "a.b.c".into(),
            refresh_token: "r".into(),
            expires_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            lifetime_secs: 900,
            session_id: SessionId::from_random_bytes([1; 16]),
        }
    }

    #[test]
    fn the_file_store_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(TokenStorage::File, dir.path(), "device").unwrap();
        assert_eq!(store.load().unwrap(), None);
        store.save(&credentials()).unwrap();
        assert_eq!(store.load().unwrap(), Some(credentials()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
        assert_eq!(store.describe(), "file");
    }

    #[test]
    fn debug_prints_no_secret() {
        let printed = format!("{:?}", credentials());
        assert!(!printed.contains("a.b.c") && !printed.contains("\"r\""));
    }

    #[test]
    fn auto_falls_back_or_uses_the_keyring_and_always_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let account = format!("test-{}", uuid_like());
        let store = TokenStore::open(TokenStorage::Auto, dir.path(), &account).unwrap();
        store.save(&credentials()).unwrap();
        assert_eq!(store.load().unwrap(), Some(credentials()));
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    fn uuid_like() -> String {
        format!("{:032x}", rand::random::<u128>())
    }
}
