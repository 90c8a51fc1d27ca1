//! A deterministic simulation of sync: the server's real session machine
//! (`codeedex_server::sync::session::Session`) against the client's real
//! sync machine (`codeedex_client_core`'s `SyncMachine`), in memory, without
//! sockets, a store on disk, keys or a clock.
//!
//! Three devices of one user create and edit tasks. The "network" is a set
//! of queues; a seeded generator picks every step: which device edits, which
//! queue delivers, when a device goes offline (its connection is dropped and
//! its machine told) and comes back (a new server session), and when the
//! simulated disk flushes. The server side is a small in-memory stand-in for
//! the hub that performs the session machine's effects with the same rules as
//! the real one (a document is only answered once its newest change is
//! durable; a device may only attach its own user's documents).
//!
//! At the end, with every device online and the queues drained: every
//! device and the server hold the same heads for every document, every task
//! created is listed everywhere, and no device has anything pending. The
//! same seed gives the same run, message for message.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use chrono::{DateTime, TimeZone, Utc};
use codeedex_client_core::fuzzing::{Effect as ClientEffect, Replicas, SyncMachine};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::task::{Notes, Task, Title};
use codeedex_schema::task_document::{self, TaskPatch};
use codeedex_schema::wire;
use codeedex_server::configuration::limits::SyncLimits;
use codeedex_server::durability::Ticket;
use codeedex_server::metrics::Metrics;
use codeedex_server::sync::session::{
    Bound, Effect, Generated, Identity, Reconciled, Session, SessionConfig, SyncKind, Synced,
};

const DEVICES: usize = 3;
const STEPS: usize = 700;

/// A tiny deterministic generator (xorshift), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn user() -> UserId {
    UserId::from_random_bytes([3; 16])
}

fn root_id() -> DocumentId {
    DocumentId::from_random_bytes([1; 16])
}

/// Commits carry a time; the simulation's is fixed, so that the same
/// operations make the same changes in every run.
fn at(step: u64) -> CommitOptions {
    CommitOptions::default().with_time(1_790_000_000 + step as i64)
}

fn wall(step: u64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + step as i64, 0)
        .single()
        .expect("a valid time")
}

/// A document as the server holds it.
struct ServerDoc {
    owner: UserId,
    doc: Automerge,
    /// The ticket of its newest change: nothing is generated from it before
    /// that ticket is durable.
    needs_durable: Ticket,
}

/// The server's documents, its change feed and its simulated disk.
#[derive(Default)]
struct Hub {
    docs: BTreeMap<DocumentId, ServerDoc>,
    /// Changes recorded so far, and how many of them are durable.
    written: u64,
    durable: u64,
    /// The change feed for catch-up: (sequence, document).
    feed: Vec<(u64, DocumentId)>,
    /// Saved sync states, by (storage id, document).
    sync_states: HashMap<(String, DocumentId), Vec<u8>>,
}

impl Hub {
    /// A peer's saved sync state of `doc`, or a fresh one.
    fn saved_state(&self, storage_id: &str, doc: DocumentId) -> sync::State {
        self.sync_states
            .get(&(storage_id.to_owned(), doc))
            .and_then(|bytes| sync::State::decode(bytes).ok())
            .unwrap_or_default()
    }

    /// Applies a device's message; returns whether the document changed and
    /// the ticket its reply must wait for.
    fn apply(
        &mut self,
        doc: DocumentId,
        state: &mut sync::State,
        message: sync::Message,
    ) -> (bool, Ticket) {
        let held = self.docs.get_mut(&doc).expect("held");
        let before = held.doc.get_heads();
        let told = state.last_sent_heads.clone();
        held.doc
            .receive_sync_message(state, message)
            .expect("devices send valid messages");
        // As the hub does: replies are generated later, so a message
        // without changes must not count as our heads having been sent.
        if !state.last_sent_heads.is_empty() {
            state.last_sent_heads = told;
        }
        let changed = held.doc.get_heads() != before;
        if changed {
            self.written += 1;
            held.needs_durable = Ticket::new(1, self.written);
            self.feed.push((self.written, doc));
        }
        (changed, held.needs_durable)
    }

