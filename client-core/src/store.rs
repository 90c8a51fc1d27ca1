//! The local store: the only module that names sled.
//!
//! Five trees, each keyed by fixed-width bytes so that prefix scans never
//! match a longer key by accident:
//!
//! - `documents`: document id (16 bytes) → the whole saved Automerge
//!   document. Task documents are small, so a full save per change is cheap
//!   and leaves nothing to compact.
//! - `sync_states`: document id → the encoded `automerge::sync::State` for
//!   the server (its shared heads), so that a restart resends nothing the
//!   server already has.
//! - `unlisted`: document id → empty: tasks created before the root document
//!   arrived from the server, still to be added to it.
//! - `deletions`: document id → empty: tasks deleted on this device whose
//!   deletion the server has not yet confirmed (see `sync::deletions`).
//! - `meta`: small named values (actor id, storage id, account, root
//!   document id, catch-up cursor, time of the last sync).
//!
//! sled buffers writes; [`LocalStore::flush`] makes them durable. Local task
//! operations flush before they return.

use std::path::Path;
use std::time::{Duration, Instant};

use codeedex_schema::id::DocumentId;

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (another `codeedex` command, or `codeedex watch`) has
    /// the data directory open.
    #[error("the data directory {0} is in use by another codeedex process")]
    InUse(String),
    /// sled failed.
    #[error("local storage failed: {0}")]
    Sled(String),
    /// A stored value does not decode.
    #[error("local storage holds a corrupt {0} record")]
    Corrupt(&'static str),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

/// Names of the values in the `meta` tree.
pub(crate) mod meta_key {
    /// This device's Automerge actor id (16 random bytes).
    pub const ACTOR: &str = "actor";
    /// This device's storage id (a UUID string) announced to the server.
    pub const STORAGE_ID: &str = "storage_id";
    /// The signed-in account as JSON (`UserView`).
    pub const ACCOUNT: &str = "account";
    /// The user's root document id (bs58check text).
    pub const ROOT: &str = "root_document";
    /// The catch-up cursor (u64 big-endian).
    pub const CURSOR: &str = "catch_up_cursor";
    /// When the client was last up to date (i64 milliseconds, big-endian).
    pub const LAST_SYNC: &str = "last_sync";
}

/// The local store of one data directory.
pub(crate) struct LocalStore {
    db: sled::Db,
    documents: sled::Tree,
    sync_states: sled::Tree,
    unlisted: sled::Tree,
    deletions: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

fn doc_id(key: &[u8]) -> Result<DocumentId, StoreError> {
    let bytes: [u8; 16] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt("document key"))?;
    Ok(DocumentId::from_bytes(bytes))
}

/// How long an open waits for a just-closed handle to release the lock.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// True when sled refused to open because another handle holds the lock.
fn is_lock_refusal(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl LocalStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// A store that this process has just closed may keep its file lock for
    /// a moment (a write job on sled's IO thread pool still holds the file
    /// after the flush it belongs to completed), so the open waits up to
    /// [`LOCK_RELEASE_WAIT`] for the lock before answering that the
    /// directory is in use.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_within(dir, LOCK_RELEASE_WAIT)
    }

    fn open_within(dir: &Path, lock_wait: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Sled(format!("cannot create {}: {e}", dir.display())))?;
        let config = sled::Config::new().path(dir.join("store"));
        let deadline = Instant::now() + lock_wait;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_refusal(&e) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::InUse(dir.display().to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self {
            documents: db.open_tree("documents")?,
            sync_states: db.open_tree("sync_states")?,
            unlisted: db.open_tree("unlisted")?,
            deletions: db.open_tree("deletions")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Makes every write so far durable, without blocking the runtime.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Every stored document.
    pub fn documents(&self) -> Result<Vec<(DocumentId, Vec<u8>)>, StoreError> {
        self.documents
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((doc_id(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// Saves a whole document.
    pub fn put_document(&self, id: DocumentId, bytes: &[u8]) -> Result<(), StoreError> {
        self.documents.insert(id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Every stored sync state.
    pub fn sync_states(&self) -> Result<Vec<(DocumentId, Vec<u8>)>, StoreError> {
        self.sync_states
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((doc_id(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// Saves the sync state of one document.
    pub fn put_sync_state(&self, id: DocumentId, bytes: &[u8]) -> Result<(), StoreError> {
        self.sync_states.insert(id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Tasks not yet added to the root document.
    pub fn unlisted(&self) -> Result<Vec<DocumentId>, StoreError> {
        self.unlisted.iter().keys().map(|k| doc_id(&k?)).collect()
    }

    /// Replaces the set of unlisted tasks.
    pub fn put_unlisted(&self, ids: &[DocumentId]) -> Result<(), StoreError> {
        self.unlisted.clear()?;
        for id in ids {
            self.unlisted.insert(id.as_bytes(), &[])?;
        }
        Ok(())
    }

    /// Tasks deleted here whose deletion the server has not confirmed.
    pub fn deletions(&self) -> Result<Vec<DocumentId>, StoreError> {
        self.deletions.iter().keys().map(|k| doc_id(&k?)).collect()
    }

    /// Records a deletion to tell the server of.
    pub fn add_deletion(&self, id: DocumentId) -> Result<(), StoreError> {
        self.deletions.insert(id.as_bytes(), &[])?;
        Ok(())
    }

    /// Forgets a deletion the server has confirmed.
    pub fn remove_deletion(&self, id: DocumentId) -> Result<(), StoreError> {
        self.deletions.remove(id.as_bytes())?;
        Ok(())
    }

    /// A raw meta value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// Sets a raw meta value.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    /// A meta value holding a big-endian u64, 0 when absent.
    pub fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        match self.meta(key)? {
            None => Ok(0),
            Some(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("counter"))?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// Sets a big-endian u64 meta value.
    pub fn put_meta_u64(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.put_meta(key, &value.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_reopen_and_a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocumentId::from_random_bytes([1; 16]);
        {
            let store = LocalStore::open(dir.path()).unwrap();
            store.put_document(id, b"doc").unwrap();
            store.put_sync_state(id, b"state").unwrap();
            store.put_meta_u64(meta_key::CURSOR, 42).unwrap();
            store.put_unlisted(&[id]).unwrap();
            store.add_deletion(id).unwrap();
            store.flush().unwrap();
            assert!(matches!(
                LocalStore::open_within(dir.path(), Duration::ZERO),
                Err(StoreError::InUse(_))
            ));
        }
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.documents().unwrap(), vec![(id, b"doc".to_vec())]);
        assert_eq!(store.sync_states().unwrap(), vec![(id, b"state".to_vec())]);
        assert_eq!(store.meta_u64(meta_key::CURSOR).unwrap(), 42);
        assert_eq!(store.unlisted().unwrap(), vec![id]);
        assert_eq!(store.deletions().unwrap(), vec![id]);
        store.remove_deletion(id).unwrap();
        assert!(store.deletions().unwrap().is_empty());
    }
}
