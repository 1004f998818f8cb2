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
//! - [`ipam`]: `ipam show | who | release`.
//! - [`cli`]: the command line; [`table`]: its tables.
//! - [`error`]: the one error type and the CLI's exit codes.

pub mod cli;
pub mod crd;
pub mod error;
pub mod ipam;
pub mod manifest;
pub mod mirror;
pub mod table;
pub mod validate;

pub use error::Error;
