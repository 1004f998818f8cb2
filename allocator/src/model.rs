//! What is stored: subnet and MAC pool configuration as mirrored into etcd (the `*Config` types,
//! plain JSON as users see it with `etcdctl`), their validated forms ([`Subnet`], [`MacPool`]) that
//! the inside of the allocator works with, the owner of an attachment, and the reservation record.
//!
//! Validation happens once, at the edge ([`Subnet::from_config`], [`MacPool::from_config`]); every
//! error names the field (`ranges[1].end`) and the value.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::addr::{ip_to_u128, mac_range_set, u128_to_ip, AddrSet, MacAddr};
use crate::error::{invalid, Error};
use crate::keys::check_segment;

/// How the macvlan forwards between siblings on the same parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Vepa,
    Private,
    Passthru,
}

impl MacvlanMode {
    pub const ALL: [MacvlanMode; 4] = [
        MacvlanMode::Bridge,
        MacvlanMode::Vepa,
        MacvlanMode::Private,
        MacvlanMode::Passthru,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Private => "private",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MacvlanMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        MacvlanMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| invalid("mode", s, "must be one of bridge, vepa, private, passthru"))
    }
}

/// An inclusive address range as written in config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeConfig {
    pub start: String,
    pub end: String,
}

/// A static route as written in config; `gw` defaults to the subnet's gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// DNS settings handed to the runtime in the CNI result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A VlanSubnet's spec as mirrored into `<prefix>/config/subnets/<name>` (camelCase JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetConfig {
    /// Parent NIC on the node (overridable per node in the netconf).
    pub master: String,
    /// 802.1q VLAN id; 0 = untagged (the macvlan sits on `master` itself).
    #[serde(default)]
    pub vlan: u16,
    #[serde(default)]
    pub mode: MacvlanMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Where automatic allocation happens; empty = the whole CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<RangeConfig>,
    /// Addresses or CIDRs never handed out, not even on static request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_pool: Option<String>,
    #[serde(default)]
    pub host_shim: bool,
    /// Do not install a default route via the gateway.
    #[serde(default)]
    pub no_default_route: bool,
    /// CEL expression choosing which pods may use this subnet (evaluated by the plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A MacPool's spec as mirrored into `<prefix>/config/macpools/<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MacPoolConfig {
    pub ranges: Vec<RangeConfig>,
    /// Permit globally administered (vendor) addresses. Off by default: invented MACs should
    /// never collide with real hardware.
    #[serde(default)]
    pub allow_global: bool,
}

/// A configuration object as mirrored into etcd: the spec plus where it came from, so that
/// `etcdctl get` shows which generation of which Kubernetes object is in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirrored<T> {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub spec: T,
}

/// A validated route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// A validated subnet: what the allocator and the plugin work with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub name: String,
    pub master: String,
    pub vlan: u16,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub cidr: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Option<DnsConfig>,
    pub mac_pool: Option<String>,
    pub host_shim: bool,
    pub default_route: bool,
    pub selector: Option<String>,
    /// Addresses automatic allocation picks from: ranges minus excludes, network, broadcast, gateway.
    pool: AddrSet,
    /// Addresses never handed out, even on static request.
    never: AddrSet,
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, Error> {
    value
        .parse()
        .map_err(|_| invalid(field, value, "is not an IP address"))
}

fn parse_mac(field: &str, value: &str) -> Result<MacAddr, Error> {
    value
        .parse()
        .map_err(|e: crate::addr::MacParseError| invalid(field, value, e.to_string()))
}

/// Checks a Linux interface name: 1–15 bytes, no '/', ':' or whitespace.
pub fn check_ifname(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 15 {
        return Err(invalid(
            field,
            value,
            "must be 1 to 15 characters (Linux IFNAMSIZ)",
        ));
    }
    if value == "." || value == ".." {
        return Err(invalid(field, value, "is not a valid interface name"));
    }
    if value
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            field,
            value,
            "must not contain '/', ':' or whitespace",
        ));
    }
    Ok(())
}

