//! Large pools: allocation at high occupancy, exhaustion detected by counting rather than by
//! sweeping, and the near-full path that still finds the last free address.

mod common;

use std::net::IpAddr;

use common::*;
use etcd_client::{Txn, TxnOp};
use static_macvlan_allocator::{Allocator, Error, IpRequest, MacRequest, Options, Subnet};

/// Writes reservation-shaped keys for every allocatable address of `subnet` except `keep_free`,
/// a hundred per transaction, as if other pods held them.
async fn fill(alloc: &Allocator, subnet: &Subnet, keep_free: &[IpAddr]) -> usize {
    let mut client = alloc.client();
    let value = r#"{"filler":true}"#;
    let mut batch = Vec::new();
    let mut written = 0;
    for i in 0..subnet.capacity() {
        let ip = subnet.nth(i).unwrap();
        if keep_free.contains(&ip) {
            continue;
        }
        batch.push(TxnOp::put(alloc.keys().ip(&subnet.name, ip), value, None));
        written += 1;
        if batch.len() == 100 {
            client
                .txn(Txn::new().and_then(std::mem::take(&mut batch)))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        client.txn(Txn::new().and_then(batch)).await.unwrap();
    }
    written
}

/// Options that treat a /20 (16 windows) as a large pool, keeping the fill small.
fn large_pool_options() -> Options {
    Options {
        full_sweep_windows: 4,
        ..Options::default()
    }
}

#[tokio::test]
async fn exhaustion_of_a_large_pool_is_counted_not_swept() {
    let f = fixture(large_pool_options()).await;
    let lan = put_subnet(
        &f.alloc,
        "big",
        subnet_config("10.40.0.0/20", "10.40.0.1", vec![]),
    )
    .await;
    assert_eq!(lan.capacity(), 4093);
    // More windows than a full sweep covers, so exhaustion must come from the count.
    // Sixteen /24 windows: more than this test's full-sweep limit, so exhaustion must come
    // from counting, not from reading every window.
    assert!(Options::default().sampled_windows < 16);
    assert_eq!(fill(&f.alloc, &lan, &[]).await, 4093);
    let rev = f.etcd.revision().await.unwrap();
    match f
        .alloc
        .reserve(&lan, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
    {
        Err(Error::PoolExhausted { used, capacity, .. }) => {
            assert_eq!((used, capacity), (4093, 4093))
        }
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
    assert_eq!(
        f.etcd.revision().await.unwrap(),
        rev,
        "exhaustion wrote something"
    );
}

#[tokio::test]
async fn the_last_free_address_of_a_large_pool_is_found() {
    let f = fixture(large_pool_options()).await;
    let lan = put_subnet(
        &f.alloc,
        "big",
        subnet_config("10.40.0.0/20", "10.40.0.1", vec![]),
    )
    .await;
    let last: IpAddr = "10.40.7.77".parse().unwrap();
    fill(&f.alloc, &lan, &[last]).await;
    let r = f
        .alloc
        .reserve(&lan, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert_eq!(r.record.ip, last);
    assert!(matches!(
        f.alloc
            .reserve(&lan, &owner(2), IpRequest::Auto, &MacRequest::None)
            .await,
        Err(Error::PoolExhausted { .. })
    ));
}

#[tokio::test]
async fn small_mac_pool_exhaustion() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let pool = put_pool(&f.alloc, "tiny", "02:00:00:00:00:00", "02:00:00:00:00:09").await;
    for i in 0..10 {
        f.alloc
            .reserve(
                &lan,
                &owner(i),
                IpRequest::Auto,
                &MacRequest::Auto(pool.clone()),
            )
            .await
            .unwrap();
    }
    let rev = f.etcd.revision().await.unwrap();
    match f
        .alloc
        .reserve(&lan, &owner(10), IpRequest::Auto, &MacRequest::Auto(pool))
        .await
    {
        Err(Error::MacPoolExhausted { pool, capacity }) => {
            assert_eq!((pool.as_str(), capacity), ("tiny", 10))
        }
        other => panic!("expected MacPoolExhausted, got {other:?}"),
    }
    assert_eq!(f.etcd.revision().await.unwrap(), rev);
}
