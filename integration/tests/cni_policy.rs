//! The plugin's policy inputs, end to end (real binary, real etcd, real namespaces): the original
//! annotations from the pod mirror (and waiting for it), AllocationRules and subnet selectors.
//! Needs root.

mod cni_common;

use std::thread;
use std::time::{Duration, Instant};

use cni_common::*;
use serde_json::{json, Value};

/// Two subnets on the LAN: `a` hands out .10–.20, `b` .100–.110.
fn two_subnets(c: &Cluster) {
    c.put_subnet("a", |s| {
        s.ranges[0].start = "10.230.0.10".into();
        s.ranges[0].end = "10.230.0.20".into();
    });
    c.put_subnet("b", |s| {
        s.ranges[0].start = "10.230.0.100".into();
        s.ranges[0].end = "10.230.0.110".into();
    });
}

/// A netconf that names no subnet (rules or the vlan annotation choose).
fn no_subnet(c: &Cluster, wait: u64) -> Value {
    let mut conf = c.netconf("x", "1.1.0");
    conf.as_object_mut().unwrap().remove("subnet");
    conf["name"] = json!("net-policy");
    conf["podMirrorWaitSeconds"] = json!(wait);
    conf
}

#[test]
fn annotations_from_the_pod_mirror() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");

    // static-ip, static-mac and a vlan naming this netconf's subnet: honoured.
    let p = Pod::new("annotated");
    c.put_pod_mirror(
        &p,
        &p.uid,
        &[],
        &[
            ("static-ip", "10.230.0.61"),
            ("static-mac", "02:00:00:00:00:61"),
            ("vlan", "lan"),
        ],
    );
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert!(r.stderr.contains("annotation static-ip"), "{}", r.stderr);
    let r = r.json();
    assert_eq!(r["ips"][0]["address"], "10.230.0.61/24");
    assert_eq!(p.mac("net1"), "02:00:00:00:00:61");

    // `auto`: an address of the ranges.
    let p = Pod::new("auto");
    c.put_pod_mirror(&p, &p.uid, &[], &[("static-ip", "auto")]);
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    assert!((10..=200).contains(&octet(&r)) && octet(&r) != 61, "{r}");

    // runtimeConfig beats the annotation (an address outside the automatic range, which the
    // pod above cannot hold).
    let p = Pod::new("both");
    c.put_pod_mirror(&p, &p.uid, &[], &[("static-ip", "10.230.0.63")]);
    let mut conf_rc = conf.clone();
    conf_rc["runtimeConfig"] = json!({"ips": ["10.230.0.204/24"]});
    let r = c.cni(0, "ADD", &conf_rc, &p, "net1").ok().json();
    assert_eq!(r["ips"][0]["address"], "10.230.0.204/24");

    // A vlan annotation naming another subnet: the annotations are for another network.
    let p = Pod::new("other-net");
    c.put_pod_mirror(
        &p,
        &p.uid,
        &[],
        &[("static-ip", "10.230.0.62"), ("vlan", "elsewhere")],
    );
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    assert_ne!(r["ips"][0]["address"], "10.230.0.62/24");

    // Bad values: code 7 naming the annotation and the value; nothing reserved.
    for (k, v) in [
        ("static-ip", "10.230.0.300"),
        ("static-mac", "01:00:5e:00:00:01"),
    ] {
        let p = Pod::new("bad");
        c.put_pod_mirror(&p, &p.uid, &[], &[(k, v)]);
        let r = c.cni(0, "ADD", &conf, &p, "net1");
        assert_eq!(r.code(), 7, "{}", r.stdout);
        assert!(
            r.msg().contains(&format!("annotation {k}")) && r.msg().contains(v),
            "{}",
            r.msg()
        );
        assert!(c.reservation(&p, "net1").is_none());
    }

    // An annotated address outside the subnet: the allocator's error, naming it.
    let p = Pod::new("outside");
    c.put_pod_mirror(&p, &p.uid, &[], &[("static-ip", "10.99.0.5")]);
    let r = c.cni(0, "ADD", &conf, &p, "net1");
    assert!(r.exit != 0);
    assert!(c.reservation(&p, "net1").is_none());
}

