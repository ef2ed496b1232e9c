//! Progressive login backoff per account and per client IP (the seed's 1-5-15-60 minutes).
//!
//! Failures are counted in Redis so every instance sees them. Every `threshold` consecutive
//! failures lock the key for the next step of the ladder; while locked, logins are refused with
//! 429 and `Retry-After` before the password is even checked, so guessing gets no feedback.
//! A successful login clears the account's count (not the IP's: one good password must not
//! wash out a spraying attack from the same address).

use redis::aio::ConnectionManager;

use crate::error::CommandError;

/// Lock durations, in seconds, for the 1st, 2nd, 3rd and further lockouts.
pub const LADDER_SECS: [u64; 4] = [60, 5 * 60, 15 * 60, 60 * 60];
/// Failures before each lockout: an account is one person; an IP may be a whole office.
pub const ACCOUNT_THRESHOLD: u64 = 5;
pub const IP_THRESHOLD: u64 = 20;
/// Failure counts are forgotten after a day without failures.
const COUNT_TTL_SECS: u64 = 24 * 3600;

#[derive(Clone)]
pub struct Throttle {
    redis: ConnectionManager,
    prefix: String,
}

impl Throttle {
    pub fn new(redis: ConnectionManager, prefix: String) -> Self {
        Self { redis, prefix }
    }

    fn keys(&self, login: &str, ip: &str) -> [(String, String, u64); 2] {
        let account = login.trim().to_lowercase();
        [
            (
                format!("{}login_fail:acct:{account}", self.prefix),
                format!("{}login_lock:acct:{account}", self.prefix),
                ACCOUNT_THRESHOLD,
            ),
            (
                format!("{}login_fail:ip:{ip}", self.prefix),
                format!("{}login_lock:ip:{ip}", self.prefix),
                IP_THRESHOLD,
            ),
        ]
    }

    /// Refuses with `RateLimited` while the account or the IP is locked.
    pub async fn check(&self, login: &str, ip: &str) -> Result<(), CommandError> {
        let mut redis = self.redis.clone();
        for (_, lock, _) in self.keys(login, ip) {
            let ttl: i64 = redis::cmd("TTL").arg(&lock).query_async(&mut redis).await?;
            if ttl > 0 {
                return Err(CommandError::RateLimited {
                    retry_after: ttl as u64,
                });
            }
        }
        Ok(())
    }

    /// Records a failed login; locks a key when its count reaches the next threshold.
    pub async fn failed(&self, login: &str, ip: &str) -> Result<(), CommandError> {
        let mut redis = self.redis.clone();
        for (count_key, lock_key, threshold) in self.keys(login, ip) {
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .incr(&count_key, 1)
                .expire(&count_key, COUNT_TTL_SECS as i64)
                .ignore()
                .query_async(&mut redis)
                .await?;
            if count % threshold == 0 {
                let step = ((count / threshold) as usize)
                    .saturating_sub(1)
                    .min(LADDER_SECS.len() - 1);
                let _: () = redis::cmd("SET")
                    .arg(&lock_key)
                    .arg(1)
                    .arg("EX")
                    .arg(LADDER_SECS[step])
                    .query_async(&mut redis)
                    .await?;
                tracing::warn!(key = %lock_key, seconds = LADDER_SECS[step], failures = count, "login locked");
            }
        }
        Ok(())
    }

    pub async fn succeeded(&self, login: &str, ip: &str) -> Result<(), CommandError> {
        let mut redis = self.redis.clone();
        let [(account_count, _, _), _] = self.keys(login, ip);
        let _: () = redis::cmd("DEL")
            .arg(account_count)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }
}
