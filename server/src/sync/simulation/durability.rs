//! Nothing leaves the server before the flush it needs: not the reply that
//! acknowledges a device's change, not the change relayed to another
//! device, not the answer to a REST edit; and after a failed flush, nothing
//! at all.
//!
//! The tests that kill the server process cannot see this: the kernel keeps
//! what was written but not synced, so a change acknowledged before its
//! flush survives a SIGKILL all the same. Here the group commit's flusher
//! is held at a gate ([`FlushControl`]), so the change stays undurable for
//! as long as the test wants, and the test reads every frame the real
//! connection driver produces meanwhile.
//!
//! A connection waits for the earliest ticket it owes, then asks for every
//! owed document's message; the hub's durability check is what keeps back
//! a document whose newest change is not flushed yet. So each test also
//! asks the connection about a second, durable document: its reply is the
//! positive sign that the connection generated what it owed, and a message
//! for the held change would have gone out in the same batch.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ROOT};
use codeedex_schema::id::{DocumentId, UserId};
use codeedex_schema::wire::{self, Message, close};

use super::{Output, World, build_world};
use crate::store::flush_control::FlushMode;
use crate::sync::hub::{Author, IfUnseen};

/// The user every device of the simulation belongs to.
fn user() -> UserId {
    UserId::from_random_bytes([3; 16])
}

/// Runs every device and the server until nothing moves, with flushes
/// working.
async fn settle(world: &mut World) {
    for _ in 0..8 {
        world.tick();
        for i in 0..world.devices.len() {
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
}

/// A document the server wrote itself (as a REST edit does), durably.
async fn durable_document(world: &World, byte: u8) -> DocumentId {
    let id = DocumentId::from_random_bytes([byte; 16]);
    let live = world
        .hub
        .open(id, user(), IfUnseen::Claim, world.wall)
        .await
        .unwrap()
        .unwrap();
    let author = Author {
        user: user(),
        session: None,
    };
    let changed = world
        .hub
        .change(&live, author, world.wall, |tx| {
            tx.put(ROOT, "title", "durable")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(changed);
    id
}

/// A `request` for `doc` from a device that has nothing of it: the server
/// always has something to answer.
fn request(world: &World, i: usize, doc: DocumentId) -> Vec<u8> {
    let message = AutoCommit::new()
        .sync()
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message");
    wire::encode(&Message::Request {
        sender_id: world.devices[i].peer_id.clone(),
        target_id: "server".into(),
        document_id: doc.to_string(),
        data: message.encode(),
    })
}

/// The sync messages among `outputs`, by document.
fn sync_messages(outputs: &[Output]) -> Vec<(String, sync::Message)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Frame(bytes) => match wire::decode(bytes).expect("valid frames") {
                Message::Sync {
                    document_id, data, ..
                } => Some((
                    document_id,
                    sync::Message::decode(&data).expect("valid sync data"),
                )),
                _ => None,
            },
            Output::Close { .. } => None,
        })
        .collect()
}

/// Whether any message for `doc` says the server holds `change`, or carries
/// it.
fn reveals(outputs: &[Output], doc: DocumentId, change: ChangeHash) -> bool {
    sync_messages(outputs).iter().any(|(id, message)| {
        *id == doc.to_string()
            && (message.heads.contains(&change)
                || message.changes.iter().any(|bytes| {
                    automerge::Change::from_bytes(bytes.to_vec())
                        .is_ok_and(|decoded| decoded.hash() == change)
                }))
    })
}

fn messages_for(outputs: &[Output], doc: DocumentId) -> usize {
    sync_messages(outputs)
        .iter()
        .filter(|(id, _)| *id == doc.to_string())
        .count()
}

/// Device `i` edits the shared document and the server takes the frame;
/// returns the new change.
async fn device_changes(world: &mut World, i: usize, n: u64) -> (ChangeHash, Vec<Output>) {
    world.edit(i, n);
    let change = world.devices[i]
        .replica
        .get_last_local_change()
        .unwrap()
        .hash();
    world.device_sends(i);
    let frame = world.devices[i].to_server.pop_front().expect("a frame");
    let (clock, wall) = (world.clock, world.wall);
    let outputs = world.devices[i].conn.frame(&frame, clock, wall).await;
    (change, outputs)
}

/// What the driver does next on connection `i`: waits for the earliest
/// owed ticket, then generates; and sends at once whatever it holds back for
/// the peer's answer (coalescing), as its deadline would.
async fn driver_generates(world: &mut World, i: usize) -> Vec<Output> {
    let waited = world.devices[i]
        .conn
        .owed_durability()
        .expect("the connection owes its peer a message")
        .await;
    let (clock, wall) = (world.clock, world.wall);
    let mut outputs = world.devices[i].conn.durable(waited, clock, wall).await;
    if let Some(deadline) = world.devices[i].conn.hold_deadline() {
        let later = deadline.max(clock);
        outputs.extend(world.devices[i].conn.hold_elapsed(later, wall).await);
    }
    outputs
}

/// Polls `future` once.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn a_change_is_not_acknowledged_before_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = build_world(dir.path(), 2).await;
    world.edit(0, 0);
    settle(&mut world).await;
    let other = durable_document(&world, 5).await;
    let flushes = world.hub.store().flush_control();

    flushes.set(FlushMode::Hold);
    let (change, mut outputs) = device_changes(&mut world, 0, 1).await;
    let (clock, wall) = (world.clock, world.wall);
    let ask = request(&world, 0, other);
    outputs.extend(world.devices[0].conn.frame(&ask, clock, wall).await);
    outputs.extend(driver_generates(&mut world, 0).await);
    assert_eq!(
        messages_for(&outputs, other),
        1,
        "the connection answered the durable document"
    );
    assert!(
        !reveals(&outputs, world.doc, change),
        "the change was acknowledged before the flush that makes it durable"
    );

    // The flush completes: the acknowledgement follows.
    flushes.set(FlushMode::Pass);
    let outputs = driver_generates(&mut world, 0).await;
    assert!(
        reveals(&outputs, world.doc, change),
        "the change was not acknowledged after its flush: {outputs:?}"
    );
}

