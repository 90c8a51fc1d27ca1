//! The server's secrets: the JWT signing key and the key for hashing codes and
//! refresh tokens. Generated from the OS CSPRNG on first start and kept in the
//! data directory, readable only by the server's user.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_LEN: usize = 32;

/// The names the keys go by in a shared database (`meta` 'secret:NAME').
const JWT_SECRET: &str = "jwt-hs256";
const HASHING_SECRET: &str = "hmac-sha256";

/// The server's keys. `Debug` prints only the key id.
#[derive(Clone)]
pub struct ServerKeys {
    jwt: [u8; KEY_LEN],
    jwt_kid: String,
    hashing: [u8; KEY_LEN],
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("jwt_kid", &self.jwt_kid)
            .finish_non_exhaustive()
    }
}

/// What a keyed hash is for. Binding the purpose into the hash means a value
/// hashed for one purpose can never match a value stored for another.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HashPurpose {
    /// A one-time code, bound to its identifier.
    OneTimeCode,
    /// A refresh token.
    RefreshToken,
    /// The refresh token a rotation issues, derived from the one it spends
    /// (see `refresh.rs`).
    RefreshChild,
}

impl ServerKeys {
    /// Loads the keys from `dir/secrets`, creating them on first start.
    pub(crate) fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let secrets = dir.join("secrets");
        fs::create_dir_all(&secrets)
            .with_context(|| format!("cannot create {}", secrets.display()))?;
        restrict_dir(&secrets)?;
        let jwt = load_or_create_key(&secrets.join(format!("{JWT_SECRET}.key")))?;
        let hashing = load_or_create_key(&secrets.join(format!("{HASHING_SECRET}.key")))?;
        Ok(Self::from_bytes(jwt, hashing))
    }

    /// Loads the keys from `dir/secrets`, which must hold both: for moving
    /// a data directory's store elsewhere, where new keys would invalidate
    /// every token issued.
    pub(crate) fn load_existing(dir: &Path) -> anyhow::Result<Self> {
        let secrets = dir.join("secrets");
        let mut keys = [[0u8; KEY_LEN]; 2];
        for (key, name) in keys.iter_mut().zip([JWT_SECRET, HASHING_SECRET]) {
            let path = secrets.join(format!("{name}.key"));
            if !path.is_file() {
                bail!(
                    "{} is missing: {} is not the data directory of a server that has run",
                    path.display(),
                    dir.display()
                );
            }
            *key = load_or_create_key(&path)?;
        }
        let [jwt, hashing] = keys;
        Ok(Self::from_bytes(jwt, hashing))
    }

    /// The keys by the names a shared database keeps them under, for
    /// writing them into one.
    pub(crate) fn named(&self) -> [(&'static str, [u8; KEY_LEN]); 2] {
        [(JWT_SECRET, self.jwt), (HASHING_SECRET, self.hashing)]
    }

    /// The keys of a shared database, created by the first node that starts
    /// and read by every other, so that each node verifies the tokens of all.
    pub(crate) async fn shared(store: &crate::store::Store) -> anyhow::Result<Self> {
        let jwt = store
            .shared_secret(JWT_SECRET, random_bytes::<KEY_LEN>())
            .await
            .context("cannot read the token signing key from the database")?;
        let hashing = store
            .shared_secret(HASHING_SECRET, random_bytes::<KEY_LEN>())
            .await
            .context("cannot read the hashing key from the database")?;
        Ok(Self::from_bytes(jwt, hashing))
    }

    /// Builds keys from raw bytes (tests and tooling).
    pub fn from_bytes(jwt: [u8; KEY_LEN], hashing: [u8; KEY_LEN]) -> Self {
        // The key id names the key without revealing it: a truncated SHA-256.
        let jwt_kid = hex::encode(&Sha256::digest(jwt)[..8]);
        Self {
            jwt,
            jwt_kid,
            hashing,
        }
    }

    /// The HS256 signing key.
    pub(crate) fn jwt_key(&self) -> &[u8; KEY_LEN] {
        &self.jwt
    }

    /// The id of the signing key, sent as the JWT `kid`.
    pub(crate) fn jwt_kid(&self) -> &str {
        &self.jwt_kid
    }

    /// HMAC-SHA256 of `parts` under the hashing key, bound to `purpose`.
    /// Parts are length-prefixed so that ("ab","c") and ("a","bc") differ.
    pub(crate) fn keyed_hash(&self, purpose: HashPurpose, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.hashing).expect("HMAC takes keys of any length");
        let label: &[u8] = match purpose {
            HashPurpose::OneTimeCode => b"codeedex/otp/v1",
            HashPurpose::RefreshToken => b"codeedex/refresh/v1",
            HashPurpose::RefreshChild => b"codeedex/refresh-child/v1",
        };
        mac.update(label);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Compares two hashes in constant time.
pub(crate) fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Fills a buffer from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng
        .try_fill_bytes(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .with_context(|| format!("{} is not hex", path.display()))?;
            let key: [u8; KEY_LEN] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} must hold {KEY_LEN} bytes", path.display()))?;
            if key.iter().all(|b| *b == 0) {
                bail!("{} holds an all-zero key", path.display());
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_bytes::<KEY_LEN>();
            write_private(path, hex::encode(key).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    // Renaming makes the key appear whole or not at all, even after a crash.
    fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_across_restarts_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerKeys::load_or_create(dir.path()).unwrap();
        let second = ServerKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.jwt_key(), second.jwt_key());
        assert_ne!(first.jwt_key(), &first.hashing);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("secrets/jwt-hs256.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn keyed_hashes_depend_on_purpose_and_boundaries() {
        let keys = ServerKeys::from_bytes([1; 32], [2; 32]);
        let a = keys.keyed_hash(HashPurpose::OneTimeCode, &[b"ab", b"c"]);
        let b = keys.keyed_hash(HashPurpose::OneTimeCode, &[b"a", b"bc"]);
        let c = keys.keyed_hash(HashPurpose::RefreshToken, &[b"ab", b"c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(hashes_equal(
            &a,
            &keys.keyed_hash(HashPurpose::OneTimeCode, &[b"ab", b"c"])
        ));
    }

    #[test]
    fn a_corrupt_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("secrets")).unwrap();
        fs::write(dir.path().join("secrets/jwt-hs256.key"), "zz").unwrap();
        assert!(ServerKeys::load_or_create(dir.path()).is_err());
    }
}
