//! Input parsing at the edge: the `CNI_*` environment, `CNI_ARGS`, the netconf on stdin and the
//! node-local layers under it. Everything is turned into validated types here, once; the rest of
//! the plugin never sees a raw string where an address, a MAC or a name is meant.
//!
//! Errors name what is wrong: `CNI_IFNAME`, `CNI_ARGS K8S_POD_NAME`, `runtimeConfig.ips[1]`,
//! `etcd.endpoints[0]`, with the value. Codes: 4 for the environment, 6 for JSON that does not
//! decode, 7 for a field of the wrong type or value, 1 for an unsupported `cniVersion`.
//!
//! Configuration layers, lowest first (each later one overrides the earlier ones field by field):
//! 1. defaults (prefix `/static-macvlan`, pendingTTL 60 s, timeouts of the allocator);
//! 2. the node-local etcd file: netconf `etcdConfigFile`, else `$STATIC_MACVLAN_ETCD_CONFIG`,
//!    else [`DEFAULT_ETCD_CONFIG_FILE`] when it exists (written by the installer DaemonSet);
//! 3. the environment: `STATIC_MACVLAN_ETCD_ENDPOINTS` (comma-separated),
//!    `STATIC_MACVLAN_PREFIX` (or `STATIC_MACVLAN_ETCD_PREFIX`), `STATIC_MACVLAN_NODE`;
//! 4. the netconf itself (`etcd`, `nodeName`, `master`, `pendingTTL`).
//!
//! The `config` crate is not used for this: it folds keys to lowercase (our files are camelCase:
//! `caFile`) and its errors cannot name the netconf field the way CNI users need; the four layers
//! above are a few dozen lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use static_macvlan_allocator::keys::check_segment;
use static_macvlan_allocator::model::check_ifname;
use static_macvlan_allocator::{EtcdConfig, MacAddr, Owner};

use crate::errors::Error;
use crate::types::CniVersion;

/// Where the installer DaemonSet writes the node-local etcd client settings. A directory below
/// `/etc/cni/net.d` because runtimes read every `*.json` file directly in that directory as a
/// network configuration.
pub const DEFAULT_ETCD_CONFIG_FILE: &str = "/etc/cni/net.d/static-macvlan.d/etcd.json";

/// Default life of a pending reservation.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(60);

/// Default of `podMirrorWaitSeconds`: how long ADD waits for a pod mirror it needs.
pub const DEFAULT_POD_MIRROR_WAIT: Duration = Duration::from_secs(2);

/// Largest `podMirrorWaitSeconds`.
pub const MAX_POD_MIRROR_WAIT_SECONDS: u64 = 60;

/// Namespace recorded for attachments without `K8S_POD_NAMESPACE` (non-Kubernetes runtimes). Not
/// a valid Kubernetes namespace name, so it can never be mistaken for a real one.
pub const NO_NAMESPACE: &str = "-";

/// Environment variables, captured once (a map, so tests need not touch the process env).
pub type EnvMap = HashMap<String, String>;

/// The process environment as an [`EnvMap`].
pub fn process_env() -> EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Reads `CNI_COMMAND`.
    ///
    /// # Errors
    /// [`Error::Env`] when it is missing or not a CNI command.
    pub fn from_env(env: &EnvMap) -> Result<Command, Error> {
        let raw = env
            .get("CNI_COMMAND")
            .ok_or_else(|| Error::env("CNI_COMMAND", "", "is not set"))?;
        Ok(match raw.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(Error::env(
                    "CNI_COMMAND",
                    other,
                    "must be one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                ))
            }
        })
    }
}

/// A static request and where it came from, so that an error can name the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested<T> {
    pub value: T,
    /// `runtimeConfig.ips[0]`, `args.cni.mac`, `CNI_ARGS IP`…
    pub field: String,
    /// From the environment (`CNI_ARGS`) rather than the netconf: errors are then code 4.
    pub from_env: bool,
}

impl<T> Requested<T> {
    /// An error about this request: code 4 when it came from `CNI_ARGS`, 7 otherwise.
    pub fn error(&self, value: impl ToString, reason: impl Into<String>) -> Error {
        if self.from_env {
            Error::env(&self.field, value.to_string(), reason)
        } else {
            Error::config(&self.field, value.to_string(), reason)
        }
    }
}

/// A requested address: the IP and, when written as a CIDR, its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpWanted {
    pub ip: IpAddr,
    pub prefix: Option<u8>,
}

impl std::fmt::Display for IpWanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// Parses `10.1.2.3` or `10.1.2.3/24`.
pub(crate) fn parse_ip_wanted(s: &str) -> Option<IpWanted> {
    match s.split_once('/') {
        None => Some(IpWanted {
            ip: s.parse().ok()?,
            prefix: None,
        }),
        Some((ip, prefix)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (prefix <= max).then_some(IpWanted {
                ip,
                prefix: Some(prefix),
            })
        }
    }
}

