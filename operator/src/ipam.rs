//! `ipam`: inspection and repair of reservations in etcd — `show` (use of each subnet and MAC
//! pool), `who` (the holder of an address), `release` (compare-and-delete of exactly what was
//! read, for repair). The functions return data; rendering is in [`crate::cli`].

use std::net::IpAddr;

use serde::Serialize;
use static_macvlan_allocator::{Allocator, MacAddr, MacPool, Record, Reservation, Subnet};

use crate::error::Error;
use crate::mirror::{self, Snapshot};

/// Use of one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetUsage {
    pub name: String,
    pub cidr: String,
    pub master: String,
    pub vlan: u16,
    /// Reserved addresses (pending and committed, static ones outside the ranges included).
    pub used: u128,
    pub free: u128,
    /// Allocatable addresses of the ranges.
    pub capacity: u128,
    /// Why the stored config could not be read; the counts are 0 then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Use of one MAC pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    pub name: String,
    /// `start-end` per range.
    pub ranges: Vec<String>,
    pub used: u128,
    pub free: u128,
    pub capacity: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `ipam show` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub subnets: Vec<SubnetUsage>,
    pub mac_pools: Vec<PoolUsage>,
}

/// Counts the reservations of every subnet and MAC pool (server-side counts: nothing is
/// transferred per reservation).
///
/// # Errors
/// [`Error::Etcd`] / [`Error::Allocator`] when etcd does not answer.
pub async fn show(alloc: &Allocator) -> Result<Overview, Error> {
    let snap = Snapshot::read(alloc).await?;
    let mut out = Overview::default();
    for (name, s) in &snap.subnets {
        let (cfg, valid) = match &s.decoded {
            Ok(m) => (
                Some(&m.spec),
                Subnet::from_config(name, &m.spec).map_err(|e| e.to_string()),
            ),
            Err(e) => (None, Err(format!("value does not decode: {e}"))),
        };
        let mut row = SubnetUsage {
            name: name.clone(),
            cidr: cfg.map(|c| c.cidr.clone()).unwrap_or_default(),
            master: cfg.map(|c| c.master.clone()).unwrap_or_default(),
            vlan: cfg.map(|c| c.vlan).unwrap_or_default(),
            used: 0,
            free: 0,
            capacity: 0,
            error: None,
        };
        match valid {
            Ok(subnet) => {
                let u = alloc.usage(&subnet).await?;
                (row.used, row.free, row.capacity) = (u.used, u.free, u.capacity);
            }
            Err(e) => row.error = Some(format!("{}: {e}", s.key)),
        }
        out.subnets.push(row);
    }
    for (name, s) in &snap.macpools {
        let mut row = PoolUsage {
            name: name.clone(),
            ranges: Vec::new(),
            used: 0,
            free: 0,
            capacity: 0,
            error: None,
        };
        let valid = match &s.decoded {
            Ok(m) => {
                row.ranges = m
                    .spec
                    .ranges
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect();
                MacPool::from_config(name, &m.spec).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("value does not decode: {e}")),
        };
        match valid {
            Ok(pool) => {
                row.capacity = pool.capacity();
                row.used = mirror::macpool_used(alloc, &pool).await?;
                row.free = row.capacity.saturating_sub(row.used);
            }
            Err(e) => row.error = Some(format!("{}: {e}", s.key)),
        }
        out.mac_pools.push(row);
    }
    Ok(out)
}

/// An address asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    Mac(MacAddr),
}

impl std::str::FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Ok(ip) = s.parse() {
            return Ok(Address::Ip(ip));
        }
        s.parse()
            .map(Address::Mac)
            .map_err(|_| Error::Invalid(format!("{s:?} is neither an IP nor a MAC address")))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Mac(mac) => mac.fmt(f),
        }
    }
}

