//! Shared by the operator's integration tests: run the real binary, and connect an allocator to
//! the test's etcd under its fresh prefix.
#![allow(dead_code)]

pub mod mockapi;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use static_macvlan_allocator::{Allocator, EtcdConfig, Options};
use static_macvlan_testkit::EtcdServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_static-macvlan-operator");

/// What a run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the operator binary with `args`, feeding `stdin`, with no STATIC_MACVLAN_* variables
/// inherited from the environment.
pub fn run(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("STATIC_MACVLAN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn operator binary");
    if let Some(input) = stdin {
        // A command that fails on its arguments exits without reading: a closed pipe is fine.
        match child.stdin.take().unwrap().write_all(input.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
            _ => {}
        }
    }
    Run::from(child.wait_with_output().expect("wait for operator binary"))
}

/// The test's etcd and one fresh prefix in it.
pub struct Fixture {
    pub etcd: EtcdServer,
    pub prefix: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        let etcd = EtcdServer::start().expect("start etcd");
        let prefix = etcd.fresh_prefix();
        Fixture { etcd, prefix }
    }

    /// Runs the binary with `--etcd-endpoints` and `--prefix` appended.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let endpoint = self.etcd.endpoint();
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--etcd-endpoints",
            endpoint.as_str(),
            "--prefix",
            self.prefix.as_str(),
        ]);
        run(&all, stdin, &[])
    }

    pub async fn allocator(&self) -> Allocator {
        self.allocator_with(Options::default()).await
    }

    pub async fn allocator_with(&self, opts: Options) -> Allocator {
        let cfg = EtcdConfig {
            prefix: self.prefix.clone(),
            ..EtcdConfig::new(self.etcd.endpoints())
        };
        Allocator::connect(&cfg, opts)
            .await
            .expect("connect allocator")
    }

    /// The value of one key under the fixture's prefix (`rest` without the prefix), if any.
    pub fn get(&self, rest: &str) -> Option<String> {
        let out = self
            .etcd
            .etcdctl(&[
                "get",
                "--print-value-only",
                &format!("{}/{rest}", self.prefix),
            ])
            .expect("etcdctl get");
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_string())
    }

    /// `etcdctl get --prefix` of the fixture's prefix: keys only.
    pub fn keys(&self) -> Vec<String> {
        let out = self
            .etcd
            .etcdctl(&[
                "get",
                "--prefix",
                "--keys-only",
                &format!("{}/", self.prefix),
            ])
            .expect("etcdctl get");
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}
