//! A real SMTP server (a subset of RFC 5321) on `127.0.0.1`, for end-to-end tests that
//! need to read the one-time codes the server under test sends by email.
//!
//! The catcher runs on its own thread with its own single-threaded tokio runtime, so it
//! keeps answering even while the test's runtime is busy or blocked, and it works from any
//! kind of test (`#[tokio::test]`, multi-threaded or not). It stops when dropped.
//!
//! ```text
//! let catcher = MailCatcher::start().await;
//! // configure the server under test with SMTP host 127.0.0.1, port catcher.port(), no TLS
//! let mail = catcher.wait_for_mail_to("alice@example.com", Duration::from_secs(10)).await?;
//! let code = mail.code(6).expect("no 6-digit code in the mail");
//! ```
//!
//! Supported: greeting 220, `EHLO` (advertising `8BITMIME`, `SMTPUTF8`, `SIZE`,
//! `ENHANCEDSTATUSCODES`), `HELO`, `MAIL FROM` (parameters `SIZE`, `BODY`, `SMTPUTF8`),
//! `RCPT TO` (up to [`MAX_RECIPIENTS`]), `DATA` (dot-stuffing undone), `RSET`, `NOOP`,
//! `VRFY` (252), `HELP`, `QUIT`. Unknown commands get 502, commands out of sequence 503,
//! command lines longer than [`MAX_COMMAND_LINE`] 500, messages with a text line longer
//! than [`MAX_TEXT_LINE`] 554 and messages larger than [`MAX_MESSAGE_SIZE`] 552. No
//! PIPELINING advertised (pipelined commands are still answered in order).
//!
//! What production mail servers require, when [`MailOptions`] ask for it: TLS, either
//! implicit (RFC 8314: the handshake first) or by `STARTTLS` (RFC 3207: commands other
//! than `EHLO`, `STARTTLS`, `NOOP`, `RSET` and `QUIT` get 530 until it), with a
//! certificate the test made ([`crate::certificates`]); and `AUTH PLAIN` or `AUTH LOGIN`
//! (RFC 4954), required before `MAIL` and offered only over TLS. Each message records
//! whether it came over TLS and as whom; failed handshakes are counted.
//!
//! The file holds the server and its SMTP session; `received` reads the text
//! of what arrived, and `security` is TLS and AUTH. It is longer than 600
//! lines because it is one protocol state machine: splitting the session
//! from its command handlers would only spread it over two files.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

mod received;
mod security;

pub use received::{ReceivedMail, extract_code};
pub use security::{MailOptions, MailTls};
use security::{Security, authenticate};

/// Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest line of message text accepted, CRLF included (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
/// Largest message accepted (after dot-unstuffing), advertised with `SIZE`.
pub const MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;
/// Most recipients accepted in one transaction (RFC 5321 §4.5.3.1.8).
pub const MAX_RECIPIENTS: usize = 100;
/// A connection that sends nothing for this long is closed with 421.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const SERVER_NAME: &str = "mail-catcher.codeedex.test";

/// A running SMTP server that records every message it accepts. Stops when dropped.
#[derive(Debug)]
pub struct MailCatcher {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl MailCatcher {
    /// Binds `127.0.0.1:0` and starts serving plain SMTP on a dedicated thread.
    ///
    /// # Panics
    /// If the socket cannot be bound or the thread cannot be started.
    pub async fn start() -> MailCatcher {
        Self::start_with(MailOptions::default()).await
    }

