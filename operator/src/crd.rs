//! The custom resources of group `staticmacvlan.io`, version `v1alpha1`, as Rust types from which
//! the CRDs are generated (`static-macvlan-operator crds`), and their conversions into the
//! allocator's configuration types.
//!
//! Spec field names are those of the allocator's JSON (`SubnetConfig`, `MacPoolConfig`), so what
//! `kubectl get vlansubnet -o yaml` shows under `spec` is what `etcdctl get` shows under `spec`.
//! The schema carries the structural checks the API server can make by itself (types, enums,
//! bounds, immutability as CEL transition rules); everything that needs address arithmetic is
//! semantic validation in [`crate::validate`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use static_macvlan_allocator::rules;
use static_macvlan_allocator::{
    DnsConfig, MacPoolConfig, MacvlanMode, Mirrored, RangeConfig, RouteConfig, SubnetConfig,
};

/// The API group.
pub const GROUP: &str = "staticmacvlan.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every object of ours.
pub const API_VERSION: &str = "staticmacvlan.io/v1alpha1";

/// Condition type: the object is mirrored into etcd and in force.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the object was rejected; its message names the field. The last good version
/// stays in etcd.
pub const CONDITION_INVALID: &str = "Invalid";

/// Macvlan mode: how the macvlan forwards between siblings on the same parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Bridge,
    Vepa,
    Private,
    Passthru,
}

impl From<Mode> for MacvlanMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Bridge => MacvlanMode::Bridge,
            Mode::Vepa => MacvlanMode::Vepa,
            Mode::Private => MacvlanMode::Private,
            Mode::Passthru => MacvlanMode::Passthru,
        }
    }
}

impl From<MacvlanMode> for Mode {
    fn from(m: MacvlanMode) -> Self {
        match m {
            MacvlanMode::Bridge => Mode::Bridge,
            MacvlanMode::Vepa => Mode::Vepa,
            MacvlanMode::Private => Mode::Private,
            MacvlanMode::Passthru => Mode::Passthru,
        }
    }
}

/// An inclusive address range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddressRange {
    /// First address of the range.
    #[schemars(length(min = 1, max = 64))]
    pub start: String,
    /// Last address of the range (inclusive).
    #[schemars(length(min = 1, max = 64))]
    pub end: String,
}

/// A static route installed in the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetRoute {
    /// Destination CIDR, e.g. 192.168.0.0/16.
    #[schemars(length(min = 1, max = 64))]
    pub dst: String,
    /// Next hop inside the subnet; defaults to the subnet's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub gw: Option<String>,
}

/// DNS settings handed to the container runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetDns {
    /// Name server addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One observation of an object's state, in the shape of `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Invalid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason, e.g. `InvalidField`, `Overlap`, `Mirrored`.
    #[serde(default)]
    pub reason: String,
    /// Human-readable detail; for `Invalid` it names the field and the value.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An 802.1q VLAN (or the untagged LAN) on a node NIC, with its IP subnet: pods get macvlan
/// interfaces on `master` (or `master.vlan`) with addresses from `ranges`.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "staticmacvlan.io",
    version = "v1alpha1",
    kind = "VlanSubnet",
    plural = "vlansubnets",
    shortname = "vsn",
    category = "static-macvlan",
    status = "VlanSubnetStatus",
    derive = "PartialEq",
    doc = "A VLAN (or the untagged LAN) on a node NIC with its IP subnet, mirrored into etcd for the static-macvlan CNI plugin.",
    printcolumn = r#"{"name":"Master","type":"string","jsonPath":".spec.master"}"#,
    printcolumn = r#"{"name":"Vlan","type":"integer","jsonPath":".spec.vlan"}"#,
    printcolumn = r#"{"name":"Cidr","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VlanSubnetSpec {
    /// Parent NIC on the node, e.g. eth0 (a node's netconf may override it).
    #[schemars(length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("master is immutable; create a new VlanSubnet instead"))]
    pub master: String,
    /// 802.1q VLAN id; 0 = untagged (the macvlan sits on master itself).
    #[serde(default)]
    #[schemars(range(min = 0, max = 4094))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("vlan is immutable; create a new VlanSubnet instead"))]
    pub vlan: u16,
    /// Macvlan mode.
    #[serde(default)]
    pub mode: Mode,
    /// MTU of the pod interfaces; default: the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<u32>,
    /// The IP subnet, e.g. 10.230.0.0/24 or fd00:230::/64.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cidr is immutable; create a new VlanSubnet instead"))]
    pub cidr: String,
    /// Default gateway; never handed out to a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub gateway: Option<String>,
    /// Where automatic allocation happens; empty = the whole cidr.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<AddressRange>,
    /// Addresses or CIDRs never handed out, not even on static request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Static routes installed in the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<SubnetRoute>,
    /// DNS settings returned to the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<SubnetDns>,
    /// Name of the MacPool pod MACs are allocated from; default: the kernel picks a random MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub mac_pool: Option<String>,
    /// Give the host a macvlan shim on the same parent plus a route per pod, so that host and
    /// pods can talk (macvlan alone isolates them).
    #[serde(default)]
    pub host_shim: bool,
    /// Do not install a default route via the gateway.
    #[serde(default)]
    pub no_default_route: bool,
    /// CEL expression over the pod choosing which pods may use this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// Observed state of a VlanSubnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanSubnetStatus {
    /// `Ready`, or `Invalid` naming the field at fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Reserved addresses (pending and committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
    /// Allocatable addresses not reserved (saturates at the int64 maximum for huge IPv6 ranges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<i64>,
}

