//! `apply`: multi-document YAML of our custom resources, validated as a whole against each other
//! and against what etcd already holds, then mirrored into etcd — or, on any error, nothing.
//!
//! The stages are separate so that the pure ones test without etcd:
//! [`parse`] (YAML → documents, each checked on its own), [`plan`] (cross-document and
//! against a [`Snapshot`]), [`execute`] (the writes).

use std::collections::HashMap;
use std::fmt;

use kube::core::ObjectMeta;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use static_macvlan_allocator::rules::CompiledRule;
use static_macvlan_allocator::{
    Allocator, MacPool as ValidPool, MacPoolConfig, Mirrored, Subnet, SubnetConfig,
};

use crate::crd::{
    self, AllocationRule, AllocationRuleSpec, MacPool, MacPoolSpec, MirroredRule, VlanSubnet,
    VlanSubnetSpec,
};
use crate::error::Error;
use crate::mirror::{self, Snapshot};
use crate::validate::{self, FieldError};

/// The kinds `apply` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    MacPool,
    VlanSubnet,
    AllocationRule,
}

impl Kind {
    fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "VlanSubnet" => Some(Kind::VlanSubnet),
            "MacPool" => Some(Kind::MacPool),
            "AllocationRule" => Some(Kind::AllocationRule),
            _ => None,
        }
    }

    /// `vlansubnet.staticmacvlan.io`, as kubectl names resources in its output.
    pub fn resource(self) -> String {
        format!("{}.{}", self.to_string().to_lowercase(), crd::GROUP)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::VlanSubnet => "VlanSubnet",
            Kind::MacPool => "MacPool",
            Kind::AllocationRule => "AllocationRule",
        })
    }
}

/// Where a document came from: file, 1-based position among the file's non-empty documents,
/// and the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub index: usize,
    pub line: u64,
}

/// A rejected document, naming where it is, what it is and which field is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocError {
    pub origin: Origin,
    /// The document's `kind` as written (may be empty or unknown).
    pub kind: String,
    /// `metadata.name` as written (may be empty).
    pub name: String,
    pub error: FieldError,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(f, "{}: document {} (line {})", o.source, o.index, o.line)?;
        if !self.kind.is_empty() {
            write!(f, " {}", self.kind)?;
        }
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        write!(f, ": {}", self.error)
    }
}

/// One document's outcome of [`parse`] (boxed: the error is large and the `Ok` side larger).
pub type DocResult = Result<Parsed, Box<DocError>>;

/// A document that passed every check of its own.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub origin: Origin,
    pub name: String,
    pub meta: ObjectMeta,
    pub object: Object,
}

/// The validated content of a document.
#[derive(Clone, Debug)]
pub enum Object {
    Subnet(Box<VlanSubnetSpec>, Box<Subnet>),
    MacPool(MacPoolSpec, ValidPool),
    /// The spec and the rule as compiled by the rule engine (every CEL expression checked).
    Rule(AllocationRuleSpec, Box<CompiledRule>),
}

impl Parsed {
    pub fn kind(&self) -> Kind {
        match self.object {
            Object::Subnet(..) => Kind::VlanSubnet,
            Object::MacPool(..) => Kind::MacPool,
            Object::Rule(..) => Kind::AllocationRule,
        }
    }

    fn error(&self, error: FieldError) -> DocError {
        DocError {
            origin: self.origin.clone(),
            kind: self.kind().to_string(),
            name: self.name.clone(),
            error,
        }
    }
}

/// Splits `text` into YAML documents and checks each on its own: apiVersion, kind, name, the
/// CRD schema, and semantic validation. Empty documents are skipped, as kubectl does.
///
/// # Errors
/// [`Error::Invalid`] when the text is not YAML at all; per-document problems are returned as
/// `Err` items.
pub fn parse(source: &str, text: &str) -> Result<Vec<DocResult>, Error> {
    let docs: Vec<serde_saphyr::Spanned<Value>> = serde_saphyr::from_multiple(text)
        .map_err(|e| Error::Invalid(format!("{source}: not valid YAML: {e}")))?;
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let origin = Origin {
                source: source.to_string(),
                index: i + 1,
                line: doc.referenced.line(),
            };
            check_document(origin, doc.value)
        })
        .collect())
}

