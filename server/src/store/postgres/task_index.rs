//! The task index in PostgreSQL: a summary of every task per user, so that
//! REST can list and filter tasks without loading their documents. Appends
//! write a document's entry in their own transaction (see `appends.rs`).

use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::id::{DocumentId, UserId};

use super::{PgEngine, id16};
use tokio_postgres::types::Json;

use crate::store::{IndexUpdate, StoreError};

impl PgEngine {
    /// Every task summary of a user, ordered by document id. A summary of
    /// another shape (written before a field was added, say) is left out,
    /// as listing would leave it out.
    pub(crate) async fn task_summaries(
        &self,
        user: UserId,
    ) -> Result<Vec<(DocumentId, TaskView)>, StoreError> {
        let rows = self
            .query(
                "SELECT doc, summary FROM task_index WHERE user_id = $1 ORDER BY doc",
                &[&user.as_bytes().as_slice()],
            )
            .await?;
        let mut summaries = Vec::with_capacity(rows.len());
        for row in &rows {
            let doc = DocumentId::from_bytes(id16(row.get(0), "task_index")?);
            let summary: serde_json::Value = row.get(1);
            if let Ok(task) = serde_json::from_value::<TaskView>(summary) {
                summaries.push((doc, task));
            }
        }
        Ok(summaries)
    }

    /// Writes a document's entry outside an append, unless the document is
    /// deleted (whose entry is gone for good): a node that caught up with
    /// changes made elsewhere writes the summary of what it now holds.
    pub(crate) async fn put_task_summary(
        &self,
        owner: UserId,
        doc: DocumentId,
        update: &IndexUpdate,
    ) -> Result<(), StoreError> {
        let (owner, doc) = (owner.as_bytes().as_slice(), doc.as_bytes().as_slice());
        match update {
            IndexUpdate::Keep => {}
            IndexUpdate::Put(view) => {
                self.execute(
                    "INSERT INTO task_index (user_id, doc, summary) \
                     SELECT $1, $2, $3 WHERE EXISTS \
                       (SELECT 1 FROM documents WHERE doc = $2 AND deleted_at IS NULL) \
                     ON CONFLICT (user_id, doc) DO UPDATE SET summary = EXCLUDED.summary",
                    &[&owner, &doc, &Json(view)],
                )
                .await?;
            }
            IndexUpdate::Remove => {
                self.execute(
                    "DELETE FROM task_index WHERE user_id = $1 AND doc = $2",
                    &[&owner, &doc],
                )
                .await?;
            }
        }
        Ok(())
    }
}
