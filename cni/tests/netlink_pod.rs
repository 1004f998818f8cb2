//! Pod macvlans on a two-node LAN of real namespaces: create directly inside the pod, rename,
//! configure, verify with the kernel, ping across the LAN, reject bad input before changing
//! anything, undo a failed set-up, tear down idempotently.

mod netlink_common;

use netlink_common::{host, ip, mac, mac_str, net, open, spec};
use static_macvlan_cni::netlink::{
    setup_pod_macvlan, teardown_pod_macvlan, temp_link_name, MacvlanMode, NetError, Netlink,
    NewMacvlan, Route,
};
use static_macvlan_testkit::netns::{Lan, NetNs, Veth};

#[tokio::test]
async fn pods_on_two_nodes_get_configured_macvlans_and_reach_each_other() {
    let lan = Lan::builder().prefix("pod").nodes(2).build().unwrap();
    let (pod1, pod2) = (NetNs::new("pod1").unwrap(), NetNs::new("pod2").unwrap());
    let (host1, host2) = (host(lan.node(0)), host(lan.node(1)));

    let mut spec1 = spec("eth0", &["192.0.2.11/24", "2001:db8:1::11/64"]);
    spec1.mac = Some(mac("02:5a:00:00:00:11"));
    spec1.mtu = Some(1400);
    spec1.routes = vec![
        Route::default_via(ip("192.0.2.254")),
        Route {
            destination: net("198.51.100.0/24"),
            gateway: Some(ip("192.0.2.253")),
        },
        Route::default_via(ip("2001:db8:1::fe")),
    ];
    let ns1 = open(&pod1);
    let link1 = setup_pod_macvlan(&host1.nl, &ns1, &spec1).await.unwrap();
    assert_eq!(link1.name, "eth0");
    assert_eq!(link1.mac, mac("02:5a:00:00:00:11"));
    assert_eq!(link1.mtu, 1400);

    let mut spec2 = spec("net1", &["192.0.2.12/24", "2001:db8:1::12/64"]);
    spec2.mac = Some(mac("02:5a:00:00:00:12"));
    let ns2 = open(&pod2);
    let link2 = setup_pod_macvlan(&host2.nl, &ns2, &spec2).await.unwrap();
    assert_eq!(link2.mtu, 1500, "inherits the parent's MTU");

    // The kernel, through our own queries.
    let nl1 = Netlink::open_in(&ns1).unwrap();
    let l = nl1.link_by_name("eth0").await.unwrap();
    assert_eq!(l.index, link1.index);
    assert_eq!(l.kind.as_deref(), Some("macvlan"));
    assert_eq!(l.macvlan_mode, Some(MacvlanMode::Bridge));
    assert!(l.up);
    let addrs = nl1.addresses(l.index).await.unwrap();
    assert!(addrs.contains(&net("192.0.2.11/24")), "{addrs:?}");
    assert!(addrs.contains(&net("2001:db8:1::11/64")), "{addrs:?}");
    let routes = nl1.routes(l.index).await.unwrap();
    for r in &spec1.routes {
        assert!(routes.contains(r), "{r} missing from {routes:?}");
    }

    // The kernel, through iproute2.
    let j = pod1.ip_json(&["-d", "link", "show", "eth0"]).unwrap();
    assert_eq!(j[0]["address"], "02:5a:00:00:00:11");
    assert_eq!(j[0]["mtu"], 1400);
    assert_eq!(j[0]["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(j[0]["linkinfo"]["info_data"]["mode"], "bridge");
    let j = pod1.ip_json(&["route", "show", "default"]).unwrap();
    assert_eq!(j[0]["gateway"], "192.0.2.254");
    assert_eq!(j[0]["dev"], "eth0");
    let j = pod1
        .ip_json(&["-6", "address", "show", "dev", "eth0"])
        .unwrap();
    let infos = j[0]["addr_info"].as_array().unwrap();
    assert!(infos
        .iter()
        .any(|a| a["local"] == "2001:db8:1::11" && a.get("tentative").is_none()));
    for (key, want) in [
        ("/proc/sys/net/ipv4/conf/eth0/arp_notify", "1"),
        ("/proc/sys/net/ipv6/conf/eth0/ndisc_notify", "1"),
    ] {
        assert_eq!(pod1.run(&["cat", key]).unwrap().trim(), want, "{key}");
    }

    // Created directly inside the pods: the nodes never saw the links.
    for node in &lan.nodes {
        assert_eq!(node.ns.link_names().unwrap(), vec!["lo", "eth0"]);
    }
    assert_eq!(pod2.link_names().unwrap(), vec!["lo", "net1"]);

    // Across the LAN, both families.
    assert!(pod1.ping("192.0.2.12"), "pod1 -> pod2 over IPv4");
    assert!(pod2.ping("192.0.2.11"), "pod2 -> pod1 over IPv4");
    assert!(pod1.ping("2001:db8:1::12"), "pod1 -> pod2 over IPv6");
    let neigh = pod1.ip_json(&["neigh", "show", "192.0.2.12"]).unwrap();
    assert_eq!(neigh[0]["lladdr"], mac_str(link2.mac));

    // Tear-down is idempotent and leaves the pods empty.
    drop(nl1);
    assert!(teardown_pod_macvlan(&pod1.path(), "eth0").await.unwrap());
    assert!(!teardown_pod_macvlan(&pod1.path(), "eth0").await.unwrap());
    assert!(teardown_pod_macvlan(&pod2.path(), "net1").await.unwrap());
    assert_eq!(pod1.link_names().unwrap(), vec!["lo"]);
    assert_eq!(pod2.link_names().unwrap(), vec!["lo"]);
    assert!(!pod1.ping_within("192.0.2.12", 1));
}

#[tokio::test]
async fn step_by_step_create_in_netns_rename_configure_delete() {
    let lan = Lan::builder().prefix("step").nodes(1).build().unwrap();
    let pod = NetNs::new("step").unwrap();
    let node = host(lan.node(0));
    let pod_ns = open(&pod);
    let parent = node.nl.link_by_name("eth0").await.unwrap();

    let tmp = temp_link_name();
    let new = NewMacvlan {
        name: tmp.clone(),
        parent_index: parent.index,
        mode: MacvlanMode::Bridge,
        mac: None,
        mtu: None,
    };
    node.nl
        .create_macvlan_in_netns(&new, &pod_ns)
        .await
        .unwrap();
    assert!(!node.nl.link_exists(&tmp).await.unwrap());
    let err = node
        .nl
        .create_macvlan_in_netns(&new, &pod_ns)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::EEXIST));
    assert!(
        err.to_string()
            .starts_with(&format!("create macvlan {tmp} on #{}", parent.index)),
        "{err}"
    );

    let pod_nl = Netlink::open_in(&pod_ns).unwrap();
    let link = pod_nl.link_by_name(&tmp).await.unwrap();
    assert_eq!(link.kind.as_deref(), Some("macvlan"));
    assert!(!link.up);
    pod_nl.rename(link.index, "net1").await.unwrap();
    pod_nl
        .set_mac(link.index, mac("02:5a:00:00:00:21"))
        .await
        .unwrap();
    pod_nl.set_mtu(link.index, 1280).await.unwrap();
    pod_nl
        .add_address(link.index, net("192.0.2.21/24"))
        .await
        .unwrap();
    pod_nl.set_up(link.index).await.unwrap();
    let route = Route {
        destination: net("203.0.113.0/24"),
        gateway: Some(ip("192.0.2.1")),
    };
    pod_nl.add_route(link.index, &route).await.unwrap();
    let onlink = Route::on_link(net("198.51.100.64/26"));
    pod_nl.add_route(link.index, &onlink).await.unwrap();

    let link = pod_nl.link_by_name("net1").await.unwrap();
    assert_eq!(link.mac, Some(mac("02:5a:00:00:00:21")));
    assert_eq!(link.mtu, 1280);
    assert!(link.up);
    assert!(!pod_nl.link_exists(&tmp).await.unwrap());
    assert_eq!(
        pod_nl.addresses(link.index).await.unwrap()[0],
        net("192.0.2.21/24")
    );
    let routes = pod_nl.routes(link.index).await.unwrap();
    assert!(
        routes.contains(&route) && routes.contains(&onlink),
        "{routes:?}"
    );
    assert!(
        routes.contains(&Route::on_link(net("192.0.2.0/24"))),
        "connected route"
    );
    let j = pod.ip_json(&["route", "show", "198.51.100.64/26"]).unwrap();
    assert_eq!(j[0]["scope"], "link");

    pod_nl.delete_link(link.index).await.unwrap();
    assert!(!pod_nl.link_exists("net1").await.unwrap());
    let err = pod_nl.delete_link(link.index).await.unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::ENODEV));
    assert!(!pod_nl.delete_link_by_name("net1").await.unwrap());
    assert_eq!(lan.node(0).ns.link_names().unwrap(), vec!["lo", "eth0"]);
}