    /// Like [`Self::start`], with TLS and authentication as `options` say.
    ///
    /// # Panics
    /// If the socket cannot be bound, the thread cannot be started, or the certificate
    /// and key in `options` do not match.
    pub async fn start_with(options: MailOptions) -> MailCatcher {
        let security = Arc::new(Security::new(options));
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("mail catcher: cannot bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("mail catcher: cannot make the listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("mail catcher: no local address");
        let inbox = Arc::new(Inbox::default());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let thread_inbox = Arc::clone(&inbox);
        std::thread::Builder::new()
            .name(format!("mail-catcher-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("mail catcher: cannot build a tokio runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .expect("mail catcher: cannot register the listener");
                    let _ = ready_tx.send(());
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = accept_loop(listener, thread_inbox, security) => {}
                    }
                });
                // Dropping the runtime here cancels every open connection's task.
            })
            .expect("mail catcher: cannot spawn its thread");
        ready_rx
            .await
            .expect("mail catcher: its thread died while starting");
        MailCatcher {
            addr,
            inbox,
            shutdown: Some(shutdown_tx),
        }
    }

    /// The TCP port the catcher listens on (host `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The full socket address the catcher listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many TLS handshakes failed so far (for example, because the client did not
    /// trust the certificate).
    pub fn failed_handshakes(&self) -> u64 {
        *self
            .inbox
            .failed_handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until at least `count` TLS handshakes have failed.
    pub async fn wait_for_failed_handshakes(
        &self,
        count: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inbox.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.failed_handshakes() >= count {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::ensure!(
                    self.failed_handshakes() >= count,
                    "{} TLS handshakes failed within {timeout:?}, not {count}",
                    self.failed_handshakes()
                );
                return Ok(());
            }
        }
    }

    /// Every message accepted so far, oldest first (including those already returned by
    /// [`Self::wait_for_mail_to`]).
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.inbox.all()
    }

    /// Waits for the oldest message to `recipient` that no earlier call has returned, and
    /// marks it as taken: two successive calls for the same address return that address's
    /// messages in the order they arrived. Recipients are compared case-insensitively and
    /// without angle brackets, against the envelope (`RCPT TO`) addresses.
    ///
    /// Must be called from within a tokio runtime with the time driver enabled.
    pub async fn wait_for_mail_to(
        &self,
        recipient: &str,
        timeout: Duration,
    ) -> anyhow::Result<ReceivedMail> {
        let wanted = normalize_address(recipient);
        let matches =
            |mail: &ReceivedMail| mail.to.iter().any(|to| normalize_address(to) == wanted);
        if let Some(mail) = self.inbox.wait_take(matches, timeout).await {
            return Ok(mail);
        }
        let seen: Vec<String> = self
            .inbox
            .all()
            .iter()
            .map(|m| format!("{:?} -> {:?}", m.from, m.to))
            .collect();
        anyhow::bail!(
            "no new mail to {recipient:?} within {timeout:?} (messages received so far, \
             including already taken ones: {seen:?})"
        )
    }
}

impl Drop for MailCatcher {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn normalize_address(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// Received messages with a "taken" mark, and a wake-up for waiters.
#[derive(Debug, Default)]
struct Inbox {
    entries: Mutex<Vec<(ReceivedMail, bool)>>,
    failed_handshakes: Mutex<u64>,
    notify: Notify,
}

impl Inbox {
    fn push(&self, mail: ReceivedMail) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((mail, false));
        self.notify.notify_waiters();
    }

    fn handshake_failed(&self) {
        *self
            .failed_handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.notify.notify_waiters();
    }

    fn all(&self) -> Vec<ReceivedMail> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(mail, _)| mail.clone())
            .collect()
    }

    fn take_first(&self, matches: &impl Fn(&ReceivedMail) -> bool) -> Option<ReceivedMail> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (mail, taken) = entries
            .iter_mut()
            .find(|(mail, taken)| !*taken && matches(mail))?;
        *taken = true;
        Some(mail.clone())
    }

    async fn wait_take(
        &self,
        matches: impl Fn(&ReceivedMail) -> bool,
        timeout: Duration,
    ) -> Option<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a message pushed in between wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(mail) = self.take_first(&matches) {
                return Some(mail);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.take_first(&matches);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, inbox: Arc<Inbox>, security: Arc<Security>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (inbox, security) = (Arc::clone(&inbox), Arc::clone(&security));
                tokio::spawn(async move {
                    // A connection error only ends that conversation.
                    let _ = serve_connection(stream, &inbox, &security).await;
                });
            }
            // E.g. too many open files: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

enum Line {
    /// A complete line; the buffer holds it without its line ending.
    Complete,
    /// The line was longer than allowed; it has been read and discarded.
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one line ending in LF (CR before it removed) into `buf`, never holding more than
/// `max` bytes (line ending included) in memory.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        if !too_long {
            if buf.len() + used > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    buf.pop(); // the LF
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Line::Complete)
}

async fn reply<W: AsyncWrite + Unpin>(writer: &mut W, text: &str) -> std::io::Result<()> {
    writer.write_all(text.as_bytes()).await?;
    writer.write_all(b"\r\n").await?;
    writer.flush().await
}

