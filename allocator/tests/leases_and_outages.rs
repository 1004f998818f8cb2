//! Pending leases (invariant 2: expiry frees only what was never committed), etcd outages
//! (invariant 5: fail fast and retryable, converge after recovery) and TLS.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use static_macvlan_allocator::{Allocator, Error, IpRequest, MacRequest, Options};
use static_macvlan_testkit::EtcdServer;

async fn wait_until_gone(alloc: &Allocator, uid: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while alloc.attachment(uid, "net1").await.unwrap().is_some() {
        assert!(
            start.elapsed() < limit,
            "pending reservation of {uid} still there after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn pending_expires_committed_survives() {
    let f = fixture(short_ttl(2)).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let pool = put_pool(&f.alloc, "vms", "02:00:00:00:00:00", "02:00:00:00:00:ff").await;
    let pending = f
        .alloc
        .reserve(
            &lan,
            &owner(1),
            IpRequest::Auto,
            &MacRequest::Auto(pool.clone()),
        )
        .await
        .unwrap();
    let kept = f
        .alloc
        .reserve(
            &lan,
            &owner(2),
            IpRequest::Auto,
            &MacRequest::Auto(pool.clone()),
        )
        .await
        .unwrap();
    f.alloc.commit(&kept).await.unwrap();

    wait_until_gone(&f.alloc, "uid-1", Duration::from_secs(10)).await;
    // Every key of the expired reservation went with the lease: IP, MAC, owner and node.
    assert!(f
        .alloc
        .holder_of_ip("lan", pending.record.ip)
        .await
        .unwrap()
        .is_none());
    assert!(f
        .alloc
        .holder_of_mac(pending.record.mac.unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(f.alloc.by_node(&owner(1).node).await.unwrap().is_empty());
    // Committing after expiry fails clearly instead of resurrecting the reservation.
    let err = f.alloc.commit(&pending).await.unwrap_err();
    assert!(
        matches!(err, Error::CommitFailed { .. }) && err.to_string().contains("expired"),
        "{err}"
    );
    assert!(f.alloc.attachment("uid-1", "net1").await.unwrap().is_none());

    // Well past the TTL, the committed one is intact.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = f
        .alloc
        .attachment("uid-2", "net1")
        .await
        .unwrap()
        .expect("committed survives");
    assert_eq!(still.record.ip, kept.record.ip);
    assert!(f
        .alloc
        .holder_of_mac(kept.record.mac.unwrap())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_killed_adder_leaves_nothing_after_the_ttl() {
    // A separate allocator (its own lease) stands for a plugin process that dies mid-ADD.
    let f = fixture(short_ttl(2)).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let dying = Allocator::connect(&f.cfg, short_ttl(2)).await.unwrap();
    for i in 0..10 {
        dying
            .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
    }
    drop(dying);
    for i in 0..10 {
        wait_until_gone(&f.alloc, &format!("uid-{i}"), Duration::from_secs(10)).await;
    }
    assert_eq!(f.alloc.usage(&lan).await.unwrap().used, 0);
}

#[tokio::test]
async fn etcd_outage_fails_fast_and_converges() {
    let mut etcd = EtcdServer::start().unwrap();
    let cfg = etcd_config(&etcd, &etcd.fresh_prefix());
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    let lan = put_subnet(
        &alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let mut held = HashSet::new();
    for i in 0..5 {
        let r = alloc
            .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
        held.insert(alloc.commit(&r).await.unwrap().record.ip);
    }

    etcd.stop();
    let start = Instant::now();
    let err = alloc
        .reserve(&lan, &owner(10), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(err.is_retryable(), "not retryable: {err}");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(took < Duration::from_secs(5), "failing took {took:?}");
    // A fresh client (as a new plugin process would make) fails the same way.
    let fresh = Allocator::connect(&cfg, Options::default()).await.unwrap();
    let err = fresh.check_schema().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    etcd.restart().unwrap();
    for i in 10..20 {
        let r = alloc
            .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
        assert!(
            held.insert(alloc.commit(&r).await.unwrap().record.ip),
            "duplicate after restart"
        );
    }
    assert_eq!(alloc.all().await.unwrap().len(), 15);
    assert_eq!(alloc.usage(&lan).await.unwrap().used, 15);
}

#[tokio::test]
async fn reserve_over_tls_and_wrong_ca_fails_clearly() {
    let etcd = EtcdServer::start_tls().unwrap();
    let cfg = etcd_config(&etcd, &etcd.fresh_prefix());
    assert!(cfg.endpoints[0].starts_with("https://"));
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    let lan = put_subnet(
        &alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let r = alloc
        .reserve(&lan, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&r).await.unwrap();

    let mut wrong = cfg.clone();
    wrong.ca_file = Some(etcd.tls().unwrap().wrong_ca.clone());
    let bad = Allocator::connect(&wrong, Options::default())
        .await
        .unwrap();
    let err = bad.check_schema().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("certificate") || msg.contains("UnknownIssuer"),
        "{msg}"
    );
    assert!(
        !err.is_retryable(),
        "a wrong CA is not fixed by retrying: {msg}"
    );

    let mut no_cert = cfg.clone();
    no_cert.cert_file = None;
    no_cert.key_file = None;
    let anon = Allocator::connect(&no_cert, Options::default())
        .await
        .unwrap();
    assert!(anon.check_schema().await.is_err());

    let mut missing = cfg.clone();
    missing.ca_file = Some("/nonexistent/ca.pem".into());
    let err = Allocator::connect(&missing, Options::default())
        .await
        .err()
        .expect("missing CA file");
    assert!(err.to_string().contains("etcd.caFile"), "{err}");
}

/// The pending lease as separate processes share it through `Options::lease_file`: a fresh one
/// is reused without a grant; a revoked, stale, garbled or other-TTL one is replaced.
#[tokio::test]
async fn pending_lease_shared_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leases").join("cluster.json");
    let opts = |ttl: u64| Options {
        lease_file: Some(file.clone()),
        ..short_ttl(ttl)
    };
    let f = fixture(opts(60)).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    // Each allocator stands for one plugin process.
    let reserve = |i: usize, ttl: u64| {
        let (cfg, lan) = (f.cfg.clone(), lan.clone());
        let opts = opts(ttl);
        async move {
            let alloc = Allocator::connect(&cfg, opts).await.unwrap();
            let r = alloc
                .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
                .await
                .unwrap();
            i64::from_str_radix(r.record.lease.as_deref().unwrap(), 16).unwrap()
        }
    };
    let leases = || async {
        let c = f.etcd.client().await.unwrap();
        let mut ids: Vec<i64> = c
            .lease_client()
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort();
        ids
    };
    let named = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&file).expect("lease file")).unwrap()
    };

    let first = reserve(1, 60).await;
    assert_eq!(named()["id"], format!("{first:x}"));
    assert_eq!(named()["ttlSeconds"], 60);
    assert_eq!(
        reserve(2, 60).await,
        first,
        "a fresh shared lease is reused"
    );
    assert_eq!(
        leases().await,
        vec![first],
        "and no second lease is granted"
    );

    // Revoked (etcd restored, or an operator's cleanup): the claim fails, the file is dropped,
    // a new lease is granted and published, and the reservation succeeds.
    let c = f.etcd.client().await.unwrap();
    c.lease_client().revoke(first).await.unwrap();
    let second = reserve(3, 60).await;
    assert_ne!(second, first);
    assert_eq!(named()["id"], format!("{second:x}"));
    assert!(f.alloc.attachment("uid-1", "net1").await.unwrap().is_none());

    // Another TTL does not take it.
    let other_ttl = reserve(4, 30).await;
    assert_ne!(other_ttl, second);
    assert_eq!(named()["ttlSeconds"], 30);

    // Older than a quarter of the TTL: a reservation under it could not count on 3/4 of it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stale = serde_json::json!({"id": format!("{second:x}"), "grantedUnixMs": now_ms - 16_000, "ttlSeconds": 60});
    std::fs::write(&file, stale.to_string()).unwrap();
    let after_stale = reserve(5, 60).await;
    assert_ne!(after_stale, second);

    // Garbage is ignored and replaced.
    std::fs::write(&file, "not json").unwrap();
    let after_garbage = reserve(6, 60).await;
    assert_ne!(after_garbage, after_stale);
    assert_eq!(named()["id"], format!("{after_garbage:x}"));
    assert_eq!(reserve(7, 60).await, after_garbage);
}
