//! What `compile` rejects, and how it says so: structural constraints, CEL syntax errors, type
//! errors (in any branch), wrong result types, and what only a trial run on a sample pod shows.

use static_macvlan_allocator::rules::{
    compile, AllocationRuleSpec, Budget, Context, DenySpec, PodInfo, Position, RuleError, RuleSet,
    StickySpec, MAX_EXPRESSION_BYTES, MAX_HOLD_SECONDS,
};

fn with_match(src: &str) -> AllocationRuleSpec {
    AllocationRuleSpec {
        r#match: src.to_owned(),
        subnet: Some("lan".to_owned()),
        ..AllocationRuleSpec::default()
    }
}

fn with_ip(src: &str) -> AllocationRuleSpec {
    AllocationRuleSpec {
        r#match: "true".to_owned(),
        ip: Some(src.to_owned()),
        ..AllocationRuleSpec::default()
    }
}

/// The `Invalid` parts of compiling `spec` as rule "r".
fn rejected(spec: &AllocationRuleSpec) -> (String, String, Option<Position>) {
    match compile("r", spec) {
        Err(RuleError::Invalid {
            rule,
            field,
            message,
            position,
        }) => {
            assert_eq!(rule, "r");
            (field, message, position)
        }
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("expected {spec:?} to be rejected"),
    }
}

