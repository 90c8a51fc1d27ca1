//! Reconnect delays: capped exponential backoff with jitter.
//!
//! Pure: the caller supplies the randomness (a number in `[0, 1)`), so tests
//! can check exact delays.

use std::time::Duration;

/// The first delay.
const BASE: Duration = Duration::from_millis(250);
/// The longest delay.
const CAP: Duration = Duration::from_secs(30);

/// Consecutive failures and the delay they call for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, given `jitter` in `[0, 1)`:
    /// between half and all of `BASE · 2^failures`, capped at `CAP`
    /// ("equal jitter", so many clients coming back at once spread out but
    /// none retries immediately).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exponential = BASE.saturating_mul(2u32.saturating_pow(self.failures.min(16)));
        let ceiling = exponential.min(CAP);
        self.failures = self.failures.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling / 2 + ceiling.mul_f64(jitter / 2.0)
    }

    /// The delay before the next attempt when the server asked for
    /// `retry_after`: at least that long, plus up to a second of jitter
    /// (the header counts whole seconds, so devices given the same number
    /// spread over the second after it), and never shorter than the
    /// ordinary backoff.
    pub fn next_delay_after(&mut self, retry_after: Duration, jitter: f64) -> Duration {
        let own = self.next_delay(jitter);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        own.max(retry_after + Duration::from_secs(1).mul_f64(jitter))
    }

    /// A connection succeeded: start again from the first delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_within_half() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(125));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(250));
        assert_eq!(b.next_delay(0.999_999).as_millis(), 999);
        for _ in 0..40 {
            let d = b.next_delay(1.0);
            assert!(d <= CAP);
        }
        assert_eq!(b.next_delay(0.0), CAP / 2);
        b.reset();
        assert_eq!(
            b.next_delay(0.5),
            Duration::from_millis(187) + Duration::from_micros(500)
        );
        assert_eq!(b.next_delay(f64::NAN), Duration::from_millis(250));
    }

    #[test]
    fn a_retry_after_from_the_server_sets_the_floor_and_still_backs_off() {
        let mut b = Backoff::default();
        assert_eq!(
            b.next_delay_after(Duration::from_secs(3), 0.5),
            Duration::from_millis(3_500)
        );
        // The server's wait is short; the backoff has grown past it.
        for _ in 0..10 {
            b.next_delay(0.0);
        }
        assert_eq!(b.next_delay_after(Duration::from_secs(1), 0.0), CAP / 2);
    }
}
