//! The plugin binary run as a runtime runs it: ADD, CHECK, DEL, GC, STATUS, VERSION against a
//! real etcd and real namespaces (two nodes on a bridge "switch", pods in namespaces of their
//! own). Needs root.

mod cni_common;

use std::time::{Duration, Instant};

use cni_common::*;
use serde_json::{json, Value};
use static_macvlan_allocator::State;

#[test]
fn version_lists_supported_versions() {
    let c = Cluster::new(1);
    let run = c
        .cni_nopod(0, "VERSION", &json!({"cniVersion": "1.1.0"}))
        .ok();
    assert_eq!(
        run.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // VERSION needs nothing else, not even a readable netconf.
    let run = c.cni_nopod(0, "VERSION", &json!("")).ok();
    assert_eq!(run.json()["cniVersion"], "1.1.0");
}

#[test]
fn add_auto_and_static_then_ping_across_nodes() {
    let c = Cluster::new(2);
    c.put_subnet("lan", |s| {
        s.dns = Some(static_macvlan_allocator::DnsConfig {
            nameservers: vec!["10.230.0.53".into()],
            ..Default::default()
        })
    });
    let conf = c.netconf("lan", "1.1.0");

    let a = Pod::new("auto");
    let ra = c.cni(0, "ADD", &conf, &a, "net1").ok().json();
    let addr_a = ra["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["name"], "net1");
    assert_eq!(
        ra["interfaces"][0]["sandbox"],
        a.ns.path().display().to_string()
    );
    assert_eq!(ra["ips"][0]["gateway"], GATEWAY);
    assert_eq!(ra["ips"][0]["interface"], 0);
    assert!(ra["ips"][0].get("version").is_none());
    assert_eq!(ra["routes"], json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}]));
    assert_eq!(ra["dns"], json!({"nameservers": ["10.230.0.53"]}));
    assert_eq!(a.addresses("net1"), vec![addr_a.clone()]);
    assert_eq!(a.mac("net1"), ra["interfaces"][0]["mac"].as_str().unwrap());

    // Static, outside the automatic range (.10–.200), so pod a cannot hold it already.
    let b = Pod::new("static");
    let mut conf_b = conf.clone();
    conf_b["runtimeConfig"] = json!({"ips": ["10.230.0.207/24"], "mac": "02:aa:bb:cc:dd:01"});
    let rb = c.cni(1, "ADD", &conf_b, &b, "net1").ok().json();
    assert_eq!(rb["ips"][0]["address"], "10.230.0.207/24");
    assert_eq!(rb["interfaces"][0]["mac"], "02:aa:bb:cc:dd:01");
    assert_eq!(b.addresses("net1"), vec!["10.230.0.207/24"]);
    assert_eq!(b.mac("net1"), "02:aa:bb:cc:dd:01");

    let res = c.reservation(&b, "net1").expect("reservation of b");
    assert_eq!(res.record.state, State::Committed);
    assert_eq!(res.record.owner.node, "node-1");
    assert_eq!(res.record.mac.unwrap().to_string(), "02:aa:bb:cc:dd:01");

    let ip_a = addr_a.split('/').next().unwrap();
    assert!(
        a.ns.ping("10.230.0.207"),
        "pod a (node 0) cannot reach pod b (node 1)"
    );
    assert!(
        b.ns.ping(ip_a),
        "pod b (node 1) cannot reach pod a (node 0)"
    );
}

#[test]
fn static_request_from_cni_args() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.0.0");
    let p = Pod::new("args");
    let args = format!("{};IP=10.230.0.88/24;MAC=02:00:00:00:00:88", p.cni_args());
    let r = c
        .cni_env(0, "ADD", &conf, &p, "net1", &[("CNI_ARGS", &args)])
        .ok()
        .json();
    assert_eq!(r["ips"][0]["address"], "10.230.0.88/24");
    assert_eq!(p.mac("net1"), "02:00:00:00:00:88");
}

#[test]
fn results_follow_the_config_version() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .into_iter()
        .enumerate()
    {
        let p = Pod::new("ver");
        let conf = c.netconf("lan", v);
        let r = c.cni(0, "ADD", &conf, &p, &format!("net{i}")).ok().json();
        assert_eq!(r["cniVersion"], v);
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["cniVersion", "dns", "interfaces", "ips", "routes"],
            "{v}"
        );
        if v.starts_with('0') {
            assert_eq!(r["ips"][0]["version"], "4", "{v}");
        } else {
            assert!(r["ips"][0].get("version").is_none(), "{v}");
        }
        c.cni(0, "DEL", &conf, &p, &format!("net{i}")).ok();
    }
}

