//! Positions in the store's durable order.
//!
//! A [`Ticket`] names the writes made so far on one store engine. The store
//! hands them out and says when one is durable; the sync machine only
//! compares and remembers them, so they live apart from the store that makes
//! them.

/// Writes made so far on one engine: wait for it with
/// [`crate::store::Store::wait_durable`]. Tickets order by engine, then by
/// sequence; [`Ticket::NONE`] (the default) covers nothing and is always
/// durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    epoch: u64,
    sequence: u64,
}

impl Ticket {
    /// Covers no write: durable from the start.
    pub const NONE: Ticket = Ticket {
        epoch: 0,
        sequence: 0,
    };

    pub fn new(epoch: u64, sequence: u64) -> Self {
        Self { epoch, sequence }
    }

    /// A ticket of an engine that failed (or is not the one in use): no
    /// engine will ever report it durable.
    pub(crate) fn unreachable(epoch: u64) -> Self {
        Self {
            epoch,
            sequence: u64::MAX,
        }
    }

    /// Whether the ticket covers no write.
    pub fn is_none(self) -> bool {
        self.sequence == 0
    }

    pub fn epoch(self) -> u64 {
        self.epoch
    }

    pub fn sequence(self) -> u64 {
        self.sequence
    }
}