#[tokio::test]
async fn a_change_is_not_relayed_to_another_device_before_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = build_world(dir.path(), 2).await;
    world.edit(0, 0);
    settle(&mut world).await;
    let other = durable_document(&world, 6).await;
    let flushes = world.hub.store().flush_control();

    flushes.set(FlushMode::Hold);
    let (change, _) = device_changes(&mut world, 0, 1).await;
    // Device 1 is told that the document changed, and asks about another.
    let notices = world.devices[1]
        .conn
        .mailbox()
        .try_next()
        .expect("device 1 is told of the change");
    let (clock, wall) = (world.clock, world.wall);
    let mut outputs = world.devices[1].conn.notices(notices, clock, wall).await;
    let ask = request(&world, 1, other);
    outputs.extend(world.devices[1].conn.frame(&ask, clock, wall).await);
    outputs.extend(driver_generates(&mut world, 1).await);
    assert_eq!(
        messages_for(&outputs, other),
        1,
        "the connection answered the durable document"
    );
    assert!(
        !reveals(&outputs, world.doc, change),
        "the change reached another device before the flush that makes it durable"
    );

    flushes.set(FlushMode::Pass);
    let outputs = driver_generates(&mut world, 1).await;
    assert!(
        reveals(&outputs, world.doc, change),
        "the change was not relayed after its flush: {outputs:?}"
    );
}

#[tokio::test]
async fn a_rest_edit_is_answered_and_read_only_after_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let world = build_world(dir.path(), 1).await;
    let doc = durable_document(&world, 7).await;
    let live = world
        .hub
        .open(doc, user(), IfUnseen::Refuse, world.wall)
        .await
        .unwrap()
        .unwrap();
    let flushes = world.hub.store().flush_control();
    let author = Author {
        user: user(),
        session: None,
    };

    flushes.set(FlushMode::Hold);
    let mut edit = pin!(world.hub.change(&live, author, world.wall, |tx| {
        tx.put(ROOT, "title", "edited")?;
        Ok(())
    }));
    // The edit's append goes to the flusher thread, which writes it, answers
    // it, and then stops at the gate before its flush: from then on only the
    // flush stands between the edit and its answer.
    tokio::select! {
        biased;
        () = flushes.flush_waiting() => {}
        _ = edit.as_mut() => panic!("the edit was answered before the flush that makes it durable"),
    }
    assert!(
        poll_once(edit.as_mut()).is_pending(),
        "the edit was answered before the flush that makes it durable"
    );
    let mut read = pin!(world.hub.read(&live, |doc| doc.get_heads()));
    assert!(
        poll_once(read.as_mut()).is_pending(),
        "the edit was read before the flush that makes it durable"
    );

    flushes.set(FlushMode::Pass);
    assert!(edit.await.unwrap());
    let heads = read.await.unwrap();
    let title = world
        .hub
        .read(&live, |doc| {
            automerge::ReadDoc::get(doc, ROOT, "title")
                .unwrap()
                .and_then(|(value, _)| value.into_string().ok())
        })
        .await
        .unwrap();
    assert_eq!(title.as_deref(), Some("edited"));
    assert_eq!(heads.len(), 1);
}

#[tokio::test]
async fn after_a_failed_flush_nothing_is_acknowledged_and_the_device_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = build_world(dir.path(), 2).await;
    world.edit(0, 0);
    settle(&mut world).await;
    let flushes = world.hub.store().flush_control();

    flushes.set(FlushMode::Fail);
    let (change, mut outputs) = device_changes(&mut world, 0, 1).await;
    outputs.extend(driver_generates(&mut world, 0).await);
    assert!(
        !reveals(&outputs, world.doc, change),
        "a change whose flush failed was acknowledged"
    );
    match &outputs[..] {
        [.., Output::Frame(error), Output::Close { code, .. }] => {
            assert_eq!(*code, close::STORAGE_UNAVAILABLE);
            assert!(matches!(
                wire::decode(error).unwrap(),
                Message::Error { .. }
            ));
        }
        other => panic!("expected an error message and close 4013, got {other:?}"),
    }
    // Nor is it relayed: the other device's connection learns that the
    // store failed under the document, and closes too.
    let notices = world.devices[1]
        .conn
        .mailbox()
        .try_next()
        .expect("device 1 is told of the change");
    let (clock, wall) = (world.clock, world.wall);
    let mut outputs = world.devices[1].conn.notices(notices, clock, wall).await;
    if world.devices[1].conn.owed_durability().is_some() {
        outputs.extend(driver_generates(&mut world, 1).await);
    }
    assert!(
        !reveals(&outputs, world.doc, change),
        "a change whose flush failed was relayed"
    );
    assert!(
        matches!(outputs.last(), Some(Output::Close { code, .. }) if *code == close::STORAGE_UNAVAILABLE),
        "{outputs:?}"
    );
}
