//! Shared helpers of the `netlink_*` tests (real namespaces; run as root).

#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use static_macvlan_cni::netlink::{MacvlanMode, Netlink, PodInterface, Route};
use static_macvlan_cni::netns::Netns;
use static_macvlan_testkit::netns::{LanNode, NetNs};

pub fn net(s: &str) -> IpNetwork {
    s.parse().expect("test network")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex octet"))
        .collect();
    bytes.try_into().expect("six octets")
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A node's namespace as the plugin sees it: opened, with a netlink connection inside.
pub struct Host {
    pub netns: Netns,
    pub nl: Netlink,
}

pub fn host(node: &LanNode) -> Host {
    let netns = Netns::open(node.ns.path()).expect("open node netns");
    let nl = Netlink::open_in(&netns).expect("netlink in node netns");
    Host { netns, nl }
}

pub fn open(ns: &NetNs) -> Netns {
    Netns::open(ns.path()).expect("open netns")
}

/// A bridge-mode attachment on `eth0` without routes.
pub fn spec(ifname: &str, addresses: &[&str]) -> PodInterface {
    PodInterface {
        parent: "eth0".into(),
        ifname: ifname.into(),
        mode: MacvlanMode::Bridge,
        mac: None,
        mtu: None,
        addresses: addresses.iter().map(|a| net(a)).collect(),
        routes: Vec::<Route>::new(),
        dad_timeout: Some(Duration::from_secs(10)),
    }
}
