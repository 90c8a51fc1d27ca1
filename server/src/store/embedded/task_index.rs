//! The task index: a summary of every task per user, so that REST can list
//! and filter tasks without loading their documents. The hub says what an
//! append does to a document's entry, and the append writes it in its own
//! transaction ([`super::documents::IndexUpdate`]).

use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, UserId};

use sled::Transactional;

use super::{DocumentMeta, Embedded, IndexUpdate, StoreError, TxResult, decode, encode, pair_key};

impl Embedded {
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

    /// Writes a document's entry outside an append, unless the document is
    /// deleted (whose entry is gone for good): a node that caught up with
    /// changes made elsewhere writes the summary of what it now holds.
    pub(crate) fn put_task_summary(
        &self,
        owner: UserId,
        doc: DocumentId,
        update: &IndexUpdate,
    ) -> Result<(), StoreError> {
        self.run(|e| {
            (&e.documents, &e.task_index).transaction(|(documents, index)| -> TxResult<()> {
                let live = match documents.get(doc.as_bytes())? {
                    Some(bytes) => decode::<DocumentMeta>("documents", &bytes)
                        .map_err(sled::transaction::ConflictableTransactionError::Abort)?
                        .deleted_at
                        .is_none(),
                    None => false,
                };
                let key = pair_key(owner.as_bytes(), doc.as_bytes());
                match update {
                    IndexUpdate::Put(view) if live => {
                        index.insert(key, encode(view))?;
                    }
                    IndexUpdate::Remove => {
                        index.remove(key)?;
                    }
                    IndexUpdate::Keep | IndexUpdate::Put(_) => {}
                }
                Ok(())
            })?;
            Ok(())
        })
    }
}
