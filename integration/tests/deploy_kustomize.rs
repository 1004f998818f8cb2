//! `deploy/kustomize` builds, and what it builds is what we mean to apply.
//!
//! Every overlay, the base alone, the base with each component, and everything that composes at
//! once go through the real `kubectl kustomize`; the output is parsed and checked object by
//! object: well formed, CRDs equal to the generated files, least-privilege RBAC, hardened
//! containers, pinned images, one namespace, Multus networks naming sample subnets, samples the
//! operator accepts, a dedicated etcd that agrees with itself, alerts on metrics the operator
//! exports.
//!
//! The installer script (`deploy/installer/install.sh`, the cni image's entry point) is run for
//! real, as root without any capability when the tests run as root (as the DaemonSet runs it),
//! against a TLS etcd: the CNI plugin's own parser reads what it wrote and the installed plugin
//! binary answers STATUS with it.
//!
//! `kubectl` is required (CI installs it); so is the plugin binary (`cargo build -p
//! static-macvlan-cni`), as for the other end-to-end tests.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};
use static_macvlan_allocator::{Allocator, EtcdConfig, Options};
use static_macvlan_cni::conf::{parse_netconf, EnvMap, DEFAULT_ETCD_CONFIG_FILE};
use static_macvlan_operator::manifest::{self, Object};
use static_macvlan_operator::metrics::{GcResult, Metrics, ReleaseReason};
use static_macvlan_operator::mirror::Snapshot;
use static_macvlan_operator::settings::DEFAULT_LEASE_NAME;
use static_macvlan_testkit::EtcdServer;

/// Where everything of the installation lives.
const NAMESPACE: &str = "static-macvlan-system";
/// Where the sample pods and the Multus networks they use live.
const SAMPLES_NAMESPACE: &str = "default";
const OVERLAYS: [&str; 2] = ["quickstart", "production"];
const COMPONENTS: [&str; 5] = [
    "etcd",
    "external-etcd",
    "multus",
    "primary-cni",
    "monitoring",
];
/// The one container that runs as root (unprivileged, without capabilities).
const INSTALLER: (&str, &str, &str) = ("DaemonSet", "static-macvlan-cni", "install");
/// Where the DaemonSet mounts the client-certificate Secret.
const ETCD_TLS_DIR: &str = "/etc/static-macvlan/etcd-tls";
const SETTINGS: &str = "static-macvlan-settings";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn kustomize_dir() -> PathBuf {
    repo().join("deploy/kustomize")
}

/// The output of one `kubectl kustomize`.
struct Build {
    name: String,
    docs: Vec<Value>,
}

impl Build {
    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_string();
        self.docs.iter().filter(move |d| d["kind"] == kind.as_str())
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name}", self.name))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all(kind).find(|d| d["metadata"]["name"] == name)
    }

    /// The settings ConfigMap (its name carries a content hash).
    fn settings(&self) -> &Value {
        let mut found = self
            .all("ConfigMap")
            .filter(|d| str_of(&d["metadata"]["name"]).starts_with(&format!("{SETTINGS}-")));
        let cm = found
            .next()
            .unwrap_or_else(|| panic!("{}: no {SETTINGS} ConfigMap", self.name));
        assert!(
            found.next().is_none(),
            "{}: two settings ConfigMaps",
            self.name
        );
        cm
    }

    fn setting(&self, key: &str) -> Option<&str> {
        self.settings()["data"][key].as_str()
    }

    fn has(&self, kind: &str) -> bool {
        self.all(kind).next().is_some()
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn id(d: &Value) -> String {
    format!("{}/{}", str_of(&d["kind"]), str_of(&d["metadata"]["name"]))
}

/// Fails with an install hint when kubectl is not on the PATH: these tests never skip.
fn require_kubectl() {
    let hint = "install it (CI does): curl -fsSLo /usr/local/bin/kubectl \
                https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && chmod +x \
                /usr/local/bin/kubectl — kustomize is built in";
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`kubectl version --client` failed: {}; {hint}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("kubectl not found (`which kubectl` finds nothing: {e}); {hint}"),
    }
}

/// `to` relative to `from` (kustomize refuses absolute paths in `resources`).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..from.len() {
        p.push("..");
    }
    for c in &to[common..] {
        p.push(c.as_os_str());
    }
    p
}

fn kustomize(name: &str, dir: &Path) -> Build {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {name} ({}) failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{name}: the output does not parse as YAML: {e}"));
    Build {
        name: name.to_string(),
        docs: docs.into_iter().filter(|d| !d.is_null()).collect(),
    }
}

/// Every build, once per test process: the overlays, the base, the base with each component,
/// and the base with the samples and every component that composes with the others (all but
/// `etcd`, which `primary-cni` excludes).
fn builds() -> &'static [Build] {
    static BUILDS: OnceLock<Vec<Build>> = OnceLock::new();
    BUILDS.get_or_init(|| {
        require_kubectl();
        let k = kustomize_dir();
        let mut out: Vec<Build> = OVERLAYS
            .iter()
            .map(|o| kustomize(&format!("overlays/{o}"), &k.join("overlays").join(o)))
            .collect();
        out.push(kustomize("base", &k.join("base")));

        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(tmp).expect("create CARGO_TARGET_TMPDIR");
        let scratch = tempfile::tempdir_in(tmp).expect("scratch dir");
        let root = scratch.path().canonicalize().expect("scratch path");
        let combo = |name: &str, resources: &[&str], components: &[&str]| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("create combo dir");
            let list = |items: &[&str], sub: &str| -> String {
                items
                    .iter()
                    .map(|i| format!("- {}\n", relative(&dir, &k.join(sub).join(i)).display()))
                    .collect()
            };
            let text = format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources:\n{}components:\n{}",
                list(resources, ""),
                list(components, "components")
            );
            std::fs::write(dir.join("kustomization.yaml"), text).expect("write kustomization");
            kustomize(name, &dir)
        };
        for c in COMPONENTS {
            out.push(combo(&format!("base+{c}"), &["base"], &[c]));
        }
        out.push(combo(
            "base+samples+external-etcd+multus+primary-cni+monitoring",
            &["base", "samples"],
            &["external-etcd", "multus", "primary-cni", "monitoring"],
        ));
        out
    })
}

fn build(name: &str) -> &'static Build {
    builds()
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no build {name}"))
}

