//! Test harness shared by the workspace's tests: real `etcd` processes (plain and TLS with client
//! certificates) with a fresh key prefix per test, and network-namespace topologies with guards that
//! clean up on drop.

pub mod etcd;
pub mod netns;

pub use etcd::{EtcdServer, TlsFiles};
