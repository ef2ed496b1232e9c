//! Progressive login backoff per account and per client address (the seed's 1-5-15-60 minutes).
//!
//! An attempt is counted *before* its password is verified, in one Redis script that also checks
//! the locks, so no number of parallel guesses gets more verifications than the budget: the
//! `threshold + 1`-th attempt since the last lockout is refused and locks the key for the next
//! step of the ladder, and while locked every attempt is refused with 429 and `Retry-After`
//! without feedback on the password. Counts live in Redis so every instance sees them.
//!
//! A successful login gives its attempt back: it clears the account's count and lockouts, and
//! returns one unit of the address's budget (not the whole budget: one good password must not
//! wash out a spraying attack from the same address). The account key is the account's id when
//! the login names one, so its user name and e-mail address share one budget.

use redis::aio::ConnectionManager;

use crate::error::CommandError;

/// Lock durations, in seconds, for the 1st, 2nd, 3rd and further lockouts.
pub const LADDER_SECS: [u64; 4] = [60, 5 * 60, 15 * 60, 60 * 60];
/// Attempts before each lockout: an account is one person; an address may be a whole office.
pub const ACCOUNT_THRESHOLD: u64 = 5;
pub const IP_THRESHOLD: u64 = 20;
/// Counts and lockout levels are forgotten after a day without attempts.
const COUNT_TTL_SECS: u64 = 24 * 3600;

/// KEYS: per budget `count`, `lock`, `level`. ARGV: count TTL, then per budget its threshold,
/// then the ladder. Returns 0 when the attempt may proceed, else the seconds to wait.
const BEGIN: &str = r#"
for i = 1, #KEYS, 3 do
  local ttl = redis.call('TTL', KEYS[i + 1])
  if ttl > 0 then return ttl end
end
local budgets = #KEYS / 3
for b = 0, budgets - 1 do
  local count, lock, level = KEYS[3 * b + 1], KEYS[3 * b + 2], KEYS[3 * b + 3]
  local n = redis.call('INCR', count)
  redis.call('EXPIRE', count, ARGV[1])
  if n > tonumber(ARGV[2 + b]) then
    for u = 0, b - 1 do redis.call('DECR', KEYS[3 * u + 1]) end
    redis.call('SET', count, 0, 'EX', ARGV[1])
    local step = math.min(redis.call('INCR', level), #ARGV - 1 - budgets)
    redis.call('EXPIRE', level, ARGV[1])
    local seconds = tonumber(ARGV[1 + budgets + step])
    redis.call('SET', lock, 1, 'EX', seconds)
    return seconds
  end
end
return 0
"#;

/// KEYS: account count, account level, address count.
const SUCCEEDED: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
return 0
"#;

#[derive(Clone)]
pub struct Throttle {
    redis: ConnectionManager,
    prefix: String,
    begin: redis::Script,
    succeeded: redis::Script,
}

/// Whose budget an attempt spends.
pub struct Attempt {
    account: String,
    ip: String,
}

impl Attempt {
    /// `account` is the account's id when the login names one, else the login as typed
    /// (lower-cased): unknown logins back off exactly like known ones.
    pub fn new(account: &str, ip: &str) -> Self {
        Self {
            account: account.trim().to_lowercase(),
            ip: ip.to_string(),
        }
    }
}

impl Throttle {
    pub fn new(redis: ConnectionManager, prefix: String) -> Self {
        Self {
            redis,
            prefix,
            begin: redis::Script::new(BEGIN),
            succeeded: redis::Script::new(SUCCEEDED),
        }
    }

    fn key(&self, kind: &str, scope: &str, id: &str) -> String {
        format!("{}login_{kind}:{scope}:{id}", self.prefix)
    }

    /// Spends one attempt of the account's and the address's budgets, or refuses with
    /// `RateLimited` while either is locked or when this attempt would exceed one.
    pub async fn begin(&self, attempt: &Attempt) -> Result<(), CommandError> {
        let mut invocation = self.begin.prepare_invoke();
        for (scope, id) in [("acct", &attempt.account), ("ip", &attempt.ip)] {
            invocation
                .key(self.key("fail", scope, id))
                .key(self.key("lock", scope, id))
                .key(self.key("level", scope, id));
        }
        invocation
            .arg(COUNT_TTL_SECS)
            .arg(ACCOUNT_THRESHOLD)
            .arg(IP_THRESHOLD);
        for seconds in LADDER_SECS {
            invocation.arg(seconds);
        }
        let wait: u64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        if wait > 0 {
            tracing::warn!(account = %attempt.account, ip = %attempt.ip, seconds = wait, "login refused by backoff");
            return Err(CommandError::RateLimited { retry_after: wait });
        }
        Ok(())
    }

    /// The attempt proved the password: it was not a guess.
    pub async fn succeeded(&self, attempt: &Attempt) -> Result<(), CommandError> {
        let _: i64 = self
            .succeeded
            .key(self.key("fail", "acct", &attempt.account))
            .key(self.key("level", "acct", &attempt.account))
            .key(self.key("fail", "ip", &attempt.ip))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
