//! One WebSocket frame through the wire decoder; whatever decodes must
//! survive an encode → decode round trip unchanged.
//!
//! Reaches `codeedex_schema::wire::{decode, encode}`: CBOR parsing with its
//! leniencies (non-minimal lengths, indefinite containers, floats as
//! integers, unknown keys), the nesting limit, and every message type.
//! `Message` is `PartialEq + Eq`, so the round trip is compared whole.

#![no_main]

use codeedex_schema::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let message = match wire::decode(frame) {
        Ok(message) => message,
        Err(error) => {
            // Error messages quote parts of the input (a shortened unknown
            // type): formatting them must not panic either.
            let _ = (error.to_string(), format!("{error:?}"));
            return;
        }
    };
    // Every accessor is total.
    let _ = (
        message.message_type(),
        message.is_extension(),
        message.sender_id(),
        message.target_id(),
        message.document_id(),
        format!("{message:?}"),
    );
    let encoded = wire::encode(&message);
    let again = wire::decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded {message:?} does not decode: {e}"));
    assert_eq!(again, message, "the round trip changed the message");
});
