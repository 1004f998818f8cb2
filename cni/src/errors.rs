//! The plugin's one error type and the one function, [`Error::code`], that maps every variant to
//! the CNI error code the runtime sees. `docs/cni-errors.md` documents the same table for users;
//! the test at the bottom covers every variant so that a new one cannot go unmapped.
//!
//! Codes below 100 are the spec's (1.1.0, "Error" section); 100 and above are ours.

use std::io;

use static_macvlan_allocator::rules::RuleError;
use static_macvlan_allocator::Error as AllocError;

use crate::netlink::NetError;

/// The CNI error codes this plugin returns.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown or does not exist (CHECK: no namespace or no interface).
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// Invalid or missing `CNI_*` environment variable (or `CNI_ARGS` value).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin or a node-local file).
    pub const IO: u32 = 5;
    /// Failed to decode content (stdin is not JSON, or a file it names is not).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration (netconf, node-local file, or the subnet as mirrored).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: etcd unavailable or too many conflicting attempts.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (etcd unreachable or schema unknown).
    pub const NOT_AVAILABLE: u32 = 50;
    /// A static IP request names an address another attachment holds.
    pub const IP_TAKEN: u32 = 100;
    /// A static MAC request names an address another attachment holds.
    pub const MAC_TAKEN: u32 = 101;
    /// Every allocatable address of the subnet is reserved.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// Every address of the MAC pool is reserved.
    pub const MAC_POOL_EXHAUSTED: u32 = 103;
    /// The subnet (or the MAC pool it names) is not configured in etcd.
    pub const NOT_CONFIGURED: u32 = 104;
    /// A static IP outside the subnet, or one it never hands out (gateway, excluded…).
    pub const OUTSIDE_SUBNET: u32 = 105;
    /// The attachment (pod UID + ifname) already holds a different reservation.
    pub const ATTACHMENT_CONFLICT: u32 = 106;
    /// A netlink or namespace operation failed.
    pub const NETLINK: u32 = 107;
    /// The pending reservation expired (or changed hands) before the interface was up.
    pub const COMMIT_FAILED: u32 = 108;
    /// The subnet is VLAN-tagged and the kernel has no 802.1q support.
    pub const VLAN_UNSUPPORTED: u32 = 109;
    /// CHECK found the interface or the reservation not as the previous result says.
    pub const CHECK_FAILED: u32 = 110;
    /// A link name we need is taken by a link that is not ours.
    pub const LINK_CONFLICT: u32 = 111;
    /// The data in etcd is unusable: unknown schema version or a record that does not decode.
    pub const ETCD_DATA: u32 = 112;
    /// etcd refused the request for a reason retrying will not fix (e.g. permission denied).
    pub const ETCD_REFUSED: u32 = 113;
    /// IPv6 duplicate address detection found the address in use on the LAN.
    pub const DUPLICATE_ADDRESS: u32 = 114;
    /// An AllocationRule denies the attachment.
    pub const DENIED_BY_RULE: u32 = 115;
    /// The subnet's `selector` does not admit the attachment.
    pub const SUBNET_REFUSED: u32 = 116;
    /// An AllocationRule or a subnet selector is invalid, fails, exceeds its budget or gives an
    /// unusable result.
    pub const RULE_FAILED: u32 = 117;
    /// A rule or selector needs the pod's labels or annotations, and the pod mirror did not
    /// appear in etcd within `podMirrorWaitSeconds`.
    pub const POD_METADATA_UNAVAILABLE: u32 = 118;
}

