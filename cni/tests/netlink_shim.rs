//! The host shim: a node reaches its own macvlan pods only through a host-side macvlan and a
//! per-pod route.

mod netlink_common;

use netlink_common::{host, ip, net, open, spec};
use static_macvlan_cni::netlink::{setup_pod_macvlan, NetError, Route};
use static_macvlan_testkit::netns::{Lan, NetNs};

const SHIM: &str = "smv-shim";

#[tokio::test]
async fn node_reaches_its_pod_only_through_the_shim_route() {
    let lan = Lan::builder()
        .prefix("shim")
        .nodes(2)
        .node_addresses(&["192.0.2.1/24", "192.0.2.2/24"])
        .build()
        .unwrap();
    let node = &lan.node(0).ns;
    let pod = NetNs::new("shim-pod").unwrap();
    let h = host(lan.node(0));
    setup_pod_macvlan(&h.nl, &open(&pod), &spec("eth0", &["192.0.2.11/24"]))
        .await
        .unwrap();

    assert!(
        lan.node(1).ns.ping("192.0.2.11"),
        "another node reaches the pod"
    );
    assert!(
        !node.ping_within("192.0.2.11", 1),
        "a macvlan's parent must not reach it (no shim yet)"
    );

    // No shim address: IPv4 resolves the node's own address through the shim.
    assert!(h.nl.ensure_host_shim("eth0", SHIM, &[]).await.unwrap());
    assert!(
        !h.nl.ensure_host_shim("eth0", SHIM, &[]).await.unwrap(),
        "idempotent"
    );
    let shim = h.nl.link_by_name(SHIM).await.unwrap();
    assert!(shim.up);
    assert_eq!(shim.kind.as_deref(), Some("macvlan"));
    assert!(
        !node.ping_within("192.0.2.11", 1),
        "the shim alone is not enough: the route decides"
    );

    h.nl.add_host_route(ip("192.0.2.11"), SHIM).await.unwrap();
    h.nl.add_host_route(ip("192.0.2.11"), SHIM).await.unwrap();
    let routes = h.nl.routes(shim.index).await.unwrap();
    assert!(
        routes.contains(&Route::on_link(net("192.0.2.11/32"))),
        "{routes:?}"
    );
    assert!(node.ping("192.0.2.11"), "node -> pod through the shim");
    assert!(pod.ping("192.0.2.1"), "pod -> node answers come back");
    assert!(
        !h.nl.delete_shim_if_unused(SHIM).await.unwrap(),
        "still routed"
    );

    assert!(h.nl.del_host_route(ip("192.0.2.11"), SHIM).await.unwrap());
    assert!(!h.nl.del_host_route(ip("192.0.2.11"), SHIM).await.unwrap());
    assert!(
        !node.ping_within("192.0.2.11", 1),
        "route gone, pod unreachable"
    );
    assert!(h.nl.delete_shim_if_unused(SHIM).await.unwrap());
    assert!(!h.nl.link_exists(SHIM).await.unwrap());
    assert!(!h.nl.delete_shim_if_unused(SHIM).await.unwrap());
    assert!(!h.nl.del_host_route(ip("192.0.2.11"), SHIM).await.unwrap());
}

