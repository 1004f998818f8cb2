//! The allocator's one error type. Variants stay typed where callers branch on them: the CNI plugin
//! maps each to a CNI error code, the operator to a metric label.

use std::net::IpAddr;

use crate::addr::MacAddr;
use crate::model::Owner;

/// Everything that can go wrong in the allocator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a config field, a request or an owner field. Nothing was written.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },

    /// A static IP request names an address another attachment holds.
    #[error("ip {ip} in subnet {subnet} is already held by {holder}")]
    IpTaken {
        subnet: String,
        ip: IpAddr,
        holder: Box<Owner>,
    },

    /// A static MAC request names an address another attachment holds.
    #[error("mac {mac} is already held by {holder}")]
    MacTaken { mac: MacAddr, holder: Box<Owner> },

    /// Every allocatable address of the subnet is reserved.
    #[error(
        "subnet {subnet} is exhausted: {used} of {capacity} allocatable addresses are reserved"
    )]
    PoolExhausted {
        subnet: String,
        used: u128,
        capacity: u128,
    },

    /// Every address of the MAC pool is reserved.
    #[error("mac pool {pool} is exhausted: all {capacity} addresses are reserved")]
    MacPoolExhausted { pool: String, capacity: u128 },

    /// A static IP outside the subnet, or one the subnet never hands out.
    #[error("ip {ip} cannot be used in subnet {subnet}: {reason}")]
    OutsideSubnet {
        subnet: String,
        ip: IpAddr,
        reason: String,
    },

    /// The attachment (pod UID + ifname) already holds a reservation that does not match the request.
    #[error("attachment {owner} already holds {held}; it cannot also take {requested}")]
    AttachmentConflict {
        owner: Box<Owner>,
        held: String,
        requested: String,
    },

    /// The sticky key's address is still held by another pod UID (its DEL has not come yet).
    /// Retryable: the runtime retries the ADD.
    #[error("sticky key {key:?} is still held by {holder}; retry once it is released")]
    StickyInUse { key: String, holder: Box<Owner> },

    /// No subnet of that name is configured in etcd.
    #[error("subnet {0:?} is not configured (no key {1})")]
    SubnetNotFound(String, String),

    /// No MAC pool of that name is configured in etcd.
    #[error("mac pool {0:?} is not configured (no key {1})")]
    MacPoolNotFound(String, String),

    /// `commit` came after the pending lease had expired, or the reservation changed meanwhile.
    #[error("commit reservation of {owner}: {reason}")]
    CommitFailed { owner: Box<Owner>, reason: String },

    /// The schema key holds a version this code does not know.
    #[error(
        "etcd schema version {found:?} under {prefix} is not supported (expected {expected:?})"
    )]
    SchemaMismatch {
        prefix: String,
        found: String,
        expected: String,
    },

    /// A value in etcd that does not decode: somebody wrote it by hand, or a newer version did.
    #[error("corrupt etcd key {key}: {reason}")]
    Corrupt { key: String, reason: String },

    /// etcd could not be reached or did not answer in time. Retryable.
    #[error("{op}: etcd unavailable: {source}")]
    Unavailable {
        op: String,
        #[source]
        source: etcd_client::Error,
    },

    /// etcd answered with an error that retrying will not fix.
    #[error("{op}: etcd error: {source}")]
    Etcd {
        op: String,
        #[source]
        source: etcd_client::Error,
    },

    /// Too many compare-and-swap conflicts in a row. Retryable.
    #[error("{op}: gave up after {attempts} conflicting attempts")]
    RetriesExhausted { op: String, attempts: u32 },
}

impl Error {
    /// Whether the same call may succeed later without any change of input.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::RetriesExhausted { .. } | Error::StickyInUse { .. }
        )
    }

    /// Classifies an etcd client error: transport failures, timeouts and leaderless clusters are
    /// retryable; anything else (bad request, auth) is not.
    pub(crate) fn etcd(op: impl Into<String>, source: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let op = op.into();
        // A TLS trust failure also surfaces as `Unavailable`, but no retry will fix a wrong CA.
        let text = source.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return Error::Etcd { op, source };
        }
        let retryable = match &source {
            E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => true,
            E::GRpcStatus(status) => matches!(
                status.code(),
                tonic_code::Unavailable
                    | tonic_code::DeadlineExceeded
                    | tonic_code::Unknown
                    | tonic_code::Cancelled
                    | tonic_code::Aborted
                    | tonic_code::ResourceExhausted
            ),
            _ => false,
        };
        if retryable {
            Error::Unavailable { op, source }
        } else {
            Error::Etcd { op, source }
        }
    }
}

use tonic::Code as tonic_code;

/// Shorthand for [`Error::Invalid`].
pub(crate) fn invalid(field: &str, value: impl ToString, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}