/// The subnets an IP may be reserved in: `subnet` if given — configured or not, so that
/// reservations left behind by a deleted subnet can still be found and repaired — else every
/// configured subnet whose cidr contains it.
async fn subnets_for(
    alloc: &Allocator,
    ip: IpAddr,
    subnet: Option<&str>,
) -> Result<Vec<String>, Error> {
    if let Some(s) = subnet {
        return Ok(vec![s.to_string()]);
    }
    let snap = Snapshot::read(alloc).await?;
    let names: Vec<String> = snap
        .subnets
        .iter()
        .filter(|(name, s)| {
            s.decoded
                .as_ref()
                .ok()
                .and_then(|m| Subnet::from_config(name, &m.spec).ok())
                .is_some_and(|sub| sub.cidr.contains(ip))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if names.is_empty() {
        return Err(Error::NotFound(format!(
            "no configured subnet contains {ip} (under {})",
            alloc.keys().prefix()
        )));
    }
    Ok(names)
}

/// Who holds `addr`: one reservation for a MAC, one per subnet holding an IP (subnets on
/// different LANs may share a cidr).
///
/// # Errors
/// [`Error::NotFound`] when nothing holds it or no subnet contains it; etcd errors.
pub async fn who(
    alloc: &Allocator,
    addr: Address,
    subnet: Option<&str>,
) -> Result<Vec<Reservation>, Error> {
    let held = match addr {
        Address::Mac(mac) => {
            if subnet.is_some() {
                return Err(Error::Invalid(
                    "--subnet applies to IP addresses only".to_string(),
                ));
            }
            alloc.holder_of_mac(mac).await?.into_iter().collect()
        }
        Address::Ip(ip) => {
            let mut held = Vec::new();
            let names = subnets_for(alloc, ip, subnet).await?;
            for s in &names {
                held.extend(alloc.holder_of_ip(s, ip).await?);
            }
            if held.is_empty() {
                if let Some(s) = subnet {
                    // Nothing held: say so, or that the subnet does not exist at all.
                    alloc.get_subnet(s).await?;
                }
                return Err(Error::NotFound(format!(
                    "{ip} is not reserved in subnet {}",
                    names.join(", ")
                )));
            }
            held
        }
    };
    if held.is_empty() {
        return Err(Error::NotFound(format!("{addr} is not reserved")));
    }
    Ok(held)
}

/// What `ipam release` frees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every attachment of a pod UID, or one interface of it.
    Pod { uid: String, ifname: Option<String> },
    /// The holder of an IP (in `subnet`, or in the one subnet holding it).
    Ip { ip: IpAddr, subnet: Option<String> },
    /// The holder of a MAC.
    Mac(MacAddr),
}

/// One reservation `release` dealt with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseOutcome {
    #[serde(flatten)]
    pub record: Record,
    /// The revision the reservation was read at (and compared against when deleting).
    pub revision: i64,
    /// Deleted; false for a dry run or when it changed meanwhile.
    pub released: bool,
    /// Changed between read and delete, so it was left alone.
    pub conflict: bool,
}

/// Frees what `target` names, each reservation with compare-and-delete on the exact revision
/// read: a reservation created or changed in the meantime is never touched (reported as a
/// conflict instead).
///
/// # Errors
/// [`Error::NotFound`] when nothing matches; [`Error::Invalid`] when an IP is held in several
/// subnets and none was named; etcd errors.
pub async fn release(
    alloc: &Allocator,
    target: &Target,
    dry_run: bool,
) -> Result<Vec<ReleaseOutcome>, Error> {
    let found: Vec<Reservation> = match target {
        Target::Pod { uid, ifname } => {
            let all = alloc.by_pod(uid).await?;
            let sel: Vec<Reservation> = all
                .into_iter()
                .filter(|r| ifname.as_ref().is_none_or(|i| &r.record.owner.ifname == i))
                .collect();
            if sel.is_empty() {
                let what = ifname
                    .as_ref()
                    .map(|i| format!(" on interface {i}"))
                    .unwrap_or_default();
                return Err(Error::NotFound(format!(
                    "pod uid {uid} holds nothing{what}"
                )));
            }
            sel
        }
        Target::Ip { ip, subnet } => {
            let held = who(alloc, Address::Ip(*ip), subnet.as_deref()).await?;
            if held.len() > 1 {
                let subnets: Vec<&str> = held.iter().map(|r| r.record.subnet.as_str()).collect();
                return Err(Error::Invalid(format!(
                    "{ip} is held in several subnets ({}); name one with --subnet",
                    subnets.join(", ")
                )));
            }
            held
        }
        Target::Mac(mac) => who(alloc, Address::Mac(*mac), None).await?,
    };
    let mut out = Vec::with_capacity(found.len());
    for res in found {
        let released = !dry_run && alloc.release_exact(&res).await?;
        out.push(ReleaseOutcome {
            conflict: !dry_run && !released,
            record: res.record,
            revision: res.revision,
            released,
        });
    }
    Ok(out)
}

