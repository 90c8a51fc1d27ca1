//! Self-tests of the fixtures the end-to-end tests use to receive one-time codes:
//! the SMTP mail catcher and the SMS provider stub.

use std::time::Duration;

use codeedex_tests::mail_catcher::{MAX_MESSAGE_SIZE, MailCatcher, extract_code};
use codeedex_tests::sms_provider::SmsProviderStub;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(10);

fn transport(catcher: &MailCatcher) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(catcher.port())
        .timeout(Some(WAIT))
        .build()
}

fn mail(to: &str, subject: &str, body: Body) -> Message {
    Message::builder()
        .from(
            "CodeeDex <no-reply@codeedex.test>"
                .parse::<Mailbox>()
                .unwrap(),
        )
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn lettre_mails_are_returned_in_order_with_their_codes() {
    let catcher = MailCatcher::start().await;
    let smtp = transport(&catcher);

    let first = mail(
        "Alice <alice@example.com>",
        "Your sign-in code",
        Body::new("Your CodeeDex sign-in code is 123456.\nIt expires in 10 minutes.\n".to_string()),
    );
    let other = mail(
        "bob@example.com",
        "Your sign-in code",
        Body::new("Your code is 999999.\n".to_string()),
    );
    let second = mail(
        "alice@example.com",
        "Votre code de connexion",
        Body::new_with_encoding(
            "Votre code CodeeDex est 654321. Il expire dans 10 minutes — à bientôt!\n".to_string(),
            ContentTransferEncoding::Base64,
        )
        .unwrap(),
    );
    let third = mail(
        "alice@example.com",
        "Código",
        Body::new_with_encoding(
            "Tu código es: 246810 ¡gracias! ".repeat(4),
            ContentTransferEncoding::QuotedPrintable,
        )
        .unwrap(),
    );
    for message in [first, other, second, third] {
        smtp.send(message)
            .await
            .expect("lettre could not send through the catcher");
    }

    let got = catcher
        .wait_for_mail_to("alice@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(got.from, "no-reply@codeedex.test");
    assert_eq!(got.to, vec!["alice@example.com".to_string()]);
    assert_eq!(got.subject().as_deref(), Some("Your sign-in code"));
    assert_eq!(got.code(6).as_deref(), Some("123456"));

    // Matching is case-insensitive; the second mail to Alice comes next, base64-encoded.
    let got = catcher
        .wait_for_mail_to("ALICE@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(
        got.header("Content-Transfer-Encoding").as_deref(),
        Some("base64")
    );
    assert!(
        !got.data.contains("654321"),
        "the raw body should be base64"
    );
    assert!(got.body_text().contains("à bientôt"));
    assert_eq!(got.subject().as_deref(), Some("Votre code de connexion"));
    assert_eq!(extract_code(&got.body_text(), 6).as_deref(), Some("654321"));

    let got = catcher
        .wait_for_mail_to("alice@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(
        got.header("Content-Transfer-Encoding").as_deref(),
        Some("quoted-printable")
    );
    assert_eq!(got.subject().as_deref(), Some("Código"));
    assert!(got.body_text().contains("¡gracias!"));
    assert_eq!(got.code(6).as_deref(), Some("246810"));

    let err = catcher
        .wait_for_mail_to("alice@example.com", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no new mail"), "{err}");

    let got = catcher
        .wait_for_mail_to("bob@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(got.code(6).as_deref(), Some("999999"));
    assert_eq!(catcher.messages().len(), 4);
}

#[tokio::test]
async fn waiting_starts_before_the_mail_arrives() {
    let catcher = MailCatcher::start().await;
    let smtp = transport(&catcher);
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let message = mail(
            "carol@example.com",
            "Code",
            Body::new("code 777777\n".to_string()),
        );
        smtp.send(message).await.unwrap();
    });
    let got = catcher
        .wait_for_mail_to("carol@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(got.code(6).as_deref(), Some("777777"));
    sender.await.unwrap();
}

/// A raw SMTP client: one line per command, replies read to their last line.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(catcher: &MailCatcher) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", catcher.port()))
            .await
            .unwrap();
        let (read, writer) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        raw
    }

    /// The whole reply, lines joined with '\n'.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("no reply from the catcher")
                .unwrap();
            assert!(read > 0, "connection closed; got so far: {lines:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    async fn expect(&mut self, line: &str, code: &str) -> String {
        let reply = self.command(line).await;
        assert!(
            reply.starts_with(code),
            "{line:?} -> {reply:?}, expected {code}"
        );
        reply
    }
}

#[tokio::test]
async fn raw_conversation_enforces_order_and_undoes_dot_stuffing() {
    let catcher = MailCatcher::start().await;
    let mut smtp = Raw::connect(&catcher).await;

    smtp.expect("MAIL FROM:<a@example.com>", "503").await;
    smtp.expect("DATA", "503").await;
    smtp.expect("FROBNICATE now", "502").await;
    smtp.expect("STARTTLS", "502").await;
    smtp.expect("EHLO", "501").await;
    let ehlo = smtp.expect("EHLO client.example", "250").await;
    assert!(ehlo.lines().count() > 1, "{ehlo}");
    assert!(ehlo.contains("250-8BITMIME"), "{ehlo}");
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    smtp.expect("NOOP", "250").await;

    smtp.expect("DATA", "503").await;
    smtp.expect("RCPT TO:<b@example.com>", "503").await;
    smtp.expect("MAIL FROM:<a@example.com> SIZE=99999999999", "552")
        .await;
    smtp.expect("MAIL FROM:<a@example.com> FOO=bar", "555")
        .await;
    smtp.expect("MAIL FROM:a@example.com", "501").await;
    smtp.expect("mail from:<a@example.com> BODY=8BITMIME", "250")
        .await;
    smtp.expect("MAIL FROM:<a@example.com>", "503").await;
    smtp.expect("DATA", "503").await;
    smtp.expect("RCPT TO:<not-an-address>", "553").await;
    smtp.expect("RCPT TO:<b@example.com>", "250").await;
    smtp.expect("RCPT TO:<c@example.com>", "250").await;
    smtp.expect("UNKNOWN", "502").await;
    smtp.expect(&format!("NOOP {}", "x".repeat(600)), "500")
        .await;
    smtp.expect("DATA", "354").await;
    smtp.send("Subject: dots\r\n\r\n..leading dot\r\n.\r\n")
        .await;
    let done = smtp.reply().await;
    assert!(done.starts_with("250"), "{done}");

    // After DATA the transaction is over.
    smtp.expect("RCPT TO:<b@example.com>", "503").await;
    smtp.expect("MAIL FROM:<>", "250").await;
    smtp.expect("RCPT TO:<d@example.com>", "250").await;
    smtp.expect("RSET", "250").await;
    smtp.expect("DATA", "503").await;
    smtp.expect("HELO client.example", "250").await;
    smtp.expect("QUIT", "221").await;

    let messages = catcher.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].from, "a@example.com");
    assert_eq!(messages[0].to, ["b@example.com", "c@example.com"]);
    assert_eq!(messages[0].data, "Subject: dots\r\n\r\n.leading dot\r\n");
    let got = catcher
        .wait_for_mail_to("<C@example.com>", WAIT)
        .await
        .unwrap();
    assert_eq!(got.body_text(), ".leading dot\r\n");
}

