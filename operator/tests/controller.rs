//! The config reconcilers against a fake API server (kube's mock service) and a real etcd:
//! valid objects are mirrored and reported Ready, invalid ones are not mirrored and reported
//! Invalid naming the field, the VlanSubnet finalizer waits for the last reservation, drift is
//! repaired and orphaned keys are swept.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::mockapi::{MockApi, Recorded, Reply};
use common::Fixture;
use serde_json::{json, Value};
use static_macvlan_allocator::{IpRequest, MacRequest, Mirrored, Owner, SubnetConfig};
use static_macvlan_operator::controller::{
    reconcile_macpool, reconcile_rule, reconcile_subnet, sweep_orphans, Ctx, MIRROR_FINALIZER,
    SUBNET_FINALIZER,
};
use static_macvlan_operator::crd::{AllocationRule, MacPool, VlanSubnet};
use static_macvlan_operator::metrics::Metrics;

/// A VlanSubnet as the API server returns it.
fn subnet(spec: Value, finalizers: &[&str], extra_meta: Value) -> Value {
    let mut obj = json!({
        "apiVersion": "staticmacvlan.io/v1alpha1",
        "kind": "VlanSubnet",
        "metadata": {
            "name": "lan-100",
            "uid": "6f1c2f0e-8c1e-4c59-9d2a-2b1f0c6f1a01",
            "generation": 3,
            "resourceVersion": "48211",
            "creationTimestamp": "2026-03-01T10:00:00Z",
            "finalizers": finalizers,
            "managedFields": [{
                "manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "staticmacvlan.io/v1alpha1", "time": "2026-03-01T10:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}
            }]
        },
        "spec": spec
    });
    if let (Some(m), Some(extra)) = (obj["metadata"].as_object_mut(), extra_meta.as_object()) {
        m.extend(extra.clone());
    }
    obj
}

fn lan_spec() -> Value {
    json!({
        "master": "eth0", "vlan": 100, "mode": "bridge",
        "cidr": "10.230.0.0/24", "gateway": "10.230.0.1",
        "ranges": [{"start": "10.230.0.10", "end": "10.230.0.109"}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["10.230.0.1"], "search": ["lan"]}
    })
}

/// A fake API server that accepts every PATCH/PUT and answers with `obj`.
fn accepting(obj: Value) -> MockApi {
    MockApi::new(move |_r: Recorded| {
        let obj = obj.clone();
        async move { Reply::Json(200, obj) }
    })
}

struct Env {
    f: Fixture,
    api: MockApi,
    ctx: Arc<Ctx>,
}

async fn env(obj: Value) -> Env {
    let f = Fixture::new();
    let api = accepting(obj);
    let alloc = f.allocator().await;
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        alloc,
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    Env { f, api, ctx }
}

fn status_patch(api: &MockApi) -> Value {
    let patches: Vec<Recorded> = api
        .with_method("PATCH")
        .into_iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert_eq!(patches.len(), 1, "one status patch expected: {patches:#?}");
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    patches[0].body["status"].clone()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn valid_subnet_is_mirrored_and_ready() {
    let obj = subnet(lan_spec(), &[], json!({}));
    let e = env(obj.clone()).await;
    let vs: VlanSubnet = serde_json::from_value(obj).unwrap();
    reconcile_subnet(Arc::new(vs.clone()), e.ctx.clone())
        .await
        .unwrap();

    // Mirrored with name, uid and generation.
    let stored: Mirrored<SubnetConfig> =
        serde_json::from_str(&e.f.get("config/subnets/lan-100").expect("mirrored")).unwrap();
    assert_eq!(stored.uid.as_deref(), vs.metadata.uid.as_deref());
    assert_eq!(stored.generation, Some(3));
    assert_eq!(stored.spec.cidr, "10.230.0.0/24");
    assert_eq!(stored.spec.routes[0].dst, "192.168.0.0/16");

    // The finalizer, guarded by the resourceVersion read.
    let fin: Vec<Recorded> = e
        .api
        .with_method("PATCH")
        .into_iter()
        .filter(|r| r.path == "/apis/staticmacvlan.io/v1alpha1/vlansubnets/lan-100")
        .collect();
    assert_eq!(fin.len(), 1, "{fin:#?}");
    assert_eq!(
        fin[0].body["metadata"],
        json!({"finalizers": [SUBNET_FINALIZER], "resourceVersion": "48211"})
    );

    // Status through the subresource: Ready, counts, observedGeneration.
    let status = status_patch(&e.api);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "True", "{status}");
    assert_eq!(ready["reason"], "Mirrored");
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(condition(&status, "Invalid")["status"], "False");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["used"], 0);
    assert_eq!(status["free"], 100);

    // Reconciling the object as it now is changes nothing and sends nothing.
    let mut now: VlanSubnet = vs;
    now.metadata.finalizers = Some(vec![SUBNET_FINALIZER.to_string()]);
    now.status = Some(serde_json::from_value(status).unwrap());
    let before = e.api.requests().len();
    let rev = e.f.etcd.revision().await.unwrap();
    reconcile_subnet(Arc::new(now), e.ctx.clone())
        .await
        .unwrap();
    assert_eq!(e.api.requests().len(), before, "{:#?}", e.api.requests());
    assert_eq!(e.f.etcd.revision().await.unwrap(), rev);
}

