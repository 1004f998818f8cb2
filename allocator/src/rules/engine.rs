//! Compiled rules, rule sets and their decisions; subnet selectors.

use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::budget::{Budget, Metered};
use super::cache;
use super::context::Context;
use super::expr::{CompiledExpr, Want};
use super::fingerprint::RulesFingerprint;
use super::net::parse_ip;
use super::spec::{content_hash, hex, AllocationRuleSpec, DEFAULT_STICKY_KEY};
use super::{invalid, RuleError};
use crate::addr::MacAddr;
use crate::model::Mirrored;

/// Longest sticky key, in bytes.
const MAX_STICKY_KEY: usize = 512;

/// A validated and compiled AllocationRule. Cheap to clone; keyed for caching by
/// ([`name`](CompiledRule::name), [`hash`](CompiledRule::hash)).
#[derive(Clone, Debug)]
pub struct CompiledRule {
    name: String,
    spec: AllocationRuleSpec,
    /// Computed on first use: the plugin, compiling on every ADD, rarely needs it.
    hash: OnceLock<String>,
    matcher: CompiledExpr,
    ip: Option<CompiledExpr>,
    mac: Option<CompiledExpr>,
    sticky: Option<(CompiledExpr, Duration)>,
}

/// Validates and compiles rule `name`: structure first, then every CEL expression (parse, type
/// check, result type, a trial run on a sample pod).
///
/// # Errors
/// [`RuleError::Invalid`] naming the first offending field, with the CEL error and its
/// position where there is one.
pub fn compile(name: &str, spec: &AllocationRuleSpec) -> Result<CompiledRule, RuleError> {
    spec.validate(name)?;
    let expr = |field: &str, source: &str, want| CompiledExpr::compile(name, field, source, want);
    let matcher = expr("spec.match", &spec.r#match, Want::Bool)?;
    let ip = spec
        .ip
        .as_deref()
        .map(|s| expr("spec.ip", s, Want::String))
        .transpose()?;
    let mac = spec
        .mac
        .as_deref()
        .map(|s| expr("spec.mac", s, Want::String))
        .transpose()?;
    let sticky_key = spec
        .sticky
        .as_ref()
        .map(|sticky| {
            let key = sticky.key.as_deref().unwrap_or(DEFAULT_STICKY_KEY);
            expr("spec.sticky.key", key, Want::String)
        })
        .transpose()?;
    Ok(CompiledRule::from_parts(
        name.to_owned(),
        spec.clone(),
        matcher,
        ip,
        mac,
        sticky_key,
    ))
}

/// Whether any expression of `rule` reads `pod.labels` or `pod.annotations`: only then does the
/// plugin need the pod mirror from etcd. Decided on the parsed AST (see `docs/rules.md`).
pub fn needs_pod_metadata(rule: &CompiledRule) -> bool {
    rule.needs_pod_metadata()
}

impl CompiledRule {
    /// Compiles a rule as mirrored into etcd.
    ///
    /// # Errors
    /// As [`compile`].
    pub fn from_mirrored(mirrored: &Mirrored<AllocationRuleSpec>) -> Result<Self, RuleError> {
        compile(&mirrored.name, &mirrored.spec)
    }

    /// Assembles a rule from its spec and compiled expressions (from [`compile`], or read back
    /// from a cache). What is plain data (subnets, deny message) is read from the spec when the
    /// rule decides, not copied here: a fresh process reading a cached set only pays for what
    /// it uses.
    pub(crate) fn from_parts(
        name: String,
        spec: AllocationRuleSpec,
        matcher: CompiledExpr,
        ip: Option<CompiledExpr>,
        mac: Option<CompiledExpr>,
        sticky_key: Option<CompiledExpr>,
    ) -> CompiledRule {
        let sticky = sticky_key
            .zip(spec.sticky.as_ref())
            .map(|(key, sticky)| (key, Duration::from_secs(u64::from(sticky.hold_seconds))));
        CompiledRule {
            name,
            hash: OnceLock::new(),
            spec,
            matcher,
            ip,
            mac,
            sticky,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(&self) -> i32 {
        self.spec.priority
    }

    pub fn spec(&self) -> &AllocationRuleSpec {
        &self.spec
    }

    /// The spec's [`content_hash`].
    pub fn hash(&self) -> &str {
        self.hash.get_or_init(|| content_hash(&self.spec))
    }

    /// See [`needs_pod_metadata`].
    pub fn needs_pod_metadata(&self) -> bool {
        self.exprs().any(|e| e.needs_metadata)
    }

    /// The compiled expressions in field order: `match`, `ip`, `mac`, `sticky.key`.
    pub(crate) fn exprs(&self) -> impl Iterator<Item = &CompiledExpr> {
        std::iter::once(&self.matcher)
            .chain(self.ip.as_ref())
            .chain(self.mac.as_ref())
            .chain(self.sticky.as_ref().map(|(k, _)| k))
    }
}

/// How [`RuleSet::from_mirrored_cached`] used its cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUse {
    /// Rules taken from the cache.
    pub reused: usize,
    /// Rules compiled: not in the cache, or there with another spec.
    pub compiled: usize,
    /// Whether the cache holds exactly this set, written with this fingerprint. When not, the
    /// caller should store [`RuleSet::to_cache`] of the new set for the next process.
    pub up_to_date: bool,
}

/// Sticky reservation requested by the matching rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sticky {
    /// The evaluated key (by default `<namespace>/<name>`).
    pub key: String,
    /// How long the addresses stay reserved for the key after DEL.
    pub hold: Duration,
}

/// The outcome of evaluating a [`RuleSet`] for one attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The rule that matched, `None` when none did.
    pub rule: Option<String>,
    /// Subnets to try in order (first with room); empty: the netconf's subnet.
    pub subnets: Vec<String>,
    /// The address the rule computed; `None`: allocate automatically (or as requested).
    pub ip: Option<IpAddr>,
    pub mac: Option<MacAddr>,
    pub sticky: Option<Sticky>,
    /// Set when the rule denies the attachment: the ADD must fail with this message.
    pub deny: Option<String>,
    /// One line for the plugin's log: which rule decided, and how many were evaluated.
    pub reason: String,
}

