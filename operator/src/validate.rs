//! Validation of our custom resources, in two layers:
//!
//! - structural ([`check_schema`]): the value against the CRD's own generated schema — types,
//!   enums, bounds, required and unknown fields — so `apply` rejects what the API server would,
//!   from the same source of truth;
//! - semantic ([`validate_subnet`], [`validate_macpool`], [`validate_rule`], [`check_overlap`]):
//!   what needs address arithmetic or other objects, delegated to the allocator where it lives;
//!   for AllocationRules and VlanSubnet selectors that includes compiling and type-checking
//!   every CEL expression with the allocator's rule engine, the same one the plugin runs.
//!
//! Every error is a [`FieldError`] naming the field by its path in the object
//! (`spec.ranges[1].end`), the value and the reason.

use std::fmt::Write as _;

use ipnetwork::IpNetwork;
use serde_json::Value;
use static_macvlan_allocator::keys::check_segment;
use static_macvlan_allocator::rules::{self, CompiledRule, RuleError};
use static_macvlan_allocator::{Error as AllocError, MacPool, MacPoolConfig, Subnet, SubnetConfig};

use crate::crd::{AllocationRuleSpec, MacPoolSpec, VlanSubnet, VlanSubnetSpec};

/// A rejected field: its path in the object, the offending value and why.
///
/// For a CEL expression that does not compile, `value` is the expression's source and `reason`
/// the engine's message followed by the position in the source: `… (at 1:15)` (line:column,
/// 1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub reason: String,
    /// The field is a CEL expression that does not compile (syntax, types, result type, trial
    /// run): condition reason `InvalidExpression`.
    pub expression: bool,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
            expression: false,
        }
    }

    /// A reason for a condition: `InvalidExpression` for CEL that does not compile, `Overlap`
    /// for overlaps, `InvalidField` otherwise.
    pub fn condition_reason(&self) -> &'static str {
        if self.expression {
            "InvalidExpression"
        } else if self.reason.starts_with("overlaps") {
            "Overlap"
        } else {
            "InvalidField"
        }
    }
}

/// Re-roots an allocator validation error under `spec.` (its `name` field is `metadata.name`).
fn from_allocator(e: AllocError) -> FieldError {
    match e {
        AllocError::Invalid {
            field,
            value,
            reason,
        } => {
            let field = if field == "name" {
                "metadata.name".to_string()
            } else {
                format!("spec.{field}")
            };
            FieldError {
                field,
                value,
                reason,
                expression: false,
            }
        }
        other => FieldError::new("spec", "", other.to_string()),
    }
}