    fn ticket(&self) -> Ticket {
        Ticket::new(1, self.written)
    }

    fn is_durable(&self, ticket: Ticket) -> bool {
        ticket.sequence() <= self.durable
    }
}

/// One device's connection on the server: the session machine and what the
/// driver holds for it.
struct ServerConnection {
    session: Session,
    attached: BTreeMap<DocumentId, sync::State>,
    waiting: BTreeSet<DocumentId>,
    /// Documents changed by other connections, not yet handled.
    notices: BTreeSet<DocumentId>,
}

struct Device {
    storage_id: String,
    machine: SyncMachine,
    replicas: Replicas,
    connection: Option<ServerConnection>,
    to_server: VecDeque<Vec<u8>>,
    to_device: VecDeque<Vec<u8>>,
    /// Sessions opened so far, for distinct ids.
    sessions: u8,
}

struct World {
    hub: Hub,
    devices: Vec<Device>,
    metrics: Arc<Metrics>,
    clock: Instant,
    step: u64,
    created: u64,
    /// Every frame delivered, in order, to compare two runs of one seed.
    trace: Vec<(usize, bool, Vec<u8>)>,
}

impl World {
    fn new() -> Self {
        let mut root = Automerge::new();
        root.set_actor(ActorId::from(vec![0xEE; 16]));
        root.transact_with::<_, _, automerge::AutomergeError, _>(
            |_| at(0),
            |tx| {
                task_document::init_root(tx).expect("a fresh root");
                Ok(())
            },
        )
        .expect("a fresh root");
        let mut hub = Hub::default();
        hub.docs.insert(
            root_id(),
            ServerDoc {
                owner: user(),
                doc: root,
                needs_durable: Ticket::NONE,
            },
        );
        let devices = (0..DEVICES)
            .map(|i| {
                let mut replicas = Replicas::new(ActorId::from(vec![i as u8 + 1; 16]));
                replicas.set_root(Some(root_id()));
                let peer_id = format!("device-{i}");
                let storage_id = format!("storage-{i}");
                Device {
                    machine: SyncMachine::new(peer_id.clone(), storage_id.clone(), Vec::new(), 0),
                    storage_id,
                    replicas,
                    connection: None,
                    to_server: VecDeque::new(),
                    to_device: VecDeque::new(),
                    sessions: 0,
                }
            })
            .collect();
        Self {
            hub,
            devices,
            metrics: Arc::new(Metrics::default()),
            clock: Instant::now(),
            step: 0,
            created: 0,
            trace: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.clock + Duration::from_millis(10 * self.step)
    }

    // ---- devices ----

    fn client_effects(&mut self, i: usize, effects: Vec<ClientEffect>) {
        for effect in effects {
            match effect {
                ClientEffect::Send(message) if self.devices[i].connection.is_some() => {
                    self.devices[i].to_server.push_back(wire::encode(&message));
                }
                ClientEffect::ServerError(message) => {
                    panic!("device {i} got an error from the server: {message}")
                }
                // Saving and announcing are the client driver's business.
                _ => {}
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let device = &mut self.devices[i];
        device.sessions += 1;
        let session = Session::new(
            SessionConfig {
                server_peer_id: "server".into(),
                server_storage_id: "server-storage".into(),
                limits: SyncLimits::default(),
            },
            Arc::clone(&self.metrics),
            Identity {
                conn: i as u64,
                user: user(),
                session: SessionId::from_random_bytes([i as u8 * 16 + device.sessions; 16]),
                token_expires_at: i64::MAX,
            },
            self.clock + Duration::from_millis(10 * self.step),
        );
        device.connection = Some(ServerConnection {
            session,
            attached: BTreeMap::new(),
            waiting: BTreeSet::new(),
            notices: BTreeSet::new(),
        });
        let effects = device.machine.connected();
        self.client_effects(i, effects);
    }

    /// The connection drops: what is in flight is lost, the server saves
    /// the connection's sync states, and the device is told.
    fn disconnect(&mut self, i: usize) {
        let device = &mut self.devices[i];
        if let Some(connection) = device.connection.take() {
            for (doc, state) in connection.attached {
                self.hub
                    .sync_states
                    .insert((device.storage_id.clone(), doc), state.encode());
            }
        }
        device.to_server.clear();
        device.to_device.clear();
        device.machine.disconnected();
    }

    fn create_task(&mut self, i: usize) {
        self.created += 1;
        let id = DocumentId::from_random_bytes([0x40 + self.created as u8; 16]);
        let task = Task {
            title: Title::parse(&format!("task {} from device {i}", self.created))
                .expect("a valid title"),
            notes: Default::default(),
            done: false,
            due: None,
            priority: Default::default(),
            tags: Default::default(),
            created_at: wall(self.step),
            updated_at: wall(self.step),
            completed_at: None,
        };
        let step = self.step;
        let device = &mut self.devices[i];
        device
            .replicas
            .get_or_empty(id)
            .transact_with::<_, _, task_document::TaskDocumentError, _>(
                |_| at(step),
                |tx| task_document::write_new_task(tx, &task),
            )
            .expect("a new task");
        // Listed in the root once the root has arrived; until then the
        // task waits in the device's unlisted set, as the client does it.
        let root_changed = device.replicas.list(id).expect("listed");
        let ids = if root_changed {
            vec![id, root_id()]
        } else {
            vec![id]
        };
        let effects = device.machine.local_change(&ids, &mut device.replicas);
        self.client_effects(i, effects);
    }

    fn edit_task(&mut self, i: usize, pick: u64) {
        let step = self.step;
        let device = &mut self.devices[i];
        let listed = device.replicas.listed();
        if listed.is_empty() {
            return;
        }
        let id = listed[(pick % listed.len() as u64) as usize];
        if !device.replicas.has_content(id) {
            return;
        }
        let patch = if pick.is_multiple_of(2) {
            TaskPatch {
                title: Some(Title::parse(&format!("edited by {i} at {step}")).expect("valid")),
                ..Default::default()
            }
        } else {
            TaskPatch {
                notes: Some(Notes::parse(&format!("notes by {i} at {step}")).expect("valid")),
                ..Default::default()
            }
        };
        device
            .replicas
            .get_or_empty(id)
            .transact_with::<_, _, task_document::TaskDocumentError, _>(
                |_| at(step),
                |tx| task_document::apply_patch(tx, &patch, wall(step)),
            )
            .expect("a patch applies");
        let effects = device.machine.local_change(&[id], &mut device.replicas);
        self.client_effects(i, effects);
    }

    fn deliver_to_device(&mut self, i: usize) {
        let Some(frame) = self.devices[i].to_device.pop_front() else {
            return;
        };
        self.trace.push((i, false, frame.clone()));
        let message = wire::decode(&frame).expect("the server sends valid frames");
        let device = &mut self.devices[i];
        let effects = device.machine.receive(message, &mut device.replicas);
        self.client_effects(i, effects);
    }

    // ---- the server ----

    fn deliver_to_server(&mut self, i: usize) {
        let Some(frame) = self.devices[i].to_server.pop_front() else {
            return;
        };
        self.trace.push((i, true, frame.clone()));
        let now = self.now();
        let Some(connection) = self.devices[i].connection.as_mut() else {
            return;
        };
        let effects = connection.session.frame(&frame, now);
        self.perform(i, effects);
    }

    fn deliver_notices(&mut self, i: usize) {
        let Some(connection) = self.devices[i].connection.as_mut() else {
            return;
        };
        if connection.notices.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut connection.notices);
        let effects = connection.session.notices(&[], changed);
        self.perform(i, effects);
    }

    /// What a connection owes goes out once its ticket is durable.
    fn send_owed(&mut self, i: usize) {
        let now = self.now();
        let Some(connection) = self.devices[i].connection.as_mut() else {
            return;
        };
        match connection.session.owed_ticket() {
            Some(ticket) if self.hub.is_durable(ticket) => {
                let effects = connection.session.durable(now);
                self.perform(i, effects);
            }
            _ => {}
        }
    }

    /// Messages held for the device's answer go out at their deadline.
    fn release_held(&mut self, i: usize) {
        let now = self.now();
        let Some(connection) = self.devices[i].connection.as_mut() else {
            return;
        };
        if connection
            .session
            .hold_deadline()
            .is_some_and(|at| at <= now)
        {
            let effects = connection.session.hold_elapsed(now);
            self.perform(i, effects);
        }
    }

    fn notify_others(&mut self, from: usize, doc: DocumentId) {
        for (j, device) in self.devices.iter_mut().enumerate() {
            if j == from {
                continue;
            }
            if let Some(connection) = device.connection.as_mut()
                && (connection.attached.contains_key(&doc) || connection.waiting.remove(&doc))
            {
                connection.notices.insert(doc);
            }
        }
    }

    /// The driver: performs the machine's effects in order, feeding each
    /// outcome back, as `codeedex_server::sync::connection` does.
    fn perform(&mut self, i: usize, effects: Vec<Effect>) {
        let now = self.now();
        let hub = &mut self.hub;
        let Device {
            connection,
            to_device,
            storage_id,
            ..
        } = &mut self.devices[i];
        let Some(connection) = connection.as_mut() else {
            return;
        };
        let mut changed_docs = Vec::new();
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            let more = match effect {
                Effect::Send(message) => {
                    to_device.push_back(wire::encode(&message));
                    continue;
                }
                Effect::Close { code, reason } => {
                    panic!("the server closed device {i}'s connection: {code} {reason}")
                }
                Effect::Bind { .. } => connection.session.bound(Bound::Bound),
                Effect::Sync { doc, kind, message } => {
                    if !connection.attached.contains_key(&doc) {
                        let may_create = kind == SyncKind::Sync;
                        let available = match hub.docs.get(&doc) {
                            Some(held) => held.owner == user(),
                            None if may_create => {
                                hub.docs.insert(
                                    doc,
                                    ServerDoc {
                                        owner: user(),
                                        doc: Automerge::new(),
                                        needs_durable: Ticket::NONE,
                                    },
                                );
                                true
                            }
                            None => false,
                        };
                        if !available {
                            queue.extend(connection.session.synced(doc, kind, Synced::Unavailable));
                            continue;
                        }
                        connection
                            .attached
                            .insert(doc, hub.saved_state(storage_id, doc));
                    }
                    let state = connection.attached.get_mut(&doc).expect("attached");
                    let (changed, ticket) = hub.apply(doc, state, message);
                    if changed {
                        changed_docs.push(doc);
                    }
                    connection
                        .session
                        .synced(doc, kind, Synced::Applied(ticket))
                }
                Effect::WaitFor(doc) => {
                    connection.waiting.insert(doc);
                    continue;
                }
                Effect::Reconcile(doc) => {
                    let outcome = match hub.docs.get(&doc) {
                        Some(held) if held.owner == user() => {
                            connection
                                .attached
                                .entry(doc)
                                .or_insert_with(|| hub.saved_state(storage_id, doc));
                            Reconciled::Current(hub.ticket())
                        }
                        _ => {
                            connection.attached.remove(&doc);
                            Reconciled::Gone
                        }
                    };
                    connection.session.reconciled(doc, outcome)
                }
                Effect::Generate(doc) => {
                    let outcome = match (connection.attached.get_mut(&doc), hub.docs.get(&doc)) {
                        (Some(_), Some(held)) if !hub.is_durable(held.needs_durable) => {
                            Generated::NotDurable(held.needs_durable)
                        }
                        (Some(state), Some(held)) => match held.doc.generate_sync_message(state) {
                            Some(message) => Generated::Message(message),
                            None => Generated::Nothing,
                        },
                        _ => Generated::Detached,
                    };
                    connection.session.generated(doc, outcome, now)
                }
                Effect::Forward { .. } => continue,
                Effect::Authenticate { .. } => panic!("no token refresh in the simulation"),
                Effect::CatchUp { cursor } => {
                    let docs: BTreeSet<DocumentId> = hub
                        .feed
                        .iter()
                        .filter(|(sequence, _)| *sequence > cursor)
                        .map(|(_, doc)| *doc)
                        .collect();
                    connection
                        .session
                        .caught_up(Ok((docs.into_iter().collect(), hub.written)))
                }
            };
            queue.extend(more);
        }
        for doc in changed_docs {
            self.notify_others(i, doc);
        }
    }

    /// One move of every kind a device can make, for device `i`.
    fn pump(&mut self, i: usize) {
        self.deliver_to_server(i);
        self.deliver_notices(i);
        self.send_owed(i);
        self.release_held(i);
        self.deliver_to_device(i);
    }

    fn quiet(&self) -> bool {
        self.devices.iter().all(|d| {
            d.to_server.is_empty()
                && d.to_device.is_empty()
                && d.connection.as_ref().is_some_and(|c| {
                    c.notices.is_empty()
                        && c.session.owed_ticket().is_none()
                        && c.session.hold_deadline().is_none()
                })
        })
    }
}

/// Runs one seed; returns the trace of delivered frames.
fn run(seed: u64) -> Vec<(usize, bool, Vec<u8>)> {
    let mut world = World::new();
    let mut rng = Rng(seed);
    for i in 0..DEVICES {
        world.connect(i);
    }
    for step in 0..STEPS {
        world.step = step as u64 + 1;
        let i = rng.below(DEVICES as u64) as usize;
        match rng.below(20) {
            0 | 1 => world.create_task(i),
            2..=5 => {
                let pick = rng.next();
                world.edit_task(i, pick);
            }
            6 => {
                if world.devices[i].connection.is_some() {
                    world.disconnect(i);
                } else {
                    world.connect(i);
                }
            }
            7 | 8 => world.hub.durable = world.hub.written,
            _ => {
                for _ in 0..=rng.below(3) {
                    world.pump(i);
                }
            }
        }
    }
    // Everyone comes back, the disk keeps up, and the queues drain.
    for i in 0..DEVICES {
        if world.devices[i].connection.is_none() {
            world.connect(i);
        }
    }
    let mut rounds = 0;
    while !world.quiet() {
        rounds += 1;
        assert!(
            rounds < 10_000,
            "seed {seed}: the devices and the server never went quiet"
        );
        world.hub.durable = world.hub.written;
        world.step += 1;
        for i in 0..DEVICES {
            world.pump(i);
        }
    }

    let server_docs: BTreeMap<DocumentId, Vec<automerge::ChangeHash>> = world
        .hub
        .docs
        .iter()
        .map(|(id, held)| (*id, sorted(held.doc.get_heads())))
        .collect();
    let server_root = &world.hub.docs[&root_id()].doc;
    let listed: BTreeSet<DocumentId> = task_document::tasks_in_root(server_root)
        .into_iter()
        .collect();
    assert_eq!(
        listed.len() as u64,
        world.created,
        "seed {seed}: the server's list lacks a task some device created"
    );
    for (i, device) in world.devices.iter().enumerate() {
        for (id, heads) in &server_docs {
            let held = device
                .replicas
                .get(*id)
                .map(|doc| sorted(doc.get_heads()))
                .unwrap_or_default();
            assert_eq!(
                &held, heads,
                "seed {seed}: device {i} and the server differ on document {id}"
            );
        }
        let theirs: BTreeSet<DocumentId> = device.replicas.listed().into_iter().collect();
        assert_eq!(theirs, listed, "seed {seed}: device {i} lists other tasks");
        assert_eq!(
            device.machine.pending(&device.replicas),
            0,
            "seed {seed}: device {i} still has changes the server does not"
        );
    }
    world.trace
}

fn sorted(mut heads: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    heads.sort();
    heads
}

#[test]
fn three_devices_converge_through_the_real_machines_under_seeded_schedules() {
    for seed in [1, 7, 42, 1234, 99_991, 0xC0DE, 31_337, 2_026] {
        run(seed);
    }
}

#[test]
fn a_seed_replays_the_same_run_message_for_message() {
    let first = run(4_242);
    let second = run(4_242);
    assert!(!first.is_empty(), "the run exchanged no frames");
    assert_eq!(first.len(), second.len(), "the runs differ in length");
    assert!(
        first == second,
        "two runs of one seed delivered different frames"
    );
}
