//! One-time codes: asking for one, verifying it, and the limits around both.

use std::time::{Duration, Instant};

use codeedex_schema::api::auth::SignInResponse;
use codeedex_tests::app::{AppConfig, TestApp, spawn_app, spawn_app_with};
use codeedex_tests::mail_catcher::MailCatcher;
use serde_json::{Value, json};

/// A refused request as the client sees it.
#[derive(Debug)]
struct Refusal {
    status: u16,
    content_type: String,
    cache_control: String,
    retry_after: Option<u64>,
    body: Value,
}

impl Refusal {
    async fn from(response: reqwest::Response) -> Refusal {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("an ASCII header").to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let cache_control = header("cache-control").unwrap_or_default();
        let retry_after = header("retry-after")
            .map(|v| v.parse().expect("Retry-After is a whole number of seconds"));
        let body = response.json().await.expect("a JSON body");
        Refusal {
            status,
            content_type,
            cache_control,
            retry_after,
            body,
        }
    }

    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    /// Checks the status and problem code, and that this is a problem document.
    fn expect(self, status: u16, code: &str) -> Self {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.body
        );
        assert_eq!(self.content_type, "application/problem+json");
        assert_eq!(self.body["status"], status);
        self
    }

    /// Checks for a 429 with a Retry-After within `range`.
    fn expect_429(self, code: &str, range: std::ops::RangeInclusive<u64>) -> Self {
        let this = self.expect(429, code);
        let retry_after = this.retry_after.expect("a 429 carries Retry-After");
        assert!(
            range.contains(&retry_after),
            "Retry-After {retry_after} is outside {range:?}"
        );
        this
    }
}

/// `n` different codes, none equal to `code`.
fn wrong_codes(code: &str, n: u32) -> Vec<String> {
    let right: u32 = code.parse().expect("a numeric code");
    (1..=n)
        .map(|i| format!("{:06}", (right + i) % 1_000_000))
        .collect()
}

fn wrong_code(code: &str) -> String {
    wrong_codes(code, 1).remove(0)
}

async fn verify_phone(app: &TestApp, phone: &str, code: &str) -> reqwest::Response {
    app.post_json("/v1/auth/verify", &json!({ "phone": phone, "code": code }))
        .await
}

async fn request_ok(app: &TestApp, email: &str) -> Value {
    let response = app.request_email_code(email).await;
    assert_eq!(response.status(), 202, "code request for {email} refused");
    response.json().await.expect("a JSON body")
}

/// Asks for codes until one differs from `other`, and returns it.
async fn fresh_code_unlike(app: &TestApp, email: &str, other: &str) -> String {
    loop {
        request_ok(app, email).await;
        let code = app.next_email_code(email).await;
        if code != other {
            return code;
        }
    }
}

