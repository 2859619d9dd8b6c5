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
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    /// API call latency by HTTP method.
    pub request_seconds: Family<Labels, Histogram>,
    vnic_packets: Family<Labels, Counter>,
    vnic_bytes: Family<Labels, Counter>,
    vnic_drops: Family<Labels, Counter>,
    vnic_connected: Family<Labels, Gauge>,
    rule_packets: Family<Labels, Counter>,
    rule_bytes: Family<Labels, Counter>,
    rule_sessions: Family<Labels, Counter>,
    conntrack_entries: Gauge,
    enforced_revision: Gauge,
}

fn new_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
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
            request_seconds: Family::new_with_constructor(new_histogram),
            vnic_packets: Family::default(),
            vnic_bytes: Family::default(),
            vnic_drops: Family::default(),
            vnic_connected: Family::default(),
            rule_packets: Family::default(),
            rule_bytes: Family::default(),
            rule_sessions: Family::default(),
            conntrack_entries: Gauge::default(),
            enforced_revision: Gauge::default(),
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
        registry.register(
            "api_request_duration_seconds",
            "API call latency, by HTTP method",
            m.request_seconds.clone(),
        );
        registry.register(
            "vnic_packets",
            "Packets per vNIC, by direction (tx: sent by the VM, rx: delivered to it)",
            m.vnic_packets.clone(),
        );
        registry.register(
            "vnic_bytes",
            "Bytes per vNIC, by direction",
            m.vnic_bytes.clone(),
        );
        registry.register(
            "vnic_drops",
            "Frames dropped per vNIC, by reason",
            m.vnic_drops.clone(),
        );
        registry.register(
            "vnic_connected",
            "1 while a VMM is attached to the vNIC's vhost-user socket",
            m.vnic_connected.clone(),
        );
        registry.register(
            "rule_packets",
            "Packets of connections each rule decided (stable rule id)",
            m.rule_packets.clone(),
        );
        registry.register(
            "rule_bytes",
            "Bytes of connections each rule decided",
            m.rule_bytes.clone(),
        );
        registry.register(
            "rule_sessions",
            "Connections each rule decided (its hits)",
            m.rule_sessions.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Tracked connections, all vNICs",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "enforced_revision",
            "Store revision the data plane enforces",
            m.enforced_revision.clone(),
        );
        Self { registry, ..m }
    }

    /// Data-plane counters, read at scrape time. A vNIC re-created under the same name
    /// restarts its counters at zero; they are only raised again once they pass the value
    /// already exported (Prometheus counters never go down).
    fn sync_data_plane(&self, c: &Controller) {
        let Ok(Some(stats)) = c.data_plane_stats() else {
            return;
        };
        for v in &stats.vnics {
            let ep = v.endpoint.to_string();
            let l = |extra: (&str, &str)| {
                vec![
                    ("endpoint".to_string(), ep.clone()),
                    (extra.0.to_string(), extra.1.to_string()),
                ]
            };
            raise(
                &self.vnic_packets.get_or_create(&l(("direction", "tx"))),
                v.tx_packets,
            );
            raise(
                &self.vnic_packets.get_or_create(&l(("direction", "rx"))),
                v.rx_packets,
            );
            raise(
                &self.vnic_bytes.get_or_create(&l(("direction", "tx"))),
                v.tx_bytes,
            );
            raise(
                &self.vnic_bytes.get_or_create(&l(("direction", "rx"))),
                v.rx_bytes,
            );
            for (reason, n) in &v.drops {
                raise(&self.vnic_drops.get_or_create(&l(("reason", reason))), *n);
            }
            self.vnic_connected
                .get_or_create(&label("endpoint", &ep))
                .set(i64::from(v.connected));
        }
        for r in &stats.rules {
            let l = vec![
                ("policy".to_string(), r.policy.to_string()),
                ("rule".to_string(), r.rule.clone()),
                ("rule_id".to_string(), r.rule_id.to_string()),
            ];
            raise(&self.rule_packets.get_or_create(&l), r.packets);
            raise(&self.rule_bytes.get_or_create(&l), r.bytes);
            raise(&self.rule_sessions.get_or_create(&l), r.sessions);
        }
        self.conntrack_entries
            .set(i64::try_from(stats.conntrack_entries).unwrap_or(i64::MAX));
        self.enforced_revision
            .set(i64::try_from(stats.enforced_revision).unwrap_or(i64::MAX));
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
        self.sync_data_plane(c);
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
    let method = req.method().as_str().to_string();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .request_seconds
        .get_or_create(&label("method", &method))
        .observe(t0.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&label("code", resp.status().as_str()))
        .inc();
    resp
}