/// The pod template (or pod) spec of a workload.
fn pod_spec(d: &Value) -> Option<&Value> {
    match str_of(&d["kind"]) {
        "Pod" => Some(&d["spec"]),
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            Some(&d["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&d["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// Containers and init containers of a pod spec.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn container<'a>(d: &'a Value, name: &str) -> &'a Value {
    containers(pod_spec(d).expect("a workload"))
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{}: no container {name}", id(d)))
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
}

fn volume<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> &'a str {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume)
        .map(|m| str_of(&m["mountPath"]))
        .unwrap_or_else(|| panic!("container {} mounts no {volume}", c["name"]))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn every_overlay_and_component_builds_into_well_formed_objects() {
    let builds = builds();
    assert_eq!(builds.len(), OVERLAYS.len() + 1 + COMPONENTS.len() + 1);
    for b in builds {
        assert!(!b.docs.is_empty(), "{}: empty", b.name);
        let mut seen = BTreeSet::new();
        for (i, d) in b.docs.iter().enumerate() {
            for (field, v) in [
                ("apiVersion", &d["apiVersion"]),
                ("kind", &d["kind"]),
                ("metadata.name", &d["metadata"]["name"]),
            ] {
                assert!(
                    v.as_str().is_some_and(|s| !s.is_empty()),
                    "{}: document {} has no {field}: {d}",
                    b.name,
                    i + 1
                );
            }
            let key = (
                str_of(&d["apiVersion"]).to_string(),
                id(d),
                str_of(&d["metadata"]["namespace"]).to_string(),
            );
            assert!(seen.insert(key), "{}: {} twice", b.name, id(d));
        }
    }
}

/// Equal as the API server sees it: numbers by value (kustomize writes the generator's
/// `maximum: 10000.0` as `10000`; both are the float64 of a JSON schema).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn built_crds_equal_the_generated_files() {
    let dir = kustomize_dir().join("base/crds");
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("read base/crds") {
        let path = e.expect("dir entry").path();
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read CRD file");
        let crd: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files.insert(str_of(&crd["metadata"]["name"]).to_string(), crd);
    }
    assert_eq!(files.len(), 4, "base/crds: {:?}", files.keys());
    for b in builds() {
        let built: BTreeMap<&str, &Value> = b
            .all("CustomResourceDefinition")
            .map(|d| (str_of(&d["metadata"]["name"]), d))
            .collect();
        assert_eq!(
            built.keys().copied().collect::<Vec<_>>(),
            files.keys().map(String::as_str).collect::<Vec<_>>(),
            "{}: CRDs",
            b.name
        );
        for (name, want) in &files {
            assert!(
                same(built[name.as_str()], want),
                "{}: CRD {name} differs from base/crds (a transformer touched it?)",
                b.name
            );
        }
    }
}

#[test]
fn rbac_is_least_privilege_without_wildcards() {
    for b in builds() {
        let roles: BTreeSet<(String, String)> = b
            .docs
            .iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
            .map(|d| (str_of(&d["kind"]).to_string(), id(d)))
            .collect();
        for d in b.all("Role").chain(b.all("ClusterRole")) {
            let rules = d["rules"].as_array().expect("rules");
            assert!(!rules.is_empty(), "{}: {} has no rules", b.name, id(d));
            for (i, r) in rules.iter().enumerate() {
                let at = format!("{}: {} rules[{i}]", b.name, id(d));
                for field in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        r[field].as_array().is_some_and(|a| !a.is_empty()),
                        "{at}: {field} missing"
                    );
                }
                for field in [
                    "apiGroups",
                    "resources",
                    "verbs",
                    "resourceNames",
                    "nonResourceURLs",
                ] {
                    for s in strs(&r[field]) {
                        assert!(!s.contains('*'), "{at}: wildcard {s:?} in {field}");
                    }
                }
                for s in strs(&r["resources"]) {
                    assert!(
                        !matches!(s, "secrets" | "serviceaccounts/token" | "nodes/proxy"),
                        "{at}: grants {s}"
                    );
                }
                for v in strs(&r["verbs"]) {
                    assert!(
                        !matches!(v, "escalate" | "bind" | "impersonate"),
                        "{at}: grants {v}"
                    );
                }
            }
        }
        for d in b.all("RoleBinding").chain(b.all("ClusterRoleBinding")) {
            let role = (
                str_of(&d["roleRef"]["kind"]).to_string(),
                format!(
                    "{}/{}",
                    str_of(&d["roleRef"]["kind"]),
                    str_of(&d["roleRef"]["name"])
                ),
            );
            assert!(
                roles.contains(&role),
                "{}: {} binds {}, not a role of ours",
                b.name,
                id(d),
                role.1
            );
            for s in d["subjects"].as_array().expect("subjects") {
                assert_eq!(s["kind"], "ServiceAccount", "{}: {}", b.name, id(d));
                assert_eq!(s["namespace"], NAMESPACE, "{}: {}", b.name, id(d));
                assert!(
                    b.find("ServiceAccount", str_of(&s["name"])).is_some(),
                    "{}: {} binds a missing ServiceAccount {}",
                    b.name,
                    id(d),
                    s["name"]
                );
            }
        }

        // Leader election is namespaced: the Lease rules live in a Role, renewing is limited to
        // the operator's Lease, and the ClusterRole says nothing about leases.
        let cluster = b.get("ClusterRole", "static-macvlan-operator");
        for r in cluster["rules"].as_array().unwrap() {
            assert!(!strs(&r["resources"]).contains(&"leases"), "{}", b.name);
        }
        let lease = b.get("Role", "static-macvlan-operator-leader-election");
        for r in lease["rules"].as_array().unwrap() {
            let verbs = strs(&r["verbs"]);
            if verbs.iter().any(|v| *v != "create") {
                assert_eq!(
                    strs(&r["resourceNames"]),
                    [DEFAULT_LEASE_NAME],
                    "{}: lease rule {r}",
                    b.name
                );
            }
        }
    }
}

