//! The CNI commands: ADD, DEL, CHECK, GC, STATUS and VERSION, built from the allocator (etcd) and
//! the netlink layer.
//!
//! ADD validates everything it can before it changes anything (input, subnet, static requests,
//! the master link and its MTU), then reserves (pending, under a lease) while it creates the
//! link, configures the link, and commits while the link comes up. Every step that changed
//! something is recorded in `Undo`; a failure undoes them in reverse order, so a failed ADD
//! leaves no link, no route and no reservation behind.
//!
//! DEL is idempotent and lenient: a missing namespace, link or reservation is success. The pod
//! link's addresses are removed before the reservation is released, so an address is never
//! handed to another pod while the old interface could still answer for it; the slow link
//! deletion runs meanwhile on a thread of its own.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde_json::Value;
use static_macvlan_allocator::rules::{RuleSet, RulesFingerprint};
use static_macvlan_allocator::{
    Allocator, EtcdConfig, IpRequest, LoadedSubnet, MacAddr, MacRequest, Options, Owner, Released,
    Reservation, State, StickyHold, Subnet,
};

use crate::conf::{self, Command, EnvMap, IpWanted, NetConf, Requested, RuntimeEnv};
use crate::errors::Error;
use crate::netlink::{self, LinkLock, NetError, Netlink, PodInterface, Route};
use crate::netns::Netns;
use crate::policy;
use crate::subnet_cache;
use crate::types::{self, CniResult, CniVersion, Interface, IpConfig, RouteConfig};

/// Default directory for node-local state: link locks and the marks of VLAN sub-interfaces
/// this plugin created (tmpfs: both vanish with the links on reboot).
pub const DEFAULT_RUN_DIR: &str = "/run/static-macvlan";

/// How long ADD waits for IPv6 duplicate address detection.
const DAD_TIMEOUT: Duration = Duration::from_secs(5);

/// STATUS answers within about this long, whatever the etcd timeouts say.
const STATUS_DIAL_TIMEOUT_MS: u64 = 1500;
const STATUS_REQUEST_TIMEOUT_MS: u64 = 2000;

/// What one invocation printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON for stdout, if any (results, VERSION, and error results).
    pub stdout: Option<Value>,
    /// Exit code: 0, or 1 with an error result on stdout.
    pub exit_code: i32,
    /// For the log line.
    pub error: Option<Error>,
    pub command: Option<Command>,
    pub container: Option<String>,
    pub ifname: Option<String>,
    pub subnet: Option<String>,
    /// ADD: how the subnet and the requests were decided (pod annotations, which rule and why).
    pub decision: Option<String>,
}

/// Node-local settings that are not part of the network configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `$STATIC_MACVLAN_RUN_DIR`, default [`DEFAULT_RUN_DIR`].
    pub run_dir: PathBuf,
}