#[tokio::test]
async fn with_a_shim_address_both_families_reach_the_pod() {
    let lan = Lan::builder()
        .prefix("shim6")
        .nodes(1)
        .node_addresses(&["2001:db8:1::1/64"])
        .build()
        .unwrap();
    lan.node(0)
        .ns
        .ip(&["address", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    let node = &lan.node(0).ns;
    let pod = NetNs::new("shim6-pod").unwrap();
    let h = host(lan.node(0));
    setup_pod_macvlan(
        &h.nl,
        &open(&pod),
        &spec("eth0", &["192.0.2.11/24", "2001:db8:1::11/64"]),
    )
    .await
    .unwrap();
    let shim_ips = [ip("192.0.2.250"), ip("2001:db8:1::fffe")];
    assert!(h
        .nl
        .ensure_host_shim("eth0", SHIM, &shim_ips)
        .await
        .unwrap());
    assert!(!h
        .nl
        .ensure_host_shim("eth0", SHIM, &shim_ips)
        .await
        .unwrap());
    let shim = h.nl.link_by_name(SHIM).await.unwrap();
    let addrs = h.nl.addresses(shim.index).await.unwrap();
    assert!(addrs.contains(&net("192.0.2.250/32")), "{addrs:?}");
    assert!(addrs.contains(&net("2001:db8:1::fffe/128")), "{addrs:?}");

    for pod_ip in ["192.0.2.11", "2001:db8:1::11"] {
        h.nl.add_host_route(ip(pod_ip), SHIM).await.unwrap();
        assert!(node.ping_within(pod_ip, 5), "node -> pod {pod_ip}");
    }
    // The pod saw the shim's address as the source.
    let neigh = pod
        .ip_json(&["-6", "neigh", "show", "2001:db8:1::fffe"])
        .unwrap();
    assert_eq!(
        neigh[0]["lladdr"],
        netlink_common::mac_str(shim.mac.unwrap())
    );

    assert!(!h.nl.delete_shim_if_unused(SHIM).await.unwrap());
    assert!(h.nl.del_host_route(ip("192.0.2.11"), SHIM).await.unwrap());
    assert!(
        !h.nl.delete_shim_if_unused(SHIM).await.unwrap(),
        "IPv6 route left"
    );
    assert!(h
        .nl
        .del_host_route(ip("2001:db8:1::11"), SHIM)
        .await
        .unwrap());
    // The kernel's own routes on the shim (fe80::/64, its /128) do not count as use.
    assert!(h.nl.delete_shim_if_unused(SHIM).await.unwrap());
    assert!(!h.nl.link_exists(SHIM).await.unwrap());
}

#[tokio::test]
async fn a_shim_name_taken_by_another_link_is_a_conflict() {
    let lan = Lan::builder().prefix("shimc").nodes(1).build().unwrap();
    let h = host(lan.node(0));
    let err = h.nl.ensure_host_shim("eth0", "lo", &[]).await.unwrap_err();
    assert!(
        matches!(&err, NetError::LinkConflict { name, .. } if name == "lo"),
        "{err:?}"
    );
    let err = h.nl.ensure_host_shim("eth9", SHIM, &[]).await.unwrap_err();
    assert!(matches!(err, NetError::LinkNotFound { .. }), "{err:?}");
    assert!(!h.nl.delete_shim_if_unused("lo").await.unwrap());
    assert!(h.nl.link_exists("lo").await.unwrap());
}

/// An IPv6 route's source must be usable: the kernel refuses a tentative one (`EINVAL`), and
/// a shim's link-local address is tentative for a moment after the shim comes up. Here the
/// moment is stretched: a shim made by hand, with duplicate address detection on (300 ms).
#[tokio::test]
async fn an_ipv6_route_waits_for_the_shims_address_to_be_usable() {
    let lan = Lan::builder().prefix("shimdad").nodes(1).build().unwrap();
    let node = &lan.node(0).ns;
    node.ip(&[
        "link", "add", SHIM, "link", "eth0", "type", "macvlan", "mode", "bridge",
    ])
    .unwrap();
    for setting in [
        format!("net.ipv6.conf.{SHIM}.accept_dad=1"),
        format!("net.ipv6.conf.{SHIM}.router_solicitation_delay=0"),
        format!("net.ipv6.neigh.{SHIM}.retrans_time_ms=300"),
    ] {
        let out = node.exec(&["sysctl", "-qw", &setting]).unwrap();
        assert!(out.status.success(), "{setting}: {out:?}");
    }
    node.ip(&["link", "set", SHIM, "up"]).unwrap();
    let tentative = node
        .ip(&["-6", "addr", "show", "dev", SHIM, "tentative"])
        .unwrap();
    assert!(tentative.contains("fe80::"), "not tentative: {tentative}");

    let h = host(lan.node(0));
    assert!(!h.nl.ensure_host_shim("eth0", SHIM, &[]).await.unwrap());
    h.nl.add_host_route(ip("2001:db8:1::11"), SHIM)
        .await
        .unwrap();
    let routes = node.ip(&["-6", "route", "show", "dev", SHIM]).unwrap();
    assert!(
        routes.contains("2001:db8:1::11") && routes.contains("src fe80::"),
        "{routes}"
    );
}
