//! The machine driven through an in-memory stand-in for the server, so that
//! convergence and "nothing resent" are checked deterministically.

use std::collections::HashMap;

use automerge::{ActorId, Automerge, sync};
use chrono::{TimeZone, Utc};
use codeedex_schema::task::{Task, Title};
use codeedex_schema::task_document::{self, TaskPatch};

use super::*;

/// A minimal server: documents, one sync state per (peer, document), the
/// extensions, and fan-out of changes to peers attached to a document.
#[derive(Default)]
struct FakeServer {
    docs: HashMap<DocumentId, Automerge>,
    states: HashMap<(String, DocumentId), sync::State>,
    outbox: Vec<(String, Message)>,
    feed: Vec<DocumentId>,
}

impl FakeServer {
    fn sync_message(&self, to: &str, doc: DocumentId, m: sync::Message) -> (String, Message) {
        (
            to.to_owned(),
            Message::Sync {
                sender_id: "server".into(),
                target_id: to.into(),
                document_id: doc.to_string(),
                data: m.encode(),
            },
        )
    }

    fn handle(&mut self, from: &str, message: Message) {
        match message {
            Message::Join { .. } => self.outbox.push((
                from.to_owned(),
                Message::Peer {
                    sender_id: "server".into(),
                    target_id: from.into(),
                    selected_protocol_version: "1".into(),
                    peer_metadata: Some(PeerMetadata {
                        storage_id: Some("server-storage".into()),
                        is_ephemeral: false,
                        extensions: vec![
                            message_type::AUTH_REFRESH.into(),
                            message_type::CATCH_UP_REQUEST.into(),
                        ],
                    }),
                },
            )),
            Message::CatchUpRequest { cursor, .. } => {
                let start = usize::try_from(cursor).unwrap().min(self.feed.len());
                let ids = self.feed[start..].iter().map(ToString::to_string).collect();
                self.outbox.push((
                    from.to_owned(),
                    Message::CatchUpResponse {
                        sender_id: "server".into(),
                        target_id: from.into(),
                        document_ids: ids,
                        cursor: self.feed.len() as u64,
                    },
                ));
            }
            Message::Request { document_id, .. }
                if !self.docs.contains_key(&document_id.parse().unwrap()) =>
            {
                self.outbox.push((
                    from.to_owned(),
                    Message::DocUnavailable {
                        sender_id: "server".into(),
                        target_id: from.into(),
                        document_id,
                    },
                ));
            }
            Message::Request {
                document_id, data, ..
            }
            | Message::Sync {
                document_id, data, ..
            } => {
                let id: DocumentId = document_id.parse().unwrap();
                let doc = self.docs.entry(id).or_default();
                let state = self.states.entry((from.to_owned(), id)).or_default();
                let before = doc.get_heads();
                doc.receive_sync_message(state, sync::Message::decode(&data).unwrap())
                    .unwrap();
                let changed = doc.get_heads() != before;
                if let Some(reply) = doc.generate_sync_message(state) {
                    let m = self.sync_message(from, id, reply);
                    self.outbox.push(m);
                }
                if changed {
                    self.feed.push(id);
                    let others: Vec<String> = self
                        .states
                        .keys()
                        .filter(|(p, d)| *d == id && p != from)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for peer in others {
                        let doc = &self.docs[&id];
                        let state = self.states.get_mut(&(peer.clone(), id)).unwrap();
                        if let Some(m) = doc.generate_sync_message(state) {
                            let m = self.sync_message(&peer, id, m);
                            self.outbox.push(m);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// One device: a machine, its replicas, and what it saved and announced.
struct Device {
    name: String,
    machine: SyncMachine,
    replicas: Replicas,
    saved_states: HashMap<DocumentId, Vec<u8>>,
    events: Vec<ClientEvent>,
    sent: Vec<Message>,
}

impl Device {
    fn new(name: &str, root: DocumentId) -> Self {
        let mut replicas = Replicas::new(ActorId::random());
        replicas.set_root(Some(root));
        Self {
            name: name.into(),
            machine: SyncMachine::new(name.into(), format!("{name}-storage"), Vec::new(), 0),
            replicas,
            saved_states: HashMap::new(),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn apply(&mut self, effects: Vec<Effect>, server: &mut FakeServer) {
        for effect in effects {
            match effect {
                Effect::Send(m) => {
                    self.sent.push(m.clone());
                    server.handle(&self.name, m);
                }
                Effect::SaveSyncState(id, bytes) => {
                    self.saved_states.insert(id, bytes);
                }
                Effect::Emit(e) => self.events.push(e),
                _ => {}
            }
        }
    }

    fn create(&mut self, title: &str) -> DocumentId {
        let id = DocumentId::from_random_bytes(rand::random());
        let at = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let task = Task {
            title: Title::parse(title).unwrap(),
            notes: Default::default(),
            done: false,
            due: None,
            priority: Default::default(),
            tags: Default::default(),
            created_at: at,
            updated_at: at,
            completed_at: None,
        };
        self.replicas
            .get_or_empty(id)
            .transact(|tx| task_document::write_new_task(tx, &task))
            .unwrap();
        self.replicas.list(id).unwrap();
        id
    }

    fn local(&mut self, ids: &[DocumentId], server: &mut FakeServer) {
        let effects = self.machine.local_change(ids, &mut self.replicas);
        self.apply(effects, server);
    }
}

fn pump(devices: &mut [&mut Device], server: &mut FakeServer) {
    for _ in 0..10_000 {
        if server.outbox.is_empty() {
            return;
        }
        let (to, message) = server.outbox.remove(0);
        let device = devices
            .iter_mut()
            .find(|d| d.name == to)
            .expect("a known peer");
        let effects = device.machine.receive(message, &mut device.replicas);
        device.apply(effects, server);
    }
    panic!("the exchange does not terminate");
}

fn connect(device: &mut Device, server: &mut FakeServer) {
    let effects = device.machine.connected();
    device.apply(effects, server);
}

fn server_with_root() -> (FakeServer, DocumentId) {
    let mut server = FakeServer::default();
    let root = DocumentId::from_random_bytes([42; 16]);
    let mut doc = Automerge::new();
    doc.transact(|tx| task_document::init_root(tx)).unwrap();
    server.docs.insert(root, doc);
    (server, root)
}

fn titles(device: &Device) -> Vec<String> {
    let mut t: Vec<String> = device
        .replicas
        .tasks()
        .into_iter()
        .map(|t| t.title)
        .collect();
    t.sort();
    t
}

#[test]
fn offline_tasks_reach_another_device_with_events_and_both_converge() {
    let (mut server, root) = server_with_root();
    let mut a = Device::new("a", root);
    let mut b = Device::new("b", root);
    // A has never seen the root: its tasks wait unlisted, offline.
    let first = a.create("written offline");
    assert!(!a.replicas.root_ready());

    connect(&mut b, &mut server);
    pump(&mut [&mut a, &mut b], &mut server);
    assert_eq!(b.machine.pending(&b.replicas), 0);

    connect(&mut a, &mut server);
    pump(&mut [&mut a, &mut b], &mut server);
    assert!(a.replicas.root_ready());
    assert!(
        a.replicas.unlisted().is_empty(),
        "the waiting task joined the root"
    );
    assert_eq!(titles(&a), ["written offline"]);
    assert_eq!(titles(&b), ["written offline"]);
    assert!(b.events.iter().any(|e| matches!(e, ClientEvent::TaskAdded { task, origin: ChangeOrigin::Remote } if task.id == first)));
    assert_eq!(a.machine.pending(&a.replicas), 0);

    // Live: a change on B reaches A as a change event.
    b.replicas
        .get_or_empty(first)
        .transact(|tx| {
            task_document::apply_patch(
                tx,
                &TaskPatch {
                    done: Some(true),
                    ..Default::default()
                },
                Utc::now(),
            )
        })
        .unwrap();
    b.local(&[first], &mut server);
    pump(&mut [&mut a, &mut b], &mut server);
    assert!(a.replicas.task(first).unwrap().done);
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, ClientEvent::TaskChanged { task, .. } if task.done))
    );

    // A removal on A reaches B as a removal.
    assert!(a.replicas.unlist(first).unwrap());
    a.local(&[root], &mut server);
    pump(&mut [&mut a, &mut b], &mut server);
    assert!(b.replicas.tasks().is_empty());
    assert!(
        b.events
            .iter()
            .any(|e| matches!(e, ClientEvent::TaskRemoved { id, .. } if *id == first))
    );
}

#[test]
fn a_restart_resends_no_change_the_server_already_has() {
    let (mut server, root) = server_with_root();
    let mut a = Device::new("a", root);
    connect(&mut a, &mut server);
    pump(&mut [&mut a], &mut server);
    for i in 0..5 {
        let id = a.create(&format!("task {i}"));
        a.local(&[id, root], &mut server);
    }
    pump(&mut [&mut a], &mut server);
    assert_eq!(server.docs.len(), 6);
    let cursor = a.machine.cursor();

    // The process restarts: a new machine from the saved states.
    let saved: Vec<(DocumentId, Vec<u8>)> = a
        .saved_states
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    a.machine = SyncMachine::new("a2".into(), "a-storage".into(), saved, cursor);
    a.name = "a2".into();
    a.sent.clear();
    // The server keeps its sync states per storage id: model it by moving them.
    let moved: Vec<_> = server
        .states
        .drain()
        .map(|((_, d), s)| {
            (
                (String::from("a2"), d),
                sync::State::decode(&s.encode()).unwrap(),
            )
        })
        .collect();
    server.states.extend(moved);
    connect(&mut a, &mut server);
    pump(&mut [&mut a], &mut server);
    assert_eq!(a.machine.pending(&a.replicas), 0);
    for message in &a.sent {
        if let Message::Sync { data, .. } | Message::Request { data, .. } = message {
            assert!(
                sync::Message::decode(data).unwrap().changes.is_empty(),
                "a change was sent again"
            );
        }
    }
    assert!(
        unsynced_documents(
            &a.replicas,
            &a.saved_states
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>()
        ) == 0
    );
}

#[test]
fn garbage_from_the_server_is_ignored() {
    let (mut server, root) = server_with_root();
    let mut a = Device::new("a", root);
    connect(&mut a, &mut server);
    pump(&mut [&mut a], &mut server);
    let junk = [
        Message::Sync {
            sender_id: "server".into(),
            target_id: "a".into(),
            document_id: "not an id".into(),
            data: vec![1],
        },
        Message::Sync {
            sender_id: "server".into(),
            target_id: "a".into(),
            document_id: root.to_string(),
            data: vec![0x42, 0xff],
        },
        Message::CatchUpResponse {
            sender_id: "s".into(),
            target_id: "a".into(),
            document_ids: vec!["x".into()],
            cursor: 9,
        },
        Message::Error {
            message: "bye".into(),
        },
    ];
    for m in junk {
        let _ = a.machine.receive(m, &mut a.replicas);
    }
    // Still in business: a new task reaches the server.
    let id = a.create("after the junk");
    a.local(&[id, root], &mut server);
    pump(&mut [&mut a], &mut server);
    assert!(lists(&server.docs[&root], id));
    assert_eq!(a.machine.pending(&a.replicas), 0);
}

fn edit_notes(device: &mut Device, id: DocumentId, notes: &str) {
    device
        .replicas
        .get_or_empty(id)
        .transact(|tx| {
            task_document::apply_patch(
                tx,
                &TaskPatch {
                    notes: Some(codeedex_schema::task::Notes::parse(notes).unwrap()),
                    ..Default::default()
                },
                Utc::now(),
            )
        })
        .unwrap();
}

fn sync_messages(device: &Device) -> usize {
    device
        .sent
        .iter()
        .filter(|m| matches!(m, Message::Sync { .. }))
        .count()
}

#[test]
fn edits_while_the_server_has_not_answered_wait_and_go_out_together() {
    let (mut server, root) = server_with_root();
    let mut a = Device::new("a", root);
    let id = a.create("Coalesce");
    connect(&mut a, &mut server);
    pump(&mut [&mut a], &mut server);
    assert_eq!(a.machine.pending(&a.replicas), 0);

    // The first edit goes out at once; the server's answer is not delivered.
    edit_notes(&mut a, id, "one");
    a.local(&[id], &mut server);
    let after_first = sync_messages(&a);
    // Two more edits while it is unanswered: nothing is sent, both wait.
    edit_notes(&mut a, id, "two");
    a.local(&[id], &mut server);
    edit_notes(&mut a, id, "three");
    a.local(&[id], &mut server);
    assert_eq!(
        sync_messages(&a),
        after_first,
        "an edit went out unanswered"
    );
    assert!(a.machine.holding());
    assert!(
        a.machine.pending(&a.replicas) > 0,
        "held edits are not synced yet"
    );

    // The server's answer arrives: the reply carries both held edits.
    pump(&mut [&mut a], &mut server);
    assert!(!a.machine.holding());
    assert_eq!(
        server.docs[&id].get_heads(),
        a.replicas.get(id).unwrap().get_heads(),
        "the held edits did not reach the server with the reply"
    );
    assert_eq!(a.machine.pending(&a.replicas), 0);

    // Without an answer, the driver's bound releases what is held.
    edit_notes(&mut a, id, "four");
    a.local(&[id], &mut server);
    let outbox = std::mem::take(&mut server.outbox);
    edit_notes(&mut a, id, "five");
    a.local(&[id], &mut server);
    assert!(a.machine.holding());
    let before_release = sync_messages(&a);
    let effects = a.machine.release_held(&mut a.replicas);
    a.apply(effects, &mut server);
    assert_eq!(sync_messages(&a), before_release + 1);
    assert!(!a.machine.holding());
    server.outbox.extend(outbox);
    pump(&mut [&mut a], &mut server);
    assert_eq!(
        server.docs[&id].get_heads(),
        a.replicas.get(id).unwrap().get_heads()
    );
}

#[test]
fn a_change_lost_on_the_way_is_sent_again_once_the_server_is_heard() {
    let (mut server, root) = server_with_root();
    let mut a = Device::new("a", root);
    let id = a.create("Lost");
    connect(&mut a, &mut server);
    pump(&mut [&mut a], &mut server);
    assert_eq!(a.machine.pending(&a.replicas), 0);

    // The message with the edit is lost on the way; the connection stays.
    edit_notes(&mut a, id, "lost on the way");
    let lost = a.machine.local_change(&[id], &mut a.replicas);
    assert_eq!(lost.len(), 1, "the edit went out");
    assert!(a.machine.pending(&a.replicas) > 0);
    // Another sync of the document sends nothing: Automerge counts the
    // change as sent and waits for an answer.
    assert!(
        a.machine.local_change(&[id], &mut a.replicas).is_empty(),
        "the change went out twice without a reset"
    );

    // The driver heard the server after a silence: the edit goes again.
    let effects = a.machine.resend_unanswered(&mut a.replicas);
    assert_eq!(effects.len(), 1, "the unanswered document is synced again");
    a.apply(effects, &mut server);
    pump(&mut [&mut a], &mut server);
    assert_eq!(
        server.docs[&id].get_heads(),
        a.replicas.get(id).unwrap().get_heads(),
        "the lost edit never reached the server"
    );
    assert_eq!(a.machine.pending(&a.replicas), 0);
    assert!(
        a.machine.resend_unanswered(&mut a.replicas).is_empty(),
        "nothing is unanswered any more"
    );
}
