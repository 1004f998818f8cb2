//! Reconciling VlanSubnet, MacPool and AllocationRule: validate, mirror into etcd, report in
//! `status`, and keep etcd in line with the cluster.
//!
//! - A valid object is written to its config key (as `Mirrored{name, uid, generation, spec}`)
//!   unless etcd already holds exactly that; status gets `Ready=True`, `Invalid=False`,
//!   `observedGeneration` and the address counts in force.
//! - An invalid object is not written — the last good version stays in etcd — and gets
//!   `Invalid=True` naming the field and `Ready=False`.
//! - A VlanSubnet carries the finalizer [`SUBNET_FINALIZER`]: on delete its key is removed only
//!   when no reservation uses it (one guarded transaction, [`mirror::delete_subnet_if_unused`]);
//!   until then `Ready=False` with reason `DeletionBlocked` says how many block it. MacPools and
//!   AllocationRules carry [`MIRROR_FINALIZER`]: their key goes before they do (a deletion seen
//!   only as a watch event would be lost while no operator runs).
//! - Drift: every object is re-reconciled every `resync` and whenever its etcd key changes
//!   (the etcd watch fires the kind's [`Trigger`]), so a key deleted with etcdctl comes back;
//!   [`sweep_orphans`] removes config keys whose object is gone (never reservations).
//!
//! Statuses are written through the status subresource with a merge patch, and only when they
//! differ from what the object shows, so a status write never causes another write.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use static_macvlan_allocator::{Allocator, MacPool as ValidPool, Subnet, SubnetConfig};
use tokio::sync::Notify;

use crate::crd::{
    self, AllocationRule, AllocationRuleStatus, Condition, MacPool, MacPoolStatus, VlanSubnet,
    VlanSubnetStatus, CONDITION_INVALID, CONDITION_READY,
};
use crate::error::Error;
use crate::manifest;
use crate::metrics::Metrics;
use crate::mirror::{self, Snapshot, Stored, SubnetRemoval};
use crate::validate::{self, FieldError};

/// Finalizer of VlanSubnets: the config key is removed only when no reservation uses it.
pub const SUBNET_FINALIZER: &str = "staticmacvlan.io/reservations";

/// Finalizer of MacPools and AllocationRules: their config key is removed from etcd before the
/// object goes (a deletion seen only as a watch event could be missed while the operator is down).
pub const MIRROR_FINALIZER: &str = "staticmacvlan.io/mirror";

/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "static-macvlan-operator";

/// How often a blocked VlanSubnet deletion is rechecked (the etcd watch also rechecks it as soon
/// as a reservation of the subnet goes away).
const BLOCKED_RECHECK: Duration = Duration::from_secs(30);

/// What the config reconcilers share.
pub struct Ctx {
    pub client: Client,
    pub alloc: Allocator,
    pub metrics: Arc<Metrics>,
    /// Period of the full resync.
    pub resync: Duration,
    /// Serializes "check against the stored subnets, then write" so two overlapping subnets
    /// reconciled at the same time cannot both pass the overlap check.
    subnet_writes: tokio::sync::Mutex<()>,
    /// Consecutive failures per `Kind/name`, for the error policy's backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Ctx {
    pub fn new(client: Client, alloc: Allocator, metrics: Arc<Metrics>, resync: Duration) -> Ctx {
        Ctx {
            client,
            alloc,
            metrics,
            resync,
            subnet_writes: tokio::sync::Mutex::new(()),
            failures: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self, kind: &'static str, name: &str, start: Instant, r: &Result<Action, Error>) {
        self.metrics
            .reconciled(kind, start, r.as_ref().err().map(Error::metric_label));
        let key = format!("{kind}/{name}");
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(e) => {
                *failures.entry(key).or_default() += 1;
                tracing::warn!(kind, name, error = %e, "reconcile failed");
            }
        }
    }

    fn failures(&self, key: &str) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(key).copied().unwrap_or(0)
    }
}

