//! The command line: one binary, one subcommand per job. `run` (the controller) is started by
//! `main` itself (it needs its own runtime and logging); the rest run through [`run`].

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use static_macvlan_allocator::{
    Allocator, EtcdConfig, MacAddr, Options, Reservation, DEFAULT_PREFIX,
};

use crate::error::Error;
use crate::ipam::{self, Address, Target};
use crate::manifest;
use crate::table::Table;
use crate::{crd, error::exit};

const EXIT_CODES: &str =
    "Exit codes: 0 ok, 1 not found (ipam check: problems found), 2 usage or invalid input \
(nothing changed), 3 etcd or the API server unavailable, 4 conflict (etcd changed meanwhile, \
corrupt data or another schema version).";

/// The static-macvlan operator: CRDs, validation and mirroring into etcd, IPAM inspection.
#[derive(Debug, Parser)]
#[command(name = "static-macvlan-operator", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: mirror VlanSubnets, MacPools, AllocationRules and pods into etcd,
    /// maintain MacvlanEndpoints, garbage-collect reservations of gone pods, serve metrics.
    /// Settings: defaults < --config file < STATIC_MACVLAN_* environment < flags.
    Run(crate::settings::RunArgs),
    /// Print the CRDs as multi-document YAML (or write them with their kustomization).
    Crds(CrdsArgs),
    /// Validate VlanSubnet, MacPool and AllocationRule objects and mirror them into etcd. Any
    /// invalid object: nothing is written.
    Apply(ApplyArgs),
    /// Inspect and repair address reservations in etcd.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// Serve /metrics, /healthz and /readyz from etcd alone, without a Kubernetes API:
    /// reservations created and released (from the etcd watch) and subnet usage. For sites that
    /// run the plugin without the controller, and for the local demo.
    ServeMetrics(ServeMetricsArgs),
}

#[derive(Debug, Args)]
pub struct ServeMetricsArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Address to serve on.
    #[arg(
        long,
        env = "STATIC_MACVLAN_METRICS_ADDR",
        default_value = "0.0.0.0:9464"
    )]
    pub metrics_addr: std::net::SocketAddr,
    /// How often subnet usage is counted.
    #[arg(long, default_value_t = 10)]
    pub interval_seconds: u64,
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write `<plural>.yaml` and `kustomization.yaml` into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    pub write_dir: Option<PathBuf>,
}

/// How to reach etcd (also from the environment).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (http:// or https://).
    #[arg(
        long = "etcd-endpoints",
        env = "STATIC_MACVLAN_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true,
        value_name = "URL[,URL]"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of this installation.
    #[arg(long, env = "STATIC_MACVLAN_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// CA certificate to verify etcd's server certificate (https endpoints).
    #[arg(
        long = "etcd-ca-file",
        env = "STATIC_MACVLAN_ETCD_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(
        long = "etcd-cert-file",
        env = "STATIC_MACVLAN_ETCD_CERT_FILE",
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(
        long = "etcd-key-file",
        env = "STATIC_MACVLAN_ETCD_KEY_FILE",
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
}

