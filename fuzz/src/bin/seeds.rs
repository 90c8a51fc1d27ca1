//! Writes the seed corpora under `fuzz/corpus/<target>/` from real traffic:
//! every protocol message through the real encoder, frames the way the stock
//! JS client (cbor-x) writes them, Automerge sync messages from two documents
//! really syncing (also with `flags = None`, as the server sends them), change
//! chunks, saved documents, and REST bodies.
//!
//! `cargo run --release --features seeds --bin seeds` from `fuzz/`. Output is
//! deterministic (fixed actors and clocks), so rerunning it changes nothing.
//! The `client_machine` corpus is structured input for `arbitrary`, so it
//! cannot be written from traffic: it is grown by fuzzing and minimised (see
//! README.md).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT};
use chrono::{TimeZone, Utc};
use codeedex_schema::id::DocumentId;
use codeedex_schema::task::{Notes, Priority, Tag, Tags, Task, Title};
use codeedex_schema::task_document::{self, TaskPatch};
use codeedex_schema::wire::{self, Message, PeerMetadata, RemoteHeads, message_type};

fn s(text: &str) -> String {
    text.to_owned()
}

fn doc_id() -> DocumentId {
    DocumentId::from_random_bytes([0x5e; 16])
}

fn task(title: &str) -> Task {
    let at = Utc
        .timestamp_millis_opt(1_790_000_000_000)
        .single()
        .expect("a valid instant");
    Task {
        title: Title::parse(title).expect("a valid title"),
        notes: Notes::parse("first line\n\tsecond").expect("valid notes"),
        done: false,
        due: None,
        priority: Priority::High,
        tags: Tags::new([
            Tag::parse("home").expect("a tag"),
            Tag::parse("x-1").expect("a tag"),
        ])
        .expect("two tags"),
        created_at: at,
        updated_at: at,
        completed_at: None,
    }
}

fn document(actor: u8, title: &str) -> Automerge {
    let mut doc = Automerge::new();
    doc.set_actor(ActorId::from([actor; 16]));
    doc.transact(|tx| task_document::write_new_task(tx, &task(title)))
        .expect("a task can be written");
    doc
}

/// One message from `from` to `to`, if `from` has one: recorded as sent
/// (with flags) and as our server sends it (`flags = None`).
fn step(
    from: &mut Automerge,
    to: &mut Automerge,
    sf: &mut sync::State,
    st: &mut sync::State,
    out: &mut Vec<Vec<u8>>,
) -> bool {
    let Some(m) = from.generate_sync_message(sf) else {
        return false;
    };
    out.push(m.clone().encode());
    let mut bare = m.clone();
    bare.flags = None;
    out.push(bare.encode());
    to.receive_sync_message(st, m)
        .expect("a real message applies");
    true
}

/// Messages of one sync exchange between `a` and `b` until both are quiet.
fn exchange(
    a: &mut Automerge,
    b: &mut Automerge,
    sa: &mut sync::State,
    sb: &mut sync::State,
    out: &mut Vec<Vec<u8>>,
) {
    for _ in 0..10 {
        let ab = step(a, b, sa, sb, out);
        let ba = step(b, a, sb, sa, out);
        if !ab && !ba {
            return;
        }
    }
}

/// Two devices with diverging edits sync until quiet.
fn sync_messages() -> Vec<Vec<u8>> {
    let mut a = document(1, "written on a");
    let mut b = Automerge::new();
    b.set_actor(ActorId::from([2; 16]));
    let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
    let mut out = Vec::new();
    exchange(&mut a, &mut b, &mut sa, &mut sb, &mut out);
    // Concurrent edits on both sides, then another round.
    let at = Utc
        .timestamp_millis_opt(1_790_000_100_000)
        .single()
        .expect("a valid instant");
    a.transact(|tx| {
        let patch = TaskPatch {
            done: Some(true),
            ..Default::default()
        };
        task_document::apply_patch(tx, &patch, at)
    })
    .expect("a patch applies");
    b.transact(|tx| tx.put(ROOT, "priority", "low"))
        .expect("a put applies");
    exchange(&mut a, &mut b, &mut sa, &mut sb, &mut out);
    out.sort();
    out.dedup();
    out
}

fn chunks() -> Vec<Vec<u8>> {
    let mut doc = document(3, "saved");
    let first = doc.save();
    let heads = doc.get_heads();
    doc.transact(|tx| tx.put(ROOT, "done", true))
        .expect("a put applies");
    let mut out = vec![
        first,
        doc.save(),
        doc.save_after(&heads),
        doc.save_nocompress(),
    ];
    out.extend(doc.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()));
    let mut root = Automerge::new();
    root.set_actor(ActorId::from([4; 16]));
    root.transact(|tx| {
        task_document::init_root(tx)?;
        task_document::add_to_root(tx, doc_id())
    })
    .expect("a root");
    out.push(root.save());
    out
}

