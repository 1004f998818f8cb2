//! Network namespaces and small LAN topologies for tests, built with iproute2 and removed on drop.
//!
//! - [`NetNs`]: a uniquely named namespace (`ip netns add`, so its path is
//!   `/var/run/netns/<name>`), deleted on drop — which deletes every virtual link inside it.
//! - [`Veth::pair`]: a veth pair between two namespaces, both ends up.
//! - [`Lan`]: a "switch" namespace with a bridge and N "node" namespaces, each with a NIC (a veth
//!   end, `eth0` by default) plugged into the bridge: the parent links for macvlans.
//!
//! Nothing is created in the namespace the tests run in, and names carry the process id and a
//! random suffix, so tests can run in parallel. Needs root, `ip` and `ping`.

use std::fmt::Display;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program args…`, failing with its output unless it exits 0; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            output_text(&out).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<random>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..));
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: what a container runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> args…`, stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -j -n <name> args…`, parsed (e.g. `ns.ip_json(&["-d", "link", "show", "eth0"])`).
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let text = self.ip(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parse `ip -j {}`", args.join(" ")))
    }

    /// Runs `cmd…` inside the namespace (`ip netns exec`), whatever its exit status.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .with_context(|| format!("run `{}` in {}", cmd.join(" "), self.name))
    }

    /// Runs `cmd…` inside the namespace, failing unless it exits 0; returns its stdout.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let out = self.exec(cmd)?;
        if !out.status.success() {
            bail!(
                "`{}` in {} failed ({}): {}",
                cmd.join(" "),
                self.name,
                out.status,
                output_text(&out).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `ip` answers a ping from this namespace within 2 s (probes every 0.2 s, so a
    /// first probe lost to address resolution does not matter).
    pub fn ping(&self, ip: impl Display) -> bool {
        self.ping_within(ip, 2)
    }

    /// Whether `ip` answers a ping from this namespace within `seconds`.
    pub fn ping_within(&self, ip: impl Display, seconds: u32) -> bool {
        let ip = ip.to_string();
        let deadline = seconds.to_string();
        self.exec(&[
            "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", &deadline, &ip,
        ])
        .map(|out| out.status.success())
        .unwrap_or(false)
    }

    /// The names of the links in the namespace.
    pub fn link_names(&self) -> Result<Vec<String>> {
        let links = self.ip_json(&["link", "show"])?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect())
    }

    /// Whether the namespace has a link called `name`.
    pub fn has_link(&self, name: &str) -> Result<bool> {
        Ok(self.link_names()?.iter().any(|n| n == name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "testkit: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Veth pairs.
pub struct Veth;

impl Veth {
    /// Creates a veth pair with end `a_name` in `a_ns` and end `b_name` in `b_ns`, both up.
    /// Deleting either namespace deletes the pair.
    pub fn pair(a_name: &str, a_ns: &NetNs, b_name: &str, b_ns: &NetNs) -> Result<()> {
        a_ns.ip(&[
            "link",
            "add",
            a_name,
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b_ns.name(),
        ])?;
        a_ns.ip(&["link", "set", a_name, "up"])?;
        b_ns.ip(&["link", "set", b_name, "up"])?;
        Ok(())
    }
}

/// One node of a [`Lan`]: a namespace standing for a host, with its NIC on the LAN.
#[derive(Debug)]
pub struct LanNode {
    pub ns: NetNs,
    /// The NIC's name in `ns` (the macvlan parent).
    pub nic: String,
    /// The node's own address on the NIC (`addr/prefix`), if one was asked for.
    pub address: Option<String>,
}

/// A switch (a bridge in its own namespace) and nodes plugged into it.
#[derive(Debug)]
pub struct Lan {
    pub switch: NetNs,
    pub nodes: Vec<LanNode>,
}

impl Lan {
    /// A LAN of `nodes` nodes with NIC `eth0`, MTU 1500, no addresses.
    pub fn new(nodes: usize) -> Result<Self> {
        Self::builder().nodes(nodes).build()
    }

    pub fn builder() -> LanBuilder {
        LanBuilder {
            prefix: "lan".into(),
            nodes: 2,
            nic: "eth0".into(),
            mtu: None,
            addresses: Vec::new(),
        }
    }

    /// Node `i` (panics when out of range, as tests want).
    pub fn node(&self, i: usize) -> &LanNode {
        &self.nodes[i]
    }
}

/// Configures a [`Lan`].
#[derive(Debug, Clone)]
pub struct LanBuilder {
    prefix: String,
    nodes: usize,
    nic: String,
    mtu: Option<u32>,
    addresses: Vec<String>,
}

impl LanBuilder {
    /// Prefix of the namespace names (`<prefix>-sw-…`, `<prefix>-n0-…`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// The NIC name in every node (default `eth0`).
    pub fn nic(mut self, nic: &str) -> Self {
        self.nic = nic.into();
        self
    }

    /// The MTU of the NICs and switch ports (default: the kernel's 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Addresses (`addr/prefix`) for the nodes' NICs, in node order; nodes beyond the list get
    /// none. IPv6 addresses are added without duplicate address detection (usable at once).
    pub fn node_addresses(mut self, addresses: &[&str]) -> Self {
        self.addresses = addresses.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn build(self) -> Result<Lan> {
        let switch = NetNs::new(&format!("{}-sw", self.prefix))?;
        // No multicast snooping: without an MLD querier it would get in the way of IPv6
        // neighbour discovery between the nodes' macvlans.
        switch.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let ns = NetNs::new(&format!("{}-n{i}", self.prefix))?;
            let port = format!("p{i}");
            Veth::pair(&port, &switch, &self.nic, &ns)?;
            if let Some(mtu) = self.mtu {
                let mtu = mtu.to_string();
                switch.ip(&["link", "set", &port, "mtu", &mtu])?;
                ns.ip(&["link", "set", &self.nic, "mtu", &mtu])?;
            }
            switch.ip(&["link", "set", &port, "master", "br0"])?;
            let address = self.addresses.get(i).cloned();
            if let Some(addr) = &address {
                let mut args = vec!["address", "add", addr.as_str(), "dev", self.nic.as_str()];
                if addr.contains(':') {
                    // Skip duplicate address detection: the LAN is ours, and a tentative
                    // address cannot be used for a second or two.
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            nodes.push(LanNode {
                ns,
                nic: self.nic.clone(),
                address,
            });
        }
        Ok(Lan { switch, nodes })
    }
}