impl EtcdArgs {
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            prefix: self.prefix.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ..EtcdConfig::new(self.endpoints.clone())
        }
    }

    async fn connect(&self) -> Result<Allocator, Error> {
        Ok(Allocator::connect(&self.config(), Options::default()).await?)
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Multi-document YAML of our objects; `-` reads standard input. May be repeated.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Validate against etcd and print what would be done, without writing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Used, free and capacity of every subnet and MAC pool.
    Show(ShowArgs),
    /// Who holds an IP or MAC address.
    Who(WhoArgs),
    /// Free reservations (repair): compare-and-delete of exactly what was read.
    Release(ReleaseArgs),
    /// Check reservations: pods gone (per the API server when reachable), pending ones, index
    /// inconsistencies. Exit 0 when clean, 1 when problems were found.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// Do not consult the Kubernetes API (check etcd-internal consistency only).
    #[arg(long)]
    pub no_api: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// An IP or MAC address.
    pub address: String,
    /// Look only in this subnet (IP addresses).
    #[arg(long)]
    pub subnet: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["pod_uid", "ip", "mac"])))]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// Release every reservation of this pod UID.
    #[arg(long, value_name = "UID")]
    pub pod_uid: Option<String>,
    /// With --pod-uid: only this interface.
    // `conflicts_with_all` rather than `requires`: clap does not enforce `requires` on a
    // member of a satisfied required group.
    #[arg(long, conflicts_with_all = ["ip", "mac"])]
    pub ifname: Option<String>,
    /// Release the holder of this IP.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// With --ip: the subnet (needed when several subnets hold the IP).
    #[arg(long, conflicts_with_all = ["pod_uid", "mac"])]
    pub subnet: Option<String>,
    /// Release the holder of this MAC.
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<MacAddr>,
    /// Show what would be released without releasing it.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not a MAC address"))
}

/// Runs a parsed command line, writing results to `out` and warnings to stderr.
///
/// # Errors
/// The command's error; [`Error::exit_code`] gives the process exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Run(_) => Err(Error::Invalid(
            "`run` is started by the binary's main, not through cli::run".to_string(),
        )),
        Command::Ipam(IpamCommand::Check(a)) => check(&a, out).await,
        Command::Crds(a) => crds(&a, out),
        Command::Apply(a) => apply(&a, out).await,
        Command::Ipam(IpamCommand::Show(a)) => show(&a, out).await,
        Command::Ipam(IpamCommand::Who(a)) => who(&a, out).await,
        Command::Ipam(IpamCommand::Release(a)) => release(&a, out).await,
        Command::ServeMetrics(a) => {
            let alloc = a.etcd.connect().await?;
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let every = Duration::from_secs(a.interval_seconds.max(1));
            crate::etcdonly::serve(alloc, a.metrics_addr, every, stop).await
        }
    }
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let op = op.into();
    move |source| Error::Io { op, source }
}

fn emit(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).map_err(io("write output"))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("output serializes");
    s.push('\n');
    s
}

fn crds(a: &CrdsArgs, out: &mut dyn Write) -> Result<(), Error> {
    let render = |e: serde_saphyr::SerializeError| Error::Invalid(format!("render CRDs: {e}"));
    let Some(dir) = &a.write_dir else {
        return emit(out, &crd::crds_yaml().map_err(render)?);
    };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    for (name, content) in crd::crd_files().map_err(render)? {
        let path = dir.join(&name);
        std::fs::write(&path, content).map_err(io(format!("write {}", path.display())))?;
        emit(out, &format!("wrote {}\n", path.display()))?;
    }
    Ok(())
}

fn read_sources(files: &[PathBuf]) -> Result<Vec<(String, String)>, Error> {
    files
        .iter()
        .map(|f| {
            if f.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(io("read standard input"))?;
                Ok(("<stdin>".to_string(), s))
            } else {
                let s = std::fs::read_to_string(f).map_err(io(format!("read {}", f.display())))?;
                Ok((f.display().to_string(), s))
            }
        })
        .collect()
}

async fn apply(a: &ApplyArgs, out: &mut dyn Write) -> Result<(), Error> {
    // Read and parse before connecting: a bad file is reported even with etcd down.
    let docs = manifest::parse_all(&read_sources(&a.files)?)?;
    let alloc = a.etcd.connect().await?;
    let plan = manifest::prepare(&alloc, docs).await?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let steps = if a.dry_run {
        plan.steps.clone()
    } else {
        manifest::execute(&alloc, &plan).await?
    };
    let suffix = if a.dry_run { " (dry run)" } else { "" };
    for s in steps {
        emit(out, &format!("{s}{suffix}\n"))?;
    }
    Ok(())
}

