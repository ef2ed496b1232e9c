//! Per-user posting limit: a token bucket per user (default 10 messages/s, bursts of 30).
//!
//! Kept in the memory of the instance that receives the request (before any forwarding), so
//! the limit holds per instance; with several instances behind sticky routing a user meets
//! one of them.

use std::time::Instant;

use dashmap::DashMap;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_sec.max(0.001),
            burst: burst.max(1.0),
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for `user`; `Err(seconds)` says when one will be available.
    pub fn check(&self, user: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut entry = self
            .buckets
            .entry(user.to_string())
            .or_insert((self.burst, now));
        let (tokens, last) = *entry;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *entry = (tokens - 1.0, now);
            Ok(())
        } else {
            *entry = (tokens, now);
            Err(((1.0 - tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Drops buckets that have refilled completely (idle users), bounding memory.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.buckets.retain(|_, (tokens, last)| {
            *tokens + now.duration_since(*last).as_secs_f64() * self.rate < self.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuses_then_refills() {
        let limiter = RateLimiter::new(10.0, 30.0);
        for _ in 0..30 {
            assert!(limiter.check("u").is_ok());
        }
        assert_eq!(limiter.check("u"), Err(1));
        assert!(limiter.check("other").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(
            limiter.check("u").is_ok(),
            "one token back after 100 ms at 10/s"
        );
    }
}
