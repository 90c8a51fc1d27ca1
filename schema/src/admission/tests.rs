//! Tests of the admission layer: real messages from automerge's own sync
//! protocol are admitted and described correctly; crafted messages for every
//! refusal are refused with the right reason; and property tests check that
//! no input panics and that what is admitted is what automerge reads.

use std::sync::OnceLock;

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ObjType, ROOT, ReadDoc};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

// ---------------------------------------------------------------- helpers

fn uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A chunk of type `ty` around `body`, with a correct checksum.
fn chunk(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut hashed = vec![ty];
    uleb(&mut hashed, body.len() as u64);
    hashed.extend_from_slice(body);
    let digest = Sha256::digest(&hashed);
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83];
    out.extend_from_slice(&digest[..4]);
    out.extend(hashed);
    out
}

/// The fields of a change body, to craft changes automerge would not make.
#[derive(Clone)]
struct Body {
    deps: Vec<[u8; 32]>,
    actor: Vec<u8>,
    seq: u64,
    start_op: u64,
    time: i64,
    message: Vec<u8>,
    others: Vec<Vec<u8>>,
    columns: Vec<(u64, Vec<u8>)>,
    extra: Vec<u8>,
}

impl Body {
    /// One change with one operation: an action column holding one `1`.
    fn one_op() -> Self {
        Self {
            deps: vec![],
            actor: vec![7; 16],
            seq: 1,
            start_op: 1,
            time: 0,
            message: vec![],
            others: vec![],
            columns: vec![(u64::from(ACTION_SPEC), vec![0x01, 0x01])],
            extra: vec![],
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        uleb(&mut out, self.deps.len() as u64);
        for dep in &self.deps {
            out.extend_from_slice(dep);
        }
        uleb(&mut out, self.actor.len() as u64);
        out.extend_from_slice(&self.actor);
        uleb(&mut out, self.seq);
        uleb(&mut out, self.start_op);
        sleb(&mut out, self.time);
        uleb(&mut out, self.message.len() as u64);
        out.extend_from_slice(&self.message);
        uleb(&mut out, self.others.len() as u64);
        for other in &self.others {
            uleb(&mut out, other.len() as u64);
            out.extend_from_slice(other);
        }
        uleb(&mut out, self.columns.len() as u64);
        for (spec, data) in &self.columns {
            uleb(&mut out, *spec);
            uleb(&mut out, data.len() as u64);
        }
        for (_, data) in &self.columns {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&self.extra);
        out
    }

    fn chunk(&self) -> Vec<u8> {
        chunk(1, &self.encode())
    }
}

const ACTION_SPEC: u32 = 0x42;
const OBJ_ACTOR_SPEC: u64 = 0x01;
const PRED_GROUP_SPEC: u64 = 0x70;
const PRED_ACTOR_SPEC: u64 = 0x71;

/// A sync message, to craft ones automerge would not send.
#[derive(Clone)]
struct Msg {
    version: u8,
    heads: Vec<[u8; 32]>,
    need: Vec<[u8; 32]>,
    haves: Vec<(Vec<[u8; 32]>, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    flags: Option<Vec<u8>>,
}

impl Msg {
    fn with_changes(changes: Vec<Vec<u8>>) -> Self {
        Self {
            version: 0x42,
            heads: vec![],
            need: vec![],
            haves: vec![],
            changes,
            flags: None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        for list in [&self.heads, &self.need] {
            uleb(&mut out, list.len() as u64);
            for hash in list {
                out.extend_from_slice(hash);
            }
        }
        uleb(&mut out, self.haves.len() as u64);
        for (last_sync, bloom) in &self.haves {
            uleb(&mut out, last_sync.len() as u64);
            for hash in last_sync {
                out.extend_from_slice(hash);
            }
            uleb(&mut out, bloom.len() as u64);
            out.extend_from_slice(bloom);
        }
        uleb(&mut out, self.changes.len() as u64);
        for change in &self.changes {
            uleb(&mut out, change.len() as u64);
            out.extend_from_slice(change);
        }
        if let Some(flags) = &self.flags {
            uleb(&mut out, flags.len() as u64);
            out.extend_from_slice(flags);
        }
        out
    }
}

fn admit(bytes: &[u8]) -> Result<AdmittedSyncMessage, Refusal> {
    admit_sync_message(bytes, &InputLimits::default())
}

fn refusal(bytes: &[u8]) -> Refusal {
    admit(bytes).expect_err("the message should be refused")
}

fn refusal_of_change(body: &Body) -> Refusal {
    refusal(&Msg::with_changes(vec![body.chunk()]).encode())
}

fn bloom(entries: u64, bits_per_entry: u64, probes: u64, bits: usize) -> Vec<u8> {
    let mut out = Vec::new();
    uleb(&mut out, entries);
    uleb(&mut out, bits_per_entry);
    uleb(&mut out, probes);
    out.extend(std::iter::repeat_n(0xa5, bits));
    out
}

fn actor(n: u8) -> ActorId {
    ActorId::from([n; 16])
}

/// Checks that the headers admitted for `bytes` agree with automerge's own
/// reading of every change chunk.
fn assert_headers_match(bytes: &[u8], admitted: &AdmittedSyncMessage) {
    let decoded = Message::decode(bytes).expect("automerge decodes what was admitted");
    let chunks: Vec<&[u8]> = decoded.changes.iter().collect();
    assert_eq!(chunks.len(), admitted.changes().len());
    assert_eq!(
        chunks.iter().map(|c| c.len()).sum::<usize>(),
        admitted.change_bytes()
    );
    for (chunk, header) in chunks.iter().zip(admitted.changes()) {
        let change = Change::from_bytes(chunk.to_vec()).expect("a real change");
        assert_eq!(header.hash, change.hash());
        assert_eq!(&header.actor, change.actor_id());
        assert_eq!(header.seq, change.seq());
        assert_eq!(header.start_op, change.start_op().get());
        assert_eq!(header.ops, change.len() as u64);
        assert_eq!(header.deps, change.deps());
        assert_eq!(header.bytes, chunk.len());
    }
}

/// Runs automerge's sync protocol between `a` and `b` until both are quiet,
/// stripping the flags section from every message as our server does and
/// passing every message through admission. Returns the messages.
fn sync_through_admission(a: &mut AutoCommit, b: &mut AutoCommit) -> Vec<Vec<u8>> {
    let (mut state_a, mut state_b) = (State::new(), State::new());
    let mut messages = Vec::new();
    for _ in 0..32 {
        let a_spoke = sync_step(a, &mut state_a, b, &mut state_b, &mut messages);
        let b_spoke = sync_step(b, &mut state_b, a, &mut state_a, &mut messages);
        if !a_spoke && !b_spoke {
            break;
        }
    }
    assert_eq!(a.get_heads(), b.get_heads(), "the documents converge");
    messages
}

/// One message from `from` to `to`, if `from` has one to send.
fn sync_step(
    from: &mut AutoCommit,
    from_state: &mut State,
    to: &mut AutoCommit,
    to_state: &mut State,
    messages: &mut Vec<Vec<u8>>,
) -> bool {
    let Some(mut message) = from.sync().generate_sync_message(from_state) else {
        return false;
    };
    message.flags = None;
    let bytes = message.encode();
    let admitted = admit(&bytes).unwrap_or_else(|r| panic!("refused a real message: {r}"));
    assert_headers_match(&bytes, &admitted);
    to.sync()
        .receive_sync_message(to_state, admitted.into_message())
        .expect("automerge applies what was admitted");
    messages.push(bytes);
    true
}

/// Two documents with history: map puts, text splices, three actors merged,
/// and one change with thousands of operations.
fn rich_documents() -> (AutoCommit, AutoCommit) {
    let mut a = AutoCommit::new().with_actor(actor(1));
    a.put(ROOT, "title", "groceries").unwrap();
    let text = a.put_object(ROOT, "notes", ObjType::Text).unwrap();
    a.splice_text(&text, 0, 0, "hello world").unwrap();
    a.commit();
    let mut c = a.fork().with_actor(actor(3));
    c.splice_text(&text, 5, 6, ", friends").unwrap();
    c.put(ROOT, "done", true).unwrap();
    c.commit();
    a.put(ROOT, "title", "shopping").unwrap();
    a.commit();
    a.merge(&mut c).unwrap();
    let list = a.put_object(ROOT, "items", ObjType::List).unwrap();
    for i in 0..3000 {
        a.insert(&list, i, i as i64).unwrap();
    }
    a.commit();
    let mut b = AutoCommit::new().with_actor(actor(2));
    b.put(ROOT, "owner", "b").unwrap();
    b.commit();
    b.put(ROOT, "owner", "bee").unwrap();
    b.commit();
    (a, b)
}

/// Valid messages to mutate and truncate, built once.
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let (mut a, mut b) = rich_documents();
        let mut messages = sync_through_admission(&mut a, &mut b);
        // A message with a flags section, as automerge sends by default.
        let (mut x, _) = small_documents();
        let mut with_flags = x.sync().generate_sync_message(&mut State::new()).unwrap();
        assert!(with_flags.flags.is_some());
        with_flags.changes = x
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect::<Vec<_>>()
            .into();
        messages.push(with_flags.encode());
        messages
    })
}

