//! Tests of the wire codec: round trips, byte fixtures from the real JS
//! encoder (cbor-x), hand-written lenient and hostile frames, and seeded
//! random inputs.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

// ---------------------------------------------------------------------------
// Hand-written CBOR, so fixtures can spell out exactly the bytes a peer sends.
// ---------------------------------------------------------------------------

/// A minimal-length header for `major` (0..=7) with argument `len`.
fn head(major: u8, len: u64) -> Vec<u8> {
    let major = major << 5;
    match len {
        0..=23 => vec![major | len as u8],
        24..=0xff => vec![major | 24, len as u8],
        0x100..=0xffff => [vec![major | 25], (len as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![major | 26], (len as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![major | 27], len.to_be_bytes().to_vec()].concat(),
    }
}

fn text(s: &str) -> Vec<u8> {
    [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
}

fn bytes(b: &[u8]) -> Vec<u8> {
    [head(2, b.len() as u64), b.to_vec()].concat()
}

fn uint(n: u64) -> Vec<u8> {
    head(0, n)
}

fn float64(x: f64) -> Vec<u8> {
    [vec![0xfb], x.to_be_bytes().to_vec()].concat()
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    [head(4, items.len() as u64), items.concat()].concat()
}

fn entries(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    pairs
        .iter()
        .flat_map(|(key, value)| [text(key), value.clone()].concat())
        .collect()
}

/// A map with a minimal length header.
fn map(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    [head(5, pairs.len() as u64), entries(pairs)].concat()
}

/// A map the way cbor-x writes it: length always as `b9 xx xx`.
fn map_b9(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let len = u16::try_from(pairs.len()).unwrap();
    [vec![0xb9], len.to_be_bytes().to_vec(), entries(pairs)].concat()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

/// A valid `ephemeral` frame with `count` spelled as the given bytes.
fn ephemeral_with_count(count: Vec<u8>) -> Vec<u8> {
    map(&[
        ("type", text("ephemeral")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("count", count),
        ("sessionId", text("s")),
        ("data", bytes(&[0xa0])),
    ])
}

/// One message of every variant, with optional parts both present and not.
fn samples() -> Vec<Message> {
    let mut new_heads = BTreeMap::new();
    new_heads.insert(
        s("storage-1"),
        RemoteHeads {
            heads: vec![s("h1"), s("h2")],
            timestamp: 1_700_000_000_123,
        },
    );
    new_heads.insert(
        s("storage-2"),
        RemoteHeads {
            heads: vec![],
            timestamp: 0,
        },
    );
    vec![
        Message::Join {
            sender_id: s("peer-a"),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(s("5d2f6a1e-3c1b-4c53-9a53-2b0f1e5b7d11")),
                is_ephemeral: false,
                extensions: vec![
                    s(message_type::AUTH_REFRESH),
                    s(message_type::CATCH_UP_REQUEST),
                ],
            }),
        },
        Message::Join {
            sender_id: s("peer-b"),
            supported_protocol_versions: vec![s("1"), s("2")],
            peer_metadata: None,
        },
        Message::Peer {
            sender_id: s("server"),
            target_id: s("peer-a"),
            selected_protocol_version: s("1"),
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(s("server-storage")),
                is_ephemeral: false,
                extensions: vec![],
            }),
        },
        Message::Peer {
            sender_id: s("server"),
            target_id: s("peer-b"),
            selected_protocol_version: s("1"),
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
                extensions: vec![],
            }),
        },
        Message::Leave {
            sender_id: s("peer-a"),
        },
        Message::Error {
            message: s("protocol version 1 not offered"),
        },
        Message::Request {
            sender_id: s("peer-a"),
            target_id: s("server"),
            document_id: s("2W8xzVnPL2D7HEdXCwTqMWaiMkxk"),
            data: vec![0x42, 0, 1, 2],
        },
        Message::Sync {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_id: s("2W8xzVnPL2D7HEdXCwTqMWaiMkxk"),
            data: vec![0x43; 300],
        },
        Message::DocUnavailable {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_id: s("2W8xzVnPL2D7HEdXCwTqMWaiMkxk"),
        },
        Message::Ephemeral {
            sender_id: s("peer-a"),
            target_id: s("server"),
            document_id: s("doc"),
            count: u64::MAX,
            session_id: s("session"),
            data: vec![0xa1, 0x61, 0x78, 0x01],
        },
        Message::RemoteSubscriptionChange {
            sender_id: s("peer-a"),
            target_id: s("server"),
            add: Some(vec![s("storage-1")]),
            remove: vec![s("storage-2")],
        },
        Message::RemoteSubscriptionChange {
            sender_id: s("peer-a"),
            target_id: s("server"),
            add: None,
            remove: vec![],
        },
        Message::RemoteHeadsChanged {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_id: s("doc"),
            new_heads,
        },
        Message::AuthRefresh {
            sender_id: s("peer-a"),
            target_id: s("server"),
            access_token: s("eyJhbGciOi.secret.token"),
        },
        Message::AuthAccepted {
            sender_id: s("server"),
            target_id: s("peer-a"),
            expires_at: 1_760_000_000,
        },
        Message::AuthAccepted {
            sender_id: s("server"),
            target_id: s("peer-a"),
            expires_at: i64::MIN,
        },
        Message::CatchUpRequest {
            sender_id: s("peer-a"),
            target_id: s("server"),
            cursor: 0,
        },
        Message::CatchUpResponse {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_ids: vec![s("doc-1"), s("doc-2")],
            cursor: 42,
        },
    ]
}

