//! Delivery of codes: a real SMTP conversation, the SMS provider's HTTP API,
//! outages, and what the log must never show.

use std::time::{Duration, Instant};

use codeedex_schema::api::auth::{SignInResponse, TokenPair};
use codeedex_tests::app::{AppConfig, TestApp, spawn_app, spawn_app_with};
use codeedex_tests::mail_catcher::{MailCatcher, extract_code};
use serde_json::json;

/// Waits until a counter reaches `value`.
async fn wait_for_counter(app: &TestApp, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = app.metric(name).await;
        if now >= value {
            assert_eq!(now, value, "{name} went past {value}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn verify(app: &TestApp, body: serde_json::Value) -> SignInResponse {
    app.expect_signed_in(app.post_json("/v1/auth/verify", &body).await)
        .await
}

#[tokio::test]
async fn a_code_mail_goes_through_a_real_smtp_conversation() {
    let app = spawn_app().await;
    assert_eq!(
        app.request_email_code("Dora@Example.com").await.status(),
        202
    );
    let mail = app
        .mail
        .wait_for_mail_to("Dora@example.com", Duration::from_secs(10))
        .await
        .expect("a code mail");
    assert_eq!(mail.to, ["Dora@example.com"], "envelope recipient");
    assert_eq!(mail.from, "no-reply@codeedex.invalid", "envelope sender");
    assert_eq!(
        mail.subject().as_deref(),
        Some("Your CodeeDex sign-in code")
    );
    assert!(
        mail.header("From")
            .is_some_and(|f| f.contains("no-reply@codeedex.invalid")),
        "{:?}",
        mail.header("From")
    );
    assert!(
        mail.header("To")
            .is_some_and(|t| t.contains("Dora@example.com"))
    );
    let headers = mail.headers();
    assert!(
        mail.header("Date").is_some(),
        "RFC 5322 requires a Date header: {headers:?}"
    );
    // RFC 5322 §3.6.4: every message SHOULD have one; Gmail refuses mail without it.
    assert!(
        mail.header("Message-ID")
            .is_some_and(|id| id.starts_with('<') && id.contains('@')),
        "the code mail has no Message-ID: {headers:?}"
    );
    assert!(
        mail.header("Content-Type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        mail.header("Content-Type")
    );
    let text = mail.body_text();
    let code = mail
        .code(6)
        .unwrap_or_else(|| panic!("no code in {text:?}"));
    app.remember_secret(&code);
    assert!(
        text.contains("10 minutes"),
        "the mail says how long the code lasts: {text:?}"
    );
    assert!(
        !mail.subject().unwrap_or_default().contains(&code),
        "the code must not be in the subject, which shows in notifications"
    );
    let signed_in = verify(&app, json!({ "email": "Dora@example.com", "code": code })).await;
    assert_eq!(signed_in.user.email.as_deref(), Some("Dora@example.com"));
    assert_eq!(app.mail.messages().len(), 1);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_code_sms_is_a_form_post_to_the_provider_with_basic_auth() {
    let app = spawn_app().await;
    assert_eq!(
        app.request_phone_code("+44 20 7946 0958").await.status(),
        202
    );
    // The stub records only requests to this account's path that carry the
    // account's basic-auth credentials and a form body with To, From, Body.
    let sms = app
        .sms
        .wait_for_sms_to("+442079460958", Duration::from_secs(10))
        .await
        .expect("a code SMS");
    assert_eq!(sms.to, "+442079460958", "To is in E.164");
    assert_eq!(sms.from, "+15005550006");
    let code = extract_code(&sms.body, 6).unwrap_or_else(|| panic!("no code in {:?}", sms.body));
    app.remember_secret(&code);
    assert!(sms.body.contains("CodeeDex"), "{:?}", sms.body);
    assert!(sms.body.len() <= 160, "one SMS segment: {:?}", sms.body);
    let signed_in = verify(&app, json!({ "phone": "+442079460958", "code": code })).await;
    assert_eq!(signed_in.user.phone.as_deref(), Some("+442079460958"));
    assert_eq!(app.sms.messages().len(), 1);
    assert!(app.mail.messages().is_empty());
    assert_eq!(app.metric("codeedex_otp_delivered_total").await, 1);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_provider_sees_no_message_without_the_right_credentials() {
    let app = spawn_app_with(AppConfig::default().with("--sms-auth-token", "not-the-token")).await;
    let response = app.request_phone_code("+14155552671").await;
    assert_eq!(response.status(), 202, "delivery happens after the answer");
    wait_for_counter(&app, "codeedex_otp_delivery_failed_total", 1).await;
    assert!(
        app.sms.messages().is_empty(),
        "the stub accepted a message with a wrong token"
    );
    assert_eq!(app.metric("codeedex_otp_delivered_total").await, 0);
}

#[tokio::test]
async fn an_sms_provider_outage_still_answers_202_and_a_retry_delivers() {
    let app = spawn_app().await;
    app.sms.fail_next(503);
    let response = app.request_phone_code("+14155552671").await;
    assert_eq!(response.status(), 202, "delivery happens after the answer");
    wait_for_counter(&app, "codeedex_otp_delivery_failed_total", 1).await;
    assert!(app.sms.messages().is_empty());
    assert!(
        app.log_appears("code delivery failed", Duration::from_secs(10))
            .await,
        "the failure is logged for the operator"
    );

    // The user asks again and this time the provider is back.
    assert_eq!(app.request_phone_code("+14155552671").await.status(), 202);
    let code = app.next_sms_code("+14155552671").await;
    verify(&app, json!({ "phone": "+14155552671", "code": code })).await;
    assert_eq!(app.metric("codeedex_otp_delivery_failed_total").await, 1);
    assert_eq!(app.metric("codeedex_otp_delivered_total").await, 1);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_mail_server_outage_still_answers_202() {
    let mut app = spawn_app().await;
    // Stop the SMTP server the app was configured with.
    drop(std::mem::replace(&mut app.mail, MailCatcher::start().await));
    let started = Instant::now();
    let response = app.request_email_code("offline@example.com").await;
    assert_eq!(response.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the answer waited for the mail server"
    );
    wait_for_counter(&app, "codeedex_otp_delivery_failed_total", 1).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    // The phone channel is unaffected.
    assert_eq!(app.request_phone_code("+14155552671").await.status(), 202);
    app.next_sms_code("+14155552671").await;
}

/// Signs in by email and by SMS, refreshes, fails a verification, and logs
/// out, remembering every code and token for the log check.
async fn exercise_every_secret(app: &TestApp) {
    let by_mail = app.sign_in_email("logs@example.com").await;

    assert_eq!(app.request_phone_code("+14155552671").await.status(), 202);
    let code = app.next_sms_code("+14155552671").await;
    let wrong = format!(
        "{:06}",
        (code.parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    app.remember_secret(&wrong);
    let response = app
        .post_json(
            "/v1/auth/verify",
            &json!({ "phone": "+14155552671", "code": wrong }),
        )
        .await;
    assert_eq!(response.status(), 400);
    verify(app, json!({ "phone": "+14155552671", "code": code })).await;

    let response = app.refresh(&by_mail.tokens.refresh_token).await;
    assert_eq!(response.status(), 200);
    let pair: TokenPair = response.json().await.expect("a pair");
    app.remember_tokens(&pair);
    // Reusing the old refresh token outside the grace window is not tested
    // here; a garbage token and a bearer on a logout are.
    assert_eq!(app.refresh("cdxr_not-a-real-token").await.status(), 401);
    let response = app
        .post_json_as(
            &pair.access_token,
            "/v1/auth/logout",
            &json!({ "scope": "this" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_as(&pair.access_token, "/v1/me").await.status(), 401);
}

#[tokio::test]
async fn the_log_never_contains_codes_or_tokens() {
    let app = spawn_app().await;
    exercise_every_secret(&app).await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_debug_log_never_contains_codes_or_tokens() {
    let app = spawn_app_with(AppConfig::default().with("--log", "debug")).await;
    exercise_every_secret(&app).await;
    assert!(
        app.logs().iter().any(|l| l.contains("DEBUG")),
        "the server did not log at debug level"
    );
    app.assert_no_secrets_in_logs();
    // Nor the SMS provider's token.
    let logs = app.logs().join("\n");
    assert!(
        !logs.contains("sms-test-token-not-a-secret"),
        "the SMS API token is in the log"
    );
}
