//! Pure address arithmetic: sets of allocatable addresses as sorted, disjoint integer segments,
//! and the MAC address type. Nothing here touches etcd, so it is tested table-driven and fast.
//!
//! IPv4, IPv6 and MAC addresses all map onto `u128`, so one [`AddrSet`] type serves all three
//! pools. Allocation works on *indices* into the set (0..len), which keeps windows dense even when
//! excludes punch holes into the ranges.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A set of addresses as sorted, disjoint, non-adjacent inclusive segments, with a prefix sum so
/// that the n-th member is found by binary search. Its size never depends on how many addresses
/// it holds, only on how many ranges and excludes describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet {
    segs: Vec<(u128, u128)>,
    /// `before[i]` = number of members in `segs[..i]`.
    before: Vec<u128>,
    len: u128,
}

impl AddrSet {
    /// Builds a set from inclusive segments in any order; overlapping or touching segments merge.
    /// Segments with `start > end` are ignored (validation reports those before this point).
    pub fn from_segments(segs: impl IntoIterator<Item = (u128, u128)>) -> Self {
        let mut segs: Vec<(u128, u128)> = segs.into_iter().filter(|(a, b)| a <= b).collect();
        segs.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(segs.len());
        for (a, b) in segs {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Self::from_sorted(merged)
    }

    fn from_sorted(segs: Vec<(u128, u128)>) -> Self {
        let mut before = Vec::with_capacity(segs.len());
        let mut len: u128 = 0;
        for (a, b) in &segs {
            before.push(len);
            // A full u128 range cannot occur: IPv6 pools are at most /0 of 2^128 addresses only
            // in theory, and validation caps nothing there, so saturate rather than overflow.
            len = len.saturating_add((b - a).saturating_add(1));
        }
        AddrSet { segs, before, len }
    }

    /// Removes the inclusive segment `[lo, hi]` from the set.
    pub fn subtract(&self, lo: u128, hi: u128) -> Self {
        let mut out = Vec::with_capacity(self.segs.len() + 1);
        for &(a, b) in &self.segs {
            if b < lo || a > hi {
                out.push((a, b));
                continue;
            }
            if a < lo {
                out.push((a, lo - 1));
            }
            if b > hi {
                out.push((hi + 1, b));
            }
        }
        Self::from_sorted(out)
    }

    /// Number of members.
    pub fn len(&self) -> u128 {
        self.len
    }

    /// True when the set has no member.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `x` is a member.
    pub fn contains(&self, x: u128) -> bool {
        match self.segs.binary_search_by(|&(a, _)| a.cmp(&x)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => x <= self.segs[i - 1].1,
        }
    }

    /// The `i`-th member in ascending order, if `i < len()`.
    pub fn nth(&self, i: u128) -> Option<u128> {
        if i >= self.len {
            return None;
        }
        let seg = match self.before.binary_search(&i) {
            Ok(s) => s,
            Err(s) => s - 1,
        };
        Some(self.segs[seg].0 + (i - self.before[seg]))
    }

    /// The segments, for display and tests.
    pub fn segments(&self) -> &[(u128, u128)] {
        &self.segs
    }

    /// Number of windows of `size` indices that cover the set.
    pub fn window_count(&self, size: u128) -> u128 {
        self.len.div_ceil(size)
    }

    /// The members of window `k` (indices `k*size .. (k+1)*size`, clipped to the set).
    pub fn window(&self, k: u128, size: u128) -> impl Iterator<Item = u128> + '_ {
        let start = k.saturating_mul(size);
        let end = start.saturating_add(size).min(self.len);
        (start..end).filter_map(move |i| self.nth(i))
    }
}

