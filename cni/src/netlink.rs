//! The netlink layer: every kernel link, address and route operation of the plugin goes through
//! [`Netlink`], one small struct with intent-named methods (in the manner of netavark's
//! `network/netlink.rs`), plus [`setup_pod_macvlan`] / [`teardown_pod_macvlan`] that compose them
//! for one pod attachment.
//!
//! Layout:
//! - [`NetError`]: the one error type of this layer (and of [`crate::netns`]).
//! - [`MacvlanMode`], [`Link`], [`Route`], [`NewMacvlan`]: plain data.
//! - [`build_macvlan_message`], [`build_vlan_message`]: pure message builders, unit-tested
//!   without kernel support (this matters for 802.1q, which some kernels lack).
//! - [`Netlink`]: a connection bound to one network namespace.
//! - VLAN sub-interfaces ([`Netlink::ensure_vlan`], [`Netlink::delete_vlan_if_unused`]) and the
//!   host shim ([`Netlink::ensure_host_shim`], [`Netlink::add_host_route`], …).
//! - [`LinkLock`]: a node-local file lock that serialises users of a shared parent link.
//!
//! Runtime requirement: [`Netlink::open`] spawns the socket's connection task with
//! `tokio::spawn`, so it must be called inside a tokio runtime. The socket is bound to the
//! namespace of the thread that opened it, so the task may run on any thread; the plugin still
//! uses a current-thread runtime because namespaces are per thread (see [`crate::netns`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoMacVlan, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, LinkVlan, RouteMessageBuilder};

use crate::netns::{write_sysctl, Netns};

/// Linux interface names are at most `IFNAMSIZ - 1` bytes.
pub const MAX_IFNAME_LEN: usize = 15;

/// Where [`LinkLock`] keeps its lock files by default (tmpfs: stale locks vanish on reboot).
pub const DEFAULT_LOCK_DIR: &str = "/run/static-macvlan/locks";

/// How long an IPv6 host route waits for the shim's address to be usable (see
/// `Netlink::shim_source`): without DAD, a work queue's delay; with IPv6 off, never.
const SHIM_SOURCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Prefix of the temporary name a pod macvlan has between creation and rename.
pub const TEMP_NAME_PREFIX: &str = "smv";

const ENODEV: i32 = nix::libc::ENODEV;
const EADDRNOTAVAIL: i32 = nix::libc::EADDRNOTAVAIL;
const EEXIST: i32 = nix::libc::EEXIST;
const ESRCH: i32 = nix::libc::ESRCH;
const ENOENT: i32 = nix::libc::ENOENT;
const EOPNOTSUPP: i32 = nix::libc::EOPNOTSUPP;

