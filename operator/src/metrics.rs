//! Prometheus metrics (`prometheus-client`) and the HTTP endpoints `/metrics`, `/healthz` and
//! `/readyz`. Every metric is documented in `docs/metrics.md`.
//!
//! The server takes an already-bound listener and a shutdown future, so tests run it on port 0.
//! Error labels are static per error kind ([`crate::Error::metric_label`]), never an error's text.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Content type of the OpenMetrics text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetState {
    pub subnet: String,
    /// `used` or `free`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolState {
    pub pool: String,
    /// `used` or `free`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabel {
    pub subnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleasedLabels {
    pub subnet: String,
    /// [`ReleaseReason::as_str`].
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `completed`, `skipped` (API server unreachable: GC never acts then) or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindErrorLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Why a reservation's keys disappeared from etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// A DEL of the owner (the plugin), or `ipam release`.
    Del,
    /// This operator's garbage collection.
    Gc,
    /// The pending lease expired (an ADD that never committed).
    Expired,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Del => "del",
            ReleaseReason::Gc => "gc",
            ReleaseReason::Expired => "expired",
        }
    }
}

/// Outcome of a GC cycle, for `static_macvlan_gc_runs_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcResult {
    Completed,
    Skipped,
    Failed,
}

type Addresses = Gauge<f64, AtomicU64>;

/// The `kind` label values of the reconcile metrics.
pub const KINDS: [&str; 5] = [
    "VlanSubnet",
    "MacPool",
    "AllocationRule",
    "Pod",
    "MacvlanEndpoint",
];