// ---------------------------------------------------------------------------
// Encoding and round trips.
// ---------------------------------------------------------------------------

#[test]
fn every_variant_round_trips() {
    let samples = samples();
    let mut variants: Vec<&str> = samples.iter().map(Message::message_type).collect();
    variants.dedup();
    assert_eq!(variants.len(), 14, "samples must cover every variant");
    for message in samples {
        let frame = encode(&message);
        assert_eq!(decode(&frame), Ok(message.clone()), "frame {frame:02x?}");
    }
}

#[test]
fn encode_writes_type_first_and_minimal_lengths() {
    let frame = encode(&Message::Leave { sender_id: s("a") });
    let expected = map(&[("type", text("leave")), ("senderId", text("a"))]);
    assert_eq!(frame, expected);
    assert_eq!(frame[0], 0xa2, "a two-entry map in its shortest form");

    for message in samples() {
        let frame = encode(&message);
        let type_entry = [text("type"), text(message.message_type())].concat();
        assert_eq!(
            frame.get(1..1 + type_entry.len()),
            Some(&type_entry[..]),
            "`type` first in {message:?}"
        );
    }
}

#[test]
fn encode_writes_data_as_an_untagged_byte_string() {
    let frame = encode(&Message::Sync {
        sender_id: s("a"),
        target_id: s("b"),
        document_id: s("d"),
        data: vec![0x42, 1, 2],
    });
    let expected = map(&[
        ("type", text("sync")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("data", bytes(&[0x42, 1, 2])),
    ]);
    assert_eq!(frame, expected);
}

#[test]
fn encode_leaves_out_absent_optional_fields() {
    let frame = encode(&Message::Peer {
        sender_id: s("srv"),
        target_id: s("a"),
        selected_protocol_version: s("1"),
        peer_metadata: Some(PeerMetadata {
            storage_id: None,
            is_ephemeral: false,
            extensions: vec![],
        }),
    });
    let expected = map(&[
        ("type", text("peer")),
        ("senderId", text("srv")),
        ("targetId", text("a")),
        ("selectedProtocolVersion", text("1")),
        ("peerMetadata", map(&[("isEphemeral", vec![0xf4])])),
    ]);
    assert_eq!(frame, expected);
}

#[test]
fn encode_writes_negative_expiry_as_a_negative_integer() {
    let frame = encode(&Message::AuthAccepted {
        sender_id: s("a"),
        target_id: s("b"),
        expires_at: -1,
    });
    assert_eq!(frame.last(), Some(&0x20), "-1 is the single byte 0x20");
}

// ---------------------------------------------------------------------------
// Frames produced by the real JS encoder: cbor-x 1.x with
// `{tagUint8Array: false, useRecords: false}`, as in automerge-repo's
// helpers/cbor.ts.
// ---------------------------------------------------------------------------

#[test]
fn decodes_cbor_x_join_with_undefined_storage_id() {
    // {type:"join", senderId:"peer-a", supportedProtocolVersions:["1"],
    //  peerMetadata:{storageId:undefined, isEphemeral:true}}
    let frame = hex(concat!(
        "b90004",
        "6474797065646a6f696e",
        "6873656e646572496466706565722d61",
        "7819737570706f7274656450726f746f636f6c56657273696f6e73816131",
        "6c706565724d65746164617461",
        "b90002",
        "6973746f726167654964f7",
        "6b6973457068656d6572616cf5",
    ));
    assert_eq!(
        decode(&frame),
        Ok(Message::Join {
            sender_id: s("peer-a"),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
                extensions: vec![],
            }),
        })
    );
}