#[test]
fn mac_pool_and_several_attachments_per_pod() {
    let c = Cluster::new(1);
    c.put_macpool("vms", "02:10:00:00:00:00", "02:10:00:00:00:ff");
    c.put_subnet("lan", |s| s.mac_pool = Some("vms".into()));
    c.put_subnet("lan2", |s| {
        s.cidr = "10.231.0.0/24".into();
        s.gateway = None;
        s.ranges = vec![];
    });
    let p = Pod::new("multi");
    let r1 = c
        .cni(0, "ADD", &c.netconf("lan", "1.1.0"), &p, "net1")
        .ok()
        .json();
    let r2 = c
        .cni(0, "ADD", &c.netconf("lan2", "1.1.0"), &p, "net2")
        .ok()
        .json();
    assert!(r1["interfaces"][0]["mac"]
        .as_str()
        .unwrap()
        .starts_with("02:10:00:00:00:"));
    assert!(r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.231.0."));
    assert_eq!(r2["routes"], json!([]), "no gateway, no default route");
    assert!(p.ns.has_link("net1").unwrap() && p.ns.has_link("net2").unwrap());
    c.cni(0, "DEL", &c.netconf("lan", "1.1.0"), &p, "net1").ok();
    assert!(!p.ns.has_link("net1").unwrap() && p.ns.has_link("net2").unwrap());
    assert!(c.reservation(&p, "net1").is_none() && c.reservation(&p, "net2").is_some());
}

#[test]
fn check_passes_then_fails_when_the_address_is_removed() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |s| {
        s.routes = vec![static_macvlan_allocator::RouteConfig {
            dst: "192.168.50.0/24".into(),
            gw: Some("10.230.0.2".into()),
        }]
    });
    let conf = c.netconf("lan", "1.1.0");
    let p = Pod::new("check");
    let result = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    assert_eq!(
        result["routes"][1],
        json!({"dst": "192.168.50.0/24", "gw": "10.230.0.2"})
    );
    let checked = with_prev(&conf, &result);
    c.cni(0, "CHECK", &checked, &p, "net1").ok();

    // Without prevResult CHECK cannot work.
    assert_eq!(c.cni(0, "CHECK", &conf, &p, "net1").code(), 7);

    // A MAC that differs from prevResult.
    let mut other = result.clone();
    other["interfaces"][0]["mac"] = json!("02:00:00:00:00:01");
    let run = c.cni(0, "CHECK", &with_prev(&conf, &other), &p, "net1");
    assert_eq!(run.code(), 110);
    assert!(run.msg().contains("mac"), "{}", run.msg());

    // The address removed (which takes the routes through it along).
    let addr = result["ips"][0]["address"].as_str().unwrap();
    p.ns.ip(&["addr", "del", addr, "dev", "net1"]).unwrap();
    let run = c.cni(0, "CHECK", &checked, &p, "net1");
    assert_eq!(run.code(), 110, "{}", run.stdout);
    assert!(run.msg().contains(addr), "{}", run.msg());

    // A route removed.
    let q = Pod::new("check2");
    let result = c.cni(0, "ADD", &conf, &q, "net1").ok().json();
    let checked = with_prev(&conf, &result);
    q.ns.ip(&["route", "del", "192.168.50.0/24"]).unwrap();
    let run = c.cni(0, "CHECK", &checked, &q, "net1");
    assert_eq!(run.code(), 110);
    assert!(run.msg().contains("192.168.50.0/24"), "{}", run.msg());

    // No reservation in etcd: CHECK fails even though the interface is fine.
    let r = Pod::new("check3");
    let result = c.cni(0, "ADD", &conf, &r, "net1").ok().json();
    let checked = with_prev(&conf, &result);
    c.cni(0, "CHECK", &checked, &r, "net1").ok();
    let res = c.reservation(&r, "net1").unwrap();
    c.rt.block_on(c.alloc.release_exact(&res)).unwrap();
    let run = c.cni(0, "CHECK", &checked, &r, "net1");
    assert_eq!(run.code(), 110);
    assert!(run.msg().contains("no reservation"), "{}", run.msg());

    // The namespace gone: the container is unknown.
    static_macvlan_testkit::netns::run("ip", &["netns", "del", r.ns.name()]).unwrap();
    assert_eq!(c.cni(0, "CHECK", &checked, &r, "net1").code(), 3);
    static_macvlan_testkit::netns::run("ip", &["netns", "add", r.ns.name()]).unwrap();
}

#[test]
fn del_is_idempotent_and_survives_a_missing_netns() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    let p = Pod::new("del");
    c.cni(0, "ADD", &conf, &p, "net1").ok();
    let before = c.reservations().len();
    assert_eq!(before, 1);

    let run = c.cni(0, "DEL", &conf, &p, "net1").ok();
    assert!(
        run.stdout.trim().is_empty(),
        "DEL prints nothing: {}",
        run.stdout
    );
    assert!(!p.ns.has_link("net1").unwrap());
    assert!(c.reservations().is_empty(), "{}", c.dump());
    c.cni(0, "DEL", &conf, &p, "net1").ok();

    // The namespace already gone (path absent), and CNI_NETNS not given at all.
    let q = Pod::new("gone");
    c.cni(0, "ADD", &conf, &q, "net1").ok();
    let path = q.ns.path().display().to_string();
    static_macvlan_testkit::netns::run("ip", &["netns", "del", q.ns.name()]).unwrap();
    let run = c.cni(0, "DEL", &conf, &q, "net1").ok();
    assert!(run.stdout.trim().is_empty());
    assert!(c.reservations().is_empty(), "{}", c.dump());
    c.cni_env(0, "DEL", &conf, &q, "net1", &[("CNI_NETNS", "")])
        .ok();
    // Re-create so that the Pod's drop finds something to delete.
    static_macvlan_testkit::netns::run("ip", &["netns", "add", q.ns.name()]).unwrap();
    assert_eq!(q.ns.path().display().to_string(), path);
}

