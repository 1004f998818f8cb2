//! The CNI wire types this plugin prints: the result of ADD (in the shape of the netconf's
//! `cniVersion`), the error result, and the VERSION answer.
//!
//! Results are built once in the current (1.x) shape and converted on output: 0.3.x and 0.4.0
//! carry a `"version": "4"|"6"` in each `ips` entry, 1.x do not. Everything else this plugin
//! emits has the same keys in all supported versions, as the reference plugins print them
//! (`dns` is always present, possibly `{}`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::errors::Error;

/// The CNI spec versions this plugin speaks, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V030,
        CniVersion::V031,
        CniVersion::V040,
        CniVersion::V100,
        CniVersion::V110,
    ];

    /// The newest version, used when the input names none we can read.
    pub const LATEST: CniVersion = CniVersion::V110;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V030 => "0.3.0",
            CniVersion::V031 => "0.3.1",
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }

    /// Before 1.0.0, `ips` entries carry an IP `version`.
    pub fn ips_have_version(self) -> bool {
        self < CniVersion::V100
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V040
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_status(self) -> bool {
        self >= CniVersion::V110
    }

    /// The supported versions as the VERSION answer lists them.
    pub fn supported_list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::Version {
                version: s.to_string(),
                supported: Self::supported_list(),
            })
    }
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    })
}

/// One interface of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. `10.1.2.3/24`.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// The result of ADD, version-independent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    /// The `dns` object (nameservers, domain, search, options), `{}` when there is none.
    pub dns: Map<String, Value>,
}

impl CniResult {
    /// The result as JSON in the shape of `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_have_version() {
                    let v = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), v.into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        out.insert(
            "interfaces".into(),
            serde_json::to_value(&self.interfaces).expect("interfaces serialize"),
        );
        out.insert("ips".into(), ips.into());
        out.insert("routes".into(), routes.into());
        out.insert("dns".into(), Value::Object(self.dns.clone()));
        Value::Object(out)
    }

    /// Reads a result as written by any supported version (a `prevResult`): unknown keys are
    /// ignored, and so are entries this plugin has no use for, but malformed addresses are
    /// errors naming `prevResult.<field>`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn from_json(v: &Value) -> Result<CniResult, Error> {
        let field = |f: &str| format!("prevResult.{f}");
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config("prevResult", v, "must be an object"))?;
        let mut r = CniResult::default();
        let array = |name: &str| -> Result<Vec<Value>, Error> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(other) => Err(Error::config(field(name), other, "must be an array")),
            }
        };
        for (i, it) in array("interfaces")?.iter().enumerate() {
            let f = field(&format!("interfaces[{i}]"));
            r.interfaces.push(
                serde_json::from_value(it.clone())
                    .map_err(|e| Error::config(f, it, e.to_string()))?,
            );
        }
        for (i, it) in array("ips")?.iter().enumerate() {
            let f = |k: &str| field(&format!("ips[{i}].{k}"));
            let address = it
                .get("address")
                .and_then(Value::as_str)
                .and_then(parse_cidr)
                .ok_or_else(|| {
                    Error::config(
                        f("address"),
                        &it["address"],
                        "must be an address with prefix",
                    )
                })?;
            let gateway = match it.get("gateway") {
                None | Some(Value::Null) => None,
                Some(g) => Some(
                    g.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| Error::config(f("gateway"), g, "must be an IP address"))?,
                ),
            };
            let interface = match it.get("interface") {
                None | Some(Value::Null) => None,
                Some(n) => Some(n.as_u64().map(|n| n as usize).ok_or_else(|| {
                    Error::config(f("interface"), n, "must be a non-negative integer")
                })?),
            };
            r.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for (i, it) in array("routes")?.iter().enumerate() {
            let f = |k: &str| field(&format!("routes[{i}].{k}"));
            let dst = it
                .get("dst")
                .and_then(Value::as_str)
                .and_then(parse_cidr)
                .ok_or_else(|| Error::config(f("dst"), &it["dst"], "must be a CIDR"))?;
            let gw = match it.get("gw") {
                None | Some(Value::Null) => None,
                Some(g) => Some(
                    g.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| Error::config(f("gw"), g, "must be an IP address"))?,
                ),
            };
            r.routes.push(RouteConfig { dst, gw });
        }
        if let Some(Value::Object(dns)) = obj.get("dns") {
            r.dns = dns.clone();
        }
        Ok(r)
    }

    /// Appends `ours` to a previous result of a chain: our interfaces after theirs, our `ips`
    /// re-indexed accordingly, routes appended, and their DNS kept unless they had none.
    pub fn chain_after(prev: CniResult, ours: CniResult) -> CniResult {
        let offset = prev.interfaces.len();
        let mut r = prev;
        r.interfaces.extend(ours.interfaces);
        r.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        r.routes.extend(ours.routes);
        if r.dns.is_empty() {
            r.dns = ours.dns;
        }
        r
    }
}

/// `addr/prefix`; a bare address is refused (`IpNetwork` would read it as a host prefix).
fn parse_cidr(s: &str) -> Option<IpNetwork> {
    s.contains('/').then(|| s.parse().ok()).flatten()
}

/// The error result printed on stdout with exit code 1.
pub fn error_json(version: CniVersion, err: &Error, details: &str) -> Value {
    json!({
        "cniVersion": version.as_str(),
        "code": err.code(),
        "msg": err.to_string(),
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: "/var/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                address: "10.1.2.3/24".parse().unwrap(),
                gateway: Some("10.1.2.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.2.1".parse().unwrap()),
            }],
            dns: Map::new(),
        }
    }

    #[test]
    fn versions_parse_and_order() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>().unwrap(), v);
        }
        let err = "0.2.0".parse::<CniVersion>().unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(err.to_string().contains("0.2.0"), "{err}");
        assert!(CniVersion::V031.ips_have_version());
        assert!(!CniVersion::V100.ips_have_version());
        assert!(!CniVersion::V031.has_check() && CniVersion::V040.has_check());
    }

    #[test]
    fn version_info_lists_all() {
        let v = version_info();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn result_shapes_per_version() {
        let r = sample();
        for v in CniVersion::ALL {
            let j = r.to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["interfaces"][0]["sandbox"], "/var/run/netns/x");
            assert_eq!(j["ips"][0]["address"], "10.1.2.3/24");
            assert_eq!(j["ips"][0]["interface"], 0);
            assert_eq!(j["routes"][0]["gw"], "10.1.2.1");
            assert_eq!(j["dns"], json!({}));
            if v.ips_have_version() {
                assert_eq!(j["ips"][0]["version"], "4", "{v}");
            } else {
                assert!(j["ips"][0].get("version").is_none(), "{v}");
            }
        }
    }

    #[test]
    fn result_round_trips_through_prev_result() {
        let r = sample();
        for v in CniVersion::ALL {
            assert_eq!(CniResult::from_json(&r.to_json(v)).unwrap(), r, "{v}");
        }
        let bad = json!({"ips": [{"address": "10.1.2.3"}]});
        let err = CniResult::from_json(&bad).unwrap_err();
        assert!(
            err.to_string().contains("prevResult.ips[0].address"),
            "{err}"
        );
    }

    #[test]
    fn chaining_reindexes_interfaces() {
        let mut prev = sample();
        prev.dns.insert("nameservers".into(), json!(["10.0.0.53"]));
        let merged = CniResult::chain_after(prev, sample());
        assert_eq!(merged.interfaces.len(), 2);
        assert_eq!(merged.ips[1].interface, Some(1));
        assert_eq!(merged.dns["nameservers"], json!(["10.0.0.53"]));
    }
}
