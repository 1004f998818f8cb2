//! One compiled expression: parsed, type-checked, instrumented for the budget, and tried once on
//! a sample pod.
//!
//! Parsing uses the `cel` crate's hand-written Pratt parser, about twenty times faster than its
//! ANTLR parser — it matters, as the plugin is a fresh process on every ADD and compiles every
//! rule it reads. The ANTLR parser, which keeps source positions, is used only to report an
//! error (and when the Pratt parser refuses something, to have the reference parser decide).

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, SourceInfo};
use cel::common::types::{CelBool, CelString};
use cel::common::value::Val;
use cel::objects::Value;
use cel::parser::PrattParser;
use cel::{ExecutionError, ParseErrors};

use super::budget::{instrument, visit, Budget, Limit, Metered};
use super::check::{check, Ty, POD_BASIC_FIELDS};
use super::context::Context;
use super::env::env;
use super::shortcut::Shortcut;
use super::{Position, RuleError};

/// Longest expression source accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 8 * 1024;

/// The deepest an expression may nest (`a + b + c` is 3 levels, so is `f(g(h(x)))`): the type
/// checker, the instrumentation and the `cel` interpreter all recurse over the tree, and a deeper
/// one could overflow a thread's stack and abort the process — the operator or the plugin — where
/// it must be refused with an error. Real rules nest a few levels per condition.
pub const MAX_NESTING: usize = 32;

/// The result type an expression field requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Bool,
    String,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::Bool => "bool",
            Want::String => "string",
        }
    }

    fn admits(self, ty: &Ty) -> bool {
        matches!(
            (self, ty),
            (_, Ty::Dyn) | (Want::Bool, Ty::Bool) | (Want::String, Ty::String)
        )
    }
}

/// A compiled expression, ready to evaluate. Its source is the owner's (the rule's spec, the
/// selector), not copied here.
#[derive(Clone, Debug)]
pub(crate) struct CompiledExpr {
    program: Program,
    want: Want,
    pub(crate) needs_metadata: bool,
    /// For a `match` (a bool), what it gives without the interpreter, when that can be told.
    pub(crate) shortcut: Option<Shortcut>,
}

/// The instrumented program. Shared: cloning a compiled rule does not copy the tree.
#[derive(Clone, Debug)]
enum Program {
    Built(Arc<IdedExpr>),
    /// As encoded in the cache a set was read from, decoded on first use: a process that reads
    /// 100 rules from its cache decodes only the programs it runs.
    Encoded(Arc<Encoded>),
}

#[derive(Debug)]
struct Encoded {
    cache: Arc<Vec<u8>>,
    range: Range<usize>,
    tree: OnceLock<Option<IdedExpr>>,
}

/// Why a run failed, before it is attributed to a rule and field.
pub(crate) enum RunError {
    Budget(Limit),
    Exec(ExecutionError),
}

/// The parse with positions, for error reports.
fn parse_with_positions(source: &str) -> Result<(IdedExpr, SourceInfo), ParseErrors> {
    env().parser().parse_with_source_info(source)
}

