//! One etcd watch over the whole prefix (with previous values) drives what follows etcd:
//!
//! - `ips/` — `static_macvlan_reservations_created_total` (a PUT creating the key: version 1)
//!   and `static_macvlan_reservations_released_total` (a DELETE; reason `gc` when this operator
//!   deleted that revision, `expired` when the last record was pending — its lease ran out —
//!   else `del`), and a refresh of the subnets' (and MAC pools') used/free;
//! - `owners/` — hints for the MacvlanEndpoint view;
//! - `config/` — re-reconcile of that kind (a key deleted or edited by hand is repaired);
//! - `pods/` — the pod mirror learns what etcd holds.
//!
//! Each (re)start takes the current revision, tells the followers to resync from a full read,
//! and watches from the next revision; a compaction or an outage restarts it (with backoff).
//! Counters miss what happens while the watch is down — the gauges do not, they are recounted.

use std::sync::Arc;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use static_macvlan_allocator::{Allocator, Key, Record, State};
use tokio::sync::mpsc;

use crate::controller::{backoff_delay, ConfigTriggers};
use crate::endpoints::Hint;
use crate::error::Error;
use crate::gc::Ledger;
use crate::metrics::{Metrics, ReleaseReason};
use crate::podmirror::KeyChange;

/// Where the watch's findings go. Absent followers are skipped.
#[derive(Clone)]
pub struct Sinks {
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<Ledger>,
    pub config: ConfigTriggers,
    pub endpoints: Option<mpsc::UnboundedSender<Hint>>,
    pub pods: Option<mpsc::UnboundedSender<KeyChange>>,
}

fn record(kv: Option<&KeyValue>) -> Option<Record> {
    kv.and_then(|kv| serde_json::from_slice(kv.value()).ok())
}

impl Sinks {
    fn resync(&self) {
        self.config.subnets.fire();
        self.config.pools.fire();
        self.config.rules.fire();
        if let Some(tx) = &self.endpoints {
            let _ = tx.send(Hint::Resync);
        }
        if let Some(tx) = &self.pods {
            let _ = tx.send(KeyChange::Resync);
        }
    }

    /// Handles one event.
    pub fn dispatch(
        &self,
        alloc: &Allocator,
        kind: EventType,
        kv: &KeyValue,
        prev: Option<&KeyValue>,
    ) {
        let key = String::from_utf8_lossy(kv.key());
        let Ok(parsed) = alloc.keys().parse(&key) else {
            return;
        };
        match parsed {
            Key::Ip { subnet, .. } => {
                let rec = match kind {
                    EventType::Put => record(Some(kv)),
                    EventType::Delete => record(prev),
                };
                match kind {
                    EventType::Put if kv.version() == 1 => self.metrics.created(&subnet),
                    EventType::Put => {}
                    EventType::Delete => {
                        let reason = match (prev, &rec) {
                            (Some(p), _) if self.ledger.take(&key, p.mod_revision()) => {
                                ReleaseReason::Gc
                            }
                            // A pending lease or a sticky hold ran out.
                            (_, Some(r)) if matches!(r.state, State::Pending | State::Held) => {
                                ReleaseReason::Expired
                            }
                            _ => ReleaseReason::Del,
                        };
                        self.metrics.released(&subnet, reason);
                    }
                }
                self.config.subnets.fire();
                if rec.is_some_and(|r| r.mac.is_some()) {
                    self.config.pools.fire();
                }
            }
            Key::Owner { pod_uid, .. } => {
                if let Some(tx) = &self.endpoints {
                    let owner = match kind {
                        EventType::Put => record(Some(kv)),
                        EventType::Delete => record(prev),
                    }
                    .map(|r| (r.owner.namespace, r.owner.pod));
                    let _ = tx.send(Hint::Pod {
                        uid: pod_uid,
                        name: owner,
                    });
                }
            }
            Key::Subnet(_) => self.config.subnets.fire(),
            Key::MacPool(_) => self.config.pools.fire(),
            Key::Rule(_) => self.config.rules.fire(),
            Key::Pod { namespace, name } => {
                if let Some(tx) = &self.pods {
                    let value = match kind {
                        EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
                        EventType::Delete => None,
                    };
                    let _ = tx.send(KeyChange::Changed {
                        name: (namespace, name),
                        value,
                    });
                }
            }
            // A sticky key changes with its IP key, which fires above.
            Key::Mac(_) | Key::Node { .. } | Key::Sticky { .. } | Key::Schema => {}
        }
    }
}

/// The current revision of the store.
async fn revision(alloc: &Allocator, metrics: &Metrics) -> Result<i64, Error> {
    let mut kv = alloc.client().kv_client();
    let root = alloc.keys().root();
    let resp = metrics
        .etcd(
            "get_revision",
            kv.get(
                root,
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        .map_err(|e| Error::etcd("read the current revision", e))?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}

/// One watch session: until the stream ends or fails.
///
/// # Errors
/// etcd failures, a canceled (compacted) watch.
pub async fn watch_once(alloc: &Allocator, sinks: &Sinks) -> Result<(), Error> {
    let rev = revision(alloc, &sinks.metrics).await?;
    sinks.resync();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(rev + 1);
    let mut stream = alloc
        .client()
        .watch_client()
        .watch(alloc.keys().root(), Some(opts))
        .await
        .map_err(|e| Error::etcd("watch the prefix", e))?;
    tracing::debug!(revision = rev, "watching etcd");
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|e| Error::etcd("watch the prefix", e))?
    {
        if resp.canceled() {
            return Err(Error::Conflict(format!(
                "etcd canceled the watch (compacted at revision {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                sinks.dispatch(alloc, ev.event_type(), kv, ev.prev_kv());
            }
        }
    }
    Ok(())
}

/// Watches until dropped, restarting with backoff.
pub async fn run(alloc: Allocator, sinks: Sinks) {
    let mut failures = 0u32;
    loop {
        match watch_once(&alloc, &sinks).await {
            Ok(()) => {
                failures = 0;
                tracing::debug!("etcd watch ended; restarting");
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "etcd watch failed; restarting with backoff");
            }
        }
        tokio::time::sleep(backoff_delay(failures.max(1)) / 2).await;
    }
}
