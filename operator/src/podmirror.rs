//! The pod mirror: pods that use our networks, written to `<prefix>/pods/<namespace>/<name>` so
//! the CNI plugin can read labels and annotations without the API server.
//!
//! A pod uses our networks when
//! - its Multus annotation `k8s.v1.cni.cncf.io/networks` names a NetworkAttachmentDefinition
//!   (group `k8s.cni.cncf.io`, v1) whose `spec.config` has `"type": "static-macvlan"` (or a
//!   conflist with such a plugin) — the annotation is a comma list of `[namespace/]name[@ifname]`
//!   or a JSON list of selection objects; or
//! - it has one of the original project's annotations `static-ip`, `static-mac`, `vlan`.
//!
//! The record is [`PodRecord`]: uid, node, labels, our annotations (plus the networks one) and
//! the selections of our networks. The mirror is level-triggered: every event marks a pod name
//! dirty; a dirty name's desired record (from the pods and NADs seen) is compared with what etcd
//! holds (kept in memory, reloaded at every resync, updated from the etcd watch) and written or
//! deleted. Nothing is written before the initial lists of pods and NADs are complete, so a
//! restart never deletes the record of a pod that simply was not listed yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use static_macvlan_allocator::{Allocator, Key};
use tokio::sync::mpsc;

use crate::controller::backoff_delay;
use crate::endpoints::Hint;
use crate::error::Error;
use crate::gc::PodName;
use crate::metrics::Metrics;

/// The Multus networks annotation.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// The original project's annotations: an address or `auto`, a MAC, a subnet name.
pub const STATIC_IP_ANNOTATION: &str = "static-ip";
pub const STATIC_MAC_ANNOTATION: &str = "static-mac";
pub const VLAN_ANNOTATION: &str = "vlan";
/// The CNI `type` of our plugin.
pub const CNI_TYPE: &str = "static-macvlan";

const OUR_ANNOTATIONS: [&str; 3] = [STATIC_IP_ANNOTATION, STATIC_MAC_ANNOTATION, VLAN_ANNOTATION];

/// The NetworkAttachmentDefinition resource (no Rust crate for it: a dynamic type).
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// One entry of the networks annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSelection {
    pub name: String,
    pub namespace: String,
    /// Interface name requested (`@ifname` or `"interface"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Static addresses requested (JSON form; Multus passes them as `runtimeConfig.ips`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Static MAC requested (JSON form; `runtimeConfig.mac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Deserialize)]
struct JsonSelection {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}

/// Parses the networks annotation as Multus does: a JSON list of selection objects, or a comma
/// list of `[namespace/]name[@interface]`; the namespace defaults to the pod's.
///
/// # Errors
/// A message saying what is wrong with the value.
pub fn parse_networks(value: &str, pod_namespace: &str) -> Result<Vec<NetworkSelection>, String> {
    let v = value.trim();
    if v.starts_with('[') {
        let list: Vec<JsonSelection> =
            serde_json::from_str(v).map_err(|e| format!("not a JSON list of networks: {e}"))?;
        return list
            .into_iter()
            .map(|s| {
                if s.name.is_empty() {
                    return Err("a network entry has an empty name".to_string());
                }
                Ok(NetworkSelection {
                    name: s.name,
                    namespace: s
                        .namespace
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| pod_namespace.to_string()),
                    interface: s.interface.filter(|i| !i.is_empty()),
                    ips: s.ips,
                    mac: s.mac.filter(|m| !m.is_empty()),
                })
            })
            .collect();
    }
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (rest, interface) = match item.split_once('@') {
                Some((r, i)) if !i.is_empty() => (r, Some(i.to_string())),
                Some(_) => return Err(format!("{item:?}: empty interface after '@'")),
                None => (item, None),
            };
            let (namespace, name) = match rest.split_once('/') {
                Some((ns, n)) => (ns.to_string(), n.to_string()),
                None => (pod_namespace.to_string(), rest.to_string()),
            };
            if name.is_empty() || namespace.is_empty() || name.contains('/') {
                return Err(format!("{item:?} is not [namespace/]name[@interface]"));
            }
            Ok(NetworkSelection {
                name,
                namespace,
                interface,
                ..NetworkSelection::default()
            })
        })
        .collect()
}

