//! The task index: a summary of every task per user, kept up to date by the
//! hub as documents change, so that REST can list and filter tasks without
//! loading their documents.

use codeedex_schema::id::{DocumentId, UserId};

use super::{Store, StoreError, decode, encode, pair_key};

impl Store {
    /// Records a task's summary for listing.
    pub(crate) fn put_task_summary(
        &self,
        user: UserId,
        doc: DocumentId,
        summary: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.task_index
                .insert(pair_key(user.as_bytes(), doc.as_bytes()), encode(summary))?;
            Ok(())
        })
    }

    /// Drops a document's summary from the task list, if it has one.
    pub(crate) fn remove_task_summary(
        &self,
        user: UserId,
        doc: DocumentId,
    ) -> Result<(), StoreError> {
        self.run(|e| {
            e.task_index
                .remove(pair_key(user.as_bytes(), doc.as_bytes()))?;
            Ok(())
        })
    }

    /// Every task summary of a user, ordered by document id.
    pub(crate) fn task_summaries(
        &self,
        user: UserId,
    ) -> Result<Vec<(DocumentId, serde_json::Value)>, StoreError> {
        self.run(|e| {
            e.task_index
                .scan_prefix(user.as_bytes())
                .map(|item| {
                    let (key, value) = item?;
                    let id: [u8; 16] = key[16..].try_into().map_err(|_| StoreError::Corrupt {
                        tree: "task_index",
                        source: serde::de::Error::custom("key is not user ‖ document"),
                    })?;
                    Ok((
                        DocumentId::from_random_bytes(id),
                        decode("task_index", &value)?,
                    ))
                })
                .collect()
        })
    }
}
