//! Documents over the socket: unavailable ones, other users' ones, ephemeral
//! messages.

use codeedex_schema::api::tasks::TaskView;
use serde_json::json;

use super::*;

#[tokio::test]
async fn a_requested_unknown_document_arrives_when_another_device_of_the_user_uploads_it() {
    let app = spawn_app().await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let mut b = joined(&app, "ann@example.com", "ann-b").await;
    let mut bob = joined(&app, "bob@example.com", "bob-1").await;
    let id = fresh_id();
    // A document of Bob's own that he waits for too: when his other device
    // uploads it, its arrival is the sign that his peer has been told
    // everything it was going to be told before.
    let bobs = fresh_id();
    told_unavailable(&mut bob, bobs).await;

    // Nobody has it yet.
    for peer in [&mut b, &mut bob] {
        told_unavailable(peer, id).await;
    }

    // Ann's other device uploads it; B gets it without asking again.
    a.create(id, |d| task(d, "appears later", ""));
    a.sync_to_server(id, WAIT).await.unwrap();
    receive_sync_unasked(&mut b, id, WAIT).await;
    b.sync_until(id, WAIT, |d| {
        read_string(d, "title").as_deref() == Some("appears later")
    })
    .await
    .unwrap();

    // Bob, who asked for the same id, is told nothing: his own document,
    // uploaded by his other device after Ann's, is the first news he gets.
    let mut bob_phone = joined(&app, "bob@example.com", "bob-2").await;
    bob_phone.create(bobs, |d| task(d, "bob's own", ""));
    bob_phone.sync_to_server(bobs, WAIT).await.unwrap();
    receive_sync_unasked(&mut bob, bobs, WAIT).await;
    assert!(
        bob.backlog.is_empty(),
        "another user's waiting peer got: {:?}",
        bob.backlog
    );
}

