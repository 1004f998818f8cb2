//! `apply` end to end: the real binary against a real etcd. Good files are mirrored; any bad
//! object fails the whole run with the field named, and etcd's revision does not move.

mod common;

use common::{run, Fixture};

const SITE: &str = r#"# A site: a tagged IPv4 VLAN with a MAC pool for VMs, an IPv6 storage LAN, a rule.
apiVersion: staticmacvlan.io/v1alpha1
kind: MacPool
metadata:
  name: vms
spec:
  ranges:
  - start: 02:00:0a:e6:00:00
    end: 02:00:0a:e6:0f:ff
---
apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata:
  name: lan-100
  labels: {site: hq}
spec:
  master: eth0
  vlan: 100
  mode: bridge
  mtu: 1500
  cidr: 10.230.0.0/24
  gateway: 10.230.0.1
  ranges:
  - {start: 10.230.0.10, end: 10.230.0.99}
  - {start: 10.230.0.150, end: 10.230.0.200}
  exclude: [10.230.0.50, 10.230.0.64/28]
  routes:
  - dst: 192.168.0.0/16
    gw: 10.230.0.2
  dns:
    nameservers: [10.230.0.1]
    search: [site.example]
  macPool: vms
  hostShim: true
---
apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata:
  name: storage-v6
spec:
  master: eth1
  mode: private
  cidr: fd00:230::/64
  gateway: fd00:230::1
  ranges:
  - start: fd00:230::100
    end: fd00:230::1ff
---
apiVersion: staticmacvlan.io/v1alpha1
kind: AllocationRule
metadata:
  name: databases
spec:
  priority: 100
  match: "pod.namespace == 'db' && pod.labels['app'] == 'postgres'"
  subnet: lan-100
  sticky:
    holdSeconds: 3600
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_realistic_file_is_mirrored_and_reapplying_changes_nothing() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "site.yaml", SITE);

    let r = f.run(&["apply", "-f", &file], None);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        r.stdout,
        "macpool.staticmacvlan.io/vms created\n\
         vlansubnet.staticmacvlan.io/lan-100 created\n\
         vlansubnet.staticmacvlan.io/storage-v6 created\n\
         allocationrule.staticmacvlan.io/databases created\n"
    );
    let p = &f.prefix;
    assert_eq!(
        f.keys(),
        [
            format!("{p}/config/macpools/vms"),
            format!("{p}/config/rules/databases"),
            format!("{p}/config/subnets/lan-100"),
            format!("{p}/config/subnets/storage-v6"),
            format!("{p}/schema"),
        ]
    );

    let alloc = f.allocator().await;
    let lan = alloc.get_subnet("lan-100").await.expect("subnet mirrored");
    assert_eq!((lan.master.as_str(), lan.vlan), ("eth0", 100));
    assert_eq!(lan.mac_pool.as_deref(), Some("vms"));
    assert!(lan.host_shim);
    // 90 + 51 addresses in the ranges, minus .50 and the 16 of .64/28.
    assert_eq!(lan.capacity(), 124);
    let v6 = alloc.get_subnet("storage-v6").await.unwrap();
    assert_eq!(v6.capacity(), 256);
    assert_eq!(alloc.get_macpool("vms").await.unwrap().capacity(), 4096);

    let rule = f
        .etcd
        .etcdctl(&[
            "get",
            &format!("{p}/config/rules/databases"),
            "--print-value-only",
        ])
        .unwrap();
    let rule: serde_json::Value = serde_json::from_str(rule.trim()).unwrap();
    assert_eq!(rule["name"], "databases");
    assert_eq!(rule["spec"]["priority"], 100);
    assert_eq!(rule["spec"]["sticky"]["holdSeconds"], 3600);
    assert!(rule["spec"]["match"].as_str().unwrap().contains("postgres"));

    // Same input again: nothing to write.
    let before = f.etcd.revision().await.unwrap();
    let r = f.run(&["apply", "-f", &file], None);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout.matches(" unchanged\n").count(), 4, "{r}");
    assert_eq!(f.etcd.revision().await.unwrap(), before);

    // A changed mtu from stdin: only that object is rewritten.
    let changed = SITE.replace("mtu: 1500", "mtu: 9000");
    let r = f.run(&["apply", "-f", "-"], Some(&changed));
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .contains("vlansubnet.staticmacvlan.io/lan-100 configured\n"),
        "{r}"
    );
    assert_eq!(r.stdout.matches(" unchanged\n").count(), 3, "{r}");
    assert_eq!(alloc.get_subnet("lan-100").await.unwrap().mtu, Some(9000));
    assert_eq!(f.etcd.revision().await.unwrap(), before + 1);
}

