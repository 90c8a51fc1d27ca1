//! HS256, the one JWT algorithm the server uses, as jsonwebtoken's crypto
//! provider.
//!
//! jsonwebtoken needs a crypto backend. Its `rust_crypto` feature brings
//! every algorithm it knows, and with them the `rsa` crate, whose advisory
//! RUSTSEC-2023-0071 (the Marvin timing attack) has no fixed release; its
//! `aws_lc_rs` feature builds C code. The server only signs and verifies
//! HS256 ([`super::tokens`] pins it), so it installs this provider instead:
//! HMAC-SHA256 from the `hmac` and `sha2` crates it uses anyway, and a
//! refusal of every other algorithm.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::Sha256;

/// The provider: HS256 only.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes this provider the process's, before jsonwebtoken is first used
/// (jsonwebtoken would otherwise settle on one that panics). Installing it
/// again is harmless: the first installation stays.
pub(crate) fn install() {
    let _ = PROVIDER.install_default();
}

/// HMAC-SHA256 under one key.
struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(algorithm: &Algorithm, key: &[u8]) -> Result<Self> {
        if *algorithm != Algorithm::HS256 {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| ErrorKind::InvalidKeyFormat)?;
        Ok(Self(mac))
    }

    fn mac(&self, message: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(message);
        mac
    }
}

impl signature::Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.mac(message).finalize().into_bytes().to_vec())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl signature::Verifier<Vec<u8>> for Hs256 {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        // `verify_slice` compares in constant time.
        self.mac(message)
            .verify_slice(signature)
            .map_err(signature::Error::from_source)
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hs256::new(algorithm, key.as_bytes())?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(Hs256::new(algorithm, key.try_get_as_bytes()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_matches_rfc_4231_and_other_algorithms_are_refused() {
        install();
        // RFC 4231 test case 2: key "Jefe".
        let key = EncodingKey::from_secret(b"Jefe");
        let signed =
            jsonwebtoken::crypto::sign(b"what do ya want for nothing?", &key, Algorithm::HS256)
                .unwrap();
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &signed)
                .unwrap();
        assert_eq!(hex::encode(bytes), expected);
        let decoding = DecodingKey::from_secret(b"Jefe");
        assert!(
            jsonwebtoken::crypto::verify(
                &signed,
                b"what do ya want for nothing?",
                &decoding,
                Algorithm::HS256
            )
            .unwrap()
        );
        assert!(
            !jsonwebtoken::crypto::verify(&signed, b"something else", &decoding, Algorithm::HS256)
                .unwrap()
        );
        for other in [Algorithm::HS384, Algorithm::RS256, Algorithm::EdDSA] {
            assert!(jsonwebtoken::crypto::sign(b"x", &key, other).is_err());
            assert!(jsonwebtoken::crypto::verify(&signed, b"x", &decoding, other).is_err());
        }
    }
}
