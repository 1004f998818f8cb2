//! The CEL environment rules run in, built once per process: the `cel` crate's standard library
//! and strings extension (cel-go's `ext.Strings`, which Kubernetes enables), Kubernetes' IP and
//! CIDR library (`net`), and the engine's internal functions — the budget checkpoint and the
//! size-guarded `replace`, `join` and `format` the compiler substitutes (see `budget`). Internal
//! names start with `@`, which CEL source cannot write.

use std::sync::{Arc, OnceLock};

use cel::common::types::{CelInt, CelString, DYN_TYPE, INT_TYPE, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

use super::budget::{self, check_size, deep_size, size_limit};
use super::net;

/// The shared environment.
pub(crate) fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(build().expect("the rule environment declares each overload once")))
}

fn build() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(net::extension)?;
    env.add_overload(
        budget::CHECKPOINT,
        "budget_checkpoint",
        vec![DYN_TYPE.to_owned()],
        budget::checkpoint,
    )?;
    env.add_member_overload(
        budget::REPLACE,
        "guarded_replace",
        DYN_TYPE.to_owned(),
        vec![STRING_TYPE.to_owned(), STRING_TYPE.to_owned()],
        guarded_replace,
    )?;
    env.add_member_overload(
        budget::REPLACE,
        "guarded_replace_n",
        DYN_TYPE.to_owned(),
        vec![
            STRING_TYPE.to_owned(),
            STRING_TYPE.to_owned(),
            INT_TYPE.to_owned(),
        ],
        guarded_replace,
    )?;
    env.add_member_overload(
        budget::JOIN,
        "guarded_join",
        DYN_TYPE.to_owned(),
        vec![],
        guarded_join,
    )?;
    env.add_member_overload(
        budget::JOIN,
        "guarded_join_sep",
        DYN_TYPE.to_owned(),
        vec![STRING_TYPE.to_owned()],
        guarded_join,
    )?;
    env.add_overload(
        budget::FORMAT_ARGS,
        "guarded_format_args",
        vec![DYN_TYPE.to_owned()],
        guarded_format_args,
    )?;
    Ok(env)
}

fn type_names(args: &[CowVal<'_, '_>]) -> Vec<String> {
    args.iter()
        .map(|a| a.get_type().name().to_owned())
        .collect()
}

/// `s.replace(from, to[, n])`, the strings extension's semantics (all occurrences, or the first
/// `n` when `n >= 0`; an empty `from` matches between code points), sized before it is built.
fn guarded_replace<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let strings: Vec<Option<&str>> = args
        .iter()
        .take(3)
        .map(|a| a.downcast_ref::<CelString>().map(|s| s.inner()))
        .collect();
    let n = match args.get(3) {
        Some(n) => n.downcast_ref::<CelInt>().map(|n| *n.inner()),
        None => Some(-1),
    };
    let (Some(s), Some(from), Some(to), Some(n)) = (
        strings.first().copied().flatten(),
        strings.get(1).copied().flatten(),
        strings.get(2).copied().flatten(),
        n,
    ) else {
        return Err(ExecutionError::no_such_member_overload(
            "replace",
            type_names(&args),
        ));
    };
    let limit = usize::try_from(n).ok();
    let occurrences = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let count = limit.map_or(occurrences, |l| l.min(occurrences));
    let size = (s.len() - count * from.len()).saturating_add(count.saturating_mul(to.len()));
    check_size(size)?;
    let out = match limit {
        Some(l) => s.replacen(from, to, l),
        None => s.replace(from, to),
    };
    Ok(CowVal::owned(CelString::from(out)))
}

/// `list.join([sep])`: the elements must be strings, as in the strings extension.
fn guarded_join<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let sep = match args.get(1) {
        Some(sep) => match sep.downcast_ref::<CelString>() {
            Some(s) => s.inner(),
            None => {
                return Err(ExecutionError::no_such_member_overload(
                    "join",
                    type_names(&args),
                ))
            }
        },
        None => "",
    };
    let Some(iterable) = args.first().and_then(|l| l.as_iterable()) else {
        return Err(ExecutionError::no_such_member_overload(
            "join",
            type_names(&args),
        ));
    };
    let mut parts: Vec<&str> = Vec::new();
    let mut items = iterable.iter();
    while let Some(item) = items.next() {
        match item.downcast_ref::<CelString>() {
            Some(s) => parts.push(s.inner()),
            None => {
                return Err(ExecutionError::UnexpectedType {
                    got: item.get_type().name().to_owned(),
                    want: "string".to_owned(),
                })
            }
        }
    }
    let size = parts
        .iter()
        .map(|p| p.len())
        .sum::<usize>()
        .saturating_add(sep.len().saturating_mul(parts.len().saturating_sub(1)));
    check_size(size)?;
    Ok(CowVal::owned(CelString::from(parts.join(sep))))
}

/// The argument list of `format`, passed through once the result is known to fit: a clause
/// writes at most twice its argument's size plus a number's digits (precision is capped at 100).
fn guarded_format_args<'b, 'v>(
    mut args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let list = args
        .pop()
        .ok_or_else(|| ExecutionError::invalid_argument_count(1, 0))?;
    if let Some(iterable) = list.as_iterable() {
        let cap = size_limit();
        let mut size = 0usize;
        let mut items = iterable.iter();
        while let Some(item) = items.next() {
            size = size.saturating_add(2 * deep_size(item, cap) + 512);
        }
        check_size(size)?;
    }
    Ok(list)
}