/// The parsed `CNI_ARGS` (`K=V;K=V`). Unknown keys are ignored whether or not
/// `IgnoreUnknown=1` is given: kubelet, Multus and CRI-O all add keys of their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub ips: Vec<Requested<IpWanted>>,
    pub mac: Option<Requested<MacAddr>>,
}

impl CniArgs {
    /// Parses `CNI_ARGS`.
    ///
    /// # Errors
    /// [`Error::Env`] naming `CNI_ARGS` (a pair without `=`) or `CNI_ARGS <KEY>` (a bad value).
    pub fn parse(raw: &str) -> Result<CniArgs, Error> {
        let mut args = CniArgs::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::env("CNI_ARGS", raw, format!("{pair:?} is not KEY=VALUE")))?;
            let var = |k: &str| format!("CNI_ARGS {k}");
            match k {
                "K8S_POD_NAMESPACE" if !v.is_empty() => args.pod_namespace = Some(v.into()),
                "K8S_POD_NAME" if !v.is_empty() => args.pod_name = Some(v.into()),
                "K8S_POD_UID" if !v.is_empty() => args.pod_uid = Some(v.into()),
                "IP" if !v.is_empty() => {
                    // The reference plugins accept a comma-separated list.
                    for (i, s) in v.split(',').enumerate() {
                        let wanted = parse_ip_wanted(s.trim()).ok_or_else(|| {
                            Error::env(
                                var("IP"),
                                v,
                                format!("item {i} {s:?} is not an IP address or CIDR"),
                            )
                        })?;
                        args.ips.push(Requested {
                            value: wanted,
                            field: var("IP"),
                            from_env: true,
                        });
                    }
                }
                "MAC" if !v.is_empty() => {
                    let mac = parse_mac(v).map_err(|reason| Error::env(var("MAC"), v, reason))?;
                    args.mac = Some(Requested {
                        value: mac,
                        field: var("MAC"),
                        from_env: true,
                    });
                }
                "IgnoreUnknown"
                    if !matches!(
                        v.to_ascii_lowercase().as_str(),
                        "1" | "true" | "0" | "false"
                    ) =>
                {
                    return Err(Error::env(
                        var("IgnoreUnknown"),
                        v,
                        "must be 1, true, 0 or false",
                    ));
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

/// Parses a unicast MAC address for an interface.
pub(crate) fn parse_mac(s: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = s
        .parse()
        .map_err(|e: static_macvlan_allocator::addr::MacParseError| e.to_string())?;
    if mac.is_zero() || mac.is_multicast() {
        return Err("is not a unicast address".into());
    }
    Ok(mac)
}

/// The runtime's `CNI_*` variables for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEnv {
    pub container_id: String,
    /// `CNI_NETNS`; may be absent for DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
}

impl RuntimeEnv {
    /// Reads what `command` needs: ADD and CHECK need all of `CNI_CONTAINERID`, `CNI_NETNS`,
    /// `CNI_IFNAME`; DEL may come without `CNI_NETNS` (the namespace is already gone).
    ///
    /// # Errors
    /// [`Error::Env`] naming the variable.
    pub fn from_env(command: Command, env: &EnvMap) -> Result<RuntimeEnv, Error> {
        let get = |var: &str| env.get(var).filter(|v| !v.is_empty());
        let require = |var: &str| get(var).ok_or_else(|| Error::env(var, "", "is not set"));
        let container_id = require("CNI_CONTAINERID")?.clone();
        // The spec's rule for container IDs: alphanumerics first, then also '_', '.', '-'.
        let valid_id = container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_id || container_id.len() > 253 {
            return Err(Error::env(
                "CNI_CONTAINERID",
                &container_id,
                "must start with a letter or digit and contain only letters, digits, '_', '.', '-'",
            ));
        }
        let ifname = require("CNI_IFNAME")?.clone();
        check_ifname("CNI_IFNAME", &ifname)
            .map_err(|e| Error::env("CNI_IFNAME", &ifname, reason_of(e)))?;
        let netns = match command {
            Command::Del => get("CNI_NETNS").map(PathBuf::from),
            _ => Some(PathBuf::from(require("CNI_NETNS")?)),
        };
        if let Some(ns) = &netns {
            if !ns.is_absolute() {
                return Err(Error::env(
                    "CNI_NETNS",
                    ns.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        let args = CniArgs::parse(get("CNI_ARGS").map(String::as_str).unwrap_or(""))?;
        Ok(RuntimeEnv {
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// Who this attachment belongs to. Without `K8S_POD_UID` (a runtime other than Kubernetes),
    /// the pod UID is `cid-<containerId>`, the namespace [`NO_NAMESPACE`] and the pod name
    /// `K8S_POD_NAME` or else the container ID: every sandbox is then its own attachment.
    ///
    /// # Errors
    /// [`Error::Env`] naming the `CNI_ARGS` key whose value cannot be stored.
    pub fn owner(&self, node: &str, network: &str) -> Result<Owner, Error> {
        let owner = Owner {
            pod_uid: self
                .args
                .pod_uid
                .clone()
                .unwrap_or_else(|| format!("cid-{}", self.container_id)),
            namespace: self
                .args
                .pod_namespace
                .clone()
                .unwrap_or_else(|| NO_NAMESPACE.into()),
            pod: self
                .args
                .pod_name
                .clone()
                .unwrap_or_else(|| self.container_id.clone()),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            node: node.to_string(),
            network: network.to_string(),
        };
        owner.validate().map_err(|e| match e {
            static_macvlan_allocator::Error::Invalid {
                field,
                value,
                reason,
            } => {
                let var = match field.as_str() {
                    "owner.podUid" => "CNI_ARGS K8S_POD_UID",
                    "owner.namespace" => "CNI_ARGS K8S_POD_NAMESPACE",
                    "owner.pod" => "CNI_ARGS K8S_POD_NAME",
                    "owner.containerId" => "CNI_CONTAINERID",
                    "owner.ifname" => "CNI_IFNAME",
                    _ => "STATIC_MACVLAN_NODE",
                };
                Error::env(var, value, reason)
            }
            other => Error::Alloc(other),
        })?;
        Ok(owner)
    }
}

fn reason_of(e: static_macvlan_allocator::Error) -> String {
    match e {
        static_macvlan_allocator::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The validated netconf, with the node-local layers applied.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The network name (`name`).
    pub name: String,
    /// The subnet to attach to, as mirrored into etcd; `None`: the pod's `vlan` annotation or
    /// the AllocationRules choose.
    pub subnet: Option<String>,
    /// `podMirrorWaitSeconds`: how long ADD waits for a pod mirror it needs (0: never waits).
    pub pod_mirror_wait: Duration,
    /// `rules`: evaluate the AllocationRules mirrored into etcd (default true).
    pub rules: bool,
    /// `podAnnotations`: honour the pod's `static-ip`, `static-mac` and `vlan` annotations from
    /// the pod mirror (default true).
    pub pod_annotations: bool,
    pub etcd: EtcdConfig,
    /// Node-local override of the subnet's `master`.
    pub master: Option<String>,
    pub pending_ttl: Duration,
    pub node: String,
    /// Static IP requests, highest-priority source only (runtimeConfig > args.cni > CNI_ARGS is
    /// applied by [`NetConf::static_ips`]).
    pub runtime_ips: Vec<Requested<IpWanted>>,
    pub runtime_mac: Option<Requested<MacAddr>>,
    pub args_ips: Vec<Requested<IpWanted>>,
    pub args_mac: Option<Requested<MacAddr>>,
    /// `prevResult` as given (chains, CHECK).
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` (or `cni.dev/attachments`); `None` when absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// The static IP requests in force: `runtimeConfig.ips`, else `args.cni.ips`, else
    /// `CNI_ARGS IP` (the order the reference plugins apply).
    pub fn static_ips<'a>(&'a self, args: &'a CniArgs) -> &'a [Requested<IpWanted>] {
        if !self.runtime_ips.is_empty() {
            &self.runtime_ips
        } else if !self.args_ips.is_empty() {
            &self.args_ips
        } else {
            &args.ips
        }
    }

    /// The static MAC request in force, in the same order of precedence.
    pub fn static_mac<'a>(&'a self, args: &'a CniArgs) -> Option<&'a Requested<MacAddr>> {
        self.runtime_mac
            .as_ref()
            .or(self.args_mac.as_ref())
            .or(args.mac.as_ref())
    }
}

/// Typed access to a JSON object, naming fields as `<scope>.<key>`.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    scope: String,
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>) -> Self {
        Obj {
            map,
            scope: String::new(),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.scope.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.scope)
        }
    }

    /// The value of `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Error::config(self.field(key), other, "must be a string")),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'a str, Error> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(s) => Err(Error::config(
                self.field(key),
                Value::from(s),
                "must not be empty",
            )),
            None => Err(Error::config(self.field(key), "null", "is required")),
        }
    }

    fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                map,
                scope: self.field(key),
            })),
            Some(other) => Err(Error::config(self.field(key), other, "must be an object")),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(Error::config(self.field(key), other, "must be an array")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Error::config(
                self.field(key),
                other,
                "must be true or false",
            )),
        }
    }