#[test]
fn del_removes_what_a_killed_add_left_and_only_that() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    let node = &c.lan.node(0);
    let ip = |args: &[&str]| static_macvlan_testkit::netns::run("ip", args).unwrap();
    // In the pod: its attachment, a macvlan under a temporary name (down, as a killed ADD leaves
    // it), and one that looks temporary but is up, which ADD never leaves behind.
    let p = Pod::new("leftover");
    c.cni(0, "ADD", &conf, &p, "net1").ok();
    for name in ["smv0123abcd", "smv89abcdef"] {
        ip(&[
            "-n",
            node.ns.name(),
            "link",
            "add",
            name,
            "link",
            &node.nic,
            "type",
            "macvlan",
        ]);
        ip(&[
            "-n",
            node.ns.name(),
            "link",
            "set",
            name,
            "netns",
            p.ns.name(),
        ]);
    }
    ip(&["-n", p.ns.name(), "link", "set", "smv89abcdef", "up"]);

    c.cni(0, "DEL", &conf, &p, "net1").ok();
    assert_eq!(p.ns.link_names().unwrap(), ["lo", "smv89abcdef"]);
    assert!(c.reservations().is_empty(), "{}", c.dump());

    // A link named after the attachment that is not a macvlan is not ours: DEL leaves it.
    let q = Pod::new("foreign");
    ip(&[
        "-n",
        q.ns.name(),
        "link",
        "add",
        "net1",
        "type",
        "veth",
        "peer",
        "name",
        "peer1",
    ]);
    c.cni(0, "DEL", &conf, &q, "net1").ok();
    assert!(q.ns.has_link("net1").unwrap());
}

#[test]
fn stale_del_frees_nothing() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    let old = Pod::new("web-0");
    let r_old = c.cni(0, "ADD", &conf, &old, "net1").ok().json();

    // The pod's sandbox is re-created: same pod UID, new container, new namespace. It keeps
    // its address.
    let mut new = Pod::new("web-0");
    new.uid = old.uid.clone();
    let r_new = c.cni(0, "ADD", &conf, &new, "net1").ok().json();
    assert_eq!(r_new["ips"][0]["address"], r_old["ips"][0]["address"]);

    // The runtime now deletes the old sandbox: its link goes, the reservation stays.
    c.cni(0, "DEL", &conf, &old, "net1").ok();
    let res = c.reservation(&new, "net1").expect("reservation kept");
    assert_eq!(res.record.owner.container_id, new.container_id);
    assert!(new.ns.has_link("net1").unwrap());

    c.cni(0, "DEL", &conf, &new, "net1").ok();
    assert!(c.reservations().is_empty(), "{}", c.dump());
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    let c = Cluster::new(2);
    c.put_subnet("lan", |_| {});
    c.put_subnet("other", |s| {
        s.cidr = "10.231.0.0/24".into();
        s.gateway = None;
        s.ranges = vec![];
    });
    let conf = c.netconf("lan", "1.1.0");
    let keep = Pod::new("keep");
    let gone1 = Pod::new("gone1");
    let gone2 = Pod::new("gone2");
    let elsewhere = Pod::new("elsewhere");
    let other_net = Pod::new("othernet");
    for p in [&keep, &gone1, &gone2] {
        c.cni(0, "ADD", &conf, p, "net1").ok();
    }
    c.cni(1, "ADD", &conf, &elsewhere, "net1").ok();
    c.cni(0, "ADD", &c.netconf("other", "1.1.0"), &other_net, "net1")
        .ok();
    // A second network on the same subnet (two NADs naming one VlanSubnet): GC of the first
    // must leave its attachments alone.
    let mut sibling = c.netconf("lan", "1.1.0");
    sibling["name"] = json!("net-lan-sibling");
    let sibling_pod = Pod::new("sibling");
    c.cni(0, "ADD", &sibling, &sibling_pod, "net2").ok();
    assert_eq!(c.reservations().len(), 6);

    // GC needs the list.
    assert_eq!(c.cni_nopod(0, "GC", &conf).code(), 7);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": keep.container_id, "ifname": "net1"},
        {"containerID": "somebody-else", "ifname": "eth0"},
    ]);
    c.cni_nopod(0, "GC", &gc).ok();
    let left: Vec<String> = c
        .reservations()
        .iter()
        .map(|r| r.record.owner.pod.clone())
        .collect();
    let mut left_sorted = left.clone();
    left_sorted.sort();
    assert_eq!(
        left_sorted,
        ["elsewhere", "keep", "othernet", "sibling"],
        "{}",
        c.dump()
    );

    // The older key name works as well, and GC is idempotent.
    let mut gc2 = conf.clone();
    gc2["cni.dev/attachments"] = json!([{"containerID": keep.container_id, "ifname": "net1"}]);
    c.cni_nopod(0, "GC", &gc2).ok();
    assert_eq!(c.reservations().len(), 4);
}

