//! Request bodies the server must refuse, and the shape of every refusal.

use std::time::Duration;

use codeedex_tests::app::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The auth endpoints that take a JSON body without credentials.
const PUBLIC_ENDPOINTS: [&str; 3] = ["/v1/auth/otp", "/v1/auth/verify", "/v1/auth/refresh"];

/// Sends `body` as-is with the given content type (none if `None`).
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.address))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("the server answers")
}

async fn post_raw(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    send(
        app,
        Method::POST,
        path,
        Some("application/json"),
        body,
        None,
    )
    .await
}

/// Checks that `response` is an RFC 9457 problem with this status and code;
/// returns the document.
async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let text = response.text().await.expect("a body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(content_type, "application/problem+json", "body: {text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON problem document");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:codeedex:problem:{code}"),
        "{body}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "a problem has a title: {body}"
    );
    body
}

/// Signs a user in; returns the access and refresh tokens.
async fn signed_in(app: &TestApp, email: &str) -> (String, String) {
    let signed_in = app.sign_in_email(email).await;
    (
        signed_in.tokens.access_token,
        signed_in.tokens.refresh_token,
    )
}

#[tokio::test]
async fn malformed_json_is_refused_with_invalid_request() {
    let app = spawn_app().await;
    let (token, _) = signed_in(&app, "json@example.com").await;
    let bodies = [
        r#"{"email": "a@example.com""#,
        r#"{"email": "a@example.com",}"#,
        r#"{'email': 'a@example.com'}"#,
        "not json at all",
        "[",
        "nul",
        "\u{feff}{\"email\": \"a@example.com\"}",
        "{\"email\": \"a@example.com\"} trailing",
        "\"just a string\"",
        "42",
    ];
    for body in bodies {
        for path in PUBLIC_ENDPOINTS {
            let problem =
                assert_problem(post_raw(&app, path, body).await, 400, "invalid_request").await;
            assert!(problem["detail"].is_string(), "{path} {body:?}: {problem}");
        }
        let response = send(
            &app,
            Method::POST,
            "/v1/auth/logout",
            Some("application/json"),
            body,
            Some(&token),
        )
        .await;
        assert_problem(response, 400, "invalid_request").await;
    }
    // Invalid UTF-8.
    let response = post_raw(
        &app,
        "/v1/auth/otp",
        b"{\"email\": \"a\xff@example.com\"}".to_vec(),
    )
    .await;
    assert_problem(response, 400, "invalid_request").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn wrong_types_are_refused_with_invalid_request() {
    let app = spawn_app().await;
    let (token, _) = signed_in(&app, "types@example.com").await;
    let cases = [
        ("/v1/auth/otp", json!({ "email": 42 })),
        ("/v1/auth/otp", json!({ "email": ["a@example.com"] })),
        (
            "/v1/auth/otp",
            json!({ "email": { "address": "a@example.com" } }),
        ),
        ("/v1/auth/otp", json!({ "phone": 14155552671_u64 })),
        ("/v1/auth/otp", json!({ "email": true })),
        (
            "/v1/auth/verify",
            json!({ "email": "a@example.com", "code": 123456 }),
        ),
        (
            "/v1/auth/verify",
            json!({ "email": "a@example.com", "code": null }),
        ),
        (
            "/v1/auth/verify",
            json!({ "email": "a@example.com", "code": "123456", "device_name": 7 }),
        ),
        ("/v1/auth/refresh", json!({ "refresh_token": 5 })),
        ("/v1/auth/refresh", json!({ "refresh_token": ["cdxr_x"] })),
    ];
    for (path, body) in cases {
        let problem =
            assert_problem(app.post_json(path, &body).await, 400, "invalid_request").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("invalid type")),
            "the detail says what is wrong: {problem}"
        );
    }
    for body in [
        json!({ "scope": "everyone" }),
        json!({ "scope": 1 }),
        json!({ "scope": null }),
    ] {
        let response = app.post_json_as(&token, "/v1/auth/logout", &body).await;
        assert_problem(response, 400, "invalid_request").await;
    }
    // The refused logouts ended nothing.
    assert_eq!(app.get_as(&token, "/v1/me").await.status(), 200);
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn unknown_fields_are_refused_and_nothing_is_sent() {
    let app = spawn_app().await;
    let (token, refresh) = signed_in(&app, "fields@example.com").await;
    let cases = [
        (
            "/v1/auth/otp",
            json!({ "email": "extra@example.com", "admin": true }),
        ),
        (
            "/v1/auth/otp",
            json!({ "email": "extra@example.com", "Email": "other@example.com" }),
        ),
        (
            "/v1/auth/verify",
            json!({ "email": "extra@example.com", "code": "123456", "trusted": true }),
        ),
        (
            "/v1/auth/refresh",
            json!({ "refresh_token": refresh, "session_id": "x" }),
        ),
    ];
    for (path, body) in cases {
        let problem =
            assert_problem(app.post_json(path, &body).await, 400, "invalid_request").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("unknown field")),
            "{problem}"
        );
    }
    let response = app
        .post_json_as(
            &token,
            "/v1/auth/logout",
            &json!({ "scope": "all", "force": true }),
        )
        .await;
    assert_problem(response, 400, "invalid_request").await;
    assert_eq!(
        app.get_as(&token, "/v1/me").await.status(),
        200,
        "a refused logout ended the session"
    );
    // The refused refresh did not use up the refresh token.
    let refreshed = app.refresh(&refresh).await;
    assert_eq!(refreshed.status(), 200);
    let pair: codeedex_schema::api::auth::TokenPair = refreshed.json().await.expect("a token pair");
    app.remember_tokens(&pair);

    // No code went to the address in the refused requests.
    assert_eq!(
        app.request_email_code("later@example.com").await.status(),
        202
    );
    app.next_email_code("later@example.com").await;
    assert!(
        app.mail
            .messages()
            .iter()
            .all(|m| m.to != ["extra@example.com"]),
        "a refused request sent a code"
    );
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn a_json_array_is_not_accepted_in_place_of_an_object() {
    let app = spawn_app().await;
    let (token, refresh) = signed_in(&app, "arrays@example.com").await;
    for (path, body) in [
        ("/v1/auth/otp", json!(["array@example.com"])),
        (
            "/v1/auth/verify",
            json!(["arrays@example.com", null, "123456"]),
        ),
        ("/v1/auth/refresh", json!([refresh])),
    ] {
        assert_problem(app.post_json(path, &body).await, 400, "invalid_request").await;
    }
    let response = app
        .post_json_as(&token, "/v1/auth/logout", &json!([]))
        .await;
    assert_problem(response, 400, "invalid_request").await;
    assert_eq!(
        app.get_as(&token, "/v1/me").await.status(),
        200,
        "an array body logged the session out"
    );
}