    fn int_up_to(&self, key: &str, max: u64) -> Result<Option<u64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(Error::config(
                    self.field(key),
                    v,
                    format!("must be an integer from 0 to {max}"),
                )),
            },
        }
    }

    fn positive_int(&self, key: &str, max: u64) -> Result<Option<u64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(Error::config(
                    self.field(key),
                    v,
                    format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    }
}

/// Parses the netconf on stdin and applies the node-local layers.
///
/// # Errors
/// [`Error::Decode`] (6) when stdin is not a JSON object; [`Error::Version`] (1) for an
/// unsupported `cniVersion`; [`Error::Config`] (7) naming the first bad field.
pub fn parse_netconf(stdin: &[u8], env: &EnvMap) -> Result<NetConf, Error> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| Error::Decode {
        what: "network configuration on stdin".into(),
        reason: e.to_string(),
    })?;
    let Value::Object(map) = &value else {
        return Err(Error::Decode {
            what: "network configuration on stdin".into(),
            reason: format!("expected a JSON object, found {}", json_kind(&value)),
        });
    };
    let root = Obj::root(map);
    let cni_version: CniVersion = root.required_str("cniVersion")?.parse()?;
    let name = root.required_str("name")?.to_string();
    root.str("type")?;
    let subnet = match root.str("subnet")? {
        None => None,
        Some(s) => {
            check_segment("subnet", s)
                .map_err(|e| Error::config("subnet", Value::from(s), reason_of(e)))?;
            Some(s.to_string())
        }
    };
    let pod_mirror_wait = root
        .int_up_to("podMirrorWaitSeconds", MAX_POD_MIRROR_WAIT_SECONDS)?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_POD_MIRROR_WAIT);
    let rules = root.bool("rules")?.unwrap_or(true);
    let pod_annotations = root.bool("podAnnotations")?.unwrap_or(true);

    let master = root.str("master")?.map(str::to_string);
    if let Some(m) = &master {
        check_ifname("master", m)
            .map_err(|e| Error::config("master", Value::from(m.as_str()), reason_of(e)))?;
    }
    let pending_ttl = root
        .positive_int("pendingTTL", 3600)?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_PENDING_TTL);

    let node = match root.str("nodeName")? {
        Some(n) => {
            check_segment("nodeName", n)
                .map_err(|e| Error::config("nodeName", Value::from(n), reason_of(e)))?;
            n.to_string()
        }
        None => node_from_env(env)?,
    };

    let etcd = etcd_config(&root, env)?;

    let (mut runtime_ips, mut runtime_mac) = (Vec::new(), None);
    if let Some(rc) = root.obj("runtimeConfig")? {
        runtime_ips = ip_list(&rc, "ips")?;
        runtime_mac = mac_field(&rc, "mac")?;
    }
    let (mut args_ips, mut args_mac) = (Vec::new(), None);
    if let Some(cni) = root
        .obj("args")?
        .map(|a| a.obj("cni"))
        .transpose()?
        .flatten()
    {
        args_ips = ip_list(&cni, "ips")?;
        args_mac = mac_field(&cni, "mac")?;
    }

    let prev_result = match root.get("prevResult") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => return Err(Error::config("prevResult", other, "must be an object")),
    };

    let key = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find(|k| root.get(k).is_some());
    let valid_attachments = match key {
        None => None,
        Some(key) => {
            let list = root.array(key)?.expect("present");
            let mut out = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let field = format!("{key}[{i}]");
                let Value::Object(m) = item else {
                    return Err(Error::config(field, item, "must be an object"));
                };
                let o = Obj {
                    map: m,
                    scope: field,
                };
                out.push(Attachment {
                    container_id: o.required_str("containerID")?.to_string(),
                    ifname: o.required_str("ifname")?.to_string(),
                });
            }
            Some(out)
        }
    };

    Ok(NetConf {
        cni_version,
        name,
        subnet,
        pod_mirror_wait,
        rules,
        pod_annotations,
        etcd,
        master,
        pending_ttl,
        node,
        runtime_ips,
        runtime_mac,
        args_ips,
        args_mac,
        prev_result,
        valid_attachments,
    })
}

