//! Candidate windows: how a reservation looks at a small part of a pool to find a free address.
//!
//! A window is the pool's members inside one aligned block of the address space, read from etcd in
//! one operation wherever the key text allows it:
//! - IPv4: a /24 is cut into 8 windows of 32 addresses that are consecutive in *text* order
//!   (`…/ips/lan/10.0.0.100` … `10.0.0.127`, `10.0.0.13` …), so each window is one key range
//!   that holds its 32 addresses and no other.
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
/// Windows per IPv4 /24 block.
const IPV4_SUBS: u128 = 8;

/// The last octets 0–255 in the text order etcd sorts keys in, cut into [`IPV4_SUBS`] runs.
fn octets_in_text_order() -> &'static [u8; 256] {
    static ORDER: std::sync::OnceLock<[u8; 256]> = std::sync::OnceLock::new();
    ORDER.get_or_init(|| {
        let mut v: Vec<u8> = (0..=255).collect();
        v.sort_by_key(|o| o.to_string());
        v.try_into().expect("256 octets")
    })
}

/// Which text-order run of its /24 an IPv4 address's last octet falls in.
fn ipv4_sub(octet: u8) -> u128 {
    let pos = octets_in_text_order()
        .iter()
        .position(|&o| o == octet)
        .expect("every octet is listed");
    pos as u128 / (256 / IPV4_SUBS)
}
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
    /// Windows per block.
    fn subs(&self) -> u128 {
        match self {
            Space::Ip {
                like: IpAddr::V4(_),
                ..
            } => IPV4_SUBS,
            _ => 1,
        }
    }

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
    subs: u128,
    /// Inclusive ranges of block numbers, sorted, disjoint.
    ranges: Vec<(u128, u128)>,
    pub(crate) total: u128,
    start: u128,
    pub(crate) visited: u128,
}

