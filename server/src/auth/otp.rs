//! One-time codes: generation, and the rules for sending and verifying them.
//!
//! The rules are pure functions of an [`OtpRecord`], the time, and the
//! policy, so that they can be tested at exact boundaries and so that the
//! store can re-run them when two requests race on one identifier.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use rand::Rng;
use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};

use super::span;
use crate::configuration::OtpPolicy;
use crate::store::{OtpRecord, PendingCode};

/// How long failures and sends are remembered for the caps.
const DAY: TimeDelta = TimeDelta::hours(24);

/// A one-time code: the digits sent to a contact, or what a client
/// presented as one. Held as a secret, so that it never reaches a log or a
/// debug print.
#[derive(Clone)]
pub(crate) struct OtpCode(SecretString);

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode(..)")
    }
}

impl OtpCode {
    /// A fresh code of `digits` digits (see [`generate_code`]).
    pub(crate) fn generate(digits: u32) -> Self {
        Self(SecretString::from(generate_code(digits)))
    }

    /// A fixed code from the settings (test codes).
    pub(crate) fn fixed(code: SecretString) -> Self {
        Self(code)
    }

    /// What a client presented, trimmed. Its shape is not required here: a
    /// malformed code must cost an attempt like a wrong one, so the caller
    /// asks [`OtpCode::is_well_formed`] instead.
    pub(crate) fn presented(text: &str) -> Self {
        Self(SecretString::from(text.trim().to_owned()))
    }

    /// Whether the code has the shape of the codes we send.
    pub(crate) fn is_well_formed(&self, digits: u32) -> bool {
        is_well_formed(self.0.expose_secret(), digits)
    }

    /// The code, for hashing.
    pub(crate) fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The code as a secret, for delivery.
    pub(crate) fn as_secret(&self) -> &SecretString {
        &self.0
    }
}

/// A fresh code of `digits` digits, uniform over all values, from the OS CSPRNG.
pub fn generate_code(digits: u32) -> String {
    let bound = 10u64.pow(digits);
    // `random_range` samples without modulo bias.
    let value = OsRng.unwrap_err().random_range(0..bound);
    format!("{value:0width$}", width = digits as usize)
}

/// Why a code was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// Cooldown or an hourly or daily cap; try again after this many seconds.
    RateLimited {
        /// Seconds until a send would be accepted.
        retry_after: u64,
    },
    /// Too many wrong codes for this identifier in the last 24 hours.
    Locked {
        /// Seconds until the oldest counted failure ages out.
        retry_after: u64,
    },
}

/// The result of checking a presented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code was right; it is now consumed.
    Accepted,
    /// Wrong, expired, used, or never issued. One answer for all of them.
    Rejected {
        /// Whether this attempt pushed the identifier over the failure cap.
        now_locked: bool,
    },
    /// The identifier is locked; the code was not even compared.
    Locked {
        /// Seconds until the lock lifts.
        retry_after: u64,
    },
}

fn seconds_until(now: DateTime<Utc>, then: DateTime<Utc>) -> u64 {
    (then - now).num_seconds().max(1) as u64
}

fn prune(record: &mut OtpRecord, now: DateTime<Utc>) {
    record.sends.retain(|t| now - *t < DAY);
    record.failures.retain(|t| now - *t < DAY);
}

fn lock_retry_after(record: &OtpRecord, now: DateTime<Utc>, policy: &OtpPolicy) -> Option<u64> {
    if record.failures.len() < policy.failure_cap as usize {
        return None;
    }
    // The lock lifts when enough failures age out to fall below the cap.
    let excess = record.failures.len() - policy.failure_cap as usize;
    let mut sorted = record.failures.clone();
    sorted.sort();
    Some(seconds_until(now, sorted[excess] + DAY))
}