#[test]
fn vlan_annotation_chooses_the_subnet_and_a_late_mirror_is_honoured() {
    let c = Cluster::new(1);
    two_subnets(&c);

    let p = Pod::new("vlan-b");
    c.put_pod_mirror(&p, &p.uid, &[], &[("vlan", "b")]);
    let r = c.cni(0, "ADD", &no_subnet(&c, 2), &p, "net1").ok().json();
    assert!((100..=110).contains(&octet(&r)), "{r}");
    assert_eq!(c.reservation(&p, "net1").unwrap().record.subnet, "b");

    // Written 600 ms after ADD started, inside the 3 s wait. The static address is one the
    // first pod did not get (its automatic one is any of .100–.110).
    let wanted = if octet(&r) == 105 { 106 } else { 105 };
    let p = Pod::new("late");
    let start = Instant::now();
    let r = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(600));
            c.put_pod_mirror(
                &p,
                &p.uid,
                &[],
                &[("vlan", "b"), ("static-ip", &format!("10.230.0.{wanted}"))],
            );
        });
        c.cni(0, "ADD", &no_subnet(&c, 3), &p, "net1")
    });
    let r = r.ok().json();
    assert_eq!(r["ips"][0]["address"], format!("10.230.0.{wanted}/24"));
    assert!(start.elapsed() >= Duration::from_millis(600));

    // No subnet anywhere and no mirror, wait 0: a clear error at once, nothing reserved.
    let p = Pod::new("nowhere");
    let start = Instant::now();
    let r = c.cni(0, "ADD", &no_subnet(&c, 0), &p, "net1");
    assert_eq!(r.code(), 7);
    assert!(r.msg().contains("subnet"), "{}", r.msg());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(c.reservation(&p, "net1").is_none());

    // ... and with a wait: the same error after it, saying it waited.
    let start = Instant::now();
    let r = c.cni(0, "ADD", &no_subnet(&c, 1), &p, "net1");
    assert_eq!(r.code(), 7);
    assert!(r.msg().contains("podMirrorWaitSeconds"), "{}", r.msg());
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[test]
fn a_missing_mirror_does_not_slow_a_netconf_with_a_subnet() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    // Default wait (2 s), no operator: nothing needs the mirror, so no waiting.
    let p = Pod::new("plain");
    let r = c.cni(0, "ADD", &c.netconf("lan", "1.1.0"), &p, "net1").ok();
    assert!(r.elapsed < Duration::from_millis(1500), "{:?}", r.elapsed);
}

#[test]
fn a_mirror_of_another_uid_is_waited_for_then_ignored() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let mut conf = c.netconf("lan", "1.1.0");
    conf["podMirrorWaitSeconds"] = json!(1);

    // A predecessor's record (same name, old UID) that is never replaced: ignored after 1 s.
    let p = Pod::new("web-0");
    c.put_pod_mirror(&p, "uid-old", &[], &[("static-ip", "10.230.0.71")]);
    let start = Instant::now();
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    assert_ne!(r["ips"][0]["address"], "10.230.0.71/24");
    assert!(start.elapsed() >= Duration::from_secs(1));
    c.cni(0, "DEL", &conf, &p, "net1").ok();

    // Replaced by this pod's record within the wait: honoured.
    let p = Pod::new("web-1");
    c.put_pod_mirror(&p, "uid-old", &[], &[("static-ip", "10.230.0.71")]);
    let (uid, name, ns) = (p.uid.clone(), p.name.clone(), p.namespace.clone());
    let key = c.alloc.keys().pod(&ns, &name);
    let r = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(300));
            let rec = json!({"uid": uid, "annotations": {"static-ip": "10.230.0.72"}});
            c.etcd.etcdctl(&["put", &key, &rec.to_string()]).unwrap();
        });
        c.cni(0, "ADD", &conf, &p, "net1")
    });
    assert_eq!(r.ok().json()["ips"][0]["address"], "10.230.0.72/24");
}

