//! The pod mirror against a fake API server that lists and then watches pods and
//! NetworkAttachmentDefinitions, and a real etcd: pods using our networks are written, others
//! not, a deleted pod's record goes, and a stale record of a pod that no longer exists is swept
//! once the initial list is complete.

mod common;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::mockapi::{eventually, MockApi, Recorded, Reply};
use common::Fixture;
use serde_json::{json, Value};
use static_macvlan_operator::metrics::Metrics;
use static_macvlan_operator::podmirror::{PodIndex, PodMirror, PodRecord};
use tokio::sync::Notify;

fn pod(name: &str, uid: &str, rv: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "db", "uid": uid, "resourceVersion": rv,
            "creationTimestamp": "2026-03-01T10:00:00Z",
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                 "uid": "sts-1", "controller": true}]
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "db", "image": "postgres:17"}]
        },
        "status": {"phase": "Running", "podIP": "10.244.1.7"}
    })
}

fn nad(name: &str, config: &str) -> Value {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "db", "uid": format!("nad-{name}"),
                     "resourceVersion": "5"},
        "spec": {"config": config}
    })
}

#[tokio::test]
async fn mirrors_pods_that_use_our_networks() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    // A record left from a pod that is gone (the operator was down when it was deleted).
    f.etcd
        .etcdctl(&[
            "put",
            &format!("{}/pods/db/zombie", f.prefix),
            r#"{"uid":"z"}"#,
        ])
        .unwrap();

    let a = pod(
        "db-0",
        "u-a",
        "90",
        json!({"app": "db"}),
        json!({"static-ip": "10.230.0.33", "vlan": "lan-100", "kubectl.kubernetes.io/restartedAt": "x"}),
    );
    let b = pod(
        "db-1",
        "u-b",
        "91",
        json!({"app": "db"}),
        json!({"k8s.v1.cni.cncf.io/networks": "flannel, lan-100@net1"}),
    );
    let c = pod(
        "web-0",
        "u-c",
        "92",
        json!({"app": "web"}),
        json!({"other": "x"}),
    );
    let d = pod(
        "web-1",
        "u-d",
        "93",
        json!({"app": "web"}),
        json!({"k8s.v1.cni.cncf.io/networks": "flannel"}),
    );
    let mut b2 = b.clone();
    b2["metadata"]["resourceVersion"] = json!("102");
    b2["metadata"]["labels"]["tier"] = json!("primary");

    let go = Arc::new(Notify::new());
    let gate = go.clone();
    let items = vec![a.clone(), b, c, d];
    let api = MockApi::new(move |r: Recorded| {
        let items = items.clone();
        let gate = gate.clone();
        let (a, b2) = (a.clone(), b2.clone());
        async move {
            let nads = r.path == "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
            let pods = r.path == "/api/v1/pods";
            match (pods, nads, r.is_watch()) {
                (true, _, false) => Reply::Json(
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList",
                           "metadata": {"resourceVersion": "100"}, "items": items}),
                ),
                (_, true, false) => Reply::Json(
                    200,
                    json!({"apiVersion": "k8s.cni.cncf.io/v1",
                    "kind": "NetworkAttachmentDefinitionList",
                    "metadata": {"resourceVersion": "100"},
                    "items": [
                        nad("lan-100", r#"{"cniVersion":"1.0.0","type":"static-macvlan","subnet":"lan-100"}"#),
                        nad("flannel", r#"{"cniVersion":"0.3.1","type":"flannel"}"#)
                    ]}),
                ),
                (true, _, true) if r.query.contains("resourceVersion=100") => {
                    gate.notified().await;
                    let mut gone = a;
                    gone["metadata"]["resourceVersion"] = json!("101");
                    Reply::Events(vec![
                        json!({"type": "DELETED", "object": gone}),
                        json!({"type": "MODIFIED", "object": b2}),
                    ])
                }
                _ => Reply::Hang,
            }
        }
    });

    let index = Arc::new(RwLock::new(PodIndex::default()));
    let mirror = PodMirror::new(alloc.clone(), Arc::new(Metrics::new()), index.clone(), None);
    let (_etcd_tx, etcd_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(mirror.run(api.client.clone(), etcd_rx, Duration::from_secs(300)));

    let record = |name: &str| f.get(&format!("pods/db/{name}"));
    let synced = eventually(Duration::from_secs(5), || async {
        record("db-0").is_some() && record("db-1").is_some() && record("zombie").is_none()
    })
    .await;
    assert!(synced, "keys: {:?}", f.keys());
    assert_eq!(record("web-0"), None, "no annotation of ours");
    assert_eq!(record("web-1"), None, "only a foreign network");

    let a_rec: PodRecord = serde_json::from_str(&record("db-0").unwrap()).unwrap();
    assert_eq!(a_rec.uid, "u-a");
    assert_eq!(a_rec.node.as_deref(), Some("node-a"));
    assert_eq!(a_rec.labels["app"], "db");
    assert_eq!(
        a_rec.annotations.keys().collect::<Vec<_>>(),
        ["static-ip", "vlan"],
        "only our annotations"
    );
    let b_rec: PodRecord = serde_json::from_str(&record("db-1").unwrap()).unwrap();
    assert_eq!(b_rec.networks.len(), 1);
    assert_eq!(b_rec.networks[0].name, "lan-100");
    assert_eq!(b_rec.networks[0].interface.as_deref(), Some("net1"));
    {
        let idx = index.read().unwrap();
        assert!(idx.synced);
        assert_eq!(idx.uids.len(), 4);
    }

    // The watch: db-0 deleted, db-1 relabelled.
    go.notify_one();
    let followed = eventually(Duration::from_secs(5), || async {
        record("db-0").is_none()
            && record("db-1").is_some_and(|v| v.contains("\"tier\":\"primary\""))
    })
    .await;
    assert!(followed, "keys: {:?}, db-1: {:?}", f.keys(), record("db-1"));
    task.abort();
}

/// The operator writes the pod mirror and the plugin reads it with the allocator's own type:
/// what one writes the other must read, field for field.
#[test]
fn the_plugin_reads_what_the_operator_writes() {
    let written = PodRecord {
        uid: "7c1e".into(),
        node: Some("node-a".into()),
        labels: [("app".to_string(), "db".to_string())].into(),
        annotations: [
            ("static-ip".to_string(), "10.230.0.60".to_string()),
            ("vlan".to_string(), "lan".to_string()),
        ]
        .into(),
        networks: vec![static_macvlan_operator::podmirror::NetworkSelection {
            name: "lan".into(),
            namespace: "default".into(),
            interface: Some("net1".into()),
            ips: vec!["10.230.0.60/24".into()],
            mac: None,
        }],
    };
    let json = serde_json::to_string(&written).unwrap();
    let read: static_macvlan_allocator::model::PodRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(read.uid, written.uid);
    assert_eq!(read.node, written.node);
    assert_eq!(read.labels, written.labels);
    assert_eq!(read.annotations, written.annotations);
    assert_eq!(read.networks.len(), 1);
    assert_eq!(read.networks[0]["interface"], "net1");
}
