//! Measures creating a pod macvlan directly inside the pod namespace against creating it in the
//! host and moving it. Prints the numbers; asserts only that both ways work (timings are too
//! machine-dependent to assert on). `cargo test --test netlink_timing -- --nocapture` to see.

mod netlink_common;

use std::time::{Duration, Instant};

use netlink_common::{host, open, spec};
use static_macvlan_cni::netlink::{
    setup_pod_macvlan, temp_link_name, MacvlanMode, Netlink, NewMacvlan,
};
use static_macvlan_testkit::netns::{Lan, NetNs};

const ROUNDS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn create_in_netns_versus_create_then_move() {
    let lan = Lan::builder().prefix("time").nodes(1).build().unwrap();
    let pod = NetNs::new("time").unwrap();
    let node = host(lan.node(0));
    let pod_ns = open(&pod);
    let pod_nl = Netlink::open_in(&pod_ns).unwrap();
    let parent = node.nl.link_by_name("eth0").await.unwrap().index;
    let new = || NewMacvlan {
        name: temp_link_name(),
        parent_index: parent,
        mode: MacvlanMode::Bridge,
        mac: None,
        mtu: None,
    };

    let (mut direct, mut moved, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let m = new();
        let t = Instant::now();
        node.nl.create_macvlan_in_netns(&m, &pod_ns).await.unwrap();
        direct.push(t.elapsed());
        assert!(pod_nl.delete_link_by_name(&m.name).await.unwrap());

        let m = new();
        let t = Instant::now();
        node.nl.create_macvlan(&m).await.unwrap();
        let index = node.nl.link_by_name(&m.name).await.unwrap().index;
        node.nl.move_to_netns(index, &pod_ns).await.unwrap();
        moved.push(t.elapsed());
        assert!(pod_nl.delete_link_by_name(&m.name).await.unwrap());

        let t = Instant::now();
        let link = setup_pod_macvlan(&node.nl, &pod_ns, &spec("net1", &["192.0.2.51/24"]))
            .await
            .unwrap();
        full.push(t.elapsed());
        pod_nl.delete_link(link.index).await.unwrap();
    }
    let (direct, moved, full) = (median(direct), median(moved), median(full));
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "macvlan timing (median of {ROUNDS}): create in netns {direct:?}, \
         create then move {moved:?}, full setup_pod_macvlan (IPv4) {full:?}"
    );
    assert_eq!(pod.link_names().unwrap(), vec!["lo"]);
}
