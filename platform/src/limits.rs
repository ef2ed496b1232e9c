//! Per-caller budgets: every write and every expensive read spends from a token bucket named by
//! what it does (posting, reactions, room creation, search…), keyed by the user, or by the
//! client address for anonymous calls; an empty bucket answers 429 with `Retry-After`.
//!
//! Buckets are `governor` GCRA cells in the memory of the instance that serves the call (no
//! round trip per request; a budget is per instance, and the commands tier serves each room's
//! commands on one instance). Refusals are counted in `rate_limited_total{budget}`.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::config::{ConfigError, env_or};

/// A budget's name and size: `per_sec` sustained, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub name: &'static str,
    pub per_sec: f64,
    pub burst: u32,
}

impl Budget {
    pub const fn new(name: &'static str, per_sec: f64, burst: u32) -> Self {
        Self {
            name,
            per_sec,
            burst,
        }
    }

    /// This budget, resized by `CHAT_LIMIT_<NAME>` = `<per second>/<burst>` when set (e.g.
    /// `CHAT_LIMIT_POSTS=10/30`; a load test raises a budget it does not measure).
    pub fn from_env(self) -> Result<Self, ConfigError> {
        let name = format!("CHAT_LIMIT_{}", self.name.to_uppercase());
        let size = env_or(
            &name,
            Size {
                per_sec: self.per_sec,
                burst: self.burst,
            },
        )?;
        Ok(Self {
            per_sec: size.per_sec,
            burst: size.burst,
            ..self
        })
    }
}

/// A budget's size as written in the environment: `<per second>/<burst>`.
struct Size {
    per_sec: f64,
    burst: u32,
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected <per second>/<burst>, e.g. 10/30: {s:?}");
        let (rate, burst) = s.split_once('/').ok_or_else(expected)?;
        let per_sec: f64 = rate.trim().parse().map_err(|_| expected())?;
        let burst: u32 = burst.trim().parse().map_err(|_| expected())?;
        if !(per_sec > 0.0 && per_sec.is_finite()) || burst == 0 {
            return Err(expected());
        }
        Ok(Self { per_sec, burst })
    }
}

/// A spent budget: retry after this many seconds (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests; retry in {retry_after} s")]
pub struct Exhausted {
    pub retry_after: u64,
}

/// One budget's buckets, one per key.
pub struct Limit {
    budget: Budget,
    buckets: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    refused: prometheus::IntCounter,
}

impl Limit {
    /// `refused` is the tier's `rate_limited_total` family (see [`refusals`]).
    pub fn new(budget: Budget, refused: &IntCounterVec) -> Self {
        let period = Duration::from_secs_f64(1.0 / budget.per_sec.max(0.001));
        let burst = NonZeroU32::new(budget.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            budget,
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            refused: refused.with_label_values(&[budget.name]),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Spends one unit of `key`'s bucket.
    pub fn check(&self, key: &str) -> Result<(), Exhausted> {
        self.check_n(key, 1)
    }

    /// Spends `n` units at once (a batch that costs more than one call).
    pub fn check_n(&self, key: &str, n: u32) -> Result<(), Exhausted> {
        let n = NonZeroU32::new(n.clamp(1, self.budget.burst.max(1))).unwrap_or(NonZeroU32::MIN);
        let key = key.to_string();
        let refused = match self.buckets.check_key_n(&key, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(self.clock.now()),
            Err(_) => Duration::from_secs(1),
        };
        self.refused.inc();
        Err(Exhausted {
            retry_after: refused.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Forgets keys whose buckets have refilled completely, bounding memory; call every minute.
    pub fn sweep(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

/// The `rate_limited_total{budget}` counter family, registered once per tier.
pub fn refusals(registry: &Registry) -> Result<IntCounterVec, prometheus::Error> {
    let family = IntCounterVec::new(
        Opts::new(
            "rate_limited_total",
            "Calls refused with 429 because their budget was spent, by budget",
        ),
        &["budget"],
    )?;
    registry.register(Box::new(family.clone()))?;
    Ok(family)
}

/// Declares a tier's budgets once: a `Budgets` struct of sizes (defaults, `CHAT_LIMIT_<NAME>`
/// overrides) and a `Limits` struct of buckets with one field per budget.
///
/// ```ignore
/// platform::budgets! {
///     pub struct Budgets / Limits {
///         /// Posting messages, per user.
///         posts: 10.0, 30;
///     }
/// }
/// ```
#[macro_export]
macro_rules! budgets {
    ($vis:vis struct $budgets:ident / $limits:ident {
        $( $(#[$doc:meta])* $field:ident: $per_sec:expr, $burst:expr; )*
    }) => {
        /// Budget sizes (per second / burst), parsed once with the tier's configuration.
        #[derive(Debug, Clone, Copy)]
        $vis struct $budgets {
            $( $(#[$doc])* pub $field: $crate::limits::Budget, )*
        }

        impl $budgets {
            pub const DEFAULTS: Self = Self {
                $( $field: $crate::limits::Budget::new(stringify!($field), $per_sec, $burst), )*
            };

            pub fn from_env() -> Result<Self, $crate::ConfigError> {
                Ok(Self { $( $field: Self::DEFAULTS.$field.from_env()?, )* })
            }
        }

        /// The buckets behind each budget.
        $vis struct $limits {
            $( $(#[$doc])* pub $field: $crate::limits::Limit, )*
        }

        impl $limits {
            pub fn new(budgets: &$budgets, refused: &$crate::limits::Refusals) -> Self {
                Self { $( $field: $crate::limits::Limit::new(budgets.$field, refused), )* }
            }

            /// Forgets idle callers' buckets (see [`$crate::limits::sweep_every_minute`]).
            pub fn sweep(&self) {
                $( self.$field.sweep(); )*
            }
        }
    };
}

/// The `rate_limited_total{budget}` family every limit of a tier counts into.
pub type Refusals = IntCounterVec;

/// Runs `sweep` every minute until shutdown, so idle callers' buckets do not pile up.
pub fn sweep_every_minute(
    sweep: impl Fn() + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(60)) => sweep(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family() -> IntCounterVec {
        IntCounterVec::new(Opts::new("t", "t"), &["budget"]).unwrap()
    }

    #[test]
    fn burst_then_refuses_then_refills() {
        let family = family();
        let limit = Limit::new(Budget::new("posts", 10.0, 30), &family);
        for _ in 0..30 {
            assert!(limit.check("u").is_ok());
        }
        assert_eq!(limit.check("u"), Err(Exhausted { retry_after: 1 }));
        assert!(limit.check("other").is_ok());
        assert_eq!(family.with_label_values(&["posts"]).get(), 1);
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            limit.check("u").is_ok(),
            "one token back after 100 ms at 10/s"
        );
    }

    #[test]
    fn sizes_parse_from_the_environment_form() {
        let size: Size = "0.5/10".parse().unwrap();
        assert_eq!((size.per_sec, size.burst), (0.5, 10));
        for bad in ["10", "x/3", "10/0", "-1/5", "10/3.5"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slow_budgets_name_the_wait() {
        let limit = Limit::new(Budget::new("rooms", 1.0 / 60.0, 2), &family());
        assert!(limit.check_n("u", 2).is_ok());
        let wait = limit.check("u").unwrap_err().retry_after;
        assert!((59..=60).contains(&wait), "{wait}");
    }
}