/// Decides whether a new code may be sent, and if so records it (replacing
/// any earlier code, whose attempts no longer matter).
pub fn record_send(
    record: Option<OtpRecord>,
    code_hash: &[u8; 32],
    now: DateTime<Utc>,
    policy: &OtpPolicy,
) -> (Option<OtpRecord>, Result<(), SendRefusal>) {
    let mut record = record.unwrap_or_default();
    prune(&mut record, now);
    if let Some(retry_after) = lock_retry_after(&record, now, policy) {
        return (Some(record), Err(SendRefusal::Locked { retry_after }));
    }
    let cooldown = policy.resend_cooldown.as_delta();
    let mut sends = record.sends.clone();
    sends.sort();
    if let Some(last) = sends.last()
        && now - *last < cooldown
    {
        let retry_after = seconds_until(now, span::after(*last, cooldown));
        return (Some(record), Err(SendRefusal::RateLimited { retry_after }));
    }
    let in_last_hour: Vec<_> = sends
        .iter()
        .filter(|t| now - **t < TimeDelta::hours(1))
        .collect();
    if in_last_hour.len() >= policy.hourly_cap as usize {
        let oldest = *in_last_hour[in_last_hour.len() - policy.hourly_cap as usize];
        let retry_after = seconds_until(now, oldest + TimeDelta::hours(1));
        return (Some(record), Err(SendRefusal::RateLimited { retry_after }));
    }
    if sends.len() >= policy.daily_cap as usize {
        let oldest = sends[sends.len() - policy.daily_cap as usize];
        return (
            Some(record),
            Err(SendRefusal::RateLimited {
                retry_after: seconds_until(now, oldest + DAY),
            }),
        );
    }
    record.sends.push(now);
    record.pending = Some(PendingCode {
        hash: hex::encode(code_hash),
        issued_at: now,
        attempts: 0,
    });
    (Some(record), Ok(()))
}

/// Checks a presented code (given as its keyed hash) and records the outcome:
/// a right code is consumed; a wrong one counts against the code and against
/// the identifier. The hashes are compared in constant time.
pub fn record_attempt(
    record: Option<OtpRecord>,
    presented_hash: &[u8; 32],
    now: DateTime<Utc>,
    policy: &OtpPolicy,
) -> (Option<OtpRecord>, VerifyOutcome) {
    // Nobody asked for a code for this identifier: nothing to count against,
    // and creating records here would let anyone fill the store.
    let Some(mut record) = record else {
        return (None, VerifyOutcome::Rejected { now_locked: false });
    };
    prune(&mut record, now);
    if let Some(retry_after) = lock_retry_after(&record, now, policy) {
        return (Some(record), VerifyOutcome::Locked { retry_after });
    }
    let ttl = policy.ttl.as_delta();
    let live = record.pending.as_ref().filter(|p| {
        now - p.issued_at < ttl && now >= p.issued_at && p.attempts < policy.max_attempts
    });
    let right = live.is_some_and(|p| {
        hex::decode(&p.hash).is_ok_and(|stored| super::keys::hashes_equal(&stored, presented_hash))
    });
    if right {
        record.pending = None;
        record.failures.clear();
        return (Some(record), VerifyOutcome::Accepted);
    }
    if let Some(p) = record.pending.as_mut() {
        p.attempts += 1;
        if p.attempts >= policy.max_attempts || now - p.issued_at >= ttl {
            record.pending = None;
        }
    }
    record.failures.push(now);
    let now_locked = record.failures.len() >= policy.failure_cap as usize;
    (Some(record), VerifyOutcome::Rejected { now_locked })
}

