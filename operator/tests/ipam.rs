//! `ipam show | who | release` end to end: reservations made with the allocator (as the CNI
//! plugin makes them), inspected and repaired with the real binary.

mod common;

use common::Fixture;
use serde_json::Value;
use static_macvlan_allocator::{Allocator, IpRequest, MacRequest, Owner, Reservation};

const CONFIG: &str = r#"apiVersion: staticmacvlan.io/v1alpha1
kind: MacPool
metadata: {name: vms}
spec:
  ranges:
  - start: 02:00:0a:e6:00:00
    end: 02:00:0a:e6:00:ff
---
apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata: {name: lan-100}
spec:
  master: eth0
  vlan: 100
  cidr: 10.230.0.0/24
  gateway: 10.230.0.1
  ranges: [{start: 10.230.0.10, end: 10.230.0.109}]
  macPool: vms
---
# Another LAN with the same addresses (another NIC): an IP alone is ambiguous.
apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata: {name: lab}
spec:
  master: eth1
  cidr: 10.230.0.0/24
"#;

fn owner(uid: &str, pod: &str, ifname: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "default".into(),
        pod: pod.into(),
        container_id: format!("c0ffee{uid}0123456789abcdef"),
        ifname: ifname.into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

struct Site {
    f: Fixture,
    alloc: Allocator,
    web: Reservation,
}

/// Config applied with the binary; then web-0 holds 10.230.0.33 + a pool MAC on lan-100
/// (committed) and 10.230.0.40 on lab (net2); db-0 holds 10.230.0.40 on lan-100 (pending).
async fn site() -> Site {
    let f = Fixture::new();
    let r = f.run(&["apply", "-f", "-"], Some(CONFIG));
    assert_eq!(r.code, 0, "{r}");
    let alloc = f.allocator().await;
    let lan = alloc.get_subnet("lan-100").await.unwrap();
    let lab = alloc.get_subnet("lab").await.unwrap();
    let pool = alloc.get_macpool("vms").await.unwrap();
    let ip = |s: &str| IpRequest::Static(s.parse().unwrap());
    let web = alloc
        .reserve(
            &lan,
            &owner("u-web", "web-0", "net1"),
            ip("10.230.0.33"),
            &MacRequest::Auto(pool),
        )
        .await
        .unwrap();
    let web = alloc.commit(&web).await.unwrap();
    let net2 = alloc
        .reserve(
            &lab,
            &owner("u-web", "web-0", "net2"),
            ip("10.230.0.40"),
            &MacRequest::None,
        )
        .await
        .unwrap();
    alloc.commit(&net2).await.unwrap();
    alloc
        .reserve(
            &lan,
            &owner("u-db", "db-0", "net1"),
            ip("10.230.0.40"),
            &MacRequest::None,
        )
        .await
        .unwrap();
    Site { f, alloc, web }
}

/// The whitespace-split cells of the table row starting with `first`.
fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[tokio::test]
async fn show_counts_subnets_and_pools() {
    let s = site().await;
    let r = s.f.run(&["ipam", "show"], None);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("SUBNET "), "{r}");
    assert_eq!(
        row(&r.stdout, "lan-100"),
        ["lan-100", "10.230.0.0/24", "eth0", "100", "2", "98", "100"]
    );
    // The whole /24 minus network, broadcast: 254.
    assert_eq!(
        row(&r.stdout, "lab"),
        ["lab", "10.230.0.0/24", "eth1", "0", "1", "253", "254"]
    );
    assert_eq!(
        row(&r.stdout, "vms"),
        [
            "vms",
            "02:00:0a:e6:00:00-02:00:0a:e6:00:ff",
            "1",
            "255",
            "256"
        ]
    );

    let r = s.f.run(&["ipam", "show", "-o", "json"], None);
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let lan = v["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "lan-100")
        .unwrap();
    assert_eq!(
        (
            lan["used"].as_u64(),
            lan["free"].as_u64(),
            lan["capacity"].as_u64()
        ),
        (Some(2), Some(98), Some(100))
    );
    assert_eq!(v["macPools"][0]["used"], 1);
}

#[tokio::test]
async fn show_on_an_empty_prefix_and_without_etcd() {
    let f = Fixture::new();
    let r = f.run(&["ipam", "show"], None);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("No subnets under"), "{r}");
    let r = common::run(
        &["ipam", "show", "--etcd-endpoints", "http://127.0.0.1:1"],
        None,
        &[],
    );
    assert_eq!(r.code, 3, "{r}");
}