#[tokio::test]
async fn mtu_above_the_parent_is_rejected_before_anything_changes() {
    let lan = Lan::builder().prefix("mtu").nodes(1).build().unwrap();
    let pod = NetNs::new("mtu").unwrap();
    let node = host(lan.node(0));
    let mut s = spec("eth0", &["192.0.2.31/24"]);
    s.mtu = Some(9000);
    let err = setup_pod_macvlan(&node.nl, &open(&pod), &s)
        .await
        .unwrap_err();
    match &err {
        NetError::MtuTooLarge {
            mtu,
            parent,
            parent_mtu,
        } => assert_eq!((*mtu, parent.as_str(), *parent_mtu), (9000, "eth0", 1500)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "mtu 9000 is larger than mtu 1500 of parent link eth0"
    );
    assert_eq!(pod.link_names().unwrap(), vec!["lo"]);

    s.mtu = Some(1500);
    let link = setup_pod_macvlan(&node.nl, &open(&pod), &s).await.unwrap();
    assert_eq!(link.mtu, 1500);
}

#[tokio::test]
async fn every_mode_creates_a_macvlan_of_that_mode() {
    let lan = Lan::builder().prefix("mode").nodes(1).build().unwrap();
    let pod = NetNs::new("mode").unwrap();
    let node = host(lan.node(0));
    let parent_mac = node.nl.link_by_name("eth0").await.unwrap().mac.unwrap();
    let pod_ns = open(&pod);
    let pod_nl = Netlink::open_in(&pod_ns).unwrap();
    for mode in MacvlanMode::ALL {
        let mut s = spec("net1", &[]);
        s.mode = mode;
        let link = setup_pod_macvlan(&node.nl, &pod_ns, &s)
            .await
            .unwrap_or_else(|e| panic!("mode {mode}: {e}"));
        let l = pod_nl.link_by_name("net1").await.unwrap();
        assert_eq!(l.macvlan_mode, Some(mode));
        let j = pod.ip_json(&["-d", "link", "show", "net1"]).unwrap();
        assert_eq!(j[0]["linkinfo"]["info_data"]["mode"], mode.as_str());
        if mode == MacvlanMode::Passthru {
            // The kernel gives a passthru macvlan its parent's MAC, and ignores any other.
            assert_eq!(link.mac, parent_mac);
            pod_nl.delete_link(link.index).await.unwrap();
            s.mac = Some(mac("02:5a:00:00:00:99"));
            let err = setup_pod_macvlan(&node.nl, &pod_ns, &s).await.unwrap_err();
            assert!(
                matches!(&err, NetError::PassthruMac { parent } if parent == "eth0"),
                "{err:?}"
            );
            assert_eq!(pod.link_names().unwrap(), vec!["lo"]);
            s.mac = Some(parent_mac);
            let again = setup_pod_macvlan(&node.nl, &pod_ns, &s).await.unwrap();
            assert_eq!(
                again.mac, parent_mac,
                "asking for the parent's own MAC is fine"
            );
        }
        assert!(pod_nl.delete_link_by_name("net1").await.unwrap());
        assert_eq!(pod.link_names().unwrap(), vec!["lo"], "mode {mode}");
    }
}

#[tokio::test]
async fn a_taken_ifname_is_a_conflict_and_nothing_is_created() {
    let lan = Lan::builder().prefix("conf").nodes(1).build().unwrap();
    let pod = NetNs::new("conf").unwrap();
    let other = NetNs::new("conf-o").unwrap();
    Veth::pair("net1", &pod, "x0", &other).unwrap();
    let node = host(lan.node(0));
    let err = setup_pod_macvlan(&node.nl, &open(&pod), &spec("net1", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetError::LinkConflict { name, .. } if name == "net1"),
        "{err:?}"
    );
    assert_eq!(pod.link_names().unwrap(), vec!["lo", "net1"]);

    let err = setup_pod_macvlan(&node.nl, &open(&pod), &spec("no/slash", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::InvalidName { .. }), "{err:?}");

    let mut s = spec("net2", &[]);
    s.parent = "eth9".into();
    let err = setup_pod_macvlan(&node.nl, &open(&pod), &s)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetError::LinkNotFound { name } if name == "eth9"),
        "{err:?}"
    );
    assert_eq!(pod.link_names().unwrap(), vec!["lo", "net1"]);
}