/// A range of MAC addresses pods of subnets naming this pool get their MAC from.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "staticmacvlan.io",
    version = "v1alpha1",
    kind = "MacPool",
    plural = "macpools",
    shortname = "mp",
    category = "static-macvlan",
    status = "MacPoolStatus",
    derive = "PartialEq",
    doc = "MAC address ranges (locally administered unicast unless allowGlobal) for pod interfaces, mirrored into etcd.",
    printcolumn = r#"{"name":"Ranges","type":"string","jsonPath":".status.ranges"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MacPoolSpec {
    /// Inclusive MAC ranges, e.g. {start: 02:00:0a:e6:00:00, end: 02:00:0a:e6:ff:ff}.
    #[schemars(length(min = 1))]
    pub ranges: Vec<AddressRange>,
    /// Permit globally administered (vendor) addresses. Off by default: invented MACs should
    /// never collide with real hardware.
    #[serde(default)]
    pub allow_global: bool,
}

/// Observed state of a MacPool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MacPoolStatus {
    /// `Ready`, or `Invalid` naming the field at fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The ranges as one line, `start-end[,start-end…]` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<String>,
    /// Reserved addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
}

/// Sticky allocation: keep the address for a pod identity across re-creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sticky {
    /// CEL expression giving the identity the address sticks to; default namespace/name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long the address stays held for the identity after its pod is gone (at most 30 days).
    #[schemars(range(min = 1, max = 2592000))]
    pub hold_seconds: u32,
}

/// Refuse matching pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deny {
    /// Error message returned to the runtime.
    #[schemars(length(min = 1))]
    pub message: String,
}

/// Which pods get what: a CEL `match` over the pod and interface, and what to give.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "staticmacvlan.io",
    version = "v1alpha1",
    kind = "AllocationRule",
    plural = "allocationrules",
    shortname = "arule",
    category = "static-macvlan",
    status = "AllocationRuleStatus",
    derive = "PartialEq",
    doc = "A CEL rule choosing the subnet, a fixed IP/MAC, stickiness or refusal for matching pods.",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!(has(self.subnet) && has(self.subnets) && size(self.subnets) > 0)").message("subnet and subnets are mutually exclusive"))]
#[x_kube(validation = Rule::new("!has(self.deny) || !(has(self.subnet) || has(self.ip) || has(self.mac) || has(self.sticky) || (has(self.subnets) && size(self.subnets) > 0))").message("deny cannot be combined with subnet, subnets, ip, mac or sticky"))]
#[serde(rename_all = "camelCase")]
pub struct AllocationRuleSpec {
    /// Rules with a higher priority are evaluated first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub priority: i32,
    /// CEL expression over the pod (namespace, name, labels, annotations, node, interface,
    /// network); the rule applies when it is true.
    #[serde(rename = "match")]
    #[schemars(length(min = 1))]
    pub match_: String,
    /// The subnet to allocate from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub subnet: Option<String>,
    /// Subnets to try in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// CEL string expression giving the IP address, e.g. "'10.230.0.5'" (a quoted literal) or
    /// one computed from the pod; "" means none (allocate automatically).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// CEL string expression giving the MAC address, e.g. "'02:00:0a:e6:00:05'"; "" means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Keep the address for the pod's identity across re-creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Refuse matching pods with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Deny>,
}

