//! Our result JSON against the reference plugins' (`macvlan` + `host-local` from Debian's
//! `containernetworking-plugins`, in /usr/lib/cni) on the same topology: the same keys and value
//! shapes for every cniVersion both speak. Needs root.

mod cni_common;

use std::path::Path;

use cni_common::*;
use serde_json::{json, Map, Value};

const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The shape of a JSON value: objects keep their keys, arrays the shape of their first item,
/// leaves become their type name.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn reference(c: &Cluster, version: &str, pod: &Pod, data_dir: &Path) -> Run {
    let conf = json!({
        "cniVersion": version,
        "name": "reference",
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": LAN_CIDR, "rangeStart": "10.230.0.100", "rangeEnd": "10.230.0.150", "gateway": GATEWAY}]],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        },
    });
    let env: Vec<(String, String)> = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", pod.container_id.clone()),
        ("CNI_NETNS", pod.ns.path().display().to_string()),
        ("CNI_IFNAME", "net1".to_string()),
        ("CNI_PATH", REFERENCE_DIR.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    run_reference_in(&c.lan.node(0).ns.path(), &env, &conf.to_string())
}

fn run_reference_in(netns: &Path, env: &[(String, String)], stdin: &str) -> Run {
    // Same mechanics as the plugin's runs, with the reference binary.
    let bin = Path::new(REFERENCE_DIR).join("macvlan");
    assert!(
        bin.exists(),
        "{} not found: install Debian's containernetworking-plugins",
        bin.display()
    );
    run_binary_in(&bin, netns, env, stdin)
}

#[test]
fn result_shapes_match_the_reference_plugins() {
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let data = tempfile::tempdir().unwrap();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let ours_pod = Pod::new("ours");
        let ref_pod = Pod::new("ref");
        let ours = c
            .cni(0, "ADD", &c.netconf("lan", version), &ours_pod, "net1")
            .ok()
            .json();
        // The reference plugins of Debian bookworm stop at 1.0.0; 1.1.0 results have the 1.0.0 shape.
        let ref_version = if version == "1.1.0" { "1.0.0" } else { version };
        let theirs = reference(&c, ref_version, &ref_pod, data.path())
            .ok()
            .json();
        let mut their_shape = shape(&theirs);
        their_shape["cniVersion"] = json!("string");
        assert_eq!(
            shape(&ours),
            their_shape,
            "{version}:\nours   {ours}\ntheirs {theirs}"
        );
        // And the same values where they must agree.
        assert_eq!(ours["routes"], theirs["routes"], "{version}");
        assert_eq!(ours["dns"], theirs["dns"], "{version}");
        assert_eq!(
            ours["ips"][0]["gateway"], theirs["ips"][0]["gateway"],
            "{version}"
        );
        assert_eq!(
            ours["ips"][0].get("version"),
            theirs["ips"][0].get("version"),
            "{version}"
        );
    }
}
