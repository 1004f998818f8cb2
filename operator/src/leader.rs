//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does
//! it: two replicas run, the Lease's holder does the work, the other stands by.
//!
//! - Expiry is judged on the local clock: a follower notes *when it saw* the Lease record last
//!   change and takes it over once it has not changed for `leaseDurationSeconds` — the holder's
//!   `renewTime` is informative only, so clock skew between nodes does not matter.
//! - Every write is a create or a replace carrying the `resourceVersion` read: of two replicas
//!   racing for an expired Lease, the API server lets exactly one win (the other gets 409).
//! - The leader renews every `retry_period`; when it has not managed to renew for
//!   `renew_deadline` (shorter than the lease duration) it steps down by itself, before anyone
//!   else can take over.
//! - On shutdown the leader releases the Lease (empty holder) so the standby takes over at once.
//!
//! [`decide`] is the pure state machine; [`Elector::tick`] reads, decides and writes.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::error::Error;
use crate::metrics::Metrics;

/// Timing of the election (client-go's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease record must stay unchanged before a follower takes over.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renew.
    pub renew_deadline: Duration,
    /// Time between rounds.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// Someone else holds it and renews: stand by.
    Follow { holder: String },
}

/// Decides the round. `unchanged_for` is how long (on our clock) the Lease record has been
/// seen without change.
pub fn decide(
    me: &str,
    lease: Option<&LeaseSpec>,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        None => Step::Acquire,
        Some(h) if h == me => Step::Renew,
        Some(h) => {
            let duration = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(default_duration);
            if unchanged_for >= duration {
                Step::Acquire
            } else {
                Step::Follow {
                    holder: h.to_string(),
                }
            }
        }
    }
}

/// The part of a Lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Option<Record> {
        spec.map(|s| Record {
            holder: s.holder_identity.clone(),
            renew_time: s.renew_time.clone(),
            transitions: s.lease_transitions,
        })
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    id: String,
    timing: Timing,
    /// The record last seen and when (our clock) it was first seen like that.
    observed: Option<(Option<Record>, Instant)>,
    /// When we last wrote the Lease successfully as its holder.
    last_renew: Option<Instant>,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, id: &str, timing: Timing) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            id: id.to_string(),
            timing,
            observed: None,
            last_renew: None,
        }
    }

    /// This replica's identity (the Lease's `holderIdentity` while it leads).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn leading_within_deadline(&self, now: Instant) -> bool {
        self.last_renew
            .is_some_and(|t| now.saturating_duration_since(t) < self.timing.renew_deadline)
    }

    /// One round at `now` (injected, so tests drive the clock). Returns whether this replica
    /// leads afterwards.
    pub async fn tick(&mut self, now: Instant) -> bool {
        match self.round(now).await {
            Ok(leader) => leader,
            Err(e) => {
                let keep = self.leading_within_deadline(now);
                tracing::warn!(error = %e, still_leader = keep, "leader election round failed");
                if !keep {
                    self.last_renew = None;
                }
                keep
            }
        }
    }

    async fn round(&mut self, now: Instant) -> Result<bool, Error> {
        let op = format!("leader election: lease {}", self.name);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(Error::kube(format!("get {op}")))?;
        let record = Record::of(current.as_ref().and_then(|l| l.spec.as_ref()));
        let since = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => now,
        };
        self.observed = Some((record, since));
        let step = decide(
            &self.id,
            current.as_ref().and_then(|l| l.spec.as_ref()),
            now.saturating_duration_since(since),
            self.timing.lease_duration,
        );
        let duration = self.timing.lease_duration.as_secs() as i32;
        let written = match (&step, current) {
            (Step::Follow { holder }, _) => {
                if self.last_renew.take().is_some() {
                    tracing::warn!(holder, "another replica holds the lease");
                }
                return Ok(false);
            }
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.id.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(now_micro()),
                        renew_time: Some(now_micro()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew | Step::Acquire, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if step == Step::Acquire {
                    if spec
                        .holder_identity
                        .as_deref()
                        .is_some_and(|h| !h.is_empty())
                    {
                        tracing::info!(previous = ?spec.holder_identity, "the lease expired; taking over");
                    }
                    spec.holder_identity = Some(self.id.clone());
                    spec.acquire_time = Some(now_micro());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(now_micro());
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (Step::Renew | Step::Acquire, None) => unreachable!("decide creates a missing lease"),
        };
        match written {
            Ok(lease) => {
                if self.last_renew.is_none() {
                    tracing::info!(id = %self.id, lease = %self.name, "became leader");
                }
                self.observed = Some((Record::of(lease.spec.as_ref()), now));
                self.last_renew = Some(now);
                Ok(true)
            }
            // Someone else wrote first: they lead.
            Err(e) if is_conflict(&e) => {
                if self.last_renew.take().is_some() {
                    tracing::warn!("lost the lease to another replica");
                }
                Ok(false)
            }
            Err(e) => Err(Error::kube(format!("write {op}"))(e)),
        }
    }

    /// Gives the Lease up if we hold it: empty holder, so a standby takes over at its next
    /// round instead of after the lease duration.
    ///
    /// # Errors
    /// API failures.
    pub async fn release(&mut self) -> Result<(), Error> {
        if self.last_renew.take().is_none() {
            return Ok(());
        }
        let op = format!("release lease {}", self.name);
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(Error::kube(op.clone()))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.id.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.name, "released the lease");
                Ok(())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(Error::kube(op)(e)),
        }
    }

    /// Runs rounds every `retry_period`, publishing leadership on `tx` (and the leader gauge),
    /// until `stop` turns true; then releases the Lease.
    pub async fn run(
        mut self,
        tx: watch::Sender<bool>,
        metrics: std::sync::Arc<Metrics>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let leader = self.tick(Instant::now()).await;
            tx.send_if_modified(|l| std::mem::replace(l, leader) != leader);
            metrics.leader.set(i64::from(leader));
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        tx.send_replace(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease; the standby takes over when it expires");
        }
    }
}

/// This replica's identity: the pod name (`POD_NAME`, else `HOSTNAME`, else the kernel's host
/// name) plus a random suffix, so a restarted pod never mistakes its predecessor's Lease for
/// its own.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "static-macvlan-operator".to_string());
    format!("{host}_{:08x}", fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: secs,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let d = Duration::from_secs(15);
        let s = Duration::from_secs;
        let follow = |h: &str| Step::Follow { holder: h.into() };
        let cases = [
            (None, s(0), Step::Create),
            (Some(spec(Some("me"), Some(15))), s(100), Step::Renew),
            (Some(spec(None, Some(15))), s(0), Step::Acquire),
            (Some(spec(Some(""), Some(15))), s(0), Step::Acquire),
            (Some(spec(Some("other"), Some(15))), s(0), follow("other")),
            (Some(spec(Some("other"), Some(15))), s(14), follow("other")),
            (Some(spec(Some("other"), Some(15))), s(15), Step::Acquire),
            // The holder's own duration counts; a missing one falls back to ours.
            (Some(spec(Some("other"), Some(60))), s(30), follow("other")),
            (Some(spec(Some("other"), None)), s(15), Step::Acquire),
        ];
        for (lease, unchanged, want) in cases {
            assert_eq!(
                decide("me", lease.as_ref(), unchanged, d),
                want,
                "{lease:?} {unchanged:?}"
            );
        }
    }

    #[test]
    fn identity_is_unique_per_process_start() {
        let a = identity();
        let b = identity();
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }
}
