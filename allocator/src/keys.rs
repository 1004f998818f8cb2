//! The one place that builds and parses etcd keys. Keys are human-readable so that
//! `etcdctl get --prefix /static-macvlan/` is an inspection tool; `docs/etcd-layout.md` describes
//! them for users.
//!
//! ```text
//! <prefix>/schema                              "1"
//! <prefix>/config/subnets/<name>               mirrored VlanSubnet
//! <prefix>/config/macpools/<name>              mirrored MacPool
//! <prefix>/config/rules/<name>                 mirrored AllocationRule
//! <prefix>/pods/<namespace>/<pod>              pod mirror
//! <prefix>/ips/<subnet>/<ip>                   IP reservation
//! <prefix>/macs/<mac>                          MAC reservation (lowercase, colons)
//! <prefix>/owners/<podUid>/<ifname>            index: what one attachment holds
//! <prefix>/nodes/<node>/<podUid>/<ifname>      index: attachments of one node (for GC)
//! <prefix>/sticky/<subnet>/<key>               reservation following a sticky key (key escaped)
//! ```

use std::net::IpAddr;

use crate::addr::MacAddr;
use crate::error::{invalid, Error};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: &str = "1";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/static-macvlan";

/// Builds every key under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// A parsed reservation-related key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `<prefix>/ips/<subnet>/<ip>`
    Ip { subnet: String, ip: IpAddr },
    /// `<prefix>/macs/<mac>`
    Mac(MacAddr),
    /// `<prefix>/owners/<podUid>/<ifname>`
    Owner { pod_uid: String, ifname: String },
    /// `<prefix>/nodes/<node>/<podUid>/<ifname>`
    Node {
        node: String,
        pod_uid: String,
        ifname: String,
    },
    /// `<prefix>/config/subnets/<name>`
    Subnet(String),
    /// `<prefix>/config/macpools/<name>`
    MacPool(String),
    /// `<prefix>/config/rules/<name>`
    Rule(String),
    /// `<prefix>/pods/<namespace>/<pod>`
    Pod { namespace: String, name: String },
    /// `<prefix>/sticky/<subnet>/<escaped key>`
    Sticky { subnet: String, key: String },
    /// `<prefix>/schema`
    Schema,
}

