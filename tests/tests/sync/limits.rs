//! Peer-id binding and the per-connection and per-user limits.

use std::time::Instant;

use codeedex_tests::app::{AppConfig, spawn_app_with};
use codeedex_tests::sync_peer::{TokenIn, connect, refused_status};

use super::*;

fn join_as(peer_id: &str) -> Message {
    Message::Join {
        sender_id: peer_id.into(),
        supported_protocol_versions: vec!["1".into()],
        peer_metadata: None,
    }
}

#[tokio::test]
async fn a_peer_id_joined_by_another_user_is_refused_with_4009_and_the_holder_is_unaffected() {
    let app = spawn_app().await;
    let mut ann = joined(&app, "ann@example.com", "shared-peer-id").await;
    let id = fresh_id();
    ann.create(id, |d| put_title(d, "mine"));
    ann.sync_to_server(id, WAIT).await.unwrap();

    let bob_token = token_of(&app, "bob@example.com").await;
    let socket = connect(app.port, Some(&bob_token), TokenIn::Header, None)
        .await
        .unwrap();
    let (mut bob, answer) = SyncPeer::unjoined(socket, "shared-peer-id")
        .join_with(&join_as("shared-peer-id"))
        .await
        .unwrap();
    assert!(
        matches!(answer, Received::Message(Message::Error { .. })),
        "expected an error, got {answer:?}"
    );
    assert_eq!(bob.expect_close(WAIT).await.unwrap(), Some(4009));

    // Ann's connection neither closed nor lost anything.
    assert!(
        ann.open_after_pending(WAIT).await,
        "the holder's socket closed"
    );
    assert!(
        ann.backlog
            .iter()
            .all(|m| matches!(m, Message::Sync { .. })),
        "{:?}",
        ann.backlog
    );
    ann.change(id, |d| {
        d.put(ROOT, "done", true).unwrap();
    });
    ann.sync_to_server(id, WAIT).await.unwrap();
}

