//! A certificate authority made by the test, and server certificates it
//! issues: what the test mail server presents over TLS, and what the server
//! under test is told to trust (`--smtp-ca-file`).
//!
//! Each authority is generated afresh (ECDSA P-256, with rcgen), so a
//! certificate from one is untrusted by a server that trusts another: that
//! is how the tests show a wrong certificate being refused.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A server certificate chain and its private key, in DER.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// The server certificate, then the authority's.
    pub chain: Vec<Vec<u8>>,
    /// The server's private key (PKCS#8).
    pub key: Vec<u8>,
}

/// A certificate authority that exists only for one test.
pub struct TestAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAuthority").finish_non_exhaustive()
    }
}

impl TestAuthority {
    /// A fresh authority named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key pair");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a self-signed authority");
        Self { issuer }
    }

    /// The authority's certificate in PEM, as a server is told to trust it.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes [`Self::pem`] into `dir` and returns the file's path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-authority.pem");
        std::fs::write(&path, self.pem()).expect("the authority's certificate is written");
        path
    }

    /// A certificate for `host` (a DNS name or an IP address), issued by
    /// this authority.
    pub fn issue(&self, host: &str) -> ServerIdentity {
        let params = CertificateParams::new(vec![host.to_owned()]).expect("a valid host name");
        let key = KeyPair::generate().expect("a key pair");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("the authority signs");
        ServerIdentity {
            chain: vec![certificate.der().to_vec(), self.issuer.der().to_vec()],
            key: key.serialize_der(),
        }
    }
}