#[tokio::test]
async fn missing_fields_are_refused() {
    let app = spawn_app().await;
    for (path, body) in [
        ("/v1/auth/verify", json!({ "email": "a@example.com" })),
        (
            "/v1/auth/verify",
            json!({ "phone": "+14155552671", "device_name": "phone" }),
        ),
        ("/v1/auth/refresh", json!({})),
    ] {
        let problem =
            assert_problem(app.post_json(path, &body).await, 400, "invalid_request").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("missing field")),
            "{problem}"
        );
    }
    // No identifier at all is an identifier problem.
    assert_problem(
        app.post_json("/v1/auth/otp", &json!({})).await,
        400,
        "invalid_identifier",
    )
    .await;
    assert_problem(
        app.post_json("/v1/auth/verify", &json!({ "code": "123456" }))
            .await,
        400,
        "invalid_identifier",
    )
    .await;
}

#[tokio::test]
async fn an_empty_body_is_refused() {
    let app = spawn_app().await;
    for path in PUBLIC_ENDPOINTS {
        assert_problem(post_raw(&app, path, "").await, 400, "invalid_request").await;
        assert_problem(post_raw(&app, path, "   \n").await, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn a_body_over_16_kib_is_refused_with_413() {
    let app = spawn_app().await;
    const LIMIT: usize = 16 * 1024;
    // A valid request padded with whitespace to exactly the limit is read.
    let valid = r#"{"email":"big@example.com"}"#;
    let exact = format!("{valid}{}", " ".repeat(LIMIT - valid.len()));
    assert_eq!(exact.len(), LIMIT);
    assert_eq!(
        post_raw(&app, "/v1/auth/otp", exact.clone()).await.status(),
        202
    );
    // One byte more is not.
    let over = format!("{exact} ");
    for path in PUBLIC_ENDPOINTS {
        assert_problem(
            post_raw(&app, path, over.clone()).await,
            413,
            "payload_too_large",
        )
        .await;
    }
    app.next_email_code("big@example.com").await;
    assert_eq!(
        app.mail.messages().len(),
        1,
        "only the request within the limit sent a code"
    );
}

/// Sends raw bytes over a new connection and returns the response's status line.
async fn raw_request(app: &TestApp, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_chunked_body_over_16_kib_is_refused_with_413() {
    let app = spawn_app().await;
    let body = format!(r#"{{"email":"{}@example.com"}}"#, "a".repeat(20_000));
    let mut request = String::from(
        "POST /v1/auth/otp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(4096) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    request.push_str("0\r\n\r\n");
    let status_line = raw_request(&app, request.as_bytes()).await;
    assert!(
        status_line.starts_with("HTTP/1.1 413"),
        "got {status_line:?}"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_wrong_content_type_is_refused_with_415() {
    let app = spawn_app().await;
    let body = r#"{"email":"typed@example.com"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        None,
    ] {
        for path in PUBLIC_ENDPOINTS {
            let response = send(&app, Method::POST, path, content_type, body, None).await;
            assert_problem(response, 415, "unsupported_media_type").await;
        }
    }
    // A charset parameter is fine.
    let response = send(
        &app,
        Method::POST,
        "/v1/auth/otp",
        Some("application/json; charset=utf-8"),
        body,
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    app.next_email_code("typed@example.com").await;
    assert_eq!(
        app.mail.messages().len(),
        1,
        "only the JSON request sent a code"
    );
}

#[tokio::test]
async fn deep_nesting_is_refused_and_the_server_stays_up() {
    let app = spawn_app().await;
    // As deep as fits in 16 KiB: 8,000 arrays, or 2,700 objects.
    let arrays = format!(r#"{{"email":{}{}}}"#, "[".repeat(8_000), "]".repeat(8_000));
    let objects = format!(
        r#"{{"email":{}1{}}}"#,
        r#"{"a":"#.repeat(2_700),
        "}".repeat(2_700)
    );
    for body in [&arrays, &objects] {
        assert!(body.len() <= 16 * 1024);
        for path in PUBLIC_ENDPOINTS {
            assert_problem(
                post_raw(&app, path, body.clone()).await,
                400,
                "invalid_request",
            )
            .await;
        }
    }
    // 10,000 nested arrays do not even fit in the size limit.
    let deeper = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_problem(
        post_raw(&app, "/v1/auth/otp", deeper).await,
        413,
        "payload_too_large",
    )
    .await;

    assert_eq!(app.get("/healthz").await.status(), 200);
    app.sign_in_email("still-up@example.com").await;
    app.assert_no_secrets_in_logs();
}

#[tokio::test]
async fn an_unknown_path_is_a_404_problem() {
    let app = spawn_app().await;
    // `/` is the web app (tests/tests/web.rs); paths beside it are not.
    for (method, path) in [
        (Method::GET, "/index.htm"),
        (Method::GET, "/assets/nope.js"),
        (Method::GET, "/nope"),
        (Method::POST, "/v1/auth/otpx"),
        (Method::POST, "/v1/auth"),
        (Method::GET, "/v2/me"),
        (Method::POST, "/v1/users"),
        (Method::GET, "/v1/sessions/x/y"),
    ] {
        let response = send(&app, method, path, Some("application/json"), "{}", None).await;
        assert_problem(response, 404, "not_found").await;
    }
    // A malformed session id names no resource either.
    let (token, _) = signed_in(&app, "paths@example.com").await;
    let response = send(
        &app,
        Method::DELETE,
        "/v1/sessions/not-a-session-id",
        None,
        "",
        Some(&token),
    )
    .await;
    assert_problem(response, 404, "not_found").await;
    app.assert_no_secrets_in_logs();
}

/// Every route with the methods it does not support.
fn wrong_methods() -> Vec<(Method, &'static str, &'static str)> {
    vec![
        (Method::GET, "/v1/auth/otp", "POST"),
        (Method::PUT, "/v1/auth/otp", "POST"),
        (Method::DELETE, "/v1/auth/verify", "POST"),
        (Method::GET, "/v1/auth/refresh", "POST"),
        (Method::PATCH, "/v1/auth/logout", "POST"),
        (Method::POST, "/v1/me", "GET"),
        (Method::DELETE, "/v1/me", "GET"),
        (Method::POST, "/v1/sessions", "GET"),
        (Method::GET, "/v1/sessions/0123", "DELETE"),
        (Method::PUT, "/v1/audit-events", "GET"),
    ]
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    for (method, path, _) in wrong_methods() {
        let response = send(
            &app,
            method.clone(),
            path,
            Some("application/json"),
            "{}",
            None,
        )
        .await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 405, "{method} {path}: {body}");
        let problem: Value = serde_json::from_str(&body).expect("a problem document");
        assert_eq!(problem["code"], "method_not_allowed", "{method} {path}");
        assert_eq!(problem["type"], "urn:codeedex:problem:method_not_allowed");
        assert_eq!(problem["status"], 405);
    }
    let response = send(&app, Method::GET, "/v1/auth/otp", None, "", None).await;
    assert_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    // RFC 9110 §15.5.6: a 405 response MUST carry an Allow header.
    let app = spawn_app().await;
    for (method, path, allowed) in wrong_methods() {
        let response = send(&app, method.clone(), path, None, "", None).await;
        assert_eq!(response.status(), 405);
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert!(
            allow
                .as_deref()
                .is_some_and(|a| a.split(',').any(|m| m.trim() == allowed)),
            "{method} {path}: Allow is {allow:?}, expected it to list {allowed}"
        );
    }
}

#[tokio::test]
async fn every_error_answer_is_a_problem_document() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (
            post_raw(&app, "/v1/auth/otp", "{").await,
            400,
            "invalid_request",
        ),
        (
            app.post_json("/v1/auth/otp", &json!({ "email": "x" }))
                .await,
            400,
            "invalid_identifier",
        ),
        (
            app.verify_email("nobody@example.com", "000000").await,
            400,
            "invalid_code",
        ),
        (app.get("/v1/me").await, 401, "unauthorized"),
        (
            app.get_as("not-a-token", "/v1/sessions").await,
            401,
            "unauthorized",
        ),
        (
            app.post_json("/v1/auth/logout", &json!({})).await,
            401,
            "unauthorized",
        ),
        (
            app.refresh("cdxr_forged").await,
            401,
            "invalid_refresh_token",
        ),
        (app.get("/missing").await, 404, "not_found"),
        (
            send(&app, Method::GET, "/v1/auth/verify", None, "", None).await,
            405,
            "method_not_allowed",
        ),
        (
            post_raw(&app, "/v1/auth/otp", "x".repeat(20_000)).await,
            413,
            "payload_too_large",
        ),
        (
            send(
                &app,
                Method::POST,
                "/v1/auth/otp",
                Some("text/plain"),
                "{}",
                None,
            )
            .await,
            415,
            "unsupported_media_type",
        ),
    ];
    for (response, status, code) in cases {
        let cache_control = response.headers().get("cache-control").cloned();
        assert_problem(response, status, code).await;
        assert_eq!(
            cache_control.as_ref().and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{code}"
        );
    }
}

#[tokio::test]
async fn garbage_sent_to_every_endpoint_leaves_stored_data_intact() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email("sturdy@example.com").await;
    let token = signed_in.tokens.access_token.clone();
    let refresh = signed_in.tokens.refresh_token.clone();

    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"\x00\xff\xfe garbage".to_vec(),
        b"{\"email\": \"sturdy@example.com\", \"code\": 1}".to_vec(),
        b"{\"email\": \"sturdy@example.com\", \"phone\": \"+14155552671\"}".to_vec(),
        b"{\"refresh_token\": null}".to_vec(),
        b"{\"scope\": \"all\", \"x\": 1}".to_vec(),
        "[".repeat(5_000).into_bytes(),
        vec![b' '; 20_000],
    ];
    let endpoints = [
        (Method::POST, "/v1/auth/otp"),
        (Method::POST, "/v1/auth/verify"),
        (Method::POST, "/v1/auth/refresh"),
        (Method::POST, "/v1/auth/logout"),
        (Method::GET, "/v1/me"),
        (Method::GET, "/v1/sessions"),
        (Method::DELETE, "/v1/sessions/garbage"),
        (Method::GET, "/v1/audit-events"),
    ];
    for body in &garbage {
        for (method, path) in &endpoints {
            for content_type in [Some("application/json"), Some("text/plain"), None] {
                for bearer in [Some(token.as_str()), Some("garbage"), None] {
                    let response = send(
                        &app,
                        method.clone(),
                        path,
                        content_type,
                        body.clone(),
                        bearer,
                    )
                    .await;
                    assert!(
                        !response.status().is_server_error(),
                        "{method} {path} answered {}",
                        response.status()
                    );
                }
            }
        }
    }
    // The session, the account and the refresh token are as they were.
    let me = app.get_as(&token, "/v1/me").await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.expect("a user");
    assert_eq!(me["id"], signed_in.user.id.to_string());
    assert_eq!(me["email"], "sturdy@example.com");
    let sessions: Value = app
        .get_as(&token, "/v1/sessions")
        .await
        .json()
        .await
        .expect("sessions");
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(1),
        "{sessions}"
    );
    let refreshed = app.refresh(&refresh).await;
    assert_eq!(refreshed.status(), 200);
    let pair: codeedex_schema::api::auth::TokenPair = refreshed.json().await.expect("a pair");
    app.remember_tokens(&pair);
    assert_eq!(app.get_as(&pair.access_token, "/v1/me").await.status(), 200);
    // And the same address still signs in to the same account.
    let again = app.sign_in_email("sturdy@example.com").await;
    assert_eq!(again.user.id, signed_in.user.id);
    app.assert_no_secrets_in_logs();
}
