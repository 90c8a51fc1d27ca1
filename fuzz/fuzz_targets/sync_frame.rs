//! Whole incoming WebSocket frames through the server's real sync path,
//! without sockets.
//!
//! Reaches `codeedex_server::sync::connection::Connection::frame` and the
//! session machine behind it (wire decoding, handshake, peer binding, rate
//! limit, access checks, admission of sync messages, ephemeral relay,
//! extensions), the `DocumentHub` (apply under the document lock, quotas, the
//! change log in a real `Store`, contained Automerge failures and reloads),
//! the owed replies (durability wait and `generate_sync_message`) and
//! notices, against a live task document, built the way
//! `server/src/sync/simulation.rs` builds its world.
//!
//! Each input: a `join`, then the input cut into frames; each frame is sent
//! raw, or wrapped as a well-formed `sync` (or `request`, or `ephemeral`) for
//! the live document with the fuzz bytes as `data`, so Automerge-level input
//! gets past the CBOR layer. After each frame the connection's owed messages
//! and notices are handled, as the socket driver does.
//!
//! The store lives in one temporary directory per process (under `TMPDIR`;
//! `run.sh` points that at its own temporary directory). Every
//! `INPUTS_PER_DOCUMENT` inputs the target moves to a fresh live document and
//! evicts the old ones, so state carried between inputs stays small.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use automerge::sync::{self as am_sync, SyncDoc};
use automerge::{ActorId, Automerge};
use chrono::{DateTime, TimeZone, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::task::{Task, Title};
use codeedex_schema::task_document;
use codeedex_schema::wire::{self, Message, PeerMetadata, message_type};
use codeedex_server::auth::Auth;
use codeedex_server::auth::keys::ServerKeys;
use codeedex_server::configuration::limits::{HubLimits, Quota, SyncLimits};
use codeedex_server::configuration::{Overrides, Settings};
use codeedex_server::delivery::CodeDelivery;
use codeedex_server::metrics::Metrics;
use codeedex_server::store::{SessionRecord, Store, UserRecord};
use codeedex_server::sync::connection::{Connection, Output, PeerContext};
use codeedex_server::sync::hub::DocumentHub;
use codeedex_server::sync::registry::PeerRegistry;
use libfuzzer_sys::fuzz_target;

/// Inputs that share one live document before the next one is used.
const INPUTS_PER_DOCUMENT: u64 = 1024;
/// Frames per input, besides the join.
const MAX_FRAMES: usize = 32;

const PEER_ID: &str = "fuzz-device";

struct World {
    runtime: tokio::runtime::Runtime,
    ctx: PeerContext,
    hub: Arc<DocumentHub>,
    user: UserId,
    session: SessionId,
    /// The prepared task's changes as one sync message from a new device.
    upload: Vec<u8>,
    /// Keeps the store's directory for the life of the process.
    _dir: tempfile::TempDir,
}

fn wall() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
        .single()
        .expect("a valid instant")
}

fn prepared_upload() -> Vec<u8> {
    let task = Task {
        title: Title::parse("water the plants").expect("a valid title"),
        notes: Default::default(),
        done: false,
        due: None,
        priority: Default::default(),
        tags: Default::default(),
        created_at: wall(),
        updated_at: wall(),
        completed_at: None,
    };
    let mut doc = Automerge::new();
    doc.set_actor(ActorId::from([5; 16]));
    doc.transact(|tx| task_document::write_new_task(tx, &task))
        .expect("a valid task can be written");
    let mut state = am_sync::State::new();
    let mut message = doc
        .generate_sync_message(&mut state)
        .expect("a first message");
    message.flags = None;
    // The first message carries heads only; the peer's answer asks for the
    // changes. Send them at once, as a device uploading a new document does.
    message.changes = doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect::<Vec<_>>()
        .into();
    message.encode()
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::Builder::new()
            .prefix("codeedex-fuzz-sync-frame")
            .tempdir()
            .expect("a temporary directory");
        let today = wall().date_naive();
        let settings = Settings::from_layers(Overrides::default(), Overrides::default(), today)
            .expect("default settings");
        let store = Store::open(dir.path()).expect("a store");
        let keys = ServerKeys::from_bytes([1; 32], [2; 32]);
        let delivery = CodeDelivery::from_settings(&settings.delivery, 10).expect("the log sender");
        let metrics = Arc::new(Metrics::default());
        let auth = Arc::new(Auth::new(
            &settings,
            store.clone(),
            keys,
            delivery,
            Arc::clone(&metrics),
        ));
        let user = UserId::from_random_bytes([3; 16]);
        runtime
            .block_on(store.find_or_create_user(&UserRecord {
                id: user,
                contact_key: "email:fuzz@example.com".into(),
                created_at: wall(),
                root_document_id: None,
            }))
            .expect("a user");
        let session = SessionId::from_random_bytes([10; 16]);
        runtime
            .block_on(store.insert_session(
                &SessionRecord {
                    id: session,
                    user_id: user,
                    device_name: None,
                    created_at: wall(),
                    last_used_at: wall(),
                    generation: 0,
                    rotated_at: wall(),
                },
                &[7; 32],
            ))
            .expect("a session");
        let hub = Arc::new(DocumentHub::new(
            store.clone(),
            ActorId::from(vec![9u8; 16]),
            // One user takes every input of a long run: a new document per
            // input would reach the default document quota (100,000) within
            // a few hours, after which every upload is refused with 4011,
            // correctly, but the harness's prepared upload with it. The
            // per-document byte limit stays, so it is still fuzzed.
            HubLimits {
                quota: Quota {
                    documents_per_user: u64::MAX,
                    bytes_per_user: u64::MAX,
                    ..Quota::default()
                },
                ..HubLimits::default()
            },
            Arc::clone(&metrics),
        ));
        let ctx = PeerContext {
            store,
            hub: Arc::clone(&hub),
            registry: Arc::new(PeerRegistry::default()),
            auth,
            server_peer_id: "server".into(),
            server_storage_id: "server-storage".into(),
            limits: SyncLimits::default(),
            metrics,
        };
        World {
            runtime,
            ctx,
            hub,
            user,
            session,
            upload: prepared_upload(),
            _dir: dir,
        }
    })
}