#[test]
fn rules_choose_in_priority_order_and_log_why() {
    let c = Cluster::new(1);
    two_subnets(&c);
    c.put_rule(
        "a-low",
        json!({"priority": 1, "match": "true", "subnet": "a"}),
    );
    c.put_rule(
        "b-high",
        json!({"priority": 10, "match": "pod.namespace == \"default\"", "subnet": "b"}),
    );
    // Same priority as b-high: ties go by name, b-high first.
    c.put_rule(
        "c-tie",
        json!({"priority": 10, "match": "true", "subnet": "a"}),
    );
    let p = Pod::new("ordered");
    let r = c.cni(0, "ADD", &no_subnet(&c, 2), &p, "net1").ok();
    assert!(r.stderr.contains("b-high"), "{}", r.stderr);
    assert!((100..=110).contains(&octet(&r.json())));

    // Another namespace: b-high does not match, c-tie (priority 10) beats a-low.
    let mut q = Pod::new("other-ns");
    q.namespace = "team".into();
    let r = c.cni(0, "ADD", &no_subnet(&c, 2), &q, "net1").ok();
    assert!(r.stderr.contains("c-tie"), "{}", r.stderr);
    assert!((10..=20).contains(&octet(&r.json())));
}

#[test]
fn rule_subnets_fall_back_when_the_first_is_full() {
    let c = Cluster::new(1);
    c.put_subnet("tiny", |s| {
        s.ranges[0].start = "10.230.0.10".into();
        s.ranges[0].end = "10.230.0.11".into();
    });
    c.put_subnet("big", |s| {
        s.ranges[0].start = "10.230.0.100".into();
        s.ranges[0].end = "10.230.0.110".into();
    });
    c.put_rule(
        "spill",
        json!({"match": "true", "subnets": ["tiny", "big"]}),
    );
    let conf = no_subnet(&c, 0);
    let mut subnets = Vec::new();
    for i in 0..3 {
        let p = Pod::new(&format!("spill-{i}"));
        c.cni(0, "ADD", &conf, &p, "net1").ok();
        subnets.push(c.reservation(&p, "net1").unwrap().record.subnet);
    }
    assert_eq!(subnets, ["tiny", "tiny", "big"]);
    // DEL of a netconf without a subnet: the record names it.
    let p = Pod::new("spill-del");
    c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert_eq!(c.reservation(&p, "net1").unwrap().record.subnet, "big");
    c.cni(0, "DEL", &conf, &p, "net1").ok();
    assert!(c.reservation(&p, "net1").is_none());
}

#[test]
fn rule_computes_ip_and_mac_from_the_statefulset_ordinal() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    c.put_rule(
        "ordinal",
        json!({
            "priority": 5,
            "match": "pod.name.startsWith(\"web-\")",
            "ip": "\"10.230.0.\" + string(100 + int(pod.name.split(\"-\")[size(pod.name.split(\"-\")) - 1]))",
            "mac": "\"02:00:0a:e6:00:0\" + pod.name.split(\"-\")[1]",
        }),
    );
    let p = Pod::new("web-7");
    let r = c.cni(0, "ADD", &c.netconf("lan", "1.1.0"), &p, "net1").ok();
    assert!(r.stderr.contains("ordinal"), "{}", r.stderr);
    let r = r.json();
    assert_eq!(r["ips"][0]["address"], "10.230.0.107/24");
    assert_eq!(p.mac("net1"), "02:00:0a:e6:00:07");
    // Not matching: automatic.
    let q = Pod::new("db-3");
    let r = c
        .cni(0, "ADD", &c.netconf("lan", "1.1.0"), &q, "net1")
        .ok()
        .json();
    assert_ne!(r["ips"][0]["address"], "10.230.0.103/24");
}

#[test]
fn deny_fails_with_the_rule_and_its_message() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    c.put_rule(
        "no-guests",
        json!({"priority": 100, "match": "pod.namespace == \"guest\"", "deny": {"message": "guests stay off the LAN"}}),
    );
    let mut p = Pod::new("visitor");
    p.namespace = "guest".into();
    let r = c.cni(0, "ADD", &c.netconf("lan", "1.1.0"), &p, "net1");
    assert_eq!(r.code(), 115, "{}", r.stdout);
    assert!(
        r.msg().contains("no-guests") && r.msg().contains("guests stay off the LAN"),
        "{}",
        r.msg()
    );
    assert!(c.reservation(&p, "net1").is_none());
    // Others pass.
    c.cni(
        0,
        "ADD",
        &c.netconf("lan", "1.1.0"),
        &Pod::new("resident"),
        "net1",
    )
    .ok();
}

