//! The free-address hints a long-lived allocator keeps from its window reads: they spare reads
//! (counted by etcd itself), and a stale one costs a retry, never a duplicate or a wrong
//! "exhausted".

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};

use common::*;
use static_macvlan_allocator::{Allocator, Error, IpRequest, MacRequest, Options};

/// Transactions etcd has served (reads are read-only transactions too), from its /metrics.
fn txns_served(endpoint: &str) -> u64 {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"Txn\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn hints_spare_reads_and_a_stale_one_only_costs_a_retry() {
    let f = fixture(Options::default()).await;
    // 10.230.0.100–119 all sort into the /24's first text-order window: one read sees them all.
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config(
            "10.230.0.0/24",
            "10.230.0.1",
            vec![range("10.230.0.100", "10.230.0.119")],
        ),
    )
    .await;
    let endpoint = f.etcd.endpoint();
    let a = Allocator::connect(&f.cfg, Options::default())
        .await
        .unwrap();
    let b = Allocator::connect(&f.cfg, Options::default())
        .await
        .unwrap();

    // A takes one: one read, one claim; 19 hints left.
    let before = txns_served(&endpoint);
    let first = a
        .reserve(&lan, &owner(0), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert_eq!(txns_served(&endpoint) - before, 2);

    // B takes the other 19 behind A's back: every hint of A is now stale.
    let mut ips: HashSet<_> = [first.record.ip].into();
    for i in 1..20 {
        let r = b
            .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
        assert!(ips.insert(r.record.ip), "duplicate {}", r.record.ip);
    }
    // A's blind claim fails, it reads afresh and finds the pool really full.
    let err = a
        .reserve(&lan, &owner(20), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");

    // One freed: A gets exactly that one.
    let freed = b.release(&owner(7)).await.unwrap();
    let static_macvlan_allocator::Released::Freed(rec) = freed else {
        panic!("{freed:?}")
    };
    let r = a
        .reserve(&lan, &owner(21), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert_eq!(r.record.ip, rec.ip);

    // Sequential reservations by one allocator in a fresh pool: about one read per window,
    // not one per reservation (that would be 2 transactions each).
    let c = Allocator::connect(&f.cfg, Options::default())
        .await
        .unwrap();
    let big = put_subnet(
        &f.alloc,
        "big",
        subnet_config("10.231.0.0/16", "10.231.0.1", vec![]),
    )
    .await;
    let before = txns_served(&endpoint);
    for i in 100..164 {
        c.reserve(&big, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
    }
    let served = txns_served(&endpoint) - before;
    assert!(
        (64..=70).contains(&served),
        "64 reservations took {served} transactions"
    );
    assert_eq!(c.usage(&big).await.unwrap().used, 64);
}

/// Short-lived processes share hints through a file: one window read serves the next
/// allocators, each hint is drawn by one of them only (also concurrently), and a garbled file
/// is no hints, not an error.
#[tokio::test]
async fn a_hints_file_shares_one_window_read_between_allocators() {
    let f = fixture(Options::default()).await;
    let big = put_subnet(
        &f.alloc,
        "big",
        subnet_config("10.232.0.0/16", "10.232.0.1", vec![]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hints").join("scope.json");
    let opts = || Options {
        hints_file: Some(file.clone()),
        ..Options::default()
    };
    let endpoint = f.etcd.endpoint();

    // The first one-shot allocator reads a window; the next ones claim blind, one
    // transaction each, from what it left in the file.
    let mut ips = HashSet::new();
    let before = txns_served(&endpoint);
    for i in 0..10 {
        let a = Allocator::connect(&f.cfg, opts()).await.unwrap();
        let r = a
            .reserve(&big, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
        assert!(ips.insert(r.record.ip), "duplicate {}", r.record.ip);
    }
    assert_eq!(
        txns_served(&endpoint) - before,
        11,
        "one read and ten claims"
    );
    assert!(file.exists());

    // 16 at once: distinct hints under the file's lock, so no claim is lost to a sibling.
    let before = txns_served(&endpoint);
    let mut tasks = Vec::new();
    for i in 10..26 {
        let (cfg, big, o) = (f.cfg.clone(), big.clone(), opts());
        tasks.push(tokio::spawn(async move {
            let a = Allocator::connect(&cfg, o).await.unwrap();
            a.reserve(&big, &owner(i), IpRequest::Auto, &MacRequest::None)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(ips.insert(r.record.ip), "duplicate {}", r.record.ip);
    }
    let served = txns_served(&endpoint) - before;
    assert!(
        served <= 18,
        "16 concurrent reservations took {served} transactions"
    );

    // A garbled file: read a window again, and the file is usable afterwards.
    std::fs::write(&file, b"{not json").unwrap();
    let a = Allocator::connect(&f.cfg, opts()).await.unwrap();
    let r = a
        .reserve(&big, &owner(100), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert!(ips.insert(r.record.ip));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("subnet/big"), "{text}");
    assert_eq!(f.alloc.usage(&big).await.unwrap().used, 27);
}