#[derive(Default)]
struct Session {
    greeted: bool,
    from: Option<String>,
    to: Vec<String>,
    /// Whether the connection is encrypted now.
    tls: bool,
    /// Whether `STARTTLS` is offered (and required) on this connection.
    offers_starttls: bool,
    /// Whom `AUTH` accepted.
    authenticated_as: Option<String>,
}

impl Session {
    fn reset_transaction(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

/// How one SMTP session over a stream ended.
enum Ended<S> {
    /// The client quit or went away.
    Closed,
    /// The client asked for TLS and was told to start it: the stream, to wrap.
    StartTls(S),
}

async fn serve_connection(
    stream: TcpStream,
    inbox: &Inbox,
    security: &Security,
) -> std::io::Result<()> {
    let Some((mode, acceptor)) = &security.tls else {
        serve_session(stream, inbox, security, Session::default(), true).await?;
        return Ok(());
    };
    let plain = match mode {
        MailTls::Implicit => stream,
        MailTls::StartTls => {
            let session = Session {
                offers_starttls: true,
                ..Session::default()
            };
            match serve_session(stream, inbox, security, session, true).await? {
                Ended::Closed => return Ok(()),
                Ended::StartTls(stream) => stream,
            }
        }
    };
    let tls = match acceptor.accept(plain).await {
        Ok(tls) => tls,
        Err(e) => {
            inbox.handshake_failed();
            return Err(e);
        }
    };
    // After STARTTLS the client starts afresh with EHLO, without a second greeting
    // (RFC 3207 §4.2); with implicit TLS, the greeting comes over TLS.
    let session = Session {
        tls: true,
        ..Session::default()
    };
    let greet = *mode == MailTls::Implicit;
    serve_session(tls, inbox, security, session, greet).await?;
    Ok(())
}

async fn serve_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    inbox: &Inbox,
    security: &Security,
    mut session: Session,
    greet: bool,
) -> std::io::Result<Ended<S>> {
    let (read_half, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::with_capacity(MAX_COMMAND_LINE);

    if greet {
        reply(
            &mut writer,
            &format!("220 {SERVER_NAME} ESMTP CodeeDex mail catcher ready"),
        )
        .await?;
    }
    loop {
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            read_line(&mut reader, &mut line, MAX_COMMAND_LINE),
        )
        .await;
        let Ok(read) = read else {
            reply(
                &mut writer,
                "421 4.4.2 Idle for too long, closing connection",
            )
            .await?;
            return Ok(Ended::Closed);
        };
        match read? {
            Line::Eof => return Ok(Ended::Closed),
            Line::TooLong => {
                reply(&mut writer, "500 5.5.2 Line too long").await?;
                continue;
            }
            Line::Complete => {}
        }
        let Ok(command) = std::str::from_utf8(&line) else {
            reply(
                &mut writer,
                "500 5.5.2 Syntax error, command line is not UTF-8",
            )
            .await?;
            continue;
        };
        let command = command.trim_end();
        let (verb, args) = match command.split_once(' ') {
            Some((verb, args)) => (verb, args.trim()),
            None => (command, ""),
        };
        let verb = verb.to_ascii_uppercase();
        if session.offers_starttls
            && !session.tls
            && !matches!(
                verb.as_str(),
                "EHLO" | "HELO" | "STARTTLS" | "NOOP" | "RSET" | "QUIT"
            )
        {
            reply(&mut writer, "530 5.7.0 Must issue a STARTTLS command first").await?;
            continue;
        }
        // AUTH is offered only where the password cannot be read on the wire.
        let offers_auth = security.credentials.is_some() && (session.tls || security.tls.is_none());
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if args.is_empty() {
                    reply(&mut writer, &format!("501 5.5.4 Syntax: {verb} hostname")).await?;
                    continue;
                }
                session.reset_transaction();
                session.greeted = true;
                if verb == "EHLO" {
                    let mut text = format!(
                        "250-{SERVER_NAME} greets {args}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                         250-SIZE {MAX_MESSAGE_SIZE}\r\n"
                    );
                    if session.offers_starttls && !session.tls {
                        text.push_str("250-STARTTLS\r\n");
                    }
                    if offers_auth {
                        text.push_str("250-AUTH PLAIN LOGIN\r\n");
                    }
                    text.push_str("250 ENHANCEDSTATUSCODES");
                    reply(&mut writer, &text).await?;
                } else {
                    reply(&mut writer, &format!("250 {SERVER_NAME} greets {args}")).await?;
                }
            }
            "STARTTLS" => {
                if !session.offers_starttls {
                    reply(&mut writer, "502 5.5.1 Command not implemented").await?;
                    continue;
                }
                if session.tls {
                    reply(&mut writer, "503 5.5.1 TLS already active").await?;
                    continue;
                }
                reply(&mut writer, "220 2.0.0 Ready to start TLS").await?;
                // Anything the client sent after STARTTLS and before the handshake is
                // dropped with the buffer (RFC 3207 §4.2 requires it).
                return Ok(Ended::StartTls(reader.into_inner().unsplit(writer)));
            }
            "AUTH" => {
                let Some(expected) = security.credentials.as_ref().filter(|_| offers_auth) else {
                    reply(&mut writer, "502 5.5.1 Command not implemented").await?;
                    continue;
                };
                if !session.greeted || session.authenticated_as.is_some() {
                    reply(&mut writer, "503 5.5.1 Bad sequence of commands").await?;
                    continue;
                }
                let args = args.to_owned();
                let mut answer = Vec::with_capacity(MAX_COMMAND_LINE);
                session.authenticated_as =
                    authenticate(&mut reader, &mut writer, &mut answer, &args, expected).await?;
            }
            "MAIL" => {
                if security.credentials.is_some() && session.authenticated_as.is_none() {
                    reply(&mut writer, "530 5.7.0 Authentication required").await?;
                    continue;
                }
                let text = handle_mail(&mut session, args);
                reply(&mut writer, &text).await?;
            }
            "RCPT" => {
                let text = handle_rcpt(&mut session, args);
                reply(&mut writer, &text).await?;
            }
            "DATA" => {
                if !args.is_empty() {
                    reply(&mut writer, "501 5.5.4 Syntax: DATA (no arguments)").await?;
                    continue;
                }
                if session.from.is_none() {
                    reply(
                        &mut writer,
                        "503 5.5.1 Bad sequence of commands: need MAIL and RCPT before DATA",
                    )
                    .await?;
                    continue;
                }
                if session.to.is_empty() {
                    reply(
                        &mut writer,
                        "503 5.5.1 Bad sequence of commands: need RCPT before DATA",
                    )
                    .await?;
                    continue;
                }
                reply(&mut writer, "354 Start mail input; end with <CRLF>.<CRLF>").await?;
                let Some(outcome) = read_data(&mut reader, &mut line).await? else {
                    return Ok(Ended::Closed);
                };
                let from = session.from.take().unwrap_or_default();
                let to = std::mem::take(&mut session.to);
                match outcome {
                    DataOutcome::Message(data) => {
                        inbox.push(ReceivedMail {
                            from,
                            to,
                            data,
                            tls: session.tls,
                            authenticated_as: session.authenticated_as.clone(),
                        });
                        reply(&mut writer, "250 2.0.0 OK: message accepted").await?;
                    }
                    DataOutcome::TooBig => {
                        reply(
                            &mut writer,
                            "552 5.3.4 Message size exceeds fixed maximum message size",
                        )
                        .await?;
                    }
                    DataOutcome::LineTooLong => {
                        reply(
                            &mut writer,
                            "554 5.6.0 Message rejected: a text line exceeds 1000 octets",
                        )
                        .await?;
                    }
                }
            }
            "RSET" => {
                if !args.is_empty() {
                    reply(&mut writer, "501 5.5.4 Syntax: RSET (no arguments)").await?;
                    continue;
                }
                session.reset_transaction();
                reply(&mut writer, "250 2.0.0 OK").await?;
            }
            "NOOP" => reply(&mut writer, "250 2.0.0 OK").await?,
            "VRFY" => {
                if args.is_empty() {
                    reply(&mut writer, "501 5.5.4 Syntax: VRFY address").await?;
                } else {
                    reply(
                        &mut writer,
                        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                    )
                    .await?;
                }
            }
            "HELP" => {
                reply(
                    &mut writer,
                    "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
                )
                .await?;
            }
            "QUIT" => {
                reply(&mut writer, "221 2.0.0 Bye").await?;
                let _ = writer.shutdown().await;
                return Ok(Ended::Closed);
            }
            "" => reply(&mut writer, "500 5.5.2 Syntax error, command unrecognized").await?,
            _ => reply(&mut writer, "502 5.5.1 Command not implemented").await?,
        }
    }
}