#[tokio::test]
async fn a_failure_after_creation_removes_the_link_again() {
    let lan = Lan::builder().prefix("undo").nodes(1).build().unwrap();
    let pod = NetNs::new("undo").unwrap();
    let node = host(lan.node(0));
    let mut s = spec("eth0", &["192.0.2.41/24"]);
    // Not on a connected subnet: the kernel refuses the route after the link is up.
    s.routes = vec![Route::default_via(ip("203.0.113.1"))];
    let err = setup_pod_macvlan(&node.nl, &open(&pod), &s)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::ENETUNREACH), "{err}");
    assert!(
        err.to_string()
            .starts_with("add route 0.0.0.0/0 via 203.0.113.1 dev #"),
        "{err}"
    );
    assert_eq!(pod.link_names().unwrap(), vec!["lo"]);

    // Two attachments cannot share a MAC on one parent: the second fails at bring-up.
    let pod2 = NetNs::new("undo2").unwrap();
    let mut a = spec("net1", &[]);
    a.mac = Some(mac("02:5a:00:00:00:41"));
    setup_pod_macvlan(&node.nl, &open(&pod), &a).await.unwrap();
    let err = setup_pod_macvlan(&node.nl, &open(&pod2), &a)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(nix::libc::EADDRINUSE), "{err}");
    assert_eq!(pod2.link_names().unwrap(), vec!["lo"]);
}