#[test]
fn decodes_cbor_x_sync() {
    let frame = hex(concat!(
        "b9000564747970656473796e636873656e646572496466706565722d61",
        "687461726765744964637372766a646f63756d656e74496466325738787a56",
        "646461746143420102",
    ));
    assert_eq!(
        decode(&frame),
        Ok(Message::Sync {
            sender_id: s("peer-a"),
            target_id: s("srv"),
            document_id: s("2W8xzV"),
            data: vec![0x42, 1, 2],
        })
    );
}

#[test]
fn decodes_cbor_x_ephemeral() {
    let frame = hex(concat!(
        "b90007647479706569657068656d6572616c6873656e64657249646161",
        "687461726765744964616265636f756e74036973657373696f6e49646173",
        "6a646f63756d656e7449646164646461746141a0",
    ));
    assert_eq!(
        decode(&frame),
        Ok(Message::Ephemeral {
            sender_id: s("a"),
            target_id: s("b"),
            document_id: s("d"),
            count: 3,
            session_id: s("s"),
            data: vec![0xa0],
        })
    );
}

#[test]
fn decodes_cbor_x_remote_heads_with_float64_timestamp() {
    // cbor-x writes Date.now()-sized integers as float64 (fb 42 78 bc ...).
    let frame = hex(concat!(
        "b9000564747970657472656d6f74652d68656164732d6368616e676564",
        "6873656e6465724964616168746172676574496461626a646f63756d656e74496461",
        "64686e65774865616473b90001627374b9000265686561647381626831",
        "6974696d657374616d70fb4278bcfe5687b000",
    ));
    let mut new_heads = BTreeMap::new();
    new_heads.insert(
        s("st"),
        RemoteHeads {
            heads: vec![s("h1")],
            timestamp: 1_700_000_000_123,
        },
    );
    assert_eq!(
        decode(&frame),
        Ok(Message::RemoteHeadsChanged {
            sender_id: s("a"),
            target_id: s("b"),
            document_id: s("d"),
            new_heads,
        })
    );
}

// ---------------------------------------------------------------------------
// Hand-written lenient frames.
// ---------------------------------------------------------------------------

#[test]
fn accepts_non_minimal_map_length() {
    let frame = map_b9(&[
        ("type", text("sync")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("data", bytes(&[0x42])),
    ]);
    assert_eq!(&frame[..3], &[0xb9, 0x00, 0x05]);
    assert!(matches!(decode(&frame), Ok(Message::Sync { .. })));

    // Non-minimal lengths of strings and integers too: `78 04 "type"`,
    // `19 00 07` for 7.
    let frame = [
        vec![0xa2],
        vec![0x78, 0x04],
        b"type".to_vec(),
        text("leave"),
        text("senderId"),
        vec![0x7a, 0, 0, 0, 1, b'a'],
    ]
    .concat();
    assert_eq!(decode(&frame), Ok(Message::Leave { sender_id: s("a") }));
    let frame = ephemeral_with_count(vec![0x19, 0x00, 0x07]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::Ephemeral { count: 7, .. })
    ));
}