#[test]
fn selector_blocks_a_static_request() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |s| {
        s.selector = Some(
            "attachment.ip == \"\" || cidr(\"10.230.0.0/25\").containsIP(attachment.ip)".into(),
        )
    });
    let conf = c.netconf("lan", "1.1.0");
    let p = Pod::new("high");
    let mut high = conf.clone();
    high["runtimeConfig"] = json!({"ips": ["10.230.0.150/24"]});
    let r = c.cni(0, "ADD", &high, &p, "net1");
    assert_eq!(r.code(), 116, "{}", r.stdout);
    assert!(
        r.msg().contains("\"lan\"") && r.msg().contains("10.230.0.150"),
        "{}",
        r.msg()
    );
    assert!(c.reservation(&p, "net1").is_none());

    // The same for a request from the annotation.
    let p = Pod::new("high-annotated");
    c.put_pod_mirror(&p, &p.uid, &[], &[("static-ip", "10.230.0.151")]);
    assert_eq!(c.cni(0, "ADD", &conf, &p, "net1").code(), 116);

    let mut low = conf.clone();
    low["runtimeConfig"] = json!({"ips": ["10.230.0.50/24"]});
    let r = c.cni(0, "ADD", &low, &Pod::new("low"), "net1").ok().json();
    assert_eq!(r["ips"][0]["address"], "10.230.0.50/24");
    c.cni(0, "ADD", &conf, &Pod::new("auto"), "net1").ok();
}

#[test]
fn label_rules_wait_for_the_mirror_and_fail_clearly_without_it() {
    let c = Cluster::new(1);
    two_subnets(&c);
    c.put_rule(
        "db-by-label",
        json!({"priority": 10, "match": "pod.labels[?\"app\"].orValue(\"\") == \"db\"", "subnet": "b"}),
    );
    c.put_rule(
        "rest",
        json!({"priority": 0, "match": "true", "subnet": "a"}),
    );

    // Absent: 118 after the wait, naming the rule; nothing reserved.
    let p = Pod::new("db-0");
    let start = Instant::now();
    let r = c.cni(0, "ADD", &no_subnet(&c, 1), &p, "net1");
    assert_eq!(r.code(), 118, "{}", r.stdout);
    assert!(r.msg().contains("db-by-label"), "{}", r.msg());
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(c.reservation(&p, "net1").is_none());
    assert!(c.reservations().is_empty(), "{}", c.dump());

    // Present: decided by the label.
    c.put_pod_mirror(&p, &p.uid, &[("app", "db")], &[]);
    let r = c.cni(0, "ADD", &no_subnet(&c, 1), &p, "net1").ok().json();
    assert!((100..=110).contains(&octet(&r)), "{r}");

    // Late: honoured within the wait.
    let q = Pod::new("web-0");
    let key = c.alloc.keys().pod(&q.namespace, &q.name);
    let uid = q.uid.clone();
    let r = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(400));
            let rec = json!({"uid": uid, "labels": {"app": "web"}});
            c.etcd.etcdctl(&["put", &key, &rec.to_string()]).unwrap();
        });
        c.cni(0, "ADD", &no_subnet(&c, 3), &q, "net1")
    });
    assert!((10..=20).contains(&octet(&r.ok().json())));
}

#[test]
fn rules_on_namespace_only_need_no_mirror() {
    // The API-down path: no operator, no pod mirror; rules decide from CNI_ARGS.
    let c = Cluster::new(1);
    two_subnets(&c);
    c.put_rule(
        "by-namespace",
        json!({"priority": 10, "match": "pod.namespace == \"default\"", "subnet": "b"}),
    );
    // A lower rule reading labels is never reached, so it does not need the mirror either.
    c.put_rule(
        "by-label",
        json!({"priority": 0, "match": "pod.labels[?\"x\"].orValue(\"\") == \"y\"", "subnet": "a"}),
    );
    let p = Pod::new("fast");
    let r = c.cni(0, "ADD", &no_subnet(&c, 5), &p, "net1").ok();
    assert!(r.elapsed < Duration::from_millis(1500), "{:?}", r.elapsed);
    assert!((100..=110).contains(&octet(&r.json())));
}