impl Settings {
    pub fn from_env(env: &EnvMap) -> Settings {
        Settings {
            run_dir: env
                .get("STATIC_MACVLAN_RUN_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
        }
    }

    fn lock_dir(&self) -> PathBuf {
        self.run_dir.join("locks")
    }

    /// The mark that says "this plugin created VLAN link `name`".
    fn vlan_mark(&self, name: &str) -> PathBuf {
        self.run_dir.join("vlans").join(name)
    }
}

/// Runs one invocation: parses the environment and stdin, executes the command, and says what
/// to print. Never panics on bad input; every failure becomes an error result.
pub async fn run(env: &EnvMap, stdin: &[u8]) -> Outcome {
    let mut out = Outcome::new(env);
    let result = async {
        let command = Command::from_env(env)?;
        out.command = Some(command);
        if command == Command::Version {
            return Ok(Some(types::version_info()));
        }
        let conf = conf::parse_netconf(stdin, env)?;
        out.subnet = conf.subnet.clone();
        let settings = Settings::from_env(env);
        match command {
            Command::Add => {
                let rt = RuntimeEnv::from_env(command, env)?;
                add(&conf, &rt, &settings, &mut out.subnet, &mut out.decision)
                    .await
                    .map(Some)
            }
            Command::Del => {
                let rt = RuntimeEnv::from_env(command, env)?;
                del(&conf, &rt, &settings).await.map(|()| None)
            }
            Command::Check => {
                let rt = RuntimeEnv::from_env(command, env)?;
                check(&conf, &rt).await.map(|()| None)
            }
            Command::Gc => gc(&conf, &settings).await.map(|()| None),
            Command::Status => status(&conf).await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    }
    .await;
    match result {
        Ok(stdout) => out.stdout = stdout,
        Err(err) => out.fail(env, stdin, err),
    }
    out
}

/// The outcome of an invocation that failed before it could start (stdin unreadable…).
pub fn failed(env: &EnvMap, stdin: &[u8], err: Error) -> Outcome {
    let mut out = Outcome::new(env);
    out.command = Command::from_env(env).ok();
    out.fail(env, stdin, err);
    out
}

impl Outcome {
    fn new(env: &EnvMap) -> Outcome {
        Outcome {
            stdout: None,
            exit_code: 0,
            error: None,
            command: None,
            container: env.get("CNI_CONTAINERID").cloned(),
            ifname: env.get("CNI_IFNAME").cloned(),
            subnet: None,
            decision: None,
        }
    }

    /// Turns `err` into the error result, in the netconf's version when it names one we speak.
    fn fail(&mut self, env: &EnvMap, stdin: &[u8], err: Error) {
        let version = conf::peek_version(stdin).unwrap_or(CniVersion::LATEST);
        let details = details(self, env, &err);
        self.stdout = Some(types::error_json(version, &err, &details));
        self.exit_code = 1;
        self.error = Some(err);
    }
}

/// The `details` of an error result: what was being done, and the error's causes.
fn details(out: &Outcome, env: &EnvMap, err: &Error) -> String {
    let mut parts = Vec::new();
    if let Some(c) = out.command {
        parts.push(c.as_str().to_string());
    }
    if let Some(c) = &out.container {
        parts.push(format!("container {c}"));
    }
    if let Some(i) = &out.ifname {
        parts.push(format!("ifname {i}"));
    }
    if let Some(n) = env.get("CNI_NETNS").filter(|n| !n.is_empty()) {
        parts.push(format!("netns {n}"));
    }
    if let Some(s) = &out.subnet {
        parts.push(format!("subnet {s}"));
    }
    let mut text = parts.join(" ");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn connect(conf: &NetConf) -> Result<Allocator, Error> {
    let opts = Options {
        pending_ttl: conf.pending_ttl,
        ..Options::default()
    };
    Ok(Allocator::connect(&conf.etcd, opts).await?)
}

/// As [`connect`], for an ADD, sharing with the node's other invocations through files in the
/// run dir: the pending lease, one file per etcd cluster (named after its endpoints), so that
/// most ADDs find a lease and skip the grant, a write etcd syncs to disk; and the free
/// addresses a window read saw, one file per cluster and prefix, so that most ADDs claim one
/// without reading a window first.
async fn connect_for_add(conf: &NetConf, settings: &Settings) -> Result<Allocator, Error> {
    let scope = etcd_scope(&conf.etcd);
    let endpoints = &scope.0;
    let opts = Options {
        pending_ttl: conf.pending_ttl,
        lease_file: Some(node_file(&settings.run_dir, "leases", &endpoints, "json")),
        hints_file: Some(node_file(&settings.run_dir, "hints", &scope, "json")),
        ..Options::default()
    };
    Ok(Allocator::connect(&conf.etcd, opts).await?)
}

/// What the node's files are per: an etcd cluster (its endpoints, in any order) and a prefix.
pub(crate) fn etcd_scope(etcd: &EtcdConfig) -> (Vec<String>, String) {
    let mut endpoints = etcd.endpoints.clone();
    endpoints.sort();
    (endpoints, etcd.prefix.clone())
}

/// [`etcd_scope`] as text, for a node file to say whose it is (its name is only a hash).
pub(crate) fn etcd_scope_text(etcd: &EtcdConfig) -> String {
    format!("{:?}", etcd_scope(etcd))
}

/// `<run_dir>/<dir>/<hash of key>.<ext>`: where the node keeps what its invocations share, one
/// file per `key` (an etcd cluster, a prefix).
pub(crate) fn node_file(
    run_dir: &Path,
    dir: &str,
    key: &impl std::hash::Hash,
    ext: &str,
) -> PathBuf {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    run_dir.join(dir).join(format!("{:016x}.{ext}", h.finish()))
}

/// Opens `CNI_NETNS`; a path that does not exist is the runtime's error (code 4).
fn open_netns(path: &Path) -> Result<Netns, Error> {
    match Netns::open(path) {
        Ok(ns) => Ok(ns),
        Err(NetError::Netns { source, .. }) if source.kind() == io::ErrorKind::NotFound => Err(
            Error::env("CNI_NETNS", path.display().to_string(), "does not exist"),
        ),
        Err(e) => Err(e.into()),
    }
}

/// The name of the host-side shim on `parent`: `smv-<parent>`, or `smvh<hash>` when that would
/// exceed the kernel's 15 bytes.
pub fn shim_name(parent: &str) -> String {
    let name = format!("smv-{parent}");
    if name.len() <= netlink::MAX_IFNAME_LEN {
        return name;
    }
    // FNV-1a: stable across versions and builds, unlike std's hasher.
    let hash = parent.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("smvh{hash:08x}")
}

/// The parent link of a subnet on this node: the master, or its VLAN sub-interface.
fn parent_name(master: &str, subnet: &Subnet) -> Result<String, Error> {
    if subnet.vlan == 0 {
        Ok(master.to_string())
    } else {
        Ok(netlink::vlan_link_name(master, subnet.vlan)?)
    }
}

/// The master on this node: the netconf's override, or the subnet's.
fn master_of(conf: &NetConf, subnet: &Subnet) -> String {
    conf.master.clone().unwrap_or_else(|| subnet.master.clone())
}

/// The static IP request in force, checked against the subnet's family and prefix.
fn ip_request(wanted: &[Requested<IpWanted>], subnet: &Subnet) -> Result<IpRequest, Error> {
    let Some(first) = wanted.first() else {
        return Ok(IpRequest::Auto);
    };
    let v6 = subnet.cidr.is_ipv6();
    let Some(req) = wanted.iter().find(|r| r.value.ip.is_ipv6() == v6) else {
        let list: Vec<String> = wanted.iter().map(|r| r.value.to_string()).collect();
        let mut field = first.clone();
        field.field = first
            .field
            .split('[')
            .next()
            .unwrap_or(&first.field)
            .to_string();
        return Err(field.error(
            list.join(","),
            format!(
                "has no IPv{} address for subnet {} ({})",
                if v6 { 6 } else { 4 },
                subnet.name,
                subnet.cidr
            ),
        ));
    };
    if let Some(p) = req.value.prefix {
        if p != subnet.cidr.prefix() {
            return Err(req.error(
                req.value,
                format!(
                    "prefix /{p} differs from /{} of subnet {} ({})",
                    subnet.cidr.prefix(),
                    subnet.name,
                    subnet.cidr
                ),
            ));
        }
    }
    Ok(IpRequest::Static(req.value.ip))
}

/// The routes of an attachment: the default route via the gateway (unless disabled), then the
/// subnet's routes, whose gateway defaults to the subnet's.
fn routes_of(subnet: &Subnet) -> Vec<Route> {
    let mut routes = Vec::new();
    if subnet.default_route {
        if let Some(gw) = subnet.gateway {
            routes.push(Route::default_via(gw));
        }
    }
    for r in &subnet.routes {
        routes.push(Route {
            destination: r.dst,
            gateway: r.gw.or(subnet.gateway),
        });
    }
    routes
}

fn result_of(
    subnet: &Subnet,
    rec_ip: IpAddr,
    ifname: &str,
    mac: [u8; 6],
    netns: &Path,
    routes: &[Route],
) -> CniResult {
    let address = IpNetwork::new(rec_ip, subnet.cidr.prefix()).expect("prefix of the subnet fits");
    let dns = subnet
        .dns
        .as_ref()
        .and_then(|d| serde_json::to_value(d).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            mac: MacAddr(mac).to_string(),
            sandbox: netns.display().to_string(),
        }],
        ips: vec![IpConfig {
            address,
            gateway: subnet.gateway,
            interface: Some(0),
        }],
        routes: routes
            .iter()
            .map(|r| RouteConfig {
                dst: r.destination,
                gw: r.gateway,
            })
            .collect(),
        dns,
    }
}

/// What a failing ADD has to take back, in reverse order of doing.
#[derive(Default)]
struct Undo {
    /// The pending reservation this ADD created (not one it found committed).
    reservation: Option<Reservation>,
    /// A VLAN sub-interface this ADD created.
    vlan: Option<String>,
    /// The pod link exists.
    link: bool,
    /// A host route into the shim: (pod ip, shim name).
    host_route: Option<(IpAddr, String)>,
}

impl Undo {
    async fn run(
        self,
        alloc: &Allocator,
        host: &Netlink,
        netns: &Path,
        ifname: &str,
        settings: &Settings,
    ) {
        if let Some((ip, shim)) = &self.host_route {
            let _lock = LinkLock::acquire(&settings.lock_dir(), shim);
            if let Err(e) = host.del_host_route(*ip, shim).await {
                tracing::warn!(error = %e, "undo: remove host route");
            }
            if let Err(e) = host.delete_shim_if_unused(shim).await {
                tracing::warn!(error = %e, "undo: delete unused shim");
            }
        }
        if self.link {
            if let Err(e) = netlink::teardown_pod_macvlan(netns, ifname).await {
                tracing::warn!(error = %e, "undo: delete pod link");
            }
        }
        if let Some(vlan) = &self.vlan {
            delete_vlan_if_ours(host, vlan, settings).await;
        }
        if let Some(res) = &self.reservation {
            match alloc.release_exact(res).await {
                Ok(_) => {}
                // The pending lease expires on its own: nothing is lost by giving up here.
                Err(e) => tracing::warn!(error = %e, "undo: release reservation"),
            }
        }
    }
}

async fn delete_vlan_if_ours(host: &Netlink, vlan: &str, settings: &Settings) {
    let mark = settings.vlan_mark(vlan);
    if !mark.exists() {
        return;
    }
    let _lock = match LinkLock::acquire(&settings.lock_dir(), vlan) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, vlan, "lock vlan link");
            return;
        }
    };
    match host.delete_vlan_if_unused(vlan).await {
        Ok(true) => {
            let _ = std::fs::remove_file(&mark);
            tracing::info!(vlan, "deleted unused vlan link");
        }
        Ok(false) => {
            if !host.link_exists(vlan).await.unwrap_or(true) {
                let _ = std::fs::remove_file(&mark);
            }
        }
        Err(e) => tracing::warn!(error = %e, vlan, "delete unused vlan link"),
    }
}

