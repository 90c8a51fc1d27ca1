//! Arbitrary bytes as a saved document or as incremental chunks.
//!
//! Reaches the vendored automerge's storage layer (`Automerge::load`,
//! `load_incremental`): chunk headers, checksums, the columnar change and
//! document encodings, decompression, and the `hexane` column decoders. The
//! server loads every stored document and every `changes` entry of a sync
//! message through these functions.
//!
//! Panics inside `hexane` may remain after the vendored copy's hardening
//! and are not ours to fix, so CI does not run this target; run it by hand
//! (see fuzz/README.md).

#![no_main]

use std::sync::OnceLock;

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use libfuzzer_sys::fuzz_target;

/// A small document with a few changes, saved once.
fn prepared() -> &'static [u8] {
    static SAVED: OnceLock<Vec<u8>> = OnceLock::new();
    SAVED.get_or_init(|| {
        let mut doc = Automerge::new();
        doc.transact(|tx| {
            tx.put(ROOT, "title", "prepared")?;
            let list = tx.put_object(ROOT, "tags", automerge::ObjType::Map)?;
            tx.put(&list, "home", true)
        })
        .expect("a fresh document accepts a change");
        doc.save()
    })
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(doc) = Automerge::load(bytes) {
        // A loaded document saves, and its save loads to the same heads.
        let saved = doc.save();
        let again = Automerge::load(&saved).expect("a saved document loads");
        assert_eq!(
            again.get_heads(),
            doc.get_heads(),
            "save/load changed the heads"
        );
    }
    let mut empty = Automerge::new();
    let _ = empty.load_incremental(bytes);
    let mut doc = Automerge::load(prepared()).expect("the prepared document loads");
    if doc.load_incremental(bytes).is_ok() {
        let _ = doc.save();
    }
});