/// Only `cniVersion` of stdin, for VERSION and for the version of an error result; `None` when
/// stdin has none that we speak.
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str()?.parse().ok()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn ip_list(o: &Obj<'_>, key: &str) -> Result<Vec<Requested<IpWanted>>, Error> {
    let Some(list) = o.array(key)? else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = o.field(&format!("{key}[{i}]"));
            let wanted = v
                .as_str()
                .and_then(|s| parse_ip_wanted(s.trim()))
                .ok_or_else(|| {
                    Error::config(
                        &field,
                        v,
                        "must be an IP address or CIDR (e.g. 10.1.2.3/24)",
                    )
                })?;
            Ok(Requested {
                value: wanted,
                field,
                from_env: false,
            })
        })
        .collect()
}

fn mac_field(o: &Obj<'_>, key: &str) -> Result<Option<Requested<MacAddr>>, Error> {
    let Some(s) = o.str(key)? else {
        return Ok(None);
    };
    if s.is_empty() {
        return Ok(None);
    }
    let mac = parse_mac(s).map_err(|reason| Error::config(o.field(key), Value::from(s), reason))?;
    Ok(Some(Requested {
        value: mac,
        field: o.field(key),
        from_env: false,
    }))
}

/// The node name when the netconf has none: `$STATIC_MACVLAN_NODE`, else the hostname.
fn node_from_env(env: &EnvMap) -> Result<String, Error> {
    if let Some(n) = env.get("STATIC_MACVLAN_NODE").filter(|n| !n.is_empty()) {
        check_segment("STATIC_MACVLAN_NODE", n)
            .map_err(|e| Error::env("STATIC_MACVLAN_NODE", n, reason_of(e)))?;
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|source| Error::Io {
            op: "read hostname from /proc/sys/kernel/hostname".into(),
            source,
        })?;
    check_segment("hostname", &host).map_err(|e| {
        Error::env(
            "STATIC_MACVLAN_NODE",
            &host,
            format!(
                "is unset and the hostname is unusable as node name: {}",
                reason_of(e)
            ),
        )
    })?;
    Ok(host)
}