#[tokio::test]
async fn who_names_the_holder_of_an_ip_or_mac() {
    let s = site().await;
    let r = s.f.run(&["ipam", "who", "10.230.0.33"], None);
    assert_eq!(r.code, 0, "{r}");
    let cells = row(&r.stdout, "lan-100");
    let mac = s.web.record.mac.unwrap().to_string();
    assert_eq!(
        cells,
        [
            "lan-100",
            "10.230.0.33",
            mac.as_str(),
            "default/web-0",
            "u-web",
            "c0ffeeu-web0",
            "net1",
            "node-a",
            "committed",
            s.web.record.since.as_str()
        ]
    );

    let r =
        s.f.run(&["ipam", "who", &mac.to_uppercase(), "-o", "json"], None);
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["ip"], "10.230.0.33");
    assert_eq!(v[0]["owner"]["podUid"], "u-web");
    assert_eq!(v[0]["owner"]["containerId"], "c0ffeeu-web0123456789abcdef");
    assert_eq!(v[0]["revision"], s.web.revision);

    // Held in two subnets on two LANs: both shown; --subnet narrows.
    let r = s.f.run(&["ipam", "who", "10.230.0.40"], None);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(row(&r.stdout, "lan-100")[8], "pending");
    assert_eq!(row(&r.stdout, "lab")[3], "default/web-0");
    let r =
        s.f.run(&["ipam", "who", "10.230.0.40", "--subnet", "lab"], None);
    assert_eq!(r.stdout.lines().count(), 2, "{r}");

    for (args, code) in [
        (vec!["ipam", "who", "10.230.0.34"], 1),
        (vec!["ipam", "who", "10.99.0.1"], 1),
        (vec!["ipam", "who", "02:00:0a:e6:00:ff"], 1),
        (vec!["ipam", "who", "10.230.0.33", "--subnet", "nope"], 1),
        (vec!["ipam", "who", "not-an-address"], 2),
    ] {
        let r = s.f.run(&args, None);
        assert_eq!(r.code, code, "{args:?}: {r}");
        assert!(
            r.stdout.is_empty() && r.stderr.starts_with("error: "),
            "{args:?}: {r}"
        );
    }

    // Reservations outlive a subnet's config deleted by hand: still found with --subnet.
    let key = format!("{}/config/subnets/lab", s.f.prefix);
    s.f.etcd.etcdctl(&["del", &key]).unwrap();
    let r =
        s.f.run(&["ipam", "who", "10.230.0.40", "--subnet", "lab"], None);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(row(&r.stdout, "lab")[6], "net2");
    let r =
        s.f.run(&["ipam", "who", "10.230.0.41", "--subnet", "lab"], None);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("not configured"), "{r}");
}