#[tokio::test]
async fn teardown_of_a_missing_namespace_or_foreign_link_is_a_no_op() {
    assert!(!teardown_pod_macvlan(
        std::path::Path::new("/var/run/netns/static-macvlan-gone"),
        "eth0"
    )
    .await
    .unwrap());
    let pod = NetNs::new("td").unwrap();
    let other = NetNs::new("td-o").unwrap();
    Veth::pair("eth0", &pod, "x0", &other).unwrap();
    assert!(!teardown_pod_macvlan(&pod.path(), "eth0").await.unwrap());
    assert_eq!(pod.link_names().unwrap(), vec!["lo", "eth0"]);
}

/// The two halves an ADD overlaps with its reservation: created down under a temporary name
/// with the kernel's MAC and no address, then given the reserved MAC and address; or discarded.
#[tokio::test]
async fn a_link_created_before_its_mac_is_known_gets_it_when_configured() {
    use static_macvlan_cni::netlink::{configure_pod_macvlan, create_pod_macvlan};
    let lan = Lan::builder().prefix("half").nodes(1).build().unwrap();
    let pod = NetNs::new("half").unwrap();
    let node = host(lan.node(0));
    let pod_ns = open(&pod);
    let pod_nl = Netlink::open_in(&pod_ns).unwrap();

    let early = spec("net1", &[]);
    let pending = create_pod_macvlan(&node.nl, &pod_ns, &early).await.unwrap();
    let tmp = pod_nl.link_by_index(pending.index()).await.unwrap();
    assert!(tmp.name.starts_with("smv") && !tmp.up, "{tmp:?}");
    assert!(pod_nl.addresses(tmp.index).await.unwrap().is_empty());
    // The CNI name stays free until the link is configured.
    assert!(!pod_nl.link_exists("net1").await.unwrap());

    let mut full = spec("net1", &["192.0.2.41/24"]);
    full.mac = Some(mac("02:5a:00:00:00:41"));
    let link = configure_pod_macvlan(pending, &full).await.unwrap();
    assert_eq!(
        (link.name.as_str(), link.mac),
        ("net1", mac("02:5a:00:00:00:41"))
    );
    let l = pod_nl.link_by_name("net1").await.unwrap();
    assert!(l.up);
    assert!(pod_nl
        .addresses(l.index)
        .await
        .unwrap()
        .contains(&net("192.0.2.41/24")));

    // Discarded (the reservation failed): nothing stays in the pod.
    let pending = create_pod_macvlan(&node.nl, &pod_ns, &spec("net2", &[]))
        .await
        .unwrap();
    pending.discard().await;
    assert_eq!(pod.link_names().unwrap(), vec!["lo", "net1"]);

    // A bad late MAC (multicast) fails the configuration and deletes the link.
    let pending = create_pod_macvlan(&node.nl, &pod_ns, &spec("net2", &[]))
        .await
        .unwrap();
    let mut bad = spec("net2", &["192.0.2.42/24"]);
    bad.mac = Some(mac("01:00:5e:00:00:01"));
    assert!(configure_pod_macvlan(pending, &bad).await.is_err());
    assert_eq!(pod.link_names().unwrap(), vec!["lo", "net1"]);
}
