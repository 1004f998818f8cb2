//! The static-macvlan operator as a library, so that the binary stays thin and tests reach every
//! part. It is the only part of the project that knows Kubernetes; the allocator below it knows
//! etcd and addresses only.
//!
//! Layout:
//! - [`crd`]: the custom resource types (`VlanSubnet`, `MacPool`, `AllocationRule`,
//!   `MacvlanEndpoint`), the generated CRDs and the conversions into the allocator's config.
//! - [`validate`]: structural (against the CRD schema) and semantic validation, overlaps.
//! - [`mirror`]: reading and writing the mirrored configuration in etcd.
//! - [`manifest`]: `apply` — parse multi-document YAML, validate all, then write.
//! - [`ipam`]: `ipam show | who | release | check`.
//! - [`cli`]: the command line; [`table`]: its tables.
//! - [`error`]: the one error type and the CLI's exit codes.
//!
//! The controller (`run`):
//! - [`settings`]: layered settings (defaults < file < `STATIC_MACVLAN_*` < flags).
//! - [`run`]: the process — HTTP endpoints, health probes, leader election, the leader's tasks.
//! - [`controller`]: reconcile VlanSubnet / MacPool / AllocationRule into etcd and `status`.
//! - [`podmirror`]: pods that use our networks → `<prefix>/pods/<ns>/<name>`.
//! - [`endpoints`]: reservations → `MacvlanEndpoint` objects.
//! - [`gc`]: release reservations of pods confirmed gone.
//! - [`etcdwatch`]: the etcd watch feeding counters, endpoints, drift repair, the pod mirror.
//! - [`leader`]: Lease-based leader election.
//! - [`metrics`]: Prometheus metrics and `/metrics` `/healthz` `/readyz`.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod error;
pub mod etcdonly;
pub mod etcdwatch;
pub mod gc;
pub mod ipam;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub mod podmirror;
pub mod run;
pub mod settings;
pub mod table;
pub mod validate;

pub use error::Error;
