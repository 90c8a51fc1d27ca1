//! A test's hand on the group commit's flushes: hold them back, or make
//! them fail. Compiled into the server's own tests only.
//!
//! Every durability test that kills the server process passes whether or
//! not the server waits for its flush, because the kernel keeps what was
//! written but never synced. Holding the flusher at this gate keeps every
//! change not yet flushed undurable for as long as a test wants, so that a
//! test can check what the server sends in the meantime; failing the flush
//! checks what a failed fsync leaves acknowledged.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// What the next flush does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum FlushMode {
    /// Flush as in production.
    #[default]
    Pass,
    /// Wait at the gate until the mode changes.
    Hold,
    /// Fail, as a flush whose fsync returned `EIO` does.
    Fail,
}

/// The gate the flusher passes before each flush.
#[derive(Debug, Default)]
pub(crate) struct FlushControl {
    mode: Mutex<FlushMode>,
    changed: Condvar,
    /// Whether a flush is waiting at the gate: the positive signal that
    /// somebody asked for durability while flushes are held.
    waiting: watch::Sender<bool>,
}

impl FlushControl {
    /// Sets what flushes do from now on, releasing a held one.
    pub(crate) fn set(&self, mode: FlushMode) {
        *self.lock() = mode;
        self.changed.notify_all();
    }

    /// Resolves once a flush is waiting at the gate (flushes are held and
    /// somebody waits for a ticket).
    pub(crate) async fn flush_waiting(&self) {
        let mut waiting = self.waiting.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let _ = waiting.wait_for(|waiting| *waiting).await;
    }

    /// Called by the flusher before each flush: waits while flushes are
    /// held, then says whether this one fails instead.
    pub(crate) fn before_flush(&self) -> Option<sled::Error> {
        let mut mode = self.lock();
        while *mode == FlushMode::Hold {
            self.waiting.send_replace(true);
            mode = self
                .changed
                .wait(mode)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.waiting.send_replace(false);
        (*mode == FlushMode::Fail)
            .then(|| sled::Error::Io(std::io::Error::other("the test failed this flush")))
    }

    fn lock(&self) -> MutexGuard<'_, FlushMode> {
        // A plain value, always valid: a panic while holding it leaves
        // nothing to repair.
        self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
