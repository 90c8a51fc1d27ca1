//! The upgrade (tokens, Origin) and the protocol's framing and handshake.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use codeedex_schema::wire::PeerMetadata;
use codeedex_tests::app::{AppConfig, spawn_app_with};
use codeedex_tests::sync_peer::{
    TokenIn, cbor_text_map, connect, connect_with_protocol, refused_status,
};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio_tungstenite::tungstenite;

use super::*;

/// The HTTP status of an upgrade that must be refused.
async fn refused(port: u16, token: Option<&str>, how: TokenIn, origin: Option<&str>) -> u16 {
    match connect(port, token, how, origin).await {
        Ok(_) => panic!("the upgrade was accepted (token via {how:?}, origin {origin:?})"),
        Err(e) => refused_status(&e).unwrap_or_else(|| panic!("not an HTTP refusal: {e}")),
    }
}

/// Re-signs a genuine access token with the server's own key (read from its
/// data directory) after setting `iat` and `exp`.
fn resigned(app: &TestApp, genuine: &str, iat: i64, exp: i64) -> String {
    let path = app.data_dir.path().join("secrets").join("jwt-hs256.key");
    let hex = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let hex = hex.trim();
    let key: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut parts = genuine.split('.');
    let header = parts.next().unwrap();
    let mut claims: Value =
        serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    claims["iat"] = iat.into();
    claims["exp"] = exp.into();
    if claims.get("nbf").is_some() {
        claims["nbf"] = iat.into();
    }
    let input = format!(
        "{header}.{}",
        B64.encode(serde_json::to_vec(&claims).unwrap())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(input.as_bytes());
    let token = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
    app.remember_secret(&token);
    token
}

/// A token signed like the server's but with another key.
fn signed_with_another_key(genuine: &str) -> String {
    let mut parts = genuine.split('.');
    let input = format!("{}.{}", parts.next().unwrap(), parts.next().unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn an_upgrade_without_a_token_is_refused_with_401() {
    let app = spawn_app().await;
    assert_eq!(refused(app.port, None, TokenIn::Header, None).await, 401);
    // An empty query parameter or subprotocol entry is no token either.
    let request =
        codeedex_tests::sync_peer::sync_request(app.port, None, TokenIn::Query, None).unwrap();
    let mut with_empty = request;
    *with_empty.uri_mut() = format!("ws://127.0.0.1:{}/v1/sync?access_token=", app.port)
        .parse()
        .unwrap();
    let err = tokio_tungstenite::connect_async(with_empty)
        .await
        .expect_err("an empty token is refused");
    assert_eq!(refused_status(&err), Some(401));
    // A plain GET (no upgrade) without a token is told the same.
    let response = app.get("/v1/sync").await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_upgrade_with_a_forged_or_garbage_token_is_refused_with_401() {
    let app = spawn_app().await;
    let genuine = token_of(&app, "ann@example.com").await;
    let mut flipped = genuine.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let other_key = signed_with_another_key(&genuine);
    for (case, token) in [
        ("garbage", "not-a-token".to_owned()),
        ("flipped signature", flipped),
        ("signed with another key", other_key),
        (
            "a refresh-token-shaped string",
            "cdxr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        ),
    ] {
        for how in [TokenIn::Header, TokenIn::Subprotocol, TokenIn::Query] {
            assert_eq!(
                refused(app.port, Some(&token), how, None).await,
                401,
                "{case} via {how:?}"
            );
        }
    }
    // The genuine token works, so the refusals were about the tokens.
    let socket = connect(app.port, Some(&genuine), TokenIn::Header, None)
        .await
        .expect("the genuine token upgrades");
    drop(socket);
}

#[tokio::test]
async fn an_upgrade_with_an_expired_token_is_refused_with_401() {
    let app = spawn_app().await;
    let genuine = token_of(&app, "ann@example.com").await;
    let now = now_secs();
    // Control: the genuine claims re-signed by the test are accepted.
    let control = resigned(&app, &genuine, now - 10, now + 600);
    connect(app.port, Some(&control), TokenIn::Header, None)
        .await
        .expect("the re-signed control token upgrades");
    // Expired a minute ago, far beyond any clock-skew leeway.
    let expired = resigned(&app, &genuine, now - 960, now - 60);
    for how in [TokenIn::Header, TokenIn::Subprotocol, TokenIn::Query] {
        assert_eq!(
            refused(app.port, Some(&expired), how, None).await,
            401,
            "expired token via {how:?}"
        );
    }
    // The problem body tells an expired token apart.
    let response = app.get_as(&expired, "/v1/sync").await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("a problem body");
    assert_eq!(body["code"], "token_expired", "{body}");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_token_is_accepted_from_the_header_the_subprotocol_and_the_query() {
    // At debug level too, the token never reaches the log.
    let app = spawn_app_with(AppConfig::default().with("--log", "debug")).await;
    let token = token_of(&app, "ann@example.com").await;
    for (n, how) in [TokenIn::Header, TokenIn::Subprotocol, TokenIn::Query]
        .into_iter()
        .enumerate()
    {
        let (socket, selected) = connect_with_protocol(app.port, Some(&token), how, None)
            .await
            .unwrap_or_else(|e| panic!("via {how:?}: {e}"));
        match how {
            // The server selects codeedex.v1 and never echoes the token.
            TokenIn::Subprotocol => assert_eq!(selected.as_deref(), Some("codeedex.v1")),
            _ => assert_eq!(selected, None, "no subprotocol was offered via {how:?}"),
        }
        let peer_id = format!("peer-{n}");
        let (mut peer, answer) = SyncPeer::unjoined(socket, &peer_id)
            .join_with(&Message::Join {
                sender_id: peer_id.clone(),
                supported_protocol_versions: vec!["1".into()],
                peer_metadata: None,
            })
            .await
            .unwrap();
        assert!(
            matches!(answer, Received::Message(Message::Peer { .. })),
            "via {how:?}: {answer:?}"
        );
        assert!(peer.ping("not-a-document", WAIT).await.unwrap().is_empty());
    }
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn with_an_origin_allow_list_a_bad_origin_is_refused_with_403_and_the_good_one_upgrades() {
    let app =
        spawn_app_with(AppConfig::default().with("--allowed-origins", "http://good.example")).await;
    let token = token_of(&app, "ann@example.com").await;
    for bad in [
        "http://evil.example",
        "http://good.example.evil.example",
        "https://good.example",
        "null",
    ] {
        assert_eq!(
            refused(app.port, Some(&token), TokenIn::Header, Some(bad)).await,
            403,
            "origin {bad}"
        );
    }
    let socket = connect(
        app.port,
        Some(&token),
        TokenIn::Header,
        Some("http://good.example"),
    )
    .await
    .expect("the good origin upgrades");
    let (_peer, answer) = SyncPeer::unjoined(socket, "good")
        .join_with(&Message::Join {
            sender_id: "good".into(),
            supported_protocol_versions: vec!["1".into()],
            peer_metadata: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(answer, Received::Message(Message::Peer { .. })),
        "{answer:?}"
    );
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[tokio::test]
async fn join_is_answered_with_peer_version_1_the_servers_storage_id_and_our_peer_id() {
    let mut app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let peer = SyncPeer::join(
        app.port,
        &token,
        "ann-laptop",
        Some("3f0e6a3e-0000-4000-8000-000000000001"),
        &[],
    )
    .await
    .unwrap();
    let Some(Message::Peer {
        sender_id,
        target_id,
        selected_protocol_version,
        peer_metadata,
    }) = peer.peer_message.clone()
    else {
        panic!("no peer message");
    };
    assert_eq!(target_id, "ann-laptop");
    assert_eq!(selected_protocol_version, "1");
    assert!(
        !sender_id.is_empty() && sender_id != "ann-laptop",
        "the server has its own peer id: {sender_id}"
    );
    let PeerMetadata {
        storage_id,
        is_ephemeral,
        extensions,
    } = peer_metadata.expect("peer metadata");
    let storage_id = storage_id.expect("the server announces a storage id");
    assert!(
        is_uuid(&storage_id),
        "the storage id is a UUID string: {storage_id}"
    );
    assert!(!is_ephemeral);
    for ext in ["codeedex/auth-refresh", "codeedex/catch-up-request"] {
        assert!(
            extensions.iter().any(|e| e == ext),
            "{ext} is announced: {extensions:?}"
        );
    }

    // Another connection sees the same storage id, and so does one after a
    // restart: it names the server's store, not the process.
    let other = SyncPeer::join(app.port, &token, "ann-phone", None, &[])
        .await
        .unwrap();
    let storage_of = |p: &SyncPeer| match &p.peer_message {
        Some(Message::Peer {
            peer_metadata: Some(m),
            ..
        }) => m.storage_id.clone(),
        _ => None,
    };
    assert_eq!(storage_of(&other).as_deref(), Some(storage_id.as_str()));
    drop((peer, other));
    app.crash_and_restart();
    let after = SyncPeer::join(app.port, &token, "ann-laptop", None, &[])
        .await
        .unwrap();
    assert_eq!(
        storage_of(&after).as_deref(),
        Some(storage_id.as_str()),
        "the storage id survives a restart"
    );
}

#[tokio::test]
async fn a_join_offering_only_version_2_gets_an_error_and_close_1002() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let socket = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let mut peer = SyncPeer::unjoined(socket, "future");
    peer.send(&Message::Join {
        sender_id: "future".into(),
        supported_protocol_versions: vec!["2".into()],
        peer_metadata: None,
    })
    .await
    .unwrap();
    expect_error_then_close(&mut peer, 1002, WAIT).await;
    assert_eq!(peer.backlog.len(), 1, "no peer message: {:?}", peer.backlog);
}

#[tokio::test]
async fn a_first_message_that_is_not_join_gets_an_error_and_close_1002() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let socket = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let mut peer = SyncPeer::unjoined(socket, "eager");
    let id = fresh_id();
    peer.send(&request_message(&peer, &id.to_string()))
        .await
        .unwrap();
    expect_error_then_close(&mut peer, 1002, WAIT).await;
    assert_eq!(
        peer.backlog.len(),
        1,
        "nothing but the error: {:?}",
        peer.backlog
    );
}

#[tokio::test]
async fn malformed_cbor_gets_an_error_and_close_1002() {
    let app = spawn_app().await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    // A map announcing two entries that ends after one key.
    peer.send_raw(tungstenite::Message::binary(vec![
        0xa2, 0x64, b't', b'y', b'p', b'e',
    ]))
    .await
    .unwrap();
    expect_error_then_close(&mut peer, 1002, WAIT).await;

    // Before the join as well.
    let token = token_of(&app, "ann@example.com").await;
    let socket = connect(app.port, Some(&token), TokenIn::Header, None)
        .await
        .unwrap();
    let mut early = SyncPeer::unjoined(socket, "early");
    early
        .send_raw(tungstenite::Message::binary(vec![0xff, 0x00, 0x13, 0x37]))
        .await
        .unwrap();
    expect_error_then_close(&mut early, 1002, WAIT).await;
}

#[tokio::test]
async fn a_text_frame_gets_close_1003() {
    let app = spawn_app().await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    peer.send_raw(tungstenite::Message::text(r#"{"type":"request"}"#))
        .await
        .unwrap();
    assert_eq!(peer.expect_close(WAIT).await.unwrap(), Some(1003));
}

#[tokio::test]
async fn a_frame_larger_than_the_limit_gets_close_1009() {
    let app = spawn_app_with(AppConfig::default().with("--sync-max-frame-bytes", 4096)).await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    // Just under the limit: accepted (an ephemeral message about a document
    // this peer does not sync is dropped without an answer).
    let small = Message::Ephemeral {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        document_id: fresh_id().to_string(),
        count: 1,
        session_id: "s".into(),
        data: vec![0x41; 3800],
    };
    let bytes = codeedex_schema::wire::encode(&small);
    assert!(bytes.len() < 4096 && bytes.len() > 3800);
    peer.send_raw(tungstenite::Message::binary(bytes))
        .await
        .unwrap();
    assert!(peer.ping("not-a-document", WAIT).await.unwrap().is_empty());
    // Over it: closed.
    let _ = peer
        .send_raw(tungstenite::Message::binary(vec![0u8; 5000]))
        .await;
    assert_eq!(peer.expect_close(WAIT).await.unwrap(), Some(1009));
}

#[tokio::test]
async fn a_message_with_a_wrong_sender_id_is_dropped_and_the_connection_keeps_working() {
    let app = spawn_app().await;
    let _other = joined(&app, "ann@example.com", "ann-other").await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    // A request and an upload claiming to come from other peers: no answer.
    let unknown = fresh_id();
    let mut spoofed = request_message(&peer, &unknown.to_string());
    if let Message::Request { sender_id, .. } = &mut spoofed {
        *sender_id = "ann-other".into();
    }
    peer.send(&spoofed).await.unwrap();
    let upload = fresh_id();
    let mut doc = AutoCommit::new();
    put_title(&mut doc, "spoofed upload");
    let mut spoofed_upload =
        sync_message(&peer, &upload.to_string(), message_with_changes(&mut doc));
    if let Message::Sync { sender_id, .. } = &mut spoofed_upload {
        *sender_id = peer.server_peer_id.clone();
    }
    peer.send(&spoofed_upload).await.unwrap();
    assert_eq!(
        peer.ping("marker-1", WAIT).await.unwrap(),
        Vec::<Message>::new(),
        "spoofed messages get no answer"
    );

    // The connection works, and the spoofed upload did not happen.
    peer.request(upload).await.unwrap();
    match peer.next_message(WAIT).await.unwrap() {
        Message::DocUnavailable { document_id, .. } => assert_eq!(document_id, upload.to_string()),
        other => panic!("the spoofed upload was applied: {other:?}"),
    }
    let id = fresh_id();
    peer.create(id, |d| put_title(d, "real upload"));
    peer.sync_to_server(id, WAIT).await.unwrap();
}

#[tokio::test]
async fn an_unknown_message_type_is_ignored_and_the_connection_keeps_working() {
    let app = spawn_app().await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    let frame = cbor_text_map(&[
        ("type", "x-codeedex-from-the-future"),
        ("senderId", &peer.peer_id),
        ("targetId", &peer.server_peer_id),
        ("documentId", &fresh_id().to_string()),
    ]);
    peer.send_raw(tungstenite::Message::binary(frame))
        .await
        .unwrap();
    assert!(
        peer.ping("marker", WAIT).await.unwrap().is_empty(),
        "no answer to an unknown type"
    );
    let id = fresh_id();
    peer.create(id, |d| put_title(d, "still syncing"));
    peer.sync_to_server(id, WAIT).await.unwrap();
}

#[tokio::test]
async fn a_request_for_an_invalid_document_id_is_answered_doc_unavailable() {
    let app = spawn_app().await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    let valid = fresh_id().to_string();
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == '2' { '3' } else { '2' });
    for bad in [
        "not-a-document-id",
        "",
        "automerge:",
        bad_checksum.as_str(),
        &"z".repeat(300),
    ] {
        for as_sync in [false, true] {
            let message = if as_sync {
                sync_message(
                    &peer,
                    bad,
                    AutoCommit::new()
                        .sync()
                        .generate_sync_message(&mut am_sync::State::new())
                        .unwrap()
                        .encode(),
                )
            } else {
                request_message(&peer, bad)
            };
            peer.send(&message).await.unwrap();
            match peer.next_message(WAIT).await.unwrap() {
                Message::DocUnavailable {
                    document_id,
                    sender_id,
                    target_id,
                } => {
                    assert_eq!(document_id, bad);
                    assert_eq!(target_id, peer.peer_id);
                    assert_eq!(sender_id, peer.server_peer_id);
                }
                other => panic!("{bad:?} (sync: {as_sync}): {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_message_split_into_continuation_frames_larger_than_the_limit_gets_close_1009() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let app = spawn_app_with(AppConfig::default().with("--sync-max-frame-bytes", 4096)).await;
    let mut peer = joined(&app, "ann@example.com", "ann-a").await;
    let fragments = |bytes: Vec<u8>, at: usize| {
        let (first, last) = bytes.split_at(at);
        [
            Frame::message(first.to_vec(), OpCode::Data(Data::Binary), false),
            Frame::message(last.to_vec(), OpCode::Data(Data::Continue), true),
        ]
    };
    // Control: a fragmented message under the limit is put together and read.
    let small = codeedex_schema::wire::encode(&Message::Ephemeral {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        document_id: fresh_id().to_string(),
        count: 1,
        session_id: "s".into(),
        data: vec![0x41; 3000],
    });
    for frame in fragments(small, 1500) {
        peer.send_raw(tungstenite::Message::Frame(frame))
            .await
            .unwrap();
    }
    assert!(peer.ping("marker", WAIT).await.unwrap().is_empty());
    // Two frames under the limit, a message over it.
    for frame in fragments(vec![0u8; 6000], 3000) {
        let _ = peer.send_raw(tungstenite::Message::Frame(frame)).await;
    }
    assert_eq!(
        peer.expect_close(WAIT).await.unwrap(),
        Some(1009),
        "messages before: {:?}",
        peer.backlog
    );
}

#[tokio::test]
async fn a_leave_or_an_error_from_the_peer_ends_the_connection_normally() {
    let app = spawn_app().await;
    let mut leaving = joined(&app, "ann@example.com", "ann-leaving").await;
    leaving
        .send(&Message::Leave {
            sender_id: "ann-leaving".into(),
        })
        .await
        .unwrap();
    assert_eq!(leaving.expect_close(WAIT).await.unwrap(), Some(1000));
    assert!(leaving.backlog.is_empty(), "{:?}", leaving.backlog);

    // `error` is fatal: the peer is done with this connection.
    let mut failing = joined(&app, "ann@example.com", "ann-failing").await;
    failing
        .send(&Message::Error {
            message: "client gave up".into(),
        })
        .await
        .unwrap();
    // Anything after it must not be handled (the frames are handled in order).
    let _ = failing
        .send(&request_message(&failing, "after-the-error"))
        .await;
    match failing.recv(WAIT).await.unwrap() {
        Received::Closed(frame) => assert_eq!(frame.map(|(code, _)| code), Some(1000)),
        other => panic!("the server kept going after the peer's error: {other:?}"),
    }
}