fn wire_frames(sync_data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let metadata = PeerMetadata {
        storage_id: Some(s("6f2b9c1e-3a44-4b8e-9a51-0c7d2e9f1a23")),
        is_ephemeral: false,
        extensions: message_type::EXTENSIONS.iter().map(|e| s(e)).collect(),
    };
    let document_id = doc_id().to_string();
    let data = sync_data.first().cloned().unwrap_or_else(|| vec![0x42]);
    let mut new_heads = BTreeMap::new();
    new_heads.insert(
        s("6f2b9c1e-3a44-4b8e-9a51-0c7d2e9f1a23"),
        RemoteHeads {
            heads: vec![s("3vQB7B6MrGQZaxCuFg4oh")],
            timestamp: 1_700_000_000_123,
        },
    );
    let messages = vec![
        Message::Join {
            sender_id: s("peer-a"),
            supported_protocol_versions: vec![s("1")],
            peer_metadata: Some(metadata.clone()),
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
            peer_metadata: Some(metadata),
        },
        Message::Leave {
            sender_id: s("peer-a"),
        },
        Message::Error {
            message: s("unsupported protocol version"),
        },
        Message::Request {
            sender_id: s("peer-a"),
            target_id: s("server"),
            document_id: document_id.clone(),
            data: data.clone(),
        },
        Message::Sync {
            sender_id: s("peer-a"),
            target_id: s("server"),
            document_id: document_id.clone(),
            data,
        },
        Message::DocUnavailable {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_id: document_id.clone(),
        },
        Message::Ephemeral {
            sender_id: s("peer-a"),
            target_id: s("server"),
            document_id: document_id.clone(),
            count: 3,
            session_id: s("session"),
            data: vec![0xa1, 0x61, 0x78, 0x01],
        },
        Message::RemoteSubscriptionChange {
            sender_id: s("peer-a"),
            target_id: s("server"),
            add: Some(vec![s("6f2b9c1e-3a44-4b8e-9a51-0c7d2e9f1a23")]),
            remove: vec![],
        },
        Message::RemoteHeadsChanged {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_id: document_id.clone(),
            new_heads,
        },
        Message::AuthRefresh {
            sender_id: s("peer-a"),
            target_id: s("server"),
            access_token: s("eyJhbGciOiJFZERTQSJ9.e30.sig"),
        },
        Message::AuthAccepted {
            sender_id: s("server"),
            target_id: s("peer-a"),
            expires_at: 1_790_000_000,
        },
        Message::CatchUpRequest {
            sender_id: s("peer-a"),
            target_id: s("server"),
            cursor: 42,
        },
        Message::CatchUpResponse {
            sender_id: s("server"),
            target_id: s("peer-a"),
            document_ids: vec![document_id],
            cursor: 43,
        },
    ];
    let mut frames: Vec<Vec<u8>> = messages.iter().map(wire::encode).collect();
    // As the stock JS client writes them (cbor-x: `b9 xx xx` map lengths,
    // `undefined` storage id, float64 timestamps); the same fixtures as the
    // schema's wire tests.
    for hex in [
        concat!(
            "b90004",
            "6474797065646a6f696e",
            "6873656e646572496466706565722d61",
            "7819737570706f7274656450726f746f636f6c56657273696f6e73816131",
            "6c706565724d65746164617461",
            "b90002",
            "6973746f726167654964f7",
            "6b6973457068656d6572616cf5",
        ),
        concat!(
            "b9000564747970656473796e636873656e646572496466706565722d61",
            "687461726765744964637372766a646f63756d656e74496466325738787a56",
            "646461746143420102",
        ),
        concat!(
            "b9000564747970657472656d6f74652d68656164732d6368616e676564",
            "6873656e6465724964616168746172676574496461626a646f63756d656e74496461",
            "64686e65774865616473b90001627374b9000265686561647381626831",
            "6974696d657374616d70fb4278bcfe5687b000",
        ),
    ] {
        frames.push(hex::decode(hex).expect("valid hex"));
    }
    frames
}

fn rest_bodies() -> Vec<Vec<u8>> {
    [
        r#"{"email":"ann@example.com"}"#,
        r#"{"phone":"+14155552671"}"#,
        r#"{"email":" Ann@EXAMPLE.com ","code":"123456","device_name":"laptop"}"#,
        r#"{"phone":"+44 20 7946 0958","code":"000000"}"#,
        r#"{"refresh_token":"r.abc"}"#,
        r#"{"scope":"others"}"#,
        r#"{}"#,
        r#"{"title":"buy milk","notes":"two\nlitres","due":"2026-12-01","priority":"high","tags":["home","Errand"]}"#,
        r#"{"title":"  x  "}"#,
        r#"{"title":"t","done":true,"due":null,"tags":[]}"#,
        r#"{"notes":"","priority":"none"}"#,
        r#"["a","b","c"]"#,
        r#""medium""#,
        r#"{"id":"2W8xzVtAu1LrL1dcsTtiqJGJ4TwB","title":"t","notes":"","done":false,"due":null,"priority":"none","tags":[],"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00.123Z","completed_at":null}"#,
        r#"{"type":"urn:codeedex:problem:invalid_request","title":"Invalid request body","status":400,"code":"invalid_request"}"#,
        r#"{"status":"sent","expires_in":600,"resend_after":60}"#,
        r#"{"events":[{"at":"2026-01-01T00:00:00Z","kind":"login"}]}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect()
}

fn write(dir: &Path, name: &str, seeds: &[Vec<u8>]) {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    for seed in seeds {
        // Named by content, as libFuzzer names its own finds.
        let path = dir.join(format!("seed-{}", hex::encode(sha1ish(seed))));
        fs::write(&path, seed).expect("write a seed");
    }
    println!("{name}: {} seeds", seeds.len());
}

/// A short stable digest for file names (FNV-1a, 64 bits).
fn sha1ish(bytes: &[u8]) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.to_be_bytes()
}

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let sync_data = sync_messages();
    let chunk_data = chunks();
    let frames = wire_frames(&sync_data);
    write(&root, "wire_decode", &frames);
    write(&root, "rest_bodies", &rest_bodies());
    write(&root, "chunk_load", &chunk_data);
    let mut admission = sync_data.clone();
    admission.extend(chunk_data.iter().map(|c| {
        // A sync message carrying one whole-document chunk, as clients send.
        sync::Message {
            heads: vec![],
            need: vec![],
            have: vec![],
            changes: c.clone().into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
        .encode()
    }));
    write(&root, "admission", &admission);
    let mut frame_seeds = frames;
    frame_seeds.extend(sync_data);
    write(&root, "sync_frame", &frame_seeds);
}
