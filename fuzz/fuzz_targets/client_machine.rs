//! The client's sync state machine against a hostile or broken server.
//!
//! Reaches `codeedex_client_core`'s sans-IO `SyncMachine` (the handshake,
//! catch-up, per-document Automerge sync, root-list bookkeeping, event
//! emission) and the `Replicas` it edits. A small in-process server keeps
//! real Automerge documents (a root listing up to three tasks) and answers
//! what the client sends, so whole conversations happen; the fuzzer picks the
//! order of events and can at any point send frames of arbitrary bytes,
//! well-formed frames with arbitrary or corrupted Automerge sync data,
//! bogus document ids, unsolicited catch-up answers, errors, and local edits.
//!
//! Properties: nothing panics; every message the client sends encodes and
//! decodes back to itself; every sync state it asks to save decodes.
//!
//! The file is longer than 600 lines on purpose: a cargo-fuzz target is one
//! file, and the small server it talks to is part of the harness, kept here
//! so that the fuzz crate depends on nothing test-only.

#![no_main]

use std::collections::{HashMap, VecDeque};

use arbitrary::Arbitrary;
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ROOT};
use chrono::{TimeZone, Utc};
use codeedex_client_core::fuzzing::{Effect, Replicas, SyncMachine, unsynced_documents};
use codeedex_schema::id::DocumentId;
use codeedex_schema::task::{Task, Title};
use codeedex_schema::task_document::{self, TaskPatch};
use codeedex_schema::wire::{self, Message, PeerMetadata, message_type};
use libfuzzer_sys::fuzz_target;

/// Events per input: enough for a few full conversations, bounded so one
/// input cannot run for long.
const MAX_EVENTS: usize = 96;

const CLIENT: &str = "fuzz-client";
const SERVER: &str = "fuzz-server";

fn root_id() -> DocumentId {
    DocumentId::from_random_bytes([1; 16])
}

fn task_id(i: u8) -> DocumentId {
    DocumentId::from_random_bytes([2 + i % 3; 16])
}

/// Which document an event is about.
#[derive(Arbitrary, Debug, Clone)]
enum DocRef {
    Root,
    Task(u8),
    /// A document id neither side knows.
    Unknown([u8; 16]),
    /// A `documentId` string that may not be an id at all.
    Text(String),
}

impl DocRef {
    fn id(&self) -> Option<DocumentId> {
        match self {
            DocRef::Root => Some(root_id()),
            DocRef::Task(i) => Some(task_id(*i)),
            DocRef::Unknown(bytes) => Some(DocumentId::from_random_bytes(*bytes)),
            DocRef::Text(text) => text.parse().ok(),
        }
    }

    fn wire(&self) -> String {
        match self {
            DocRef::Text(text) => text.clone(),
            other => other.id().map(|id| id.to_string()).unwrap_or_default(),
        }
    }
}

/// How a real sync message from the server is damaged on its way.
#[derive(Arbitrary, Debug)]
enum Damage {
    FlipBit {
        at: u16,
        bit: u8,
    },
    Truncate {
        to: u16,
    },
    Append(Vec<u8>),
    /// Drop the flags byte the way a server that clears `flags` would not:
    /// re-encode with `flags = None` (what our server sends).
    ClearFlags,
}