#[test]
fn every_container_is_hardened_and_has_resources() {
    let mut checked = 0;
    for b in builds() {
        for d in &b.docs {
            let Some(spec) = pod_spec(d) else { continue };
            let pod_sc = &spec["securityContext"];
            assert_ne!(spec["hostPID"], true, "{}: {}", b.name, id(d));
            assert_ne!(spec["hostIPC"], true, "{}: {}", b.name, id(d));
            let is_installer = d["kind"] == INSTALLER.0 && d["metadata"]["name"] == INSTALLER.1;
            let is_operator =
                d["kind"] == "Deployment" && d["metadata"]["name"] == "static-macvlan-operator";
            if spec["hostNetwork"] == true {
                // The operator only in primary-CNI mode, where no pod network exists without it.
                assert!(
                    is_installer || (is_operator && b.name.contains("primary-cni")),
                    "{}: {} uses the host network",
                    b.name,
                    id(d)
                );
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                assert!(
                    v["hostPath"].is_null() || is_installer,
                    "{}: {} mounts a host path",
                    b.name,
                    id(d)
                );
            }
            for c in containers(spec) {
                checked += 1;
                let who = format!("{}: {} container {}", b.name, id(d), c["name"]);
                for k in ["requests", "limits"] {
                    for r in ["cpu", "memory"] {
                        let v = &c["resources"][k][r];
                        assert!(v.is_string() || v.is_number(), "{who}: no {k}.{r}");
                    }
                }
                let sc = &c["securityContext"];
                assert!(sc.is_object(), "{who}: no securityContext");
                assert_ne!(sc["privileged"], true, "{who}: privileged");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
                assert!(
                    strs(&sc["capabilities"]["drop"]).contains(&"ALL"),
                    "{who}: capabilities not dropped"
                );
                assert!(
                    strs(&sc["capabilities"]["add"]).is_empty(),
                    "{who}: adds capabilities"
                );
                let seccomp = if sc["seccompProfile"].is_null() {
                    &pod_sc["seccompProfile"]["type"]
                } else {
                    &sc["seccompProfile"]["type"]
                };
                assert_eq!(seccomp, "RuntimeDefault", "{who}: seccomp");
                let user = sc["runAsUser"].as_i64().or(pod_sc["runAsUser"].as_i64());
                let non_root = sc["runAsNonRoot"]
                    .as_bool()
                    .or(pod_sc["runAsNonRoot"].as_bool());
                if is_installer && c["name"] == INSTALLER.2 {
                    assert_eq!(
                        user,
                        Some(0),
                        "{who}: the installer runs as root, explicitly"
                    );
                } else {
                    assert_eq!(non_root, Some(true), "{who}: may run as root");
                    assert_ne!(user, Some(0), "{who}: runs as root");
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} containers checked");
}

#[test]
fn the_operator_elects_a_leader_and_is_probed_on_its_metrics_port() {
    for b in builds() {
        let dep = b.get("Deployment", "static-macvlan-operator");
        let spec = &dep["spec"]["template"]["spec"];
        let who = format!("{}: operator", b.name);
        assert_eq!(dep["spec"]["replicas"], 2, "{who}");
        assert!(
            spec["topologySpreadConstraints"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
                || !spec["affinity"]["podAntiAffinity"].is_null(),
            "{who}: replicas may share a node"
        );
        let c = container(dep, "operator");
        let args = strs(&c["args"]);
        assert_eq!(args.first(), Some(&"run"), "{who}: {args:?}");
        assert!(args.contains(&"--leader-election"), "{who}: {args:?}");
        assert!(
            args.contains(&"--metrics-addr=0.0.0.0:9464"),
            "{who}: {args:?}"
        );
        let port = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "metrics")
            .unwrap_or_else(|| panic!("{who}: no metrics port"));
        assert_eq!(port["containerPort"], 9464, "{who}");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{who}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{who}: {probe}");
        }
        assert_eq!(
            env_value(c, "STATIC_MACVLAN_LEASE_NAMESPACE").map(|e| &e["valueFrom"]["fieldRef"]),
            Some(&json!({"fieldPath": "metadata.namespace"})),
            "{who}"
        );
        assert_eq!(
            spec["serviceAccountName"], "static-macvlan-operator",
            "{who}"
        );

        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        let svc = b.get("Service", "static-macvlan-operator-metrics");
        assert!(
            labels_match(&svc["spec"]["selector"], labels),
            "{who}: Service"
        );
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics", "{who}");
        let pdb = b.get("PodDisruptionBudget", "static-macvlan-operator");
        assert!(
            labels_match(&pdb["spec"]["selector"]["matchLabels"], labels),
            "{who}: PodDisruptionBudget"
        );
    }
}

#[test]
fn every_image_is_pinned() {
    let ours = ["static-macvlan/operator", "static-macvlan/cni"];
    for b in builds() {
        for d in &b.docs {
            let Some(spec) = pod_spec(d) else { continue };
            for c in containers(spec) {
                let image = str_of(&c["image"]);
                let who = format!("{}: {} container {}", b.name, id(d), c["name"]);
                if image.contains("@sha256:") {
                    continue;
                }
                let last = image.rsplit('/').next().unwrap_or(image);
                let (name, tag) = match last.split_once(':') {
                    Some((n, t)) => (format!("{}{n}", &image[..image.len() - last.len()]), t),
                    None => panic!("{who}: image {image:?} has no tag"),
                };
                assert!(!tag.is_empty() && tag != "latest", "{who}: {image}");
                if name.starts_with("static-macvlan/") {
                    assert!(ours.contains(&name.as_str()), "{who}: {image}");
                    assert_eq!(
                        tag,
                        env!("CARGO_PKG_VERSION"),
                        "{who}: our images are tagged with the workspace version"
                    );
                }
            }
        }
    }
    let base = build("base");
    let operator = base.get("Deployment", "static-macvlan-operator");
    assert_eq!(
        container(operator, "operator")["image"],
        format!("static-macvlan/operator:{}", env!("CARGO_PKG_VERSION"))
    );
    let installer = base.get(INSTALLER.0, INSTALLER.1);
    assert_eq!(
        container(installer, INSTALLER.2)["image"],
        format!("static-macvlan/cni:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn namespaced_objects_live_in_the_installation_namespace() {
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "VlanSubnet",
        "MacPool",
        "AllocationRule",
    ];
    for b in builds() {
        let mut namespaced = 0;
        for d in &b.docs {
            let kind = str_of(&d["kind"]);
            let ns = &d["metadata"]["namespace"];
            if cluster_scoped.contains(&kind) {
                assert!(ns.is_null(), "{}: {} has a namespace", b.name, id(d));
                continue;
            }
            namespaced += 1;
            // The sample pods and the Multus networks they name sit together in the
            // samples' namespace; Multus looks networks up in the pod's namespace.
            let sample = d["metadata"]["labels"]["app.kubernetes.io/part-of"]
                == "static-macvlan-samples"
                || kind == "NetworkAttachmentDefinition";
            let want = if sample { SAMPLES_NAMESPACE } else { NAMESPACE };
            assert_eq!(ns, want, "{}: {}", b.name, id(d));
        }
        assert!(namespaced > 0, "{}", b.name);
        let ns = b.get("Namespace", NAMESPACE);
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
            "{}: the installer needs hostPath and hostNetwork",
            b.name
        );
    }
}

#[test]
fn the_settings_reach_the_operator_and_the_installer() {
    for b in builds() {
        let cm = b.settings();
        let cm_name = str_of(&cm["metadata"]["name"]);
        let operator = b.get("Deployment", "static-macvlan-operator");
        let installer = b.get(INSTALLER.0, INSTALLER.1);
        let tls_set = b.setting("STATIC_MACVLAN_ETCD_CA_FILE").is_some();
        for (d, c) in [(operator, "operator"), (installer, INSTALLER.2)] {
            let who = format!("{}: {}", b.name, id(d));
            let c = container(d, c);
            assert!(
                c["envFrom"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["configMapRef"]["name"] == cm_name),
                "{who}: does not read {cm_name}"
            );
            let spec = pod_spec(d).unwrap();
            let secret = &volume(spec, "etcd-tls")["secret"];
            assert_eq!(secret["secretName"], "static-macvlan-etcd-client", "{who}");
            assert_eq!(mount_path(c, "etcd-tls"), ETCD_TLS_DIR, "{who}");
            // With TLS settings the Secret is required: a missing one is then a pod event, not
            // a failing handshake on every pod start.
            assert_eq!(secret["optional"], !tls_set, "{who}: Secret optional");
        }
        for key in [
            "STATIC_MACVLAN_ETCD_CA_FILE",
            "STATIC_MACVLAN_ETCD_CERT_FILE",
            "STATIC_MACVLAN_ETCD_KEY_FILE",
        ] {
            assert_eq!(b.setting(key).is_some(), tls_set, "{}: {key}", b.name);
            if let Some(path) = b.setting(key) {
                assert!(
                    path.starts_with(&format!("{ETCD_TLS_DIR}/")),
                    "{}: {key}={path} is not in the mounted Secret",
                    b.name
                );
            }
        }
        let endpoints = b
            .setting("STATIC_MACVLAN_ETCD_ENDPOINTS")
            .unwrap_or_else(|| panic!("{}: no endpoints", b.name));
        for ep in endpoints.split(',') {
            EtcdConfig::new(vec![ep.to_string()])
                .validate("etcd")
                .map(|_| ())
                .or_else(|e| {
                    // https needs a CA: given by the settings, and checked below.
                    if ep.starts_with("https://") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .unwrap_or_else(|e| panic!("{}: endpoint {ep}: {e}", b.name));
            if ep.starts_with("https://") {
                assert!(tls_set, "{}: https endpoint {ep} without a CA", b.name);
            }
        }
        // Only the bare base still has the placeholder: every overlay names an etcd.
        if b.name.starts_with("overlays/") {
            assert!(
                !endpoints.contains(".invalid"),
                "{}: endpoints still the placeholder",
                b.name
            );
        }
    }
}

#[test]
fn the_installer_daemonset_is_unprivileged_and_runs_the_images_script() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let script_path = "/usr/local/bin/static-macvlan-install";
    assert!(
        dockerfile.contains(&format!("deploy/installer/install.sh {script_path}")),
        "the cni image does not install the script at {script_path}"
    );
    for b in builds() {
        let ds = b.get(INSTALLER.0, INSTALLER.1);
        let spec = pod_spec(ds).unwrap();
        let who = format!("{}: installer", b.name);
        assert_eq!(spec["hostNetwork"], true, "{who}");
        assert_eq!(spec["priorityClassName"], "system-node-critical", "{who}");
        assert_eq!(spec["automountServiceAccountToken"], false, "{who}");
        assert!(
            spec["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
            "{who}: does not tolerate every taint"
        );
        let c = container(ds, INSTALLER.2);
        assert_eq!(strs(&c["command"]), [script_path, "run"], "{who}");
        assert_eq!(
            strs(&c["readinessProbe"]["exec"]["command"]),
            [script_path, "check"],
            "{who}"
        );
        // The host directories are mounted at the host's own paths, so the paths written into
        // etcd.json are valid on the host.
        for (vol, path) in [("cni-bin", "/opt/cni/bin"), ("cni-net", "/etc/cni/net.d")] {
            assert_eq!(volume(spec, vol)["hostPath"]["path"], path, "{who}");
            assert_eq!(mount_path(c, vol), path, "{who}");
        }
        if b.name.contains("primary-cni") {
            assert_eq!(
                env_value(c, "STATIC_MACVLAN_PRIMARY_CNI").map(|e| &e["value"]),
                Some(&json!("true")),
                "{who}"
            );
        } else {
            assert!(
                env_value(c, "STATIC_MACVLAN_PRIMARY_CNI").is_none(),
                "{who}"
            );
        }
    }
    let script =
        std::fs::read_to_string(repo().join("deploy/installer/install.sh")).expect("install.sh");
    assert!(
        script.contains("umask 077"),
        "etcd.json must be created private"
    );
    assert!(script.contains("mv -f"), "files must be replaced by rename");
    assert!(script.starts_with("#!/bin/sh\n"), "the image has no bash");
}

/// A node's CNI directories in a temp dir, and the installer run against them.
struct Node {
    dir: tempfile::TempDir,
    bin: PathBuf,
    net: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("opt/cni/bin");
        let net = dir.path().join("etc/cni/net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&net).unwrap();
        Node { dir, bin, net }
    }

    fn sub(&self, file: &str) -> PathBuf {
        self.net.join("static-macvlan.d").join(file)
    }

    fn install(&self, plugin: &Path, settings: &BTreeMap<String, String>) -> Output {
        let mut cmd = if as_root_without_capabilities() {
            let mut c = Command::new("setpriv");
            c.args([
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--no-new-privs",
                "--",
                "sh",
            ]);
            c
        } else {
            Command::new("sh")
        };
        cmd.arg(repo().join("deploy/installer/install.sh"))
            .arg("once")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_BIN_DIR", &self.bin)
            .env("CNI_NET_DIR", &self.net)
            .env("PLUGIN_SRC", plugin)
            .envs(settings)
            .stdin(Stdio::null());
        cmd.output().expect("run install.sh")
    }

    /// Every file below the node's directories, with its mode: nothing else may be left behind
    /// (temp files of an atomic replace included).
    fn files(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let root = self.dir.path();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if meta.is_dir() {
                    stack.push(p);
                }
                out.insert(rel, meta.permissions().mode() & 0o7777);
            }
        }
        out
    }
}

/// Root tests run the installer as the DaemonSet does: uid 0 with an empty capability set.
fn as_root_without_capabilities() -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root && Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The plugin binary next to this test's executable, as the cni tests find it.
fn plugin_binary() -> PathBuf {
    let src = match std::env::var_os("STATIC_MACVLAN_PLUGIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .expect("test executable")
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("static-macvlan"),
    };
    assert!(
        src.exists(),
        "plugin binary {} not found: run `cargo build -p static-macvlan-cni` first (or set \
         STATIC_MACVLAN_PLUGIN)",
        src.display()
    );
    src
}

/// A Multus network of the quickstart as the plugin would get it on this test node: the same
/// netconf, with `etcdConfigFile` pointing at the node's file instead of the host path.
fn nad_netconf(node: &Node, name: &str) -> Value {
    let b = build("overlays/quickstart");
    let nad = b.get("NetworkAttachmentDefinition", name);
    let mut conf: Value =
        serde_json::from_str(str_of(&nad["spec"]["config"])).expect("NAD config JSON");
    assert_eq!(conf["etcdConfigFile"], DEFAULT_ETCD_CONFIG_FILE);
    conf["etcdConfigFile"] = json!(node.sub("etcd.json"));
    conf
}

fn env_map(pairs: &[(&str, &str)]) -> EnvMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_installer_writes_private_settings_the_plugin_can_use() {
    if as_root_without_capabilities() {
        let caps = Command::new("setpriv")
            .args([
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--no-new-privs",
                "--",
            ])
            .args(["grep", "^CapEff:", "/proc/self/status"])
            .output()
            .expect("setpriv");
        assert_eq!(
            String::from_utf8_lossy(&caps.stdout).trim(),
            "CapEff:\t0000000000000000",
            "setpriv leaves capabilities"
        );
    }
    let etcd = EtcdServer::start_tls().expect("start a TLS etcd");
    let tls = etcd.tls().expect("TLS files");
    let prefix = etcd.fresh_prefix();
    let plugin = plugin_binary();
    let node = Node::new();

    // The quickstart's settings, with this test's etcd and certificate files in place of the
    // cluster's.
    let mut settings: BTreeMap<String, String> = build("overlays/quickstart").settings()["data"]
        .as_object()
        .expect("settings data")
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v).to_string()))
        .collect();
    for (key, value) in [
        ("STATIC_MACVLAN_ETCD_ENDPOINTS", etcd.endpoint()),
        ("STATIC_MACVLAN_PREFIX", prefix.clone()),
        ("STATIC_MACVLAN_ETCD_CA_FILE", tls.ca.display().to_string()),
        (
            "STATIC_MACVLAN_ETCD_CERT_FILE",
            tls.cert.display().to_string(),
        ),
        (
            "STATIC_MACVLAN_ETCD_KEY_FILE",
            tls.key.display().to_string(),
        ),
    ] {
        assert!(settings.contains_key(key), "quickstart settings lack {key}");
        settings.insert(key.to_string(), value);
    }

    let out = node.install(&plugin, &settings);
    assert!(
        out.status.success(),
        "install.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        node.files(),
        BTreeMap::from([
            ("etc".to_string(), 0o755),
            ("etc/cni".to_string(), 0o755),
            ("etc/cni/net.d".to_string(), 0o755),
            ("etc/cni/net.d/static-macvlan.d".to_string(), 0o700),
            (
                "etc/cni/net.d/static-macvlan.d/etcd.json".to_string(),
                0o600
            ),
            ("etc/cni/net.d/static-macvlan.d/ca.crt".to_string(), 0o600),
            ("etc/cni/net.d/static-macvlan.d/tls.crt".to_string(), 0o600),
            ("etc/cni/net.d/static-macvlan.d/tls.key".to_string(), 0o600),
            ("opt".to_string(), 0o755),
            ("opt/cni".to_string(), 0o755),
            ("opt/cni/bin".to_string(), 0o755),
            ("opt/cni/bin/static-macvlan".to_string(), 0o755),
        ]),
        "files and modes after install"
    );
    let installed = node.bin.join("static-macvlan");
    assert!(
        std::fs::read(&installed).unwrap() == std::fs::read(&plugin).unwrap(),
        "the installed plugin differs from the image's"
    );
    for (copy, src) in [
        ("ca.crt", &tls.ca),
        ("tls.crt", &tls.cert),
        ("tls.key", &tls.key),
    ] {
        assert_eq!(
            std::fs::read(node.sub(copy)).unwrap(),
            std::fs::read(src).unwrap(),
            "{copy}"
        );
    }
    let written: Value =
        serde_json::from_slice(&std::fs::read(node.sub("etcd.json")).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({
            "endpoints": [etcd.endpoint()],
            "prefix": prefix,
            "caFile": node.sub("ca.crt"),
            "certFile": node.sub("tls.crt"),
            "keyFile": node.sub("tls.key"),
        })
    );

    // The plugin's own parser reads it through the Multus netconf, and the settings connect to
    // the TLS etcd with the copied client certificate.
    let env = env_map(&[("STATIC_MACVLAN_NODE", "node-a")]);
    let conf = parse_netconf(nad_netconf(&node, "lan").to_string().as_bytes(), &env)
        .expect("the plugin reads the NAD netconf with the installed etcd.json");
    assert_eq!(conf.subnet.as_deref(), Some("lan"));
    assert_eq!(conf.etcd.prefix, prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let alloc = Allocator::connect(&conf.etcd, Options::default())
            .await
            .expect("connect with the installed settings");
        alloc.ensure_schema().await.expect("write the schema key");
    });

    // The installed binary, run as a runtime would for STATUS: etcd reachable, schema known.
    let status = Command::new(&installed)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", &node.bin)
        .env("STATIC_MACVLAN_NODE", "node-a")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(nad_netconf(&node, "lan-100").to_string().as_bytes())?;
            child.wait_with_output()
        })
        .expect("run the installed plugin");
    assert!(
        status.status.success(),
        "STATUS with the installed settings failed: {}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );

    // Unchanged settings: nothing is rewritten (no churn every resync).
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let before: Vec<u64> = ["etcd.json", "tls.key"]
        .iter()
        .map(|f| inode(&node.sub(f)))
        .chain([inode(&installed)])
        .collect();
    let files = node.files();
    let out = node.install(&plugin, &settings);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<u64> = ["etcd.json", "tls.key"]
        .iter()
        .map(|f| inode(&node.sub(f)))
        .chain([inode(&installed)])
        .collect();
    assert_eq!(before, after, "unchanged files were rewritten");
    assert_eq!(node.files(), files);

    // Changed settings: etcd.json is replaced by rename (a new inode, never a rewrite in place
    // that a concurrent ADD could read half of).
    let mut changed = settings.clone();
    changed.insert("STATIC_MACVLAN_PREFIX".into(), format!("{prefix}-b"));
    let out = node.install(&plugin, &changed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        inode(&node.sub("etcd.json")),
        before[0],
        "etcd.json rewritten in place"
    );
    assert_eq!(inode(&node.sub("tls.key")), before[1]);
    let written: Value =
        serde_json::from_slice(&std::fs::read(node.sub("etcd.json")).unwrap()).unwrap();
    assert_eq!(written["prefix"], format!("{prefix}-b"));
    assert_eq!(node.files(), files, "files or modes changed");

    // Bad settings: a clear error naming the setting, and the node's files untouched.
    let snapshot = std::fs::read(node.sub("etcd.json")).unwrap();
    for (key, value, says) in [
        (
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
            "10.0.0.1:2379",
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
        ),
        (
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
            "https://a\"b:1",
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
        ),
        (
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
            "",
            "STATIC_MACVLAN_ETCD_ENDPOINTS",
        ),
        ("STATIC_MACVLAN_PREFIX", "no-slash", "STATIC_MACVLAN_PREFIX"),
        (
            "STATIC_MACVLAN_ETCD_KEY_FILE",
            "",
            "STATIC_MACVLAN_ETCD_KEY_FILE",
        ),
        (
            "STATIC_MACVLAN_ETCD_CA_FILE",
            "",
            "STATIC_MACVLAN_ETCD_CA_FILE",
        ),
        (
            "STATIC_MACVLAN_ETCD_CERT_FILE",
            "/nonexistent/tls.crt",
            "STATIC_MACVLAN_ETCD_CERT_FILE",
        ),
    ] {
        let mut bad = settings.clone();
        bad.insert(key.into(), value.into());
        let out = node.install(&plugin, &bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value:?} accepted");
        assert!(stderr.contains(says), "{key}={value:?}: {stderr}");
        assert_eq!(
            std::fs::read(node.sub("etcd.json")).unwrap(),
            snapshot,
            "{key}"
        );
        assert_eq!(node.files().len(), files.len(), "{key}: files left behind");
    }
}

