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
