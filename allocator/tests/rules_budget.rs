//! The evaluation budget: no expression can stall an ADD. Deliberately expensive expressions —
//! nested comprehensions over a list, strings built up by `replace` — are stopped by the time,
//! cost or value-size limit, soon after the limit, with an error naming the rule and field.
//! The bombs here only go off for a pod named "bomb", so that they pass compilation (whose trial
//! run on a sample pod rejects unconditional ones, also tested).

use std::time::{Duration, Instant};

use static_macvlan_allocator::rules::{
    compile, compile_selector, selector_allows, AllocationRuleSpec, Budget, Context, Limit,
    PodInfo, RuleError, RuleSet,
};

/// `[0, 1, …, n-1]` as a CEL list literal.
fn range(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// 30^4 = 810,000 innermost iterations.
fn nested_all() -> String {
    let l = range(30);
    format!(
        r#"pod.name == "bomb" && {l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, a + b + c + d >= 0))))"#
    )
}

/// 30^4 elements built by `map`.
fn nested_map() -> String {
    let l = range(30);
    format!(
        r#"pod.name == "bomb" && size({l}.map(a, {l}.map(b, {l}.map(c, {l}.map(d, a * b * c * d))))) > 0"#
    )
}

/// Strings built up in a loop.
fn string_building() -> String {
    let l = range(200);
    format!(
        r#"pod.name == "bomb" && {l}.map(a, {l}.map(b, pod.name + pod.name + pod.name + string(a) + string(b))).size() > 0"#
    )
}

/// Each `replace("", x)` multiplies the length by `len(x) + 1`: ten digits, then `levels`
/// replacements: 120, 1330, 14640, 161050 (4 levels), 1771560 bytes (5 levels)…
fn replacements(levels: usize) -> String {
    let d = r#""0123456789""#;
    format!("{d}{}", format!(r#".replace("", {d})"#).repeat(levels))
}

fn replace_bomb() -> String {
    format!(r#"pod.name == "bomb" && {}.size() > 0"#, replacements(6))
}

/// After the budget runs out inside `exists`, a later `true` must not hide it.
fn exists_swallowing() -> String {
    let l = range(30);
    format!(
        r#"pod.name == "bomb" && {l}.exists(a, {l}.exists(b, {l}.exists(c, {l}.all(d, d >= 0) && false)) || a == 29)"#
    )
}

fn bomb_ctx() -> Context {
    Context {
        pod: PodInfo {
            namespace: "default".to_owned(),
            name: "bomb".to_owned(),
            ..PodInfo::default()
        },
        ..Context::default()
    }
}

fn rules(matches: &str) -> RuleSet {
    RuleSet::new(vec![
        (
            "harmless".to_owned(),
            AllocationRuleSpec {
                priority: 10,
                r#match: r#"pod.namespace == "other""#.to_owned(),
                subnet: Some("a".to_owned()),
                ..AllocationRuleSpec::default()
            },
        ),
        (
            "expensive".to_owned(),
            AllocationRuleSpec {
                priority: 5,
                r#match: matches.to_owned(),
                subnet: Some("b".to_owned()),
                ..AllocationRuleSpec::default()
            },
        ),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

fn exceeded(set: &RuleSet, budget: Budget) -> (Limit, Duration) {
    let start = Instant::now();
    let err = set.evaluate(&bomb_ctx(), &budget).unwrap_err();
    let took = start.elapsed();
    match err {
        RuleError::Budget { rule, field, limit } => {
            assert_eq!(rule, "expensive");
            assert_eq!(field, "spec.match");
            (limit, took)
        }
        other => panic!("expected a budget error, got {other:?}"),
    }
}

#[test]
fn the_default_budget_stops_every_bomb_and_names_the_rule() {
    for (what, src) in [
        ("nested all", nested_all()),
        ("nested map", nested_map()),
        ("string building", string_building()),
        ("replace", replace_bomb()),
        ("exists swallowing the error", exists_swallowing()),
    ] {
        let set = rules(&src);
        // Harmless for other pods.
        let mut ctx = bomb_ctx();
        ctx.pod.name = "web-0".to_owned();
        assert_eq!(
            set.evaluate(&ctx, &Budget::default()).unwrap().rule,
            None,
            "{what}"
        );
        let (limit, took) = exceeded(&set, Budget::default());
        // Debug builds are slow: the cost limit may come first, but it always comes quickly.
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        let err = set.evaluate(&bomb_ctx(), &Budget::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"evaluate spec.match of AllocationRule "expensive": exceeded the "#),
            "{what}: {err}"
        );
        eprintln!("{what}: {limit} after {took:?}");
    }
}

#[test]
fn the_time_limit_stops_evaluation_soon_after_the_deadline() {
    let set = rules(&nested_all());
    let budget = Budget {
        time: Duration::from_millis(20),
        cost: u64::MAX,
        ..Budget::default()
    };
    let (limit, took) = exceeded(&set, budget);
    assert_eq!(limit, Limit::Time(Duration::from_millis(20)));
    assert!(took >= Duration::from_millis(20), "{took:?}");
    assert!(
        took < Duration::from_millis(500),
        "overran the deadline: {took:?}"
    );
    let err = set.evaluate(&bomb_ctx(), &budget).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("exceeded the time budget of 20 ms"),
        "{err}"
    );
}

#[test]
fn the_cost_limit_is_deterministic() {
    let set = rules(&nested_map());
    let budget = Budget {
        time: Duration::from_secs(600),
        cost: 10_000,
        ..Budget::default()
    };
    for _ in 0..3 {
        let (limit, _) = exceeded(&set, budget);
        assert_eq!(limit, Limit::Cost(10_000));
    }
}

#[test]
fn the_size_limit_stops_values_before_they_are_built() {
    let set = rules(&replace_bomb());
    let budget = Budget {
        time: Duration::from_secs(600),
        cost: u64::MAX,
        max_value_bytes: 64 * 1024,
    };
    let (limit, took) = exceeded(&set, budget);
    assert_eq!(limit, Limit::ValueSize(64 * 1024));
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Copies of a large value in a list literal are charged one by one: 2000 copies of 161 kB
    // would be 322 MB; the cost limit stops the literal after about 300.
    let copies = format!(
        r#"pod.name == "bomb" && [{}].all(b, size([{}]) > 0)"#,
        replacements(4),
        vec!["b"; 2000].join(", ")
    );
    let (limit, took) = exceeded(
        &rules(&copies),
        Budget {
            time: Duration::from_secs(600),
            ..Budget::default()
        },
    );
    assert_eq!(limit, Limit::Cost(Budget::DEFAULT_COST));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // `join` and `format` are sized before they are built too.
    for src in [
        format!(
            r#"pod.name == "bomb" && {}.split("").join({}).size() > 0"#,
            replacements(2),
            replacements(2)
        ),
        format!(
            r#"pod.name == "bomb" && "%s%s%s%s".format([{l}, {l}, {l}, {l}]).size() > 0"#,
            l = replacements(4)
        ),
    ] {
        let (limit, _) = exceeded(&rules(&src), budget);
        assert_eq!(limit, Limit::ValueSize(64 * 1024), "{src}");
    }
}

#[test]
fn the_budget_covers_the_whole_rule_set() {
    // 50 cheap rules, each a small loop: together they exceed a small cost budget, and the
    // error names the rule where it ran out.
    let l = range(50);
    let specs: Vec<(String, AllocationRuleSpec)> = (0..50)
        .map(|i| {
            (
                format!("rule-{i:02}"),
                AllocationRuleSpec {
                    priority: 100 - i,
                    r#match: format!("{l}.all(x, x != {})", 1000 + i),
                    subnet: Some("a".to_owned()),
                    ..AllocationRuleSpec::default()
                },
            )
        })
        .collect();
    let set = RuleSet::new(specs).unwrap();
    assert_eq!(
        set.evaluate(&bomb_ctx(), &Budget::default())
            .unwrap()
            .rule
            .as_deref(),
        Some("rule-00")
    );
    let always_false: Vec<(String, AllocationRuleSpec)> = (0..50)
        .map(|i| {
            (
                format!("rule-{i:02}"),
                AllocationRuleSpec {
                    priority: 100 - i,
                    r#match: format!("!{l}.all(x, x != {})", 1000 + i),
                    subnet: Some("a".to_owned()),
                    ..AllocationRuleSpec::default()
                },
            )
        })
        .collect();
    let set = RuleSet::new(always_false).unwrap();
    let budget = Budget {
        cost: 1_000,
        time: Duration::from_secs(600),
        ..Budget::default()
    };
    match set.evaluate(&bomb_ctx(), &budget).unwrap_err() {
        RuleError::Budget { rule, limit, .. } => {
            assert_eq!(limit, Limit::Cost(1_000));
            // 50 units a rule, one checkpoint per iteration: the 21st rule runs out.
            assert_eq!(rule, "rule-20");
        }
        other => panic!("{other:?}"),
    }
    // The thread's budget is released: the next evaluation starts afresh.
    assert_eq!(
        set.evaluate(&bomb_ctx(), &Budget::default()).unwrap().rule,
        None
    );
}

#[test]
fn unconditional_bombs_are_rejected_at_compile_time() {
    let l = range(30);
    for src in [
        format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, a + b + c + d >= 0))))"),
        format!("size({}) > 0", replacements(6)),
    ] {
        let spec = AllocationRuleSpec {
            r#match: src.clone(),
            subnet: Some("a".to_owned()),
            ..AllocationRuleSpec::default()
        };
        match compile("bomb", &spec) {
            Err(RuleError::Invalid { field, message, .. }) => {
                assert_eq!(field, "spec.match");
                assert!(message.contains("on a sample pod"), "{message}");
                assert!(message.starts_with("exceeds the "), "{message}");
            }
            other => panic!("{src}: {other:?}"),
        }
    }
}

#[test]
fn selectors_run_under_the_budget_too() {
    let sel = compile_selector("vlan9", &nested_all()).unwrap();
    let budget = Budget {
        time: Duration::from_millis(10),
        ..Budget::default()
    };
    match selector_allows(&sel, &bomb_ctx(), &budget).unwrap_err() {
        RuleError::Budget { rule, field, .. } => {
            assert_eq!(rule, "vlan9");
            assert_eq!(field, "spec.selector");
        }
        other => panic!("{other:?}"),
    }
}
