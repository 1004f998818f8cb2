//! The rules' fingerprint against a real etcd: it changes with every change to the rules (a new
//! rule, a changed one, a deleted one, a delete and a create together), the cheap read agrees
//! with a full read, and a cache is taken whole only for the fingerprint it was written with.

mod common;

use std::collections::HashSet;

use common::*;
use etcd_client::{Client, Txn, TxnOp};
use static_macvlan_allocator::rules::{
    AllocationRuleSpec, AttachmentInfo, Budget, Context, PodInfo, RuleSet, RulesFingerprint,
};
use static_macvlan_allocator::{Allocator, Mirrored, Options};

fn spec(priority: i32, r#match: &str) -> AllocationRuleSpec {
    AllocationRuleSpec {
        priority,
        r#match: r#match.to_owned(),
        subnet: Some("lan".to_owned()),
        ..AllocationRuleSpec::default()
    }
}

fn json(name: &str, spec: &AllocationRuleSpec) -> String {
    serde_json::to_string(&Mirrored {
        name: name.to_owned(),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        spec: spec.clone(),
    })
    .unwrap()
}

async fn put(client: &mut Client, alloc: &Allocator, name: &str, spec: &AllocationRuleSpec) {
    client
        .put(alloc.keys().rule(name), json(name, spec), None)
        .await
        .unwrap();
}

/// The cheap read and the full read, which must agree.
async fn fingerprint(alloc: &Allocator) -> RulesFingerprint {
    let cheap = alloc.rules_fingerprint().await.unwrap();
    let (rules, full) = alloc.rules_with_fingerprint().await.unwrap();
    assert_eq!(cheap, full);
    assert_eq!(full.count, rules.len() as i64);
    cheap
}

