//! What the catcher asks of a sending server: TLS (implicit, or after
//! `STARTTLS`) with the test's certificate, and `AUTH`.

use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::{Line, MAX_COMMAND_LINE, read_line, reply};
use crate::certificates::ServerIdentity;

/// How the catcher's connections start TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// Plain SMTP until the client sends `STARTTLS` (port 587 in production).
    StartTls,
    /// TLS from the first byte (port 465 in production).
    Implicit,
}

/// What the catcher asks of the servers that send to it.
#[derive(Debug, Clone, Default)]
pub struct MailOptions {
    /// TLS, how it starts, and the certificate presented; `None` is plain SMTP.
    pub tls: Option<(MailTls, ServerIdentity)>,
    /// The user name and password `AUTH` must give before `MAIL`; `None` takes mail
    /// from anyone.
    pub credentials: Option<(String, String)>,
}

/// What one connection needs of [`MailOptions`], ready to use.
pub(super) struct Security {
    pub(super) tls: Option<(MailTls, TlsAcceptor)>,
    pub(super) credentials: Option<(String, String)>,
}

impl Security {
    pub(super) fn new(options: MailOptions) -> Self {
        let tls = options.tls.map(|(mode, identity)| {
            let chain = identity
                .chain
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(identity.key.into());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the default protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("mail catcher: the test's certificate and key match");
            (mode, TlsAcceptor::from(Arc::new(config)))
        });
        Self {
            tls,
            credentials: options.credentials,
        }
    }
}

/// Reads one line as the answer to an `AUTH` challenge, base64 decoded; `None` when the
/// client cancelled (`*`), went away, or sent something that does not decode.
async fn auth_answer<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    match read_line(reader, line, MAX_COMMAND_LINE).await? {
        Line::Complete if line.as_slice() != b"*" => {
            Ok(base64::engine::general_purpose::STANDARD.decode(&line).ok())
        }
        _ => Ok(None),
    }
}

/// Runs `AUTH` (PLAIN or LOGIN, with or without an initial response) and answers it;
/// returns the user name on success.
pub(super) async fn authenticate<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    line: &mut Vec<u8>,
    args: &str,
    expected: &(String, String),
) -> std::io::Result<Option<String>> {
    let (mechanism, initial) = match args.split_once(' ') {
        Some((mechanism, initial)) => (mechanism.to_ascii_uppercase(), Some(initial.trim())),
        None => (args.to_ascii_uppercase(), None),
    };
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text).ok();
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(text) => decode(text),
                None => {
                    reply(writer, "334 ").await?;
                    auth_answer(reader, line).await?
                }
            };
            // authzid NUL authcid NUL password
            let fields: Option<Vec<Vec<u8>>> =
                response.map(|r| r.split(|&b| b == 0).map(<[u8]>::to_vec).collect());
            match fields.as_deref() {
                Some([_, user, password]) => (user.clone(), password.clone()),
                _ => {
                    reply(writer, "501 5.5.2 Cannot decode the response").await?;
                    return Ok(None);
                }
            }
        }
        "LOGIN" => {
            let user = match initial {
                Some(text) => decode(text),
                None => {
                    reply(writer, "334 VXNlcm5hbWU6").await?;
                    auth_answer(reader, line).await?
                }
            };
            reply(writer, "334 UGFzc3dvcmQ6").await?;
            let password = auth_answer(reader, line).await?;
            match (user, password) {
                (Some(user), Some(password)) => (user, password),
                _ => {
                    reply(writer, "501 5.5.2 Cannot decode the response").await?;
                    return Ok(None);
                }
            }
        }
        _ => {
            reply(writer, "504 5.5.4 Unrecognized authentication type").await?;
            return Ok(None);
        }
    };
    if user == expected.0.as_bytes() && password == expected.1.as_bytes() {
        reply(writer, "235 2.7.0 Authentication successful").await?;
        Ok(Some(expected.0.clone()))
    } else {
        reply(writer, "535 5.7.8 Authentication credentials invalid").await?;
        Ok(None)
    }
}
