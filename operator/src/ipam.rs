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
