//! The doorbell on PostgreSQL: NOTIFY inside each append transaction, and
//! one LISTEN connection per node.
//!
//! An append batch notifies `codeedex_log` once per document it grew, with
//! the payload `r node user doc seq` (the writing node's number, the
//! owner's and the document's ids in hex, the last sequence written); a
//! deletion notifies `d node doc`, and a session's end `s node session`.
//! PostgreSQL delivers notifications at COMMIT and only then, so every
//! committed write rings and no rolled-back one does. Every node, the
//! writer included, hears it; the writer ignores its own.
//!
//! The listening connection is the only one outside the pool: it must stay
//! open to hear anything. When it drops (the database restarted, an
//! operator ended it), the listener reconnects with backoff and reports
//! that rings may have been missed, so that the node catches up every
//! document it has in memory. Rings come in through a bounded channel; when
//! the node does not keep up, the ones that do not fit are dropped and the
//! node is told it missed some.

use std::time::Duration;

use codeedex_schema::id::{DocumentId, SessionId, UserId};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::{HEARD_QUEUE, Heard, Ring};

/// The channel every node notifies and listens on.
pub(super) const CHANNEL: &str = "codeedex_log";

/// The payload of a ring: `r node user doc seq`.
pub(super) fn ring_payload(ring: &Ring) -> String {
    format!(
        "r {:016x} {} {} {}",
        ring.node,
        hex::encode(ring.user.as_bytes()),
        hex::encode(ring.doc.as_bytes()),
        ring.seq
    )
}

/// The payload of a deletion: `d node doc`.
pub(super) fn deleted_payload(node: u64, doc: DocumentId) -> String {
    format!("d {node:016x} {}", hex::encode(doc.as_bytes()))
}

/// The payload of a session's end: `s node session`.
pub(super) fn session_payload(node: u64, session: SessionId) -> String {
    format!("s {node:016x} {}", hex::encode(session.as_bytes()))
}

fn id16(hex_id: &str) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(hex::decode(hex_id).ok()?).ok()
}

/// A notice from its payload, or `None` for anything else: the database is
/// trusted, but another program may notify the same channel.
fn parse(payload: &str) -> Option<Heard> {
    let parts: Vec<&str> = payload.split(' ').collect();
    let node = |hex_node: &str| u64::from_str_radix(hex_node, 16).ok();
    match parts.as_slice() {
        ["r", n, user, doc, seq] => Some(Heard::Ring(Ring {
            node: node(n)?,
            user: UserId::from_bytes(id16(user)?),
            doc: DocumentId::from_bytes(id16(doc)?),
            seq: seq.parse().ok()?,
        })),
        ["d", n, doc] => Some(Heard::Deleted {
            node: node(n)?,
            doc: DocumentId::from_bytes(id16(doc)?),
        }),
        ["s", n, session] => Some(Heard::SessionEnded {
            node: node(n)?,
            session: SessionId::from_bytes(id16(session)?),
        }),
        _ => None,
    }
}

/// Waits between attempts to reconnect the listener, doubling up to the
/// last.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Starts listening on `runtime`; what is heard comes out of the returned
/// receiver. The listener stops when the receiver is dropped.
pub(super) fn listen(
    runtime: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
) -> mpsc::Receiver<Heard> {
    let (heard, receiver) = mpsc::channel(HEARD_QUEUE);
    runtime.spawn(listen_loop(config, heard));
    receiver
}

async fn listen_loop(config: tokio_postgres::Config, heard: mpsc::Sender<Heard>) {
    // Failed attempts since the last connection that listened: the first is
    // logged, and each waits longer, up to the last step of the backoff.
    let mut failures = 0usize;
    loop {
        let mut listened = false;
        let outcome = listen_once(&config, &heard, &mut listened).await;
        if heard.is_closed() {
            return;
        }
        if listened {
            failures = 0;
        }
        if failures == 0 {
            match &outcome {
                Ok(()) => tracing::warn!(
                    "the PostgreSQL doorbell's LISTEN connection ended; reconnecting"
                ),
                Err(error) => {
                    tracing::warn!(error = %error, "the PostgreSQL doorbell lost its LISTEN connection; reconnecting")
                }
            }
        }
        let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
        failures += 1;
        tokio::time::sleep(wait).await;
    }
}

/// One LISTEN connection, until it ends; `listened` is set once it listens.
async fn listen_once(
    config: &tokio_postgres::Config,
    heard: &mpsc::Sender<Heard>,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // The connection's messages must be polled for the client to work at
    // all; the task that polls them passes rings on as they come.
    let rings = heard.clone();
    let mut driver = tokio::spawn(async move {
        let mut missed = false;
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            let notification = match message? {
                AsyncMessage::Notification(notification) => notification,
                _ => continue,
            };
            let Some(notice) = parse(notification.payload()) else {
                tracing::warn!(
                    channel = CHANNEL,
                    "ignored a notification that is not a notice"
                );
                continue;
            };
            if missed {
                match rings.try_send(Heard::MayHaveMissed) {
                    Ok(()) => missed = false,
                    Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
            match rings.try_send(notice) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => missed = true,
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    let statement = format!("LISTEN {CHANNEL}");
    let listening = tokio::select! {
        listening = client.batch_execute(&statement) => listening,
        ended = &mut driver => return ended.unwrap_or(Ok(())),
    };
    listening?;
    // Whatever rang while no connection listened is lost: catch up (at the
    // first start, whatever was loaded before the listener was up).
    *listened = true;
    tracing::info!(channel = CHANNEL, "the PostgreSQL doorbell listens");
    if heard.send(Heard::MayHaveMissed).await.is_err() {
        return Ok(());
    }
    // The client must live as long as the connection listens.
    let ended = driver.await;
    drop(client);
    ended.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notice_survives_its_payload_and_nothing_else_parses() {
        let ring = Ring {
            node: 0xdead_beef_0000_0001,
            user: UserId::from_bytes([7; 16]),
            doc: DocumentId::from_bytes([9; 16]),
            seq: 42,
        };
        assert_eq!(parse(&ring_payload(&ring)), Some(Heard::Ring(ring)));
        let doc = DocumentId::from_bytes([3; 16]);
        assert_eq!(
            parse(&deleted_payload(5, doc)),
            Some(Heard::Deleted { node: 5, doc })
        );
        let session = SessionId::from_bytes([4; 16]);
        assert_eq!(
            parse(&session_payload(6, session)),
            Some(Heard::SessionEnded { node: 6, session })
        );
        let long = format!("{} extra", ring_payload(&ring));
        for bad in [
            "",
            "x",
            "r 1 2 3",
            &long,
            "r zz 07 09 1",
            "d 1",
            "s 1 00",
            "q 1 2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
