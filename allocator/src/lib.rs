//! The static-macvlan allocator: the etcd key schema and compare-and-swap reservations of IP and
//! MAC addresses, with pending leases tied to the pod's attachment. It knows nothing of Kubernetes
//! and nothing of netlink; the CNI plugin and the operator both build on it.
//!
//! Layout:
//! - [`addr`]: pure address arithmetic (sets of ranges, windows, MAC addresses).
//! - [`keys`]: the one place that builds and parses etcd keys.
//! - [`model`]: configuration as mirrored into etcd, its validated forms, owners and records.
//! - [`etcd`]: connection settings (endpoints, TLS files, prefix, timeouts).
//! - [`store`]: the [`Allocator`]: reserve, commit, release, queries.
//! - [`rules`]: AllocationRules and subnet selectors in CEL: compile, type-check, evaluate under a budget.
//! - [`error`]: the one error type.

pub mod addr;
pub mod error;
pub mod etcd;
pub mod keys;
pub mod model;
pub mod rules;
pub mod store;
mod window;

pub use addr::{AddrSet, MacAddr};
pub use error::Error;
pub use etcd::EtcdConfig;
pub use keys::{Key, Keys, DEFAULT_PREFIX, SCHEMA_VERSION};
pub use model::{
    DnsConfig, IpRequest, MacPool, MacPoolConfig, MacRequest, MacvlanMode, Mirrored, Owner,
    RangeConfig, Record, Reservation, Route, RouteConfig, State, StickyRef, Subnet, SubnetConfig,
};
pub use store::{
    Allocator, LoadedSubnet, Options, Released, StickyHold, StoredPool, StoredSubnet, Usage,
};