/// Requeue after a failed reconcile: exponential backoff per object (2 s, 4 s, … capped at
/// 5 min) with ±20 % jitter, so a long etcd outage does not turn into a request storm.
pub fn error_policy<K>(obj: Arc<K>, _err: &Error, ctx: Arc<Ctx>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let key = format!("{}/{}", K::kind(&()), obj.name_any());
    Action::requeue(backoff_delay(ctx.failures(&key)))
}

/// The delay after `failures` consecutive failures (at least one).
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.clamp(1, 9)).min(300) as f64;
    Duration::from_secs_f64(secs * (0.8 + 0.4 * fastrand::f64()))
}

/// A coalescing trigger: any number of [`Trigger::fire`]s while nobody listens yield one item.
#[derive(Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Waits for the next fire.
    pub async fn fired(&self) {
        self.0.notified().await;
    }

    /// One item per fire, at most one per `debounce` (fires meanwhile are merged).
    pub fn stream(&self, debounce: Duration) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.0.clone(), move |n| async move {
            n.notified().await;
            tokio::time::sleep(debounce).await;
            Some(((), n))
        })
    }
}

/// Triggers of the three config controllers, fired by the etcd watch.
#[derive(Clone, Default)]
pub struct ConfigTriggers {
    pub subnets: Trigger,
    pub pools: Trigger,
    pub rules: Trigger,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One condition to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// `new` replaces the conditions of its types; others are kept. `lastTransitionTime` is kept
/// from `old` when the status did not change, as `metav1.Condition` prescribes.
pub fn merge_conditions(
    old: &[Condition],
    new: Vec<Cond>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = old
        .iter()
        .filter(|c| !new.iter().any(|n| n.type_ == c.type_))
        .cloned()
        .collect();
    for n in new {
        let status = if n.status { "True" } else { "False" };
        let prev = old.iter().find(|c| c.type_ == n.type_);
        let since = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
        out.push(Condition {
            type_: n.type_.to_string(),
            status: status.to_string(),
            reason: n.reason,
            message: n.message,
            last_transition_time: since,
            observed_generation: generation,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

fn ready(status: bool, reason: &str, message: String) -> Cond {
    Cond {
        type_: CONDITION_READY,
        status,
        reason: reason.to_string(),
        message,
    }
}

fn valid() -> Cond {
    Cond {
        type_: CONDITION_INVALID,
        status: false,
        reason: "Valid".to_string(),
        message: String::new(),
    }
}

fn invalid(e: &FieldError) -> Cond {
    Cond {
        type_: CONDITION_INVALID,
        status: true,
        reason: e.condition_reason().to_string(),
        message: e.to_string(),
    }
}

/// Conditions of an object whose spec was (or was not) put in force.
fn verdict_conditions(
    kind: &str,
    key: &str,
    generation: Option<i64>,
    verdict: &Result<(), FieldError>,
    kept: Option<Option<i64>>,
) -> Vec<Cond> {
    let g = |g: Option<i64>| g.map(|g| g.to_string()).unwrap_or_else(|| "?".into());
    match verdict {
        Ok(()) => vec![
            ready(
                true,
                "Mirrored",
                format!("generation {} is in force in etcd at {key}", g(generation)),
            ),
            valid(),
        ],
        Err(e) => {
            let kept = match kept {
                Some(old) => format!("etcd keeps generation {}", g(old)),
                None => format!("nothing was mirrored; the {kind} is not in force"),
            };
            vec![
                ready(
                    false,
                    "Invalid",
                    format!("generation {} was rejected ({kept})", g(generation)),
                ),
                invalid(e),
            ]
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializes")
}

fn saturate(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes `status` through the status subresource unless the object already shows it. Absent
/// fields are sent as `null` so a merge patch clears them.
async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    old: Option<&S>,
    new: &S,
    fields: &[&str],
) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(());
    }
    let mut v = to_value(new);
    if let Value::Object(m) = &mut v {
        for f in fields {
            m.entry(f.to_string()).or_insert(Value::Null);
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": v })),
    )
    .await
    .map_err(Error::kube(format!("patch status of {name}")))?;
    Ok(())
}

/// Adds or removes a finalizer with a merge patch carrying the `resourceVersion` read, so the
/// API server refuses it (409) if the object changed meanwhile.
async fn set_finalizers<K>(api: &Api<K>, obj: &K, finalizers: Vec<String>) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = obj.name_any();
    let mut meta = json!({ "finalizers": finalizers });
    if let Some(rv) = obj.resource_version() {
        meta["resourceVersion"] = Value::String(rv);
    }
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": meta })),
    )
    .await
    .map_err(Error::kube(format!("update finalizers of {name}")))?;
    Ok(())
}

async fn ensure_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let mut f = obj.finalizers().to_vec();
    f.push(finalizer.to_string());
    set_finalizers(api, obj, f).await
}

async fn drop_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let rest: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    set_finalizers(api, obj, rest).await
}

/// Deletion of a MacPool or AllocationRule: its key goes (unless it holds another object's
/// version), then the finalizer.
async fn finalize_config<K>(api: &Api<K>, obj: &K, ctx: &Ctx, key: &str) -> Result<Action, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if !obj.finalizers().iter().any(|f| f == MIRROR_FINALIZER) {
        return Ok(Action::await_change());
    }
    let stored: Option<Stored<Value>> = ctx
        .metrics
        .etcd("get_config", mirror::read_one(&ctx.alloc, key))
        .await?;
    if let Some(s) = stored {
        let uid = s.decoded.as_ref().ok().and_then(|m| m.uid.clone());
        if uid.is_none() || uid == obj.uid() {
            let deleted = ctx
                .metrics
                .etcd(
                    "delete_config",
                    mirror::delete_if_unchanged(&ctx.alloc, key, s.mod_revision),
                )
                .await?;
            if !deleted {
                return Err(Error::Conflict(format!(
                    "{key} changed while being deleted; retrying"
                )));
            }
            tracing::info!(key, "object deleted; removed its config from etcd");
        }
    }
    drop_finalizer(api, obj, MIRROR_FINALIZER).await?;
    Ok(Action::await_change())
}

/// Reconciles one VlanSubnet.
///
/// # Errors
/// etcd or API failures; the object is retried with backoff ([`error_policy`]).
pub async fn reconcile_subnet(vs: Arc<VlanSubnet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let r = subnet(&vs, &ctx).await;
    ctx.finish("VlanSubnet", &vs.name_any(), start, &r);
    r
}

async fn subnet(vs: &VlanSubnet, ctx: &Ctx) -> Result<Action, Error> {
    let name = vs.name_any();
    let api: Api<VlanSubnet> = Api::all(ctx.client.clone());
    if vs.metadata.deletion_timestamp.is_some() {
        return finalize_subnet(&api, vs, ctx).await;
    }
    ensure_finalizer(&api, vs, SUBNET_FINALIZER).await?;
    let key = ctx.alloc.keys().subnet(&name);
    let stored: Option<Stored<SubnetConfig>> = ctx
        .metrics
        .etcd("get_config", mirror::read_one(&ctx.alloc, &key))
        .await?;
    let stored_valid = stored
        .as_ref()
        .and_then(|s| s.decoded.as_ref().ok())
        .and_then(|m| {
            Subnet::from_config(&name, &m.spec)
                .ok()
                .map(|s| (s, m.generation))
        });
    let verdict = match validate::validate_subnet(&name, &vs.spec) {
        Err(e) => Err(e),
        Ok(subnet) => {
            let m = crd::mirror_subnet(&name, &vs.metadata, &vs.spec);
            if stored.as_ref().is_some_and(|s| s.raw == to_value(&m)) {
                Ok(subnet)
            } else {
                write_subnet(ctx, vs, subnet, &m).await?
            }
        }
    };
    let generation = vs.metadata.generation;
    let (in_force, conds) = match verdict {
        Ok(subnet) => (
            Some(subnet),
            verdict_conditions("VlanSubnet", &key, generation, &Ok(()), None),
        ),
        Err(e) => {
            tracing::info!(subnet = %name, error = %e, "VlanSubnet is invalid; not mirrored");
            let kept = stored_valid.as_ref().map(|(_, g)| *g);
            (
                stored_valid.map(|(s, _)| s),
                verdict_conditions("VlanSubnet", &key, generation, &Err(e), kept),
            )
        }
    };
    let usage = match &in_force {
        Some(s) => Some(
            ctx.metrics
                .etcd("count_reservations", ctx.alloc.usage(s))
                .await?,
        ),
        None => None,
    };
    match usage {
        Some(u) => ctx.metrics.set_subnet(&name, u.used, u.free),
        None => ctx.metrics.forget_subnet(&name),
    }
    let old = vs.status.clone().unwrap_or_default();
    let status = VlanSubnetStatus {
        conditions: merge_conditions(&old.conditions, conds, generation, &now_rfc3339()),
        observed_generation: generation,
        used: usage.map(|u| saturate(u.used)),
        free: usage.map(|u| saturate(u.free)),
    };
    patch_status(
        &api,
        &name,
        vs.status.as_ref(),
        &status,
        &["used", "free", "observedGeneration"],
    )
    .await?;
    Ok(Action::requeue(ctx.resync))
}

/// Validates a subnet against the other stored subnets and writes it; `Ok(Err(_))` when it is
/// rejected (an immutable field changed, an overlap).
async fn write_subnet(
    ctx: &Ctx,
    vs: &VlanSubnet,
    subnet: Subnet,
    m: &static_macvlan_allocator::Mirrored<SubnetConfig>,
) -> Result<Result<Subnet, FieldError>, Error> {
    let name = vs.name_any();
    let _serial = ctx.subnet_writes.lock().await;
    let snap = ctx
        .metrics
        .etcd("get_config", Snapshot::read(&ctx.alloc))
        .await?;
    snap.check_schema(&ctx.alloc)?;
    if let Some(Ok(old)) = snap.subnets.get(&name).map(|s| &s.decoded) {
        // Reservations are keyed by subnet name: moving a subnet that holds any to another LAN
        // or cidr would strand them. A key of another (deleted) object without reservations
        // may be replaced freely.
        let same_object = old.uid.is_some() && old.uid == vs.metadata.uid;
        let in_use = same_object
            || ctx
                .metrics
                .etcd("count_reservations", mirror::count_ips(&ctx.alloc, &name))
                .await?
                .0
                > 0;
        if in_use {
            if let Err(e) = manifest::check_immutable(&old.spec, &vs.spec) {
                return Ok(Err(e));
            }
        }
    }
    let others: Vec<Subnet> = snap
        .subnets
        .iter()
        .filter(|(n, _)| **n != name)
        .filter_map(|(n, s)| {
            s.decoded
                .as_ref()
                .ok()
                .and_then(|m| Subnet::from_config(n, &m.spec).ok())
        })
        .collect();
    if let Err(e) = validate::check_overlap(&subnet, &others) {
        return Ok(Err(e));
    }
    ctx.metrics
        .etcd("put_config", ctx.alloc.put_subnet(m))
        .await?;
    tracing::info!(subnet = %name, generation = m.generation.unwrap_or_default(), "mirrored VlanSubnet into etcd");
    Ok(Ok(subnet))
}

async fn finalize_subnet(
    api: &Api<VlanSubnet>,
    vs: &VlanSubnet,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let name = vs.name_any();
    if !vs.finalizers().iter().any(|f| f == SUBNET_FINALIZER) {
        return Ok(Action::await_change());
    }
    let removal = ctx
        .metrics
        .etcd(
            "delete_config",
            mirror::delete_subnet_if_unused(&ctx.alloc, &name),
        )
        .await?;
    match removal {
        SubnetRemoval::Removed | SubnetRemoval::Absent => {
            drop_finalizer(api, vs, SUBNET_FINALIZER).await?;
            ctx.metrics.forget_subnet(&name);
            tracing::info!(subnet = %name, "VlanSubnet deleted; removed from etcd");
            Ok(Action::await_change())
        }
        SubnetRemoval::InUse(n) => {
            let message = format!(
                "{n} reservation(s) still use subnet {name}; it stays in etcd until they are \
                 released (their pods deleted, or `static-macvlan-operator ipam release`)"
            );
            tracing::warn!(subnet = %name, reservations = n, "VlanSubnet deletion blocked");
            let old = vs.status.clone().unwrap_or_default();
            let status = VlanSubnetStatus {
                conditions: merge_conditions(
                    &old.conditions,
                    vec![ready(false, "DeletionBlocked", message)],
                    vs.metadata.generation,
                    &now_rfc3339(),
                ),
                used: Some(n as i64),
                ..old.clone()
            };
            patch_status(api, &name, vs.status.as_ref(), &status, &[]).await?;
            Ok(Action::requeue(BLOCKED_RECHECK))
        }
    }
}

/// Reconciles one MacPool.
///
/// # Errors
/// etcd or API failures.
pub async fn reconcile_macpool(mp: Arc<MacPool>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let r = macpool(&mp, &ctx).await;
    ctx.finish("MacPool", &mp.name_any(), start, &r);
    r
}

async fn macpool(mp: &MacPool, ctx: &Ctx) -> Result<Action, Error> {
    let name = mp.name_any();
    let api: Api<MacPool> = Api::all(ctx.client.clone());
    let key = ctx.alloc.keys().macpool(&name);
    if mp.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_pool(&name);
        return finalize_config(&api, mp, ctx, &key).await;
    }
    ensure_finalizer(&api, mp, MIRROR_FINALIZER).await?;
    let stored: Option<Stored<static_macvlan_allocator::MacPoolConfig>> = ctx
        .metrics
        .etcd("get_config", mirror::read_one(&ctx.alloc, &key))
        .await?;
    let stored_valid = stored
        .as_ref()
        .and_then(|s| s.decoded.as_ref().ok())
        .and_then(|m| {
            ValidPool::from_config(&name, &m.spec)
                .ok()
                .map(|p| (p, m.generation))
        });
    let generation = mp.metadata.generation;
    let (in_force, conds) = match validate::validate_macpool(&name, &mp.spec) {
        Ok(pool) => {
            let m = crd::mirror_macpool(&name, &mp.metadata, &mp.spec);
            if !stored.as_ref().is_some_and(|s| s.raw == to_value(&m)) {
                ctx.metrics
                    .etcd("put_config", ctx.alloc.put_macpool(&m))
                    .await?;
                tracing::info!(pool = %name, generation = generation.unwrap_or_default(), "mirrored MacPool into etcd");
            }
            (
                Some(pool),
                verdict_conditions("MacPool", &key, generation, &Ok(()), None),
            )
        }
        Err(e) => {
            tracing::info!(pool = %name, error = %e, "MacPool is invalid; not mirrored");
            let kept = stored_valid.as_ref().map(|(_, g)| *g);
            (
                stored_valid.map(|(p, _)| p),
                verdict_conditions("MacPool", &key, generation, &Err(e), kept),
            )
        }
    };
    let used = match &in_force {
        Some(p) => Some(
            ctx.metrics
                .etcd("count_reservations", mirror::macpool_used(&ctx.alloc, p))
                .await?,
        ),
        None => None,
    };
    match (&in_force, used) {
        (Some(p), Some(u)) => ctx
            .metrics
            .set_pool(&name, u, p.capacity().saturating_sub(u)),
        _ => ctx.metrics.forget_pool(&name),
    }
    let old = mp.status.clone().unwrap_or_default();
    let ranges: Vec<String> = mp
        .spec
        .ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    let status = MacPoolStatus {
        conditions: merge_conditions(&old.conditions, conds, generation, &now_rfc3339()),
        observed_generation: generation,
        ranges: Some(ranges.join(",")),
        used: used.map(saturate),
    };
    patch_status(
        &api,
        &name,
        mp.status.as_ref(),
        &status,
        &["used", "observedGeneration"],
    )
    .await?;
    Ok(Action::requeue(ctx.resync))
}

