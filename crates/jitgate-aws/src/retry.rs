//! Which failures are worth another try, and how long to wait before it: exponential backoff
//! with full jitter (a delay drawn uniformly below `min(cap, base · 2^retry)`), a bounded number
//! of attempts. Eventual consistency (`…NotFound` just after a create) is not retried here: the
//! caller knows when a thing should exist ([`crate::Ec2Error::is_not_found`]).

use std::time::Duration;

use crate::Ec2Error;

/// The retry schedule of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// No delay is longer.
    pub cap: Duration,
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(20), max_attempts: 8 }
    }
}

impl Backoff {
    /// The longest delay before retry number `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }

    /// The delay before retry number `retry`, for a uniform draw `unit` in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        self.ceiling(retry).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Whether another attempt follows attempt number `attempt` (1 for the first).
    pub fn another_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }
}

/// The error codes EC2 answers when it is too busy or failed inside.
const RETRIED_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// Whether `err` may go away on another try: throttling, EC2's own failures (500, 503), an
/// endpoint that could not be reached.
pub fn retryable(err: &Ec2Error) -> bool {
    match err {
        Ec2Error::Api { status, code, .. } => RETRIED_CODES.contains(&code.as_str()) || matches!(status, 500 | 503),
        Ec2Error::Transport(_) => true,
        Ec2Error::Credentials(_) | Ec2Error::Decode(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Ec2Error {
        Ec2Error::Api { status, code: code.into(), message: String::new(), request_id: None }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|r| b.ceiling(r).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 20000, 20000]);
        assert_eq!(b.ceiling(1000), Duration::from_secs(20));
        let huge = Backoff { base: Duration::from_secs(u64::MAX / 2), cap: Duration::from_secs(5), max_attempts: 3 };
        assert_eq!(huge.ceiling(40), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(400));
        assert!(b.delay(3, 0.999_999) < Duration::from_millis(800));
        assert_eq!(b.delay(3, 7.0), Duration::from_millis(800));
        assert_eq!(b.delay(3, f64::NAN.max(-1.0)), Duration::ZERO);
    }

    #[test]
    fn attempts_are_bounded() {
        let b = Backoff { max_attempts: 3, ..Backoff::default() };
        assert!(b.another_after(1) && b.another_after(2) && !b.another_after(3));
        let once = Backoff { max_attempts: 0, ..Backoff::default() };
        assert!(!once.another_after(1));
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable(&api(503, "RequestLimitExceeded")));
        assert!(retryable(&api(400, "Throttling")));
        assert!(retryable(&api(500, "Http500")));
        assert!(retryable(&api(503, "Http503")));
        assert!(retryable(&Ec2Error::Transport("connection refused".into())));
        assert!(!retryable(&api(400, "InvalidGroup.NotFound")));
        assert!(!retryable(&api(400, "InvalidPermission.Duplicate")));
        assert!(!retryable(&api(403, "UnauthorizedOperation")));
        assert!(!retryable(&Ec2Error::Decode("x".into())));
        assert!(!retryable(&Ec2Error::Credentials("x".into())));
    }
}