fn mark_vlan_ours(settings: &Settings, name: &str) {
    let mark = settings.vlan_mark(name);
    let written = mark
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&mark, b""));
    if let Err(e) = written {
        // Without the mark the VLAN link is merely never deleted: safe.
        tracing::warn!(error = %e, vlan = name, "mark vlan link as created by static-macvlan");
    }
}

/// How long to sleep between reads of a pod mirror ADD waits for.
const MIRROR_POLL: Duration = Duration::from_millis(100);

/// Reads the pod mirror of the pod in `CNI_ARGS` (`None` without K8S args).
async fn read_mirror(
    alloc: &Allocator,
    rt: &RuntimeEnv,
) -> Result<Option<static_macvlan_allocator::model::PodRecord>, Error> {
    match (&rt.args.pod_namespace, &rt.args.pod_name) {
        (Some(ns), Some(name)) => Ok(alloc.pod_record(ns, name).await?),
        _ => Ok(None),
    }
}

/// Waits (once, up to `podMirrorWaitSeconds`) for the pod mirror of this pod's UID.
async fn wait_for_mirror(
    alloc: &Allocator,
    conf: &NetConf,
    rt: &RuntimeEnv,
    mirror: &mut policy::Mirror,
    why: &str,
) -> Result<(), Error> {
    mirror.waited = true;
    if conf.pod_mirror_wait.is_zero() {
        return Ok(());
    }
    tracing::debug!(
        why,
        wait_s = conf.pod_mirror_wait.as_secs(),
        "waiting for the pod mirror"
    );
    let start = std::time::Instant::now();
    loop {
        let left = conf.pod_mirror_wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(MIRROR_POLL)).await;
        let read = policy::Mirror::of(
            read_mirror(alloc, rt).await?,
            rt.args.pod_uid.as_deref(),
            mirror.pod.clone(),
        );
        if read.record.is_some() {
            tracing::debug!(
                waited_ms = start.elapsed().as_millis() as u64,
                "pod mirror appeared"
            );
            mirror.record = read.record;
            mirror.stale = false;
            return Ok(());
        }
    }
}

/// Whether ADD may try the next subnet of a rule's list after `e`.
fn try_next_subnet(e: &Error) -> bool {
    matches!(
        e,
        Error::SubnetRefused { .. }
            | Error::Alloc(static_macvlan_allocator::Error::PoolExhausted { .. })
            | Error::Alloc(static_macvlan_allocator::Error::MacPoolExhausted { .. })
    )
}

/// What one ADD works with, for the functions it is made of.
struct Add<'a> {
    conf: &'a NetConf,
    rt: &'a RuntimeEnv,
    settings: &'a Settings,
    alloc: &'a Allocator,
    host: &'a Netlink,
    pod_ns: &'a Netns,
    netns_path: &'a Path,
    owner: &'a Owner,
}

impl Add<'_> {
    fn link_at<'b>(&'b self, target: &'b LinkTarget) -> LinkAt<'b> {
        LinkAt {
            host: self.host,
            pod_ns: self.pod_ns,
            target,
            ifname: &self.rt.ifname,
            settings: self.settings,
        }
    }

    async fn undo(&self, undo: Undo) {
        undo.run(
            self.alloc,
            self.host,
            self.netns_path,
            &self.rt.ifname,
            self.settings,
        )
        .await;
    }
}

async fn add(
    conf: &NetConf,
    rt: &RuntimeEnv,
    settings: &Settings,
    chosen: &mut Option<String>,
    decision: &mut Option<String>,
) -> Result<Value, Error> {
    // Everything that can be checked without changing anything, first.
    let owner = rt.owner(&conf.node, &conf.name)?;
    let netns_path = rt.netns.as_deref().expect("ADD requires CNI_NETNS");
    let pod_ns = open_netns(netns_path)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()?;
    let host = Netlink::open()?;
    let alloc = connect_for_add(conf, settings).await?;
    let a = Add {
        conf,
        rt,
        settings,
        alloc: &alloc,
        host: &host,
        pod_ns: &pod_ns,
        netns_path,
        owner: &owner,
    };
    let kept = conf
        .subnet
        .as_deref()
        .and_then(|s| subnet_cache::load(&settings.run_dir, &conf.etcd, s, &alloc));
    let kept_stored = kept.as_ref().map(|k| k.stored.clone());
    // One round trip's time for all the reads: the netconf's subnet (and MAC pools), the pending
    // lease, the rules and the pod mirror go out together on the one connection; with them, when
    // the node kept the netconf's subnet, the early claim, while the pod's link is created.
    let (loaded, lease, rules, record, early) = tokio::join!(
        async {
            match &conf.subnet {
                Some(s) => Some(alloc.load_subnet_at(s).await),
                None => None,
            }
        },
        alloc.prepare(),
        async {
            if conf.rules {
                alloc.rules_fingerprint().await.map(Some)
            } else {
                Ok(None)
            }
        },
        read_mirror(&alloc, rt),
        start_early(&a, kept),
    );
    if let Some(Ok(l)) = &loaded {
        subnet_cache::keep(
            &settings.run_dir,
            &conf.etcd,
            &l.stored,
            kept_stored.as_ref(),
        );
    }
    let mut early = early;
    let read = Reads {
        loaded,
        lease,
        rules,
        record,
    };
    let result = add_planned(&a, read, &mut early, prev, chosen, decision).await;
    if let Some(e) = early.take() {
        e.abandon(&a).await;
    }
    result
}

/// What an ADD's first round trip read.
struct Reads {
    loaded: Option<Result<LoadedSubnet, static_macvlan_allocator::Error>>,
    lease: Result<(), static_macvlan_allocator::Error>,
    /// The fingerprint of the rules (`None` when the netconf says not to use them).
    rules: Result<Option<RulesFingerprint>, static_macvlan_allocator::Error>,
    record: Result<Option<static_macvlan_allocator::model::PodRecord>, Error>,
}

