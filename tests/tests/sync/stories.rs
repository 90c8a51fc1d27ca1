//! Devices going offline, the server crashing, REST edits, catching up.

use codeedex_schema::api::tasks::TaskView;
use codeedex_schema::wire::message_type;
use codeedex_tests::app::{AppConfig, spawn_app_with};
use codeedex_tests::sync_peer::{Replicas, TokenIn, connect, refused_status};
use serde_json::json;

use super::*;

fn merged(d: &AutoCommit) -> bool {
    read_string(d, "title").as_deref() == Some("Buy oat milk")
        && read_string(d, "notes").as_deref() == Some("2 litres from the farm shop")
}

/// A and B of one user both hold a synced task replica.
async fn two_devices_with_a_task(
    app: &TestApp,
) -> (SyncPeer, SyncPeer, String, String, DocumentId) {
    let (ta, tb) = (
        token_of(app, "ann@example.com").await,
        token_of(app, "ann@example.com").await,
    );
    let mut a = SyncPeer::join(app.port, &ta, "ann-a", Some("storage-a"), &[])
        .await
        .unwrap();
    let mut b = SyncPeer::join(app.port, &tb, "ann-b", Some("storage-b"), &[])
        .await
        .unwrap();
    let id = fresh_id();
    a.create(id, |d| task(d, "Buy milk", "2 litres"));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.request(id).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        read_string(d, "notes").as_deref() == Some("2 litres")
    })
    .await
    .unwrap();
    (a, b, ta, tb, id)
}

fn edit_offline(a: &mut Replicas, b: &mut Replicas, id: DocumentId) {
    insert_text(&mut a.get_mut(&id).unwrap().0, "title", 4, "oat ");
    append_text(
        &mut b.get_mut(&id).unwrap().0,
        "notes",
        " from the farm shop",
    );
}

async fn reconnect_and_merge(
    app: &TestApp,
    ta: &str,
    tb: &str,
    a: Replicas,
    b: Replicas,
    id: DocumentId,
) -> (SyncPeer, SyncPeer) {
    let mut a = SyncPeer::rejoin(app.port, ta, "ann-a", Some("storage-a"), &[], a)
        .await
        .unwrap();
    a.sync_to_server(id, WAIT).await.unwrap();
    let mut b = SyncPeer::rejoin(app.port, tb, "ann-b", Some("storage-b"), &[], b)
        .await
        .unwrap();
    b.sync_to_server(id, WAIT).await.unwrap();
    b.sync_until(id, WAIT, merged).await.unwrap();
    a.sync_until(id, WAIT, merged).await.unwrap();
    let heads = |p: &mut SyncPeer| {
        let mut h = p.docs.get_mut(&id).unwrap().0.get_heads();
        h.sort();
        h
    };
    assert_eq!(heads(&mut a), heads(&mut b), "both devices converged");
    (a, b)
}

#[tokio::test]
async fn offline_edits_of_title_and_notes_on_two_devices_merge_after_reconnecting() {
    let app = spawn_app().await;
    let (a, b, ta, tb, id) = two_devices_with_a_task(&app).await;
    let (mut a, mut b) = (a.go_offline().await, b.go_offline().await);
    edit_offline(&mut a, &mut b, id);
    let (a, _b) = reconnect_and_merge(&app, &ta, &tb, a, b, id).await;
    drop(a);
    // The server holds the merge: the REST view shows both edits.
    let view = rest_task(&app, &ta, id).await;
    assert_eq!(
        (view.title.as_str(), view.notes.as_str()),
        ("Buy oat milk", "2 litres from the farm shop")
    );
}

