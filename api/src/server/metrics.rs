//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Request and authentication counters are counted as they happen; state gauges (revision,
//! object counts) and counters owned elsewhere (flow verdicts, applies) are brought up to date
//! at scrape time, so nothing on the packet path touches this registry.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::controller::Controller;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub auth_failures: Counter,
    pub tls_handshake_failures: Counter,
    revision: Gauge,
    objects: Family<Labels, Gauge>,
    objects_failed: Gauge,
    endpoints: Gauge,
    namespaces: Gauge,
    applies: Family<Labels, Counter>,
    flows: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// Raises a counter to `target` (counters only go up; the source is monotonic).
fn raise(counter: &Counter, target: u64) {
    let current = counter.get();
    if target > current {
        counter.inc_by(target - current);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vdfw");
        let m = Self {
            requests: Family::default(),
            auth_failures: Counter::default(),
            tls_handshake_failures: Counter::default(),
            revision: Gauge::default(),
            objects: Family::default(),
            objects_failed: Gauge::default(),
            endpoints: Gauge::default(),
            namespaces: Gauge::default(),
            applies: Family::default(),
            flows: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "API requests served, by HTTP status code",
            m.requests.clone(),
        );
        registry.register(
            "api_auth_failures",
            "API calls refused for a missing or wrong bearer token",
            m.auth_failures.clone(),
        );
        registry.register(
            "api_tls_handshake_failures",
            "TCP API connections refused during the TLS handshake (e.g. no or untrusted client certificate)",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "store_revision",
            "Current control-plane store revision",
            m.revision.clone(),
        );
        registry.register(
            "objects",
            "Realized policies, groups and tiers",
            m.objects.clone(),
        );
        registry.register(
            "objects_failed",
            "Stored documents that do not parse any more and are not enforced",
            m.objects_failed.clone(),
        );
        registry.register("endpoints", "Registered endpoints", m.endpoints.clone());
        registry.register("namespaces", "Declared namespaces", m.namespaces.clone());
        registry.register(
            "policy_applies",
            "Policy apply requests, by result",
            m.applies.clone(),
        );
        registry.register(
            "flows",
            "Flow records received from the data plane, by verdict",
            m.flows.clone(),
        );
        Self { registry, ..m }
    }

    /// Renders the registry after syncing the scrape-time values from the controller.
    pub fn render(&self, c: &Controller) -> String {
        let state = c.realized();
        self.revision.set(state.revision as i64);
        for (kind, n) in [
            ("policy", state.policies.len()),
            ("group", state.groups.len()),
            ("tier", state.tiers.len()),
        ] {
            self.objects
                .get_or_create(&label("kind", kind))
                .set(n as i64);
        }
        self.objects_failed.set(c.failed_count() as i64);
        self.endpoints.set(state.endpoints.len() as i64);
        self.namespaces.set(state.namespaces.len() as i64);
        let counters = c.counters();
        raise(
            &self.applies.get_or_create(&label("result", "ok")),
            counters.applies.load(Ordering::Relaxed),
        );
        raise(
            &self.applies.get_or_create(&label("result", "failed")),
            counters.applies_failed.load(Ordering::Relaxed),
        );
        for (verdict, n) in c.flows().verdict_counts() {
            raise(
                &self
                    .flows
                    .get_or_create(&label("verdict", verdict.as_str())),
                n,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub async fn handler(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.controller);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Counts every response by status code.
pub async fn count_requests(
    State(state): State<AppState>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&label("code", resp.status().as_str()))
        .inc();
    resp
}