#[tokio::test]
async fn another_users_document_can_be_neither_read_nor_changed() {
    let mut app = spawn_app().await;
    let ann = app.sign_in_email("ann@example.com").await;
    let bob_token = token_of(&app, "bob@example.com").await;
    let created = app
        .post_json_as(
            &ann.tokens.access_token,
            "/v1/tasks",
            &json!({"title": "ann's secret", "notes": "pin 1234"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let task: TaskView = created.json().await.unwrap();
    let id = task.id;

    let mut owner = SyncPeer::join(
        app.port,
        &ann.tokens.access_token,
        "ann-a",
        Some("storage-ann-a"),
        &[],
    )
    .await
    .unwrap();
    owner.request(id).await.unwrap();
    owner
        .sync_until(id, WAIT, |d| {
            read_string(d, "title").as_deref() == Some("ann's secret")
        })
        .await
        .unwrap();
    let owner_heads = owner.docs[&id].0.clone().get_heads();

    let mut bob = SyncPeer::join(app.port, &bob_token, "bob-1", Some("storage-bob-1"), &[])
        .await
        .unwrap();
    let expect_unavailable = |m: Message| match m {
        Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, id.to_string()),
        other => panic!("expected doc-unavailable, got {other:?}"),
    };
    // A request, and a first sync as an uploading device sends it.
    bob.request(id).await.unwrap();
    expect_unavailable(bob.next_message(WAIT).await.unwrap());
    let mut forged = AutoCommit::new();
    put_title(&mut forged, "bob was here");
    let first = forged
        .sync()
        .generate_sync_message(&mut am_sync::State::new())
        .unwrap()
        .encode();
    bob.send(&sync_message(&bob, &id.to_string(), first))
        .await
        .unwrap();
    expect_unavailable(bob.next_message(WAIT).await.unwrap());
    // A sync carrying changes, twice.
    for _ in 0..2 {
        bob.send(&sync_message(
            &bob,
            &id.to_string(),
            message_with_changes(&mut forged),
        ))
        .await
        .unwrap();
        expect_unavailable(bob.next_message(WAIT).await.unwrap());
    }
    // Through the REST API neither.
    let response = app.get_as(&bob_token, &format!("/v1/tasks/{id}")).await;
    assert_eq!(response.status(), 404);

    // The owner's live peer heard nothing, and the document is unchanged:
    // the owner's next edit is acknowledged with the owner's heads alone.
    // Sync is about state, not notices, so a forged change the server had
    // taken would come back with that acknowledgement, as a second head.
    let heard = owner.quiet_ping("marker", WAIT).await.unwrap();
    assert!(heard.is_empty(), "the owner's peer got: {heard:?}");
    let before_edit = owner.docs.get_mut(&id).unwrap().0.get_heads();
    let mut heads_before = owner_heads.clone();
    heads_before.sort();
    let mut sorted = before_edit.clone();
    sorted.sort();
    assert_eq!(
        sorted, heads_before,
        "the owner's replica received foreign changes"
    );
    owner.change(id, |d| {
        d.put(automerge::ROOT, "checked", true).unwrap();
    });
    let edit = owner.docs.get_mut(&id).unwrap().0.get_heads();
    owner.sync_to_server(id, WAIT).await.unwrap();
    assert_eq!(
        owner.docs.get_mut(&id).unwrap().0.get_heads(),
        edit,
        "the server holds changes besides the owner's"
    );
    let view = rest_task(&app, &ann.tokens.access_token, id).await;
    assert_eq!(view.title, "ann's secret");
    assert_eq!(view.notes, "pin 1234");
    let token = token_of(&app, "ann@example.com").await;
    let mut fresh = SyncPeer::join(app.port, &token, "ann-fresh", None, &[])
        .await
        .unwrap();
    fresh.request(id).await.unwrap();
    fresh
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
    let doc = &mut fresh.docs.get_mut(&id).unwrap().0;
    assert_eq!(read_string(doc, "title").as_deref(), Some("ann's secret"));
    let mut heads = doc.get_heads();
    let mut expected = edit.clone();
    heads.sort();
    expected.sort();
    assert_eq!(
        heads, expected,
        "the document has exactly the owner's changes"
    );
    // Bob's connection is still usable (the refusals were not errors).
    assert!(bob.ping("bob-marker", WAIT).await.unwrap().is_empty());
    drop((owner, bob, fresh));

    // The same after a restart, when the document is read from the store
    // rather than found in memory.
    app.crash_and_restart();
    let mut bob = SyncPeer::join(app.port, &bob_token, "bob-1", Some("storage-bob-1"), &[])
        .await
        .unwrap();
    bob.request(id).await.unwrap();
    expect_unavailable(bob.next_message(WAIT).await.unwrap());
    bob.send(&sync_message(
        &bob,
        &id.to_string(),
        message_with_changes(&mut forged),
    ))
    .await
    .unwrap();
    expect_unavailable(bob.next_message(WAIT).await.unwrap());
    let view = rest_task(&app, &ann.tokens.access_token, id).await;
    assert_eq!(view.title, "ann's secret");
    let mut after = SyncPeer::join(app.port, &ann.tokens.access_token, "ann-after", None, &[])
        .await
        .unwrap();
    after.request(id).await.unwrap();
    after
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
    let mut heads = after.docs.get_mut(&id).unwrap().0.get_heads();
    heads.sort();
    assert_eq!(
        heads, expected,
        "the document has exactly the owner's changes after a restart"
    );
}

fn ephemeral(from: &SyncPeer, id: DocumentId, session: &str, count: u64, data: &[u8]) -> Message {
    Message::Ephemeral {
        sender_id: from.peer_id.clone(),
        target_id: from.server_peer_id.clone(),
        document_id: id.to_string(),
        count,
        session_id: session.to_owned(),
        data: data.to_vec(),
    }
}

/// The next ephemeral message `peer` gets is `count` of `sender`'s
/// `session`: the positive sign that nothing relayed before it (an echo, a
/// duplicate, a replay) is on its way, since a connection's relayed
/// ephemeral messages go out in the order they came in.
async fn expect_next_ephemeral_from(peer: &mut SyncPeer, sender: &str, session: &str, count: u64) {
    match next_ephemeral(peer).await {
        Message::Ephemeral {
            sender_id,
            session_id,
            count: got,
            ..
        } => assert_eq!(
            (sender_id.as_str(), session_id.as_str(), got),
            (sender, session, count),
            "{} got another ephemeral message first",
            peer.peer_id
        ),
        _ => unreachable!(),
    }
}

/// The next ephemeral message, skipping sync traffic.
async fn next_ephemeral(peer: &mut SyncPeer) -> Message {
    loop {
        match peer.next_message(WAIT).await.unwrap() {
            m @ Message::Ephemeral { .. } => return m,
            m @ Message::Sync { .. } => peer.apply(&m).await.unwrap(),
            other => panic!("expected an ephemeral message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ephemeral_messages_reach_the_users_other_peer_once_and_are_never_stored() {
    let app = spawn_app().await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let mut b = joined(&app, "ann@example.com", "ann-b").await;
    let id = fresh_id();
    a.create(id, |d| task(d, "presence", ""));
    a.sync_to_server(id, WAIT).await.unwrap();
    b.request(id).await.unwrap();
    b.sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();

    // A peer of the same user that does not sync this document.
    let mut elsewhere = joined(&app, "ann@example.com", "ann-elsewhere").await;

    // Forwarded with the original sender id, addressed to B.
    let cursor = [0xa1, 0x66, b'c', b'u', b'r', b's', b'o', b'r', 0x03];
    a.send(&ephemeral(&a, id, "session-1", 1, &cursor))
        .await
        .unwrap();
    match next_ephemeral(&mut b).await {
        Message::Ephemeral {
            sender_id,
            target_id,
            document_id,
            count,
            session_id,
            data,
        } => {
            assert_eq!(sender_id, "ann-a");
            assert_eq!(target_id, "ann-b");
            assert_eq!(document_id, id.to_string());
            assert_eq!(
                (count, session_id.as_str(), data.as_slice()),
                (1, "session-1", &cursor[..])
            );
        }
        _ => unreachable!(),
    }
    // Not echoed to A: a message B sends afterwards is the first A gets.
    b.send(&ephemeral(&b, id, "b-session", 1, b"after"))
        .await
        .unwrap();
    expect_next_ephemeral_from(&mut a, "ann-b", "b-session", 1).await;

    // The same (sender, session, count) again is dropped; the next count passes.
    a.send(&ephemeral(&a, id, "session-1", 1, b"\x01"))
        .await
        .unwrap();
    a.send(&ephemeral(&a, id, "session-1", 2, b"\x02"))
        .await
        .unwrap();
    match next_ephemeral(&mut b).await {
        Message::Ephemeral { count, data, .. } => assert_eq!(
            (count, data),
            (2, b"\x02".to_vec()),
            "the duplicate was forwarded"
        ),
        _ => unreachable!(),
    }
    // A new session may reuse count 1.
    a.send(&ephemeral(&a, id, "session-2", 1, b"\x03"))
        .await
        .unwrap();
    match next_ephemeral(&mut b).await {
        Message::Ephemeral {
            count, session_id, ..
        } => assert_eq!((count, session_id.as_str()), (1, "session-2")),
        _ => unreachable!(),
    }
    // B echoing A's message back (as JS clients do) goes nowhere: its sender
    // id is not B's.
    let mut echo = ephemeral(&a, id, "session-1", 2, b"\x02");
    if let Message::Ephemeral { target_id, .. } = &mut echo {
        *target_id = b.server_peer_id.clone();
    }
    b.send(&echo).await.unwrap();
    b.send(&ephemeral(&b, id, "b-session", 2, b"after the echo"))
        .await
        .unwrap();
    expect_next_ephemeral_from(&mut a, "ann-b", "b-session", 2).await;
    // Nor did B get more than A's three: A's next message is B's next.
    a.send(&ephemeral(&a, id, "session-3", 1, b"last"))
        .await
        .unwrap();
    expect_next_ephemeral_from(&mut b, "ann-a", "session-3", 1).await;

    let got = elsewhere.ping("elsewhere-marker", WAIT).await.unwrap();
    assert!(
        got.is_empty(),
        "a peer not syncing the document got: {got:?}"
    );

    // Never stored: a later joiner gets the document and no ephemeral data.
    let mut c = joined(&app, "ann@example.com", "ann-c").await;
    c.request(id).await.unwrap();
    c.sync_until(id, WAIT, |d| {
        read_string(d, "title").as_deref() == Some("presence")
    })
    .await
    .unwrap();
    assert!(
        c.backlog
            .iter()
            .all(|m| !matches!(m, Message::Ephemeral { .. })),
        "the later joiner got: {:?}",
        c.backlog
    );
    // Nothing older is replayed: A's next message is the first C gets.
    a.send(&ephemeral(&a, id, "session-4", 1, b"now"))
        .await
        .unwrap();
    expect_next_ephemeral_from(&mut c, "ann-a", "session-4", 1).await;
}

async fn listed_task_ids(app: &TestApp, token: &str) -> Vec<DocumentId> {
    let page: serde_json::Value = app.get_as(token, "/v1/tasks").await.json().await.unwrap();
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_task_deleted_over_rest_becomes_unavailable_to_a_connected_device_and_stays_deleted() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let created = app
        .post_json_as(&token, "/v1/tasks", &json!({"title": "to be deleted"}))
        .await;
    let id = created.json::<TaskView>().await.unwrap().id;
    let mut device = SyncPeer::join(app.port, &token, "ann-a", Some("storage-a"), &[])
        .await
        .unwrap();
    device.request(id).await.unwrap();
    device
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();

    let response = app
        .client
        .delete(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // Told at once.
    match device.next_non_sync(WAIT).await.unwrap() {
        Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, id.to_string()),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    // Its old state cannot bring the task back.
    device.change(id, |d| insert_text(d, "title", 0, "resurrected "));
    assert!(device.push(id, false).await.unwrap());
    match device.next_non_sync(WAIT).await.unwrap() {
        Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, id.to_string()),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{id}"))
            .await
            .status(),
        404
    );
    assert!(
        !listed_task_ids(&app, &token).await.contains(&id),
        "the deleted task is listed"
    );
}

#[tokio::test]
async fn edits_racing_a_rest_delete_do_not_bring_the_task_back_into_the_list() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let mut device = SyncPeer::join(app.port, &token, "ann-a", Some("storage-a"), &[])
        .await
        .unwrap();
    // A few rounds: each one a task that the device edits in a burst while
    // it is deleted over REST.
    for round in 0..4 {
        let created = app
            .post_json_as(
                &token,
                "/v1/tasks",
                &json!({"title": format!("race {round}")}),
            )
            .await;
        let id = created.json::<TaskView>().await.unwrap().id;
        device.request(id).await.unwrap();
        device
            .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
            .await
            .unwrap();

        for n in 0..300 {
            device.change(id, |d| append_text(d, "notes", &n.to_string()));
            device.push(id, false).await.unwrap();
        }
        // Delete while the server is still working through the burst: as
        // soon as it has answered once. (It answers a burst with a few
        // messages, not one per push: replies to one document coalesce while
        // the group commit flushes.)
        while !matches!(
            device.next_message(WAIT).await.unwrap(),
            Message::Sync { .. }
        ) {}
        let response = app
            .client
            .delete(format!("{}/v1/tasks/{id}", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        device
            .quiet_ping(&format!("marker-{round}"), WAIT)
            .await
            .unwrap();

        assert_eq!(
            app.get_as(&token, &format!("/v1/tasks/{id}"))
                .await
                .status(),
            404,
            "round {round}"
        );
        let listed = listed_task_ids(&app, &token).await;
        assert!(
            !listed.contains(&id),
            "round {round}: the deleted task is back in GET /v1/tasks"
        );
    }
}

#[tokio::test]
async fn metrics_show_open_sync_connections_and_documents_held_in_memory() {
    let app = spawn_app().await;
    assert_eq!(app.metric("codeedex_sync_connections").await, 0);
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let id = fresh_id();
    a.create(id, |d| task(d, "held in memory", ""));
    a.sync_to_server(id, WAIT).await.unwrap();
    assert_eq!(app.metric("codeedex_sync_connections").await, 1);
    assert!(
        app.metric("codeedex_documents_in_memory").await >= 1,
        "the synced document is not counted in memory"
    );
    a.close().await;
    // The count drops once the connection's task has ended.
    let deadline = std::time::Instant::now() + WAIT;
    while app.metric("codeedex_sync_connections").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
