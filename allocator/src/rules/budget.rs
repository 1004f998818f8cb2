//! The evaluation budget, and the checkpoints that enforce it.
//!
//! CEL has no unbounded loops, but a comprehension nested in a comprehension over a long list, or
//! a string built up by `replace` inside `replace`, can still take seconds or gigabytes. The
//! `cel` crate has no cost accounting and an evaluation cannot be interrupted from outside, so
//! the engine makes evaluation interrupt itself: the compiler rewrites every expression (see
//! [`instrument`]) so that
//!
//! - every iteration of every comprehension (`all`, `exists`, `map`, `filter`…) passes a
//!   checkpoint,
//! - every call that builds a string, bytes, list or map passes its result through one, and
//! - so does every non-literal, non-scalar element of a list or map literal (which copies it),
//!
//! and a checkpoint charges the [`Budget`] of the evaluation running on this thread: one unit
//! plus one per 256 bytes of the value, checks the clock against the deadline, and rejects a
//! value larger than the size limit. The first checkpoint over budget fails the evaluation, and
//! so does every later one, so an error swallowed by `exists()` cannot hide it. `replace`,
//! `join` and `format`, the calls whose result can be much larger than their arguments, compute
//! the size of their result before building it.
//!
//! Between two checkpoints the work is bounded by the size of the expression times the size
//! limit, so a deadline overrun is at most one checkpoint interval, not the rest of the loop —
//! and no runaway thread is left behind, unlike a watchdog thread around the evaluation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use cel::common::ast::{CallExpr, Expr, IdedExpr};
use cel::common::types::{CelBytes, CelList, CelMap, CelString};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;

use super::check::Ty;

/// Limits on one evaluation of a rule set (all its rules together) or of a selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Wall-clock time for the whole evaluation.
    pub time: Duration,
    /// Cost units: one per checkpoint plus one per 256 bytes of the values checkpoints see.
    /// Deterministic, unlike `time`: the same rules on the same pod cost the same everywhere.
    pub cost: u64,
    /// Largest string, bytes, list or map (counted deeply, in bytes) any step may produce.
    pub max_value_bytes: usize,
}

impl Budget {
    pub const DEFAULT_TIME: Duration = Duration::from_millis(50);
    pub const DEFAULT_COST: u64 = 200_000;
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 256 * 1024;
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            time: Budget::DEFAULT_TIME,
            cost: Budget::DEFAULT_COST,
            max_value_bytes: Budget::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// Which limit of a [`Budget`] was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Time(Duration),
    Cost(u64),
    ValueSize(usize),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Time(d) => write!(f, "time budget of {} ms", d.as_secs_f64() * 1e3),
            Limit::Cost(c) => write!(f, "cost budget of {c} units"),
            Limit::ValueSize(b) => write!(f, "value size limit of {b} bytes"),
        }
    }
}

struct Meter {
    /// `None` when `time` is too large to add to now: no deadline.
    deadline: Option<Instant>,
    budget: Budget,
    cost_left: u64,
    exceeded: Option<Limit>,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

/// The budget of the evaluation running on this thread, from [`Metered::start`] until dropped.
/// Nesting restores the outer budget on drop.
pub(crate) struct Metered {
    outer: Option<Meter>,
}

impl Metered {
    pub(crate) fn start(budget: &Budget) -> Metered {
        let meter = Meter {
            deadline: Instant::now().checked_add(budget.time),
            budget: *budget,
            cost_left: budget.cost,
            exceeded: None,
        };
        Metered {
            outer: METER.with(|m| m.borrow_mut().replace(meter)),
        }
    }

    /// The limit exceeded so far, if any.
    pub(crate) fn exceeded(&self) -> Option<Limit> {
        METER.with(|m| m.borrow().as_ref().and_then(|m| m.exceeded))
    }