fn small_documents() -> (AutoCommit, AutoCommit) {
    let mut a = AutoCommit::new().with_actor(actor(1));
    a.put(ROOT, "k", 1).unwrap();
    a.commit();
    let b = AutoCommit::new().with_actor(actor(2));
    (a, b)
}

/// A real change chunk of `a` with at least `min_bytes` bytes.
fn big_change() -> Change {
    let mut doc = AutoCommit::new().with_actor(actor(9));
    let text = doc.put_object(ROOT, "t", ObjType::Text).unwrap();
    doc.splice_text(&text, 0, 0, &"a task description. ".repeat(100))
        .unwrap();
    doc.commit();
    doc.get_changes(&[]).into_iter().next_back().unwrap()
}

// ------------------------------------------------------- real messages

#[test]
fn every_message_of_a_real_sync_is_admitted_and_described() {
    let (mut a, mut b) = rich_documents();
    let messages = sync_through_admission(&mut a, &mut b);
    assert!(messages.len() >= 3);
    assert!(
        messages.iter().all(|m| m[0] == 0x42),
        "only v1 messages without flags"
    );
    let biggest = messages
        .iter()
        .map(|m| admit(m).unwrap())
        .flat_map(|m| m.changes().to_vec())
        .map(|h| h.ops)
        .max()
        .unwrap();
    assert!(
        biggest >= 3000,
        "the change with many ops travelled: {biggest}"
    );

    // Later edits on both sides sync too.
    a.put(ROOT, "late", "a").unwrap();
    a.commit();
    b.put(ROOT, "late", "b").unwrap();
    b.commit();
    sync_through_admission(&mut a, &mut b);
}

