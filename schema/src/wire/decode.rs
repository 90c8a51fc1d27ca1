//! bytes → [`Message`].
//!
//! Decoding takes two passes over the frame. The first walks the whole CBOR
//! item once, checking that it is one well-formed map, nested no deeper than
//! [`MAX_NESTING_DEPTH`], followed by nothing, and records where the value of
//! each known key starts (rejecting known keys seen twice). The second reads
//! `type` and then only the fields that type needs, from the recorded
//! positions; so key order does not matter, and a field that means nothing for
//! this type is ignored like an unknown key. No recursion is unbounded: the
//! first pass fails before the second could go deep.

use std::collections::BTreeMap;

use minicbor::Decoder;
use minicbor::data::Type;

mod primitives;

use super::message::{Message, PeerMetadata, RemoteHeads};
use super::{PROTOCOL_VERSION, message_type};
use primitives::{
    Remaining, cbor, describe, is_text, mark_seen, read_bool, read_bytes, read_i64, read_key,
    read_text, read_text_list, read_text_raw, read_u64, skip_value, take_absent,
};

/// Why a frame is not a valid protocol message.
///
/// Field names are the wire names, with a dot for nested fields
/// (`peerMetadata.storageId`, `newHeads.timestamp`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ends in the middle of a CBOR value (an empty frame too).
    #[error("the frame ends in the middle of a CBOR value")]
    Truncated,
    /// The bytes are not well-formed CBOR (reserved bytes, a misplaced break,
    /// a chunk of the wrong type inside an indefinite string, invalid UTF-8 in
    /// a text string, ...).
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// The frame holds a CBOR value that is not a map.
    #[error("a message must be a CBOR map, found {found}")]
    NotAMap {
        /// What the frame holds instead.
        found: &'static str,
    },
    /// Bytes follow the message map.
    #[error("{count} bytes follow the message map")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Maps and arrays nest deeper than [`MAX_NESTING_DEPTH`].
    #[error("maps and arrays are nested more than {limit} levels deep")]
    TooDeep {
        /// The limit, [`MAX_NESTING_DEPTH`].
        limit: usize,
    },
    /// A known key appears twice in one map (`metadata` counts as
    /// `peerMetadata`).
    #[error("key `{key}` appears more than once")]
    DuplicateKey {
        /// The key, by its canonical name.
        key: &'static str,
    },
    /// A field this message type requires is absent, `null` or `undefined`.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field holds a value of the wrong CBOR type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The type the field must have.
        expected: &'static str,
        /// The type it has.
        found: &'static str,
    },
    /// An element (or, for `newHeads`, a key or value) of a collection field
    /// has the wrong CBOR type.
    #[error("`{field}` must contain {expected}, found {found}")]
    WrongElementType {
        /// The collection field.
        field: &'static str,
        /// The type its elements must have.
        expected: &'static str,
        /// The type one of them has.
        found: &'static str,
    },
    /// A numeric field does not hold an integer in range: negative where
    /// unsigned, a float that is not finite or has a fractional part, or a
    /// value that does not fit 64 bits.
    #[error("field `{field}` is not a valid integer: it {reason}")]
    InvalidInteger {
        /// The field.
        field: &'static str,
        /// What is wrong with the value.
        reason: &'static str,
    },
    /// A field sent as a byte string where text is meant (`documentId`) is
    /// not UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A `data` field is empty.
    #[error("field `{field}` must not be empty")]
    EmptyField {
        /// The field.
        field: &'static str,
    },
    /// The frame is a well-formed message map whose `type` this module does
    /// not know. Kept apart from the other errors so a caller may skip such
    /// frames; the type string is kept whole, but displayed shortened.
    #[error("unknown message type {}", shorten(.0))]
    UnknownType(String),
}