#[tokio::test]
async fn connections_are_served_concurrently_and_limits_hold() {
    let catcher = MailCatcher::start().await;
    let mut one = Raw::connect(&catcher).await;
    let mut two = Raw::connect(&catcher).await;

    one.expect("EHLO one", "250").await;
    two.expect("EHLO two", "250").await;
    one.expect("MAIL FROM:<one@example.com>", "250").await;
    two.expect("MAIL FROM:<two@example.com>", "250").await;
    two.expect("RCPT TO:<x@example.com>", "250").await;
    one.expect("RCPT TO:<x@example.com>", "250").await;
    one.expect("DATA", "354").await;
    two.expect("DATA", "354").await;
    two.send("from two\r\n.\r\n").await;
    assert!(two.reply().await.starts_with("250"));
    one.send("from one\r\n.\r\n").await;
    assert!(one.reply().await.starts_with("250"));

    // First come, first served: "two" finished its DATA first.
    let first = catcher
        .wait_for_mail_to("x@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(first.from, "two@example.com");
    let second = catcher
        .wait_for_mail_to("x@example.com", WAIT)
        .await
        .unwrap();
    assert_eq!(second.from, "one@example.com");

    // A text line over 1000 octets spoils the message but not the connection.
    one.expect("MAIL FROM:<one@example.com>", "250").await;
    one.expect("RCPT TO:<y@example.com>", "250").await;
    one.expect("DATA", "354").await;
    one.send(&format!("{}\r\n.\r\n", "a".repeat(1200))).await;
    let reply = one.reply().await;
    assert!(reply.starts_with("554"), "{reply}");

    // So does a message over the size limit.
    one.expect("MAIL FROM:<one@example.com>", "250").await;
    one.expect("RCPT TO:<y@example.com>", "250").await;
    one.expect("DATA", "354").await;
    let line = format!("{}\r\n", "b".repeat(998));
    let chunk = line.repeat(1024);
    for _ in 0..(MAX_MESSAGE_SIZE / chunk.len() + 2) {
        one.send(&chunk).await;
    }
    one.send(".\r\n").await;
    let reply = one.reply().await;
    assert!(reply.starts_with("552"), "{reply}");
    one.expect("NOOP", "250").await;
    one.expect("QUIT", "221").await;
    two.expect("QUIT", "221").await;

    assert_eq!(catcher.messages().len(), 2);
}

#[tokio::test]
async fn dropping_the_catcher_closes_its_port() {
    let catcher = MailCatcher::start().await;
    let port = catcher.port();
    drop(catcher);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "port {port} still accepts connections");
}

