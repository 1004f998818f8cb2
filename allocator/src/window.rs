//! Candidate windows: how a reservation looks at a small part of a pool to find a free address.
//!
//! A window is the pool's members inside one aligned block of the address space, read from etcd in
//! one operation wherever the key text allows it:
//! - IPv4: the block is a /24, and every address of `a.b.c.0/24` — and no other — has a key
//!   starting with `…/ips/<subnet>/a.b.c.`, so one prefix read returns the taken ones.
//! - MAC: keys are fixed-width lowercase hex, so text order is numeric order and a block of 64
//!   addresses is one key range.
//! - IPv6: compressed text has no such property, so the members of a block of 32 are read as point
//!   lookups in the same transaction.
//!
//! Reads are serializable and keys-only: they are hints, the claim that follows is a CAS.

use std::collections::HashSet;
use std::net::IpAddr;

use etcd_client::{GetOptions, TxnOp, TxnOpResponse};

use crate::addr::{u128_to_ip, AddrSet, MacAddr};
use crate::keys::Keys;

/// log2 of the block size per address family.
const IPV4_BITS: u32 = 8;
const IPV6_BITS: u32 = 5;
const MAC_BITS: u32 = 6;

pub(crate) fn hint_opts(keys_only: bool) -> GetOptions {
    let opts = GetOptions::new().with_serializable();
    if keys_only {
        opts.with_keys_only()
    } else {
        opts
    }
}

/// Which address space a pool lives in, with what its keys need.
#[derive(Clone, Copy)]
pub(crate) enum Space<'a> {
    Ip { subnet: &'a str, like: IpAddr },
    Mac,
}

impl Space<'_> {
    fn bits(&self) -> u32 {
        match self {
            Space::Ip {
                like: IpAddr::V4(_),
                ..
            } => IPV4_BITS,
            Space::Ip {
                like: IpAddr::V6(_),
                ..
            } => IPV6_BITS,
            Space::Mac => MAC_BITS,
        }
    }
}

/// A candidate: an IP or a MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Addr {
    Ip(IpAddr),
    Mac(MacAddr),
}

/// The blocks of a pool that hold members, visited from a random one (weighted by members, as it
/// is the block of a random member) onwards, each once.
pub(crate) struct Blocks {
    bits: u32,
    /// Inclusive ranges of block numbers, sorted, disjoint.
    ranges: Vec<(u128, u128)>,
    pub(crate) total: u128,
    start: u128,
    pub(crate) visited: u128,
}