/// A sync message built field by field.
#[derive(Arbitrary, Debug)]
struct CraftedSync {
    heads: Vec<[u8; 32]>,
    need: Vec<[u8; 32]>,
    have: Vec<(Vec<[u8; 32]>, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    /// Real change chunks from the server's copy of this document, to mix
    /// valid Automerge data with arbitrary fields.
    real_changes: bool,
    flags: Option<u8>,
    v2: bool,
}

/// What the server side does to its own documents.
#[derive(Arbitrary, Debug)]
enum ServerEdit {
    AddTask {
        task: u8,
        title: String,
    },
    RemoveTask(u8),
    /// A field written as a JS client might: a plain string, or junk.
    PutString {
        doc: u8,
        key: String,
        value: String,
    },
    PutInt {
        doc: u8,
        key: String,
        value: i64,
    },
}

#[derive(Arbitrary, Debug)]
enum Event {
    Connect,
    Disconnect,
    /// The server processes what the client sent and queues its answers.
    Tick,
    /// Deliver the next queued server message, maybe damaged.
    Deliver(Option<Damage>),
    /// A frame of arbitrary bytes, through the wire decoder.
    RawFrame(Vec<u8>),
    /// A well-formed `sync` (or `request`) frame with arbitrary data.
    RawSync {
        doc: DocRef,
        data: Vec<u8>,
        request: bool,
    },
    Crafted {
        doc: DocRef,
        message: CraftedSync,
    },
    /// An unsolicited `peer`, with some extensions.
    Peer {
        extensions: u8,
        sender_id: String,
    },
    DocUnavailable(DocRef),
    CatchUp {
        docs: Vec<DocRef>,
        cursor: u64,
    },
    Error(String),
    AuthAccepted(i64),
    Server(ServerEdit),
    LocalTitle {
        task: u8,
        title: String,
    },
    LocalCreate {
        title: String,
    },
    LocalChange(Vec<DocRef>),
    TokenRefreshed,
}

#[derive(Arbitrary, Debug)]
struct Input {
    saved_states: Vec<(DocRef, Vec<u8>)>,
    cursor: u64,
    events: Vec<Event>,
}

/// A stand-in for the server: documents, one sync state per document with
/// the single client, the catch-up feed, and the queues both ways.
struct Server {
    docs: HashMap<DocumentId, Automerge>,
    states: HashMap<DocumentId, sync::State>,
    feed: Vec<DocumentId>,
    inbox: VecDeque<Message>,
    outbox: VecDeque<Message>,
}

impl Server {
    fn new() -> Self {
        let mut root = Automerge::new();
        root.set_actor(ActorId::from([0xAA; 16]));
        root.transact(|tx| task_document::init_root(tx))
            .expect("an empty root document");
        Self {
            docs: HashMap::from([(root_id(), root)]),
            states: HashMap::new(),
            feed: vec![root_id()],
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
        }
    }

    fn sync_frame(id: DocumentId, data: Vec<u8>) -> Message {
        Message::Sync {
            sender_id: SERVER.into(),
            target_id: CLIENT.into(),
            document_id: id.to_string(),
            data,
        }
    }

    fn push_changes(&mut self, id: DocumentId) {
        let (Some(doc), Some(state)) = (self.docs.get(&id), self.states.get_mut(&id)) else {
            return;
        };
        if let Some(mut m) = doc.generate_sync_message(state) {
            m.flags = None;
            self.outbox.push_back(Self::sync_frame(id, m.encode()));
        }
    }

    fn tick(&mut self) {
        while let Some(message) = self.inbox.pop_front() {
            match message {
                Message::Join { .. } => self.outbox.push_back(Message::Peer {
                    sender_id: SERVER.into(),
                    target_id: CLIENT.into(),
                    selected_protocol_version: "1".into(),
                    peer_metadata: Some(PeerMetadata {
                        storage_id: Some("server-storage".into()),
                        is_ephemeral: false,
                        extensions: message_type::EXTENSIONS
                            .iter()
                            .map(|e| (*e).to_owned())
                            .collect(),
                    }),
                }),
                Message::CatchUpRequest { cursor, .. } => {
                    let start = usize::try_from(cursor)
                        .unwrap_or(usize::MAX)
                        .min(self.feed.len());
                    self.outbox.push_back(Message::CatchUpResponse {
                        sender_id: SERVER.into(),
                        target_id: CLIENT.into(),
                        document_ids: self.feed[start..].iter().map(ToString::to_string).collect(),
                        cursor: self.feed.len() as u64,
                    });
                }
                Message::Request {
                    document_id, data, ..
                }
                | Message::Sync {
                    document_id, data, ..
                } => {
                    let Ok(id) = document_id.parse::<DocumentId>() else {
                        continue;
                    };
                    let Ok(m) = sync::Message::decode(&data) else {
                        continue;
                    };
                    let doc = self.docs.entry(id).or_default();
                    let state = self.states.entry(id).or_default();
                    let before = doc.get_heads();
                    if doc.receive_sync_message(state, m).is_err() {
                        continue;
                    }
                    if doc.get_heads() != before {
                        self.feed.push(id);
                    }
                    self.push_changes(id);
                }
                _ => {}
            }
        }
    }