/// Whether a CNI config (a NAD's `spec.config`) uses our plugin: `"type": "static-macvlan"`
/// itself, or a conflist with such a plugin.
pub fn config_is_ours(config: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(config) else {
        return false;
    };
    let is = |v: &Value| v.get("type").and_then(Value::as_str) == Some(CNI_TYPE);
    is(&v)
        || v.get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(is))
}

/// Whether a NetworkAttachmentDefinition uses our plugin. A NAD without `spec.config` (Multus
/// then reads a file on the node) cannot be told apart and is not ours.
pub fn nad_is_ours(nad: &DynamicObject) -> bool {
    nad.data
        .pointer("/spec/config")
        .and_then(Value::as_str)
        .is_some_and(config_is_ours)
}

/// What is mirrored for a pod (JSON at `<prefix>/pods/<namespace>/<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    /// The node the pod is scheduled to; absent until it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `static-ip`, `static-mac`, `vlan` and the networks annotation, when present.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The selections of the networks annotation that name our NADs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkSelection>,
}

/// What the mirror keeps of a pod that may use our networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Only ours and the networks annotation.
    pub annotations: BTreeMap<String, String>,
    pub networks: Vec<NetworkSelection>,
}

impl PodInfo {
    /// `None` for pods that have neither our annotations nor a networks annotation (they can
    /// never be ours, whatever the NADs say).
    pub fn of(pod: &Pod) -> Option<PodInfo> {
        let all = pod.metadata.annotations.as_ref()?;
        let annotations: BTreeMap<String, String> = all
            .iter()
            .filter(|(k, _)| OUR_ANNOTATIONS.contains(&k.as_str()) || *k == NETWORKS_ANNOTATION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if annotations.is_empty() {
            return None;
        }
        let ns = pod.namespace().unwrap_or_default();
        let networks = match annotations.get(NETWORKS_ANNOTATION) {
            Some(v) => parse_networks(v, &ns).unwrap_or_else(|e| {
                tracing::debug!(pod = %format!("{ns}/{}", pod.name_any()), error = %e,
                    "ignoring an unparsable networks annotation");
                Vec::new()
            }),
            None => Vec::new(),
        };
        Some(PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            labels: pod.labels().clone().into_iter().collect(),
            annotations,
            networks,
        })
    }
}

/// The record to mirror for a pod, or `None` when it does not use our networks. `nads` maps a
/// NAD's namespace/name to whether it is ours.
pub fn desired(info: &PodInfo, nads: &HashMap<PodName, bool>) -> Option<PodRecord> {
    let networks: Vec<NetworkSelection> = info
        .networks
        .iter()
        .filter(|s| nads.get(&(s.namespace.clone(), s.name.clone())) == Some(&true))
        .cloned()
        .collect();
    let original = OUR_ANNOTATIONS
        .iter()
        .any(|a| info.annotations.contains_key(*a));
    if !original && networks.is_empty() {
        return None;
    }
    Some(PodRecord {
        uid: info.uid.clone(),
        node: info.node.clone(),
        labels: info.labels.clone(),
        annotations: info.annotations.clone(),
        networks,
    })
}

/// Every pod's UID by name, for GC and the endpoint view. `synced` once the initial list is in.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    pub synced: bool,
    pub uids: HashMap<PodName, String>,
}

/// Shared handle to the [`PodIndex`].
pub type SharedIndex = Arc<RwLock<PodIndex>>;

/// What the etcd watch tells the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// A `pods/` key changed: its new value, `None` when deleted.
    Changed {
        name: PodName,
        value: Option<String>,
    },
    /// The watch (re)started: changes may have been missed; reload.
    Resync,
}

/// The mirror's state.
pub struct PodMirror {
    alloc: Allocator,
    metrics: Arc<Metrics>,
    index: SharedIndex,
    hints: Option<mpsc::UnboundedSender<Hint>>,
    pods: HashMap<PodName, PodInfo>,
    pods_synced: bool,
    pod_buf: Option<(HashMap<PodName, PodInfo>, HashMap<PodName, String>)>,
    nads: HashMap<PodName, bool>,
    nads_synced: bool,
    nad_buf: Option<HashMap<PodName, bool>>,
    /// What etcd holds under `pods/`, by name (`None` until loaded).
    written: Option<HashMap<PodName, String>>,
    dirty: BTreeSet<PodName>,
}