/// etcd 3.4 and later count the whole range when the response is limited to one key, and sort
/// by revision before they limit.
#[tokio::test]
async fn a_limited_range_still_counts_every_key() {
    let f = fixture(Options::default()).await;
    let mut client = f.etcd.client().await.unwrap();
    let rules = f.alloc.keys().rules();
    for name in ["c", "a", "d", "b"] {
        put(&mut client, &f.alloc, name, &spec(0, "true")).await;
    }
    // Rewrite one in the middle of the key order: it is now the latest.
    put(&mut client, &f.alloc, "a", &spec(1, "true")).await;
    let resp = client
        .get(rules.clone(), Some(RulesFingerprint::read_options()))
        .await
        .unwrap();
    assert_eq!(resp.count(), 4);
    assert_eq!(resp.kvs().len(), 1);
    let latest = &resp.kvs()[0];
    assert_eq!(latest.key_str().unwrap(), f.alloc.keys().rule("a"));
    assert!(latest.value().is_empty(), "keys only");
    let all = client
        .get(rules, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let max = all.kvs().iter().map(|kv| kv.mod_revision()).max().unwrap();
    assert_eq!(latest.mod_revision(), max);
    assert_eq!(
        RulesFingerprint::of_response(&resp),
        RulesFingerprint::of_kvs(all.kvs())
    );
    assert_eq!(
        RulesFingerprint::of_response(&resp),
        RulesFingerprint {
            count: 4,
            max_mod_revision: max
        }
    );
}

#[tokio::test]
async fn the_fingerprint_changes_with_every_change_to_the_rules() {
    let f = fixture(Options::default()).await;
    let mut client = f.etcd.client().await.unwrap();
    let alloc = &f.alloc;
    let empty = fingerprint(alloc).await;
    assert_eq!(empty, RulesFingerprint::EMPTY);

    let mut seen = HashSet::from([empty]);
    let mut changed = |fp: RulesFingerprint, what: &str| {
        assert!(seen.insert(fp), "{what}: {fp:?} seen before");
        fp
    };
    put(&mut client, alloc, "a", &spec(10, "true")).await;
    let one = changed(fingerprint(alloc).await, "a new rule");
    assert_eq!(one.count, 1);
    put(&mut client, alloc, "b", &spec(5, "false")).await;
    let two = changed(fingerprint(alloc).await, "another new rule");
    assert_eq!(two.count, 2);

    // Changed in place: the same count, a higher revision. Rewriting "a", below "b" in
    // revision, is what a fingerprint of only the newest key's name would miss.
    put(&mut client, alloc, "a", &spec(11, "true")).await;
    let modified = changed(fingerprint(alloc).await, "a changed rule");
    assert_eq!(modified.count, 2);
    assert!(modified.max_mod_revision > two.max_mod_revision);

    // A write elsewhere under the prefix changes nothing.
    put_subnet(
        alloc,
        "lan",
        subnet_config(
            "10.0.0.0/24",
            "10.0.0.1",
            vec![range("10.0.0.10", "10.0.0.20")],
        ),
    )
    .await;
    assert_eq!(fingerprint(alloc).await, modified);

    // Deleting the rule written last, and one written earlier.
    put(&mut client, alloc, "c", &spec(1, "true")).await;
    let three = changed(fingerprint(alloc).await, "a third rule");
    client.delete(alloc.keys().rule("c"), None).await.unwrap();
    let deleted = fingerprint(alloc).await;
    assert_eq!(deleted.count, 2);
    assert_ne!(deleted, three);
    // Back to the keys and values of before, by a delete: the same state, the same fingerprint.
    assert_eq!(deleted, modified);
    client.delete(alloc.keys().rule("b"), None).await.unwrap();
    let deleted_older = changed(fingerprint(alloc).await, "an older rule deleted");
    assert_eq!(deleted_older.count, 1);

    // A delete and a create in one transaction: the same count.
    put(&mut client, alloc, "d", &spec(2, "false")).await;
    let before = changed(fingerprint(alloc).await, "a rule added");
    client
        .txn(Txn::new().and_then(vec![
            TxnOp::delete(alloc.keys().rule("d"), None),
            TxnOp::put(alloc.keys().rule("e"), json("e", &spec(2, "false")), None),
        ]))
        .await
        .unwrap();
    let swapped = changed(fingerprint(alloc).await, "a rule replaced by another");
    assert_eq!(swapped.count, before.count);

    // And as two writes, the delete of the newest first.
    client.delete(alloc.keys().rule("e"), None).await.unwrap();
    put(&mut client, alloc, "f", &spec(2, "false")).await;
    let replaced = changed(fingerprint(alloc).await, "delete, then create");
    assert_eq!(replaced.count, before.count);

    // Everything deleted: the empty fingerprint again, as for a prefix never written.
    client
        .delete(
            alloc.keys().rules(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(fingerprint(alloc).await, RulesFingerprint::EMPTY);
}

fn pod(namespace: &str, name: &str) -> Context {
    Context {
        pod: PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: "6f1c7c39-2b57-4b0e-9a37-0d5f5b1f2a10".into(),
            node: "worker-1".into(),
            metadata: None,
        },
        attachment: AttachmentInfo {
            network: "lan".into(),
            ifname: "net1".into(),
            ..AttachmentInfo::default()
        },
    }
}

fn decisions(set: &RuleSet) -> Vec<String> {
    [pod("db", "x-1"), pod("db", "y-1"), pod("web", "x-0")]
        .iter()
        .map(|ctx| format!("{:?}", set.evaluate(ctx, &Budget::default())))
        .collect()
}

#[tokio::test]
async fn the_cache_is_taken_whole_only_for_the_rules_it_was_compiled_from() {
    let f = fixture(Options::default()).await;
    let mut client = f.etcd.client().await.unwrap();
    let alloc = &f.alloc;
    put(
        &mut client,
        alloc,
        "db",
        &spec(10, r#"pod.namespace == "db" && pod.name.startsWith("x")"#),
    )
    .await;
    put(&mut client, alloc, "rest", &spec(0, "true")).await;

    // What the plugin does when its cache is stale: read the rules in full, compile, cache.
    let (rules, fp) = alloc.rules_with_fingerprint().await.unwrap();
    let (set, used) = RuleSet::from_mirrored_cached(&rules, None, "build", &fp).unwrap();
    assert!(!used.up_to_date);
    let bytes = set.to_cache("build", &fp);

    // The next ADD reads only the fingerprint.
    let now = alloc.rules_fingerprint().await.unwrap();
    let whole =
        RuleSet::from_cache(bytes.clone(), "build", &now).expect("the rules did not change");
    assert_eq!(
        decisions(&whole),
        decisions(&RuleSet::from_mirrored(&rules).unwrap())
    );
    assert!(decisions(&whole)[0].contains(r#"rule: Some("db")"#));

    // A rule changes: the cache no longer stands for the rules.
    put(
        &mut client,
        alloc,
        "db",
        &spec(10, r#"pod.namespace == "db" && pod.name.startsWith("y")"#),
    )
    .await;
    let now = alloc.rules_fingerprint().await.unwrap();
    assert!(RuleSet::from_cache(bytes.clone(), "build", &now).is_none());
    let (rules, fp) = alloc.rules_with_fingerprint().await.unwrap();
    assert_eq!(fp, now);
    let (set, used) = RuleSet::from_mirrored_cached(&rules, Some(&bytes), "build", &fp).unwrap();
    assert_eq!((used.reused, used.compiled, used.up_to_date), (1, 1, false));
    let bytes = set.to_cache("build", &fp);
    let whole = RuleSet::from_cache(bytes.clone(), "build", &now).unwrap();
    assert_eq!(decisions(&whole), decisions(&set));
    assert!(decisions(&whole)[1].contains(r#"rule: Some("db")"#));
    assert!(decisions(&whole)[0].contains(r#"rule: Some("rest")"#));

    // Deleted: not even a cache of the remaining rule's identical compile stands in.
    client.delete(alloc.keys().rule("db"), None).await.unwrap();
    let now = alloc.rules_fingerprint().await.unwrap();
    assert!(RuleSet::from_cache(bytes.clone(), "build", &now).is_none());
}