impl Subnet {
    /// Validates a mirrored subnet config.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first bad field (`cidr`, `gateway`, `ranges[i].start`, …).
    pub fn from_config(name: &str, c: &SubnetConfig) -> Result<Subnet, Error> {
        check_segment("name", name)?;
        check_ifname("master", &c.master)?;
        if c.vlan > 4094 {
            return Err(invalid("vlan", c.vlan, "must be 0 (untagged) to 4094"));
        }
        if c.vlan != 0 {
            let sub = format!("{}.{}", c.master, c.vlan);
            check_ifname("master", &sub).map_err(|_| {
                invalid(
                    "master",
                    &c.master,
                    format!("VLAN interface name {sub} would exceed 15 characters"),
                )
            })?;
        }
        let cidr: IpNetwork = c
            .cidr
            .parse()
            .ok()
            .filter(|_| c.cidr.contains('/'))
            .ok_or_else(|| invalid("cidr", &c.cidr, "is not a CIDR (e.g. 10.230.0.0/16)"))?;
        if cidr.ip() != cidr.network() {
            return Err(invalid(
                "cidr",
                &c.cidr,
                format!(
                    "has host bits set; did you mean {}/{}?",
                    cidr.network(),
                    cidr.prefix()
                ),
            ));
        }
        let v6 = cidr.is_ipv6();
        if let Some(mtu) = c.mtu {
            let min = if v6 { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(invalid("mtu", mtu, format!("must be {min} to 65535")));
            }
        }
        let family_ok = |ip: &IpAddr| ip.is_ipv6() == v6;
        let in_cidr = |field: &str, raw: &str, ip: IpAddr| -> Result<IpAddr, Error> {
            if !family_ok(&ip) || !cidr.contains(ip) {
                return Err(invalid(field, raw, format!("is outside cidr {cidr}")));
            }
            Ok(ip)
        };

        let network = ip_to_u128(cidr.network());
        let last = match cidr {
            IpNetwork::V4(n) => ip_to_u128(IpAddr::V4(n.broadcast())),
            IpNetwork::V6(n) => network | (u128::MAX >> n.prefix()),
        };

        // Addresses that are never usable: the network address always (on IPv6 it is the
        // subnet-router anycast address), the IPv4 broadcast, the gateway, and the excludes.
        let mut never = vec![(network, network)];
        if !v6 && cidr.prefix() < 31 {
            never.push((last, last));
        }
        if v6 && cidr.prefix() >= 127 || !v6 && cidr.prefix() >= 31 {
            // Point-to-point prefixes (RFC 3021 / RFC 6164) have no network address to protect.
            never.clear();
        }
        let gateway = match &c.gateway {
            Some(raw) => {
                let gw = in_cidr("gateway", raw, parse_ip("gateway", raw)?)?;
                if never
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&ip_to_u128(gw)))
                {
                    return Err(invalid(
                        "gateway",
                        raw,
                        "is the network or broadcast address of the cidr",
                    ));
                }
                never.push((ip_to_u128(gw), ip_to_u128(gw)));
                Some(gw)
            }
            None => None,
        };
        for (i, ex) in c.exclude.iter().enumerate() {
            let field = format!("exclude[{i}]");
            let (lo, hi) = if ex.contains('/') {
                let net: IpNetwork = ex
                    .parse()
                    .map_err(|_| invalid(&field, ex, "is not an IP address or CIDR"))?;
                in_cidr(&field, ex, net.network())?;
                let lo = ip_to_u128(net.network());
                let hi = match net {
                    IpNetwork::V4(n) => ip_to_u128(IpAddr::V4(n.broadcast())),
                    IpNetwork::V6(n) => lo | (u128::MAX >> n.prefix()),
                };
                if hi > last {
                    return Err(invalid(&field, ex, format!("is not inside cidr {cidr}")));
                }
                (lo, hi)
            } else {
                let ip = in_cidr(&field, ex, parse_ip(&field, ex)?)?;
                (ip_to_u128(ip), ip_to_u128(ip))
            };
            never.push((lo, hi));
        }

        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for (i, r) in c.ranges.iter().enumerate() {
            let fs = format!("ranges[{i}].start");
            let fe = format!("ranges[{i}].end");
            let start = in_cidr(&fs, &r.start, parse_ip(&fs, &r.start)?)?;
            let end = in_cidr(&fe, &r.end, parse_ip(&fe, &r.end)?)?;
            let (a, b) = (ip_to_u128(start), ip_to_u128(end));
            if a > b {
                return Err(invalid(
                    &fs,
                    &r.start,
                    format!("is after ranges[{i}].end {}", r.end),
                ));
            }
            if let Some(j) = ranges.iter().position(|&(x, y)| a <= y && x <= b) {
                return Err(invalid(
                    &format!("ranges[{i}]"),
                    format!("{}-{}", r.start, r.end),
                    format!("overlaps ranges[{j}]"),
                ));
            }
            ranges.push((a, b));
        }
        if ranges.is_empty() {
            ranges.push((network, last));
        }
        let never = AddrSet::from_segments(never);
        let pool = never
            .segments()
            .iter()
            .fold(AddrSet::from_segments(ranges), |set, &(a, b)| {
                set.subtract(a, b)
            });
        if pool.is_empty() {
            return Err(invalid(
                "ranges",
                &c.cidr,
                "leave no allocatable address once network, broadcast, gateway and excludes are removed",
            ));
        }

        let mut routes = Vec::with_capacity(c.routes.len());
        for (i, r) in c.routes.iter().enumerate() {
            let fd = format!("routes[{i}].dst");
            let dst: IpNetwork = r
                .dst
                .parse()
                .ok()
                .filter(|_| r.dst.contains('/'))
                .ok_or_else(|| invalid(&fd, &r.dst, "is not a CIDR (e.g. 192.168.0.0/16)"))?;
            if dst.is_ipv6() != v6 {
                return Err(invalid(
                    &fd,
                    &r.dst,
                    format!("is not of the family of cidr {cidr}"),
                ));
            }
            let gw = match &r.gw {
                Some(raw) => {
                    let fg = format!("routes[{i}].gw");
                    Some(in_cidr(&fg, raw, parse_ip(&fg, raw)?)?)
                }
                None => None,
            };
            routes.push(Route { dst, gw });
        }
        if let Some(dns) = &c.dns {
            for (i, ns) in dns.nameservers.iter().enumerate() {
                parse_ip(&format!("dns.nameservers[{i}]"), ns)?;
            }
        }
        if let Some(pool) = &c.mac_pool {
            check_segment("macPool", pool)?;
        }
        if c.selector.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid(
                "selector",
                "",
                "must not be blank; omit it instead",
            ));
        }

        Ok(Subnet {
            name: name.to_string(),
            master: c.master.clone(),
            vlan: c.vlan,
            mode: c.mode,
            mtu: c.mtu,
            cidr,
            gateway,
            routes,
            dns: c.dns.clone(),
            mac_pool: c.mac_pool.clone(),
            host_shim: c.host_shim,
            default_route: !c.no_default_route,
            selector: c.selector.clone(),
            pool,
            never,
        })
    }

    /// The addresses automatic allocation picks from.
    pub fn pool(&self) -> &AddrSet {
        &self.pool
    }

    /// How many addresses automatic allocation can hand out.
    pub fn capacity(&self) -> u128 {
        self.pool.len()
    }

    /// The `i`-th allocatable address.
    pub fn nth(&self, i: u128) -> Option<IpAddr> {
        self.pool.nth(i).map(|x| u128_to_ip(x, self.cidr.ip()))
    }

    /// Whether a static request for `ip` is acceptable: inside the CIDR and not network,
    /// broadcast, gateway or excluded. Static addresses may lie outside `ranges`, the way fixed
    /// DHCP leases sit outside the dynamic range.
    ///
    /// # Errors
    /// [`Error::OutsideSubnet`] saying why not.
    pub fn check_static(&self, ip: IpAddr) -> Result<(), Error> {
        let refuse = |reason: &str| Error::OutsideSubnet {
            subnet: self.name.clone(),
            ip,
            reason: reason.to_string(),
        };
        if ip.is_ipv6() != self.cidr.is_ipv6() || !self.cidr.contains(ip) {
            return Err(refuse(&format!("not inside cidr {}", self.cidr)));
        }
        if Some(ip) == self.gateway {
            return Err(refuse("it is the subnet's gateway"));
        }
        if self.never.contains(ip_to_u128(ip)) {
            return Err(refuse(
                "it is the network or broadcast address, or listed in exclude",
            ));
        }
        Ok(())
    }

    /// Name of the parent link on a node: `master`, or `master.vlan` for a tagged subnet.
    pub fn parent_name(&self, master: &str) -> String {
        if self.vlan == 0 {
            master.to_string()
        } else {
            format!("{master}.{}", self.vlan)
        }
    }
}

