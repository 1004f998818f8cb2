//! `/metrics`, `/healthz`, `/readyz` over real HTTP on port 0, with the reservation counters fed
//! by the etcd watch while reservations are made, committed, released, expired and collected in
//! a real etcd.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::mockapi::eventually;
use common::Fixture;
use static_macvlan_allocator::{IpRequest, MacRequest, Mirrored, Options, Owner, SubnetConfig};
use static_macvlan_operator::controller::ConfigTriggers;
use static_macvlan_operator::etcdwatch::{self, Sinks};
use static_macvlan_operator::gc::{self, Ledger};
use static_macvlan_operator::metrics::{self, Health, Metrics, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a fresh connection: status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(k, _)| k == series)
        .map(|(_, v)| v)
        .unwrap_or(0.0)
}

fn owner(uid: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "db".into(),
        pod: format!("pod-{uid}"),
        container_id: format!("c0ffee{uid}"),
        ifname: "net1".into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

#[tokio::test]
async fn metrics_endpoint_and_reservation_counters() {
    let f = Fixture::new();
    // Pending reservations of this allocator expire after 2 s when never committed.
    let alloc = f
        .allocator_with(Options {
            pending_ttl: Duration::from_secs(2),
            ..Options::default()
        })
        .await;
    let lan = alloc
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
        .unwrap();

    let m = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(
        listener,
        Telemetry {
            metrics: m.clone(),
            health: health.clone(),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let ledger = Arc::new(Ledger::default());
    let triggers = ConfigTriggers::default();
    let started = triggers.rules.clone();
    let watch = tokio::spawn(etcdwatch::run(
        alloc.clone(),
        Sinks {
            metrics: m.clone(),
            ledger: ledger.clone(),
            config: triggers.clone(),
            endpoints: None,
            pods: None,
        },
    ));
    // The watch announces its (re)start by firing every trigger.
    tokio::time::timeout(Duration::from_secs(5), started.fired())
        .await
        .expect("watch started");

    // Created and released by the owner's DEL.
    let a = alloc
        .reserve(&lan, &owner("a"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&a).await.unwrap();
    alloc.release(&a.record.owner).await.unwrap();
    // Created, never committed: the lease expires.
    alloc
        .reserve(&lan, &owner("b"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    // Created and collected by GC.
    let c = alloc
        .reserve(&lan, &owner("c"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    let c = alloc.commit(&c).await.unwrap();
    assert_eq!(gc::execute(&alloc, &m, &ledger, &[c]).await.unwrap(), 1);

    let released = |reason: &str| {
        format!("static_macvlan_reservations_released_total{{subnet=\"lan\",reason=\"{reason}\"}}")
    };
    let ok = eventually(Duration::from_secs(8), || async {
        let (_, body) = get(addr, "/metrics").await;
        value(&body, &released("expired")) == 1.0
    })
    .await;
    let (code, body) = get(addr, "/metrics").await;
    assert!(ok, "the pending reservation did not expire:\n{body}");
    assert_eq!(code, 200);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text: {body}");
    assert_eq!(
        value(
            &body,
            "static_macvlan_reservations_created_total{subnet=\"lan\"}"
        ),
        3.0,
        "{body}"
    );
    assert_eq!(value(&body, &released("del")), 1.0, "{body}");
    assert_eq!(value(&body, &released("gc")), 1.0, "{body}");
    let hist = samples(&body)
        .into_iter()
        .find(|(k, _)| k == "static_macvlan_etcd_request_duration_seconds_count{op=\"release\"}")
        .map(|(_, v)| v);
    assert_eq!(hist, Some(1.0), "{body}");

    let families: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Families with a label per object appear with their first object (the unit tests cover
    // their names); these exist from the start or were fed above.
    for name in [
        "static_macvlan_reservations_created",
        "static_macvlan_reservations_released",
        "static_macvlan_gc_runs",
        "static_macvlan_gc_waiting_reservations",
        "static_macvlan_reconcile_duration_seconds",
        "static_macvlan_etcd_request_duration_seconds",
        "static_macvlan_leader",
        "static_macvlan_etcd_up",
        "static_macvlan_api_up",
    ] {
        assert!(families.contains(name), "{name} missing: {families:?}");
    }

    assert_eq!(
        value(&body, "static_macvlan_gc_runs_total{result=\"skipped\"}"),
        0.0
    );
    assert!(
        body.contains("static_macvlan_gc_runs_total{result=\"failed\"} 0"),
        "{body}"
    );

    // Liveness never depends on the stores; readiness does.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd failing"), "{body}");
    health.etcd.store(true, Ordering::Relaxed);
    health.api.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    watch.abort();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops on the shutdown signal")
        .unwrap()
        .unwrap();
}

/// `serve-metrics`: the real binary, with etcd and no Kubernetes API at all.
#[tokio::test]
async fn serve_metrics_works_from_etcd_alone() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let lan = alloc
        .put_subnet(&Mirrored {
            name: "lan".into(),
            uid: None,
            generation: None,
            spec: SubnetConfig {
                master: "eth0".into(),
                cidr: "10.230.0.0/24".into(),
                gateway: Some("10.230.0.1".into()),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let endpoint = f.etcd.endpoint();
    let child = std::process::Command::new(common::BIN)
        .args([
            "serve-metrics",
            "--etcd-endpoints",
            endpoint.as_str(),
            "--prefix",
            f.prefix.as_str(),
            "--metrics-addr",
            &addr.to_string(),
            "--interval-seconds",
            "1",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);

    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "serve-metrics never listened"
    );
    let o = Owner {
        pod_uid: "u1".into(),
        namespace: "default".into(),
        pod: "web-0".into(),
        container_id: "c1".into(),
        ifname: "net1".into(),
        node: "node-a".into(),
        network: String::new(),
    };
    let r = alloc
        .reserve(&lan, &o, IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    alloc.commit(&r).await.unwrap();
    let counted = eventually(Duration::from_secs(10), || async {
        let (code, body) = get(addr, "/metrics").await;
        let s = samples(&body);
        let value = |name: &str| s.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        code == 200
            && value(r#"static_macvlan_reservations_created_total{subnet="lan"}"#) == Some(1.0)
            && value(r#"static_macvlan_subnet_addresses{subnet="lan",state="used"}"#) == Some(1.0)
            && value("static_macvlan_etcd_up") == Some(1.0)
    })
    .await;
    assert!(counted, "{}", get(addr, "/metrics").await.1);
    assert_eq!(get(addr, "/readyz").await.0, 200);
}
