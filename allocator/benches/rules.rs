//! `cargo bench -p static-macvlan-allocator --bench rules`
//!
//! What rules add to an ADD, with 100 rules of which only the last (lowest priority) matches,
//! so that every `match` runs; half of them read labels. Prints p50/p99 of:
//! - evaluating the compiled set, minus evaluating an empty set (what a long-lived caller pays);
//! - compiling the 100 rules (what the one-shot plugin pays on every ADD, as it compiles what it
//!   reads from etcd) plus evaluating them, minus the same with no rules — the figure the issue's
//!   target (ADD p50 with 100 rules minus without <= 0.5 ms) is about, short of the etcd read;
//! - and, once, the cold start of the CEL environment in this process.
//!
//! Set `SMV_BENCH_QUICK=1` for a short smoke run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use static_macvlan_allocator::rules::{
    AllocationRuleSpec, AttachmentInfo, Budget, Context, PodInfo, PodMetadata, RuleSet,
};

fn quick() -> bool {
    std::env::var_os("SMV_BENCH_QUICK").is_some()
}

fn rules(n: usize) -> Vec<(String, AllocationRuleSpec)> {
    let mut out: Vec<(String, AllocationRuleSpec)> = (0..n.saturating_sub(1))
        .map(|i| {
            let r#match = if i % 2 == 0 {
                format!(r#"pod.namespace == "team-{i}" && attachment.network == "lan""#)
            } else {
                format!(
                    r#"pod.labels[?"app"].orValue("") == "svc-{i}" && pod.name.startsWith("web-")"#
                )
            };
            (
                format!("rule-{i:03}"),
                AllocationRuleSpec {
                    priority: 1000 - i as i32,
                    r#match,
                    subnet: Some(format!("vlan{i}")),
                    ..AllocationRuleSpec::default()
                },
            )
        })
        .collect();
    if n > 0 {
        out.push((
            "ordinal".to_owned(),
            AllocationRuleSpec {
                priority: 0,
                r#match: r#"pod.namespace == "db" && pod.name.startsWith("web-")"#.to_owned(),
                subnet: Some("vlan230".to_owned()),
                ip: Some(
                    r#""10.230.0." + string(100 + int(pod.name.split("-")[size(pod.name.split("-")) - 1]))"#
                        .to_owned(),
                ),
                ..AllocationRuleSpec::default()
            },
        ));
    }
    out
}

fn ctx() -> Context {
    Context {
        pod: PodInfo {
            namespace: "db".to_owned(),
            name: "web-7".to_owned(),
            uid: "6f1c7c39-2b57-4b0e-9a37-0d5f5b1f2a10".to_owned(),
            node: "worker-1".to_owned(),
            metadata: Some(PodMetadata {
                labels: BTreeMap::from([
                    ("app".to_owned(), "web".to_owned()),
                    (
                        "statefulset.kubernetes.io/pod-name".to_owned(),
                        "web-7".to_owned(),
                    ),
                ]),
                annotations: BTreeMap::new(),
            }),
        },
        attachment: AttachmentInfo {
            network: "lan".to_owned(),
            ifname: "net1".to_owned(),
            ..AttachmentInfo::default()
        },
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn measure(iterations: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..iterations / 10 + 1 {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    Stats {
        p50: pct(&samples, 0.5),
        p99: pct(&samples, 0.99),
    }
}

fn main() {
    let iterations = if quick() { 200 } else { 2000 };
    let budget = Budget::default();
    let ctx = ctx();

    let cold = Instant::now();
    let one = RuleSet::new(rules(1)).unwrap();
    let cold = cold.elapsed();
    drop(one);

    let hundred = RuleSet::new(rules(100)).unwrap();
    let decision = hundred.evaluate(&ctx, &budget).unwrap();
    assert_eq!(decision.rule.as_deref(), Some("ordinal"));
    assert_eq!(decision.ip, Some("10.230.0.107".parse().unwrap()));
    let empty = RuleSet::new(Vec::new()).unwrap();

    let eval_100 = measure(iterations, || {
        std::hint::black_box(hundred.evaluate(&ctx, &budget).unwrap());
    });
    let eval_0 = measure(iterations, || {
        std::hint::black_box(empty.evaluate(&ctx, &budget).unwrap());
    });
    let specs_100 = rules(100);
    let add_100 = measure(iterations / 4, || {
        let set = RuleSet::new(specs_100.clone()).unwrap();
        std::hint::black_box(set.evaluate(&ctx, &budget).unwrap());
    });
    let add_0 = measure(iterations / 4, || {
        let set = RuleSet::new(Vec::new()).unwrap();
        std::hint::black_box(set.evaluate(&ctx, &budget).unwrap());
    });
    let compile_100 = measure(iterations / 4, || {
        std::hint::black_box(RuleSet::new(specs_100.clone()).unwrap());
    });

    println!("rules bench: 100 rules, only the last matches ({iterations} iterations)");
    println!(
        "  cold start (CEL environment + first rule, once per process): {:.3} ms",
        ms(cold)
    );
    println!(
        "  evaluate 100 rules:            p50 {:.3} ms  p99 {:.3} ms",
        ms(eval_100.p50),
        ms(eval_100.p99)
    );
    println!(
        "  evaluate 0 rules:              p50 {:.3} ms  p99 {:.3} ms",
        ms(eval_0.p50),
        ms(eval_0.p99)
    );
    println!(
        "  compile 100 rules:             p50 {:.3} ms  p99 {:.3} ms",
        ms(compile_100.p50),
        ms(compile_100.p99)
    );
    println!(
        "  compile + evaluate 100 rules:  p50 {:.3} ms  p99 {:.3} ms",
        ms(add_100.p50),
        ms(add_100.p99)
    );
    println!(
        "  compile + evaluate 0 rules:    p50 {:.3} ms  p99 {:.3} ms",
        ms(add_0.p50),
        ms(add_0.p99)
    );
    println!(
        "  evaluation with 100 rules minus without, p50: {:.3} ms",
        ms(eval_100.p50.saturating_sub(eval_0.p50))
    );
    println!(
        "  plugin ADD path (compile + evaluate) with 100 rules minus without, p50: {:.3} ms \
         (target <= 0.5 ms; plus {:.3} ms cold start once per process)",
        ms(add_100.p50.saturating_sub(add_0.p50)),
        ms(cold)
    );
}
