//! The rule engine: AllocationRules and VlanSubnet selectors written in CEL, compiled and
//! type-checked once, then evaluated on every ADD under a hard budget. Pure library: no
//! Kubernetes, no netlink, and of etcd only the types of a response, for the rules'
//! fingerprint. The operator compiles to validate (and mirrors only what compiles); the plugin
//! compiles what it reads from etcd (or takes it from its own cache of what it compiled before,
//! for an identical spec, or for the same fingerprint) and evaluates.
//!
//! Layout:
//! - [`spec`](AllocationRuleSpec): the rule as mirrored into `<prefix>/config/rules/<name>`,
//!   structural validation and the content hash.
//! - `env`: the CEL environment: the standard library, the strings extension and Kubernetes' IP
//!   and CIDR library (`net`), plus the engine's internal checkpoints.
//! - `check`: a static type checker over the parsed expression: unknown variables, fields and
//!   functions, wrong argument and result types are compile errors with a position, whatever
//!   branch they sit in.
//! - `budget`: the evaluation [`Budget`] (time, cost, value size), enforced cooperatively from
//!   checkpoints the compiler inserts into every loop and every value-building call.
//! - `expr`: one compiled expression: parse, check, instrument, trial run on a sample pod.
//! - `context`: what an expression sees, [`Context`]: `pod` and `attachment`.
//! - `shortcut`: what a `match` gives without the interpreter (a literal; a first test of the
//!   namespace or another string field that fails), read off the compiled program.
//! - `engine`: [`compile`], [`CompiledRule`], [`RuleSet`] and its [`Decision`], selectors.
//! - `cache`: compiled rules as bytes, for [`RuleSet::to_cache`] and
//!   [`RuleSet::from_mirrored_cached`]: how the one-shot plugin avoids compiling the same rules
//!   on every ADD.
//! - `fingerprint`: [`RulesFingerprint`], what etcd says of the rules prefix in one small read
//!   (count, highest revision), so that a cache compiled from the same rules is used without
//!   reading them.
//!
//! See `docs/rules.md` for the language as users see it.

mod budget;
mod cache;
mod check;
mod context;
mod engine;
mod env;
mod expr;
mod fingerprint;
mod net;
mod shortcut;
mod spec;

use std::fmt;

pub use budget::{Budget, Limit};
pub use context::{AttachmentInfo, Context, PodInfo, PodMetadata};
pub use engine::{
    compile, compile_selector, needs_pod_metadata, selector_allows, CacheUse, CompiledRule,
    Decision, RuleSet, Selector, Sticky,
};
pub use expr::{MAX_EXPRESSION_BYTES, MAX_NESTING};
pub use fingerprint::RulesFingerprint;
pub use spec::{content_hash, AllocationRuleSpec, DenySpec, StickySpec, MAX_HOLD_SECONDS};

/// Where in an expression's source an error is: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Everything that can go wrong compiling or evaluating rules and selectors.
///
/// `rule` is the AllocationRule's name, or the VlanSubnet's name for a selector (then `field`
/// is `spec.selector`). `field` is the spec field of the expression (`spec.match`, `spec.ip`,
/// `spec.sticky.key`…) or of the structural problem (`spec.subnets[1]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The spec is invalid: a structural constraint, a CEL syntax or type error, or an
    /// expression that cannot run within the budget even on a sample pod. The operator reports
    /// it as condition Invalid and does not mirror the rule.
    #[error(
        "compile {field} of {}{}: {message}",
        object(rule, field),
        at(position)
    )]
    Invalid {
        rule: String,
        field: String,
        message: String,
        position: Option<Position>,
    },

    /// The expression failed at run time for this pod, e.g. a missing label read without
    /// `has()`. Fail closed: the ADD fails rather than allocating against the policy.
    #[error("evaluate {field} of {}: {message}", object(rule, field))]
    Eval {
        rule: String,
        field: String,
        message: String,
    },

    /// The evaluation exceeded its [`Budget`]; no decision was taken.
    #[error("evaluate {field} of {}: exceeded the {limit}", object(rule, field))]
    Budget {
        rule: String,
        field: String,
        limit: Limit,
    },

    /// The expression ran but its value is unusable: not an IP address, a multicast MAC, an
    /// empty sticky key…
    #[error(
        "evaluate {field} of {}: result {value:?} {reason}",
        object(rule, field)
    )]
    BadResult {
        rule: String,
        field: String,
        value: String,
        reason: String,
    },

    /// The expression reads `pod.labels` or `pod.annotations` but the context carries no pod
    /// metadata (the pod mirror is not in etcd yet). The caller may wait for the mirror and
    /// evaluate again; nothing was decided.
    #[error(
        "evaluate {field} of {}: it reads pod labels or annotations, but the pod's metadata is \
         not available (no pod mirror in etcd yet)",
        object(rule, field)
    )]
    MetadataUnavailable { rule: String, field: String },
}

impl RuleError {
    /// The rule (or subnet, for a selector) the error is about.
    pub fn rule(&self) -> &str {
        match self {
            RuleError::Invalid { rule, .. }
            | RuleError::Eval { rule, .. }
            | RuleError::Budget { rule, .. }
            | RuleError::BadResult { rule, .. }
            | RuleError::MetadataUnavailable { rule, .. } => rule,
        }
    }

    /// The spec field the error is about.
    pub fn field(&self) -> &str {
        match self {
            RuleError::Invalid { field, .. }
            | RuleError::Eval { field, .. }
            | RuleError::Budget { field, .. }
            | RuleError::BadResult { field, .. }
            | RuleError::MetadataUnavailable { field, .. } => field,
        }
    }
}

fn object(name: &str, field: &str) -> String {
    if field.starts_with("spec.selector") {
        format!("VlanSubnet {name:?}")
    } else {
        format!("AllocationRule {name:?}")
    }
}

fn at(position: &Option<Position>) -> String {
    position.map(|p| format!(" at {p}")).unwrap_or_default()
}

pub(crate) fn invalid(rule: &str, field: &str, message: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        rule: rule.to_owned(),
        field: field.to_owned(),
        message: message.into(),
        position: None,
    }
}
