//! Invariant 1 under contention: N + k concurrent reservations on a pool of N addresses, from many
//! tasks and from several OS processes, give exactly N distinct IPs and N distinct MACs and k
//! clean pool-exhausted errors.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;
use static_macvlan_allocator::{
    Allocator, Error, EtcdConfig, IpRequest, MacRequest, Options, Owner,
};
use static_macvlan_testkit::EtcdServer;

const N: usize = 200;
const K: usize = 24;

/// One outcome as a line: `ok <ip> <mac>`, `exhausted`, or `error <text>`.
async fn reserve_line(alloc: &Allocator, o: &Owner) -> String {
    let lan = alloc.get_subnet("lan").await.expect("subnet");
    let pool = alloc.get_macpool("vms").await.expect("pool");
    match alloc
        .reserve(&lan, o, IpRequest::Auto, &MacRequest::Auto(pool))
        .await
    {
        Ok(r) => format!("ok {} {}", r.record.ip, r.record.mac.expect("mac")),
        Err(Error::PoolExhausted { .. }) => "exhausted".into(),
        Err(e) => format!("error {e}"),
    }
}

async fn setup(etcd: &EtcdServer) -> EtcdConfig {
    let cfg = etcd_config(etcd, &etcd.fresh_prefix());
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    // Exactly N allocatable addresses: .1 is the gateway, .0 the network.
    put_subnet(
        &alloc,
        "lan",
        subnet_config(
            "10.20.0.0/16",
            "10.20.0.1",
            vec![range("10.20.0.2", "10.20.0.201")],
        ),
    )
    .await;
    // A MAC pool a little larger than N, so IPs run out first and MACs are still contended.
    put_pool(&alloc, "vms", "02:00:00:00:00:00", "02:00:00:00:00:ff").await;
    cfg
}

fn check(lines: &[String]) {
    let ok: Vec<&String> = lines.iter().filter(|l| l.starts_with("ok ")).collect();
    let exhausted = lines.iter().filter(|l| *l == "exhausted").count();
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("error")).collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    let ips: HashSet<&str> = ok.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    let macs: HashSet<&str> = ok.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(ok.len(), N, "successes");
    assert_eq!(ips.len(), N, "distinct IPs");
    assert_eq!(macs.len(), N, "distinct MACs");
    assert_eq!(exhausted, K, "pool-exhausted errors");
}

async fn assert_store_agrees(cfg: &EtcdConfig) {
    let alloc = Allocator::connect(cfg, Options::default()).await.unwrap();
    let all = alloc.all().await.unwrap();
    assert_eq!(all.len(), N);
    let lan = alloc.get_subnet("lan").await.unwrap();
    assert_eq!(alloc.usage(&lan).await.unwrap().free, 0);
    for r in &all {
        let by_ip = alloc
            .holder_of_ip("lan", r.record.ip)
            .await
            .unwrap()
            .expect("ip key");
        assert_eq!(by_ip.record.owner, r.record.owner);
        let by_mac = alloc
            .holder_of_mac(r.record.mac.unwrap())
            .await
            .unwrap()
            .expect("mac key");
        assert_eq!(by_mac.record.owner, r.record.owner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_never_share_an_address() {
    let etcd = EtcdServer::start().unwrap();
    let cfg = setup(&etcd).await;
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    let tasks: Vec<_> = (0..N + K)
        .map(|i| {
            let alloc = alloc.clone();
            tokio::spawn(async move { reserve_line(&alloc, &owner(i)).await })
        })
        .collect();
    let mut lines = Vec::new();
    for t in tasks {
        lines.push(t.await.unwrap());
    }
    check(&lines);
    assert_store_agrees(&cfg).await;
}

/// The body of one worker process, run by `many_processes_never_share_an_address` through this
/// same test binary. Ignored so that a plain test run does not execute it on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process for many_processes_never_share_an_address"]
async fn worker_process() {
    let cfg: EtcdConfig =
        serde_json::from_str(&std::env::var("SMV_WORKER_ETCD").expect("worker env")).unwrap();
    let from: usize = std::env::var("SMV_WORKER_FROM").unwrap().parse().unwrap();
    let count: usize = std::env::var("SMV_WORKER_COUNT").unwrap().parse().unwrap();
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    let tasks: Vec<_> = (from..from + count)
        .map(|i| {
            let alloc = alloc.clone();
            tokio::spawn(async move { reserve_line(&alloc, &owner(i)).await })
        })
        .collect();
    for t in tasks {
        println!("RESULT {}", t.await.unwrap());
    }
}

#[tokio::test]
async fn many_processes_never_share_an_address() {
    let etcd = EtcdServer::start().unwrap();
    let cfg = setup(&etcd).await;
    let exe = std::env::current_exe().unwrap();
    const PROCS: usize = 4;
    let per = (N + K) / PROCS;
    assert_eq!(per * PROCS, N + K);
    let children: Vec<_> = (0..PROCS)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "worker_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SMV_WORKER_ETCD", serde_json::to_string(&cfg).unwrap())
                .env("SMV_WORKER_FROM", (p * per).to_string())
                .env("SMV_WORKER_COUNT", per.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut lines = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let before = lines.len();
        // libtest prints "test worker_process ... " without a newline before the first result.
        lines.extend(
            stdout
                .lines()
                .filter_map(|l| l.split_once("RESULT "))
                .map(|(_, r)| r.to_string()),
        );
        assert_eq!(lines.len() - before, per, "worker output: {stdout}");
    }
    check(&lines);
    assert_store_agrees(&cfg).await;
}
