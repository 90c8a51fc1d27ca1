//! Access tokens: short-lived JWTs signed with HS256.
//!
//! Why HS256: the server is the only party that issues and verifies these
//! tokens, so a public key buys nothing, and one symmetric algorithm pinned on
//! both sides leaves no room for algorithm confusion. The key is 256 bits from
//! the OS CSPRNG (RFC 8725 §3.5).
//!
//! Verification pins the algorithm, the key id, the issuer, the audience and
//! the token type, and requires every claim. A signature alone is not enough:
//! the caller must also check that the session still exists.

use chrono::{DateTime, Utc};
use codeedex_schema::id::{SessionId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::keys::{ServerKeys, random_bytes};
use super::span;
use crate::configuration::{Period, TokenPolicy};

/// The JOSE `typ` of our access tokens (RFC 9068).
const JOSE_TYPE: &str = "at+jwt";
/// The `typ` claim. Refresh tokens are opaque, not JWTs, but the claim keeps
/// any future token kind from being accepted as an access token.
const ACCESS_TYPE: &str = "access";
/// Seconds of clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 5;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user.
    pub sub: UserId,
    /// The session (device) the token was issued to.
    pub sid: SessionId,
    /// A unique token id.
    pub jti: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Always "access".
    pub typ: String,
}

/// Why an access token was refused. Only `Expired` is told apart to clients,
/// so that they know to refresh; everything else is one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Signature and claims were right, but the token has expired.
    #[error("access token expired")]
    Expired,
    /// Malformed, forged, wrong algorithm, wrong key, wrong claims.
    #[error("access token invalid")]
    Invalid,
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub struct IssuedAccessToken {
    /// The compact JWT.
    pub token: String,
    /// Its expiry.
    pub expires_at: DateTime<Utc>,
    /// Its lifetime in seconds.
    pub expires_in: u64,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    audience: String,
    ttl: Period,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// Builds the issuer from the server's keys and the token policy.
    pub fn new(keys: &ServerKeys, policy: &TokenPolicy) -> Self {
        super::hs256::install();
        Self {
            encoding: EncodingKey::from_secret(keys.jwt_key()),
            decoding: DecodingKey::from_secret(keys.jwt_key()),
            kid: keys.jwt_kid().to_owned(),
            issuer: policy.issuer.clone(),
            audience: policy.audience.clone(),
            ttl: policy.access_ttl,
        }
    }

    /// Issues a token for a session.
    pub fn issue(&self, user: UserId, session: SessionId, now: DateTime<Utc>) -> IssuedAccessToken {
        // JWT times are whole seconds; the expiry told to the client is the
        // same instant, so it never outlives the token it describes.
        let exp = span::after(now, self.ttl.as_delta());
        // (A valid time's whole seconds are a valid time: the fallback is
        // never taken, and a request path has no panic here.)
        let exp = DateTime::from_timestamp(exp.timestamp(), 0).unwrap_or(exp);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            sid: session,
            jti: hex::encode(random_bytes::<16>()),
            iat: now.timestamp(),
            exp: exp.timestamp(),
            typ: ACCESS_TYPE.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(JOSE_TYPE.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        IssuedAccessToken {
            token,
            expires_at: exp,
            expires_in: self.ttl.as_secs(),
        }
    }

    /// Verifies a token's signature and claims.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenRejection> {
        if token.len() > 4096 {
            return Err(TokenRejection::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Invalid)?;
        // `jku`, `jwk`, `x5u` and friends are never consulted: the key is ours.
        if header.alg != Algorithm::HS256
            || header.kid.as_deref() != Some(self.kid.as_str())
            || header.typ.as_deref() != Some(JOSE_TYPE)
        {
            return Err(TokenRejection::Invalid);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // Expiry is checked below against the injected clock, so that tests
        // and the server agree on what "now" is.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS_TYPE {
            return Err(TokenRejection::Invalid);
        }
        let now_secs = now.timestamp();
        if claims.iat > now_secs + LEEWAY_SECS as i64 || claims.exp <= claims.iat {
            return Err(TokenRejection::Invalid);
        }
        if claims.exp + (LEEWAY_SECS as i64) <= now_secs {
            return Err(TokenRejection::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn tokens() -> AccessTokens {
        let policy = TokenPolicy {
            access_ttl: Period::from_secs(900).unwrap(),
            issuer: "codeedex".into(),
            audience: "codeedex-api".into(),
            refresh_grace: Period::from_secs(10).unwrap(),
            session_idle: Period::from_secs(100).unwrap(),
            session_max: Period::from_secs(1000).unwrap(),
        };
        AccessTokens::new(&ServerKeys::from_bytes([7; 32], [8; 32]), &policy)
    }

    fn ids() -> (UserId, SessionId) {
        (
            UserId::from_random_bytes([1; 16]),
            SessionId::from_random_bytes([2; 16]),
        )
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let t = tokens();
        let (u, s) = ids();
        let now = Utc::now();
        let issued = t.issue(u, s, now);
        let claims = t.verify(&issued.token, now).unwrap();
        assert_eq!((claims.sub, claims.sid), (u, s));
        let later = now + chrono::Duration::seconds(900 + LEEWAY_SECS as i64);
        assert_eq!(t.verify(&issued.token, later), Err(TokenRejection::Expired));
    }

    #[test]
    fn a_lifetime_past_the_calendar_does_not_panic() {
        // The settings refuse such a lifetime; the rule must not panic on
        // one anyway.
        let policy = TokenPolicy {
            access_ttl: Period::MAX,
            issuer: "codeedex".into(),
            audience: "codeedex-api".into(),
            refresh_grace: Period::MAX,
            session_idle: Period::MAX,
            session_max: Period::MAX,
        };
        let t = AccessTokens::new(&ServerKeys::from_bytes([7; 32], [8; 32]), &policy);
        let (u, s) = ids();
        let now = Utc::now();
        let issued = t.issue(u, s, now);
        assert!(issued.expires_at > now);
        assert!(t.verify(&issued.token, now).is_ok());
    }

    #[test]
    fn a_token_from_the_future_is_refused() {
        let t = tokens();
        let (u, s) = ids();
        let now = Utc::now();
        let issued = t.issue(u, s, now + chrono::Duration::seconds(60));
        assert_eq!(t.verify(&issued.token, now), Err(TokenRejection::Invalid));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let (u, s) = ids();
        let now = Utc::now();
        let other = AccessTokens::new(&ServerKeys::from_bytes([9; 32], [8; 32]), &tokens_policy());
        let forged = other.issue(u, s, now);
        assert_eq!(
            tokens().verify(&forged.token, now),
            Err(TokenRejection::Invalid)
        );
    }

    fn tokens_policy() -> TokenPolicy {
        TokenPolicy {
            access_ttl: Period::from_secs(900).unwrap(),
            issuer: "codeedex".into(),
            audience: "codeedex-api".into(),
            refresh_grace: Period::from_secs(10).unwrap(),
            session_idle: Period::from_secs(100).unwrap(),
            session_max: Period::from_secs(1000).unwrap(),
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let t = tokens();
        let (u, s) = ids();
        let now = Utc::now();
        let issued = t.issue(u, s, now);
        let mut parts = issued.token.split('.');
        let _header = parts.next().unwrap();
        let payload = parts.next().unwrap();
        let none_header = B64.encode(format!(
            r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#,
            t.kid
        ));
        assert_eq!(
            t.verify(&format!("{none_header}.{payload}."), now),
            Err(TokenRejection::Invalid)
        );
    }
}
