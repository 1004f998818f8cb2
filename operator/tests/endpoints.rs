//! MacvlanEndpoints follow the reservations: applied (server-side apply, owned by the pod) from
//! what etcd holds, left alone for a stale incarnation of the pod's name, deleted when the pod
//! holds nothing — and the etcd watch turns owner-index changes into hints.

mod common;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::mockapi::{not_found, MockApi, Recorded, Reply};
use common::Fixture;
use serde_json::json;
use static_macvlan_allocator::{IpRequest, MacRequest, Mirrored, Owner, SubnetConfig};
use static_macvlan_operator::controller::ConfigTriggers;
use static_macvlan_operator::endpoints::{Endpoints, Hint};
use static_macvlan_operator::etcdwatch::{self, Sinks};
use static_macvlan_operator::gc::Ledger;
use static_macvlan_operator::metrics::Metrics;
use static_macvlan_operator::podmirror::PodIndex;

fn owner(uid: &str, ifname: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "db".into(),
        pod: "db-0".into(),
        container_id: format!("c0ffee{uid}"),
        ifname: ifname.into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

const EP_PATH: &str = "/apis/staticmacvlan.io/v1alpha1/namespaces/db/macvlanendpoints/db-0";

#[tokio::test]
async fn endpoints_follow_reservations() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let lan = alloc
        .put_subnet(&Mirrored {
            name: "lan".into(),
            uid: None,
            generation: None,
            spec: SubnetConfig {
                master: "eth0".into(),
                vlan: 100,
                cidr: "10.230.0.0/24".into(),
                ..Default::default()
            },
        })
        .await
        .unwrap();

    // The etcd watch turns owner-index changes into hints naming the pod.
    let (hint_tx, mut hints) = tokio::sync::mpsc::unbounded_channel();
    let triggers = ConfigTriggers::default();
    let started = triggers.subnets.clone();
    let watch = tokio::spawn(etcdwatch::run(
        alloc.clone(),
        Sinks {
            metrics: Arc::new(Metrics::new()),
            ledger: Arc::new(Ledger::default()),
            config: triggers,
            endpoints: Some(hint_tx),
            pods: None,
        },
    ));
    tokio::time::timeout(Duration::from_secs(5), started.fired())
        .await
        .unwrap();
    assert_eq!(hints.recv().await, Some(Hint::Resync));

    let ip = |s: &str| IpRequest::Static(s.parse().unwrap());
    let net2 = alloc
        .reserve(
            &lan,
            &owner("u-new", "net2"),
            ip("10.230.0.34"),
            &MacRequest::None,
        )
        .await
        .unwrap();
    let net1 = alloc
        .reserve(
            &lan,
            &owner("u-new", "net1"),
            ip("10.230.0.33"),
            &MacRequest::Static("02:00:0a:e6:00:21".parse().unwrap()),
        )
        .await
        .unwrap();
    let net1 = alloc.commit(&net1).await.unwrap();
    let hint = tokio::time::timeout(Duration::from_secs(5), hints.recv())
        .await
        .unwrap();
    assert_eq!(
        hint,
        Some(Hint::Pod {
            uid: "u-new".into(),
            name: Some(("db".into(), "db-0".into())),
        })
    );
    watch.abort();

    // An old incarnation of db-0 still holds an address (it awaits GC).
    let stale = alloc
        .reserve(
            &lan,
            &owner("u-old", "net1"),
            ip("10.230.0.40"),
            &MacRequest::None,
        )
        .await
        .unwrap();
    alloc.commit(&stale).await.unwrap();

    let api = MockApi::new(|r: Recorded| async move {
        match r.method.as_str() {
            // Server-side apply: the API server answers with the object.
            "PATCH" => Reply::Json(200, {
                let mut o = r.body.clone();
                o["metadata"]["uid"] = json!("ep-1");
                o["metadata"]["resourceVersion"] = json!("3");
                o
            }),
            "GET" if r.path == EP_PATH => Reply::Json(
                200,
                json!({
                    "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "MacvlanEndpoint",
                    "metadata": {"name": "db-0", "namespace": "db", "uid": "ep-1",
                                 "resourceVersion": "3"},
                    "spec": {"pod": "db-0", "podUID": "u-new", "interfaces": []}
                }),
            ),
            "DELETE" => Reply::Json(
                200,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
            ),
            _ => not_found("anything else"),
        }
    });
    let index = Arc::new(RwLock::new(PodIndex {
        synced: true,
        uids: [(("db".to_string(), "db-0".to_string()), "u-new".to_string())].into(),
    }));
    let mut ep = Endpoints::new(
        api.client.clone(),
        alloc.clone(),
        Arc::new(Metrics::new()),
        index,
    );

    ep.sync("u-new", None).await.unwrap();
    let applied = api.with_method("PATCH");
    assert_eq!(applied.len(), 1, "{applied:#?}");
    let a = &applied[0];
    assert_eq!(a.path, EP_PATH);
    assert!(
        a.query.contains("fieldManager=static-macvlan-operator"),
        "{a:?}"
    );
    assert!(a.query.contains("force=true"), "{a:?}");
    assert_eq!(a.content_type, "application/apply-patch+yaml");
    let owner_ref = &a.body["metadata"]["ownerReferences"][0];
    assert_eq!(owner_ref["kind"], "Pod");
    assert_eq!(owner_ref["uid"], "u-new");
    assert_eq!(a.body["spec"]["podUID"], "u-new");
    let ifs = a.body["spec"]["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2);
    assert_eq!(ifs[0]["ifname"], "net1");
    assert_eq!(ifs[0]["ip"], "10.230.0.33");
    assert_eq!(ifs[0]["mac"], "02:00:0a:e6:00:21");
    assert_eq!(ifs[0]["state"], "committed");
    assert_eq!(ifs[1]["state"], "pending");
    assert_eq!(ifs[1]["subnet"], "lan");

    // Nothing changed: nothing sent.
    ep.sync("u-new", None).await.unwrap();
    assert_eq!(api.requests().len(), 1);

    // The stale incarnation gets no endpoint and does not delete the current one.
    ep.sync("u-old", None).await.unwrap();
    assert!(
        api.with_method("DELETE").is_empty(),
        "{:#?}",
        api.requests()
    );
    assert_eq!(api.with_method("PATCH").len(), 1);

    // The pod's reservations go: its endpoint goes, with preconditions on what was read.
    alloc.release_exact(&net1).await.unwrap();
    alloc.release_exact(&net2).await.unwrap();
    ep.sync("u-new", Some(("db".into(), "db-0".into())))
        .await
        .unwrap();
    let deletes = api.with_method("DELETE");
    assert_eq!(deletes.len(), 1, "{:#?}", api.requests());
    assert_eq!(deletes[0].path, EP_PATH);
    assert_eq!(deletes[0].body["preconditions"]["uid"], "ep-1");
}