#[test]
fn status_up_schema_unknown_and_down() {
    let mut c = Cluster::new(1);
    let conf = c.netconf("lan", "1.1.0");
    c.cni_nopod(0, "STATUS", &conf).ok();

    let mut unknown = conf.clone();
    unknown["etcd"]["prefix"] = json!(c.etcd.fresh_prefix());
    let run = c.cni_nopod(0, "STATUS", &unknown);
    assert_eq!(run.code(), 50, "{}", run.stdout);
    assert!(run.msg().contains("schema"), "{}", run.msg());

    c.etcd.stop();
    let run = c.cni_nopod(0, "STATUS", &conf);
    assert_eq!(run.code(), 50, "{}", run.stdout);
    assert!(
        run.elapsed < Duration::from_secs(5),
        "STATUS took {:?}",
        run.elapsed
    );
    c.etcd.restart().unwrap();
    assert!(eventually(Duration::from_secs(10), || c
        .cni_nopod(0, "STATUS", &conf)
        .exit
        == 0));
}

#[test]
fn add_with_etcd_down_fails_fast_and_leaves_nothing() {
    let mut c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    c.etcd.stop();
    let p = Pod::new("down");
    let start = Instant::now();
    let run = c.cni(0, "ADD", &conf, &p, "net1");
    assert_eq!(run.code(), 11, "{}", run.stdout);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "ADD took {:?}",
        start.elapsed()
    );
    assert!(!p.ns.has_link("net1").unwrap());
    assert_eq!(p.ns.link_names().unwrap(), ["lo"]);

    // DEL with etcd down asks to be retried (the reservation may exist).
    assert_eq!(c.cni(0, "DEL", &conf, &p, "net1").code(), 11);

    c.etcd.restart().unwrap();
    assert!(c.reservations().is_empty());
    c.cni(0, "ADD", &conf, &p, "net1").ok();
    c.cni(0, "DEL", &conf, &p, "net1").ok();
}

#[test]
fn failures_after_reserve_leave_nothing() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");

    // The interface name is already taken in the pod: no reservation may survive.
    let p = Pod::new("taken-ifname");
    p.ns.ip(&["link", "add", "net1", "type", "veth", "peer", "name", "x1"])
        .unwrap();
    let run = c.cni(0, "ADD", &conf, &p, "net1");
    assert_eq!(run.code(), 111, "{}", run.stdout);
    assert!(c.reservations().is_empty(), "{}", c.dump());

    // A static address someone else holds: the holder is named.
    let a = Pod::new("holder");
    c.cni(0, "ADD", &conf, &a, "net1").ok();
    let held = c.reservation(&a, "net1").unwrap().record.ip.to_string();
    let b = Pod::new("wants-it");
    let mut want = conf.clone();
    want["runtimeConfig"] = json!({"ips": [held]});
    let run = c.cni(0, "ADD", &want, &b, "net1");
    assert_eq!(run.code(), 100, "{}", run.stdout);
    assert!(run.msg().contains("holder"), "{}", run.msg());
    assert_eq!(b.ns.link_names().unwrap(), ["lo"]);

    // Outside the subnet, and the gateway.
    for ip in ["10.99.0.5", GATEWAY] {
        want["runtimeConfig"] = json!({"ips": [ip]});
        assert_eq!(c.cni(0, "ADD", &want, &b, "net1").code(), 105, "{ip}");
    }
    // A static MAC someone else holds.
    let m = Pod::new("mac-holder");
    let mut mac = conf.clone();
    mac["runtimeConfig"] = json!({"mac": "02:00:00:00:aa:01"});
    c.cni(0, "ADD", &mac, &m, "net1").ok();
    assert_eq!(c.cni(0, "ADD", &mac, &b, "net1").code(), 101);
    assert_eq!(b.ns.link_names().unwrap(), ["lo"]);
    assert_eq!(c.reservations().len(), 2, "{}", c.dump());
}

#[test]
fn pool_exhaustion_is_a_clean_error() {
    let c = Cluster::new(1);
    c.put_subnet("tiny", |s| {
        s.ranges = vec![static_macvlan_allocator::RangeConfig {
            start: "10.230.0.10".into(),
            end: "10.230.0.11".into(),
        }]
    });
    let conf = c.netconf("tiny", "1.1.0");
    let pods: Vec<Pod> = (0..3).map(|i| Pod::new(&format!("p{i}"))).collect();
    c.cni(0, "ADD", &conf, &pods[0], "net1").ok();
    c.cni(0, "ADD", &conf, &pods[1], "net1").ok();
    let run = c.cni(0, "ADD", &conf, &pods[2], "net1");
    assert_eq!(run.code(), 102, "{}", run.stdout);
    assert!(run.msg().contains("exhausted"), "{}", run.msg());
    assert_eq!(pods[2].ns.link_names().unwrap(), ["lo"]);
}