fn check_document(origin: Origin, doc: Value) -> DocResult {
    let text = |field: &str| {
        doc.get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let kind = text("kind");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let fail = |error: FieldError| {
        Box::new(DocError {
            origin: origin.clone(),
            kind: kind.clone(),
            name: name.clone(),
            error,
        })
    };
    if !doc.is_object() {
        return Err(fail(FieldError::new(
            "",
            doc.to_string(),
            "is not a mapping (a Kubernetes object)",
        )));
    }
    let api_version = text("apiVersion");
    if api_version != crd::API_VERSION {
        return Err(fail(FieldError::new(
            "apiVersion",
            api_version,
            format!("must be {}", crd::API_VERSION),
        )));
    }
    let Some(k) = Kind::parse(&kind) else {
        let reason = if kind == "MacvlanEndpoint" {
            "is maintained by the operator from the reservations; it cannot be applied"
        } else {
            "must be one of VlanSubnet, MacPool, AllocationRule"
        };
        return Err(fail(FieldError::new("kind", &kind, reason)));
    };
    validate::validate_name(&name).map_err(fail)?;
    let meta: ObjectMeta = serde_json::from_value(doc["metadata"].clone()).map_err(|e| {
        fail(FieldError::new(
            "metadata",
            doc["metadata"].to_string(),
            e.to_string(),
        ))
    })?;
    if meta.namespace.is_some() {
        return Err(fail(FieldError::new(
            "metadata.namespace",
            meta.namespace.clone().unwrap_or_default(),
            format!("{k} is cluster-scoped"),
        )));
    }
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    if spec.is_null() {
        return Err(fail(FieldError::new("spec", "", "is required")));
    }
    let crd = match k {
        Kind::VlanSubnet => VlanSubnet::crd(),
        Kind::MacPool => MacPool::crd(),
        Kind::AllocationRule => AllocationRule::crd(),
    };
    if let Some(first) = validate::check_schema(&spec, &crd::spec_schema(&crd), "spec")
        .into_iter()
        .next()
    {
        return Err(fail(first));
    }
    let object = match k {
        Kind::VlanSubnet => {
            let spec: VlanSubnetSpec = typed(spec).map_err(fail)?;
            let subnet = validate::validate_subnet(&name, &spec).map_err(fail)?;
            Object::Subnet(Box::new(spec), Box::new(subnet))
        }
        Kind::MacPool => {
            let spec: MacPoolSpec = typed(spec).map_err(fail)?;
            let pool = validate::validate_macpool(&name, &spec).map_err(fail)?;
            Object::MacPool(spec, pool)
        }
        Kind::AllocationRule => {
            let spec: AllocationRuleSpec = typed(spec).map_err(fail)?;
            let compiled = validate::validate_rule(&name, &spec).map_err(fail)?;
            Object::Rule(spec, Box::new(compiled))
        }
    };
    Ok(Parsed {
        origin,
        name,
        meta,
        object,
    })
}

/// The schema check has passed, so this only fails where the schema is looser than the type.
fn typed<T: DeserializeOwned>(spec: Value) -> Result<T, FieldError> {
    serde_json::from_value(spec.clone())
        .map_err(|e| FieldError::new("spec", spec.to_string(), e.to_string()))
}

/// What a write does to the stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        })
    }
}

/// One object to mirror.
#[derive(Clone, Debug)]
pub enum Write {
    Subnet(Box<Mirrored<SubnetConfig>>),
    MacPool(Mirrored<MacPoolConfig>),
    Rule(MirroredRule),
}

/// A planned write, in the order of the input.
#[derive(Clone, Debug)]
pub struct Step {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
    pub write: Write,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.kind.resource(), self.name, self.action)
    }
}

/// The validated result of [`plan`].
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Problems that do not stop the apply (e.g. a subnet naming a MAC pool that does not exist
    /// yet: the plugin reports that pod by pod until it appears).
    pub warnings: Vec<String>,
}