/// Everything that can make an invocation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `CNI_*` variable (or a `CNI_ARGS` key) is missing or malformed.
    #[error("invalid environment variable {var} {value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },

    /// Reading stdin or a file failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    /// Input that is not JSON (or not the JSON shape at all, e.g. not an object).
    #[error("decode {what}: {reason}")]
    Decode { what: String, reason: String },

    /// A configuration field with a wrong type or value.
    #[error("invalid {field} {value}: {reason}")]
    Config {
        field: String,
        value: String,
        reason: String,
    },

    /// `cniVersion` is not one this plugin speaks.
    #[error("unsupported cniVersion {version:?}: supported are {supported}")]
    Version { version: String, supported: String },

    /// The allocator failed (etcd, reservations).
    #[error(transparent)]
    Alloc(#[from] AllocError),

    /// A netlink or namespace operation failed.
    #[error(transparent)]
    Net(#[from] NetError),

    /// CHECK: the namespace or the interface does not exist.
    #[error("container unknown: {0}")]
    ContainerUnknown(String),

    /// CHECK: something differs from the previous result or from etcd.
    #[error("check failed: {0}")]
    Check(String),

    /// STATUS: the plugin cannot serve ADD now.
    #[error("plugin not available: {0}")]
    NotAvailable(#[source] AllocError),

    /// The matching AllocationRule denies the attachment.
    #[error("denied by AllocationRule {rule:?}: {message}")]
    Denied { rule: String, message: String },

    /// The subnet's selector does not admit the attachment.
    #[error("subnet {subnet:?} does not admit this attachment: its selector {selector:?} is false for {what}")]
    SubnetRefused {
        subnet: String,
        selector: String,
        what: String,
    },

    /// A rule or selector could not be compiled or evaluated; `note` adds what the plugin did
    /// (e.g. how long it waited for the pod mirror).
    #[error("{source}{note}")]
    Rule { source: RuleError, note: String },
}

impl Error {
    /// The CNI error code of this error. The single place codes are decided.
    pub fn code(&self) -> u32 {
        match self {
            Error::Env { .. } => code::INVALID_ENV,
            Error::Io { .. } => code::IO,
            Error::Decode { .. } => code::DECODE,
            Error::Config { .. } => code::INVALID_CONFIG,
            Error::Version { .. } => code::INCOMPATIBLE_VERSION,
            Error::ContainerUnknown(_) => code::CONTAINER_UNKNOWN,
            Error::Check(_) => code::CHECK_FAILED,
            Error::NotAvailable(_) => code::NOT_AVAILABLE,
            Error::Denied { .. } => code::DENIED_BY_RULE,
            Error::SubnetRefused { .. } => code::SUBNET_REFUSED,
            Error::Rule { source, .. } => match source {
                RuleError::MetadataUnavailable { .. } => code::POD_METADATA_UNAVAILABLE,
                RuleError::Invalid { .. }
                | RuleError::Eval { .. }
                | RuleError::Budget { .. }
                | RuleError::BadResult { .. } => code::RULE_FAILED,
            },
            Error::Alloc(e) => match e {
                AllocError::Invalid { .. } => code::INVALID_CONFIG,
                AllocError::IpTaken { .. } => code::IP_TAKEN,
                AllocError::MacTaken { .. } => code::MAC_TAKEN,
                AllocError::PoolExhausted { .. } => code::POOL_EXHAUSTED,
                AllocError::MacPoolExhausted { .. } => code::MAC_POOL_EXHAUSTED,
                AllocError::OutsideSubnet { .. } => code::OUTSIDE_SUBNET,
                AllocError::AttachmentConflict { .. } => code::ATTACHMENT_CONFLICT,
                AllocError::SubnetNotFound(..) | AllocError::MacPoolNotFound(..) => {
                    code::NOT_CONFIGURED
                }
                AllocError::CommitFailed { .. } => code::COMMIT_FAILED,
                AllocError::SchemaMismatch { .. } | AllocError::Corrupt { .. } => code::ETCD_DATA,
                AllocError::Unavailable { .. }
                | AllocError::RetriesExhausted { .. }
                | AllocError::StickyInUse { .. } => code::TRY_AGAIN_LATER,
                AllocError::Etcd { .. } => code::ETCD_REFUSED,
            },
            Error::Net(e) => match e {
                NetError::VlanUnsupported { .. } => code::VLAN_UNSUPPORTED,
                NetError::LinkConflict { .. } => code::LINK_CONFLICT,
                NetError::DadFailed { .. } => code::DUPLICATE_ADDRESS,
                // Names, modes, ids, routes and MTUs come from configuration: checked before
                // anything is changed, so these mean a config the node cannot honour.
                NetError::InvalidName { .. }
                | NetError::MtuTooLarge { .. }
                | NetError::PassthruMac { .. }
                | NetError::InvalidVlanId { .. }
                | NetError::InvalidRoute { .. } => code::INVALID_CONFIG,
                NetError::LinkNotFound { .. }
                | NetError::Netns { .. }
                | NetError::Sysctl { .. }
                | NetError::Netlink { .. }
                | NetError::DadTimeout { .. }
                | NetError::Lock { .. } => code::NETLINK,
            },
        }
    }

    /// Whether the runtime may succeed by simply trying again later.
    pub fn is_retryable(&self) -> bool {
        self.code() == code::TRY_AGAIN_LATER
    }

    /// A short, stable label of the kind of error, for the log line (never the error's text).
    pub fn kind(&self) -> &'static str {
        match self.code() {
            code::INCOMPATIBLE_VERSION => "version",
            code::CONTAINER_UNKNOWN => "container_unknown",
            code::INVALID_ENV => "env",
            code::IO => "io",
            code::DECODE => "decode",
            code::INVALID_CONFIG => "config",
            code::TRY_AGAIN_LATER => "try_again",
            code::NOT_AVAILABLE => "not_available",
            code::IP_TAKEN => "ip_taken",
            code::MAC_TAKEN => "mac_taken",
            code::POOL_EXHAUSTED => "pool_exhausted",
            code::MAC_POOL_EXHAUSTED => "mac_pool_exhausted",
            code::NOT_CONFIGURED => "not_configured",
            code::OUTSIDE_SUBNET => "outside_subnet",
            code::ATTACHMENT_CONFLICT => "attachment_conflict",
            code::NETLINK => "netlink",
            code::COMMIT_FAILED => "commit_failed",
            code::VLAN_UNSUPPORTED => "vlan_unsupported",
            code::CHECK_FAILED => "check_failed",
            code::LINK_CONFLICT => "link_conflict",
            code::ETCD_DATA => "etcd_data",
            code::ETCD_REFUSED => "etcd_refused",
            code::DUPLICATE_ADDRESS => "duplicate_address",
            code::DENIED_BY_RULE => "denied",
            code::SUBNET_REFUSED => "subnet_refused",
            code::RULE_FAILED => "rule_failed",
            code::POD_METADATA_UNAVAILABLE => "pod_metadata_unavailable",
            _ => "other",
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Env`].
    pub fn env(
        var: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Env {
            var: var.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use static_macvlan_allocator::Owner;

    fn owner() -> Box<Owner> {
        Box::new(Owner {
            pod_uid: "u1".into(),
            namespace: "default".into(),
            pod: "web-0".into(),
            container_id: "c1".into(),
            ifname: "net1".into(),
            node: "node-a".into(),
            network: String::new(),
        })
    }

    fn etcd_err() -> etcd_client::Error {
        etcd_client::Error::IoError(io::Error::other("test"))
    }

    fn io_err() -> io::Error {
        io::Error::other("test")
    }

    /// Every variant, nested ones included, with the code it must map to. Adding a variant
    /// without a row here fails to compile in the exhaustive matches below.
    fn every_variant() -> Vec<(Error, u32)> {
        let ip = "10.0.0.5".parse().unwrap();
        let alloc = vec![
            (
                AllocError::Invalid {
                    field: "f".into(),
                    value: "v".into(),
                    reason: "r".into(),
                },
                7,
            ),
            (
                AllocError::IpTaken {
                    subnet: "lan".into(),
                    ip,
                    holder: owner(),
                },
                100,
            ),
            (
                AllocError::MacTaken {
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                    holder: owner(),
                },
                101,
            ),
            (
                AllocError::PoolExhausted {
                    subnet: "lan".into(),
                    used: 1,
                    capacity: 1,
                },
                102,
            ),
            (
                AllocError::MacPoolExhausted {
                    pool: "p".into(),
                    capacity: 1,
                },
                103,
            ),
            (
                AllocError::OutsideSubnet {
                    subnet: "lan".into(),
                    ip,
                    reason: "r".into(),
                },
                105,
            ),
            (
                AllocError::AttachmentConflict {
                    owner: owner(),
                    held: "h".into(),
                    requested: "r".into(),
                },
                106,
            ),
            (AllocError::SubnetNotFound("lan".into(), "/k".into()), 104),
            (AllocError::MacPoolNotFound("p".into(), "/k".into()), 104),
            (
                AllocError::CommitFailed {
                    owner: owner(),
                    reason: "r".into(),
                },
                108,
            ),
            (
                AllocError::SchemaMismatch {
                    prefix: "/p".into(),
                    found: "".into(),
                    expected: "1".into(),
                },
                112,
            ),
            (
                AllocError::Corrupt {
                    key: "/k".into(),
                    reason: "r".into(),
                },
                112,
            ),
            (
                AllocError::Unavailable {
                    op: "op".into(),
                    source: etcd_err(),
                },
                11,
            ),
            (
                AllocError::Etcd {
                    op: "op".into(),
                    source: etcd_err(),
                },
                113,
            ),
            (
                AllocError::RetriesExhausted {
                    op: "op".into(),
                    attempts: 3,
                },
                11,
            ),
            (
                AllocError::StickyInUse {
                    key: "default/web-0".into(),
                    holder: owner(),
                },
                11,
            ),
        ];
        let rule = vec![
            (
                RuleError::Invalid {
                    rule: "r".into(),
                    field: "spec.match".into(),
                    message: "m".into(),
                    position: None,
                },
                117,
            ),
            (
                RuleError::Eval {
                    rule: "r".into(),
                    field: "spec.ip".into(),
                    message: "m".into(),
                },
                117,
            ),
            (
                RuleError::Budget {
                    rule: "r".into(),
                    field: "spec.match".into(),
                    limit: static_macvlan_allocator::rules::Limit::Cost(1),
                },
                117,
            ),
            (
                RuleError::BadResult {
                    rule: "r".into(),
                    field: "spec.mac".into(),
                    value: "v".into(),
                    reason: "r".into(),
                },
                117,
            ),
            (
                RuleError::MetadataUnavailable {
                    rule: "r".into(),
                    field: "spec.match".into(),
                },
                118,
            ),
        ];
        let net = vec![
            (NetError::LinkNotFound { name: "x".into() }, 107),
            (
                NetError::InvalidName {
                    name: "x".into(),
                    reason: "r",
                },
                7,
            ),
            (
                NetError::MtuTooLarge {
                    mtu: 9000,
                    parent: "eth0".into(),
                    parent_mtu: 1500,
                },
                7,
            ),
            (
                NetError::PassthruMac {
                    parent: "eth0".into(),
                },
                7,
            ),
            (NetError::InvalidVlanId { vlan_id: 0 }, 7),
            (
                NetError::VlanUnsupported {
                    name: "eth0.5".into(),
                },
                109,
            ),
            (
                NetError::LinkConflict {
                    name: "x".into(),
                    reason: "r".into(),
                },
                111,
            ),
            (
                NetError::InvalidRoute {
                    route: "x".into(),
                    reason: "r",
                },
                7,
            ),
            (
                NetError::Netns {
                    op: "open",
                    path: "/x".into(),
                    source: io_err(),
                },
                107,
            ),
            (
                NetError::Sysctl {
                    op: "write",
                    path: "/x".into(),
                    source: io_err(),
                },
                107,
            ),
            (
                NetError::Netlink {
                    op: "op".into(),
                    source: io_err(),
                },
                107,
            ),
            (
                NetError::DadFailed {
                    ifname: "net1".into(),
                    address: "fd00::5".parse().unwrap(),
                },
                114,
            ),
            (
                NetError::DadTimeout {
                    ifname: "net1".into(),
                    timeout: std::time::Duration::from_secs(1),
                },
                107,
            ),
            (
                NetError::Lock {
                    path: "/x".into(),
                    source: io_err(),
                },
                107,
            ),
        ];
        let mut all = vec![
            (Error::env("CNI_IFNAME", "", "r"), 4),
            (
                Error::Io {
                    op: "read stdin".into(),
                    source: io_err(),
                },
                5,
            ),
            (
                Error::Decode {
                    what: "netconf".into(),
                    reason: "r".into(),
                },
                6,
            ),
            (Error::config("subnet", "1", "r"), 7),
            (
                Error::Version {
                    version: "9".into(),
                    supported: "1.1.0".into(),
                },
                1,
            ),
            (Error::ContainerUnknown("x".into()), 3),
            (Error::Check("x".into()), 110),
            (
                Error::NotAvailable(AllocError::Unavailable {
                    op: "op".into(),
                    source: etcd_err(),
                }),
                50,
            ),
            (
                Error::Denied {
                    rule: "r".into(),
                    message: "m".into(),
                },
                115,
            ),
            (
                Error::SubnetRefused {
                    subnet: "lan".into(),
                    selector: "false".into(),
                    what: "pod default/x".into(),
                },
                116,
            ),
        ];
        all.extend(rule.into_iter().map(|(source, c)| {
            (
                Error::Rule {
                    source,
                    note: String::new(),
                },
                c,
            )
        }));
        all.extend(alloc.into_iter().map(|(e, c)| (Error::Alloc(e), c)));
        all.extend(net.into_iter().map(|(e, c)| (Error::Net(e), c)));
        all
    }

    /// Compile-time guard: these matches have no wildcard, so a new variant in any of the three
    /// enums breaks the build until it is added to [`every_variant`] and to [`Error::code`].
    fn variant_name(e: &Error) -> String {
        match e {
            Error::Env { .. } => "Env".into(),
            Error::Io { .. } => "Io".into(),
            Error::Decode { .. } => "Decode".into(),
            Error::Config { .. } => "Config".into(),
            Error::Version { .. } => "Version".into(),
            Error::ContainerUnknown(_) => "ContainerUnknown".into(),
            Error::Check(_) => "Check".into(),
            Error::NotAvailable(_) => "NotAvailable".into(),
            Error::Denied { .. } => "Denied".into(),
            Error::SubnetRefused { .. } => "SubnetRefused".into(),
            Error::Rule { source, .. } => format!(
                "Rule::{}",
                match source {
                    RuleError::Invalid { .. } => "Invalid",
                    RuleError::Eval { .. } => "Eval",
                    RuleError::Budget { .. } => "Budget",
                    RuleError::BadResult { .. } => "BadResult",
                    RuleError::MetadataUnavailable { .. } => "MetadataUnavailable",
                }
            ),
            Error::Alloc(a) => format!(
                "Alloc::{}",
                match a {
                    AllocError::Invalid { .. } => "Invalid",
                    AllocError::IpTaken { .. } => "IpTaken",
                    AllocError::MacTaken { .. } => "MacTaken",
                    AllocError::PoolExhausted { .. } => "PoolExhausted",
                    AllocError::MacPoolExhausted { .. } => "MacPoolExhausted",
                    AllocError::OutsideSubnet { .. } => "OutsideSubnet",
                    AllocError::AttachmentConflict { .. } => "AttachmentConflict",
                    AllocError::SubnetNotFound(..) => "SubnetNotFound",
                    AllocError::MacPoolNotFound(..) => "MacPoolNotFound",
                    AllocError::CommitFailed { .. } => "CommitFailed",
                    AllocError::SchemaMismatch { .. } => "SchemaMismatch",
                    AllocError::Corrupt { .. } => "Corrupt",
                    AllocError::Unavailable { .. } => "Unavailable",
                    AllocError::Etcd { .. } => "Etcd",
                    AllocError::RetriesExhausted { .. } => "RetriesExhausted",
                    AllocError::StickyInUse { .. } => "StickyInUse",
                }
            ),
            Error::Net(n) => format!(
                "Net::{}",
                match n {
                    NetError::LinkNotFound { .. } => "LinkNotFound",
                    NetError::InvalidName { .. } => "InvalidName",
                    NetError::MtuTooLarge { .. } => "MtuTooLarge",
                    NetError::PassthruMac { .. } => "PassthruMac",
                    NetError::InvalidVlanId { .. } => "InvalidVlanId",
                    NetError::VlanUnsupported { .. } => "VlanUnsupported",
                    NetError::LinkConflict { .. } => "LinkConflict",
                    NetError::InvalidRoute { .. } => "InvalidRoute",
                    NetError::Netns { .. } => "Netns",
                    NetError::Sysctl { .. } => "Sysctl",
                    NetError::Netlink { .. } => "Netlink",
                    NetError::DadFailed { .. } => "DadFailed",
                    NetError::DadTimeout { .. } => "DadTimeout",
                    NetError::Lock { .. } => "Lock",
                }
            ),
        }
    }

    #[test]
    fn every_variant_has_its_code() {
        let all = every_variant();
        let mut names: Vec<String> = all.iter().map(|(e, _)| variant_name(e)).collect();
        for (err, want) in &all {
            assert_eq!(err.code(), *want, "{}: {err}", variant_name(err));
            assert_ne!(
                err.kind(),
                "other",
                "{} has no kind label",
                variant_name(err)
            );
        }
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a variant is listed twice");
        // 10 own variants (Alloc, Net and Rule counted through their inner enums) + 16 + 14 + 5.
        assert_eq!(names.len(), 10 + 16 + 14 + 5, "{names:?}");
    }

    #[test]
    fn only_etcd_trouble_is_retryable() {
        for (err, code) in every_variant() {
            assert_eq!(err.is_retryable(), code == 11, "{err}");
        }
    }
}