#[tokio::test]
async fn invalid_subnet_is_not_mirrored_and_names_the_field() {
    let mut spec = lan_spec();
    spec["gateway"] = json!("10.231.0.1");
    let obj = subnet(spec, &[SUBNET_FINALIZER], json!({}));
    let e = env(obj.clone()).await;
    let rev = e.f.etcd.revision().await.unwrap();
    let vs: VlanSubnet = serde_json::from_value(obj).unwrap();
    reconcile_subnet(Arc::new(vs), e.ctx.clone()).await.unwrap();

    assert_eq!(e.f.get("config/subnets/lan-100"), None);
    assert_eq!(e.f.etcd.revision().await.unwrap(), rev, "nothing written");
    let status = status_patch(&e.api);
    let invalid = condition(&status, "Invalid");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "InvalidField");
    let msg = invalid["message"].as_str().unwrap();
    assert!(msg.contains("spec.gateway"), "{msg}");
    assert!(msg.contains("10.231.0.1"), "{msg}");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("nothing was mirrored"),
        "{ready}"
    );
    assert_eq!(
        status["used"],
        Value::Null,
        "no counts for a subnet not in force"
    );
}

#[tokio::test]
async fn invalid_update_keeps_the_last_good_version() {
    let obj = subnet(lan_spec(), &[SUBNET_FINALIZER], json!({"generation": 1}));
    let e = env(obj.clone()).await;
    reconcile_subnet(
        Arc::new(serde_json::from_value(obj).unwrap()),
        e.ctx.clone(),
    )
    .await
    .unwrap();
    let good = e.f.get("config/subnets/lan-100").unwrap();

    let mut spec = lan_spec();
    spec["ranges"] = json!([{"start": "10.230.0.200", "end": "10.230.0.100"}]);
    let bad = subnet(spec, &[SUBNET_FINALIZER], json!({"generation": 2}));
    let e2 = Env {
        api: accepting(bad.clone()),
        ..e
    };
    let ctx = Arc::new(Ctx::new(
        e2.api.client.clone(),
        e2.ctx.alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    reconcile_subnet(Arc::new(serde_json::from_value(bad).unwrap()), ctx)
        .await
        .unwrap();
    assert_eq!(e2.f.get("config/subnets/lan-100").unwrap(), good);
    let status = status_patch(&e2.api);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("etcd keeps generation 1"),
        "{ready}"
    );
    assert!(condition(&status, "Invalid")["message"]
        .as_str()
        .unwrap()
        .contains("spec.ranges[0].start"));
    // The counts are those of the version in force.
    assert_eq!(status["free"], 100);
}

#[tokio::test]
async fn overlapping_subnet_is_rejected() {
    let obj = subnet(lan_spec(), &[SUBNET_FINALIZER], json!({}));
    let e = env(obj).await;
    // Another subnet on the same LAN, already in etcd.
    let other = Mirrored {
        name: "lan-100-old".to_string(),
        uid: Some("u-old".to_string()),
        generation: Some(1),
        spec: SubnetConfig {
            master: "eth0".into(),
            vlan: 100,
            cidr: "10.230.0.0/23".into(),
            ..Default::default()
        },
    };
    e.ctx.alloc.put_subnet(&other).await.unwrap();
    let vs: VlanSubnet =
        serde_json::from_value(subnet(lan_spec(), &[SUBNET_FINALIZER], json!({}))).unwrap();
    reconcile_subnet(Arc::new(vs), e.ctx.clone()).await.unwrap();
    assert_eq!(e.f.get("config/subnets/lan-100"), None);
    let status = status_patch(&e.api);
    let invalid = condition(&status, "Invalid");
    assert_eq!(invalid["reason"], "Overlap");
    let msg = invalid["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.cidr") && msg.contains("lan-100-old"),
        "{msg}"
    );
}