/// What an ADD started before it read anything, from the node's copy of the netconf's subnet:
/// a claim for the requests the netconf and CNI_ARGS make (automatic ones from the node's
/// hints), and the pod's link, created down under a temporary name. Kept when the plan, made
/// from what was read, turns out to want exactly this; otherwise taken back.
struct Early {
    kept: LoadedSubnet,
    target: LinkTarget,
    ip_req: IpRequest,
    mac_req: MacRequest,
    /// The early claim, when it was made (its undo is in `undo`).
    reservation: Option<Reservation>,
    prepared: Option<Prepared>,
    /// What giving it all back takes: the claim, a VLAN created for the link.
    undo: Undo,
}

impl Early {
    async fn abandon(self, a: &Add<'_>) {
        tracing::debug!(
            claimed = self.reservation.is_some(),
            "the early start does not fit the plan: taken back"
        );
        if let Some(p) = self.prepared {
            // Its VLAN lock goes first: undo takes it to delete an unused VLAN.
            p.link.discard().await;
        }
        a.undo(self.undo).await;
    }
}

async fn start_early(a: &Add<'_>, kept: Option<LoadedSubnet>) -> Option<Early> {
    let kept = kept?;
    let ip_req = ip_request(a.conf.static_ips(&a.rt.args), &kept.subnet).ok()?;
    let mac_req = mac_request(
        a.conf.static_mac(&a.rt.args),
        &kept.subnet,
        kept.pool.clone(),
    )
    .ok()?;
    let mut undo = Undo::default();
    let link = async {
        let target = link_target(a.conf, a.host, &kept.subnet).await.ok()?;
        let prepared = prepare_link(&a.link_at(&target), &mut undo)
            .await
            .inspect_err(|e| tracing::debug!(error = %e, "early link"))
            .ok();
        Some((target, prepared))
    };
    let (claimed, link) = tokio::join!(a.alloc.claim_early(&kept, a.owner, ip_req, &mac_req), link);
    let reservation = claimed
        .inspect_err(|e| tracing::debug!(error = %e, "early claim"))
        .ok()
        .flatten();
    undo.reservation = reservation.clone();
    let Some((target, prepared)) = link else {
        // No link target (the master is missing…): the ordinary ADD reports it.
        if let Some(res) = &reservation {
            if let Err(e) = a.alloc.release_exact(res).await {
                tracing::warn!(error = %e, "give back the early claim");
            }
        }
        return None;
    };
    Some(Early {
        kept,
        target,
        ip_req,
        mac_req,
        reservation,
        prepared,
        undo,
    })
}

/// Plans the attachment from what the first round trip read, and attaches it in the first
/// subnet of the plan with room.
async fn add_planned(
    a: &Add<'_>,
    read: Reads,
    early: &mut Option<Early>,
    prev: Option<CniResult>,
    chosen: &mut Option<String>,
    decision: &mut Option<String>,
) -> Result<Value, Error> {
    let (conf, rt, alloc) = (a.conf, a.rt, a.alloc);
    read.lease?;
    tracing::debug!("read configuration");
    let rules = match read.rules? {
        None => RuleSet::default(),
        Some(fp) => load_rules(a, &fp).await?,
    };
    let pod = match (&rt.args.pod_namespace, &rt.args.pod_name) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        _ => None,
    };
    let mut mirror = policy::Mirror::of(read.record?, rt.args.pod_uid.as_deref(), pod);
    if conf.pod_mirror_wait.is_zero() {
        mirror.waited = true;
    }
    let mut loaded = read.loaded;
    if mirror.stale && !mirror.waited && conf.pod_annotations {
        // A predecessor of the same name is mirrored: the operator runs and will mirror this
        // pod shortly; its annotations may differ.
        wait_for_mirror(
            alloc,
            conf,
            rt,
            &mut mirror,
            "the pod mirror is of another pod UID",
        )
        .await?;
    }
    'plan: loop {
        let plan = match policy::plan(conf, rt, a.owner, &rules, &mirror)? {
            policy::Step::Plan(p) => p,
            policy::Step::WaitForMirror(why) => {
                wait_for_mirror(alloc, conf, rt, &mut mirror, &why).await?;
                continue 'plan;
            }
        };
        *decision = Some(plan.reason.clone());
        tracing::debug!(decision = %plan.reason, "planned");
        let mut last_err = None;
        for (i, name) in plan.subnets.iter().enumerate() {
            let more = i + 1 < plan.subnets.len();
            *chosen = Some(name.clone());
            let read = match loaded.take() {
                Some(r) if conf.subnet.as_deref() == Some(name.as_str()) => r,
                _ => alloc.load_subnet_at(name).await,
            };
            let l = read?;
            tracing::debug!(subnet = %l.subnet.name, "read subnet");
            let fits = |e: &Early| e.kept.subnet.name == *name && e.kept.stored == l.stored;
            if early.as_ref().is_some_and(|e| !fits(e)) {
                if let Some(e) = early.take() {
                    e.abandon(a).await;
                }
            }
            let ip_req = ip_request(&plan.ips, &l.subnet)?;
            let static_ip = match ip_req {
                IpRequest::Static(a) => Some(a),
                IpRequest::Auto => None,
            };
            let admitted = policy::admit(
                &l.subnet,
                &plan,
                static_ip,
                plan.mac.as_ref().map(|m| m.value),
                &mirror,
                conf.pod_mirror_wait,
            );
            match admitted {
                Ok(policy::Admit::Yes) => {}
                Ok(policy::Admit::WaitForMirror(why)) => {
                    wait_for_mirror(alloc, conf, rt, &mut mirror, &why).await?;
                    continue 'plan;
                }
                Err(e) if more && try_next_subnet(&e) => {
                    tracing::debug!(error = %e, "trying the next subnet");
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let attempt = add_in_subnet(
                a,
                &plan,
                l.subnet,
                l.pool,
                ip_req,
                prev.clone(),
                !more,
                early.take(),
            )
            .await;
            match attempt {
                Err(e) if more && try_next_subnet(&e) => {
                    tracing::debug!(error = %e, "trying the next subnet");
                    last_err = Some(e);
                }
                other => return other,
            }
        }
        return Err(last_err.unwrap_or_else(|| Error::config("subnet", "null", "no subnet to try")));
    }
}

/// The rules whose fingerprint etcd gave: from the node's cache of compiled rules when it holds
/// exactly those, else read (again with their fingerprint, of that very read) and compiled.
async fn load_rules(a: &Add<'_>, fp: &RulesFingerprint) -> Result<RuleSet, Error> {
    let (run_dir, etcd) = (&a.settings.run_dir, &a.conf.etcd);
    if let Some(set) = crate::rule_cache::cached(run_dir, etcd, fp) {
        return Ok(set);
    }
    let (specs, fp) = a.alloc.rules_with_fingerprint().await?;
    crate::rule_cache::compile(&specs, run_dir, etcd, &fp).map_err(|source| Error::Rule {
        source,
        note: String::new(),
    })
}

