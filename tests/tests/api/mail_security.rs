//! Code mails as production sends them: over TLS (STARTTLS or implicit),
//! with the relay's certificate checked against the authorities the server
//! trusts, and with AUTH. The test makes its own certificate authority
//! ([`TestAuthority`]) and tells the server to trust it with
//! `--smtp-ca-file`; a certificate from any other authority is refused and
//! nothing is sent.

use std::path::Path;
use std::time::{Duration, Instant};

use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use codeedex_tests::certificates::TestAuthority;
use codeedex_tests::mail_catcher::{MailOptions, MailTls};
use serde_json::json;

const USER: &str = "codeedex-relay";
const PASSWORD: &str = "relay-password-8f3a1c";
const WAIT: Duration = Duration::from_secs(15);

/// A server that sends through a catcher with `tls`, presenting a
/// certificate for `localhost` from `presented_by`, while the server
/// trusts `trusted` (a PEM file) and authenticates with [`USER`].
async fn spawn(tls: MailTls, presented_by: &TestAuthority, trusted: &Path, flag: &str) -> TestApp {
    let app = spawn_app_with(
        AppConfig::default()
            .with_mail(MailOptions {
                tls: Some((tls, presented_by.issue("localhost"))),
                credentials: Some((USER.into(), PASSWORD.into())),
            })
            .with("--smtp-host", "localhost")
            .with("--smtp-tls", flag)
            .with("--smtp-ca-file", trusted.display())
            .with("--smtp-username", USER)
            .with("--smtp-password", PASSWORD),
    )
    .await;
    app.remember_secret(PASSWORD);
    app
}

/// Waits until a counter reaches `value`.
async fn wait_for_counter(app: &TestApp, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT;
    while app.metric(name).await < value {
        assert!(Instant::now() < deadline, "{name} did not reach {value}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asks for a code, reads it from the mail, and signs in with it; returns
/// whether the mail came over TLS and as whom.
async fn sign_in_by_mail(app: &TestApp, email: &str) -> (bool, Option<String>) {
    assert_eq!(app.request_email_code(email).await.status(), 202);
    let mail = app
        .mail
        .wait_for_mail_to(email, WAIT)
        .await
        .expect("the code mail arrives");
    let code = mail.code(6).expect("a code in the mail");
    app.remember_secret(&code);
    let response = app
        .post_json(
            "/v1/auth/verify",
            &json!({ "email": email, "code": code, "device_name": "laptop" }),
        )
        .await;
    assert_eq!(response.status(), 200, "the mailed code signs in");
    (mail.tls, mail.authenticated_as)
}

#[tokio::test]
async fn a_code_mail_goes_over_starttls_with_credentials() {
    let authority = TestAuthority::new("CodeeDex test relay authority");
    let dir = tempfile::tempdir().unwrap();
    let trusted = authority.write_pem(dir.path());
    let app = spawn(MailTls::StartTls, &authority, &trusted, "starttls").await;
    let (tls, user) = sign_in_by_mail(&app, "starttls@example.com").await;
    assert!(tls, "the mail came before STARTTLS");
    assert_eq!(user.as_deref(), Some(USER));
    assert_eq!(app.mail.failed_handshakes(), 0);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_code_mail_goes_over_implicit_tls_with_credentials() {
    let authority = TestAuthority::new("CodeeDex test relay authority");
    let dir = tempfile::tempdir().unwrap();
    let trusted = authority.write_pem(dir.path());
    let app = spawn(MailTls::Implicit, &authority, &trusted, "tls").await;
    let (tls, user) = sign_in_by_mail(&app, "implicit@example.com").await;
    assert!(tls);
    assert_eq!(user.as_deref(), Some(USER));
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn no_code_mail_goes_to_a_relay_whose_certificate_is_not_trusted() {
    // The relay presents a certificate for the right name, from an
    // authority the server was not told to trust.
    let trusted_authority = TestAuthority::new("The authority the server trusts");
    let other = TestAuthority::new("Somebody else's authority");
    let dir = tempfile::tempdir().unwrap();
    let trusted = trusted_authority.write_pem(dir.path());
    for (tls, flag) in [(MailTls::StartTls, "starttls"), (MailTls::Implicit, "tls")] {
        let app = spawn(tls, &other, &trusted, flag).await;
        assert_eq!(
            app.request_email_code("untrusted@example.com")
                .await
                .status(),
            202
        );
        // The server tried, and gave up at the handshake.
        app.mail
            .wait_for_failed_handshakes(1, WAIT)
            .await
            .expect("the server reached the relay and refused its certificate");
        wait_for_counter(&app, "codeedex_otp_delivery_failed_total", 1).await;
        assert!(
            app.mail.messages().is_empty(),
            "{flag}: a code was sent to a relay with an untrusted certificate"
        );
        assert_eq!(app.metric("codeedex_otp_delivered_total").await, 0);
        app.assert_no_secrets_in_logs();
    }
}

#[tokio::test]
async fn no_code_mail_goes_in_plain_text_when_the_relay_offers_no_starttls() {
    let authority = TestAuthority::new("CodeeDex test relay authority");
    let dir = tempfile::tempdir().unwrap();
    let trusted = authority.write_pem(dir.path());
    // The catcher speaks plain SMTP only, as a relay whose STARTTLS an
    // attacker stripped from the EHLO answer would, and takes AUTH and mail
    // in plain text.
    let app = spawn_app_with(
        AppConfig::default()
            .with_mail(MailOptions {
                tls: None,
                credentials: Some((USER.into(), PASSWORD.into())),
            })
            .with("--smtp-host", "localhost")
            .with("--smtp-tls", "starttls")
            .with("--smtp-ca-file", trusted.display())
            .with("--smtp-username", USER)
            .with("--smtp-password", PASSWORD),
    )
    .await;
    app.remember_secret(PASSWORD);
    assert_eq!(
        app.request_email_code("stripped@example.com")
            .await
            .status(),
        202
    );
    wait_for_counter(&app, "codeedex_otp_delivery_failed_total", 1).await;
    assert!(app.mail.messages().is_empty(), "a code went in plain text");
    app.assert_no_secrets_in_logs();
}
