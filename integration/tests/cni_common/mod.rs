//! Shared harness of the `cni_*` tests: a LAN of node namespaces, a real etcd reachable from
//! inside each node, and the real plugin binary run the way a runtime runs it (the `CNI_*`
//! environment, the netconf on stdin, in the node's network namespace).
//!
//! etcd listens on 127.0.0.1 of the test's own namespace. A node namespace has its own
//! loopback, so each node gets a [`Forwarder`]: a listener on 127.0.0.1:<etcd port> *inside*
//! the node, relaying to the real etcd. The endpoint in the netconf is then the same on every
//! node, and stopping etcd makes every node see it gone (connections are refused by the relay).
//!
//! The plugin binary is `target/<profile>/static-macvlan` next to this test's executable, or
//! `$STATIC_MACVLAN_PLUGIN`; it is hard-linked once per test process into a directory of its
//! own, so a build running meanwhile cannot swap it under a test. Build it first:
//! `cargo build -p static-macvlan-cni` (a dev-dependency does not build another package's
//! binaries, and `CARGO_BIN_EXE_*` exists only for a package's own tests).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use static_macvlan_allocator::{
    Allocator, EtcdConfig, MacPoolConfig, Mirrored, Options, RangeConfig, Reservation, SubnetConfig,
};
use static_macvlan_cni::netns::NetnsGuard;
use static_macvlan_testkit::netns::{Lan, NetNs};
use static_macvlan_testkit::EtcdServer;

/// The plugin binary, linked into a directory of its own (usable as `CNI_PATH`):
/// `target/<profile>/cni-test-plugin/<pid>/static-macvlan`, a hard link, so that a build replacing
/// the binary meanwhile does not change it under a running test. Directories of test processes
/// that are gone are removed.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test exe>  ->  target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let src = match std::env::var_os("STATIC_MACVLAN_PLUGIN") {
            Some(p) => PathBuf::from(p),
            None => profile_dir.join("static-macvlan"),
        };
        assert!(
            src.exists(),
            "plugin binary {} not found: run `cargo build -p static-macvlan-cni` first (or set \
             STATIC_MACVLAN_PLUGIN)",
            src.display()
        );
        let root = profile_dir.join("cni-test-plugin");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create plugin dir");
        let dst = dir.join("static-macvlan");
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).expect("copy plugin binary");
        }
        dir
    })
}

pub fn plugin_bin() -> PathBuf {
    plugin_dir().join("static-macvlan")
}

/// Relays 127.0.0.1:`port` of one namespace to 127.0.0.1:`port` of another.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Listens inside `ns` and connects from the test's namespace.
    pub fn start(ns: &NetNs, port: u16) -> Result<Forwarder> {
        Self::between(Some(ns.path()), None, port)
    }

    /// Listens in `listen_in` and connects from `connect_from` (`None`: the test's namespace).
    pub fn between(
        listen_in: Option<PathBuf>,
        connect_from: Option<PathBuf>,
        port: u16,
    ) -> Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            // A socket stays in the namespace it was created in: bind inside `listen_in`, then
            // move to `connect_from` for good, so that the relay threads spawned from here (and
            // their upstream connections) live there.
            let bound = (|| -> Result<(TcpListener, Option<NetnsGuard>)> {
                let guard = listen_in.as_ref().map(NetnsGuard::enter).transpose()?;
                let l = TcpListener::bind(("127.0.0.1", port)).context("bind relay")?;
                drop(guard);
                let stay = connect_from.as_ref().map(NetnsGuard::enter).transpose()?;
                Ok((l, stay))
            })();
            let (listener, _stay) = match bound {
                Ok(b) => {
                    let _ = tx.send(Ok(()));
                    b
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            listener.set_nonblocking(true).expect("nonblocking relay");
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        thread::spawn(move || relay(client, port));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        rx.recv().context("relay thread")??;
        Ok(Forwarder {
            stop,
            thread: Some(thread),
        })
    }
}

