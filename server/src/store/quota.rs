//! Per-user quotas: how many live documents a user has and how many bytes
//! their logs hold, and the limits on both.
//!
//! The usage record is updated in the same transaction as the write it
//! counts (claiming a document, appending changes, deleting a document), so
//! concurrent connections of one user cannot together pass a limit that each
//! alone respects. Deleting a document gives its bytes back: the log is kept
//! for history, but a user who cleans up can go on working.

use serde::{Deserialize, Serialize};

use crate::configuration::limits::Quota;

/// Which limit a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// The user has as many documents as allowed.
    #[error("document quota exceeded: at most {limit} documents per user")]
    Documents {
        /// The limit.
        limit: u64,
    },
    /// The user's documents hold as many bytes as allowed.
    #[error("storage quota exceeded: at most {limit} bytes per user")]
    UserBytes {
        /// The limit.
        limit: u64,
    },
    /// The document holds as many bytes as allowed.
    #[error("document size limit exceeded: at most {limit} bytes per document")]
    DocumentBytes {
        /// The limit.
        limit: u64,
    },
}

/// What a user uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Usage {
    /// Live (not deleted) documents.
    pub(crate) documents: u64,
    /// Bytes of change log of the live documents.
    pub(crate) bytes: u64,
}

impl Usage {
    /// The usage after adding `bytes` to one of the user's documents, whose
    /// log holds `document_bytes` now, or the limit that forbids it.
    pub(crate) fn grow(
        self,
        document_bytes: u64,
        bytes: u64,
        quota: &Quota,
    ) -> Result<(Usage, u64), QuotaExceeded> {
        let document = document_bytes.saturating_add(bytes);
        if document > quota.bytes_per_document {
            return Err(QuotaExceeded::DocumentBytes {
                limit: quota.bytes_per_document,
            });
        }
        let total = self.bytes.saturating_add(bytes);
        if total > quota.bytes_per_user {
            return Err(QuotaExceeded::UserBytes {
                limit: quota.bytes_per_user,
            });
        }
        Ok((
            Usage {
                documents: self.documents,
                bytes: total,
            },
            document,
        ))
    }

    /// The usage with one more document, or the limit that forbids it.
    pub(crate) fn add_document(self, quota: &Quota) -> Result<Usage, QuotaExceeded> {
        if self.documents >= quota.documents_per_user {
            return Err(QuotaExceeded::Documents {
                limit: quota.documents_per_user,
            });
        }
        Ok(Usage {
            documents: self.documents + 1,
            bytes: self.bytes,
        })
    }

    /// The usage without a deleted document of `bytes`.
    pub(crate) fn remove_document(self, bytes: u64) -> Usage {
        Usage {
            documents: self.documents.saturating_sub(1),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_over_its_size_is_refused_before_the_user_total() {
        let quota = Quota {
            documents_per_user: 2,
            bytes_per_user: 100,
            bytes_per_document: 60,
        };
        let usage = Usage {
            documents: 1,
            bytes: 50,
        };
        assert_eq!(
            usage.grow(50, 11, &quota),
            Err(QuotaExceeded::DocumentBytes { limit: 60 })
        );
        assert_eq!(
            usage.grow(0, 51, &quota),
            Err(QuotaExceeded::UserBytes { limit: 100 })
        );
        assert_eq!(
            usage.grow(0, 50, &quota),
            Ok((
                Usage {
                    documents: 1,
                    bytes: 100
                },
                50
            ))
        );
    }

    #[test]
    fn documents_are_counted_up_to_the_limit_and_given_back() {
        let quota = Quota {
            documents_per_user: 2,
            ..Quota::default()
        };
        let one = Usage::default().add_document(&quota).unwrap();
        let two = one.add_document(&quota).unwrap();
        assert_eq!(
            two.add_document(&quota),
            Err(QuotaExceeded::Documents { limit: 2 })
        );
        assert_eq!(two.remove_document(0).add_document(&quota), Ok(two));
    }
}
