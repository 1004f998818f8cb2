//! Settings of `run`, layered with the `config` crate: built-in defaults, then a file (`--config`,
//! YAML or JSON), then `STATIC_MACVLAN_*` environment variables, then command-line flags. Parsed
//! and validated once, here; the rest of the controller gets typed values.
//!
//! Keys are the flag names with `_` for `-` (`etcd_endpoints`, `gc_grace_seconds`, …), in the
//! file as in the environment (`STATIC_MACVLAN_GC_GRACE_SECONDS`). An unknown key in the file is
//! an error (a typo would otherwise be silently ignored); unknown environment variables are
//! ignored, as other components of the project share the prefix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use static_macvlan_allocator::{EtcdConfig, DEFAULT_PREFIX};

use crate::error::Error;

/// Prefix of the environment variables.
pub const ENV_PREFIX: &str = "STATIC_MACVLAN";

/// Default address of `/metrics`, `/healthz` and `/readyz` (9464: the OpenTelemetry Prometheus
/// exporter's port, free of the usual kubelet and node-exporter ports).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9464";

/// Default name of the leader-election Lease.
pub const DEFAULT_LEASE_NAME: &str = "static-macvlan-operator";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Command-line flags of `run`. Every one is optional here: unset flags leave the value of the
/// layers below (environment, file, defaults).
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Settings file (YAML or JSON) with the keys of the flags below, `_` for `-`
    /// (e.g. `gc_grace_seconds: 600`). Also STATIC_MACVLAN_CONFIG.
    #[arg(long, value_name = "FILE", env = "STATIC_MACVLAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// etcd endpoints, comma-separated (http:// or https://).
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL]")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix of this installation [default: /static-macvlan].
    #[arg(long)]
    pub prefix: Option<String>,
    /// CA certificate to verify etcd's server certificate.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, value_name = "FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, value_name = "FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Where to serve /metrics, /healthz and /readyz [default: 0.0.0.0:9464].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// How long a reservation's pod must have been confirmed gone before GC frees it [default: 300].
    #[arg(long, value_name = "N")]
    pub gc_grace_seconds: Option<u64>,
    /// Seconds between garbage-collection cycles [default: 60].
    #[arg(long, value_name = "N")]
    pub gc_interval_seconds: Option<u64>,
    /// Seconds between full resyncs (config keys, pod mirror, endpoints) [default: 300].
    #[arg(long, value_name = "N")]
    pub resync_seconds: Option<u64>,
    /// Run for a Lease so that only one replica is active [default].
    #[arg(long, overrides_with = "no_leader_election")]
    pub leader_election: bool,
    /// Be active without a Lease (a single replica, or local runs).
    #[arg(long, overrides_with = "leader_election")]
    pub no_leader_election: bool,
    /// Namespace of the Lease [default: the namespace of the service account or kubeconfig context].
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease [default: static-macvlan-operator].
    #[arg(long, value_name = "NAME")]
    pub lease_name: Option<String>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The merged settings as deserialized, before validation.
#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    prefix: String,
    etcd_ca_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    etcd_key_file: Option<PathBuf>,
    metrics_addr: String,
    gc_grace_seconds: u64,
    gc_interval_seconds: u64,
    resync_seconds: u64,
    leader_election: bool,
    lease_namespace: Option<String>,
    lease_name: String,
    log_format: LogFormat,
}

const KEYS: &[&str] = &[
    "etcd_endpoints",
    "prefix",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "metrics_addr",
    "gc_grace_seconds",
    "gc_interval_seconds",
    "resync_seconds",
    "leader_election",
    "lease_namespace",
    "lease_name",
    "log_format",
];

/// Validated settings of the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub etcd: EtcdConfig,
    pub metrics_addr: SocketAddr,
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    pub resync: Duration,
    pub leader_election: bool,
    /// `None`: the client's default namespace.
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    pub log_format: LogFormat,
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: &str) -> Error {
    Error::Invalid(format!("invalid setting {key} \"{value}\": {reason}"))
}

/// Reads a settings file; YAML goes through serde-saphyr into JSON for the `config` crate.
fn read_file(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: format!("read settings file {}", path.display()),
        source,
    })?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("settings file {}: not JSON: {e}", path.display()))
        })?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| {
            Error::Invalid(format!("settings file {}: not YAML: {e}", path.display()))
        })?
    };
    let map = match &value {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => return Ok("{}".to_string()),
        _ => {
            return Err(Error::Invalid(format!(
                "settings file {}: must be a mapping of settings",
                path.display()
            )))
        }
    };
    let unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !KEYS.contains(&k.replace('-', "_").as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Invalid(format!(
            "settings file {}: unknown key(s) {}; known: {}",
            path.display(),
            unknown.join(", "),
            KEYS.join(", ")
        )));
    }
    // Accept kebab-case keys (the flag spelling) as well.
    let normalized: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.replace('-', "_"), v.clone()))
        .collect();
    Ok(serde_json::Value::Object(normalized).to_string())
}

