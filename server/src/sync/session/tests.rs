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

fn generate_request(effects: &[Effect]) -> Option<Option<Instant>> {
    match effects {
        [Effect::Generate { hold_until, .. }] => Some(*hold_until),
        _ => None,
    }
}

#[test]
fn a_message_soon_after_the_last_may_wait_for_the_answer_until_the_bound() {
    let t0 = Instant::now();
    let bound = SyncLimits::default().coalesce;
    let doc = DocumentId::from_random_bytes([3; 16]);
    let mut session = joined_session(t0);

    // Nothing was sent yet: the first message may not wait.
    notice(&mut session, doc);
    assert_eq!(generate_request(&session.durable(t0)), Some(None));
    let sent = session.generated(doc, Generated::Message(message()), t0);
    assert!(matches!(
        sent.as_slice(),
        [Effect::Send(Message::Sync { .. })]
    ));

    // Soon after, the next may wait until the bound after the last one.
    let soon = t0 + bound / 5;
    notice(&mut session, doc);
    assert_eq!(
        generate_request(&session.durable(soon)),
        Some(Some(t0 + bound))
    );
    // The driver found it unanswered: held, with a deadline for the timer.
    assert!(
        session
            .generated(doc, Generated::Held(t0 + bound), soon)
            .is_empty()
    );
    assert_eq!(session.hold_deadline(), Some(t0 + bound));
    assert!(session.hold_elapsed(t0 + bound / 2).is_empty());
    // At the deadline it is generated, answered or not.
    assert_eq!(
        generate_request(&session.hold_elapsed(t0 + bound)),
        Some(None)
    );
    assert_eq!(session.hold_deadline(), None);

    // A held document that the peer answers is owed again at once, and no
    // timer is left for it.
    let t1 = t0 + bound * 3;
    session.generated(doc, Generated::Message(message()), t1);
    notice(&mut session, doc);
    let _ = session.durable(t1 + Duration::from_millis(1));
    session.generated(doc, Generated::Held(t1 + bound), t1);
    assert!(session.hold_deadline().is_some());
    let answer = wire::encode(&Message::Sync {
        sender_id: "device".into(),
        target_id: "server".into(),
        document_id: doc.to_string(),
        data: message().encode(),
    });
    let effects = session.frame(&answer, t1 + Duration::from_millis(2));
    let [
        Effect::Sync {
            doc: synced, kind, ..
        },
    ] = effects.as_slice()
    else {
        panic!("expected a sync request, got {effects:?}");
    };
    assert!(
        session
            .synced(*synced, *kind, Synced::Applied(Ticket::NONE))
            .is_empty()
    );
    assert_eq!(session.hold_deadline(), None);
    assert!(session.owed_ticket().is_some());

    // Long after the last message nothing waits.
    assert_eq!(
        generate_request(&session.durable(t1 + bound * 2)),
        Some(None)
    );
}

#[test]
fn with_coalescing_off_no_message_waits() {
    let t0 = Instant::now();
    let doc = DocumentId::from_random_bytes([4; 16]);
    let mut session = joined_session(t0);
    session.config.limits.coalesce = Duration::ZERO;
    notice(&mut session, doc);
    let _ = session.durable(t0);
    session.generated(doc, Generated::Message(message()), t0);
    notice(&mut session, doc);
    assert_eq!(generate_request(&session.durable(t0)), Some(None));
}