#[test]
fn unknown_subnet_and_master() {
    let c = Cluster::new(1);
    c.put_subnet("nomaster", |s| s.master = "eth9".into());
    let p = Pod::new("x");
    let rev = c.revision();
    let run = c.cni(0, "ADD", &c.netconf("missing", "1.1.0"), &p, "net1");
    assert_eq!(run.code(), 104, "{}", run.stdout);
    let run = c.cni(0, "ADD", &c.netconf("nomaster", "1.1.0"), &p, "net1");
    assert_eq!(run.code(), 7, "{}", run.stdout);
    assert!(run.msg().contains("eth9"), "{}", run.msg());
    // The node-local master override fixes it.
    let mut conf = c.netconf("nomaster", "1.1.0");
    conf["master"] = json!("eth0");
    assert_eq!(c.revision(), rev, "a failed validation wrote to etcd");
    c.cni(0, "ADD", &conf, &p, "net1").ok();
}

/// Every bad input field: the right code, the field named, nothing written, no link.
#[test]
fn bad_input_is_named_and_changes_nothing() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let good = c.netconf("lan", "1.1.0");
    let p = Pod::new("bad");
    type Edit = fn(&mut Value);
    let netconf_cases: &[(&str, u64, Edit)] = &[
        ("cniVersion", 1, |v| v["cniVersion"] = json!("0.2.0")),
        ("cniVersion", 7, |v| v["cniVersion"] = json!(1)),
        ("name", 7, |v| v["name"] = json!(["x"])),
        ("subnet", 7, |v| v["subnet"] = json!(5)),
        ("subnet", 7, |v| v["subnet"] = json!("a/b")),
        ("master", 7, |v| {
            v["master"] = json!("this-name-is-too-long")
        }),
        ("pendingTTL", 7, |v| v["pendingTTL"] = json!(-5)),
        ("pendingTTL", 7, |v| v["pendingTTL"] = json!("1m")),
        ("nodeName", 7, |v| v["nodeName"] = json!("a/b")),
        ("etcd", 7, |v| {
            v.as_object_mut().unwrap().remove("etcd");
        }),
        ("etcd.endpoints", 7, |v| {
            v["etcd"]["endpoints"] = json!("http://127.0.0.1:2379")
        }),
        ("etcd.endpoints[0]", 7, |v| {
            v["etcd"]["endpoints"] = json!(["127.0.0.1:2379"])
        }),
        ("etcd.prefix", 7, |v| {
            v["etcd"]["prefix"] = json!("no-slash")
        }),
        ("etcd.caFile", 7, |v| {
            v["etcd"]["caFile"] = json!("/nonexistent/ca.pem")
        }),
        ("etcd.keyFile", 7, |v| {
            v["etcd"]["certFile"] = json!("/etc/hostname")
        }),
        ("etcd.requestTimeoutMs", 7, |v| {
            v["etcd"]["requestTimeoutMs"] = json!(0)
        }),
        ("etcdConfigFile", 7, |v| {
            v.as_object_mut().unwrap().remove("etcd");
            v["etcdConfigFile"] = json!("/nonexistent/etcd.json");
        }),
        ("runtimeConfig.ips[0]", 7, |v| {
            v["runtimeConfig"] = json!({"ips": ["10.230.0.999"]})
        }),
        ("runtimeConfig.ips[0]", 7, |v| {
            v["runtimeConfig"] = json!({"ips": ["10.230.0.77/16"]})
        }),
        ("runtimeConfig.ips", 7, |v| {
            v["runtimeConfig"] = json!({"ips": ["fd00::5"]})
        }),
        ("runtimeConfig.mac", 7, |v| {
            v["runtimeConfig"] = json!({"mac": "not-a-mac"})
        }),
        ("runtimeConfig.mac", 7, |v| {
            v["runtimeConfig"] = json!({"mac": "ff:ff:ff:ff:ff:ff"})
        }),
        ("prevResult", 7, |v| v["prevResult"] = json!(7)),
    ];
    let before = c.revision();
    for (field, code, edit) in netconf_cases {
        let mut conf = good.clone();
        edit(&mut conf);
        let run = c.cni(0, "ADD", &conf, &p, "net1");
        assert_eq!(run.code(), *code, "{field}: {}", run.stdout);
        assert!(
            run.msg().contains(field),
            "{field} not named: {}",
            run.msg()
        );
        assert!(run.json()["cniVersion"].as_str().is_some());
    }

    // Undecodable stdin.
    for raw in ["", "{", "[]", "not json"] {
        let env = vec![
            ("CNI_COMMAND".to_string(), "ADD".to_string()),
            ("CNI_CONTAINERID".to_string(), p.container_id.clone()),
            ("CNI_NETNS".to_string(), p.ns.path().display().to_string()),
            ("CNI_IFNAME".to_string(), "net1".to_string()),
            ("STATIC_MACVLAN_NODE".to_string(), "node-0".to_string()),
        ];
        let run = run_plugin_in(&c.lan.node(0).ns.path(), &env, raw);
        assert_eq!(run.code(), 6, "{raw:?}: {}", run.stdout);
    }

    // The environment.
    let env_cases: &[(&str, &[(&str, &str)])] = &[
        ("CNI_COMMAND", &[("CNI_COMMAND", "")]),
        ("CNI_COMMAND", &[("CNI_COMMAND", "ATTACH")]),
        ("CNI_CONTAINERID", &[("CNI_CONTAINERID", "")]),
        ("CNI_CONTAINERID", &[("CNI_CONTAINERID", "-bad")]),
        ("CNI_NETNS", &[("CNI_NETNS", "")]),
        (
            "CNI_NETNS",
            &[("CNI_NETNS", "/var/run/netns/does-not-exist")],
        ),
        ("CNI_NETNS", &[("CNI_NETNS", "relative/path")]),
        ("CNI_IFNAME", &[("CNI_IFNAME", "")]),
        ("CNI_IFNAME", &[("CNI_IFNAME", "way-too-long-ifname")]),
        ("CNI_ARGS", &[("CNI_ARGS", "K8S_POD_NAME")]),
        (
            "CNI_ARGS IP",
            &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.230.0.300")],
        ),
        ("CNI_ARGS MAC", &[("CNI_ARGS", "MAC=01:00:5e:00:00:01")]),
        ("CNI_ARGS K8S_POD_NAME", &[("CNI_ARGS", "K8S_POD_NAME=a b")]),
        ("STATIC_MACVLAN_NODE", &[("STATIC_MACVLAN_NODE", "a/b")]),
    ];
    for (var, extra) in env_cases {
        let run = c.cni_env(0, "ADD", &good, &p, "net1", extra);
        assert_eq!(run.code(), 4, "{var}: {}", run.stdout);
        assert!(run.msg().contains(var), "{var} not named: {}", run.msg());
    }

    assert_eq!(
        c.revision(),
        before,
        "bad input wrote to etcd:\n{}",
        c.dump()
    );
    assert_eq!(p.ns.link_names().unwrap(), ["lo"]);
    // And the good netconf works with the same pod.
    c.cni(0, "ADD", &good, &p, "net1").ok();
}

