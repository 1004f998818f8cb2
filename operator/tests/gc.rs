//! Garbage collection against a real etcd and a fake API server: only reservations whose pod
//! UID the API server confirms gone are released, nothing while it does not answer, pending
//! ones never, and a new reservation made while GC decides is never freed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mockapi::{not_found, status, MockApi, Recorded, Reply};
use common::Fixture;
use serde_json::json;
use static_macvlan_allocator::{Allocator, IpRequest, MacRequest, Mirrored, Owner, SubnetConfig};
use static_macvlan_operator::gc::{self, decide, Collector, Ledger};
use static_macvlan_operator::metrics::{GcResult, Metrics};

fn owner(uid: &str, pod: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "db".into(),
        pod: pod.into(),
        container_id: format!("c0ffee{uid}"),
        ifname: "net1".into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

async fn lan(alloc: &Allocator) -> static_macvlan_allocator::Subnet {
    alloc
        .put_subnet(&Mirrored {
            name: "lan".into(),
            uid: Some("u-lan".into()),
            generation: Some(1),
            spec: SubnetConfig {
                master: "eth0".into(),
                cidr: "10.230.0.0/24".into(),
                ..Default::default()
            },
        })
        .await
        .unwrap()
}

fn pod(name: &str, uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": "db", "uid": uid, "resourceVersion": "1"}
    })
}

/// The API server: pods `alive` (name → uid) exist, every other name is 404.
fn api(alive: &'static [(&'static str, &'static str)]) -> MockApi {
    MockApi::new(move |r: Recorded| async move {
        let name = r.path.rsplit('/').next().unwrap_or("").to_string();
        assert_eq!(r.method, "GET", "{r:?}");
        assert!(r.path.starts_with("/api/v1/namespaces/db/pods/"), "{r:?}");
        match alive.iter().find(|(n, _)| *n == name) {
            Some((n, uid)) => Reply::Json(200, pod(n, uid)),
            None => not_found(&format!("pods \"{name}\"")),
        }
    })
}

#[tokio::test]
async fn releases_only_confirmed_gone_after_grace() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let s = lan(&alloc).await;
    let reserve = |o: Owner| {
        let alloc = alloc.clone();
        let s = s.clone();
        async move {
            let r = alloc
                .reserve(&s, &o, IpRequest::Auto, &MacRequest::None)
                .await
                .unwrap();
            alloc.commit(&r).await.unwrap()
        }
    };
    let running = reserve(owner("u-run", "run-0")).await;
    let deleted = reserve(owner("u-del", "del-0")).await;
    let replaced = reserve(owner("u-old", "web-0")).await;
    let pending = alloc
        .reserve(
            &s,
            &owner("u-pend", "pend-0"),
            IpRequest::Auto,
            &MacRequest::None,
        )
        .await
        .unwrap();

    let api = api(&[("run-0", "u-run"), ("web-0", "u-new")]);
    let metrics = Arc::new(Metrics::new());
    let mut c = Collector::new(
        alloc.clone(),
        api.client.clone(),
        metrics.clone(),
        Arc::new(Ledger::default()),
        Duration::from_secs(300),
    );
    let t0 = Instant::now();
    assert_eq!(c.cycle(t0, None).await, GcResult::Completed);
    assert_eq!(
        alloc.all().await.unwrap().len(),
        4,
        "inside the grace period"
    );
    assert_eq!(metrics.gc_waiting.get(), 2);
    // The pending reservation's pod was never asked about.
    assert!(api.requests().iter().all(|r| !r.path.ends_with("/pend-0")));

    assert_eq!(
        c.cycle(t0 + Duration::from_secs(301), None).await,
        GcResult::Completed
    );
    let left: Vec<String> = alloc
        .all()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.owner.pod_uid)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&"u-run".to_string()) && left.contains(&"u-pend".to_string()));
    assert!(alloc
        .holder_of_ip("lan", deleted.record.ip)
        .await
        .unwrap()
        .is_none());
    assert!(alloc
        .holder_of_ip("lan", replaced.record.ip)
        .await
        .unwrap()
        .is_none());
    assert!(alloc
        .holder_of_ip("lan", running.record.ip)
        .await
        .unwrap()
        .is_some());
    assert!(alloc
        .holder_of_ip("lan", pending.record.ip)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn never_acts_while_the_api_server_fails() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let s = lan(&alloc).await;
    let r = alloc
        .reserve(&s, &owner("u1", "a-0"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&r).await.unwrap();
    let r = alloc
        .reserve(&s, &owner("u2", "b-0"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&r).await.unwrap();
    // a-0 is gone (404); asking about b-0 fails: the whole cycle is skipped.
    let api = MockApi::new(|r: Recorded| async move {
        if r.path.ends_with("/a-0") {
            not_found("pods \"a-0\"")
        } else {
            Reply::Json(
                503,
                status(503, "ServiceUnavailable", "etcdserver: leader changed"),
            )
        }
    });
    let mut c = Collector::new(
        alloc.clone(),
        api.client.clone(),
        Arc::new(Metrics::new()),
        Arc::new(Ledger::default()),
        Duration::ZERO,
    );
    let rev = f.etcd.revision().await.unwrap();
    assert_eq!(c.cycle(Instant::now(), None).await, GcResult::Skipped);
    assert_eq!(f.etcd.revision().await.unwrap(), rev, "nothing written");
    assert_eq!(alloc.all().await.unwrap().len(), 2);
}

#[tokio::test]
async fn gc_racing_a_new_reservation_never_frees_it() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let s = lan(&alloc).await;
    let ip = IpRequest::Static("10.230.0.33".parse().unwrap());
    let old = alloc
        .reserve(&s, &owner("u-old", "web-0"), ip, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&old).await.unwrap();

    // GC reads and decides: web-0 is now another pod, so u-old is gone.
    let api = api(&[("web-0", "u-new")]);
    let metrics = Metrics::new();
    let plan = gc::plan(&alloc, &api.client, &metrics, None).await.unwrap();
    let d = decide(
        &plan.reservations,
        &plan.answers,
        &Default::default(),
        Instant::now(),
        Duration::ZERO,
    );
    assert_eq!(d.release.len(), 1);

    // Meanwhile the old pod's DEL frees the address and the new pod takes the same static IP.
    alloc.release(&old.record.owner).await.unwrap();
    let new = alloc
        .reserve(&s, &owner("u-new", "web-0"), ip, &MacRequest::None)
        .await
        .unwrap();
    let new = alloc.commit(&new).await.unwrap();

    let ledger = Ledger::default();
    let freed = gc::execute(&alloc, &metrics, &ledger, &d.release)
        .await
        .unwrap();
    assert_eq!(freed, 0);
    let holder = alloc
        .holder_of_ip("lan", "10.230.0.33".parse().unwrap())
        .await
        .unwrap()
        .expect("the new pod keeps its address");
    assert_eq!(holder, new);
    assert_eq!(alloc.by_pod("u-new").await.unwrap(), [new]);
}
