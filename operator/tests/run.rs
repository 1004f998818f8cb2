//! `static-macvlan-operator run` end to end: the real binary, out of cluster through a
//! kubeconfig, against a small fake API server over HTTP and a real etcd. It takes the Lease,
//! mirrors a VlanSubnet and reports it Ready, serves its metrics, and on SIGTERM releases the
//! Lease and exits 0.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::mockapi::{eventually, status};
use common::Fixture;
use serde_json::{json, Value};

#[derive(Default)]
struct Fake {
    /// Objects by path (the Lease, once created).
    objects: HashMap<String, Value>,
    /// Every request: method, path and query, body.
    log: Vec<(String, String, Value)>,
}

type Shared = Arc<Mutex<Fake>>;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/static-macvlan-system/leases";

fn subnet() -> Value {
    json!({
        "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "VlanSubnet",
        "metadata": {"name": "lan", "uid": "u-lan", "generation": 1, "resourceVersion": "10",
                     "creationTimestamp": "2026-03-01T10:00:00Z"},
        "spec": {"master": "eth0", "vlan": 100, "cidr": "10.230.0.0/24", "gateway": "10.230.0.1"}
    })
}

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"resourceVersion": "10"}, "items": items})
}

fn reply(code: u16, v: Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn handle(State(fake): State<Shared>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    fake.lock()
        .unwrap()
        .log
        .push((method.clone(), format!("{path}?{query}"), body.clone()));
    if query.contains("watch=true") {
        // An idle watch: no event until the client gives up.
        std::future::pending::<()>().await;
    }
    let mut f = fake.lock().unwrap();
    match (method.as_str(), path.as_str()) {
        ("GET", "/version") => reply(
            200,
            json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}),
        ),
        ("GET", "/apis/staticmacvlan.io/v1alpha1/vlansubnets") => reply(
            200,
            list(
                "staticmacvlan.io/v1alpha1",
                "VlanSubnetList",
                vec![subnet()],
            ),
        ),
        ("GET", "/apis/staticmacvlan.io/v1alpha1/macpools") => reply(
            200,
            list("staticmacvlan.io/v1alpha1", "MacPoolList", vec![]),
        ),
        ("GET", "/apis/staticmacvlan.io/v1alpha1/allocationrules") => reply(
            200,
            list("staticmacvlan.io/v1alpha1", "AllocationRuleList", vec![]),
        ),
        ("GET", "/apis/staticmacvlan.io/v1alpha1/macvlanendpoints") => reply(
            200,
            list("staticmacvlan.io/v1alpha1", "MacvlanEndpointList", vec![]),
        ),
        ("GET", "/api/v1/pods") => reply(200, list("v1", "PodList", vec![])),
        ("PATCH", p) if p.starts_with("/apis/staticmacvlan.io/v1alpha1/vlansubnets/lan") => {
            reply(200, subnet())
        }
        ("POST", LEASE) => {
            let mut l = body;
            l["metadata"]["resourceVersion"] = json!("1");
            f.objects
                .insert(format!("{LEASE}/static-macvlan-operator"), l.clone());
            reply(201, l)
        }
        ("PUT", p) if p.starts_with(LEASE) => {
            let mut l = body;
            l["metadata"]["resourceVersion"] = json!("2");
            f.objects.insert(p.to_string(), l.clone());
            reply(200, l)
        }
        ("GET", p) => match f.objects.get(p) {
            Some(o) => reply(200, o.clone()),
            None => reply(404, status(404, "NotFound", &format!("{p} not found"))),
        },
        _ => reply(404, status(404, "NotFound", "not served by the fake")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_a_fake_api_server() {
    let f = Fixture::new();
    let fake = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{api_addr}\n\
             users:\n- name: nobody\n  user: {{}}\n\
             contexts:\n- name: test\n  context:\n    cluster: fake\n    user: nobody\n    namespace: default\n"
        ),
    )
    .unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let endpoint = f.etcd.endpoint();
    let mut child = Command::new(common::BIN)
        .args([
            "run",
            "--etcd-endpoints",
            &endpoint,
            "--prefix",
            &f.prefix,
            "--metrics-addr",
            &metrics_addr,
            "--lease-namespace",
            "static-macvlan-system",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mirrored = eventually(Duration::from_secs(8), || async {
        f.get("config/subnets/lan").is_some()
    })
    .await;
    let log = fake.lock().unwrap().log.clone();
    assert!(mirrored, "not mirrored; requests: {log:#?}");
    // Took the Lease, then reported the subnet Ready through the status subresource.
    let lease = fake
        .lock()
        .unwrap()
        .objects
        .get(&format!("{LEASE}/static-macvlan-operator"))
        .cloned()
        .expect("lease created");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(holder.contains('_'), "{lease}");
    let status_patched = eventually(Duration::from_secs(5), || async {
        fake.lock().unwrap().log.iter().any(|(m, p, b)| {
            m == "PATCH"
                && p.starts_with("/apis/staticmacvlan.io/v1alpha1/vlansubnets/lan/status")
                && b["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
    })
    .await;
    assert!(status_patched, "{:#?}", fake.lock().unwrap().log);

    // Metrics: leader, both stores up.
    let scrape = || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    let up = eventually(Duration::from_secs(5), || async {
        scrape().await.is_some_and(|m| {
            m.contains("static_macvlan_leader 1")
                && m.contains("static_macvlan_etcd_up 1")
                && m.contains("static_macvlan_api_up 1")
        })
    })
    .await;
    assert!(up, "{:?}", scrape().await);

    // SIGTERM: the Lease is released and the process exits 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = eventually(Duration::from_secs(8), || {
        let done = child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "still running after SIGTERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stderr.lines().all(|l| l.starts_with('{')),
        "JSON logs: {stderr}"
    );
    let lease = fake
        .lock()
        .unwrap()
        .objects
        .get(&format!("{LEASE}/static-macvlan-operator"))
        .cloned()
        .unwrap();
    assert_eq!(
        lease["spec"]["holderIdentity"],
        Value::Null,
        "released: {lease}"
    );
    server.abort();
}
