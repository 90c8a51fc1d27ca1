//! Sessions: the list of signed-in devices, revoking one device, the three
//! logout scopes, and the audit trail of those actions.

use std::collections::HashSet;
use std::time::Duration;

use codeedex_schema::api::auth::{AuditKind, LogoutResponse, SessionList, SignInResponse};
use codeedex_schema::id::SessionId;
use codeedex_tests::app::{TestApp, spawn_app};
use reqwest::header::USER_AGENT;
use serde_json::{Value, json};

use crate::tokens::{
    assert_holds_no_tokens, audit_events, expect_me, expect_me_unauthorized, expect_problem,
    now_secs, refresh_ok, refresh_refused,
};

const ANN: &str = "ann@example.com";
const BOB: &str = "bob@example.com";

/// Signs in by email with a device name and a User-Agent.
async fn sign_in_device(
    app: &TestApp,
    email: &str,
    device: Option<&str>,
    user_agent: &str,
) -> SignInResponse {
    let response = app.request_email_code(email).await;
    assert_eq!(
        response.status(),
        202,
        "code request: {}",
        response.text().await.unwrap_or_default()
    );
    let code = app.next_email_code(email).await;
    let mut body = json!({ "email": email, "code": code });
    if let Some(device) = device {
        body["device_name"] = json!(device);
    }
    let response = app
        .client
        .post(format!("{}/v1/auth/verify", app.address))
        .header(USER_AGENT, user_agent)
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    app.expect_signed_in(response).await
}

async fn device(app: &TestApp, email: &str, name: &str) -> SignInResponse {
    sign_in_device(app, email, Some(name), &format!("CodeeDex-{name}/1.0")).await
}

async fn sessions(app: &TestApp, access_token: &str) -> SessionList {
    let response = app.get_as(access_token, "/v1/sessions").await;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "session list: {text}");
    serde_json::from_str(&text).expect("a session list")
}

fn ids(list: &SessionList) -> HashSet<SessionId> {
    list.sessions.iter().map(|s| s.id).collect()
}

async fn delete_session(app: &TestApp, access_token: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(format!("{}/v1/sessions/{id}", app.address))
        .bearer_auth(access_token)
        .header(USER_AGENT, "CodeeDex-Revoker/1.0")
        .send()
        .await
        .expect("the server answers")
}

async fn logout(app: &TestApp, access_token: &str, body: Value) -> usize {
    let response = app
        .post_json_as(access_token, "/v1/auth/logout", &body)
        .await;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "logout {body}: {text}");
    serde_json::from_str::<LogoutResponse>(&text)
        .expect("a logout answer")
        .sessions_ended
}

/// The session is over: its access token and its refresh token are refused.
async fn assert_ended(app: &TestApp, signed_in: &SignInResponse, case: &str) {
    expect_me_unauthorized(app, &signed_in.tokens.access_token, case).await;
    refresh_refused(app, &signed_in.tokens.refresh_token, case).await;
}

/// The session still works, for requests and for one refresh.
async fn assert_alive(app: &TestApp, signed_in: &SignInResponse, case: &str) {
    expect_me(app, &signed_in.tokens.access_token, case).await;
    refresh_ok(app, &signed_in.tokens.refresh_token, case).await;
}

