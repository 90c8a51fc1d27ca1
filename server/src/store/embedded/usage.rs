//! Usage counters in the embedded engine: each user's live documents and
//! their stored bytes, kept in the `usage` tree for quotas.

use codeedex_schema::id::{DocumentId, UserId};

use super::super::quota::Usage;
use super::{DocumentMeta, Engine, StoreError, decode};

pub(crate) fn decode_usage(bytes: Option<sled::IVec>) -> Result<Usage, StoreError> {
    bytes.map_or(Ok(Usage::default()), |b| decode("usage", &b))
}

#[cfg(test)]
impl super::Embedded {
    /// What a user uses now.
    pub(crate) fn usage(&self, user: UserId) -> Result<Usage, StoreError> {
        self.run(|e| decode_usage(e.usage.get(user.as_bytes())?))
    }
}

impl Engine {
    /// Counts every user's usage from the documents and their logs.
    pub(crate) fn rebuild_usage(&self) -> Result<(), StoreError> {
        let mut totals = std::collections::HashMap::<UserId, Usage>::new();
        for item in self.documents.iter() {
            let (key, value) = item?;
            let mut meta: DocumentMeta = decode("documents", &value)?;
            if meta.deleted_at.is_some() {
                continue;
            }
            if meta.bytes == 0 && meta.next_seq > 0 {
                let id: [u8; 16] = key.as_ref().try_into().map_err(|_| StoreError::Malformed {
                    tree: "documents",
                    what: "key is not a document id",
                })?;
                meta.bytes = self
                    .events_from(DocumentId::from_bytes(id), 0)?
                    .iter()
                    .map(|event| event.change.len() as u64)
                    .sum();
                self.documents.insert(&key, super::encode(&meta))?;
            }
            let usage = totals.entry(meta.owner).or_default();
            usage.documents += 1;
            usage.bytes += meta.bytes;
        }
        for (user, usage) in totals {
            self.usage.insert(user.as_bytes(), super::encode(&usage))?;
        }
        self.db.flush()?;
        Ok(())
    }
}