#[test]
fn accepts_integers_as_floats() {
    let cases: [(Vec<u8>, u64); 5] = [
        (float64(5.0), 5),
        (float64(-0.0), 0),
        (float64(9_007_199_254_740_994.0), 9_007_199_254_740_994),
        (vec![0xfa, 0x40, 0xa0, 0x00, 0x00], 5), // float32 5.0
        (vec![0xf9, 0x45, 0x00], 5),             // float16 5.0
    ];
    for (count, expected) in cases {
        match decode(&ephemeral_with_count(count)) {
            Ok(Message::Ephemeral { count, .. }) => assert_eq!(count, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
    let frame = map(&[
        ("type", text(message_type::AUTH_ACCEPTED)),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("expiresAt", float64(-1_760_000_000.0)),
    ]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::AuthAccepted {
            expires_at: -1_760_000_000,
            ..
        })
    ));
}

#[test]
fn skips_unknown_keys_of_any_shape() {
    let nested = map(&[
        ("deep", map(&[("deeper", array(&[uint(1), map(&[])]))])),
        ("list", array(&[text("x"), bytes(&[1, 2]), float64(1.5)])),
    ]);
    let frame = map_b9(&[
        ("unknownMap", nested),
        ("type", text("doc-unavailable")),
        ("tagged", [vec![0xc1, 0xd8, 0x40], bytes(&[1])].concat()),
        (
            "indefinite",
            vec![
                0x9f, 0xbf, 0x61, b'k', 0x80, 0xff, 0x5f, 0x41, 0, 0xff, 0xff,
            ],
        ),
        ("senderId", text("a")),
        ("simple", vec![0xf8, 0x20]),
        ("targetId", text("b")),
        (
            "negative",
            vec![0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        ("documentId", text("d")),
        (
            "bools",
            array(&[vec![0xf4], vec![0xf5], vec![0xf6], vec![0xf7]]),
        ),
    ]);
    assert_eq!(
        decode(&frame),
        Ok(Message::DocUnavailable {
            sender_id: s("a"),
            target_id: s("b"),
            document_id: s("d"),
        })
    );
}

#[test]
fn skips_non_text_keys() {
    let frame = [
        vec![0xa3],
        uint(7),
        map(&[("x", uint(1))]),
        text("type"),
        text("leave"),
        text("senderId"),
        text("a"),
    ]
    .concat();
    assert_eq!(decode(&frame), Ok(Message::Leave { sender_id: s("a") }));
}

#[test]
fn ignores_known_keys_that_mean_nothing_for_the_type() {
    let frame = map(&[
        ("type", text("leave")),
        ("senderId", text("a")),
        ("data", uint(5)),
        ("targetId", vec![0xf6]),
        ("count", text("not a number")),
    ]);
    assert_eq!(decode(&frame), Ok(Message::Leave { sender_id: s("a") }));
}

#[test]
fn accepts_metadata_as_an_alias_of_peer_metadata() {
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        ("supportedProtocolVersions", array(&[text("1")])),
        (
            "metadata",
            map(&[("storageId", text("st")), ("isEphemeral", vec![0xf4])]),
        ),
    ]);
    assert_eq!(
        decode(&frame),
        Ok(Message::Join {
            sender_id: s("a"),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(s("st")),
                is_ephemeral: false,
                extensions: vec![],
            }),
        })
    );
}

#[test]
fn missing_supported_protocol_versions_means_version_1() {
    for absent in [None, Some(vec![0xf6]), Some(vec![0xf7])] {
        let mut pairs = vec![("type", text("join")), ("senderId", text("a"))];
        if let Some(value) = absent {
            pairs.push(("supportedProtocolVersions", value));
        }
        assert_eq!(
            decode(&map(&pairs)),
            Ok(Message::Join {
                sender_id: s("a"),
                supported_protocol_versions: vec![s(PROTOCOL_VERSION)],
                peer_metadata: None,
            })
        );
    }
}

#[test]
fn null_and_undefined_mean_absent_in_optional_fields() {
    let frame = map(&[
        ("type", text("peer")),
        ("senderId", text("srv")),
        ("targetId", text("a")),
        ("selectedProtocolVersion", text("1")),
        ("peerMetadata", vec![0xf6]),
    ]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::Peer {
            peer_metadata: None,
            ..
        })
    ));

    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        (
            "peerMetadata",
            map(&[
                ("storageId", vec![0xf6]),
                ("isEphemeral", vec![0xf7]),
                ("codeedexExtensions", vec![0xf7]),
            ]),
        ),
    ]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::Join {
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                ..
            }),
            ..
        })
    ));

    // samod documents `remove: undefined` from JS clients.
    let frame = map(&[
        ("type", text("remote-subscription-change")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("add", array(&[text("st")])),
        ("remove", vec![0xf7]),
    ]);
    assert_eq!(
        decode(&frame),
        Ok(Message::RemoteSubscriptionChange {
            sender_id: s("a"),
            target_id: s("b"),
            add: Some(vec![s("st")]),
            remove: vec![],
        })
    );
    let frame = map(&[
        ("type", text("remote-subscription-change")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("add", vec![0xf6]),
    ]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::RemoteSubscriptionChange { add: None, .. })
    ));
}