#[test]
fn an_invalid_rule_in_etcd_fails_adds_naming_it() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    c.put_rule(
        "broken",
        json!({"match": "pod.nmae == \"x\"", "subnet": "lan"}),
    );
    let p = Pod::new("victim");
    let r = c.cni(0, "ADD", &c.netconf("lan", "1.1.0"), &p, "net1");
    assert_eq!(r.code(), 117, "{}", r.stdout);
    assert!(r.msg().contains("broken"), "{}", r.msg());
    assert!(c.reservation(&p, "net1").is_none());

    // `"rules": false` in the netconf ignores them.
    let mut conf = c.netconf("lan", "1.1.0");
    conf["rules"] = json!(false);
    c.cni(0, "ADD", &conf, &p, "net1").ok();
}

/// The node keeps what an ADD compiled for the next one (in the run dir), and reuses a compiled
/// rule only for the very spec it was compiled from: a rule changed in etcd decides at once, and
/// a broken one written by hand fails every ADD naming it, cached set or not.
#[test]
fn compiled_rules_are_cached_on_the_node_and_never_stand_in_for_another_spec() {
    let c = Cluster::new(1);
    two_subnets(&c);
    c.put_rule(
        "to-a",
        json!({"priority": 1, "match": "true", "subnet": "a"}),
    );
    c.put_rule(
        "team-to-b",
        json!({"priority": 5, "match": "pod.namespace == \"team\"", "subnet": "b"}),
    );
    let conf = no_subnet(&c, 0);
    let add = |name: &str| c.cni(0, "ADD", &conf, &Pod::new(name), "net1");

    let r = add("first").ok();
    assert!(r.stderr.contains("reused=0 compiled=2"), "{}", r.stderr);
    assert!((10..=20).contains(&octet(&r.json())));
    // Rules unchanged since (their count and newest revision, read in the first round trip):
    // the compiled set comes from the cache alone, without reading the rules.
    let r = add("second").ok();
    assert!(
        r.stderr.contains("rules from the cache, unchanged in etcd"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("compiled rules"), "{}", r.stderr);
    assert!((10..=20).contains(&octet(&r.json())));

    c.put_rule(
        "to-a",
        json!({"priority": 1, "match": "true", "subnet": "b"}),
    );
    let r = add("third").ok();
    assert!(
        r.stderr.contains("rule cache not for the rules in etcd"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("reused=1 compiled=1"), "{}", r.stderr);
    assert!((100..=110).contains(&octet(&r.json())), "{}", r.stderr);

    c.put_rule(
        "broken",
        json!({"priority": 9, "match": "pod.nmae == \"x\"", "subnet": "a"}),
    );
    for name in ["fourth", "fifth"] {
        let p = Pod::new(name);
        let r = c.cni(0, "ADD", &conf, &p, "net1");
        assert_eq!(r.code(), 117, "{}", r.stdout);
        assert!(r.msg().contains("AllocationRule \"broken\""), "{}", r.msg());
        assert!(r.msg().contains("undefined field 'nmae'"), "{}", r.msg());
        assert!(c.reservation(&p, "net1").is_none());
    }
    c.etcd
        .etcdctl(&["del", &c.alloc.keys().rule("broken")])
        .expect("delete rule");
    // Back to the very rules the cache was written for: a hit again.
    let r = add("sixth").ok();
    assert!(
        r.stderr.contains("rules from the cache, unchanged in etcd"),
        "{}",
        r.stderr
    );
    assert!((100..=110).contains(&octet(&r.json())));
}

#[test]
fn sticky_rule_keeps_the_address_across_re_creation() {
    let c = Cluster::new(1);
    c.put_macpool("vms", "02:10:00:00:00:00", "02:10:00:00:00:ff");
    c.put_subnet("lan", |s| s.mac_pool = Some("vms".into()));
    c.put_rule(
        "vm-sticky",
        json!({"match": "pod.name.startsWith(\"vm-\")", "sticky": {"holdSeconds": 3}}),
    );
    let conf = c.netconf("lan", "1.1.0");
    let old = Pod::new("vm-a");
    let r = c.cni(0, "ADD", &conf, &old, "net1").ok();
    assert!(r.stderr.contains("sticky key"), "{}", r.stderr);
    let (ip, mac) = (r.json()["ips"][0]["address"].clone(), old.mac("net1"));
    c.cni(0, "DEL", &conf, &old, "net1").ok();

    // Re-created with a new UID inside the hold time: the same IP and MAC.
    let new = Pod::new("vm-a");
    let r = c.cni(0, "ADD", &conf, &new, "net1").ok().json();
    assert_eq!(r["ips"][0]["address"], ip);
    assert_eq!(new.mac("net1"), mac);
    // A late DEL for the old UID frees nothing.
    c.cni(0, "DEL", &conf, &old, "net1").ok();
    assert!(c.reservation(&new, "net1").is_some());

    // Held after DEL, then freed once the hold has passed.
    c.cni(0, "DEL", &conf, &new, "net1").ok();
    let addr: std::net::IpAddr = ip
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let holder = || {
        c.rt.block_on(c.alloc.holder_of_ip("lan", addr))
            .expect("read ip")
    };
    assert_eq!(
        holder().map(|r| r.record.state),
        Some(static_macvlan_allocator::State::Held),
        "{}",
        c.dump()
    );
    assert!(
        eventually(Duration::from_secs(10), || holder().is_none()),
        "{}",
        c.dump()
    );
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// ADD p50 with 100 rules (only the last matches) minus ADD p50 with none, same run: two
/// prefixes in one etcd, identical but for the rules, ADDs alternating between them. Run on a
/// release plugin: `cargo build --release -p static-macvlan-cni && STATIC_MACVLAN_PLUGIN=
/// $PWD/target/release/static-macvlan cargo test -p static-macvlan-integration --test cni_policy
/// bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture, ideally on a release plugin"]
fn bench_add_with_100_rules() {
    use static_macvlan_allocator::{
        Allocator, EtcdConfig, Mirrored, Options, RangeConfig, SubnetConfig,
    };
    let c = Cluster::with_etcd_in_node0(1);
    c.put_subnet("lan", |s| s.ranges[0].end = "10.230.0.120".into());
    // The prefix without rules: the same subnet, other addresses.
    let mut cfg = EtcdConfig::new(c.etcd.endpoints());
    cfg.prefix = c.etcd.fresh_prefix();
    let bare =
        c.rt.block_on(Allocator::connect(&cfg, Options::default()))
            .unwrap();
    c.rt.block_on(bare.put_subnet(&Mirrored {
        name: "lan".into(),
        uid: None,
        generation: Some(1),
        spec: SubnetConfig {
            master: "eth0".into(),
            cidr: LAN_CIDR.into(),
            gateway: Some(GATEWAY.into()),
            ranges: vec![RangeConfig {
                start: "10.230.0.130".into(),
                end: "10.230.0.240".into(),
            }],
            ..Default::default()
        },
    }))
    .unwrap();
    for i in 0..100 {
        let m = if i == 99 {
            "true".to_string()
        } else {
            format!("pod.namespace == \"ns-{i}\" && pod.name.startsWith(\"x\")")
        };
        c.put_rule(
            &format!("rule-{i:03}"),
            json!({"priority": 1000 - i, "match": m, "subnet": "lan"}),
        );
    }
    let with_rules = c.netconf("lan", "1.1.0");
    let mut without = with_rules.clone();
    without["etcd"]["prefix"] = json!(cfg.prefix);
    let add = |conf: &Value, i: usize| -> Duration {
        let p = Pod::new(&format!("bench-{i}"));
        let r = c.cni(0, "ADD", conf, &p, "net1").ok();
        c.cni(0, "DEL", conf, &p, "net1").ok();
        r.elapsed
    };
    for i in 0..10 {
        add(&with_rules, i);
        add(&without, i);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..300 {
        a.push(add(&with_rules, i));
        b.push(add(&without, i));
    }
    let (a, b) = (p50(a), p50(b));
    println!(
        "ADD p50 with 100 rules: {:.2} ms, without: {:.2} ms, difference: {:.2} ms",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        (a.as_secs_f64() - b.as_secs_f64()) * 1e3
    );
}