/// An IP address as an integer in its family's space (IPv4 widened to `u128`).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`ip_to_u128`] for the family of `like`.
pub fn u128_to_ip(x: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((x as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(x.into()),
    }
}

/// A 48-bit MAC address. Displays in lowercase colon form, the form used in etcd keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address as an integer, for range arithmetic.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }

    /// The inverse of [`MacAddr::to_u64`]; bits above 48 are ignored.
    pub fn from_u64(x: u64) -> Self {
        let b = x.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Group bit set: not usable as an interface address.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Locally administered bit set: safe to invent without clashing with vendors' addresses.
    pub fn is_local(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// All zero: never a valid interface address.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected six hex octets separated by ':' or '-' (e.g. 02:00:0a:e6:00:21)")]
pub struct MacParseError;

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for slot in &mut out {
            let p = parts.next().ok_or(MacParseError)?;
            if p.len() != 2 {
                return Err(MacParseError);
            }
            *slot = u8::from_str_radix(p, 16).map_err(|_| MacParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError);
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The members of `[start, end]` a MAC pool may hand out: unicast first octets only, and only
/// locally administered ones unless `allow_global`. Other first octets inside the range are
/// skipped rather than rejected, so a wide range such as 02:00:00:00:00:00–fd:ff:ff:ff:ff:ff works.
pub fn mac_range_set(start: MacAddr, end: MacAddr, allow_global: bool) -> AddrSet {
    let (lo, hi) = (start.to_u64(), end.to_u64());
    let mut segs = Vec::new();
    for first in start.0[0]..=end.0[0] {
        let probe = MacAddr([first, 0, 0, 0, 0, 0]);
        if probe.is_multicast() || (!allow_global && !probe.is_local()) {
            continue;
        }
        let oct_lo = u64::from(first) << 40;
        let oct_hi = oct_lo | 0xff_ffff_ffff;
        let (a, b) = (lo.max(oct_lo), hi.min(oct_hi));
        if a <= b {
            segs.push((u128::from(a), u128::from(b)));
        }
    }
    AddrSet::from_segments(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seg = (u128, u128);

    #[test]
    fn merge_and_subtract() {
        // (segments, removed, expected segments, expected len)
        let cases: &[(&[Seg], Seg, &[Seg], u128)] = &[
            (&[(1, 10)], (3, 4), &[(1, 2), (5, 10)], 8),
            (&[(1, 10)], (1, 10), &[], 0),
            (&[(1, 10)], (0, 1), &[(2, 10)], 9),
            (&[(1, 10)], (10, 20), &[(1, 9)], 9),
            (&[(1, 5), (6, 10)], (20, 30), &[(1, 10)], 10),
            (&[(5, 10), (1, 3)], (2, 6), &[(1, 1), (7, 10)], 5),
            (&[(1, 3), (2, 8)], (100, 100), &[(1, 8)], 8),
        ];
        for (segs, (lo, hi), want, len) in cases {
            let s = AddrSet::from_segments(segs.iter().copied()).subtract(*lo, *hi);
            assert_eq!(s.segments(), *want, "{segs:?} minus {lo}-{hi}");
            assert_eq!(s.len(), *len);
        }
    }

    #[test]
    fn nth_and_contains_agree() {
        let s = AddrSet::from_segments([(10, 12), (20, 20), (30, 33)]);
        let all: Vec<u128> = (0..s.len()).map(|i| s.nth(i).unwrap()).collect();
        assert_eq!(all, vec![10, 11, 12, 20, 30, 31, 32, 33]);
        assert_eq!(s.nth(8), None);
        for x in 0..40 {
            assert_eq!(s.contains(x), all.contains(&x), "contains({x})");
        }
    }

    #[test]
    fn windows_cover_every_member_once() {
        let s = AddrSet::from_segments([(0, 99), (200, 249)]);
        assert_eq!(s.window_count(64), 3);
        let mut seen: Vec<u128> = (0..3).flat_map(|k| s.window(k, 64)).collect();
        assert_eq!(seen.len(), 150);
        seen.dedup();
        assert_eq!(seen.len(), 150);
        assert_eq!(s.window(2, 64).count(), 150 - 128);
    }

    #[test]
    fn huge_ipv6_sets_do_not_overflow() {
        let s = AddrSet::from_segments([(1 << 64, (1 << 65) - 1)]);
        assert_eq!(s.len(), 1 << 64);
        assert_eq!(s.nth((1 << 64) - 1), Some((1 << 65) - 1));
        assert_eq!(s.window_count(64), 1 << 58);
    }

    #[test]
    fn mac_parse_and_print() {
        let ok = [
            ("02:00:0A:e6:00:21", "02:00:0a:e6:00:21"),
            ("02-00-0a-e6-00-21", "02:00:0a:e6:00:21"),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<MacAddr>().unwrap().to_string(), want);
        }
        for bad in [
            "",
            "02:00:0a:e6:00",
            "02:00:0a:e6:00:21:22",
            "0g:00:00:00:00:00",
            "2:0:a:e6:0:21",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
        let m: MacAddr = "02:ab:cd:ef:01:23".parse().unwrap();
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
    }

    #[test]
    fn mac_range_skips_multicast_and_global_octets() {
        let s = mac_range_set(
            "02:ff:ff:ff:ff:fe".parse().unwrap(),
            "06:00:00:00:00:01".parse().unwrap(),
            false,
        );
        // 02:ff:ff:ff:ff:fe..ff (2), 03 multicast, 04 global, 05 multicast, 06:..00..01 (2)
        assert_eq!(s.len(), 4);
        assert!(s.contains(u128::from(
            "06:00:00:00:00:00".parse::<MacAddr>().unwrap().to_u64()
        )));
        let g = mac_range_set(
            "00:00:00:00:00:01".parse().unwrap(),
            "00:00:00:00:00:05".parse().unwrap(),
            true,
        );
        assert_eq!(g.len(), 5);
    }
}