#[test]
fn accepts_indefinite_lengths() {
    // {_ "type": (_ "le" "ave"), "senderId": "a"} with an indefinite map and
    // an indefinite text string.
    let frame = [
        vec![0xbf],
        text("type"),
        vec![0x7f],
        text("le"),
        text("ave"),
        vec![0xff],
        text("senderId"),
        text("a"),
        vec![0xff],
    ]
    .concat();
    assert_eq!(decode(&frame), Ok(Message::Leave { sender_id: s("a") }));

    let frame = map(&[
        ("type", text(message_type::CATCH_UP_RESPONSE)),
        ("senderId", text("a")),
        ("targetId", text("b")),
        (
            "documentIds",
            [vec![0x9f], text("d1"), text("d2"), vec![0xff]].concat(),
        ),
        ("cursor", uint(9)),
    ]);
    assert!(matches!(
        decode(&frame),
        Ok(Message::CatchUpResponse { ref document_ids, cursor: 9, .. }) if document_ids == &[s("d1"), s("d2")]
    ));

    let frame = map(&[
        ("type", text("sync")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        (
            "data",
            [
                vec![0x5f],
                bytes(&[1, 2]),
                bytes(&[]),
                bytes(&[3]),
                vec![0xff],
            ]
            .concat(),
        ),
    ]);
    assert!(matches!(decode(&frame), Ok(Message::Sync { ref data, .. }) if data == &[1, 2, 3]));
}

#[test]
fn key_order_does_not_matter() {
    let frame = map(&[
        ("data", bytes(&[0x42])),
        ("documentId", text("d")),
        ("targetId", text("b")),
        ("senderId", text("a")),
        ("type", text("request")),
    ]);
    assert_eq!(
        decode(&frame),
        Ok(Message::Request {
            sender_id: s("a"),
            target_id: s("b"),
            document_id: s("d"),
            data: vec![0x42],
        })
    );
}

#[test]
fn accepts_document_id_as_utf8_bytes_only() {
    let with_id = |id: Vec<u8>| {
        map(&[
            ("type", text("doc-unavailable")),
            ("senderId", text("a")),
            ("targetId", text("b")),
            ("documentId", id),
        ])
    };
    assert!(matches!(
        decode(&with_id(bytes(b"2W8xzV"))),
        Ok(Message::DocUnavailable { ref document_id, .. }) if document_id == "2W8xzV"
    ));
    assert_eq!(
        decode(&with_id(bytes(&[0xff, 0xfe]))),
        Err(DecodeError::InvalidUtf8 {
            field: "documentId"
        })
    );
    assert_eq!(
        decode(&with_id(uint(3))),
        Err(DecodeError::WrongType {
            field: "documentId",
            expected: "a text string",
            found: "an unsigned integer"
        })
    );
}

#[test]
fn reads_announced_extensions() {
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        (
            "peerMetadata",
            map(&[
                ("isEphemeral", vec![0xf4]),
                (
                    "codeedexExtensions",
                    array(&[text(message_type::AUTH_REFRESH)]),
                ),
                ("somethingElse", map(&[("x", array(&[]))])),
            ]),
        ),
    ]);
    let Ok(Message::Join {
        peer_metadata: Some(metadata),
        ..
    }) = decode(&frame)
    else {
        panic!("expected a join with metadata");
    };
    assert!(metadata.supports(message_type::AUTH_REFRESH));
    assert!(!metadata.supports(message_type::CATCH_UP_REQUEST));
}

// ---------------------------------------------------------------------------
// Rejections.
// ---------------------------------------------------------------------------