/// Reconciles one AllocationRule: compiled by the rule engine (every CEL expression type-checked);
/// mirrored with its content hash only when it compiles, else `Invalid` with the CEL error and
/// its position while etcd keeps the last good version.
///
/// # Errors
/// etcd or API failures.
pub async fn reconcile_rule(ar: Arc<AllocationRule>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let start = Instant::now();
    let r = rule(&ar, &ctx).await;
    ctx.finish("AllocationRule", &ar.name_any(), start, &r);
    r
}

async fn rule(ar: &AllocationRule, ctx: &Ctx) -> Result<Action, Error> {
    let name = ar.name_any();
    let api: Api<AllocationRule> = Api::all(ctx.client.clone());
    let key = ctx.alloc.keys().rule(&name);
    if ar.metadata.deletion_timestamp.is_some() {
        return finalize_config(&api, ar, ctx, &key).await;
    }
    ensure_finalizer(&api, ar, MIRROR_FINALIZER).await?;
    let stored: Option<Stored<Value>> = ctx
        .metrics
        .etcd("get_config", mirror::read_one(&ctx.alloc, &key))
        .await?;
    let generation = ar.metadata.generation;
    let verdict = validate::validate_rule(&name, &ar.spec);
    let conds = match verdict {
        Ok(compiled) => {
            let m = crd::mirror_rule(&name, &ar.metadata, &compiled);
            if !stored.as_ref().is_some_and(|s| s.raw == to_value(&m)) {
                ctx.metrics
                    .etcd("put_config", mirror::put_rule(&ctx.alloc, &m))
                    .await?;
                tracing::info!(rule = %name, generation = generation.unwrap_or_default(), "mirrored AllocationRule into etcd");
            }
            verdict_conditions("AllocationRule", &key, generation, &Ok(()), None)
        }
        Err(e) => {
            tracing::info!(rule = %name, error = %e, "AllocationRule is invalid; not mirrored");
            let kept = stored
                .as_ref()
                .and_then(|s| s.decoded.as_ref().ok())
                .map(|m| m.generation);
            verdict_conditions("AllocationRule", &key, generation, &Err(e), kept)
        }
    };
    let old = ar.status.clone().unwrap_or_default();
    let status = AllocationRuleStatus {
        conditions: merge_conditions(&old.conditions, conds, generation, &now_rfc3339()),
        observed_generation: generation,
    };
    patch_status(
        &api,
        &name,
        ar.status.as_ref(),
        &status,
        &["observedGeneration"],
    )
    .await?;
    Ok(Action::requeue(ctx.resync))
}