/// Where the pod's link goes on this node: the subnet, its master here (checked to exist and
/// to carry the subnet's MTU) and the parent the macvlan sits on (the master or its VLAN).
struct LinkTarget {
    subnet: Subnet,
    master: String,
    parent: String,
}

async fn link_target(conf: &NetConf, host: &Netlink, subnet: &Subnet) -> Result<LinkTarget, Error> {
    let master = master_of(conf, subnet);
    let master_field = if conf.master.is_some() {
        "master".to_string()
    } else {
        format!("subnet {} master", subnet.name)
    };
    let master_link = host.find_link(&master).await?.ok_or_else(|| {
        Error::config(
            &master_field,
            &master,
            format!("no such link on node {}", conf.node),
        )
    })?;
    if let Some(mtu) = subnet.mtu {
        if mtu > master_link.mtu {
            return Err(Error::config(
                format!("subnet {} mtu", subnet.name),
                mtu,
                format!(
                    "exceeds mtu {} of {master} on node {}",
                    master_link.mtu, conf.node
                ),
            ));
        }
    }
    let parent = parent_name(&master, subnet)?;
    Ok(LinkTarget {
        subnet: subnet.clone(),
        master,
        parent,
    })
}

/// The MAC request of an attachment in `subnet`: the static one, else one from its pool, else
/// none (the kernel's random MAC); a passthru macvlan always carries its parent's MAC.
fn mac_request(
    wanted: Option<&Requested<MacAddr>>,
    subnet: &Subnet,
    pool: Option<static_macvlan_allocator::MacPool>,
) -> Result<MacRequest, Error> {
    Ok(match (wanted, subnet.mode) {
        (Some(r), netlink::MacvlanMode::Passthru) => {
            return Err(r.error(
                r.value,
                format!(
                    "cannot be set: subnet {} uses macvlan mode passthru",
                    subnet.name
                ),
            ))
        }
        (None, netlink::MacvlanMode::Passthru) => MacRequest::None,
        (Some(r), _) => MacRequest::Static(r.value),
        (None, _) => match pool {
            Some(pool) => MacRequest::Auto(pool),
            None => MacRequest::None,
        },
    })
}

#[allow(clippy::too_many_arguments)]
async fn add_in_subnet(
    a: &Add<'_>,
    plan: &policy::Plan,
    subnet: Subnet,
    pool: Option<static_macvlan_allocator::MacPool>,
    ip_req: IpRequest,
    prev: Option<CniResult>,
    last_subnet: bool,
    early: Option<Early>,
) -> Result<Value, Error> {
    let (alloc, rt) = (a.alloc, a.rt);
    // The early start, when there is one, was made for this very configuration.
    let (target, mut undo, early_claim, early_link) = match early {
        Some(e) => (
            e.target,
            e.undo,
            e.reservation.map(|r| (r, e.ip_req, e.mac_req)),
            e.prepared,
        ),
        None => (
            link_target(a.conf, a.host, &subnet).await?,
            Undo::default(),
            None,
            None,
        ),
    };
    let mac_req = match mac_request(plan.mac.as_ref(), &subnet, pool) {
        Ok(m) => m,
        Err(e) => {
            if let Some(p) = early_link {
                p.link.discard().await;
            }
            a.undo(undo).await;
            return Err(e);
        }
    };
    let sticky = plan.sticky.as_ref().map(|s| StickyHold {
        key: s.key.clone(),
        hold: s.hold,
    });
    let early_claim = match early_claim {
        Some((res, i, m)) if i == ip_req && m == mac_req && sticky.is_none() => Some(res),
        Some((res, ..)) => {
            // Planned otherwise than guessed. The claim holds this attachment: it goes back
            // before the reservation the plan wants.
            tracing::debug!(ip = %res.record.ip, "the early claim does not fit the plan");
            undo.reservation = None;
            if let Err(e) = alloc.release_exact(&res).await {
                tracing::warn!(error = %e, "give back the early claim");
            }
            None
        }
        None => None,
    };
    let reserve = alloc.reserve_sticky(&subnet, a.owner, ip_req, &mac_req, sticky.as_ref());
    let link_at = a.link_at(&target);
    // The link does not need the addresses until it is configured: it is created while etcd
    // answers, and the loser's work is undone when either fails. Not while other subnets are
    // left to try: a full one would cost a link deletion (~20 ms) before the next.
    let (reserved, prepared) = match (early_claim, early_link) {
        (Some(res), Some(p)) => (Ok(res), Ok(p)),
        (Some(res), None) => (Ok(res), prepare_link(&link_at, &mut undo).await),
        (None, Some(p)) => (reserve.await, Ok(p)),
        (None, None) if last_subnet => tokio::join!(reserve, prepare_link(&link_at, &mut undo)),
        (None, None) => match reserve.await {
            Ok(res) => (Ok(res), prepare_link(&link_at, &mut undo).await),
            Err(e) => return Err(e.into()),
        },
    };
    if let Ok(res) = &reserved {
        tracing::debug!(ip = %res.record.ip, state = ?res.record.state, "reserved");
        // A committed reservation found by an idempotent or handed-over ADD is not ours to free.
        undo.reservation = (res.record.state == State::Pending).then(|| res.clone());
    }
    let (res, prepared) = match (reserved, prepared) {
        (Ok(res), Ok(prepared)) => (res, prepared),
        (Err(e), prepared) => {
            if let Ok(p) = prepared {
                // Its VLAN lock goes first: undo takes it to delete an unused VLAN.
                p.link.discard().await;
            }
            a.undo(undo).await;
            return Err(e.into());
        }
        (Ok(_), Err(e)) => {
            a.undo(undo).await;
            return Err(e);
        }
    };
    let setup = finish_link(&link_at, prepared, alloc, &res, &mut undo).await;
    let (link, routes) = match setup {
        Ok(attached) => attached,
        Err(e) => {
            a.undo(undo).await;
            return Err(e);
        }
    };
    tracing::debug!(ip = %res.record.ip, mac = %MacAddr(link.mac), "attached");
    let ours = result_of(
        &subnet,
        res.record.ip,
        &rt.ifname,
        link.mac,
        a.netns_path,
        &routes,
    );
    let result = match prev {
        Some(prev) => CniResult::chain_after(prev, ours),
        None => ours,
    };
    Ok(result.to_json(a.conf.cni_version))
}

/// Where and how an ADD puts the pod's link.
struct LinkAt<'a> {
    host: &'a Netlink,
    pod_ns: &'a Netns,
    target: &'a LinkTarget,
    ifname: &'a str,
    settings: &'a Settings,
}

/// A pod link created but not yet configured, with what its configuration needs.
struct Prepared {
    link: netlink::PendingPodLink,
    routes: Vec<Route>,
    /// Held from making sure the VLAN exists until our macvlan is up on it, so that a DEL on
    /// this node cannot find it unused and delete it in between.
    _vlan_lock: Option<LinkLock>,
}