#[tokio::test]
async fn offline_edits_merge_and_nothing_acknowledged_is_lost_across_a_server_crash() {
    let mut app = spawn_app().await;
    let (mut a, b, ta, tb, id) = two_devices_with_a_task(&app).await;
    // An edit the server acknowledged, then kill -9 with both sockets open.
    a.change(id, |d| {
        d.put(ROOT, "done", true).unwrap();
    });
    a.sync_to_server(id, WAIT).await.unwrap();
    app.crash_and_restart();
    let (mut a, mut b) = (a.go_offline().await, b.go_offline().await);
    edit_offline(&mut a, &mut b, id);
    let (a, b) = reconnect_and_merge(&app, &ta, &tb, a, b, id).await;
    drop((a, b));

    // Everything acknowledged survives another crash: a device with no
    // replica gets the acknowledged edit and both offline edits.
    app.crash_and_restart();
    let token = token_of(&app, "ann@example.com").await;
    let mut c = SyncPeer::join(app.port, &token, "ann-c", None, &[])
        .await
        .unwrap();
    c.request(id).await.unwrap();
    c.sync_until(id, WAIT, |d| merged(d) && is_true(d, "done"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rest_patch_reaches_a_connected_device_live() {
    let app = spawn_app().await;
    let ann = app.sign_in_email("ann@example.com").await;
    let token = ann.tokens.access_token.clone();
    let created = app
        .post_json_as(&token, "/v1/tasks", &json!({"title": "Water plants"}))
        .await;
    assert_eq!(created.status(), 201);
    let task: TaskView = created.json().await.unwrap();
    let id = task.id;

    let mut device = SyncPeer::join(app.port, &token, "ann-a", Some("storage-a"), &[])
        .await
        .unwrap();
    device.request(id).await.unwrap();
    device
        .sync_until(id, WAIT, |d| {
            read_string(d, "title").as_deref() == Some("Water plants")
        })
        .await
        .unwrap();
    // The root document, made by the server, lists the task.
    let me: serde_json::Value = app.get_as(&token, "/v1/me").await.json().await.unwrap();
    let root: DocumentId = me["root_document_id"]
        .as_str()
        .expect("a root document after a task was created")
        .parse()
        .unwrap();
    device.request(root).await.unwrap();
    device
        .sync_until(root, WAIT, |d| match d.get(ROOT, "tasks") {
            Ok(Some((Value::Object(ObjType::Map), tasks))) => {
                d.get(&tasks, id.to_string()).ok().flatten().is_some()
            }
            _ => false,
        })
        .await
        .unwrap();

    let response = app
        .client
        .patch(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(&token)
        .json(&json!({"title": "Water the plants", "done": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Pushed to the device without it asking.
    receive_sync_unasked(&mut device, id, WAIT).await;
    device
        .sync_until(id, WAIT, |d| {
            read_string(d, "title").as_deref() == Some("Water the plants") && is_true(d, "done")
        })
        .await
        .unwrap();
}

async fn catch_up(peer: &mut SyncPeer, cursor: u64) -> (Vec<String>, u64) {
    peer.send(&Message::CatchUpRequest {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        cursor,
    })
    .await
    .unwrap();
    match peer.next_non_sync(WAIT).await.unwrap() {
        Message::CatchUpResponse {
            document_ids,
            cursor,
            target_id,
            ..
        } => {
            assert_eq!(target_id, peer.peer_id);
            (document_ids, cursor)
        }
        other => panic!("expected a catch-up answer, got {other:?}"),
    }
}

#[tokio::test]
async fn catch_up_lists_exactly_the_documents_changed_since_the_cursor() {
    let app = spawn_app().await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let ids = [fresh_id(), fresh_id(), fresh_id()];
    for (n, id) in ids.iter().enumerate() {
        a.create(*id, |d| task(d, &format!("task {n}"), ""));
        a.sync_to_server(*id, WAIT).await.unwrap();
        // Changed twice: still listed once.
        a.change(*id, |d| append_text(d, "notes", "more"));
        a.sync_to_server(*id, WAIT).await.unwrap();
    }
    // Another user's change is not listed.
    let mut bob = joined(&app, "bob@example.com", "bob-1").await;
    let bobs = fresh_id();
    bob.create(bobs, |d| put_title(d, "bob's"));
    bob.sync_to_server(bobs, WAIT).await.unwrap();

    let token = token_of(&app, "ann@example.com").await;
    let mut fresh = SyncPeer::join(
        app.port,
        &token,
        "ann-fresh",
        None,
        &[message_type::CATCH_UP_REQUEST],
    )
    .await
    .unwrap();
    let (listed, cursor) = catch_up(&mut fresh, 0).await;
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    let mut expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(
        listed_sorted, expected,
        "exactly the three documents, once each: {listed:?}"
    );
    assert!(cursor > 0);
    let (again, same) = catch_up(&mut fresh, cursor).await;
    assert!(
        again.is_empty(),
        "nothing changed since the cursor: {again:?}"
    );
    assert_eq!(same, cursor);

    // One more change: only that document.
    a.change(ids[1], |d| append_text(d, "notes", "!"));
    a.sync_to_server(ids[1], WAIT).await.unwrap();
    let (changed, next) = catch_up(&mut fresh, cursor).await;
    assert_eq!(changed, vec![ids[1].to_string()]);
    assert!(next > cursor);

    // A peer that did not announce the extension gets no answer.
    let mut plain = joined(&app, "ann@example.com", "ann-plain").await;
    plain
        .send(&Message::CatchUpRequest {
            sender_id: plain.peer_id.clone(),
            target_id: plain.server_peer_id.clone(),
            cursor: 0,
        })
        .await
        .unwrap();
    assert!(plain.ping("marker", WAIT).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reconnecting_peer_that_holds_everything_gets_heads_and_no_changes() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let mut a = SyncPeer::join(app.port, &token, "ann-a", Some("storage-a"), &[])
        .await
        .unwrap();
    let id = fresh_id();
    a.create(id, |d| {
        task(d, "a document with some history", &"notes ".repeat(50))
    });
    for n in 0..5 {
        a.change(id, |d| append_text(d, "notes", &format!(" edit {n}")));
    }
    a.sync_to_server(id, WAIT).await.unwrap();
    // Automerge answers heads-only here whether or not the server kept the
    // sync state; that the state is saved per storage id is checked by the
    // server's simulation test.
    let replicas = a.go_offline().await;

    let mut a = SyncPeer::rejoin(app.port, &token, "ann-a", Some("storage-a"), &[], replicas)
        .await
        .unwrap();
    let ours = {
        let mut h = a.docs.get_mut(&id).unwrap().0.get_heads();
        h.sort();
        h
    };
    assert!(a.push(id, false).await.unwrap());
    let first = match a.next_message(WAIT).await.unwrap() {
        Message::Sync {
            data, document_id, ..
        } if document_id == id.to_string() => am_sync::Message::decode(&data).unwrap(),
        other => panic!("expected the server's sync message, got {other:?}"),
    };
    assert!(
        first.changes.is_empty(),
        "the server sent {} change chunks to an up-to-date peer",
        first.changes.len()
    );
    let mut theirs = first.heads.clone();
    theirs.sort();
    assert_eq!(theirs, ours, "the server's heads are ours");
    assert!(first.need.is_empty(), "the server needs nothing");

    // Control: a device without the document does get changes.
    let mut b = joined(&app, "ann@example.com", "ann-b").await;
    b.request(id).await.unwrap();
    b.sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_burst_of_changes_arrives_whole_on_the_other_device_and_is_acknowledged() {
    // The server answers a burst with fewer messages than it received (its
    // replies to one document coalesce while a flush runs); nothing of the
    // burst may be lost to that, on either side.
    let app = spawn_app().await;
    let (mut a, mut b, ta, _, id) = two_devices_with_a_task(&app).await;
    for n in 0..200 {
        a.change(id, |d| append_text(d, "notes", &format!(" {n}")));
        assert!(a.push(id, false).await.unwrap(), "a change to send");
    }
    let expected = format!(
        "2 litres{}",
        (0..200).map(|n| format!(" {n}")).collect::<String>()
    );
    // The server must tell the device that it holds the whole burst, even
    // though the device's last word was an echo of the server's heads.
    a.sync_to_server(id, WAIT).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        read_string(d, "notes").as_deref() == Some(expected.as_str())
    })
    .await
    .unwrap();
    let view = rest_task(&app, &ta, id).await;
    assert_eq!(view.notes, expected);
}

#[tokio::test]
async fn a_clean_shutdown_tells_peers_to_go_away_and_saves_their_sync_states() {
    let mut app = spawn_app().await;
    let mut device = joined(&app, "ann@example.com", "ann-laptop").await;
    let id = fresh_id();
    device.create(id, |d| put_title(d, "survives a restart"));
    device.sync_to_server(id, WAIT).await.unwrap();

    let status = app.terminate();
    assert!(status.success(), "the server exited with {status}");
    // The peer was told to reconnect later, not dropped.
    let (code, reason) = match device.recv(WAIT).await.unwrap() {
        Received::Closed(Some(frame)) => frame,
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(code, 1001, "{reason}");
    // Its sync state was saved as the connection ended, so that after the
    // restart the server knows what this device's storage holds.
    {
        let store = codeedex_server::store::Store::open(app.data_dir.path()).unwrap();
        let saved = store.sync_state(id, "storage-ann-laptop").await.unwrap();
        assert!(saved.is_some(), "no sync state was saved at shutdown");
    }
    app.start_again();
    let replicas = SyncPeer::keep_replicas(std::mem::take(&mut device.docs));
    let token = token_of(&app, "ann@example.com").await;
    let mut device = SyncPeer::rejoin(
        app.port,
        &token,
        "ann-laptop",
        Some("storage-ann-laptop"),
        &[],
        replicas,
    )
    .await
    .unwrap();
    device.sync_to_server(id, WAIT).await.unwrap();
    assert!(
        app.logs()
            .iter()
            .any(|line| line.contains("sync connection closed") && line.contains("1001")),
        "the close was not logged"
    );
}

#[tokio::test]
async fn while_the_server_drains_for_a_shutdown_new_sync_connections_get_503_not_a_socket() {
    // A device that stops reading keeps the drain going until its write
    // times out; that is the window in which other devices, told to go
    // away, come straight back.
    let mut app = spawn_app_with(AppConfig::default().with("--sync-write-timeout-secs", 5)).await;
    let mut talker = joined(&app, "ann@example.com", "ann-talker").await;
    let id = fresh_id();
    talker.create(id, |d| put_title(d, "shared"));
    talker.sync_to_server(id, WAIT).await.unwrap();
    let mut silent = joined(&app, "ann@example.com", "ann-silent").await;
    silent.track(id);
    silent.push(id, true).await.unwrap();
    silent
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
    // Fill the silent device's socket buffers so that its connection is
    // stuck writing.
    flood_ephemeral(&mut talker, id, 512).await;
    assert!(talker.quiet_ping("flooded", WAIT).await.unwrap().is_empty());
    let token = token_of(&app, "ann@example.com").await;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &app.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The talker is told to go away: the drain has begun.
    loop {
        match talker.recv(WAIT).await.unwrap() {
            Received::Closed(Some((code, _))) => {
                assert_eq!(code, 1001);
                break;
            }
            Received::Closed(None) => panic!("closed without a close frame"),
            _ => {}
        }
    }
    // The silent device still holds the drain open; a device coming back
    // now is refused with a clear answer rather than given a socket that
    // would be closed again at once.
    let refused = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .expect_err("no new sync connection while shutting down");
    assert_eq!(refused_status(&refused), Some(503));
    match &refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "server_busy");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    drop(silent);
    let status = app.terminate();
    assert!(status.success(), "the server exited with {status}");
}

/// Receives sync messages for `id` without answering any, applying each to
/// the replica, until `done` holds; returns how many arrived.
async fn receive_silently(
    peer: &mut SyncPeer,
    id: DocumentId,
    done: impl Fn(&AutoCommit) -> bool,
) -> usize {
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !peer.docs.get(&id).is_some_and(|(d, _)| done(d)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.recv(left).await {
            Ok(Received::Message(codeedex_schema::wire::Message::Sync { data, .. })) => {
                received += 1;
                let (doc, state) = peer.docs.get_mut(&id).expect("tracked");
                doc.sync()
                    .receive_sync_message(state, automerge::sync::Message::decode(&data).unwrap())
                    .unwrap();
            }
            Ok(Received::Message(_)) => {}
            Ok(Received::Closed(frame)) => panic!("the socket closed: {frame:?}"),
            Err(e) => panic!("the changes never all arrived without an answer: {e:#}"),
        }
    }
    received
}

#[tokio::test]
async fn changes_for_a_peer_that_has_not_answered_go_out_together_within_the_bound() {
    // B reads but never answers. Each of A's twenty changes is durable on
    // the server before the next is made, so without coalescing B would get
    // one message per change. B has not acknowledged the first message, so
    // the server holds the rest and sends what gathered at the coalescing
    // bound (50 ms): fewer messages, and every change still arrives although
    // B never says a word.
    let app = spawn_app().await;
    let (mut a, mut b, _, _, id) = two_devices_with_a_task(&app).await;
    for n in 0..20 {
        a.change(id, |d| append_text(d, "notes", &format!(" {n}")));
        a.sync_to_server(id, WAIT).await.unwrap();
    }
    let expected = format!(
        "2 litres{}",
        (0..20).map(|n| format!(" {n}")).collect::<String>()
    );
    let received = receive_silently(&mut b, id, |d| {
        read_string(d, "notes").as_deref() == Some(expected.as_str())
    })
    .await;
    assert!(
        received < 10,
        "{received} messages for 20 changes to a peer that never answered"
    );
}

/// Reads the next message and drops it, as a relay that loses it would;
/// it must be a sync message (`what` names the one expected).
async fn lose_next_sync_message(peer: &mut SyncPeer, what: &str) {
    let lost = peer.recv(WAIT).await.unwrap();
    assert!(
        matches!(
            lost,
            Received::Message(codeedex_schema::wire::Message::Sync { .. })
        ),
        "expected {what}, got {lost:?}"
    );
}

#[tokio::test]
async fn a_change_a_relay_lost_on_the_way_out_is_sent_again_when_the_device_asks() {
    // The server's message with A's change to B is lost on the way. B's
    // next messages ask for it; the server counts it as sent, and forgets
    // that it did when B asks, so the connection carries on and B converges
    // without a reconnect.
    let app = spawn_app().await;
    let (mut a, mut b, _, _, id) = two_devices_with_a_task(&app).await;
    a.change(id, |d| append_text(d, "notes", " lost"));
    a.sync_to_server(id, WAIT).await.unwrap();
    lose_next_sync_message(&mut b, "the relayed change").await;
    a.change(id, |d| append_text(d, "notes", " later"));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        read_string(d, "notes").as_deref() == Some("2 litres lost later")
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_change_a_relay_lost_on_the_way_in_is_sent_again_when_the_server_asks() {
    // A's message with a change is lost on the way to the server while the
    // connection stays open: A counts the change as sent, and Automerge
    // never sends a change twice on one sync state. A's later change
    // arrives but cannot be applied without the lost one. The server sees A
    // name changes it does not send and asks it to send again what the
    // server lacks, so both reach B without a reconnect. Without the ask, A
    // and the server trade empty messages until the connection ends.
    let app = spawn_app().await;
    let (mut a, mut b, _, _, id) = two_devices_with_a_task(&app).await;
    a.change(id, |d| append_text(d, "notes", " lost"));
    {
        let (doc, state) = a.docs.get_mut(&id).expect("tracked");
        let lost = doc.sync().generate_sync_message(state);
        assert!(lost.is_some(), "A had a change to send");
    }
    a.change(id, |d| append_text(d, "notes", " later"));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.sync_until(id, WAIT, |d| {
        read_string(d, "notes").as_deref() == Some("2 litres lost later")
    })
    .await
    .unwrap();
    assert_eq!(
        app.metric("codeedex_sync_resets_requested_total").await,
        1,
        "one reset was asked for"
    );
}

#[tokio::test]
async fn a_change_lost_on_the_way_out_to_a_quiet_device_is_sent_again_after_a_ping() {
    // The server's message with A's change to B is lost on the way, and B,
    // which never heard of the change, has nothing to ask: it only answers
    // the server's pings. The server sees its message unanswered for a
    // whole ping interval by a peer that is alive, and sends the change
    // again. Without that, B would stay behind until its next connection.
    let app = spawn_app_with(AppConfig::default().with("--sync-ping-interval-secs", 1)).await;
    let (mut a, mut b, _, _, id) = two_devices_with_a_task(&app).await;
    a.change(id, |d| append_text(d, "notes", " lost"));
    a.sync_to_server(id, WAIT).await.unwrap();
    lose_next_sync_message(&mut b, "the relayed change").await;
    receive_silently(&mut b, id, |d| {
        read_string(d, "notes").as_deref() == Some("2 litres lost")
    })
    .await;
    assert_eq!(
        app.metric("codeedex_sync_messages_resent_total").await,
        1,
        "the server sent the change again once"
    );
}

#[tokio::test]
async fn a_document_that_arrives_for_a_waiting_device_is_announced_again_if_the_news_is_lost() {
    // B asks for a task nobody has uploaded yet and is told it is
    // unavailable; A then uploads it. The server's first message to B about
    // it carries only heads (B's sync state for it is new), and it is lost
    // on the way. B, told "unavailable", has nothing to ask, and without a
    // second message neither side would speak of the task again: the
    // seeded convergence run with a lossy relay (FAULTS_SEED=1) ended that
    // way, with a device listing tasks whose documents stayed empty.
    let app = spawn_app_with(AppConfig::default().with("--sync-ping-interval-secs", 1)).await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let mut b = joined(&app, "ann@example.com", "ann-b").await;
    let id = fresh_id();
    told_unavailable(&mut b, id).await;
    a.create(id, |d| task(d, "arrives later", ""));
    a.sync_to_server(id, WAIT).await.unwrap();
    lose_next_sync_message(&mut b, "the news that the task arrived").await;
    receive_sync_unasked(&mut b, id, WAIT).await;
    b.sync_until(id, WAIT, |d| {
        read_string(d, "title").as_deref() == Some("arrives later")
    })
    .await
    .unwrap();
    assert_eq!(
        app.metric("codeedex_sync_messages_resent_total").await,
        1,
        "the server announced the task again once"
    );
}

#[tokio::test]
async fn a_device_that_never_heard_the_servers_answer_is_told_again() {
    // The server's answer to A's change (its heads, now A's) is lost on
    // the way. A later forgets what it sent and syncs again, as client-core
    // does when it hears the server after a silence. Its heads equal the
    // server's, so Automerge on the server would count them as told and
    // say nothing; but A's message shows it does not know the server has
    // them, and the server tells it again.
    let app = spawn_app().await;
    let (mut a, _b, _, _, id) = two_devices_with_a_task(&app).await;
    a.change(id, |d| append_text(d, "notes", " acknowledged"));
    assert!(a.push(id, false).await.unwrap(), "A sent its change");
    lose_next_sync_message(&mut a, "the server's answer").await;
    {
        let (_, state) = a.docs.get_mut(&id).expect("tracked");
        *state = automerge::sync::State::decode(&state.encode()).unwrap();
    }
    a.sync_to_server(id, WAIT).await.unwrap();
}
