//! `cargo bench -p static-macvlan-allocator --bench reserve`
//!
//! Starts a local etcd (real process, data on disk) and prints, in one run:
//! - the physical floor: a raw single-key create-if-absent transaction, p50/p99 at one client and
//!   throughput at 64 concurrent clients;
//! - `reserve` (IP + MAC, pending) p50/p99 at one client and throughput at 64 clients in one
//!   subnet, with the ratios to the raw figures;
//! - `reserve` p50 in a /16 at 0 % and at 90 % occupancy, and their ratio.
//!
//! Every client is a long-lived allocator, as the raw clients are: after a window read it claims
//! the free addresses it saw without reading again (hints). For the one-shot plugin's regime it
//! also prints, outside the targets, reserve p50 with a fresh allocator per call (no hints, the
//! pending lease shared through a file as the plugin shares it).
//!
//! Set `SMV_BENCH_QUICK=1` for a short smoke run.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use static_macvlan_allocator::{
    Allocator, EtcdConfig, IpRequest, MacPoolConfig, MacRequest, Mirrored, Options, Owner,
    RangeConfig, Subnet, SubnetConfig,
};
use static_macvlan_testkit::EtcdServer;

const CLIENTS: usize = 64;

fn quick() -> bool {
    std::env::var_os("SMV_BENCH_QUICK").is_some()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Latency {
    p50: Duration,
    p99: Duration,
}

fn latency(mut v: Vec<Duration>) -> Latency {
    v.sort_unstable();
    Latency {
        p50: pct(&v, 0.5),
        p99: pct(&v, 0.99),
    }
}

fn owner(tag: &str, i: usize) -> Owner {
    Owner {
        pod_uid: format!("{tag}-uid-{i}"),
        namespace: "bench".into(),
        pod: format!("{tag}-{i}"),
        container_id: format!("{tag}-c-{i}"),
        ifname: "net1".into(),
        node: format!("node-{}", i % 8),
        network: String::new(),
    }
}

async fn raw_create(client: &mut Client, key: String) {
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key, "x", None)]);
    let resp = client.txn(txn).await.expect("raw txn");
    assert!(resp.succeeded());
}

async fn setup(
    etcd: &EtcdServer,
    name: &str,
    cidr: &str,
    gw: &str,
) -> (EtcdConfig, Subnet, MacPoolConfig) {
    let mut cfg = EtcdConfig::new(etcd.endpoints());
    cfg.prefix = etcd.fresh_prefix();
    let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
    alloc.ensure_schema().await.unwrap();
    let spec = SubnetConfig {
        master: "eth0".into(),
        cidr: cidr.into(),
        gateway: Some(gw.into()),
        ..Default::default()
    };
    let subnet = alloc
        .put_subnet(&Mirrored {
            name: name.into(),
            uid: None,
            generation: None,
            spec,
        })
        .await
        .unwrap();
    let pool = MacPoolConfig {
        ranges: vec![RangeConfig {
            start: "02:00:00:00:00:00".into(),
            end: "02:00:00:ff:ff:ff".into(),
        }],
        allow_global: false,
    };
    alloc
        .put_macpool(&Mirrored {
            name: "bench".into(),
            uid: None,
            generation: None,
            spec: pool.clone(),
        })
        .await
        .unwrap();
    (cfg, subnet, pool)
}

async fn reserve_seq(
    alloc: &Allocator,
    subnet: &Subnet,
    mac: &MacRequest,
    tag: &str,
    n: usize,
) -> Latency {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        alloc
            .reserve(subnet, &owner(tag, i), IpRequest::Auto, mac)
            .await
            .expect("reserve");
        v.push(t.elapsed());
    }
    latency(v)
}

