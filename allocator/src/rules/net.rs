//! Kubernetes' CEL IP and CIDR library (`k8s.io/apiserver/pkg/cel/library/ip.go`, `cidr.go`),
//! which the `cel` crate lacks: the types `net.IP` and `net.CIDR` and their functions, with the
//! same parsing rules (no zones, no IPv4-mapped IPv6, no leading zeros) and results.

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cel::common::types::{CelBool, CelInt, CelString, Type, STRING_TYPE};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

pub(crate) static IP_TYPE: Type = Type::new_unspecified_type("net.IP");
pub(crate) static CIDR_TYPE: Type = Type::new_unspecified_type("net.CIDR");

/// A `net.IP` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ip(pub(crate) IpAddr);

/// A `net.CIDR` value: the address as written (host bits kept) and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Val for Ip {
    fn get_type(&self) -> &Type {
        &IP_TYPE
    }
    fn cel_type() -> &'static Type {
        &IP_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Ip>() == Some(self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Ip {}

impl Val for Cidr {
    fn get_type(&self) -> &Type {
        &CIDR_TYPE
    }
    fn cel_type() -> &'static Type {
        &CIDR_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Cidr>() == Some(self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Cidr {}

/// Parses an IP address the way Kubernetes' `ip()` does.
pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    if s.contains('%') {
        return Err(format!("IP address {s:?} with zone value is not allowed"));
    }
    // std rejects leading zeros in IPv4 octets ("010.0.0.1"), as Go's netip does.
    let addr: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))?;
    if let IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!(
                "IPv4-mapped IPv6 address {s:?} is not allowed (write the IPv4 address)"
            ));
        }
    }
    Ok(addr)
}

/// Parses a CIDR the way Kubernetes' `cidr()` does: host bits may be set (`.masked()` clears
/// them); the prefix length is decimal without leading zeros.
pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a valid CIDR: no '/'"))?;
    let addr = parse_ip(addr).map_err(|e| format!("{s:?} is not a valid CIDR: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let valid_digits = !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && !(bits.len() > 1 && bits.starts_with('0'));
    let prefix = bits
        .parse::<u8>()
        .ok()
        .filter(|p| valid_digits && *p <= max)
        .ok_or_else(|| format!("{s:?} is not a valid CIDR: prefix length must be 0 to {max}"))?;
    Ok(Cidr { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl Cidr {
    fn masked(self) -> Cidr {
        Cidr {
            addr: mask(self.addr, self.prefix),
            prefix: self.prefix,
        }
    }

    fn contains_ip(self, ip: IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && mask(ip, self.prefix) == self.masked().addr
    }

    fn contains_cidr(self, other: Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 169 && a.octets()[1] == 254,
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_link_local_multicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 224 && o[1] == 0 && o[2] == 0
        }
        IpAddr::V6(a) => a.segments()[0] & 0xff0f == 0xff02,
    }
}

/// Go's `netip.Addr.IsGlobalUnicast`: private ranges and ULAs count as global unicast.
fn is_global_unicast(ip: IpAddr) -> bool {
    if let IpAddr::V4(a) = ip {
        if a.is_unspecified() || a.is_broadcast() {
            return false;
        }
    }
    !ip.is_unspecified() && !is_loopback(ip) && !ip.is_multicast() && !is_link_local_unicast(ip)
}

fn function_error(name: &str, message: String) -> ExecutionError {
    ExecutionError::function_error(name, message)
}

fn str_arg<'a>(args: &'a [CowVal<'_, '_>], i: usize) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::invalid_argument_count(i + 1, args.len()))
}

fn ip_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<IpAddr, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<Ip>())
        .map(|ip| ip.0)
        .ok_or_else(|| ExecutionError::invalid_argument_count(i + 1, args.len()))
}

fn cidr_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<Cidr, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<Cidr>())
        .copied()
        .ok_or_else(|| ExecutionError::invalid_argument_count(i + 1, args.len()))
}

fn ok_bool<'b, 'v>(b: bool) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(CelBool::from(b)))
}

