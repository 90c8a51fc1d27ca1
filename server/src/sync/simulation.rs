//! A deterministic simulation of the sync protocol without sockets, through
//! the server's whole connection stack.
//!
//! `tests/tests/simulation.rs` runs the two pure machines (server session and
//! client) against each other with nothing else; this one keeps the real
//! hub, store and driver in the loop, so that what the driver performs is
//! tested the same way.
//!
//! Three devices of one user edit one task document through the server's
//! real connection driver ([`Connection`], its session machine, and the
//! [`DocumentHub`] over a temporary store). The "network" is a set of queues
//! the test drains in an order chosen by a seeded generator; devices go
//! offline (their queues are held) and come back; time is injected. At the end every replica and the
//! server hold the same document, containing every edit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use chrono::{TimeZone, Utc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::wire::{self, Message, PeerMetadata};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::connection::{Connection, Output, PeerContext};
use super::hub::{DocumentHub, IfUnseen};
use super::registry::PeerRegistry;
use crate::auth::Auth;
use crate::auth::keys::ServerKeys;
use crate::configuration::limits::{HubLimits, SyncLimits};
use crate::configuration::{Overrides, Settings};
use crate::delivery::CodeDelivery;
use crate::metrics::Metrics;
use crate::store::{SessionRecord, Store, UserRecord};

mod durability;

struct Device {
    peer_id: String,
    conn: Connection,
    replica: AutoCommit,
    state: sync::State,
    to_server: VecDeque<Vec<u8>>,
    to_device: VecDeque<Vec<u8>>,
    online: bool,
}

struct World {
    hub: Arc<DocumentHub>,
    devices: Vec<Device>,
    doc: DocumentId,
    clock: Instant,
    wall: chrono::DateTime<Utc>,
}

impl World {
    /// The server's copy of the document.
    async fn server_copy(&self) -> Arc<super::hub::LiveDocument> {
        self.hub
            .open(
                self.doc,
                UserId::from_random_bytes([3; 16]),
                IfUnseen::Refuse,
                self.wall,
            )
            .await
            .unwrap()
            .unwrap()
    }

    fn tick(&mut self) {
        self.clock += Duration::from_millis(10);
        self.wall += chrono::Duration::milliseconds(10);
    }

    fn device_sends(&mut self, i: usize) {
        let doc = self.doc;
        let d = &mut self.devices[i];
        if let Some(message) = d.replica.sync().generate_sync_message(&mut d.state) {
            d.to_server.push_back(wire::encode(&Message::Sync {
                sender_id: d.peer_id.clone(),
                target_id: "server".into(),
                document_id: doc.to_string(),
                data: message.encode(),
            }));
        }
    }

    async fn deliver_to_server(&mut self, i: usize) {
        let Some(frame) = self.devices[i].to_server.pop_front() else {
            return;
        };
        let (clock, wall) = (self.clock, self.wall);
        let outputs = self.devices[i].conn.frame(&frame, clock, wall).await;
        self.route(i, outputs);
        self.send_owed(i).await;
    }

    /// Waits for what the connection owes to be durable, and routes it;
    /// again while documents moved on meanwhile.
    async fn send_owed(&mut self, i: usize) {
        while let Some(durable) = self.devices[i].conn.owed_durability() {
            let waited = durable.await;
            let (clock, wall) = (self.clock, self.wall);
            let outputs = self.devices[i].conn.durable(waited, clock, wall).await;
            self.route(i, outputs);
        }
    }

    /// Messages held for a device's answer go out once their deadline has
    /// passed on the simulated clock.
    async fn release_held(&mut self, i: usize) {
        if self.devices[i]
            .conn
            .hold_deadline()
            .is_some_and(|at| at <= self.clock)
        {
            let (clock, wall) = (self.clock, self.wall);
            let outputs = self.devices[i].conn.hold_elapsed(clock, wall).await;
            self.route(i, outputs);
        }
    }

