//! Reads and writes of the mirrored configuration in etcd that the allocator does not offer:
//! listing every subnet, pool and rule (for overlap checks, `ipam show` and later the
//! controller's resync), writing rules, and counting a MAC pool's reservations.
//!
//! Keys come from the allocator's [`Keys`](static_macvlan_allocator::Keys); nothing here builds
//! a key by hand.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::de::DeserializeOwned;
use serde_json::Value;
use static_macvlan_allocator::keys::prefix_end;
use static_macvlan_allocator::{
    Allocator, MacAddr, MacPool, MacPoolConfig, Mirrored, SubnetConfig, SCHEMA_VERSION,
};

use crate::crd::MirroredRule;
use crate::error::Error;

/// One stored configuration object: its raw JSON (to tell "unchanged" from "configured"), the
/// decoded value or why it does not decode, and the revision it was last written at.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    pub key: String,
    pub raw: Value,
    pub decoded: Result<Mirrored<T>, String>,
    pub mod_revision: i64,
}

/// Everything under `config/`, plus the schema key, as read at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The schema key's value, if present.
    pub schema: Option<String>,
    pub subnets: BTreeMap<String, Stored<SubnetConfig>>,
    pub macpools: BTreeMap<String, Stored<MacPoolConfig>>,
    pub rules: BTreeMap<String, Stored<Value>>,
    /// The etcd revision of the read.
    pub revision: i64,
}

async fn txn(alloc: &Allocator, op: &str, txn: Txn) -> Result<etcd_client::TxnResponse, Error> {
    let mut kv = alloc.client().kv_client();
    let limit = alloc.options().request_timeout;
    match tokio::time::timeout(limit, kv.txn(txn)).await {
        Ok(r) => r.map_err(|e| Error::etcd(op, e)),
        Err(_) => Err(Error::etcd(
            op,
            etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )),
        )),
    }
}

fn kvs(resp: &TxnOpResponse) -> &[KeyValue] {
    match resp {
        TxnOpResponse::Get(g) => g.kvs(),
        _ => &[],
    }
}

fn stored<T: DeserializeOwned>(prefix: &str, kv: &KeyValue) -> (String, Stored<T>) {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let name = key.strip_prefix(prefix).unwrap_or(&key).to_string();
    let raw: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
    let decoded = serde_json::from_slice::<Mirrored<T>>(kv.value()).map_err(|e| e.to_string());
    (
        name,
        Stored {
            key,
            raw,
            decoded,
            mod_revision: kv.mod_revision(),
        },
    )
}

impl Snapshot {
    /// Reads the schema key and every mirrored subnet, MAC pool and rule in one transaction, so
    /// the snapshot is consistent.
    ///
    /// # Errors
    /// [`Error::Etcd`] when etcd does not answer.
    pub async fn read(alloc: &Allocator) -> Result<Snapshot, Error> {
        let k = alloc.keys();
        let prefixes = [k.subnets(), k.macpools(), k.rules()];
        let mut ops = vec![TxnOp::get(k.schema(), None)];
        ops.extend(
            prefixes
                .iter()
                .map(|p| TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix()))),
        );
        let resp = txn(
            alloc,
            "read mirrored configuration",
            Txn::new().and_then(ops),
        )
        .await?;
        let r = resp.op_responses();
        let mut snap = Snapshot {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            ..Snapshot::default()
        };
        snap.schema = kvs(&r[0])
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        snap.subnets = kvs(&r[1])
            .iter()
            .map(|kv| stored(&prefixes[0], kv))
            .collect();
        snap.macpools = kvs(&r[2])
            .iter()
            .map(|kv| stored(&prefixes[1], kv))
            .collect();
        snap.rules = kvs(&r[3])
            .iter()
            .map(|kv| stored(&prefixes[2], kv))
            .collect();
        Ok(snap)
    }

    /// Checks that the data under the prefix is of the schema this code writes (or that there
    /// is none yet).
    ///
    /// # Errors
    /// [`static_macvlan_allocator::Error::SchemaMismatch`].
    pub fn check_schema(&self, alloc: &Allocator) -> Result<(), Error> {
        match &self.schema {
            Some(v) if v != SCHEMA_VERSION => {
                Err(static_macvlan_allocator::Error::SchemaMismatch {
                    prefix: alloc.keys().prefix().to_string(),
                    found: v.clone(),
                    expected: SCHEMA_VERSION.to_string(),
                }
                .into())
            }
            _ => Ok(()),
        }
    }
}