fn action(stored: Option<&Value>, new: &Value) -> Action {
    match stored {
        None => Action::Created,
        Some(old) if old == new => Action::Unchanged,
        Some(_) => Action::Configured,
    }
}

/// Checks the documents against each other and against `snap`: duplicates, immutable fields of
/// stored subnets (as the CRD's CEL rules do for the API server), overlaps among subnets on the
/// same master and VLAN. Documents that failed on their own are reported along.
///
/// # Errors
/// Every rejected document, in input order.
pub fn plan(docs: Vec<DocResult>, snap: &Snapshot) -> Result<Plan, Vec<DocError>> {
    let mut errors: Vec<DocError> = Vec::new();
    let mut ok: Vec<Parsed> = Vec::new();
    let mut seen: HashMap<(Kind, String), Origin> = HashMap::new();
    for d in docs {
        match d {
            Err(e) => errors.push(*e),
            Ok(p) => {
                if let Some(first) = seen.get(&(p.kind(), p.name.clone())) {
                    errors.push(p.error(FieldError::new(
                        "metadata.name",
                        &p.name,
                        format!(
                            "is also defined by document {} (line {})",
                            first.index, first.line
                        ),
                    )));
                    continue;
                }
                seen.insert((p.kind(), p.name.clone()), p.origin.clone());
                ok.push(p);
            }
        }
    }

    // Stored subnets that the input does not replace, as the overlap baseline.
    let in_input = |kind: Kind, name: &str| seen.contains_key(&(kind, name.to_string()));
    let mut warnings = Vec::new();
    let mut others: Vec<Subnet> = Vec::new();
    for (name, s) in &snap.subnets {
        if in_input(Kind::VlanSubnet, name) {
            continue;
        }
        match s.decoded.as_ref().map_err(String::clone).and_then(|m| {
            Subnet::from_config(name, &m.spec).map_err(|e| e.to_string())
        }) {
            Ok(subnet) => others.push(subnet),
            Err(e) => warnings.push(format!(
                "stored subnet {name:?} ({}) is not valid and was left out of the overlap check: {e}",
                s.key
            )),
        }
    }
    let pools: Vec<&str> = snap
        .macpools
        .keys()
        .map(String::as_str)
        .chain(
            ok.iter()
                .filter(|p| p.kind() == Kind::MacPool)
                .map(|p| p.name.as_str()),
        )
        .collect();
    let subnets: Vec<&str> = snap
        .subnets
        .keys()
        .map(String::as_str)
        .chain(
            ok.iter()
                .filter(|p| p.kind() == Kind::VlanSubnet)
                .map(|p| p.name.as_str()),
        )
        .collect();

    let mut steps = Vec::new();
    for p in &ok {
        let step = match &p.object {
            Object::Subnet(spec, subnet) => {
                let stored = snap.subnets.get(&p.name);
                if let Some(Ok(old)) = stored.map(|s| &s.decoded) {
                    if let Err(e) = check_immutable(&old.spec, spec) {
                        errors.push(p.error(e));
                        continue;
                    }
                }
                if let Err(e) = validate::check_overlap(subnet, &others) {
                    errors.push(p.error(e));
                    continue;
                }
                others.push(Subnet::clone(subnet));
                if let Some(pool) = &spec.mac_pool {
                    if !pools.contains(&pool.as_str()) {
                        warnings.push(format!(
                            "VlanSubnet {:?}: spec.macPool {pool:?} names no MacPool in the input or in etcd; \
                             pods of this subnet fail until it exists",
                            p.name
                        ));
                    }
                }
                let m = crd::mirror_subnet(&p.name, &p.meta, spec);
                Step {
                    kind: Kind::VlanSubnet,
                    name: p.name.clone(),
                    action: action(stored.map(|s| &s.raw), &to_value(&m)),
                    write: Write::Subnet(Box::new(m)),
                }
            }
            Object::MacPool(spec, _) => {
                let m = crd::mirror_macpool(&p.name, &p.meta, spec);
                Step {
                    kind: Kind::MacPool,
                    name: p.name.clone(),
                    action: action(snap.macpools.get(&p.name).map(|s| &s.raw), &to_value(&m)),
                    write: Write::MacPool(m),
                }
            }
            Object::Rule(spec, compiled) => {
                for s in spec.subnet.iter().chain(&spec.subnets) {
                    if !subnets.contains(&s.as_str()) {
                        warnings.push(format!(
                            "AllocationRule {:?}: subnet {s:?} names no VlanSubnet in the input or in etcd",
                            p.name
                        ));
                    }
                }
                let m = crd::mirror_rule(&p.name, &p.meta, compiled);
                Step {
                    kind: Kind::AllocationRule,
                    name: p.name.clone(),
                    action: action(snap.rules.get(&p.name).map(|s| &s.raw), &to_value(&m)),
                    write: Write::Rule(m),
                }
            }
        };
        steps.push(step);
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| {
            (&a.origin.source, a.origin.index).cmp(&(&b.origin.source, b.origin.index))
        });
        return Err(errors);
    }
    Ok(Plan { steps, warnings })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("mirrored config serializes")
}