#[test]
fn a_message_with_a_flags_section_is_admitted() {
    let with_flags = corpus().last().unwrap();
    let admitted = admit(with_flags).unwrap();
    assert_headers_match(with_flags, &admitted);
    assert!(admitted.into_message().flags.is_some());
}

#[test]
fn an_empty_message_and_a_v2_message_without_chunks_are_admitted() {
    let empty = Msg::with_changes(vec![]);
    assert!(admit(&empty.encode()).unwrap().changes().is_empty());
    let v2 = Msg {
        version: 0x43,
        ..empty
    };
    assert_eq!(admit(&v2.encode()).unwrap().change_bytes(), 0);
}

#[test]
fn crafted_change_within_limits_is_admitted() {
    let mut body = Body::one_op();
    body.others = vec![vec![8; 16]];
    body.columns.insert(0, (OBJ_ACTOR_SPEC, vec![0x01, 0x01]));
    let admitted = admit(&Msg::with_changes(vec![body.chunk()]).encode()).unwrap();
    let header = &admitted.changes()[0];
    assert_eq!((header.seq, header.start_op, header.ops), (1, 1, 1));
    assert_eq!(header.actor, ActorId::from([7; 16]));
}

// ------------------------------------------------------------ refusals

#[test]
fn refuses_oversized_messages_and_unknown_versions() {
    let limits = InputLimits {
        max_message_bytes: 10,
        ..InputLimits::default()
    };
    let bytes = Msg::with_changes(vec![Body::one_op().chunk()]).encode();
    assert_eq!(
        admit_sync_message(&bytes, &limits).unwrap_err(),
        Refusal::TooLarge {
            what: "the size of a sync message in bytes",
            limit: 10
        }
    );
    let mut wrong = bytes.clone();
    wrong[0] = 0x44;
    assert_eq!(refusal(&wrong), Refusal::UnknownVersion(0x44));
    assert_eq!(refusal(&[]), Refusal::Truncated("the version byte"));
}