/// Everything of the pod's link that needs no address: the routes it will get, its VLAN, and
/// the macvlan itself, created down under a temporary name.
async fn prepare_link(at: &LinkAt<'_>, undo: &mut Undo) -> Result<Prepared, Error> {
    let subnet = &at.target.subnet;
    let vlan_lock = if subnet.vlan != 0 {
        let lock = LinkLock::acquire(&at.settings.lock_dir(), &at.target.parent)?;
        let (_, created) = at.host.ensure_vlan(&at.target.master, subnet.vlan).await?;
        if created {
            mark_vlan_ours(at.settings, &at.target.parent);
            undo.vlan = Some(at.target.parent.clone());
        }
        Some(lock)
    } else {
        None
    };
    let mut routes = routes_of(subnet);
    let spec = PodInterface {
        parent: at.target.parent.clone(),
        ifname: at.ifname.to_string(),
        mode: at.target.subnet.mode,
        mac: None,
        mtu: subnet.mtu,
        addresses: Vec::new(),
        routes: routes.clone(),
        dad_timeout: None,
    };
    let link = netlink::create_pod_macvlan(at.host, at.pod_ns, &spec).await?;
    tracing::debug!(index = link.index(), "pod link created");
    // A secondary attachment (Multus) joins a pod that already has a default route through its
    // primary network: replacing it would cut the pod off from the cluster, and adding a second
    // one fails (EEXIST). The subnet's default route is for pods where this is the only network.
    // Asked on the new link's connection to the pod (the link itself is down, without routes).
    if routes.iter().any(|r| r.destination.prefix() == 0) {
        match link
            .netlink()
            .has_default_route(subnet.cidr.is_ipv6())
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                routes.retain(|r| r.destination.prefix() != 0);
                tracing::info!(
                    subnet = %subnet.name,
                    "the pod already has a default route (its primary network); not adding the subnet's"
                );
            }
            Err(e) => {
                link.discard().await;
                return Err(e.into());
            }
        }
    }
    Ok(Prepared {
        link,
        routes,
        _vlan_lock: vlan_lock,
    })
}

/// Gives the prepared link the reservation's MAC and address and brings it up with its routes,
/// committing the reservation meanwhile (the address is on the link by then); then routes the
/// host to it through the shim when the subnet wants one.
async fn finish_link(
    at: &LinkAt<'_>,
    prepared: Prepared,
    alloc: &Allocator,
    res: &Reservation,
    undo: &mut Undo,
) -> Result<(netlink::PodLink, Vec<Route>), Error> {
    let Prepared {
        link,
        routes,
        _vlan_lock: vlan_lock,
    } = prepared;
    let ip = res.record.ip;
    let spec = PodInterface {
        parent: at.target.parent.clone(),
        ifname: at.ifname.to_string(),
        mode: at.target.subnet.mode,
        mac: res.record.mac.map(|m| m.0),
        mtu: at.target.subnet.mtu,
        addresses: vec![
            IpNetwork::new(ip, at.target.subnet.cidr.prefix()).expect("prefix of the subnet fits")
        ],
        routes: routes.clone(),
        dad_timeout: ip.is_ipv6().then_some(DAD_TIMEOUT),
    };
    let (configured, committed) =
        netlink::configure_pod_macvlan_alongside(link, &spec, alloc.commit(res)).await;
    if let (Some(Ok(c)), Some(_)) = (&committed, &undo.reservation) {
        // What a failure from here on gives back is the committed reservation.
        undo.reservation = Some(c.clone());
    }
    let link = configured?;
    tracing::debug!(index = link.index, "pod link up");
    undo.link = true;
    drop(vlan_lock);
    match committed {
        Some(Ok(_)) => tracing::debug!("committed"),
        Some(Err(e)) => return Err(e.into()),
        None => unreachable!("a configured link ran the commit alongside"),
    }

    if at.target.subnet.host_shim {
        let shim = shim_name(&at.target.parent);
        let _lock = LinkLock::acquire(&at.settings.lock_dir(), &shim)?;
        // Recorded first: undo then also deletes a shim this call created but could not route.
        undo.host_route = Some((ip, shim.clone()));
        at.host
            .ensure_host_shim(&at.target.parent, &shim, &[])
            .await?;
        at.host.add_host_route(ip, &shim).await?;
        at.host.pin_host_neighbour(ip, link.mac, &shim).await?;
    }
    Ok((link, routes))
}

async fn del(conf: &NetConf, rt: &RuntimeEnv, settings: &Settings) -> Result<(), Error> {
    let owner = rt.owner(&conf.node, &conf.name)?;
    let Some(netns) = &rt.netns else {
        return release_attachment(conf, &owner, settings).await;
    };
    // The pod's addresses must be gone from the LAN before they are handed out again, and
    // deleting a link blocks the thread that asks for it in the kernel for ~20 ms (an RCU
    // barrier). So this thread first removes the addresses (fast), then starts a thread that
    // reads from etcd and releases, and deletes the links meanwhile. The links come first
    // because DEL waits for their deletion to end, and a new thread takes a while to run here
    // (~0.4 ms to wake an idle CPU) and competes for the CPUs with what comes before the
    // deletion; the release has the whole deletion to finish in.
    //
    // An address that cannot be removed fails DEL with nothing released, and the runtime
    // retries; a link that cannot be deleted fails DEL too (its addresses are gone by then),
    // and the retry deletes it.
    let links = netlink::PodLinks::silence(netns, &rt.ifname)?;
    let (deleted, released) = std::thread::scope(|scope| {
        let etcd = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    op: "start runtime for the release".into(),
                    source,
                })?
                .block_on(release_attachment(conf, &owner, settings))
        });
        let deleted = links.delete();
        let released = etcd.join().unwrap_or_else(|_| {
            Err(Error::Io {
                op: "release the attachment".into(),
                source: io::Error::other("the release thread panicked"),
            })
        });
        (deleted, released)
    });
    released?;
    deleted?;
    Ok(())
}

