//! The rule engine end to end through its public API: rule order, the worked examples of
//! docs/rules.md, actions and their result checks, metadata handling, selectors, the mirrored
//! JSON form and the content hash.

use std::collections::BTreeMap;
use std::time::Duration;

use static_macvlan_allocator::rules::{
    compile, compile_selector, content_hash, needs_pod_metadata, selector_allows,
    AllocationRuleSpec, AttachmentInfo, Budget, Context, DenySpec, PodInfo, PodMetadata, RuleError,
    RuleSet, StickySpec,
};
use static_macvlan_allocator::{MacAddr, Mirrored};

fn rule(priority: i32, matches: &str) -> AllocationRuleSpec {
    AllocationRuleSpec {
        priority,
        r#match: matches.to_owned(),
        subnet: Some("lan".to_owned()),
        ..AllocationRuleSpec::default()
    }
}

fn pod(namespace: &str, name: &str) -> Context {
    Context {
        pod: PodInfo {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: "6f1c7c39-2b57-4b0e-9a37-0d5f5b1f2a10".to_owned(),
            node: "worker-1".to_owned(),
            metadata: Some(PodMetadata::default()),
        },
        attachment: AttachmentInfo {
            network: "lan".to_owned(),
            ifname: "net1".to_owned(),
            ..AttachmentInfo::default()
        },
    }
}

fn with_labels(mut ctx: Context, labels: &[(&str, &str)]) -> Context {
    ctx.pod.metadata = Some(PodMetadata {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: BTreeMap::new(),
    });
    ctx
}

fn set(rules: Vec<(&str, AllocationRuleSpec)>) -> RuleSet {
    RuleSet::new(rules.into_iter().map(|(n, s)| (n.to_owned(), s)).collect()).unwrap()
}

fn decide(set: &RuleSet, ctx: &Context) -> Option<String> {
    set.evaluate(ctx, &Budget::default()).unwrap().rule
}