fn pos(line: u32, column: u32) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn syntax_errors_carry_the_parser_message_and_position() {
    let cases = [
        ("pod.name ==", pos(1, 12), "Syntax error"),
        (
            "pod.name == 'a' &&\n  (pod.namespace == )",
            pos(2, 21),
            "Syntax error",
        ),
        ("pod.name = 'a'", pos(1, 10), "Syntax error"),
        ("'unterminated", pos(1, 1), "token recognition error"),
    ];
    for (src, position, text) in cases {
        let (field, message, got) = rejected(&with_match(src));
        assert_eq!(field, "spec.match");
        assert_eq!(got, position, "{src}: {message}");
        assert!(message.contains(text), "{src}: {message}");
    }
    let err = compile("db", &with_match("pod.name ==")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(r#"compile spec.match of AllocationRule "db" at 1:12: Syntax error"#),
        "{err}"
    );
}

#[test]
fn type_errors_are_found_in_every_branch_with_a_position() {
    let cases = [
        (
            "pod.nmae == 'web'",
            pos(1, 4),
            "undefined field 'nmae' of pod (fields: namespace, name, uid, node, labels, annotations)",
        ),
        ("attachment.vlan == 5", pos(1, 11), "undefined field 'vlan' of attachment"),
        (
            "name == 'db'",
            pos(1, 1),
            "undeclared reference to 'name' (the variables are pod and attachment)",
        ),
        ("pod.name.lower() == 'a'", pos(1, 15), "undeclared reference to 'lower'"),
        (
            "false && pod.nmae == 'x'",
            pos(1, 13),
            "undefined field 'nmae' of pod",
        ),
        (
            "pod.name == 'a' ? true : size(pod) > 0",
            pos(1, 30),
            "found no matching overload for 'size' applied to '(pod)'",
        ),
        (
            "pod.namespace == 5",
            pos(1, 15),
            "found no matching overload for '_==_' applied to '(string, int)'",
        ),
        (
            "pod.name.startsWith(1)",
            pos(1, 20),
            "found no matching overload for 'startsWith' applied to 'string.(int)'",
        ),
        (
            "family(ip('10.0.0.1')) == 4",
            pos(1, 7),
            "'family' is a member function: call it as x.family(…)",
        ),
        (
            "pod.labels.size() > 'a'",
            pos(1, 19),
            "found no matching overload for '_>_' applied to '(int, string)'",
        ),
        ("pod.name.matches('[a-')", pos(1, 18), "invalid regular expression \"[a-\""),
        ("ip('10.0.0.256').family() == 4", pos(1, 4), "is not a valid IP address"),
        (
            "cidr('10.0.0.0/40').prefixLength() > 0",
            pos(1, 6),
            "prefix length must be 0 to 32",
        ),
        (
            "cidr('10.0.0.0/8').containsIP('::ffff:10.0.0.1')",
            pos(1, 31),
            "IPv4-mapped IPv6 address",
        ),
        ("pod.labels.all(k, k > 1)", pos(1, 21), "found no matching overload for '_>_'"),
        ("'a' in 'abc'", pos(1, 5), "'in' needs a list or a map on the right"),
        ("pod.name.size().foo", pos(1, 16), "type 'int' has no fields"),
        ("1 in pod.labels", pos(1, 3), "found no matching overload for '@in'"),
    ];
    let mut failures = Vec::new();
    for (src, position, text) in cases {
        let (field, message, got) = rejected(&with_match(src));
        assert_eq!(field, "spec.match");
        if !message.contains(text) || got != position {
            failures.push(format!("{src}: {got:?} {message}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn type_errors_name_the_expression_field() {
    let (field, message, position) = rejected(&with_ip(r#""10.0.0." + 5"#));
    assert_eq!(field, "spec.ip");
    assert_eq!(
        message,
        "found no matching overload for '_+_' applied to '(string, int)'"
    );
    assert_eq!(position, pos(1, 11));
    let spec = AllocationRuleSpec {
        r#match: "true".to_owned(),
        sticky: Some(StickySpec {
            key: Some("pod.nam".to_owned()),
            hold_seconds: 60,
        }),
        ..AllocationRuleSpec::default()
    };
    let (field, _, _) = rejected(&spec);
    assert_eq!(field, "spec.sticky.key");
    let spec = AllocationRuleSpec {
        r#match: "true".to_owned(),
        mac: Some("pod.uid.x".to_owned()),
        ..AllocationRuleSpec::default()
    };
    let (field, _, _) = rejected(&spec);
    assert_eq!(field, "spec.mac");
}

#[test]
fn wrong_result_types_are_rejected_at_compile_time() {
    let cases = [
        (
            with_match("pod.name"),
            "spec.match",
            "must evaluate to a bool, but the expression is of type string",
        ),
        (with_match("size(pod.labels)"), "spec.match", "of type int"),
        (
            with_match("pod.labels"),
            "spec.match",
            "of type map(string, string)",
        ),
        (
            with_ip("1 + 1"),
            "spec.ip",
            "must evaluate to a string, but the expression is of type int",
        ),
        (with_ip("ip('10.0.0.1')"), "spec.ip", "of type net.IP"),
        (with_ip("pod.name == 'a'"), "spec.ip", "of type bool"),
        // Statically `dyn`: the trial run on the sample pod sees the value.
        (
            with_match("dyn(pod.name)"),
            "spec.match",
            "the result \"sample-0\" is of type string, not bool",
        ),
        (
            with_ip("dyn(pod.name.size())"),
            "spec.ip",
            "is of type int, not string",
        ),
    ];
    for (spec, field, text) in cases {
        let (got_field, message, _) = rejected(&spec);
        assert_eq!(got_field, field);
        assert!(message.contains(text), "{message}");
    }
    // A string `ip` expression gives the string of an IP: fine.
    compile("r", &with_ip("string(cidr('10.0.0.0/8').ip())")).unwrap();
}

#[test]
fn the_trial_run_separates_expression_errors_from_data_errors() {
    // Statically dyn, wrong for any pod: rejected.
    let (_, message, _) = rejected(&with_match("dyn(pod.name) + 1 == 2"));
    assert!(message.contains("add"), "{message}");
    // Fails on the sample pod only because of its data: accepted, decided per pod.
    let spec = with_match("int(pod.name) > 3");
    let compiled = compile("r", &spec).unwrap();
    let set = RuleSet::from_compiled(vec![compiled]).unwrap();
    let ctx = |name: &str| Context {
        pod: PodInfo {
            name: name.to_owned(),
            ..PodInfo::default()
        },
        ..Context::default()
    };
    assert_eq!(
        set.evaluate(&ctx("5"), &Budget::default())
            .unwrap()
            .rule
            .as_deref(),
        Some("r")
    );
    let err = set.evaluate(&ctx("web"), &Budget::default()).unwrap_err();
    assert!(
        err.to_string().contains("int(): string parse error"),
        "{err}"
    );
    compile("r", &with_match("pod.labels.app == 'db'")).unwrap();
    compile("r", &with_match("[1, 2][pod.name.size()] == 2")).unwrap();
}

#[test]
fn structural_constraints() {
    let base = AllocationRuleSpec {
        r#match: "true".to_owned(),
        ..AllocationRuleSpec::default()
    };
    let cases: Vec<(&str, AllocationRuleSpec, &str, &str)> = vec![
        (
            "r",
            AllocationRuleSpec {
                subnet: Some("a".into()),
                subnets: Some(vec!["b".into()]),
                ..base.clone()
            },
            "spec.subnets",
            "subnet and subnets are mutually exclusive",
        ),
        (
            "r",
            AllocationRuleSpec {
                subnets: Some(vec![]),
                ..base.clone()
            },
            "spec.subnets",
            "must not be empty",
        ),
        (
            "r",
            AllocationRuleSpec {
                subnets: Some(vec!["a".into(), "b".into(), "a".into()]),
                ..base.clone()
            },
            "spec.subnets[2]",
            "lists subnet \"a\" twice",
        ),
        (
            "r",
            AllocationRuleSpec {
                subnet: Some("a/b".into()),
                ..base.clone()
            },
            "spec.subnet",
            "must not contain '/'",
        ),
        (
            "r",
            AllocationRuleSpec {
                subnets: Some(vec!["ok".into(), "".into()]),
                ..base.clone()
            },
            "spec.subnets[1]",
            "must not be empty",
        ),
        (
            "r",
            AllocationRuleSpec {
                deny: Some(DenySpec {
                    message: "no".into(),
                }),
                ip: Some("'10.0.0.1'".into()),
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 5,
                }),
                ..base.clone()
            },
            "spec.deny",
            "deny excludes every other action, but ip, sticky is set too",
        ),
        (
            "r",
            AllocationRuleSpec {
                deny: Some(DenySpec {
                    message: "  ".into(),
                }),
                ..base.clone()
            },
            "spec.deny.message",
            "must not be empty",
        ),
        (
            "r",
            AllocationRuleSpec {
                deny: Some(DenySpec {
                    message: "two\nlines".into(),
                }),
                ..base.clone()
            },
            "spec.deny.message",
            "control characters",
        ),
        (
            "r",
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 0,
                }),
                ..base.clone()
            },
            "spec.sticky.holdSeconds",
            "must be 1 to 2592000 (30 days), got 0",
        ),
        (
            "r",
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: MAX_HOLD_SECONDS + 1,
                }),
                ..base.clone()
            },
            "spec.sticky.holdSeconds",
            "got 2592001",
        ),
        (
            "r",
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: Some(" ".into()),
                    hold_seconds: 10,
                }),
                ..base.clone()
            },
            "spec.sticky.key",
            "omit it for the default",
        ),
        (
            "r",
            base.clone(),
            "spec",
            "no action: set at least one of subnet, subnets, ip, mac, sticky or deny",
        ),
        (
            "r",
            AllocationRuleSpec {
                r#match: " ".into(),
                ..with_match("true")
            },
            "spec.match",
            "must not be empty",
        ),
        (
            "r",
            with_match(&format!(
                "true || {}",
                "true || ".repeat(MAX_EXPRESSION_BYTES / 8)
            )),
            "spec.match",
            "more than the 8192 allowed",
        ),
        (
            "a/b",
            with_match("true"),
            "metadata.name",
            "must not contain '/'",
        ),
        ("", with_match("true"), "metadata.name", "must not be empty"),
    ];
    for (name, spec, field, text) in cases {
        match compile(name, &spec) {
            Err(RuleError::Invalid {
                field: f, message, ..
            }) => {
                assert_eq!(f, field, "{message}");
                assert!(message.contains(text), "{field}: {message}");
            }
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    // Allowed combinations.
    let ok = [
        AllocationRuleSpec {
            ip: Some("'10.0.0.1'".into()),
            mac: Some("'02:00:00:00:00:01'".into()),
            subnets: Some(vec!["a".into(), "b".into()]),
            sticky: Some(StickySpec {
                key: None,
                hold_seconds: MAX_HOLD_SECONDS,
            }),
            ..base.clone()
        },
        AllocationRuleSpec {
            sticky: Some(StickySpec {
                key: None,
                hold_seconds: 1,
            }),
            ..base.clone()
        },
        AllocationRuleSpec {
            deny: Some(DenySpec {
                message: "go away".into(),
            }),
            priority: i32::MIN,
            ..base.clone()
        },
    ];
    for spec in ok {
        compile("r", &spec).unwrap();
    }
}

#[test]
fn multibyte_sources_get_character_columns() {
    let (_, _, position) = rejected(&with_match("'héllo' == pod.nom"));
    assert_eq!(position, pos(1, 15));
}

/// Expressions nested deeper than the interpreter's stack allows are refused with an error
/// naming the limit, whatever the shape, instead of aborting the process; the limit itself
/// compiles and runs. On the test harness's 2 MiB thread stacks, debug build included.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    use static_macvlan_allocator::rules::{
        AttachmentInfo, Budget, Context, PodInfo, RuleSet, MAX_NESTING,
    };
    let too_deep = [
        // left-deep chains
        format!("{}1 == 2", "1+".repeat(3000)),
        // calls, parentheses, lists
        format!("{}1{} == 1", "int(".repeat(1500), ")".repeat(1500)),
        format!("{}1{} == 1", "(".repeat(3000), ")".repeat(3000)),
        format!("{}1{}.size() == 1", "[".repeat(2000), "]".repeat(2000)),
    ];
    for src in &too_deep {
        let (field, message, _) = rejected(&with_match(src));
        assert_eq!(field, "spec.match");
        assert!(
            message.contains(&format!("more than the {MAX_NESTING} allowed"))
                || message.contains("recursion")
                || message.contains("deep"),
            "{}…: {message}",
            &src[..40]
        );
    }
    // Long but flat: the parser balances chains of && and ||.
    compile(
        "flat",
        &with_match(&format!("true{}", "&&true".repeat(1000))),
    )
    .unwrap();
    // Right at the limit: a chain of MAX_NESTING - 2 additions (the == and the literal make
    // the rest) compiles and evaluates.
    let at_limit = format!("{}1 == {}", "1 + ".repeat(MAX_NESTING - 2), MAX_NESTING - 1);
    let spec = with_match(&at_limit);
    let set = RuleSet::new(vec![("limit".into(), spec)]).unwrap();
    let ctx = Context {
        pod: PodInfo {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            node: "n".into(),
            metadata: None,
        },
        attachment: AttachmentInfo::default(),
    };
    let decision = set.evaluate(&ctx, &Budget::default()).unwrap();
    assert_eq!(decision.rule.as_deref(), Some("limit"), "{decision:?}");
}
