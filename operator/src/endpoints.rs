//! `MacvlanEndpoint` objects follow the reservations: one per pod holding any, in the pod's
//! namespace and named like it, owned by the Pod (ownerReference with the record's UID, so the
//! Kubernetes garbage collector deletes it with the pod), listing every interface.
//!
//! Level-triggered like the pod mirror: hints (a pod UID whose `owners/` keys changed, from the
//! etcd watch; a pod that appeared or went, from the pod mirror) mark UIDs dirty; a dirty UID's
//! reservations are read from etcd and the endpoint written with server-side apply, or deleted
//! when the UID holds nothing — only if the endpoint still shows that UID, so the endpoint of a
//! re-created pod of the same name is never removed for its predecessor. A full resync lists
//! every reservation and every endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use static_macvlan_allocator::{Allocator, Reservation, State};
use tokio::sync::mpsc;

use crate::controller::{backoff_delay, FIELD_MANAGER};
use crate::crd::{
    EndpointInterface, EndpointState, MacvlanEndpoint, MacvlanEndpointSpec, API_VERSION,
};
use crate::error::Error;
use crate::gc::PodName;
use crate::metrics::Metrics;
use crate::podmirror::SharedIndex;

/// Label on every endpoint the operator writes (for listing them back).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "static-macvlan-operator");

/// Something changed for a pod's reservations or the pod itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Re-check this UID; `name` when known (a deleted reservation's record names its pod).
    Pod { uid: String, name: Option<PodName> },
    /// Re-check everything.
    Resync,
}

/// The endpoint spec for one pod UID's reservations (all of the same pod), interfaces sorted by
/// name.
pub fn spec_of(uid: &str, reservations: &[Reservation]) -> Option<(PodName, MacvlanEndpointSpec)> {
    let first = reservations.first()?;
    let o = &first.record.owner;
    let mut interfaces: Vec<EndpointInterface> = reservations
        .iter()
        // A held reservation (kept for a sticky key after its pod went) belongs to no pod.
        .filter(|r| r.record.state != State::Held)
        .map(|r| EndpointInterface {
            ifname: r.record.owner.ifname.clone(),
            subnet: r.record.subnet.clone(),
            ip: r.record.ip.to_string(),
            mac: r.record.mac.map(|m| m.to_string()),
            node: r.record.owner.node.clone(),
            state: match r.record.state {
                State::Pending => EndpointState::Pending,
                State::Committed | State::Held => EndpointState::Committed,
            },
        })
        .collect();
    interfaces.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    Some((
        (o.namespace.clone(), o.pod.clone()),
        MacvlanEndpointSpec {
            pod: o.pod.clone(),
            pod_uid: uid.to_string(),
            interfaces,
        },
    ))
}

/// The object applied for `spec` (server-side apply body).
pub fn object(name: &PodName, spec: &MacvlanEndpointSpec) -> serde_json::Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "MacvlanEndpoint",
        "metadata": {
            "name": name.1,
            "namespace": name.0,
            "labels": { MANAGED_BY.0: MANAGED_BY.1 },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name.1,
                "uid": spec.pod_uid,
            }],
        },
        "spec": spec,
    })
}

/// The endpoint view's state.
pub struct Endpoints {
    client: Client,
    alloc: Allocator,
    metrics: Arc<Metrics>,
    index: SharedIndex,
    /// Specs applied, by pod name (skips identical re-applies).
    applied: HashMap<PodName, MacvlanEndpointSpec>,
    /// Pod name of each UID seen holding reservations.
    names: HashMap<String, PodName>,
    dirty: BTreeMap<String, Option<PodName>>,
    resync_due: bool,
}

impl Endpoints {
    pub fn new(
        client: Client,
        alloc: Allocator,
        metrics: Arc<Metrics>,
        index: SharedIndex,
    ) -> Endpoints {
        Endpoints {
            client,
            alloc,
            metrics,
            index,
            applied: HashMap::new(),
            names: HashMap::new(),
            dirty: BTreeMap::new(),
            resync_due: true,
        }
    }

    pub fn on_hint(&mut self, h: Hint) {
        match h {
            Hint::Resync => self.resync_due = true,
            Hint::Pod { uid, name } => {
                let slot = self.dirty.entry(uid).or_default();
                if name.is_some() {
                    *slot = name;
                }
            }
        }
    }