#[test]
fn primary_cni_mode_writes_a_conflist_the_plugin_reads() {
    let b = build("base+primary-cni");
    let c = container(b.get(INSTALLER.0, INSTALLER.1), INSTALLER.2);
    let mut settings: BTreeMap<String, String> = BTreeMap::from([(
        "STATIC_MACVLAN_ETCD_ENDPOINTS".to_string(),
        "http://127.0.0.1:2379".to_string(),
    )]);
    for e in c["env"].as_array().expect("installer env") {
        if let Some(v) = e["value"].as_str() {
            settings.insert(str_of(&e["name"]).to_string(), v.to_string());
        }
    }
    let subnet = settings
        .get("STATIC_MACVLAN_PRIMARY_SUBNET")
        .cloned()
        .expect("primary subnet");
    let node = Node::new();
    let plugin = plugin_binary();
    let out = node.install(&plugin, &settings);
    assert!(
        out.status.success(),
        "install.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conflist_path = node.net.join("00-static-macvlan.conflist");
    let mode = std::fs::metadata(&conflist_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "the runtime reads the conflist");
    let list: Value = serde_json::from_slice(&std::fs::read(&conflist_path).unwrap())
        .expect("the conflist is JSON");
    let plugins = list["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1, "{list}");
    // A runtime hands each plugin its entry with the list's cniVersion and name.
    let mut conf = plugins[0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    assert_eq!(conf["capabilities"], json!({"ips": true, "mac": true}));
    assert_eq!(conf["etcdConfigFile"], json!(node.sub("etcd.json")));
    let parsed = parse_netconf(
        conf.to_string().as_bytes(),
        &env_map(&[("STATIC_MACVLAN_NODE", "node-a")]),
    )
    .expect("the plugin reads the conflist");
    assert_eq!(parsed.subnet.as_deref(), Some(subnet.as_str()));
    assert_eq!(parsed.etcd.endpoints, ["http://127.0.0.1:2379"]);
    // The subnet every pod gets is a sample one (the quickstart's names are the documented ones).
    let samples: BTreeSet<&str> = build("overlays/quickstart")
        .all("VlanSubnet")
        .map(|d| str_of(&d["metadata"]["name"]))
        .collect();
    assert!(
        samples.contains(subnet.as_str()),
        "{subnet} is no sample subnet"
    );

    // Primary mode off again: the conflist goes, so macvlan stops being the pod network.
    settings.insert("STATIC_MACVLAN_PRIMARY_CNI".into(), "false".into());
    let out = node.install(&plugin, &settings);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!conflist_path.exists());
}

#[test]
fn multus_networks_use_the_plugin_and_name_sample_subnets() {
    for b in builds()
        .iter()
        .filter(|b| b.has("NetworkAttachmentDefinition"))
    {
        let subnets: BTreeSet<&str> = build("overlays/quickstart")
            .all("VlanSubnet")
            .map(|d| str_of(&d["metadata"]["name"]))
            .collect();
        let mut nads = 0;
        for nad in b.all("NetworkAttachmentDefinition") {
            nads += 1;
            let who = format!("{}: {}", b.name, id(nad));
            let conf: Value = serde_json::from_str(str_of(&nad["spec"]["config"]))
                .unwrap_or_else(|e| panic!("{who}: config is not JSON: {e}"));
            assert_eq!(conf["type"], "static-macvlan", "{who}");
            assert_eq!(conf["name"], nad["metadata"]["name"], "{who}");
            assert_eq!(conf["cniVersion"], "1.1.0", "{who}");
            assert_eq!(
                conf["capabilities"],
                json!({"ips": true, "mac": true}),
                "{who}"
            );
            assert_eq!(conf["etcdConfigFile"], DEFAULT_ETCD_CONFIG_FILE, "{who}");
            assert!(
                subnets.contains(str_of(&conf["subnet"])),
                "{who}: subnet {} is no sample VlanSubnet {subnets:?}",
                conf["subnet"]
            );
        }
        assert_eq!(
            nads,
            subnets.len(),
            "{}: one network per sample subnet",
            b.name
        );
    }
}

/// Names of the Multus networks a pod asks for: the JSON list form or the short form.
fn pod_networks(annotation: &str) -> Vec<Value> {
    if annotation.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<Value>>(annotation).expect("networks annotation JSON")
    } else {
        annotation
            .split(',')
            .map(|n| json!({"name": n.trim()}))
            .collect()
    }
}

#[test]
fn samples_pass_the_operators_validation_and_pods_name_what_exists() {
    let b = build("overlays/quickstart");
    let ours: Vec<&Value> = b
        .docs
        .iter()
        .filter(|d| d["apiVersion"] == "staticmacvlan.io/v1alpha1")
        .collect();
    assert!(
        ours.len() >= 5,
        "samples: {:?}",
        ours.iter().map(|d| id(d)).collect::<Vec<_>>()
    );
    // JSON is YAML: the operator's `apply` parser reads the built objects as they are.
    let text = ours
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let docs = manifest::parse("samples", &text).expect("samples parse");
    let mut subnets = BTreeMap::new();
    for d in &docs {
        match d {
            Ok(p) => {
                if let Object::Subnet(_, subnet) = &p.object {
                    subnets.insert(p.name.clone(), subnet.clone());
                }
            }
            Err(e) => panic!("sample rejected: {e:?}"),
        }
    }
    let plan = manifest::plan(docs, &Snapshot::default())
        .unwrap_or_else(|errors| panic!("samples rejected together: {errors:?}"));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let kinds: BTreeSet<&str> = ours.iter().map(|d| str_of(&d["kind"])).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["AllocationRule", "MacPool", "VlanSubnet"])
    );
    let vlans: BTreeSet<i64> = b
        .all("VlanSubnet")
        .map(|d| d["spec"]["vlan"].as_i64().unwrap_or(0))
        .collect();
    assert!(vlans.contains(&0) && vlans.contains(&100), "{vlans:?}");
    assert!(b.all("VlanSubnet").any(|d| d["spec"]["hostShim"] == true));
    assert!(b
        .all("AllocationRule")
        .any(|d| !d["spec"]["deny"]["message"].is_null()));
    assert!(b
        .all("AllocationRule")
        .any(|d| str_of(&d["spec"]["ip"]).contains("apps.kubernetes.io/pod-index")));

    // Pods (and pod templates) name networks that exist beside them; their static addresses are
    // ones the subnet hands out statically; the original annotations name sample subnets.
    let (mut multus_static, mut original) = (false, false);
    for d in b.docs.iter().filter(|d| pod_spec(d).is_some()) {
        let meta = if d["kind"] == "Pod" {
            &d["metadata"]
        } else {
            &d["spec"]["template"]["metadata"]
        };
        let annotations = &meta["annotations"];
        let Some(networks) = annotations["k8s.v1.cni.cncf.io/networks"].as_str() else {
            continue;
        };
        let ns = str_of(&d["metadata"]["namespace"]);
        for net in pod_networks(networks) {
            let who = format!("{}: {} network {net}", b.name, id(d));
            let nad = b
                .all("NetworkAttachmentDefinition")
                .find(|n| n["metadata"]["name"] == net["name"] && n["metadata"]["namespace"] == ns)
                .unwrap_or_else(|| panic!("{who}: no such NetworkAttachmentDefinition in {ns}"));
            let conf: Value = serde_json::from_str(str_of(&nad["spec"]["config"])).unwrap();
            let subnet = &subnets[str_of(&conf["subnet"])];
            for ip in strs(&net["ips"]) {
                multus_static = true;
                let addr = ip.split('/').next().unwrap().parse().expect("an IP");
                subnet
                    .check_static(addr)
                    .unwrap_or_else(|e| panic!("{who}: {e}"));
            }
        }
        if let Some(vlan) = annotations["vlan"].as_str() {
            original = true;
            let subnet = subnets
                .get(vlan)
                .unwrap_or_else(|| panic!("{}: vlan {vlan} is no sample subnet", id(d)));
            if let Some(ip) = annotations["static-ip"].as_str().filter(|ip| *ip != "auto") {
                let addr = ip.split('/').next().unwrap().parse().expect("an IP");
                subnet
                    .check_static(addr)
                    .unwrap_or_else(|e| panic!("{}: static-ip: {e}", id(d)));
            }
        }
    }
    assert!(
        multus_static,
        "no sample asks for a static address the Multus way"
    );
    assert!(original, "no sample uses the original annotations");
}

