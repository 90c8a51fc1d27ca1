//! Export for the migration to PostgreSQL (`store/migration.rs`): what the
//! embedded engine keeps, page by page in key order, decoded into the
//! engine-neutral [`Batch`]es; and each kind counted, for the check.
//!
//! A page ends after the key it returns; the next page starts after it.
//! Only the trees that hold records are read: the ones that index them
//! (identities, user sessions, session tokens, feed positions) follow from
//! the records in PostgreSQL.

use std::ops::Bound;

use codeedex_schema::id::{DocumentId, UserId};

use super::super::migration::{Batch, ExportedDocument, Kind, PageLimits};
use super::{Embedded, Engine, EventRecord, StoreError, decode, seq_in_key};

/// The 16-byte id at the start of a key in `tree`.
fn leading_id(key: &[u8], tree: &'static str) -> Result<[u8; 16], StoreError> {
    key.get(..16)
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .ok_or(StoreError::Malformed {
            tree,
            what: "key does not start with a 16-byte id",
        })
}

/// The 16-byte id after the first one in a key of exactly two ids.
fn second_id(key: &[u8], tree: &'static str) -> Result<[u8; 16], StoreError> {
    key.get(16..)
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
        .ok_or(StoreError::Malformed {
            tree,
            what: "key is not two 16-byte ids",
        })
}

impl Embedded {
    /// How many records of `kind` the store holds.
    pub(crate) fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        self.run(|e| Ok(e.tree_of(kind).len() as u64))
    }

    /// The server's storage id, if one was ever created.
    pub(crate) fn exported_storage_id(&self) -> Result<Option<String>, StoreError> {
        self.run(|e| {
            Ok(e.meta
                .get(b"storage_id")?
                .map(|value| String::from_utf8_lossy(&value).into_owned()))
        })
    }

    /// The ids of up to `limit` documents after the one keyed `after`.
    pub(crate) fn document_ids(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<DocumentId>, StoreError> {
        self.run(|e| {
            range_after(&e.documents, after)
                .take(limit)
                .map(|item| {
                    let (key, _) = item?;
                    Ok(DocumentId::from_bytes(leading_id(&key, "documents")?))
                })
                .collect()
        })
    }

    /// The records of `kind` after the key `after` (from the first when
    /// `None`), at most as many as `limits` allow, and the key of the last
    /// one. An empty batch means there are no more.
    pub(crate) fn export(
        &self,
        kind: Kind,
        after: Option<&[u8]>,
        limits: PageLimits,
    ) -> Result<(Batch, Vec<u8>), StoreError> {
        self.run(|e| e.export(kind, after, limits))
    }
}

fn range_after<'t>(
    tree: &'t sled::Tree,
    after: Option<&[u8]>,
) -> impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 't {
    let start = match after {
        Some(key) => Bound::Excluded(sled::IVec::from(key)),
        None => Bound::Unbounded,
    };
    tree.range::<sled::IVec, _>((start, Bound::Unbounded))
}