/// A validated MAC pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacPool {
    pub name: String,
    set: AddrSet,
}

impl MacPool {
    /// Validates a mirrored MAC pool config.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field: malformed, multicast or (unless `allowGlobal`)
    /// globally administered start/end, start after end, overlapping ranges, no range.
    pub fn from_config(name: &str, c: &MacPoolConfig) -> Result<MacPool, Error> {
        check_segment("name", name)?;
        if c.ranges.is_empty() {
            return Err(invalid("ranges", "[]", "must list at least one range"));
        }
        let mut raw: Vec<(u128, u128)> = Vec::new();
        let mut segs: Vec<(u128, u128)> = Vec::new();
        for (i, r) in c.ranges.iter().enumerate() {
            let mut ends = [MacAddr([0; 6]); 2];
            for (slot, (field, raw)) in ends.iter_mut().zip([
                (format!("ranges[{i}].start"), &r.start),
                (format!("ranges[{i}].end"), &r.end),
            ]) {
                let mac = parse_mac(&field, raw)?;
                if mac.is_zero() {
                    return Err(invalid(&field, raw, "is the all-zero address"));
                }
                if mac.is_multicast() {
                    return Err(invalid(
                        &field,
                        raw,
                        "is a multicast address (lowest bit of the first octet set)",
                    ));
                }
                if !mac.is_local() && !c.allow_global {
                    return Err(invalid(
                        &field,
                        raw,
                        "is globally administered (set allowGlobal to use vendor address space)",
                    ));
                }
                *slot = mac;
            }
            let [start, end] = ends;
            if start > end {
                return Err(invalid(
                    &format!("ranges[{i}].start"),
                    &r.start,
                    format!("is after ranges[{i}].end {}", r.end),
                ));
            }
            let (a, b) = (u128::from(start.to_u64()), u128::from(end.to_u64()));
            if let Some(j) = raw.iter().position(|&(x, y)| a <= y && x <= b) {
                return Err(invalid(
                    &format!("ranges[{i}]"),
                    format!("{}-{}", r.start, r.end),
                    format!("overlaps ranges[{j}]"),
                ));
            }
            raw.push((a, b));
            let usable = mac_range_set(start, end, c.allow_global);
            segs.extend(usable.segments().iter().copied());
        }
        Ok(MacPool {
            name: name.to_string(),
            set: AddrSet::from_segments(segs),
        })
    }