#[test]
fn etcd_config_file_and_environment_layers() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.json");
    std::fs::write(
        &file,
        json!({"endpoints": c.etcd.endpoints(), "prefix": c.prefix}).to_string(),
    )
    .unwrap();
    let mut conf = c.netconf("lan", "1.1.0");
    conf.as_object_mut().unwrap().remove("etcd");
    conf["etcdConfigFile"] = json!(file.display().to_string());
    let p = Pod::new("file");
    c.cni(0, "ADD", &conf, &p, "net1").ok();
    assert_eq!(
        c.reservation(&p, "net1").unwrap().record.owner.node,
        "node-0"
    );

    // The same through $STATIC_MACVLAN_ETCD_CONFIG, and the node name from the netconf.
    let mut conf2 = conf.clone();
    conf2.as_object_mut().unwrap().remove("etcdConfigFile");
    conf2["nodeName"] = json!("named-node");
    let q = Pod::new("env");
    let f = file.display().to_string();
    c.cni_env(
        0,
        "ADD",
        &conf2,
        &q,
        "net1",
        &[("STATIC_MACVLAN_ETCD_CONFIG", &f)],
    )
    .ok();
    assert_eq!(
        c.reservation(&q, "net1").unwrap().record.owner.node,
        "named-node"
    );

    // A file that is not JSON: code 6, the file named.
    std::fs::write(&file, "endpoints = nope").unwrap();
    let r = Pod::new("broken");
    let run = c.cni(0, "ADD", &conf, &r, "net1");
    assert_eq!(run.code(), 6);
    assert!(run.msg().contains(&f), "{}", run.msg());
}

#[test]
fn identity_fallback_without_kubernetes() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    let p = Pod::new("plain");
    c.cni_env(0, "ADD", &conf, &p, "net1", &[("CNI_ARGS", "")])
        .ok();
    let all = c.reservations();
    assert_eq!(all.len(), 1);
    let o = &all[0].record.owner;
    assert_eq!(o.pod_uid, format!("cid-{}", p.container_id));
    assert_eq!(o.namespace, "-");
    assert_eq!(o.pod, p.container_id);
    c.cni_env(0, "DEL", &conf, &p, "net1", &[("CNI_ARGS", "")])
        .ok();
    assert!(c.reservations().is_empty());
}

#[test]
fn chained_prev_result_is_extended() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let p = Pod::new("chain");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:99", "sandbox": p.ns.path()}],
        "ips": [{"address": "192.168.1.5/24", "gateway": "192.168.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.1.1"}],
        "dns": {"nameservers": ["192.168.1.53"]}
    });
    let conf = with_prev(&c.netconf("lan", "1.0.0"), &prev);
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(r["dns"], json!({"nameservers": ["192.168.1.53"]}));
    assert_eq!(r["routes"].as_array().unwrap().len(), 2);
}

