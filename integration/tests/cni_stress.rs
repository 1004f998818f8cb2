//! The plugin under pressure: many concurrent ADDs on a pool too small for them, and ADDs killed
//! with SIGKILL at random points. Needs root.

mod cni_common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use cni_common::*;
use serde_json::json;
use static_macvlan_allocator::{RangeConfig, State};
use static_macvlan_cni::netns::NetnsGuard;

#[test]
fn concurrent_adds_on_a_small_pool() {
    const PODS: usize = 64;
    const POOL: usize = 40;
    let c = Cluster::new(2);
    c.put_macpool("vms", "02:20:00:00:00:00", "02:20:00:00:00:ff");
    c.put_subnet("small", |s| {
        s.ranges = vec![RangeConfig {
            start: "10.230.0.10".into(),
            end: format!("10.230.0.{}", 10 + POOL - 1),
        }];
        s.mac_pool = Some("vms".into());
    });
    let conf = c.netconf("small", "1.1.0");
    let pods: Vec<Pod> = (0..PODS).map(|i| Pod::new(&format!("p{i}"))).collect();

    let runs: Vec<Run> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (c, conf) = (&c, &conf);
                s.spawn(move || c.cni(i % 2, "ADD", conf, p, "net1"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    let mut ok = 0;
    for (run, pod) in runs.iter().zip(&pods) {
        if run.exit == 0 {
            ok += 1;
            let r = run.json();
            assert!(
                ips.insert(r["ips"][0]["address"].as_str().unwrap().to_string()),
                "duplicate ip"
            );
            assert!(
                macs.insert(r["interfaces"][0]["mac"].as_str().unwrap().to_string()),
                "duplicate mac"
            );
            assert!(pod.ns.has_link("net1").unwrap());
        } else {
            assert_eq!(
                run.code(),
                102,
                "not a clean pool-exhausted error: {}",
                run.stdout
            );
            assert!(run.msg().contains("exhausted"), "{}", run.msg());
            assert_eq!(
                pod.ns.link_names().unwrap(),
                ["lo"],
                "a failed ADD left a link"
            );
        }
    }
    assert_eq!(ok, POOL, "successes must equal the pool size");
    let held = c.reservations();
    assert_eq!(held.len(), POOL, "{}", c.dump());
    assert!(held.iter().all(|r| r.record.state == State::Committed));
    let slowest = runs.iter().map(|r| r.elapsed).max().unwrap();
    eprintln!("{PODS} concurrent ADDs on a pool of {POOL}: slowest {slowest:?}");
}

/// Runs ADD and kills it with SIGKILL after `delay` (it may have finished by then).
fn add_and_kill(c: &Cluster, node: usize, conf: &serde_json::Value, pod: &Pod, delay: Duration) {
    let netns = c.lan.node(node).ns.path();
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", pod.container_id.clone()),
        ("CNI_NETNS", pod.ns.path().display().to_string()),
        ("CNI_IFNAME", "net1".to_string()),
        ("CNI_PATH", plugin_dir().display().to_string()),
        ("CNI_ARGS", pod.cni_args()),
        ("STATIC_MACVLAN_NODE", c.node_name(node)),
    ];
    let stdin = conf.to_string();
    thread::scope(|s| {
        s.spawn(|| {
            let _guard = NetnsGuard::enter(&netns).unwrap();
            let mut cmd = Command::new(plugin_bin());
            cmd.env_clear()
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = spawn(&mut cmd);
            let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
            thread::sleep(delay);
            let _ = child.kill();
            let _ = child.wait();
        });
    });
}

#[test]
fn sigkill_during_add_leaves_no_orphan_reservation() {
    const KILLS: usize = 60;
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let mut conf = c.netconf("lan", "1.1.0");
    // etcd's shortest lease; the test waits for it to pass.
    conf["pendingTTL"] = json!(2);

    // How long an ADD takes here, to spread the kills over all of it.
    let probe = Pod::new("probe");
    let full = c.cni(0, "ADD", &conf, &probe, "net1").ok().elapsed;
    c.cni(0, "DEL", &conf, &probe, "net1").ok();
    let span = (full.as_micros() as u64).max(2_000);

    let pods: Vec<Pod> = (0..KILLS).map(|i| Pod::new(&format!("k{i}"))).collect();
    for p in &pods {
        add_and_kill(
            &c,
            0,
            &conf,
            p,
            Duration::from_micros(fastrand::u64(0..span)),
        );
    }

    // Once the pending leases have expired, every reservation left must have its interface.
    let settled = eventually(Duration::from_secs(15), || {
        c.reservations()
            .iter()
            .all(|r| r.record.state == State::Committed)
    });
    assert!(
        settled,
        "pending reservations outlived pendingTTL:\n{}",
        c.dump()
    );
    let held = c.reservations();
    let mut with_iface = 0;
    for r in &held {
        let pod = pods
            .iter()
            .find(|p| p.uid == r.record.owner.pod_uid)
            .expect("reservation of a known pod");
        assert!(
            pod.ns.has_link("net1").unwrap(),
            "reservation {} of {} has no interface",
            r.record.ip,
            pod.name
        );
        assert!(pod
            .addresses("net1")
            .iter()
            .any(|a| a.starts_with(&format!("{}/", r.record.ip))));
        with_iface += 1;
    }
    eprintln!(
        "{KILLS} ADDs killed within {span} µs: {with_iface} completed, {} left nothing",
        KILLS - with_iface
    );

    // A DEL for each killed container leaves nothing: no reservation, no link.
    for p in &pods {
        c.cni(0, "DEL", &conf, p, "net1").ok();
        assert_eq!(p.ns.link_names().unwrap(), ["lo"], "{} kept a link", p.name);
    }
    assert!(c.reservations().is_empty(), "{}", c.dump());
}
