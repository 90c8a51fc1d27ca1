//! Refresh tokens: rotation on every use, the grace rule for the immediate
//! parent, reuse detection revoking the whole session, serialised concurrent
//! refreshes, generic refusals, session expiry, and durability across a crash.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codeedex_schema::api::auth::AuditKind;
use codeedex_tests::app::{AppConfig, spawn_app, spawn_app_with};
use serde_json::json;

use crate::tokens::{
    assert_holds_no_tokens, audit_events, claims_of, expect_me, expect_me_unauthorized,
    expect_problem, refresh_ok, refresh_refused, sleep_until_unix,
};

const EMAIL: &str = "rita@example.com";

#[tokio::test]
async fn a_refresh_returns_a_new_pair_and_the_old_access_token_keeps_working_until_it_expires() {
    let app = spawn_app_with(AppConfig::default().with("--access-token-ttl-secs", 2)).await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let old = signed_in.tokens;
    let old_exp = claims_of(&old.access_token)["exp"].as_i64().expect("exp");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let new = refresh_ok(&app, &old.refresh_token, "the first refresh").await;
    assert_ne!(
        new.refresh_token, old.refresh_token,
        "the refresh token is rotated"
    );
    assert_ne!(
        new.access_token, old.access_token,
        "a new access token is issued"
    );
    assert_eq!(
        new.session_id, old.session_id,
        "the pair stays on its session"
    );
    assert_eq!(new.token_type, "Bearer");
    assert_eq!(new.expires_in, 2);
    let new_exp = claims_of(&new.access_token)["exp"].as_i64().expect("exp");
    assert!(
        new_exp >= old_exp + 2,
        "the new access token has its own lifetime"
    );
    assert_eq!(
        claims_of(&new.access_token)["sid"],
        old.session_id.to_string()
    );

    // A refresh does not revoke access tokens already handed out.
    expect_me(
        &app,
        &old.access_token,
        "the old access token right after the refresh",
    )
    .await;
    expect_me(&app, &new.access_token, "the new access token").await;

    // Past its own expiry (plus the 5 s of tolerated skew) the old one ends,
    // while the newer one still works.
    sleep_until_unix(old_exp + 5, 500).await;
    expect_problem(
        app.get_as(&old.access_token, "/v1/me").await,
        401,
        "token_expired",
        "the old token after expiry",
    )
    .await;
    expect_me(
        &app,
        &new.access_token,
        "the new access token after the old one expired",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_rotation_chain_r0_r1_r2_works() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;
    let p2 = refresh_ok(&app, &p1.refresh_token, "r1 -> r2").await;
    let p3 = refresh_ok(&app, &p2.refresh_token, "r2 -> r3").await;
    let chain = [&r0, &p1.refresh_token, &p2.refresh_token, &p3.refresh_token];
    let distinct: HashSet<&String> = chain.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        chain.len(),
        "every rotation issues a new refresh token"
    );
    for token in chain {
        // Opaque, prefixed, and at least 128 random bits (here 256, base64url).
        assert!(
            token.starts_with("cdxr_"),
            "refresh tokens carry their prefix"
        );
        assert!(
            token.len() >= "cdxr_".len() + 22,
            "a refresh token has at least 128 bits"
        );
        assert_eq!(token.split('.').count(), 1, "a refresh token is not a JWT");
    }
    for pair in [&p1, &p2, &p3] {
        assert_eq!(pair.session_id, signed_in.tokens.session_id);
        let me = expect_me(&app, &pair.access_token, "an access token from the chain").await;
        assert_eq!(me["id"], signed_in.user.id.to_string());
    }
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn reusing_an_older_refresh_token_revokes_the_whole_session() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let other_device = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;
    let p2 = refresh_ok(&app, &p1.refresh_token, "r1 -> r2").await;
    expect_me(
        &app,
        &p2.access_token,
        "the newest access token before the reuse",
    )
    .await;

    // r0 is two generations old: no grace applies, even within 10 s.
    refresh_refused(&app, &r0, "r0 replayed after r1 and r2").await;

    // The whole session is gone: the current refresh token, its parent, and
    // every access token of the session, at once.
    refresh_refused(&app, &p2.refresh_token, "r2 after the reuse was detected").await;
    refresh_refused(&app, &p1.refresh_token, "r1 after the reuse was detected").await;
    expect_me_unauthorized(
        &app,
        &p2.access_token,
        "the newest access token after the reuse",
    )
    .await;
    expect_me_unauthorized(
        &app,
        &signed_in.tokens.access_token,
        "the first access token after the reuse",
    )
    .await;

    // Only that session: the user's other device is untouched.
    expect_me(
        &app,
        &other_device.tokens.access_token,
        "another session of the same user",
    )
    .await;
    refresh_ok(
        &app,
        &other_device.tokens.refresh_token,
        "another session of the same user",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_immediate_parent_within_the_grace_window_returns_the_current_pair() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;

    // The client lost the answer and retries with r0 within 10 s.
    let retry = refresh_ok(&app, &r0, "r0 again within the grace window").await;
    assert_eq!(
        retry.refresh_token, p1.refresh_token,
        "the retry gets the current refresh token, not a new one"
    );
    assert_eq!(retry.session_id, p1.session_id);
    expect_me(&app, &retry.access_token, "the access token of the retry").await;
    let again = refresh_ok(&app, &r0, "r0 a third time within the grace window").await;
    assert_eq!(again.refresh_token, p1.refresh_token);

    // Nothing was revoked: every access token works and the chain continues.
    expect_me(
        &app,
        &p1.access_token,
        "the access token of the first refresh",
    )
    .await;
    expect_me(
        &app,
        &signed_in.tokens.access_token,
        "the sign-in access token",
    )
    .await;
    let p2 = refresh_ok(&app, &p1.refresh_token, "r1 -> r2 after the grace retries").await;
    assert_ne!(p2.refresh_token, p1.refresh_token);
    refresh_ok(&app, &p2.refresh_token, "r2 -> r3").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_immediate_parent_after_the_grace_window_revokes_the_session() {
    let app = spawn_app_with(AppConfig::default().with("--refresh-grace-secs", 1)).await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    refresh_refused(&app, &r0, "r0 two seconds after the rotation, grace 1 s").await;
    refresh_refused(&app, &p1.refresh_token, "r1 after the reuse was detected").await;
    expect_me_unauthorized(
        &app,
        &p1.access_token,
        "the session's access token after the reuse",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn ten_parallel_refreshes_with_one_token_rotate_exactly_once() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let url = format!("{}/v1/auth/refresh", app.address);
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, url, token, start) = (
            app.client.clone(),
            url.clone(),
            r0.clone(),
            Arc::clone(&start),
        );
        tasks.spawn(async move {
            start.wait().await;
            let response = client
                .post(url)
                .json(&json!({ "refresh_token": token }))
                .send()
                .await
                .expect("the server answers");
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        });
    }
    let mut refresh_tokens = HashSet::new();
    let mut last_access = String::new();
    for (status, body) in tasks.join_all().await {
        assert_eq!(status, 200, "every parallel refresh succeeds: {body}");
        let pair: codeedex_schema::api::auth::TokenPair =
            serde_json::from_str(&body).expect("a token pair");
        app.remember_tokens(&pair);
        assert_eq!(pair.session_id, signed_in.tokens.session_id);
        refresh_tokens.insert(pair.refresh_token);
        last_access = pair.access_token;
    }
    assert_eq!(
        refresh_tokens.len(),
        1,
        "all ten got the same new refresh token"
    );
    let r1 = refresh_tokens.into_iter().next().expect("one token");
    assert_ne!(r1, r0);
    expect_me(
        &app,
        &last_access,
        "an access token from the parallel refreshes",
    )
    .await;

    // Exactly one rotation happened: the chain continues from r1, and the
    // audit trail shows one refresh.
    let (events, _) = audit_events(&app, &last_access).await;
    let refreshes = events
        .iter()
        .filter(|e| e.kind == AuditKind::Refresh)
        .count();
    assert_eq!(
        refreshes, 1,
        "ten parallel refreshes are one rotation: {events:?}"
    );
    let p2 = refresh_ok(&app, &r1, "r1 -> r2 after the parallel refreshes").await;
    assert_ne!(p2.refresh_token, r1, "the next refresh rotates again");
    let p3 = refresh_ok(&app, &p2.refresh_token, "r2 -> r3").await;
    expect_me(
        &app,
        &p3.access_token,
        "the access token at the end of the chain",
    )
    .await;
    let (events, _) = audit_events(&app, &p3.access_token).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == AuditKind::Refresh)
            .count(),
        3
    );
    assert!(
        !events.iter().any(|e| e.kind == AuditKind::ReuseDetected),
        "no reuse was detected: {events:?}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn garbage_refresh_tokens_get_one_generic_answer() {
    let app = spawn_app().await;
    let a = app.sign_in_email(EMAIL).await;
    let b = app.sign_in_email(EMAIL).await;
    let r0 = a.tokens.refresh_token.clone();
    let reference = refresh_refused(
        &app,
        "cdxr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "an unknown token",
    )
    .await;
    assert_eq!(reference["status"], 401);

    let mut last_char_changed = r0.clone();
    let last = last_char_changed.pop().expect("a character");
    last_char_changed.push(if last == 'A' { 'B' } else { 'A' });
    let cases = [
        (String::new(), "an empty token"),
        ("garbage".to_owned(), "a random word"),
        ("cdxr_".to_owned(), "the prefix alone"),
        (format!("cdxr_{}", "A".repeat(10 * 1024)), "a 10 KB token"),
        (
            last_char_changed,
            "the genuine token with its last character changed",
        ),
        (
            r0.replacen("cdxr_", "cdxx_", 1),
            "the genuine token with a wrong prefix",
        ),
        (
            r0["cdxr_".len()..].to_owned(),
            "the genuine token without its prefix",
        ),
        (r0.to_uppercase(), "the genuine token in upper case"),
        (a.tokens.access_token.clone(), "an access token"),
    ];
    for (token, case) in cases {
        let body = refresh_refused(&app, &token, case).await;
        assert_eq!(body, reference, "{case}: the generic answer");
    }
    // None of that disturbed the genuine session.
    let a1 = refresh_ok(&app, &r0, "the genuine token after the garbage").await;

    // A revoked token gets the same answer as an unknown one.
    let response = app
        .post_json_as(&b.tokens.access_token, "/v1/auth/logout", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let revoked = refresh_refused(
        &app,
        &b.tokens.refresh_token,
        "the refresh token of a logged-out session",
    )
    .await;
    assert_eq!(
        revoked, reference,
        "revoked and unknown tokens get the same body"
    );

    // And so does a reused one.
    let a2 = refresh_ok(&app, &a1.refresh_token, "r1 -> r2").await;
    let reused = refresh_refused(&app, &r0, "r0 replayed after two rotations").await;
    assert_eq!(
        reused, reference,
        "reused and unknown tokens get the same body"
    );
    refresh_refused(&app, &a2.refresh_token, "r2 after the reuse").await;

    // A body that is not a refresh request at all is a 400, not a 401.
    let response = app
        .post_json("/v1/auth/refresh", &json!({ "refresh_token": 42 }))
        .await;
    expect_problem(
        response,
        400,
        "invalid_request",
        "a number as refresh token",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_session_idle_for_longer_than_the_limit_cannot_refresh() {
    let app = spawn_app_with(AppConfig::default().with("--session-idle-secs", 2)).await;
    let signed_in = app.sign_in_email(EMAIL).await;

    // Using the session keeps it alive: 2.4 s after sign-in, but never 2 s idle.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p1 = refresh_ok(
        &app,
        &signed_in.tokens.refresh_token,
        "a refresh 1.2 s after sign-in",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let p2 = refresh_ok(
        &app,
        &p1.refresh_token,
        "a refresh 1.2 s after the last one",
    )
    .await;
    expect_me(&app, &p2.access_token, "the session while it is used").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    // The access token itself has 15 minutes left, but its session has ended.
    expect_me_unauthorized(
        &app,
        &p2.access_token,
        "an access token of an idle-expired session",
    )
    .await;
    refresh_refused(
        &app,
        &p2.refresh_token,
        "a refresh after 3 s idle, limit 2 s",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_refreshes() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--session-max-secs", 3)
            .with("--session-idle-secs", 2),
    )
    .await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let start = Instant::now();
    let mut pair = signed_in.tokens.clone();
    for second in 1..=2u64 {
        tokio::time::sleep_until((start + Duration::from_secs(second)).into()).await;
        pair = refresh_ok(
            &app,
            &pair.refresh_token,
            &format!("a refresh {second} s after sign-in"),
        )
        .await;
        expect_me(&app, &pair.access_token, "the session within its lifetime").await;
    }
    // 3.3 s after sign-in the session is past its 3 s lifetime, though it was
    // used 1.3 s ago (less than the 2 s idle limit).
    tokio::time::sleep_until((start + Duration::from_millis(3300)).into()).await;
    expect_me_unauthorized(
        &app,
        &pair.access_token,
        "an access token past the session's lifetime",
    )
    .await;
    refresh_refused(
        &app,
        &pair.refresh_token,
        "a refresh past the session's lifetime",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_refresh_survives_a_server_crash() {
    let mut app = spawn_app().await;
    let signed_in = app.sign_in_email(EMAIL).await;
    let r0 = signed_in.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1 before the crash").await;

    app.crash_and_restart();
    // The client's pooled keep-alive connection went down with the old
    // process; a fresh client does not stumble over it.
    app.client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");

    // The signing key and the rotation were on disk before the answer.
    expect_me(
        &app,
        &p1.access_token,
        "the access token issued before the crash",
    )
    .await;
    let p2 = refresh_ok(&app, &p1.refresh_token, "r1 -> r2 after the crash").await;
    assert_ne!(p2.refresh_token, p1.refresh_token);
    expect_me(
        &app,
        &p2.access_token,
        "the access token issued after the crash",
    )
    .await;

    // r0 is now two generations old: reuse, and the session is revoked.
    refresh_refused(&app, &r0, "r0 after the crash and a further rotation").await;
    refresh_refused(&app, &p2.refresh_token, "r2 after the reuse was detected").await;
    expect_me_unauthorized(&app, &p2.access_token, "the access token after the reuse").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_audit_trail_records_refresh_and_reuse_without_tokens() {
    let app = spawn_app().await;
    let victim = app.sign_in_email(EMAIL).await;
    let observer = app.sign_in_email(EMAIL).await;
    let r0 = victim.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;
    let p2 = refresh_ok(&app, &p1.refresh_token, "r1 -> r2").await;
    refresh_refused(&app, &r0, "r0 replayed").await;

    let (events, raw) = audit_events(&app, &observer.tokens.access_token).await;
    let of_victim = |kind: AuditKind| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.session_id == Some(victim.tokens.session_id))
            .count()
    };
    assert_eq!(of_victim(AuditKind::Login), 1, "{events:?}");
    assert_eq!(of_victim(AuditKind::Refresh), 2, "{events:?}");
    assert_eq!(of_victim(AuditKind::ReuseDetected), 1, "{events:?}");
    for event in events
        .iter()
        .filter(|e| e.kind == AuditKind::ReuseDetected || e.kind == AuditKind::Refresh)
    {
        assert_eq!(
            event.ip.as_deref(),
            Some("127.0.0.1"),
            "the event names the client address: {event:?}"
        );
    }
    let secrets = [
        r0.as_str(),
        &p1.refresh_token,
        &p2.refresh_token,
        &victim.tokens.access_token,
        &p1.access_token,
        &p2.access_token,
        &observer.tokens.access_token,
        &observer.tokens.refresh_token,
    ];
    assert_holds_no_tokens(&raw, &secrets, "the audit trail");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_detected_reuse_is_still_in_the_audit_trail_after_a_crash() {
    let mut app = spawn_app().await;
    let observer = app.sign_in_email(EMAIL).await;
    let victim = app.sign_in_email(EMAIL).await;
    let r0 = victim.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;
    refresh_ok(&app, &p1.refresh_token, "r1 -> r2").await;
    refresh_refused(&app, &r0, "r0 replayed").await;

    // The server answered; now it dies before anything else happens.
    app.crash_and_restart();
    app.client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");

    let (events, _) = audit_events(&app, &observer.tokens.access_token).await;
    let of_victim = |kind: AuditKind| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.session_id == Some(victim.tokens.session_id))
            .count()
    };
    assert_eq!(of_victim(AuditKind::Login), 1, "{events:?}");
    assert_eq!(of_victim(AuditKind::Refresh), 2, "{events:?}");
    assert_eq!(
        of_victim(AuditKind::ReuseDetected),
        1,
        "a reuse the server answered before the crash must be in the audit trail: {events:?}"
    );
    app.assert_no_secrets_in_logs();
}