fn owner(uid: &str) -> Owner {
    Owner {
        pod_uid: uid.into(),
        namespace: "db".into(),
        pod: "db-0".into(),
        container_id: format!("c0ffee{uid}"),
        ifname: "net1".into(),
        node: "node-a".into(),
        network: String::new(),
    }
}

#[tokio::test]
async fn finalizer_waits_for_the_last_reservation() {
    let live = subnet(lan_spec(), &[SUBNET_FINALIZER], json!({}));
    let e = env(live.clone()).await;
    reconcile_subnet(
        Arc::new(serde_json::from_value(live).unwrap()),
        e.ctx.clone(),
    )
    .await
    .unwrap();
    let alloc = e.ctx.alloc.clone();
    let lan = alloc.get_subnet("lan-100").await.unwrap();
    let res = alloc
        .reserve(&lan, &owner("u1"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    let res = alloc.commit(&res).await.unwrap();

    let deleting = subnet(
        lan_spec(),
        &[SUBNET_FINALIZER, "example.com/other"],
        json!({"deletionTimestamp": "2026-03-02T09:00:00Z", "deletionGracePeriodSeconds": 0}),
    );
    let api = accepting(deleting.clone());
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    let vs: VlanSubnet = serde_json::from_value(deleting).unwrap();
    let action = reconcile_subnet(Arc::new(vs.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(30))
    );
    assert!(
        e.f.get("config/subnets/lan-100").is_some(),
        "kept while in use"
    );
    let status = status_patch(&api);
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "DeletionBlocked");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("1 reservation(s) still use subnet lan-100"),
        "{ready}"
    );
    assert!(
        api.requests().iter().all(|r| r.path.ends_with("/status")),
        "the finalizer stays: {:#?}",
        api.requests()
    );

    // The last reservation goes: the key goes, then the finalizer (only ours).
    assert!(alloc.release_exact(&res).await.unwrap());
    let api = accepting(serde_json::to_value(&vs).unwrap());
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    reconcile_subnet(Arc::new(vs), ctx).await.unwrap();
    assert_eq!(e.f.get("config/subnets/lan-100"), None);
    let patches = api.with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_eq!(
        patches[0].body["metadata"]["finalizers"],
        json!(["example.com/other"])
    );
}

#[tokio::test]
async fn a_key_deleted_by_hand_comes_back() {
    let obj = subnet(lan_spec(), &[SUBNET_FINALIZER], json!({}));
    let e = env(obj.clone()).await;
    let vs: Arc<VlanSubnet> = Arc::new(serde_json::from_value(obj).unwrap());
    reconcile_subnet(vs.clone(), e.ctx.clone()).await.unwrap();
    let mirrored = e.f.get("config/subnets/lan-100").unwrap();
    e.f.etcd
        .etcdctl(&["del", &format!("{}/config/subnets/lan-100", e.f.prefix)])
        .unwrap();
    reconcile_subnet(vs, e.ctx.clone()).await.unwrap();
    assert_eq!(e.f.get("config/subnets/lan-100").unwrap(), mirrored);
}

#[tokio::test]
async fn macpool_and_rule() {
    let pool = json!({
        "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "MacPool",
        "metadata": {"name": "vms", "uid": "u-vms", "generation": 1, "resourceVersion": "7"},
        "spec": {"ranges": [{"start": "02:00:0a:e6:00:00", "end": "02:00:0a:e6:00:ff"}]}
    });
    let e = env(pool.clone()).await;
    let mp: MacPool = serde_json::from_value(pool).unwrap();
    reconcile_macpool(Arc::new(mp), e.ctx.clone())
        .await
        .unwrap();
    assert!(e.f.get("config/macpools/vms").is_some());
    let fin = e
        .api
        .with_method("PATCH")
        .into_iter()
        .find(|r| r.path == "/apis/staticmacvlan.io/v1alpha1/macpools/vms")
        .expect("finalizer patch");
    assert_eq!(
        fin.body["metadata"]["finalizers"],
        json!([MIRROR_FINALIZER])
    );
    let status = status_patch(&e.api);
    assert_eq!(status["ranges"], "02:00:0a:e6:00:00-02:00:0a:e6:00:ff");
    assert_eq!(status["used"], 0);
    assert_eq!(condition(&status, "Ready")["status"], "True");

    // A rule naming both subnet and subnets: rejected, field named, nothing mirrored.
    let rule = json!({
        "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "AllocationRule",
        "metadata": {"name": "db", "uid": "u-db", "generation": 4, "resourceVersion": "9",
                     "finalizers": [MIRROR_FINALIZER]},
        "spec": {"priority": 10, "match": "pod.namespace == 'db'", "subnet": "lan-100",
                 "subnets": ["lan-200"]}
    });
    let api = accepting(rule.clone());
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        e.ctx.alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    let ar: AllocationRule = serde_json::from_value(rule).unwrap();
    reconcile_rule(Arc::new(ar), ctx).await.unwrap();
    assert_eq!(e.f.get("config/rules/db"), None);
    let status = status_patch(&api);
    let invalid = condition(&status, "Invalid");
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("spec.subnets"),
        "{invalid}"
    );
    assert_eq!(status["observedGeneration"], 4);
}