/// Checks an object name: a DNS-1123 subdomain, as Kubernetes requires of these kinds (so it is
/// also a valid etcd key segment).
///
/// # Errors
/// [`FieldError`] on `metadata.name`.
pub fn validate_name(name: &str) -> Result<(), FieldError> {
    let bad = |reason: &str| Err(FieldError::new("metadata.name", name, reason));
    if name.is_empty() {
        return bad("is required");
    }
    if name.len() > 253 {
        return bad("must be at most 253 characters");
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !ok_chars || !name.split('.').all(ok_ends) {
        return bad(
            "must be a lowercase RFC 1123 subdomain: a-z, 0-9, '-' and '.', \
             starting and ending with an alphanumeric character",
        );
    }
    Ok(())
}

/// Semantic validation of a VlanSubnet: the allocator's [`Subnet::from_config`] (cidr, gateway
/// and ranges inside the cidr, start ≤ end, excludes inside, routes, mtu, interface names), then
/// the `selector` compiled and type-checked by the rule engine
/// ([`compile_selector`](rules::compile_selector)).
///
/// # Errors
/// The first bad field, as `spec.<field>`; a selector that does not compile as `spec.selector`
/// with the CEL error and its position.
pub fn validate_subnet(name: &str, spec: &VlanSubnetSpec) -> Result<Subnet, FieldError> {
    let subnet = Subnet::from_config(name, &SubnetConfig::from(spec)).map_err(from_allocator)?;
    if let Some(source) = &spec.selector {
        rules::compile_selector(name, source)
            .map_err(|e| from_rule_error(e, |_| Some(source.clone()), true))?;
    }
    Ok(subnet)
}

/// A rule engine error as a [`FieldError`]: the engine's field, the value found there (by
/// `value_of`), its message and, for CEL errors, the position `(at line:column)`.
fn from_rule_error(
    e: RuleError,
    value_of: impl Fn(&str) -> Option<String>,
    expression: bool,
) -> FieldError {
    let value = value_of(e.field()).unwrap_or_default();
    match e {
        RuleError::Invalid {
            field,
            message,
            position,
            ..
        } => FieldError {
            reason: match position {
                Some(p) => format!("{message} (at {p})"),
                None => message,
            },
            field,
            value,
            expression,
        },
        // Compiling only ever fails with `Invalid`; keep anything else readable all the same.
        other => FieldError {
            field: other.field().to_string(),
            value,
            reason: other.to_string(),
            expression,
        },
    }
}

/// The value of a field of an AllocationRule, by the path the engine names it with.
fn rule_value(spec: &rules::AllocationRuleSpec, field: &str) -> Option<String> {
    let subnets = |i: &str| {
        let i: usize = i.strip_suffix(']')?.parse().ok()?;
        spec.subnets.as_ref()?.get(i).cloned()
    };
    match field {
        "metadata.name" => None,
        "spec.match" => Some(spec.r#match.clone()),
        "spec.ip" => spec.ip.clone(),
        "spec.mac" => spec.mac.clone(),
        "spec.subnet" => spec.subnet.clone(),
        "spec.subnets" => spec.subnets.as_ref().map(|l| l.join(",")),
        "spec.deny" | "spec.deny.message" => spec.deny.as_ref().map(|d| d.message.clone()),
        "spec.sticky.key" => spec.sticky.as_ref().and_then(|s| s.key.clone()),
        "spec.sticky.holdSeconds" => spec.sticky.as_ref().map(|s| s.hold_seconds.to_string()),
        f => f.strip_prefix("spec.subnets[").and_then(subnets),
    }
}

/// Semantic validation of a MacPool: unicast, locally administered unless `allowGlobal`,
/// start ≤ end, no overlap between its ranges.
///
/// # Errors
/// The first bad field, as `spec.<field>`.
pub fn validate_macpool(name: &str, spec: &MacPoolSpec) -> Result<MacPool, FieldError> {
    MacPool::from_config(name, &MacPoolConfig::from(spec)).map_err(from_allocator)
}

/// Validates and compiles AllocationRule `name`: the schema's cross-field rules, then the rule
/// engine's [`compile`](rules::compile) — its structural checks (subnet names, exclusive
/// actions, bounds) and every CEL expression parsed, type-checked (result type included) and
/// trial-run on a sample pod, exactly as the plugin will compile it.
///
/// # Errors
/// The first bad field. A CEL expression that does not compile is named as `spec.match`,
/// `spec.ip`, `spec.mac` or `spec.sticky.key`, with the expression as value, the CEL error and
/// `(at line:column)`; [`FieldError::condition_reason`] is then `InvalidExpression`.
pub fn validate_rule(name: &str, spec: &AllocationRuleSpec) -> Result<CompiledRule, FieldError> {
    check_rule_fields(spec)?;
    let engine = spec
        .to_engine()
        .map_err(|e| FieldError::new("spec", "", e))?;
    let value_of = |field: &str| rule_value(&engine, field);
    // Structure first, so that only CEL errors are reported as InvalidExpression.
    engine
        .validate(name)
        .map_err(|e| from_rule_error(e, value_of, false))?;
    rules::compile(name, &engine).map_err(|e| from_rule_error(e, value_of, true))
}

/// The schema's cross-field rules of an AllocationRule, and that subnet names can name a subnet.
fn check_rule_fields(spec: &AllocationRuleSpec) -> Result<(), FieldError> {
    if spec.match_.trim().is_empty() {
        return Err(FieldError::new(
            "spec.match",
            &spec.match_,
            "must not be empty",
        ));
    }
    if spec.subnet.is_some() && !spec.subnets.is_empty() {
        return Err(FieldError::new(
            "spec.subnets",
            spec.subnets.join(","),
            "subnet and subnets are mutually exclusive",
        ));
    }
    let gives = spec.subnet.is_some()
        || !spec.subnets.is_empty()
        || spec.ip.is_some()
        || spec.mac.is_some()
        || spec.sticky.is_some();
    if let (Some(deny), true) = (&spec.deny, gives) {
        return Err(FieldError::new(
            "spec.deny",
            &deny.message,
            "deny cannot be combined with subnet, subnets, ip, mac or sticky",
        ));
    }
    let names = spec
        .subnet
        .iter()
        .map(|s| ("spec.subnet".to_string(), s))
        .chain(
            spec.subnets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.subnets[{i}]"), s)),
        );
    for (field, s) in names {
        check_segment(&field, s).map_err(|e| match e {
            AllocError::Invalid {
                field,
                value,
                reason,
            } => FieldError::new(field, value, reason),
            other => FieldError::new(field, s, other.to_string()),
        })?;
    }
    Ok(())
}

fn cidrs_overlap(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Checks that `subnet` shares no address with another subnet on the same master and VLAN —
/// IP keys are per subnet, so two subnets on one LAN with overlapping CIDRs could hand the same
/// address to two pods. Subnets of the same name as `subnet` are skipped (they are its old
/// versions).
///
/// # Errors
/// A [`FieldError`] on `spec.cidr` naming the other subnet.
pub fn check_overlap<'a>(
    subnet: &Subnet,
    others: impl IntoIterator<Item = &'a Subnet>,
) -> Result<(), FieldError> {
    for o in others {
        if o.name != subnet.name
            && o.master == subnet.master
            && o.vlan == subnet.vlan
            && cidrs_overlap(o.cidr, subnet.cidr)
        {
            return Err(FieldError::new(
                "spec.cidr",
                subnet.cidr.to_string(),
                format!(
                    "overlaps cidr {} of VlanSubnet {:?} on the same master {} and vlan {}",
                    o.cidr, o.name, o.master, o.vlan
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a set of VlanSubnets for overlaps on the same master and VLAN. Subnets that do not
/// validate are skipped (they are reported by [`validate_subnet`]).
///
/// # Errors
/// The first overlap found, on the later subnet of the pair (in slice order), with its name.
pub fn validate_no_overlap(subnets: &[VlanSubnet]) -> Result<(), (String, FieldError)> {
    let mut seen: Vec<Subnet> = Vec::new();
    for vs in subnets {
        let name = vs.metadata.name.clone().unwrap_or_default();
        let Ok(s) = validate_subnet(&name, &vs.spec) else {
            continue;
        };
        check_overlap(&s, &seen).map_err(|e| (name, e))?;
        seen.push(s);
    }
    Ok(())
}

/// Renders a JSON value for an error message: strings bare, anything else as JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `value` against a structural OpenAPI v3 schema as found in a CRD (the subset our
/// generated schemas use: type, properties, required, items, enum, minimum/maximum,
/// minLength/maxLength, minItems/maxItems, nullable, additionalProperties). CEL rules are not
/// evaluated here; [`validate_rule`] and the callers implement ours. Like the API server, a
/// `null` for a non-nullable field counts as absent.
///
/// # Errors
/// Every violation found, each naming its path below `path`.
pub fn check_schema(value: &Value, schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    walk(value, schema, path, &mut errs);
    errs
}

fn walk(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let err = |errs: &mut Vec<FieldError>, reason: String| {
        errs.push(FieldError::new(path, show(v), reason))
    };
    if v.is_null() {
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let ok = got == want || (want == "number" && got == "integer");
        if !ok {
            err(errs, format!("must be of type {want}, not {got}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(show).collect();
            err(errs, format!("must be one of {}", list.join(", ")));
            return;
        }
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if let Some(min) = num("minimum").filter(|&m| x < m) {
            err(errs, format!("must be at least {min}"));
        }
        if let Some(max) = num("maximum").filter(|&m| x > m) {
            err(errs, format!("must be at most {max}"));
        }
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as f64;
        if let Some(min) = num("minLength").filter(|&m| n < m) {
            err(errs, format!("must be at least {min} characters long"));
        }
        if let Some(max) = num("maxLength").filter(|&m| n > m) {
            err(errs, format!("must be at most {max} characters long"));
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as f64;
        if let Some(min) = num("minItems").filter(|&m| n < m) {
            err(errs, format!("must have at least {min} items"));
        }
        if let Some(max) = num("maxItems").filter(|&m| n > m) {
            err(errs, format!("must have at most {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                walk(item, item_schema, &format!("{path}[{i}]"), errs);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(req) = req.as_str() else { continue };
            if obj.get(req).is_none_or(Value::is_null) {
                let field = join(path, req);
                errs.push(FieldError::new(field, "", "is required"));
            }
        }
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for (k, child) in obj {
            let field = join(path, k);
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => walk(child, s, &field, errs),
                (None, Some(s)) if s.is_object() => walk(child, s, &field, errs),
                _ if preserve => {}
                _ => {
                    let mut reason = String::from("is not a known field");
                    if let Some(p) = props {
                        let known: Vec<&str> = p.keys().map(String::as_str).collect();
                        let _ = write!(reason, " (known: {})", known.join(", "));
                    }
                    errs.push(FieldError::new(field, show(child), reason));
                }
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{spec_schema, AddressRange, Deny, MacPool as MacPoolCr};
    use kube::CustomResourceExt;
    use serde_json::json;

    fn subnet_spec() -> VlanSubnetSpec {
        VlanSubnetSpec {
            master: "eth0".into(),
            vlan: 100,
            cidr: "10.230.0.0/24".into(),
            gateway: Some("10.230.0.1".into()),
            ranges: vec![AddressRange {
                start: "10.230.0.10".into(),
                end: "10.230.0.200".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn semantic_errors_name_the_spec_field() {
        assert!(validate_subnet("lan", &subnet_spec()).is_ok());
        type Mutation = Box<dyn Fn(&mut VlanSubnetSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("spec.cidr", Box::new(|s| s.cidr = "10.230.0.0".into())),
            (
                "spec.gateway",
                Box::new(|s| s.gateway = Some("10.231.0.1".into())),
            ),
            (
                "spec.ranges[0].start",
                Box::new(|s| s.ranges[0].start = "10.230.0.250".into()),
            ),
            (
                "spec.ranges[1].end",
                Box::new(|s| {
                    s.ranges.push(AddressRange {
                        start: "10.230.0.210".into(),
                        end: "10.230.1.5".into(),
                    })
                }),
            ),
            ("spec.vlan", Box::new(|s| s.vlan = 5000)),
            (
                "spec.exclude[0]",
                Box::new(|s| s.exclude = vec!["192.168.0.1".into()]),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = subnet_spec();
            mutate(&mut s);
            let e = validate_subnet("lan", &s).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert_eq!(
            validate_subnet("a/b", &subnet_spec()).unwrap_err().field,
            "metadata.name"
        );
    }

    #[test]
    fn overlap_only_on_same_master_and_vlan() {
        let mk = |name: &str, master: &str, vlan: u16, cidr: &str| {
            let mut spec = subnet_spec();
            spec.master = master.into();
            spec.vlan = vlan;
            spec.cidr = cidr.into();
            spec.gateway = None;
            spec.ranges.clear();
            VlanSubnet::new(name, spec)
        };
        let ok = [
            mk("a", "eth0", 100, "10.0.0.0/24"),
            mk("b", "eth0", 101, "10.0.0.0/24"),
            mk("c", "eth1", 100, "10.0.0.0/24"),
            mk("d", "eth0", 100, "10.0.1.0/24"),
            mk("e", "eth0", 100, "fd00::/64"),
        ];
        assert!(validate_no_overlap(&ok).is_ok());
        let mut bad = ok.to_vec();
        bad.push(mk("f", "eth0", 100, "10.0.0.0/16"));
        let (name, e) = validate_no_overlap(&bad).unwrap_err();
        assert_eq!(name, "f");
        assert_eq!(e.field, "spec.cidr");
        assert!(e.reason.contains("\"a\""), "{e}");
        assert_eq!(e.condition_reason(), "Overlap");
    }

    #[test]
    fn names_are_rfc1123_subdomains() {
        for ok in ["lan", "vlan-100", "a.b-c.d", "0"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "LAN",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rule_cross_field_checks() {
        let mut r = AllocationRuleSpec {
            match_: "true".into(),
            subnet: Some("lan".into()),
            ..Default::default()
        };
        assert!(validate_rule("r", &r).is_ok());
        r.subnets = vec!["x".into()];
        assert_eq!(validate_rule("r", &r).unwrap_err().field, "spec.subnets");
        r.subnets.clear();
        r.deny = Some(Deny {
            message: "no".into(),
        });
        assert_eq!(validate_rule("r", &r).unwrap_err().field, "spec.deny");
        r.deny = None;
        r.subnet = Some("a/b".into());
        assert_eq!(validate_rule("r", &r).unwrap_err().field, "spec.subnet");
    }

    #[test]
    fn rule_expressions_are_compiled_with_position() {
        let rule = |m: &str, ip: Option<&str>| AllocationRuleSpec {
            match_: m.into(),
            subnet: Some("lan".into()),
            ip: ip.map(Into::into),
            ..Default::default()
        };
        let compiled = validate_rule("db", &rule("pod.namespace == 'db'", None)).unwrap();
        assert_eq!(compiled.name(), "db");
        assert_eq!(compiled.hash().len(), 64);

        // (match, ip, field, what the reason contains)
        let cases = [
            ("pod.namespace = 'db'", None, "spec.match", "(at 1:15)"),
            ("pdo.name == 'x'", None, "spec.match", "'pdo'"),
            ("true &&\n  pod.nmae == 'x'", None, "spec.match", "(at 2:6)"),
            ("pod.name", None, "spec.match", "must evaluate to a bool"),
            ("true", Some("'10.0.0.' + 5"), "spec.ip", "(at 1:11)"),
            (
                "true",
                Some("1 + 2"),
                "spec.ip",
                "must evaluate to a string",
            ),
        ];
        for (m, ip, field, reason) in cases {
            let e = validate_rule("db", &rule(m, ip)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.value, ip.unwrap_or(m), "{e}");
            assert!(e.reason.contains(reason), "want {reason:?} in {e}");
            assert!(e.expression, "{e}");
            assert_eq!(e.condition_reason(), "InvalidExpression");
        }

        // Structure is checked by the engine too, and is not an expression error.
        let mut r = rule("true", None);
        r.sticky = Some(crate::crd::Sticky {
            key: None,
            hold_seconds: 40 * 24 * 3600,
        });
        let e = validate_rule("db", &r).unwrap_err();
        assert_eq!(e.field, "spec.sticky.holdSeconds", "{e}");
        assert_eq!(e.value, "3456000");
        assert_eq!(e.condition_reason(), "InvalidField");
        let mut r = rule("true", None);
        r.subnet = None;
        r.subnets = vec!["a".into(), "a".into()];
        let e = validate_rule("db", &r).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("spec.subnets[1]", "a")
        );
    }

    #[test]
    fn subnet_selector_is_compiled() {
        let mut s = subnet_spec();
        s.selector = Some("pod.namespace == 'db'".into());
        assert!(validate_subnet("lan", &s).is_ok());
        s.selector = Some("pod.namespace".into());
        let e = validate_subnet("lan", &s).unwrap_err();
        assert_eq!(e.field, "spec.selector", "{e}");
        assert!(e.reason.contains("must evaluate to a bool"), "{e}");
        assert_eq!(e.condition_reason(), "InvalidExpression");
        s.selector = Some("pod.namespace == 'db' &&\n pod.labls['x'] == 'y'".into());
        let e = validate_subnet("lan", &s).unwrap_err();
        assert!(e.reason.contains("(at 2:"), "{e}");
    }

    #[test]
    fn schema_check_uses_the_crd() {
        let schema = spec_schema(&VlanSubnet::crd());
        let good = json!({"master": "eth0", "vlan": 7, "cidr": "10.0.0.0/24", "mode": "private",
            "ranges": [{"start": "10.0.0.5", "end": "10.0.0.9"}], "dns": null});
        assert_eq!(check_schema(&good, &schema, "spec"), vec![]);
        let cases = [
            (
                json!({"master": "eth0", "vlan": 5000, "cidr": "x"}),
                "spec.vlan",
                "at most 4094",
            ),
            (
                json!({"master": "eth0", "mode": "macvtap", "cidr": "x"}),
                "spec.mode",
                "one of bridge",
            ),
            (json!({"master": "eth0"}), "spec.cidr", "required"),
            (
                json!({"master": "eth0", "cidr": "x", "gatway": "1"}),
                "spec.gatway",
                "not a known field",
            ),
            (
                json!({"master": "eth0", "cidr": "x", "vlan": "100"}),
                "spec.vlan",
                "type integer",
            ),
            (
                json!({"master": "eth0", "cidr": "x", "mtu": 20}),
                "spec.mtu",
                "at least 68",
            ),
            (
                json!({"master": "eth0", "cidr": "x", "ranges": [{"start": "a"}]}),
                "spec.ranges[0].end",
                "required",
            ),
            (
                json!({"master": "a-very-long-interface", "cidr": "x"}),
                "spec.master",
                "at most 15",
            ),
        ];
        for (v, field, reason) in cases {
            let errs = check_schema(&v, &schema, "spec");
            assert_eq!(errs.len(), 1, "{v}: {errs:?}");
            assert_eq!(errs[0].field, field, "{errs:?}");
            assert!(errs[0].reason.contains(reason), "{errs:?}");
        }
        let pool = spec_schema(&MacPoolCr::crd());
        let errs = check_schema(&json!({"ranges": []}), &pool, "spec");
        assert_eq!(errs[0].field, "spec.ranges", "{errs:?}");
    }
}
