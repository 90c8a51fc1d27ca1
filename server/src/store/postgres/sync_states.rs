//! Sync states in PostgreSQL: what the server knows each peer storage has
//! of each document; and the server's storage id, which peers key their
//! states by. Every node of a cluster shares the one storage id: to a
//! peer, the nodes are one server with one store.

use codeedex_schema::id::DocumentId;

use super::PgEngine;
use crate::store::StoreError;

impl PgEngine {
    /// The persisted sync state of a document with a peer's storage.
    pub(crate) async fn sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .query_opt(
                "SELECT state FROM sync_states WHERE doc = $1 AND storage_id = $2",
                &[&doc.as_bytes().as_slice(), &storage_id],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Persists the sync state of a document with a peer's storage.
    pub(crate) async fn put_sync_state(
        &self,
        doc: DocumentId,
        storage_id: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO sync_states (doc, storage_id, state) VALUES ($1, $2, $3) \
                 ON CONFLICT (doc, storage_id) DO UPDATE SET state = EXCLUDED.state",
            )
            .await
            .map_err(|e| self.fail(e))?;
        client
            .execute(
                &statement,
                &[&doc.as_bytes().as_slice(), &storage_id, &state],
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The server's storage id, created on first use: of concurrent first
    /// uses (on any node) the first insert wins and every caller reads it.
    pub(crate) async fn server_storage_id(
        &self,
        fresh: impl FnOnce() -> String + Send,
    ) -> Result<String, StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('storage_id', $1) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .await
            .map_err(|e| self.fail(e))?;
        client
            .execute(&insert, &[&fresh()])
            .await
            .map_err(|e| self.fail(e))?;
        let select = client
            .prepare_cached("SELECT value FROM meta WHERE key = 'storage_id'")
            .await
            .map_err(|e| self.fail(e))?;
        let row = client
            .query_one(&select, &[])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(row.get(0))
    }
}