fn sync_with_data(data: Vec<u8>) -> Vec<u8> {
    map(&[
        ("type", text("sync")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("data", data),
    ])
}

#[test]
fn rejects_text_where_bytes_are_expected() {
    assert_eq!(
        decode(&sync_with_data(text("QgEC"))),
        Err(DecodeError::WrongType {
            field: "data",
            expected: "a byte string",
            found: "a text string"
        })
    );
}

#[test]
fn rejects_tagged_bytes_in_known_fields() {
    // cbor-x with `tagUint8Array: true` would write tag 64 here.
    assert_eq!(
        decode(&sync_with_data([vec![0xd8, 0x40], bytes(&[1])].concat())),
        Err(DecodeError::WrongType {
            field: "data",
            expected: "a byte string",
            found: "a tagged value"
        })
    );
}

#[test]
fn rejects_empty_data() {
    assert_eq!(
        decode(&sync_with_data(bytes(&[]))),
        Err(DecodeError::EmptyField { field: "data" })
    );
    assert_eq!(
        decode(&sync_with_data(vec![0x5f, 0xff])),
        Err(DecodeError::EmptyField { field: "data" })
    );
    let request = map(&[
        ("type", text("request")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("data", bytes(&[])),
    ]);
    assert_eq!(
        decode(&request),
        Err(DecodeError::EmptyField { field: "data" })
    );
    let ephemeral = map(&[
        ("type", text("ephemeral")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("count", uint(1)),
        ("sessionId", text("s")),
        ("data", bytes(&[])),
    ]);
    assert_eq!(
        decode(&ephemeral),
        Err(DecodeError::EmptyField { field: "data" })
    );
}

#[test]
fn rejects_missing_required_fields_by_name() {
    let frame = map(&[
        ("type", text("sync")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("data", bytes(&[1])),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::MissingField {
            field: "documentId"
        })
    );
    let frame = map(&[("type", text("leave")), ("senderId", vec![0xf6])]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::MissingField { field: "senderId" })
    );
    let frame = map(&[("senderId", text("a"))]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::MissingField { field: "type" })
    );
    let frame = map(&[
        ("type", text("remote-heads-changed")),
        ("senderId", text("a")),
        ("targetId", text("b")),
        ("documentId", text("d")),
        ("newHeads", map(&[("st", map(&[("heads", array(&[]))]))])),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::MissingField {
            field: "newHeads.timestamp"
        })
    );
}

#[test]
fn rejects_wrong_types_by_name() {
    let frame = map(&[("type", uint(1))]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::WrongType {
            field: "type",
            expected: "a text string",
            found: "an unsigned integer"
        })
    );
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        ("supportedProtocolVersions", array(&[uint(1)])),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::WrongElementType {
            field: "supportedProtocolVersions",
            expected: "text strings only",
            found: "an unsigned integer"
        })
    );
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        ("peerMetadata", map(&[("isEphemeral", text("yes"))])),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::WrongType {
            field: "peerMetadata.isEphemeral",
            expected: "a boolean",
            found: "a text string"
        })
    );
}

#[test]
fn rejects_truncated_input() {
    assert_eq!(decode(&[]), Err(DecodeError::Truncated));
    let frame = sync_with_data(bytes(&[1, 2, 3]));
    assert_eq!(
        decode(&frame[..frame.len() - 1]),
        Err(DecodeError::Truncated)
    );
    assert_eq!(decode(&[0xbf, 0x61]), Err(DecodeError::Truncated));
    assert_eq!(decode(&[0xb9, 0x00]), Err(DecodeError::Truncated));
}

#[test]
fn rejects_trailing_bytes() {
    let frame = [
        encode(&Message::Leave { sender_id: s("a") }),
        vec![0x00, 0x01],
    ]
    .concat();
    assert_eq!(decode(&frame), Err(DecodeError::TrailingBytes { count: 2 }));
}

#[test]
fn rejects_values_that_are_not_maps() {
    assert_eq!(
        decode(&array(&[text("type"), text("leave")])),
        Err(DecodeError::NotAMap { found: "an array" })
    );
    assert_eq!(
        decode(&text("hello")),
        Err(DecodeError::NotAMap {
            found: "a text string"
        })
    );
    assert_eq!(
        decode(&[0xd9, 0xd9, 0xf7, 0xa0]),
        Err(DecodeError::NotAMap {
            found: "a tagged value"
        })
    );
}

#[test]
fn rejects_malformed_cbor() {
    // A break where a value should be, a reserved initial byte, a text chunk
    // inside an indefinite byte string, invalid UTF-8 in a key.
    for frame in [
        vec![0xa1, 0xff],
        [vec![0xa1], text("x"), vec![0x1c]].concat(),
        [vec![0xa1], text("x"), vec![0x5f, 0x61, b'a', 0xff]].concat(),
        vec![0xa1, 0x62, 0xff, 0xfe, 0x00],
    ] {
        assert!(
            matches!(decode(&frame), Err(DecodeError::Malformed(_))),
            "{frame:02x?} gave {:?}",
            decode(&frame)
        );
    }
}