    fn edit(&mut self, edit: &ServerEdit) {
        let at = Utc.timestamp_millis_opt(1_790_000_000_000).single();
        let touched = match edit {
            ServerEdit::AddTask { task, title } => {
                let id = task_id(*task);
                let doc = self.docs.entry(id).or_default();
                if doc.get_heads().is_empty()
                    && let (Ok(title), Some(at)) = (Title::parse(title), at)
                {
                    let task = Task {
                        title,
                        notes: Default::default(),
                        done: false,
                        due: None,
                        priority: Default::default(),
                        tags: Default::default(),
                        created_at: at,
                        updated_at: at,
                        completed_at: None,
                    };
                    let _ = doc.transact(|tx| task_document::write_new_task(tx, &task));
                }
                let root = self.docs.entry(root_id()).or_default();
                let _ = root.transact(|tx| task_document::add_to_root(tx, id));
                vec![id, root_id()]
            }
            ServerEdit::RemoveTask(task) => {
                let root = self.docs.entry(root_id()).or_default();
                let _ = root.transact(|tx| task_document::remove_from_root(tx, task_id(*task)));
                vec![root_id()]
            }
            ServerEdit::PutString { doc, key, value } => {
                let id = if *doc % 4 == 0 {
                    root_id()
                } else {
                    task_id(*doc)
                };
                let d = self.docs.entry(id).or_default();
                let _ = d.transact(|tx| tx.put(ROOT, key.as_str(), value.as_str()));
                vec![id]
            }
            ServerEdit::PutInt { doc, key, value } => {
                let id = if *doc % 4 == 0 {
                    root_id()
                } else {
                    task_id(*doc)
                };
                let d = self.docs.entry(id).or_default();
                let _ = d.transact(|tx| tx.put(ROOT, key.as_str(), *value));
                vec![id]
            }
        };
        for id in touched {
            self.feed.push(id);
            self.push_changes(id);
        }
    }
}

fn damage(frame: Message, how: &Damage) -> Message {
    let Message::Sync {
        sender_id,
        target_id,
        document_id,
        mut data,
    } = frame
    else {
        return frame;
    };
    match how {
        Damage::FlipBit { at, bit } => {
            if !data.is_empty() {
                let i = usize::from(*at) % data.len();
                data[i] ^= 1 << (bit % 8);
            }
        }
        Damage::Truncate { to } => data.truncate(usize::from(*to).max(1)),
        Damage::Append(extra) => data.extend_from_slice(extra),
        Damage::ClearFlags => {
            if let Ok(mut m) = sync::Message::decode(&data) {
                m.flags = None;
                data = m.encode();
            }
        }
    }
    Message::Sync {
        sender_id,
        target_id,
        document_id,
        data,
    }
}

fn crafted(server: &Server, doc: &DocRef, c: &CraftedSync) -> Vec<u8> {
    // Automerge's encoder requires sorted hash lists (a debug assertion); a
    // peer's bytes need not be, which `RawSync` covers.
    let hashes = |v: &[[u8; 32]]| {
        let mut hashes: Vec<ChangeHash> = v.iter().map(|h| ChangeHash(*h)).collect();
        hashes.sort();
        hashes
    };
    let mut changes = c.changes.clone();
    if c.real_changes
        && let Some(d) = doc.id().and_then(|id| server.docs.get(&id))
    {
        changes.extend(d.get_changes(&[]).iter().map(|ch| ch.raw_bytes().to_vec()));
    }
    let message = sync::Message {
        heads: hashes(&c.heads),
        need: hashes(&c.need),
        have: c
            .have
            .iter()
            .map(|(last_sync, bloom)| sync::Have {
                last_sync: hashes(last_sync),
                bloom: sync::BloomFilter::try_from(bloom.as_slice()).unwrap_or_default(),
            })
            .collect(),
        changes: changes.into(),
        flags: c.flags.map(|bits| {
            let mut f = sync::MessageFlags::new();
            f.set(bits);
            f
        }),
        version: if c.v2 {
            sync::MessageVersion::V2
        } else {
            sync::MessageVersion::V1
        },
    };
    message.encode()
}

struct Client {
    machine: SyncMachine,
    replicas: Replicas,
    created: u8,
}

impl Client {
    fn apply(&mut self, effects: Vec<Effect>, server: &mut Server) {
        for effect in effects {
            match effect {
                Effect::Send(message) => {
                    let frame = wire::encode(&message);
                    let again = wire::decode(&frame).unwrap_or_else(|e| {
                        panic!("the client sent {message:?}, which does not decode: {e}")
                    });
                    assert_eq!(again, message, "the client's message changed on the wire");
                    server.inbox.push_back(message);
                }
                Effect::SaveSyncState(id, bytes) => {
                    assert!(
                        sync::State::decode(&bytes).is_ok(),
                        "the sync state saved for {id} does not decode"
                    );
                }
                Effect::SaveDocument(id) => {
                    // What the driver persists must load again.
                    if let Some(doc) = self.replicas.get(id) {
                        let saved = doc.save();
                        assert!(
                            Automerge::load(&saved).is_ok(),
                            "a saved document does not load"
                        );
                    }
                }
                Effect::SaveUnlisted
                | Effect::SaveCursor(_)
                | Effect::Emit(_)
                | Effect::ServerError(_) => {}
            }
        }
    }

