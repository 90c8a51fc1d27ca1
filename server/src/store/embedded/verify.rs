//! A consistency check of the document records, for tests and operators
//! after a crash or a disk failure: everything written in one transaction
//! must agree, and nothing may be half-written.

use std::collections::HashMap;

use codeedex_schema::id::{DocumentId, UserId};

use super::super::quota::Usage;
use super::DocumentMeta;
use super::usage::decode_usage;
use super::{Embedded, Engine, StoreError, decode};

impl Embedded {
    /// Checks that the document records agree with each other, and returns
    /// what does not (empty when the store is consistent):
    /// - every document's log holds exactly the events `0..next_seq`, each of
    ///   which decodes, and their bytes are the document's byte count;
    /// - a snapshot covers no more events than the log holds;
    /// - every user's usage counts their live documents and bytes;
    /// - every task summary belongs to a live document of its user.
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        self.run(Engine::verify)
    }
}

fn id16(key: &[u8]) -> Option<[u8; 16]> {
    key.get(..16)?.try_into().ok()
}

impl Engine {
    fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let mut usage: HashMap<UserId, Usage> = HashMap::new();
        let mut live: HashMap<DocumentId, UserId> = HashMap::new();
        for item in self.documents.iter() {
            let (key, value) = item?;
            let Some(id) = id16(&key) else {
                problems.push("a document key is not a document id".to_owned());
                continue;
            };
            let doc = DocumentId::from_bytes(id);
            let meta: DocumentMeta = decode("documents", &value)?;
            let events = match self.events_from(doc, 0) {
                Ok(events) => events,
                Err(e) => {
                    problems.push(format!("document {doc}: its log does not decode: {e}"));
                    continue;
                }
            };
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            if seqs != (0..meta.next_seq).collect::<Vec<_>>() {
                problems.push(format!(
                    "document {doc}: next_seq is {} but the log holds {} events (first {:?}, last {:?})",
                    meta.next_seq,
                    seqs.len(),
                    seqs.first(),
                    seqs.last()
                ));
            }
            let bytes: u64 = events.iter().map(|e| e.change.len() as u64).sum();
            if bytes != meta.bytes {
                problems.push(format!(
                    "document {doc}: counts {} bytes, its log holds {bytes}",
                    meta.bytes
                ));
            }
            if let Some(snapshot) = self.snapshots.get(doc.as_bytes())? {
                let covers = snapshot
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                match covers {
                    Some(covers) if covers <= meta.next_seq => {}
                    Some(covers) => problems.push(format!(
                        "document {doc}: its snapshot covers {covers} events, the log holds {}",
                        meta.next_seq
                    )),
                    None => problems.push(format!("document {doc}: its snapshot is truncated")),
                }
            }
            if meta.deleted_at.is_none() {
                let used = usage.entry(meta.owner).or_default();
                used.documents += 1;
                used.bytes += meta.bytes;
                live.insert(doc, meta.owner);
            }
        }
        for item in self.usage.iter() {
            let (key, value) = item?;
            let Some(id) = id16(&key) else {
                problems.push("a usage key is not a user id".to_owned());
                continue;
            };
            let user = UserId::from_bytes(id);
            let stored = decode_usage(Some(value))?;
            let counted = usage.remove(&user).unwrap_or_default();
            if stored != counted {
                problems.push(format!(
                    "user {user}: usage says {stored:?}, the documents add up to {counted:?}"
                ));
            }
        }
        for (user, counted) in usage {
            problems.push(format!(
                "user {user}: has {counted:?} in documents but no usage record"
            ));
        }
        for item in self.task_index.iter() {
            let (key, _) = item?;
            let (Some(user), Some(doc)) = (id16(&key), key.get(16..).and_then(id16)) else {
                problems.push("a task index key is not user ‖ document".to_owned());
                continue;
            };
            let (user, doc) = (UserId::from_bytes(user), DocumentId::from_bytes(doc));
            if live.get(&doc) != Some(&user) {
                problems.push(format!(
                    "the task list of user {user} shows {doc}, which is not a live document of theirs"
                ));
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::configuration::limits::Quota;
    use crate::store::embedded::documents::seq_key;
    use crate::store::embedded::documents::tests::append;

    #[test]
    fn a_store_written_through_its_api_verifies_and_a_half_written_log_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap();
        let ann = UserId::from_random_bytes([1; 16]);
        let (kept, deleted) = (
            DocumentId::from_random_bytes([2; 16]),
            DocumentId::from_random_bytes([3; 16]),
        );
        for doc in [kept, deleted] {
            store
                .claim_document(doc, ann, Utc::now(), &Quota::default())
                .unwrap();
            append(
                &store,
                doc,
                ann,
                None,
                Utc::now(),
                &[vec![1; 5], vec![2; 3]],
                &Quota::default(),
            )
            .unwrap();
        }
        store.write_snapshot(kept, 2, b"snapshot").unwrap();
        store.tombstone_document(deleted, Utc::now()).unwrap();
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());

        // What a torn write would leave: an event the document does not count.
        store
            .run(|e| {
                e.events
                    .insert(seq_key(kept, 7), e.events.get(seq_key(kept, 0))?.unwrap())?;
                Ok(())
            })
            .unwrap();
        let problems = store.verify().unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("next_seq is 2"), "{problems:?}");
    }
}
