//! Per-client-IP token buckets for the auth endpoints.
//!
//! Each (purpose, address) pair has a bucket (the token-bucket algorithm)
//! that admits `limit` requests and refills completely over `window`; what
//! it holds is called `requests_left` here, so that it is not mistaken for
//! the access and refresh tokens the same endpoints deal in. Buckets live
//! in memory: a restart forgets them, which errs towards the user. The
//! per-identifier caps that protect accounts are in the store and survive
//! restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::configuration::IpLimits;

/// Which endpoint a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitedAction {
    /// `POST /v1/auth/otp`.
    SendCode,
    /// `POST /v1/auth/verify`.
    VerifyCode,
    /// `POST /v1/auth/refresh`.
    Refresh,
}

/// More buckets than this and full ones are dropped, so that a flood of
/// addresses cannot exhaust memory.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests the bucket admits now; fractional while it refills.
    requests_left: f64,
    updated: Instant,
}

/// The limiter. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct IpRateLimiter {
    limits: IpLimits,
    buckets: Mutex<HashMap<(LimitedAction, IpAddr), Bucket>>,
}

impl IpRateLimiter {
    /// A limiter with the configured limits.
    pub fn new(limits: IpLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, action: LimitedAction) -> f64 {
        f64::from(match action {
            LimitedAction::SendCode => self.limits.send,
            LimitedAction::VerifyCode => self.limits.verify,
            LimitedAction::Refresh => self.limits.refresh,
        })
    }

    /// Admits one request. `Err(seconds)` says how long until one would be
    /// admitted.
    pub fn check(&self, action: LimitedAction, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let capacity = self.limit(action);
        let per_second = capacity / self.limits.window.as_std().as_secs_f64();
        let mut buckets = self
            .buckets
            .lock()
            .expect("the limiter lock is never held across a panic");
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|(a, _), b| {
                let refilled = b.requests_left
                    + now.saturating_duration_since(b.updated).as_secs_f64() * per_second;
                refilled < self.limit(*a)
            });
        }
        let bucket = buckets.entry((action, ip)).or_insert(Bucket {
            requests_left: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.requests_left = (bucket.requests_left + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.requests_left >= 1.0 {
            bucket.requests_left -= 1.0;
            Ok(())
        } else {
            // A wait too long for a Duration (a window no setting allows)
            // is as good as forever.
            let wait = Duration::try_from_secs_f64((1.0 - bucket.requests_left) / per_second)
                .map_or(u64::MAX, |wait| wait.as_secs());
            Err(wait.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Period;

    fn limiter() -> IpRateLimiter {
        IpRateLimiter::new(IpLimits {
            send: 3,
            verify: 30,
            refresh: 150,
            window: Period::from_secs(300).unwrap(),
        })
    }

    #[test]
    fn a_bucket_empties_then_refills() {
        let l = limiter();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            l.check(LimitedAction::SendCode, ip, t).unwrap();
        }
        assert_eq!(l.check(LimitedAction::SendCode, ip, t), Err(100));
        assert!(
            l.check(LimitedAction::SendCode, ip, t + Duration::from_secs(100))
                .is_ok()
        );
    }

    #[test]
    fn addresses_and_actions_have_separate_buckets() {
        let l = limiter();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            l.check(LimitedAction::SendCode, a, t).unwrap();
        }
        assert!(l.check(LimitedAction::SendCode, b, t).is_ok());
        assert!(l.check(LimitedAction::VerifyCode, a, t).is_ok());
    }
}