/// The CRD's `self == oldSelf` rules, against the version in etcd: a subnet's reservations are
/// keyed under its name, so moving it to another LAN or address range would strand them.
pub(crate) fn check_immutable(old: &SubnetConfig, new: &VlanSubnetSpec) -> Result<(), FieldError> {
    let hint = |what: &str, old: &str| {
        format!("is immutable: etcd holds {what} {old} for this subnet; create a new VlanSubnet instead")
    };
    if old.cidr != new.cidr {
        return Err(FieldError::new(
            "spec.cidr",
            &new.cidr,
            hint("cidr", &old.cidr),
        ));
    }
    if old.master != new.master {
        return Err(FieldError::new(
            "spec.master",
            &new.master,
            hint("master", &old.master),
        ));
    }
    if old.vlan != new.vlan {
        return Err(FieldError::new(
            "spec.vlan",
            new.vlan.to_string(),
            hint("vlan", &old.vlan.to_string()),
        ));
    }
    Ok(())
}

/// Performs the writes of a plan: MAC pools first, then subnets (which name pools), then rules
/// (which name subnets); unchanged objects are not rewritten. Returns the steps done, in input
/// order.
///
/// Each object is one transaction; if etcd fails midway the objects before it are written (a
/// re-run finishes the job, as every write is idempotent).
///
/// # Errors
/// [`Error::Etcd`] / [`Error::Allocator`] for etcd failures, with the steps done so far lost to
/// the caller only in that they are not printed; re-running reports them `unchanged`.
pub async fn execute(alloc: &Allocator, plan: &Plan) -> Result<Vec<Step>, Error> {
    let mut order: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .collect();
    order.sort_by_key(|s| s.kind);
    if !order.is_empty() {
        alloc.ensure_schema().await?;
    }
    for s in order {
        match &s.write {
            Write::Subnet(m) => {
                alloc.put_subnet(m).await?;
            }
            Write::MacPool(m) => {
                alloc.put_macpool(m).await?;
            }
            Write::Rule(m) => mirror::put_rule(alloc, m).await?,
        }
    }
    Ok(plan.steps.clone())
}

/// Parses every source; per-document problems are items of the result.
///
/// # Errors
/// [`Error::Invalid`] for text that is not YAML, or no object at all.
pub fn parse_all(sources: &[(String, String)]) -> Result<Vec<DocResult>, Error> {
    let mut docs = Vec::new();
    for (name, text) in sources {
        docs.extend(parse(name, text)?);
    }
    if docs.is_empty() {
        return Err(Error::Invalid("no objects in the input".to_string()));
    }
    Ok(docs)
}