    /// Checks the clock before an expression starts, so that many cheap expressions also
    /// respect the deadline.
    pub(crate) fn check_deadline(&self) -> Result<(), Limit> {
        METER.with(|m| match m.borrow_mut().as_mut() {
            Some(m) => m.check_time(),
            None => Ok(()),
        })
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let outer = self.outer.take();
        METER.with(|m| *m.borrow_mut() = outer);
    }
}

impl Meter {
    fn fail(&mut self, limit: Limit) -> Result<(), Limit> {
        self.exceeded.get_or_insert(limit);
        Err(limit)
    }

    fn check_time(&mut self) -> Result<(), Limit> {
        if let Some(limit) = self.exceeded {
            return Err(limit);
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return self.fail(Limit::Time(self.budget.time));
        }
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Limit> {
        if let Some(limit) = self.exceeded {
            return Err(limit);
        }
        if bytes > self.budget.max_value_bytes {
            return self.fail(Limit::ValueSize(self.budget.max_value_bytes));
        }
        let units = 1 + (bytes / 256) as u64;
        match self.cost_left.checked_sub(units) {
            Some(left) => self.cost_left = left,
            None => {
                self.cost_left = 0;
                return self.fail(Limit::Cost(self.budget.cost));
            }
        }
        self.check_time()
    }
}

fn budget_error(limit: Limit) -> ExecutionError {
    ExecutionError::function_error("budget", format!("exceeded the {limit}"))
}

/// Charges a checkpoint that saw a value of `bytes` bytes.
fn charge(bytes: usize) -> Result<(), ExecutionError> {
    METER.with(|m| match m.borrow_mut().as_mut() {
        Some(m) => m.charge(bytes).map_err(budget_error),
        None => Ok(()),
    })
}

/// Refuses to build a value of `bytes` bytes when it would exceed the size limit.
pub(crate) fn check_size(bytes: usize) -> Result<(), ExecutionError> {
    METER.with(|m| match m.borrow_mut().as_mut() {
        Some(m) if bytes > m.budget.max_value_bytes => {
            let limit = Limit::ValueSize(m.budget.max_value_bytes);
            m.exceeded.get_or_insert(limit);
            Err(budget_error(limit))
        }
        _ => Ok(()),
    })
}

/// The size limit of the running evaluation (for size estimates that stop counting early).
pub(crate) fn size_limit() -> usize {
    METER.with(|m| {
        m.borrow()
            .as_ref()
            .map_or(Budget::DEFAULT_MAX_VALUE_BYTES, |m| {
                m.budget.max_value_bytes
            })
    })
}

/// Roughly how many bytes `v` holds, counted through lists and maps; stops counting once past
/// `cap` so that measuring is never the expensive part.
pub(crate) fn deep_size(v: &dyn Val, cap: usize) -> usize {
    if let Some(s) = v.downcast_ref::<CelString>() {
        return s.len();
    }
    if let Some(b) = v.downcast_ref::<CelBytes>() {
        return b.inner().len();
    }
    if let Some(list) = v.downcast_ref::<CelList>() {
        let mut total = 0usize;
        for item in list.inner() {
            total = total.saturating_add(8 + deep_size(item.as_ref(), cap));
            if total > cap {
                break;
            }
        }
        return total;
    }
    if let Some(map) = v.downcast_ref::<CelMap>() {
        let mut total = 0usize;
        for (k, item) in map.inner() {
            total = total
                .saturating_add(16 + deep_size(k.inner(), cap) + deep_size(item.as_ref(), cap));
            if total > cap {
                break;
            }
        }
        return total;
    }
    if let Some(iterable) = v.as_iterable() {
        let mut total = 0usize;
        let mut items = iterable.iter();
        while let Some(item) = items.next() {
            total = total.saturating_add(8 + deep_size(item, cap));
            if total > cap {
                break;
            }
        }
        return total;
    }
    8
}

/// The checkpoint function the compiler inserts: `@budget(x)` is `x`, after charging for it.
pub(crate) const CHECKPOINT: &str = "@budget";

pub(crate) fn checkpoint<'b, 'v>(
    mut args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let value = args
        .pop()
        .ok_or_else(|| ExecutionError::invalid_argument_count(1, 0))?;
    let cap = size_limit();
    charge(deep_size(value.as_ref(), cap))?;
    Ok(value)
}

/// Calls that only hand back (part of) a value that already exists: no checkpoint needed.
fn passes_values_through(name: &str) -> bool {
    matches!(
        name,
        "_?_:_"
            | "_[_]"
            | "_[?_]"
            | "_?._"
            | "dyn"
            | "value"
            | "orValue"
            | "or"
            | "optional.of"
            | "optional.none"
            | "optional.ofNonZeroValue"
            | CHECKPOINT
    )
}

/// Types whose values are a few bytes: building one is never the expensive part.
fn is_small(ty: Option<&Ty>) -> bool {
    matches!(
        ty,
        Some(Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Null | Ty::Type | Ty::Ip | Ty::Cidr)
    )
}

/// Renamed calls: the guarded implementations registered in the environment.
pub(crate) const REPLACE: &str = "@replace";
pub(crate) const JOIN: &str = "@join";
pub(crate) const FORMAT_ARGS: &str = "@format_args";

/// Rewrites a checked expression for metered evaluation: checkpoints into loops and after
/// value-building calls, and the guarded `replace`/`join`/`format`. `types` are the checker's
/// types by node id.
pub(crate) fn instrument(expr: &mut IdedExpr, types: &HashMap<u64, Ty>) {
    let mut next_id = max_id(expr);
    walk(expr, types, &mut next_id);
}

fn max_id(e: &IdedExpr) -> u64 {
    let mut max = e.id;
    visit(e, &mut |n| max = max.max(n.id));
    max
}

/// Calls `f` on every node of `e`.
pub(crate) fn visit(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    f(e);
    for c in children(e) {
        visit(c, f);
    }
}

/// The levels `e` nests, counted without recursion (an expression too deep to walk recursively
/// must still be measured, to be refused).
pub(crate) fn depth(e: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((n, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(n).into_iter().map(|c| (c, d + 1)));
    }
    deepest
}

/// The direct sub-expressions of `e`.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(call) => call.target.iter().map(|t| &**t).chain(&call.args).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::MapEntry(me) => Some([&me.key, &me.value]),
                _ => None,
            })
            .flatten()
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::StructField(sf) => Some(&sf.value),
                _ => None,
            })
            .collect(),
        Expr::Select(s) => vec![&*s.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn wrap(e: &mut IdedExpr, name: &str, next_id: &mut u64) {
    let inner = std::mem::take(e);
    *next_id += 1;
    *e = IdedExpr {
        id: *next_id,
        expr: Expr::Call(CallExpr {
            func_name: name.to_owned(),
            target: None,
            args: vec![inner],
        }),
    };
}

fn walk(e: &mut IdedExpr, types: &HashMap<u64, Ty>, next_id: &mut u64) {
    let id = e.id;
    let mut needs_checkpoint = false;
    match &mut e.expr {
        Expr::Call(call) => {
            if let Some(t) = call.target.as_deref_mut() {
                walk(t, types, next_id);
            }
            for a in &mut call.args {
                walk(a, types, next_id);
            }
            if call.target.is_some() {
                match call.func_name.as_str() {
                    "replace" => call.func_name = REPLACE.to_owned(),
                    "join" => call.func_name = JOIN.to_owned(),
                    "format" if call.args.len() == 1 => {
                        wrap(&mut call.args[0], FORMAT_ARGS, next_id)
                    }
                    _ => {}
                }
            }
            needs_checkpoint = !passes_values_through(&call.func_name) && !is_small(types.get(&id));
        }
        Expr::Comprehension(c) => {
            walk(&mut c.iter_range, types, next_id);
            walk(&mut c.accu_init, types, next_id);
            walk(&mut c.loop_cond, types, next_id);
            walk(&mut c.result, types, next_id);
            // The condition runs before every iteration, and an error there ends the loop at
            // once, whereas `all`/`exists` defer a step's error and go on iterating: the
            // checkpoint belongs in the condition. `map`/`filter` keep a literal condition,
            // which the interpreter's in-place append needs; their step errors do end the loop.
            let in_condition = !matches!(c.loop_cond.expr, Expr::Literal(_));
            if in_condition {
                wrap(&mut c.loop_cond, CHECKPOINT, next_id);
            }
            let accu = c.accu_var.clone();
            instrument_step(&mut c.loop_step, &accu, !in_condition, types, next_id);
        }
        // A literal copies its elements: `[v, v, v, …]` over a large `v` must be charged.
        Expr::List(l) => {
            for x in &mut l.elements {
                walk(x, types, next_id);
                if copies_large_value(x, types) {
                    wrap(x, CHECKPOINT, next_id);
                }
            }
        }
        Expr::Map(m) => {
            for entry in &mut m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &mut entry.expr {
                    for x in [&mut me.key, &mut me.value] {
                        walk(x, types, next_id);
                        if copies_large_value(x, types) {
                            wrap(x, CHECKPOINT, next_id);
                        }
                    }
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &mut s.entries {
                if let cel::common::ast::EntryExpr::StructField(sf) = &mut entry.expr {
                    walk(&mut sf.value, types, next_id);
                }
            }
        }
        Expr::Select(s) => walk(&mut s.operand, types, next_id),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    if needs_checkpoint {
        wrap(e, CHECKPOINT, next_id);
    }
}

/// An element of a list or map literal that may be large and is not checked already.
fn copies_large_value(e: &IdedExpr, types: &HashMap<u64, Ty>) -> bool {
    match &e.expr {
        Expr::Literal(_) => false,
        Expr::Call(c) if c.func_name == CHECKPOINT => false,
        _ => !is_small(types.get(&e.id)),
    }
}

fn is_ident(e: &IdedExpr, name: &str) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == name)
}

/// `@result + [items]`: the step shape of `map` and `filter`.
fn is_append(e: &IdedExpr, accu: &str) -> bool {
    match &e.expr {
        Expr::Call(call) if call.func_name == "_+_" && call.target.is_none() => {
            matches!(call.args.as_slice(), [lhs, rhs] if is_ident(lhs, accu) && matches!(rhs.expr, Expr::List(_)))
        }
        _ => false,
    }
}

/// Instruments a loop step without changing the shapes the interpreter runs fast
/// (`@result + [x]` appends in place, `@result && x` short-circuits): wrapping those whole would
/// make `map` quadratic. With `checkpoint`, also puts one checkpoint on the path every iteration
/// takes.
fn instrument_step(
    step: &mut IdedExpr,
    accu: &str,
    checkpoint: bool,
    types: &HashMap<u64, Ty>,
    next_id: &mut u64,
) {
    if is_append(step, accu) {
        if let Expr::Call(call) = &mut step.expr {
            if let Expr::List(items) = &mut call.args[1].expr {
                for x in &mut items.elements {
                    walk(x, types, next_id);
                }
                if checkpoint {
                    if let Some(first) = items.elements.first_mut() {
                        wrap(first, CHECKPOINT, next_id);
                    }
                }
            }
        }
        return;
    }
    if let Expr::Call(call) = &mut step.expr {
        let guarded_append = call.func_name == "_?_:_"
            && call.target.is_none()
            && call.args.len() == 3
            && is_append(&call.args[1], accu)
            && is_ident(&call.args[2], accu);
        if guarded_append {
            walk(&mut call.args[0], types, next_id);
            if checkpoint {
                wrap(&mut call.args[0], CHECKPOINT, next_id);
            }
            if let Expr::Call(append) = &mut call.args[1].expr {
                if let Expr::List(items) = &mut append.args[1].expr {
                    for x in &mut items.elements {
                        walk(x, types, next_id);
                    }
                }
            }
            return;
        }
        let fold = matches!(call.func_name.as_str(), "_&&_" | "_||_")
            && call.target.is_none()
            && call.args.len() == 2
            && is_ident(&call.args[0], accu);
        if fold {
            walk(&mut call.args[1], types, next_id);
            if checkpoint {
                wrap(&mut call.args[1], CHECKPOINT, next_id);
            }
            return;
        }
    }
    walk(step, types, next_id);
    if checkpoint {
        wrap(step, CHECKPOINT, next_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::check::check;

    fn instrumented(src: &str) -> IdedExpr {
        let mut ast = cel::parser::PrattParser::new().parse(src).unwrap();
        let checked = check(&ast).unwrap();
        instrument(&mut ast, &checked.types);
        ast
    }

    fn comprehension(e: &IdedExpr) -> &cel::common::ast::ComprehensionExpr {
        match &e.expr {
            Expr::Comprehension(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn call_name(e: &IdedExpr) -> &str {
        match &e.expr {
            Expr::Call(c) => &c.func_name,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn map_keeps_its_in_place_append_shape() {
        let e = instrumented("[1, 2].map(x, x * 2)");
        let c = comprehension(&e);
        assert!(matches!(c.loop_cond.expr, Expr::Literal(_)));
        let Expr::Call(step) = &c.loop_step.expr else {
            panic!()
        };
        assert_eq!(step.func_name, "_+_");
        assert!(is_ident(&step.args[0], "@result"));
        let Expr::List(items) = &step.args[1].expr else {
            panic!()
        };
        assert_eq!(call_name(&items.elements[0]), CHECKPOINT);
    }

    #[test]
    fn filter_checks_its_guard() {
        let e = instrumented("[1, 2].filter(x, x > 1)");
        let c = comprehension(&e);
        let Expr::Call(step) = &c.loop_step.expr else {
            panic!()
        };
        assert_eq!(step.func_name, "_?_:_");
        assert_eq!(call_name(&step.args[0]), CHECKPOINT);
        assert!(is_append(&step.args[1], "@result"));
    }

    #[test]
    fn all_and_exists_check_their_condition_and_keep_their_fold() {
        for src in ["[1].all(x, x > 0)", "[1].exists(x, x > 0)"] {
            let e = instrumented(src);
            let c = comprehension(&e);
            assert_eq!(call_name(&c.loop_cond), CHECKPOINT, "{src}");
            let Expr::Call(step) = &c.loop_step.expr else {
                panic!()
            };
            assert!(is_ident(&step.args[0], "@result"), "{src}");
            assert_ne!(call_name(&step.args[1]), CHECKPOINT, "{src}");
        }
    }

    #[test]
    fn value_building_calls_get_a_checkpoint_and_scalar_ones_do_not() {
        let e = instrumented("'a' + 'b' == 'ab' && size('x') == 1");
        let mut checkpoints = 0;
        visit(&e, &mut |n| {
            if matches!(&n.expr, Expr::Call(c) if c.func_name == CHECKPOINT) {
                checkpoints += 1;
            }
        });
        assert_eq!(checkpoints, 1, "{e:?}");
        let e = instrumented("'a.b'.replace('.', '-') + ['a'].join(',') + '%s'.format(['x'])");
        let mut names = Vec::new();
        visit(&e, &mut |n| {
            if let Expr::Call(c) = &n.expr {
                names.push(c.func_name.clone());
            }
        });
        for name in [REPLACE, JOIN, FORMAT_ARGS, "format"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "replace" || n == "join"));
    }

    #[test]
    fn an_unbounded_time_budget_has_no_deadline() {
        let meter = Metered::start(&Budget {
            time: Duration::MAX,
            ..Budget::default()
        });
        assert_eq!(meter.check_deadline(), Ok(()));
        assert!(charge(10).is_ok());
    }

    #[test]
    fn limits_display_their_unit() {
        assert_eq!(
            Limit::Time(Duration::from_millis(50)).to_string(),
            "time budget of 50 ms"
        );
        assert_eq!(Limit::Cost(7).to_string(), "cost budget of 7 units");
        assert_eq!(
            Limit::ValueSize(1024).to_string(),
            "value size limit of 1024 bytes"
        );
    }
}