#[test]
fn host_reaches_pods_through_the_shim() {
    let c = Cluster::new(2);
    c.put_subnet("shim", |s| s.host_shim = true);
    let conf = c.netconf("shim", "1.1.0");
    let node = &c.lan.node(0).ns;
    // Another LAN host that already knows the node, as the LAN's router or etcd would.
    let other = &c.lan.node(1).ns;
    assert!(other.ping("10.230.0.250"), "the LAN cannot reach the node");
    // Linux ignores ARP updates for an entry younger than its locktime (1 s): let it age, so that
    // an ARP request sent by the shim in the node's name would overwrite it, as on a real LAN.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let p = Pod::new("probe");
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    let ip = first_ip(&r);
    assert!(node.has_link("smv-eth0").unwrap(), "no shim");
    assert!(
        node.ping(&ip),
        "the node cannot reach its pod {ip} through the shim"
    );
    assert!(p.ns.ping("10.230.0.250"), "the pod cannot reach its node");
    // The rest of the LAN must still know the node's address at the node's own NIC, never at
    // the shim's MAC (ARP flux): otherwise the node drops off the LAN when the shim goes.
    let nic_mac = node.ip(&["-br", "link", "show", "eth0"]).unwrap();
    let nic_mac = nic_mac.split_whitespace().nth(2).unwrap().to_string();
    let neigh = other.ip(&["neigh", "show", "10.230.0.250"]).unwrap();
    assert!(
        neigh.contains(&nic_mac),
        "the LAN learned the node's address at another MAC than its NIC's {nic_mac}: {neigh}"
    );

    let q = Pod::new("probe2");
    c.cni(0, "ADD", &conf, &q, "net1").ok();
    c.cni(0, "DEL", &conf, &p, "net1").ok();
    let routes = node.ip(&["route", "show", "dev", "smv-eth0"]).unwrap();
    assert!(
        !routes.contains(&ip),
        "host route of a deleted pod left: {routes}"
    );
    c.cni(0, "DEL", &conf, &q, "net1").ok();
    assert!(
        !node.has_link("smv-eth0").unwrap(),
        "unused shim left behind"
    );
    assert!(
        other.ping("10.230.0.250"),
        "the node is unreachable from the LAN once its shim is gone"
    );
}

/// The test LAN's IPv6 subnet: fd00:230::/64, gateway ::1, addresses ::100 to ::1ff.
fn ipv6_lan(s: &mut static_macvlan_allocator::SubnetConfig) {
    s.cidr = "fd00:230::/64".into();
    s.gateway = Some("fd00:230::1".into());
    s.ranges = vec![static_macvlan_allocator::RangeConfig {
        start: "fd00:230::100".into(),
        end: "fd00:230::1ff".into(),
    }];
}

/// IPv6 through the shim. The node has a global address of its own on the LAN, as nodes do: a
/// reply to it from the pod would go out on the LAN, where macvlan never hands frames to the
/// parent's host, so the node must reach its pods from an address the shim answers for.
#[test]
fn host_reaches_ipv6_pods_through_the_shim() {
    let c = Cluster::new(1);
    c.put_subnet("shim6", |s| {
        ipv6_lan(s);
        s.host_shim = true;
    });
    let conf = c.netconf("shim6", "1.1.0");
    let node = &c.lan.node(0).ns;
    node.ip(&["addr", "add", "fd00:230::fa/64", "dev", "eth0", "nodad"])
        .unwrap();
    let p = Pod::new("probe6");
    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    let ip = first_ip(&r);
    assert!(
        node.ping(&ip),
        "the node cannot reach its pod {ip} through the shim: {}",
        node.ip(&["-6", "route", "show", "dev", "smv-eth0"])
            .unwrap()
    );
    c.cni(0, "DEL", &conf, &p, "net1").ok();
    assert!(
        !node.has_link("smv-eth0").unwrap(),
        "unused shim left behind"
    );
    assert!(c.reservations().is_empty(), "{}", c.dump());
}

/// This kernel may lack 802.1q. On such a kernel ADD on a tagged subnet must fail cleanly with
/// code 109 and leave nothing; on a kernel with 802.1q the attachment must work, and the VLAN
/// link must go with its last macvlan. `vlan_attachment_works` (ignored by default) insists.
#[test]
fn vlan_subnet_works_or_fails_cleanly() {
    let c = Cluster::new(1);
    c.put_subnet("tagged", |s| s.vlan = 100);
    let conf = c.netconf("tagged", "1.1.0");
    let p = Pod::new("vlan");
    let run = c.cni(0, "ADD", &conf, &p, "net1");
    let node = &c.lan.node(0).ns;
    if run.exit != 0 {
        assert_eq!(run.code(), 109, "{}", run.stdout);
        eprintln!(
            "NOTE: this kernel has no 802.1q support; only the failure path of VLAN subnets was \
             tested: {}",
            run.msg()
        );
        assert!(c.reservations().is_empty(), "{}", c.dump());
        assert_eq!(p.ns.link_names().unwrap(), ["lo"]);
        assert!(!node.has_link("eth0.100").unwrap());
        return;
    }
    assert!(node.has_link("eth0.100").unwrap());
    c.cni(0, "DEL", &conf, &p, "net1").ok();
    assert!(
        !node.has_link("eth0.100").unwrap(),
        "our unused VLAN link was left"
    );
}