fn relay(client: TcpStream, port: u16) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else {
        // etcd is down: the plugin sees the connection reset, as with a dead endpoint.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut c1, mut u1) = (client, upstream);
    let a = thread::spawn(move || {
        let _ = copy(&mut c1, &mut u1);
        let _ = u1.shutdown(Shutdown::Write);
    });
    let _ = copy(&mut u2, &mut c2);
    let _ = c2.shutdown(Shutdown::Write);
    let _ = a.join();
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one plugin run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// stdout as JSON (`Value::Null` when empty).
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.exit, 0,
            "plugin failed: stdout {}\nstderr {}",
            self.stdout, self.stderr
        );
        self
    }

    /// The CNI error code (panics when the run succeeded or printed no error).
    pub fn code(&self) -> u64 {
        assert_ne!(
            self.exit, 0,
            "expected a failure, got: {}\nstderr {}",
            self.stdout, self.stderr
        );
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// Runs the plugin with `env` and `stdin` inside the namespace at `netns` (a node).
pub fn run_plugin_in(netns: &Path, env: &[(String, String)], stdin: &str) -> Run {
    run_binary_in(&plugin_bin(), netns, env, stdin)
}

/// Runs `bin` as a CNI plugin with `env` and `stdin` inside the namespace at `netns`.
pub fn run_binary_in(bin: &Path, netns: &Path, env: &[(String, String)], stdin: &str) -> Run {
    let netns = netns.to_path_buf();
    let env = env.to_vec();
    let stdin = stdin.to_string();
    let bin = bin.to_path_buf();
    // The child inherits the network namespace of the thread that forks it: enter the node on
    // a thread of its own, so that no test thread ever changes namespace.
    thread::spawn(move || {
        let _guard = NetnsGuard::enter(&netns).expect("enter node namespace");
        let start = Instant::now();
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd);
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write netconf");
        let out = child.wait_with_output().expect("wait plugin");
        Run {
            exit: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    })
    .join()
    .expect("plugin thread")
}

/// Spawns `cmd`, retrying on ETXTBSY: while the plugin binary was being copied, a process
/// forked meanwhile by another test may still hold the write descriptor until it execs.
pub fn spawn(cmd: &mut Command) -> std::process::Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("spawn {:?}: {e}", cmd.get_program()),
        }
    }
}

/// A pod as the runtime knows it: its sandbox namespace and identity.
pub struct Pod {
    pub ns: NetNs,
    pub container_id: String,
    pub uid: String,
    pub name: String,
    pub namespace: String,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        let ns = NetNs::new("pod").expect("pod netns");
        Pod {
            ns,
            container_id: format!("c{:016x}", fastrand::u64(..)),
            uid: format!("uid-{:08x}", fastrand::u32(..)),
            name: name.to_string(),
            namespace: "default".into(),
        }
    }

    /// `CNI_ARGS` as kubelet writes it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.container_id, self.uid
        )
    }

    /// The IPv4 addresses (with prefix) of `ifname`, from `ip -j addr`.
    pub fn addresses(&self, ifname: &str) -> Vec<String> {
        let v = self
            .ns
            .ip_json(&["addr", "show", "dev", ifname])
            .unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The MAC of `ifname`.
    pub fn mac(&self, ifname: &str) -> String {
        let v = self
            .ns
            .ip_json(&["link", "show", "dev", ifname])
            .expect("ip link");
        v[0]["address"].as_str().unwrap_or_default().to_string()
    }
}

/// A LAN of nodes, an etcd reachable from each, and an allocator handle for set-up and checks.
pub struct Cluster {
    pub etcd: EtcdServer,
    pub prefix: String,
    pub lan: Lan,
    pub rt: tokio::runtime::Runtime,
    pub alloc: Allocator,
    forwarders: Vec<Forwarder>,
    /// Per node `STATIC_MACVLAN_RUN_DIR` (locks, VLAN marks): nodes share this host's /run.
    run_dirs: Vec<tempfile::TempDir>,
}

pub const LAN_CIDR: &str = "10.230.0.0/24";
pub const GATEWAY: &str = "10.230.0.1";

impl Cluster {
    /// `nodes` nodes with NIC `eth0` and addresses 10.230.0.25x/24 (node i: .250 + i).
    pub fn new(nodes: usize) -> Cluster {
        let etcd = EtcdServer::start().expect("start etcd");
        Self::with_etcd(etcd, nodes)
    }

    pub fn with_etcd(etcd: EtcdServer, nodes: usize) -> Cluster {
        let lan = Self::lan(nodes);
        let port = port_of(&etcd);
        let forwarders = lan
            .nodes
            .iter()
            .map(|n| Forwarder::start(&n.ns, port).expect("etcd relay"))
            .collect();
        Self::finish(etcd, lan, forwarders)
    }

