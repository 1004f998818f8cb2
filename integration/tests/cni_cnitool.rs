//! The plugin driven through the official CNI client, `cnitool` (libcni): a conflist of
//! `static-macvlan` + the reference `tuning` plugin, with `ips`/`mac` capabilities, through add,
//! check and del. Needs root, Debian's containernetworking-plugins, and cnitool built by
//! `scripts/build-cnitool.sh` (or `$STATIC_MACVLAN_CNITOOL`, or `cnitool` in PATH).

mod cni_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use cni_common::*;
use serde_json::json;
use static_macvlan_cni::netns::NetnsGuard;

fn cnitool() -> PathBuf {
    if let Some(p) = std::env::var_os("STATIC_MACVLAN_CNITOOL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let built = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("cnitool/cnitool"));
    if let Some(p) = built.filter(|p| p.exists()) {
        return p;
    }
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("cnitool"))
            .find(|p| p.exists())
    });
    in_path.unwrap_or_else(|| {
        panic!(
            "cnitool not found: build it with `scripts/build-cnitool.sh` (offline, from Debian \
             packages) or set STATIC_MACVLAN_CNITOOL"
        )
    })
}

/// `cnitool <verb> <net> <netns>` run inside the node's namespace, as a runtime on that node.
fn run_cnitool(node: &Path, env: &[(&str, String)], verb: &str, net: &str, netns: &Path) -> Run {
    let (node, netns) = (node.to_path_buf(), netns.to_path_buf());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (verb, net) = (verb.to_string(), net.to_string());
    let tool = cnitool();
    thread::spawn(move || {
        let _inside = NetnsGuard::enter(&node).unwrap();
        let start = std::time::Instant::now();
        let mut cmd = Command::new(tool);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .args([verb.as_str(), net.as_str()])
            .arg(&netns)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = spawn(&mut cmd).wait_with_output().unwrap();
        Run {
            exit: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    })
    .join()
    .unwrap()
}

#[test]
fn conflist_with_tuning_through_cnitool() {
    let tool = cnitool();
    let c = Cluster::new(1);
    c.put_subnet("lan", |_| {});
    let confdir = tempfile::tempdir().unwrap();
    let cachedir = tempfile::tempdir().unwrap();
    let mut ours = c.netconf("lan", "1.0.0");
    let ours = ours.as_object_mut().unwrap();
    for k in ["cniVersion", "name"] {
        ours.remove(k);
    }
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "lan-chain",
        "plugins": [ours, {"type": "tuning", "mtu": 1400}],
    });
    let mut f = std::fs::File::create(confdir.path().join("10-lan.conflist")).unwrap();
    f.write_all(conflist.to_string().as_bytes()).unwrap();

    let pod = Pod::new("cnitool");
    let node = c.lan.node(0).ns.path();
    let env = vec![
        ("NETCONFPATH", confdir.path().display().to_string()),
        (
            "CNI_PATH",
            format!("{}:/usr/lib/cni", plugin_dir().display()),
        ),
        ("CNI_IFNAME", "net1".to_string()),
        ("CNI_CACHE_DIR", cachedir.path().display().to_string()),
        (
            "CAP_ARGS",
            json!({"ips": ["10.230.0.66/24"], "mac": "02:00:00:00:66:01"}).to_string(),
        ),
        ("STATIC_MACVLAN_NODE", c.node_name(0)),
    ];

    let add = run_cnitool(&node, &env, "add", "lan-chain", &pod.ns.path());
    assert_eq!(
        add.exit,
        0,
        "{} add: {}{}",
        tool.display(),
        add.stdout,
        add.stderr
    );
    let result = add.json();
    assert_eq!(result["ips"][0]["address"], "10.230.0.66/24", "{result}");
    assert_eq!(pod.addresses("net1"), ["10.230.0.66/24"]);
    assert_eq!(pod.mac("net1"), "02:00:00:00:66:01");
    let mtu = pod.ns.ip_json(&["link", "show", "net1"]).unwrap()[0]["mtu"].clone();
    assert_eq!(mtu, 1400, "tuning did not run after us");
    assert_eq!(c.reservations().len(), 1);

    let check = run_cnitool(&node, &env, "check", "lan-chain", &pod.ns.path());
    assert_eq!(check.exit, 0, "check: {}{}", check.stdout, check.stderr);

    // CHECK through the chain notices a missing address.
    pod.ns.ip(&["addr", "flush", "dev", "net1"]).unwrap();
    let check = run_cnitool(&node, &env, "check", "lan-chain", &pod.ns.path());
    assert_ne!(check.exit, 0, "check passed without the address");

    let del = run_cnitool(&node, &env, "del", "lan-chain", &pod.ns.path());
    assert_eq!(del.exit, 0, "del: {}{}", del.stdout, del.stderr);
    assert_eq!(pod.ns.link_names().unwrap(), ["lo"]);
    assert!(c.reservations().is_empty(), "{}", c.dump());
}