/// Reads etcd once and plans. Nothing is written. When etcd cannot be read, documents that are
/// invalid on their own are still reported as such (bad input outranks an unreachable store).
///
/// # Errors
/// [`Error::Manifest`] listing every rejected document, [`Error::Etcd`] when etcd cannot be
/// read, a schema mismatch.
pub async fn prepare(alloc: &Allocator, docs: Vec<DocResult>) -> Result<Plan, Error> {
    let snap = match Snapshot::read(alloc).await {
        Ok(s) => s,
        Err(e) => {
            let bad: Vec<DocError> = docs
                .into_iter()
                .filter_map(|d| d.err().map(|e| *e))
                .collect();
            return Err(if bad.is_empty() {
                e
            } else {
                Error::Manifest(bad)
            });
        }
    };
    snap.check_schema(alloc)?;
    plan(docs, &snap).map_err(Error::Manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: staticmacvlan.io/v1alpha1
kind: MacPool
metadata: {name: vms}
spec:
  ranges:
  - start: 02:00:0a:e6:00:00
    end: 02:00:0a:e6:00:ff
---
apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata:
  name: lan
spec:
  master: eth0
  vlan: 100
  cidr: 10.230.0.0/24
  gateway: 10.230.0.1
  ranges: [{start: 10.230.0.10, end: 10.230.0.200}]
  macPool: vms
---
# a comment-only document is skipped
---
apiVersion: staticmacvlan.io/v1alpha1
kind: AllocationRule
metadata: {name: db}
spec:
  priority: 10
  match: "pod.namespace == 'db'"
  subnet: lan
"#;

    fn parse_ok(text: &str) -> Vec<Parsed> {
        parse("t.yaml", text)
            .unwrap()
            .into_iter()
            .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn parses_a_realistic_file() {
        let docs = parse_ok(GOOD);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].kind(), Kind::MacPool);
        assert_eq!(docs[1].origin.index, 2);
        assert_eq!(docs[1].origin.line, 10);
        // Unquoted MACs must stay strings (YAML 1.1 would read 02:00:… as a base-60 number).
        match &docs[0].object {
            Object::MacPool(spec, _) => assert_eq!(spec.ranges[0].start, "02:00:0a:e6:00:00"),
            other => panic!("{other:?}"),
        }
        let plan = plan(parse("t.yaml", GOOD).unwrap(), &Snapshot::default()).unwrap();
        let lines: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            lines,
            [
                "macpool.staticmacvlan.io/vms created",
                "vlansubnet.staticmacvlan.io/lan created",
                "allocationrule.staticmacvlan.io/db created"
            ]
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn duplicates_and_overlaps_are_rejected() {
        let text = format!(
            "{GOOD}---\n{}",
            r#"apiVersion: staticmacvlan.io/v1alpha1
kind: VlanSubnet
metadata: {name: lan2}
spec: {master: eth0, vlan: 100, cidr: 10.230.0.128/25}
---
apiVersion: staticmacvlan.io/v1alpha1
kind: MacPool
metadata: {name: vms}
spec: {ranges: [{start: 02:00:00:00:00:01, end: 02:00:00:00:00:02}]}
"#
        );
        let errs = plan(parse("t.yaml", &text).unwrap(), &Snapshot::default()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].error.field, "spec.cidr");
        assert_eq!(errs[0].name, "lan2");
        assert_eq!(errs[1].error.field, "metadata.name");
        assert!(errs[1].to_string().contains("document 5"), "{}", errs[1]);
    }

    #[test]
    fn document_errors_name_where_and_what() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
                    apiVersion: staticmacvlan.io/v1alpha1\nkind: Nope\nmetadata: {name: x}\n";
        let errs: Vec<DocError> = parse("f.yaml", text)
            .unwrap()
            .into_iter()
            .map(|d| *d.unwrap_err())
            .collect();
        assert_eq!(errs[0].error.field, "apiVersion");
        assert_eq!(errs[1].error.field, "kind");
        assert_eq!(
            errs[1].to_string(),
            "f.yaml: document 2 (line 5) Nope \"x\": invalid kind \"Nope\": \
             must be one of VlanSubnet, MacPool, AllocationRule"
        );
        assert!(matches!(parse("f.yaml", "a: [b"), Err(Error::Invalid(_))));
    }
}
