//! Date arithmetic with configured durations, unable to panic.
//!
//! The settings bound every duration at start-up (see
//! [`crate::configuration::SecondsSetting`]), so nothing here saturates with
//! the server's own settings. The rules still take any policy (tests and
//! other callers build their own), and a request must never panic on date
//! arithmetic, so a duration beyond the calendar counts as forever instead.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A configured duration as a chrono delta; one too long for chrono is the
/// longest delta there is.
pub fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// `at` plus `duration`, or the last representable instant when the sum is
/// past it.
pub fn after(at: DateTime<Utc>, duration: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(duration)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_the_calendar_saturate_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(delta(Duration::MAX), TimeDelta::MAX);
        assert_eq!(after(now, delta(Duration::MAX)), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(now, delta(Duration::from_secs(u64::MAX / 2))),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn ordinary_durations_are_exact() {
        let now = Utc::now();
        assert_eq!(delta(Duration::from_secs(90)), TimeDelta::seconds(90));
        assert_eq!(
            after(now, delta(Duration::from_secs(90))),
            now + TimeDelta::seconds(90)
        );
    }
}