/// Escapes a free-form key (a sticky key such as `default/web-0`) into one key segment:
/// every byte outside `[A-Za-z0-9._-]` becomes `%XX`.
pub fn escape_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape_segment`]; `None` for a malformed escape.
pub fn unescape_segment(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks that `value` can be one segment of a key: non-empty, no `/`, no whitespace or control
/// characters (they would make `etcdctl` output ambiguous).
pub fn check_segment(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if value.len() > 253 {
        return Err(invalid(field, value, "is longer than 253 characters"));
    }
    if value
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            field,
            value,
            "must not contain '/', whitespace or control characters",
        ));
    }
    Ok(())
}

impl Keys {
    /// A key builder for `prefix` (e.g. `/static-macvlan`; a trailing `/` is dropped).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `prefix` when it does not start with `/` or is only `/`.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        let trimmed = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || trimmed.is_empty() {
            return Err(invalid(
                "prefix",
                prefix,
                "must start with '/' and name a path (e.g. /static-macvlan)",
            ));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("prefix", prefix, "must not contain whitespace"));
        }
        Ok(Keys {
            prefix: trimmed.to_string(),
        })
    }

    /// The prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/` — everything this installation owns.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }

    pub fn subnet(&self, name: &str) -> String {
        format!("{}/config/subnets/{name}", self.prefix)
    }

    pub fn subnets(&self) -> String {
        format!("{}/config/subnets/", self.prefix)
    }

    pub fn macpool(&self, name: &str) -> String {
        format!("{}/config/macpools/{name}", self.prefix)
    }

    pub fn macpools(&self) -> String {
        format!("{}/config/macpools/", self.prefix)
    }

    pub fn rule(&self, name: &str) -> String {
        format!("{}/config/rules/{name}", self.prefix)
    }

    pub fn rules(&self) -> String {
        format!("{}/config/rules/", self.prefix)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> String {
        format!("{}/pods/{namespace}/{name}", self.prefix)
    }

    pub fn pods(&self) -> String {
        format!("{}/pods/", self.prefix)
    }

    pub fn ip(&self, subnet: &str, ip: IpAddr) -> String {
        format!("{}/ips/{subnet}/{ip}", self.prefix)
    }

    /// All IP reservations of one subnet.
    pub fn ips(&self, subnet: &str) -> String {
        format!("{}/ips/{subnet}/", self.prefix)
    }

    pub fn mac(&self, mac: MacAddr) -> String {
        format!("{}/macs/{mac}", self.prefix)
    }

    pub fn macs(&self) -> String {
        format!("{}/macs/", self.prefix)
    }

    pub fn owner(&self, pod_uid: &str, ifname: &str) -> String {
        format!("{}/owners/{pod_uid}/{ifname}", self.prefix)
    }

    /// All attachments of one pod UID.
    pub fn owners_of(&self, pod_uid: &str) -> String {
        format!("{}/owners/{pod_uid}/", self.prefix)
    }

    pub fn owners(&self) -> String {
        format!("{}/owners/", self.prefix)
    }

    /// The reservation that follows sticky key `key` in `subnet`.
    pub fn sticky(&self, subnet: &str, key: &str) -> String {
        format!("{}/sticky/{subnet}/{}", self.prefix, escape_segment(key))
    }

    pub fn node(&self, node: &str, pod_uid: &str, ifname: &str) -> String {
        format!("{}/nodes/{node}/{pod_uid}/{ifname}", self.prefix)
    }

    /// All attachments on one node.
    pub fn node_attachments(&self, node: &str) -> String {
        format!("{}/nodes/{node}/", self.prefix)
    }

    /// Parses a key built by this builder.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the key is outside the prefix or not of a known shape.
    pub fn parse(&self, key: &str) -> Result<Key, Error> {
        let corrupt = |reason: &str| Error::Corrupt {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let rest = key
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| corrupt("not under the prefix"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let key = match parts.as_slice() {
            ["schema"] => Key::Schema,
            ["config", "subnets", name] => Key::Subnet(name.to_string()),
            ["config", "macpools", name] => Key::MacPool(name.to_string()),
            ["config", "rules", name] => Key::Rule(name.to_string()),
            ["pods", ns, name] => Key::Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            ["ips", subnet, ip] => Key::Ip {
                subnet: subnet.to_string(),
                ip: ip.parse().map_err(|_| corrupt("bad IP address"))?,
            },
            ["macs", mac] => Key::Mac(mac.parse().map_err(|_| corrupt("bad MAC address"))?),
            ["owners", uid, ifname] => Key::Owner {
                pod_uid: uid.to_string(),
                ifname: ifname.to_string(),
            },
            ["sticky", subnet, key] => Key::Sticky {
                subnet: subnet.to_string(),
                key: unescape_segment(key).ok_or_else(|| corrupt("bad sticky key escape"))?,
            },
            ["nodes", node, uid, ifname] => Key::Node {
                node: node.to_string(),
                pod_uid: uid.to_string(),
                ifname: ifname.to_string(),
            },
            _ => return Err(corrupt("unknown key shape")),
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(corrupt("empty key segment"));
        }
        Ok(key)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

/// The key that sorts right after every key starting with `prefix`: the range end etcd uses for
/// prefix queries.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse_round_trip() {
        let k = Keys::new("/static-macvlan/").unwrap();
        let ip: IpAddr = "10.230.0.33".parse().unwrap();
        let v6: IpAddr = "fd00::21".parse().unwrap();
        let mac: MacAddr = "02:00:0A:E6:00:21".parse().unwrap();
        let cases = [
            (k.schema(), Key::Schema),
            (k.subnet("lan"), Key::Subnet("lan".into())),
            (k.macpool("vms"), Key::MacPool("vms".into())),
            (k.rule("db"), Key::Rule("db".into())),
            (
                k.pod("default", "web-0"),
                Key::Pod {
                    namespace: "default".into(),
                    name: "web-0".into(),
                },
            ),
            (
                k.ip("lan", ip),
                Key::Ip {
                    subnet: "lan".into(),
                    ip,
                },
            ),
            (
                k.ip("lan6", v6),
                Key::Ip {
                    subnet: "lan6".into(),
                    ip: v6,
                },
            ),
            (k.mac(mac), Key::Mac(mac)),
            (
                k.owner("uid-1", "net1"),
                Key::Owner {
                    pod_uid: "uid-1".into(),
                    ifname: "net1".into(),
                },
            ),
            (
                k.node("node-a", "uid-1", "net1"),
                Key::Node {
                    node: "node-a".into(),
                    pod_uid: "uid-1".into(),
                    ifname: "net1".into(),
                },
            ),
        ];
        for (key, want) in cases {
            assert_eq!(k.parse(&key).unwrap(), want, "{key}");
        }
        assert_eq!(
            k.parse(&k.sticky("lan", "default/web-0")).unwrap(),
            Key::Sticky {
                subnet: "lan".into(),
                key: "default/web-0".into()
            }
        );
        assert_eq!(
            k.sticky("lan", "default/web 0"),
            "/static-macvlan/sticky/lan/default%2Fweb%200"
        );
        assert_eq!(k.ip("lan", ip), "/static-macvlan/ips/lan/10.230.0.33");
        assert_eq!(k.mac(mac), "/static-macvlan/macs/02:00:0a:e6:00:21");
    }

    #[test]
    fn parse_rejects_foreign_keys() {
        let k = Keys::default();
        for bad in [
            "/other/ips/lan/10.0.0.1",
            "/static-macvlan/ips/lan/not-an-ip",
            "/static-macvlan/macs/zz",
            "/static-macvlan/what",
            "/static-macvlan/owners//net1",
            "/static-macvlanx/schema",
        ] {
            assert!(k.parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(Keys::new("static-macvlan").is_err());
        assert!(Keys::new("/").is_err());
        assert!(Keys::new("/a b").is_err());
        assert_eq!(Keys::new("/t-1//").unwrap().prefix(), "/t-1");
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }

    #[test]
    fn segments_are_checked() {
        assert!(check_segment("owner.podUid", "abc-123").is_ok());
        for bad in ["", "a/b", "a b", "a\nb"] {
            let err = check_segment("owner.podUid", bad).unwrap_err();
            assert!(err.to_string().contains("owner.podUid"), "{err}");
        }
    }
}
