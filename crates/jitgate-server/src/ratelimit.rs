//! Rate limits: token buckets in memory, one per key (a source address, a credential, a
//! principal), and the rates the operator configures (`--rate-limit-…` as `N/min`).
//!
//! Pure logic: every decision takes `now` as a parameter. Memory is bounded: a bucket that has
//! refilled is the same as no bucket and is dropped first; past [`MAX_KEYS`], the least recently
//! used half goes.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most keys one limiter remembers.
pub const MAX_KEYS: usize = 50_000;

/// A sustained rate with a burst of the same size: `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub const fn per_minute(count: u32) -> Self {
        Rate { count, period: Duration::from_secs(60) }
    }

    /// Parses `N/s`, `N/min`, `N/h` (also `N/sec`, `N/m`, `N/hour`; a bare `N` is per minute).
    /// `0`, `off` and `none` disable the limit (`Ok(None)`).
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let t = text.trim().to_ascii_lowercase();
        if matches!(t.as_str(), "0" | "off" | "none" | "unlimited") {
            return Ok(None);
        }
        let (n, unit) = t.split_once('/').unwrap_or((t.as_str(), "min"));
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a rate such as 10/min, 5/s or 100/h (0 or off: no limit)"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("'{other}' in '{text}' is not a unit; use s, min or h")),
        };
        Ok((count > 0).then_some(Rate { count, period }))
    }

    /// One token, in bucket units (exact integer arithmetic: a token is `period` nanoseconds
    /// and every elapsed nanosecond adds `count` units).
    fn token(&self) -> i128 {
        self.period.as_nanos().max(1) as i128
    }

    fn burst(&self) -> i128 {
        i128::from(self.count) * self.token()
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.period.as_secs() {
            1 => write!(f, "{}/s", self.count),
            3600 => write!(f, "{}/h", self.count),
            60 => write!(f, "{}/min", self.count),
            s => write!(f, "{}/{s}s", self.count),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// In units of [`Rate::token`]. May go below zero (down to minus the burst): events
    /// admitted concurrently are paid back.
    level: i128,
    updated: Instant,
}

/// Token buckets keyed by `K`. `None` rate: no limit, nothing remembered.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Option<Rate>,
    buckets: HashMap<K, Bucket>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Option<Rate>) -> Self {
        Self::with_capacity(rate, MAX_KEYS)
    }

    pub fn with_capacity(rate: Option<Rate>, max_keys: usize) -> Self {
        Limiter { rate, buckets: HashMap::new(), max_keys: max_keys.max(2) }
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The bucket of `key` brought up to `now` (a full one when unknown).
    fn refilled(&self, rate: Rate, key: &K, now: Instant) -> Bucket {
        match self.buckets.get(key) {
            None => Bucket { level: rate.burst(), updated: now },
            Some(b) => Self::refill(rate, *b, now),
        }
    }

    fn refill(rate: Rate, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.updated).as_nanos() as i128;
        let level = b.level.saturating_add(elapsed.saturating_mul(i128::from(rate.count))).min(rate.burst());
        Bucket { level, updated: now.max(b.updated) }
    }

    fn wait_for_one(rate: Rate, level: i128) -> Duration {
        let missing = (rate.token() - level).max(0);
        let count = i128::from(rate.count.max(1));
        let nanos = (missing + count - 1) / count;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Whether an event for `key` is allowed now, without taking it. `Err` is how long until it is.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let b = self.refilled(rate, key, now);
        if b.level >= rate.token() {
            Ok(())
        } else {
            Err(Self::wait_for_one(rate, b.level))
        }
    }

    /// Takes one event for `key` if allowed. `Err` is how long until one is.
    pub fn try_take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut b = self.refilled(rate, key, now);
        if b.level < rate.token() {
            self.store(key, b, now);
            return Err(Self::wait_for_one(rate, b.level));
        }
        b.level -= rate.token();
        self.store(key, b, now);
        Ok(())
    }

    /// Counts one event for `key` whether or not it was allowed (it already happened): the
    /// bucket may go into debt, down to minus the burst, which later events pay back.
    pub fn charge(&mut self, key: &K, now: Instant) {
        let Some(rate) = self.rate else { return };
        let mut b = self.refilled(rate, key, now);
        b.level = (b.level - rate.token()).max(-rate.burst());
        self.store(key, b, now);
    }

    fn store(&mut self, key: &K, bucket: Bucket, now: Instant) {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict(now);
        }
        self.buckets.insert(key.clone(), bucket);
    }

    /// Drops every bucket that has refilled (it means the same as no bucket), then, if still
    /// full, the least recently used half.
    fn evict(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            self.buckets.retain(|_, b| Self::refill(rate, *b, now).level < rate.burst());
        }
        if self.buckets.len() >= self.max_keys {
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.updated > cutoff);
        }
    }
}

