//! Hostile Automerge bytes, as a network peer could send them, against the
//! vendored automerge crate (`vendor/automerge`, see its PATCHES.md sections
//! 4 to 8). Each input here panicked, aborted or allocated without bound in
//! upstream 0.12.0; each must now be refused with an error, leaving the
//! document usable. Only automerge's public API is used.

use std::io::Read;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, Change, ObjType, ROOT, ReadDoc};
use sha2::{Digest, Sha256};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const SYNC_V1: u8 = 0x42;

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_uleb(bytes: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = bytes[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    uleb(out, bytes.len() as u64);
    out.extend(bytes);
}

/// The checksum automerge puts in a chunk header: the first four bytes of
/// SHA-256 over the chunk type, the uleb128 data length and the data.
fn checksum(chunk_type: u8, data: &[u8]) -> [u8; 4] {
    let mut prefix = vec![chunk_type];
    uleb(&mut prefix, data.len() as u64);
    let hash = Sha256::new()
        .chain_update(&prefix)
        .chain_update(data)
        .finalize();
    [hash[0], hash[1], hash[2], hash[3]]
}

fn chunk(chunk_type: u8, checksum: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(checksum);
    out.push(chunk_type);
    length_prefixed(&mut out, data);
    out
}

/// A change chunk's data with no ops (and so no op columns).
fn empty_change_data(deps: &[[u8; 32]], actor: &[u8], seq: u64, message: &str) -> Vec<u8> {
    let mut data = Vec::new();
    uleb(&mut data, deps.len() as u64);
    for d in deps {
        data.extend(d);
    }
    length_prefixed(&mut data, actor);
    uleb(&mut data, seq);
    uleb(&mut data, 1); // start op
    uleb(&mut data, 0); // time (sleb128 0 is the same byte)
    length_prefixed(&mut data, message.as_bytes());
    uleb(&mut data, 0); // other actors
    uleb(&mut data, 0); // op columns
    data
}

/// Sync message (v1) bytes whose `have` carries the given bloom filter bytes.
fn sync_message_with_bloom(bloom: &[u8]) -> Vec<u8> {
    let mut msg = vec![SYNC_V1];
    uleb(&mut msg, 0); // heads
    uleb(&mut msg, 0); // need
    uleb(&mut msg, 1); // one have
    uleb(&mut msg, 0); // its last_sync
    length_prefixed(&mut msg, bloom);
    uleb(&mut msg, 0); // changes
    msg
}

fn bloom(num_entries: u64, bits_per_entry: u64, probes: u64, bits: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    uleb(&mut out, num_entries);
    uleb(&mut out, bits_per_entry);
    uleb(&mut out, probes);
    out.extend(bits);
    out
}

/// A document with a few changes of our own, which a reply to a peer's
/// `have` checks against the peer's bloom filter.
fn server_doc() -> Automerge {
    let mut doc = AutoCommit::new();
    for i in 0..3i64 {
        doc.put(ROOT, "n", i).unwrap();
        doc.commit();
    }
    doc.document().clone()
}

/// Receives `msg` as a server would and generates its reply. The bloom
/// filter is only probed while generating the reply; upstream panicked or
/// aborted there, the patched crate refuses the message when decoding it.
fn serve_sync_message(bytes: &[u8]) -> Result<(), String> {
    let msg = sync::Message::decode(bytes).map_err(|e| e.to_string())?;
    let mut doc = server_doc();
    let mut state = sync::State::new();
    doc.receive_sync_message(&mut state, msg)
        .map_err(|e| e.to_string())?;
    let _reply = doc.generate_sync_message(&mut state);
    Ok(())
}

#[test]
fn bloom_with_two_to_the_31_probes_is_refused() {
    // 2^31 probes: upstream reserved a Vec of 2^31 u32s (8 GiB) per probed
    // hash and looped 2^31 times.
    let bytes = sync_message_with_bloom(&bloom(1, 10, 1 << 31, &[0xff, 0xff]));
    let err = serve_sync_message(&bytes).expect_err("the bloom filter was accepted");
    assert!(err.contains("probes"), "{err}");
}

#[test]
fn bloom_with_zero_bits_is_refused() {
    // One entry at zero bits per entry: no bits, so upstream probed modulo 0.
    let bytes = sync_message_with_bloom(&bloom(1, 0, 7, &[]));
    let err = serve_sync_message(&bytes).expect_err("the bloom filter was accepted");
    assert!(err.contains("bits per entry"), "{err}");
}

#[test]
fn bloom_within_bounds_still_works() {
    // A filter that says it holds everything: the server sends nothing more.
    let bytes = sync_message_with_bloom(&bloom(1, 10, 7, &[0xff, 0xff]));
    serve_sync_message(&bytes).unwrap();
}

#[test]
fn compressed_change_inflating_beyond_the_cap_is_refused() {
    // A valid change whose message is 65 MiB, DEFLATE-compressed to about
    // 65 KiB: upstream inflated it whole, with no bound, and accepted it.
    let message = "a".repeat(65 << 20);
    let data = empty_change_data(&[], &[0xaa; 16], 1, &message);
    let mut deflated = Vec::new();
    flate2::bufread::DeflateEncoder::new(data.as_slice(), flate2::Compression::best())
        .read_to_end(&mut deflated)
        .unwrap();
    assert!(deflated.len() < 1 << 20);
    // the checksum of a compressed chunk is that of the uncompressed change chunk
    let bytes = chunk(CHUNK_COMPRESSED, checksum(CHUNK_CHANGE, &data), &deflated);

    assert!(Change::from_bytes(bytes.clone()).is_err());
    assert!(Automerge::load(&bytes).is_err());
    let mut doc = server_doc();
    let heads = doc.get_heads();
    // load_incremental reports chunks it cannot parse as a partial load (Ok)
    // and applies nothing from them
    let _ = doc.load_incremental(&bytes);
    assert_eq!(doc.get_heads(), heads);

    // The same change uncompressed-size-wise within the cap still loads.
    let data = empty_change_data(&[], &[0xaa; 16], 1, "small");
    let mut deflated = Vec::new();
    flate2::bufread::DeflateEncoder::new(data.as_slice(), flate2::Compression::best())
        .read_to_end(&mut deflated)
        .unwrap();
    let bytes = chunk(CHUNK_COMPRESSED, checksum(CHUNK_CHANGE, &data), &deflated);
    let change = Change::from_bytes(bytes).unwrap();
    assert_eq!(change.message(), Some("small"));
}

#[test]
fn change_with_a_seq_gap_is_refused() {
    // seq 2 as the first change of its actor, with no deps (so "ready").
    let actor = [0xbb; 16];
    let data = empty_change_data(&[], &actor, 2, "");
    let bytes = chunk(CHUNK_CHANGE, checksum(CHUNK_CHANGE, &data), &data);
    let change = Change::from_bytes(bytes.clone()).unwrap();

    let mut doc = server_doc();
    let heads = doc.get_heads();
    let err = doc.apply_changes([change.clone()]).unwrap_err();
    assert!(err.to_string().contains("seq 2"), "{err}");
    assert_eq!(doc.get_heads(), heads);
    assert_eq!(doc.queued_changes(), 0);
    assert!(doc.load_incremental(&bytes).is_err());
    assert_eq!(doc.get_heads(), heads);

    // The document is still usable: a valid change applies after the refusal.
    let mut other = AutoCommit::new().with_actor(ActorId::from(actor));
    other.put(ROOT, "x", 1).unwrap();
    other.commit();
    let valid = other.get_changes(&[]);
    doc.apply_changes(valid).unwrap();
    assert_eq!(doc.get(ROOT, "x").unwrap().unwrap().0, 1.into());
    // ...and its seq 2 now follows, so the crafted change is a proper second change
    doc.apply_changes([change]).unwrap();
}

#[test]
fn op_naming_an_actor_the_change_does_not_list_is_refused() {
    // A real change of actor B whose op is in actor A's map (actor index 1),
    // re-encoded without its other actors, so index 1 names no actor.
    let mut a = AutoCommit::new().with_actor(ActorId::from([0xa1; 16]));
    let map = a.put_object(ROOT, "m", ObjType::Map).unwrap();
    a.commit();
    let mut b = a.fork().with_actor(ActorId::from([0xb1; 16]));
    b.put(&map, "k", "v").unwrap();
    b.commit();
    let heads_a = a.get_heads();
    let change_b = b.get_changes(&heads_a).pop().unwrap();
    assert_eq!(change_b.actor_id(), &ActorId::from([0xb1; 16]));

    let bytes = change_b.raw_bytes();
    let mut pos = MAGIC.len() + 4 + 1;
    let data_len = read_uleb(bytes, &mut pos) as usize;
    let data = &bytes[pos..pos + data_len];
    let mut p = 0;
    let num_deps = read_uleb(data, &mut p) as usize;
    p += 32 * num_deps;
    let actor_len = read_uleb(data, &mut p) as usize;
    p += actor_len;
    read_uleb(data, &mut p); // seq
    read_uleb(data, &mut p); // start op
    read_uleb(data, &mut p); // time (a small sleb128)
    let msg_len = read_uleb(data, &mut p) as usize;
    p += msg_len;
    let other_actors_at = p;
    let num_other = read_uleb(data, &mut p) as usize;
    assert_eq!(num_other, 1);
    let len = read_uleb(data, &mut p) as usize;
    p += len;
    let mut crafted = data[..other_actors_at].to_vec();
    uleb(&mut crafted, 0);
    crafted.extend(&data[p..]);
    let hostile = chunk(CHUNK_CHANGE, checksum(CHUNK_CHANGE, &crafted), &crafted);

    let err = Change::from_bytes(hostile.clone()).expect_err("the change was accepted");
    assert!(err.to_string().contains("actor index 1"), "{err}");

    let mut doc = a.document().clone();
    let heads = doc.get_heads();
    // load_incremental reports chunks it cannot parse as a partial load (Ok)
    // and applies nothing from them
    let _ = doc.load_incremental(&hostile);
    assert_eq!(doc.get_heads(), heads);

    // The same bytes inside a sync message: the message decodes (its changes
    // are opaque chunks there) and receiving it goes through load_incremental,
    // which applies nothing from the chunk.
    let mut msg = vec![SYNC_V1];
    uleb(&mut msg, 0); // heads
    uleb(&mut msg, 0); // need
    uleb(&mut msg, 0); // have
    uleb(&mut msg, 1); // one change
    length_prefixed(&mut msg, &hostile);
    let mut state = sync::State::new();
    let msg = sync::Message::decode(&msg).unwrap();
    let _ = doc.receive_sync_message(&mut state, msg);
    assert_eq!(doc.get_heads(), heads);

    // The unmodified change still applies.
    doc.apply_changes([change_b]).unwrap();
    assert_eq!(doc.get(&map, "k").unwrap().unwrap().0, "v".into());
}
