//! Per-user usage in PostgreSQL: live documents and their bytes, counted
//! in the transaction of the write that changes them (the limits and the
//! arithmetic are the sled side's, in `store/quota.rs`).
//!
//! A usage row is locked (`FOR UPDATE`) by every transaction that changes
//! it, so concurrent writes of one user on any node queue on it and
//! together cannot pass a limit that each alone respects.

use codeedex_schema::id::UserId;
use deadpool_postgres::Transaction;

use super::{PgEngine, signed, unsigned};
use crate::store::StoreError;
use crate::store::quota::Usage;

const ENSURE: &str = "INSERT INTO usage (user_id, documents, bytes) VALUES ($1, 0, 0) ON CONFLICT (user_id) DO NOTHING";

pub(super) fn usage_from(documents: i64, bytes: i64) -> Result<Usage, StoreError> {
    Ok(Usage {
        documents: unsigned(documents, "usage", "negative document count")?,
        bytes: unsigned(bytes, "usage", "negative byte count")?,
    })
}

/// The user's usage, locked for the rest of `tx` (created at zero if the
/// user has none yet, so that there is a row to lock).
pub(super) async fn locked_usage(
    engine: &PgEngine,
    tx: &Transaction<'_>,
    user: UserId,
) -> Result<Usage, StoreError> {
    let ensure = tx
        .prepare_cached(ENSURE)
        .await
        .map_err(|e| engine.fail(e))?;
    tx.execute(&ensure, &[&user.as_bytes().as_slice()])
        .await
        .map_err(|e| engine.fail(e))?;
    let select = tx
        .prepare_cached("SELECT documents, bytes FROM usage WHERE user_id = $1 FOR UPDATE")
        .await
        .map_err(|e| engine.fail(e))?;
    let row = tx
        .query_one(&select, &[&user.as_bytes().as_slice()])
        .await
        .map_err(|e| engine.fail(e))?;
    usage_from(row.get(0), row.get(1))
}

/// Writes the user's usage (its row exists and is locked by `tx`).
pub(super) async fn write_usage(
    engine: &PgEngine,
    tx: &Transaction<'_>,
    user: UserId,
    usage: Usage,
) -> Result<(), StoreError> {
    let update = tx
        .prepare_cached("UPDATE usage SET documents = $2, bytes = $3 WHERE user_id = $1")
        .await
        .map_err(|e| engine.fail(e))?;
    tx.execute(
        &update,
        &[
            &user.as_bytes().as_slice(),
            &signed(usage.documents, "usage", "document count beyond bigint")?,
            &signed(usage.bytes, "usage", "byte count beyond bigint")?,
        ],
    )
    .await
    .map_err(|e| engine.fail(e))?;
    Ok(())
}

#[cfg(test)]
#[cfg(test)]
impl PgEngine {
    /// What a user uses now.
    pub(crate) async fn usage(&self, user: UserId) -> Result<Usage, StoreError> {
        let row = self
            .query_opt(
                "SELECT documents, bytes FROM usage WHERE user_id = $1",
                &[&user.as_bytes().as_slice()],
            )
            .await?;
        match row {
            Some(row) => usage_from(row.get(0), row.get(1)),
            None => Ok(Usage::default()),
        }
    }
}