#[test]
#[ignore = "needs 802.1q kernel support (modprobe 8021q); run with --ignored where available"]
fn vlan_attachment_works() {
    let c = Cluster::new(2);
    c.put_subnet("tagged", |s| s.vlan = 100);
    let conf = c.netconf("tagged", "1.1.0");
    let a = Pod::new("va");
    let b = Pod::new("vb");
    let ra = c.cni(0, "ADD", &conf, &a, "net1");
    assert_eq!(
        ra.exit, 0,
        "802.1q VLAN attachment failed (kernel support missing?): {}",
        ra.stdout
    );
    let rb = c.cni(1, "ADD", &conf, &b, "net1").ok().json();
    let ip_b = first_ip(&rb);
    assert!(a.ns.ping(&ip_b));
    // A VLAN link that was there before is never deleted.
    c.cni(0, "DEL", &conf, &a, "net1").ok();
    assert!(!c.lan.node(0).ns.has_link("eth0.100").unwrap());
}

#[test]
fn ipv6_subnet_across_nodes() {
    let c = Cluster::new(2);
    c.put_subnet("lan6", ipv6_lan);
    let conf = c.netconf("lan6", "0.4.0");
    let a = Pod::new("v6a");
    let b = Pod::new("v6b");
    let ra = c.cni(0, "ADD", &conf, &a, "net1").ok().json();
    assert_eq!(ra["ips"][0]["version"], "6");
    assert_eq!(ra["routes"], json!([{"dst": "::/0", "gw": "fd00:230::1"}]));
    let mut conf_b = conf.clone();
    conf_b["runtimeConfig"] = json!({"ips": ["10.230.0.9/24", "fd00:230::abc/64"]});
    let rb = c.cni(1, "ADD", &conf_b, &b, "net1").ok().json();
    assert_eq!(rb["ips"][0]["address"], "fd00:230::abc/64");
    let ip_a = first_ip(&ra);
    assert!(b.ns.ping(&ip_a), "pod b cannot reach pod a over IPv6");
    c.cni(0, "CHECK", &with_prev(&conf, &ra), &a, "net1").ok();
    c.cni(0, "DEL", &conf, &a, "net1").ok();
    c.cni(1, "DEL", &conf, &b, "net1").ok();
    assert!(c.reservations().is_empty());
}

/// Under Multus the pod already has a default route through its primary network (eth0): a
/// secondary attachment must neither fail on it (EEXIST) nor replace it, and its result must not
/// claim a default route it did not install.
#[test]
fn a_secondary_attachment_keeps_the_pods_default_route() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let conf = c.netconf("lan", "1.1.0");
    let p = Pod::new("multus");
    let primary = static_macvlan_testkit::netns::NetNs::new("prim").unwrap();
    static_macvlan_testkit::netns::Veth::pair("eth0", &p.ns, "cni0", &primary).unwrap();
    p.ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])
        .unwrap();
    p.ns.ip(&["route", "add", "default", "via", "192.0.2.1"])
        .unwrap();

    let r = c.cni(0, "ADD", &conf, &p, "net1").ok().json();
    let dsts: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert!(
        !dsts.contains(&"0.0.0.0/0"),
        "result claims a default route: {r}"
    );
    let default = p.ns.ip(&["route", "show", "default"]).unwrap();
    assert!(
        default.contains("via 192.0.2.1 dev eth0") && !default.contains("net1"),
        "the pod's default route changed: {default}"
    );
    c.cni(0, "CHECK", &with_prev(&conf, &r), &p, "net1").ok();

    // A pod with no other network still gets the subnet's default route.
    let alone = Pod::new("alone");
    let r = c.cni(0, "ADD", &conf, &alone, "eth0").ok().json();
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
    assert!(alone
        .ns
        .ip(&["route", "show", "default"])
        .unwrap()
        .contains("via 10.230.0.1 dev eth0"));
}

/// The commit runs while the link comes up; when bring-up then fails (here: IPv6 duplicate
/// address detection finds the address on another host of the LAN), the committed reservation
/// is given back and the link deleted.
#[test]
fn a_failure_after_the_commit_gives_the_address_back() {
    let c = Cluster::new(2);
    c.put_subnet("lan6", |s| {
        s.cidr = "fd00:230::/64".into();
        s.gateway = None;
        s.ranges = vec![static_macvlan_allocator::RangeConfig {
            start: "fd00:230::100".into(),
            end: "fd00:230::1ff".into(),
        }];
    });
    // Another host of the LAN already uses the address (not known to etcd).
    c.lan
        .node(1)
        .ns
        .ip(&["addr", "add", "fd00:230::abd/64", "dev", "eth0", "nodad"])
        .unwrap();
    let mut conf = c.netconf("lan6", "1.1.0");
    conf["runtimeConfig"] = json!({"ips": ["fd00:230::abd/64"]});
    let p = Pod::new("dup6");
    let run = c.cni(0, "ADD", &conf, &p, "net1");
    assert_ne!(run.exit, 0, "{}", run.stdout);
    assert!(run.msg().contains("fd00:230::abd"), "{}", run.msg());
    assert!(c.reservations().is_empty(), "{}", c.dump());
    assert_eq!(p.ns.link_names().unwrap(), ["lo"]);
}