/// Observed state of an AllocationRule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRuleStatus {
    /// `Ready` once compiled, or `Invalid` with the compile error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Whether a reservation waits for its interface (under a lease) or is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Pending,
    #[default]
    Committed,
}

/// One macvlan interface of a pod and the addresses reserved for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInterface {
    /// Interface name in the pod, e.g. net1.
    pub ifname: String,
    /// VlanSubnet the address is from.
    pub subnet: String,
    /// The IP address.
    pub ip: String,
    /// The MAC address, when one is reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Node the pod runs on.
    pub node: String,
    /// Reservation state: pending while the interface is being set up, then committed.
    #[serde(default)]
    pub state: EndpointState,
}

/// Read-only view of a pod's reservations, written by the operator and owned by the pod.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "staticmacvlan.io",
    version = "v1alpha1",
    kind = "MacvlanEndpoint",
    plural = "macvlanendpoints",
    shortname = "mve",
    category = "static-macvlan",
    namespaced,
    derive = "PartialEq",
    doc = "Read-only view of a pod's macvlan reservations, maintained by the static-macvlan operator.",
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.interfaces[0].subnet"}"#,
    printcolumn = r#"{"name":"Ip","type":"string","jsonPath":".spec.interfaces[0].ip"}"#,
    printcolumn = r#"{"name":"Mac","type":"string","jsonPath":".spec.interfaces[0].mac"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.interfaces[0].node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MacvlanEndpointSpec {
    /// Name of the pod.
    pub pod: String,
    /// UID of the pod incarnation that holds the reservations.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// The pod's macvlan interfaces.
    #[serde(default)]
    pub interfaces: Vec<EndpointInterface>,
}

fn range_config(r: &AddressRange) -> RangeConfig {
    RangeConfig {
        start: r.start.clone(),
        end: r.end.clone(),
    }
}

impl From<&VlanSubnetSpec> for SubnetConfig {
    fn from(s: &VlanSubnetSpec) -> Self {
        // A struct literal without `..`, so a field added to SubnetConfig fails to compile here.
        SubnetConfig {
            master: s.master.clone(),
            vlan: s.vlan,
            mode: s.mode.into(),
            mtu: s.mtu,
            cidr: s.cidr.clone(),
            gateway: s.gateway.clone(),
            ranges: s.ranges.iter().map(range_config).collect(),
            exclude: s.exclude.clone(),
            routes: s
                .routes
                .iter()
                .map(|r| RouteConfig {
                    dst: r.dst.clone(),
                    gw: r.gw.clone(),
                })
                .collect(),
            dns: s.dns.as_ref().map(|d| DnsConfig {
                nameservers: d.nameservers.clone(),
                domain: d.domain.clone(),
                search: d.search.clone(),
                options: d.options.clone(),
            }),
            mac_pool: s.mac_pool.clone(),
            host_shim: s.host_shim,
            no_default_route: s.no_default_route,
            selector: s.selector.clone(),
        }
    }
}

impl From<&MacPoolSpec> for MacPoolConfig {
    fn from(s: &MacPoolSpec) -> Self {
        MacPoolConfig {
            ranges: s.ranges.iter().map(range_config).collect(),
            allow_global: s.allow_global,
        }
    }
}

/// A VlanSubnet as mirrored into etcd: spec plus uid and generation.
pub fn mirror_subnet(
    name: &str,
    meta: &kube::core::ObjectMeta,
    spec: &VlanSubnetSpec,
) -> Mirrored<SubnetConfig> {
    Mirrored {
        name: name.to_string(),
        uid: meta.uid.clone(),
        generation: meta.generation,
        spec: spec.into(),
    }
}

/// A MacPool as mirrored into etcd.
pub fn mirror_macpool(
    name: &str,
    meta: &kube::core::ObjectMeta,
    spec: &MacPoolSpec,
) -> Mirrored<MacPoolConfig> {
    Mirrored {
        name: name.to_string(),
        uid: meta.uid.clone(),
        generation: meta.generation,
        spec: spec.into(),
    }
}

