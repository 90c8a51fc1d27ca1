//! Sync states: what the server knows each peer storage has of each
//! document, persisted so that a reconnecting device is not sent again what
//! it already has; and the server's own storage id, which peers key their
//! states by.

use codeedex_schema::id::DocumentId;

use super::{Embedded, StoreError, pair_key};

impl Embedded {
    /// The persisted sync state of a document with a peer's storage.
    pub fn sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|e| {
            Ok(e.sync_states
                .get(pair_key(doc.as_bytes(), storage_id.as_bytes()))?
                .map(|v| v.to_vec()))
        })
    }

    /// Persists the sync state of a document with a peer's storage.
    pub(crate) fn put_sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.sync_states
                .insert(pair_key(doc.as_bytes(), storage_id.as_bytes()), state)?;
            Ok(())
        })
    }

    /// The server's storage id, created on first use.
    pub(crate) fn server_storage_id(
        &self,
        fresh: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        self.run(|e| {
            let _ = e.meta.compare_and_swap(
                b"storage_id",
                None as Option<&[u8]>,
                Some(fresh().as_bytes()),
            )?;
            let value = e
                .meta
                .get(b"storage_id")?
                .expect("written just above if it was missing");
            Ok(String::from_utf8_lossy(&value).into_owned())
        })
    }
}