/// Decodes one binary WebSocket frame into a [`Message`].
///
/// See the [module documentation](super) for what is accepted and what is
/// rejected. Never panics, whatever the input.
pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    let fields = Fields::scan(frame)?;
    let kind = fields.required_text(Key::Type)?;
    let message = match kind.as_str() {
        message_type::JOIN => Message::Join {
            sender_id: fields.required_text(Key::SenderId)?,
            supported_protocol_versions: fields
                .text_list(Key::SupportedProtocolVersions)?
                .unwrap_or_else(|| vec![PROTOCOL_VERSION.to_owned()]),
            peer_metadata: fields.peer_metadata()?,
        },
        message_type::PEER => Message::Peer {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            selected_protocol_version: fields.required_text(Key::SelectedProtocolVersion)?,
            peer_metadata: fields.peer_metadata()?,
        },
        message_type::LEAVE => Message::Leave {
            sender_id: fields.required_text(Key::SenderId)?,
        },
        message_type::ERROR => Message::Error {
            message: fields.required_text(Key::Message)?,
        },
        message_type::REQUEST => Message::Request {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_id: fields.document_id()?,
            data: fields.data()?,
        },
        message_type::SYNC => Message::Sync {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_id: fields.document_id()?,
            data: fields.data()?,
        },
        message_type::DOC_UNAVAILABLE => Message::DocUnavailable {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_id: fields.document_id()?,
        },
        message_type::EPHEMERAL => Message::Ephemeral {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_id: fields.document_id()?,
            count: fields.required_u64(Key::Count)?,
            session_id: fields.required_text(Key::SessionId)?,
            data: fields.data()?,
        },
        message_type::REMOTE_SUBSCRIPTION_CHANGE => Message::RemoteSubscriptionChange {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            add: fields.text_list(Key::Add)?,
            remove: fields.text_list(Key::Remove)?.unwrap_or_default(),
        },
        message_type::REMOTE_HEADS_CHANGED => Message::RemoteHeadsChanged {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_id: fields.document_id()?,
            new_heads: fields.new_heads()?,
        },
        message_type::AUTH_REFRESH => Message::AuthRefresh {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            access_token: fields.required_text(Key::AccessToken)?,
        },
        message_type::AUTH_ACCEPTED => Message::AuthAccepted {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            expires_at: fields.required_i64(Key::ExpiresAt)?,
        },
        message_type::CATCH_UP_REQUEST => Message::CatchUpRequest {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            cursor: fields.required_u64(Key::Cursor)?,
        },
        message_type::CATCH_UP_RESPONSE => Message::CatchUpResponse {
            sender_id: fields.required_text(Key::SenderId)?,
            target_id: fields.required_text(Key::TargetId)?,
            document_ids: require(fields.text_list(Key::DocumentIds)?, Key::DocumentIds)?,
            cursor: fields.required_u64(Key::Cursor)?,
        },
        _ => return Err(DecodeError::UnknownType(kind)),
    };
    Ok(message)
}

/// The top-level keys this module understands, whatever the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    SenderId,
    TargetId,
    SupportedProtocolVersions,
    SelectedProtocolVersion,
    PeerMetadata,
    Message,
    DocumentId,
    Data,
    Count,
    SessionId,
    Add,
    Remove,
    NewHeads,
    AccessToken,
    ExpiresAt,
    Cursor,
    DocumentIds,
}

impl Key {
    /// Every key, in declaration order (so `Key::ALL[k as usize] == k`).
    const ALL: [Key; 18] = [
        Key::Type,
        Key::SenderId,
        Key::TargetId,
        Key::SupportedProtocolVersions,
        Key::SelectedProtocolVersion,
        Key::PeerMetadata,
        Key::Message,
        Key::DocumentId,
        Key::Data,
        Key::Count,
        Key::SessionId,
        Key::Add,
        Key::Remove,
        Key::NewHeads,
        Key::AccessToken,
        Key::ExpiresAt,
        Key::Cursor,
        Key::DocumentIds,
    ];

    /// The canonical wire name.
    fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::SenderId => "senderId",
            Key::TargetId => "targetId",
            Key::SupportedProtocolVersions => "supportedProtocolVersions",
            Key::SelectedProtocolVersion => "selectedProtocolVersion",
            Key::PeerMetadata => "peerMetadata",
            Key::Message => "message",
            Key::DocumentId => "documentId",
            Key::Data => "data",
            Key::Count => "count",
            Key::SessionId => "sessionId",
            Key::Add => "add",
            Key::Remove => "remove",
            Key::NewHeads => "newHeads",
            Key::AccessToken => "accessToken",
            Key::ExpiresAt => "expiresAt",
            Key::Cursor => "cursor",
            Key::DocumentIds => "documentIds",
        }
    }

    /// The key a wire name stands for; `metadata` (the README's CDDL) is an
    /// alias of `peerMetadata` (what the clients send).
    fn from_wire(name: &str) -> Option<Key> {
        if name == "metadata" {
            return Some(Key::PeerMetadata);
        }
        Key::ALL.into_iter().find(|key| key.name() == name)
    }
}

/// Where the value of each known top-level key starts in the frame.
struct Fields<'b> {
    /// The whole frame.
    frame: &'b [u8],
    /// Indexed by `Key as usize`.
    positions: [Option<usize>; Key::ALL.len()],
}

