//! Access tokens (JWT): every forgery gets one answer, 401 `unauthorized`;
//! only a genuine token that has expired is told apart (`token_expired`).
//!
//! Forged tokens are built by hand from a genuine one, with the server's own
//! key read from its data directory, so that each carries exactly one defect.
//! Every test first checks that the untouched re-signed token is accepted,
//! which proves that the refusal comes from the defect and not from the forger.
//!
//! The helpers at the top are shared with `refresh.rs` and `sessions.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use codeedex_schema::api::auth::{AuditEventList, AuditEventView, SignInResponse, TokenPair};
use codeedex_tests::app::{AppConfig, TestApp, spawn_app_with};
use hmac::{Hmac, Mac};
use reqwest::header::AUTHORIZATION;
use serde_json::{Map, Value, json};
use sha2::{Sha256, Sha384, Sha512};

// ---------------------------------------------------------------------------
// Helpers shared with refresh.rs and sessions.rs.

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// Sleeps until the wall clock passes `unix_secs` plus `extra_ms`.
pub(crate) async fn sleep_until_unix(unix_secs: i64, extra_ms: u64) {
    let target =
        UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64) + Duration::from_millis(extra_ms);
    if let Ok(wait) = target.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

/// The decoded JSON of one dot-separated segment of a JWT.
pub(crate) fn segment(token: &str, index: usize) -> Value {
    let part = token
        .split('.')
        .nth(index)
        .expect("the token has this segment");
    let bytes = B64.decode(part).expect("the segment is base64url");
    serde_json::from_slice(&bytes).expect("the segment is JSON")
}

/// The claims of a JWT, unverified.
pub(crate) fn claims_of(token: &str) -> Value {
    segment(token, 1)
}

/// Checks a response's status and problem `code`; returns the whole body.
pub(crate) async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
    case: &str,
) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{case}: unexpected status, body {body}");
    assert_eq!(
        body["code"], code,
        "{case}: unexpected problem code, body {body}"
    );
    body
}

/// `GET /v1/me` with a bearer token: 200 and the user's id, or a failure naming `case`.
pub(crate) async fn expect_me(app: &TestApp, access_token: &str, case: &str) -> Value {
    let response = app.get_as(access_token, "/v1/me").await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status, 200,
        "{case}: the access token should work, got {body}"
    );
    body
}

/// `GET /v1/me` with a bearer token must be refused with 401 `unauthorized`.
pub(crate) async fn expect_me_unauthorized(app: &TestApp, access_token: &str, case: &str) -> Value {
    expect_problem(
        app.get_as(access_token, "/v1/me").await,
        401,
        "unauthorized",
        case,
    )
    .await
}

/// `POST /v1/auth/refresh` must succeed; returns the new pair (remembered as secrets).
pub(crate) async fn refresh_ok(app: &TestApp, refresh_token: &str, case: &str) -> TokenPair {
    let response = app.refresh(refresh_token).await;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(
        status, 200,
        "{case}: the refresh should succeed, got {text}"
    );
    let pair: TokenPair = serde_json::from_str(&text).expect("a token pair");
    app.remember_tokens(&pair);
    pair
}

/// `POST /v1/auth/refresh` must fail with 401 `invalid_refresh_token`; returns the body.
pub(crate) async fn refresh_refused(app: &TestApp, refresh_token: &str, case: &str) -> Value {
    expect_problem(
        app.refresh(refresh_token).await,
        401,
        "invalid_refresh_token",
        case,
    )
    .await
}

/// `GET /v1/audit-events`: the parsed events and the raw body (to search for secrets).
pub(crate) async fn audit_events(
    app: &TestApp,
    access_token: &str,
) -> (Vec<AuditEventView>, String) {
    let response = app.get_as(access_token, "/v1/audit-events").await;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "audit events: {text}");
    let list: AuditEventList = serde_json::from_str(&text).expect("an audit event list");
    (list.events, text)
}