/// How serious a finding of `ipam check` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something to repair; makes `ipam check` exit 1.
    Problem,
    /// Worth knowing, nothing wrong (a pod being set up right now).
    Info,
}

/// One finding of `ipam check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    /// `pod-gone`, `pending`, `held`, `stale-pending`, `missing-index`, `orphan-index`, `mismatch`,
    /// `corrupt`, `unknown-subnet`.
    pub finding: &'static str,
    /// The etcd key concerned.
    pub key: String,
    pub detail: String,
}

/// Whether and how the Kubernetes API was consulted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "reason")]
pub enum ApiCheck {
    /// Every committed reservation's pod was looked up.
    Checked,
    /// Not consulted (`--no-api`).
    Skipped,
    /// No cluster reachable: only etcd-internal consistency was checked.
    Unreachable(String),
}

/// What `ipam check` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub reservations: usize,
    pub api: ApiCheck,
    pub findings: Vec<Finding>,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }
}

/// A pending reservation older than this should long have been freed by its lease (the plugin's
/// pending TTL is a minute).
pub const STALE_PENDING: std::time::Duration = std::time::Duration::from_secs(600);

/// Reads every key under `prefix` at one revision, a page at a time (a large installation's
/// index does not fit into one response).
async fn list_all(
    alloc: &Allocator,
    prefix: &str,
    revision: Option<i64>,
) -> Result<(Vec<etcd_client::KeyValue>, i64), Error> {
    use etcd_client::GetOptions;
    const PAGE: i64 = 1000;
    let end = static_macvlan_allocator::keys::prefix_end(prefix);
    let mut kv = alloc.client().kv_client();
    let mut from = prefix.as_bytes().to_vec();
    let mut out = Vec::new();
    let mut rev = revision.unwrap_or(0);
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let resp = kv
            .get(from.clone(), Some(opts))
            .await
            .map_err(|e| Error::etcd(format!("list {prefix}"), e))?;
        if rev == 0 {
            rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        let kvs = resp.kvs();
        out.extend_from_slice(kvs);
        match (resp.more(), kvs.last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((out, rev)),
        }
    }
}