impl<'b> Fields<'b> {
    /// The first pass: checks that `frame` is exactly one well-formed map,
    /// within the depth limit, with no known key twice, and records where the
    /// known keys' values start.
    fn scan(frame: &'b [u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(frame);
        let found = d.datatype().map_err(cbor)?;
        if !matches!(found, Type::Map | Type::MapIndef) {
            return Err(DecodeError::NotAMap {
                found: describe(found),
            });
        }
        let mut positions = [None; Key::ALL.len()];
        // The message map is nesting level 1.
        let mut entries = Remaining::new(d.map().map_err(cbor)?);
        while entries.next(&mut d)? {
            let key = if is_text(d.datatype().map_err(cbor)?) {
                Some(read_text_raw(&mut d)?)
            } else {
                // Keys are text in this protocol; skip any other key with its
                // value, like an unknown text key.
                skip_value(&mut d, 1)?;
                None
            };
            let value_at = d.position();
            skip_value(&mut d, 1)?;
            if let Some(key) = key.as_deref().and_then(Key::from_wire)
                && positions[key as usize].replace(value_at).is_some()
            {
                return Err(DecodeError::DuplicateKey { key: key.name() });
            }
        }
        let count = frame.len().saturating_sub(d.position());
        if count > 0 {
            return Err(DecodeError::TrailingBytes { count });
        }
        Ok(Fields { frame, positions })
    }

    /// A decoder at the value of `key`, or `None` if the key is absent or its
    /// value is `null` or `undefined`.
    fn value(&self, key: Key) -> Result<Option<Decoder<'b>>, DecodeError> {
        let Some(position) = self.positions[key as usize] else {
            return Ok(None);
        };
        let mut d = Decoder::new(self.frame);
        d.set_position(position);
        if take_absent(&mut d)? {
            Ok(None)
        } else {
            Ok(Some(d))
        }
    }

    /// A text field that must be present.
    fn required_text(&self, key: Key) -> Result<String, DecodeError> {
        let value = self.value(key)?;
        let mut d = require(value, key)?;
        read_text(&mut d, key.name())
    }

    /// An unsigned integer field that must be present.
    fn required_u64(&self, key: Key) -> Result<u64, DecodeError> {
        let mut d = require(self.value(key)?, key)?;
        read_u64(&mut d, key.name())
    }

    /// A signed integer field that must be present.
    fn required_i64(&self, key: Key) -> Result<i64, DecodeError> {
        let mut d = require(self.value(key)?, key)?;
        read_i64(&mut d, key.name())
    }

    /// An optional array of text strings.
    fn text_list(&self, key: Key) -> Result<Option<Vec<String>>, DecodeError> {
        match self.value(key)? {
            Some(mut d) => read_text_list(&mut d, key.name()).map(Some),
            None => Ok(None),
        }
    }

    /// `documentId`: text, or leniently a byte string holding UTF-8 text.
    fn document_id(&self) -> Result<String, DecodeError> {
        let field = Key::DocumentId.name();
        let mut d = require(self.value(Key::DocumentId)?, Key::DocumentId)?;
        match d.datatype().map_err(cbor)? {
            Type::Bytes | Type::BytesIndef => {
                let bytes = read_bytes(&mut d, field)?;
                String::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
            }
            _ => read_text(&mut d, field),
        }
    }

    /// `data`: a non-empty byte string.
    fn data(&self) -> Result<Vec<u8>, DecodeError> {
        let field = Key::Data.name();
        let mut d = require(self.value(Key::Data)?, Key::Data)?;
        let data = read_bytes(&mut d, field)?;
        if data.is_empty() {
            return Err(DecodeError::EmptyField { field });
        }
        Ok(data)
    }

    /// `peerMetadata` (or `metadata`): `None` when absent, `null` or
    /// `undefined`.
    fn peer_metadata(&self) -> Result<Option<PeerMetadata>, DecodeError> {
        match self.value(Key::PeerMetadata)? {
            Some(mut d) => read_peer_metadata(&mut d).map(Some),
            None => Ok(None),
        }
    }

    /// `newHeads`, which `remote-heads-changed` requires.
    fn new_heads(&self) -> Result<BTreeMap<String, RemoteHeads>, DecodeError> {
        let mut d = require(self.value(Key::NewHeads)?, Key::NewHeads)?;
        read_new_heads(&mut d)
    }
}

/// Turns an absent value into [`DecodeError::MissingField`].
fn require<T>(value: Option<T>, key: Key) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingField { field: key.name() })
}

