//! The connection gate: how many new sync connections the node opens per
//! second, and when a refused device should come back.
//!
//! After a restart every device of every user reconnects at once. Each new
//! connection costs a token check and then a first sync of every document
//! the device holds, so thousands at the same instant would queue behind
//! one another until their handshakes time out and they all retry together.
//! The gate admits connections at a sustained rate with a burst, and tells
//! each refused device a distinct time to return: refusals are handed
//! consecutive slots at the gate's rate, so the herd comes back as a queue
//! rather than as another herd.
//!
//! Pure: the caller passes the time in.

use std::time::{Duration, Instant};

use crate::configuration::limits::GateLimits;

/// The longest `Retry-After` the gate hands out: a device told to wait
/// longer would sit offline for no reason once the queue has drained.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Admits new connections at a rate; hands refused ones a time to return.
#[derive(Debug)]
pub struct ConnectionGate {
    limits: GateLimits,
    /// Tokens available, at most `burst`.
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled: Instant,
    /// The next free return slot for a refused connection.
    next_slot: Instant,
}

/// Why the gate refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Wait at least this long before connecting again.
    pub retry_after: Duration,
}

impl ConnectionGate {
    /// A gate with a full bucket at `now`.
    pub fn new(limits: GateLimits, now: Instant) -> Self {
        Self {
            limits,
            tokens: f64::from(limits.burst),
            refilled: now,
            next_slot: now,
        }
    }

    /// Admits one new connection at `now`, given how many are open, or says
    /// when to come back.
    pub fn admit(&mut self, open: usize, now: Instant) -> Result<(), Refused> {
        self.refill(now);
        if open < self.limits.max_connections && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Refused {
            retry_after: self.take_slot(now),
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let rate = f64::from(self.limits.connections_per_second);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(self.limits.burst));
        self.refilled = now;
    }

    /// The next return slot, one rate interval after the previous one; a
    /// slot in the past is moved up to the next interval from now.
    fn take_slot(&mut self, now: Instant) -> Duration {
        let interval = Duration::from_secs(1) / self.limits.connections_per_second.max(1);
        let slot = self.next_slot.max(now) + interval;
        let wait = slot.saturating_duration_since(now);
        if wait > MAX_RETRY_AFTER {
            // The queue is full: everyone from here on is told the longest
            // wait, without pushing the queue further out.
            return MAX_RETRY_AFTER;
        }
        self.next_slot = slot;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, max: usize) -> GateLimits {
        GateLimits {
            connections_per_second: rate,
            burst,
            max_connections: max,
        }
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut gate = ConnectionGate::new(limits(10, 5, 1_000), t0);
        for _ in 0..5 {
            assert_eq!(gate.admit(0, t0), Ok(()));
        }
        assert!(gate.admit(0, t0).is_err());
        // A tenth of a second later one more token has accrued, and only one.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(gate.admit(0, later), Ok(()));
        assert!(gate.admit(0, later).is_err());
    }

    #[test]
    fn refused_connections_get_consecutive_slots_at_the_rate() {
        let t0 = Instant::now();
        let mut gate = ConnectionGate::new(limits(100, 1, 1_000), t0);
        assert_eq!(gate.admit(0, t0), Ok(()));
        let waits: Vec<Duration> = (0..5)
            .map(|_| gate.admit(0, t0).unwrap_err().retry_after)
            .collect();
        let expected: Vec<Duration> = (1..=5).map(|i| Duration::from_millis(10 * i)).collect();
        assert_eq!(waits, expected);
    }

    #[test]
    fn the_wait_is_capped_and_the_queue_stops_growing() {
        let t0 = Instant::now();
        let mut gate = ConnectionGate::new(limits(1, 1, 1_000), t0);
        assert_eq!(gate.admit(0, t0), Ok(()));
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            last = gate.admit(0, t0).unwrap_err().retry_after;
        }
        assert_eq!(last, MAX_RETRY_AFTER);
        // Once time passes the queue drains: a minute later the slot queue is
        // behind the clock again and a token is there.
        assert_eq!(gate.admit(0, t0 + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn a_full_node_refuses_even_with_tokens() {
        let t0 = Instant::now();
        let mut gate = ConnectionGate::new(limits(1_000, 1_000, 3), t0);
        assert_eq!(gate.admit(2, t0), Ok(()));
        let refused = gate.admit(3, t0).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO);
        assert_eq!(gate.admit(2, t0), Ok(()));
    }

    #[test]
    fn tokens_never_exceed_the_burst() {
        let t0 = Instant::now();
        let mut gate = ConnectionGate::new(limits(1_000, 3, 1_000), t0);
        let much_later = t0 + Duration::from_secs(3_600);
        for _ in 0..3 {
            assert_eq!(gate.admit(0, much_later), Ok(()));
        }
        assert!(gate.admit(0, much_later).is_err());
    }
}
