//! The task index: a summary of every task per user, kept up to date by the
//! hub as documents change, so that REST can list and filter tasks without
//! loading their documents.

use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, UserId};

use super::{Store, StoreError, decode, encode, pair_key};

impl Store {
    /// Records a task's summary for listing.
    pub(crate) fn put_task_summary(
        &self,
        user: UserId,
        doc: DocumentId,
        summary: &TaskView,
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

    /// Every task summary of a user, ordered by document id. A summary of
    /// another shape (written before a field was added, say) is left out,
    /// as listing would leave it out; one that is not JSON is corruption.
    pub(crate) fn task_summaries(
        &self,
        user: UserId,
    ) -> Result<Vec<(DocumentId, TaskView)>, StoreError> {
        self.run(|e| {
            let mut summaries = Vec::new();
            for item in e.task_index.scan_prefix(user.as_bytes()) {
                let (key, value) = item?;
                let id: [u8; 16] = key[16..].try_into().map_err(|_| StoreError::Malformed {
                    tree: "task_index",
                    what: "key is not user ‖ document",
                })?;
                let summary: serde_json::Value = decode("task_index", &value)?;
                if let Ok(task) = serde_json::from_value::<TaskView>(summary) {
                    summaries.push((DocumentId::from_bytes(id), task));
                }
            }
            Ok(summaries)
        })
    }
}
