//! The one retry policy for a dependency that blinks (broker, registry, store): exponential
//! backoff with jitter from 100 ms to 5 s, kept by `backon`, every retry logged and counted in
//! `retries_total{what}` (registered on every tier's `/metrics` by [`crate::ops::Ops`]).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prometheus::{IntCounterVec, Opts};
use tokio_util::sync::CancellationToken;

pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "retries_total",
            "Operations retried after a dependency failed, by operation",
        ),
        &["what"],
    )
    .expect("a valid metric")
});

/// The policy, unbounded; bound it with `with_max_times` where giving up is right.
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Counts and logs one retry of `what` after `error`.
pub fn note(what: &'static str, error: &dyn std::fmt::Display, wait: Duration) {
    RETRIES.with_label_values(&[what]).inc();
    tracing::warn!(what, error = %error, wait_ms = wait.as_millis() as u64, "retrying");
}

/// Runs `op` until it succeeds or fails with an error `transient` does not accept (returned);
/// transient failures are retried for as long as they last (a caller that must stop drops the
/// future).
pub async fn while_transient<T, E, F, Fut>(
    what: &'static str,
    op: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    op.retry(policy())
        .sleep(tokio::time::sleep)
        .when(transient)
        .notify(|e: &E, wait| note(what, e, wait))
        .await
}

/// Runs `op` until it succeeds (`Some`) or `stop` is cancelled (`None`).
pub async fn until_ok<T, E, F, Fut>(
    what: &'static str,
    stop: &CancellationToken,
    op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let retried = op
        .retry(policy())
        .sleep(tokio::time::sleep)
        .notify(|e: &E, wait| note(what, e, wait));
    tokio::select! {
        result = retried => result.ok(),
        () = stop.cancelled() => None,
    }
}