    /// How many addresses the pool can hand out.
    pub fn capacity(&self) -> u128 {
        self.set.len()
    }

    /// The addresses of the pool.
    pub fn set(&self) -> &AddrSet {
        &self.set
    }

    /// The `i`-th address of the pool.
    pub fn nth(&self, i: u128) -> Option<MacAddr> {
        self.set.nth(i).map(|x| MacAddr::from_u64(x as u64))
    }
}

/// Who holds an attachment: a pod incarnation (UID), its sandbox (container ID) and the interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    /// The CNI network (the netconf's `name`) the attachment belongs to, so that one network's
    /// GC never touches another network's attachments in a shared subnet. Empty in records
    /// written without one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
}

impl Owner {
    /// Checks every field can go into a key and an ifname is a Linux interface name.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `owner.<field>`.
    pub fn validate(&self) -> Result<(), Error> {
        check_segment("owner.podUid", &self.pod_uid)?;
        check_segment("owner.namespace", &self.namespace)?;
        check_segment("owner.pod", &self.pod)?;
        check_segment("owner.containerId", &self.container_id)?;
        check_segment("owner.node", &self.node)?;
        check_ifname("owner.ifname", &self.ifname)
    }

    /// Same pod incarnation and interface (the container may differ).
    pub fn same_attachment(&self, other: &Owner) -> bool {
        self.pod_uid == other.pod_uid && self.ifname == other.ifname
    }

