//! A stand-in for a Twilio-style SMS provider at its HTTP boundary, for end-to-end tests
//! that need to read the one-time codes the server under test sends by SMS.
//!
//! It serves `POST /2010-04-01/Accounts/{account_sid}/Messages.json` on `127.0.0.1`,
//! with an `application/x-www-form-urlencoded` body (`To`, `From`, `Body`) and HTTP Basic
//! auth `account_sid:auth_token`, answering like Twilio does (201 with a message resource,
//! or a JSON error `{"code", "message", "more_info", "status"}`).
//!
//! The HTTP server (actix-web, one worker) runs on its own thread with its own actix
//! `System`, so it works from any test, including `#[tokio::test]`. It stops when dropped.
//!
//! ```text
//! let sms = SmsProviderStub::start("AC0123", "secret").await;
//! // point the server under test at sms.base_url() with the same sid and token
//! let sent = sms.wait_for_sms_to("+15551234567", Duration::from_secs(10)).await?;
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use tokio::sync::{Notify, oneshot};

const API_VERSION: &str = "2010-04-01";

/// One message accepted by the stub (the form fields as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    pub to: String,
    pub from: String,
    pub body: String,
}

/// A running fake SMS provider. Stops when dropped.
#[derive(Debug)]
pub struct SmsProviderStub {
    addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
}

impl SmsProviderStub {
    /// Starts the stub on `127.0.0.1:0`, accepting only requests authenticated as
    /// `account_sid:auth_token` for that account.
    ///
    /// # Panics
    /// If the socket cannot be bound or the server cannot be started.
    pub async fn start(account_sid: impl Into<String>, auth_token: impl Into<String>) -> Self {
        let state = Arc::new(State {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            entries: Mutex::new(Vec::new()),
            notify: Notify::new(),
            failures: Mutex::new(VecDeque::new()),
            counter: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("sms provider stub: cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("sms provider stub: cannot make the listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("sms provider stub: no local address");
        let (handle_tx, handle_rx) = oneshot::channel::<std::io::Result<ServerHandle>>();
        let server_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("sms-provider-stub-{}", addr.port()))
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let data = web::Data::from(server_state);
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .service(
                                web::resource("/2010-04-01/Accounts/{account_sid}/Messages.json")
                                    .route(web::post().to(create_message)),
                            )
                            .default_service(web::to(not_found))
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener);
                    match server {
                        Ok(server) => {
                            let server = server.run();
                            let _ = handle_tx.send(Ok(server.handle()));
                            let _ = server.await;
                        }
                        Err(error) => {
                            let _ = handle_tx.send(Err(error));
                        }
                    }
                });
            })
            .expect("sms provider stub: cannot spawn its thread");
        let handle = handle_rx
            .await
            .expect("sms provider stub: its thread died while starting")
            .expect("sms provider stub: cannot start the HTTP server");
        SmsProviderStub {
            addr,
            state,
            handle,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL messages are posted to for this stub's account.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/{API_VERSION}/Accounts/{}/Messages.json",
            self.base_url(),
            self.state.account_sid
        )
    }

    /// Every message accepted so far, oldest first (including those already returned by
    /// [`Self::wait_for_sms_to`]).
    pub fn messages(&self) -> Vec<SentSms> {
        self.state
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(sms, _)| sms.clone())
            .collect()
    }

    /// Waits for the oldest message to `to` that no earlier call has returned, and marks
    /// it as taken: successive calls for the same number return that number's messages in
    /// the order they arrived. Numbers are compared ignoring spaces, dashes, dots and
    /// parentheses.
    ///
    /// Must be called from within a tokio runtime with the time driver enabled.
    pub async fn wait_for_sms_to(&self, to: &str, timeout: Duration) -> anyhow::Result<SentSms> {
        let wanted = normalize_number(to);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a message recorded in between wakes us.
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(sms) = self.state.take_first(&wanted) {
                return Ok(sms);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(sms) = self.state.take_first(&wanted) {
                    return Ok(sms);
                }
                let seen: Vec<String> = self.messages().into_iter().map(|m| m.to).collect();
                anyhow::bail!(
                    "no new SMS to {to:?} within {timeout:?} (recipients so far, including \
                     already taken messages: {seen:?})"
                );
            }
        }
    }

    /// Makes the next request (whatever its credentials) fail with `status` and a Twilio
    /// style JSON error, without recording a message. Calls add up: calling it twice
    /// fails the next two requests, in the order given.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code (100..=999).
    pub fn fail_next(&self, status: u16) {
        assert!(
            StatusCode::from_u16(status).is_ok(),
            "fail_next: {status} is not an HTTP status code"
        );
        self.state
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(status);
    }
}