/// Whether a presented string could be a code at all. Anything else is
/// rejected like a wrong code, without revealing the difference.
pub fn is_well_formed(code: &str, digits: u32) -> bool {
    code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Period;

    fn policy() -> OtpPolicy {
        OtpPolicy {
            digits: 6,
            ttl: Period::from_secs(600).unwrap(),
            max_attempts: 5,
            resend_cooldown: Period::from_secs(60).unwrap(),
            hourly_cap: 5,
            daily_cap: 10,
            failure_cap: 20,
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    const RIGHT: [u8; 32] = [1; 32];
    const WRONG: [u8; 32] = [2; 32];

    fn sent_at(now: DateTime<Utc>) -> Option<OtpRecord> {
        let (r, ok) = record_send(None, &RIGHT, now, &policy());
        ok.unwrap();
        r
    }

    #[test]
    fn codes_are_the_right_length_and_vary() {
        let codes: std::collections::HashSet<_> = (0..200).map(|_| generate_code(6)).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(
            codes.len() > 190,
            "200 codes had only {} distinct values",
            codes.len()
        );
        assert_eq!(generate_code(10).len(), 10);
    }

    #[test]
    fn a_right_code_is_accepted_once() {
        let r = sent_at(t0());
        let (r, outcome) = record_attempt(r, &RIGHT, t0() + TimeDelta::seconds(5), &policy());
        assert_eq!(outcome, VerifyOutcome::Accepted);
        let (_, outcome) = record_attempt(r, &RIGHT, t0() + TimeDelta::seconds(6), &policy());
        assert_eq!(outcome, VerifyOutcome::Rejected { now_locked: false });
    }

    #[test]
    fn a_code_expires_exactly_at_its_lifetime() {
        let r = sent_at(t0());
        let just_before = t0() + TimeDelta::seconds(599);
        assert_eq!(
            record_attempt(r.clone(), &RIGHT, just_before, &policy()).1,
            VerifyOutcome::Accepted
        );
        let at_expiry = t0() + TimeDelta::seconds(600);
        assert_eq!(
            record_attempt(r, &RIGHT, at_expiry, &policy()).1,
            VerifyOutcome::Rejected { now_locked: false }
        );
    }

    #[test]
    fn five_wrong_attempts_kill_the_code() {
        let mut r = sent_at(t0());
        for _ in 0..5 {
            r = record_attempt(r, &WRONG, t0(), &policy()).0;
        }
        assert_eq!(
            record_attempt(r, &RIGHT, t0(), &policy()).1,
            VerifyOutcome::Rejected { now_locked: false }
        );
    }

    #[test]
    fn the_failure_cap_survives_resends() {
        let mut r = None;
        let mut now = t0();
        // Four codes, five failures each: twenty failures in total.
        for _ in 0..4 {
            let (next, ok) = record_send(r, &RIGHT, now, &policy());
            ok.unwrap();
            r = next;
            for _ in 0..5 {
                r = record_attempt(r, &WRONG, now, &policy()).0;
            }
            now += TimeDelta::seconds(61);
        }
        let (_, refused) = record_send(r.clone(), &RIGHT, now, &policy());
        assert!(matches!(refused, Err(SendRefusal::Locked { .. })));
        let (_, outcome) = record_attempt(r.clone(), &RIGHT, now, &policy());
        assert!(matches!(outcome, VerifyOutcome::Locked { .. }));
        // A day after the first failure, the oldest failures age out.
        let later = t0() + DAY + TimeDelta::seconds(1);
        assert!(record_send(r, &RIGHT, later, &policy()).1.is_ok());
    }

    #[test]
    fn resends_respect_the_cooldown_and_the_caps() {
        let r = sent_at(t0());
        let (r, refused) = record_send(r, &RIGHT, t0() + TimeDelta::seconds(59), &policy());
        assert_eq!(refused, Err(SendRefusal::RateLimited { retry_after: 1 }));
        let mut r = r;
        let mut now = t0();
        for _ in 0..4 {
            now += TimeDelta::seconds(60);
            let (next, ok) = record_send(r, &RIGHT, now, &policy());
            ok.unwrap();
            r = next;
        }
        // Five sends within the hour: the sixth waits for the first to age out.
        let (_, refused) = record_send(r, &RIGHT, now + TimeDelta::seconds(60), &policy());
        assert_eq!(
            refused,
            Err(SendRefusal::RateLimited {
                retry_after: 3600 - 300
            })
        );
    }

    #[test]
    fn durations_past_the_calendar_do_not_panic() {
        // The settings refuse such durations; the rules must not panic on
        // them anyway.
        let policy = OtpPolicy {
            ttl: Period::MAX,
            resend_cooldown: Period::MAX,
            ..policy()
        };
        let (record, sent) = record_send(None, &RIGHT, t0(), &policy);
        assert!(sent.is_ok());
        let (record, again) = record_send(record, &WRONG, t0(), &policy);
        assert!(matches!(again, Err(SendRefusal::RateLimited { .. })));
        let (_, outcome) = record_attempt(record, &RIGHT, t0(), &policy);
        assert!(matches!(outcome, VerifyOutcome::Accepted));
    }

    #[test]
    fn a_new_code_replaces_the_old_one() {
        let r = sent_at(t0());
        let newer: [u8; 32] = [3; 32];
        let (r, ok) = record_send(r, &newer, t0() + TimeDelta::seconds(60), &policy());
        ok.unwrap();
        let (r, outcome) = record_attempt(r, &RIGHT, t0() + TimeDelta::seconds(61), &policy());
        assert_eq!(outcome, VerifyOutcome::Rejected { now_locked: false });
        assert_eq!(
            record_attempt(r, &newer, t0() + TimeDelta::seconds(62), &policy()).1,
            VerifyOutcome::Accepted
        );
    }

    #[test]
    fn attempts_without_any_code_create_no_record() {
        let (r, outcome) = record_attempt(None, &RIGHT, t0(), &policy());
        assert!(r.is_none());
        assert_eq!(outcome, VerifyOutcome::Rejected { now_locked: false });
    }

    #[test]
    fn malformed_codes_are_recognised() {
        assert!(is_well_formed("012345", 6));
        assert!(!is_well_formed("12345", 6));
        assert!(!is_well_formed("12345a", 6));
        assert!(!is_well_formed("١٢٣٤٥٦", 6));
    }
}
