//! Real etcd process harness.
//!
//! [`EtcdServer`] runs one single-member `etcd` (Debian's `etcd-server`) per value, on free
//! loopback ports, with its data dir, stderr log and (for TLS) generated certificates in one temp
//! dir that is removed on drop. Everything here is synchronous except the helpers that hand out
//! an `etcd_client::Client`, so a server can be started from plain `#[test]`s and from inside a
//! `#[tokio::test]` alike: readiness is polled with `etcdctl`, never with a nested runtime.
//!
//! Tests share nothing but the process: each asks for a [`EtcdServer::fresh_prefix`] and keeps
//! its keys under it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

const ETCD_BIN: &str = "etcd";
const ETCDCTL_BIN: &str = "etcdctl";
const ETCD_INSTALL_HINT: &str =
    "etcd not found: install Debian's etcd-server (apt-get install -y etcd-server)";
const ETCDCTL_INSTALL_HINT: &str =
    "etcdctl not found: install Debian's etcd-client (apt-get install -y etcd-client)";

/// How long `start`/`restart` wait for the member to serve a request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(50);
/// Attempts at picking ports: another process can grab a port between our probe and etcd's bind.
const START_ATTEMPTS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of etcd's stderr quoted in errors.
const STDERR_TAIL_BYTES: u64 = 4096;

/// Certificate files (PEM) of a TLS [`EtcdServer`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA that signed both the server certificate and the client certificate.
    pub ca: PathBuf,
    /// Client certificate, accepted by the server's `--client-cert-auth`.
    pub cert: PathBuf,
    /// Private key (PKCS#8) of [`TlsFiles::cert`].
    pub key: PathBuf,
    /// An unrelated CA: trusting it instead of [`TlsFiles::ca`] must make connections fail.
    pub wrong_ca: PathBuf,
}

/// The PEM text behind [`TlsFiles`], kept in memory so building client options needs no I/O.
#[derive(Debug, Clone)]
struct TlsPem {
    ca: String,
    cert: String,
    key: String,
}

/// A single-member etcd on 127.0.0.1, killed and wiped on drop (also when a test panics).
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    tls: Option<(TlsFiles, TlsPem)>,
    data_dir: PathBuf,
    stderr_log: PathBuf,
    /// Holds everything above; removed when the server is dropped.
    dir: TempDir,
}

impl EtcdServer {
    /// Starts a plain-HTTP etcd on free loopback ports and waits until it serves requests.
    ///
    /// # Errors
    ///
    /// Fails (never skips) when `etcd` or `etcdctl` is not installed, naming the Debian package,
    /// and when the member is not ready within ~10 s, quoting the tail of etcd's stderr.
    pub fn start() -> anyhow::Result<EtcdServer> {
        Self::start_with(false)
    }