fn ip_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let ip = parse_ip(str_arg(&args, 0)?).map_err(|e| function_error("ip", e))?;
    Ok(CowVal::owned(Ip(ip)))
}

fn is_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    ok_bool(parse_ip(str_arg(&args, 0)?).is_ok())
}

fn ip_is_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let s = str_arg(&args, 0)?;
    let ip = parse_ip(s).map_err(|e| function_error("ip.isCanonical", e))?;
    ok_bool(ip.to_string() == s)
}

fn ip_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(CelString::from(
        ip_arg(&args, 0)?.to_string(),
    )))
}

fn ip_family<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let family = if ip_arg(&args, 0)?.is_ipv4() { 4 } else { 6 };
    Ok(CowVal::owned(CelInt::from(family)))
}

macro_rules! ip_predicate {
    ($name:ident, $pred:expr) => {
        fn $name<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
            let pred: fn(IpAddr) -> bool = $pred;
            ok_bool(pred(ip_arg(&args, 0)?))
        }
    };
}

ip_predicate!(ip_is_unspecified, |ip| ip.is_unspecified());
ip_predicate!(ip_is_loopback, is_loopback);
ip_predicate!(ip_is_link_local_multicast, is_link_local_multicast);
ip_predicate!(ip_is_link_local_unicast, is_link_local_unicast);
ip_predicate!(ip_is_global_unicast, is_global_unicast);

fn cidr_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let cidr = parse_cidr(str_arg(&args, 0)?).map_err(|e| function_error("cidr", e))?;
    Ok(CowVal::owned(cidr))
}

fn is_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    ok_bool(parse_cidr(str_arg(&args, 0)?).is_ok())
}

fn cidr_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(CelString::from(
        cidr_arg(&args, 0)?.to_string(),
    )))
}

fn cidr_contains_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let cidr = cidr_arg(&args, 0)?;
    let ip = match args.get(1).and_then(|a| a.downcast_ref::<CelString>()) {
        Some(s) => parse_ip(s.inner()).map_err(|e| function_error("containsIP", e))?,
        None => ip_arg(&args, 1)?,
    };
    ok_bool(cidr.contains_ip(ip))
}

fn cidr_contains_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let cidr = cidr_arg(&args, 0)?;
    let other = match args.get(1).and_then(|a| a.downcast_ref::<CelString>()) {
        Some(s) => parse_cidr(s.inner()).map_err(|e| function_error("containsCIDR", e))?,
        None => cidr_arg(&args, 1)?,
    };
    ok_bool(cidr.contains_cidr(other))
}

fn cidr_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(Ip(cidr_arg(&args, 0)?.addr)))
}

fn cidr_masked<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(cidr_arg(&args, 0)?.masked()))
}

fn cidr_prefix_length<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::owned(CelInt::from(i64::from(
        cidr_arg(&args, 0)?.prefix,
    ))))
}