    async fn deliver_notices(&mut self, i: usize) {
        while let Some(notices) = self.devices[i].conn.mailbox().try_next() {
            let (clock, wall) = (self.clock, self.wall);
            let outputs = self.devices[i].conn.notices(notices, clock, wall).await;
            self.route(i, outputs);
        }
        self.send_owed(i).await;
    }

    fn route(&mut self, i: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Frame(bytes) => self.devices[i].to_device.push_back(bytes),
                Output::Close { code, reason } => panic!("device {i} was closed: {code} {reason}"),
            }
        }
    }

    fn deliver_to_device(&mut self, i: usize) {
        let Some(frame) = self.devices[i].to_device.pop_front() else {
            return;
        };
        let d = &mut self.devices[i];
        match wire::decode(&frame).expect("the server sends valid frames") {
            Message::Sync { data, .. } => {
                let message = sync::Message::decode(&data).expect("valid sync data");
                d.replica
                    .sync()
                    .receive_sync_message(&mut d.state, message)
                    .expect("applies");
            }
            other => panic!("unexpected message to device {i}: {other:?}"),
        }
    }

    fn edit(&mut self, i: usize, n: u64) {
        let d = &mut self.devices[i];
        let list = match d.replica.get(ROOT, "log").unwrap() {
            Some((_, id)) => id,
            None => unreachable!("every replica starts with the log list"),
        };
        let len = d.replica.length(&list);
        d.replica
            .insert(&list, len, format!("device {i} edit {n}"))
            .unwrap();
        d.replica.put(ROOT, format!("field-{i}"), n as i64).unwrap();
    }
}