/// Reads `{storageId?, isEphemeral?, codeedexExtensions?, ...}`; a map at
/// nesting level 2.
fn read_peer_metadata(d: &mut Decoder<'_>) -> Result<PeerMetadata, DecodeError> {
    const STORAGE_ID: &str = "peerMetadata.storageId";
    const IS_EPHEMERAL: &str = "peerMetadata.isEphemeral";
    const EXTENSIONS: &str = "peerMetadata.codeedexExtensions";
    let found = d.datatype().map_err(cbor)?;
    if !matches!(found, Type::Map | Type::MapIndef) {
        return Err(DecodeError::WrongType {
            field: Key::PeerMetadata.name(),
            expected: "a map",
            found: describe(found),
        });
    }
    let mut metadata = PeerMetadata::default();
    let (mut seen_storage_id, mut seen_is_ephemeral, mut seen_extensions) = (false, false, false);
    let mut entries = Remaining::new(d.map().map_err(cbor)?);
    while entries.next(d)? {
        let Some(key) = read_key(d, 2)? else {
            skip_value(d, 2)?;
            continue;
        };
        match key.as_ref() {
            "storageId" => {
                mark_seen(&mut seen_storage_id, STORAGE_ID)?;
                if !take_absent(d)? {
                    metadata.storage_id = Some(read_text(d, STORAGE_ID)?);
                }
            }
            "isEphemeral" => {
                mark_seen(&mut seen_is_ephemeral, IS_EPHEMERAL)?;
                if !take_absent(d)? {
                    metadata.is_ephemeral = read_bool(d, IS_EPHEMERAL)?;
                }
            }
            "codeedexExtensions" => {
                mark_seen(&mut seen_extensions, EXTENSIONS)?;
                if !take_absent(d)? {
                    metadata.extensions = read_text_list(d, EXTENSIONS)?;
                }
            }
            _ => skip_value(d, 2)?,
        }
    }
    Ok(metadata)
}

/// Reads `{storageId: {heads, timestamp}, ...}`; a map at nesting level 2.
fn read_new_heads(d: &mut Decoder<'_>) -> Result<BTreeMap<String, RemoteHeads>, DecodeError> {
    const FIELD: &str = "newHeads";
    let found = d.datatype().map_err(cbor)?;
    if !matches!(found, Type::Map | Type::MapIndef) {
        return Err(DecodeError::WrongType {
            field: FIELD,
            expected: "a map",
            found: describe(found),
        });
    }
    let mut new_heads = BTreeMap::new();
    let mut entries = Remaining::new(d.map().map_err(cbor)?);
    while entries.next(d)? {
        let key_type = d.datatype().map_err(cbor)?;
        if !is_text(key_type) {
            return Err(DecodeError::WrongElementType {
                field: FIELD,
                expected: "text keys (storage ids)",
                found: describe(key_type),
            });
        }
        let storage_id = read_text(d, FIELD)?;
        let remote = read_remote_heads(d)?;
        if new_heads.insert(storage_id, remote).is_some() {
            return Err(DecodeError::DuplicateKey {
                key: "newHeads.<storage id>",
            });
        }
    }
    Ok(new_heads)
}

/// Reads one `{heads: [str], timestamp}`; a map at nesting level 3.
fn read_remote_heads(d: &mut Decoder<'_>) -> Result<RemoteHeads, DecodeError> {
    const HEADS: &str = "newHeads.heads";
    const TIMESTAMP: &str = "newHeads.timestamp";
    let found = d.datatype().map_err(cbor)?;
    if !matches!(found, Type::Map | Type::MapIndef) {
        return Err(DecodeError::WrongElementType {
            field: "newHeads",
            expected: "maps of heads and timestamp",
            found: describe(found),
        });
    }
    let (mut heads, mut timestamp) = (None, None);
    let (mut seen_heads, mut seen_timestamp) = (false, false);
    let mut entries = Remaining::new(d.map().map_err(cbor)?);
    while entries.next(d)? {
        let Some(key) = read_key(d, 3)? else {
            skip_value(d, 3)?;
            continue;
        };
        match key.as_ref() {
            "heads" => {
                mark_seen(&mut seen_heads, HEADS)?;
                if !take_absent(d)? {
                    heads = Some(read_text_list(d, HEADS)?);
                }
            }
            "timestamp" => {
                mark_seen(&mut seen_timestamp, TIMESTAMP)?;
                if !take_absent(d)? {
                    timestamp = Some(read_u64(d, TIMESTAMP)?);
                }
            }
            _ => skip_value(d, 3)?,
        }
    }
    Ok(RemoteHeads {
        heads: heads.ok_or(DecodeError::MissingField { field: HEADS })?,
        timestamp: timestamp.ok_or(DecodeError::MissingField { field: TIMESTAMP })?,
    })
}

/// An unknown type string for display: debug-quoted (control characters
/// escaped) and cut to 64 characters, since it comes from the peer.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 64;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}