    /// Starts an HTTPS-only etcd that requires client certificates (`--client-cert-auth`).
    ///
    /// A fresh CA, a server certificate (SAN `127.0.0.1` and `localhost`) and a client
    /// certificate are generated for this server; see [`EtcdServer::tls`].
    ///
    /// # Errors
    ///
    /// As [`EtcdServer::start`], plus failures to generate or write the certificates.
    pub fn start_tls() -> anyhow::Result<EtcdServer> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<EtcdServer> {
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .context("create etcd temp dir")?;
        let tls = if tls {
            Some(write_tls_files(dir.path()).context("generate etcd test certificates")?)
        } else {
            None
        };
        let mut server = EtcdServer {
            child: None,
            client_port: 0,
            peer_port: 0,
            tls,
            data_dir: dir.path().join("data"),
            stderr_log: dir.path().join("etcd.stderr.log"),
            dir,
        };

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let (client_port, peer_port) = free_port_pair()?;
            server.client_port = client_port;
            server.peer_port = peer_port;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(StartError::PortClash(err)) => {
                    // A half-initialised data dir would pin the old peer URL; start clean.
                    let _ = fs::remove_dir_all(&server.data_dir);
                    last_err = Some(err);
                }
                Err(StartError::Fatal(err)) => return Err(err),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no start attempt made"))
            .context(format!(
                "start etcd: ports in use after {START_ATTEMPTS} attempts"
            )))
    }

    /// The client URL, `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// [`EtcdServer::endpoint`] as the list that `etcd_client::Client::connect` takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The certificate files when started with [`EtcdServer::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|(files, _)| files)
    }

    /// A key prefix such as `/t-3f9a1c2b`, unique within this process, so tests sharing a server
    /// never see each other's keys.
    pub fn fresh_prefix(&self) -> String {
        static USED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
        // A poisoned lock only means another test panicked while holding it; the set is intact.
        let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
        let used = used.get_or_insert_with(HashSet::new);
        loop {
            let n = fastrand::u32(..);
            if used.insert(n) {
                return format!("/t-{n:08x}");
            }
        }
    }

    /// A client connected to this server (with the client certificate when TLS).
    ///
    /// # Errors
    ///
    /// Fails when the server does not answer a status request, e.g. after [`EtcdServer::stop`].
    pub async fn client(&self) -> anyhow::Result<Client> {
        let mut client = Client::connect(self.endpoints(), Some(self.connect_options()))
            .await
            .with_context(|| format!("connect to etcd at {}", self.endpoint()))?;
        // `connect` is lazy: without a request a dead server or a TLS mismatch would only show
        // up in the caller's first request, far from where it was caused.
        client
            .status()
            .await
            .with_context(|| format!("query status of etcd at {}", self.endpoint()))?;
        Ok(client)
    }

    /// Options for `etcd_client::Client::connect` against this server: short timeouts so outage
    /// tests fail fast, and the CA plus client identity when TLS.
    pub fn connect_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        match &self.tls {
            Some((_, pem)) => options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&pem.ca))
                    .identity(Identity::from_pem(&pem.cert, &pem.key)),
            ),
            None => options,
        }
    }

    /// Kills etcd with SIGKILL, keeping data dir and ports, to simulate an outage. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process already exited; wait() still reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir (stopping it first if running) and waits
    /// until it serves requests.
    ///
    /// # Errors
    ///
    /// As [`EtcdServer::start`]; also when another process took one of the ports meanwhile.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn_and_wait()
            .map_err(StartError::into_inner)
            .context("restart etcd")
    }

    /// Runs `etcdctl` (API v3) against this server, with the client certificate when TLS, and
    /// returns its stdout.
    ///
    /// # Errors
    ///
    /// Fails when `etcdctl` is missing or exits non-zero; the error quotes its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .etcdctl_command(args)
            .output()
            .map_err(|e| spawn_error(e, ETCDCTL_BIN, ETCDCTL_INSTALL_HINT))?;
        if !output.status.success() {
            bail!(
                "etcdctl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("read etcdctl output as utf-8")
    }

    /// The store's current revision, e.g. to assert that an operation wrote nothing.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached.
    pub async fn revision(&self) -> anyhow::Result<i64> {
        let mut client = self.client().await?;
        let resp = client
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .context("read etcd revision")?;
        let header = resp
            .header()
            .ok_or_else(|| anyhow!("read etcd revision: response has no header"))?;
        Ok(header.revision())
    }

    /// etcd's data dir; it survives [`EtcdServer::stop`] and is removed on drop.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id of the running etcd, `None` while stopped; lets tests check it is gone.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ETCDCTL_BIN);
        clear_etcd_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        if let Some((files, _)) = &self.tls {
            cmd.arg(format!("--cacert={}", files.ca.display()))
                .arg(format!("--cert={}", files.cert.display()))
                .arg(format!("--key={}", files.key.display()));
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        self.spawn().map_err(StartError::Fatal)?;
        let result = self.wait_ready();
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let name = "testkit";
        // Appending keeps the log of earlier runs, which helps explain a failed restart.
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .with_context(|| format!("open etcd log {}", self.stderr_log.display()))?;

        let mut cmd = Command::new(ETCD_BIN);
        clear_etcd_env(&mut cmd);
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .arg("--initial-cluster-token=testkit")
            // A lone member cannot lose its leadership, so short raft timers are safe; they
            // halve how long a restart on an existing data dir waits before electing itself.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--auto-compaction-mode=periodic")
            .arg("--auto-compaction-retention=1")
            // 256 MiB: far above what tests write, and keeps a runaway test from filling the disk.
            .arg("--quota-backend-bytes=268435456")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=error");
        if let Some((files, _)) = &self.tls {
            cmd.arg(format!(
                "--cert-file={}",
                self.dir.path().join(SERVER_CERT).display()
            ))
            .arg(format!(
                "--key-file={}",
                self.dir.path().join(SERVER_KEY).display()
            ))
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", files.ca.display()));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);

        let child = cmd
            .spawn()
            .map_err(|e| spawn_error(e, ETCD_BIN, ETCD_INSTALL_HINT))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let mut last_probe = String::from("client port not accepting connections");
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .context("poll etcd process")
                    .map_err(StartError::Fatal)?,
                None => return Err(StartError::Fatal(anyhow!("etcd is not running"))),
            };
            if let Some(status) = exited {
                self.child = None;
                let tail = self.stderr_tail();
                let err = anyhow!("etcd exited during startup ({status}); stderr tail:\n{tail}");
                return Err(if tail.contains("address already in use") {
                    StartError::PortClash(err)
                } else {
                    StartError::Fatal(err)
                });
            }
            // The TCP probe is cheap; only spend an etcdctl run once something listens.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // etcdctl takes the last of repeated flags: a short timeout keeps one slow
                // probe from eating the whole startup budget.
                match self.etcdctl(&["--command-timeout=2s", "endpoint", "health"]) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_probe = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(anyhow!(
                    "etcd at {} not ready after {READY_TIMEOUT:?} (last probe: {last_probe}); \
                     stderr tail:\n{}",
                    self.endpoint(),
                    self.stderr_tail()
                )));
            }
            thread::sleep(READY_POLL);
        }
    }

    fn stderr_tail(&self) -> String {
        read_tail(&self.stderr_log, STDERR_TAIL_BYTES)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.stderr_log.display()))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Fields (the TempDir) drop after this body, so etcd is dead and reaped before its data
        // dir is removed; a live etcd could otherwise recreate files in it.
        self.stop();
    }
}

