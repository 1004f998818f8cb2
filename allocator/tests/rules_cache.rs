//! `RuleSet::from_mirrored_cached` and `RuleSet::from_cache`: a set read back from the bytes of
//! `RuleSet::to_cache` decides exactly as the set compiled from the same specs, and the cache
//! never stands in for a spec it was not compiled from — a changed, added or invalid rule is
//! compiled (and validated) in full, and the whole set is taken from the cache only for the
//! fingerprint it was written with.

use std::collections::BTreeMap;

use static_macvlan_allocator::rules::{
    AllocationRuleSpec, AttachmentInfo, Budget, CacheUse, Context, DenySpec, PodInfo, PodMetadata,
    RuleError, RuleSet, RulesFingerprint, StickySpec,
};
use static_macvlan_allocator::Mirrored;

fn mirrored(name: &str, spec: AllocationRuleSpec) -> Mirrored<AllocationRuleSpec> {
    Mirrored {
        name: name.to_owned(),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        spec,
    }
}

fn when(priority: i32, r#match: &str) -> AllocationRuleSpec {
    AllocationRuleSpec {
        priority,
        r#match: r#match.to_owned(),
        subnet: Some("lan".to_owned()),
        ..AllocationRuleSpec::default()
    }
}

/// Rules that exercise every action, metadata reads, errors at run time and the budget.
fn rules() -> Vec<Mirrored<AllocationRuleSpec>> {
    vec![
        mirrored(
            "deny-quarantine",
            AllocationRuleSpec {
                priority: 100,
                r#match: r#"pod.namespace == "quarantine""#.into(),
                deny: Some(DenySpec {
                    message: "no network for quarantined pods".into(),
                }),
                ..AllocationRuleSpec::default()
            },
        ),
        mirrored(
            "db-ordinal",
            AllocationRuleSpec {
                priority: 50,
                r#match: r#"pod.namespace == "db" && pod.name.startsWith("pg-")"#.into(),
                subnets: Some(vec!["db-a".into(), "db-b".into()]),
                ip: Some(r#""10.230.0." + string(100 + int(pod.name.split("-")[1]))"#.into()),
                mac: Some(
                    r#""02:00:0a:e6:00:" + "%x".format([16 + int(pod.name.split("-")[1])])"#.into(),
                ),
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 600,
                }),
                ..AllocationRuleSpec::default()
            },
        ),
        mirrored(
            "by-label",
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: Some(r#"pod.labels["app"] + "/" + attachment.ifname"#.into()),
                    hold_seconds: 60,
                }),
                ..when(40, r#"pod.labels[?"tier"].orValue("") == "web""#)
            },
        ),
        // Fails at run time for a pod without the label: an error, not a decision.
        mirrored("strict-label", when(30, r#"pod.labels.team == "net""#)),
        mirrored(
            "busy",
            when(
                35,
                r#"pod.namespace == "loop" && [1, 2, 3].all(x, [1, 2, 3].exists(y, x * y > 0))"#,
            ),
        ),
        mirrored("fallback", when(0, "true")),
    ]
}

fn pod(namespace: &str, name: &str, labels: Option<&[(&str, &str)]>) -> Context {
    Context {
        pod: PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: "6f1c7c39-2b57-4b0e-9a37-0d5f5b1f2a10".into(),
            node: "worker-1".into(),
            metadata: labels.map(|l| PodMetadata {
                labels: l
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: BTreeMap::new(),
            }),
        },
        attachment: AttachmentInfo {
            network: "lan".into(),
            ifname: "net1".into(),
            ..AttachmentInfo::default()
        },
    }
}

fn pods() -> Vec<Context> {
    vec![
        pod("quarantine", "x", Some(&[])),
        pod("db", "pg-3", None),
        pod("db", "pg-x", Some(&[])),
        pod("web", "front-0", Some(&[("tier", "web"), ("app", "shop")])),
        pod("web", "front-1", Some(&[("tier", "web")])),
        pod("web", "front-2", None),
        pod("net", "r-0", Some(&[("team", "net")])),
        pod("other", "o-0", Some(&[])),
        pod("other", "o-1", Some(&[("team", "ops")])),
        pod("loop", "l-0", Some(&[])),
    ]
}

/// A fingerprint for `rules` as if read from etcd (these tests have no etcd: see
/// `rules_fingerprint.rs` for fingerprints etcd gives).
fn fp(rules: &[Mirrored<AllocationRuleSpec>]) -> RulesFingerprint {
    RulesFingerprint {
        count: rules.len() as i64,
        max_mod_revision: 100,
    }
}

fn cached(
    rules: &[Mirrored<AllocationRuleSpec>],
    cache: Option<&[u8]>,
    build: &str,
) -> (RuleSet, CacheUse) {
    RuleSet::from_mirrored_cached(rules, cache, build, &fp(rules)).unwrap()
}