#[test]
fn refuses_too_many_hashes_haves_and_changes() {
    let limits = InputLimits {
        max_hashes: 3,
        max_haves: 1,
        max_changes: 1,
        ..InputLimits::default()
    };
    let hashes = Msg {
        heads: vec![[1; 32]; 2],
        need: vec![[2; 32]; 2],
        ..Msg::with_changes(vec![])
    };
    assert!(matches!(
        admit_sync_message(&hashes.encode(), &limits).unwrap_err(),
        Refusal::TooLarge { limit: 3, .. }
    ));
    // Last-sync hashes count towards the same budget.
    let last_sync = Msg {
        haves: vec![(vec![[1; 32]; 4], vec![])],
        ..Msg::with_changes(vec![])
    };
    assert!(matches!(
        admit_sync_message(&last_sync.encode(), &limits).unwrap_err(),
        Refusal::TooLarge { limit: 3, .. }
    ));
    let haves = Msg {
        haves: vec![(vec![], vec![]); 2],
        ..Msg::with_changes(vec![])
    };
    assert_eq!(
        admit_sync_message(&haves.encode(), &limits).unwrap_err(),
        Refusal::TooLarge {
            what: "the number of have entries",
            limit: 1
        }
    );
    let changes = Msg::with_changes(vec![Body::one_op().chunk(); 2]);
    assert_eq!(
        admit_sync_message(&changes.encode(), &limits).unwrap_err(),
        Refusal::TooLarge {
            what: "the number of change chunks",
            limit: 1
        }
    );
    // A count the input cannot hold is refused on the count, before reading.
    let mut huge = vec![0x42];
    uleb(&mut huge, u64::MAX);
    assert!(matches!(refusal(&huge), Refusal::TooLarge { .. }));
}