/// How one piece of the input is sent.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Wrap {
    Raw,
    Sync,
    Request,
    Ephemeral,
    /// A `sync` for a document id that is not the live one.
    SyncElsewhere,
}

fn document(n: u64) -> DocumentId {
    let mut bytes = [0xd0; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    DocumentId::from_random_bytes(bytes)
}

fn closes(outputs: &[Output]) -> bool {
    outputs.iter().any(|o| matches!(o, Output::Close { .. }))
}

async fn after_frame(conn: &mut Connection, outputs: &[Output]) -> bool {
    if closes(outputs) {
        return true;
    }
    // What the connection owes goes out once durable, as the socket driver
    // does it; a document that moved on meanwhile is owed again.
    while let Some(durable) = conn.owed_durability() {
        let waited = durable.await;
        if closes(&conn.durable(waited, Instant::now(), wall()).await) {
            return true;
        }
    }
    if let Some(notices) = conn.mailbox().try_next() {
        let out = conn.notices(notices, Instant::now(), wall()).await;
        if closes(&out) {
            return true;
        }
    }
    false
}

fn sync_frame(document_id: String, data: Vec<u8>, request: bool) -> Vec<u8> {
    let (sender_id, target_id) = (PEER_ID.to_owned(), "server".to_owned());
    wire::encode(&if request {
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
    } else {
        Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        }
    })
}

static INPUTS: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|input: &[u8]| {
    let world = world();
    let n = INPUTS.fetch_add(1, Ordering::Relaxed);
    let doc = document(n / INPUTS_PER_DOCUMENT);
    let fresh = n.is_multiple_of(INPUTS_PER_DOCUMENT);
    let doc_text = doc.to_string();
    let mut u = Unstructured::new(input);
    world.runtime.block_on(async {
        let conn_id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut conn = Connection::new(
            world.ctx.clone(),
            conn_id,
            world.user,
            world.session,
            i64::MAX,
            now,
        );
        let join = wire::encode(&Message::Join {
            sender_id: PEER_ID.into(),
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some("fuzz-storage".into()),
                is_ephemeral: false,
                extensions: vec![
                    message_type::AUTH_REFRESH.into(),
                    message_type::CATCH_UP_REQUEST.into(),
                ],
            }),
        });
        let outputs = conn.frame(&join, now, wall()).await;
        assert!(
            matches!(&outputs[..], [Output::Frame(_)]),
            "the join is answered with one peer message: {outputs:?}"
        );
        if fresh {
            // A new live document: the prepared task, uploaded as a device
            // would, so that the fuzz frames meet a document with content.
            let frame = sync_frame(doc_text.clone(), world.upload.clone(), false);
            let outputs = conn.frame(&frame, now, wall()).await;
            assert!(
                !after_frame(&mut conn, &outputs).await,
                "the prepared upload is accepted: {outputs:?}"
            );
        }
        for _ in 0..MAX_FRAMES {
            if u.is_empty() {
                break;
            }
            let Ok(wrap) = Wrap::arbitrary(&mut u) else {
                break;
            };
            let len = u.arbitrary_len::<u8>().unwrap_or(0);
            let Ok(piece) = u.bytes(len) else { break };
            let piece = piece.to_vec();
            let frame = match wrap {
                Wrap::Raw => piece,
                Wrap::Sync => sync_frame(doc_text.clone(), piece, false),
                Wrap::Request => sync_frame(doc_text.clone(), piece, true),
                Wrap::SyncElsewhere => sync_frame(document(u64::MAX - n).to_string(), piece, false),
                Wrap::Ephemeral => wire::encode(&Message::Ephemeral {
                    sender_id: PEER_ID.into(),
                    target_id: "server".into(),
                    document_id: doc_text.clone(),
                    count: n,
                    session_id: "fuzz-session".into(),
                    data: if piece.is_empty() { vec![0xa0] } else { piece },
                }),
            };
            let outputs = conn.frame(&frame, now, wall()).await;
            if after_frame(&mut conn, &outputs).await {
                break;
            }
        }
        conn.finish().await;
    });
    // Documents nobody syncs any more leave memory, as on a real server.
    world.hub.evict_idle(Duration::ZERO);
});