/// Where one field of the etcd settings came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Netconf,
    Env(&'static str),
    File(PathBuf),
}

impl Origin {
    fn note(&self) -> String {
        match self {
            Origin::Netconf => String::new(),
            Origin::Env(var) => format!(" (from ${var})"),
            Origin::File(p) => format!(" (from {})", p.display()),
        }
    }
}

/// Builds the etcd settings from the file, environment and netconf layers, and validates them.
fn etcd_config(root: &Obj<'_>, env: &EnvMap) -> Result<EtcdConfig, Error> {
    let mut merged: Map<String, Value> = Map::new();
    let mut origin: HashMap<String, Origin> = HashMap::new();

    // Layer 2: the node-local file.
    let file_field = root.str("etcdConfigFile")?;
    let file = match (
        file_field,
        env.get("STATIC_MACVLAN_ETCD_CONFIG")
            .filter(|p| !p.is_empty()),
    ) {
        (Some(p), _) => Some((PathBuf::from(p), "etcdConfigFile".to_string(), true)),
        (None, Some(p)) => Some((
            PathBuf::from(p),
            "STATIC_MACVLAN_ETCD_CONFIG".to_string(),
            true,
        )),
        (None, None) => Path::new(DEFAULT_ETCD_CONFIG_FILE).exists().then(|| {
            (
                PathBuf::from(DEFAULT_ETCD_CONFIG_FILE),
                "etcdConfigFile".to_string(),
                false,
            )
        }),
    };
    if let Some((path, field, _explicit)) = &file {
        let text = std::fs::read(path).map_err(|e| {
            let value = Value::from(path.display().to_string());
            if field.starts_with("STATIC_") {
                Error::env(
                    field,
                    path.display().to_string(),
                    format!("cannot be read: {e}"),
                )
            } else {
                Error::config(field, value, format!("cannot be read: {e}"))
            }
        })?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| Error::Decode {
            what: format!("etcd settings file {}", path.display()),
            reason: e.to_string(),
        })?;
        let Value::Object(m) = v else {
            return Err(Error::Decode {
                what: format!("etcd settings file {}", path.display()),
                reason: format!("expected a JSON object, found {}", json_kind(&v)),
            });
        };
        for (k, v) in m {
            origin.insert(k.clone(), Origin::File(path.clone()));
            merged.insert(k, v);
        }
    }

    // Layer 3: the environment.
    if let Some(eps) = env
        .get("STATIC_MACVLAN_ETCD_ENDPOINTS")
        .filter(|e| !e.is_empty())
    {
        let list: Vec<Value> = eps
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Value::from)
            .collect();
        merged.insert("endpoints".into(), list.into());
        origin.insert(
            "endpoints".into(),
            Origin::Env("STATIC_MACVLAN_ETCD_ENDPOINTS"),
        );
    }
    // STATIC_MACVLAN_PREFIX is the name the operator and the installer use; the plugin's older
    // STATIC_MACVLAN_ETCD_PREFIX still works and wins when both are set.
    for name in ["STATIC_MACVLAN_PREFIX", "STATIC_MACVLAN_ETCD_PREFIX"] {
        if let Some(p) = env.get(name).filter(|p| !p.is_empty()) {
            merged.insert("prefix".into(), p.clone().into());
            origin.insert("prefix".into(), Origin::Env(name));
        }
    }

    // Layer 4: the netconf.
    if let Some(inline) = root.obj("etcd")? {
        for (k, v) in inline.map {
            origin.insert(k.clone(), Origin::Netconf);
            merged.insert(k.clone(), v.clone());
        }
    }

    if merged.is_empty() {
        return Err(Error::config(
            "etcd",
            "null",
            format!(
                "is required: give it in the netconf, name a file with etcdConfigFile, or \
                 install {DEFAULT_ETCD_CONFIG_FILE}"
            ),
        ));
    }

    let note = |k: &str| origin.get(k).map(Origin::note).unwrap_or_default();
    let o = Obj {
        map: &merged,
        scope: "etcd".into(),
    };
    let with_note = |k: &str, e: Error| match e {
        Error::Config {
            field,
            value,
            reason,
        } => Error::Config {
            field,
            value,
            reason: format!("{reason}{}", note(k)),
        },
        other => other,
    };
    let endpoints = match o
        .array("endpoints")
        .map_err(|e| with_note("endpoints", e))?
    {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    with_note(
                        "endpoints",
                        Error::config(format!("etcd.endpoints[{i}]"), v, "must be a string"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            return Err(Error::config(
                "etcd.endpoints",
                "null",
                "is required (e.g. [\"https://10.0.0.1:2379\"])",
            ))
        }
    };
    let s = |k: &str| o.str(k).map_err(|e| with_note(k, e));
    let mut cfg = EtcdConfig::new(endpoints);
    if let Some(p) = s("prefix")? {
        cfg.prefix = p.to_string();
    }
    cfg.ca_file = s("caFile")?.map(PathBuf::from);
    cfg.cert_file = s("certFile")?.map(PathBuf::from);
    cfg.key_file = s("keyFile")?.map(PathBuf::from);
    let ms = |k: &str| o.positive_int(k, 600_000).map_err(|e| with_note(k, e));
    cfg.dial_timeout_ms = ms("dialTimeoutMs")?;
    cfg.request_timeout_ms = ms("requestTimeoutMs")?;
    cfg.validate("etcd").map_err(|e| match e {
        static_macvlan_allocator::Error::Invalid {
            field,
            value,
            reason,
        } => {
            let key = field.trim_start_matches("etcd.");
            let key = key.split('[').next().unwrap_or(key).to_string();
            Error::Config {
                field,
                value: Value::from(value).to_string(),
                reason: format!("{reason}{}", note(&key)),
            }
        }
        other => Error::Alloc(other),
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "lan",
            "type": "static-macvlan",
            "subnet": "lan",
            "nodeName": "node-a",
            "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
        })
    }

    fn parse(v: &Value) -> Result<NetConf, Error> {
        parse_netconf(v.to_string().as_bytes(), &env(&[]))
    }

    #[test]
    fn minimal_netconf() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.cni_version, CniVersion::V110);
        assert_eq!(c.subnet.as_deref(), Some("lan"));
        assert_eq!(c.pod_mirror_wait, DEFAULT_POD_MIRROR_WAIT);
        assert!(c.rules && c.pod_annotations);
        let mut v = base();
        v.as_object_mut().unwrap().remove("subnet");
        v["podMirrorWaitSeconds"] = json!(0);
        v["rules"] = json!(false);
        v["podAnnotations"] = json!(false);
        let c = parse(&v).unwrap();
        assert_eq!(c.subnet, None);
        assert_eq!(c.pod_mirror_wait, Duration::ZERO);
        assert!(!c.rules && !c.pod_annotations);
        assert_eq!(c.node, "node-a");
        assert_eq!(c.pending_ttl, DEFAULT_PENDING_TTL);
        assert_eq!(c.etcd.prefix, "/static-macvlan");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = base();
        v["capabilities"] = json!({"ips": true, "mac": true});
        v["somethingElse"] = json!([1, 2]);
        v["etcd"]["futureField"] = json!(true);
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn bad_fields_are_named() {
        type Edit = fn(&mut Value);
        let cases: &[(&str, u32, Edit)] = &[
            ("cniVersion", 1, |v| v["cniVersion"] = json!("0.2.0")),
            ("cniVersion", 7, |v| v["cniVersion"] = json!(1)),
            ("cniVersion", 7, |v| {
                v.as_object_mut().unwrap().remove("cniVersion");
            }),
            ("name", 7, |v| v["name"] = json!(7)),
            ("subnet", 7, |v| v["subnet"] = json!("a/b")),
            ("subnet", 7, |v| v["subnet"] = json!("")),
            ("subnet", 7, |v| v["subnet"] = json!(5)),
            ("podMirrorWaitSeconds", 7, |v| {
                v["podMirrorWaitSeconds"] = json!(61)
            }),
            ("podMirrorWaitSeconds", 7, |v| {
                v["podMirrorWaitSeconds"] = json!(-1)
            }),
            ("podMirrorWaitSeconds", 7, |v| {
                v["podMirrorWaitSeconds"] = json!("2")
            }),
            ("rules", 7, |v| v["rules"] = json!("yes")),
            ("podAnnotations", 7, |v| v["podAnnotations"] = json!(1)),
            ("master", 7, |v| v["master"] = json!("eth 0")),
            ("master", 7, |v| v["master"] = json!(false)),
            ("pendingTTL", 7, |v| v["pendingTTL"] = json!(0)),
            ("pendingTTL", 7, |v| v["pendingTTL"] = json!("60")),
            ("pendingTTL", 7, |v| v["pendingTTL"] = json!(1.5)),
            ("nodeName", 7, |v| v["nodeName"] = json!("a b")),
            ("etcd", 7, |v| v["etcd"] = json!("http://x")),
            ("etcd.endpoints", 7, |v| {
                v["etcd"] = json!({"endpoints": "http://x"})
            }),
            ("etcd.endpoints", 7, |v| {
                v["etcd"] = json!({"endpoints": []})
            }),
            ("etcd.endpoints[0]", 7, |v| {
                v["etcd"] = json!({"endpoints": ["127.0.0.1:2379"]})
            }),
            ("etcd.endpoints[1]", 7, |v| {
                v["etcd"] = json!({"endpoints": ["http://a", 5]})
            }),
            ("etcd.caFile", 7, |v| {
                v["etcd"]["caFile"] = json!("/nonexistent/ca.pem")
            }),
            ("etcd.prefix", 7, |v| {
                v["etcd"]["prefix"] = json!("relative")
            }),
            ("etcd.dialTimeoutMs", 7, |v| {
                v["etcd"]["dialTimeoutMs"] = json!(0)
            }),
            ("etcdConfigFile", 7, |v| {
                v.as_object_mut().unwrap().remove("etcd");
                v["etcdConfigFile"] = json!("/nonexistent/etcd.json");
            }),
            ("runtimeConfig", 7, |v| v["runtimeConfig"] = json!([])),
            ("runtimeConfig.ips", 7, |v| {
                v["runtimeConfig"] = json!({"ips": "10.0.0.5"})
            }),
            ("runtimeConfig.ips[0]", 7, |v| {
                v["runtimeConfig"] = json!({"ips": ["10.0.0.300"]})
            }),
            ("runtimeConfig.ips[1]", 7, |v| {
                v["runtimeConfig"] = json!({"ips": ["10.0.0.5/24", "10.0.0.6/33"]})
            }),
            ("runtimeConfig.mac", 7, |v| {
                v["runtimeConfig"] = json!({"mac": "zz:00:00:00:00:00"})
            }),
            ("runtimeConfig.mac", 7, |v| {
                v["runtimeConfig"] = json!({"mac": "01:00:5e:00:00:01"})
            }),
            ("args.cni.ips[0]", 7, |v| {
                v["args"] = json!({"cni": {"ips": [5]}})
            }),
            ("prevResult", 7, |v| v["prevResult"] = json!("x")),
            ("cni.dev/valid-attachments[0].ifname", 7, |v| {
                v["cni.dev/valid-attachments"] = json!([{"containerID": "c1"}])
            }),
        ];
        for (field, code, edit) in cases {
            let mut v = base();
            edit(&mut v);
            let err = parse(&v).expect_err(field);
            assert_eq!(err.code(), *code, "{field}: {err}");
            assert!(
                err.to_string().contains(field),
                "{field} not named in: {err}"
            );
        }
    }

    #[test]
    fn undecodable_stdin_is_code_6() {
        for raw in ["", "{", "[1]", "\"x\"", "{\"cniVersion\": }"] {
            let err = parse_netconf(raw.as_bytes(), &env(&[])).unwrap_err();
            assert_eq!(err.code(), 6, "{raw:?}: {err}");
        }
    }

    #[test]
    fn etcd_layers_file_env_netconf() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.json");
        std::fs::write(
            &file,
            r#"{"endpoints":["http://10.0.0.1:2379"],"prefix":"/from-file","dialTimeoutMs":700}"#,
        )
        .unwrap();
        let mut v = base();
        v.as_object_mut().unwrap().remove("etcd");
        v["etcdConfigFile"] = json!(file.display().to_string());
        let c = parse(&v).unwrap();
        assert_eq!(c.etcd.endpoints, vec!["http://10.0.0.1:2379"]);
        assert_eq!(c.etcd.prefix, "/from-file");
        assert_eq!(c.etcd.dial_timeout_ms, Some(700));

        // The environment overrides the file, the netconf overrides both.
        let e = env(&[(
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
            "http://10.0.0.2:2379, http://10.0.0.3:2379",
        )]);
        let c = parse_netconf(v.to_string().as_bytes(), &e).unwrap();
        assert_eq!(
            c.etcd.endpoints,
            vec!["http://10.0.0.2:2379", "http://10.0.0.3:2379"]
        );
        v["etcd"] = json!({"prefix": "/inline"});
        let c = parse_netconf(v.to_string().as_bytes(), &e).unwrap();
        assert_eq!(c.etcd.prefix, "/inline");
        assert_eq!(c.etcd.dial_timeout_ms, Some(700));

        // A bad value in the file names the field and the file.
        std::fs::write(&file, r#"{"endpoints":["10.0.0.1:2379"]}"#).unwrap();
        v.as_object_mut().unwrap().remove("etcd");
        let err = parse(&v).unwrap_err();
        assert!(err.to_string().contains("etcd.endpoints[0]"), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );

        // The file by environment variable, and a file that is not JSON.
        std::fs::write(&file, "endpoints: x").unwrap();
        v.as_object_mut().unwrap().remove("etcdConfigFile");
        let e = env(&[("STATIC_MACVLAN_ETCD_CONFIG", &file.display().to_string())]);
        let err = parse_netconf(v.to_string().as_bytes(), &e).unwrap_err();
        assert_eq!(err.code(), 6, "{err}");
    }

    #[test]
    fn prefix_from_either_environment_name() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("etcd");
        v["etcd"] = json!({"endpoints": ["http://10.0.0.1:2379"]});
        let c = parse_netconf(
            v.to_string().as_bytes(),
            &env(&[("STATIC_MACVLAN_PREFIX", "/ops")]),
        )
        .unwrap();
        assert_eq!(c.etcd.prefix, "/ops");
        let both = env(&[
            ("STATIC_MACVLAN_PREFIX", "/ops"),
            ("STATIC_MACVLAN_ETCD_PREFIX", "/plugin"),
        ]);
        let c = parse_netconf(v.to_string().as_bytes(), &both).unwrap();
        assert_eq!(c.etcd.prefix, "/plugin");
    }

    #[test]
    fn node_name_layers() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("nodeName");
        let c = parse_netconf(
            v.to_string().as_bytes(),
            &env(&[("STATIC_MACVLAN_NODE", "node-b")]),
        )
        .unwrap();
        assert_eq!(c.node, "node-b");
        let c = parse(&v).unwrap();
        assert!(!c.node.is_empty());
        v["nodeName"] = json!("node-c");
        let c = parse_netconf(
            v.to_string().as_bytes(),
            &env(&[("STATIC_MACVLAN_NODE", "node-b")]),
        )
        .unwrap();
        assert_eq!(c.node, "node-c");
    }

    #[test]
    fn static_requests_precedence() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;IP=10.0.0.7/24;MAC=02:00:00:00:00:07;K8S_POD_NAME=web-0;FOO=bar",
        )
        .unwrap();
        assert_eq!(args.pod_name.as_deref(), Some("web-0"));
        let mut v = base();
        let c = parse(&v).unwrap();
        assert_eq!(c.static_ips(&args)[0].value.to_string(), "10.0.0.7/24");
        assert_eq!(c.static_ips(&args)[0].field, "CNI_ARGS IP");
        assert_eq!(
            c.static_mac(&args).unwrap().value.to_string(),
            "02:00:00:00:00:07"
        );
        v["args"] = json!({"cni": {"ips": ["10.0.0.8"]}});
        v["runtimeConfig"] = json!({"mac": "02:00:00:00:00:09"});
        let c = parse(&v).unwrap();
        assert_eq!(c.static_ips(&args)[0].value.to_string(), "10.0.0.8");
        assert_eq!(c.static_mac(&args).unwrap().field, "runtimeConfig.mac");
        v["runtimeConfig"]["ips"] = json!(["fd00::9/64", "10.0.0.9/24"]);
        let c = parse(&v).unwrap();
        assert_eq!(c.static_ips(&args).len(), 2);
        assert_eq!(c.static_ips(&args)[1].field, "runtimeConfig.ips[1]");
    }

    #[test]
    fn cni_args_errors() {
        for (raw, var) in [
            ("IP=10.0.0.300", "CNI_ARGS IP"),
            ("MAC=01:00:00:00:00:01", "CNI_ARGS MAC"),
            ("K8S_POD_NAME", "CNI_ARGS"),
            ("IgnoreUnknown=maybe", "CNI_ARGS IgnoreUnknown"),
        ] {
            let err = CniArgs::parse(raw).unwrap_err();
            assert_eq!(err.code(), 4, "{raw}");
            assert!(err.to_string().contains(var), "{raw}: {err}");
        }
    }

    #[test]
    fn runtime_env() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
            ),
        ];
        let e = env(&full);
        assert_eq!(Command::from_env(&e).unwrap(), Command::Add);
        let r = RuntimeEnv::from_env(Command::Add, &e).unwrap();
        let o = r.owner("node-a", "lan").unwrap();
        assert_eq!(
            (o.pod_uid.as_str(), o.namespace.as_str(), o.pod.as_str()),
            ("u-1", "ns1", "web-0")
        );

        let without = |var: &str| {
            env(&full
                .iter()
                .copied()
                .filter(|(k, _)| *k != var)
                .collect::<Vec<_>>())
        };
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let err = RuntimeEnv::from_env(Command::Add, &without(var)).unwrap_err();
            assert_eq!(err.code(), 4);
            assert!(err.to_string().contains(var), "{err}");
        }
        // DEL does not need the namespace.
        assert!(RuntimeEnv::from_env(Command::Del, &without("CNI_NETNS")).is_ok());
        // Fallback identity without Kubernetes.
        let r = RuntimeEnv::from_env(Command::Add, &without("CNI_ARGS")).unwrap();
        let o = r.owner("node-a", "lan").unwrap();
        assert_eq!(o.pod_uid, "cid-abc123");
        assert_eq!(o.namespace, NO_NAMESPACE);
        assert_eq!(o.pod, "abc123");

        let mut bad = e.clone();
        bad.insert("CNI_IFNAME".into(), "a/b".into());
        assert!(RuntimeEnv::from_env(Command::Add, &bad)
            .unwrap_err()
            .to_string()
            .contains("CNI_IFNAME"));
        let mut bad = e.clone();
        bad.insert("CNI_CONTAINERID".into(), "-x".into());
        assert!(RuntimeEnv::from_env(Command::Add, &bad)
            .unwrap_err()
            .to_string()
            .contains("CNI_CONTAINERID"));
        let mut bad = e.clone();
        bad.insert("CNI_COMMAND".into(), "ADDD".into());
        assert_eq!(Command::from_env(&bad).unwrap_err().code(), 4);
        assert_eq!(Command::from_env(&env(&[])).unwrap_err().code(), 4);
    }
}