impl AllocationRuleSpec {
    /// The spec as the rule engine reads it. The JSON shapes are the same (a test keeps them so),
    /// so the conversion is a JSON round trip; the engine's type drops an empty `subnets`, as
    /// this one does when serializing.
    ///
    /// # Errors
    /// The decoder's message, should the shapes ever drift apart.
    pub fn to_engine(&self) -> Result<rules::AllocationRuleSpec, String> {
        let v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

/// An AllocationRule as mirrored into etcd at `<prefix>/config/rules/<name>`: the allocator's
/// `Mirrored<rules::AllocationRuleSpec>` (name, uid, generation, spec) plus, at the top level,
/// `hash`, the engine's [`content_hash`](rules::content_hash) of `spec`, so a long-lived reader
/// can keep compiled rules keyed by (name, hash). Readers decoding `Mirrored<AllocationRuleSpec>`
/// ignore `hash` (unknown fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirroredRule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub spec: rules::AllocationRuleSpec,
    pub hash: String,
}

impl MirroredRule {
    /// The allocator's view of the same value (what `RuleSet::from_mirrored` takes).
    pub fn to_mirrored(&self) -> Mirrored<rules::AllocationRuleSpec> {
        Mirrored {
            name: self.name.clone(),
            uid: self.uid.clone(),
            generation: self.generation,
            spec: self.spec.clone(),
        }
    }
}

/// An AllocationRule as mirrored into etcd, from its compiled form (only rules that compile are
/// mirrored): the engine's spec and its content hash.
pub fn mirror_rule(
    name: &str,
    meta: &kube::core::ObjectMeta,
    rule: &rules::CompiledRule,
) -> MirroredRule {
    MirroredRule {
        name: name.to_string(),
        uid: meta.uid.clone(),
        generation: meta.generation,
        spec: rule.spec().clone(),
        hash: rule.hash().to_string(),
    }
}

/// The four CRDs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        VlanSubnet::crd(),
        MacPool::crd(),
        AllocationRule::crd(),
        MacvlanEndpoint::crd(),
    ]
}

/// Where the generated files live, relative to the repository root.
pub const CRD_DIR: &str = "deploy/kustomize/base/crds";

/// How to regenerate the files (for the header and the drift test's message).
pub const REGENERATE: &str =
    "cargo run -p static-macvlan-operator -- crds --write-dir deploy/kustomize/base/crds";

fn header() -> String {
    format!("# Generated by `static-macvlan-operator crds`; do not edit.\n# Regenerate with: {REGENERATE}\n")
}

/// The generated files of [`CRD_DIR`]: `<plural>.yaml` per CRD, then `kustomization.yaml`.
///
/// # Errors
/// The YAML serializer's error (not expected for these types).
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    let mut files = Vec::new();
    for crd in crds() {
        let yaml = serde_saphyr::to_string(&crd)?;
        files.push((
            format!("{}.yaml", crd.spec.names.plural),
            format!("{}{yaml}", header()),
        ));
    }
    let mut kustomization = format!(
        "{}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
        header()
    );
    for (name, _) in &files {
        kustomization.push_str(&format!("- {name}\n"));
    }
    files.push(("kustomization.yaml".to_string(), kustomization));
    Ok(files)
}

/// All CRDs as one multi-document YAML stream (what `crds` prints).
///
/// # Errors
/// The YAML serializer's error (not expected for these types).
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let docs: Vec<String> = crd_files()?
        .into_iter()
        .filter(|(name, _)| name != "kustomization.yaml")
        .map(|(_, content)| content)
        .collect();
    Ok(docs.join("---\n"))
}