/// The position of byte `offset` (the parser's source offsets are in bytes).
fn position_at(source: &str, offset: u32) -> Position {
    let mut line = 1;
    let mut column = 1;
    let end = (offset as usize).min(source.len());
    let end = (0..=end)
        .rev()
        .find(|i| source.is_char_boundary(*i))
        .unwrap_or(0);
    for c in source[..end].chars() {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Position { line, column }
}

fn parse_error(rule: &str, field: &str, errors: &ParseErrors) -> RuleError {
    let first = errors.errors.first();
    let message = if errors.errors.is_empty() {
        "syntax error".to_owned()
    } else {
        errors
            .errors
            .iter()
            .map(|e| e.msg.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    RuleError::Invalid {
        rule: rule.to_owned(),
        field: field.to_owned(),
        message,
        position: first.and_then(|e| {
            Some(Position {
                line: u32::try_from(e.pos.0).ok().filter(|l| *l > 0)?,
                column: u32::try_from(e.pos.1).ok().filter(|c| *c > 0)?,
            })
        }),
    }
}

/// Whether the expression reads `pod` other than its CNI_ARGS fields (namespace, name, uid,
/// node): `pod.labels`, `has(pod.annotations.x)`, `pod["labels"]`, `pod.?labels`, `dyn(pod)`…
/// Decided on the AST: every use of the identifier `pod` must be the operand of a selection of
/// a basic field (`.f`, `.?f`, `["f"]`, `[?"f"]`). Conservative: a comprehension variable named
/// `pod` counts as a read.
fn reads_pod_metadata(ast: &IdedExpr) -> bool {
    let mut uses = 0usize;
    let mut basic = 0usize;
    let is_pod = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == "pod");
    let is_basic_literal = |e: &IdedExpr| matches!(&e.expr, Expr::Literal(LiteralValue::String(s)) if POD_BASIC_FIELDS.contains(&s.inner()));
    visit(ast, &mut |e| match &e.expr {
        Expr::Ident(name) if name == "pod" => uses += 1,
        // pod.name, has(pod.name)
        Expr::Select(s) if is_pod(&s.operand) && POD_BASIC_FIELDS.contains(&s.field.as_str()) => {
            basic += 1
        }
        // pod["name"], pod[?"name"], pod.?name
        Expr::Call(c)
            if matches!(c.func_name.as_str(), "_[_]" | "_[?_]" | "_?._")
                && c.target.is_none()
                && c.args.len() == 2
                && is_pod(&c.args[0])
                && is_basic_literal(&c.args[1]) =>
        {
            basic += 1
        }
        _ => {}
    });
    uses > basic
}

/// The deepest nesting of `(`, `[` and `{` in `source`, outside string literals (quoted with
/// `'` or `"`, single or tripled, raw or with backslash escapes).
fn bracket_depth(source: &str) -> usize {
    let b = source.as_bytes();
    let (mut i, mut depth, mut deepest) = (0, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                let raw = i > 0 && matches!(b[i - 1], b'r' | b'R');
                let triple = b[i..].starts_with(&[q, q, q]);
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if b[i] == b'\\' && !raw {
                        i += 2;
                    } else if triple && b[i..].starts_with(&[q, q, q]) {
                        i += 3;
                        break;
                    } else if !triple && b[i] == q {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Errors that show the expression itself is wrong, whatever the pod: a trial run that hits one
/// rejects the expression. The others (a missing key, an index out of range, `int("x")`)
/// depend on the data and are left to evaluation.
fn is_static_error(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::UndeclaredReference(_)
            | ExecutionError::NoSuchOverload(_)
            | ExecutionError::UnsupportedBinaryOperator(..)
            | ExecutionError::NotSupportedAsMethod { .. }
            | ExecutionError::UnsupportedTargetType { .. }
            | ExecutionError::UnexpectedType { .. }
            | ExecutionError::ValuesNotComparable(..)
            | ExecutionError::InvalidArgumentCount { .. }
            | ExecutionError::UnsupportedIndex(..)
            | ExecutionError::UnsupportedKeyType(_)
            | ExecutionError::MissingArgumentOrTarget
            | ExecutionError::InternalError(_)
    )
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => format!("{u}u"),
        Value::Float(f) => f.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// An execution error as a user reads it, with a hint for the usual mistakes.
pub(crate) fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(key) => format!(
            "no such key '{key}' (test a key that may be missing with has(m.{key}) or \
             \"{key}\" in m, or read it with m[?\"{key}\"].orValue(\"default\"))"
        ),
        ExecutionError::IndexOutOfBounds(i) => {
            format!("index {} out of range", value_text(i))
        }
        ExecutionError::FunctionError { function, message } => {
            format!("{function}(): {message}")
        }
        ExecutionError::DivisionByZero(v) => format!("division by zero of {}", value_text(v)),
        ExecutionError::RemainderByZero(v) => format!("modulus by zero of {}", value_text(v)),
        ExecutionError::Overflow(op, a, b) => format!(
            "integer overflow in {op} of {} and {}",
            value_text(a),
            value_text(b)
        ),
        other => other.to_string(),
    }
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// A short rendering of a result value for error messages.
fn shown(v: &dyn Val) -> String {
    match Value::try_from(v) {
        Ok(value) => value_text(&value),
        Err(_) => format!("{v:?}"),
    }
}

impl CompiledExpr {
    /// An expression compiled earlier, read back from a cache.
    pub(crate) fn from_parts(
        program: IdedExpr,
        want: Want,
        needs_metadata: bool,
        shortcut: Option<Shortcut>,
    ) -> CompiledExpr {
        CompiledExpr {
            program: Program::Built(Arc::new(program)),
            want,
            needs_metadata,
            shortcut,
        }
    }

    /// An expression compiled earlier, its program still encoded in `cache[range]` (as
    /// `cache::encode` wrote it, in a process of this build): decoded when first run.
    pub(crate) fn encoded(
        cache: Arc<Vec<u8>>,
        range: Range<usize>,
        want: Want,
        needs_metadata: bool,
        shortcut: Option<Shortcut>,
    ) -> CompiledExpr {
        CompiledExpr {
            program: Program::Encoded(Arc::new(Encoded {
                cache,
                range,
                tree: OnceLock::new(),
            })),
            want,
            needs_metadata,
            shortcut,
        }
    }

    /// The instrumented program; `None` if it was read from a cache and does not decode (which
    /// `cache::encode` makes sure of before it writes a program).
    pub(crate) fn program(&self) -> Option<&IdedExpr> {
        match &self.program {
            Program::Built(tree) => Some(tree),
            Program::Encoded(e) => e
                .tree
                .get_or_init(|| super::cache::decode_tree(&e.cache[e.range.clone()]))
                .as_ref(),
        }
    }

    /// Whether the program was decoded (for tests: a program read from a cache is decoded only
    /// when it runs).
    #[cfg(test)]
    pub(crate) fn is_decoded(&self) -> bool {
        match &self.program {
            Program::Built(_) => true,
            Program::Encoded(e) => e.tree.get().is_some(),
        }
    }

    /// The program as a cache encodes it, if it was read from one.
    pub(crate) fn encoding(&self) -> Option<&[u8]> {
        match &self.program {
            Program::Encoded(e) => Some(&e.cache[e.range.clone()]),
            Program::Built(_) => None,
        }
    }

    /// Compiles `source` for `field` of `rule`.
    ///
    /// # Errors
    /// [`RuleError::Invalid`] for an empty or too long source, a syntax or type error (with its
    /// position), a result type other than `want`, or a trial run on the sample pod that hits
    /// a type error or exceeds the default budget.
    pub(crate) fn compile(
        rule: &str,
        field: &str,
        source: &str,
        want: Want,
    ) -> Result<CompiledExpr, RuleError> {
        let invalid = |message: String, position: Option<Position>| RuleError::Invalid {
            rule: rule.to_owned(),
            field: field.to_owned(),
            message,
            position,
        };
        if source.trim().is_empty() {
            return Err(invalid("must not be empty".to_owned(), None));
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            return Err(invalid(
                format!(
                    "is {} bytes long, more than the {MAX_EXPRESSION_BYTES} allowed",
                    source.len()
                ),
                None,
            ));
        }
        // The parser recurses on brackets: measure them on the text first.
        let brackets = bracket_depth(source);
        if brackets > MAX_NESTING {
            return Err(invalid(
                format!("nests brackets {brackets} deep, more than the {MAX_NESTING} allowed"),
                None,
            ));
        }
        let ast = match PrattParser::new()
            .enable_optional_syntax(true)
            .parse(source)
        {
            Ok(ast) => ast,
            Err(_) => match parse_with_positions(source) {
                Ok((ast, _)) => ast,
                Err(errors) => return Err(parse_error(rule, field, &errors)),
            },
        };
        let nesting = super::budget::depth(&ast);
        if nesting > MAX_NESTING {
            return Err(invalid(
                format!(
                    "nests {nesting} levels deep, more than the {MAX_NESTING} allowed \
                     (split it, or use a list and a macro such as exists())"
                ),
                None,
            ));
        }
        let checked = match check(&ast) {
            Ok(checked) => checked,
            Err(e) => {
                // Again on the positioned parse, to say where.
                if let Ok((positioned, info)) = parse_with_positions(source) {
                    if let Err(e) = check(&positioned) {
                        let position = info
                            .offset_for(e.id)
                            .map(|(start, _)| position_at(source, start));
                        return Err(invalid(e.message, position));
                    }
                }
                return Err(invalid(e.message, None));
            }
        };
        if !want.admits(&checked.ty) {
            return Err(invalid(
                format!(
                    "must evaluate to a {}, but the expression is of type {}",
                    want.name(),
                    checked.ty
                ),
                None,
            ));
        }
        let needs_metadata = reads_pod_metadata(&ast);
        let mut program = ast;
        instrument(&mut program, &checked.types);
        let compiled = CompiledExpr {
            shortcut: match want {
                Want::Bool => Shortcut::of(&program),
                Want::String => None,
            },
            program: Program::Built(Arc::new(program)),
            want,
            needs_metadata,
        };
        compiled.trial_run(rule, field)?;
        Ok(compiled)
    }

    /// Runs once on the sample pod under the default cost and size limits (and a generous
    /// time limit, so a loaded operator does not reject a valid rule): catches what only shows
    /// at run time — a comprehension bomb, a `dyn` value of the wrong type, a result of the
    /// wrong type behind `dyn`.
    fn trial_run(&self, rule: &str, field: &str) -> Result<(), RuleError> {
        let invalid = |message: String| RuleError::Invalid {
            rule: rule.to_owned(),
            field: field.to_owned(),
            message,
            position: None,
        };
        let budget = Budget {
            time: Duration::from_secs(2),
            ..Budget::default()
        };
        thread_local! {
            static SAMPLE: cel::Context<'static, 'static> = Context::sample().to_cel();
        }
        let meter = Metered::start(&budget);
        let outcome = SAMPLE.with(|ctx| self.run(ctx, &meter, |v| self.check_result(v)));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(invalid(format!("on a sample pod, the result {reason}"))),
            Err(RunError::Budget(limit)) => Err(invalid(format!(
                "exceeds the {limit} on a sample pod (pod default/sample-0, no labels)"
            ))),
            Err(RunError::Exec(e)) if is_static_error(&e) => Err(invalid(describe(&e))),
            Err(RunError::Exec(_)) => Ok(()),
        }
    }

    fn check_result(&self, v: &dyn Val) -> Result<(), String> {
        let ok = match self.want {
            Want::Bool => v.downcast_ref::<CelBool>().is_some(),
            Want::String => v.downcast_ref::<CelString>().is_some(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} is of type {}, not {}",
                shown(v),
                v.get_type().name(),
                self.want.name()
            ))
        }
    }

    /// Evaluates against `ctx` under the running `meter`, handing the result to `f`.
    pub(crate) fn run<T>(
        &self,
        ctx: &cel::Context<'_, '_>,
        meter: &Metered,
        f: impl FnOnce(&dyn Val) -> T,
    ) -> Result<T, RunError> {
        meter.check_deadline().map_err(RunError::Budget)?;
        // Fail closed: never reached, as only programs that decode are cached.
        let program = self.program().ok_or_else(|| {
            RunError::Exec(ExecutionError::InternalError(
                "the compiled program in the node's rule cache does not decode".to_owned(),
            ))
        })?;
        // An interpreter bug must fail this ADD with an error, not abort the plugin.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Value::resolve_val(program, ctx).map(|v| f(v.as_ref()))
        }));
        if let Some(limit) = meter.exceeded() {
            return Err(RunError::Budget(limit));
        }
        match outcome {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(RunError::Exec(e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(RunError::Exec(ExecutionError::InternalError(format!(
                    "the CEL interpreter panicked: {what}"
                ))))
            }
        }
    }

    fn attribute(&self, rule: &str, field: &str, e: RunError) -> RuleError {
        match e {
            RunError::Budget(limit) => RuleError::Budget {
                rule: rule.to_owned(),
                field: field.to_owned(),
                limit,
            },
            RunError::Exec(e) => RuleError::Eval {
                rule: rule.to_owned(),
                field: field.to_owned(),
                message: describe(&e),
            },
        }
    }

    fn bad_result(&self, rule: &str, field: &str, v: &dyn Val) -> RuleError {
        RuleError::BadResult {
            rule: rule.to_owned(),
            field: field.to_owned(),
            value: shown(v),
            reason: format!(
                "is of type {}, not {}",
                v.get_type().name(),
                self.want.name()
            ),
        }
    }

    pub(crate) fn eval_bool(
        &self,
        ctx: &cel::Context<'_, '_>,
        meter: &Metered,
        rule: &str,
        field: &str,
    ) -> Result<bool, RuleError> {
        self.run(ctx, meter, |v| match v.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(self.bad_result(rule, field, v)),
        })
        .map_err(|e| self.attribute(rule, field, e))?
    }

    pub(crate) fn eval_string(
        &self,
        ctx: &cel::Context<'_, '_>,
        meter: &Metered,
        rule: &str,
        field: &str,
    ) -> Result<String, RuleError> {
        self.run(ctx, meter, |v| match v.downcast_ref::<CelString>() {
            Some(s) => Ok(s.inner().to_owned()),
            None => Err(self.bad_result(rule, field, v)),
        })
        .map_err(|e| self.attribute(rule, field, e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(position_at("abc", 0), Position { line: 1, column: 1 });
        assert_eq!(position_at("ab\ncd", 4), Position { line: 2, column: 2 });
        assert_eq!(position_at("é + x", 5), Position { line: 1, column: 5 });
    }

    /// The parsers number some nodes in a different order (map entries, `.?` selections);
    /// ids only need to be consistent within one tree.
    fn without_ids(e: &mut IdedExpr) {
        use cel::common::ast::EntryExpr;
        e.id = 0;
        match &mut e.expr {
            Expr::Call(c) => {
                if let Some(t) = c.target.as_deref_mut() {
                    without_ids(t);
                }
                c.args.iter_mut().for_each(without_ids);
            }
            Expr::Comprehension(c) => {
                for part in [
                    &mut c.iter_range,
                    &mut c.accu_init,
                    &mut c.loop_cond,
                    &mut c.loop_step,
                    &mut c.result,
                ] {
                    without_ids(part);
                }
            }
            Expr::List(l) => l.elements.iter_mut().for_each(without_ids),
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    entry.id = 0;
                    if let EntryExpr::MapEntry(me) = &mut entry.expr {
                        without_ids(&mut me.key);
                        without_ids(&mut me.value);
                    }
                }
            }
            Expr::Select(s) => without_ids(&mut s.operand),
            _ => {}
        }
    }

    /// The fast parser builds the same tree as the reference parser.
    #[test]
    fn both_parsers_build_the_same_tree() {
        for src in [
            r#""10.230.0." + string(100 + int(pod.name.split("-")[size(pod.name.split("-")) - 1]))"#,
            r#"pod.namespace == "team-a" && has(pod.labels.app) || "x" in pod.annotations"#,
            r#"pod.labels[?"tier"].orValue("none") != "db" ? attachment.ifname : 'x'"#,
            r#"[1, 2, 3].map(x, x * 2).filter(y, y > 2).exists(z, z == 4)"#,
            r#"{"a": 1, "b": 2}.all(k, k.size() == 1) && !false && -1 < 2u + 0"#,
            r#"cidr("10.0.0.0/8").containsIP(ip(attachment.ip)) && b"x" != b"y""#,
            r#"strings.quote('ab') == '"ab"' && 1.5e3 > 0.0 && r'\d' == '\\d'"#,
            r#"pod.name.matches('^web-[0-9]+$') && [?optional.none()] == [] && pod.?name.hasValue()"#,
            "'héllo'.size() == 5
  && pod.uid != ''",
        ] {
            let mut fast = PrattParser::new()
                .enable_optional_syntax(true)
                .parse(src)
                .unwrap();
            let (mut reference, _) = parse_with_positions(src).unwrap();
            without_ids(&mut fast);
            without_ids(&mut reference);
            assert_eq!(fast, reference, "{src}");
        }
    }

    #[test]
    fn metadata_reads_are_found_on_the_ast() {
        for (src, reads) in [
            ("pod.name == 'a'", false),
            ("pod.namespace + pod.uid + pod.node != ''", false),
            ("has(pod.name)", false),
            ("pod.labels.app == 'db'", true),
            ("has(pod.annotations.x)", true),
            ("'app' in pod.labels", true),
            ("pod['labels'].size() > 0", true),
            ("pod['name'] == 'x'", false),
            ("pod.?uid.hasValue()", false),
            ("pod[?'node'].orValue('') == ''", false),
            ("pod[attachment.ifname] == 'x'", true),
            ("dyn(pod).name == 'x'", true),
            ("attachment.network == 'labels'", false),
            ("[1].exists(pod, pod == 1)", true),
        ] {
            let ast = PrattParser::new()
                .enable_optional_syntax(true)
                .parse(src)
                .unwrap();
            assert_eq!(reads_pod_metadata(&ast), reads, "{src}");
        }
    }
}