#[test]
fn rejects_deep_nesting_without_overflowing_the_stack() {
    let deep = |opener: u8, depth: usize| -> Vec<u8> {
        let mut value = vec![opener; depth];
        value.push(0x00);
        value
    };
    let frame = |unknown: Vec<u8>| {
        map(&[
            ("type", text("leave")),
            ("senderId", text("a")),
            ("x", unknown),
        ])
    };
    let too_deep = Err(DecodeError::TooDeep {
        limit: MAX_NESTING_DEPTH,
    });
    assert_eq!(decode(&frame(deep(0x81, 10_000))), too_deep);
    assert_eq!(decode(&frame(deep(0x9f, 10_000))), too_deep);
    // 10,000 nested single-entry maps {"": {"": ...}}.
    let maps: Vec<u8> = std::iter::repeat_n([0xa1, 0x60], 10_000)
        .flatten()
        .collect();
    assert_eq!(decode(&frame([maps, vec![0x00]].concat())), too_deep);
    // Inside a known field too.
    let frame_known = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        ("peerMetadata", map(&[("x", deep(0x81, 10_000))])),
    ]);
    assert_eq!(decode(&frame_known), too_deep);
    // A long chain of tags is not nesting, and costs no stack either.
    let tags: Vec<u8> = [vec![0xc1; 100_000], vec![0x00]].concat();
    assert!(decode(&frame(tags)).is_ok());

    // The message map is level 1: 31 more levels are fine, 32 are not.
    let fits = MAX_NESTING_DEPTH - 1;
    let mut closed = deep(0x81, fits);
    assert!(decode(&frame(closed.clone())).is_ok());
    closed.insert(0, 0x81);
    assert_eq!(decode(&frame(closed)), too_deep);
}

#[test]
fn rejects_counts_that_are_not_unsigned_integers() {
    let invalid = |reason| {
        Err(DecodeError::InvalidInteger {
            field: "count",
            reason,
        })
    };
    let cases = [
        (float64(1.5), "has a fractional part"),
        (float64(f64::NAN), "is not finite"),
        (float64(f64::INFINITY), "is not finite"),
        (float64(-1.0), "is negative"),
        (
            float64(18_446_744_073_709_551_616.0),
            "does not fit 64 bits",
        ),
        (vec![0x20], "is negative"),
        (vec![0xf9, 0x3e, 0x00], "has a fractional part"), // float16 1.5
    ];
    for (count, reason) in cases {
        assert_eq!(decode(&ephemeral_with_count(count)), invalid(reason));
    }
    assert_eq!(
        decode(&ephemeral_with_count(text("3"))),
        Err(DecodeError::WrongType {
            field: "count",
            expected: "an unsigned integer",
            found: "a text string"
        })
    );
    let expiry = |value: Vec<u8>| {
        map(&[
            ("type", text(message_type::AUTH_ACCEPTED)),
            ("senderId", text("a")),
            ("targetId", text("b")),
            ("expiresAt", value),
        ])
    };
    assert_eq!(
        decode(&expiry(uint(u64::MAX))),
        Err(DecodeError::InvalidInteger {
            field: "expiresAt",
            reason: "does not fit 64 bits"
        })
    );
    assert_eq!(
        decode(&expiry(float64(9_223_372_036_854_775_808.0))),
        Err(DecodeError::InvalidInteger {
            field: "expiresAt",
            reason: "does not fit 64 bits"
        })
    );
}

#[test]
fn rejects_duplicate_known_keys_but_not_unknown_ones() {
    let frame = map(&[
        ("type", text("leave")),
        ("senderId", text("a")),
        ("senderId", text("b")),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::DuplicateKey { key: "senderId" })
    );
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        ("metadata", map(&[("isEphemeral", vec![0xf4])])),
        ("peerMetadata", map(&[("isEphemeral", vec![0xf5])])),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::DuplicateKey {
            key: "peerMetadata"
        })
    );
    let frame = map(&[
        ("type", text("join")),
        ("senderId", text("a")),
        (
            "peerMetadata",
            map(&[("storageId", vec![0xf7]), ("storageId", text("st"))]),
        ),
    ]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::DuplicateKey {
            key: "peerMetadata.storageId"
        })
    );
    let frame = map(&[
        ("type", text("leave")),
        ("senderId", text("a")),
        ("extra", uint(1)),
        ("extra", uint(2)),
    ]);
    assert_eq!(decode(&frame), Ok(Message::Leave { sender_id: s("a") }));
}