impl Drop for SmsProviderStub {
    fn drop(&mut self) {
        // The stop command is sent right away; the returned future only reports completion.
        drop(self.handle.stop(false));
    }
}

#[derive(Debug)]
struct State {
    account_sid: String,
    auth_token: String,
    /// Accepted messages with their "taken" mark.
    entries: Mutex<Vec<(SentSms, bool)>>,
    notify: Notify,
    failures: Mutex<VecDeque<u16>>,
    counter: AtomicU64,
}

impl State {
    fn record(&self, sms: SentSms) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((sms, false));
        self.notify.notify_waiters();
    }

    fn take_first(&self, wanted: &str) -> Option<SentSms> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (sms, taken) = entries
            .iter_mut()
            .find(|(sms, taken)| !*taken && normalize_number(&sms.to) == wanted)?;
        *taken = true;
        Some(sms.clone())
    }

    fn next_failure(&self) -> Option<u16> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

fn normalize_number(number: &str) -> String {
    number
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect()
}

fn twilio_error(status: u16, code: u32, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header(("WWW-Authenticate", "Basic realm=\"Twilio API\""));
    }
    response.json(serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    }))
}

/// `Authorization: Basic base64(user:password)` → `(user, password)`.
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn create_message(
    req: HttpRequest,
    path: web::Path<String>,
    form: Result<web::Form<Vec<(String, String)>>, actix_web::Error>,
    state: web::Data<State>,
) -> HttpResponse {
    if let Some(status) = state.next_failure() {
        let code = 20000 + u32::from(status);
        return twilio_error(status, code, "Simulated provider failure (fail_next)");
    }
    match basic_credentials(&req) {
        Some((sid, token)) if sid == state.account_sid && token == state.auth_token => {}
        _ => return twilio_error(401, 20003, "Authenticate"),
    }
    let account_sid = path.into_inner();
    if account_sid != state.account_sid {
        return twilio_error(
            401,
            20003,
            "Authenticate: the account SID in the URL does not match the credentials",
        );
    }
    let form = match form {
        Ok(form) => form.into_inner(),
        Err(error) => {
            return twilio_error(400, 21100, &format!("Invalid form body: {error}"));
        }
    };
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
    };
    let Some(to) = field("To") else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    let Some(from) = field("From").or_else(|| field("MessagingServiceSid")) else {
        return twilio_error(400, 21603, "A 'From' phone number is required.");
    };
    let Some(body) = field("Body") else {
        return twilio_error(400, 21602, "Message body is required.");
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let serial = state.counter.fetch_add(1, Ordering::Relaxed);
    let sid = format!("SM{:016x}{:016x}", now.as_nanos() as u64, serial);
    let date = rfc2822(now.as_secs());
    let uri = format!("/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json");
    let response = serde_json::json!({
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": date,
        "date_sent": null,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json"),
        },
        "to": to,
        "uri": uri,
    });
    state.record(SentSms { to, from, body });
    HttpResponse::Created().json(response)
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    twilio_error(
        404,
        20404,
        &format!("The requested resource {} was not found", req.path()),
    )
}

/// Formats a Unix time like Twilio's dates: `Thu, 24 Aug 2023 05:01:45 +0000`.
fn rfc2822(unix_seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_seconds / 86_400;
    let seconds = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, for days >= 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_formatted_like_twilio() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_692_853_305), "Thu, 24 Aug 2023 05:01:45 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn numbers_are_normalized() {
        assert_eq!(normalize_number("+1 (555) 123-4567"), "+15551234567");
    }
}