impl Engine {
    fn tree_of(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Users => &self.users,
            Kind::Otp => &self.otp,
            Kind::Sessions => &self.sessions,
            Kind::RefreshTokens => &self.refresh_tokens,
            Kind::Audit => &self.audit,
            Kind::Documents => &self.documents,
            Kind::Events => &self.events,
            Kind::Snapshots => &self.snapshots,
            Kind::Feed => &self.user_feed,
            Kind::TaskIndex => &self.task_index,
            Kind::Usage => &self.usage,
            Kind::SyncStates => &self.sync_states,
        }
    }

    fn export(
        &self,
        kind: Kind,
        after: Option<&[u8]>,
        limits: PageLimits,
    ) -> Result<(Batch, Vec<u8>), StoreError> {
        if kind == Kind::Documents {
            return self.export_documents(after, limits);
        }
        let mut last = after.map(<[u8]>::to_vec).unwrap_or_default();
        let tree = self.tree_of(kind);
        let mut page = Vec::new();
        for item in range_after(tree, after).take(limits.records) {
            let (key, value) = item?;
            last = key.to_vec();
            page.push((key, value));
        }
        let batch = match kind {
            Kind::Users => Batch::Users(
                page.iter()
                    .map(|(_, v)| decode("users", v))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Otp => Batch::Otp(
                page.iter()
                    .map(|(k, v)| Ok((String::from_utf8_lossy(k).into_owned(), decode("otp", v)?)))
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::Sessions => Batch::Sessions(
                page.iter()
                    .map(|(_, v)| decode("sessions", v))
                    .collect::<Result<_, _>>()?,
            ),
            Kind::RefreshTokens => Batch::RefreshTokens(
                page.iter()
                    .map(|(k, v)| {
                        let hash = <[u8; 32]>::try_from(k.as_ref()).map_err(|_| {
                            StoreError::Malformed {
                                tree: "refresh_tokens",
                                what: "key is not a 32-byte hash",
                            }
                        })?;
                        Ok((hash, decode("refresh_tokens", v)?))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::Audit => Batch::Audit(
                page.iter()
                    .map(|(k, v)| {
                        Ok((
                            UserId::from_bytes(leading_id(k, "audit")?),
                            seq_in_key(k, "audit", "key is not user ‖ sequence")?,
                            decode("audit", v)?,
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::Snapshots => Batch::Snapshots(
                page.iter()
                    .map(|(k, v)| {
                        let covers = v
                            .get(..8)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map(u64::from_be_bytes)
                            .ok_or(StoreError::Malformed {
                                tree: "snapshots",
                                what: "too short",
                            })?;
                        Ok((
                            DocumentId::from_bytes(leading_id(k, "snapshots")?),
                            covers,
                            v[8..].to_vec(),
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::Feed => Batch::Feed(
                page.iter()
                    .map(|(k, v)| {
                        let doc = <[u8; 16]>::try_from(v.as_ref()).map_err(|_| {
                            StoreError::Malformed {
                                tree: "user_feed",
                                what: "value is not a document id",
                            }
                        })?;
                        Ok((
                            UserId::from_bytes(leading_id(k, "user_feed")?),
                            seq_in_key(k, "user_feed", "key is not user ‖ sequence")?,
                            DocumentId::from_bytes(doc),
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::TaskIndex => Batch::TaskIndex(
                page.iter()
                    .map(|(k, v)| {
                        Ok((
                            UserId::from_bytes(leading_id(k, "task_index")?),
                            DocumentId::from_bytes(second_id(k, "task_index")?),
                            decode("task_index", v)?,
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::Usage => Batch::Usage(
                page.iter()
                    .map(|(k, v)| {
                        Ok((
                            UserId::from_bytes(leading_id(k, "usage")?),
                            decode("usage", v)?,
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            Kind::SyncStates => Batch::SyncStates(
                page.iter()
                    .map(|(k, v)| {
                        let storage = String::from_utf8(k[16..].to_vec()).map_err(|_| {
                            StoreError::Malformed {
                                tree: "sync_states",
                                what: "storage id is not UTF-8",
                            }
                        })?;
                        Ok((
                            DocumentId::from_bytes(leading_id(k, "sync_states")?),
                            storage,
                            v.to_vec(),
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            ),
            // Events go with their documents (above), never on their own.
            Kind::Documents | Kind::Events => Batch::Documents(Vec::new()),
        };
        Ok((batch, last))
    }

    /// Documents with their whole logs: up to `limits.documents` of them,
    /// stopping early once their logs hold `limits.bytes`.
    fn export_documents(
        &self,
        after: Option<&[u8]>,
        limits: PageLimits,
    ) -> Result<(Batch, Vec<u8>), StoreError> {
        let mut last = after.map(<[u8]>::to_vec).unwrap_or_default();
        let mut documents = Vec::new();
        let mut bytes = 0u64;
        for item in range_after(&self.documents, after) {
            if documents.len() >= limits.documents || bytes >= limits.bytes {
                break;
            }
            let (key, value) = item?;
            let id = DocumentId::from_bytes(leading_id(&key, "documents")?);
            let events: Vec<EventRecord> = self.events_from(id, 0)?;
            bytes += events.iter().map(|e| e.change.len() as u64).sum::<u64>();
            documents.push(ExportedDocument {
                id,
                meta: decode("documents", &value)?,
                events,
            });
            last = key.to_vec();
        }
        Ok((Batch::Documents(documents), last))
    }
}
