//! Per-user posting limit: a token bucket per user (default 10 messages/s, bursts of 30), kept by
//! `governor` (GCRA) in the memory of the instance that writes the room, where the forwarding
//! layer delivers every command; with several instances a user's rooms may live on several of
//! them, each counting what reaches it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

pub struct RateLimiter {
    buckets: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate_per_sec.max(0.001));
        let burst = NonZeroU32::new(burst.max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes a token for `user`; `Err(seconds)` says when one will be available.
    pub fn check(&self, user: &str) -> Result<(), u64> {
        self.buckets
            .check_key(&user.to_string())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                wait.as_secs_f64().ceil().max(1.0) as u64
            })
    }

    /// Forgets users whose buckets have refilled completely (idle users), bounding memory.
    pub fn sweep(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
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