/// The `spec` schema of a kind's CRD (structural, as the API server sees it), for client-side
/// structural validation of manifests.
pub fn spec_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRDs carry a schema");
    let v = serde_json::to_value(schema).expect("schema serializes");
    v["properties"]["spec"].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_json_matches_allocator_config() {
        let yaml = r#"
master: eth0
vlan: 100
mode: vepa
mtu: 1500
cidr: 10.230.0.0/24
gateway: 10.230.0.1
ranges: [{start: 10.230.0.10, end: 10.230.0.200}]
exclude: [10.230.0.50]
routes: [{dst: 192.168.0.0/16}, {dst: 172.16.0.0/12, gw: 10.230.0.2}]
dns: {nameservers: [10.230.0.1], search: [lan], options: [ndots:2]}
macPool: vms
hostShim: true
noDefaultRoute: true
selector: "pod.namespace == 'db'"
"#;
        let spec: VlanSubnetSpec = serde_saphyr::from_str(yaml).unwrap();
        let via_copy = SubnetConfig::from(&spec);
        let via_json: SubnetConfig =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(via_copy, via_json);
        assert_eq!(via_copy.mode, MacvlanMode::Vepa);
        assert_eq!(via_copy.routes[1].gw.as_deref(), Some("10.230.0.2"));

        let pool = MacPoolSpec {
            ranges: vec![AddressRange {
                start: "02:00:00:00:00:00".into(),
                end: "02:00:00:00:00:ff".into(),
            }],
            allow_global: true,
        };
        let via_json: MacPoolConfig =
            serde_json::from_value(serde_json::to_value(&pool).unwrap()).unwrap();
        assert_eq!(MacPoolConfig::from(&pool), via_json);
    }

    #[test]
    fn rule_json_matches_the_rule_engine() {
        let yaml = r#"
priority: 100
match: "pod.namespace == 'db'"
subnets: [lan-100, lan-200]
ip: "''"
mac: "'02:00:0a:e6:00:07'"
sticky: {key: "pod.name", holdSeconds: 3600}
"#;
        let spec: AllocationRuleSpec = serde_saphyr::from_str(yaml).unwrap();
        let engine = spec.to_engine().unwrap();
        // Same JSON both ways: what `kubectl get -o yaml` shows under spec is what etcd holds.
        assert_eq!(
            serde_json::to_value(&engine).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
        assert_eq!(engine.subnet_list(), ["lan-100", "lan-200"]);
        assert_eq!(engine.sticky.as_ref().unwrap().hold_seconds, 3600);
        let deny = AllocationRuleSpec {
            match_: "true".into(),
            deny: Some(Deny {
                message: "no".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(deny.to_engine().unwrap()).unwrap(),
            serde_json::to_value(&deny).unwrap()
        );

        // The mirrored value: Mirrored<AllocationRuleSpec> plus a top-level hash, which the
        // allocator's Mirrored ignores.
        let compiled = rules::compile("db", &engine).unwrap();
        let meta = kube::core::ObjectMeta {
            uid: Some("u-1".into()),
            generation: Some(2),
            ..Default::default()
        };
        let m = mirror_rule("db", &meta, &compiled);
        assert_eq!(m.hash, rules::content_hash(&engine));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["hash"], m.hash.as_str());
        assert_eq!(json["spec"], serde_json::to_value(&spec).unwrap());
        let read: Mirrored<rules::AllocationRuleSpec> = serde_json::from_value(json).unwrap();
        assert_eq!(read, m.to_mirrored());
        assert_eq!(rules::RuleSet::from_mirrored([&read]).unwrap().len(), 1);
    }

    #[test]
    fn crds_have_the_expected_shape() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "vlansubnets.staticmacvlan.io",
                "macpools.staticmacvlan.io",
                "allocationrules.staticmacvlan.io",
                "macvlanendpoints.staticmacvlan.io"
            ]
        );
        let scopes: Vec<_> = crds.iter().map(|c| c.spec.scope.as_str()).collect();
        assert_eq!(scopes, ["Cluster", "Cluster", "Cluster", "Namespaced"]);
        let columns = |i: usize| -> Vec<String> {
            crds[i].spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.to_uppercase())
                .collect()
        };
        assert_eq!(
            columns(0),
            ["MASTER", "VLAN", "CIDR", "USED", "FREE", "AGE"]
        );
        assert_eq!(columns(1), ["RANGES", "USED", "AGE"]);
        assert_eq!(columns(3), ["POD", "SUBNET", "IP", "MAC", "NODE", "AGE"]);

        let spec = spec_schema(&crds[0]);
        assert_eq!(spec["properties"]["vlan"]["maximum"], 4094.0);
        assert_eq!(
            spec["properties"]["mode"]["enum"],
            serde_json::json!(["bridge", "vepa", "private", "passthru"])
        );
        for field in ["cidr", "master", "vlan"] {
            let rules = &spec["properties"][field]["x-kubernetes-validations"];
            assert_eq!(rules[0]["rule"], "self == oldSelf", "{field}: {spec}");
        }
        assert_eq!(
            spec["required"],
            serde_json::json!(["cidr", "master"]),
            "{spec}"
        );
    }
}