/// Fails if `text` holds any of `secrets`, or anything shaped like a refresh
/// token or a JWT.
pub(crate) fn assert_holds_no_tokens(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} contains a token ({} characters)",
            secret.len()
        );
    }
    assert!(
        !text.contains("cdxr_"),
        "{what} contains something shaped like a refresh token"
    );
    assert!(
        !text.contains("eyJ"),
        "{what} contains something shaped like a JWT"
    );
}

// ---------------------------------------------------------------------------
// Forging.

fn b64_json(value: &Value) -> String {
    B64.encode(serde_json::to_vec(value).expect("JSON serialises"))
}

fn hmac(alg: &str, key: &[u8], input: &[u8]) -> Vec<u8> {
    match alg {
        "HS256" => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        "HS384" => {
            let mut mac = Hmac::<Sha384>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        "HS512" => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        other => panic!("no HMAC for {other}"),
    }
}

/// A compact JWS of `header` and `claims` with an HMAC signature.
fn sign_hmac(mac_alg: &str, key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = hmac(mac_alg, key, input.as_bytes());
    format!("{input}.{}", B64.encode(signature))
}

fn hex_decode(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "hex has an even length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The server's HS256 key, from its data directory.
fn server_jwt_key(app: &TestApp) -> Vec<u8> {
    let path = app.data_dir.path().join("secrets").join("jwt-hs256.key");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let key = hex_decode(text.trim());
    assert_eq!(key.len(), 32, "the HS256 key has 256 bits");
    key
}

/// Builds tokens from a genuine one: same header and claims unless edited.
struct Forge {
    key: Vec<u8>,
    header: Value,
    claims: Value,
}

impl Forge {
    fn of(app: &TestApp, genuine: &str) -> Self {
        Self {
            key: server_jwt_key(app),
            header: segment(genuine, 0),
            claims: segment(genuine, 1),
        }
    }

    /// Signs with HS256 and the server's key after editing header and claims.
    fn signed(
        &self,
        edit_header: impl FnOnce(&mut Map<String, Value>),
        edit_claims: impl FnOnce(&mut Map<String, Value>),
    ) -> String {
        let (header, claims) = self.edited(edit_header, edit_claims);
        sign_hmac("HS256", &self.key, &header, &claims)
    }

    /// Signs with the server's key after editing the claims only.
    fn with_claims(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        self.signed(|_| {}, edit)
    }

    /// Signs with the server's key after editing the header only.
    fn with_header(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        self.signed(edit, |_| {})
    }

    fn edited(
        &self,
        edit_header: impl FnOnce(&mut Map<String, Value>),
        edit_claims: impl FnOnce(&mut Map<String, Value>),
    ) -> (Value, Value) {
        let mut header = self.header.clone();
        let mut claims = self.claims.clone();
        edit_header(header.as_object_mut().expect("the header is an object"));
        edit_claims(claims.as_object_mut().expect("the claims are an object"));
        (header, claims)
    }

    fn kid(&self) -> String {
        self.header["kid"].as_str().expect("a kid").to_owned()
    }
}

/// An edit that sets one header field or claim.
fn set(key: &str, value: Value) -> impl FnOnce(&mut Map<String, Value>) {
    let key = key.to_owned();
    move |map| {
        map.insert(key, value);
    }
}

/// An edit that removes one header field or claim.
fn unset(key: &str) -> impl FnOnce(&mut Map<String, Value>) {
    let key = key.to_owned();
    move |map| {
        map.remove(&key);
    }
}

/// A server, a signed-in user and a forger whose untouched token is accepted.
struct Setup {
    app: TestApp,
    signed_in: SignInResponse,
    forge: Forge,
}

async fn setup_with(config: AppConfig) -> Setup {
    let app = spawn_app_with(config).await;
    let signed_in = app.sign_in_email("mallory-target@example.com").await;
    let forge = Forge::of(&app, &signed_in.tokens.access_token);
    let control = forge.with_claims(|_| {});
    app.remember_secret(&control);
    let me = expect_me(
        &app,
        &control,
        "control: the genuine header and claims re-signed by the test",
    )
    .await;
    assert_eq!(me["id"], signed_in.user.id.to_string());
    Setup {
        app,
        signed_in,
        forge,
    }
}

async fn setup() -> Setup {
    setup_with(AppConfig::default()).await
}

impl Setup {
    /// The refusal every forgery must get: 401, `unauthorized`, and the very
    /// same body as a request without any token.
    async fn refused(&self, token: &str, case: &str) {
        let reference = expect_problem(
            self.app.get("/v1/me").await,
            401,
            "unauthorized",
            "no token",
        )
        .await;
        let body = expect_me_unauthorized(&self.app, token, case).await;
        assert_eq!(
            body, reference,
            "{case}: a forgery must get the generic answer"
        );
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn a_valid_token_is_accepted_and_carries_every_required_claim() {
    let Setup { app, signed_in, .. } = setup().await;
    let token = &signed_in.tokens.access_token;
    let me = expect_me(&app, token, "a fresh access token").await;
    assert_eq!(me["id"], signed_in.user.id.to_string());

    let header = segment(token, 0);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(
        header["kid"].as_str().is_some_and(|k| !k.is_empty()),
        "a kid: {header}"
    );
    let claims = claims_of(token);
    assert_eq!(claims["iss"], "codeedex");
    assert_eq!(claims["aud"], "codeedex-api");
    assert_eq!(claims["sub"], signed_in.user.id.to_string());
    assert_eq!(claims["sid"], signed_in.tokens.session_id.to_string());
    assert_eq!(claims["typ"], "access");
    assert!(
        claims["jti"].as_str().is_some_and(|j| j.len() >= 16),
        "a jti: {claims}"
    );
    let iat = claims["iat"].as_i64().expect("iat");
    let exp = claims["exp"].as_i64().expect("exp");
    assert_eq!(exp - iat, 900, "the default lifetime is 15 minutes");
    assert!((iat - now_secs()).abs() <= 30, "iat is now");
    assert_eq!(signed_in.tokens.expires_in, 900);
    assert_eq!(signed_in.tokens.expires_at.timestamp(), exp);

    let again = app.sign_in_email("mallory-target@example.com").await;
    assert_ne!(
        claims_of(&again.tokens.access_token)["jti"],
        claims["jti"],
        "every token has its own jti"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn requests_without_a_usable_bearer_token_are_unauthorized() {
    let setup = setup().await;
    let app = &setup.app;
    let token = &setup.signed_in.tokens.access_token;
    let reference = expect_problem(
        app.get("/v1/me").await,
        401,
        "unauthorized",
        "no Authorization header",
    )
    .await;
    assert_eq!(reference["status"], 401);

    let url = format!("{}/v1/me", app.address);
    let cases = [
        ("Bearer".to_owned(), "the scheme alone"),
        ("Bearer ".to_owned(), "an empty token"),
        ("Bearer garbage".to_owned(), "garbage"),
        ("Bearer not.a.jwt".to_owned(), "three garbage segments"),
        ("Bearer ....".to_owned(), "dots only"),
        (
            format!("Basic {token}"),
            "a genuine token under another scheme",
        ),
        (token.clone(), "a genuine token without a scheme"),
        (format!("Bearer {}", "A".repeat(5000)), "an oversized token"),
    ];
    for (value, case) in cases {
        let response = app
            .client
            .get(&url)
            .header(AUTHORIZATION, value)
            .send()
            .await
            .expect("the server answers");
        let body = expect_problem(response, 401, "unauthorized", case).await;
        assert_eq!(body, reference, "{case}: the generic answer");
    }
    // Two Authorization headers are ambiguous, even if both are genuine.
    let response = app
        .client
        .get(&url)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .expect("the server answers");
    expect_problem(response, 401, "unauthorized", "two Authorization headers").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_unauthorized() {
    let setup = setup().await;
    let genuine = &setup.signed_in.tokens.access_token;
    let payload = genuine.split('.').nth(1).expect("a payload");
    let original_signature = genuine.split('.').nth(2).expect("a signature");
    for alg in ["none", "None", "NONE", "nOnE"] {
        let (header, _) = setup.forge.edited(set("alg", json!(alg)), |_| {});
        let unsigned = format!("{}.{payload}.", b64_json(&header));
        setup
            .refused(&unsigned, &format!("alg {alg} with an empty signature"))
            .await;
        let with_old_signature = format!("{}.{payload}.{original_signature}", b64_json(&header));
        setup
            .refused(
                &with_old_signature,
                &format!("alg {alg} with the original signature"),
            )
            .await;
    }
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_switched_algorithm_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    for alg in ["HS384", "HS512"] {
        let (header, claims) = forge.edited(set("alg", json!(alg)), |_| {});
        let token = sign_hmac(alg, &forge.key, &header, &claims);
        setup
            .refused(&token, &format!("{alg} with the server's key"))
            .await;
    }
    // Algorithm confusion: an asymmetric label over an HMAC made with the key.
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let token = forge.with_header(set("alg", json!(alg)));
        setup
            .refused(&token, &format!("{alg}-labelled, HMAC-SHA256 signature"))
            .await;
    }
    // The header must say HS256 exactly.
    let lower = forge.with_header(set("alg", json!("hs256")));
    setup.refused(&lower, "alg hs256 in lower case").await;
    let missing = forge.with_header(unset("alg"));
    setup.refused(&missing, "no alg").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_unknown_or_missing_kid_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    let real = forge.kid();
    let mut other = real.clone().into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).expect("ASCII");
    for (kid, case) in [
        (json!(other), "a kid one character off"),
        (json!("0000000000000000"), "a made-up kid"),
        (json!(""), "an empty kid"),
        (
            json!(format!("{real} ")),
            "the real kid with a trailing space",
        ),
        (json!("../../secrets/jwt-hs256.key"), "a path as kid"),
    ] {
        let token = forge.with_header(set("kid", kid));
        setup.refused(&token, case).await;
    }
    let no_kid = forge.with_header(unset("kid"));
    setup.refused(&no_kid, "no kid").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_flipped_signature_bit_or_an_edited_payload_is_unauthorized() {
    let setup = setup().await;
    let genuine = &setup.signed_in.tokens.access_token;
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let signature = B64.decode(&parts[2]).expect("base64url");
    for (byte, bit) in [(0, 0), (15, 3), (signature.len() - 1, 7)] {
        let mut flipped = signature.clone();
        flipped[byte] ^= 1 << bit;
        parts[2] = B64.encode(&flipped);
        setup
            .refused(
                &parts.join("."),
                &format!("bit {bit} of signature byte {byte} flipped"),
            )
            .await;
    }
    // The payload changed under the genuine signature: a later expiry.
    let mut claims = claims_of(genuine);
    claims["exp"] = json!(claims["exp"].as_i64().expect("exp") + 3600);
    let original: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{}.{}", original[0], b64_json(&claims), original[2]);
    setup
        .refused(&tampered, "a payload edited under the genuine signature")
        .await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_truncated_token_or_an_extra_segment_is_unauthorized() {
    let setup = setup().await;
    let genuine = setup.signed_in.tokens.access_token.clone();
    let parts: Vec<&str> = genuine.split('.').collect();
    let cases = [
        (
            format!("{}.{}", parts[0], parts[1]),
            "header and payload only",
        ),
        (format!("{}.{}.", parts[0], parts[1]), "an empty signature"),
        (
            genuine[..genuine.len() - 1].to_owned(),
            "the last character cut",
        ),
        (
            genuine[..genuine.len() - 10].to_owned(),
            "ten characters cut",
        ),
        (parts[0].to_owned(), "the header only"),
        (format!("{genuine}.{}", parts[2]), "a fourth segment"),
        (format!("{genuine}."), "a trailing dot"),
        (
            format!("{}..{}.{}", parts[0], parts[1], parts[2]),
            "an empty segment inserted",
        ),
        (
            format!("{genuine}AAAA"),
            "characters appended to the signature",
        ),
    ];
    for (token, case) in cases {
        setup.refused(&token, case).await;
    }
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_wrong_or_missing_audience_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    for (aud, case) in [
        (json!("codeedex-admin"), "another audience"),
        (json!("CODEEDEX-API"), "the audience in upper case"),
        (json!(""), "an empty audience"),
        (json!(["codeedex-admin"]), "a list with another audience"),
        (json!(null), "a null audience"),
    ] {
        let token = forge.with_claims(set("aud", aud));
        setup.refused(&token, case).await;
    }
    let missing = forge.with_claims(unset("aud"));
    setup.refused(&missing, "no aud").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    for (iss, case) in [
        (json!("https://evil.example"), "another issuer"),
        (json!("codeedex "), "the issuer with a trailing space"),
        (json!(""), "an empty issuer"),
        (json!(null), "a null issuer"),
    ] {
        let token = forge.with_claims(set("iss", iss));
        setup.refused(&token, case).await;
    }
    let missing = forge.with_claims(unset("iss"));
    setup.refused(&missing, "no iss").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_missing_exp_or_another_required_claim_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    for claim in ["exp", "iat", "sub", "sid", "jti", "typ"] {
        let token = forge.with_claims(unset(claim));
        setup.refused(&token, &format!("no {claim}")).await;
    }
    for (value, case) in [
        (json!(null), "a null exp"),
        (json!("never"), "a string exp"),
    ] {
        let token = forge.with_claims(set("exp", value));
        setup.refused(&token, case).await;
    }
    let not_after_iat = forge.with_claims(|c| {
        let iat = c["iat"].clone();
        c.insert("exp".into(), iat);
    });
    setup.refused(&not_after_iat, "exp equal to iat").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_issued_or_valid_only_in_the_future_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    let now = now_secs();
    let future_iat = forge.with_claims(|c| {
        c.insert("iat".into(), json!(now + 3600));
        c.insert("exp".into(), json!(now + 3600 + 900));
    });
    setup.refused(&future_iat, "iat one hour ahead").await;
    let slightly_ahead = forge.with_claims(|c| {
        c.insert("iat".into(), json!(now + 60));
        c.insert("exp".into(), json!(now + 60 + 900));
    });
    setup
        .refused(&slightly_ahead, "iat a minute ahead, beyond the clock skew")
        .await;
    let future_nbf = forge.with_claims(set("nbf", json!(now + 3600)));
    setup.refused(&future_nbf, "nbf one hour ahead").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_of_another_type_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    for typ in ["refresh", "Access", "id", ""] {
        let token = forge.with_claims(set("typ", json!(typ)));
        setup.refused(&token, &format!("typ claim {typ:?}")).await;
    }
    for typ in ["JWT", "refresh+jwt"] {
        let token = forge.with_header(set("typ", json!(typ)));
        setup.refused(&token, &format!("typ header {typ:?}")).await;
    }
    let no_header_typ = forge.with_header(unset("typ"));
    setup.refused(&no_header_typ, "no typ header").await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_refresh_token_presented_as_a_bearer_token_is_unauthorized() {
    let setup = setup().await;
    let refresh_token = &setup.signed_in.tokens.refresh_token;
    setup
        .refused(refresh_token, "the refresh token as bearer")
        .await;
    // The refresh token still works where it belongs: the attempt did not
    // consume it.
    let pair = refresh_ok(
        &setup.app,
        refresh_token,
        "the refresh token after being sent as bearer",
    )
    .await;
    setup
        .refused(&pair.refresh_token, "the rotated refresh token as bearer")
        .await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_signed_with_another_random_key_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    let (header, claims) = forge.edited(|_| {}, |_| {});
    let mut other_key = forge.key.clone();
    other_key[0] ^= 0x80;
    let random_key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(151).wrapping_add(7))
        .collect();
    setup
        .refused(
            &sign_hmac("HS256", &random_key, &header, &claims),
            "a random key",
        )
        .await;
    setup
        .refused(
            &sign_hmac("HS256", &other_key, &header, &claims),
            "the server's key with one bit changed",
        )
        .await;
    setup
        .refused(&sign_hmac("HS256", b"", &header, &claims), "an empty key")
        .await;
    let hex_as_key = std::fs::read(setup.app.data_dir.path().join("secrets/jwt-hs256.key"))
        .expect("the key file");
    setup
        .refused(
            &sign_hmac("HS256", &hex_as_key, &header, &claims),
            "the hex text of the key as key",
        )
        .await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_of_a_logged_out_session_is_rejected_at_once() {
    let setup = setup().await;
    let app = &setup.app;
    let token = &setup.signed_in.tokens.access_token;
    let other = app.sign_in_email("mallory-target@example.com").await;
    let response = app
        .post_json_as(token, "/v1/auth/logout", &json!({ "scope": "this" }))
        .await;
    assert_eq!(
        response.status(),
        200,
        "logout: {}",
        response.text().await.unwrap_or_default()
    );
    // The signature and claims are still valid for 15 minutes; the session is not.
    setup
        .refused(token, "the access token right after logout")
        .await;
    let resigned = setup.forge.with_claims(|_| {});
    setup
        .refused(&resigned, "the same claims re-signed after logout")
        .await;
    expect_me(app, &other.tokens.access_token, "the user's other session").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_validly_signed_token_for_a_session_that_does_not_exist_is_unauthorized() {
    let setup = setup().await;
    let forge = &setup.forge;
    let unknown = forge.with_claims(set("sid", json!("3b241101-e2bb-4255-8caf-4136c566a962")));
    setup.refused(&unknown, "a random session id").await;
    let nil = forge.with_claims(set("sid", json!("00000000-0000-0000-0000-000000000000")));
    setup.refused(&nil, "the nil session id").await;
    let not_uuid = forge.with_claims(set("sid", json!("session-1")));
    setup
        .refused(&not_uuid, "a session id that is not a UUID")
        .await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_token_whose_subject_does_not_own_its_session_is_unauthorized() {
    let setup = setup().await;
    let other_user = setup.app.sign_in_email("someone-else@example.com").await;
    // Another user's id with the victim's live session, and the reverse.
    let swapped_sub = setup
        .forge
        .with_claims(set("sub", json!(other_user.user.id.to_string())));
    setup
        .refused(&swapped_sub, "another user's id on this session")
        .await;
    let swapped_sid = setup
        .forge
        .with_claims(set("sid", json!(other_user.tokens.session_id.to_string())));
    setup
        .refused(&swapped_sid, "this user's id on another user's session")
        .await;
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_ignored() {
    let setup = setup().await;
    let forge = &setup.forge;
    let kid = forge.kid();
    let attacker_key = b"attacker-chosen-hmac-key-32bytes".to_vec();

    // A key URL the attacker controls: the server must never fetch it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let url = format!(
        "http://127.0.0.1:{}/.well-known/jwks.json",
        listener.local_addr().expect("an address").port()
    );
    for field in ["jku", "x5u"] {
        let (header, claims) = forge.edited(set(field, json!(url)), |_| {});
        let token = sign_hmac("HS256", &attacker_key, &header, &claims);
        setup
            .refused(
                &token,
                &format!("{field} to an attacker URL, attacker HMAC key"),
            )
            .await;
    }

    // The attacker's HMAC key embedded as a JWK.
    let oct = json!({ "kty": "oct", "k": B64.encode(&attacker_key), "alg": "HS256", "kid": kid });
    let (header, claims) = forge.edited(set("jwk", oct), |_| {});
    setup
        .refused(
            &sign_hmac("HS256", &attacker_key, &header, &claims),
            "an embedded oct JWK",
        )
        .await;

    // The classic embedded public key (CVE-2018-0114): an Ed25519 key pair of
    // the attacker's (RFC 8032 test vector 1) and its public half as `jwk`.
    let seed = hex_decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let public = hex_decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    let okp = json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public), "kid": kid });
    let (header, claims) = forge.edited(
        |h| {
            h.insert("alg".into(), json!("EdDSA"));
            h.insert("jwk".into(), okp);
        },
        |_| {},
    );
    let input = format!("{}.{}", b64_json(&header), b64_json(&claims));
    let attacker = ring::signature::Ed25519KeyPair::from_seed_and_public_key(&seed, &public)
        .expect("the RFC 8032 key pair");
    let signature = B64.encode(attacker.sign(input.as_bytes()));
    setup
        .refused(
            &format!("{input}.{signature}"),
            "EdDSA with an embedded attacker JWK",
        )
        .await;

    // Every refusal above has been answered, and a server that fetched a
    // key would have connected before answering: the kernel completes the
    // handshake into the listener's backlog, so a connection would be ready
    // to accept now, without waiting.
    let listener = listener.into_std().expect("a std listener");
    listener.set_nonblocking(true).expect("non-blocking");
    let contacted = listener.accept();
    assert!(
        matches!(&contacted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the server fetched a key from a URL in a token header: {contacted:?}"
    );
    setup.app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_expired_token_gets_token_expired_and_only_a_valid_signature_earns_that_answer() {
    let setup = setup().await;
    let app = &setup.app;
    let forge = &setup.forge;
    let now = now_secs();
    let expired = forge.with_claims(|c| {
        c.insert("iat".into(), json!(now - 3600));
        c.insert("exp".into(), json!(now - 2700));
    });
    let body = expect_problem(
        app.get_as(&expired, "/v1/me").await,
        401,
        "token_expired",
        "expired 45 minutes ago",
    )
    .await;
    assert_eq!(body["status"], 401);
    let just_expired = forge.with_claims(|c| {
        c.insert("iat".into(), json!(now - 920));
        c.insert("exp".into(), json!(now - 20));
    });
    expect_problem(
        app.get_as(&just_expired, "/v1/me").await,
        401,
        "token_expired",
        "expired 20 s ago",
    )
    .await;

    // An expired token must not reveal anything unless its signature is good:
    // with a broken signature or a foreign key it is just unauthorized.
    let mut parts: Vec<String> = expired.split('.').map(str::to_owned).collect();
    let mut signature = B64.decode(&parts[2]).expect("base64url");
    signature[0] ^= 1;
    parts[2] = B64.encode(&signature);
    setup
        .refused(&parts.join("."), "expired, with a flipped signature bit")
        .await;
    let (header, claims) = (segment(&expired, 0), segment(&expired, 1));
    setup
        .refused(
            &sign_hmac(
                "HS256",
                b"some-other-key-of-32-bytes-length",
                &header,
                &claims,
            ),
            "expired, foreign key",
        )
        .await;
    let expired_wrong_aud = forge.with_claims(|c| {
        c.insert("iat".into(), json!(now - 3600));
        c.insert("exp".into(), json!(now - 2700));
        c.insert("aud".into(), json!("codeedex-admin"));
    });
    setup
        .refused(&expired_wrong_aud, "expired, wrong audience")
        .await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_issued_token_expires_after_its_lifetime() {
    let setup = setup_with(AppConfig::default().with("--access-token-ttl-secs", 1)).await;
    let app = &setup.app;
    let token = &setup.signed_in.tokens.access_token;
    assert_eq!(setup.signed_in.tokens.expires_in, 1);
    let exp = claims_of(token)["exp"].as_i64().expect("exp");
    assert_eq!(exp - claims_of(token)["iat"].as_i64().expect("iat"), 1);
    expect_me(app, token, "before expiry").await;
    // The server tolerates 5 s of clock skew on exp.
    sleep_until_unix(exp + 5, 600).await;
    expect_problem(
        app.get_as(token, "/v1/me").await,
        401,
        "token_expired",
        "after expiry and skew",
    )
    .await;
    // The session itself lives on: a refresh gives a working token.
    let pair = refresh_ok(
        app,
        &setup.signed_in.tokens.refresh_token,
        "refresh after expiry",
    )
    .await;
    expect_me(app, &pair.access_token, "the refreshed token").await;
    app.assert_no_secrets_in_logs();
}