    /// Same pod incarnation, sandbox and interface: the exact owner DEL must match.
    pub fn same_owner(&self, other: &Owner) -> bool {
        self.same_attachment(other) && self.container_id == other.container_id
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (uid {}, {}, container {})",
            self.namespace,
            self.pod,
            self.pod_uid,
            self.ifname,
            short_id(&self.container_id)
        )
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Whether a reservation is waiting for its interface (under a lease) or durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Committed,
    /// Released by its pod but kept for a sticky key until the hold lease expires.
    Held,
}

/// A reservation that follows a sticky key (e.g. `namespace/name`) rather than one pod UID: after
/// its pod goes, the address is held for the key for `holdSeconds`, and a new pod with the same
/// key gets it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickyRef {
    pub key: String,
    pub hold_seconds: u64,
}

/// The JSON record stored, identically, under the IP key, the MAC key, the owner key and the node
/// key of one attachment, so that any one of them answers "who holds this and since when".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub subnet: String,
    pub ip: IpAddr,
    /// Prefix length of the subnet, so the record alone gives the interface address.
    pub prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    pub owner: Owner,
    pub state: State,
    /// RFC 3339 time the reservation was created.
    pub since: String,
    /// The pending (or hold) lease, hex as `etcdctl lease list` prints it; absent once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Set when the reservation follows a sticky key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyRef>,
}

/// A reservation as read back: the record and the etcd revision all its keys were last written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub record: Record,
    /// `mod_revision` shared by the record's keys (they are always written in one transaction).
    pub revision: i64,
}

/// What IP a reservation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpRequest {
    /// Any free address of the subnet's ranges.
    Auto,
    /// Exactly this address (inside the CIDR, not excluded).
    Static(IpAddr),
}

/// What MAC a reservation asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacRequest {
    /// No MAC reservation: the kernel's random address stays.
    None,
    /// Any free address of this pool.
    Auto(MacPool),
    /// Exactly this address (unicast), reserved cluster-wide.
    Static(MacAddr),
}