    fn receive(&mut self, message: Message, server: &mut Server) {
        let effects = self.machine.receive(message, &mut self.replicas);
        self.apply(effects, server);
    }
}

fuzz_target!(|input: Input| {
    let mut server = Server::new();
    let saved = input
        .saved_states
        .iter()
        .filter_map(|(doc, bytes)| Some((doc.id()?, bytes.clone())))
        .collect();
    let mut replicas = Replicas::new(ActorId::from([0xCC; 16]));
    replicas.set_root(Some(root_id()));
    let mut client = Client {
        machine: SyncMachine::new(CLIENT.into(), "client-storage".into(), saved, input.cursor),
        replicas,
        created: 0,
    };
    for event in input.events.into_iter().take(MAX_EVENTS) {
        match event {
            Event::Connect => {
                let effects = client.machine.connected();
                client.apply(effects, &mut server);
            }
            Event::Disconnect => {
                client.machine.disconnected();
                server.inbox.clear();
                server.outbox.clear();
                // The server forgets the session but not what it learnt.
                for state in server.states.values_mut() {
                    *state = sync::State::decode(&state.encode()).unwrap_or_default();
                }
            }
            Event::Tick => {
                server.tick();
                let _ = client.machine.pending(&client.replicas);
            }
            Event::Deliver(how) => {
                if let Some(mut message) = server.outbox.pop_front() {
                    if let Some(how) = &how {
                        message = damage(message, how);
                    }
                    client.receive(message, &mut server);
                }
            }
            Event::RawFrame(bytes) => {
                if let Ok(message) = wire::decode(&bytes) {
                    client.receive(message, &mut server);
                }
            }
            Event::RawSync { doc, data, request } => {
                let (sender_id, target_id, document_id) =
                    (SERVER.to_owned(), CLIENT.to_owned(), doc.wire());
                let message = if request {
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
                };
                client.receive(message, &mut server);
            }
            Event::Crafted { doc, message } => {
                let data = crafted(&server, &doc, &message);
                let frame = Message::Sync {
                    sender_id: SERVER.into(),
                    target_id: CLIENT.into(),
                    document_id: doc.wire(),
                    data,
                };
                client.receive(frame, &mut server);
            }
            Event::Peer {
                extensions,
                sender_id,
            } => {
                let extensions = message_type::EXTENSIONS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| extensions & (1 << i) != 0)
                    .map(|(_, e)| (*e).to_owned())
                    .collect();
                client.receive(
                    Message::Peer {
                        sender_id,
                        target_id: CLIENT.into(),
                        selected_protocol_version: "1".into(),
                        peer_metadata: Some(PeerMetadata {
                            storage_id: None,
                            is_ephemeral: false,
                            extensions,
                        }),
                    },
                    &mut server,
                );
            }
            Event::DocUnavailable(doc) => client.receive(
                Message::DocUnavailable {
                    sender_id: SERVER.into(),
                    target_id: CLIENT.into(),
                    document_id: doc.wire(),
                },
                &mut server,
            ),
            Event::CatchUp { docs, cursor } => client.receive(
                Message::CatchUpResponse {
                    sender_id: SERVER.into(),
                    target_id: CLIENT.into(),
                    document_ids: docs.iter().map(DocRef::wire).collect(),
                    cursor,
                },
                &mut server,
            ),
            Event::Error(message) => client.receive(Message::Error { message }, &mut server),
            Event::AuthAccepted(expires_at) => client.receive(
                Message::AuthAccepted {
                    sender_id: SERVER.into(),
                    target_id: CLIENT.into(),
                    expires_at,
                },
                &mut server,
            ),
            Event::Server(edit) => server.edit(&edit),
            Event::LocalTitle { task, title } => {
                let id = task_id(task);
                let Ok(title) = Title::parse(&title) else {
                    continue;
                };
                let patch = TaskPatch {
                    title: Some(title),
                    ..Default::default()
                };
                let at = Utc.timestamp_millis_opt(1_790_000_500_000).single();
                let Some(at) = at else { continue };
                if client
                    .replicas
                    .get_or_empty(id)
                    .transact(|tx| task_document::apply_patch(tx, &patch, at))
                    .is_ok()
                {
                    let effects = client.machine.local_change(&[id], &mut client.replicas);
                    client.apply(effects, &mut server);
                }
            }
            Event::LocalCreate { title } => {
                let Ok(title) = Title::parse(&title) else {
                    continue;
                };
                let Some(at) = Utc.timestamp_millis_opt(1_790_000_600_000).single() else {
                    continue;
                };
                client.created = client.created.wrapping_add(1);
                let id = DocumentId::from_random_bytes([0x80 | (client.created % 8); 16]);
                let task = Task {
                    title,
                    notes: Default::default(),
                    done: false,
                    due: None,
                    priority: Default::default(),
                    tags: Default::default(),
                    created_at: at,
                    updated_at: at,
                    completed_at: None,
                };
                let doc = client.replicas.get_or_empty(id);
                if !doc.get_heads().is_empty()
                    || doc
                        .transact(|tx| task_document::write_new_task(tx, &task))
                        .is_err()
                {
                    continue;
                }
                let root_changed = client.replicas.list(id).unwrap_or(false);
                let mut ids = vec![id];
                if root_changed {
                    ids.push(root_id());
                }
                let effects = client.machine.local_change(&ids, &mut client.replicas);
                client.apply(effects, &mut server);
            }
            Event::LocalChange(docs) => {
                let ids: Vec<DocumentId> = docs.iter().filter_map(DocRef::id).collect();
                let effects = client.machine.local_change(&ids, &mut client.replicas);
                client.apply(effects, &mut server);
            }
            Event::TokenRefreshed => {
                if let Some(effect) = client.machine.token_refreshed("a.fresh.token") {
                    client.apply(vec![effect], &mut server);
                }
            }
        }
    }
    let _ = client.machine.pending(&client.replicas);
    let _ = client.replicas.tasks();
    let _ = unsynced_documents(&client.replicas, &[]);
});
