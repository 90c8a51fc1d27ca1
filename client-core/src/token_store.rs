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
        Ok(Self::with_keyring(storage, dir, keyring))
    }

    /// The token store of `dir` with the keyring entry already chosen
    /// (`None`: no keyring). Tests pass an entry that refuses.
    fn with_keyring(
        storage: TokenStorage,
        dir: &Path,
        keyring: Option<keyring_core::Entry>,
    ) -> Self {
        Self {
            storage,
            file: dir.join(FILE_NAME),
            keyring,
        }
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

    /// A keyring that refuses every call, as a locked or absent one does.
    #[derive(Debug)]
    struct RefusingKeyring;

    impl RefusingKeyring {
        fn entry() -> keyring_core::Entry {
            keyring_core::Entry::new_with_credential(std::sync::Arc::new(RefusingKeyring))
        }

        fn refusal() -> keyring_core::Error {
            keyring_core::Error::NoStorageAccess("the test keyring refuses".into())
        }
    }

    impl keyring_core::api::CredentialApi for RefusingKeyring {
        fn set_secret(&self, _: &[u8]) -> keyring_core::Result<()> {
            Err(Self::refusal())
        }
        fn get_secret(&self) -> keyring_core::Result<Vec<u8>> {
            Err(Self::refusal())
        }
        fn delete_credential(&self) -> keyring_core::Result<()> {
            Err(Self::refusal())
        }
        fn get_credential(
            &self,
        ) -> keyring_core::Result<Option<std::sync::Arc<keyring_core::api::Credential>>> {
            Err(Self::refusal())
        }
        fn get_specifiers(&self) -> Option<(String, String)> {
            None
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn file_mode(dir: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// The default on this machine, whichever way it goes here: `describe`
    /// names the place that holds the tokens (the kernel keyring, and then
    /// no file; or the 0600 file), a new store of the same directory (a
    /// restart) finds them, and `clear` empties both places. (In the
    /// sandbox this was written in, the first keyring call of a process is
    /// refused with AccessDenied and later ones work.)
    #[cfg(target_os = "linux")]
    #[test]
    fn auto_on_this_machine_says_where_the_tokens_are_and_a_restart_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let account = format!("test-{}", uuid_like());
        let store = TokenStore::open(TokenStorage::Auto, dir.path(), &account).unwrap();
        store.save(&credentials()).unwrap();
        let file_written = dir.path().join(FILE_NAME).exists();
        let mode = file_written.then(|| file_mode(dir.path()));
        let in_keyring = keyring_entry(&account)
            .ok()
            .and_then(|entry| entry.get_secret().ok());
        let restarted = TokenStore::open(TokenStorage::Auto, dir.path(), &account).unwrap();
        let after_restart = restarted.load();
        let described = restarted.describe();
        restarted.clear().unwrap();
        let left_in_keyring = keyring_entry(&account)
            .ok()
            .and_then(|entry| entry.get_secret().ok());
        eprintln!(
            "tokens in the kernel keyring: {}, in the file: {file_written}",
            in_keyring.is_some()
        );
        assert_eq!(after_restart.unwrap(), Some(credentials()));
        match in_keyring {
            Some(bytes) => {
                assert_eq!(
                    serde_json::from_slice::<Credentials>(&bytes).unwrap(),
                    credentials()
                );
                assert!(
                    !file_written,
                    "the keyring took the tokens, yet a file was written"
                );
                assert_eq!(described, "keyring");
            }
            None => {
                assert!(
                    file_written,
                    "the tokens are neither in the keyring nor in a file"
                );
                assert_eq!(mode, Some(0o600));
                assert_eq!(described, "file");
            }
        }
        assert!(
            left_in_keyring.is_none(),
            "clear left the tokens in the keyring"
        );
        assert_eq!(restarted.load().unwrap(), None);
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn auto_with_a_working_keyring_keeps_no_file_and_a_restart_finds_the_tokens() {
        use keyring_core::api::CredentialStoreApi;
        let keyring = keyring_core::mock::Store::new().unwrap();
        let entry = || keyring.build(SERVICE, "device", None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A file left by an earlier fallback is replaced by the keyring.
        TokenStore::with_keyring(TokenStorage::File, dir.path(), None)
            .save(&credentials())
            .unwrap();
        let store = TokenStore::with_keyring(TokenStorage::Auto, dir.path(), Some(entry()));
        let mut newer = credentials();
        newer.refresh_token = "r2".into();
        store.save(&newer).unwrap();
        assert!(
            !dir.path().join(FILE_NAME).exists(),
            "the old file is still there"
        );
        assert_eq!(store.describe(), "keyring");
        assert_eq!(
            serde_json::from_slice::<Credentials>(&entry().get_secret().unwrap()).unwrap(),
            newer
        );
        drop(store);
        let restarted = TokenStore::with_keyring(TokenStorage::Auto, dir.path(), Some(entry()));
        assert_eq!(restarted.load().unwrap(), Some(newer));
        restarted.clear().unwrap();
        assert!(matches!(
            entry().get_secret(),
            Err(keyring_core::Error::NoEntry)
        ));
        assert_eq!(restarted.load().unwrap(), None);
    }

    #[test]
    fn auto_falls_back_to_the_0600_file_when_the_keyring_refuses_and_a_restart_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::with_keyring(
            TokenStorage::Auto,
            dir.path(),
            Some(RefusingKeyring::entry()),
        );
        assert_eq!(store.load().unwrap(), None);
        store.save(&credentials()).unwrap();
        assert_eq!(file_mode(dir.path()), 0o600);
        assert_eq!(store.describe(), "file");
        assert_eq!(store.load().unwrap(), Some(credentials()));
        drop(store);
        // A restart: a new store of the same directory, its keyring still
        // refusing, or no keyring at all.
        let restarted = TokenStore::with_keyring(
            TokenStorage::Auto,
            dir.path(),
            Some(RefusingKeyring::entry()),
        );
        assert_eq!(restarted.load().unwrap(), Some(credentials()));
        let without = TokenStore::with_keyring(TokenStorage::Auto, dir.path(), None);
        assert_eq!(without.load().unwrap(), Some(credentials()));
        restarted.clear().unwrap();
        assert!(!dir.path().join(FILE_NAME).exists());
        assert_eq!(without.load().unwrap(), None);
    }

    #[test]
    fn keyring_only_storage_reports_a_refusing_keyring_instead_of_writing_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::with_keyring(
            TokenStorage::Keyring,
            dir.path(),
            Some(RefusingKeyring::entry()),
        );
        let err = store.save(&credentials()).unwrap_err();
        assert!(err.starts_with("keyring:"), "{err}");
        assert!(!dir.path().join(FILE_NAME).exists());
        assert!(store.load().is_err());
    }

    fn uuid_like() -> String {
        format!("{:032x}", rand::random::<u128>())
    }
}