fn key_of(kv: &etcd_client::KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

/// The etcd-internal checks: every reservation's four keys hold the same record (same
/// revision), no index key without its owner entry, records decode, subnets exist, pending
/// reservations are young. Returns the reservations (from the owner index) and the findings.
///
/// # Errors
/// etcd failures.
pub async fn check_etcd(
    alloc: &Allocator,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<(Vec<Reservation>, Vec<Finding>), Error> {
    let k = alloc.keys();
    let (owners, rev) = list_all(alloc, &k.owners(), None).await?;
    let mut others = Vec::new();
    for prefix in [
        format!("{}/ips/", k.prefix()),
        k.macs(),
        format!("{}/nodes/", k.prefix()),
    ] {
        others.extend(list_all(alloc, &prefix, Some(rev)).await?.0);
    }
    let snap = Snapshot::read(alloc).await?;
    let mut findings = Vec::new();
    let problem = |finding, key: String, detail: String| Finding {
        severity: Severity::Problem,
        finding,
        key,
        detail,
    };
    let by_key: std::collections::HashMap<String, i64> = others
        .iter()
        .map(|kv| (key_of(kv), kv.mod_revision()))
        .collect();
    let mut expected = std::collections::HashSet::new();
    let mut reservations = Vec::new();
    for kv in &owners {
        let key = key_of(kv);
        let record: Record = match serde_json::from_slice(kv.value()) {
            Ok(r) => r,
            Err(e) => {
                findings.push(problem(
                    "corrupt",
                    key,
                    format!("value does not decode: {e}"),
                ));
                continue;
            }
        };
        let o = &record.owner;
        if key != k.owner(&o.pod_uid, &o.ifname) {
            findings.push(problem(
                "mismatch",
                key.clone(),
                format!(
                    "the record names owner {} / {}, not this key",
                    o.pod_uid, o.ifname
                ),
            ));
        }
        let mut index = vec![
            k.ip(&record.subnet, record.ip),
            k.node(&o.node, &o.pod_uid, &o.ifname),
        ];
        if let Some(mac) = record.mac {
            index.push(k.mac(mac));
        }
        for ik in index {
            match by_key.get(&ik) {
                None => findings.push(problem(
                    "missing-index",
                    key.clone(),
                    format!("{ik} is missing (the reservation of {o} is incomplete)"),
                )),
                Some(r) if *r != kv.mod_revision() => findings.push(problem(
                    "mismatch",
                    ik.clone(),
                    format!(
                        "written at revision {r}, the owner entry {key} at {}: they hold different reservations",
                        kv.mod_revision()
                    ),
                )),
                Some(_) => {}
            }
            expected.insert(ik);
        }
        if !snap.subnets.contains_key(&record.subnet) {
            findings.push(problem(
                "unknown-subnet",
                key.clone(),
                format!(
                    "reservation of {} in subnet {}, which is not configured",
                    record.ip, record.subnet
                ),
            ));
        }
        if record.state == static_macvlan_allocator::State::Pending {
            let age = record
                .since
                .parse::<k8s_openapi::jiff::Timestamp>()
                .ok()
                .and_then(|t| now.duration_since(t).try_into().ok())
                .unwrap_or(std::time::Duration::ZERO);
            let detail = format!(
                "{} in {} for {o} pending for {}s (lease {})",
                record.ip,
                record.subnet,
                age.as_secs(),
                record.lease.as_deref().unwrap_or("-")
            );
            findings.push(if age > STALE_PENDING {
                problem("stale-pending", key.clone(), detail)
            } else {
                Finding {
                    severity: Severity::Info,
                    finding: "pending",
                    key: key.clone(),
                    detail,
                }
            });
        }
        reservations.push(Reservation {
            record,
            revision: kv.mod_revision(),
        });
    }
    for kv in &others {
        let key = key_of(kv);
        if expected.contains(&key) {
            continue;
        }
        // A sticky reservation whose pod is gone keeps its IP and MAC keys, without owner or node
        // keys, until its hold lease expires: expected, not an orphan.
        if let Ok(r) = serde_json::from_slice::<Record>(kv.value()) {
            if r.state == static_macvlan_allocator::State::Held {
                findings.push(Finding {
                    severity: Severity::Info,
                    finding: "held",
                    key,
                    detail: format!(
                        "{} in {} held for sticky key {:?} (lease {})",
                        r.ip,
                        r.subnet,
                        r.sticky.as_ref().map(|s| s.key.as_str()).unwrap_or("-"),
                        r.lease.as_deref().unwrap_or("-")
                    ),
                });
                continue;
            }
        }
        let holder = serde_json::from_slice::<Record>(kv.value())
            .map(|r| format!("its record names {}", r.owner))
            .unwrap_or_else(|e| format!("its value does not decode: {e}"));
        findings.push(problem(
            "orphan-index",
            key,
            format!("no owner entry refers to this key; {holder}"),
        ));
    }
    Ok((reservations, findings))
}

/// The API part of `ipam check`: committed reservations whose pod is gone.
///
/// # Errors
/// API failures.
pub async fn check_pods(
    client: &kube::Client,
    keys: &static_macvlan_allocator::Keys,
    reservations: &[Reservation],
) -> Result<Vec<Finding>, Error> {
    use crate::gc::{ask, questions, PodAnswer};
    let answers = ask(client, &questions(reservations, None)).await?;
    let mut out = Vec::new();
    for r in reservations {
        let o = &r.record.owner;
        let why = match answers.get(&(o.namespace.clone(), o.pod.clone())) {
            Some(PodAnswer::Missing) => format!("pod {}/{} does not exist", o.namespace, o.pod),
            Some(PodAnswer::Present(uid)) if *uid != o.pod_uid => format!(
                "pod {}/{} is now another pod (uid {uid})",
                o.namespace, o.pod
            ),
            _ => continue,
        };
        out.push(Finding {
            severity: Severity::Problem,
            finding: "pod-gone",
            key: keys.ip(&r.record.subnet, r.record.ip),
            detail: format!(
                "{why}; reservation of uid {} ({}) is left over: the operator's GC frees it after \
                 its grace period, or `ipam release --pod-uid {}`",
                o.pod_uid, o.ifname, o.pod_uid
            ),
        });
    }
    Ok(out)
}
