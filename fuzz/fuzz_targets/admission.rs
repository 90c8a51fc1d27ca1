//! A peer's Automerge sync message through the admission layer, then, if
//! admitted, through Automerge itself.
//!
//! Reaches `codeedex_schema::admission::admit_sync_message` (its own checked
//! parser of sync messages, bloom filters and change chunk headers), then the
//! vendored automerge's sync protocol: `receive_sync_message` into an empty
//! document and into a small prepared one, and `generate_sync_message` after
//! each, exactly as the server does with what a peer sends.
//!
//! Properties: nothing panics (automerge may refuse the message: that is an
//! error, not a crash); an admitted message's change headers agree with what
//! automerge decoded.

#![no_main]

use std::sync::OnceLock;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT};
use codeedex_schema::admission::{InputLimits, admit_sync_message};
use libfuzzer_sys::fuzz_target;

/// A small task-like document and its sync state after one exchange with a
/// peer that had nothing, saved once.
fn prepared() -> &'static (Vec<u8>, Vec<u8>) {
    static PREPARED: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let mut doc = Automerge::new();
        doc.set_actor(ActorId::from([9; 16]));
        doc.transact(|tx| {
            let title = tx.put_object(ROOT, "title", automerge::ObjType::Text)?;
            tx.splice_text(&title, 0, 0, "prepared")?;
            tx.put(ROOT, "done", false)?;
            let tags = tx.put_object(ROOT, "tags", automerge::ObjType::Map)?;
            tx.put(&tags, "home", true)
        })
        .expect("a fresh document accepts a change");
        let mut state = sync::State::new();
        let _ = doc.generate_sync_message(&mut state);
        (doc.save(), state.encode())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(admitted) = admit_sync_message(data, &InputLimits::default()) else {
        return;
    };
    let headers = admitted.changes().to_vec();
    let message = admitted.into_message();
    assert_eq!(
        message.changes.len(),
        headers.len(),
        "admission and automerge disagree on the number of changes"
    );

    let mut empty = Automerge::new();
    let mut state = sync::State::new();
    if empty
        .receive_sync_message(&mut state, message.clone())
        .is_ok()
    {
        let _ = empty.generate_sync_message(&mut state);
    }

    let (saved, saved_state) = prepared();
    let mut doc = Automerge::load(saved).expect("the prepared document loads");
    let mut state = sync::State::decode(saved_state).expect("the prepared state decodes");
    if doc.receive_sync_message(&mut state, message).is_ok() {
        let _ = doc.generate_sync_message(&mut state);
        let _ = doc.save();
    }
});
