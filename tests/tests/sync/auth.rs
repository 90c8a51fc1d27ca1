//! Authentication while the socket is open: expiry, in-place refresh,
//! logout, revocation, refresh-token reuse.

use chrono::Utc;
use codeedex_schema::api::auth::{SignInResponse, TokenPair};
use codeedex_schema::wire::message_type::AUTH_REFRESH;
use codeedex_tests::app::{AppConfig, spawn_app_with};
use codeedex_tests::sync_peer::{TokenIn, connect, refused_status};
use serde_json::json;

use super::*;

async fn refreshed(app: &TestApp, refresh_token: &str) -> TokenPair {
    let response = app.refresh(refresh_token).await;
    assert_eq!(response.status(), 200, "refresh failed");
    let pair: TokenPair = response.json().await.unwrap();
    app.remember_tokens(&pair);
    pair
}

fn auth_refresh(peer: &SyncPeer, access_token: &str) -> Message {
    Message::AuthRefresh {
        sender_id: peer.peer_id.clone(),
        target_id: peer.server_peer_id.clone(),
        access_token: access_token.to_owned(),
    }
}

async fn device(
    app: &TestApp,
    signed_in: &SignInResponse,
    peer_id: &str,
    extensions: &[&str],
) -> SyncPeer {
    SyncPeer::join(
        app.port,
        &signed_in.tokens.access_token,
        peer_id,
        Some(&format!("storage-{peer_id}")),
        extensions,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_expired_access_token_closes_a_socket_without_the_refresh_extension_with_4001() {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 2)).await;
    let ann = app.sign_in_email("ann@example.com").await;
    let expires_at = ann.tokens.expires_at;
    let mut peer = device(&app, &ann, "ann-a", &[]).await;
    assert!(peer.ping("marker", WAIT).await.unwrap().is_empty());
    // An in-place refresh from a peer that did not announce it is ignored.
    let pair = refreshed(&app, &ann.tokens.refresh_token).await;
    peer.send(&auth_refresh(&peer, &pair.access_token))
        .await
        .unwrap();
    let answers = peer.ping("marker-2", WAIT).await.unwrap();
    assert!(
        answers.is_empty(),
        "a peer without the extension was answered: {answers:?}"
    );

    // The socket lives as long as the token would be accepted for a new
    // upgrade: its expiry plus the server's clock-skew leeway (5 s).
    expect_error_then_close(&mut peer, 4001, Duration::from_secs(11)).await;
    let now = Utc::now();
    let leeway = chrono::Duration::seconds(5);
    assert!(
        now.timestamp() >= (expires_at + leeway).timestamp(),
        "closed at {now}, before the expiry {expires_at} plus the leeway"
    );
    assert!(
        now < expires_at + leeway + chrono::Duration::milliseconds(2500),
        "closed at {now}, long after the expiry {expires_at} plus the leeway"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_socket_that_refreshes_its_token_in_place_stays_open_past_the_old_expiry_and_keeps_syncing()
 {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 2)).await;
    let ann = app.sign_in_email("ann@example.com").await;
    let old_expiry = ann.tokens.expires_at;
    let mut peer = device(&app, &ann, "ann-a", &[AUTH_REFRESH]).await;
    let mut other = device(
        &app,
        &app.sign_in_email("ann@example.com").await,
        "ann-b",
        &[AUTH_REFRESH],
    )
    .await;
    let id = fresh_id();
    peer.create(id, |d| task(d, "refreshing", ""));
    peer.sync_to_server(id, WAIT).await.unwrap();

    let mut refresh_token = ann.tokens.refresh_token.clone();
    let mut last_expiry = old_expiry;
    let mut n = 0;
    while Utc::now() < old_expiry + chrono::Duration::milliseconds(1500) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pair = refreshed(&app, &refresh_token).await;
        refresh_token = pair.refresh_token.clone();
        peer.send(&auth_refresh(&peer, &pair.access_token))
            .await
            .unwrap();
        match peer.next_non_sync(WAIT).await.unwrap() {
            Message::AuthAccepted {
                expires_at,
                target_id,
                sender_id,
            } => {
                assert_eq!(expires_at, pair.expires_at.timestamp());
                assert_eq!(target_id, peer.peer_id);
                assert_eq!(sender_id, peer.server_peer_id);
            }
            other => panic!("expected auth-accepted, got {other:?}"),
        }
        last_expiry = pair.expires_at;
        peer.change(id, |d| append_text(d, "notes", &n.to_string()));
        peer.sync_to_server(id, WAIT).await.unwrap();
        n += 1;
    }
    assert!(
        Utc::now() > old_expiry + chrono::Duration::seconds(1),
        "the loop ran past the old expiry"
    );
    assert!(n >= 3, "refreshed {n} times");

    // The other device, which did not refresh, was closed at its expiry, and
    // the refreshing one got every edit through.
    assert_eq!(
        other
            .expect_close(Duration::from_secs(8))
            .await
            .ok()
            .flatten(),
        Some(4001)
    );
    let token = token_of(&app, "ann@example.com").await;
    let mut check = SyncPeer::join(app.port, &token, "ann-check", None, &[])
        .await
        .unwrap();
    check.request(id).await.unwrap();
    let expected: String = (0..n).map(|i| i.to_string()).collect();
    check
        .sync_until(id, WAIT, |d| {
            read_string(d, "notes").as_deref() == Some(expected.as_str())
        })
        .await
        .unwrap();

    // Once it stops refreshing, the last token expires too.
    expect_error_then_close(&mut peer, 4001, Duration::from_secs(6)).await;
    assert!(
        Utc::now().timestamp() >= last_expiry.timestamp(),
        "closed before the refreshed token expired"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_in_place_refresh_with_another_users_token_or_garbage_closes_the_socket_with_4001() {
    let app = spawn_app().await;
    let ann = app.sign_in_email("ann@example.com").await;
    let bob = app.sign_in_email("bob@example.com").await;
    let mut peer = device(&app, &ann, "ann-a", &[AUTH_REFRESH]).await;
    peer.send(&auth_refresh(&peer, &bob.tokens.access_token))
        .await
        .unwrap();
    expect_error_then_close(&mut peer, 4001, WAIT).await;
    assert!(
        !peer
            .backlog
            .iter()
            .any(|m| matches!(m, Message::AuthAccepted { .. })),
        "{:?}",
        peer.backlog
    );

    let mut peer = device(&app, &ann, "ann-b", &[AUTH_REFRESH]).await;
    peer.send(&auth_refresh(&peer, "garbage")).await.unwrap();
    expect_error_then_close(&mut peer, 4001, WAIT).await;
}

#[tokio::test]
async fn logout_closes_that_sessions_socket_with_4003_within_a_second() {
    let app = spawn_app().await;
    let first = app.sign_in_email("ann@example.com").await;
    let second = app.sign_in_email("ann@example.com").await;
    let mut a = device(&app, &first, "ann-a", &[]).await;
    let mut b = device(&app, &second, "ann-b", &[]).await;
    let response = app
        .post_json_as(&first.tokens.access_token, "/v1/auth/logout", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    expect_error_then_close(&mut a, 4003, Duration::from_secs(1)).await;
    // The other session's socket stays.
    assert!(b.open_after_pending(WAIT).await);
    assert!(b.backlog.is_empty(), "{:?}", b.backlog);
    let err = connect(
        app.port,
        Some(&first.tokens.access_token),
        TokenIn::Header,
        None,
    )
    .await
    .expect_err("logged out");
    assert_eq!(refused_status(&err), Some(401));
}

#[tokio::test]
async fn revoking_a_session_from_another_device_closes_its_socket_with_4003_within_a_second() {
    let app = spawn_app().await;
    let first = app.sign_in_email("ann@example.com").await;
    let second = app.sign_in_email("ann@example.com").await;
    let mut a = device(&app, &first, "ann-a", &[]).await;
    let mut b = device(&app, &second, "ann-b", &[]).await;
    let response = app
        .client
        .delete(format!(
            "{}/v1/sessions/{}",
            app.address, first.tokens.session_id
        ))
        .bearer_auth(&second.tokens.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    expect_error_then_close(&mut a, 4003, Duration::from_secs(1)).await;
    assert!(b.open_after_pending(WAIT).await);
    assert!(b.backlog.is_empty(), "{:?}", b.backlog);
}

#[tokio::test]
async fn refresh_token_reuse_detection_closes_the_sessions_socket() {
    let app = spawn_app().await;
    let first = app.sign_in_email("ann@example.com").await;
    let second = app.sign_in_email("ann@example.com").await;
    let mut a = device(&app, &first, "ann-a", &[]).await;
    let mut b = device(&app, &second, "ann-b", &[]).await;
    let p1 = refreshed(&app, &first.tokens.refresh_token).await;
    let _p2 = refreshed(&app, &p1.refresh_token).await;
    assert!(
        a.ping("still-fine", WAIT).await.unwrap().is_empty(),
        "rotation alone closes nothing"
    );
    // The original refresh token again: reuse, and the session is revoked.
    assert_eq!(app.refresh(&first.tokens.refresh_token).await.status(), 401);
    expect_error_then_close(&mut a, 4003, Duration::from_secs(1)).await;
    assert!(b.open_after_pending(WAIT).await);
    assert!(b.backlog.is_empty(), "{:?}", b.backlog);
}

#[tokio::test]
async fn logging_out_the_other_sessions_closes_their_sockets_and_keeps_this_one() {
    let app = spawn_app().await;
    let this = app.sign_in_email("ann@example.com").await;
    let other = app.sign_in_email("ann@example.com").await;
    let third = app.sign_in_email("ann@example.com").await;
    let mut mine = device(&app, &this, "ann-mine", &[]).await;
    let mut b = device(&app, &other, "ann-b", &[]).await;
    let mut c = device(&app, &third, "ann-c", &[]).await;
    let response = app
        .post_json_as(
            &this.tokens.access_token,
            "/v1/auth/logout",
            &json!({"scope": "others"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    expect_error_then_close(&mut b, 4003, Duration::from_secs(1)).await;
    expect_error_then_close(&mut c, 4003, Duration::from_secs(1)).await;
    assert!(mine.open_after_pending(WAIT).await);
    assert!(mine.backlog.is_empty(), "{:?}", mine.backlog);
}