async fn show(a: &ShowArgs, out: &mut dyn Write) -> Result<(), Error> {
    let alloc = a.etcd.connect().await?;
    let o = ipam::show(&alloc).await?;
    if a.output == Output::Json {
        return emit(out, &json(&o));
    }
    let mut text = String::new();
    if o.subnets.is_empty() {
        text.push_str(&format!("No subnets under {}.\n", alloc.keys().prefix()));
    } else {
        let mut t = Table::new(&[
            "SUBNET", "CIDR", "MASTER", "VLAN", "USED", "FREE", "CAPACITY",
        ]);
        for s in &o.subnets {
            let n = |x: u128| {
                if s.error.is_some() {
                    "?".to_string()
                } else {
                    x.to_string()
                }
            };
            t.row(vec![
                s.name.clone(),
                s.cidr.clone(),
                s.master.clone(),
                s.vlan.to_string(),
                n(s.used),
                n(s.free),
                n(s.capacity),
            ]);
        }
        text.push_str(&t.render());
    }
    text.push('\n');
    if o.mac_pools.is_empty() {
        text.push_str(&format!("No MAC pools under {}.\n", alloc.keys().prefix()));
    } else {
        let mut t = Table::new(&["MAC POOL", "RANGES", "USED", "FREE", "CAPACITY"]);
        for p in &o.mac_pools {
            let n = |x: u128| {
                if p.error.is_some() {
                    "?".to_string()
                } else {
                    x.to_string()
                }
            };
            t.row(vec![
                p.name.clone(),
                p.ranges.join(","),
                n(p.used),
                n(p.free),
                n(p.capacity),
            ]);
        }
        text.push_str(&t.render());
    }
    emit(out, &text)?;
    let errors = o
        .subnets
        .iter()
        .filter_map(|s| s.error.as_ref())
        .chain(o.mac_pools.iter().filter_map(|p| p.error.as_ref()));
    for e in errors {
        eprintln!("warning: {e}");
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn holders_table(rows: &[(&Reservation, &str)]) -> String {
    let mut t = Table::new(&[
        "SUBNET",
        "IP",
        "MAC",
        "POD",
        "UID",
        "CONTAINER",
        "IFNAME",
        "NODE",
        "STATE",
        "SINCE",
        "",
    ]);
    for (res, note) in rows {
        let r = &res.record;
        let o = &r.owner;
        t.row(vec![
            r.subnet.clone(),
            r.ip.to_string(),
            r.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            format!("{}/{}", o.namespace, o.pod),
            o.pod_uid.clone(),
            short(&o.container_id).to_string(),
            o.ifname.clone(),
            o.node.clone(),
            format!("{:?}", r.state).to_lowercase(),
            r.since.clone(),
            note.to_string(),
        ]);
    }
    t.render()
}

#[derive(serde::Serialize)]
struct Held<'a> {
    #[serde(flatten)]
    record: &'a static_macvlan_allocator::Record,
    revision: i64,
}

async fn who(a: &WhoArgs, out: &mut dyn Write) -> Result<(), Error> {
    let addr: Address = a.address.parse()?;
    let alloc = a.etcd.connect().await?;
    let held = ipam::who(&alloc, addr, a.subnet.as_deref()).await?;
    if a.output == Output::Json {
        let v: Vec<Held> = held
            .iter()
            .map(|r| Held {
                record: &r.record,
                revision: r.revision,
            })
            .collect();
        return emit(out, &json(&v));
    }
    let rows: Vec<(&Reservation, &str)> = held.iter().map(|r| (r, "")).collect();
    emit(out, &holders_table(&rows))
}

async fn release(a: &ReleaseArgs, out: &mut dyn Write) -> Result<(), Error> {
    let target = match (&a.pod_uid, a.ip, a.mac) {
        (Some(uid), _, _) => Target::Pod {
            uid: uid.clone(),
            ifname: a.ifname.clone(),
        },
        (_, Some(ip), _) => Target::Ip {
            ip,
            subnet: a.subnet.clone(),
        },
        (_, _, Some(mac)) => Target::Mac(mac),
        _ => {
            return Err(Error::Invalid(
                "one of --pod-uid, --ip, --mac is required".into(),
            ))
        }
    };
    let alloc = a.etcd.connect().await?;
    let done = ipam::release(&alloc, &target, a.dry_run).await?;
    if a.output == Output::Json {
        emit(out, &json(&done))?;
    } else {
        let rows: Vec<(Reservation, &str)> = done
            .iter()
            .map(|d| {
                let note = if d.released {
                    "released"
                } else if d.conflict {
                    "changed meanwhile, not released"
                } else {
                    "would be released (dry run)"
                };
                (
                    Reservation {
                        record: d.record.clone(),
                        revision: d.revision,
                    },
                    note,
                )
            })
            .collect();
        let refs: Vec<(&Reservation, &str)> = rows.iter().map(|(r, n)| (r, *n)).collect();
        emit(out, &holders_table(&refs))?;
    }
    let conflicts = done.iter().filter(|d| d.conflict).count();
    if conflicts > 0 {
        return Err(Error::Conflict(format!(
            "{conflicts} reservation(s) changed between read and release and were left alone; \
             check with `ipam who` and retry"
        )));
    }
    Ok(())
}

/// A client for the cluster of the kubeconfig (or the one we run in), if it answers in time.
async fn reachable_cluster() -> Result<kube::Client, String> {
    let limit = std::time::Duration::from_secs(5);
    let client = match tokio::time::timeout(limit, kube::Client::try_default()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("no cluster configured: {e}")),
        Err(_) => return Err("no answer configuring the client".to_string()),
    };
    match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server did not answer: {e}")),
        Err(_) => Err(format!("the API server did not answer within {limit:?}")),
    }
}

