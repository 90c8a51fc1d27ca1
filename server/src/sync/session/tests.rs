//! The coalescing rule of the session machine, event by event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use codeedex_schema::id::{DocumentId, SessionId, UserId};
use codeedex_schema::wire::{self, Message, PeerMetadata};

use super::*;

fn joined_session(now: Instant) -> Session {
    let mut session = Session::new(
        SessionConfig {
            server_peer_id: "server".into(),
            server_storage_id: "server-storage".into(),
            limits: SyncLimits::default(),
        },
        Arc::new(Metrics::default()),
        Identity {
            conn: 1,
            user: UserId::from_random_bytes([1; 16]),
            session: SessionId::from_random_bytes([2; 16]),
            token_expires_at: i64::MAX,
        },
        now,
    );
    let join = wire::encode(&Message::Join {
        sender_id: "device".into(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: Some(PeerMetadata::default()),
    });
    let effects = session.frame(&join, now);
    assert!(matches!(effects.as_slice(), [Effect::Bind { .. }]));
    session.bound(Bound::Bound);
    session
}

/// A sync message as a fresh peer sends it.
fn message() -> sync::Message {
    automerge::Automerge::new()
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message")
}

/// The document is owed once `ticket` is durable, as after a change notice.
fn notice(session: &mut Session, doc: DocumentId) {
    let effects = session.notices(&[], [doc]);
    assert!(matches!(effects.as_slice(), [Effect::Reconcile(d)] if *d == doc));
    assert!(
        session
            .reconciled(doc, Reconciled::Current(Ticket::NONE))
            .is_empty()
    );
}

fn generates(effects: &[Effect], doc: DocumentId) -> bool {
    matches!(effects, [Effect::Generate(d)] if *d == doc)
}

fn sent(session: &mut Session, doc: DocumentId, now: Instant) {
    let effects = session.generated(doc, Generated::Message(message()), now);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Send(Message::Sync { .. })]
    ));
}

/// The peer sends `doc` a message; `changed` says whether it brought changes.
fn peer_sends(session: &mut Session, doc: DocumentId, changed: bool, now: Instant) {
    let frame = wire::encode(&Message::Sync {
        sender_id: "device".into(),
        target_id: "server".into(),
        document_id: doc.to_string(),
        data: message().encode(),
    });
    let effects = session.frame(&frame, now);
    let [
        Effect::Sync {
            doc: synced, kind, ..
        },
    ] = effects.as_slice()
    else {
        panic!("expected a sync request, got {effects:?}");
    };
    let outcome = if changed {
        Synced::Changed(Ticket::NONE)
    } else {
        Synced::Applied(Ticket::NONE)
    };
    assert!(session.synced(*synced, *kind, outcome).is_empty());
}

#[test]
fn a_few_messages_go_out_at_once_then_one_per_bound_and_an_idle_peer_gets_its_at_once() {
    let t0 = Instant::now();
    let bound = SyncLimits::default().coalesce;
    let doc = DocumentId::from_random_bytes([3; 16]);
    let mut session = joined_session(t0);

    // A clump of changes: the first PACE_BURST messages go out at once,
    // each soon after the last.
    let step = bound / 5;
    for n in 0..PACE_BURST {
        let at = t0 + step * n;
        notice(&mut session, doc);
        assert!(generates(&session.durable(at), doc), "message {n} waited");
        sent(&mut session, doc, at);
    }

    // The allowance is spent: the next waits until one bound after the
    // first, and every change meanwhile joins it.
    let soon = t0 + step * PACE_BURST;
    notice(&mut session, doc);
    assert!(session.durable(soon).is_empty());
    assert_eq!(session.hold_deadline(), Some(t0 + bound));
    notice(&mut session, doc);
    assert!(session.durable(soon + step / 2).is_empty());
    assert_eq!(
        session.hold_deadline(),
        Some(t0 + bound),
        "a later change does not push the deadline"
    );
    // The peer's acknowledgement (no changes of its own) does not release it.
    peer_sends(&mut session, doc, false, soon);
    assert!(session.durable(soon).is_empty());
    assert!(session.hold_elapsed(soon + step / 2).is_empty());
    // At the deadline it goes out.
    assert!(generates(&session.hold_elapsed(t0 + bound), doc));
    assert_eq!(session.hold_deadline(), None);
    sent(&mut session, doc, t0 + bound);

    // A steady stream goes out once per bound: the next may leave one
    // bound after the last.
    let t1 = t0 + bound + step;
    notice(&mut session, doc);
    assert!(session.durable(t1).is_empty());
    assert_eq!(session.hold_deadline(), Some(t0 + bound * 2));

    // Changes from the peer are acknowledged at once, and what waited for
    // the deadline goes with them.
    peer_sends(&mut session, doc, true, t1);
    assert!(generates(&session.durable(t1), doc));
    assert_eq!(session.hold_deadline(), None);
    sent(&mut session, doc, t1);

    // Acknowledgements sent at once spend the allowance but never push the
    // next message further than one bound after the last.
    for n in 1..=5 {
        let at = t1 + step * n;
        peer_sends(&mut session, doc, true, at);
        assert!(generates(&session.durable(at), doc));
        sent(&mut session, doc, at);
    }
    let last = t1 + step * 5;
    notice(&mut session, doc);
    assert!(session.durable(last).is_empty());
    assert_eq!(session.hold_deadline(), Some(last + bound));
    assert!(generates(&session.hold_elapsed(last + bound), doc));
    sent(&mut session, doc, last + bound);
    let t1 = last + bound;

    // After a pause of PACE_BURST bounds the whole allowance is back.
    let t2 = t1 + bound * (PACE_BURST + 1);
    for n in 0..PACE_BURST {
        notice(&mut session, doc);
        assert!(
            generates(&session.durable(t2 + step * n), doc),
            "message {n} after the pause waited"
        );
        sent(&mut session, doc, t2 + step * n);
    }
    notice(&mut session, doc);
    assert!(session.durable(t2 + step * PACE_BURST).is_empty());
}

#[test]
fn with_coalescing_off_no_message_waits() {
    let t0 = Instant::now();
    let doc = DocumentId::from_random_bytes([4; 16]);
    let mut session = joined_session(t0);
    session.config.limits.coalesce = Duration::ZERO;
    notice(&mut session, doc);
    let _ = session.durable(t0);
    sent(&mut session, doc, t0);
    notice(&mut session, doc);
    assert!(generates(&session.durable(t0), doc));
}
