//! Identifiers shared by the server and clients.
//!
//! Each identifier is a newtype with a private field: a value that exists has
//! been parsed and is valid. Randomness is passed in by the caller (this crate
//! does no IO), so the server and tests decide where entropy comes from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is not a hyphenated UUID.
    #[error("{kind} must be a UUID, got {len} characters that do not parse as one")]
    NotAUuid {
        /// Which identifier was being parsed.
        kind: &'static str,
        /// The length of the rejected input (the input itself is not echoed).
        len: usize,
    },
    /// The string is neither bs58check of 16 bytes nor a legacy UUID.
    #[error("document id must be bs58check of 16 bytes (automerge-repo format)")]
    NotADocumentId,
    /// A peer id must be 1 to 128 printable ASCII characters.
    #[error("peer id must be 1 to {max} printable ASCII characters")]
    BadPeerId {
        /// The longest accepted peer id.
        max: usize,
    },
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Builds a version 4 identifier from 16 random bytes supplied by the caller.
            pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
                Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }

            /// The identifier as raw bytes, for compact storage keys.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds an identifier from bytes produced by [`Self::as_bytes`].
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::try_parse(s)
                    .map(Self)
                    .map_err(|_| IdError::NotAUuid { kind: $kind, len: s.len() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// A user account. Never reused; the first successful sign-in creates it.
    UserId,
    "user id"
);
uuid_id!(
    /// One signed-in device: a refresh-token chain and the access tokens issued from it.
    SessionId,
    "session id"
);

/// An automerge-repo document id: bs58check of 16 random bytes.
///
/// The legacy form (a UUID string) is accepted when parsing and normalised to
/// bs58check, as the JavaScript implementation does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

impl DocumentId {
    /// Builds a document id from 16 random bytes supplied by the caller.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Rebuilds a document id from bytes produced by [`Self::as_bytes`]
    /// (a storage key, for example). Unlike [`Self::from_random_bytes`],
    /// which names where fresh bytes come from, this names a round trip.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes behind the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The `automerge:` URL of this document.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }
}

impl FromStr for DocumentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.strip_prefix("automerge:").unwrap_or(s);
        if let Ok(bytes) = bs58::decode(s).with_check(None).into_vec() {
            return <[u8; 16]>::try_from(bytes.as_slice())
                .map(Self)
                .map_err(|_| IdError::NotADocumentId);
        }
        match Uuid::try_parse(s) {
            Ok(uuid) => Ok(Self(*uuid.as_bytes())),
            Err(_) => Err(IdError::NotADocumentId),
        }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl Serialize for DocumentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DocumentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for DocumentId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("automerge-repo document id (bs58check of 16 bytes)"))
            .into()
    }
}

impl utoipa::ToSchema for DocumentId {}

/// A peer id from the automerge-repo protocol: chosen by the peer itself, so
/// it proves nothing until the server binds it to an authenticated user.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    /// The longest peer id accepted; the JS client uses about 40 characters.
    pub const MAX_LEN: usize = 128;

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PeerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let printable = s.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if s.is_empty() || s.len() > Self::MAX_LEN || !printable {
            return Err(IdError::BadPeerId { max: Self::MAX_LEN });
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_id_round_trips_through_bs58check() {
        let id = DocumentId::from_random_bytes([7; 16]);
        let text = id.to_string();
        assert_eq!(text.parse::<DocumentId>().unwrap(), id);
        assert_eq!(
            format!("automerge:{text}").parse::<DocumentId>().unwrap(),
            id
        );
    }

    #[test]
    fn document_id_rejects_a_corrupted_checksum() {
        let mut text = DocumentId::from_random_bytes([9; 16]).to_string();
        let last = text.pop().unwrap();
        text.push(if last == '2' { '3' } else { '2' });
        assert_eq!(text.parse::<DocumentId>(), Err(IdError::NotADocumentId));
    }

    #[test]
    fn document_id_accepts_the_legacy_uuid_form() {
        let uuid = "0b8c5c8e-4f3a-4a4e-9c2b-7e2f7c1d2a3b";
        let id: DocumentId = uuid.parse().unwrap();
        assert_eq!(id.as_bytes(), Uuid::parse_str(uuid).unwrap().as_bytes());
    }

    #[test]
    fn user_id_parses_and_displays_as_a_uuid() {
        let id = UserId::from_random_bytes([3; 16]);
        assert_eq!(id.to_string().parse::<UserId>().unwrap(), id);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }

    #[test]
    fn peer_id_rejects_empty_long_and_unprintable_ids() {
        assert!("".parse::<PeerId>().is_err());
        assert!("a b".parse::<PeerId>().is_err());
        assert!("x".repeat(129).parse::<PeerId>().is_err());
        assert_eq!("peer-1".parse::<PeerId>().unwrap().as_str(), "peer-1");
    }
}
