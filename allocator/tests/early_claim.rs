//! `Allocator::claim_early`: a claim against a kept copy of a subnet, before anything is read.
//! It writes only when every key is free and the subnet is still at the kept revision, and
//! otherwise writes nothing at all and says so, leaving the ordinary reservation to report why.

mod common;

use common::*;
use static_macvlan_allocator::{Allocator, IpRequest, MacRequest, Options, State};

#[tokio::test]
async fn an_early_claim_is_a_reservation_or_nothing() {
    let f = fixture(Options::default()).await;
    let spec = subnet_config(
        "10.233.0.0/24",
        "10.233.0.1",
        vec![range("10.233.0.10", "10.233.0.200")],
    );
    put_subnet(&f.alloc, "lan", spec.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        hints_file: Some(dir.path().join("hints.json")),
        ..Options::default()
    };
    let a = Allocator::connect(&f.cfg, opts()).await.unwrap();
    let kept = a.load_subnet_at("lan").await.unwrap();

    // No hints yet: nothing claimed, nothing written.
    let before = f.etcd.revision().await.unwrap();
    let none = a
        .claim_early(&kept, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(f.etcd.revision().await.unwrap(), before);

    // An ordinary reservation leaves hints; the next process claims early from them.
    a.reserve(&kept.subnet, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    let b = Allocator::connect(&f.cfg, opts()).await.unwrap();
    let early = b
        .claim_early(&kept, &owner(2), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap()
        .expect("claimed from a hint");
    assert_eq!(early.record.state, State::Pending);
    let held = f.alloc.attachment("uid-2", "net1").await.unwrap().unwrap();
    assert_eq!(held.record.ip, early.record.ip);

    // The same attachment again, or a static address someone holds: nothing written.
    let before = f.etcd.revision().await.unwrap();
    let again = b
        .claim_early(&kept, &owner(2), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert!(again.is_none());
    let taken = b
        .claim_early(
            &kept,
            &owner(3),
            IpRequest::Static(early.record.ip),
            &MacRequest::None,
        )
        .await
        .unwrap();
    assert!(taken.is_none());
    // Outside the subnet: not even tried.
    let outside = b
        .claim_early(
            &kept,
            &owner(3),
            IpRequest::Static("10.99.0.1".parse().unwrap()),
            &MacRequest::None,
        )
        .await
        .unwrap();
    assert!(outside.is_none());
    assert_eq!(f.etcd.revision().await.unwrap(), before);

    // The subnet rewritten since the copy was kept (even with equal content): no claim
    // against the old copy, also for a free static address (the two automatic ones above are
    // random).
    let held = held_ips(&f.alloc).await;
    let free = (150..=200)
        .map(|i| format!("10.233.0.{i}").parse().unwrap())
        .find(|ip| !held.contains(ip))
        .unwrap();
    put_subnet(&f.alloc, "lan", spec).await;
    let before = f.etcd.revision().await.unwrap();
    let stale = b
        .claim_early(&kept, &owner(4), IpRequest::Static(free), &MacRequest::None)
        .await
        .unwrap();
    assert!(stale.is_none());
    assert_eq!(f.etcd.revision().await.unwrap(), before);
    assert!(f.alloc.attachment("uid-4", "net1").await.unwrap().is_none());

    // Against a fresh copy it goes through.
    let fresh = b.load_subnet_at("lan").await.unwrap();
    assert_ne!(fresh.stored.revision, kept.stored.revision);
    let claimed = b
        .claim_early(
            &fresh,
            &owner(4),
            IpRequest::Static(free),
            &MacRequest::None,
        )
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(claimed.record.ip, free);
    assert_eq!(f.alloc.all().await.unwrap().len(), 3);
}
