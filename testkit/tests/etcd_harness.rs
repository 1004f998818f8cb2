//! The etcd harness against a real `etcd` process: these tests fail, never skip, without etcd.

use std::collections::HashSet;
use std::path::Path;

use etcd_client::{Certificate, Client, Identity, TlsOptions};
use static_macvlan_testkit::EtcdServer;

#[tokio::test]
async fn plain_server_serves_put_and_get() {
    let etcd = EtcdServer::start().expect("start etcd");
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(etcd.endpoints(), vec![etcd.endpoint()]);
    assert!(etcd.tls().is_none());

    let key = format!("{}/k", etcd.fresh_prefix());
    let before = etcd.revision().await.expect("revision");
    let mut client = etcd.client().await.expect("client");
    client.put(key.as_str(), "v1", None).await.expect("put");
    let resp = client.get(key.as_str(), None).await.expect("get");
    assert_eq!(resp.kvs()[0].value_str().unwrap(), "v1");
    assert_eq!(etcd.revision().await.expect("revision"), before + 1);

    let out = etcd.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
    assert_eq!(out.trim(), "v1");
}

#[test]
fn fresh_prefixes_are_unique() {
    let etcd = EtcdServer::start().expect("start etcd");
    let prefixes: HashSet<String> = (0..10_000).map(|_| etcd.fresh_prefix()).collect();
    assert_eq!(prefixes.len(), 10_000);
    for p in &prefixes {
        assert!(
            p.starts_with("/t-") && p.len() == "/t-3f9a1c2b".len(),
            "{p}"
        );
    }
}

#[tokio::test]
async fn stop_fails_requests_and_restart_keeps_data() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    let key = format!("{}/survives", etcd.fresh_prefix());
    let mut client = etcd.client().await.expect("client");
    client.put(key.as_str(), "yes", None).await.expect("put");
    let data_dir = etcd.data_dir().to_path_buf();

    etcd.stop();
    assert!(etcd.pid().is_none());
    assert!(data_dir.exists(), "stop must keep the data dir");
    assert!(client.get(key.as_str(), None).await.is_err());
    assert!(etcd.client().await.is_err());
    // Later flags win in etcdctl, so callers can shorten its 5 s command timeout.
    let err = etcd
        .etcdctl(&["--command-timeout=500ms", "get", &key])
        .expect_err("etcdctl against a stopped server");
    assert!(format!("{err:#}").contains("DeadlineExceeded"), "{err:#}");

    etcd.restart().expect("restart");
    let mut client = etcd.client().await.expect("client after restart");
    let resp = client.get(key.as_str(), None).await.expect("get");
    assert_eq!(resp.kvs()[0].value_str().unwrap(), "yes");
}

#[tokio::test]
async fn tls_server_accepts_its_ca_and_rejects_a_wrong_one() {
    let etcd = EtcdServer::start_tls().expect("start etcd with tls");
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
    let tls = etcd.tls().expect("tls files").clone();

    let key = format!("{}/tls", etcd.fresh_prefix());
    let mut client = etcd.client().await.expect("client");
    client.put(key.as_str(), "secure", None).await.expect("put");
    let out = etcd.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
    assert_eq!(out.trim(), "secure");

    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let identity = Identity::from_pem(read(&tls.cert), read(&tls.key));
    let wrong = etcd.connect_options().with_tls(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&tls.wrong_ca)))
            .identity(identity.clone()),
    );
    assert!(
        request_fails(etcd.endpoints(), wrong, &key).await,
        "a client trusting the wrong CA must not get through"
    );

    let no_identity = etcd
        .connect_options()
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca))));
    assert!(
        request_fails(etcd.endpoints(), no_identity, &key).await,
        "--client-cert-auth must refuse a client without a certificate"
    );

    let plain = format!(
        "http://127.0.0.1:{}",
        etcd.endpoint().rsplit(':').next().unwrap()
    );
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(2))
        .with_timeout(std::time::Duration::from_secs(2));
    assert!(
        request_fails(vec![plain], opts, &key).await,
        "the server must not serve plain http"
    );
}

/// `Client::connect` is lazy, so a TLS mismatch only shows up on the first request.
async fn request_fails(
    endpoints: Vec<String>,
    opts: etcd_client::ConnectOptions,
    key: &str,
) -> bool {
    match Client::connect(endpoints, Some(opts)).await {
        Err(_) => true,
        Ok(mut client) => client.get(key, None).await.is_err(),
    }
}

#[test]
fn drop_kills_the_process_and_removes_the_data_dir() {
    let etcd = EtcdServer::start_tls().expect("start etcd");
    let pid = etcd.pid().expect("running");
    let data_dir = etcd.data_dir().to_path_buf();
    let tls_ca = etcd.tls().unwrap().ca.clone();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(data_dir.join("member").exists());

    drop(etcd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "etcd {pid} survived drop"
    );
    assert!(!data_dir.exists());
    assert!(!tls_ca.exists());
}

#[test]
fn drop_cleans_up_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let etcd = EtcdServer::start().expect("start etcd");
        tx.send((etcd.pid().unwrap(), etcd.data_dir().to_path_buf()))
            .unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(result.is_err());
    let (pid, data_dir) = rx.recv().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!data_dir.exists());
}

#[test]
fn start_works_inside_a_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let etcd = EtcdServer::start().expect("start etcd inside a runtime");
        etcd.client().await.expect("client");
    });
}

/// Runs in a child copy of this test binary, because changing PATH here would break the tests
/// running beside it.
#[test]
fn missing_etcd_fails_loudly_with_install_hint() {
    if std::env::var_os("TESTKIT_MISSING_ETCD_CHILD").is_some() {
        let err = EtcdServer::start().expect_err("start without etcd on PATH");
        assert_eq!(
            err.to_string(),
            "etcd not found: install Debian's etcd-server (apt-get install -y etcd-server)"
        );
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "missing_etcd_fails_loudly_with_install_hint",
            "--nocapture",
        ])
        .env("PATH", empty.path())
        .env("TESTKIT_MISSING_ETCD_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