const SID: &str = "AC00000000000000000000000000000001";
const TOKEN: &str = "test-auth-token";

async fn post_sms(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().post(url).form(form);
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request
        .send()
        .await
        .expect("request to the SMS stub failed");
    let status = response.status().as_u16();
    (
        status,
        response
            .json()
            .await
            .expect("the SMS stub answered no JSON"),
    )
}

#[tokio::test]
async fn sms_stub_checks_credentials_and_records_messages_in_order() {
    let sms = SmsProviderStub::start(SID, TOKEN).await;
    assert!(sms.base_url().starts_with("http://127.0.0.1:"));
    let url = format!("{}/2010-04-01/Accounts/{SID}/Messages.json", sms.base_url());
    assert_eq!(sms.messages_url(), url);
    let to = "+15551234567";

    let (status, json) = post_sms(
        &url,
        Some((SID, TOKEN)),
        &[
            ("To", to),
            ("From", "+15550000000"),
            ("Body", "Your code is 111111"),
        ],
    )
    .await;
    assert_eq!(status, 201, "{json}");
    assert!(json["sid"].as_str().unwrap().starts_with("SM"), "{json}");
    assert_eq!(json["status"], "queued");
    assert_eq!(json["to"], to);
    assert_eq!(json["body"], "Your code is 111111");

    let (status, json) = post_sms(
        &url,
        Some((SID, "wrong-token")),
        &[
            ("To", to),
            ("From", "+15550000000"),
            ("Body", "Your code is 666666"),
        ],
    )
    .await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["code"], 20003);

    let (status, _) = post_sms(
        &url,
        None,
        &[
            ("To", to),
            ("From", "+15550000000"),
            ("Body", "Your code is 666666"),
        ],
    )
    .await;
    assert_eq!(status, 401);

    let other_account = format!(
        "{}/2010-04-01/Accounts/ACother/Messages.json",
        sms.base_url()
    );
    let (status, _) = post_sms(
        &other_account,
        Some((SID, TOKEN)),
        &[
            ("To", to),
            ("From", "+15550000000"),
            ("Body", "Your code is 666666"),
        ],
    )
    .await;
    assert_eq!(status, 401);

    let (status, json) = post_sms(
        &url,
        Some((SID, TOKEN)),
        &[("From", "+15550000000"), ("Body", "no recipient")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json["code"], 21604);

    let (status, _) = post_sms(
        &url,
        Some((SID, TOKEN)),
        &[
            ("To", "+1 555 123 4567"),
            ("From", "+15550000000"),
            ("Body", "code 222222 & more"),
        ],
    )
    .await;
    assert_eq!(status, 201);

    let first = sms.wait_for_sms_to(to, WAIT).await.unwrap();
    assert_eq!(first.body, "Your code is 111111");
    assert_eq!(first.from, "+15550000000");
    let second = sms.wait_for_sms_to(to, WAIT).await.unwrap();
    assert_eq!(second.body, "code 222222 & more");
    assert_eq!(second.to, "+1 555 123 4567");
    assert_eq!(extract_code(&second.body, 6).as_deref(), Some("222222"));
    assert!(
        sms.wait_for_sms_to(to, Duration::from_millis(200))
            .await
            .is_err()
    );
    assert_eq!(sms.messages().len(), 2);
}

#[tokio::test]
async fn sms_stub_fail_next_simulates_an_outage() {
    let sms = SmsProviderStub::start(SID, TOKEN).await;
    let url = sms.messages_url();
    let form = [
        ("To", "+4915112345678"),
        ("From", "CodeeDex"),
        ("Body", "Code 314159"),
    ];

    sms.fail_next(503);
    sms.fail_next(429);
    let (status, json) = post_sms(&url, Some((SID, TOKEN)), &form).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], 503);
    let (status, _) = post_sms(&url, Some((SID, TOKEN)), &form).await;
    assert_eq!(status, 429);
    assert!(sms.messages().is_empty());

    let waiter = sms.wait_for_sms_to("+4915112345678", WAIT);
    let sender = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post_sms(&url, Some((SID, TOKEN)), &form).await
    };
    let (got, (status, _)) = tokio::join!(waiter, sender);
    assert_eq!(status, 201);
    assert_eq!(got.unwrap().body, "Code 314159");

    let (status, json) = post_sms(
        &format!("{}/nowhere", sms.base_url()),
        Some((SID, TOKEN)),
        &form,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(json["code"], 20404);
}