#[test]
fn refuses_hostile_bloom_filters() {
    let have = |bloom: Vec<u8>| {
        Msg {
            haves: vec![(vec![], bloom)],
            ..Msg::with_changes(vec![])
        }
        .encode()
    };
    // 2^31 probes would make automerge allocate 8 GiB per lookup.
    assert!(matches!(
        refusal(&have(bloom(1, 10, 1 << 31, 2))),
        Refusal::BloomParameters(_)
    ));
    assert!(matches!(
        refusal(&have(bloom(1, 10, 0, 2))),
        Refusal::BloomParameters(_)
    ));
    // Zero bits per entry: automerge would divide by zero bits.
    assert!(matches!(
        refusal(&have(bloom(5, 0, 7, 0))),
        Refusal::BloomParameters(_)
    ));
    assert!(matches!(
        refusal(&have(bloom(5, 65, 7, 41))),
        Refusal::BloomParameters(_)
    ));
    // Oversized: 2^32-1 entries at 64 bits each.
    assert_eq!(
        refusal(&have(bloom(u64::from(u32::MAX), 64, 7, 0))),
        Refusal::TooLarge {
            what: "the size of a bloom filter in bytes",
            limit: 1024 * 1024
        }
    );
    // Bits that do not match the announced size, either way.
    assert!(matches!(
        refusal(&have(bloom(3, 10, 7, 3))),
        Refusal::BloomParameters(_)
    ));
    assert!(matches!(
        refusal(&have(bloom(3, 10, 7, 5))),
        Refusal::BloomParameters(_)
    ));
    // No entries but bits: automerge would silently ignore the bits.
    assert_eq!(
        refusal(&have(bloom(0, 10, 7, 4))),
        Refusal::BloomParameters("a filter with no entries carries bits")
    );
    // A parameter wider than u32.
    assert!(matches!(
        refusal(&have(bloom(1 << 32, 10, 7, 0))),
        Refusal::BadInteger(_)
    ));
    // What automerge sends is fine: empty, or 3 entries at 10 bits, 7 probes.
    assert!(admit(&have(vec![])).is_ok());
    assert!(admit(&have(bloom(3, 10, 7, 4))).is_ok());
    assert!(admit(&have(bloom(0, 10, 7, 0))).is_ok());
}

#[test]
fn refuses_document_compressed_and_unknown_chunks() {
    let (mut doc, _) = rich_documents();
    let saved = doc.save();
    assert_eq!(saved[8], 0, "save() writes a document chunk");
    assert_eq!(
        refusal(&Msg::with_changes(vec![saved]).encode()),
        Refusal::DocumentChunk
    );

    let mut change = big_change();
    let compressed = change.bytes().to_vec();
    assert_eq!(compressed[8], 2, "a large change compresses");
    assert_eq!(
        refusal(&Msg::with_changes(vec![compressed]).encode()),
        Refusal::CompressedChunk
    );

    let bundle = chunk(3, &Body::one_op().encode());
    assert_eq!(
        refusal(&Msg::with_changes(vec![bundle]).encode()),
        Refusal::UnknownChunkType(3)
    );

    let mut no_magic = Body::one_op().chunk();
    no_magic[0] = 0x86;
    assert_eq!(
        refusal(&Msg::with_changes(vec![no_magic]).encode()),
        Refusal::BadMagic
    );
}

#[test]
fn refuses_deflated_columns() {
    let mut body = Body::one_op();
    body.columns = vec![(u64::from(ACTION_SPEC) | 0b1000, vec![0x01, 0x01])];
    assert_eq!(refusal_of_change(&body), Refusal::CompressedColumn);
}

#[test]
fn refuses_a_bad_checksum_and_inconsistent_lengths() {
    let real = big_change().raw_bytes().to_vec();
    let mut bad = real.clone();
    bad[5] ^= 0xff;
    assert_eq!(
        refusal(&Msg::with_changes(vec![bad]).encode()),
        Refusal::Checksum
    );
    let mut flipped_body = real.clone();
    *flipped_body.last_mut().unwrap() ^= 1;
    assert_eq!(
        refusal(&Msg::with_changes(vec![flipped_body]).encode()),
        Refusal::Checksum
    );
    // Two chunks in one slot: automerge would load both from one entry.
    let two = [real.clone(), real].concat();
    assert!(matches!(
        refusal(&Msg::with_changes(vec![two]).encode()),
        Refusal::Malformed(_)
    ));
}

#[test]
fn refuses_ten_million_ops_claimed_in_a_few_bytes() {
    let mut body = Body::one_op();
    let mut run = Vec::new();
    sleb(&mut run, 10_000_000);
    uleb(&mut run, 1);
    assert!(run.len() <= 5);
    body.columns = vec![(u64::from(ACTION_SPEC), run)];
    assert_eq!(
        refusal_of_change(&body),
        Refusal::TooManyOps { limit: 100_000 }
    );
    // A literal run of i64::MIN (whose absolute value overflows) and a null
    // run of 2^64-1 are refused too.
    let mut literal = Vec::new();
    sleb(&mut literal, i64::MIN);
    body.columns = vec![(u64::from(ACTION_SPEC), literal)];
    assert!(matches!(refusal_of_change(&body), Refusal::Truncated(_)));
    let mut nulls = vec![0x00];
    uleb(&mut nulls, u64::MAX);
    body.columns = vec![(u64::from(ACTION_SPEC), nulls)];
    assert!(matches!(refusal_of_change(&body), Refusal::Malformed(_)));
}