/// The rules of a cluster, ordered by priority (highest first), ties by name.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// Compiles every rule. One invalid rule fails the whole set: rules are policy, and
    /// skipping one could hand out an address it forbids.
    ///
    /// # Errors
    /// The first rule's [`RuleError::Invalid`]; also for two rules of one name.
    pub fn new(rules: Vec<(String, AllocationRuleSpec)>) -> Result<RuleSet, RuleError> {
        let compiled = rules
            .iter()
            .map(|(name, spec)| compile(name, spec))
            .collect::<Result<Vec<_>, _>>()?;
        RuleSet::from_compiled(compiled)
    }

    /// Compiles rules as mirrored into etcd.
    ///
    /// # Errors
    /// As [`RuleSet::new`].
    pub fn from_mirrored<'a>(
        rules: impl IntoIterator<Item = &'a Mirrored<AllocationRuleSpec>>,
    ) -> Result<RuleSet, RuleError> {
        let compiled = rules
            .into_iter()
            .map(CompiledRule::from_mirrored)
            .collect::<Result<Vec<_>, _>>()?;
        RuleSet::from_compiled(compiled)
    }

    /// Compiles rules as mirrored into etcd, reusing the compiled form of every rule that
    /// `cache` holds with an equal spec: the CNI plugin, a fresh process on every ADD, keeps
    /// what it compiled for the next ADD this way. `cache` is what [`RuleSet::to_cache`]
    /// returned, with the same `build`, in an earlier process; `build` identifies the running
    /// program (e.g. its executable), as the compiled form depends on this crate's code. Bytes
    /// of another build, corrupt or truncated are ignored as a whole. `fingerprint` is that of
    /// `rules` (read with them): the cache is [up to date](CacheUse::up_to_date) only if it was
    /// written with it.
    ///
    /// The set is the one [`RuleSet::from_mirrored`] returns: a cached rule was compiled and
    /// validated in full from an equal spec, and every other rule is compiled and validated in
    /// full now.
    ///
    /// # Errors
    /// As [`RuleSet::from_mirrored`].
    pub fn from_mirrored_cached<'a>(
        rules: impl IntoIterator<Item = &'a Mirrored<AllocationRuleSpec>>,
        cache: Option<&[u8]>,
        build: &str,
        fingerprint: &RulesFingerprint,
    ) -> Result<(RuleSet, CacheUse), RuleError> {
        let (written, mut cached) = match cache.and_then(|bytes| cache::index(bytes, build)) {
            Some((written, entries)) => (Some(written), Some(entries)),
            None => (None, None),
        };
        let mut used = CacheUse::default();
        let compiled = rules
            .into_iter()
            .map(|m| {
                let entry = cached.as_mut().and_then(|c| c.remove(m.name.as_str()));
                match entry.and_then(|e| cache::decode_rule(e, &m.name, &m.spec)) {
                    Some(rule) => {
                        used.reused += 1;
                        Ok(rule)
                    }
                    None => {
                        used.compiled += 1;
                        CompiledRule::from_mirrored(m)
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        used.up_to_date = used.compiled == 0
            && cached.is_some_and(|c| c.is_empty())
            && written.as_ref() == Some(fingerprint);
        Ok((RuleSet::from_compiled(compiled)?, used))
    }

    /// The set a cache holds, for a process that has read only the rules' `fingerprint` from
    /// etcd (see [`RulesFingerprint`]). `Some` only if `cache` was written by
    /// [`RuleSet::to_cache`] with the same `build` and `fingerprint`, holds as many rules as the
    /// fingerprint counts and is not damaged; `None` otherwise, and the caller reads the rules
    /// and compiles them ([`RuleSet::from_mirrored_cached`]).
    ///
    /// The set is then the one [`RuleSet::from_mirrored`] returns for the rules in etcd: equal
    /// fingerprints mean the same rules, and every rule of the set was compiled and validated
    /// in full from them by an earlier process of this build. The set keeps `cache`: each
    /// program is decoded from it when first evaluated, so that a process decodes only the
    /// programs it runs.
    pub fn from_cache(
        cache: Vec<u8>,
        build: &str,
        fingerprint: &RulesFingerprint,
    ) -> Option<RuleSet> {
        RuleSet::from_compiled(cache::decode_all(Arc::new(cache), build, fingerprint)?).ok()
    }

    /// The compiled set as bytes for [`RuleSet::from_mirrored_cached`] and
    /// [`RuleSet::from_cache`] in a later process of the same `build`; `fingerprint` is that of
    /// the rules the whole set was compiled from. Not a stable format: only the build that wrote
    /// it reads it.
    pub fn to_cache(&self, build: &str, fingerprint: &RulesFingerprint) -> Vec<u8> {
        cache::encode(&self.rules, build, fingerprint)
    }

    /// A set from rules compiled earlier (e.g. kept in a cache keyed by name and hash).
    ///
    /// # Errors
    /// [`RuleError::Invalid`] for two rules of one name.
    pub fn from_compiled(mut rules: Vec<CompiledRule>) -> Result<RuleSet, RuleError> {
        // Unstable: no two rules compare equal but rules of one name, an error either way. A
        // stable sort would copy the set into a new buffer, pages a fresh process must fault
        // in, where the set is usually in order already (read back from a cache).
        rules.sort_unstable_by(|a, b| {
            b.priority()
                .cmp(&a.priority())
                .then_with(|| a.name.cmp(&b.name))
        });
        if let Some(w) = rules.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(
                &w[0].name,
                "metadata.name",
                "two rules have this name",
            ));
        }
        Ok(RuleSet { rules })
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule reads labels or annotations (see [`needs_pod_metadata`]). When false,
    /// CNI_ARGS are enough and the plugin never needs the pod mirror.
    pub fn needs_pod_metadata(&self) -> bool {
        self.rules.iter().any(CompiledRule::needs_pod_metadata)
    }

    /// Evaluates the rules in order; the first whose `match` is true decides, and only its
    /// actions are evaluated. The whole evaluation runs under `budget`.
    ///
    /// Metadata is needed lazily: when `ctx.pod.metadata` is `None`, rules that do not read
    /// labels or annotations still evaluate, and the first expression that does fails with
    /// [`RuleError::MetadataUnavailable`] — the caller may wait for the pod mirror and retry.
    ///
    /// # Errors
    /// [`RuleError::Eval`], [`RuleError::Budget`], [`RuleError::BadResult`] or
    /// [`RuleError::MetadataUnavailable`], naming the rule and field. No partial decision.
    pub fn evaluate(&self, ctx: &Context, budget: &Budget) -> Result<Decision, RuleError> {
        if self.rules.is_empty() {
            return Ok(Decision {
                reason: "no rules configured".to_owned(),
                ..Decision::default()
            });
        }
        self.evaluate_with(ctx, budget, true)
    }

    /// [`RuleSet::evaluate`], or without the shortcuts, for the tests that show they change
    /// nothing.
    fn evaluate_with(
        &self,
        ctx: &Context,
        budget: &Budget,
        shortcuts: bool,
    ) -> Result<Decision, RuleError> {
        let meter = Metered::start(budget);
        // Built for the first expression the interpreter runs, if any: rules that shortcuts
        // decide (see `shortcut`) need no CEL environment.
        let activation = OnceCell::new();
        let cel = || activation.get_or_init(|| ctx.to_cel());
        let has_metadata = ctx.pod.metadata.is_some();
        let needs = |rule: &CompiledRule, e: &CompiledExpr, field: &str| {
            if e.needs_metadata && !has_metadata {
                Err(RuleError::MetadataUnavailable {
                    rule: rule.name.clone(),
                    field: field.to_owned(),
                })
            } else {
                Ok(())
            }
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let name = rule.name.as_str();
            needs(rule, &rule.matcher, "spec.match")?;
            let shortcut = match &rule.matcher.shortcut {
                Some(s) if shortcuts => s.decide(ctx),
                _ => None,
            };
            let matched = match shortcut {
                Some(matched) => matched,
                None => rule.matcher.eval_bool(cel(), &meter, name, "spec.match")?,
            };
            if !matched {
                continue;
            }
            let mut decision = Decision {
                rule: Some(rule.name.clone()),
                subnets: rule.spec.subnet_list(),
                deny: rule.spec.deny.as_ref().map(|d| d.message.trim().to_owned()),
                reason: format!(
                    "rule {name:?} (priority {}) matched; {} of {} rules evaluated",
                    rule.priority(),
                    i + 1,
                    self.rules.len()
                ),
                ..Decision::default()
            };
            if let Some(e) = &rule.ip {
                needs(rule, e, "spec.ip")?;
                let s = e.eval_string(cel(), &meter, name, "spec.ip")?;
                decision.ip = check_ip(name, &s)?;
            }
            if let Some(e) = &rule.mac {
                needs(rule, e, "spec.mac")?;
                let s = e.eval_string(cel(), &meter, name, "spec.mac")?;
                decision.mac = check_mac(name, &s)?;
            }
            if let Some((e, hold)) = &rule.sticky {
                needs(rule, e, "spec.sticky.key")?;
                let key = e.eval_string(cel(), &meter, name, "spec.sticky.key")?;
                check_sticky_key(name, &key)?;
                decision.sticky = Some(Sticky { key, hold: *hold });
            }
            return Ok(decision);
        }
        Ok(Decision {
            reason: format!("no rule matched; {} rules evaluated", self.rules.len()),
            ..Decision::default()
        })
    }
}

fn bad(rule: &str, field: &str, value: &str, reason: &str) -> RuleError {
    RuleError::BadResult {
        rule: rule.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `""` is no address; anything else must be a unicast address usable on an interface.
fn check_ip(rule: &str, s: &str) -> Result<Option<IpAddr>, RuleError> {
    if s.is_empty() {
        return Ok(None);
    }
    let ip = parse_ip(s).map_err(|e| bad(rule, "spec.ip", s, &format!("is not usable: {e}")))?;
    let reason = if ip.is_unspecified() {
        Some("is the unspecified address")
    } else if ip.is_loopback() {
        Some("is a loopback address")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("is the broadcast address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(bad(rule, "spec.ip", s, reason)),
        None => Ok(Some(ip)),
    }
}

/// `""` is no address; anything else must be a unicast MAC.
fn check_mac(rule: &str, s: &str) -> Result<Option<MacAddr>, RuleError> {
    if s.is_empty() {
        return Ok(None);
    }
    let mac: MacAddr = s.parse().map_err(|e: crate::addr::MacParseError| {
        bad(rule, "spec.mac", s, &format!("is not a MAC address: {e}"))
    })?;
    if mac.is_multicast() {
        return Err(bad(rule, "spec.mac", s, "is a multicast (group) address"));
    }
    if mac.is_zero() {
        return Err(bad(rule, "spec.mac", s, "is the all-zero address"));
    }
    Ok(Some(mac))
}

fn check_sticky_key(rule: &str, key: &str) -> Result<(), RuleError> {
    let field = "spec.sticky.key";
    if key.is_empty() {
        return Err(bad(rule, field, key, "is empty"));
    }
    if key.len() > MAX_STICKY_KEY {
        return Err(bad(
            rule,
            field,
            key,
            &format!("is longer than {MAX_STICKY_KEY} bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(bad(rule, field, key, "contains control characters"));
    }
    Ok(())
}

/// A compiled `VlanSubnet.spec.selector`: which pods may be allocated from the subnet at all,
/// static requests included.
#[derive(Clone, Debug)]
pub struct Selector {
    subnet: String,
    source: String,
    expr: CompiledExpr,
    hash: OnceLock<String>,
}

impl Selector {
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Lowercase hex SHA-256 of the source.
    pub fn hash(&self) -> &str {
        self.hash.get_or_init(|| {
            use sha2::{Digest, Sha256};
            hex(&Sha256::digest(self.source.as_bytes()))
        })
    }

    /// Whether the selector reads labels or annotations.
    pub fn needs_pod_metadata(&self) -> bool {
        self.expr.needs_metadata
    }
}

/// Compiles the selector `source` of subnet `subnet` (a CEL bool over `pod` and `attachment`).
///
/// # Errors
/// [`RuleError::Invalid`] with field `spec.selector`, as for a rule's `match`.
pub fn compile_selector(subnet: &str, source: &str) -> Result<Selector, RuleError> {
    Ok(Selector {
        subnet: subnet.to_owned(),
        source: source.to_owned(),
        expr: CompiledExpr::compile(subnet, "spec.selector", source, Want::Bool)?,
        hash: OnceLock::new(),
    })
}

/// Whether `selector` lets the attachment described by `ctx` use its subnet.
///
/// # Errors
/// [`RuleError::Eval`], [`RuleError::Budget`], [`RuleError::BadResult`] or
/// [`RuleError::MetadataUnavailable`] with the subnet's name as `rule`. Callers should treat an
/// error as "not allowed" for the attachment (fail closed).
pub fn selector_allows(
    selector: &Selector,
    ctx: &Context,
    budget: &Budget,
) -> Result<bool, RuleError> {
    let field = "spec.selector";
    if selector.expr.needs_metadata && ctx.pod.metadata.is_none() {
        return Err(RuleError::MetadataUnavailable {
            rule: selector.subnet.clone(),
            field: field.to_owned(),
        });
    }
    let meter = Metered::start(budget);
    selector
        .expr
        .eval_bool(&ctx.to_cel(), &meter, &selector.subnet, field)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rules::context::{AttachmentInfo, PodInfo, PodMetadata};
    use crate::rules::spec::{DenySpec, StickySpec};

    fn rule(priority: i32, r#match: &str) -> AllocationRuleSpec {
        AllocationRuleSpec {
            priority,
            r#match: r#match.to_owned(),
            subnet: Some("lan".to_owned()),
            ..AllocationRuleSpec::default()
        }
    }

    /// Rules with and without shortcuts, in every position: literals, a first test of a field
    /// before expensive or failing parts, metadata reads behind a namespace test, actions.
    fn rules() -> Vec<(String, AllocationRuleSpec)> {
        let expensive =
            r#"[1, 2, 3, 4, 5, 6, 7, 8].all(x, [1, 2, 3, 4, 5, 6, 7, 8].exists(y, x * y > 0))"#;
        let specs = [
            rule(100, &format!(r#"pod.namespace == "loop" && {expensive}"#)),
            rule(95, &format!(r#"{expensive} && pod.namespace == "loop2""#)),
            rule(
                90,
                r#"pod.namespace == "strict" && pod.labels.team == "net""#,
            ),
            rule(85, r#""deny" == pod.namespace && true"#),
            AllocationRuleSpec {
                deny: Some(DenySpec {
                    message: " no ".to_owned(),
                }),
                subnet: None,
                ..rule(80, r#"pod.name == "blocked""#)
            },
            AllocationRuleSpec {
                ip: Some(r#""10.0.0." + pod.name.split("-")[1]"#.to_owned()),
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 60,
                }),
                ..rule(70, r#"pod.namespace == "db" && pod.name.startsWith("pg-")"#)
            },
            rule(60, r#"attachment.network == "other" && int(pod.name) > 1"#),
            rule(50, "false"),
            rule(40, r#"pod.labels[?"tier"].orValue("") == "web""#),
            rule(0, "true"),
        ];
        specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("r{i}"), s))
            .collect()
    }

    fn pod(namespace: &str, name: &str, labels: Option<&[(&str, &str)]>) -> Context {
        Context {
            pod: PodInfo {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: "u".to_owned(),
                node: "n".to_owned(),
                metadata: labels.map(|l| PodMetadata {
                    labels: l
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
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

    /// The shortcuts decide as the interpreter, to the error and the budget: every pod, under
    /// budgets from tight to the default, with every suffix of the rules (so that each rule
    /// is first once).
    #[test]
    fn shortcuts_change_no_outcome() {
        let all = rules();
        let set = RuleSet::new(all.clone()).unwrap();
        let with: usize = set
            .rules()
            .iter()
            .filter(|r| r.matcher.shortcut.is_some())
            .count();
        assert_eq!(with, 8, "the corpus has rules with and without shortcuts");
        let pods = [
            pod("loop", "a", Some(&[])),
            pod("loop2", "a", Some(&[])),
            pod("strict", "a", None),
            pod("strict", "a", Some(&[("team", "net")])),
            pod("strict", "a", Some(&[])),
            pod("deny", "a", None),
            pod("x", "blocked", None),
            pod("db", "pg-7", None),
            pod("db", "pg", None),
            pod("web", "2", Some(&[("tier", "web")])),
            pod("web", "w", None),
            pod("web", "w", Some(&[])),
        ];
        let mut outcomes = std::collections::HashSet::new();
        for start in 0..all.len() {
            let set = RuleSet::new(all[start..].to_vec()).unwrap();
            for ctx in &pods {
                for cost in [1, 2, 5, 20, 80, 200, Budget::DEFAULT_COST] {
                    let budget = Budget {
                        cost,
                        ..Budget::default()
                    };
                    let fast = set.evaluate_with(ctx, &budget, true);
                    let slow = set.evaluate_with(ctx, &budget, false);
                    assert_eq!(fast, slow, "{ctx:?}, cost {cost}, rules from {start}");
                    outcomes.insert(match fast {
                        Ok(d) => format!("{:?}", d.rule),
                        Err(e) => format!("{e:?}").split(' ').next().unwrap().to_owned(),
                    });
                }
            }
        }
        for want in [
            "Budget",
            "Eval",
            "MetadataUnavailable",
            "Some(\"r9\")",
            "Some(\"r4\")",
        ] {
            assert!(outcomes.contains(want), "{want} in {outcomes:?}");
        }
    }

    /// As before programs could stay encoded: a set can be shared between threads.
    #[test]
    fn a_rule_set_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RuleSet>();
    }

    /// A set read back from its cache, programs undecoded, decides as the compiled set.
    #[test]
    fn a_set_with_its_programs_still_encoded_decides_as_the_compiled_one() {
        let set = RuleSet::new(rules()).unwrap();
        let fp = RulesFingerprint {
            count: set.len() as i64,
            max_mod_revision: 9,
        };
        let bytes = set.to_cache("b", &fp);
        let ctx = pod("db", "pg-7", Some(&[]));
        let read = RuleSet::from_cache(bytes.clone(), "b", &fp).unwrap();
        // Until evaluated, no program is decoded; then only those that ran.
        let decoded = |s: &RuleSet| {
            s.rules()
                .iter()
                .flat_map(|r| r.exprs())
                .filter(|e| e.encoding().is_some() && e.is_decoded())
                .count()
        };
        assert_eq!(decoded(&read), 0);
        assert_eq!(
            read.evaluate(&ctx, &Budget::default()),
            set.evaluate(&ctx, &Budget::default())
        );
        // Only r1's match (no shortcut), r5's (its shortcut holds) and its two actions ran.
        let decision = read.evaluate(&ctx, &Budget::default()).unwrap();
        assert_eq!(decision.rule.as_deref(), Some("r5"));
        assert_eq!(decoded(&read), 4);
        assert_eq!(read.to_cache("b", &fp), bytes);
    }
}