#[tokio::test]
async fn the_same_user_joining_again_with_a_peer_id_replaces_the_old_socket_with_4010() {
    let app = spawn_app().await;
    let mut old = joined(&app, "ann@example.com", "ann-phone").await;
    let mut new = joined(&app, "ann@example.com", "ann-phone").await;
    expect_error_then_close(&mut old, 4010, WAIT).await;
    assert!(new.ping("marker", WAIT).await.unwrap().is_empty());

    // The old connection ending did not free the id: the new one holds it.
    // Once the server counts one connection, the old one has released
    // everything (its peer id first, its count last).
    let deadline = Instant::now() + WAIT;
    while app.metric("codeedex_sync_connections").await != 1 {
        assert!(
            Instant::now() < deadline,
            "the replaced connection never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bob_token = token_of(&app, "bob@example.com").await;
    let socket = connect(app.port, Some(&bob_token), TokenIn::Header, None)
        .await
        .unwrap();
    let (mut bob, _) = SyncPeer::unjoined(socket, "ann-phone")
        .join_with(&join_as("ann-phone"))
        .await
        .unwrap();
    assert_eq!(bob.expect_close(WAIT).await.unwrap(), Some(4009));
    assert!(new.open_after_pending(WAIT).await);
    let id = fresh_id();
    new.create(id, |d| put_title(d, "after the takeover"));
    new.sync_to_server(id, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_socket_that_does_not_join_within_the_handshake_timeout_is_closed_with_1008() {
    let app = spawn_app_with(AppConfig::default().with("--sync-handshake-timeout-secs", 1)).await;
    let token = token_of(&app, "ann@example.com").await;
    // The prompt peer's socket opens first, so its handshake deadline
    // passes before the silent one's.
    let prompt_socket = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let started = Instant::now();
    let socket = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let mut silent = SyncPeer::unjoined(socket, "silent");
    let (mut prompt, answer) = SyncPeer::unjoined(prompt_socket, "prompt")
        .join_with(&join_as("prompt"))
        .await
        .unwrap();
    assert!(
        matches!(answer, Received::Message(Message::Peer { .. })),
        "{answer:?}"
    );
    expect_error_then_close(&mut silent, 1008, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the timeout"
    );
    // A peer that joined in time stays: its own deadline has passed too
    // (the silent peer's close shows it), and its connection has acted on
    // whatever that deadline called for.
    assert!(
        prompt.open_after_pending(WAIT).await,
        "a joined peer was closed by the handshake timer"
    );
    assert!(prompt.backlog.is_empty(), "{:?}", prompt.backlog);
}

#[tokio::test]
async fn a_socket_sending_faster_than_the_message_rate_is_closed_with_4008() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--sync-messages-per-second", 5)
            .with("--sync-message-burst", 10),
    )
    .await;
    // Within the burst and then at 4 messages a second: never cut off.
    let mut calm = joined(&app, "ann@example.com", "ann-calm").await;
    for n in 0..8 {
        calm.send(&request_message(&calm, &format!("burst-{n}")))
            .await
            .unwrap();
    }
    for n in 0..8 {
        match calm.next_message(WAIT).await.unwrap() {
            Message::DocUnavailable { document_id, .. } => {
                assert_eq!(document_id, format!("burst-{n}"))
            }
            other => panic!("{other:?}"),
        }
    }
    for n in 0..7 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            calm.ping(&format!("steady-{n}"), WAIT)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // A flood: answered up to the burst, then an error and 4008.
    let mut flood = joined(&app, "ann@example.com", "ann-flood").await;
    for n in 0..30 {
        if flood
            .send(&request_message(&flood, &format!("flood-{n}")))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut answered = 0;
    loop {
        match flood.recv(WAIT).await.unwrap() {
            Received::Message(Message::DocUnavailable { .. }) => answered += 1,
            Received::Message(Message::Error { .. }) => break,
            other => panic!("expected answers then an error, got {other:?}"),
        }
    }
    assert_eq!(flood.expect_close(WAIT).await.unwrap(), Some(4008));
    assert!(
        (5..=12).contains(&answered),
        "{answered} of 30 messages were answered with a burst of 10"
    );
}

#[tokio::test]
async fn a_third_connection_of_a_user_over_the_limit_is_refused_with_429() {
    let app = spawn_app_with(AppConfig::default().with("--sync-max-connections-per-user", 2)).await;
    let first = token_of(&app, "ann@example.com").await;
    let second = token_of(&app, "ann@example.com").await;
    let one = SyncPeer::join(app.port, &first, "ann-1", None, &[])
        .await
        .unwrap();
    let _two = connect(app.port, Some(&first), TokenIn::Header, None)
        .await
        .unwrap();
    // Per user, not per session.
    let err = connect(app.port, Some(&second), TokenIn::Header, None)
        .await
        .expect_err("a third connection is refused");
    assert_eq!(refused_status(&err), Some(429));
    // Another user is not affected.
    let bob = token_of(&app, "bob@example.com").await;
    SyncPeer::join(app.port, &bob, "bob-1", None, &[])
        .await
        .expect("another user connects");

    // Closing one makes room again.
    one.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(app.port, Some(&second), TokenIn::Header, None).await {
            Ok(_) => break,
            Err(e) if refused_status(&e) == Some(429) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no room after a connection closed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_connection_syncing_more_documents_than_the_limit_is_closed_with_4008() {
    let app = spawn_app_with(AppConfig::default().with("--sync-max-documents", 2)).await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    let ids = [fresh_id(), fresh_id(), fresh_id()];
    for (n, id) in ids[..2].iter().enumerate() {
        a.create(*id, |d| put_title(d, &format!("doc {n}")));
        a.sync_to_server(*id, WAIT).await.unwrap();
    }
    // The first two again: no new documents.
    assert!(a.quiet_ping("marker", WAIT).await.unwrap().is_empty());
    a.create(ids[2], |d| put_title(d, "one too many"));
    a.push(ids[2], false).await.unwrap();
    expect_error_then_close(&mut a, 4008, WAIT).await;

    // The limit is per connection: another one syncs the third.
    let mut b = joined(&app, "ann@example.com", "ann-b").await;
    b.create(ids[2], |d| put_title(d, "one too many"));
    b.sync_to_server(ids[2], WAIT).await.unwrap();
}

#[tokio::test]
async fn a_connection_waiting_for_more_unknown_documents_than_the_limit_is_closed_with_4008() {
    // A request for a document nobody has is remembered (so the document
    // can be sent when it appears): that is state per connection, and the
    // document limit must bound it, or one socket can make the server
    // remember unknown ids without end.
    let app = spawn_app_with(AppConfig::default().with("--sync-max-documents", 2)).await;
    let mut a = joined(&app, "ann@example.com", "ann-a").await;
    for n in 0..2 {
        let id = fresh_id();
        a.request(id).await.unwrap();
        match a.next_message(WAIT).await.unwrap() {
            Message::DocUnavailable { document_id, .. } => {
                assert_eq!(document_id, id.to_string(), "request {n}")
            }
            other => panic!("request {n}: {other:?}"),
        }
    }
    a.request(fresh_id()).await.unwrap();
    match a.recv(WAIT).await.unwrap() {
        Received::Message(Message::Error { .. }) => {}
        other => {
            panic!("a third unknown document was accepted on a connection limited to 2: {other:?}")
        }
    }
    assert_eq!(a.expect_close(WAIT).await.unwrap(), Some(4008));
}

fn retry_after_of(error: &tokio_tungstenite::tungstenite::Error) -> Option<u64> {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => response
            .headers()
            .get("retry-after")?
            .to_str()
            .ok()?
            .parse()
            .ok(),
        _ => None,
    }
}

fn problem_code_of(error: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body: serde_json::Value = serde_json::from_slice(response.body().as_ref()?).ok()?;
            Some(body["code"].as_str()?.to_owned())
        }
        _ => None,
    }
}

#[tokio::test]
async fn upgrades_beyond_the_connection_rate_get_503_with_growing_retry_after() {
    // One new connection a second with a burst of two: a herd of devices
    // coming back gets two in, and the rest distinct times to return.
    let app = spawn_app_with(
        AppConfig::default()
            .with("--sync-connections-per-second", 1)
            .with("--sync-connection-burst", 2),
    )
    .await;
    let token = token_of(&app, "ann@example.com").await;
    let _one = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let _two = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let err = connect(app.port, Some(&token), TokenIn::Header, None)
            .await
            .expect_err("beyond the burst, upgrades are refused");
        assert_eq!(refused_status(&err), Some(503));
        assert_eq!(problem_code_of(&err).as_deref(), Some("server_busy"));
        waits.push(retry_after_of(&err).expect("a Retry-After header"));
    }
    // Slots one second apart: each refused device is told a later time.
    assert!(
        waits.windows(2).all(|w| w[0] < w[1]),
        "Retry-After should grow: {waits:?}"
    );
    assert_eq!(app.metric("codeedex_sync_connections_shed_total").await, 3);
    // Once the slot comes, the device is let in.
    tokio::time::sleep(Duration::from_secs(waits[0])).await;
    connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .expect("admitted at its slot");
}

#[tokio::test]
async fn a_full_node_refuses_upgrades_with_503_until_a_connection_closes() {
    let app = spawn_app_with(AppConfig::default().with("--sync-max-connections", 2)).await;
    let ann = token_of(&app, "ann@example.com").await;
    let bob = token_of(&app, "bob@example.com").await;
    let one = SyncPeer::join(app.port, &ann, "ann-1", None, &[])
        .await
        .unwrap();
    let _two = SyncPeer::join(app.port, &bob, "bob-1", None, &[])
        .await
        .unwrap();
    let err = connect(app.port, Some(&bob), TokenIn::Header, None)
        .await
        .expect_err("a full node refuses");
    assert_eq!(refused_status(&err), Some(503));
    assert!(retry_after_of(&err).is_some_and(|s| s >= 1));

    one.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(app.port, Some(&bob), TokenIn::Header, None).await {
            Ok(_) => break,
            Err(e) if refused_status(&e) == Some(503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no room after a connection closed: {e}"),
        }
    }
}