/// What [`sweep_orphans`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Config keys deleted because their object is gone.
    pub removed: Vec<String>,
    /// Subnet keys of deleted objects kept because reservations use them.
    pub kept_in_use: Vec<String>,
}

/// Removes config keys whose object no longer exists in the cluster. Only keys that carry a
/// `uid` — that were mirrored from a cluster object — are considered: keys written by `apply`
/// from a file have none and are left alone. Subnet keys go only while no reservation uses
/// them; every delete compares the revision read, so a concurrent write wins. Reservations are
/// never touched.
///
/// The name sets must be complete lists of the cluster's objects (callers wait for their
/// watchers' initial lists).
///
/// # Errors
/// etcd failures (what was done before is kept).
pub async fn sweep_orphans(
    alloc: &Allocator,
    metrics: &Metrics,
    subnets: &BTreeSet<String>,
    pools: &BTreeSet<String>,
    rules: &BTreeSet<String>,
) -> Result<SweepReport, Error> {
    let snap = metrics.etcd("get_config", Snapshot::read(alloc)).await?;
    let mut report = SweepReport::default();
    fn orphan<T>(s: &Stored<T>, live: &BTreeSet<String>, name: &str) -> bool {
        matches!(&s.decoded, Ok(m) if m.uid.is_some()) && !live.contains(name)
    }
    for (name, s) in &snap.subnets {
        if !orphan(s, subnets, name) {
            continue;
        }
        match metrics
            .etcd(
                "delete_config",
                mirror::delete_subnet_if_unused(alloc, name),
            )
            .await?
        {
            SubnetRemoval::Removed => {
                tracing::info!(key = %s.key, "removed config of a deleted VlanSubnet");
                metrics.forget_subnet(name);
                report.removed.push(s.key.clone());
            }
            SubnetRemoval::Absent => {}
            SubnetRemoval::InUse(n) => {
                tracing::warn!(key = %s.key, reservations = n,
                    "VlanSubnet is gone from the cluster but reservations still use it; keeping its config");
                report.kept_in_use.push(s.key.clone());
            }
        }
    }
    let others = snap
        .macpools
        .iter()
        .filter(|(n, s)| orphan(s, pools, n))
        .map(|(n, s)| (n, s.key.clone(), s.mod_revision, true))
        .chain(
            snap.rules
                .iter()
                .filter(|(n, s)| orphan(s, rules, n))
                .map(|(n, s)| (n, s.key.clone(), s.mod_revision, false)),
        )
        .collect::<Vec<_>>();
    for (name, key, rev, is_pool) in others {
        if metrics
            .etcd(
                "delete_config",
                mirror::delete_if_unchanged(alloc, &key, rev),
            )
            .await?
        {
            tracing::info!(key = %key, "removed config of a deleted object");
            if is_pool {
                metrics.forget_pool(name);
            }
            report.removed.push(key);
        }
    }
    Ok(report)
}

