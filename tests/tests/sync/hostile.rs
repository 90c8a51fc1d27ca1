//! A signed-in user attacking the server through the sync socket.
//!
//! Each attack must cost at most the attacker's own connection: the server
//! keeps running, another user's open socket is never interrupted and still
//! syncs, the attacker can connect again (nothing of the dead connection is
//! left holding a slot), and memory comes back to where it was.

use std::io::Write;

use automerge::ChangeHash;
use codeedex_schema::wire::message_type;
use codeedex_tests::app::{AppConfig, spawn_app_with};

use super::*;

/// Appends `value` as unsigned LEB128, the integer encoding of Automerge's
/// binary formats.
fn leb(out: &mut Vec<u8>, mut value: u64) {
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

/// A version 1 Automerge sync message built from parts, so that a test can
/// say what Automerge's own encoder never would.
fn raw_sync_message(
    heads: &[ChangeHash],
    haves: &[(Vec<ChangeHash>, Vec<u8>)],
    changes: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = vec![0x42];
    let hashes = |out: &mut Vec<u8>, hashes: &[ChangeHash]| {
        leb(out, hashes.len() as u64);
        for hash in hashes {
            out.extend_from_slice(&hash.0);
        }
    };
    hashes(&mut out, heads);
    hashes(&mut out, &[]);
    leb(&mut out, haves.len() as u64);
    for (last_sync, bloom) in haves {
        hashes(&mut out, last_sync);
        leb(&mut out, bloom.len() as u64);
        out.extend_from_slice(bloom);
    }
    leb(&mut out, changes.len() as u64);
    for change in changes {
        leb(&mut out, change.len() as u64);
        out.extend_from_slice(change);
    }
    out
}

/// A bloom filter's wire form with parameters of the peer's choosing.
fn bloom(entries: u64, bits_per_entry: u64, probes: u64, bits: usize) -> Vec<u8> {
    let mut out = Vec::new();
    leb(&mut out, entries);
    leb(&mut out, bits_per_entry);
    leb(&mut out, probes);
    out.extend(std::iter::repeat_n(0xff, bits));
    out
}

/// Another user, joined and syncing a document of her own while the attack
/// runs, who must never notice it.
struct Bystander {
    peer: SyncPeer,
    id: DocumentId,
    edits: u32,
}

impl Bystander {
    async fn join(app: &TestApp) -> Self {
        let mut peer = joined(app, "bea@example.com", "bea-laptop").await;
        let id = fresh_id();
        peer.create(id, |d| put_title(d, "bea's task"));
        peer.sync_to_server(id, WAIT).await.unwrap();
        Self { peer, id, edits: 0 }
    }

    /// Her socket is still open and her edits still reach the server.
    async fn is_unaffected(&mut self) {
        assert!(
            self.peer.open_after_pending(WAIT).await,
            "the bystander's socket was interrupted"
        );
        self.edits += 1;
        let edit = self.edits;
        self.peer.change(self.id, |d| {
            d.put(ROOT, "edits", i64::from(edit)).unwrap();
        });
        self.peer.sync_to_server(self.id, WAIT).await.unwrap();
    }
}

/// Ann, joined, with a task document the server holds.
async fn attacker(app: &TestApp, peer_id: &str) -> (SyncPeer, DocumentId) {
    let mut peer = joined(app, "ann@example.com", peer_id).await;
    let id = fresh_id();
    peer.create(id, |d| {
        put_title(d, "ann's task");
        for i in 0..20 {
            d.put(ROOT, "counter", i).unwrap();
            d.commit();
        }
    });
    peer.sync_to_server(id, WAIT).await.unwrap();
    (peer, id)
}

/// Sends `data` as a sync message about `id` and expects the connection to
/// end with the protocol's `error` message and `code`.
async fn expect_refused(peer: &mut SyncPeer, id: DocumentId, data: Vec<u8>, code: u16) -> String {
    let message = sync_message(peer, &id.to_string(), data);
    peer.send(&message).await.unwrap();
    expect_error_then_close(peer, code, WAIT).await
}

async fn assert_healthy(app: &mut TestApp) {
    assert!(app.is_running(), "the server process died");
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_bloom_filter_with_two_billion_probes_costs_only_the_attackers_connection() {
    let mut app = spawn_app().await;
    let mut bea = Bystander::join(&app).await;
    let (mut ann, id) = attacker(&app, "ann-bloom").await;
    let before = app.rss_kib();
    // Two bytes of bits for one entry at 10 bits each, probed 2^31 times
    // per change: upstream Automerge reserves 8 GiB for the probes.
    let have = (Vec::new(), bloom(1, 10, 1 << 31, 2));
    let reason = expect_refused(&mut ann, id, raw_sync_message(&[], &[have], &[]), 1002).await;
    assert!(
        reason.contains("bloom"),
        "the reason names the filter: {reason}"
    );
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
    let grown = app.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the server grew by {grown} KiB");
    assert!(app.metric("codeedex_sync_messages_refused_total").await >= 1);
}

#[tokio::test]
async fn a_bloom_filter_without_bits_is_refused_and_leaks_no_connection_slot() {
    let mut app =
        spawn_app_with(AppConfig::default().with("--sync-max-connections-per-user", 2)).await;
    let mut bea = Bystander::join(&app).await;
    // Upstream Automerge divides by the number of bits; zero panics. Three
    // attacks in a row with room for two connections: a connection whose
    // task died without releasing its slot would lock Ann out.
    for round in 0..3 {
        let (mut ann, id) = attacker(&app, &format!("ann-zero-{round}")).await;
        let have = (Vec::new(), bloom(1, 0, 7, 0));
        expect_refused(&mut ann, id, raw_sync_message(&[], &[have], &[]), 1002).await;
    }
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
    let (mut ann, id) = attacker(&app, "ann-after").await;
    ann.change(id, |d| {
        d.put(ROOT, "done", true).unwrap();
    });
    ann.sync_to_server(id, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_compressed_change_that_inflates_to_256_mib_is_refused_before_it_is_inflated() {
    let mut app = spawn_app().await;
    let mut bea = Bystander::join(&app).await;
    let (mut ann, id) = attacker(&app, "ann-deflate").await;
    let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..256 {
        deflated.write_all(&zeros).unwrap();
    }
    let body = deflated.finish().unwrap();
    assert!(body.len() < 512 * 1024, "the bomb fits a frame");
    // A compressed change chunk: magic, checksum, type 2, length, DEFLATE.
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    leb(&mut chunk, body.len() as u64);
    chunk.extend_from_slice(&body);
    let before = app.rss_kib();
    let heads = ann.docs[&id].0.clone().get_heads();
    expect_refused(&mut ann, id, raw_sync_message(&heads, &[], &[chunk]), 1002).await;
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
    let grown = app.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the server grew by {grown} KiB");
}

#[tokio::test]
async fn a_whole_document_in_place_of_changes_is_refused() {
    let mut app = spawn_app().await;
    let (mut ann, id) = attacker(&app, "ann-document").await;
    let mut other = AutoCommit::new();
    put_title(&mut other, "smuggled");
    let heads = ann.docs[&id].0.clone().get_heads();
    let reason = expect_refused(
        &mut ann,
        id,
        raw_sync_message(&heads, &[], &[other.save()]),
        1002,
    )
    .await;
    assert!(reason.contains("document"), "{reason}");
    assert_healthy(&mut app).await;
}

/// A change that is well formed in every byte but claims to be its actor's
/// second when the document has no first: upstream Automerge panics on it.
fn change_with_a_sequence_gap() -> Vec<u8> {
    let mut doc = AutoCommit::new();
    doc.set_actor(automerge::ActorId::from(vec![0xee; 16]));
    doc.put(ROOT, "smuggled", "yes").unwrap();
    doc.commit();
    let first = doc.get_changes(&[]).into_iter().next().unwrap().clone();
    let mut expanded = first.decode();
    expanded.seq = 2;
    expanded.hash = None;
    automerge::Change::from(expanded).raw_bytes().to_vec()
}

#[tokio::test]
async fn a_change_with_a_sequence_gap_is_refused_and_the_document_keeps_only_its_log() {
    let mut app =
        spawn_app_with(AppConfig::default().with("--sync-max-connections-per-user", 1)).await;
    let mut bea = Bystander::join(&app).await;
    let ann_token = token_of(&app, "ann@example.com").await;
    let (mut ann, id) = attacker(&app, "ann-gap").await;
    let heads = ann.docs[&id].0.clone().get_heads();
    expect_refused(
        &mut ann,
        id,
        raw_sync_message(&heads, &[], &[change_with_a_sequence_gap()]),
        1002,
    )
    .await;
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
    // The slot was released: Ann's one allowed connection is free again,
    // and the document is what its log holds, without the bad change.
    let mut again = joined(&app, "ann@example.com", "ann-gap-again").await;
    again.track(id);
    again.push(id, true).await.unwrap();
    again
        .sync_until(id, WAIT, |d| {
            read_string(d, "title").as_deref() == Some("ann's task")
        })
        .await
        .unwrap();
    assert!(
        again.docs[&id].0.get(ROOT, "smuggled").unwrap().is_none(),
        "the refused change reached another device"
    );
    assert_eq!(rest_task(&app, &ann_token, id).await.title, "ann's task");
}

#[tokio::test]
async fn changes_whose_dependencies_never_arrive_are_bounded() {
    let mut app = spawn_app_with(AppConfig::default().with("--sync-max-queued-changes", 50)).await;
    let mut bea = Bystander::join(&app).await;
    let (mut ann, id) = attacker(&app, "ann-orphans").await;
    // A chain of 101 changes sent without its first: none can be applied,
    // and Automerge would keep all of them in memory, waiting.
    let mut chain = ann.docs[&id].0.clone();
    for i in 0..101 {
        chain.put(ROOT, "orphan", i).unwrap();
        chain.commit();
    }
    let heads = ann.docs[&id].0.clone().get_heads();
    let orphans: Vec<Vec<u8>> = chain
        .get_changes(&heads)
        .iter()
        .skip(1)
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let reason = expect_refused(
        &mut ann,
        id,
        raw_sync_message(&chain.get_heads(), &[], &orphans),
        4008,
    )
    .await;
    assert!(reason.contains("missing dependencies"), "{reason}");
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
}

#[tokio::test]
async fn a_device_that_stops_reading_does_not_make_the_server_buffer_what_others_send() {
    let mut app = spawn_app_with(AppConfig::default().with("--sync-write-timeout-secs", 2)).await;
    let mut bea = Bystander::join(&app).await;
    let (mut ann, id) = attacker(&app, "ann-talker").await;
    // A second device of Ann's subscribes to the document, then never reads
    // again.
    let mut silent = joined(&app, "ann@example.com", "ann-silent").await;
    silent.track(id);
    silent.push(id, true).await.unwrap();
    silent
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
    let before = app.rss_kib();
    // 64 MiB of ephemeral messages relayed towards the silent device.
    flood_ephemeral(&mut ann, id, 2048).await;
    // The talker is unaffected and everything it sent was handled.
    assert!(ann.quiet_ping("done", WAIT).await.unwrap().is_empty());
    let grown = app.rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "the server grew by {grown} KiB");
    assert!(app.metric("codeedex_sync_ephemeral_dropped_total").await > 0);
    // The device that does not read is closed once a frame waited too long.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.metric("codeedex_sync_slow_readers_closed_total").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent device was never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
    drop(silent);
}

#[tokio::test]
async fn a_user_over_the_document_quota_gets_an_error_and_4011_and_rest_answers_quota_exceeded() {
    let app = spawn_app_with(AppConfig::default().with("--quota-documents-per-user", 3)).await;
    let token = token_of(&app, "ann@example.com").await;
    // The root document and two tasks fill the quota of three.
    let mut created = Vec::new();
    for title in ["one", "two"] {
        let response = app
            .post_json_as(&token, "/v1/tasks", &serde_json::json!({ "title": title }))
            .await;
        assert_eq!(response.status(), 201);
        created.push(response.json::<TaskView>().await.unwrap().id);
    }
    let response = app
        .post_json_as(
            &token,
            "/v1/tasks",
            &serde_json::json!({ "title": "three" }),
        )
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        codeedex_tests::app::problem_code(response).await,
        "quota_exceeded"
    );
    // An upload of a new document over sync is refused the same way.
    let mut peer = joined(&app, "ann@example.com", "ann-quota").await;
    let id = fresh_id();
    peer.create(id, |d| put_title(d, "one too many"));
    peer.push(id, false).await.unwrap();
    let reason = expect_error_then_close(&mut peer, 4011, WAIT).await;
    assert!(reason.contains("quota"), "{reason}");
    assert!(app.metric("codeedex_quota_refusals_total").await >= 2);
    // Deleting a task makes room again.
    let response = app
        .client
        .delete(format!("{}/v1/tasks/{}", app.address, created[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = app
        .post_json_as(
            &token,
            "/v1/tasks",
            &serde_json::json!({ "title": "three" }),
        )
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_document_over_its_size_limit_is_refused_with_4011_and_nothing_of_it_is_kept() {
    let mut app =
        spawn_app_with(AppConfig::default().with("--quota-bytes-per-document", 4096)).await;
    let token = token_of(&app, "ann@example.com").await;
    let (mut ann, id) = attacker(&app, "ann-big").await;
    ann.change(id, |d| {
        let notes = d.put_object(ROOT, "notes", ObjType::Text).unwrap();
        d.splice_text(&notes, 0, 0, &"x".repeat(16 * 1024)).unwrap();
    });
    ann.push(id, false).await.unwrap();
    let reason = expect_error_then_close(&mut ann, 4011, WAIT).await;
    assert!(reason.contains("size limit"), "{reason}");
    assert_healthy(&mut app).await;
    let task = rest_task(&app, &token, id).await;
    assert_eq!(task.title, "ann's task");
    assert!(task.notes.is_empty(), "the refused notes were kept");
}

#[tokio::test]
async fn an_in_place_refresh_cannot_move_a_socket_to_another_session() {
    let app = spawn_app().await;
    let first = app.sign_in_email("ann@example.com").await;
    let second = app.sign_in_email("ann@example.com").await;
    let mut peer = SyncPeer::join(
        app.port,
        &first.tokens.access_token,
        "ann-mover",
        Some("storage-ann-mover"),
        &[message_type::AUTH_REFRESH],
    )
    .await
    .unwrap();
    peer.send(&Message::AuthRefresh {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        access_token: second.tokens.access_token.clone(),
    })
    .await
    .unwrap();
    expect_error_then_close(&mut peer, 4001, WAIT).await;
}

#[tokio::test]
async fn a_bundle_chunk_that_panics_inside_hexane_is_refused_before_automerge_sees_it() {
    // Found by the chunk_load fuzz target after 557,476 inputs: a bundle
    // chunk whose delta column ends inside a LEB128 number makes hexane
    // (automerge's column codec, a registry crate) unwrap an error and
    // panic. As a change in a sync message it must never reach Automerge:
    // the admission check refuses any chunk that is not an uncompressed
    // change, so the message is refused (1002) without a panic to contain.
    let mut app = spawn_app().await;
    let mut bea = Bystander::join(&app).await;
    let (mut ann, id) = attacker(&app, "ann-bundle").await;
    let bundle = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/chunk_load/hexane-bundle-leb128-eof"
    ))
    .expect("the reproducer is committed");
    let heads = ann.docs[&id].0.clone().get_heads();
    expect_refused(&mut ann, id, raw_sync_message(&heads, &[], &[bundle]), 1002).await;
    assert!(app.metric("codeedex_sync_messages_refused_total").await >= 1);
    assert_eq!(app.metric("codeedex_sync_panics_contained_total").await, 0);
    assert_healthy(&mut app).await;
    bea.is_unaffected().await;
}
