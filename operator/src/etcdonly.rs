//! `serve-metrics`: the operator's `/metrics`, `/healthz` and `/readyz` from etcd alone, with no
//! Kubernetes API — for sites that run the plugin without a cluster-side operator, and for the
//! local demo. It watches the prefix (reservations created and released, by reason) and counts
//! each subnet's usage periodically; it mirrors, collects and elects nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use static_macvlan_allocator::{Allocator, Subnet};

use crate::controller::ConfigTriggers;
use crate::error::Error;
use crate::etcdwatch::{self, Sinks};
use crate::metrics::{self, Health, Metrics, Telemetry};
use crate::mirror::Snapshot;

/// Serves until `shutdown` completes.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    alloc: Allocator,
    addr: SocketAddr,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // No API server is involved here, so readiness depends on etcd only.
    health.api.store(true, Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            op: format!("listen on {addr}"),
            source,
        })?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz from etcd only");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(metrics::serve(
        listener,
        Telemetry {
            metrics: metrics.clone(),
            health: health.clone(),
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let watch = tokio::spawn(etcdwatch::run(
        alloc.clone(),
        Sinks {
            metrics: metrics.clone(),
            ledger: Arc::default(),
            config: ConfigTriggers::default(),
            endpoints: None,
            pods: None,
        },
    ));
    let counting = async {
        loop {
            let ok = count(&alloc, &metrics).await;
            health.etcd.store(ok, Ordering::Relaxed);
            metrics.etcd_up.set(i64::from(ok));
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = counting => {}
    }
    watch.abort();
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Sets every configured subnet's used/free gauges; false when etcd did not answer.
async fn count(alloc: &Allocator, metrics: &Metrics) -> bool {
    let snap = match Snapshot::read(alloc).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "read configuration from etcd");
            return false;
        }
    };
    for (name, stored) in &snap.subnets {
        let Ok(m) = &stored.decoded else { continue };
        let Ok(subnet) = Subnet::from_config(name, &m.spec) else {
            continue;
        };
        match alloc.usage(&subnet).await {
            Ok(u) => metrics.set_subnet(name, u.used, u.free),
            Err(e) => {
                tracing::warn!(error = %e, subnet = %name, "count reservations");
                return false;
            }
        }
    }
    true
}
