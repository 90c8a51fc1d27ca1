//! Server secrets in the embedded engine's metadata, created once, so that
//! tests can hold both engines to one contract. (A server on the embedded
//! store keeps its keys in files in the data directory instead, and
//! `codeedex-server migrate` copies them from there.)

use super::{Embedded, StoreError};

impl Embedded {
    /// The secret called `name`, stored from `fresh` if there is none yet.
    pub(crate) fn shared_secret(
        &self,
        name: &str,
        fresh: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        self.run(|e| {
            let key = format!("secret:{name}");
            let _ =
                e.meta
                    .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&fresh[..]))?;
            let value = e.meta.get(key.as_bytes())?.ok_or(StoreError::Malformed {
                tree: "meta",
                what: "a secret vanished after it was written",
            })?;
            <[u8; 32]>::try_from(value.as_ref()).map_err(|_| StoreError::Malformed {
                tree: "meta",
                what: "a secret is not 32 bytes",
            })
        })
    }
}