impl Blocks {
    pub(crate) fn new(set: &AddrSet, space: Space<'_>) -> Self {
        let (bits, subs) = (space.bits(), space.subs());
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for &(a, b) in set.segments() {
            let (lo, hi) = (a >> bits, b >> bits);
            match ranges.last_mut() {
                Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        let total = ranges.iter().map(|(a, b)| b - a + 1).sum::<u128>() * subs;
        let start = if set.is_empty() {
            0
        } else {
            let member = set.nth(fastrand::u128(0..set.len())).expect("index < len");
            let sub = if subs > 1 { ipv4_sub(member as u8) } else { 0 };
            Self::ordinal(&ranges, member >> bits) * subs + sub
        };
        Blocks {
            bits,
            subs,
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

    /// The next window (block number, run within the block), or `None` once every window was
    /// visited.
    pub(crate) fn advance(&mut self) -> Option<(u128, u128)> {
        if self.visited >= self.total {
            return None;
        }
        let ord = (self.start + self.visited) % self.total;
        self.visited += 1;
        Some((self.block_at(ord / self.subs), ord % self.subs))
    }

    /// The window of `set` in block `block`, run `sub`.
    pub(crate) fn window(
        &self,
        keys: &Keys,
        set: &AddrSet,
        space: Space<'_>,
        (block, sub): (u128, u128),
    ) -> Window {
        let lo = block << self.bits;
        let hi = lo | ((1u128 << self.bits) - 1);
        let candidates: Vec<u128> = if self.subs > 1 {
            let run = (256 / self.subs) as usize;
            let order = octets_in_text_order();
            order[sub as usize * run..(sub as usize + 1) * run]
                .iter()
                .map(|&o| lo | u128::from(o))
                .collect()
        } else {
            (lo..=hi).collect()
        };
        let members: Vec<u128> = candidates
            .into_iter()
            .filter(|x| set.contains(*x))
            .collect();
        let key_of = |x: u128| match space {
            Space::Ip { subnet, like } => keys.ip(subnet, u128_to_ip(x, like)),
            Space::Mac => keys.mac(MacAddr::from_u64(x as u64)),
        };
        let read = match space {
            Space::Ip {
                subnet,
                like: IpAddr::V4(_),
            } => {
                // From this run's first address to the next run's first one (or the end of the
                // /24's prefix), in text order.
                let o = (lo as u32).to_be_bytes();
                let prefix = format!("{}{}.{}.{}.", keys.ips(subnet), o[0], o[1], o[2]);
                let run = (256 / self.subs) as usize;
                let order = octets_in_text_order();
                let first = format!("{prefix}{}", order[sub as usize * run]);
                let end = match order.get((sub as usize + 1) * run) {
                    Some(next) => format!("{prefix}{next}").into_bytes(),
                    None => crate::keys::prefix_end(&prefix),
                };
                Read::Range(first, end)
            }
            Space::Ip { .. } => Read::Points(members.iter().map(|&x| key_of(x)).collect()),
            Space::Mac => {
                let mut end = key_of(hi).into_bytes();
                end.push(0);
                Read::Range(key_of(lo), end)
            }
        };
        let like = match space {
            Space::Ip { like, .. } => Some(like),
            Space::Mac => None,
        };
        Window {
            members,
            read,
            like,
            strip: match space {
                Space::Ip { subnet, .. } => keys.ips(subnet).len(),
                Space::Mac => keys.macs().len(),
            },
        }
    }
}

enum Read {
    Range(String, Vec<u8>),
    Points(Vec<String>),
}

/// The members of one block and how to read which of them are taken.
pub(crate) struct Window {
    members: Vec<u128>,
    read: Read,
    /// The IP family of the members; `None` for MACs.
    like: Option<IpAddr>,
    /// Length of the key prefix before the address text.
    strip: usize,
}

impl Window {
    /// The read operations, to put in a transaction.
    pub(crate) fn ops(&self) -> Vec<TxnOp> {
        match &self.read {
            Read::Range(start, end) => vec![TxnOp::get(
                start.clone(),
                Some(hint_opts(true).with_range(end.clone())),
            )],
            Read::Points(keys) => keys
                .iter()
                .map(|k| TxnOp::get(k.clone(), Some(hint_opts(true))))
                .collect(),
        }
    }

    fn addr(&self, x: u128) -> Addr {
        match self.like {
            Some(like) => Addr::Ip(u128_to_ip(x, like)),
            None => Addr::Mac(MacAddr::from_u64(x as u64)),
        }
    }

    /// The address a returned key names, parsed from its text after the prefix.
    fn parse(&self, key: &[u8]) -> Option<u128> {
        let text = std::str::from_utf8(key.get(self.strip..)?).ok()?;
        match self.like {
            Some(_) => text.parse::<IpAddr>().ok().map(crate::addr::ip_to_u128),
            None => text.parse::<MacAddr>().ok().map(|m| u128::from(m.to_u64())),
        }
    }

    /// The members absent from `resp` (the responses of [`Window::ops`], in order), in random
    /// order: the first is the pick, the others are hints for the next reservations.
    pub(crate) fn free(&self, resp: &[TxnOpResponse]) -> Vec<Addr> {
        let kvs = |r: &TxnOpResponse| match r {
            TxnOpResponse::Get(g) => g.kvs().len(),
            _ => 0,
        };
        let free: Vec<u128> = match &self.read {
            Read::Points(_) => self
                .members
                .iter()
                .zip(resp)
                .filter(|(_, r)| kvs(r) == 0)
                .map(|(x, _)| *x)
                .collect(),
            _ => {
                let taken: HashSet<u128> = match resp.first() {
                    Some(TxnOpResponse::Get(g)) => g
                        .kvs()
                        .iter()
                        .filter_map(|kv| self.parse(kv.key()))
                        .collect(),
                    _ => HashSet::new(),
                };
                self.members
                    .iter()
                    .filter(|x| !taken.contains(x))
                    .copied()
                    .collect()
            }
        };
        let mut free: Vec<Addr> = free.into_iter().map(|x| self.addr(x)).collect();
        fastrand::shuffle(&mut free);
        free
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
        assert_eq!(b.total, 16);
        let mut seen = Vec::new();
        while let Some(k) = b.advance() {
            seen.push(k);
        }
        seen.sort_unstable();
        let want: Vec<(u128, u128)> = [0x0a0000, 0x0a0003]
            .into_iter()
            .flat_map(|b| (0..8).map(move |s| (b, s)))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn ipv4_runs_are_key_ranges_that_cover_the_block_once() {
        let set = AddrSet::from_segments([(0x0ae6_0000, 0x0ae6_00ff)]);
        let like: IpAddr = "10.230.0.0".parse().unwrap();
        let space = Space::Ip {
            subnet: "lan",
            like,
        };
        let b = Blocks::new(&set, space);
        let keys = Keys::default();
        let mut all = Vec::new();
        for sub in 0..8 {
            let w = b.window(&keys, &set, space, (0x0ae600, sub));
            assert_eq!(w.members.len(), 32);
            assert_eq!(w.ops().len(), 1);
            let Read::Range(start, end) = &w.read else {
                panic!("ipv4 window is not a range")
            };
            // Every member's key is inside [start, end) and no other address of the /24 is.
            for o in 0..=255u128 {
                let key = keys.ip("lan", u128_to_ip(0x0ae6_0000 | o, like));
                let inside = key.as_str() >= start.as_str() && key.as_bytes() < end.as_slice();
                assert_eq!(
                    inside,
                    w.members.contains(&(0x0ae6_0000 | o)),
                    "{key} in run {sub}"
                );
            }
            all.extend(w.members.iter().copied());
        }
        all.sort_unstable();
        assert_eq!(all, (0x0ae6_0000..=0x0ae6_00ff).collect::<Vec<_>>());
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
            (0x0200_0000_0040 >> MAC_BITS, 0),
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
        assert_eq!(
            b.window(&Keys::default(), &set6, space, (8, 0)).ops().len(),
            32
        );
    }
}