#[test]
fn reports_unknown_types_apart() {
    let frame = map(&[("type", text("future-thing")), ("senderId", text("a"))]);
    assert_eq!(
        decode(&frame),
        Err(DecodeError::UnknownType(s("future-thing")))
    );

    let long = "x".repeat(10_000);
    let error = decode(&map(&[("type", text(&long))])).unwrap_err();
    assert_eq!(error, DecodeError::UnknownType(long));
    assert!(error.to_string().len() < 100, "{error}");
}

#[test]
fn error_messages_name_the_problem() {
    let error = DecodeError::WrongType {
        field: "data",
        expected: "a byte string",
        found: "a text string",
    };
    assert_eq!(
        error.to_string(),
        "field `data` must be a byte string, found a text string"
    );
    assert_eq!(
        DecodeError::UnknownType(s("bogus\n")).to_string(),
        "unknown message type \"bogus\\n\""
    );
}

#[test]
fn debug_output_hides_tokens_and_data() {
    let refresh = Message::AuthRefresh {
        sender_id: s("a"),
        target_id: s("b"),
        access_token: s("super-secret-token"),
    };
    let printed = format!("{refresh:?}");
    assert!(!printed.contains("super-secret-token"), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");

    let sync = Message::Sync {
        sender_id: s("a"),
        target_id: s("b"),
        document_id: s("d"),
        data: vec![7; 1000],
    };
    assert!(format!("{sync:?}").contains("<1000 bytes>"));
}

#[test]
fn accessors_match_the_variants() {
    for message in samples() {
        let frame = encode(&message);
        assert_eq!(
            message.is_extension(),
            message.message_type().starts_with("codeedex/")
        );
        assert_eq!(
            message.sender_id().is_some(),
            !matches!(message, Message::Error { .. })
        );
        assert!(!frame.is_empty());
    }
    assert_eq!(
        message_type::EXTENSIONS
            .iter()
            .filter(|t| t.starts_with("codeedex/"))
            .count(),
        4
    );
}

// ---------------------------------------------------------------------------
// Seeded random inputs: decode must return, never panic.
// ---------------------------------------------------------------------------

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x00c0_dee0_de00_0001);
    for round in 0..5_000 {
        let len = rng.random_range(0..96);
        let mut frame = vec![0u8; len];
        rng.fill(&mut frame[..]);
        // Half the time, start like a map so decoding gets past the first byte.
        if round % 2 == 0
            && let Some(first) = frame.first_mut()
        {
            *first = [0xa3, 0xa5, 0xb9, 0xbf][rng.random_range(0..4)];
        }
        let _ = decode(&frame);
    }
}

#[test]
fn every_truncation_of_a_valid_frame_is_an_error() {
    for message in samples() {
        let frame = encode(&message);
        for end in 0..frame.len() {
            assert!(
                decode(&frame[..end]).is_err(),
                "prefix of {end} bytes of {message:?} decoded"
            );
        }
    }
    // The cbor-x join fixture too.
    let frame = hex(concat!(
        "b900046474797065646a6f696e6873656e646572496466706565722d61",
        "7819737570706f7274656450726f746f636f6c56657273696f6e73816131",
        "6c706565724d65746164617461b900026973746f726167654964f7",
        "6b6973457068656d6572616cf5",
    ));
    assert!(decode(&frame).is_ok());
    for end in 0..frame.len() {
        assert!(decode(&frame[..end]).is_err());
    }
}

#[test]
fn mutated_frames_never_panic_and_reencode_stably() {
    let mut rng = StdRng::seed_from_u64(0x00c0_dee0_de00_0002);
    let frames: Vec<Vec<u8>> = samples().iter().map(encode).collect();
    for _ in 0..5_000 {
        let mut frame = frames[rng.random_range(0..frames.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..frame.len());
            frame[at] = rng.random();
        }
        if let Ok(message) = decode(&frame) {
            assert_eq!(decode(&encode(&message)), Ok(message));
        }
    }
}