/// DEL's part in etcd: releases `owner`'s attachment if it still holds it (a stale owner frees
/// nothing), then cleans up on the host.
async fn release_attachment(
    conf: &NetConf,
    owner: &Owner,
    settings: &Settings,
) -> Result<(), Error> {
    let alloc = connect(conf).await?;
    // Without a subnet in the netconf (rules or the vlan annotation chose it), the record names
    // it.
    let (held, subnet) = tokio::join!(alloc.attachment(&owner.pod_uid, &owner.ifname), async {
        match &conf.subnet {
            Some(s) => alloc.get_subnet(s).await.ok(),
            None => None,
        }
    });
    let released = match held? {
        None => Released::NotHeld,
        Some(h) if h.record.owner.container_id != owner.container_id => Released::Stale(h.record),
        Some(h) => {
            if alloc.release_exact(&h).await? {
                Released::Freed(h.record)
            } else {
                // Changed since read (a concurrent ADD of the same pod): decide afresh.
                alloc.release(owner).await?
            }
        }
    };
    let freed_ip = match &released {
        Released::Freed(rec) => {
            tracing::debug!(ip = %rec.ip, "released");
            Some(rec.ip)
        }
        Released::NotHeld => None,
        Released::Stale(rec) => {
            tracing::info!(holder = %rec.owner, "stale DEL: the attachment belongs to a newer container; nothing freed");
            None
        }
    };
    let subnet = match (&released, subnet) {
        (Released::Freed(rec), Some(s)) if s.name == rec.subnet => Some(s),
        (Released::Freed(rec), _) => alloc.get_subnet(&rec.subnet).await.ok(),
        (_, s) => s,
    };
    if let Some(subnet) = subnet {
        host_cleanup(conf, &subnet, freed_ip, settings).await;
    }
    Ok(())
}

/// After an attachment is gone: its host route, an unused shim, an unused VLAN link of ours.
/// Best effort: none of these affect other pods when left behind.
async fn host_cleanup(
    conf: &NetConf,
    subnet: &Subnet,
    freed_ip: Option<IpAddr>,
    settings: &Settings,
) {
    let master = master_of(conf, subnet);
    let Ok(parent) = parent_name(&master, subnet) else {
        return;
    };
    if !subnet.host_shim && subnet.vlan == 0 {
        return;
    }
    let host = match Netlink::open() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "host clean-up");
            return;
        }
    };
    if let (true, Some(ip)) = (subnet.host_shim, freed_ip) {
        let shim = shim_name(&parent);
        match LinkLock::acquire(&settings.lock_dir(), &shim) {
            Ok(_lock) => {
                if let Err(e) = host.del_host_route(ip, &shim).await {
                    tracing::warn!(error = %e, "remove host route");
                }
                if let Err(e) = host.delete_shim_if_unused(&shim).await {
                    tracing::warn!(error = %e, "delete unused shim");
                }
            }
            Err(e) => tracing::warn!(error = %e, "lock shim"),
        }
    }
    if subnet.vlan != 0 {
        delete_vlan_if_ours(&host, &parent, settings).await;
    }
}

