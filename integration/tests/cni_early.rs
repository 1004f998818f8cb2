//! The early start of ADD: from the node's copy of the netconf's subnet, the plugin claims an
//! address and creates the pod's link before it has read anything, and keeps them only when
//! what it then reads and plans wants exactly that. Every way the guess can be wrong must end
//! as the ordinary ADD would: the planned address, no second reservation, no stray link.

mod cni_common;

use cni_common::*;
use serde_json::{json, Value};
use static_macvlan_allocator::{RangeConfig, State};

/// Whether the ADD's log says its reservation was the early claim.
fn claimed_early(run: &Run) -> bool {
    run.stderr
        .lines()
        .any(|l| l.contains("reserved (pending)") && l.contains("early=true"))
}

fn abandoned_early(run: &Run) -> bool {
    run.stderr.lines().any(|l| {
        l.contains("the early start does not fit the plan")
            || l.contains("the early claim does not fit the plan")
    })
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_string()
}

/// The kept copies of subnets in node 0's run dir.
fn kept_files(c: &Cluster) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(c.run_dir(0).join("subnets"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// One node, subnet `lan`, and one ADD done: the node keeps the subnet and has hints.
fn primed() -> (Cluster, Value) {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    c.cni(0, "ADD", &conf, &Pod::new("first"), "net1").ok();
    (c, conf)
}

/// The reservations of `p`.
fn held_by(c: &Cluster, p: &Pod) -> Vec<static_macvlan_allocator::Reservation> {
    c.reservations()
        .into_iter()
        .filter(|r| r.record.owner.pod_uid == p.uid)
        .collect()
}

#[test]
fn the_second_add_claims_early_and_the_result_is_the_same() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");

    // The first ADD of the node has nothing kept: the ordinary way, which keeps the subnet.
    let a = Pod::new("first");
    let ra = c.cni(0, "ADD", &conf, &a, "net1").ok();
    assert!(!claimed_early(&ra), "{}", ra.stderr);
    assert_eq!(kept_files(&c).len(), 1);

    let b = Pod::new("second");
    let rb = c.cni(0, "ADD", &conf, &b, "net1").ok();
    assert!(claimed_early(&rb), "{}", rb.stderr);
    let res = rb.json();
    let ip = ip_of(&res);
    assert_eq!(b.addresses("net1"), vec![ip.clone()]);
    assert_eq!(res["routes"], json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]));
    let held = c.reservation(&b, "net1").expect("reservation");
    assert_eq!(held.record.state, State::Committed);
    assert_eq!(format!("{}/24", held.record.ip), ip);
    assert_ne!(ip_of(&ra.json()), ip);
    assert_eq!(c.reservations().len(), 2, "{}", c.dump());
    assert_eq!(b.ns.link_names().unwrap(), ["lo", "net1"]);

    // A static request from CNI_ARGS needs no hint: claimed early too.
    let s = Pod::new("static");
    let rs = c
        .cni_env(
            0,
            "ADD",
            &conf,
            &s,
            "net1",
            &[("CNI_ARGS", &format!("{};IP=10.230.0.222", s.cni_args()))],
        )
        .ok();
    assert!(claimed_early(&rs), "{}", rs.stderr);
    assert_eq!(ip_of(&rs.json()), "10.230.0.222/24");

    // A new sandbox of the same pod: the early claim finds the attachment held, and the
    // ordinary reservation hands the address over.
    let mut b2 = Pod::new("second");
    b2.uid = b.uid.clone();
    let again = c.cni(0, "ADD", &conf, &b2, "net1").ok();
    assert!(!claimed_early(&again), "{}", again.stderr);
    assert_eq!(ip_of(&again.json()), ip);
    assert_eq!(c.reservations().len(), 3, "{}", c.dump());
}