#[tokio::test]
async fn the_session_list_names_each_device_and_marks_only_the_callers_as_current() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    let unnamed = sign_in_device(&app, ANN, None, "curl/8.0").await;
    let all: HashSet<SessionId> = [
        laptop.tokens.session_id,
        phone.tokens.session_id,
        unnamed.tokens.session_id,
    ]
    .into_iter()
    .collect();
    assert_eq!(all.len(), 3, "each sign-in is its own session");

    for (caller, name) in [
        (&laptop, "laptop"),
        (&phone, "phone"),
        (&unnamed, "unnamed"),
    ] {
        let list = sessions(&app, &caller.tokens.access_token).await;
        assert_eq!(
            ids(&list),
            all,
            "{name} sees all three sessions of the user"
        );
        let current: Vec<SessionId> = list
            .sessions
            .iter()
            .filter(|s| s.current)
            .map(|s| s.id)
            .collect();
        assert_eq!(
            current,
            vec![caller.tokens.session_id],
            "only the caller's session is current, asked by {name}"
        );
        for session in &list.sessions {
            let expected_name = if session.id == laptop.tokens.session_id {
                Some("Laptop")
            } else if session.id == phone.tokens.session_id {
                Some("Phone")
            } else {
                None
            };
            assert_eq!(session.device_name.as_deref(), expected_name);
            assert!(session.created_at <= session.last_used_at);
            assert!(
                session.expires_at.timestamp() > now_secs() + 29 * 24 * 3600,
                "idle limit 30 days"
            );
        }
        let created: Vec<_> = list.sessions.iter().map(|s| s.created_at).collect();
        assert!(
            created.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {created:?}"
        );
    }

    // A refresh is a use: last_used_at moves, created_at does not.
    let before = sessions(&app, &laptop.tokens.access_token).await;
    let phone_before = before
        .sessions
        .iter()
        .find(|s| s.id == phone.tokens.session_id)
        .expect("phone")
        .clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refresh_ok(&app, &phone.tokens.refresh_token, "the phone refreshes").await;
    let after = sessions(&app, &laptop.tokens.access_token).await;
    let phone_after = after
        .sessions
        .iter()
        .find(|s| s.id == phone.tokens.session_id)
        .expect("phone");
    assert_eq!(phone_after.created_at, phone_before.created_at);
    assert!(
        (phone_after.last_used_at - phone_before.last_used_at).num_milliseconds() >= 1000,
        "{phone_after:?}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn another_user_never_sees_someone_elses_sessions() {
    let app = spawn_app().await;
    let ann_laptop = device(&app, ANN, "Laptop").await;
    let ann_phone = device(&app, ANN, "Phone").await;
    let bob = device(&app, BOB, "Bobs-Laptop").await;

    let bobs = sessions(&app, &bob.tokens.access_token).await;
    assert_eq!(
        ids(&bobs),
        HashSet::from([bob.tokens.session_id]),
        "Bob sees only his own session"
    );
    assert!(bobs.sessions[0].current);
    let anns = sessions(&app, &ann_laptop.tokens.access_token).await;
    assert_eq!(
        ids(&anns),
        HashSet::from([ann_laptop.tokens.session_id, ann_phone.tokens.session_id])
    );

    // Nor the audit trail.
    let (events, _) = audit_events(&app, &bob.tokens.access_token).await;
    assert!(
        events
            .iter()
            .all(|e| e.session_id.is_none() || e.session_id == Some(bob.tokens.session_id)),
        "Bob's audit trail mentions only his session: {events:?}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn revoking_another_device_signs_it_out_at_once() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    // The phone has refreshed once; its current refresh token is the rotated one.
    let phone_pair = refresh_ok(&app, &phone.tokens.refresh_token, "the phone refreshes").await;

    let response = delete_session(
        &app,
        &laptop.tokens.access_token,
        &phone.tokens.session_id.to_string(),
    )
    .await;
    assert_eq!(
        response.status(),
        204,
        "revoke: {}",
        response.text().await.unwrap_or_default()
    );

    expect_me_unauthorized(
        &app,
        &phone.tokens.access_token,
        "the phone's first access token",
    )
    .await;
    expect_me_unauthorized(
        &app,
        &phone_pair.access_token,
        "the phone's newest access token",
    )
    .await;
    refresh_refused(
        &app,
        &phone_pair.refresh_token,
        "the phone's current refresh token",
    )
    .await;
    refresh_refused(
        &app,
        &phone.tokens.refresh_token,
        "the phone's previous refresh token, within grace",
    )
    .await;

    assert_alive(&app, &laptop, "the laptop that revoked the phone").await;
    let list = sessions(&app, &laptop.tokens.access_token).await;
    assert_eq!(ids(&list), HashSet::from([laptop.tokens.session_id]));
    let again = delete_session(
        &app,
        &laptop.tokens.access_token,
        &phone.tokens.session_id.to_string(),
    )
    .await;
    expect_problem(again, 404, "not_found", "revoking the same session twice").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn revoking_someone_elses_or_an_unknown_session_answers_404_and_leaves_it_alive() {
    let app = spawn_app().await;
    let ann = device(&app, ANN, "Laptop").await;
    let bob = device(&app, BOB, "Phone").await;

    let foreign = delete_session(
        &app,
        &ann.tokens.access_token,
        &bob.tokens.session_id.to_string(),
    )
    .await;
    let foreign = expect_problem(foreign, 404, "not_found", "Bob's session, asked by Ann").await;
    let unknown = delete_session(
        &app,
        &ann.tokens.access_token,
        "3b241101-e2bb-4255-8caf-4136c566a962",
    )
    .await;
    let unknown = expect_problem(unknown, 404, "not_found", "a random session id").await;
    assert_eq!(
        foreign, unknown,
        "someone else's session and a missing one get the same answer"
    );

    assert_alive(&app, &bob, "Bob's session after Ann tried to revoke it").await;
    assert_alive(&app, &ann, "Ann's session").await;
    let bobs = sessions(&app, &bob.tokens.access_token).await;
    assert_eq!(ids(&bobs), HashSet::from([bob.tokens.session_id]));
    let (events, _) = audit_events(&app, &ann.tokens.access_token).await;
    assert!(
        !events.iter().any(|e| e.kind == AuditKind::SessionRevoked),
        "nothing was revoked: {events:?}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_malformed_session_id_answers_404() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    let long = "x".repeat(300);
    for id in [
        "not-a-uuid",
        "123",
        "3b241101-e2bb-4255-8caf-4136c566a96",
        "3b241101-e2bb-4255-8caf-4136c566a962-00",
        "%27%20OR%201%3D1%20--",
        "..%2F..%2Fsecrets",
        "%00",
        long.as_str(),
    ] {
        let response = delete_session(&app, &laptop.tokens.access_token, id).await;
        expect_problem(
            response,
            404,
            "not_found",
            &format!("DELETE /v1/sessions/{id}"),
        )
        .await;
    }
    let list = sessions(&app, &laptop.tokens.access_token).await;
    assert_eq!(
        ids(&list),
        HashSet::from([laptop.tokens.session_id, phone.tokens.session_id]),
        "nothing was revoked"
    );
    assert_alive(&app, &phone, "the phone after the malformed requests").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn logout_with_scope_this_ends_only_this_session() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    let bob = device(&app, BOB, "Phone").await;

    assert_eq!(
        logout(
            &app,
            &laptop.tokens.access_token,
            json!({ "scope": "this" })
        )
        .await,
        1
    );
    assert_ended(&app, &laptop, "the laptop after logging itself out").await;
    assert_alive(&app, &phone, "the user's phone").await;
    assert_alive(&app, &bob, "another user").await;
    let list = sessions(&app, &phone.tokens.access_token).await;
    assert_eq!(ids(&list), HashSet::from([phone.tokens.session_id]));
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn logout_with_scope_others_keeps_this_session_and_ends_the_rest() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    let tablet = device(&app, ANN, "Tablet").await;
    let bob = device(&app, BOB, "Phone").await;

    assert_eq!(
        logout(
            &app,
            &laptop.tokens.access_token,
            json!({ "scope": "others" })
        )
        .await,
        2
    );
    assert_ended(&app, &phone, "the phone after 'others'").await;
    assert_ended(&app, &tablet, "the tablet after 'others'").await;
    assert_alive(&app, &laptop, "the laptop that logged the others out").await;
    assert_alive(&app, &bob, "another user").await;
    let list = sessions(&app, &laptop.tokens.access_token).await;
    assert_eq!(ids(&list), HashSet::from([laptop.tokens.session_id]));
    assert!(list.sessions[0].current);
    // Nothing left to end.
    assert_eq!(
        logout(
            &app,
            &laptop.tokens.access_token,
            json!({ "scope": "others" })
        )
        .await,
        0
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn logout_with_scope_all_ends_every_session_of_the_user() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;
    let tablet = device(&app, ANN, "Tablet").await;
    let bob = device(&app, BOB, "Phone").await;

    assert_eq!(
        logout(&app, &phone.tokens.access_token, json!({ "scope": "all" })).await,
        3
    );
    for (session, name) in [(&laptop, "laptop"), (&phone, "phone"), (&tablet, "tablet")] {
        assert_ended(&app, session, &format!("the {name} after 'all'")).await;
    }
    assert_alive(&app, &bob, "another user").await;
    let response = app
        .post_json_as(
            &phone.tokens.access_token,
            "/v1/auth/logout",
            &json!({ "scope": "all" }),
        )
        .await;
    expect_problem(
        response,
        401,
        "unauthorized",
        "logging out again with an ended session",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn logout_without_a_scope_ends_only_this_session() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let phone = device(&app, ANN, "Phone").await;

    assert_eq!(
        logout(&app, &laptop.tokens.access_token, json!({})).await,
        1
    );
    assert_ended(&app, &laptop, "the laptop after a logout without scope").await;
    assert_alive(
        &app,
        &phone,
        "the phone after the laptop's logout without scope",
    )
    .await;

    let response = app
        .post_json_as(
            &phone.tokens.access_token,
            "/v1/auth/logout",
            &json!({ "scope": "everyone" }),
        )
        .await;
    expect_problem(response, 400, "invalid_request", "an unknown scope").await;
    assert_alive(
        &app,
        &phone,
        "the phone after a logout with an unknown scope",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn after_logout_the_refresh_token_is_refused() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let r0 = laptop.tokens.refresh_token.clone();
    let p1 = refresh_ok(&app, &r0, "r0 -> r1").await;

    assert_eq!(
        logout(&app, &p1.access_token, json!({ "scope": "this" })).await,
        1
    );
    refresh_refused(
        &app,
        &p1.refresh_token,
        "the current refresh token after logout",
    )
    .await;
    // The grace rule would hand r0's holder the current pair; not after logout.
    refresh_refused(
        &app,
        &r0,
        "the parent refresh token, within grace, after logout",
    )
    .await;
    expect_me_unauthorized(&app, &p1.access_token, "the access token after logout").await;
    expect_me_unauthorized(
        &app,
        &laptop.tokens.access_token,
        "the first access token after logout",
    )
    .await;

    // A new sign-in is a new session; the old tokens stay dead.
    let again = device(&app, ANN, "Laptop").await;
    assert_ne!(again.tokens.session_id, laptop.tokens.session_id);
    refresh_refused(
        &app,
        &p1.refresh_token,
        "the old refresh token after a new sign-in",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn session_endpoints_require_a_valid_access_token() {
    let app = spawn_app().await;
    let laptop = device(&app, ANN, "Laptop").await;
    let id = laptop.tokens.session_id.to_string();
    let cases = [
        (
            app.client.get(format!("{}/v1/sessions", app.address)),
            "GET /v1/sessions",
        ),
        (
            app.client
                .delete(format!("{}/v1/sessions/{id}", app.address)),
            "DELETE /v1/sessions/{id}",
        ),
        (
            app.client.get(format!("{}/v1/audit-events", app.address)),
            "GET /v1/audit-events",
        ),
        (
            app.client
                .post(format!("{}/v1/auth/logout", app.address))
                .json(&json!({ "scope": "all" })),
            "POST /v1/auth/logout",
        ),
    ];
    for (request, case) in cases {
        let response = request.send().await.expect("the server answers");
        expect_problem(
            response,
            401,
            "unauthorized",
            &format!("{case} without a token"),
        )
        .await;
    }
    // The refresh token is not an access token for these endpoints either.
    let response = delete_session(&app, &laptop.tokens.refresh_token, &id).await;
    expect_problem(
        response,
        401,
        "unauthorized",
        "DELETE with the refresh token as bearer",
    )
    .await;
    assert_alive(
        &app,
        &laptop,
        "the session after the unauthenticated attempts",
    )
    .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_audit_list_shows_login_logout_and_revocation_with_ip_and_user_agent_but_no_secrets() {
    let app = spawn_app().await;
    let laptop = sign_in_device(&app, ANN, Some("Laptop"), "CodeeDex-Laptop/1.0 (Linux)").await;
    let phone = sign_in_device(&app, ANN, Some("Phone"), "CodeeDex-Phone/2.0 (Android)").await;
    let tablet = sign_in_device(&app, ANN, Some("Tablet"), "CodeeDex-Tablet/3.0 (iPadOS)").await;

    let response = delete_session(
        &app,
        &laptop.tokens.access_token,
        &tablet.tokens.session_id.to_string(),
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = app
        .client
        .post(format!("{}/v1/auth/logout", app.address))
        .bearer_auth(&phone.tokens.access_token)
        .header(USER_AGENT, "CodeeDex-Phone/2.0 (Android)")
        .json(&json!({ "scope": "this" }))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 200);

    let (events, raw) = audit_events(&app, &laptop.tokens.access_token).await;
    let find = |kind: AuditKind, session: SessionId| {
        let matching: Vec<_> = events
            .iter()
            .filter(|e| e.kind == kind && e.session_id == Some(session))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one {kind:?} event for {session}: {events:?}"
        );
        matching[0].clone()
    };
    for (session, user_agent) in [
        (&laptop, "CodeeDex-Laptop/1.0 (Linux)"),
        (&phone, "CodeeDex-Phone/2.0 (Android)"),
        (&tablet, "CodeeDex-Tablet/3.0 (iPadOS)"),
    ] {
        let login = find(AuditKind::Login, session.tokens.session_id);
        assert_eq!(login.ip.as_deref(), Some("127.0.0.1"), "{login:?}");
        assert_eq!(login.user_agent.as_deref(), Some(user_agent), "{login:?}");
    }
    let revoked = find(AuditKind::SessionRevoked, tablet.tokens.session_id);
    assert_eq!(revoked.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        revoked.user_agent.as_deref(),
        Some("CodeeDex-Revoker/1.0"),
        "the revoking device's agent"
    );
    let logout = find(AuditKind::Logout, phone.tokens.session_id);
    assert_eq!(logout.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        logout.user_agent.as_deref(),
        Some("CodeeDex-Phone/2.0 (Android)")
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind == AuditKind::Logout && e.session_id == Some(tablet.tokens.session_id)),
        "a revocation is recorded as such, not as a logout"
    );

    let secrets: Vec<&str> = [&laptop, &phone, &tablet]
        .iter()
        .flat_map(|s| {
            [
                s.tokens.access_token.as_str(),
                s.tokens.refresh_token.as_str(),
            ]
        })
        .collect();
    assert_holds_no_tokens(&raw, &secrets, "the audit trail");
    app.assert_no_secrets_in_logs();
}