    /// etcd runs *inside* node 0, so that the plugin there reaches it without a relay (for
    /// timing); the test and the other nodes reach it through relays. Do not `restart` it.
    pub fn with_etcd_in_node0(nodes: usize) -> Cluster {
        let lan = Self::lan(nodes);
        let node0 = lan.node(0).ns.path();
        let etcd = {
            let path = node0.clone();
            thread::spawn(move || {
                let _inside = NetnsGuard::enter(&path).expect("enter node 0");
                EtcdServer::start().expect("start etcd in node 0")
            })
            .join()
            .expect("etcd start thread")
        };
        let port = port_of(&etcd);
        let mut forwarders =
            vec![Forwarder::between(None, Some(node0.clone()), port).expect("relay to node 0")];
        for n in lan.nodes.iter().skip(1) {
            forwarders.push(
                Forwarder::between(Some(n.ns.path()), Some(node0.clone()), port).expect("relay"),
            );
        }
        Self::finish(etcd, lan, forwarders)
    }

    fn lan(nodes: usize) -> Lan {
        let addrs: Vec<String> = (0..nodes)
            .map(|i| format!("10.230.0.{}/24", 250 + i))
            .collect();
        let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        Lan::builder()
            .prefix("cni")
            .nodes(nodes)
            .node_addresses(&addr_refs)
            .build()
            .expect("build LAN")
    }

    fn finish(etcd: EtcdServer, lan: Lan, forwarders: Vec<Forwarder>) -> Cluster {
        let nodes = lan.nodes.len();
        let prefix = etcd.fresh_prefix();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut cfg = EtcdConfig::new(etcd.endpoints());
        cfg.prefix = prefix.clone();
        let alloc = rt
            .block_on(Allocator::connect(&cfg, Options::default()))
            .expect("allocator");
        rt.block_on(alloc.ensure_schema()).expect("schema");
        // On a tmpfs, as `/run` is on a real node (not on this test machine, whose /run is on
        // its root file system).
        let run_dirs = (0..nodes)
            .map(|_| {
                tempfile::tempdir_in("/dev/shm")
                    .or_else(|_| tempfile::tempdir())
                    .expect("run dir")
            })
            .collect();
        Cluster {
            etcd,
            prefix,
            lan,
            rt,
            alloc,
            forwarders,
            run_dirs,
        }
    }

    /// Node `i`'s `STATIC_MACVLAN_RUN_DIR`.
    pub fn run_dir(&self, i: usize) -> &Path {
        self.run_dirs[i].path()
    }

    pub fn node_name(&self, i: usize) -> String {
        format!("node-{i}")
    }

    /// Writes subnet `name` (on `eth0`, 10.230.0.0/24, gateway .1) after `edit`.
    pub fn put_subnet(&self, name: &str, edit: impl FnOnce(&mut SubnetConfig)) {
        let mut spec = SubnetConfig {
            master: "eth0".into(),
            cidr: LAN_CIDR.into(),
            gateway: Some(GATEWAY.into()),
            ranges: vec![RangeConfig {
                start: "10.230.0.10".into(),
                end: "10.230.0.200".into(),
            }],
            ..Default::default()
        };
        edit(&mut spec);
        self.rt
            .block_on(self.alloc.put_subnet(&Mirrored {
                name: name.into(),
                uid: None,
                generation: Some(1),
                spec,
            }))
            .expect("put subnet");
    }

    pub fn put_macpool(&self, name: &str, start: &str, end: &str) {
        self.rt
            .block_on(self.alloc.put_macpool(&Mirrored {
                name: name.into(),
                uid: None,
                generation: Some(1),
                spec: MacPoolConfig {
                    ranges: vec![RangeConfig {
                        start: start.into(),
                        end: end.into(),
                    }],
                    allow_global: false,
                },
            }))
            .expect("put mac pool");
    }