/// The key of a source address: the address itself, or for IPv6 its /64 (one host usually
/// holds a whole /64, and could otherwise walk through it).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Seconds for a `Retry-After` header: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("10/min"), Ok(Some(Rate::per_minute(10))));
        assert_eq!(Rate::parse(" 10 / MIN "), Ok(Some(Rate::per_minute(10))));
        assert_eq!(Rate::parse("10"), Ok(Some(Rate::per_minute(10))));
        assert_eq!(Rate::parse("5/s"), Ok(Some(Rate { count: 5, period: Duration::from_secs(1) })));
        assert_eq!(Rate::parse("100/h"), Ok(Some(Rate { count: 100, period: Duration::from_secs(3600) })));
        assert_eq!(Rate::parse("0"), Ok(None));
        assert_eq!(Rate::parse("off"), Ok(None));
        assert_eq!(Rate::parse("0/min"), Ok(None));
        assert!(Rate::parse("ten/min").is_err());
        assert!(Rate::parse("10/day").is_err());
        assert!(Rate::parse("-1/min").is_err());
        assert_eq!(Rate::per_minute(10).to_string(), "10/min");
    }

    #[test]
    fn a_bucket_allows_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(Rate::per_minute(10)));
        for i in 0..10 {
            assert_eq!(l.try_take(&"a", t0), Ok(()), "event {i}");
        }
        let wait = l.try_take(&"a", t0).expect_err("the 11th is refused");
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(6), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 6);
        // Another key has its own bucket.
        assert_eq!(l.try_take(&"b", t0), Ok(()));
        // One token every 6 s.
        assert!(l.try_take(&"a", t0 + Duration::from_secs(5)).is_err());
        assert_eq!(l.try_take(&"a", t0 + Duration::from_secs(6)), Ok(()));
        assert!(l.try_take(&"a", t0 + Duration::from_secs(7)).is_err());
        // After a long pause the burst is back, but not more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(l.try_take(&"a", later), Ok(()));
        }
        assert!(l.try_take(&"a", later).is_err());
    }

    #[test]
    fn charges_go_into_debt_and_are_paid_back() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(Rate::per_minute(10)));
        for _ in 0..15 {
            l.charge(&1u8, t0);
        }
        // 15 charged against a burst of 10: 5 in debt, so the next one is 6 tokens (36 s) away.
        let wait = l.check(&1u8, t0).expect_err("in debt");
        assert_eq!(retry_after_secs(wait), 36);
        assert!(l.check(&1u8, t0 + Duration::from_secs(35)).is_err());
        assert_eq!(l.check(&1u8, t0 + Duration::from_secs(36)), Ok(()));
        // The debt is bounded by the burst.
        for _ in 0..1000 {
            l.charge(&2u8, t0);
        }
        assert_eq!(retry_after_secs(l.check(&2u8, t0).expect_err("in debt")), 66);
    }

    #[test]
    fn no_rate_means_no_limit_and_no_memory() {
        let t0 = Instant::now();
        let mut l = Limiter::new(None);
        for i in 0..10_000u32 {
            assert_eq!(l.try_take(&i, t0), Ok(()));
            l.charge(&i, t0);
        }
        assert!(l.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::with_capacity(Some(Rate::per_minute(5)), 100);
        for i in 0..10_000u32 {
            let _ = l.try_take(&i, t0 + Duration::from_millis(u64::from(i)));
            assert!(l.len() <= 100);
        }
        // The most recent keys are still limited.
        for _ in 0..4 {
            let _ = l.try_take(&9_999, t0 + Duration::from_secs(10));
        }
        assert!(l.try_take(&9_999, t0 + Duration::from_secs(10)).is_err());
        // Refilled buckets are dropped first.
        let mut l = Limiter::with_capacity(Some(Rate::per_minute(5)), 10);
        for i in 0..10u32 {
            l.try_take(&i, t0).expect("first");
        }
        l.try_take(&100, t0 + Duration::from_secs(600)).expect("new key");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key("::ffff:192.0.2.7".parse().expect("ip")), v4);
    }
}