/// Why an attempt to bring etcd up failed: only a port clash is worth retrying on new ports.
enum StartError {
    PortClash(anyhow::Error),
    Fatal(anyhow::Error),
}

impl StartError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::PortClash(e) | StartError::Fatal(e) => e,
        }
    }
}

/// Two distinct free loopback ports. Both listeners are held until both are picked, so the
/// kernel cannot hand out the same port twice.
fn free_port_pair() -> anyhow::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Keeps a developer's own `ETCD_*`/`ETCDCTL_*` settings from changing the test server.
fn clear_etcd_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(key);
        }
    }
}

fn spawn_error(err: io::Error, bin: &str, hint: &str) -> anyhow::Error {
    if err.kind() == io::ErrorKind::NotFound {
        anyhow!("{hint}")
    } else {
        anyhow::Error::new(err).context(format!("run {bin}"))
    }
}

fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

/// Generates the CA, server and client certificates (plus an unrelated CA) into `dir`.
fn write_tls_files(dir: &Path) -> anyhow::Result<(TlsFiles, TlsPem)> {
    let (ca_pem, ca) = new_ca("static-macvlan testkit CA")?;
    let (wrong_ca_pem, _) = new_ca("static-macvlan testkit unrelated CA")?;

    // The server certificate also gets ClientAuth: etcd 3.4 dials itself with it for the
    // grpc-gateway, and `--client-cert-auth` would refuse that connection otherwise.
    let (server_cert, server_key) = new_leaf(
        &ca,
        "etcd-server",
        vec!["127.0.0.1".into(), "localhost".into()],
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_cert, client_key) = new_leaf(
        &ca,
        "etcd-client",
        Vec::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
        wrong_ca: dir.join("wrong-ca.pem"),
    };
    for (path, contents) in [
        (&files.ca, &ca_pem),
        (&files.cert, &client_cert),
        (&files.key, &client_key),
        (&files.wrong_ca, &wrong_ca_pem),
        (&dir.join(SERVER_CERT), &server_cert),
        (&dir.join(SERVER_KEY), &server_key),
    ] {
        fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    }
    let pem = TlsPem {
        ca: ca_pem,
        cert: client_cert,
        key: client_key,
    };
    Ok((files, pem))
}

fn new_ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Returns (certificate PEM, private key PEM) signed by `issuer`.
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<String>,
    usages: &[ExtendedKeyUsagePurpose],
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