#[test]
fn refuses_a_billion_predecessors_in_a_few_bytes() {
    let mut body = Body::one_op();
    let mut group = Vec::new();
    sleb(&mut group, 1);
    uleb(&mut group, 1_000_000_000);
    body.columns.push((PRED_GROUP_SPEC, group));
    assert!(matches!(
        refusal_of_change(&body),
        Refusal::TooLarge {
            limit: 1_000_000,
            ..
        }
    ));
}

#[test]
fn refuses_actor_indices_out_of_range() {
    let mut body = Body::one_op();
    body.others = vec![vec![8; 16]];
    // Index 2 with two actors (the change's own and one other).
    body.columns
        .insert(0, (OBJ_ACTOR_SPEC, vec![0x7e, 0x01, 0x02]));
    assert_eq!(
        refusal_of_change(&body),
        Refusal::ActorIndex {
            index: 2,
            actors: 2
        }
    );
    // Predecessor actors are checked the same way.
    let mut body = Body::one_op();
    body.columns.push((PRED_GROUP_SPEC, vec![0x01, 0x01]));
    body.columns.push((PRED_ACTOR_SPEC, vec![0x01, 0x05]));
    assert_eq!(
        refusal_of_change(&body),
        Refusal::ActorIndex {
            index: 5,
            actors: 1
        }
    );
}

#[test]
fn refuses_sequence_and_counter_values_automerge_cannot_hold() {
    for (seq, start_op, ops) in [
        (0, 1, 1),
        (1 << 32, 1, 1),
        (u64::MAX, 1, 1),
        (1, 0, 1),
        (1, 1 << 32, 1),
        (1, u64::MAX, 1),
        (1, u64::from(u32::MAX), 2),
    ] {
        let mut body = Body::one_op();
        body.seq = seq;
        body.start_op = start_op;
        body.columns = vec![(u64::from(ACTION_SPEC), vec![ops, 0x01])];
        assert!(
            matches!(refusal_of_change(&body), Refusal::OutOfRange(_)),
            "seq {seq} start_op {start_op} ops {ops}"
        );
    }
    let mut body = Body::one_op();
    body.start_op = u64::from(u32::MAX);
    assert!(admit(&Msg::with_changes(vec![body.chunk()]).encode()).is_ok());
}

#[test]
fn refuses_change_headers_beyond_their_limits() {
    let mut deps = Body::one_op();
    deps.deps = vec![[1; 32]; 3];
    let limits = InputLimits {
        max_deps_per_change: 2,
        max_actors_per_change: 2,
        max_actor_id_bytes: 16,
        max_change_bytes: 200,
        ..InputLimits::default()
    };
    let check = |body: &Body, what: &str| {
        let refusal = admit_sync_message(&Msg::with_changes(vec![body.chunk()]).encode(), &limits)
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::TooLarge { what: w, .. } if w.contains(what)),
            "{refusal}"
        );
    };
    check(&deps, "dependencies");
    let mut actors = Body::one_op();
    actors.others = vec![vec![1; 16], vec![2; 16]];
    check(&actors, "actors");
    let mut long_actor = Body::one_op();
    long_actor.actor = vec![1; 17];
    check(&long_actor, "actor id");
    let mut long_other = Body::one_op();
    long_other.others = vec![vec![1; 17]];
    check(&long_other, "actor id");
    let mut big = Body::one_op();
    big.extra = vec![0; 200];
    check(&big, "change chunk");
}