fn same_decisions(a: &RuleSet, b: &RuleSet) {
    let names = |s: &RuleSet| {
        s.rules()
            .iter()
            .map(|r| r.name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(a), names(b));
    assert_eq!(a.needs_pod_metadata(), b.needs_pod_metadata());
    for ctx in pods() {
        for budget in [
            Budget::default(),
            Budget {
                cost: 5,
                ..Budget::default()
            },
        ] {
            assert_eq!(
                a.evaluate(&ctx, &budget),
                b.evaluate(&ctx, &budget),
                "{}/{} with {budget:?}",
                ctx.pod.namespace,
                ctx.pod.name
            );
        }
    }
}

#[test]
fn a_set_read_from_the_cache_decides_as_the_compiled_one() {
    let rules = rules();
    let compiled = RuleSet::from_mirrored(&rules).unwrap();
    let bytes = compiled.to_cache("build-1", &fp(&rules));

    let (from_cache, used) = cached(&rules, Some(&bytes), "build-1");
    assert_eq!(
        used,
        CacheUse {
            reused: rules.len(),
            compiled: 0,
            up_to_date: true
        }
    );
    same_decisions(&compiled, &from_cache);
    // The outcomes are varied enough to mean something: a deny, a computed address, a label
    // rule, a run-time error, a missing-metadata error and a budget error.
    let mut outcomes: Vec<String> = Vec::new();
    for ctx in pods() {
        for cost in [Budget::DEFAULT_COST, 5] {
            let budget = Budget {
                cost,
                ..Budget::default()
            };
            outcomes.push(match from_cache.evaluate(&ctx, &budget) {
                Ok(d) => format!("{:?}", d.rule),
                Err(e) => format!("{e:?}").split(' ').next().unwrap().to_owned(),
            });
        }
    }
    for want in [
        "Some(\"deny-quarantine\")",
        "Some(\"db-ordinal\")",
        "Some(\"by-label\")",
        "Some(\"busy\")",
        "Some(\"fallback\")",
        "Eval",
        "MetadataUnavailable",
        "Budget",
    ] {
        assert!(outcomes.iter().any(|o| o == want), "{want} in {outcomes:?}");
    }
    // Written back, the cache is the same bytes: nothing was lost in the round trip.
    assert_eq!(from_cache.to_cache("build-1", &fp(&rules)), bytes);
}

#[test]
fn changed_added_and_removed_rules_are_compiled_and_the_cache_is_stale() {
    let rules = rules();
    let bytes = RuleSet::from_mirrored(&rules)
        .unwrap()
        .to_cache("b", &fp(&rules));

    // A changed match: only that rule is compiled, and the new spec decides.
    let mut changed = rules.clone();
    changed[0].spec.r#match = r#"pod.namespace == "other""#.into();
    let (set, used) = cached(&changed, Some(&bytes), "b");
    assert_eq!((used.reused, used.compiled, used.up_to_date), (5, 1, false));
    same_decisions(&RuleSet::from_mirrored(&changed).unwrap(), &set);
    let d = set
        .evaluate(&pod("other", "o-0", Some(&[])), &Budget::default())
        .unwrap();
    assert_eq!(d.rule.as_deref(), Some("deny-quarantine"));

    // Only the priority changed: the order follows the new spec.
    let mut reordered = rules.clone();
    reordered[5].spec.priority = 1000;
    let (set, used) = cached(&reordered, Some(&bytes), "b");
    assert_eq!(used.compiled, 1);
    assert_eq!(set.rules()[0].name(), "fallback");

    // An added rule.
    let mut added = rules.clone();
    added.push(mirrored("new", when(70, "true")));
    let (set, used) = cached(&added, Some(&bytes), "b");
    assert_eq!((used.reused, used.compiled, used.up_to_date), (6, 1, false));
    assert_eq!(set.rules()[1].name(), "new");

    // A removed rule: nothing to compile, but the cache holds more than the set.
    let (set, used) = cached(&rules[1..], Some(&bytes), "b");
    assert_eq!((used.reused, used.compiled, used.up_to_date), (5, 0, false));
    same_decisions(&RuleSet::from_mirrored(&rules[1..]).unwrap(), &set);
}

#[test]
fn a_cache_of_another_build_or_damaged_is_ignored() {
    let rules = rules();
    let compiled = RuleSet::from_mirrored(&rules).unwrap();
    let bytes = compiled.to_cache("b", &fp(&rules));
    let none = CacheUse {
        reused: 0,
        compiled: rules.len(),
        up_to_date: false,
    };
    for (what, cache, build) in [
        ("another build", Some(&bytes[..]), "other"),
        ("no cache", None, "b"),
        ("empty", Some(&[][..]), "b"),
        ("truncated", Some(&bytes[..bytes.len() - 1]), "b"),
        ("garbage", Some(&b"smv-rule garbage"[..]), "b"),
    ] {
        let (set, used) = cached(&rules, cache, build);
        assert_eq!(used, none, "{what}");
        same_decisions(&compiled, &set);
    }
    for i in (0..bytes.len()).step_by(13) {
        let mut damaged = bytes.clone();
        damaged[i] = damaged[i].wrapping_add(1);
        let (set, used) = cached(&rules, Some(&damaged), "b");
        assert_eq!(used, none, "byte {i}");
        assert_eq!(set.len(), rules.len());
    }
}

#[test]
fn an_invalid_rule_fails_as_without_a_cache() {
    let rules = rules();
    let bytes = RuleSet::from_mirrored(&rules)
        .unwrap()
        .to_cache("b", &fp(&rules));
    // Written to etcd by hand, bypassing the operator: a typo, a type error, a structural one.
    for (name, spec) in [
        ("typo", when(5, r#"pod.nmae == "x""#)),
        ("not-bool", when(5, r#"pod.name + "x""#)),
        (
            "bad-ip-type",
            AllocationRuleSpec {
                ip: Some("1 + 2".into()),
                ..when(5, "true")
            },
        ),
        (
            "deny-and-subnet",
            AllocationRuleSpec {
                deny: Some(DenySpec {
                    message: "no".into(),
                }),
                ..when(5, "true")
            },
        ),
    ] {
        let mut with_bad = rules.clone();
        with_bad.push(mirrored(name, spec));
        let plain = RuleSet::from_mirrored(&with_bad).unwrap_err();
        let from_cache =
            RuleSet::from_mirrored_cached(&with_bad, Some(&bytes), "b", &fp(&with_bad))
                .unwrap_err();
        assert!(
            matches!(from_cache, RuleError::Invalid { .. }),
            "{from_cache}"
        );
        assert_eq!(from_cache.rule(), name);
        assert_eq!(from_cache, plain);
    }
    // A cached rule changed in etcd into an invalid one is compiled, and fails.
    let mut broken = rules.clone();
    broken[3].spec.r#match = r#"pod.labels.team == 1"#.into();
    let e = RuleSet::from_mirrored_cached(&broken, Some(&bytes), "b", &fp(&broken)).unwrap_err();
    assert_eq!(e.rule(), "strict-label");
    assert_eq!(e, RuleSet::from_mirrored(&broken).unwrap_err());
}

#[test]
fn two_rules_of_one_name_fail_as_without_a_cache() {
    let rules = vec![
        mirrored("twin", when(1, "true")),
        mirrored("twin", when(2, "false")),
    ];
    let bytes = RuleSet::from_mirrored(&rules[..1])
        .unwrap()
        .to_cache("b", &fp(&rules[..1]));
    assert_eq!(
        RuleSet::from_mirrored_cached(&rules, Some(&bytes), "b", &fp(&rules)).unwrap_err(),
        RuleSet::from_mirrored(&rules).unwrap_err()
    );
}

#[test]
fn a_cache_of_other_rules_is_not_up_to_date_even_if_every_rule_is_reused() {
    let rules = rules();
    let bytes = RuleSet::from_mirrored(&rules)
        .unwrap()
        .to_cache("b", &fp(&rules));
    let later = RulesFingerprint {
        max_mod_revision: 101,
        ..fp(&rules)
    };
    let (_, used) = RuleSet::from_mirrored_cached(&rules, Some(&bytes), "b", &later).unwrap();
    assert_eq!((used.reused, used.compiled, used.up_to_date), (6, 0, false));
}

#[test]
fn the_whole_set_from_the_cache_decides_as_the_compiled_one() {
    let rules = rules();
    let compiled = RuleSet::from_mirrored(&rules).unwrap();
    let bytes = compiled.to_cache("b", &fp(&rules));
    let whole = RuleSet::from_cache(bytes.clone(), "b", &fp(&rules)).expect("the whole set");
    same_decisions(&compiled, &whole);
    assert_eq!(whole.to_cache("b", &fp(&rules)), bytes);

    // Another fingerprint (the rules changed since), another build, damaged bytes: no set.
    for other in [
        RulesFingerprint {
            max_mod_revision: 101,
            ..fp(&rules)
        },
        RulesFingerprint {
            count: 5,
            ..fp(&rules)
        },
        RulesFingerprint::EMPTY,
    ] {
        assert!(
            RuleSet::from_cache(bytes.clone(), "b", &other).is_none(),
            "{other:?}"
        );
    }
    assert!(RuleSet::from_cache(bytes.clone(), "other", &fp(&rules)).is_none());
    assert!(RuleSet::from_cache(bytes[..bytes.len() - 1].to_vec(), "b", &fp(&rules)).is_none());
    for i in (0..bytes.len()).step_by(13) {
        let mut damaged = bytes.clone();
        damaged[i] = damaged[i].wrapping_add(1);
        assert!(
            RuleSet::from_cache(damaged, "b", &fp(&rules)).is_none(),
            "byte {i}"
        );
    }
    // No rules: an empty set, from its own (tiny) cache.
    let empty = RuleSet::from_mirrored(&[]).unwrap();
    let bytes = empty.to_cache("b", &RulesFingerprint::EMPTY);
    let set = RuleSet::from_cache(bytes.clone(), "b", &RulesFingerprint::EMPTY).unwrap();
    assert!(set.is_empty());
}
