//! Surviving a failing disk: the engine in use, its failure, and its
//! replacement.
//!
//! sled 0.34 keeps the first IO error of its log writer and returns it from
//! every later operation on that database, forever. So when an operation or
//! a flush fails with an IO error, the store marks its engine failed: from
//! then on every operation and every durability wait fails at once with
//! [`StoreError::Unavailable`], and nothing more is acknowledged. A recovery
//! thread drops the failed engine (its flusher stops with it; waiters of
//! its tickets are told the flush failed), then, every
//! [`RECOVERY_INTERVAL`], reopens the database from disk (sled recovers to
//! its last durable state, dropping a torn tail), proves that it can write
//! and flush, and swaps it in under a new epoch. Tickets carry their
//! engine's epoch, so no ticket of the failed engine is ever reported
//! durable by its successor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{Engine, StoreError, StoreOptions};

/// How long the recovery thread waits between attempts to reopen the store.
pub(crate) const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// The store's availability, as published to whoever follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreHealth {
    /// Whether the store takes operations now.
    pub(crate) available: bool,
    /// Failures since the store was opened.
    pub(crate) failures: u64,
    /// Recoveries since the store was opened.
    pub(crate) recoveries: u64,
}

/// What every handle of one store shares.
pub(crate) struct Shared {
    options: StoreOptions,
    /// The engine in use; `None` while a failed one is being replaced.
    engine: RwLock<Option<Arc<Engine>>>,
    /// The epoch of the newest engine opened.
    epoch: AtomicU64,
    /// Set when the engine in use failed; cleared when a fresh one is in.
    failed: AtomicBool,
    health: watch::Sender<StoreHealth>,
}

impl Shared {
    pub(crate) fn new(options: StoreOptions, engine: Engine) -> Arc<Self> {
        Arc::new(Self {
            options,
            epoch: AtomicU64::new(engine.epoch),
            engine: RwLock::new(Some(Arc::new(engine))),
            failed: AtomicBool::new(false),
            health: watch::Sender::new(StoreHealth {
                available: true,
                failures: 0,
                recoveries: 0,
            }),
        })
    }

    /// The engine in use, unless it failed.
    pub(crate) fn current(&self) -> Option<Arc<Engine>> {
        let slot = self.engine.read().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|_| !self.failed.load(Ordering::SeqCst))
            .map(Arc::clone)
    }

    /// The epoch of the newest engine opened.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.subscribe()
    }

    /// Marks `engine` failed, if it is still the one in use and not yet
    /// marked, and starts the recovery.
    pub(crate) fn fail(self: &Arc<Self>, engine: &Engine, error: &dyn std::fmt::Display) {
        {
            // Under the slot's lock, so that a recovery cannot swap a fresh
            // engine in between the check and the mark.
            let slot = self.engine.read().unwrap_or_else(PoisonError::into_inner);
            let in_use = slot
                .as_ref()
                .is_some_and(|current| current.epoch == engine.epoch);
            if !in_use || self.failed.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        tracing::error!(
            error = %error,
            epoch = engine.epoch,
            "the store failed: refusing writes until the disk takes them again"
        );
        self.health.send_modify(|health| {
            health.available = false;
            health.failures += 1;
        });
        let shared = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("store-recovery".into())
            .spawn(move || recover(&shared));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the store's recovery; it stays unavailable");
        }
    }
}

/// The recovery thread: retires the failed engine, then reopens the store
/// until it works. Ends early when the store itself is dropped.
fn recover(shared: &Weak<Shared>) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    // Take the failed engine out at once, so that its file lock goes as
    // soon as the operations still holding it finish; dropping it stops its
    // flusher, whose waiters learn that their flush failed.
    let retired = strong
        .engine
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let options = strong.options.clone();
    drop(strong);
    drop(retired);
    let mut attempts: u64 = 0;
    loop {
        std::thread::sleep(RECOVERY_INTERVAL);
        let Some(strong) = shared.upgrade() else {
            return;
        };
        attempts += 1;
        let epoch = strong.epoch() + 1;
        match Engine::open(&options, epoch).and_then(|engine| {
            engine.check_writable()?;
            Ok(engine)
        }) {
            Ok(engine) => {
                {
                    let mut slot = strong
                        .engine
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    *slot = Some(Arc::new(engine));
                    strong.epoch.store(epoch, Ordering::SeqCst);
                    strong.failed.store(false, Ordering::SeqCst);
                }
                strong.health.send_modify(|health| {
                    health.available = true;
                    health.recoveries += 1;
                });
                tracing::warn!(
                    epoch,
                    attempts,
                    "the store recovered: reopened from disk, taking writes again"
                );
                return;
            }
            Err(error) => {
                // The attempt's engine, if it opened, is dropped here, before
                // the next attempt needs its file lock.
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::warn!(error = %error_chain(&error), attempts, "the store is still unavailable; trying again");
                }
            }
        }
    }
}

fn error_chain(error: &StoreError) -> String {
    let mut out = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