    /// The netconf of network `subnet` in `version`.
    pub fn netconf(&self, subnet: &str, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": format!("net-{subnet}"),
            "type": "static-macvlan",
            "subnet": subnet,
            "etcd": {
                "endpoints": self.etcd.endpoints(),
                "prefix": self.prefix,
            },
            "capabilities": {"ips": true, "mac": true},
        })
    }

    /// Runs `command` for `pod`/`ifname` on node `node`.
    pub fn cni(&self, node: usize, command: &str, netconf: &Value, pod: &Pod, ifname: &str) -> Run {
        self.cni_env(node, command, netconf, pod, ifname, &[])
    }

    /// As [`Cluster::cni`], with extra environment (or overrides: a value of "" removes).
    pub fn cni_env(
        &self,
        node: usize,
        command: &str,
        netconf: &Value,
        pod: &Pod,
        ifname: &str,
        extra: &[(&str, &str)],
    ) -> Run {
        let mut env: HashMap<String, String> = HashMap::new();
        for (k, v) in [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", pod.ns.path().display().to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            ("CNI_PATH", plugin_dir().display().to_string()),
            ("CNI_ARGS", pod.cni_args()),
        ] {
            env.insert(k.into(), v);
        }
        for (k, v) in extra {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        self.run_on(node, command, env, netconf)
    }

    /// Runs a command that needs no pod (GC, STATUS, VERSION) on node `node`.
    pub fn cni_nopod(&self, node: usize, command: &str, netconf: &Value) -> Run {
        let mut env = HashMap::new();
        env.insert("CNI_COMMAND".to_string(), command.to_string());
        env.insert("CNI_PATH".to_string(), plugin_dir().display().to_string());
        self.run_on(node, command, env, netconf)
    }

    fn run_on(
        &self,
        node: usize,
        _command: &str,
        mut env: HashMap<String, String>,
        netconf: &Value,
    ) -> Run {
        env.entry("STATIC_MACVLAN_NODE".into())
            .or_insert_with(|| self.node_name(node));
        env.entry("STATIC_MACVLAN_RUN_DIR".into())
            .or_insert_with(|| self.run_dirs[node].path().display().to_string());
        env.entry("STATIC_MACVLAN_LOG_LEVEL".into())
            .or_insert_with(|| "debug".into());
        let env: Vec<(String, String)> = env.into_iter().collect();
        run_plugin_in(&self.lan.node(node).ns.path(), &env, &netconf.to_string())
    }

    /// The reservation of `pod`/`ifname`, if any.
    pub fn reservation(&self, pod: &Pod, ifname: &str) -> Option<Reservation> {
        self.rt
            .block_on(self.alloc.attachment(&pod.uid, ifname))
            .expect("read attachment")
    }

    /// Every reservation under the test's prefix.
    pub fn reservations(&self) -> Vec<Reservation> {
        self.rt
            .block_on(self.alloc.all())
            .expect("read reservations")
    }

    /// Writes the pod mirror of `pod` as the operator does, with `uid` (the pod's own, or another
    /// to simulate a predecessor's record), `labels` and `annotations`.
    pub fn put_pod_mirror(
        &self,
        pod: &Pod,
        uid: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) {
        let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect()
        };
        let record = json!({
            "uid": uid,
            "node": self.node_name(0),
            "labels": map(labels),
            "annotations": map(annotations),
        });
        let key = self.alloc.keys().pod(&pod.namespace, &pod.name);
        self.etcd
            .etcdctl(&["put", &key, &record.to_string()])
            .expect("put pod mirror");
    }

    /// Writes AllocationRule `name` with `spec` (camelCase JSON), as the operator mirrors it.
    pub fn put_rule(&self, name: &str, spec: Value) {
        let mirrored =
            json!({"name": name, "uid": format!("uid-{name}"), "generation": 1, "spec": spec});
        let key = self.alloc.keys().rule(name);
        self.etcd
            .etcdctl(&["put", &key, &mirrored.to_string()])
            .expect("put rule");
    }

    /// Deletes every AllocationRule.
    pub fn delete_rules(&self) {
        let prefix = self.alloc.keys().rules();
        self.etcd
            .etcdctl(&["del", "--prefix", &prefix])
            .expect("delete rules");
    }

    /// The etcd revision (to prove that nothing was written).
    pub fn revision(&self) -> i64 {
        self.rt.block_on(self.etcd.revision()).expect("revision")
    }

    /// Keys under the prefix (for messages).
    pub fn dump(&self) -> String {
        self.etcd
            .etcdctl(&[
                "get",
                "--prefix",
                &format!("{}/", self.prefix),
                "--keys-only",
            ])
            .unwrap_or_default()
    }
}

fn port_of(etcd: &EtcdServer) -> u16 {
    etcd.endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("etcd port")
}

/// The first address of an ADD result, without its prefix length.
pub fn first_ip(result: &Value) -> String {
    let addr = result["ips"][0]["address"].as_str().expect("address");
    addr.split('/').next().unwrap().to_string()
}

/// The last octet of the (IPv4) address of an ADD result.
pub fn octet(result: &Value) -> u32 {
    first_ip(result)
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `netconf` with `prevResult` set.
pub fn with_prev(netconf: &Value, prev: &Value) -> Value {
    let mut v = netconf.clone();
    v["prevResult"] = prev.clone();
    v
}

/// Waits until `f` holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Fails a test with a message when the environment cannot run it (not root, no etcd…).
pub fn require_root() -> Result<()> {
    if !nix_is_root() {
        bail!("the cni_* tests need root (network namespaces)");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