/// Parses `<address>` at the start of `text` (after `FROM:` / `TO:`), returning the
/// address (source route dropped) and the rest of the line (parameters).
fn parse_path(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let inner_and_rest = text.strip_prefix('<')?;
    let end = inner_and_rest.find('>')?;
    let inner = &inner_and_rest[..end];
    let rest = &inner_and_rest[end + 1..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    // Drop an obsolete source route: <@a,@b:user@domain>.
    let address = match inner.strip_prefix('@') {
        Some(route) => route.split_once(':')?.1,
        None => inner,
    };
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some((address.to_string(), rest.trim()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn handle_mail(session: &mut Session, args: &str) -> String {
    if !session.greeted {
        return "503 5.5.1 Bad sequence of commands: send EHLO or HELO first".into();
    }
    if session.from.is_some() {
        return "503 5.5.1 Bad sequence of commands: nested MAIL command".into();
    }
    let Some((address, params)) = strip_prefix_ignore_case(args, "FROM:").and_then(parse_path)
    else {
        return "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]".into();
    };
    for param in params.split_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(value)) => match value.parse::<u64>() {
                Ok(size) if size > MAX_MESSAGE_SIZE as u64 => {
                    return "552 5.3.4 Message size exceeds fixed maximum message size".into();
                }
                Ok(_) => {}
                Err(_) => return "501 5.5.4 Invalid SIZE parameter".into(),
            },
            ("BODY", Some(value))
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            ("BODY", _) => return "501 5.5.4 Invalid BODY parameter".into(),
            ("SMTPUTF8", None) => {}
            _ => return format!("555 5.5.4 MAIL FROM parameter {key} not recognized"),
        }
    }
    if !address.is_empty() && !address.contains('@') {
        return "553 5.1.7 Bad sender address syntax".into();
    }
    session.from = Some(address);
    "250 2.1.0 OK".into()
}

fn handle_rcpt(session: &mut Session, args: &str) -> String {
    if !session.greeted || session.from.is_none() {
        return "503 5.5.1 Bad sequence of commands: need MAIL before RCPT".into();
    }
    let Some((address, params)) = strip_prefix_ignore_case(args, "TO:").and_then(parse_path) else {
        return "501 5.5.4 Syntax: RCPT TO:<address>".into();
    };
    if !params.is_empty() {
        return "555 5.5.4 RCPT TO parameters not recognized".into();
    }
    if !address.contains('@') && !address.eq_ignore_ascii_case("postmaster") {
        return "553 5.1.3 Bad recipient address syntax".into();
    }
    if session.to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Too many recipients".into();
    }
    session.to.push(address);
    "250 2.1.5 OK".into()
}

enum DataOutcome {
    Message(String),
    TooBig,
    LineTooLong,
}

/// Reads message text up to the lone `.` line, undoing dot-stuffing. `None` if the peer
/// went away (or idled out) first.
async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<DataOutcome>> {
    let mut data: Vec<u8> = Vec::new();
    let mut too_big = false;
    let mut line_too_long = false;
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_line(reader, line, MAX_TEXT_LINE)).await;
        let Ok(read) = read else {
            return Ok(None);
        };
        match read? {
            Line::Eof => return Ok(None),
            Line::TooLong => line_too_long = true,
            Line::Complete => {
                if line.as_slice() == b"." {
                    break;
                }
                let text = line.strip_prefix(b".").unwrap_or(line);
                if !too_big {
                    if data.len() + text.len() + 2 > MAX_MESSAGE_SIZE {
                        too_big = true;
                        data = Vec::new();
                    } else {
                        data.extend_from_slice(text);
                        data.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }
    Ok(Some(if too_big {
        DataOutcome::TooBig
    } else if line_too_long {
        DataOutcome::LineTooLong
    } else {
        DataOutcome::Message(String::from_utf8_lossy(&data).into_owned())
    }))
}