#[test]
fn a_changed_subnet_is_not_claimed_against() {
    let (c, conf) = primed();

    // The operator moves the range: the kept copy (and every hint) is now of the old one.
    c.put_subnet("lan", |s| {
        s.ranges = vec![RangeConfig {
            start: "10.230.0.210".into(),
            end: "10.230.0.220".into(),
        }]
    });
    let p = Pod::new("after");
    let run = c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert!(!claimed_early(&run), "{}", run.stderr);
    let res = run.json();
    assert!(
        (210..=220).contains(&octet(&res)),
        "{} outside the new range",
        ip_of(&res)
    );
    assert_eq!(c.reservations().len(), 2, "{}", c.dump());

    // The ADD kept the new configuration: the next one claims early again, in the new range.
    let q = Pod::new("next");
    let run = c.cni(0, "ADD", &conf, &q, "net1").ok();
    assert!(claimed_early(&run), "{}", run.stderr);
    assert!((210..=220).contains(&octet(&run.json())));
}

#[test]
fn a_kept_copy_that_differs_from_etcd_costs_only_the_early_start() {
    let (c, conf) = primed();

    // Same revision, other content (a tampered or corrupted copy): the early claim goes
    // through, as etcd still has that revision, but the configuration read says otherwise.
    let files = kept_files(&c);
    assert_eq!(files.len(), 1);
    let mut kept: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let value = kept["subnet"]["value"].as_str().unwrap().to_string();
    let mut stored: Value = serde_json::from_str(&value).unwrap();
    stored["spec"]["gateway"] = json!("10.230.0.254");
    kept["subnet"]["value"] = json!(stored.to_string());
    std::fs::write(&files[0], kept.to_string()).unwrap();

    let p = Pod::new("after");
    let run = c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert!(claimed_early(&run), "{}", run.stderr);
    assert!(abandoned_early(&run), "{}", run.stderr);
    let res = run.json();
    assert_eq!(res["ips"][0]["gateway"], GATEWAY);
    assert_eq!(p.ns.link_names().unwrap(), ["lo", "net1"]);
    // One reservation for the pod, the one in the result: the early claim was given back.
    let mine = held_by(&c, &p);
    assert_eq!(mine.len(), 1, "{}", c.dump());
    assert_eq!(format!("{}/24", mine[0].record.ip), ip_of(&res));
    assert_eq!(c.reservations().len(), 2, "{}", c.dump());

    // A garbled copy: no early start, the ordinary ADD, and a good copy again.
    std::fs::write(&files[0], b"{garbage").unwrap();
    let q = Pod::new("garbled");
    let run = c.cni(0, "ADD", &conf, &q, "net1").ok();
    assert!(!claimed_early(&run), "{}", run.stderr);
    let again: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(again["subnet"]["name"], "lan");
}

#[test]
fn an_annotation_the_early_claim_could_not_know_wins() {
    let (c, conf) = primed();

    let p = Pod::new("annotated");
    c.put_pod_mirror(&p, &p.uid, &[], &[("static-ip", "10.230.0.150")]);
    let run = c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert!(claimed_early(&run), "{}", run.stderr);
    assert!(abandoned_early(&run), "{}", run.stderr);
    assert_eq!(ip_of(&run.json()), "10.230.0.150/24");
    let mine = held_by(&c, &p);
    assert_eq!(mine.len(), 1, "{}", c.dump());
    assert_eq!(mine[0].record.ip.to_string(), "10.230.0.150");
    assert_eq!(mine[0].record.state, State::Committed);
}

#[test]
fn a_denied_add_takes_back_the_early_claim_and_link() {
    let (c, conf) = primed();
    let before = c.reservations().len();

    c.put_rule(
        "no-blue",
        json!({"priority": 10, "match": "pod.name.startsWith(\"blue\")", "deny": {"message": "not here"}}),
    );
    let p = Pod::new("blue");
    let run = c.cni(0, "ADD", &conf, &p, "net1");
    assert_eq!(run.code(), 115, "{}", run.stdout);
    assert!(claimed_early(&run), "{}", run.stderr);
    assert_eq!(c.reservations().len(), before, "{}", c.dump());
    assert_eq!(p.ns.link_names().unwrap(), ["lo"]);
}
