//! The operations surface every service exposes: `/healthz` (the process answers), `/readyz`
//! (its dependencies answer) and `/metrics` (Prometheus text format), plus per-route HTTP
//! request metrics, so dashboards and alerts look the same for every tier.
//!
//! `/metrics` also says, at every scrape, whether each dependency a tier names answers
//! (`dependency_up{dependency}`: the broker and the schema registry, which readiness does not
//! cover everywhere) and how full its database pool is (`db_pool_connections_in_use` /
//! `db_pool_connections_max{pool}`): the alert rules of `deploy/monitoring` watch these.

use std::sync::Arc;
use std::time::Instant;

use crate::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// One dependency check for `/readyz`: a name and an async probe.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
pub struct Ops {
    registry: Registry,
    probes: Vec<(&'static str, Probe)>,
    dependencies: Vec<(&'static str, Probe)>,
    pools: Vec<(&'static str, sqlx::PgPool)>,
    gauges: Gauges,
}

#[derive(Clone)]
struct Gauges {
    up: IntGaugeVec,
    in_use: IntGaugeVec,
    max: IntGaugeVec,
}

/// How long a dependency may take to answer a scrape's check: Prometheus gives up on the
/// whole scrape after 10 s by default.
const DEPENDENCY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl Ops {
    pub fn new(registry: Registry) -> Self {
        // Every tier retries through `crate::retry`; a second registration is refused, harmlessly.
        let _ = registry.register(Box::new(crate::retry::RETRIES.clone()));
        let gauge = |name: &str, help: &str, label: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            let _ = registry.register(Box::new(gauge.clone()));
            gauge
        };
        let gauges = Gauges {
            up: gauge(
                "dependency_up",
                "Whether a dependency answered at this scrape (1) or not (0)",
                "dependency",
            ),
            in_use: gauge(
                "db_pool_connections_in_use",
                "Connections of the pool checked out now",
                "pool",
            ),
            max: gauge(
                "db_pool_connections_max",
                "Connections the pool may open",
                "pool",
            ),
        };
        Self {
            registry,
            probes: Vec::new(),
            dependencies: Vec::new(),
            pools: Vec::new(),
            gauges,
        }
    }

    /// Adds a dependency reported at every scrape as `dependency_up{dependency=name}` (it does
    /// not decide readiness; add it with [`Ops::probe`] too where it should).
    pub fn dependency<F>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.dependencies.push((name, Arc::new(probe)));
        self
    }

    /// Adds each of `checks` as [`Ops::dependency`] does.
    pub fn dependencies<F>(self, checks: impl IntoIterator<Item = (&'static str, F)>) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        checks
            .into_iter()
            .fold(self, |ops, (name, check)| ops.dependency(name, check))
    }

    /// Reports how full `pool` is at every scrape, as `{pool=name}`.
    pub fn pool(mut self, name: &'static str, pool: sqlx::PgPool) -> Self {
        self.pools.push((name, pool));
        self
    }

    /// Checks the dependencies and reads the pools, for the scrape under way.
    async fn refresh(&self) {
        let checks = self.dependencies.iter().map(|(name, probe)| async move {
            let up = matches!(
                tokio::time::timeout(DEPENDENCY_CHECK, probe()).await,
                Ok(Ok(()))
            );
            self.gauges.up.with_label_values(&[name]).set(i64::from(up));
        });
        futures::future::join_all(checks).await;
        for (name, pool) in &self.pools {
            let in_use = pool.size() as i64 - pool.num_idle() as i64;
            self.gauges
                .in_use
                .with_label_values(&[name])
                .set(in_use.max(0));
            self.gauges
                .max
                .with_label_values(&[name])
                .set(i64::from(pool.options().get_max_connections()));
        }
    }

    /// Adds a dependency that must answer for `/readyz` to be 200.
    pub fn probe<F>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.probes.push((name, Arc::new(probe)));
        self
    }

    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let mut failures = serde_json::Map::new();
    let mut checks = serde_json::Map::new();
    for (name, probe) in &ops.probes {
        match probe().await {
            Ok(()) => {
                checks.insert((*name).to_string(), "ok".into());
            }
            Err(e) => {
                failures.insert((*name).to_string(), e.into());
            }
        }
    }
    if failures.is_empty() {
        (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "checks": checks})),
        )
            .into_response()
    } else {
        crate::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            format!("not ready: {}", serde_json::Value::Object(failures)),
        )
        .into_response()
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    ops.refresh().await;
    let encoder = prometheus::TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&ops.registry.gather(), &mut buffer) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, encoder.format_type())],
            buffer,
        )
            .into_response(),
        Err(e) => crate::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Request count and latency per route and status, registered once per service.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }

    /// Middleware body; install with `axum::middleware::from_fn_with_state(metrics, HttpMetrics::track)`.
    /// `router` with every request counted and timed.
    pub fn around(self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self, Self::track))
    }

    pub async fn track(
        State(metrics): State<HttpMetrics>,
        request: Request,
        next: Next,
    ) -> Response {
        // The matched route template, never the raw path: ids in paths would explode cardinality.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = request.method().as_str().to_owned();
        let started = Instant::now();
        let response = next.run(request).await;
        metrics
            .latency
            .with_label_values(&[method.as_str(), route.as_str()])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .requests
            .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
            .inc();
        response
    }
}

/// The answers every tier gives outside its routes, in the API's error shape: 404 for an
/// unknown path, 405 for a known path asked with another method.
pub fn api_fallbacks<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tower::ServiceExt;

    async fn call(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_reports_the_failing_dependency_by_name() {
        let registry = Registry::new();
        let router: Router = Ops::new(registry)
            .probe("postgres", || async { Ok(()) }.boxed())
            .probe("broker", || {
                async { Err("connection refused".to_string()) }.boxed()
            })
            .router();
        let (status, body) = call(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("broker") && body.contains("connection refused"),
            "{body}"
        );
        assert!(!body.contains("postgres"), "{body}");
        let (status, _) = call(router, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_say_which_dependency_answers() {
        let router: Router = Ops::new(Registry::new())
            .dependency("broker", || async { Ok(()) }.boxed())
            .dependency("registry", || {
                async { Err("connection refused".to_string()) }.boxed()
            })
            .dependency("slow", || {
                async {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    Ok(())
                }
                .boxed()
            })
            .router();
        let (status, body) = call(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("dependency_up{dependency=\"broker\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("dependency_up{dependency=\"registry\"} 0"),
            "{body}"
        );
        assert!(
            body.contains("dependency_up{dependency=\"slow\"} 0"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn metrics_counts_requests_by_route_template() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        let app: Router = Router::new()
            .route("/items/{id}", get(|| async { "x" }))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                HttpMetrics::track,
            ))
            .merge(Ops::new(registry).router());
        let (status, _) = call(app.clone(), "/items/42").await;
        assert_eq!(status, StatusCode::OK);
        let (_, text) = call(app, "/metrics").await;
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 1"#
            ),
            "{text}"
        );
    }
}
