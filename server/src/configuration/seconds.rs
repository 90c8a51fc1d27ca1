//! Duration settings: each in whole seconds, with the range it must be in,
//! and [`Period`], the type a checked value is held in from then on.

use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::bail;
use chrono::TimeDelta;

/// A duration setting's value, in whole seconds, at most
/// [`Period::MAX_SECS`] (400 days, the longest bound of any setting).
///
/// The settings hold their durations in this type, made only by checking a
/// value against its [`SecondsSetting`] at load time, so the request paths
/// that add one to a date have no failure to handle: any `Period` converts
/// to a [`TimeDelta`] exactly and, added to any date of this millennium or
/// the next, stays in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Period(u32);

impl Period {
    /// The longest period: 400 days.
    pub(crate) const MAX_SECS: u64 = SESSION_SECS_MAX;
    /// The longest period there is.
    #[cfg(test)]
    pub(crate) const MAX: Period = Period(SESSION_SECS_MAX as u32);

    /// `secs` seconds, if that is at most [`Period::MAX_SECS`].
    pub(crate) const fn from_secs(secs: u64) -> Option<Period> {
        if secs <= Self::MAX_SECS {
            Some(Period(secs as u32))
        } else {
            None
        }
    }

    /// Whole seconds.
    pub(crate) fn as_secs(self) -> u64 {
        u64::from(self.0)
    }

    /// As a standard duration, for timers.
    pub(crate) fn as_std(self) -> Duration {
        Duration::from_secs(self.as_secs())
    }

    /// As a chrono delta, for date arithmetic. Exact: a `u32` of seconds
    /// is far inside the range of a delta.
    pub(crate) fn as_delta(self) -> TimeDelta {
        TimeDelta::seconds(i64::from(self.0))
    }
}

/// A setting in whole seconds and the range it must be in.
///
/// Every duration setting has an upper bound, checked at start-up, because
/// each one is added to a date or an instant somewhere, and a value beyond
/// the calendar (`session_max_secs = 18446744073709551615`) would make that
/// addition fail on every request. The bounds sit well above the defaults,
/// where a longer value would only weaken a rule; `--help` states them next
/// to each flag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecondsSetting {
    /// The setting's name, as in the file.
    pub(crate) name: &'static str,
    /// The smallest accepted value.
    pub(crate) min: u64,
    /// The largest accepted value.
    pub(crate) max: u64,
    /// Why the bound is where it is.
    pub(crate) why: &'static str,
}

/// The longest any session may live, idle or not: 400 days, the longest
/// lifetime browsers give a cookie (RFC 6265bis).
const SESSION_SECS_MAX: u64 = 400 * 24 * 3600;

impl SecondsSetting {
    /// `otp_ttl_secs`.
    pub(crate) const OTP_TTL: Self = Self {
        name: "otp_ttl_secs",
        min: 1,
        max: 600,
        why: "NIST SP 800-63B allows at most 10 minutes",
    };
    /// `otp_resend_cooldown_secs`.
    pub(crate) const OTP_RESEND_COOLDOWN: Self = Self {
        name: "otp_resend_cooldown_secs",
        min: 0,
        max: 24 * 3600,
        why: "a day, the longest window of the send caps",
    };
    /// `ip_limit_window_secs`.
    pub(crate) const IP_LIMIT_WINDOW: Self = Self {
        name: "ip_limit_window_secs",
        min: 1,
        max: 24 * 3600,
        why: "a day",
    };
    /// `access_token_ttl_secs`.
    pub(crate) const ACCESS_TOKEN_TTL: Self = Self {
        name: "access_token_ttl_secs",
        min: 1,
        max: 24 * 3600,
        why: "a day; access tokens are meant to be short-lived",
    };
    /// `refresh_grace_secs`.
    pub(crate) const REFRESH_GRACE: Self = Self {
        name: "refresh_grace_secs",
        min: 0,
        max: 300,
        why: "five minutes; a longer grace lets an old refresh token through",
    };
    /// `session_idle_secs`.
    pub(crate) const SESSION_IDLE: Self = Self {
        name: "session_idle_secs",
        min: 1,
        max: SESSION_SECS_MAX,
        why: "400 days",
    };
    /// `session_max_secs`.
    pub(crate) const SESSION_MAX: Self = Self {
        name: "session_max_secs",
        min: 1,
        max: SESSION_SECS_MAX,
        why: "400 days",
    };
    /// `sync_handshake_timeout_secs`.
    pub(crate) const SYNC_HANDSHAKE_TIMEOUT: Self = Self {
        name: "sync_handshake_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes",
    };
    /// `sync_ping_interval_secs`.
    pub(crate) const SYNC_PING_INTERVAL: Self = Self {
        name: "sync_ping_interval_secs",
        min: 1,
        max: 300,
        why: "five minutes; a dead connection is found only after three",
    };
    /// `sync_write_timeout_secs`.
    pub(crate) const SYNC_WRITE_TIMEOUT: Self = Self {
        name: "sync_write_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes; longer keeps a peer that stopped reading, and what it holds, alive",
    };
    /// `shutdown_timeout_secs`.
    pub(crate) const SHUTDOWN_TIMEOUT: Self = Self {
        name: "shutdown_timeout_secs",
        min: 1,
        max: 300,
        why: "five minutes; service managers kill a process that takes longer",
    };
    /// `document_idle_secs`.
    pub(crate) const DOCUMENT_IDLE: Self = Self {
        name: "document_idle_secs",
        min: 0,
        max: 24 * 3600,
        why: "a day",
    };

    /// Every duration setting, for the tests that keep the bounds and the
    /// help text together.
    #[cfg(test)]
    pub(super) const ALL: [Self; 11] = [
        Self::OTP_TTL,
        Self::OTP_RESEND_COOLDOWN,
        Self::IP_LIMIT_WINDOW,
        Self::ACCESS_TOKEN_TTL,
        Self::REFRESH_GRACE,
        Self::SESSION_IDLE,
        Self::SESSION_MAX,
        Self::SYNC_HANDSHAKE_TIMEOUT,
        Self::SYNC_WRITE_TIMEOUT,
        Self::SHUTDOWN_TIMEOUT,
        Self::DOCUMENT_IDLE,
    ];

    /// The accepted values.
    pub(crate) fn range(&self) -> RangeInclusive<u64> {
        self.min..=self.max
    }

    /// The value as a period, or why it is refused.
    pub(crate) fn check(&self, secs: u64) -> anyhow::Result<Period> {
        let period = Period::from_secs(secs).filter(|_| self.range().contains(&secs));
        let Some(period) = period else {
            bail!(
                "{} must be at least {} and at most {} seconds ({}), not {secs}",
                self.name,
                self.min,
                self.max,
                self.why
            );
        };
        Ok(period)
    }
}
