//! `run`: the controller process. It always serves `/metrics`, `/healthz` and `/readyz` and
//! probes etcd and the API server; while it leads (or without leader election) it runs the
//! leader's tasks:
//!
//! - the config controllers and the orphan sweep ([`crate::controller`]),
//! - the pod mirror ([`crate::podmirror`]),
//! - the MacvlanEndpoint view ([`crate::endpoints`]),
//! - garbage collection ([`crate::gc`]),
//! - the etcd watch that feeds them and the reservation counters ([`crate::etcdwatch`]).
//!
//! Losing leadership aborts those tasks (every etcd write they make is a compare-and-swap or
//! idempotent, so an abort mid-way is harmless) and clears the gauges only a leader maintains;
//! regaining it starts them afresh.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use static_macvlan_allocator::{Allocator, Options};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::controller::{self, ConfigTriggers, Ctx};
use crate::endpoints::Endpoints;
use crate::error::Error;
use crate::etcdwatch::{self, Sinks};
use crate::gc::{Collector, Ledger};
use crate::leader::{self, Elector, Timing};
use crate::metrics::{self, Health, Metrics, Telemetry};
use crate::podmirror::{PodIndex, PodMirror, SharedIndex};
use crate::settings::Settings;

/// How often etcd and the API server are probed for `/readyz` and the `*_up` gauges.
const PROBE_PERIOD: Duration = Duration::from_secs(10);