fn names<K>(store: &Store<K>) -> BTreeSet<String>
where
    K: Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| o.name_any()).collect()
}

/// A controller for `K` with its store, re-running every object when `trigger` fires.
fn config_controller<K, R, Fut>(
    client: Client,
    ctx: Arc<Ctx>,
    trigger: &Trigger,
    reconcile: R,
) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Ctx>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let controller = Controller::new(Api::<K>::all(client), watcher::Config::default());
    let reader = controller.store();
    let run = controller
        .with_config(controller::Config::default().concurrency(4))
        .reconcile_all_on(trigger.stream(Duration::from_millis(500)))
        .run(reconcile, error_policy::<K>, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        });
    (reader, run)
}

/// Runs the three config controllers and the orphan sweep (every `ctx.resync`) until dropped.
pub async fn run(ctx: Arc<Ctx>, triggers: ConfigTriggers) {
    let client = ctx.client.clone();
    let (subnets, a) = config_controller::<VlanSubnet, _, _>(
        client.clone(),
        ctx.clone(),
        &triggers.subnets,
        reconcile_subnet,
    );
    let (pools, b) = config_controller::<MacPool, _, _>(
        client.clone(),
        ctx.clone(),
        &triggers.pools,
        reconcile_macpool,
    );
    let (rules, c) = config_controller::<AllocationRule, _, _>(
        client,
        ctx.clone(),
        &triggers.rules,
        reconcile_rule,
    );
    let sweeper = async move {
        // Never sweep from a partial picture: wait for all three initial lists.
        for ready in [
            subnets.wait_until_ready().await,
            pools.wait_until_ready().await,
            rules.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(ctx.resync);
        loop {
            tick.tick().await;
            let r = sweep_orphans(
                &ctx.alloc,
                &ctx.metrics,
                &names(&subnets),
                &names(&pools),
                &names(&rules),
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "sweep of orphaned config keys failed; retrying at the next resync");
            }
        }
    };
    tokio::join!(a, b, c, sweeper);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_transition_time() {
        let old = vec![
            Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Mirrored".into(),
                message: "x".into(),
                last_transition_time: Some("2020-01-01T00:00:00Z".into()),
                observed_generation: Some(1),
            },
            Condition {
                type_: "Other".into(),
                status: "True".into(),
                ..Default::default()
            },
        ];
        let now = "2030-01-01T00:00:00Z";
        let same = merge_conditions(
            &old,
            vec![ready(true, "Mirrored", "y".into()), valid()],
            Some(2),
            now,
        );
        assert_eq!(same.len(), 3);
        let r = same.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            r.last_transition_time.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        assert_eq!(r.observed_generation, Some(2));
        let i = same.iter().find(|c| c.type_ == "Invalid").unwrap();
        assert_eq!(i.last_transition_time.as_deref(), Some(now));
        let flipped = merge_conditions(&old, vec![ready(false, "Invalid", "z".into())], None, now);
        let r = flipped.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(r.last_transition_time.as_deref(), Some(now));
        assert_eq!(r.status, "False");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let d1 = backoff_delay(1).as_secs_f64();
        assert!((1.6..=2.4).contains(&d1), "{d1}");
        let d5 = backoff_delay(5).as_secs_f64();
        assert!((25.6..=38.4).contains(&d5), "{d5}");
        assert!(backoff_delay(40) <= Duration::from_secs(360));
    }
}