fn name_of<K: kube::Resource>(o: &K) -> PodName {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl PodMirror {
    pub fn new(
        alloc: Allocator,
        metrics: Arc<Metrics>,
        index: SharedIndex,
        hints: Option<mpsc::UnboundedSender<Hint>>,
    ) -> PodMirror {
        PodMirror {
            alloc,
            metrics,
            index,
            hints,
            pods: HashMap::new(),
            pods_synced: false,
            pod_buf: None,
            nads: HashMap::new(),
            nads_synced: false,
            nad_buf: None,
            written: None,
            dirty: BTreeSet::new(),
        }
    }

    fn hint(&self, uid: &str, name: &PodName) {
        if let Some(tx) = &self.hints {
            let _ = tx.send(Hint::Pod {
                uid: uid.to_string(),
                name: Some(name.clone()),
            });
        }
    }

    fn index(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn upsert(&mut self, pod: &Pod) {
        let name = name_of(pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let old = self.index().uids.insert(name.clone(), uid.clone());
        if old.as_deref() != Some(uid.as_str()) {
            if let Some(old) = old {
                self.hint(&old, &name);
            }
            self.hint(&uid, &name);
        }
        match PodInfo::of(pod) {
            Some(info) => self.pods.insert(name.clone(), info),
            None => self.pods.remove(&name),
        };
        self.dirty.insert(name);
    }

    fn remove(&mut self, pod: &Pod) {
        let name = name_of(pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // A stale delete (the name already belongs to a newer pod) changes nothing.
        let current = self.index().uids.get(&name).cloned();
        if current.as_deref().is_some_and(|c| c != uid) {
            return;
        }
        self.index().uids.remove(&name);
        self.pods.remove(&name);
        self.hint(&uid, &name);
        self.dirty.insert(name);
    }

    /// Applies a pod watch event.
    pub fn on_pod(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.pod_buf = Some((HashMap::new(), HashMap::new())),
            watcher::Event::InitApply(p) => {
                if let Some((infos, uids)) = &mut self.pod_buf {
                    let name = name_of(&p);
                    uids.insert(name.clone(), p.metadata.uid.clone().unwrap_or_default());
                    if let Some(info) = PodInfo::of(&p) {
                        infos.insert(name, info);
                    }
                }
            }
            watcher::Event::InitDone => {
                let Some((infos, uids)) = self.pod_buf.take() else {
                    return;
                };
                {
                    let mut idx = self.index();
                    idx.synced = true;
                    idx.uids = uids;
                }
                self.dirty.extend(self.pods.keys().cloned());
                self.dirty.extend(infos.keys().cloned());
                self.pods = infos;
                self.pods_synced = true;
                // One full resync of the endpoint view instead of a hint per pod.
                if let Some(tx) = &self.hints {
                    let _ = tx.send(Hint::Resync);
                }
            }
            watcher::Event::Apply(p) => self.upsert(&p),
            watcher::Event::Delete(p) => self.remove(&p),
        }
    }

    fn nads_changed(&mut self) {
        let uses_nads: Vec<PodName> = self
            .pods
            .iter()
            .filter(|(_, p)| !p.networks.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        self.dirty.extend(uses_nads);
    }

    /// Applies a NAD watch event.
    pub fn on_nad(&mut self, ev: watcher::Event<DynamicObject>) {
        match ev {
            watcher::Event::Init => self.nad_buf = Some(HashMap::new()),
            watcher::Event::InitApply(n) => {
                if let Some(buf) = &mut self.nad_buf {
                    buf.insert(name_of(&n), nad_is_ours(&n));
                }
            }
            watcher::Event::InitDone => {
                if let Some(buf) = self.nad_buf.take() {
                    self.nads = buf;
                    self.nads_synced = true;
                    self.nads_changed();
                }
            }
            watcher::Event::Apply(n) => {
                let ours = nad_is_ours(&n);
                if self.nads.insert(name_of(&n), ours) != Some(ours) {
                    self.nads_changed();
                }
            }
            watcher::Event::Delete(n) => {
                if self.nads.remove(&name_of(&n)).is_some() {
                    self.nads_changed();
                }
            }
        }
    }

    /// The NAD list failed. When the resource does not exist (no Multus installed) there are
    /// no NADs to wait for: only the original annotations count.
    pub fn on_nad_error(&mut self, e: &watcher::Error) {
        let missing =
            matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
        if missing && !self.nads_synced {
            tracing::info!("no NetworkAttachmentDefinition resource (Multus not installed): mirroring pods with the original annotations only");
            self.nads_synced = true;
            self.nads.clear();
            self.nads_changed();
        } else if !missing {
            tracing::warn!(error = %e, "watching NetworkAttachmentDefinitions");
        }
    }

    /// A `pods/` key changed in etcd (by us or by someone else), or the watch restarted.
    pub fn on_etcd(&mut self, c: KeyChange) {
        let (name, value) = match c {
            KeyChange::Resync => return self.resync(),
            KeyChange::Changed { name, value } => (name, value),
        };
        if let Some(w) = &mut self.written {
            if w.get(&name) != value.as_ref() {
                match value {
                    Some(v) => w.insert(name.clone(), v),
                    None => w.remove(&name),
                };
                self.dirty.insert(name);
            }
        }
    }

    /// Forgets what etcd holds, so the next [`PodMirror::flush`] reloads it and rechecks every pod.
    pub fn resync(&mut self) {
        self.written = None;
    }

    /// Whether both initial lists are complete.
    pub fn ready(&self) -> bool {
        self.pods_synced && self.nads_synced
    }

    async fn load(&mut self) -> Result<(), Error> {
        let prefix = self.alloc.keys().pods();
        let mut kv = self.alloc.client().kv_client();
        let resp = self
            .metrics
            .etcd(
                "list_pods",
                kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|e| Error::etcd("read pod mirror", e))?;
        let mut written = HashMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Ok(Key::Pod { namespace, name }) = self.alloc.keys().parse(&key) {
                written.insert(
                    (namespace, name),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                );
            }
        }
        self.dirty.extend(written.keys().cloned());
        self.dirty.extend(self.pods.keys().cloned());
        self.written = Some(written);
        Ok(())
    }

    /// Writes or deletes the record of every dirty name whose desired record differs from
    /// etcd. Names stay dirty when a write fails.
    ///
    /// # Errors
    /// The first etcd failure.
    pub async fn flush(&mut self) -> Result<usize, Error> {
        if !self.ready() {
            return Ok(0);
        }
        if self.written.is_none() {
            self.load().await?;
        }
        let mut changed = 0;
        while let Some(name) = self.dirty.pop_first() {
            let start = Instant::now();
            let r = self.sync(&name).await;
            self.metrics
                .reconciled("Pod", start, r.as_ref().err().map(Error::metric_label));
            match r {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    self.dirty.insert(name);
                    return Err(e);
                }
            }
        }
        Ok(changed)
    }

    async fn sync(&mut self, name: &PodName) -> Result<bool, Error> {
        let want = self
            .pods
            .get(name)
            .and_then(|p| desired(p, &self.nads))
            .map(|r| serde_json::to_string(&r).expect("pod record serializes"));
        let written = self.written.get_or_insert_with(HashMap::new);
        if written.get(name) == want.as_ref() {
            return Ok(false);
        }
        let key = self.alloc.keys().pod(&name.0, &name.1);
        let mut kv = self.alloc.client().kv_client();
        match &want {
            Some(v) => {
                self.metrics
                    .etcd("put_pod", kv.put(key.as_str(), v.as_str(), None))
                    .await
                    .map_err(|e| Error::etcd(format!("write pod mirror {key}"), e))?;
                tracing::debug!(key, "mirrored pod");
                written.insert(name.clone(), v.clone());
            }
            None => {
                self.metrics
                    .etcd("delete_pod", kv.delete(key.as_str(), None))
                    .await
                    .map_err(|e| Error::etcd(format!("delete pod mirror {key}"), e))?;
                tracing::debug!(key, "removed pod mirror");
                written.remove(name);
            }
        }
        Ok(true)
    }

    /// Runs the mirror: watches pods and NADs, applies etcd changes from `etcd`, reloads every
    /// `resync`, until dropped.
    pub async fn run(
        mut self,
        client: Client,
        mut etcd: mpsc::UnboundedReceiver<KeyChange>,
        resync: Duration,
    ) {
        let pods =
            watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
        let nads = watcher(
            Api::<DynamicObject>::all_with(client, &nad_resource()),
            watcher::Config::default(),
        )
        .default_backoff();
        let mut pods = pin!(pods);
        let mut nads = pin!(nads);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        let mut failures = 0u32;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut etcd_open = true;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(ev) = pods.next() => match ev {
                    Ok(ev) => self.on_pod(ev),
                    Err(e) => tracing::warn!(error = %e, "watching pods"),
                },
                Some(ev) = nads.next() => match ev {
                    Ok(ev) => self.on_nad(ev),
                    Err(e) => self.on_nad_error(&e),
                },
                c = etcd.recv(), if etcd_open => match c {
                    Some(c) => self.on_etcd(c),
                    None => etcd_open = false,
                },
                _ = tick.tick() => self.resync(),
                _ = retry => retry_at = None,
            }
            if retry_at.is_some() {
                continue;
            }
            match self.flush().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let d = backoff_delay(failures);
                    tracing::warn!(error = %e, retry_in = ?d, "pod mirror: etcd write failed");
                    retry_at = Some(tokio::time::Instant::now() + d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn networks_annotation_forms() {
        let sel = |ns: &str, name: &str, ifname: Option<&str>| NetworkSelection {
            name: name.into(),
            namespace: ns.into(),
            interface: ifname.map(Into::into),
            ..Default::default()
        };
        assert_eq!(
            parse_networks("lan-100, infra/lab@net5 ,", "db").unwrap(),
            [
                sel("db", "lan-100", None),
                sel("infra", "lab", Some("net5"))
            ]
        );
        let json = r#"[{"name":"lan-100","interface":"net1","ips":["10.230.0.33/24"],"mac":"02:00:0a:e6:00:21"},
                       {"name":"lab","namespace":"infra"}]"#;
        let got = parse_networks(json, "db").unwrap();
        assert_eq!(got[0].ips, ["10.230.0.33/24"]);
        assert_eq!(got[0].mac.as_deref(), Some("02:00:0a:e6:00:21"));
        assert_eq!(got[0].interface.as_deref(), Some("net1"));
        assert_eq!(got[1].namespace, "infra");
        for bad in ["a/b/c", "x@", "/x", "[{\"name\":\"\"}]", "[{]"] {
            assert!(parse_networks(bad, "db").is_err(), "{bad}");
        }
        assert_eq!(parse_networks("", "db").unwrap(), []);
    }

    #[test]
    fn which_configs_are_ours() {
        assert!(config_is_ours(
            r#"{"cniVersion":"1.0.0","type":"static-macvlan","subnet":"lan-100"}"#
        ));
        assert!(config_is_ours(
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"static-macvlan"},{"type":"tuning"}]}"#
        ));
        assert!(!config_is_ours(r#"{"type":"macvlan","master":"eth0"}"#));
        assert!(!config_is_ours("not json"));
        let nad: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "lan-100", "namespace": "db"},
            "spec": {"config": "{\"type\":\"static-macvlan\"}"}
        }))
        .unwrap();
        assert!(nad_is_ours(&nad));
    }

    fn pod(annotations: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-0", "namespace": "db", "uid": "u-1",
                         "labels": {"app": "db"}, "annotations": annotations},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap()
    }

    #[test]
    fn desired_records() {
        let nads: HashMap<PodName, bool> = [
            (("db".to_string(), "lan-100".to_string()), true),
            (("db".to_string(), "flannel".to_string()), false),
        ]
        .into_iter()
        .collect();
        // Original annotations alone.
        let p = PodInfo::of(&pod(json!({"static-ip": "10.230.0.33", "vlan": "lan-100",
            "unrelated": "x"})))
        .unwrap();
        let r = desired(&p, &nads).unwrap();
        assert_eq!(r.uid, "u-1");
        assert_eq!(r.node.as_deref(), Some("node-a"));
        assert_eq!(r.labels["app"], "db");
        assert_eq!(
            r.annotations.keys().collect::<Vec<_>>(),
            ["static-ip", "vlan"]
        );
        // Networks naming one of ours and one not.
        let p = PodInfo::of(&pod(json!({NETWORKS_ANNOTATION: "flannel,lan-100@net1"}))).unwrap();
        let r = desired(&p, &nads).unwrap();
        assert_eq!(r.networks.len(), 1);
        assert_eq!(r.networks[0].name, "lan-100");
        assert!(r.annotations.contains_key(NETWORKS_ANNOTATION));
        // Only foreign networks: not ours.
        let p = PodInfo::of(&pod(json!({NETWORKS_ANNOTATION: "flannel"}))).unwrap();
        assert_eq!(desired(&p, &nads), None);
        // No annotations of interest at all.
        assert!(PodInfo::of(&pod(json!({"other": "x"}))).is_none());
    }
}