async fn build_world(dir: &std::path::Path, devices: usize) -> World {
    let today = Utc::now().date_naive();
    let settings =
        Settings::from_layers(Overrides::default(), Overrides::default(), today).unwrap();
    let store = Store::open(dir).unwrap();
    let keys = ServerKeys::from_bytes([1; 32], [2; 32]);
    let delivery = CodeDelivery::from_settings(&settings.delivery, 10).unwrap();
    let auth = Arc::new(Auth::new(
        &settings,
        store.clone(),
        keys,
        delivery,
        Arc::new(Metrics::default()),
    ));
    let user = UserId::from_random_bytes([3; 16]);
    let wall = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    store
        .find_or_create_user(&UserRecord {
            id: user,
            contact_key: "email:a@b.co".into(),
            created_at: wall,
            root_document_id: None,
        })
        .await
        .unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let hub = Arc::new(DocumentHub::new(
        store.clone(),
        automerge::ActorId::from(vec![9u8; 16]),
        HubLimits::default(),
        Arc::clone(&metrics),
    ));
    let ctx = PeerContext {
        hub: Arc::clone(&hub),
        store: store.clone(),
        registry: Arc::new(PeerRegistry::default()),
        auth,
        server_peer_id: "server".into(),
        server_storage_id: "server-storage".into(),
        limits: SyncLimits::default(),
        metrics,
    };
    let doc = DocumentId::from_random_bytes([4; 16]);
    // One device creates the skeleton; the others start from a fork of it,
    // as they would after a first sync.
    let mut origin = AutoCommit::new();
    origin.put_object(ROOT, "log", ObjType::List).unwrap();
    let clock = Instant::now();
    let mut list = Vec::new();
    for i in 0..devices {
        let session = SessionId::from_random_bytes([10 + i as u8; 16]);
        let record = SessionRecord {
            id: session,
            user_id: user,
            device_name: None,
            created_at: wall,
            last_used_at: wall,
            generation: 0,
            rotated_at: wall,
        };
        store.insert_session(&record, &[i as u8; 32]).await.unwrap();
        let mut conn = Connection::new(ctx.clone(), i as u64, user, session, i64::MAX, clock);
        let peer_id = format!("device-{i}");
        let join = wire::encode(&Message::Join {
            sender_id: peer_id.clone(),
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: Some(PeerMetadata {
                storage_id: Some(format!("storage-{i}")),
                is_ephemeral: false,
                extensions: vec![],
            }),
        });
        let outputs = conn.frame(&join, clock, wall).await;
        assert!(
            matches!(&outputs[..], [Output::Frame(_)]),
            "join answered with one peer message"
        );
        let mut replica = origin.fork();
        replica.set_actor(automerge::ActorId::from(vec![i as u8 + 1; 16]));
        list.push(Device {
            peer_id,
            conn,
            replica,
            state: sync::State::new(),
            to_server: VecDeque::new(),
            to_device: VecDeque::new(),
            online: true,
        });
    }
    World {
        hub,
        devices: list,
        doc,
        clock,
        wall,
    }
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut world = build_world(dir.path(), 3).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut edits = 0u64;
    for step in 0..600 {
        world.tick();
        let i = rng.random_range(0..3usize);
        match rng.random_range(0..10u32) {
            0..=2 => {
                world.edit(i, step);
                edits += 1;
            }
            3 => world.devices[i].online = !world.devices[i].online,
            _ => {}
        }
        if world.devices[i].online {
            world.device_sends(i);
            world.deliver_to_server(i).await;
            world.deliver_notices(i).await;
            world.release_held(i).await;
            world.deliver_to_device(i);
        }
    }
    // Everyone comes back online; drain until nothing moves.
    for d in &mut world.devices {
        d.online = true;
    }
    for _ in 0..200 {
        world.tick();
        for i in 0..3 {
            world.device_sends(i);
            while !world.devices[i].to_server.is_empty() {
                world.deliver_to_server(i).await;
            }
            world.deliver_notices(i).await;
            world.release_held(i).await;
            while !world.devices[i].to_device.is_empty() {
                world.deliver_to_device(i);
            }
        }
    }
    let live = world.server_copy().await;
    let mut server_heads = world.hub.heads(&live).await.unwrap();
    server_heads.sort();
    for (i, d) in world.devices.iter_mut().enumerate() {
        let mut heads = d.replica.get_heads();
        heads.sort();
        assert_eq!(
            heads, server_heads,
            "seed {seed}: device {i} did not converge with the server"
        );
        let list = d.replica.get(ROOT, "log").unwrap().unwrap().1;
        assert_eq!(
            d.replica.length(&list) as u64,
            edits,
            "seed {seed}: device {i} lost edits"
        );
    }
    // Ending a connection saves its sync state under the peer's storage id,
    // so that a reconnect can start from the shared heads.
    for (i, d) in world.devices.iter_mut().enumerate() {
        d.conn.finish().await;
        let saved = world
            .hub
            .store()
            .sync_state(world.doc, &format!("storage-{i}"))
            .await
            .unwrap();
        assert!(
            saved.is_some(),
            "seed {seed}: device {i}'s sync state was not saved"
        );
    }
    // The event log alone rebuilds the same document.
    let stored = world.hub.store().load_document(world.doc).await.unwrap();
    let mut rebuilt = automerge::Automerge::new();
    for change in &stored.changes {
        rebuilt.load_incremental(change).unwrap();
    }
    let mut rebuilt_heads = rebuilt.get_heads();
    rebuilt_heads.sort();
    assert_eq!(
        rebuilt_heads, server_heads,
        "seed {seed}: the event log does not rebuild the document"
    );
}

#[tokio::test]
async fn three_devices_converge_under_seeded_interleavings_and_outages() {
    for seed in [1, 7, 42, 1234, 99991] {
        run(seed).await;
    }
}

#[tokio::test]
async fn a_dropped_connection_leaves_no_subscription_and_saves_its_sync_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = build_world(dir.path(), 2).await;
    world.edit(0, 0);
    world.device_sends(0);
    world.deliver_to_server(0).await;
    let live = world.server_copy().await;
    assert_eq!(world.hub.subscriber_count(&live), 1);
    // However its task ends (a panic unwinding through it included), a
    // dropped connection leaves at once and saves its sync state on the
    // runtime soon after.
    drop(world.devices.remove(0));
    assert_eq!(world.hub.subscriber_count(&live), 0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let saved = world
            .hub
            .store()
            .sync_state(world.doc, "storage-0")
            .await
            .unwrap();
        if saved.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped connection's sync state was never saved"
        );
        tokio::task::yield_now().await;
    }
}