    /// What the pod index says about `name`: `Some(Some(uid))` running with that UID,
    /// `Some(None)` no such pod, `None` not known yet (index not synced).
    fn live(&self, name: &PodName) -> Option<Option<String>> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        idx.synced.then(|| idx.uids.get(name).cloned())
    }

    async fn delete_if_uid(&mut self, name: &PodName, uid: &str) -> Result<(), Error> {
        let api: Api<MacvlanEndpoint> = Api::namespaced(self.client.clone(), &name.0);
        let what = format!("macvlanendpoint {}/{}", name.0, name.1);
        let Some(ep) = api
            .get_opt(&name.1)
            .await
            .map_err(Error::kube(format!("get {what}")))?
        else {
            self.applied.remove(name);
            return Ok(());
        };
        if ep.spec.pod_uid != uid {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: ep.uid(),
                resource_version: ep.resource_version(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name.1, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("delete {what}"))(e)),
        }
        tracing::debug!(endpoint = %what, uid, "removed MacvlanEndpoint: the pod holds no reservation");
        self.applied.remove(name);
        Ok(())
    }

    /// Brings the endpoint of one pod UID in line with its reservations.
    ///
    /// # Errors
    /// etcd or API failures.
    pub async fn sync(&mut self, uid: &str, hint: Option<PodName>) -> Result<(), Error> {
        let reservations = self
            .metrics
            .etcd("list_pod_reservations", self.alloc.by_pod(uid))
            .await?;
        let Some((name, spec)) = spec_of(uid, &reservations) else {
            if let Some(name) = hint.or_else(|| self.names.get(uid).cloned()) {
                self.delete_if_uid(&name, uid).await?;
            }
            self.names.remove(uid);
            return Ok(());
        };
        self.names.insert(uid.to_string(), name.clone());
        match self.live(&name) {
            // The pod of that name is another incarnation, or gone: these reservations await
            // GC and get no endpoint (the current pod's endpoint is left alone).
            Some(live) if live.as_deref() != Some(uid) => {
                return self.delete_if_uid(&name, uid).await;
            }
            _ => {}
        }
        if self.applied.get(&name) == Some(&spec) {
            return Ok(());
        }
        let api: Api<MacvlanEndpoint> = Api::namespaced(self.client.clone(), &name.0);
        api.patch(
            &name.1,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object(&name, &spec)),
        )
        .await
        .map_err(Error::kube(format!(
            "apply macvlanendpoint {}/{}",
            name.0, name.1
        )))?;
        tracing::debug!(pod = %format!("{}/{}", name.0, name.1), uid, "applied MacvlanEndpoint");
        self.applied.insert(name, spec);
        Ok(())
    }

    /// Marks every UID holding reservations dirty and removes endpoints whose UID holds none.
    ///
    /// # Errors
    /// etcd or API failures.
    pub async fn resync(&mut self) -> Result<(), Error> {
        let all = self
            .metrics
            .etcd("list_reservations", self.alloc.all())
            .await?;
        let holders: BTreeSet<String> =
            all.iter().map(|r| r.record.owner.pod_uid.clone()).collect();
        let api: Api<MacvlanEndpoint> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let existing = api
            .list(&lp)
            .await
            .map_err(Error::kube("list macvlanendpoints"))?;
        for ep in existing {
            let name = (ep.namespace().unwrap_or_default(), ep.name_any());
            if !holders.contains(&ep.spec.pod_uid) {
                self.dirty.insert(ep.spec.pod_uid.clone(), Some(name));
            } else {
                self.applied.insert(name, ep.spec.clone());
            }
        }
        for uid in holders {
            self.dirty.entry(uid).or_default();
        }
        self.resync_due = false;
        Ok(())
    }

    /// Processes everything dirty once the pod index is synced; stops at the first failure (the
    /// rest stays dirty).
    ///
    /// # Errors
    /// etcd or API failures.
    pub async fn flush(&mut self) -> Result<(), Error> {
        // Until the pod list is in, a reservation of an old incarnation of a pod name cannot be
        // told from the current one's: wait (the pod mirror's first list sends a resync).
        if !self.index.read().unwrap_or_else(|p| p.into_inner()).synced {
            return Ok(());
        }
        if self.resync_due {
            self.resync().await?;
        }
        while let Some((uid, name)) = self.dirty.pop_first() {
            let start = Instant::now();
            let r = self.sync(&uid, name.clone()).await;
            self.metrics.reconciled(
                "MacvlanEndpoint",
                start,
                r.as_ref().err().map(Error::metric_label),
            );
            if let Err(e) = r {
                self.dirty.insert(uid, name);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs until dropped: hints from `rx`, a full resync every `resync`.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Hint>, resync: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        let mut failures = 0u32;
        loop {
            let wait = if failures > 0 {
                backoff_delay(failures)
            } else {
                Duration::MAX
            };
            tokio::select! {
                h = rx.recv() => match h {
                    Some(h) => self.on_hint(h),
                    None => return,
                },
                _ = tick.tick() => self.resync_due = true,
                _ = tokio::time::sleep(wait), if failures > 0 => {}
            }
            while let Ok(h) = rx.try_recv() {
                self.on_hint(h);
            }
            match self.flush().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "endpoint view: sync failed; retrying with backoff");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use static_macvlan_allocator::{Owner, Record};

    #[test]
    fn spec_lists_interfaces_in_order() {
        let r = |ifname: &str, ip: &str, state| Reservation {
            record: Record {
                subnet: "lan".into(),
                ip: ip.parse().unwrap(),
                prefix_len: 24,
                mac: Some("02:00:00:00:00:01".parse().unwrap()),
                owner: Owner {
                    pod_uid: "u1".into(),
                    namespace: "db".into(),
                    pod: "db-0".into(),
                    container_id: "c".into(),
                    ifname: ifname.into(),
                    node: "node-a".into(),
                    network: String::new(),
                },
                state,
                since: "2026-01-01T00:00:00Z".into(),
                lease: None,
                sticky: None,
            },
            revision: 1,
        };
        let (name, spec) = spec_of(
            "u1",
            &[
                r("net2", "10.0.0.2", State::Pending),
                r("net1", "10.0.0.1", State::Committed),
            ],
        )
        .unwrap();
        assert_eq!(name, ("db".to_string(), "db-0".to_string()));
        assert_eq!(spec.interfaces[0].ifname, "net1");
        assert_eq!(spec.interfaces[1].state, EndpointState::Pending);
        let obj = object(&name, &spec);
        assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(obj["spec"]["podUID"], "u1");
        assert_eq!(obj["spec"]["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert!(spec_of("u1", &[]).is_none());
    }
}