fn reconcile_buckets() -> Histogram {
    // 5 ms .. ~10 s
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

fn etcd_buckets() -> Histogram {
    // 0.5 ms .. ~8 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric of the operator, registered under the prefix `static_macvlan`.
pub struct Metrics {
    registry: Registry,
    pub subnet_addresses: Family<SubnetState, Addresses>,
    pub macpool_addresses: Family<PoolState, Addresses>,
    pub reservations_created: Family<SubnetLabel, Counter>,
    pub reservations_released: Family<ReleasedLabels, Counter>,
    pub gc_runs: Family<ResultLabel, Counter>,
    pub gc_waiting: Gauge,
    pub reconcile_duration: Family<KindLabel, Histogram>,
    pub reconcile_errors: Family<KindErrorLabels, Counter>,
    pub etcd_request_duration: Family<OpLabel, Histogram>,
    pub leader: Gauge,
    pub etcd_up: Gauge,
    pub api_up: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("static_macvlan");
        let m = Metrics {
            subnet_addresses: Family::default(),
            macpool_addresses: Family::default(),
            reservations_created: Family::default(),
            reservations_released: Family::default(),
            gc_runs: Family::default(),
            gc_waiting: Gauge::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_buckets),
            reconcile_errors: Family::default(),
            etcd_request_duration: Family::new_with_constructor(etcd_buckets),
            leader: Gauge::default(),
            etcd_up: Gauge::default(),
            api_up: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "subnet_addresses",
            "Addresses of a VlanSubnet by state: used (reserved) or free (allocatable, not reserved)",
            m.subnet_addresses.clone(),
        );
        registry.register(
            "macpool_addresses",
            "Addresses of a MacPool by state: used (reserved) or free",
            m.macpool_addresses.clone(),
        );
        registry.register(
            "reservations_created",
            "Reservations created in etcd (by any node's plugin), from the etcd watch",
            m.reservations_created.clone(),
        );
        registry.register(
            "reservations_released",
            "Reservations removed from etcd by reason: del (plugin DEL or ipam release), gc (this operator), expired (pending lease ran out)",
            m.reservations_released.clone(),
        );
        registry.register(
            "gc_runs",
            "Garbage-collection cycles by result: completed, skipped (API server unreachable), failed (etcd)",
            m.gc_runs.clone(),
        );
        registry.register(
            "gc_waiting_reservations",
            "Committed reservations whose pod is confirmed gone, waiting out the grace period",
            m.gc_waiting.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time to reconcile one object, by kind",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and error kind",
            m.reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "etcd_request_duration",
            "Duration of the operator's etcd requests, by operation",
            Unit::Seconds,
            m.etcd_request_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and does the work, else 0",
            m.leader.clone(),
        );
        registry.register(
            "etcd_up",
            "1 when the last etcd health probe succeeded, else 0",
            m.etcd_up.clone(),
        );
        registry.register(
            "api_up",
            "1 when the last Kubernetes API health probe succeeded, else 0",
            m.api_up.clone(),
        );
        // Series with known label values exist from the start (at 0), so rate() and alerts
        // see them before the first event.
        for result in ["completed", "skipped", "failed"] {
            drop(m.gc_runs.get_or_create(&ResultLabel { result }));
        }
        for kind in KINDS {
            drop(m.reconcile_duration.get_or_create(&KindLabel { kind }));
        }
        Metrics { registry, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Times an etcd request as `static_macvlan_etcd_request_duration_seconds{op}`.
    pub async fn etcd<T>(&self, op: &'static str, fut: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = fut.await;
        self.etcd_request_duration
            .get_or_create(&OpLabel { op })
            .observe(start.elapsed().as_secs_f64());
        out
    }

    /// Records a reconcile's duration and, if it failed, its error kind.
    pub fn reconciled(&self, kind: &'static str, start: Instant, error: Option<&'static str>) {
        self.reconcile_duration
            .get_or_create(&KindLabel { kind })
            .observe(start.elapsed().as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&KindErrorLabels { kind, error })
                .inc();
        }
    }

    pub fn set_subnet(&self, subnet: &str, used: u128, free: u128) {
        for (state, v) in [("used", used), ("free", free)] {
            self.subnet_addresses
                .get_or_create(&SubnetState {
                    subnet: subnet.to_string(),
                    state,
                })
                .set(v as f64);
        }
    }

    pub fn forget_subnet(&self, subnet: &str) {
        for state in ["used", "free"] {
            self.subnet_addresses.remove(&SubnetState {
                subnet: subnet.to_string(),
                state,
            });
        }
    }

    pub fn set_pool(&self, pool: &str, used: u128, free: u128) {
        for (state, v) in [("used", used), ("free", free)] {
            self.macpool_addresses
                .get_or_create(&PoolState {
                    pool: pool.to_string(),
                    state,
                })
                .set(v as f64);
        }
    }

    pub fn forget_pool(&self, pool: &str) {
        for state in ["used", "free"] {
            self.macpool_addresses.remove(&PoolState {
                pool: pool.to_string(),
                state,
            });
        }
    }

    pub fn created(&self, subnet: &str) {
        self.reservations_created
            .get_or_create(&SubnetLabel {
                subnet: subnet.to_string(),
            })
            .inc();
    }

    pub fn released(&self, subnet: &str, reason: ReleaseReason) {
        self.reservations_released
            .get_or_create(&ReleasedLabels {
                subnet: subnet.to_string(),
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn gc_run(&self, result: GcResult) {
        let result = match result {
            GcResult::Completed => "completed",
            GcResult::Skipped => "skipped",
            GcResult::Failed => "failed",
        };
        self.gc_runs.get_or_create(&ResultLabel { result }).inc();
    }

    /// Sets the leader gauge; on losing leadership the gauges only the leader maintains are
    /// cleared, so a standby never exports stale address counts.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if !leader {
            self.subnet_addresses.clear();
            self.macpool_addresses.clear();
            self.gc_waiting.set(0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What `/readyz` reports: both stores the operator depends on answered their last probe.
#[derive(Debug, Default)]
pub struct Health {
    pub etcd: AtomicBool,
    pub api: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.etcd.load(Ordering::Relaxed) && self.api.load(Ordering::Relaxed)
    }
}

/// Shared state of the HTTP endpoints.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

async fn metrics_handler(State(t): State<Telemetry>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], t.metrics.encode())
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    let flag = |ok: bool| if ok { "ok" } else { "failing" };
    let body = format!(
        "etcd {}\nkubernetes-api {}\n",
        flag(t.health.etcd.load(Ordering::Relaxed)),
        flag(t.health.api.load(Ordering::Relaxed))
    );
    let code = if t.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// The routes: `/metrics`, `/healthz` (the process serves: liveness never depends on etcd or
/// the API server, so an outage does not restart the operator), `/readyz` (etcd and the API
/// server answered their last probe).
pub fn router(t: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(t)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    t: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(t))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_units() {
        let m = Metrics::new();
        m.set_subnet("lan", 3, 250);
        m.created("lan");
        m.released("lan", ReleaseReason::Gc);
        m.gc_run(GcResult::Completed);
        m.reconciled("VlanSubnet", Instant::now(), Some("etcd_unavailable"));
        m.leader.set(1);
        let text = m.encode();
        for needle in [
            "static_macvlan_subnet_addresses{subnet=\"lan\",state=\"used\"} 3.0",
            "static_macvlan_subnet_addresses{subnet=\"lan\",state=\"free\"} 250.0",
            "static_macvlan_reservations_created_total{subnet=\"lan\"} 1",
            "static_macvlan_reservations_released_total{subnet=\"lan\",reason=\"gc\"} 1",
            "static_macvlan_gc_runs_total{result=\"completed\"} 1",
            "static_macvlan_reconcile_duration_seconds_count{kind=\"VlanSubnet\"} 1",
            "static_macvlan_reconcile_errors_total{kind=\"VlanSubnet\",error=\"etcd_unavailable\"} 1",
            "static_macvlan_leader 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        m.set_leader(false);
        assert!(!m.encode().contains("subnet=\"lan\",state"));
    }
}