/// (what, rules, the rule that must decide)
type OrderCase = (
    &'static str,
    Vec<(&'static str, AllocationRuleSpec)>,
    Option<&'static str>,
);

#[test]
fn rules_are_tried_by_priority_then_name_and_the_first_match_wins() {
    let cases: Vec<OrderCase> = vec![
        (
            "higher priority first",
            vec![("low", rule(1, "true")), ("high", rule(10, "true"))],
            Some("high"),
        ),
        (
            "ties by name ascending",
            vec![("bravo", rule(5, "true")), ("alpha", rule(5, "true"))],
            Some("alpha"),
        ),
        (
            "negative priorities sort below zero",
            vec![("neg", rule(-1, "true")), ("zero", rule(0, "true"))],
            Some("zero"),
        ),
        (
            "a non-matching higher rule falls through",
            vec![
                ("high", rule(10, r#"pod.namespace == "other""#)),
                ("low", rule(1, "true")),
            ],
            Some("low"),
        ),
        ("no match", vec![("only", rule(1, "false"))], None),
    ];
    for (what, rules, want) in cases {
        let s = set(rules);
        assert_eq!(
            decide(&s, &pod("team-a", "web-0")).as_deref(),
            want,
            "{what}"
        );
    }
    let s = set(vec![
        ("b", rule(5, "true")),
        ("a", rule(5, "true")),
        ("c", rule(9, "true")),
    ]);
    let order: Vec<&str> = s.rules().iter().map(|r| r.name()).collect();
    assert_eq!(order, ["c", "a", "b"]);
}

#[test]
fn the_decision_says_which_rule_and_why() {
    let s = set(vec![
        ("skip", rule(100, "false")),
        ("db-ordinal", rule(50, "true")),
        ("later", rule(1, "true")),
    ]);
    let d = s.evaluate(&pod("db", "pg-0"), &Budget::default()).unwrap();
    assert_eq!(d.rule.as_deref(), Some("db-ordinal"));
    assert_eq!(
        d.reason,
        r#"rule "db-ordinal" (priority 50) matched; 2 of 3 rules evaluated"#
    );
    let none = set(vec![("skip", rule(1, "false"))])
        .evaluate(&pod("db", "pg-0"), &Budget::default())
        .unwrap();
    assert_eq!(none.rule, None);
    assert_eq!(none.reason, "no rule matched; 1 rules evaluated");
    let empty = RuleSet::default()
        .evaluate(&pod("db", "pg-0"), &Budget::default())
        .unwrap();
    assert_eq!(empty.reason, "no rules configured");
}

const ORDINAL_IP: &str =
    r#""10.230.0." + string(100 + int(pod.name.split("-")[size(pod.name.split("-")) - 1]))"#;

/// The ordinal as a two-digit hex octet: CEL's `format` has no width, so pad by hand.
const ORDINAL_MAC: &str = r#""02:00:0a:e6:00:" + (int(pod.name.split("-")[1]) < 16 ? "0" : "") + "%x".format([int(pod.name.split("-")[1])])"#;

#[test]
fn statefulset_ordinal_addressing() {
    // The issue's example on its own: web-7 -> 10.230.0.107.
    let ip_only = AllocationRuleSpec {
        r#match: "true".to_owned(),
        ip: Some(ORDINAL_IP.to_owned()),
        ..AllocationRuleSpec::default()
    };
    let s = set(vec![("ordinal", ip_only)]);
    let d = s.evaluate(&pod("db", "web-7"), &Budget::default()).unwrap();
    assert_eq!(d.ip, Some("10.230.0.107".parse().unwrap()));
    assert!(d.subnets.is_empty());

    let spec = AllocationRuleSpec {
        priority: 100,
        r#match: r#"pod.namespace == "db" && pod.name.startsWith("web-")"#.to_owned(),
        subnet: Some("vlan230".to_owned()),
        ip: Some(ORDINAL_IP.to_owned()),
        mac: Some(ORDINAL_MAC.to_owned()),
        ..AllocationRuleSpec::default()
    };
    let s = set(vec![("db-ordinal", spec)]);
    for (name, ip, mac) in [
        ("web-0", "10.230.0.100", "02:00:0a:e6:00:00"),
        ("web-7", "10.230.0.107", "02:00:0a:e6:00:07"),
        ("web-42", "10.230.0.142", "02:00:0a:e6:00:2a"),
    ] {
        let d = s.evaluate(&pod("db", name), &Budget::default()).unwrap();
        assert_eq!(d.rule.as_deref(), Some("db-ordinal"));
        assert_eq!(d.ip, Some(ip.parse().unwrap()), "{name}");
        assert_eq!(d.mac, Some(mac.parse::<MacAddr>().unwrap()), "{name}");
        assert_eq!(d.subnets, ["vlan230"]);
    }
    // Other namespaces are not matched.
    assert_eq!(decide(&s, &pod("web", "web-1")), None);
    // Ordinal 200 gives 10.230.0.300: a bad result naming the rule, the field and the value.
    let err = s
        .evaluate(&pod("db", "web-200"), &Budget::default())
        .unwrap_err();
    assert!(
        matches!(&err, RuleError::BadResult { rule, field, value, .. }
            if rule == "db-ordinal" && field == "spec.ip" && value == "10.230.0.300"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"evaluate spec.ip of AllocationRule "db-ordinal": result "10.230.0.300" is not usable: "10.230.0.300" is not a valid IP address"#
    );
    // A name without an ordinal is an evaluation error naming the rule, not a silent default.
    let err = s
        .evaluate(&pod("db", "web-x"), &Budget::default())
        .unwrap_err();
    assert!(
        matches!(&err, RuleError::Eval { rule, field, .. } if rule == "db-ordinal" && field == "spec.ip"),
        "{err:?}"
    );
}

#[test]
fn a_vlan_per_namespace() {
    let per_ns = |ns: &str, vlan: &str| AllocationRuleSpec {
        priority: 10,
        r#match: format!("pod.namespace == {ns:?}"),
        subnet: Some(vlan.to_owned()),
        ..AllocationRuleSpec::default()
    };
    let s = set(vec![
        ("team-a", per_ns("team-a", "vlan100")),
        ("team-b", per_ns("team-b", "vlan200")),
        (
            "default",
            AllocationRuleSpec {
                r#match: "true".to_owned(),
                subnets: Some(vec!["shared-1".to_owned(), "shared-2".to_owned()]),
                ..AllocationRuleSpec::default()
            },
        ),
    ]);
    for (ns, subnets) in [
        ("team-a", vec!["vlan100"]),
        ("team-b", vec!["vlan200"]),
        ("team-c", vec!["shared-1", "shared-2"]),
    ] {
        let d = s.evaluate(&pod(ns, "x"), &Budget::default()).unwrap();
        assert_eq!(d.subnets, subnets, "{ns}");
    }
    assert!(!s.needs_pod_metadata());
}

#[test]
fn deny_carries_its_message_and_nothing_else() {
    let s = set(vec![
        (
            "no-dmz-for-dev",
            AllocationRuleSpec {
                priority: 1000,
                r#match: r#"pod.namespace.startsWith("dev-") && attachment.network == "dmz""#
                    .to_owned(),
                deny: Some(DenySpec {
                    message: "development namespaces may not attach to the DMZ".to_owned(),
                }),
                ..AllocationRuleSpec::default()
            },
        ),
        ("rest", rule(0, "true")),
    ]);
    let mut ctx = pod("dev-alice", "x");
    ctx.attachment.network = "dmz".to_owned();
    let d = s.evaluate(&ctx, &Budget::default()).unwrap();
    assert_eq!(d.rule.as_deref(), Some("no-dmz-for-dev"));
    assert_eq!(
        d.deny.as_deref(),
        Some("development namespaces may not attach to the DMZ")
    );
    assert!(d.subnets.is_empty() && d.ip.is_none() && d.mac.is_none() && d.sticky.is_none());
    ctx.attachment.network = "lan".to_owned();
    let d = s.evaluate(&ctx, &Budget::default()).unwrap();
    assert_eq!(d.rule.as_deref(), Some("rest"));
    assert_eq!(d.deny, None);
}

#[test]
fn sticky_key_defaults_to_namespace_and_name() {
    let s = set(vec![
        (
            "vm-custom",
            AllocationRuleSpec {
                priority: 2,
                r#match: r#"pod.name.startsWith("virt-launcher-")"#.to_owned(),
                mac: Some(r#""""#.to_owned()),
                sticky: Some(StickySpec {
                    key: Some(
                        r#"pod.namespace + "/" + pod.name.split("-")[2] + "/" + attachment.ifname"#
                            .to_owned(),
                    ),
                    hold_seconds: 86400,
                }),
                ..AllocationRuleSpec::default()
            },
        ),
        (
            "vm-default",
            AllocationRuleSpec {
                priority: 1,
                r#match: "true".to_owned(),
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 600,
                }),
                ..AllocationRuleSpec::default()
            },
        ),
    ]);
    let d = s
        .evaluate(
            &pod("vms", "virt-launcher-fedora-x7k2p"),
            &Budget::default(),
        )
        .unwrap();
    let sticky = d.sticky.unwrap();
    assert_eq!(sticky.key, "vms/fedora/net1");
    assert_eq!(sticky.hold, Duration::from_secs(86400));
    assert_eq!(
        d.mac, None,
        "an empty string means no address from the rule"
    );
    let d = s.evaluate(&pod("db", "pg-1"), &Budget::default()).unwrap();
    let sticky = d.sticky.unwrap();
    assert_eq!(sticky.key, "db/pg-1");
    assert_eq!(sticky.hold, Duration::from_secs(600));
}

#[test]
fn computed_addresses_are_checked() {
    let cases = [
        (r#""10.0.0.5""#, Ok(Some("10.0.0.5"))),
        (r#""2001:db8::5""#, Ok(Some("2001:db8::5"))),
        (r#""""#, Ok(None)),
        (r#""10.0.0.300""#, Err("not usable")),
        (r#""0.0.0.0""#, Err("unspecified")),
        (r#""127.0.0.1""#, Err("loopback")),
        (r#""224.0.0.1""#, Err("multicast")),
        (r#""255.255.255.255""#, Err("broadcast")),
        (r#""::ffff:10.0.0.1""#, Err("IPv4-mapped")),
        (r#""10.0.0.5 ""#, Err("not usable")),
    ];
    for (expr, want) in cases {
        let s = set(vec![(
            "r",
            AllocationRuleSpec {
                r#match: "true".to_owned(),
                ip: Some(expr.to_owned()),
                ..AllocationRuleSpec::default()
            },
        )]);
        let got = s.evaluate(&pod("a", "b"), &Budget::default());
        match want {
            Ok(ip) => assert_eq!(got.unwrap().ip, ip.map(|s| s.parse().unwrap()), "{expr}"),
            Err(reason) => {
                let err = got.unwrap_err();
                assert!(
                    matches!(&err, RuleError::BadResult { rule, field, reason: r, .. }
                        if rule == "r" && field == "spec.ip" && r.contains(reason)),
                    "{expr}: {err:?}"
                );
            }
        }
    }
    let mac_cases = [
        (r#""02:00:00:00:00:01""#, Ok(Some("02:00:00:00:00:01"))),
        (r#""02-00-00-00-00-01""#, Ok(Some("02:00:00:00:00:01"))),
        (r#""00:16:3e:00:00:01""#, Ok(Some("00:16:3e:00:00:01"))),
        (r#""01:00:5e:00:00:01""#, Err("multicast")),
        (r#""ff:ff:ff:ff:ff:ff""#, Err("multicast")),
        (r#""00:00:00:00:00:00""#, Err("all-zero")),
        (r#""02:00:00:00:00""#, Err("not a MAC")),
    ];
    for (expr, want) in mac_cases {
        let s = set(vec![(
            "r",
            AllocationRuleSpec {
                r#match: "true".to_owned(),
                mac: Some(expr.to_owned()),
                ..AllocationRuleSpec::default()
            },
        )]);
        let got = s.evaluate(&pod("a", "b"), &Budget::default());
        match want {
            Ok(mac) => assert_eq!(
                got.unwrap().mac,
                mac.map(|s| s.parse::<MacAddr>().unwrap()),
                "{expr}"
            ),
            Err(reason) => {
                let err = got.unwrap_err();
                assert!(
                    matches!(&err, RuleError::BadResult { field, reason: r, .. }
                        if field == "spec.mac" && r.contains(reason)),
                    "{expr}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn missing_label_keys() {
    let cases = [
        // Guarded reads: fine with and without the label.
        (
            r#"has(pod.labels.app) && pod.labels.app == "db""#,
            Some(true),
            Some(false),
        ),
        (
            r#""app" in pod.labels && pod.labels["app"] == "db""#,
            Some(true),
            Some(false),
        ),
        (
            r#"pod.labels[?"app"].orValue("none") == "db""#,
            Some(true),
            Some(false),
        ),
        (r#"!has(pod.labels.app)"#, Some(false), Some(true)),
        // Unguarded: an evaluation error for pods without the label (fail closed).
        (r#"pod.labels.app == "db""#, Some(true), None),
        (r#"pod.labels["app"] == "db""#, Some(true), None),
    ];
    for (src, with, without) in cases {
        let s = set(vec![("r", rule(0, src))]);
        let labelled = with_labels(pod("a", "b"), &[("app", "db")]);
        let bare = with_labels(pod("a", "b"), &[("tier", "x")]);
        for (ctx, want) in [(&labelled, with), (&bare, without)] {
            let got = s.evaluate(ctx, &Budget::default());
            match want {
                Some(m) => assert_eq!(got.unwrap().rule.is_some(), m, "{src}"),
                None => {
                    let err = got.unwrap_err();
                    let text = err.to_string();
                    assert!(matches!(err, RuleError::Eval { .. }), "{src}: {err:?}");
                    assert!(text.contains("no such key 'app'"), "{text}");
                    assert!(text.contains("has("), "a hint how to guard: {text}");
                }
            }
        }
        assert!(s.needs_pod_metadata(), "{src}");
    }
}

#[test]
fn needs_pod_metadata_is_decided_on_the_ast() {
    let cases = [
        ("true", false),
        (r#"pod.namespace == "a" && pod.name != "b""#, false),
        (r#"pod.uid != "" && pod.node.startsWith("gpu-")"#, false),
        (r#"attachment.network == "labels""#, false),
        (r#""pod.labels" == attachment.ifname"#, false),
        ("has(pod.labels.app)", true),
        (r#"pod.annotations["x"] == "y""#, true),
        (r#"pod.labels.exists(k, k == "app")"#, true),
        (r#"size(pod.labels) > 0"#, true),
    ];
    for (src, needs) in cases {
        let compiled = compile("r", &rule(0, src)).unwrap();
        assert_eq!(needs_pod_metadata(&compiled), needs, "{src}");
    }
    // Any expression of the rule counts, not only the match.
    let in_ip = AllocationRuleSpec {
        r#match: "true".to_owned(),
        ip: Some(r#"pod.labels[?"ip"].orValue("")"#.to_owned()),
        ..AllocationRuleSpec::default()
    };
    assert!(needs_pod_metadata(&compile("r", &in_ip).unwrap()));
    let in_sticky = AllocationRuleSpec {
        r#match: "true".to_owned(),
        sticky: Some(StickySpec {
            key: Some(r#"pod.labels["vm"]"#.to_owned()),
            hold_seconds: 60,
        }),
        ..AllocationRuleSpec::default()
    };
    assert!(needs_pod_metadata(&compile("r", &in_sticky).unwrap()));
}

#[test]
fn metadata_is_needed_only_by_the_rules_that_read_it() {
    let s = set(vec![
        ("by-namespace", rule(10, r#"pod.namespace == "infra""#)),
        (
            "by-label",
            rule(5, r#"pod.labels[?"tier"].orValue("") == "db""#),
        ),
        ("rest", rule(0, "true")),
    ]);
    assert!(s.needs_pod_metadata());
    let mut ctx = pod("infra", "x");
    ctx.pod.metadata = None;
    // The first rule decides without labels: the API-down path.
    assert_eq!(decide(&s, &ctx).as_deref(), Some("by-namespace"));
    // Otherwise the labels rule is reached and asks for the mirror.
    ctx.pod.namespace = "apps".to_owned();
    let err = s.evaluate(&ctx, &Budget::default()).unwrap_err();
    assert_eq!(
        err,
        RuleError::MetadataUnavailable {
            rule: "by-label".to_owned(),
            field: "spec.match".to_owned(),
        }
    );
    assert!(err.to_string().contains("pod mirror"), "{err}");
    // Once the mirror is there, the same pod is decided.
    let ctx = with_labels(ctx, &[("tier", "db")]);
    assert_eq!(decide(&s, &ctx).as_deref(), Some("by-label"));
}

#[test]
fn selectors() {
    let cases = [
        (r#"pod.namespace != "guest""#, "prod", true),
        (r#"pod.namespace != "guest""#, "guest", false),
        (r#"pod.namespace in ["prod", "infra"]"#, "infra", true),
        (r#"pod.namespace in ["prod", "infra"]"#, "dev", false),
        (
            r#"attachment.ip == "" || cidr("10.230.0.0/25").containsIP(attachment.ip)"#,
            "any",
            false,
        ),
    ];
    for (src, ns, want) in cases {
        let sel = compile_selector("vlan230", src).unwrap();
        let mut ctx = pod(ns, "x");
        ctx.attachment.ip = "10.230.0.200".to_owned();
        assert_eq!(
            selector_allows(&sel, &ctx, &Budget::default()).unwrap(),
            want,
            "{src} for {ns}"
        );
        assert_eq!(sel.subnet(), "vlan230");
        assert_eq!(sel.source(), src);
        assert!(!sel.needs_pod_metadata());
    }
    let by_label =
        compile_selector("vlan300", r#"pod.labels[?"net"].orValue("") == "300""#).unwrap();
    assert!(by_label.needs_pod_metadata());
    let mut ctx = pod("a", "b");
    ctx.pod.metadata = None;
    let err = selector_allows(&by_label, &ctx, &Budget::default()).unwrap_err();
    assert!(
        matches!(&err, RuleError::MetadataUnavailable { rule, field } if rule == "vlan300" && field == "spec.selector"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("evaluate spec.selector of VlanSubnet \"vlan300\""));
    let err = compile_selector("vlan300", "pod.name").unwrap_err();
    assert!(
        err.to_string()
            .contains("must evaluate to a bool, but the expression is of type string"),
        "{err}"
    );
}

#[test]
fn mirrored_json_is_camel_case_and_round_trips() {
    let json = r#"{
        "name": "vm-macs",
        "uid": "0b7e8f5e-1111-2222-3333-444455556666",
        "generation": 3,
        "spec": {
            "priority": 20,
            "match": "pod.namespace == \"vms\"",
            "subnets": ["vlan100", "vlan101"],
            "mac": "\"\"",
            "sticky": {"key": "pod.name", "holdSeconds": 3600}
        }
    }"#;
    let mirrored: Mirrored<AllocationRuleSpec> = serde_json::from_str(json).unwrap();
    assert_eq!(mirrored.spec.priority, 20);
    assert_eq!(mirrored.spec.sticky.as_ref().unwrap().hold_seconds, 3600);
    let set = RuleSet::from_mirrored([&mirrored]).unwrap();
    assert_eq!(set.rules()[0].name(), "vm-macs");
    let back = serde_json::to_value(&mirrored.spec).unwrap();
    assert_eq!(back["sticky"]["holdSeconds"], 3600);
    assert_eq!(back["match"], "pod.namespace == \"vms\"");
    assert!(back.get("subnet").is_none(), "absent fields are omitted");
    let again: AllocationRuleSpec = serde_json::from_value(back).unwrap();
    assert_eq!(again, mirrored.spec);
    // Unknown fields from a newer operator are ignored, not fatal.
    let newer: AllocationRuleSpec =
        serde_json::from_str(r#"{"match": "true", "subnet": "a", "future": 1}"#).unwrap();
    assert_eq!(newer.subnet.as_deref(), Some("a"));
}

#[test]
fn the_content_hash_is_stable_and_tracks_the_spec() {
    let a = rule(1, "true");
    let h = content_hash(&a);
    assert_eq!(h.len(), 64);
    assert!(h
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(h, content_hash(&a.clone()));
    // Pinned: a change of serialization would invalidate every cache key.
    assert_eq!(
        h,
        content_hash(
            &serde_json::from_str(r#"{"match":"true","priority":1,"subnet":"lan"}"#).unwrap()
        )
    );
    assert_ne!(h, content_hash(&rule(2, "true")));
    assert_ne!(h, content_hash(&rule(1, "true ")));
    assert_eq!(compile("x", &a).unwrap().hash(), h);
}

#[test]
fn duplicate_names_are_rejected() {
    let err = RuleSet::new(vec![
        ("same".to_owned(), rule(1, "true")),
        ("same".to_owned(), rule(2, "false")),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, RuleError::Invalid { rule, field, .. } if rule == "same" && field == "metadata.name"),
        "{err:?}"
    );
}

#[test]
fn compiled_rules_can_be_reused() {
    let compiled = vec![
        compile("b", &rule(1, "true")).unwrap(),
        compile("a", &rule(1, "true")).unwrap(),
    ];
    let s = RuleSet::from_compiled(compiled.clone()).unwrap();
    assert_eq!(decide(&s, &pod("x", "y")).as_deref(), Some("a"));
    assert_eq!(s.len(), 2);
    assert!(!s.is_empty());
}

/// The worked examples of docs/rules.md that the tests above do not already cover.
#[test]
fn the_documented_examples_work() {
    // Sticky MACs for VMs.
    let vm = AllocationRuleSpec {
        priority: 50,
        r#match: r#"pod.labels[?"kubevirt.io"].orValue("") == "virt-launcher""#.to_owned(),
        subnet: Some("vlan300".to_owned()),
        sticky: Some(StickySpec {
            key: Some(
                r#"pod.namespace + "/" + pod.labels["vm.kubevirt.io/name"] + "/" + attachment.ifname"#
                    .to_owned(),
            ),
            hold_seconds: 86400,
        }),
        ..AllocationRuleSpec::default()
    };
    // Keeping a namespace off a VLAN, with a message.
    let no_guest = AllocationRuleSpec {
        priority: 1000,
        r#match: r#"pod.namespace == "guest" && (attachment.subnet == "vlan10" || attachment.network == "vlan10")"#.to_owned(),
        deny: Some(DenySpec {
            message: "the guest namespace may not attach to vlan10".to_owned(),
        }),
        ..AllocationRuleSpec::default()
    };
    // The seed annotations.
    let seed = AllocationRuleSpec {
        priority: -100,
        r#match: r#""static-ip" in pod.annotations || "static-mac" in pod.annotations"#.to_owned(),
        ip: Some(
            r#"pod.annotations[?"static-ip"].orValue("auto") == "auto" ? "" : pod.annotations["static-ip"]"#
                .to_owned(),
        ),
        mac: Some(r#"pod.annotations[?"static-mac"].orValue("")"#.to_owned()),
        ..AllocationRuleSpec::default()
    };
    let s = set(vec![
        ("vm-sticky", vm),
        ("no-guest-on-vlan10", no_guest),
        ("seed-static-annotations", seed),
    ]);

    let launcher = with_labels(
        pod("vms", "virt-launcher-fedora-x7k2p"),
        &[
            ("kubevirt.io", "virt-launcher"),
            ("vm.kubevirt.io/name", "fedora"),
        ],
    );
    let d = s.evaluate(&launcher, &Budget::default()).unwrap();
    assert_eq!(d.subnets, ["vlan300"]);
    assert_eq!(d.sticky.unwrap().key, "vms/fedora/net1");

    let mut guest = pod("guest", "x");
    guest.attachment.subnet = "vlan10".to_owned();
    let d = s.evaluate(&guest, &Budget::default()).unwrap();
    assert_eq!(
        d.deny.as_deref(),
        Some("the guest namespace may not attach to vlan10")
    );

    let mut annotated = pod("apps", "legacy-0");
    annotated.pod.metadata = Some(PodMetadata {
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([
            ("static-ip".to_owned(), "10.0.0.9".to_owned()),
            ("static-mac".to_owned(), "02:00:00:00:00:09".to_owned()),
        ]),
    });
    let d = s.evaluate(&annotated, &Budget::default()).unwrap();
    assert_eq!(d.rule.as_deref(), Some("seed-static-annotations"));
    assert_eq!(d.ip, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(d.mac, Some("02:00:00:00:00:09".parse::<MacAddr>().unwrap()));
    annotated.pod.metadata.as_mut().unwrap().annotations =
        BTreeMap::from([("static-ip".to_owned(), "auto".to_owned())]);
    let d = s.evaluate(&annotated, &Budget::default()).unwrap();
    assert_eq!((d.ip, d.mac), (None, None));

    let confine = compile_selector(
        "vlan230",
        r#"attachment.ip == "" || cidr("10.230.0.0/25").containsIP(attachment.ip)"#,
    )
    .unwrap();
    let mut ctx = pod("a", "b");
    ctx.attachment.ip = "10.230.0.5".to_owned();
    assert!(selector_allows(&confine, &ctx, &Budget::default()).unwrap());
    let off = compile_selector("vlan10", r#"pod.namespace != "guest""#).unwrap();
    assert!(!selector_allows(&off, &guest, &Budget::default()).unwrap());
}