async fn check(a: &CheckArgs, out: &mut dyn Write) -> Result<(), Error> {
    use ipam::{ApiCheck, CheckReport, Severity};
    let alloc = a.etcd.connect().await?;
    let (reservations, mut findings) =
        ipam::check_etcd(&alloc, k8s_openapi::jiff::Timestamp::now()).await?;
    let api = if a.no_api {
        ApiCheck::Skipped
    } else {
        match reachable_cluster().await {
            Err(why) => ApiCheck::Unreachable(why),
            Ok(client) => match ipam::check_pods(&client, alloc.keys(), &reservations).await {
                Ok(f) => {
                    findings.extend(f);
                    ApiCheck::Checked
                }
                Err(e) => ApiCheck::Unreachable(e.to_string()),
            },
        }
    };
    let report = CheckReport {
        reservations: reservations.len(),
        api,
        findings,
    };
    if a.output == Output::Json {
        emit(out, &json(&report))?;
    } else {
        let mut text = String::new();
        if !report.findings.is_empty() {
            let mut t = Table::new(&["SEVERITY", "FINDING", "KEY", "DETAIL"]);
            for f in &report.findings {
                let sev = match f.severity {
                    Severity::Problem => "problem",
                    Severity::Info => "info",
                };
                t.row(vec![
                    sev.to_string(),
                    f.finding.to_string(),
                    f.key.clone(),
                    f.detail.clone(),
                ]);
            }
            text.push_str(&t.render());
        }
        let api = match &report.api {
            ApiCheck::Checked => "pods checked against the API server".to_string(),
            ApiCheck::Skipped => {
                "API server not consulted (--no-api): etcd-internal consistency only".to_string()
            }
            ApiCheck::Unreachable(why) => {
                format!("no cluster reachable ({why}): checked etcd-internal consistency only")
            }
        };
        text.push_str(&format!(
            "{} reservation(s) under {}: {} problem(s); {api}\n",
            report.reservations,
            alloc.keys().prefix(),
            report.problems()
        ));
        emit(out, &text)?;
    }
    match report.problems() {
        0 => Ok(()),
        n => Err(Error::Problems(format!("ipam check found {n} problem(s)"))),
    }
}

/// The exit code for a finished command.
pub fn exit_code(r: &Result<(), Error>) -> u8 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => e.exit_code(),
    }
}