#[test]
fn the_dedicated_etcd_agrees_with_itself() {
    for b in builds().iter().filter(|b| b.has("StatefulSet")) {
        let Some(sts) = b.find("StatefulSet", "static-macvlan-etcd") else {
            continue;
        };
        let who = format!("{}: etcd", b.name);
        let replicas = sts["spec"]["replicas"].as_i64().unwrap();
        assert_eq!(replicas, 3, "{who}");
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "{who}");
        let headless = b.get("Service", str_of(&sts["spec"]["serviceName"]));
        assert_eq!(headless["spec"]["clusterIP"], "None", "{who}");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{who}");
        let labels = &sts["spec"]["template"]["metadata"]["labels"];
        assert!(labels_match(&headless["spec"]["selector"], labels), "{who}");
        let pdb = b.get("PodDisruptionBudget", "static-macvlan-etcd");
        assert!(
            labels_match(&pdb["spec"]["selector"]["matchLabels"], labels),
            "{who}"
        );

        let c = container(sts, "etcd");
        let args: BTreeMap<&str, &str> = strs(&c["args"])
            .into_iter()
            .filter_map(|a| a.strip_prefix("--")?.split_once('='))
            .collect();
        let members: Vec<String> = (0..replicas)
            .map(|i| {
                format!(
                    "static-macvlan-etcd-{i}=https://static-macvlan-etcd-{i}.{}.$(POD_NAMESPACE).svc:2380",
                    headless["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(args["initial-cluster"], members.join(","), "{who}");
        for flag in ["client-cert-auth", "peer-client-cert-auth"] {
            assert_eq!(args[flag], "true", "{who}: {flag}");
        }
        for url in ["listen-client-urls", "listen-peer-urls"] {
            assert!(args[url].starts_with("https://"), "{who}: {url}");
        }

        // The TLS files come from the Secrets the Certificates fill.
        let spec = pod_spec(sts).unwrap();
        let secret_of = |flag: &str| -> &str {
            let path = Path::new(args[flag]);
            let dir = path.parent().unwrap().to_str().unwrap();
            let vol = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{who}: {flag} {dir} is not mounted"));
            str_of(&volume(spec, str_of(&vol["name"]))["secret"]["secretName"])
        };
        let cert_secret = |name: &str| -> &Value {
            b.all("Certificate")
                .find(|d| d["spec"]["secretName"] == name)
                .unwrap_or_else(|| panic!("{who}: no Certificate fills {name}"))
        };
        let server = cert_secret(secret_of("cert-file"));
        assert_eq!(secret_of("cert-file"), secret_of("key-file"));
        assert_eq!(secret_of("cert-file"), secret_of("trusted-ca-file"));
        let peer = cert_secret(secret_of("peer-cert-file"));
        assert_ne!(
            server["spec"]["issuerRef"], peer["spec"]["issuerRef"],
            "{who}: client certificates must not be able to act as peers"
        );
        let client = cert_secret("static-macvlan-etcd-client");
        assert_eq!(
            client["spec"]["issuerRef"], server["spec"]["issuerRef"],
            "{who}: the server must trust the client certificate"
        );
        assert_eq!(strs(&client["spec"]["usages"]).last(), Some(&"client auth"));

        // What clients dial is the client Service's fixed ClusterIP, named by the server
        // certificate (the plugin on the host cannot resolve cluster DNS names).
        let svc = b.get("Service", "static-macvlan-etcd-client");
        let ip = str_of(&svc["spec"]["clusterIP"]);
        assert!(
            ip.parse::<std::net::IpAddr>().is_ok(),
            "{who}: clusterIP {ip:?}"
        );
        assert!(labels_match(&svc["spec"]["selector"], labels), "{who}");
        assert!(
            strs(&server["spec"]["ipAddresses"]).contains(&ip),
            "{who}: the server certificate does not name {ip}"
        );
        assert_eq!(
            b.setting("STATIC_MACVLAN_ETCD_ENDPOINTS"),
            Some(format!("https://{ip}:2379").as_str()),
            "{who}"
        );
    }
    assert!(
        build("overlays/quickstart").has("StatefulSet"),
        "the quickstart has no etcd"
    );
}

#[test]
fn alerts_use_metrics_the_operator_exports() {
    // Family names as the operator's registry writes them; a family shows once it has a child.
    let m = Metrics::new();
    m.set_subnet("lan", 1, 1);
    m.set_pool("lan-macs", 1, 1);
    m.created("lan");
    m.released("lan", ReleaseReason::Gc);
    m.gc_run(GcResult::Completed);
    m.reconciled("VlanSubnet", Instant::now(), Some("etcd_unavailable"));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(m.etcd("get", async {}));
    let exposition = m.encode();
    let mut known = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                known.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    known.insert(format!("{name}{s}"));
                }
            }
            _ => {
                known.insert(name.to_string());
            }
        }
    }
    assert!(known.contains("static_macvlan_leader"), "{exposition}");

    let b = build("base+monitoring");
    let rule = b.get("PrometheusRule", "static-macvlan");
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let alert = str_of(&r["alert"]);
            alerts.insert(alert);
            let expr = str_of(&r["expr"]);
            let mut used = 0;
            for (i, _) in expr.match_indices("static_macvlan_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    known.contains(&name),
                    "{alert}: {name} is not exported by the operator ({known:?})"
                );
                used += 1;
            }
            assert!(used > 0 || expr.contains("up{"), "{alert}: {expr}");
            assert!(
                ["warning", "critical"].contains(&str_of(&r["labels"]["severity"])),
                "{alert}: severity"
            );
            assert!(!r["annotations"]["summary"].is_null(), "{alert}: summary");
        }
    }
    for a in [
        "StaticMacvlanSubnetAlmostFull",
        "StaticMacvlanGCNotCompleting",
        "StaticMacvlanEtcdUnreachable",
        "StaticMacvlanNoLeader",
    ] {
        assert!(alerts.contains(a), "{a} missing: {alerts:?}");
    }

    // The ServiceMonitor scrapes the metrics Service, whose name is the `job` the rules use.
    let sm = b.get("ServiceMonitor", "static-macvlan-operator");
    let svc = b.get("Service", "static-macvlan-operator-metrics");
    assert!(labels_match(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    let job = format!("job=\"{}\"", str_of(&svc["metadata"]["name"]));
    assert!(
        rule.to_string().contains(&job.replace('"', "\\\"")),
        "no alert on {job}"
    );
}

#[test]
fn the_dockerfile_builds_both_images_the_manifests_run() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    for needle in [
        "protobuf-compiler",
        "cargo build --release --locked",
        "--target \"$target\" -p static-macvlan-cni",
        // The operator stays position-independent; the plugin follows .cargo/config.toml.
        "RUSTFLAGS=\"-C relocation-model=pie\"",
        "--target \"$target\" -p static-macvlan-operator",
        " AS cni",
        " AS operator",
        "/usr/local/bin/static-macvlan-operator",
        "/usr/local/bin/static-macvlan\n",
        "USER 65532:65532",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    assert!(!dockerfile.contains(":latest"), "unpinned base image");
    // The shipped plugin (musl) is linked position-dependent, for its start-up.
    let config =
        std::fs::read_to_string(repo().join(".cargo/config.toml")).expect(".cargo/config.toml");
    assert!(
        config.contains("[target.'cfg(target_env = \"musl\")']")
            && config.contains("\"relocation-model=static\""),
        "{config}"
    );
    // The operator's non-root user is the one its Deployment declares.
    let dep = build("base").get("Deployment", "static-macvlan-operator");
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore"
    );
}