#[tokio::test]
async fn release_frees_exactly_what_it_names() {
    let s = site().await;
    let mac = s.web.record.mac.unwrap();

    // Dry run: reported, nothing changes.
    let before = s.f.etcd.revision().await.unwrap();
    let r = s.f.run(
        &["ipam", "release", "--ip", "10.230.0.33", "--dry-run"],
        None,
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("would be released (dry run)"), "{r}");
    assert_eq!(s.f.etcd.revision().await.unwrap(), before);

    // An IP held in two subnets needs --subnet.
    let r = s.f.run(&["ipam", "release", "--ip", "10.230.0.40"], None);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("name one with --subnet"), "{r}");
    assert_eq!(s.f.etcd.revision().await.unwrap(), before);

    // One interface of a pod: its IP, MAC and index keys go, its other interface stays.
    let r = s.f.run(
        &["ipam", "release", "--pod-uid", "u-web", "--ifname", "net1"],
        None,
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(
        row(&r.stdout, "lan-100").contains(&"released".to_string()),
        "{r}"
    );
    let ip = "10.230.0.33".parse().unwrap();
    assert!(s.alloc.holder_of_ip("lan-100", ip).await.unwrap().is_none());
    assert!(s.alloc.holder_of_mac(mac).await.unwrap().is_none());
    assert_eq!(s.alloc.by_pod("u-web").await.unwrap().len(), 1);

    // The pending reservation of db-0 by IP and subnet, as JSON.
    let r = s.f.run(
        &[
            "ipam",
            "release",
            "--ip",
            "10.230.0.40",
            "--subnet",
            "lan-100",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v[0]["owner"]["pod"].as_str(), v[0]["released"].as_bool()),
        (Some("db-0"), Some(true))
    );
    assert!(s.alloc.by_pod("u-db").await.unwrap().is_empty());

    // Nothing left to release: 1, and nothing written.
    let before = s.f.etcd.revision().await.unwrap();
    for args in [
        vec!["ipam", "release", "--pod-uid", "u-db"],
        vec!["ipam", "release", "--pod-uid", "u-web", "--ifname", "net1"],
        vec!["ipam", "release", "--mac", &mac.to_string()],
    ] {
        let r = s.f.run(&args, None);
        assert_eq!(r.code, 1, "{args:?}: {r}");
    }
    assert_eq!(s.f.etcd.revision().await.unwrap(), before);

    // The rest of the pod by UID; the subnets are then empty.
    let r = s.f.run(&["ipam", "release", "--pod-uid", "u-web"], None);
    assert_eq!(r.code, 0, "{r}");
    assert!(s.alloc.all().await.unwrap().is_empty());
    let r = s.f.run(&["ipam", "show"], None);
    assert_eq!(row(&r.stdout, "lan-100")[4], "0");
    assert_eq!(row(&r.stdout, "lab")[4], "0");

    // Usage errors.
    for args in [
        vec!["ipam", "release"],
        vec!["ipam", "release", "--pod-uid", "u", "--ip", "10.0.0.1"],
        vec![
            "ipam",
            "release",
            "--ifname",
            "net1",
            "--mac",
            "02:00:00:00:00:01",
        ],
        vec!["ipam", "release", "--subnet", "lan-100", "--pod-uid", "u"],
        vec!["ipam", "release", "--ifname", "net1"],
        vec!["ipam", "release", "--ip", "10.0.0.300"],
        vec!["ipam", "release", "--mac", "zz"],
    ] {
        let r = s.f.run(&args, None);
        assert_eq!(r.code, 2, "{args:?}: {r}");
    }
}

/// `ipam check` with no cluster to ask (KUBECONFIG names no file, not in a pod).
fn check(s: &Site, extra: &[&str]) -> common::Run {
    let endpoint = s.f.etcd.endpoint();
    let mut args = vec!["ipam", "check"];
    args.extend(extra);
    args.extend([
        "--etcd-endpoints",
        endpoint.as_str(),
        "--prefix",
        s.f.prefix.as_str(),
    ]);
    common::run(&args, None, &[("KUBECONFIG", "/nonexistent/kubeconfig")])
}

