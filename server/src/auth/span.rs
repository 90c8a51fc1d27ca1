//! Date arithmetic with configured periods, unable to panic.
//!
//! The settings hold every duration as a [`Period`], bounded at load time,
//! so a period converts to a chrono delta exactly. The dates it is added to
//! come from the store and the clock; a request must never panic on date
//! arithmetic, so a sum past the calendar counts as forever instead.
//!
//! [`Period`]: crate::configuration::Period

use chrono::{DateTime, TimeDelta, Utc};

/// `at` plus `duration`, or the last representable instant when the sum is
/// past it.
pub fn after(at: DateTime<Utc>, duration: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(duration)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Period;

    #[test]
    fn durations_past_the_calendar_saturate_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(Period::from_secs(u64::MAX), None);
        assert_eq!(after(now, TimeDelta::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(DateTime::<Utc>::MAX_UTC, Period::MAX.as_delta()),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn ordinary_durations_are_exact() {
        let now = Utc::now();
        let ninety = Period::from_secs(90).unwrap();
        assert_eq!(ninety.as_delta(), TimeDelta::seconds(90));
        assert_eq!(after(now, ninety.as_delta()), now + TimeDelta::seconds(90));
    }
}
