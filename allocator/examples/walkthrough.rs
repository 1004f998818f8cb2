//! A guided walk through the allocator against a running etcd, used by `scripts/demo.sh`:
//! configure a subnet and a MAC pool, reserve automatic and static addresses, show a refused
//! conflict, commit, a stale release, a real release and the usage counts.
//!
//! `cargo run -p static-macvlan-allocator --example walkthrough -- http://127.0.0.1:2379 /static-macvlan`

use static_macvlan_allocator::{
    Allocator, EtcdConfig, IpRequest, MacPoolConfig, MacRequest, Mirrored, Options, Owner,
    RangeConfig, Released, SubnetConfig,
};

fn owner(uid: &str, pod: &str, container: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "demo".into(),
        pod: pod.into(),
        container_id: container.into(),
        ifname: "net1".into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let mut cfg = EtcdConfig::new(vec![endpoint]);
    if let Some(prefix) = args.next() {
        cfg.prefix = prefix;
    }
    let alloc = Allocator::connect(&cfg, Options::default()).await?;
    alloc.ensure_schema().await?;

    let range = |a: &str, b: &str| RangeConfig {
        start: a.into(),
        end: b.into(),
    };
    let lan = alloc
        .put_subnet(&Mirrored {
            name: "lan".into(),
            uid: None,
            generation: Some(1),
            spec: SubnetConfig {
                master: "eth0".into(),
                cidr: "10.230.0.0/24".into(),
                gateway: Some("10.230.0.1".into()),
                ranges: vec![range("10.230.0.100", "10.230.0.199")],
                mac_pool: Some("lan-macs".into()),
                ..Default::default()
            },
        })
        .await?;
    let pool = alloc
        .put_macpool(&Mirrored {
            name: "lan-macs".into(),
            uid: None,
            generation: Some(1),
            spec: MacPoolConfig {
                ranges: vec![range("02:00:0a:e6:00:00", "02:00:0a:e6:ff:ff")],
                allow_global: false,
            },
        })
        .await?;
    println!(
        "subnet lan {} gateway 10.230.0.1, {} allocatable addresses; mac pool lan-macs",
        lan.cidr,
        lan.capacity()
    );

    let web = owner("uid-web-0", "web-0", "c-web-0");
    let r = alloc
        .reserve(&lan, &web, IpRequest::Auto, &MacRequest::Auto(pool.clone()))
        .await?;
    println!(
        "reserve auto   for demo/web-0 -> ip {} mac {} ({:?})",
        r.record.ip,
        r.record.mac.unwrap(),
        r.record.state
    );
    let r = alloc.commit(&r).await?;
    println!("commit         for demo/web-0 -> {:?}", r.record.state);

    let db = owner("uid-db-0", "db-0", "c-db-0");
    let ip = "10.230.0.33".parse()?;
    let mac = "02:00:0a:e6:00:21".parse()?;
    let r = alloc
        .reserve(&lan, &db, IpRequest::Static(ip), &MacRequest::Static(mac))
        .await?;
    alloc.commit(&r).await?;
    println!(
        "reserve static for demo/db-0  -> ip {} mac {}",
        r.record.ip,
        r.record.mac.unwrap()
    );

    let thief = owner("uid-other", "other", "c-other");
    match alloc
        .reserve(&lan, &thief, IpRequest::Static(ip), &MacRequest::None)
        .await
    {
        Err(e) => println!("reserve static for demo/other -> refused: {e}"),
        Ok(_) => anyhow::bail!("a taken address was handed out twice"),
    }

    let old_sandbox = owner("uid-db-0", "db-0", "c-db-old");
    match alloc.release(&old_sandbox).await? {
        Released::Stale(held) => println!(
            "release by a stale container of db-0 -> nothing freed (held by container {})",
            held.owner.container_id
        ),
        other => anyhow::bail!("stale release did {other:?}"),
    }
    let u = alloc.usage(&lan).await?;
    println!(
        "usage of lan: {} used, {} free of {}",
        u.used, u.free, u.capacity
    );
    if let Released::Freed(rec) = alloc.release(&web).await? {
        println!("release demo/web-0 -> freed ip {}", rec.ip);
    }
    let u = alloc.usage(&lan).await?;
    println!(
        "usage of lan: {} used, {} free of {}",
        u.used, u.free, u.capacity
    );
    Ok(())
}