#[tokio::test]
async fn check_without_a_cluster_checks_etcd_consistency() {
    let s = site().await;
    let r = check(&s, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("no cluster reachable")
            && r.stdout.contains("etcd-internal consistency only"),
        "{r}"
    );
    // db-0's reservation is pending (being set up): reported, not a problem.
    let pending = row(&r.stdout, "info");
    assert_eq!(pending[1], "pending", "{r}");
    assert!(r.stdout.contains("3 reservation(s)"), "{r}");

    let r = check(&s, &["--no-api", "-o", "json"]);
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["api"]["state"], "skipped");
    assert_eq!(v["reservations"], 3);

    // Break the index: web-0's IP key disappears (deleted by hand), its MAC key too.
    let web = &s.web.record;
    for key in [
        format!("{}/ips/lan-100/{}", s.f.prefix, web.ip),
        format!("{}/owners/u-web/net2", s.f.prefix),
    ] {
        s.f.etcd.etcdctl(&["del", &key]).unwrap();
    }
    let r = check(&s, &["-o", "json"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("ipam check found"), "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["api"]["state"], "unreachable", "{v}");
    let found: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "problem")
        .map(|f| {
            (
                f["finding"].as_str().unwrap().to_string(),
                f["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The owner entry lost its IP key; net2's IP, MAC-less, and node keys lost their owner.
    assert!(
        found.contains(&(
            "missing-index".to_string(),
            format!("{}/owners/u-web/net1", s.f.prefix)
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            "orphan-index".to_string(),
            format!("{}/ips/lab/10.230.0.40", s.f.prefix)
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            "orphan-index".to_string(),
            format!("{}/nodes/node-a/u-web/net2", s.f.prefix)
        )),
        "{found:?}"
    );
}

#[tokio::test]
async fn check_asks_the_api_server_about_pods() {
    use common::mockapi::{not_found, MockApi, Recorded, Reply};
    let s = site().await;
    let (reservations, _) =
        static_macvlan_operator::ipam::check_etcd(&s.alloc, k8s_openapi::jiff::Timestamp::now())
            .await
            .unwrap();
    // web-0 was re-created (another UID); db-0 (pending) is never asked about.
    let api = MockApi::new(|r: Recorded| async move {
        assert!(
            !r.path.ends_with("/db-0"),
            "pending reservations are not checked"
        );
        if r.path == "/api/v1/namespaces/default/pods/web-0" {
            Reply::Json(
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "web-0", "namespace": "default", "uid": "u-web-2"}}),
            )
        } else {
            not_found("pod")
        }
    });
    let findings =
        static_macvlan_operator::ipam::check_pods(&api.client, s.alloc.keys(), &reservations)
            .await
            .unwrap();
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert!(findings.iter().all(|f| f.finding == "pod-gone"));
    assert!(
        findings[0]
            .detail
            .contains("is now another pod (uid u-web-2)"),
        "{findings:#?}"
    );
    assert!(findings[0].detail.contains("ipam release --pod-uid u-web"));
    assert_eq!(
        findings[0].key,
        format!("{}/ips/lan-100/10.230.0.33", s.f.prefix)
    );
}

#[tokio::test]
async fn check_accepts_a_held_sticky_reservation() {
    let s = site().await;
    let lan = s.alloc.get_subnet("lan-100").await.unwrap();
    let vm = owner("u-vm", "vm-1", "net1");
    let hold = static_macvlan_allocator::StickyHold {
        key: "default/vm-1".into(),
        hold: std::time::Duration::from_secs(300),
    };
    let r = s
        .alloc
        .reserve_sticky(
            &lan,
            &vm,
            static_macvlan_allocator::IpRequest::Auto,
            &static_macvlan_allocator::MacRequest::None,
            Some(&hold),
        )
        .await
        .unwrap();
    s.alloc.commit(&r).await.unwrap();
    s.alloc.release(&vm).await.unwrap();
    // The IP key stays (held for the key) without an owner entry: reported, not a problem.
    let r = check(&s, &["--no-api", "-o", "json"]);
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let held: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["finding"] == "held")
        .collect();
    assert_eq!(held.len(), 1, "{v}");
    assert_eq!(held[0]["severity"], "info");
    assert!(
        held[0]["detail"].as_str().unwrap().contains("default/vm-1"),
        "{v}"
    );
}
