//! One connection's inbox of hub notices, bounded whatever other peers do.
//!
//! Other connections fill it (a change to a shared document, an ephemeral
//! message to relay) and the connection empties it when its driver gets to
//! it. A connection whose peer stops reading stops emptying it, so nothing
//! here may grow with what others send:
//!
//! - change notices are a set of document ids, which only holds documents
//!   the connection syncs or waits for (both bounded by the per-connection
//!   document limit); a hundred changes to one document are one entry;
//! - ephemeral messages are a queue bounded in count and bytes; when it is
//!   full the oldest is dropped, because an ephemeral message (a cursor, a
//!   presence beat) is superseded by the next one and never carries data.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use codeedex_schema::id::DocumentId;
use codeedex_schema::wire::Message;
use tokio::sync::Notify;

use crate::configuration::limits::MailboxLimits;
use crate::metrics::Metrics;

/// Everything that was waiting, taken at once.
#[derive(Debug, Default)]
pub struct Notices {
    /// Documents that changed since the connection last looked.
    pub changed: BTreeSet<DocumentId>,
    /// Ephemeral messages to relay, oldest first.
    pub ephemeral: Vec<Arc<Message>>,
}

#[derive(Debug, Default)]
struct Waiting {
    changed: BTreeSet<DocumentId>,
    ephemeral: VecDeque<(Arc<Message>, usize)>,
    ephemeral_bytes: usize,
}

/// The inbox. Shared between the hub (which posts) and the connection
/// (which takes).
#[derive(Debug)]
pub struct Mailbox {
    waiting: Mutex<Waiting>,
    ready: Notify,
    limits: MailboxLimits,
    metrics: Arc<Metrics>,
}

impl Mailbox {
    /// An empty inbox; `metrics` counts the ephemeral messages it drops.
    pub fn new(limits: MailboxLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            waiting: Mutex::new(Waiting::default()),
            ready: Notify::new(),
            limits,
            metrics,
        }
    }

    /// Notes that a document the connection syncs changed.
    pub fn changed(&self, doc: DocumentId) {
        self.waiting
            .lock()
            .expect("never poisoned")
            .changed
            .insert(doc);
        self.ready.notify_one();
    }

    /// Queues an ephemeral message of `bytes` payload bytes, dropping the
    /// oldest ones if the queue is over its limits.
    pub fn ephemeral(&self, message: Arc<Message>, bytes: usize) {
        let mut waiting = self.waiting.lock().expect("never poisoned");
        waiting.ephemeral.push_back((message, bytes));
        waiting.ephemeral_bytes += bytes;
        while waiting.ephemeral.len() > self.limits.max_ephemeral
            || waiting.ephemeral_bytes > self.limits.max_ephemeral_bytes
        {
            let Some((_, size)) = waiting.ephemeral.pop_front() else {
                break;
            };
            waiting.ephemeral_bytes -= size;
            Metrics::bump(&self.metrics.sync_ephemeral_dropped);
        }
        drop(waiting);
        self.ready.notify_one();
    }

    /// Takes everything waiting, once there is something.
    pub async fn next(&self) -> Notices {
        loop {
            if let Some(notices) = self.try_next() {
                return notices;
            }
            // A post between `take` and here leaves a permit behind, so
            // this never misses a wake-up.
            self.ready.notified().await;
        }
    }

    /// Takes everything waiting, if there is anything.
    pub fn try_next(&self) -> Option<Notices> {
        let mut waiting = self.waiting.lock().expect("never poisoned");
        if waiting.changed.is_empty() && waiting.ephemeral.is_empty() {
            return None;
        }
        waiting.ephemeral_bytes = 0;
        Some(Notices {
            changed: std::mem::take(&mut waiting.changed),
            ephemeral: waiting.ephemeral.drain(..).map(|(m, _)| m).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ephemeral(count: u64) -> Arc<Message> {
        Arc::new(Message::Ephemeral {
            sender_id: "a".into(),
            target_id: "b".into(),
            document_id: "d".into(),
            count,
            session_id: "s".into(),
            data: vec![0; 10],
        })
    }

    fn doc(n: u8) -> DocumentId {
        DocumentId::from_random_bytes([n; 16])
    }

    #[tokio::test]
    async fn changes_to_one_document_are_one_notice() {
        let mailbox = Mailbox::new(MailboxLimits::default(), Arc::default());
        for _ in 0..1000 {
            mailbox.changed(doc(1));
        }
        mailbox.changed(doc(2));
        let notices = mailbox.next().await;
        assert_eq!(notices.changed.len(), 2);
        assert!(mailbox.try_next().is_none(), "everything was taken");
    }

    #[tokio::test]
    async fn ephemeral_messages_beyond_the_limits_drop_the_oldest() {
        let metrics = Arc::new(Metrics::default());
        let limits = MailboxLimits {
            max_ephemeral: 3,
            max_ephemeral_bytes: 1000,
        };
        let mailbox = Mailbox::new(limits, Arc::clone(&metrics));
        for count in 0..10 {
            mailbox.ephemeral(ephemeral(count), 10);
        }
        let counts: Vec<u64> = mailbox
            .next()
            .await
            .ephemeral
            .iter()
            .map(|m| match m.as_ref() {
                Message::Ephemeral { count, .. } => *count,
                _ => unreachable!("only ephemeral messages were posted"),
            })
            .collect();
        assert_eq!(counts, vec![7, 8, 9]);
        assert_eq!(
            metrics
                .sync_ephemeral_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            7
        );
    }

    #[tokio::test]
    async fn ephemeral_bytes_are_bounded_too() {
        let limits = MailboxLimits {
            max_ephemeral: 1000,
            max_ephemeral_bytes: 25,
        };
        let mailbox = Mailbox::new(limits, Arc::default());
        for count in 0..10 {
            mailbox.ephemeral(ephemeral(count), 10);
        }
        assert_eq!(mailbox.next().await.ephemeral.len(), 2);
    }

    #[tokio::test]
    async fn a_post_wakes_a_waiting_connection() {
        let mailbox = Arc::new(Mailbox::new(MailboxLimits::default(), Arc::default()));
        let waiter = tokio::spawn({
            let mailbox = Arc::clone(&mailbox);
            async move { mailbox.next().await }
        });
        tokio::task::yield_now().await;
        mailbox.changed(doc(3));
        let notices = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(notices.changed.contains(&doc(3)));
    }
}