/// Replaces the mail catcher with a server that accepts connections and
/// never answers, so that any mail delivery hangs until its timeout.
async fn stall_mail_server(app: &mut TestApp) -> std::net::TcpListener {
    let port = app.mail.port();
    drop(std::mem::replace(&mut app.mail, MailCatcher::start().await));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot take over port {port}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn a_code_request_answers_the_same_for_existing_and_unknown_accounts() {
    let mut app = spawn_app().await;
    app.sign_in_email("known@example.com").await;
    // With a mail server that never answers, a request that waited for
    // delivery would take seconds: the answer must not depend on delivery.
    let _stalled = stall_mail_server(&mut app).await;

    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut answers = Vec::new();
    for i in 0..7 {
        for (email, times) in [
            ("known@example.com".to_owned(), &mut known),
            (format!("nobody{i}@example.com"), &mut unknown),
        ] {
            let started = Instant::now();
            let response = app.request_email_code(&email).await;
            times.push(started.elapsed());
            let status = response.status().as_u16();
            let cache_control = response.headers().get("cache-control").cloned();
            let content_type = response.headers().get("content-type").cloned();
            let body: Value = response.json().await.expect("a JSON body");
            answers.push((status, cache_control, content_type, body));
        }
    }
    assert_eq!(answers[0].0, 202);
    assert_eq!(
        answers[0].3,
        json!({ "status": "sent", "expires_in": 600, "resend_after": 0 })
    );
    for answer in &answers {
        assert_eq!(answer, &answers[0], "answers differ between accounts");
    }
    let (known, unknown) = (median(known), median(unknown));
    assert!(
        known < Duration::from_secs(1) && unknown < Duration::from_secs(1),
        "code requests wait for delivery: medians {known:?} (existing) and {unknown:?} (unknown)"
    );
    let difference = known.abs_diff(unknown);
    assert!(
        difference < Duration::from_millis(100),
        "median latency differs by {difference:?}: {known:?} (existing) vs {unknown:?} (unknown)"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn five_wrong_codes_kill_the_code_so_the_right_one_fails_too() {
    let app = spawn_app().await;
    let email = "eve@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    for wrong in wrong_codes(&code, 5) {
        Refusal::from(app.verify_email(email, &wrong).await)
            .await
            .expect(400, "invalid_code");
    }
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect(400, "invalid_code");
    // The identifier is not locked (6 failures < 20): a new code works.
    let signed_in = app.sign_in_email(email).await;
    assert!(signed_in.new_user);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn four_wrong_codes_leave_the_right_one_usable() {
    let app = spawn_app().await;
    let email = "patient@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    for wrong in wrong_codes(&code, 4) {
        Refusal::from(app.verify_email(email, &wrong).await)
            .await
            .expect(400, "invalid_code");
    }
    app.expect_signed_in(app.verify_email(email, &code).await)
        .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_failure_cap_survives_new_codes_and_locks_out_even_the_right_code() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--otp-failure-cap", 6)
            .with("--otp-max-attempts", 3),
    )
    .await;
    let email = "mallory@example.com";

    // First code: three wrong attempts kill it (3 failures).
    request_ok(&app, email).await;
    let first = app.next_email_code(email).await;
    for wrong in wrong_codes(&first, 3) {
        Refusal::from(app.verify_email(email, &wrong).await)
            .await
            .expect(400, "invalid_code");
    }
    // Second code: two more (5 failures).
    request_ok(&app, email).await;
    let second = app.next_email_code(email).await;
    for wrong in wrong_codes(&second, 2) {
        Refusal::from(app.verify_email(email, &wrong).await)
            .await
            .expect(400, "invalid_code");
    }
    // Third code: one more reaches the cap of 6.
    request_ok(&app, email).await;
    let third = app.next_email_code(email).await;
    Refusal::from(app.verify_email(email, &wrong_code(&third)).await)
        .await
        .expect(400, "invalid_code");

    // The third code is live and right, but the identifier is locked.
    Refusal::from(app.verify_email(email, &third).await)
        .await
        .expect_429("too_many_attempts", 86_000..=86_400);
    // Asking for yet another code does not reset anything.
    Refusal::from(app.request_email_code(email).await)
        .await
        .expect_429("too_many_attempts", 86_000..=86_400);
    // Nor does spelling the identifier differently.
    Refusal::from(app.request_email_code(" mallory@EXAMPLE.com ").await)
        .await
        .expect_429("too_many_attempts", 86_000..=86_400);

    // The lock is per identifier: others sign in as usual.
    app.sign_in_email("bystander@example.com").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let app = spawn_app_with(AppConfig::default().with("--otp-ttl-secs", 1)).await;
    let email = "slow@example.com";
    let body = request_ok(&app, email).await;
    let requested = Instant::now();
    assert_eq!(body["expires_in"], 1);
    let code = app.next_email_code(email).await;
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(requested.elapsed())).await;
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect(400, "invalid_code");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_used_code_cannot_be_replayed() {
    let app = spawn_app().await;
    let email = "once@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    app.expect_signed_in(app.verify_email(email, &code).await)
        .await;
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect(400, "invalid_code");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_older_code_fails_once_a_newer_one_was_sent() {
    let app = spawn_app().await;
    let email = "twice@example.com";
    request_ok(&app, email).await;
    let older = app.next_email_code(email).await;
    let newer = fresh_code_unlike(&app, email, &older).await;
    Refusal::from(app.verify_email(email, &older).await)
        .await
        .expect(400, "invalid_code");
    app.expect_signed_in(app.verify_email(email, &newer).await)
        .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_code_for_one_identifier_does_not_sign_in_another() {
    let app = spawn_app().await;
    let (a, b) = ("alice@example.com", "bob@example.com");
    request_ok(&app, a).await;
    let code_a = app.next_email_code(a).await;
    let code_b = fresh_code_unlike(&app, b, &code_a).await;

    // A's code for B (who has a code of their own), for someone who has
    // none, and for a phone number: all refused.
    Refusal::from(app.verify_email(b, &code_a).await)
        .await
        .expect(400, "invalid_code");
    Refusal::from(app.verify_email("carol@example.com", &code_a).await)
        .await
        .expect(400, "invalid_code");
    Refusal::from(verify_phone(&app, "+14155552671", &code_a).await)
        .await
        .expect(400, "invalid_code");

    let alice = app
        .expect_signed_in(app.verify_email(a, &code_a).await)
        .await;
    let bob = app
        .expect_signed_in(app.verify_email(b, &code_b).await)
        .await;
    assert_eq!(alice.user.email.as_deref(), Some(a));
    assert_eq!(bob.user.email.as_deref(), Some(b));
    assert_ne!(alice.user.id, bob.user.id);
    app.assert_no_secrets_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_verifications_of_one_code_yield_exactly_one_session() {
    let app = spawn_app().await;
    let email = "racer@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;

    let attempts: Vec<_> = (0..10)
        .map(|i| {
            let client = app.client.clone();
            let url = format!("{}/v1/auth/verify", app.address);
            let body = json!({ "email": email, "code": code, "device_name": format!("tab {i}") });
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("a JSON body"))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (status, body) = attempt.await.expect("the task ran");
        match status {
            200 => winners.push(body),
            400 => assert_eq!(body["code"], "invalid_code", "{body}"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "one code signed in {} times",
        winners.len()
    );
    let signed_in: SignInResponse =
        serde_json::from_value(winners.remove(0)).expect("a sign-in body");
    app.remember_tokens(&signed_in.tokens);

    let sessions: Value = app
        .get_as(&signed_in.tokens.access_token, "/v1/sessions")
        .await
        .json()
        .await
        .expect("a session list");
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(1),
        "{sessions}"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn malformed_codes_are_invalid_and_count_as_failures() {
    let app = spawn_app().await;
    let email = "typo@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;

    let wrong = Refusal::from(app.verify_email(email, &wrong_code(&code)).await)
        .await
        .expect(400, "invalid_code");
    // Five digits, a letter, Arabic-Indic digits, full-width digits, empty:
    // the same answer as a wrong code, and four more attempts spent.
    for malformed in [
        "12345",
        "12a456",
        "\u{661}\u{662}\u{663}\u{664}\u{665}\u{666}",
        "１２３４５６",
    ] {
        let refused = Refusal::from(app.verify_email(email, malformed).await)
            .await
            .expect(400, "invalid_code");
        assert_eq!(refused.body, wrong.body, "for {malformed:?}");
    }
    // That was five failures: the right code is dead now.
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect(400, "invalid_code");

    // An empty code is refused the same way.
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    for _ in 0..5 {
        Refusal::from(app.verify_email(email, "").await)
            .await
            .expect(400, "invalid_code");
    }
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect(400, "invalid_code");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn wrong_expired_used_and_never_issued_codes_get_one_answer() {
    let app = spawn_app().await;
    let short = spawn_app_with(AppConfig::default().with("--otp-ttl-secs", 1)).await;

    // Expired: start first, so the waiting overlaps the other cases.
    request_ok(&short, "late@example.com").await;
    let requested = Instant::now();
    let expired_code = short.next_email_code("late@example.com").await;

    request_ok(&app, "wrong@example.com").await;
    let code = app.next_email_code("wrong@example.com").await;
    let wrong = Refusal::from(
        app.verify_email("wrong@example.com", &wrong_code(&code))
            .await,
    )
    .await;

    request_ok(&app, "used@example.com").await;
    let code = app.next_email_code("used@example.com").await;
    app.expect_signed_in(app.verify_email("used@example.com", &code).await)
        .await;
    let used = Refusal::from(app.verify_email("used@example.com", &code).await).await;

    let never = Refusal::from(app.verify_email("never@example.com", "123456").await).await;

    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(requested.elapsed())).await;
    let expired = Refusal::from(short.verify_email("late@example.com", &expired_code).await).await;

    let wrong = wrong.expect(400, "invalid_code");
    for (case, other) in [
        ("used", used),
        ("never issued", never),
        ("expired", expired),
    ] {
        assert_eq!(
            (
                other.status,
                &other.content_type,
                &other.cache_control,
                &other.body
            ),
            (
                wrong.status,
                &wrong.content_type,
                &wrong.cache_control,
                &wrong.body
            ),
            "a {case} code is answered differently from a wrong one"
        );
    }
    app.assert_no_secrets_in_logs();
    short.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_second_code_within_the_cooldown_is_rate_limited() {
    let app = spawn_app_with(AppConfig::default().with("--otp-resend-cooldown-secs", 60)).await;
    let body = request_ok(&app, "hasty@example.com").await;
    assert_eq!(body["resend_after"], 60);
    Refusal::from(app.request_email_code("hasty@example.com").await)
        .await
        .expect_429("rate_limited", 55..=60);
    // Another spelling of the same address shares the cooldown.
    Refusal::from(app.request_email_code(" hasty@EXAMPLE.COM").await)
        .await
        .expect_429("rate_limited", 55..=60);
    // Other identifiers are not affected.
    request_ok(&app, "calm@example.com").await;

    let first = app.next_email_code("hasty@example.com").await;
    app.next_email_code("calm@example.com").await;
    assert!(
        app.mail
            .wait_for_mail_to("hasty@example.com", Duration::from_millis(300))
            .await
            .is_err(),
        "a refused request still sent a code"
    );
    // The refused requests did not replace the code that was sent.
    app.expect_signed_in(app.verify_email("hasty@example.com", &first).await)
        .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_hourly_cap_limits_codes_per_identifier() {
    let app = spawn_app_with(AppConfig::default().with("--otp-hourly-cap", 3)).await;
    for _ in 0..3 {
        request_ok(&app, "chatty@example.com").await;
    }
    Refusal::from(app.request_email_code("chatty@example.com").await)
        .await
        .expect_429("rate_limited", 3_500..=3_600);
    request_ok(&app, "quiet@example.com").await;
}

#[tokio::test]
async fn the_per_ip_send_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(AppConfig::default().with("--ip-send-limit", 3)).await;
    for i in 0..3 {
        request_ok(&app, &format!("spray{i}@example.com")).await;
    }
    // 3 per 300 s: the next token comes in 100 s.
    Refusal::from(app.request_email_code("spray3@example.com").await)
        .await
        .expect_429("rate_limited", 90..=100);
    Refusal::from(app.request_phone_code("+14155552671").await)
        .await
        .expect_429("rate_limited", 90..=100);
}

#[tokio::test]
async fn the_per_ip_verify_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(AppConfig::default().with("--ip-verify-limit", 3)).await;
    let email = "guesser@example.com";
    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    for i in 0..3 {
        Refusal::from(
            app.verify_email(&format!("victim{i}@example.com"), "000000")
                .await,
        )
        .await
        .expect(400, "invalid_code");
    }
    // Even the right code is not looked at once the address is over its limit.
    Refusal::from(app.verify_email(email, &code).await)
        .await
        .expect_429("rate_limited", 90..=100);
    app.assert_no_secrets_in_logs();
}

async fn request_via(app: &TestApp, headers: &[(&str, &str)], email: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/v1/auth/otp", app.address))
        .json(&json!({ "email": email }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the server answers")
}

#[tokio::test]
async fn a_spoofed_forwarding_header_does_not_evade_the_per_ip_limit() {
    let app = spawn_app_with(AppConfig::default().with("--ip-send-limit", 2)).await;
    for (i, spoofed) in ["203.0.113.1", "203.0.113.2"].into_iter().enumerate() {
        let response = request_via(
            &app,
            &[("x-forwarded-for", spoofed)],
            &format!("s{i}@example.com"),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    for headers in [
        [("x-forwarded-for", "203.0.113.3")],
        [("x-forwarded-for", "203.0.113.4, 198.51.100.9")],
        [("x-real-ip", "203.0.113.5")],
        [("forwarded", "for=203.0.113.6")],
    ] {
        Refusal::from(request_via(&app, &headers, "s9@example.com").await)
            .await
            .expect_429("rate_limited", 1..=150);
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_bucket() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--ip-send-limit", 2)
            .with("--trusted-proxies", "127.0.0.1"),
    )
    .await;
    let one = [("x-forwarded-for", "198.51.100.1")];
    for i in 0..2 {
        let response = request_via(&app, &one, &format!("one{i}@example.com")).await;
        assert_eq!(response.status(), 202);
    }
    Refusal::from(request_via(&app, &one, "one9@example.com").await)
        .await
        .expect_429("rate_limited", 1..=150);
    // A client-supplied entry to the left of the proxy's does not help.
    Refusal::from(
        request_via(
            &app,
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.1")],
            "one9@example.com",
        )
        .await,
    )
    .await
    .expect_429("rate_limited", 1..=150);
    // Another client behind the same proxy has its own bucket.
    let two = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(
        request_via(&app, &two, "two@example.com").await.status(),
        202
    );

    // The forwarded address is the one recorded for the sign-in.
    let three = [("x-forwarded-for", "198.51.100.3")];
    assert_eq!(
        request_via(&app, &three, "three@example.com")
            .await
            .status(),
        202
    );
    let code = app.next_email_code("three@example.com").await;
    let response = app
        .client
        .post(format!("{}/v1/auth/verify", app.address))
        .header("x-forwarded-for", "198.51.100.3")
        .json(&json!({ "email": "three@example.com", "code": code }))
        .send()
        .await
        .expect("the server answers");
    let signed_in = app.expect_signed_in(response).await;
    let audit: Value = app
        .get_as(&signed_in.tokens.access_token, "/v1/audit-events")
        .await
        .json()
        .await
        .expect("an audit list");
    let login = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "login")
        .unwrap_or_else(|| panic!("no login event in {audit}"));
    assert_eq!(login["ip"], "198.51.100.3");
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn behind_a_trusted_proxy_a_second_forwarding_line_is_read_with_the_first() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--ip-send-limit", 2)
            .with("--trusted-proxies", "127.0.0.1"),
    )
    .await;
    // The client sends a line of its own, a new address each time; the proxy
    // appends a line with the address it saw, which is the client's.
    for (i, spoofed) in ["6.6.6.1", "6.6.6.2", "6.6.6.3"].into_iter().enumerate() {
        let response = request_via(
            &app,
            &[
                ("x-forwarded-for", spoofed),
                ("x-forwarded-for", "198.51.100.20"),
            ],
            &format!("lines{i}@example.com"),
        )
        .await;
        if i < 2 {
            assert_eq!(response.status(), 202, "request {i}");
        } else {
            Refusal::from(response)
                .await
                .expect_429("rate_limited", 1..=150);
        }
    }
    // The address in the proxy's line is the one limited: the client's own
    // line, now naming an address with a full bucket, does not help.
    Refusal::from(
        request_via(
            &app,
            &[
                ("x-forwarded-for", "198.51.100.21"),
                ("x-forwarded-for", "198.51.100.20"),
            ],
            "lines9@example.com",
        )
        .await,
    )
    .await
    .expect_429("rate_limited", 1..=150);
    // And that address, forwarded on its own line by the proxy, still has
    // its own bucket.
    assert_eq!(
        request_via(
            &app,
            &[
                ("x-forwarded-for", "198.51.100.20"),
                ("x-forwarded-for", "198.51.100.21"),
            ],
            "lines10@example.com",
        )
        .await
        .status(),
        202
    );
}

#[tokio::test]
async fn spellings_of_one_email_address_reach_one_account() {
    let app = spawn_app().await;
    request_ok(&app, " \tBob@Example.COM \n").await;
    let mail = app
        .mail
        .wait_for_mail_to("Bob@example.com", Duration::from_secs(10))
        .await
        .expect("a code mail");
    assert_eq!(
        mail.to,
        ["Bob@example.com"],
        "the envelope names the normalised address"
    );
    let code = mail.code(6).expect("a code in the mail");
    app.remember_secret(&code);
    let first = app
        .expect_signed_in(app.verify_email("Bob@EXAMPLE.com", &code).await)
        .await;
    assert!(first.new_user);
    assert_eq!(first.user.email.as_deref(), Some("Bob@example.com"));

    let again = app.sign_in_email("  Bob@example.COM").await;
    assert!(!again.new_user);
    assert_eq!(again.user.id, first.user.id);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn spellings_of_one_phone_number_reach_one_account() {
    let app = spawn_app().await;
    assert_eq!(
        app.request_phone_code("+1 (415) 555-2671").await.status(),
        202
    );
    let sms = app
        .sms
        .wait_for_sms_to("+14155552671", Duration::from_secs(10))
        .await
        .expect("a code SMS");
    assert_eq!(sms.to, "+14155552671", "the SMS goes to the E.164 form");
    let code = codeedex_tests::mail_catcher::extract_code(&sms.body, 6).expect("a code in the SMS");
    app.remember_secret(&code);
    let first = app
        .expect_signed_in(verify_phone(&app, "+14155552671", &code).await)
        .await;
    assert!(first.new_user);
    assert_eq!(first.user.phone.as_deref(), Some("+14155552671"));

    assert_eq!(app.request_phone_code("+14155552671").await.status(), 202);
    let code = app.next_sms_code("+14155552671").await;
    let again = app
        .expect_signed_in(verify_phone(&app, " +1 415-555-2671", &code).await)
        .await;
    assert!(!again.new_user);
    assert_eq!(again.user.id, first.user.id);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn malformed_identifiers_are_refused_with_invalid_identifier() {
    let app = spawn_app().await;
    let overlong_email = format!("{}@example.com", "a".repeat(250));
    let overlong_phone = format!("+{}", "1".repeat(40));
    let cases = [
        ("national phone number", json!({ "phone": "4155552671" })),
        ("too short a phone number", json!({ "phone": "+1 415 555" })),
        (
            "letters in a phone number",
            json!({ "phone": "+1 415 555 abcd" }),
        ),
        (
            "full-width digits",
            json!({ "phone": "+１４１５５５５２６７１" }),
        ),
        ("overlong phone number", json!({ "phone": overlong_phone })),
        ("overlong email", json!({ "email": overlong_email })),
        (
            "Cyrillic a in the local part",
            json!({ "email": "\u{430}nn@example.com" }),
        ),
        (
            "Cyrillic a in the domain",
            json!({ "email": "ann@ex\u{430}mple.com" }),
        ),
        ("no @", json!({ "email": "ann.example.com" })),
        ("no dot in the domain", json!({ "email": "ann@localhost" })),
        ("blank email", json!({ "email": "   " })),
        (
            "both",
            json!({ "email": "ann@example.com", "phone": "+14155552671" }),
        ),
        ("neither", json!({})),
        ("null email", json!({ "email": null })),
    ];
    for (case, body) in cases {
        let refused = Refusal::from(app.post_json("/v1/auth/otp", &body).await)
            .await
            .expect(400, "invalid_identifier");
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{case}: the problem explains what is wrong: {}",
            refused.body
        );
        let mut verify = body.clone();
        verify["code"] = json!("123456");
        Refusal::from(app.post_json("/v1/auth/verify", &verify).await)
            .await
            .expect(400, "invalid_identifier");
    }
    // Nothing was sent for any of them.
    request_ok(&app, "valid@example.com").await;
    app.next_email_code("valid@example.com").await;
    assert_eq!(app.mail.messages().len(), 1, "{:?}", app.mail.messages());
    assert!(app.sms.messages().is_empty(), "{:?}", app.sms.messages());
}

#[tokio::test]
async fn a_fixed_test_code_works_until_its_expiry_date() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--allow-test-codes", "true")
            .with("--test-codes", "tester@example.com=123456")
            .with("--test-codes-expire", "2999-12-31"),
    )
    .await;
    app.remember_secret("123456");
    request_ok(&app, "tester@example.com").await;
    app.expect_signed_in(app.verify_email("tester@example.com", "123456").await)
        .await;
    // Only the named identifier has a fixed code.
    request_ok(&app, "other@example.com").await;
    let code = app.next_email_code("other@example.com").await;
    if code != "123456" {
        Refusal::from(app.verify_email("other@example.com", "123456").await)
            .await
            .expect(400, "invalid_code");
    }
    // The operator is told, loudly, that fixed codes are on and for how many.
    let logs = app.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("WARN")
                && l.contains("FIXED TEST CODES ARE ACTIVE for 1 identifiers")),
        "the server does not warn that fixed test codes are active:\n{}",
        logs.join("\n")
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_opt_in_from_the_environment_enables_fixed_test_codes() {
    let app = spawn_app_with(
        AppConfig::default()
            .with_env("CODEEDEX_ALLOW_TEST_CODES", "true")
            .with_env("CODEEDEX_TEST_CODES", "tester@example.com=123456")
            .with_env("CODEEDEX_TEST_CODES_EXPIRE", "2999-12-31"),
    )
    .await;
    app.remember_secret("123456");
    request_ok(&app, "tester@example.com").await;
    app.expect_signed_in(app.verify_email("tester@example.com", "123456").await)
        .await;
}

#[tokio::test]
async fn an_expired_fixed_test_code_no_longer_works() {
    let app = spawn_app_with(
        AppConfig::default()
            .with("--allow-test-codes", "true")
            .with("--test-codes", "tester@example.com=123456")
            .with("--test-codes-expire", "2000-01-01"),
    )
    .await;
    request_ok(&app, "tester@example.com").await;
    let mailed = app.next_email_code("tester@example.com").await;
    if mailed != "123456" {
        Refusal::from(app.verify_email("tester@example.com", "123456").await)
            .await
            .expect(400, "invalid_code");
        // The failed attempt above does not kill the mailed code (1 of 5).
    }
    app.expect_signed_in(app.verify_email("tester@example.com", &mailed).await)
        .await;
    // An operator must be able to see why the fixed code stopped working.
    let logs = app.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("test codes") && l.contains("expired")),
        "the server does not say that the fixed test codes expired:\n{}",
        logs.join("\n")
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn the_audit_list_records_a_failed_and_a_successful_sign_in_without_the_code() {
    let app = spawn_app().await;
    let email = "audited@example.com";
    app.sign_in_email(email).await;

    request_ok(&app, email).await;
    let code = app.next_email_code(email).await;
    let wrong = wrong_code(&code);
    app.remember_secret(&wrong);
    let response = app
        .client
        .post(format!("{}/v1/auth/verify", app.address))
        .header("user-agent", "otp-tests/1.0")
        .json(&json!({ "email": email, "code": wrong }))
        .send()
        .await
        .expect("the server answers");
    Refusal::from(response).await.expect(400, "invalid_code");
    let signed_in = app
        .expect_signed_in(app.verify_email(email, &code).await)
        .await;

    let response = app
        .get_as(&signed_in.tokens.access_token, "/v1/audit-events")
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("a body");
    for secret in [
        &code,
        &wrong,
        &signed_in.tokens.access_token,
        &signed_in.tokens.refresh_token,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "the audit list holds a secret: {text}"
        );
    }
    let audit: Value = serde_json::from_str(&text).expect("JSON");
    let events = audit["events"].as_array().expect("events");
    let position = |kind: &str| events.iter().position(|e| e["kind"] == kind);
    let failed = position("code_failed").unwrap_or_else(|| panic!("no code_failed in {text}"));
    let login = position("login").unwrap_or_else(|| panic!("no login in {text}"));
    assert!(
        position("code_requested").is_some(),
        "no code_requested in {text}"
    );
    assert!(
        login < failed,
        "newest first: the last login follows the failure: {text}"
    );
    assert_eq!(
        events[login]["session_id"],
        signed_in.tokens.session_id.to_string()
    );
    assert_eq!(events[failed]["ip"], "127.0.0.1");
    assert_eq!(events[failed]["user_agent"], "otp-tests/1.0");
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "login").count(),
        2,
        "two sign-ins: {text}"
    );
    app.assert_no_secrets_in_logs();
}