#[tokio::test]
async fn dry_run_validates_against_etcd_and_writes_nothing() {
    let f = Fixture::new();
    let before = f.etcd.revision().await.unwrap();
    let r = f.run(&["apply", "--dry-run", "-f", "-"], Some(SITE));
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .contains("vlansubnet.staticmacvlan.io/lan-100 created (dry run)\n"),
        "{r}"
    );
    assert_eq!(f.etcd.revision().await.unwrap(), before);
    assert!(f.keys().is_empty());
}

const POOL: &str = "apiVersion: staticmacvlan.io/v1alpha1
kind: MacPool
metadata: {name: ok-pool}
spec:
  ranges: [{start: '02:00:00:00:00:00', end: '02:00:00:00:00:ff'}]
";

fn subnet(name: &str, spec: &str) -> String {
    format!("apiVersion: staticmacvlan.io/v1alpha1\nkind: VlanSubnet\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Every bad object fails the run with exit 2, names document, kind, name, field and value, and
/// leaves etcd untouched — including the good MacPool before it in the same file.
#[tokio::test]
async fn each_bad_object_is_rejected_with_the_field_named_and_nothing_written() {
    let f = Fixture::new();
    let base = "  master: eth0\n  vlan: 100\n";
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "bad cidr",
            subnet("bad", &format!("{base}  cidr: 10.230.0.0/33\n")),
            "invalid spec.cidr \"10.230.0.0/33\"",
            "VlanSubnet \"bad\"",
        ),
        (
            "gateway outside",
            subnet("bad", &format!("{base}  cidr: 10.230.0.0/24\n  gateway: 10.231.0.1\n")),
            "invalid spec.gateway \"10.231.0.1\": is outside cidr 10.230.0.0/24",
            "VlanSubnet \"bad\"",
        ),
        (
            "range start after end",
            subnet(
                "bad",
                &format!("{base}  cidr: 10.230.0.0/24\n  ranges:\n  - {{start: 10.230.0.200, end: 10.230.0.100}}\n"),
            ),
            "invalid spec.ranges[0].start \"10.230.0.200\": is after ranges[0].end",
            "VlanSubnet \"bad\"",
        ),
        (
            "range outside cidr",
            subnet(
                "bad",
                &format!("{base}  cidr: 10.230.0.0/24\n  ranges:\n  - {{start: 10.230.0.10, end: 10.230.0.20}}\n  - {{start: 10.230.0.30, end: 10.230.1.5}}\n"),
            ),
            "invalid spec.ranges[1].end \"10.230.1.5\": is outside cidr",
            "VlanSubnet \"bad\"",
        ),
        (
            "vlan 5000",
            subnet("bad", "  master: eth0\n  vlan: 5000\n  cidr: 10.230.0.0/24\n"),
            "invalid spec.vlan \"5000\": must be at most 4094",
            "VlanSubnet \"bad\"",
        ),
        (
            "bad mode",
            subnet("bad", &format!("{base}  mode: macvtap\n  cidr: 10.230.0.0/24\n")),
            "invalid spec.mode \"macvtap\": must be one of bridge, vepa, private, passthru",
            "VlanSubnet \"bad\"",
        ),
        (
            "multicast MAC pool range",
            "apiVersion: staticmacvlan.io/v1alpha1\nkind: MacPool\nmetadata: {name: bad}\nspec:\n  ranges:\n  - start: 03:00:00:00:00:00\n    end: 03:00:00:00:00:ff\n".to_string(),
            "invalid spec.ranges[0].start \"03:00:00:00:00:00\": is a multicast address",
            "MacPool \"bad\"",
        ),
        (
            "overlapping subnets on the same master and vlan",
            format!(
                "{}---\n{}",
                subnet("lan-a", &format!("{base}  cidr: 10.230.0.0/24\n")),
                subnet("lan-b", &format!("{base}  cidr: 10.230.0.128/25\n"))
            ),
            "invalid spec.cidr \"10.230.0.128/25\": overlaps cidr 10.230.0.0/24 of VlanSubnet \"lan-a\" on the same master eth0 and vlan 100",
            "document 3 (line 16) VlanSubnet \"lan-b\"",
        ),
        (
            "unknown kind",
            "apiVersion: staticmacvlan.io/v1alpha1\nkind: VlanSubnett\nmetadata: {name: bad}\nspec: {}\n".to_string(),
            "invalid kind \"VlanSubnett\": must be one of VlanSubnet, MacPool, AllocationRule",
            "VlanSubnett \"bad\"",
        ),
        (
            "unknown field",
            subnet("bad", &format!("{base}  cidr: 10.230.0.0/24\n  gatway: 10.230.0.1\n")),
            "invalid spec.gatway \"10.230.0.1\": is not a known field",
            "VlanSubnet \"bad\"",
        ),
        (
            "foreign apiVersion",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\n".to_string(),
            "invalid apiVersion \"v1\": must be staticmacvlan.io/v1alpha1",
            "ConfigMap \"bad\"",
        ),
        (
            "rule with subnet and subnets",
            "apiVersion: staticmacvlan.io/v1alpha1\nkind: AllocationRule\nmetadata: {name: bad}\nspec: {match: 'true', subnet: a, subnets: [b]}\n".to_string(),
            "invalid spec.subnets \"b\": subnet and subnets are mutually exclusive",
            "AllocationRule \"bad\"",
        ),
    ];
    for (what, doc, error, object) in cases {
        let input = format!("{POOL}---\n{doc}");
        let before = f.etcd.revision().await.unwrap();
        let r = f.run(&["apply", "-f", "-"], Some(&input));
        assert_eq!(r.code, 2, "{what}: {r}");
        assert!(r.stderr.contains(error), "{what}: want {error:?} in\n{r}");
        assert!(r.stderr.contains(object), "{what}: want {object:?} in\n{r}");
        assert!(r.stderr.contains("<stdin>: document "), "{what}: {r}");
        assert!(r.stdout.is_empty(), "{what}: {r}");
        assert_eq!(
            f.etcd.revision().await.unwrap(),
            before,
            "{what}: etcd changed"
        );
        assert!(f.keys().is_empty(), "{what}: {:?}", f.keys());
    }
}