#[test]
fn refuses_malformed_change_headers() {
    let mut message = Body::one_op();
    message.message = vec![0xff, 0xfe];
    assert_eq!(
        refusal_of_change(&message),
        Refusal::Malformed("a change's message is not valid UTF-8")
    );

    let mut unordered = Body::one_op();
    unordered
        .columns
        .insert(1, (OBJ_ACTOR_SPEC, vec![0x01, 0x00]));
    assert!(matches!(
        refusal_of_change(&unordered),
        Refusal::Malformed(_)
    ));
    let mut duplicate = Body::one_op();
    duplicate
        .columns
        .push((u64::from(ACTION_SPEC), vec![0x01, 0x01]));
    assert!(matches!(
        refusal_of_change(&duplicate),
        Refusal::Malformed(_)
    ));

    // A column claiming more data than the body holds.
    let mut encoded = Body::one_op().encode();
    let len_at = encoded.len() - 3; // the action column's length byte
    assert_eq!(encoded[len_at], 2);
    encoded[len_at] = 50;
    assert!(matches!(
        refusal(&Msg::with_changes(vec![chunk(1, &encoded)]).encode()),
        Refusal::Truncated(_)
    ));

    // An overlong length in the chunk header, which automerge refuses.
    let body = Body::one_op().encode();
    let mut hashed = vec![1, (body.len() as u8) | 0x80, 0x00];
    hashed.extend_from_slice(&body);
    let digest = Sha256::digest(&hashed);
    let mut overlong = vec![0x85, 0x6f, 0x4a, 0x83];
    overlong.extend_from_slice(&digest[..4]);
    overlong.extend(hashed);
    assert_eq!(
        refusal(&Msg::with_changes(vec![overlong]).encode()),
        Refusal::BadInteger("a chunk's length")
    );
}

#[test]
fn refuses_an_author_on_a_later_change() {
    let mut body = Body::one_op();
    body.extra = vec![0x01, 0x02, 0xaa, 0xbb];
    assert!(admit(&Msg::with_changes(vec![body.chunk()]).encode()).is_ok());
    body.seq = 2;
    assert!(matches!(refusal_of_change(&body), Refusal::Malformed(_)));
}

#[test]
fn refuses_long_flags_and_trailing_bytes() {
    let long = Msg {
        flags: Some(vec![0x82; 65]),
        ..Msg::with_changes(vec![])
    };
    assert!(matches!(
        refusal(&long.encode()),
        Refusal::TooLarge { limit: 64, .. }
    ));
    let mut trailing = Msg {
        flags: Some(vec![0x02, 0x84]),
        ..Msg::with_changes(vec![])
    }
    .encode();
    assert!(admit(&trailing).is_ok());
    trailing.push(0);
    assert_eq!(
        refusal(&trailing),
        Refusal::Malformed("bytes follow the flags section")
    );
}

#[test]
fn every_prefix_of_a_real_message_is_handled() {
    for message in corpus() {
        for len in 0..message.len() {
            if let Ok(admitted) = admit(&message[..len]) {
                assert_headers_match(&message[..len], &admitted);
            }
        }
        assert!(admit(message).is_ok());
    }
}

#[test]
fn refusal_messages_read_well() {
    assert_eq!(
        Refusal::TooManyOps { limit: 100_000 }.to_string(),
        "a change claims more operations than the limit of 100000"
    );
    assert_eq!(
        Refusal::UnknownVersion(0x44).to_string(),
        "unknown sync message version byte 0x44"
    );
    assert_eq!(
        Refusal::ActorIndex {
            index: 2,
            actors: 2
        }
        .to_string(),
        "an operation refers to actor index 2, but its change lists only 2 actors"
    );
}

// ---------------------------------------------------------- properties