/// Errors of the netlink and namespace layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No link of that name (or `#index`) in the namespace asked.
    #[error("link {name} not found")]
    LinkNotFound { name: String },

    /// An interface name the kernel would refuse.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// The requested MTU exceeds the parent's: a macvlan can never be larger than its parent.
    #[error("mtu {mtu} is larger than mtu {parent_mtu} of parent link {parent}")]
    MtuTooLarge {
        mtu: u32,
        parent: String,
        parent_mtu: u32,
    },

    /// A passthru macvlan always has its parent's MAC: a requested MAC cannot be honoured.
    #[error("macvlan mode passthru takes the mac of parent link {parent}: a requested mac cannot be applied")]
    PassthruMac { parent: String },

    /// VLAN ids 0 and 4095 are reserved by 802.1q.
    #[error("invalid vlan id {vlan_id}: must be between 1 and 4094")]
    InvalidVlanId { vlan_id: u16 },

    /// The kernel cannot create 802.1q links (no `8021q` module).
    #[error("create vlan {name}: the kernel has no 802.1q vlan support (load the 8021q module)")]
    VlanUnsupported { name: String },

    /// A link of the name we need exists but is not what we would have created.
    #[error("link {name} already exists and {reason}")]
    LinkConflict { name: String, reason: String },

    /// A route that cannot be installed as given.
    #[error("invalid route {route}: {reason}")]
    InvalidRoute { route: String, reason: &'static str },

    /// Opening or entering a network namespace failed.
    #[error("{op} {}: {source}", path.display())]
    Netns {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// Reading or writing a `/proc/sys` file failed.
    #[error("{op} sysctl {}: {source}", path.display())]
    Sysctl {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// A netlink request failed; `op` says which, in "verb object" form.
    #[error("{op}: {source}")]
    Netlink { op: String, source: io::Error },

    /// IPv6 duplicate address detection found the address in use on the LAN.
    #[error("ipv6 address {address} on {ifname} failed duplicate address detection")]
    DadFailed { ifname: String, address: IpAddr },

    /// IPv6 addresses stayed tentative for longer than allowed.
    #[error("ipv6 addresses on {ifname} still tentative after {timeout:?}")]
    DadTimeout { ifname: String, timeout: Duration },

    /// Creating or locking a [`LinkLock`] file failed.
    #[error("lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
}

impl NetError {
    /// The errno of the failed system or netlink call behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. }
            | Self::Netns { source, .. }
            | Self::Sysctl { source, .. }
            | Self::Lock { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn neighbour_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn netlink_error(op: impl Into<String>, err: rtnetlink::Error) -> NetError {
    let source = match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other),
    };
    NetError::Netlink {
        op: op.into(),
        source,
    }
}

pub use static_macvlan_allocator::MacvlanMode;

/// The kernel's name for a mode.
fn mode_to_kernel(mode: MacvlanMode) -> MacVlanMode {
    match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

fn mode_from_kernel(mode: MacVlanMode) -> Option<MacvlanMode> {
    match mode {
        MacVlanMode::Bridge => Some(MacvlanMode::Bridge),
        MacVlanMode::Vepa => Some(MacvlanMode::Vepa),
        MacVlanMode::Private => Some(MacvlanMode::Private),
        MacVlanMode::Passthrough => Some(MacvlanMode::Passthru),
        _ => None,
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: the lower device of a macvlan or vlan (the peer of a veth). When the lower
    /// device lives in another namespace this is its index *there*.
    pub parent_index: Option<u32>,
    /// `IFLA_INFO_KIND`: `macvlan`, `vlan`, `veth`, `bridge`… (`None` for physical NICs).
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub promiscuity: u32,
    pub vlan_id: Option<u16>,
    pub macvlan_mode: Option<MacvlanMode>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            parent_index: None,
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            promiscuity: 0,
            vlan_id: None,
            macvlan_mode: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Address(bytes) => link.mac = bytes.try_into().ok(),
                LinkAttribute::Link(index) => link.parent_index = Some(index),
                LinkAttribute::Promiscuity(p) => link.promiscuity = p,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::MacVlan(data)) => {
                                for d in data {
                                    if let InfoMacVlan::Mode(mode) = d {
                                        link.macvlan_mode = mode_from_kernel(mode);
                                    }
                                }
                            }
                            LinkInfo::Data(InfoData::Vlan(data)) => {
                                for d in data {
                                    if let InfoVlan::Id(id) = d {
                                        link.vlan_id = Some(id);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// A route out of one link: `destination` via `gateway`, or directly on-link without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// The default route (`0.0.0.0/0` or `::/0`, by the gateway's family) via `gateway`.
    pub fn default_via(gateway: IpAddr) -> Self {
        let destination = match gateway {
            IpAddr::V4(_) => IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpAddr::V6(_) => IpNetwork::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        }
        .expect("prefix 0 is valid for both families");
        Self {
            destination,
            gateway: Some(gateway),
        }
    }

    /// A route to `destination` on-link, without a gateway.
    pub fn on_link(destination: IpNetwork) -> Self {
        Self {
            destination,
            gateway: None,
        }
    }

    /// Checks what the kernel would reject with a bare `EINVAL`, to name the problem instead.
    ///
    /// # Errors
    /// [`NetError::InvalidRoute`] for mixed address families or host bits in the destination.
    pub fn validate(&self) -> Result<(), NetError> {
        if let Some(gw) = self.gateway {
            if gw.is_ipv4() != self.destination.is_ipv4() {
                return Err(NetError::InvalidRoute {
                    route: self.to_string(),
                    reason: "gateway and destination are of different address families",
                });
            }
        }
        if self.destination.ip() != self.destination.network() {
            return Err(NetError::InvalidRoute {
                route: self.to_string(),
                reason: "destination has host bits set",
            });
        }
        Ok(())
    }

    fn message(&self, index: u32) -> RouteMessage {
        let mut msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.destination.ip(), self.destination.prefix())
            .expect("family and prefix length were checked by ipnetwork")
            .output_interface(index);
        match self.gateway {
            Some(gw) => {
                msg = msg.gateway(gw).expect("families were checked by validate");
            }
            // Without a gateway the destination is directly on the link: scope link, as
            // `ip route add <dst> dev <if>` does, so source selection treats it as on-link.
            None => msg = msg.scope(RouteScope::Link),
        }
        msg.build()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gateway {
            Some(gw) => write!(f, "{} via {gw}", self.destination),
            None => write!(f, "{}", self.destination),
        }
    }
}

/// What to create: a macvlan named `name` on the link `parent_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMacvlan {
    pub name: String,
    pub parent_index: u32,
    pub mode: MacvlanMode,
    /// Set in the create request. Ignored by the kernel in passthru mode, where the macvlan
    /// always inherits the parent's MAC.
    pub mac: Option<[u8; 6]>,
    /// Set in the create request; `None` inherits the parent's MTU.
    pub mtu: Option<u32>,
}

/// Builds the `RTM_NEWLINK` message for `spec`, created directly in the namespace of
/// `netns_fd` when given (`IFLA_NET_NS_FD`).
pub fn build_macvlan_message(spec: &NewMacvlan, netns_fd: Option<RawFd>) -> LinkMessage {
    let mut builder = LinkMacVlan::new(&spec.name, spec.parent_index, mode_to_kernel(spec.mode));
    if let Some(mac) = spec.mac {
        builder = builder.address(mac.to_vec());
    }
    if let Some(mtu) = spec.mtu {
        builder = builder.mtu(mtu);
    }
    if let Some(fd) = netns_fd {
        builder = builder.setns_by_fd(fd);
    }
    builder.build()
}

/// Builds the `RTM_NEWLINK` message for an 802.1q sub-interface `name` with id `vlan_id` on
/// the link `parent_index`.
pub fn build_vlan_message(name: &str, parent_index: u32, vlan_id: u16) -> LinkMessage {
    LinkVlan::new(name, parent_index, vlan_id).build()
}

/// Checks `name` against the kernel's rules for interface names (`dev_valid_name`).
///
/// # Errors
/// [`NetError::InvalidName`] naming the rule broken.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A fresh temporary link name: `smv` + 8 random hex digits (11 bytes).
pub fn temp_link_name() -> String {
    format!("{TEMP_NAME_PREFIX}{:08x}", fastrand::u32(..))
}

/// Whether `name` is a name of [`temp_link_name`]: `smv` + 8 hex digits.
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_NAME_PREFIX)
        .is_some_and(|rest| rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The name of the VLAN sub-interface `vlan_id` of `master`: `<master>.<vlan_id>`.
///
/// # Errors
/// [`NetError::InvalidVlanId`] outside 1..=4094, [`NetError::InvalidName`] when the result is
/// too long for the kernel.
pub fn vlan_link_name(master: &str, vlan_id: u16) -> Result<String, NetError> {
    if !(1..=4094).contains(&vlan_id) {
        return Err(NetError::InvalidVlanId { vlan_id });
    }
    let name = format!("{master}.{vlan_id}");
    validate_ifname(&name)?;
    Ok(name)
}

fn host_prefix(ip: IpAddr) -> IpNetwork {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, prefix).expect("full-length prefix is valid")
}

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A rtnetlink connection bound to the network namespace it was opened in.
///
/// A netlink socket talks to the namespace of the thread that created it, for its whole life,
/// whichever thread later uses it: open one in the host namespace with [`Netlink::open`], and
/// one for a pod with [`Netlink::open_in`].
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
    /// The namespace the socket was opened in, when it is not the thread's own: sysctls under
    /// /proc/sys/net belong to the namespace of the thread that opens them, so writes for this
    /// connection's links enter it.
    ns: Option<Netns>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The task owns the socket, and a socket keeps its namespace alive.
        self.conn.abort();
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's current namespace. Must be called inside a
    /// tokio runtime (it spawns the connection task).
    ///
    /// # Errors
    /// [`NetError::Netlink`] when the socket cannot be created.
    pub fn open() -> Result<Self, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetError::Netlink {
                op: "open netlink socket".into(),
                source,
            })?;
        let conn = tokio::spawn(conn);
        Ok(Self {
            handle,
            conn,
            ns: None,
        })
    }

    /// Opens a connection in `ns`: the thread enters `ns` only while the socket is created, and
    /// is back in its own namespace when this returns.
    ///
    /// # Errors
    /// [`NetError::Netns`] when `ns` cannot be entered, [`NetError::Netlink`] as [`Netlink::open`].
    pub fn open_in(ns: &Netns) -> Result<Self, NetError> {
        let mut nl = ns.run(Self::open)??;
        nl.ns = Some(Netns::open(ns.path())?);
        Ok(nl)
    }

    /// Writes a sysctl of this connection's namespace.
    fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        match &self.ns {
            Some(ns) => ns.run(|| write_sysctl(key, value))?,
            None => write_sysctl(key, value),
        }
    }

    /// Every link of the namespace.
    ///
    /// # Errors
    /// [`NetError::Netlink`] when the dump fails.
    pub async fn links(&self) -> Result<Vec<Link>, NetError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(Link::from_message)
            .try_collect()
            .await
            .map_err(|e| netlink_error("list links", e))
    }

    /// The link named `name`, or `None`.
    ///
    /// # Errors
    /// [`NetError::InvalidName`] for names the kernel cannot hold, [`NetError::Netlink`] otherwise.
    pub async fn find_link(&self, name: &str) -> Result<Option<Link>, NetError> {
        validate_ifname(name)?;
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(Link::from_message)),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("get link {name}"), e)),
        }
    }

    /// The link named `name`.
    ///
    /// # Errors
    /// [`NetError::LinkNotFound`] when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, NetError> {
        self.find_link(name)
            .await?
            .ok_or_else(|| NetError::LinkNotFound {
                name: name.to_string(),
            })
    }

    /// The link with index `index`.
    ///
    /// # Errors
    /// [`NetError::LinkNotFound`] (named `#<index>`) when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Link, NetError> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Link::from_message(msg)),
            Ok(None) => Err(NetError::LinkNotFound {
                name: format!("#{index}"),
            }),
            Err(e) if errno_of(&e) == Some(ENODEV) => Err(NetError::LinkNotFound {
                name: format!("#{index}"),
            }),
            Err(e) => Err(netlink_error(format!("get link #{index}"), e)),
        }
    }

    /// Whether a link named `name` exists.
    ///
    /// # Errors
    /// As [`Netlink::find_link`].
    pub async fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        Ok(self.find_link(name).await?.is_some())
    }

    async fn create(&self, msg: LinkMessage, op: impl FnOnce() -> String) -> Result<(), NetError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| netlink_error(op(), e))
    }

    /// Creates a macvlan in this connection's namespace.
    ///
    /// # Errors
    /// [`NetError::Netlink`] (e.g. `EEXIST` for a taken name).
    pub async fn create_macvlan(&self, spec: &NewMacvlan) -> Result<(), NetError> {
        validate_ifname(&spec.name)?;
        self.create(build_macvlan_message(spec, None), || {
            format!("create macvlan {} on #{}", spec.name, spec.parent_index)
        })
        .await
    }

    /// Creates a macvlan on a parent of this connection's namespace directly inside `netns`.
    ///
    /// One request instead of create-then-move: the kernel registers the device in the target
    /// namespace at once, so it never appears (nor is announced to udev or other listeners) in
    /// the host namespace, and it skips the namespace change, which waits for RCU grace
    /// periods: about 0.4 ms against 16 ms for create-then-move (`tests/netlink_timing.rs`).
    ///
    /// # Errors
    /// [`NetError::Netlink`]; the name is checked against the links of `netns`.
    pub async fn create_macvlan_in_netns(
        &self,
        spec: &NewMacvlan,
        netns: &Netns,
    ) -> Result<(), NetError> {
        validate_ifname(&spec.name)?;
        self.create(build_macvlan_message(spec, Some(netns.as_raw_fd())), || {
            format!(
                "create macvlan {} on #{} in {}",
                spec.name,
                spec.parent_index,
                netns.path().display()
            )
        })
        .await
    }

    async fn set(&self, msg: LinkMessage, op: impl FnOnce() -> String) -> Result<(), NetError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| netlink_error(op(), e))
    }

    /// Moves link `index` into `netns` (the slower alternative to
    /// [`Netlink::create_macvlan_in_netns`], kept for comparison and for links we did not create).
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn move_to_netns(&self, index: u32, netns: &Netns) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.set(msg, || {
            format!("move link #{index} to {}", netns.path().display())
        })
        .await
    }

    /// Renames link `index`; the link must be down.
    ///
    /// # Errors
    /// [`NetError::InvalidName`], or [`NetError::Netlink`] (`EEXIST` for a taken name, `EBUSY`
    /// when the link is up).
    pub async fn rename(&self, index: u32, new_name: &str) -> Result<(), NetError> {
        validate_ifname(new_name)?;
        let msg = LinkUnspec::new_with_index(index).name(new_name).build();
        self.set(msg, || format!("rename link #{index} to {new_name}"))
            .await
    }

    /// Sets the MAC address of link `index`. On a passthru macvlan the kernel changes the
    /// parent's MAC as well.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set(msg, || {
            format!("set mac {} on link #{index}", mac_string(&mac))
        })
        .await
    }

    /// Sets the MTU of link `index`.
    ///
    /// # Errors
    /// [`NetError::Netlink`] (`EINVAL` above the parent's MTU for a macvlan).
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set(msg, || format!("set mtu {mtu} on link #{index}"))
            .await
    }

    /// Brings link `index` up.
    ///
    /// # Errors
    /// [`NetError::Netlink`] (`EADDRINUSE` when a sibling macvlan already has this MAC).
    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(msg, || format!("set link #{index} up")).await
    }

    /// Deletes link `index` (with its addresses and routes).
    ///
    /// # Errors
    /// [`NetError::Netlink`] (`ENODEV` when it is already gone).
    pub async fn delete_link(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| netlink_error(format!("delete link #{index}"), e))
    }

    /// Deletes the link named `name` if it exists; `Ok(false)` when it did not.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool, NetError> {
        let Some(link) = self.find_link(name).await? else {
            return Ok(false);
        };
        match self.delete_link(link.index).await {
            Ok(()) => Ok(true),
            // Someone else deleted it between our lookup and our request.
            Err(e) if e.errno() == Some(ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `address` (with its prefix length, which also installs the connected route) to link
    /// `index`.
    ///
    /// # Errors
    /// [`NetError::Netlink`] (`EEXIST` when the link already has it).
    pub async fn add_address(&self, index: u32, address: IpNetwork) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, address.ip(), address.prefix())
            .execute()
            .await
            .map_err(|e| netlink_error(format!("add address {address} to link #{index}"), e))
    }

    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>, NetError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error(format!("list addresses of link #{index}"), e))
    }

    /// The addresses of link `index` (IPv6 link-local ones included), with prefix lengths.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetError> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    /// Waits until no global IPv6 address of link `index` is tentative (duplicate address
    /// detection done), polling every 20 ms.
    ///
    /// # Errors
    /// [`NetError::DadFailed`] when the kernel found an address in use on the LAN,
    /// [`NetError::DadTimeout`] after `timeout`.
    pub async fn wait_addresses_settled(
        &self,
        index: u32,
        timeout: Duration,
    ) -> Result<(), NetError> {
        let start = Instant::now();
        loop {
            let mut tentative = false;
            for msg in self.address_messages(index).await? {
                let Some(IpNetwork::V6(addr)) = address_of(&msg) else {
                    continue;
                };
                if addr.ip().is_unicast_link_local() {
                    continue;
                }
                let flags = address_flags(&msg);
                if flags.contains(AddressFlags::Dadfailed) {
                    return Err(NetError::DadFailed {
                        ifname: self.link_name_for_error(index).await,
                        address: addr.ip().into(),
                    });
                }
                tentative |= flags.contains(AddressFlags::Tentative);
            }
            if !tentative {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(NetError::DadTimeout {
                    ifname: self.link_name_for_error(index).await,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn link_name_for_error(&self, index: u32) -> String {
        match self.link_by_index(index).await {
            Ok(link) => link.name,
            Err(_) => format!("#{index}"),
        }
    }

    /// Adds `route` out of link `index` to the main table.
    ///
    /// # Errors
    /// [`NetError::InvalidRoute`], or [`NetError::Netlink`] (`EEXIST` for a duplicate,
    /// `ENETUNREACH` when the gateway is not on a connected subnet).
    pub async fn add_route(&self, index: u32, route: &Route) -> Result<(), NetError> {
        route.validate()?;
        self.handle
            .route()
            .add(route.message(index))
            .execute()
            .await
            .map_err(|e| netlink_error(format!("add route {route} dev #{index}"), e))
    }

    /// The main-table routes out of link `index`, both families (including the kernel's
    /// connected and IPv6 link-local routes).
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn routes(&self, index: u32) -> Result<Vec<Route>, NetError> {
        Ok(self
            .route_messages(index)
            .await?
            .iter()
            .filter_map(route_of)
            .collect())
    }

    /// Whether the main table already holds a default route of the family (IPv6 when `v6`), on
    /// any link.
    ///
    /// # Errors
    /// [`NetError::Netlink`] when the dump fails.
    pub async fn has_default_route(&self, v6: bool) -> Result<bool, NetError> {
        Ok(self
            .main_routes(v6)
            .await?
            .iter()
            .any(|m| m.header.destination_prefix_length == 0))
    }

    /// The main table's routes of one family.
    async fn main_routes(&self, v6: bool) -> Result<Vec<RouteMessage>, NetError> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let dump: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("list routes", e))?;
        Ok(dump
            .into_iter()
            .filter(|m| route_table(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
            .collect())
    }

    async fn route_messages(&self, index: u32) -> Result<Vec<RouteMessage>, NetError> {
        let mut routes = self.main_routes(false).await?;
        routes.extend(self.main_routes(true).await?);
        routes.retain(|m| route_oif(m) == Some(index));
        Ok(routes)
    }

    async fn del_route(&self, index: u32, route: &Route) -> Result<bool, NetError> {
        match self
            .handle
            .route()
            .del(route.message(index))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            // Already gone: IPv4 says ESRCH, IPv6 ENOENT.
            Err(e) if matches!(errno_of(&e), Some(ESRCH) | Some(ENOENT)) => Ok(false),
            Err(e) => Err(netlink_error(
                format!("delete route {route} dev #{index}"),
                e,
            )),
        }
    }

    /// Creates the 802.1q sub-interface `name` with id `vlan_id` on link `parent_index`.
    ///
    /// # Errors
    /// [`NetError::VlanUnsupported`] when the kernel has no 802.1q support,
    /// [`NetError::Netlink`] otherwise (`EEXIST` for a taken name).
    pub async fn create_vlan(
        &self,
        parent_index: u32,
        vlan_id: u16,
        name: &str,
    ) -> Result<(), NetError> {
        if !(1..=4094).contains(&vlan_id) {
            return Err(NetError::InvalidVlanId { vlan_id });
        }
        validate_ifname(name)?;
        let msg = build_vlan_message(name, parent_index, vlan_id);
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            // Without the 8021q driver the kernel finds no link ops for kind "vlan" (after a
            // failed request_module) and answers EOPNOTSUPP, which iproute2 shows as
            // "Unknown device type".
            Err(e) if errno_of(&e) == Some(EOPNOTSUPP) => Err(NetError::VlanUnsupported {
                name: name.to_string(),
            }),
            Err(e) => Err(netlink_error(
                format!("create vlan {name} id {vlan_id} on #{parent_index}"),
                e,
            )),
        }
    }

    /// Makes sure `<master>.<vlan_id>` exists and is up. Returns the link and whether this
    /// call created it (the caller records that, so that only a VLAN we created is ever
    /// deleted). Hold a [`LinkLock`] on the VLAN name from here until the pod's macvlan is up.
    ///
    /// # Errors
    /// [`NetError::InvalidVlanId`], [`NetError::InvalidName`], [`NetError::LinkNotFound`] for a
    /// missing master, [`NetError::LinkConflict`] when the name is taken by something else,
    /// [`NetError::VlanUnsupported`], [`NetError::Netlink`].
    pub async fn ensure_vlan(&self, master: &str, vlan_id: u16) -> Result<(Link, bool), NetError> {
        let name = vlan_link_name(master, vlan_id)?;
        let master_link = self.link_by_name(master).await?;
        let created = match self.find_link(&name).await? {
            Some(_) => false,
            None => match self.create_vlan(master_link.index, vlan_id, &name).await {
                Ok(()) => true,
                // A concurrent ADD for another pod created it first: it is theirs.
                Err(e) if e.errno() == Some(EEXIST) => false,
                Err(e) => return Err(e),
            },
        };
        let link = self.link_by_name(&name).await?;
        if !link.is_kind("vlan")
            || link.vlan_id != Some(vlan_id)
            || link.parent_index != Some(master_link.index)
        {
            return Err(NetError::LinkConflict {
                name,
                reason: format!("is not vlan {vlan_id} of {master}"),
            });
        }
        if !link.up {
            // Macvlans on a down VLAN have no carrier; a VLAN we depend on must be up.
            self.set_up(link.index).await?;
        }
        Ok((link, created))
    }

    /// Deletes the VLAN link `name` if nothing uses it any more; returns whether it deleted it.
    ///
    /// "Uses" means: a link of this namespace has it as parent, or it is promiscuous (passthru
    /// macvlans make their parent so), or its unicast address list holds a MAC — an up macvlan
    /// in *any* namespace adds its MAC there, and this is the only trace of macvlans that live
    /// in pod namespaces. A macvlan that is created but not yet up leaves no trace, so callers
    /// serialise ADD (from [`Netlink::ensure_vlan`] to bring-up) and DEL with a [`LinkLock`].
    /// Deleting a VLAN deletes every macvlan on it, in every namespace: when in doubt, keep it.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn delete_vlan_if_unused(&self, name: &str) -> Result<bool, NetError> {
        let Some(link) = self.find_link(name).await? else {
            return Ok(false);
        };
        if !link.is_kind("vlan") || self.link_in_use(&link).await? {
            return Ok(false);
        }
        match self.delete_link(link.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether any macvlan (or other upper link) uses `link` as its parent, in any namespace,
    /// as far as the kernel shows it; see [`Netlink::delete_vlan_if_unused`].
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn link_in_use(&self, link: &Link) -> Result<bool, NetError> {
        if link.promiscuity > 0 {
            return Ok(true);
        }
        let links = self.links().await?;
        if links
            .iter()
            .any(|l| l.index != link.index && l.parent_index == Some(link.index))
        {
            return Ok(true);
        }
        let own = link.mac;
        Ok(self
            .unicast_addresses(link.index)
            .await?
            .into_iter()
            .any(|mac| Some(mac) != own))
    }

    /// The secondary unicast MACs on link `index`'s address list: among them the MAC of every
    /// up (non-passthru) macvlan on it, in whichever namespace that macvlan lives.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn unicast_addresses(&self, index: u32) -> Result<Vec<[u8; 6]>, NetError> {
        // The bridge fdb dump lists, for a non-bridge device, its unicast and multicast address
        // lists as "self permanent" entries; a macvlan adds its MAC to its lower device's
        // unicast list when it goes up.
        let entries: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("list fdb entries", e))?;
        Ok(entries
            .iter()
            .filter(|n| n.header.ifindex == index)
            .flat_map(|n| n.attributes.iter())
            .filter_map(|attr| match attr {
                NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(&mac[..]).ok(),
                _ => None,
            })
            .filter(|mac| mac[0] & 1 == 0)
            .collect())
    }

    /// Makes sure the host-side macvlan `shim_name` exists on `parent` in this (host)
    /// namespace, holds `addresses` (each as a /32 or /128) and is up; returns whether this call
    /// created the link.
    ///
    /// A macvlan's parent never sees its macvlans' traffic, so the host cannot reach its own
    /// pods through the NIC; a sibling macvlan in the host namespace can. It must be in bridge
    /// mode, and so must the pods' macvlans, for the kernel to pass frames between siblings
    /// without a hairpinning switch. Per-pod routes ([`Netlink::add_host_route`]) steer traffic
    /// into the shim.
    ///
    /// Addresses: without one, the host uses its address on the parent as source, and the pod
    /// must resolve that address through the shim. IPv4 does (with the default `arp_ignore=0`
    /// the host answers ARP for any of its addresses on any link), IPv6 does not (neighbour
    /// solicitations are answered only for addresses of the receiving link), so IPv6 pods need
    /// a shim address from the subnet, and so does IPv4 with `arp_ignore=1`. Being the address
    /// of the outgoing link, it becomes the source of host-to-pod traffic. Added as host
    /// prefixes (no second connected route competing with the parent's) and without duplicate
    /// address detection (the caller has reserved the address).
    ///
    /// # Errors
    /// [`NetError::LinkNotFound`] for a missing parent, [`NetError::LinkConflict`] when
    /// `shim_name` is taken by something else, [`NetError::Netlink`].
    pub async fn ensure_host_shim(
        &self,
        parent: &str,
        shim_name: &str,
        addresses: &[IpAddr],
    ) -> Result<bool, NetError> {
        validate_ifname(shim_name)?;
        let parent_link = self.link_by_name(parent).await?;
        let created = match self.find_link(shim_name).await? {
            Some(_) => false,
            None => {
                let spec = NewMacvlan {
                    name: shim_name.to_string(),
                    parent_index: parent_link.index,
                    mode: MacvlanMode::Bridge,
                    mac: None,
                    mtu: None,
                };
                match self.create_macvlan(&spec).await {
                    Ok(()) => true,
                    // Another ADD on this node created it first.
                    Err(e) if e.errno() == Some(EEXIST) => false,
                    Err(e) => return Err(e),
                }
            }
        };
        let shim = self.link_by_name(shim_name).await?;
        if !shim.is_kind("macvlan") || shim.parent_index != Some(parent_link.index) {
            return Err(NetError::LinkConflict {
                name: shim_name.to_string(),
                reason: format!("is not a macvlan on {parent}"),
            });
        }
        let present = self.addresses(shim.index).await?;
        for ip in addresses {
            let address = host_prefix(*ip);
            if present.contains(&address) {
                continue;
            }
            match self.add_address_nodad(shim.index, address).await {
                Ok(()) => {}
                Err(e) if e.errno() == Some(EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        // Without an address of its own the shim would still answer ARP requests from the LAN
        // for the node's address (arp_filter=0 answers on any interface), so the LAN could learn
        // the shim's MAC for the node — ARP flux — and lose the node when the shim goes away.
        // arp_filter answers only where the reply would be routed out: the shim's own pods.
        self.write_sysctl(&format!("net/ipv4/conf/{shim_name}/arp_filter"), "1")?;
        // The shim's IPv6 link-local address is the source of IPv6 host routes: usable at once
        // without duplicate address detection (its MAC is random, and only our pods see it).
        match self.write_sysctl(&format!("net/ipv6/conf/{shim_name}/accept_dad"), "0") {
            Err(NetError::Sysctl { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
        if !shim.up {
            self.set_up(shim.index).await?;
        }
        Ok(created)
    }

    async fn add_address_nodad(&self, index: u32, address: IpNetwork) -> Result<(), NetError> {
        let mut request = self
            .handle
            .address()
            .add(index, address.ip(), address.prefix());
        if address.is_ipv6() {
            let msg = request.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .map_err(|e| netlink_error(format!("add address {address} to link #{index}"), e))
    }

    /// Routes `pod_ip` (as a /32 or /128) into the shim. Replaces an existing route to the same
    /// destination, so a repeated ADD is harmless.
    ///
    /// An IPv6 route takes an address of the shim as its source: one given to it, else its
    /// link-local one. The node's other IPv6 addresses live on the LAN side: a pod answering
    /// one of them would send its reply out on the LAN, where macvlan never hands frames to the
    /// parent's host, and the shim does not answer neighbour solicitations for them (unlike
    /// ARP, IPv6 answers only for an address of the link asked). IPv4 needs no source: the
    /// shim answers ARP for the node's address.
    ///
    /// # Errors
    /// [`NetError::LinkNotFound`] for a missing shim, [`NetError::Netlink`] (also for an IPv6
    /// route when the shim has no usable IPv6 address: IPv6 is disabled on it).
    pub async fn add_host_route(&self, pod_ip: IpAddr, shim_name: &str) -> Result<(), NetError> {
        let shim = self.link_by_name(shim_name).await?;
        let route = Route::on_link(host_prefix(pod_ip));
        let mut msg = route.message(shim.index);
        if pod_ip.is_ipv6() {
            let source = self.shim_source(&shim).await?;
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet6(source)));
        }
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_error(format!("add route {route} dev {shim_name}"), e))
    }

    /// The source of IPv6 routes into `shim`: an address given to it, else its link-local one,
    /// once usable. The shim skips duplicate address detection, but the kernel still clears
    /// an address's tentative flag from a work queue after the link comes up, and refuses a
    /// tentative source (`EINVAL`): right after [`Netlink::ensure_host_shim`] created the
    /// shim, this waits that moment out.
    async fn shim_source(&self, shim: &Link) -> Result<Ipv6Addr, NetError> {
        let start = Instant::now();
        loop {
            let usable = self
                .address_messages(shim.index)
                .await?
                .iter()
                .filter(|m| {
                    !address_flags(m).intersects(AddressFlags::Tentative | AddressFlags::Dadfailed)
                })
                .filter_map(|m| match address_of(m)?.ip() {
                    IpAddr::V6(ip) => Some(ip),
                    IpAddr::V4(_) => None,
                })
                .min_by_key(Ipv6Addr::is_unicast_link_local);
            if let Some(ip) = usable {
                return Ok(ip);
            }
            if start.elapsed() >= SHIM_SOURCE_TIMEOUT {
                return Err(NetError::Netlink {
                    op: format!("find a usable ipv6 address of {}", shim.name),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("none within {SHIM_SOURCE_TIMEOUT:?}: is ipv6 disabled on it?"),
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Pins the neighbour entry of `pod_ip` on the shim to the pod's MAC. The node must never
    /// ARP for its pods through the shim: such requests carry the node's own address as sender,
    /// and every LAN host that hears them re-learns the node's address at the shim's MAC (ARP
    /// flux) — and loses the node once the shim is gone. The plugin knows the pod's MAC anyway.
    ///
    /// # Errors
    /// [`NetError::LinkNotFound`] for a missing shim, [`NetError::Netlink`].
    pub async fn pin_host_neighbour(
        &self,
        pod_ip: IpAddr,
        mac: [u8; 6],
        shim_name: &str,
    ) -> Result<(), NetError> {
        let shim = self.link_by_name(shim_name).await?;
        self.handle
            .neighbours()
            .add(shim.index, pod_ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_error(format!("pin neighbour {pod_ip} dev {shim_name}"), e))
    }

    async fn unpin_host_neighbour(&self, shim_index: u32, pod_ip: IpAddr) -> Result<(), NetError> {
        let mut entries = self.handle.neighbours().get().execute();
        while let Some(msg) = entries
            .try_next()
            .await
            .map_err(|e| netlink_error("list neighbours".to_string(), e))?
        {
            let ours = msg.header.ifindex == shim_index
                && msg.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(d) if neighbour_ip(d) == Some(pod_ip))
                });
            if ours {
                return match self.handle.neighbours().del(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if errno_of(&e) == Some(ENOENT) => Ok(()),
                    Err(e) => Err(netlink_error(format!("delete neighbour {pod_ip}"), e)),
                };
            }
        }
        Ok(())
    }

    /// Removes the shim route of `pod_ip`; `Ok(false)` when it (or the shim) was already gone.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn del_host_route(&self, pod_ip: IpAddr, shim_name: &str) -> Result<bool, NetError> {
        let Some(shim) = self.find_link(shim_name).await? else {
            return Ok(false);
        };
        self.unpin_host_neighbour(shim.index, pod_ip).await?;
        self.del_route(shim.index, &Route::on_link(host_prefix(pod_ip)))
            .await
    }

    /// Deletes the shim when no pod route (/32 or /128) uses it any more; returns whether it
    /// deleted it.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub async fn delete_shim_if_unused(&self, shim_name: &str) -> Result<bool, NetError> {
        let Some(shim) = self.find_link(shim_name).await? else {
            return Ok(false);
        };
        if !shim.is_kind("macvlan") {
            return Ok(false);
        }
        let in_use = self
            .route_messages(shim.index)
            .await?
            .iter()
            // Ours are static; the kernel's own (fe80::/64, the /128 of a shim address) are not.
            .filter(|m| m.header.protocol == RouteProtocol::Static)
            .filter_map(route_of)
            .any(|r| r.gateway.is_none() && r.destination == host_prefix(r.destination.ip()));
        if in_use {
            return Ok(false);
        }
        match self.delete_link(shim.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpNetwork> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 sends only IFA_ADDRESS.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNetwork::new(local.or(address)?, msg.header.prefix_len).ok()
}

fn address_flags(msg: &AddressMessage) -> AddressFlags {
    // IFA_FLAGS carries the full 32 bits; the header has only the low 8 (older kernels).
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| {
            let header = msg.header.flags;
            let mut flags = AddressFlags::empty();
            flags.set(
                AddressFlags::Tentative,
                header.contains(AddressHeaderFlags::Tentative),
            );
            flags.set(
                AddressFlags::Dadfailed,
                header.contains(AddressHeaderFlags::Dadfailed),
            );
            flags
        })
}

fn route_table(msg: &RouteMessage) -> u32 {
    // Tables above 255 exist only in RTA_TABLE; the header then says RT_TABLE_UNSPEC.
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

fn route_of(msg: &RouteMessage) -> Option<Route> {
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_address(d),
        _ => None,
    });
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => ip,
        // The default route has no RTA_DST.
        (None, AddressFamily::Inet) => Ipv4Addr::UNSPECIFIED.into(),
        (None, AddressFamily::Inet6) => Ipv6Addr::UNSPECIFIED.into(),
        (None, _) => return None,
    };
    let gateway = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_address(g),
        _ => None,
    });
    Some(Route {
        destination: IpNetwork::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
    })
}

/// Turns on gratuitous ARP (`arp_notify`) and unsolicited neighbour advertisements
/// (`ndisc_notify`) for `ifname` in `ns`, so that the kernel announces the interface's
/// addresses when it goes up and switches and neighbours forget a previous holder of the
/// address (a pod re-created elsewhere with the same IP and a new MAC).
///
/// # Errors
/// [`NetError::Netns`], [`NetError::Sysctl`]. A missing IPv6 key (IPv6 disabled) is not an error.
pub fn set_notify_sysctls(ns: &Netns, ifname: &str) -> Result<(), NetError> {
    validate_ifname(ifname)?;
    ns.run(|| {
        write_sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
        match write_sysctl(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1") {
            Err(NetError::Sysctl { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(())
            }
            other => other,
        }
    })?
}

/// One pod attachment: a macvlan on `parent` (the master, or its VLAN sub-interface) named
/// `ifname` inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The parent link in the host namespace.
    pub parent: String,
    /// CNI_IFNAME.
    pub ifname: String,
    pub mode: MacvlanMode,
    /// `None` keeps the random MAC the kernel assigns. Passthru macvlans always have the
    /// parent's MAC; asking for another one is [`NetError::PassthruMac`].
    pub mac: Option<[u8; 6]>,
    /// `None` inherits the parent's MTU.
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNetwork>,
    /// Installed after the link is up; include [`Route::default_via`] for a default route.
    pub routes: Vec<Route>,
    /// Wait this long for IPv6 duplicate address detection; `None` does not wait.
    pub dad_timeout: Option<Duration>,
}

/// The attachment as set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Creates and configures the macvlan of `spec` in the pod namespace `pod_ns`: validates
/// everything first, creates the link from the host side under a temporary name directly inside
/// the pod, renames it, adds addresses, turns on the ARP/NA notify sysctls, brings it up, adds
/// the routes and optionally waits for IPv6 DAD. On failure after creation the link is deleted
/// again (which takes its addresses and routes with it), so nothing is left in the pod.
/// [`create_pod_macvlan`] then [`configure_pod_macvlan`], for a caller with nothing to do between.
///
/// `host` is a connection in the namespace that holds `spec.parent`.
///
/// # Errors
/// [`NetError::InvalidName`], [`NetError::InvalidRoute`], [`NetError::LinkNotFound`] (parent),
/// [`NetError::PassthruMac`], [`NetError::MtuTooLarge`], [`NetError::LinkConflict`] (ifname taken in the pod),
/// [`NetError::Netns`], [`NetError::Sysctl`], [`NetError::Netlink`], [`NetError::DadFailed`],
/// [`NetError::DadTimeout`].
pub async fn setup_pod_macvlan(
    host: &Netlink,
    pod_ns: &Netns,
    spec: &PodInterface,
) -> Result<PodLink, NetError> {
    let pending = create_pod_macvlan(host, pod_ns, spec).await?;
    configure_pod_macvlan(pending, spec).await
}

/// A pod macvlan as [`create_pod_macvlan`] leaves it: under a temporary name, down, without
/// addresses. [`configure_pod_macvlan`] finishes it; [`PendingPodLink::discard`] removes it.
#[derive(Debug)]
pub struct PendingPodLink {
    pod: Netlink,
    index: u32,
    parent: Link,
    mode: MacvlanMode,
    /// The MAC asked for at creation (`None`: the kernel's random one).
    mac: Option<[u8; 6]>,
}

impl PendingPodLink {
    /// The link's index in the pod namespace.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The connection to the pod namespace the link was created through, for further queries.
    pub fn netlink(&self) -> &Netlink {
        &self.pod
    }

    /// Deletes the link (best effort: a failed ADD reports its own error, not this one).
    pub async fn discard(self) {
        if let Err(e) = self.pod.delete_link(self.index).await {
            tracing::warn!(error = %e, index = self.index, "delete unconfigured pod link");
        }
    }
}

/// The first half of [`setup_pod_macvlan`]: validates `spec` (its name, routes, parent, MTU,
/// and that `spec.ifname` is free in the pod) and creates the macvlan under a temporary name
/// directly inside the pod, down. Of `spec`, the addresses are not used yet, and `mac` may
/// still be `None` and given to [`configure_pod_macvlan`] later: a caller can create the link
/// while it is still waiting for the addresses.
///
/// # Errors
/// As [`setup_pod_macvlan`], but for DAD.
pub async fn create_pod_macvlan(
    host: &Netlink,
    pod_ns: &Netns,
    spec: &PodInterface,
) -> Result<PendingPodLink, NetError> {
    validate_ifname(&spec.ifname)?;
    for route in &spec.routes {
        route.validate()?;
    }
    let parent = host.link_by_name(&spec.parent).await?;
    if spec.mode == MacvlanMode::Passthru && spec.mac.is_some_and(|mac| Some(mac) != parent.mac) {
        // The kernel would silently ignore the requested MAC.
        return Err(NetError::PassthruMac {
            parent: parent.name,
        });
    }
    if let Some(mtu) = spec.mtu {
        if mtu > parent.mtu {
            return Err(NetError::MtuTooLarge {
                mtu,
                parent: parent.name,
                parent_mtu: parent.mtu,
            });
        }
    }
    let pod = Netlink::open_in(pod_ns)?;
    if pod.link_exists(&spec.ifname).await? {
        return Err(NetError::LinkConflict {
            name: spec.ifname.clone(),
            reason: format!("is in use in {}", pod_ns.path().display()),
        });
    }

    // The temporary name keeps a half-done attempt from ever holding the CNI name, and is what
    // the reference plugin does; the rename is one cheap request.
    let tmp_name = temp_link_name();
    let new = NewMacvlan {
        name: tmp_name.clone(),
        parent_index: parent.index,
        mode: spec.mode,
        mac: spec.mac,
        mtu: spec.mtu,
    };
    host.create_macvlan_in_netns(&new, pod_ns).await?;
    // The kernel announces the link when it comes up if these are on; they follow the link
    // through the rename, and setting them now keeps them off the way to bring-up.
    let index = match pod.link_by_name(&tmp_name).await {
        Ok(link) => set_notify_sysctls(pod_ns, &tmp_name).map(|()| link.index),
        Err(e) => Err(e),
    };
    let index = match index {
        Ok(index) => index,
        Err(e) => {
            let _ = pod.delete_link_by_name(&tmp_name).await;
            return Err(e);
        }
    };
    Ok(PendingPodLink {
        pod,
        index,
        parent,
        mode: spec.mode,
        mac: spec.mac,
    })
}

/// The second half of [`setup_pod_macvlan`]: sets `spec.mac` (when given), renames the link to
/// `spec.ifname`, adds the addresses, brings it up, adds the routes, waits for DAD. Deletes the
/// link when any step fails.
///
/// # Errors
/// [`NetError::PassthruMac`], [`NetError::InvalidRoute`], [`NetError::Sysctl`],
/// [`NetError::Netlink`], [`NetError::DadFailed`], [`NetError::DadTimeout`].
pub async fn configure_pod_macvlan(
    pending: PendingPodLink,
    spec: &PodInterface,
) -> Result<PodLink, NetError> {
    configure_pod_macvlan_alongside(pending, spec, std::future::ready(()))
        .await
        .0
}

/// [`configure_pod_macvlan`], running `alongside` concurrently with the bring-up once the link
/// has its name and addresses (e.g. the commit of the reservation those addresses come from).
/// Its output is `None` when configuring failed before that point; the link is deleted on any
/// failure of its own, whatever `alongside` did.
///
/// # Errors
/// As [`configure_pod_macvlan`].
pub async fn configure_pod_macvlan_alongside<F: Future>(
    pending: PendingPodLink,
    spec: &PodInterface,
    alongside: F,
) -> (Result<PodLink, NetError>, Option<F::Output>) {
    let checked = async {
        if pending.mode == MacvlanMode::Passthru
            && spec.mac.is_some_and(|mac| Some(mac) != pending.parent.mac)
        {
            return Err(NetError::PassthruMac {
                parent: pending.parent.name.clone(),
            });
        }
        spec.routes.iter().try_for_each(Route::validate)?;
        if let Some(mac) = spec.mac.filter(|m| Some(*m) != pending.mac) {
            // The link was created before its MAC was known.
            pending.pod.set_mac(pending.index, mac).await?;
        }
        Ok(())
    }
    .await;
    let (configured, side) = match checked {
        Ok(()) => configure_pod_link(&pending.pod, pending.index, spec, alongside).await,
        Err(e) => (Err(e), None),
    };
    if configured.is_err() {
        // Best effort: the original error is what the caller needs to see.
        let _ = pending.pod.delete_link(pending.index).await;
    }
    (configured, side)
}

/// Renames the link and adds its addresses, then brings it up (with `alongside` running
/// meanwhile): `alongside` runs only once the addresses are on, and its output is `None` when a
/// step before failed.
async fn configure_pod_link<F: Future>(
    pod: &Netlink,
    index: u32,
    spec: &PodInterface,
    alongside: F,
) -> (Result<PodLink, NetError>, Option<F::Output>) {
    let addressed = async {
        pod.rename(index, &spec.ifname).await?;
        for address in &spec.addresses {
            pod.add_address(index, *address).await?;
        }
        Ok::<(), NetError>(())
    }
    .await;
    if let Err(e) = addressed {
        return (Err(e), None);
    }
    // `alongside` first, so that it is under way before bring-up's first request.
    let (side, up) = tokio::join!(alongside, bring_up(pod, index, spec));
    (up, Some(side))
}

/// Brings the link up (announced: [`create_pod_macvlan`] set `arp_notify`/`ndisc_notify`),
/// adds the routes, waits for DAD.
async fn bring_up(pod: &Netlink, index: u32, spec: &PodInterface) -> Result<PodLink, NetError> {
    pod.set_up(index).await?;
    // After bring-up: IPv6 installs connected routes only on an up link, and a gateway must be
    // reachable through one.
    for route in &spec.routes {
        pod.add_route(index, route).await?;
    }
    if let Some(timeout) = spec.dad_timeout {
        if spec.addresses.iter().any(IpNetwork::is_ipv6) {
            pod.wait_addresses_settled(index, timeout).await?;
        }
    }
    let link = pod.link_by_index(index).await?;
    let mac = link.mac.ok_or_else(|| NetError::Netlink {
        op: format!("read mac of link {}", spec.ifname),
        source: io::Error::other("the kernel reported no hardware address"),
    })?;
    Ok(PodLink {
        index,
        name: link.name,
        mac,
        mtu: link.mtu,
    })
}

/// Deletes the macvlan `ifname` from the pod namespace at `pod_ns_path`. Idempotent and
/// lenient as CNI DEL must be: a missing namespace or link is `Ok(false)`, and a link of that
/// name that is not a macvlan is left alone (`Ok(false)`): it is not ours.
///
/// # Errors
/// [`NetError::Netns`] for a namespace that exists but cannot be entered, [`NetError::Netlink`].
pub async fn teardown_pod_macvlan(pod_ns_path: &Path, ifname: &str) -> Result<bool, NetError> {
    let ns = match Netns::open(pod_ns_path) {
        Ok(ns) => ns,
        Err(NetError::Netns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    let pod = Netlink::open_in(&ns)?;
    let Some(link) = pod.find_link(ifname).await? else {
        return Ok(false);
    };
    if !link.is_kind("macvlan") {
        return Ok(false);
    }
    match pod.delete_link(link.index).await {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A blocking rtnetlink socket bound to the namespace it was opened in, for DEL's link removal.
///
/// Deleting a link blocks the thread that sends the request inside the kernel until the link
/// is torn down (an RCU barrier: ~15–25 ms here), so DEL sends it from a thread that has
/// nothing else to do, and needs no async runtime for it: starting one, or waking a new thread
/// on an idle CPU, costs more than the few requests that come before the deletion.
struct BlockingNetlink {
    socket: rtnetlink::sys::Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl BlockingNetlink {
    /// Opens a socket in `ns` (the thread is back in its own namespace when this returns).
    fn open_in(ns: &Netns) -> Result<Self, NetError> {
        let open = || -> io::Result<rtnetlink::sys::Socket> {
            let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = ns.run(open)?.map_err(|source| NetError::Netlink {
            op: "open netlink socket".into(),
            source,
        })?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends `payload` and collects the answers: the messages of a dump, nothing for an
    /// acknowledged request; the kernel's error as an `io::Error` with its errno.
    fn request(
        &mut self,
        payload: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        use rtnetlink::packet_core::{
            NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
        };
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut answers = Vec::new();
        loop {
            self.buffer.clear();
            let received = self.socket.recv(&mut self.buffer, 0)?;
            if received > self.buffer.len() {
                return Err(io::Error::other(format!(
                    "netlink answer of {received} bytes is larger than the buffer"
                )));
            }
            let mut at = 0;
            while at < self.buffer.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[at..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                at += (length + 3) & !3;
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let answers = self
            .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
            .map_err(|source| NetError::Netlink {
                op: "list links".into(),
                source,
            })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// Removes every address of link `index`; an address gone meanwhile is fine. Unlike
    /// taking the link down or deleting it, this does not wait for the kernel's RCU grace
    /// period: once it returns, nothing in the namespace answers for those addresses.
    fn flush_addresses(&mut self, index: u32) -> Result<(), NetError> {
        let answers = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                true,
            )
            .map_err(|source| NetError::Netlink {
                op: format!("list addresses of link #{index}"),
                source,
            })?;
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(msg) = answer else {
                continue;
            };
            if msg.header.index != index {
                continue;
            }
            let shown = address_of(&msg).map(|a| a.to_string()).unwrap_or_default();
            match self.request(RouteNetlinkMessage::DelAddress(msg), false) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(EADDRNOTAVAIL) => {}
                Err(source) => {
                    return Err(NetError::Netlink {
                        op: format!("remove address {shown} from link #{index}"),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Deletes link `index`; blocks until the kernel has torn it down.
    fn delete_link(&mut self, index: u32) -> Result<(), NetError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), false)
            .map(|_| ())
            .map_err(|source| NetError::Netlink {
                op: format!("delete link #{index}"),
                source,
            })
    }
}

/// A pod's links on their way out, in two steps for DEL: [`PodLinks::silence`] removes the
/// addresses of the pod's macvlan (fast: nothing in the namespace answers for them any more
/// once it returns), [`PodLinks::delete`] deletes the links (slow: it blocks the calling
/// thread in the kernel, ~15–25 ms here). Between the two, the caller may hand the addresses
/// out again.
///
/// The links are the macvlan `ifname`, and what an ADD killed half-way may have left in the
/// namespace: a macvlan still under its temporary name ([`is_temp_name`]; always down: ADD
/// renames a link before it brings it up). A link named `ifname` that is not a macvlan is not
/// ours and stays.
pub struct PodLinks {
    pod: Option<BlockingNetlink>,
    links: Vec<Link>,
}

impl PodLinks {
    /// Finds the pod's links in the namespace at `netns` and removes the addresses of
    /// `ifname`. A missing namespace or link is fine: there is nothing to delete then.
    ///
    /// # Errors
    /// [`NetError::Netns`] for a namespace that exists but cannot be entered,
    /// [`NetError::Netlink`]. On error the addresses may still be there.
    pub fn silence(netns: &Path, ifname: &str) -> Result<Self, NetError> {
        let ns = match Netns::open(netns) {
            Ok(ns) => ns,
            Err(NetError::Netns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    pod: None,
                    links: Vec::new(),
                })
            }
            Err(e) => return Err(e),
        };
        let mut pod = BlockingNetlink::open_in(&ns)?;
        let mut links: Vec<Link> = pod
            .links()?
            .into_iter()
            .filter(|link| {
                link.is_kind("macvlan")
                    && (link.name == ifname || (is_temp_name(&link.name) && !link.up))
            })
            .collect();
        // The pod's own link first: its deletion is the one DEL is waited for.
        links.sort_by_key(|link| link.name != ifname);
        if let Some(link) = links.iter().find(|l| l.name == ifname) {
            match pod.flush_addresses(link.index) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(ENODEV) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            pod: Some(pod),
            links,
        })
    }

    /// Deletes the links, blocking until the kernel has torn each down. A link gone meanwhile
    /// is fine.
    ///
    /// # Errors
    /// [`NetError::Netlink`].
    pub fn delete(self) -> Result<(), NetError> {
        let Some(mut pod) = self.pod else {
            return Ok(());
        };
        for link in self.links {
            match pod.delete_link(link.index) {
                Ok(()) => tracing::debug!(link = %link.name, "deleted pod link"),
                // Gone meanwhile (another DEL, or the namespace is being torn down).
                Err(e) if e.errno() == Some(ENODEV) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An exclusive node-local lock named after a link (`<dir>/<link>.lock`, `flock(2)`), released
/// on drop or when the process dies. Plugin invocations run as separate processes, so this is
/// what serialises "make sure the VLAN exists … macvlan up" against "delete the VLAN if unused"
/// (and the same for the host shim). Acquiring blocks the thread until the lock is free.
#[derive(Debug)]
pub struct LinkLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LinkLock {
    /// Takes the lock for `link_name` in `dir` (created if missing), waiting for it.
    ///
    /// # Errors
    /// [`NetError::InvalidName`], [`NetError::Lock`].
    pub fn acquire(dir: &Path, link_name: &str) -> Result<Self, NetError> {
        validate_ifname(link_name)?;
        let path = dir.join(format!("{link_name}.lock"));
        let lock_err = |source: io::Error| NetError::Lock {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(lock_err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_err(io::Error::from(errno)))?;
        Ok(Self { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};
    use rtnetlink::packet_route::link::InfoKind;

    fn roundtrip(msg: &LinkMessage) -> LinkMessage {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        LinkMessage::parse(&buf[..]).expect("kernel-format message parses")
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(&temp_link_name()));
        assert!(!is_temp_name("smv-eth0"));
        assert!(!is_temp_name("smv1234567"));
        assert!(!is_temp_name("net1"));
    }

    #[test]
    fn vlan_message_carries_id_parent_and_name() {
        let msg = roundtrip(&build_vlan_message("eth0.100", 7, 100));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("eth0.100".into())));
        assert!(msg.attributes.contains(&LinkAttribute::Link(7)));
        let info = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .expect("IFLA_LINKINFO");
        assert_eq!(
            info,
            vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(100)])),
            ]
        );
        let link = Link::from_message(msg);
        assert_eq!(link.vlan_id, Some(100));
        assert_eq!(link.parent_index, Some(7));
        assert_eq!(link.kind.as_deref(), Some("vlan"));
    }

    #[test]
    fn macvlan_message_carries_mode_mac_mtu_and_netns() {
        let spec = NewMacvlan {
            name: "smv0000abcd".into(),
            parent_index: 3,
            mode: MacvlanMode::Private,
            mac: Some([0x02, 0, 0, 0, 0, 0x42]),
            mtu: Some(1400),
        };
        let msg = build_macvlan_message(&spec, Some(9));
        assert!(msg.attributes.contains(&LinkAttribute::NetNsFd(9)));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 0x42])));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1400)));
        let link = Link::from_message(roundtrip(&msg));
        assert_eq!(link.name, "smv0000abcd");
        assert_eq!(link.parent_index, Some(3));
        assert_eq!(link.macvlan_mode, Some(MacvlanMode::Private));
        assert_eq!(link.mac, Some([0x02, 0, 0, 0, 0, 0x42]));

        let plain = build_macvlan_message(&NewMacvlan { mac: None, ..spec }, None);
        assert!(!plain
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::NetNsFd(_) | LinkAttribute::Address(_))));
    }

    #[test]
    fn modes_map_to_the_kernel_and_back() {
        for mode in MacvlanMode::ALL {
            assert_eq!(mode_from_kernel(mode_to_kernel(mode)), Some(mode));
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "net1", "a", "enp0s31f6.4094", "smv0123abcd"] {
            validate_ifname(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "sixteen-chars-xx"] {
            assert!(
                matches!(validate_ifname(bad), Err(NetError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        let tmp = temp_link_name();
        assert!(
            tmp.starts_with(TEMP_NAME_PREFIX) && tmp.len() == 11,
            "{tmp}"
        );
        validate_ifname(&tmp).unwrap();
        assert_ne!(temp_link_name(), temp_link_name());
    }

    #[test]
    fn vlan_names() {
        assert_eq!(vlan_link_name("eth0", 100).unwrap(), "eth0.100");
        assert!(matches!(
            vlan_link_name("eth0", 0),
            Err(NetError::InvalidVlanId { vlan_id: 0 })
        ));
        assert!(matches!(
            vlan_link_name("eth0", 4095),
            Err(NetError::InvalidVlanId { vlan_id: 4095 })
        ));
        assert!(matches!(
            vlan_link_name("enx001122334455", 5),
            Err(NetError::InvalidName { .. })
        ));
    }

    #[test]
    fn routes_validate() {
        let gw4: IpAddr = "192.0.2.1".parse().unwrap();
        let gw6: IpAddr = "2001:db8::1".parse().unwrap();
        let def = Route::default_via(gw4);
        assert_eq!(def.to_string(), "0.0.0.0/0 via 192.0.2.1");
        def.validate().unwrap();
        Route::default_via(gw6).validate().unwrap();
        let mixed = Route {
            destination: "198.51.100.0/24".parse().unwrap(),
            gateway: Some(gw6),
        };
        assert!(matches!(
            mixed.validate(),
            Err(NetError::InvalidRoute { .. })
        ));
        let host_bits = Route::on_link("198.51.100.7/24".parse().unwrap());
        let err = host_bits.validate().unwrap_err();
        assert!(err.to_string().contains("198.51.100.7/24"), "{err}");
    }

    #[test]
    fn error_messages_name_values() {
        let err = NetError::MtuTooLarge {
            mtu: 9000,
            parent: "eth0".into(),
            parent_mtu: 1500,
        };
        assert_eq!(
            err.to_string(),
            "mtu 9000 is larger than mtu 1500 of parent link eth0"
        );
        let err = netlink_error(
            "create macvlan smv1234 on eth0",
            rtnetlink::Error::RequestFailed,
        );
        assert!(err
            .to_string()
            .starts_with("create macvlan smv1234 on eth0: "));
    }
}