#[tokio::test]
async fn deleting_a_macpool_removes_its_key() {
    let pool = json!({
        "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "MacPool",
        "metadata": {"name": "vms", "uid": "u-vms", "generation": 1, "resourceVersion": "7",
                     "finalizers": [MIRROR_FINALIZER]},
        "spec": {"ranges": [{"start": "02:00:0a:e6:00:00", "end": "02:00:0a:e6:00:ff"}]}
    });
    let e = env(pool.clone()).await;
    reconcile_macpool(
        Arc::new(serde_json::from_value(pool.clone()).unwrap()),
        e.ctx.clone(),
    )
    .await
    .unwrap();
    assert!(e.f.get("config/macpools/vms").is_some());
    let mut deleting = pool;
    deleting["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:00:00Z");
    let api = accepting(deleting.clone());
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        e.ctx.alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    reconcile_macpool(Arc::new(serde_json::from_value(deleting).unwrap()), ctx)
        .await
        .unwrap();
    assert_eq!(e.f.get("config/macpools/vms"), None);
    let patches = api.with_method("PATCH");
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].body["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn sweep_removes_only_orphaned_config() {
    let f = Fixture::new();
    let alloc = f.allocator().await;
    let sub = |name: &str, uid: Option<&str>, cidr: &str| Mirrored {
        name: name.to_string(),
        uid: uid.map(Into::into),
        generation: Some(1),
        spec: SubnetConfig {
            master: "eth0".into(),
            cidr: cidr.into(),
            ..Default::default()
        },
    };
    alloc
        .put_subnet(&sub("live", Some("u1"), "10.1.0.0/24"))
        .await
        .unwrap();
    alloc
        .put_subnet(&sub("gone", Some("u2"), "10.2.0.0/24"))
        .await
        .unwrap();
    let busy = alloc
        .put_subnet(&sub("gone-busy", Some("u3"), "10.3.0.0/24"))
        .await
        .unwrap();
    alloc
        .put_subnet(&sub("from-a-file", None, "10.4.0.0/24"))
        .await
        .unwrap();
    alloc
        .reserve(&busy, &owner("u9"), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    let m = Metrics::new();
    let live: BTreeSet<String> = ["live".to_string()].into();
    let report = sweep_orphans(&alloc, &m, &live, &BTreeSet::new(), &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(
        report.removed,
        [format!("{}/config/subnets/gone", f.prefix)]
    );
    assert_eq!(
        report.kept_in_use,
        [format!("{}/config/subnets/gone-busy", f.prefix)]
    );
    for kept in ["live", "gone-busy", "from-a-file"] {
        assert!(f.get(&format!("config/subnets/{kept}")).is_some(), "{kept}");
    }
    assert_eq!(
        f.keys()
            .iter()
            .filter(|k| k.contains("/ips/gone-busy/"))
            .count(),
        1,
        "reservations are never touched"
    );
}

/// An AllocationRule as the API server returns it.
fn allocation_rule(generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "staticmacvlan.io/v1alpha1", "kind": "AllocationRule",
        "metadata": {"name": "web-ordinal", "uid": "u-web", "generation": generation,
                     "resourceVersion": "12", "finalizers": [MIRROR_FINALIZER]},
        "spec": spec
    })
}

/// Reconciles `obj` against a fresh fake API server sharing `e`'s etcd; returns the API.
async fn reconcile_rule_obj(e: &Env, obj: Value) -> MockApi {
    let api = accepting(obj.clone());
    let ctx = Arc::new(Ctx::new(
        api.client.clone(),
        e.ctx.alloc.clone(),
        Arc::new(Metrics::new()),
        Duration::from_secs(300),
    ));
    let ar: AllocationRule = serde_json::from_value(obj).unwrap();
    reconcile_rule(Arc::new(ar), ctx).await.unwrap();
    api
}