#[tokio::test]
async fn every_bad_document_of_a_file_is_reported_at_once() {
    let f = Fixture::new();
    let input = format!(
        "{}---\n{}---\n{POOL}",
        subnet("one", "  master: eth0\n  cidr: 10.0.0.0/33\n"),
        subnet("two", "  master: eth0\n  vlan: 4095\n  cidr: 10.0.1.0/24\n"),
    );
    let r = f.run(&["apply", "-f", "-"], Some(&input));
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("2 invalid object(s), nothing was applied"),
        "{r}"
    );
    assert!(
        r.stderr
            .contains("document 1 (line 1) VlanSubnet \"one\": invalid spec.cidr"),
        "{r}"
    );
    assert!(
        r.stderr
            .contains("document 2 (line 9) VlanSubnet \"two\": invalid spec.vlan"),
        "{r}"
    );
    assert!(f.keys().is_empty());
}

#[tokio::test]
async fn conflicts_with_what_etcd_holds_are_rejected() {
    let f = Fixture::new();
    let r = f.run(&["apply", "-f", "-"], Some(SITE));
    assert_eq!(r.code, 0, "{r}");
    let before = f.etcd.revision().await.unwrap();

    // Overlap with a stored subnet on the same master and VLAN.
    let overlap = subnet(
        "lan-100-b",
        "  master: eth0\n  vlan: 100\n  cidr: 10.230.0.0/25\n",
    );
    let r = f.run(&["apply", "-f", "-"], Some(&overlap));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("invalid spec.cidr \"10.230.0.0/25\": overlaps cidr 10.230.0.0/24 of VlanSubnet \"lan-100\""), "{r}");

    // The same cidr on another VLAN is another LAN: fine (checked with --dry-run).
    let other_vlan = subnet(
        "lan-200",
        "  master: eth0\n  vlan: 200\n  cidr: 10.230.0.0/24\n",
    );
    let r = f.run(&["apply", "--dry-run", "-f", "-"], Some(&other_vlan));
    assert_eq!(r.code, 0, "{r}");

    // cidr, master and vlan are immutable, as the CRD's CEL rules make them in the API server.
    let moved = SITE.replace("10.230.", "10.231.");
    let r = f.run(&["apply", "-f", "-"], Some(&moved));
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("invalid spec.cidr \"10.231.0.0/24\": is immutable"),
        "{r}"
    );

    // Duplicate names within the input.
    let twice = format!("{POOL}---\n{POOL}");
    let r = f.run(&["apply", "-f", "-"], Some(&twice));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("document 2 (line 7) MacPool \"ok-pool\": invalid metadata.name \"ok-pool\": is also defined by document 1"), "{r}");

    assert_eq!(f.etcd.revision().await.unwrap(), before);
}