/// Writes a rule as mirrored — the allocator's `Mirrored<AllocationRuleSpec>` plus its content
/// `hash` — (schema key created alongside when absent, as the allocator does for subnets and
/// pools).
///
/// # Errors
/// [`Error::Etcd`].
pub async fn put_rule(alloc: &Allocator, rule: &MirroredRule) -> Result<(), Error> {
    let k = alloc.keys();
    let json = serde_json::to_string(rule).expect("rule serializes");
    let key = k.rule(&rule.name);
    let t = Txn::new()
        .when(vec![Compare::create_revision(
            k.schema(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![
            TxnOp::put(k.schema(), SCHEMA_VERSION, None),
            TxnOp::put(key.clone(), json.clone(), None),
        ])
        .or_else(vec![TxnOp::put(key, json, None)]);
    txn(alloc, &format!("write rule {}", rule.name), t)
        .await
        .map(|_| ())
}

/// Reserved addresses of a MAC pool. MAC keys are fixed-width lowercase hex, so key order is
/// address order and each segment of the pool is one counted key range: nothing is transferred
/// but the counts.
///
/// # Errors
/// [`Error::Etcd`].
pub async fn macpool_used(alloc: &Allocator, pool: &MacPool) -> Result<u128, Error> {
    let k = alloc.keys();
    let ops: Vec<TxnOp> = pool
        .set()
        .segments()
        .iter()
        .map(|&(a, b)| {
            let start = k.mac(MacAddr::from_u64(a as u64));
            let end = prefix_end(&k.mac(MacAddr::from_u64(b as u64)));
            TxnOp::get(
                start,
                Some(GetOptions::new().with_range(end).with_count_only()),
            )
        })
        .collect();
    // etcd caps the operations of one transaction (128 by default); pools are a few segments.
    let mut used = 0u128;
    for chunk in ops.chunks(64) {
        let resp = txn(
            alloc,
            &format!("count reservations in mac pool {}", pool.name),
            Txn::new().and_then(chunk.to_vec()),
        )
        .await?;
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                used += g.count().max(0) as u128;
            }
        }
    }
    Ok(used)
}

/// Reads one configuration key.
///
/// # Errors
/// [`Error::Etcd`].
pub async fn read_one<T: DeserializeOwned>(
    alloc: &Allocator,
    key: &str,
) -> Result<Option<Stored<T>>, Error> {
    let resp = txn(
        alloc,
        &format!("read {key}"),
        Txn::new().and_then(vec![TxnOp::get(key, None)]),
    )
    .await?;
    let found = resp
        .op_responses()
        .first()
        .and_then(|r| kvs(r).first().cloned());
    Ok(found.map(|kv| stored("", &kv).1))
}

/// How many IP reservations a subnet holds (counted by etcd, nothing transferred), and the
/// revision of the count.
///
/// # Errors
/// [`Error::Etcd`].
pub async fn count_ips(alloc: &Allocator, subnet: &str) -> Result<(u64, i64), Error> {
    let t = Txn::new().and_then(vec![TxnOp::get(
        alloc.keys().ips(subnet),
        Some(GetOptions::new().with_prefix().with_count_only()),
    )]);
    let resp = txn(alloc, &format!("count reservations of subnet {subnet}"), t).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let count = match resp.op_responses().first() {
        Some(TxnOpResponse::Get(g)) => g.count().max(0) as u64,
        _ => 0,
    };
    Ok((count, revision))
}

/// What [`delete_subnet_if_unused`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubnetRemoval {
    /// The config key was deleted.
    Removed,
    /// There was no config key (and no reservation).
    Absent,
    /// Reservations use the subnet: nothing was deleted.
    InUse(u64),
}

/// Deletes a subnet's config key only while no reservation uses it. The delete is one
/// transaction guarded by "no key under `ips/<subnet>/` was written after the count that found
/// none" (a compare over the key range: vacuously true while it is empty), so a reservation made
/// between the count and the delete keeps the subnet.
///
/// # Errors
/// [`Error::Etcd`].
pub async fn delete_subnet_if_unused(
    alloc: &Allocator,
    subnet: &str,
) -> Result<SubnetRemoval, Error> {
    let k = alloc.keys();
    let (count, revision) = count_ips(alloc, subnet).await?;
    if count > 0 {
        return Ok(SubnetRemoval::InUse(count));
    }
    let key = k.subnet(subnet);
    let t = Txn::new()
        .when(vec![Compare::mod_revision(
            k.ips(subnet),
            CompareOp::Less,
            revision + 1,
        )
        .with_prefix()])
        .and_then(vec![TxnOp::delete(key, None)])
        .or_else(vec![TxnOp::get(
            k.ips(subnet),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )]);
    let resp = txn(alloc, &format!("delete subnet {subnet}"), t).await?;
    let first = resp.op_responses().into_iter().next();
    match (resp.succeeded(), first) {
        (true, Some(TxnOpResponse::Delete(d))) if d.deleted() > 0 => Ok(SubnetRemoval::Removed),
        (true, _) => Ok(SubnetRemoval::Absent),
        (false, Some(TxnOpResponse::Get(g))) => Ok(SubnetRemoval::InUse(g.count().max(1) as u64)),
        (false, _) => Ok(SubnetRemoval::InUse(1)),
    }
}

/// Deletes `key` only if it is still at `mod_revision` (nobody rewrote it since it was read).
///
/// # Errors
/// [`Error::Etcd`].
pub async fn delete_if_unchanged(
    alloc: &Allocator,
    key: &str,
    mod_revision: i64,
) -> Result<bool, Error> {
    let t = Txn::new()
        .when(vec![Compare::mod_revision(
            key,
            CompareOp::Equal,
            mod_revision,
        )])
        .and_then(vec![TxnOp::delete(key, None)]);
    Ok(txn(alloc, &format!("delete {key}"), t).await?.succeeded())
}