/// A rule is compiled before it is mirrored: a good one goes to etcd as the plugin reads it,
/// with its content hash, and is Ready; a later generation that does not compile gets
/// Invalid/InvalidExpression with the CEL error and its position, and etcd keeps the good one.
#[tokio::test]
async fn rules_are_compiled_and_only_good_ones_mirrored() {
    use static_macvlan_allocator::rules::{content_hash, AllocationRuleSpec, RuleSet};

    let good = allocation_rule(
        1,
        json!({"priority": 100, "match": "pod.name.startsWith('web-')", "subnet": "lan-100",
               "ip": "'10.230.0.' + string(200 + int(pod.name.split('-')[1]))"}),
    );
    let e = env(good.clone()).await;
    let api = reconcile_rule_obj(&e, good).await;
    let raw = e.f.get("config/rules/web-ordinal").expect("mirrored");
    let m: Mirrored<AllocationRuleSpec> = serde_json::from_str(&raw).unwrap();
    assert_eq!((m.uid.as_deref(), m.generation), (Some("u-web"), Some(1)));
    let json: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(json["hash"], content_hash(&m.spec), "{json}");
    assert_eq!(RuleSet::from_mirrored([&m]).unwrap().len(), 1);
    let status = status_patch(&api);
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Invalid")["status"], "False");

    // Generation 2 has a type error on the second line of match.
    let bad = allocation_rule(
        2,
        json!({"priority": 100, "match": "pod.name.startsWith('web-') &&\n  pod.nmae == 'x'",
               "subnet": "lan-100"}),
    );
    let rev = e.f.etcd.revision().await.unwrap();
    let api = reconcile_rule_obj(&e, bad).await;
    assert_eq!(e.f.etcd.revision().await.unwrap(), rev, "nothing written");
    assert_eq!(e.f.get("config/rules/web-ordinal").unwrap(), raw);
    let status = status_patch(&api);
    let invalid = condition(&status, "Invalid");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "InvalidExpression");
    let msg = invalid["message"].as_str().unwrap();
    assert!(msg.contains("spec.match"), "{msg}");
    assert!(msg.contains("undefined field 'nmae'"), "{msg}");
    assert!(msg.contains("(at 2:6)"), "{msg}");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("etcd keeps generation 1"),
        "{ready}"
    );
    assert_eq!(status["observedGeneration"], 2);

    // A match of the wrong result type, on a rule never mirrored: nothing in etcd.
    let mut string_match = allocation_rule(1, json!({"match": "pod.name", "subnet": "lan-100"}));
    string_match["metadata"]["name"] = json!("string-match");
    let api = reconcile_rule_obj(&e, string_match).await;
    assert_eq!(e.f.get("config/rules/string-match"), None);
    let status = status_patch(&api);
    let invalid = condition(&status, "Invalid");
    assert_eq!(invalid["reason"], "InvalidExpression");
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("must evaluate to a bool, but the expression is of type string"),
        "{invalid}"
    );
    assert!(
        condition(&status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("nothing was mirrored"),
        "{status}"
    );
}

#[tokio::test]
async fn subnet_with_a_bad_selector_is_invalid() {
    let mut spec = lan_spec();
    spec["selector"] = json!("pod.namespace == 'db' &&\n  pod.lables['tier'] == 'x'");
    let obj = subnet(spec, &[SUBNET_FINALIZER], json!({}));
    let e = env(obj.clone()).await;
    let rev = e.f.etcd.revision().await.unwrap();
    let vs: VlanSubnet = serde_json::from_value(obj).unwrap();
    reconcile_subnet(Arc::new(vs), e.ctx.clone()).await.unwrap();

    assert_eq!(e.f.get("config/subnets/lan-100"), None);
    assert_eq!(e.f.etcd.revision().await.unwrap(), rev, "nothing written");
    let status = status_patch(&e.api);
    let invalid = condition(&status, "Invalid");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "InvalidExpression");
    let msg = invalid["message"].as_str().unwrap();
    assert!(msg.contains("invalid spec.selector"), "{msg}");
    assert!(msg.contains("(at 2:"), "{msg}");

    // A good selector is mirrored as written.
    let mut spec = lan_spec();
    spec["selector"] = json!("pod.namespace == 'db'");
    let obj = subnet(spec, &[SUBNET_FINALIZER], json!({}));
    let e = env(obj.clone()).await;
    let vs: VlanSubnet = serde_json::from_value(obj).unwrap();
    reconcile_subnet(Arc::new(vs), e.ctx.clone()).await.unwrap();
    let stored: Mirrored<SubnetConfig> =
        serde_json::from_str(&e.f.get("config/subnets/lan-100").expect("mirrored")).unwrap();
    assert_eq!(
        stored.spec.selector.as_deref(),
        Some("pod.namespace == 'db'")
    );
    assert_eq!(condition(&status_patch(&e.api), "Ready")["status"], "True");
}
