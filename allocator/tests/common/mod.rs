//! Shared set-up for the allocator's tests against a real etcd.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use static_macvlan_allocator::{
    Allocator, EtcdConfig, MacPool, MacPoolConfig, Mirrored, Options, Owner, RangeConfig, Subnet,
    SubnetConfig,
};
use static_macvlan_testkit::EtcdServer;

/// An etcd process, an allocator under a fresh prefix, and the config it was made from.
pub struct Fixture {
    pub etcd: EtcdServer,
    pub alloc: Allocator,
    pub cfg: EtcdConfig,
}

pub fn etcd_config(etcd: &EtcdServer, prefix: &str) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(etcd.endpoints());
    cfg.prefix = prefix.to_string();
    cfg.request_timeout_ms = Some(2000);
    cfg.dial_timeout_ms = Some(1000);
    if let Some(tls) = etcd.tls() {
        cfg.ca_file = Some(tls.ca.clone());
        cfg.cert_file = Some(tls.cert.clone());
        cfg.key_file = Some(tls.key.clone());
    }
    cfg
}

pub async fn fixture(opts: Options) -> Fixture {
    let etcd = EtcdServer::start().expect("start etcd");
    let cfg = etcd_config(&etcd, &etcd.fresh_prefix());
    let alloc = Allocator::connect(&cfg, opts).await.expect("connect");
    alloc.ensure_schema().await.expect("schema");
    Fixture { etcd, alloc, cfg }
}

pub fn range(a: &str, b: &str) -> RangeConfig {
    RangeConfig {
        start: a.into(),
        end: b.into(),
    }
}

pub fn subnet_config(cidr: &str, gw: &str, ranges: Vec<RangeConfig>) -> SubnetConfig {
    SubnetConfig {
        master: "eth0".into(),
        cidr: cidr.into(),
        gateway: Some(gw.into()),
        ranges,
        ..Default::default()
    }
}

pub async fn put_subnet(alloc: &Allocator, name: &str, spec: SubnetConfig) -> Subnet {
    alloc
        .put_subnet(&Mirrored {
            name: name.into(),
            uid: None,
            generation: Some(1),
            spec,
        })
        .await
        .expect("put subnet")
}

/// The IP of every reservation under the prefix.
pub async fn held_ips(alloc: &Allocator) -> Vec<IpAddr> {
    alloc
        .all()
        .await
        .expect("read all reservations")
        .into_iter()
        .map(|r| r.record.ip)
        .collect()
}

pub async fn put_pool(alloc: &Allocator, name: &str, start: &str, end: &str) -> MacPool {
    alloc
        .put_macpool(&Mirrored {
            name: name.into(),
            uid: None,
            generation: Some(1),
            spec: MacPoolConfig {
                ranges: vec![range(start, end)],
                allow_global: false,
            },
        })
        .await
        .expect("put pool")
}

pub fn owner(i: usize) -> Owner {
    Owner {
        pod_uid: format!("uid-{i}"),
        namespace: "default".into(),
        pod: format!("pod-{i}"),
        container_id: format!("c{i:04}"),
        ifname: "net1".into(),
        node: format!("node-{}", i % 2),
        network: String::new(),
    }
}

pub fn short_ttl(secs: u64) -> Options {
    Options {
        pending_ttl: Duration::from_secs(secs),
        ..Options::default()
    }
}