/// Registers the library on `env`.
pub(crate) fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    let ip = || IP_TYPE.to_owned();
    let cidr = || CIDR_TYPE.to_owned();
    let string = || STRING_TYPE.to_owned();
    env.add_overload("ip", "string_to_ip", vec![string()], ip_from_string)?;
    env.add_overload("isIP", "is_ip_string", vec![string()], is_ip)?;
    env.add_overload(
        "ip.isCanonical",
        "ip_is_canonical_string",
        vec![string()],
        ip_is_canonical,
    )?;
    env.add_overload("string", "ip_to_string", vec![ip()], ip_to_string)?;
    env.add_member_overload("family", "ip_family", ip(), vec![], ip_family)?;
    env.add_member_overload(
        "isUnspecified",
        "ip_is_unspecified",
        ip(),
        vec![],
        ip_is_unspecified,
    )?;
    env.add_member_overload("isLoopback", "ip_is_loopback", ip(), vec![], ip_is_loopback)?;
    env.add_member_overload(
        "isLinkLocalMulticast",
        "ip_is_link_local_multicast",
        ip(),
        vec![],
        ip_is_link_local_multicast,
    )?;
    env.add_member_overload(
        "isLinkLocalUnicast",
        "ip_is_link_local_unicast",
        ip(),
        vec![],
        ip_is_link_local_unicast,
    )?;
    env.add_member_overload(
        "isGlobalUnicast",
        "ip_is_global_unicast",
        ip(),
        vec![],
        ip_is_global_unicast,
    )?;

    env.add_overload("cidr", "string_to_cidr", vec![string()], cidr_from_string)?;
    env.add_overload("isCIDR", "is_cidr_string", vec![string()], is_cidr)?;
    env.add_overload("string", "cidr_to_string", vec![cidr()], cidr_to_string)?;
    env.add_member_overload(
        "containsIP",
        "cidr_contains_ip_ip",
        cidr(),
        vec![ip()],
        cidr_contains_ip,
    )?;
    env.add_member_overload(
        "containsIP",
        "cidr_contains_ip_string",
        cidr(),
        vec![string()],
        cidr_contains_ip,
    )?;
    env.add_member_overload(
        "containsCIDR",
        "cidr_contains_cidr_cidr",
        cidr(),
        vec![cidr()],
        cidr_contains_cidr,
    )?;
    env.add_member_overload(
        "containsCIDR",
        "cidr_contains_cidr_string",
        cidr(),
        vec![string()],
        cidr_contains_cidr,
    )?;
    env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
    env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
    env.add_member_overload(
        "prefixLength",
        "cidr_prefix_length",
        cidr(),
        vec![],
        cidr_prefix_length,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ip_follows_kubernetes() {
        for (s, ok) in [
            ("10.0.0.1", true),
            ("2001:db8::1", true),
            ("::1", true),
            ("010.0.0.1", false),
            ("10.0.0.256", false),
            ("::ffff:10.0.0.1", false),
            ("fe80::1%eth0", false),
            ("10.0.0.1/8", false),
            ("", false),
            (" 10.0.0.1", false),
        ] {
            assert_eq!(parse_ip(s).is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn parse_cidr_follows_kubernetes() {
        for (s, ok) in [
            ("10.0.0.0/8", true),
            ("10.0.0.1/8", true),
            ("0.0.0.0/0", true),
            ("2001:db8::/32", true),
            ("10.0.0.0/33", false),
            ("10.0.0.0/08", false),
            ("10.0.0.0/+8", false),
            ("10.0.0.0/", false),
            ("10.0.0.0", false),
            ("::ffff:10.0.0.0/104", false),
            ("2001:db8::/129", false),
        ] {
            assert_eq!(parse_cidr(s).is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn cidr_arithmetic() {
        let c = parse_cidr("10.1.2.3/16").unwrap();
        assert_eq!(c.masked().to_string(), "10.1.0.0/16");
        assert!(c.contains_ip("10.1.255.255".parse().unwrap()));
        assert!(!c.contains_ip("10.2.0.0".parse().unwrap()));
        assert!(!c.contains_ip("::1".parse().unwrap()));
        assert!(c.contains_cidr(parse_cidr("10.1.4.0/24").unwrap()));
        assert!(!c.contains_cidr(parse_cidr("10.0.0.0/8").unwrap()));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(all.contains_ip("255.255.255.255".parse().unwrap()));
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(v6.contains_ip("2001:db8:ffff::1".parse().unwrap()));
        assert!(parse_cidr("::/0")
            .unwrap()
            .contains_ip("ff02::1".parse().unwrap()));
    }

    #[test]
    fn classification_matches_go_netip() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_global_unicast(ip("10.0.0.1")));
        assert!(is_global_unicast(ip("fd00::1")));
        assert!(!is_global_unicast(ip("255.255.255.255")));
        assert!(!is_global_unicast(ip("169.254.1.1")));
        assert!(!is_global_unicast(ip("224.0.0.1")));
        assert!(is_link_local_multicast(ip("224.0.0.251")));
        assert!(!is_link_local_multicast(ip("224.0.1.1")));
        assert!(is_link_local_multicast(ip("ff02::1")));
        assert!(is_link_local_unicast(ip("fe80::1")));
        assert!(!is_link_local_unicast(ip("fec0::1")));
    }
}
