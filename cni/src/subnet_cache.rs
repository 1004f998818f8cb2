//! The node's copy of the subnets its ADDs used, as stored in etcd with their revisions: what
//! lets an ADD claim an address and create the pod's link before it has read anything
//! (`Allocator::claim_early`), in the round trip that reads the configuration.
//!
//! Only a guess, checked twice: the early claim writes only if the subnet and its MAC pool are
//! still at the kept revisions, and the ADD keeps it only if the configuration it then read is
//! the kept one, value for value. A missing, stale, garbled or foreign file costs the early
//! start, nothing else. One file per etcd cluster, prefix and subnet, in the run dir (a tmpfs:
//! empty after a reboot).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use static_macvlan_allocator::{Allocator, EtcdConfig, LoadedSubnet, StoredSubnet};

use crate::plugin::{etcd_scope, etcd_scope_text, node_file};

/// What a file holds: the scope it belongs to (its name is only a hash of it) and the subnet.
#[derive(Serialize, Deserialize)]
struct Kept {
    scope: String,
    subnet: StoredSubnet,
}

fn path(run_dir: &Path, etcd: &EtcdConfig, name: &str) -> PathBuf {
    let (endpoints, prefix) = etcd_scope(etcd);
    node_file(run_dir, "subnets", &(&endpoints, &prefix, name), "json")
}

/// The kept copy of subnet `name`, decoded and validated as a read from etcd would be.
pub fn load(
    run_dir: &Path,
    etcd: &EtcdConfig,
    name: &str,
    alloc: &Allocator,
) -> Option<LoadedSubnet> {
    let bytes = std::fs::read(path(run_dir, etcd, name)).ok()?;
    let kept: Kept = serde_json::from_slice(&bytes).ok()?;
    if kept.scope != etcd_scope_text(etcd) || kept.subnet.name != name {
        return None;
    }
    alloc.decode_subnet(kept.subnet).ok()
}

/// Keeps `stored` for the next ADDs, unless `kept` already is it. Written aside and renamed, so
/// that readers see all or nothing; a failure only costs later ADDs their early start.
pub fn keep(run_dir: &Path, etcd: &EtcdConfig, stored: &StoredSubnet, kept: Option<&StoredSubnet>) {
    if kept == Some(stored) {
        return;
    }
    let file = path(run_dir, etcd, &stored.name);
    let written = (|| {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let kept = Kept {
            scope: etcd_scope_text(etcd),
            subnet: stored.clone(),
        };
        let aside = file.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(
            &aside,
            serde_json::to_vec(&kept).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&aside, &file).inspect_err(|_| {
            let _ = std::fs::remove_file(&aside);
        })
    })();
    if let Err(e) = written {
        tracing::debug!(file = %file.display(), error = %e, "cannot keep the subnet");
    }
}