/// Fills `fraction` of the subnet with reservation-shaped keys, 100 per transaction.
async fn fill(alloc: &Allocator, subnet: &Subnet, fraction: f64) -> u128 {
    let mut client = alloc.client();
    let mut chosen = 0u128;
    let mut batch = Vec::new();
    for i in 0..subnet.capacity() {
        // Uniformly spread, as random allocation would leave the pool.
        if fastrand::f64() >= fraction {
            continue;
        }
        chosen += 1;
        batch.push(TxnOp::put(
            alloc.keys().ip(&subnet.name, subnet.nth(i).unwrap()),
            r#"{"filler":true}"#,
            None,
        ));
        if batch.len() == 100 {
            client
                .txn(Txn::new().and_then(std::mem::take(&mut batch)))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        client.txn(Txn::new().and_then(batch)).await.unwrap();
    }
    chosen
}

/// Single-client figures run on a current-thread runtime, as the CNI plugin does (one process,
/// one thread); the 64-client figures on a two-worker runtime.
fn main() {
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let etcd = EtcdServer::start().expect("start etcd (apt-get install -y etcd-server)");
    let seq = if quick() { 200 } else { 2000 };
    let conc_total = if quick() { 1280 } else { 12_800 };
    let per = conc_total / CLIENTS;
    let prefix = etcd.fresh_prefix();

    // Raw floor, one client.
    let raw = single.block_on(async {
        let mut client = etcd.client().await.unwrap();
        for i in 0..50 {
            raw_create(&mut client, format!("{prefix}/warm/{i}")).await;
        }
        let mut v = Vec::with_capacity(seq);
        for i in 0..seq {
            let t = Instant::now();
            raw_create(&mut client, format!("{prefix}/seq/{i}")).await;
            v.push(t.elapsed());
        }
        latency(v)
    });

    // Raw floor, 64 clients with their own connections.
    let raw_tput = multi.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(etcd.client().await.unwrap());
        }
        let t = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, mut client)| {
                let prefix = prefix.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        raw_create(&mut client, format!("{prefix}/conc/{c}/{i}")).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (per * CLIENTS) as f64 / t.elapsed().as_secs_f64()
    });

    // reserve, one client, IP + MAC in a /16; then reserve + commit (what an ADD pays in etcd).
    let (res, res_commit, mac) = single.block_on(async {
        let (cfg, subnet, pool_cfg) = setup(&etcd, "seq", "10.60.0.0/16", "10.60.0.1").await;
        let alloc = Allocator::connect(&cfg, Options::default()).await.unwrap();
        let pool = static_macvlan_allocator::MacPool::from_config("bench", &pool_cfg).unwrap();
        let mac = MacRequest::Auto(pool);
        reserve_seq(&alloc, &subnet, &mac, "warm", 50).await;
        let res = reserve_seq(&alloc, &subnet, &mac, "seq", seq).await;
        let mut v = Vec::with_capacity(seq);
        for i in 0..seq {
            let t = Instant::now();
            let r = alloc
                .reserve(&subnet, &owner("rc", i), IpRequest::Auto, &mac)
                .await
                .unwrap();
            alloc.commit(&r).await.unwrap();
            v.push(t.elapsed());
        }
        (res, latency(v), mac)
    });

    // reserve as one plugin invocation pays it: no hints; the lease from the node's file.
    let oneshot = single.block_on(async {
        let (cfg, subnet, pool_cfg) = setup(&etcd, "oneshot", "10.64.0.0/16", "10.64.0.1").await;
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            lease_file: Some(dir.path().join("lease.json")),
            ..Options::default()
        };
        let base = Allocator::connect(&cfg, opts.clone()).await.unwrap();
        let pool = static_macvlan_allocator::MacPool::from_config("bench", &pool_cfg).unwrap();
        let mac = MacRequest::Auto(pool);
        let mut v = Vec::with_capacity(seq);
        for i in 0..seq + 50 {
            let alloc = Allocator::new(base.client(), base.keys().clone(), opts.clone());
            let t = Instant::now();
            alloc
                .reserve(&subnet, &owner("oneshot", i), IpRequest::Auto, &mac)
                .await
                .unwrap();
            if i >= 50 {
                v.push(t.elapsed());
            }
        }
        latency(v)
    });

    // reserve, 64 clients (each its own connection and lease), one subnet.
    let res_tput = multi.block_on(async {
        let (cfg, subnet, _) = setup(&etcd, "conc", "10.61.0.0/16", "10.61.0.1").await;
        let mut allocs = Vec::new();
        for _ in 0..CLIENTS {
            allocs.push(Allocator::connect(&cfg, Options::default()).await.unwrap());
        }
        let t = Instant::now();
        let tasks: Vec<_> = allocs
            .into_iter()
            .enumerate()
            .map(|(c, alloc)| {
                let subnet = subnet.clone();
                let mac = mac.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        alloc
                            .reserve(&subnet, &owner(&format!("c{c}"), i), IpRequest::Auto, &mac)
                            .await
                            .expect("reserve");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (per * CLIENTS) as f64 / t.elapsed().as_secs_f64()
    });

    // Occupancy: a /16 empty vs. 90 % full, measured alternately (one reserve in each, in turn),
    // so that the state of etcd after the fill (its size, compactions) weighs on both alike.
    let (at0, at90, filled, occupancy) = single.block_on(async {
        let (cfg, empty, _) = setup(&etcd, "empty", "10.62.0.0/16", "10.62.0.1").await;
        let alloc0 = Allocator::connect(&cfg, Options::default()).await.unwrap();
        let (cfg, full, _) = setup(&etcd, "full", "10.63.0.0/16", "10.63.0.1").await;
        let alloc90 = Allocator::connect(&cfg, Options::default()).await.unwrap();
        let filled = fill(&alloc90, &full, 0.90).await;
        let usage = alloc90.usage(&full).await.unwrap();
        let (mut v0, mut v90) = (Vec::new(), Vec::new());
        for i in 0..seq / 2 {
            for (alloc, subnet, v, tag) in [
                (&alloc0, &empty, &mut v0, "o0"),
                (&alloc90, &full, &mut v90, "o90"),
            ] {
                let t = Instant::now();
                alloc
                    .reserve(subnet, &owner(tag, i), IpRequest::Auto, &MacRequest::None)
                    .await
                    .expect("reserve");
                v.push(t.elapsed());
            }
        }
        (
            latency(v0),
            latency(v90),
            filled,
            usage.used as f64 * 100.0 / usage.capacity as f64,
        )
    });

    println!(
        "static-macvlan allocator benchmark — etcd {} (data on disk), {seq} sequential ops, \
         {conc_total} ops at {CLIENTS} clients",
        etcd.endpoint()
    );
    println!();
    println!("| measure                                   |   p50 ms |   p99 ms |   ops/s |");
    println!("|-------------------------------------------|---------:|---------:|--------:|");
    let row = |name: &str, l: &Latency| {
        println!(
            "| {name:<41} | {:8.3} | {:8.3} |         |",
            ms(l.p50),
            ms(l.p99)
        );
    };
    let tput = |name: &str, t: f64| println!("| {name:<41} |          |          | {t:7.0} |");
    row("raw create-if-absent txn, 1 client", &raw);
    tput("raw create-if-absent txn, 64 clients", raw_tput);
    row("reserve ip+mac, 1 client", &res);
    row("reserve + commit, 1 client", &res_commit);
    row("reserve ip+mac, fresh allocator (plugin)", &oneshot);
    tput("reserve ip+mac, 64 clients, one subnet", res_tput);
    row("reserve ip, /16 at 0 %", &at0);
    row(
        &format!("reserve ip, /16 at {occupancy:.1} % ({filled} filled)"),
        &at90,
    );
    println!();
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    let r1 = ms(res.p50) / ms(raw.p50);
    let r2 = res_tput / raw_tput;
    let r3 = ms(at90.p50) / ms(at0.p50);
    println!(
        "reserve p50 / raw p50              = {r1:.2}  (target <= 2.0)  {}",
        verdict(r1 <= 2.0)
    );
    println!(
        "reserve 64-client / raw 64-client  = {r2:.2}  (target >= 0.5)  {}",
        verdict(r2 >= 0.5)
    );
    println!(
        "reserve p50 at 90 % / at 0 %       = {r3:.2}  (target <= 1.5)  {}",
        verdict(r3 <= 1.5)
    );
}