/// The pod mirror the operator writes at `<prefix>/pods/<namespace>/<name>` (the same JSON as the
/// operator's `PodRecord`; unknown fields are ignored, so either side may add some).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    /// The node the pod is scheduled to; absent until it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `static-ip`, `static-mac`, `vlan` and the Multus networks annotation, when present.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The selections of the networks annotation that name our networks (opaque here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(f: impl FnOnce(&mut SubnetConfig)) -> Result<Subnet, Error> {
        let mut c = SubnetConfig {
            master: "eth0".into(),
            cidr: "10.230.0.0/24".into(),
            gateway: Some("10.230.0.1".into()),
            ..Default::default()
        };
        f(&mut c);
        Subnet::from_config("lan", &c)
    }

    fn range(a: &str, b: &str) -> RangeConfig {
        RangeConfig {
            start: a.into(),
            end: b.into(),
        }
    }

    #[test]
    fn modes_parse_print_and_serialize() {
        for mode in MacvlanMode::ALL {
            assert_eq!(mode.as_str().parse::<MacvlanMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), mode.as_str());
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<MacvlanMode>(&json).unwrap(), mode);
        }
        assert_eq!(MacvlanMode::default(), MacvlanMode::Bridge);
        let err = "passthrough".parse::<MacvlanMode>().unwrap_err();
        assert!(err.to_string().contains("\"passthrough\""), "{err}");
        assert!(serde_json::from_str::<MacvlanMode>("\"Bridge\"").is_err());
    }

    #[test]
    fn whole_cidr_minus_network_broadcast_gateway() {
        let s = subnet(|_| {}).unwrap();
        assert_eq!(s.capacity(), 253);
        assert_eq!(s.nth(0), Some("10.230.0.2".parse().unwrap()));
        assert_eq!(s.nth(252), Some("10.230.0.254".parse().unwrap()));
    }

    #[test]
    fn ranges_and_excludes() {
        let s = subnet(|c| {
            c.ranges = vec![
                range("10.230.0.10", "10.230.0.19"),
                range("10.230.0.30", "10.230.0.31"),
            ];
            c.exclude = vec!["10.230.0.12".into(), "10.230.0.16/30".into()];
        })
        .unwrap();
        // 10..19 minus 12 and 16..19 = 10,11,13,14,15 ; plus 30,31
        assert_eq!(s.capacity(), 7);
        assert!(s.check_static("10.230.0.200".parse().unwrap()).is_ok());
        for bad in [
            "10.230.0.12",
            "10.230.0.17",
            "10.230.0.1",
            "10.230.0.0",
            "10.230.0.255",
            "10.231.0.5",
            "fd00::5",
        ] {
            assert!(
                s.check_static(bad.parse().unwrap()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn ipv6_subnet() {
        let s = Subnet::from_config(
            "lan6",
            &SubnetConfig {
                master: "eth0".into(),
                cidr: "fd00:230::/64".into(),
                gateway: Some("fd00:230::1".into()),
                ranges: vec![range("fd00:230::100", "fd00:230::1ff")],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.capacity(), 256);
        let whole = Subnet::from_config(
            "lan6",
            &SubnetConfig {
                master: "eth0".into(),
                cidr: "fd00:230::/64".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(whole.capacity(), (1u128 << 64) - 1);
    }

    #[test]
    fn bad_subnet_fields_are_named() {
        type Edit = fn(&mut SubnetConfig);
        let cases: &[(&str, Edit)] = &[
            ("cidr", |c| c.cidr = "10.230.0.0".into()),
            ("cidr", |c| c.cidr = "10.230.0.5/24".into()),
            ("gateway", |c| c.gateway = Some("10.231.0.1".into())),
            ("gateway", |c| c.gateway = Some("10.230.0.255".into())),
            ("gateway", |c| c.gateway = Some("fd00::1".into())),
            ("ranges[0].start", |c| {
                c.ranges = vec![range("10.230.1.1", "10.230.0.9")]
            }),
            ("ranges[0].end", |c| {
                c.ranges = vec![range("10.230.0.1", "10.231.0.9")]
            }),
            ("ranges[0].start", |c| {
                c.ranges = vec![range("10.230.0.9", "10.230.0.2")]
            }),
            ("ranges[0].start", |c| {
                c.ranges = vec![range("fd00::1", "fd00::9")]
            }),
            ("ranges[1]", |c| {
                c.ranges = vec![
                    range("10.230.0.2", "10.230.0.9"),
                    range("10.230.0.9", "10.230.0.20"),
                ]
            }),
            ("exclude[0]", |c| c.exclude = vec!["10.231.0.1".into()]),
            ("exclude[0]", |c| c.exclude = vec!["10.230.0.0/16".into()]),
            ("exclude[0]", |c| c.exclude = vec!["banana".into()]),
            ("ranges", |c| c.exclude = vec!["10.230.0.0/24".into()]),
            ("vlan", |c| c.vlan = 4095),
            ("master", |c| c.master = "".into()),
            ("master", |c| c.master = "averyveryverylongname".into()),
            ("master", |c| {
                c.master = "enp0s31f6abcd".into();
                c.vlan = 100
            }),
            ("mtu", |c| c.mtu = Some(20)),
            ("routes[0].dst", |c| {
                c.routes = vec![RouteConfig {
                    dst: "x".into(),
                    gw: None,
                }]
            }),
            ("routes[0].gw", |c| {
                c.routes = vec![RouteConfig {
                    dst: "192.168.0.0/16".into(),
                    gw: Some("1.2.3.4".into()),
                }]
            }),
            ("dns.nameservers[0]", |c| {
                c.dns = Some(DnsConfig {
                    nameservers: vec!["dns.local".into()],
                    ..Default::default()
                })
            }),
        ];
        for (field, edit) in cases {
            let err = subnet(*edit).expect_err(field);
            match &err {
                Error::Invalid { field: f, .. } => assert_eq!(f, field, "{err}"),
                other => panic!("{field}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn mac_pools() {
        let pool = |ranges: Vec<RangeConfig>, allow_global| {
            MacPool::from_config(
                "vms",
                &MacPoolConfig {
                    ranges,
                    allow_global,
                },
            )
        };
        let p = pool(vec![range("02:00:00:00:00:00", "02:00:00:00:00:ff")], false).unwrap();
        assert_eq!(p.capacity(), 256);
        assert_eq!(p.nth(255).unwrap().to_string(), "02:00:00:00:00:ff");
        let wide = pool(vec![range("02:00:00:00:00:00", "fe:ff:ff:ff:ff:ff")], false).unwrap();
        assert!(wide.capacity() > 1 << 40);
        assert!(pool(vec![range("00:16:3e:00:00:00", "00:16:3e:00:00:ff")], true).is_ok());

        let bad = [
            (
                "ranges[0].start",
                vec![range("03:00:00:00:00:00", "03:00:00:00:00:ff")],
                false,
            ),
            (
                "ranges[0].start",
                vec![range("00:16:3e:00:00:00", "00:16:3e:00:00:ff")],
                false,
            ),
            (
                "ranges[0].end",
                vec![range("02:00:00:00:00:00", "zz")],
                false,
            ),
            (
                "ranges[0].start",
                vec![range("02:00:00:00:00:09", "02:00:00:00:00:01")],
                false,
            ),
            (
                "ranges[0].start",
                vec![range("00:00:00:00:00:00", "00:00:00:00:00:01")],
                true,
            ),
            (
                "ranges[1]",
                vec![
                    range("02:00:00:00:00:00", "02:00:00:00:00:ff"),
                    range("02:00:00:00:00:80", "02:00:00:00:01:ff"),
                ],
                false,
            ),
            ("ranges", vec![], false),
        ];
        for (field, ranges, global) in bad {
            match pool(ranges, global) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn owner_validation_names_fields() {
        let mut o = Owner {
            pod_uid: "u1".into(),
            namespace: "default".into(),
            pod: "web-0".into(),
            container_id: "c1".into(),
            ifname: "net1".into(),
            node: "node-a".into(),
            network: String::new(),
        };
        assert!(o.validate().is_ok());
        o.ifname = "net/1".into();
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("owner.ifname"));
        o.ifname = "net1".into();
        o.pod_uid = "".into();
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("owner.podUid"));
    }

    #[test]
    fn record_json_is_readable() {
        let r = Record {
            subnet: "lan".into(),
            ip: "10.230.0.33".parse().unwrap(),
            prefix_len: 24,
            mac: Some("02:00:0a:e6:00:21".parse().unwrap()),
            owner: Owner {
                pod_uid: "u1".into(),
                namespace: "default".into(),
                pod: "web-0".into(),
                container_id: "c1".into(),
                ifname: "net1".into(),
                node: "node-a".into(),
                network: String::new(),
            },
            state: State::Pending,
            since: "2026-11-23T17:00:00Z".into(),
            lease: Some("694d8a0c1f2e3b44".into()),
            sticky: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""ip":"10.230.0.33""#), "{json}");
        assert!(json.contains(r#""podUid":"u1""#), "{json}");
        assert!(json.contains(r#""state":"pending""#), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }
}