/// An edit to one of two documents.
#[derive(Debug, Clone)]
enum Edit {
    Put {
        doc: bool,
        key: u8,
        value: i64,
    },
    Splice {
        doc: bool,
        at: usize,
        delete: usize,
        text: String,
    },
    Commit {
        doc: bool,
    },
    Merge,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<bool>(), 0..4_u8, any::<i64>()).prop_map(|(doc, key, value)| Edit::Put {
            doc,
            key,
            value
        }),
        (any::<bool>(), 0..20_usize, 0..5_usize, "[a-zé ]{0,12}").prop_map(
            |(doc, at, delete, text)| Edit::Splice {
                doc,
                at,
                delete,
                text
            }
        ),
        any::<bool>().prop_map(|doc| Edit::Commit { doc }),
        Just(Edit::Merge),
    ]
}

fn apply(edits: &[Edit]) -> (AutoCommit, AutoCommit) {
    let mut a = AutoCommit::new().with_actor(actor(1));
    let text = a.put_object(ROOT, "text", ObjType::Text).unwrap();
    a.commit();
    let mut b = a.fork().with_actor(actor(2));
    for edit in edits {
        match edit {
            Edit::Put { doc, key, value } => {
                let d = if *doc { &mut a } else { &mut b };
                d.put(ROOT, format!("k{key}"), *value).unwrap();
            }
            Edit::Splice {
                doc,
                at,
                delete,
                text: t,
            } => {
                let d = if *doc { &mut a } else { &mut b };
                let len = d.length(&text);
                let at = (*at).min(len);
                let delete = (*delete).min(len - at);
                d.splice_text(&text, at, delete as isize, t).unwrap();
            }
            Edit::Commit { doc } => {
                if *doc {
                    a.commit()
                } else {
                    b.commit()
                };
            }
            Edit::Merge => {
                a.merge(&mut b).unwrap();
            }
        }
    }
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), v2 in any::<bool>()) {
        let mut bytes = bytes;
        if let Some(first) = bytes.first_mut() {
            *first = if v2 { 0x43 } else { 0x42 };
        }
        if let Ok(admitted) = admit(&bytes) {
            prop_assert_eq!(Message::decode(&bytes).ok(), Some(admitted.into_message()));
        }
    }

    #[test]
    fn single_byte_mutations_never_panic(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let original = pick.get(corpus());
        let mut bytes = original.clone();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(admitted) = admit(&bytes) {
            prop_assert_eq!(Message::decode(&bytes).ok(), Some(admitted.into_message()));
        }
    }

    /// Mutations inside a change body with the checksum recomputed, so they
    /// reach the body checks: anything admitted must be read the same way by
    /// automerge's change parser, or refused by it, never panic it.
    #[test]
    fn rechecksummed_change_mutations_agree_with_automerge(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        which in any::<prop::sample::Index>(),
    ) {
        static CHANGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let changes = CHANGES.get_or_init(|| {
            let (mut a, mut b) = rich_documents();
            a.merge(&mut b).unwrap();
            a.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()).collect()
        });
        let original = which.get(changes);
        let after_checksum = &original[8..];
        let body_start = 1 + ulen(&after_checksum[1..]);
        let mut body = after_checksum[body_start..].to_vec();
        let i = at.index(body.len());
        body[i] = byte;
        let chunk = chunk(1, &body);
        let bytes = Msg::with_changes(vec![chunk.clone()]).encode();
        if let Ok(admitted) = admit(&bytes) {
            let header = admitted.changes()[0].clone();
            if let Ok(change) = Change::from_bytes(chunk) {
                prop_assert_eq!(header.hash, change.hash());
                prop_assert_eq!(header.seq, change.seq());
                prop_assert_eq!(header.start_op, change.start_op().get());
                prop_assert_eq!(header.ops, change.len() as u64);
                prop_assert_eq!(&header.actor, change.actor_id());
            }
        }
    }
}

/// The number of bytes of the LEB128 integer at the start of `bytes`.
fn ulen(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len(), |p| p + 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn real_sync_messages_are_always_admitted(edits in proptest::collection::vec(edit(), 0..40)) {
        let (mut a, mut b) = apply(&edits);
        a.commit();
        b.commit();
        sync_through_admission(&mut a, &mut b);
    }
}
