//! [`Message`] → bytes.
//!
//! The output is one definite-length CBOR map with text keys, `type` first,
//! every length and integer in its shortest form, byte strings as plain major
//! type 2 (no tags): what the stock clients and samod decode.

use std::collections::BTreeMap;
use std::convert::Infallible;

use minicbor::Encoder;

use super::message::{Message, PeerMetadata, RemoteHeads};

/// An encoder that appends to a `Vec<u8>`: writing can never fail.
type VecEncoder = Encoder<Vec<u8>>;

/// The only error `VecEncoder` can report, which never happens.
type WriteResult = Result<(), minicbor::encode::Error<Infallible>>;

/// Encodes `message` as one binary WebSocket frame.
///
/// Optional fields that are `None` are left out rather than written as
/// `null`; `PeerMetadata::extensions` is left out when empty, so stock
/// clients see exactly the fields they know.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut encoder = Encoder::new(Vec::new());
    // `Vec<u8>`'s writer error type is `Infallible`, and the encoder's methods
    // we call (map, array, str, bytes, u64, i64, bool) only fail when the
    // writer fails: this cannot panic.
    write_message(&mut encoder, message).expect("writing CBOR to a Vec<u8> cannot fail");
    encoder.into_writer()
}

/// Writes the whole message map.
fn write_message(e: &mut VecEncoder, message: &Message) -> WriteResult {
    e.map(entry_count(message))?;
    e.str("type")?.str(message.message_type())?;
    match message {
        Message::Join {
            sender_id,
            supported_protocol_versions,
            peer_metadata,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("supportedProtocolVersions")?;
            write_text_list(e, supported_protocol_versions)?;
            if let Some(metadata) = peer_metadata {
                e.str("peerMetadata")?;
                write_peer_metadata(e, metadata)?;
            }
        }
        Message::Peer {
            sender_id,
            target_id,
            selected_protocol_version,
            peer_metadata,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("selectedProtocolVersion")?
                .str(selected_protocol_version)?;
            if let Some(metadata) = peer_metadata {
                e.str("peerMetadata")?;
                write_peer_metadata(e, metadata)?;
            }
        }
        Message::Leave { sender_id } => {
            e.str("senderId")?.str(sender_id)?;
        }
        Message::Error { message } => {
            e.str("message")?.str(message)?;
        }
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
        | Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentId")?.str(document_id)?;
            e.str("data")?.bytes(data)?;
        }
        Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentId")?.str(document_id)?;
        }
        Message::Ephemeral {
            sender_id,
            target_id,
            document_id,
            count,
            session_id,
            data,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentId")?.str(document_id)?;
            e.str("count")?.u64(*count)?;
            e.str("sessionId")?.str(session_id)?;
            e.str("data")?.bytes(data)?;
        }
        Message::RemoteSubscriptionChange {
            sender_id,
            target_id,
            add,
            remove,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            if let Some(add) = add {
                e.str("add")?;
                write_text_list(e, add)?;
            }
            e.str("remove")?;
            write_text_list(e, remove)?;
        }
        Message::RemoteHeadsChanged {
            sender_id,
            target_id,
            document_id,
            new_heads,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentId")?.str(document_id)?;
            e.str("newHeads")?;
            write_new_heads(e, new_heads)?;
        }
        Message::AuthRefresh {
            sender_id,
            target_id,
            access_token,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("accessToken")?.str(access_token)?;
        }
        Message::AuthAccepted {
            sender_id,
            target_id,
            expires_at,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("expiresAt")?.i64(*expires_at)?;
        }
        Message::CatchUpRequest {
            sender_id,
            target_id,
            cursor,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("cursor")?.u64(*cursor)?;
        }
        Message::CatchUpResponse {
            sender_id,
            target_id,
            document_ids,
            cursor,
        } => {
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentIds")?;
            write_text_list(e, document_ids)?;
            e.str("cursor")?.u64(*cursor)?;
        }
    }
    Ok(())
}

/// How many entries `write_message` writes for `message`, `type` included.
/// Must agree with `write_message`; the round-trip tests check it.
fn entry_count(message: &Message) -> u64 {
    let optional = |present: bool| u64::from(present);
    match message {
        Message::Join { peer_metadata, .. } => 3 + optional(peer_metadata.is_some()),
        Message::Peer { peer_metadata, .. } => 4 + optional(peer_metadata.is_some()),
        Message::Leave { .. } | Message::Error { .. } => 2,
        Message::Request { .. } | Message::Sync { .. } => 5,
        Message::DocUnavailable { .. } => 4,
        Message::Ephemeral { .. } => 7,
        Message::RemoteSubscriptionChange { add, .. } => 4 + optional(add.is_some()),
        Message::RemoteHeadsChanged { .. } | Message::CatchUpResponse { .. } => 5,
        Message::AuthRefresh { .. }
        | Message::AuthAccepted { .. }
        | Message::CatchUpRequest { .. } => 4,
    }
}

/// Writes `{storageId?, isEphemeral, codeedexExtensions?}`.
fn write_peer_metadata(e: &mut VecEncoder, metadata: &PeerMetadata) -> WriteResult {
    let has_extensions = !metadata.extensions.is_empty();
    let entries = 1 + u64::from(metadata.storage_id.is_some()) + u64::from(has_extensions);
    e.map(entries)?;
    if let Some(storage_id) = &metadata.storage_id {
        e.str("storageId")?.str(storage_id)?;
    }
    e.str("isEphemeral")?.bool(metadata.is_ephemeral)?;
    if has_extensions {
        e.str("codeedexExtensions")?;
        write_text_list(e, &metadata.extensions)?;
    }
    Ok(())
}

/// Writes `{storageId: {heads: [...], timestamp}, ...}`.
fn write_new_heads(e: &mut VecEncoder, new_heads: &BTreeMap<String, RemoteHeads>) -> WriteResult {
    e.map(len_u64(new_heads.len()))?;
    for (storage_id, remote) in new_heads {
        e.str(storage_id)?;
        e.map(2)?;
        e.str("heads")?;
        write_text_list(e, &remote.heads)?;
        e.str("timestamp")?.u64(remote.timestamp)?;
    }
    Ok(())
}

/// Writes an array of text strings.
fn write_text_list(e: &mut VecEncoder, items: &[String]) -> WriteResult {
    e.array(len_u64(items.len()))?;
    for item in items {
        e.str(item)?;
    }
    Ok(())
}

/// A collection length as a CBOR length. `usize` is at most 64 bits on every
/// target Rust supports, so the conversion is lossless.
fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
