//! How to reach etcd: the `etcd` object of the netconf, of the node-local file the installer writes,
//! and of the operator's settings. Validated before any connection is attempted, so a wrong path
//! or URL is reported by field name rather than as a transport error.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error};
use crate::keys::{Keys, DEFAULT_PREFIX};

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

/// Connection settings for etcd (camelCase JSON: `endpoints`, `prefix`, `caFile`, `certFile`,
/// `keyFile`, `dialTimeoutMs`, `requestTimeoutMs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How long to wait for a TCP/TLS connection (default 2000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout_ms: Option<u64>,
    /// How long one request may take (default 5000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
}

impl EtcdConfig {
    /// Plain-HTTP settings for `endpoints` under the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: default_prefix(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            dial_timeout_ms: None,
            request_timeout_ms: None,
        }
    }

    /// The per-request timeout in force.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.unwrap_or(5000))
    }

    /// The connect timeout in force.
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms.unwrap_or(2000))
    }

    /// Checks the settings without connecting. Field names are given as `<scope>.<field>`, e.g.
    /// `etcd.caFile`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for no endpoint, a URL that is not http(s), https without `caFile`,
    /// `certFile` without `keyFile` (or the reverse), an unreadable file, a bad prefix or a zero timeout.
    pub fn validate(&self, scope: &str) -> Result<Keys, Error> {
        let f = |name: &str| format!("{scope}.{name}");
        if self.endpoints.is_empty() {
            return Err(invalid(&f("endpoints"), "[]", "must list at least one URL"));
        }
        let mut https = false;
        for (i, e) in self.endpoints.iter().enumerate() {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://").inspect(|_| https = true));
            match rest {
                Some(hostport)
                    if !hostport.is_empty() && !hostport.contains(char::is_whitespace) => {}
                _ => {
                    return Err(invalid(
                        &f(&format!("endpoints[{i}]")),
                        e,
                        "must be an http:// or https:// URL (e.g. http://127.0.0.1:2379)",
                    ))
                }
            }
        }
        if https && self.ca_file.is_none() {
            return Err(invalid(&f("caFile"), "", "is required for https endpoints"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                &f(if self.cert_file.is_some() {
                    "keyFile"
                } else {
                    "certFile"
                }),
                "",
                "certFile and keyFile go together",
            ));
        }
        for (name, path) in [
            ("caFile", &self.ca_file),
            ("certFile", &self.cert_file),
            ("keyFile", &self.key_file),
        ] {
            if let Some(p) = path {
                std::fs::metadata(p)
                    .map_err(|e| invalid(&f(name), p.display(), format!("cannot be read: {e}")))?;
            }
        }
        for (name, v) in [
            ("dialTimeoutMs", self.dial_timeout_ms),
            ("requestTimeoutMs", self.request_timeout_ms),
        ] {
            if v == Some(0) {
                return Err(invalid(&f(name), 0, "must be greater than 0"));
            }
        }
        Keys::new(&self.prefix).map_err(|e| match e {
            Error::Invalid { value, reason, .. } => Error::Invalid {
                field: f("prefix"),
                value,
                reason,
            },
            other => other,
        })
    }

    /// Validates, then builds a client. The connection itself is lazy: an unreachable etcd shows
    /// up as [`Error::Unavailable`] on the first request, within the dial timeout.
    ///
    /// # Errors
    /// [`Error::Invalid`] as for [`EtcdConfig::validate`] (scope `etcd`), or for a certificate file
    /// that is not PEM.
    pub async fn connect(&self) -> Result<(Client, Keys), Error> {
        let keys = self.validate("etcd")?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout())
            .with_timeout(self.request_timeout())
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(ca) = &self.ca_file {
            let read = |name: &str, p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    invalid(
                        &format!("etcd.{name}"),
                        p.display(),
                        format!("cannot be read: {e}"),
                    )
                })
            };
            let ca_pem = read("caFile", ca)?;
            if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid(
                    "etcd.caFile",
                    ca.display(),
                    "is not a PEM certificate",
                ));
            }
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca_pem));
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read("certFile", cert)?,
                    read("keyFile", key)?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|e| Error::etcd(format!("connect to etcd {}", self.endpoints.join(",")), e))?;
        Ok((client, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let ok = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]);
        assert!(ok.validate("etcd").is_ok());
        let cases: Vec<(&str, EtcdConfig)> = vec![
            ("etcd.endpoints", EtcdConfig::new(vec![])),
            (
                "etcd.endpoints[0]",
                EtcdConfig::new(vec!["127.0.0.1:2379".into()]),
            ),
            (
                "etcd.caFile",
                EtcdConfig::new(vec!["https://127.0.0.1:2379".into()]),
            ),
            (
                "etcd.keyFile",
                EtcdConfig {
                    cert_file: Some("/etc/hostname".into()),
                    ..ok.clone()
                },
            ),
            (
                "etcd.caFile",
                EtcdConfig {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..ok.clone()
                },
            ),
            (
                "etcd.prefix",
                EtcdConfig {
                    prefix: "relative".into(),
                    ..ok.clone()
                },
            ),
            (
                "etcd.requestTimeoutMs",
                EtcdConfig {
                    request_timeout_ms: Some(0),
                    ..ok.clone()
                },
            ),
        ];
        for (field, cfg) in cases {
            match cfg.validate("etcd") {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