async fn check(conf: &NetConf, rt: &RuntimeEnv) -> Result<(), Error> {
    if !conf.cni_version.has_check() {
        return Err(Error::Version {
            version: conf.cni_version.to_string(),
            supported: "0.4.0 and later for CHECK".into(),
        });
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::config("prevResult", "null", "is required for CHECK"))?;
    let prev = CniResult::from_json(prev)?;
    let owner = rt.owner(&conf.node, &conf.name)?;
    let netns_path = rt.netns.as_deref().expect("CHECK requires CNI_NETNS");
    let pod_ns = match Netns::open(netns_path) {
        Ok(ns) => ns,
        Err(NetError::Netns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(Error::ContainerUnknown(format!(
                "network namespace {} does not exist",
                netns_path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let sandbox = netns_path.display().to_string();
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == rt.ifname && (i.sandbox.is_empty() || i.sandbox == sandbox))
        .ok_or_else(|| {
            Error::Check(format!(
                "prevResult has no interface {} in sandbox {sandbox}",
                rt.ifname
            ))
        })?;
    let want = &prev.interfaces[idx];

    let pod = Netlink::open_in(&pod_ns)?;
    let link = pod
        .find_link(&rt.ifname)
        .await?
        .ok_or_else(|| Error::Check(format!("interface {} not found in {sandbox}", rt.ifname)))?;
    if link.kind.as_deref() != Some("macvlan") {
        return Err(Error::Check(format!(
            "interface {} is a {} link, not a macvlan",
            rt.ifname,
            link.kind.as_deref().unwrap_or("physical")
        )));
    }
    if !link.up {
        return Err(Error::Check(format!("interface {} is down", rt.ifname)));
    }
    let mac = link.mac.map(MacAddr);
    if !want.mac.is_empty() {
        let wanted: MacAddr = want.mac.parse().map_err(|_| {
            Error::config(
                format!("prevResult.interfaces[{idx}].mac"),
                &want.mac,
                "is not a MAC address",
            )
        })?;
        if mac != Some(wanted) {
            return Err(Error::Check(format!(
                "interface {} has mac {}, prevResult says {wanted}",
                rt.ifname,
                mac.map(|m| m.to_string()).unwrap_or_default()
            )));
        }
    }
    let have = pod.addresses(link.index).await?;
    let ours: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .collect();
    for ip in &ours {
        if !have.contains(&ip.address) {
            return Err(Error::Check(format!(
                "interface {} lacks address {} of prevResult",
                rt.ifname, ip.address
            )));
        }
    }
    // Routes of a result are not tied to an interface: ours are those via a gateway in one of
    // our networks, and gateway-less ones when ours is the only interface.
    let routes = pod.routes(link.index).await?;
    for r in &prev.routes {
        let mine = match r.gw {
            Some(gw) => ours.iter().any(|ip| ip.address.contains(gw)),
            None => prev.interfaces.len() == 1,
        };
        if mine
            && !routes
                .iter()
                .any(|have| have.destination == r.dst && (r.gw.is_none() || have.gateway == r.gw))
        {
            return Err(Error::Check(format!(
                "interface {} lacks route {}{} of prevResult",
                rt.ifname,
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }

    let alloc = connect(conf).await?;
    let res = alloc
        .attachment(&owner.pod_uid, &owner.ifname)
        .await?
        .ok_or_else(|| Error::Check(format!("no reservation in etcd for {owner}")))?;
    let rec = &res.record;
    if rec.owner.container_id != owner.container_id {
        return Err(Error::Check(format!(
            "the reservation of {} is held by {}",
            rt.ifname, rec.owner
        )));
    }
    if rec.state != State::Committed {
        return Err(Error::Check(format!(
            "the reservation of ip {} is still pending",
            rec.ip
        )));
    }
    if !ours.iter().any(|ip| ip.address.ip() == rec.ip) {
        return Err(Error::Check(format!(
            "etcd reserves ip {} for {}, which prevResult does not list",
            rec.ip, rt.ifname
        )));
    }
    if !have.iter().any(|a| a.ip() == rec.ip) {
        return Err(Error::Check(format!(
            "interface {} lacks reserved ip {}",
            rt.ifname, rec.ip
        )));
    }
    if let Some(m) = rec.mac {
        if mac != Some(m) {
            return Err(Error::Check(format!(
                "interface {} does not have reserved mac {m}",
                rt.ifname
            )));
        }
    }
    Ok(())
}

async fn gc(conf: &NetConf, settings: &Settings) -> Result<(), Error> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| Error::config("cni.dev/valid-attachments", "null", "is required for GC"))?;
    let keep: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let alloc = connect(conf).await?;
    let held = alloc.by_node(&conf.node).await?;
    // The subnets of released reservations, for the host clean-up (one network's attachments
    // may be in several subnets when rules or annotations choose them).
    let mut subnets: std::collections::HashMap<String, Option<Subnet>> = Default::default();
    let mut first_error = None;
    let mut freed = 0usize;
    for res in held {
        let o: &Owner = &res.record.owner;
        // Pending reservations belong to ADDs in flight; their leases clean up after dead ones.
        // Only this network's attachments; records without a network name (written before it
        // was recorded) fall back to the subnet.
        let other_network = if o.network.is_empty() {
            conf.subnet.as_deref() != Some(res.record.subnet.as_str())
        } else {
            o.network != conf.name
        };
        if other_network
            || res.record.state != State::Committed
            || keep.contains(&(o.container_id.as_str(), o.ifname.as_str()))
        {
            continue;
        }
        match alloc.release_exact(&res).await {
            Ok(true) => {
                freed += 1;
                tracing::info!(ip = %res.record.ip, owner = %o, "gc: released");
                let name = &res.record.subnet;
                if !subnets.contains_key(name) {
                    let s = alloc.get_subnet(name).await.ok();
                    subnets.insert(name.clone(), s);
                }
                if let Some(Some(subnet)) = subnets.get(name) {
                    host_cleanup(conf, subnet, Some(res.record.ip), settings).await;
                }
            }
            Ok(false) => tracing::debug!(owner = %o, "gc: changed meanwhile, kept"),
            Err(e) => {
                tracing::warn!(error = %e, owner = %o, "gc: release");
                first_error.get_or_insert(e);
            }
        }
    }
    tracing::debug!(freed, "gc done");
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn status(conf: &NetConf) -> Result<(), Error> {
    let cap = |v: Option<u64>, max: u64| Some(v.unwrap_or(max).min(max));
    let etcd = EtcdConfig {
        dial_timeout_ms: cap(conf.etcd.dial_timeout_ms, STATUS_DIAL_TIMEOUT_MS),
        request_timeout_ms: cap(conf.etcd.request_timeout_ms, STATUS_REQUEST_TIMEOUT_MS),
        ..conf.etcd.clone()
    };
    let not_available = |e: static_macvlan_allocator::Error| match e {
        e @ static_macvlan_allocator::Error::Invalid { .. } => Error::Alloc(e),
        e => Error::NotAvailable(e),
    };
    let alloc = Allocator::connect(&etcd, Options::default())
        .await
        .map_err(not_available)?;
    alloc.check_schema().await.map_err(not_available)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_names_fit() {
        assert_eq!(shim_name("eth0"), "smv-eth0");
        assert_eq!(shim_name("eth0.100"), "smv-eth0.100");
        let long = shim_name("enp0s31f6.100");
        assert!(long.len() <= 15 && long.starts_with("smvh"), "{long}");
        assert_eq!(long, shim_name("enp0s31f6.100"));
        assert_ne!(long, shim_name("enp0s31f6.101"));
    }

    fn subnet(edit: impl FnOnce(&mut static_macvlan_allocator::SubnetConfig)) -> Subnet {
        let mut c = static_macvlan_allocator::SubnetConfig {
            master: "eth0".into(),
            cidr: "10.1.0.0/24".into(),
            gateway: Some("10.1.0.1".into()),
            ..Default::default()
        };
        edit(&mut c);
        Subnet::from_config("lan", &c).unwrap()
    }

    fn request(runtime_config: serde_json::Value, cni_args: &str) -> Result<IpRequest, Error> {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "static-macvlan", "subnet": "lan",
            "nodeName": "a", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "runtimeConfig": runtime_config,
        });
        let conf = conf::parse_netconf(conf.to_string().as_bytes(), &EnvMap::new()).unwrap();
        let env: EnvMap = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "net1"),
            ("CNI_ARGS", cni_args),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let rt = RuntimeEnv::from_env(Command::Add, &env).unwrap();
        ip_request(conf.static_ips(&rt.args), &subnet(|_| {}))
    }

    #[test]
    fn static_ip_requests() {
        use serde_json::json;
        let ip = |s: &str| IpRequest::Static(s.parse().unwrap());
        assert_eq!(request(json!({}), "").unwrap(), IpRequest::Auto);
        assert_eq!(
            request(json!({"ips": ["10.1.0.5"]}), "").unwrap(),
            ip("10.1.0.5")
        );
        assert_eq!(
            request(json!({"ips": ["10.1.0.5/24"]}), "").unwrap(),
            ip("10.1.0.5")
        );
        // The first address of the subnet's family.
        assert_eq!(
            request(json!({"ips": ["fd00::5/64", "10.1.0.6/24"]}), "").unwrap(),
            ip("10.1.0.6")
        );
        // runtimeConfig wins over CNI_ARGS.
        assert_eq!(
            request(json!({"ips": ["10.1.0.7"]}), "IP=10.1.0.8").unwrap(),
            ip("10.1.0.7")
        );
        assert_eq!(
            request(json!({}), "IP=10.1.0.8/24").unwrap(),
            ip("10.1.0.8")
        );

        let err = request(json!({"ips": ["10.1.0.5/16"]}), "").unwrap_err();
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("runtimeConfig.ips[0]"), "{err}");
        let err = request(json!({"ips": ["fd00::5"]}), "").unwrap_err();
        assert!(err.to_string().contains("runtimeConfig.ips "), "{err}");
        let err = request(json!({}), "IP=fd00::5").unwrap_err();
        assert_eq!(err.code(), 4, "{err}");
    }

    #[test]
    fn routes_and_result() {
        let s = subnet(|c| {
            c.routes = vec![
                static_macvlan_allocator::RouteConfig {
                    dst: "192.168.0.0/16".into(),
                    gw: None,
                },
                static_macvlan_allocator::RouteConfig {
                    dst: "172.16.0.0/12".into(),
                    gw: Some("10.1.0.2".into()),
                },
            ]
        });
        let routes = routes_of(&s);
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0], Route::default_via("10.1.0.1".parse().unwrap()));
        assert_eq!(
            routes[1].gateway,
            Some("10.1.0.1".parse().unwrap()),
            "gw defaults to the gateway"
        );
        assert_eq!(routes[2].gateway, Some("10.1.0.2".parse().unwrap()));
        let no_default = subnet(|c| c.no_default_route = true);
        assert!(routes_of(&no_default).is_empty());
        let no_gw = subnet(|c| c.gateway = None);
        assert!(routes_of(&no_gw).is_empty());

        let r = result_of(
            &s,
            "10.1.0.9".parse().unwrap(),
            "net1",
            [2, 0, 0, 0, 0, 9],
            Path::new("/ns"),
            &routes_of(&s),
        );
        let j = r.to_json(CniVersion::V100);
        assert_eq!(j["ips"][0]["address"], "10.1.0.9/24");
        assert_eq!(j["interfaces"][0]["mac"], "02:00:00:00:00:09");
        assert_eq!(j["routes"][1]["dst"], "192.168.0.0/16");
    }
}