#[tokio::test]
async fn settings_from_the_environment() {
    let f = Fixture::new();
    let endpoint = f.etcd.endpoint();
    let r = run(
        &["apply", "-f", "-"],
        Some(POOL),
        &[
            ("STATIC_MACVLAN_ETCD_ENDPOINTS", endpoint.as_str()),
            ("STATIC_MACVLAN_PREFIX", f.prefix.as_str()),
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        f.keys(),
        [
            format!("{}/config/macpools/ok-pool", f.prefix),
            format!("{}/schema", f.prefix)
        ]
    );
}

#[test]
fn usage_errors_and_unreachable_etcd() {
    // No file.
    let r = run(
        &["apply", "--etcd-endpoints", "http://127.0.0.1:1"],
        None,
        &[],
    );
    assert_eq!(r.code, 2, "{r}");
    // No endpoints at all.
    let r = run(&["apply", "-f", "-"], Some(POOL), &[]);
    assert_eq!(r.code, 2, "{r}");
    // A malformed endpoint is named.
    let r = run(
        &["apply", "--etcd-endpoints", "127.0.0.1:2379", "-f", "-"],
        Some(POOL),
        &[],
    );
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("etcd.endpoints[0]"), "{r}");
    // Not YAML.
    let r = run(
        &["apply", "--etcd-endpoints", "http://127.0.0.1:1", "-f", "-"],
        Some("a: [b"),
        &[],
    );
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("not valid YAML"), "{r}");

    // Nothing listens on port 1: a good file cannot be applied (3) ...
    let started = std::time::Instant::now();
    let r = run(
        &["apply", "--etcd-endpoints", "http://127.0.0.1:1", "-f", "-"],
        Some(POOL),
        &[],
    );
    assert_eq!(r.code, 3, "{r}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // ... but a bad one is still reported as bad (2).
    let bad = subnet("x", "  master: eth0\n  cidr: 10.0.0.0/33\n");
    let r = run(
        &["apply", "--etcd-endpoints", "http://127.0.0.1:1", "-f", "-"],
        Some(&bad),
        &[],
    );
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("invalid spec.cidr"), "{r}");
}