impl Blocks {
    pub(crate) fn new(set: &AddrSet, space: Space<'_>) -> Self {
        let bits = space.bits();
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for &(a, b) in set.segments() {
            let (lo, hi) = (a >> bits, b >> bits);
            match ranges.last_mut() {
                Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        let total = ranges.iter().map(|(a, b)| b - a + 1).sum();
        let start = if set.is_empty() {
            0
        } else {
            let member = set.nth(fastrand::u128(0..set.len())).expect("index < len");
            Self::ordinal(&ranges, member >> bits)
        };
        Blocks {
            bits,
            ranges,
            total,
            start,
            visited: 0,
        }
    }

    fn ordinal(ranges: &[(u128, u128)], block: u128) -> u128 {
        let mut before = 0;
        for &(a, b) in ranges {
            if block <= b {
                return before + block.saturating_sub(a);
            }
            before += b - a + 1;
        }
        0
    }

    fn block_at(&self, mut ord: u128) -> u128 {
        for &(a, b) in &self.ranges {
            let len = b - a + 1;
            if ord < len {
                return a + ord;
            }
            ord -= len;
        }
        unreachable!("ordinal below total")
    }

    /// The next block number, or `None` once every block was visited.
    pub(crate) fn advance(&mut self) -> Option<u128> {
        if self.visited >= self.total {
            return None;
        }
        let ord = (self.start + self.visited) % self.total;
        self.visited += 1;
        Some(self.block_at(ord))
    }

    /// The window of `set` in block `block`.
    pub(crate) fn window(
        &self,
        keys: &Keys,
        set: &AddrSet,
        space: Space<'_>,
        block: u128,
    ) -> Window {
        let lo = block << self.bits;
        let hi = lo | ((1u128 << self.bits) - 1);
        let members: Vec<(Addr, String)> = (lo..=hi)
            .filter(|x| set.contains(*x))
            .map(|x| match space {
                Space::Ip { subnet, like } => {
                    let ip = u128_to_ip(x, like);
                    (Addr::Ip(ip), keys.ip(subnet, ip))
                }
                Space::Mac => {
                    let mac = MacAddr::from_u64(x as u64);
                    (Addr::Mac(mac), keys.mac(mac))
                }
            })
            .collect();
        let read = match space {
            Space::Ip {
                subnet,
                like: IpAddr::V4(_),
            } => {
                let o = (lo as u32).to_be_bytes();
                Read::Prefix(format!("{}{}.{}.{}.", keys.ips(subnet), o[0], o[1], o[2]))
            }
            Space::Ip { .. } => Read::Points,
            Space::Mac => {
                let mut end = keys.mac(MacAddr::from_u64(hi as u64)).into_bytes();
                end.push(0);
                Read::Range(keys.mac(MacAddr::from_u64(lo as u64)), end)
            }
        };
        Window { members, read }
    }
}

enum Read {
    Prefix(String),
    Range(String, Vec<u8>),
    Points,
}

/// The members of one block and how to read which of them are taken.
pub(crate) struct Window {
    members: Vec<(Addr, String)>,
    read: Read,
}

impl Window {
    /// The read operations, to put in a transaction.
    pub(crate) fn ops(&self) -> Vec<TxnOp> {
        match &self.read {
            Read::Prefix(p) => vec![TxnOp::get(p.clone(), Some(hint_opts(true).with_prefix()))],
            Read::Range(start, end) => vec![TxnOp::get(
                start.clone(),
                Some(hint_opts(true).with_range(end.clone())),
            )],
            Read::Points => self
                .members
                .iter()
                .map(|(_, k)| TxnOp::get(k.clone(), Some(hint_opts(true))))
                .collect(),
        }
    }

    /// A random member absent from `resp` (the responses of [`Window::ops`], in order).
    pub(crate) fn pick_free(&self, resp: &[TxnOpResponse]) -> Option<Addr> {
        let kvs = |r: &TxnOpResponse| match r {
            TxnOpResponse::Get(g) => g.kvs().to_vec(),
            _ => Vec::new(),
        };
        let free: Vec<Addr> = match self.read {
            Read::Points => self
                .members
                .iter()
                .zip(resp)
                .filter(|(_, r)| kvs(r).is_empty())
                .map(|((a, _), _)| *a)
                .collect(),
            _ => {
                let taken: Vec<_> = resp.first().map(kvs).unwrap_or_default();
                let taken: HashSet<&[u8]> = taken.iter().map(|kv| kv.key()).collect();
                self.members
                    .iter()
                    .filter(|(_, k)| !taken.contains(k.as_bytes()))
                    .map(|(a, _)| *a)
                    .collect()
            }
        };
        (!free.is_empty()).then(|| free[fastrand::usize(0..free.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_visit_each_block_with_members_once() {
        // Two /24s apart, one partly.
        let set = AddrSet::from_segments([(0x0a00_0005, 0x0a00_00ff), (0x0a00_0300, 0x0a00_0310)]);
        let like: IpAddr = "10.0.0.0".parse().unwrap();
        let mut b = Blocks::new(
            &set,
            Space::Ip {
                subnet: "lan",
                like,
            },
        );
        assert_eq!(b.total, 2);
        let mut seen = Vec::new();
        while let Some(k) = b.advance() {
            seen.push(k);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0x0a0000, 0x0a0003]);
    }

    #[test]
    fn ipv4_window_is_one_prefix_read() {
        let set = AddrSet::from_segments([(0x0ae6_0002, 0x0ae6_00fe)]);
        let like: IpAddr = "10.230.0.0".parse().unwrap();
        let space = Space::Ip {
            subnet: "lan",
            like,
        };
        let b = Blocks::new(&set, space);
        let w = b.window(&Keys::default(), &set, space, 0x0ae600);
        assert_eq!(w.members.len(), 253);
        assert_eq!(w.ops().len(), 1);
        assert!(matches!(&w.read, Read::Prefix(p) if p == "/static-macvlan/ips/lan/10.230.0."));
    }

    #[test]
    fn mac_window_is_one_range_and_ipv6_points() {
        let set = crate::addr::mac_range_set(
            "02:00:00:00:00:00".parse().unwrap(),
            "02:00:00:00:00:ff".parse().unwrap(),
            false,
        );
        let b = Blocks::new(&set, Space::Mac);
        assert_eq!(b.total, 4);
        let w = b.window(
            &Keys::default(),
            &set,
            Space::Mac,
            0x0200_0000_0040 >> MAC_BITS,
        );
        assert_eq!(w.members.len(), 64);
        match &w.read {
            Read::Range(start, end) => {
                assert_eq!(start, "/static-macvlan/macs/02:00:00:00:00:40");
                assert_eq!(end.as_slice(), b"/static-macvlan/macs/02:00:00:00:00:7f\0");
            }
            _ => panic!("mac window is not a range"),
        }
        let like: IpAddr = "fd00::".parse().unwrap();
        let set6 = AddrSet::from_segments([(0x100, 0x1ff)]);
        let space = Space::Ip { subnet: "v6", like };
        let b = Blocks::new(&set6, space);
        assert_eq!(b.total, 8);
        assert_eq!(b.window(&Keys::default(), &set6, space, 8).ops().len(), 32);
    }
}
