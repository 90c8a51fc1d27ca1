//! Server secrets in PostgreSQL: the keys every node must share (the token
//! signing key and the hashing key), created once by whichever node starts
//! first and read by every other.

use super::PgEngine;
use crate::store::StoreError;

impl PgEngine {
    /// The secret called `name`, stored from `fresh` if there is none yet.
    /// Nodes that start together race to insert; the first insert wins and
    /// every node reads the winner.
    pub(crate) async fn shared_secret(
        &self,
        name: &str,
        fresh: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let key = format!("secret:{name}");
        self.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &hex::encode(fresh)],
        )
        .await?;
        let row = self
            .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
            .await?;
        let value: String = row.try_get(0).map_err(|e| self.fail(e))?;
        hex::decode(value)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or(StoreError::Malformed {
                tree: "meta",
                what: "a secret is not 32 bytes of hex",
            })
    }
}