fn rule(name: &str, spec: &str) -> String {
    format!("apiVersion: staticmacvlan.io/v1alpha1\nkind: AllocationRule\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Every CEL expression is compiled and type-checked before anything is written: a rule that
/// does not compile fails the run with the rule, the field, the CEL error and its position, and
/// etcd does not move.
#[tokio::test]
async fn rules_that_do_not_compile_are_rejected_with_field_and_position() {
    let f = Fixture::new();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax error",
            rule("bad-cel", "  match: \"pod.namespace = 'db'\"\n  subnet: lan\n"),
            "invalid spec.match \"pod.namespace = 'db'\": Syntax error",
        ),
        (
            "unknown field, second line",
            rule(
                "bad-cel",
                "  match: |-\n    pod.namespace == 'db' &&\n      pod.nmae == 'x'\n  subnet: lan\n",
            ),
            "undefined field 'nmae' of pod",
        ),
        (
            "match returning a string",
            rule("bad-cel", "  match: pod.name\n  subnet: lan\n"),
            "invalid spec.match \"pod.name\": must evaluate to a bool, but the expression is of type string",
        ),
        (
            "ip of the wrong type",
            rule("bad-cel", "  match: 'true'\n  ip: \"'10.0.0.' + 5\"\n"),
            "invalid spec.ip \"'10.0.0.' + 5\": found no matching overload",
        ),
        (
            "sticky key returning an int",
            rule("bad-cel", "  match: 'true'\n  sticky: {key: 'size(pod.name)', holdSeconds: 60}\n"),
            "invalid spec.sticky.key \"size(pod.name)\": must evaluate to a string",
        ),
        (
            "selector returning a string",
            subnet(
                "bad-cel",
                "  master: eth0\n  cidr: 10.230.0.0/24\n  selector: pod.namespace\n",
            ),
            "invalid spec.selector \"pod.namespace\": must evaluate to a bool",
        ),
    ];
    let positions = [
        Some("(at 1:15)"),
        Some("(at 2:6)"),
        None,
        Some("(at 1:11)"),
        None,
        None,
    ];
    for ((what, doc, error), position) in cases.into_iter().zip(positions) {
        let input = format!("{POOL}---\n{doc}");
        let before = f.etcd.revision().await.unwrap();
        let r = f.run(&["apply", "-f", "-"], Some(&input));
        assert_eq!(r.code, 2, "{what}: {r}");
        assert!(r.stderr.contains(error), "{what}: want {error:?} in\n{r}");
        assert!(
            r.stderr.contains("document 2 (line 7)") && r.stderr.contains("\"bad-cel\""),
            "{what}: the object is named: {r}"
        );
        if let Some(p) = position {
            assert!(r.stderr.contains(p), "{what}: want {p:?} in\n{r}");
        }
        assert!(r.stdout.is_empty(), "{what}: {r}");
        assert_eq!(
            f.etcd.revision().await.unwrap(),
            before,
            "{what}: etcd changed"
        );
        assert!(f.keys().is_empty(), "{what}: {:?}", f.keys());
    }
}

/// A rule that compiles is mirrored as the plugin reads it — `Mirrored<AllocationRuleSpec>` —
/// plus its content hash, and evaluates as written.
#[tokio::test]
async fn a_compiled_rule_is_mirrored_for_the_plugin_with_its_hash() {
    use static_macvlan_allocator::rules::{
        content_hash, AllocationRuleSpec, Budget, Context, PodInfo, RuleSet,
    };
    use static_macvlan_allocator::Mirrored;

    let f = Fixture::new();
    let ordinal = rule(
        "web-ordinal",
        r#"  priority: 100
  match: "pod.namespace == 'default' && pod.name.startsWith('web-')"
  subnet: lan-100
  ip: "'10.230.0.' + string(200 + int(pod.name.split('-')[size(pod.name.split('-')) - 1]))"
  sticky:
    holdSeconds: 3600
"#,
    );
    let input = format!("{SITE}---\n{ordinal}");
    let r = f.run(&["apply", "-f", "-"], Some(&input));
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .contains("allocationrule.staticmacvlan.io/web-ordinal created\n"),
        "{r}"
    );

    let mut rules = Vec::new();
    for name in ["databases", "web-ordinal"] {
        let raw = f
            .get(&format!("config/rules/{name}"))
            .expect("rule mirrored");
        let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let m: Mirrored<AllocationRuleSpec> = serde_json::from_str(&raw).unwrap();
        assert_eq!(m.name, name);
        assert_eq!(json["hash"], content_hash(&m.spec), "{json}");
        rules.push(m);
    }
    let set = RuleSet::from_mirrored(&rules).unwrap();
    assert_eq!(set.rules()[0].name(), "databases");

    let ctx = |namespace: &str, name: &str| Context {
        pod: PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: "u-1".into(),
            node: "node-a".into(),
            metadata: Some(Default::default()),
        },
        ..Context::default()
    };
    let d = set
        .evaluate(&ctx("default", "web-7"), &Budget::default())
        .unwrap();
    assert_eq!(d.rule.as_deref(), Some("web-ordinal"));
    assert_eq!(d.subnets, ["lan-100"]);
    assert_eq!(d.ip, Some("10.230.0.207".parse().unwrap()));
    assert_eq!(d.sticky.unwrap().key, "default/web-7");
    let d = set
        .evaluate(&ctx("other", "web-7"), &Budget::default())
        .unwrap();
    assert_eq!(d.rule, None);

    // Re-applying is a no-op: the hash is part of what is compared.
    let before = f.etcd.revision().await.unwrap();
    let r = f.run(&["apply", "-f", "-"], Some(&input));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout.matches(" unchanged\n").count(), 5, "{r}");
    assert_eq!(f.etcd.revision().await.unwrap(), before);
}