impl Settings {
    /// Layers defaults, the file, the environment (`env`; `None` = the process's) and `args`,
    /// then validates.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the setting; [`Error::Io`] for an unreadable file.
    pub fn load(args: &RunArgs, env: Option<HashMap<String, String>>) -> Result<Settings, Error> {
        let cfg_err = |e: config::ConfigError| Error::Invalid(format!("settings: {e}"));
        let mut b = Config::builder()
            .set_default("prefix", DEFAULT_PREFIX)
            .and_then(|b| b.set_default("metrics_addr", DEFAULT_METRICS_ADDR))
            .and_then(|b| b.set_default("gc_grace_seconds", 300))
            .and_then(|b| b.set_default("gc_interval_seconds", 60))
            .and_then(|b| b.set_default("resync_seconds", 300))
            .and_then(|b| b.set_default("leader_election", true))
            .and_then(|b| b.set_default("lease_name", DEFAULT_LEASE_NAME))
            .and_then(|b| b.set_default("log_format", "text"))
            .map_err(cfg_err)?;
        if let Some(path) = &args.config {
            b = b.add_source(File::from_str(&read_file(path)?, FileFormat::Json));
        }
        b = b.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("etcd_endpoints")
                .source(env),
        );
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let leader = match (args.leader_election, args.no_leader_election) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let log_format = args.log_format.map(|f| match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        });
        b = b
            .set_override_option("etcd_endpoints", args.etcd_endpoints.clone())
            .and_then(|b| b.set_override_option("prefix", args.prefix.clone()))
            .and_then(|b| b.set_override_option("etcd_ca_file", path(&args.etcd_ca_file)))
            .and_then(|b| b.set_override_option("etcd_cert_file", path(&args.etcd_cert_file)))
            .and_then(|b| b.set_override_option("etcd_key_file", path(&args.etcd_key_file)))
            .and_then(|b| b.set_override_option("metrics_addr", args.metrics_addr.clone()))
            .and_then(|b| b.set_override_option("gc_grace_seconds", args.gc_grace_seconds))
            .and_then(|b| b.set_override_option("gc_interval_seconds", args.gc_interval_seconds))
            .and_then(|b| b.set_override_option("resync_seconds", args.resync_seconds))
            .and_then(|b| b.set_override_option("leader_election", leader))
            .and_then(|b| b.set_override_option("lease_namespace", args.lease_namespace.clone()))
            .and_then(|b| b.set_override_option("lease_name", args.lease_name.clone()))
            .and_then(|b| b.set_override_option("log_format", log_format))
            .map_err(cfg_err)?;
        let raw: Raw = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(cfg_err)?;
        Settings::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Settings, Error> {
        if raw.etcd_endpoints.is_empty() {
            return Err(Error::Invalid(
                "setting etcd_endpoints is required (--etcd-endpoints, STATIC_MACVLAN_ETCD_ENDPOINTS \
                 or the settings file)"
                    .to_string(),
            ));
        }
        let etcd = EtcdConfig {
            prefix: raw.prefix,
            ca_file: raw.etcd_ca_file,
            cert_file: raw.etcd_cert_file,
            key_file: raw.etcd_key_file,
            ..EtcdConfig::new(raw.etcd_endpoints)
        };
        // Field names as settings keys: `etcd_ca_file`, not the netconf's `etcd.caFile`.
        etcd.validate("etcd").map_err(|e| match e {
            static_macvlan_allocator::Error::Invalid {
                field,
                value,
                reason,
            } => {
                let key = match field.trim_start_matches("etcd.") {
                    "caFile" => "etcd_ca_file".to_string(),
                    "certFile" => "etcd_cert_file".to_string(),
                    "keyFile" => "etcd_key_file".to_string(),
                    "prefix" => "prefix".to_string(),
                    other => format!("etcd_{other}"),
                };
                invalid(&key, value, &reason)
            }
            other => Error::Invalid(other.to_string()),
        })?;
        let metrics_addr: SocketAddr = raw.metrics_addr.parse().map_err(|_| {
            invalid(
                "metrics_addr",
                &raw.metrics_addr,
                "must be IP:PORT, e.g. 0.0.0.0:9464 or [::]:9464",
            )
        })?;
        for (key, v) in [
            ("gc_interval_seconds", raw.gc_interval_seconds),
            ("resync_seconds", raw.resync_seconds),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be greater than 0"));
            }
        }
        if raw.lease_name.is_empty() {
            return Err(invalid("lease_name", "", "must not be empty"));
        }
        if raw.lease_namespace.as_deref() == Some("") {
            return Err(invalid("lease_namespace", "", "must not be empty"));
        }
        Ok(Settings {
            etcd,
            metrics_addr,
            gc_grace: Duration::from_secs(raw.gc_grace_seconds),
            gc_interval: Duration::from_secs(raw.gc_interval_seconds),
            resync: Duration::from_secs(raw.resync_seconds),
            leader_election: raw.leader_election,
            lease_namespace: raw.lease_namespace,
            lease_name: raw.lease_name,
            log_format: raw.log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn flags(endpoints: &str) -> RunArgs {
        RunArgs {
            etcd_endpoints: Some(vec![endpoints.to_string()]),
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::load(&flags("http://127.0.0.1:2379"), env(&[])).unwrap();
        assert_eq!(s.etcd.prefix, "/static-macvlan");
        assert_eq!(s.metrics_addr.to_string(), "0.0.0.0:9464");
        assert_eq!(s.gc_grace, Duration::from_secs(300));
        assert_eq!(s.gc_interval, Duration::from_secs(60));
        assert!(s.leader_election);
        assert_eq!(s.lease_name, "static-macvlan-operator");
        assert_eq!(s.lease_namespace, None);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("operator.yaml");
        std::fs::write(
            &file,
            "etcd_endpoints: [http://file:2379]\nprefix: /from-file\ngc-grace-seconds: 600\n\
             gc_interval_seconds: 30\nleader_election: false\nlog_format: json\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(file.clone()),
            ..RunArgs::default()
        };
        let s = Settings::load(&args, env(&[])).unwrap();
        assert_eq!(s.etcd.endpoints, ["http://file:2379"]);
        assert_eq!(s.etcd.prefix, "/from-file");
        assert_eq!(s.gc_grace, Duration::from_secs(600));
        assert!(!s.leader_election);
        assert_eq!(s.log_format, LogFormat::Json);

        let e = env(&[
            (
                "STATIC_MACVLAN_ETCD_ENDPOINTS",
                "http://a:2379,http://b:2379",
            ),
            ("STATIC_MACVLAN_GC_GRACE_SECONDS", "900"),
            ("STATIC_MACVLAN_LEADER_ELECTION", "true"),
            ("STATIC_MACVLAN_SOMETHING_ELSE", "ignored"),
        ]);
        let s = Settings::load(&args, e.clone()).unwrap();
        assert_eq!(s.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(s.gc_grace, Duration::from_secs(900));
        assert_eq!(s.gc_interval, Duration::from_secs(30), "file value kept");
        assert!(s.leader_election);

        let args = RunArgs {
            gc_grace_seconds: Some(5),
            no_leader_election: true,
            etcd_endpoints: Some(vec!["http://flag:2379".into()]),
            ..args
        };
        let s = Settings::load(&args, e).unwrap();
        assert_eq!(s.etcd.endpoints, ["http://flag:2379"]);
        assert_eq!(s.gc_grace, Duration::from_secs(5));
        assert!(!s.leader_election);
        assert_eq!(s.etcd.prefix, "/from-file");
    }

    #[test]
    fn json_file_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("s.json");
        std::fs::write(
            &json,
            r#"{"etcd_endpoints": ["http://j:2379"], "resync_seconds": 7}"#,
        )
        .unwrap();
        let args = RunArgs {
            config: Some(json),
            ..RunArgs::default()
        };
        let s = Settings::load(&args, env(&[])).unwrap();
        assert_eq!(s.resync, Duration::from_secs(7));

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "etcd_endpoints: [http://x:1]\ngc_grace: 5\n").unwrap();
        let args = RunArgs {
            config: Some(bad),
            ..RunArgs::default()
        };
        let e = Settings::load(&args, env(&[])).unwrap_err().to_string();
        assert!(e.contains("unknown key(s) gc_grace"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(RunArgs, &str)> = vec![
            (RunArgs::default(), "etcd_endpoints"),
            (flags("127.0.0.1:2379"), "etcd_endpoints[0]"),
            (
                RunArgs {
                    metrics_addr: Some("localhost".into()),
                    ..flags("http://e:1")
                },
                "metrics_addr",
            ),
            (
                RunArgs {
                    gc_interval_seconds: Some(0),
                    ..flags("http://e:1")
                },
                "gc_interval_seconds",
            ),
            (
                RunArgs {
                    prefix: Some("nope".into()),
                    ..flags("http://e:1")
                },
                "prefix",
            ),
            (
                RunArgs {
                    etcd_ca_file: Some("/nonexistent/ca.pem".into()),
                    ..flags("http://e:1")
                },
                "etcd_ca_file",
            ),
        ];
        for (args, key) in cases {
            let e = Settings::load(&args, env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Settings::load(
            &flags("http://e:1"),
            env(&[("STATIC_MACVLAN_GC_GRACE_SECONDS", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gc_grace_seconds"), "{e}");
    }
}