/// Probes etcd (a status request) and the API server (`/version`) every [`PROBE_PERIOD`].
pub async fn probe(client: Client, alloc: Allocator, metrics: Arc<Metrics>, health: Arc<Health>) {
    let timeout = Duration::from_secs(5);
    let mut first = true;
    loop {
        let mut etcd = alloc.client();
        let etcd_ok = matches!(
            tokio::time::timeout(timeout, metrics.etcd("status", etcd.status())).await,
            Ok(Ok(_))
        );
        let api_ok = matches!(
            tokio::time::timeout(timeout, client.apiserver_version()).await,
            Ok(Ok(_))
        );
        for (flag, gauge, ok, what) in [
            (&health.etcd, &metrics.etcd_up, etcd_ok, "etcd"),
            (&health.api, &metrics.api_up, api_ok, "kubernetes api"),
        ] {
            let was = flag.swap(ok, std::sync::atomic::Ordering::Relaxed) || first;
            gauge.set(i64::from(ok));
            if was && !ok {
                tracing::warn!(store = what, "health probe failing");
            } else if !was && ok {
                tracing::info!(store = what, "health probe ok");
            }
        }
        first = false;
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

/// Everything the leader's tasks need.
#[derive(Clone)]
pub struct Parts {
    pub client: Client,
    pub alloc: Allocator,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

/// Creates the schema key (or checks it), retrying with backoff while etcd is unreachable.
async fn ensure_schema(alloc: &Allocator) -> Result<(), Error> {
    let mut failures = 0;
    loop {
        match alloc.ensure_schema().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                failures += 1;
                tracing::warn!(error = %e, "etcd not reachable; retrying");
                tokio::time::sleep(controller::backoff_delay(failures)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs a GC cycle every `every` (the first after one period, once the pod index had a chance
/// to sync).
async fn gc_loop(mut c: Collector, index: SharedIndex, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = {
            let idx = index.read().unwrap_or_else(|p| p.into_inner());
            idx.synced.then(|| idx.uids.clone())
        };
        let result = c.cycle(Instant::now(), live.as_ref()).await;
        c.metrics.gc_run(result);
    }
}

/// Starts the leader's work in `tasks`: the schema key is ensured first, then every follower
/// of the cluster and of etcd runs until aborted.
pub fn start_leader_tasks(tasks: &mut JoinSet<Result<(), Error>>, p: &Parts) {
    let s = p.settings.clone();
    let triggers = ConfigTriggers::default();
    let ledger = Arc::new(Ledger::default());
    let index: SharedIndex = Arc::new(RwLock::new(PodIndex::default()));
    let (hint_tx, hint_rx) = mpsc::unbounded_channel();
    let (pods_tx, pods_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx::new(
        p.client.clone(),
        p.alloc.clone(),
        p.metrics.clone(),
        s.resync,
    ));
    let mirror = PodMirror::new(
        p.alloc.clone(),
        p.metrics.clone(),
        index.clone(),
        Some(hint_tx.clone()),
    );
    let endpoints = Endpoints::new(
        p.client.clone(),
        p.alloc.clone(),
        p.metrics.clone(),
        index.clone(),
    );
    let collector = Collector::new(
        p.alloc.clone(),
        p.client.clone(),
        p.metrics.clone(),
        ledger.clone(),
        s.gc_grace,
    );
    let sinks = Sinks {
        metrics: p.metrics.clone(),
        ledger,
        config: triggers.clone(),
        endpoints: Some(hint_tx),
        pods: Some(pods_tx),
    };
    let alloc = p.alloc.clone();
    let client = p.client.clone();
    tasks.spawn(async move {
        // The first writes need the schema key; a foreign schema under the prefix stops here.
        ensure_schema(&alloc).await?;
        tokio::join!(
            controller::run(ctx, triggers),
            mirror.run(client, pods_rx, s.resync),
            endpoints.run(hint_rx, s.resync),
            gc_loop(collector, index, s.gc_interval),
            etcdwatch::run(alloc.clone(), sinks),
        );
        Ok(())
    });
}

/// Runs the controller until `shutdown` completes.
///
/// # Errors
/// No API client could be built (no kubeconfig, not in a cluster), the metrics address cannot
/// be bound, bad etcd settings, or a leader task failed for good (a foreign schema).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .map_err(|source| Error::Io {
            op: format!("listen on {}", settings.metrics_addr),
            source,
        })?;
    tracing::info!(addr = %settings.metrics_addr, "serving /metrics /healthz /readyz");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(metrics::serve(
        listener,
        Telemetry {
            metrics: metrics.clone(),
            health: health.clone(),
        },
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));
    let client = Client::try_default().await.map_err(Error::kube(
        "connect to the Kubernetes API (in cluster, or KUBECONFIG / ~/.kube/config)",
    ))?;
    let alloc = Allocator::connect(&settings.etcd, Options::default()).await?;
    let probe = tokio::spawn(probe(
        client.clone(),
        alloc.clone(),
        metrics.clone(),
        health.clone(),
    ));

    let (leader_tx, mut leader_rx) = watch::channel(false);
    let elector = if settings.leader_election {
        let ns = settings
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let e = Elector::new(
            client.clone(),
            &ns,
            &settings.lease_name,
            &leader::identity(),
            Timing::default(),
        );
        tracing::info!(id = e.id(), lease = %format!("{ns}/{}", settings.lease_name), "leader election on");
        Some(tokio::spawn(e.run(
            leader_tx,
            metrics.clone(),
            stop_rx.clone(),
        )))
    } else {
        tracing::info!("leader election off: this replica does the work");
        leader_tx.send_replace(true);
        metrics.leader.set(1);
        None
    };

    let parts = Parts {
        client,
        alloc,
        metrics: metrics.clone(),
        settings,
    };
    tokio::pin!(shutdown);
    let mut outcome = Ok(());
    'outer: loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = leader_rx.wait_for(|l| *l) => if r.is_err() { break },
        }
        metrics.set_leader(true);
        tracing::info!("leading: starting controllers, pod mirror, endpoints, gc");
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        start_leader_tasks(&mut tasks, &parts);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tasks.abort_all();
                    break 'outer;
                }
                r = leader_rx.wait_for(|l| !*l) => {
                    tasks.abort_all();
                    metrics.set_leader(false);
                    if r.is_err() { break 'outer; }
                    tracing::warn!(led_for = ?started.elapsed(), "no longer leading: stopped the leader's tasks");
                    break;
                }
                Some(r) = tasks.join_next() => {
                    let e = match r {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(join) if join.is_cancelled() => continue,
                        Err(join) => Error::Invalid(format!("a leader task panicked: {join}")),
                    };
                    tasks.abort_all();
                    outcome = Err(e);
                    break 'outer;
                }
            }
        }
    }
    tracing::info!("shutting down");
    metrics.set_leader(false);
    stop_tx.send_replace(true);
    if let Some(e) = elector {
        // The elector releases the Lease on stop; do not wait for it forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    probe.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    outcome
}
