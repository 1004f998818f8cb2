//! What can be told of a `match` without the interpreter. A fresh process evaluating 100 rules
//! pays more for the interpreter's first run (building the CEL environment, faulting in its
//! code, decoding the programs) than for the evaluation itself; most rules start by testing
//! the namespace, and most of those fail the test. So each compiled `match` carries a
//! [`Shortcut`], read off its instrumented program:
//!
//! - the program is a bool literal (`"true"`): its value;
//! - the program's leftmost operand of `&&` (all of it, or the first of a chain, however the
//!   parser grouped it) is `<var>.<field> == "<literal>"` (or the literal first) on one of the
//!   context's string fields, e.g. `pod.namespace == "db" && …`: false whenever that field
//!   differs.
//!
//! These decide exactly what the interpreter decides, at the same cost: the interpreter takes
//! a literal's value as is, evaluates the left operand of `&&` first and returns false, without
//! evaluating the right, when it is false; reading a string field of `pod` or `attachment` and
//! comparing it with a string cannot fail and passes no budget checkpoint (the program is the
//! instrumented one, so a checkpoint there would be a call and the shortcut would not apply).
//! Only the check of the deadline before each expression is skipped, which can only make a
//! time-budget error, a matter of wall-clock time anyway, less likely.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use super::context::Context;

/// A string variable every context has (see [`Context::to_cel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    PodNamespace,
    PodName,
    PodUid,
    PodNode,
    Network,
    Ifname,
    Subnet,
    Ip,
    Mac,
}

impl Field {
    const ALL: [Field; 9] = [
        Field::PodNamespace,
        Field::PodName,
        Field::PodUid,
        Field::PodNode,
        Field::Network,
        Field::Ifname,
        Field::Subnet,
        Field::Ip,
        Field::Mac,
    ];

    fn path(self) -> (&'static str, &'static str) {
        match self {
            Field::PodNamespace => ("pod", "namespace"),
            Field::PodName => ("pod", "name"),
            Field::PodUid => ("pod", "uid"),
            Field::PodNode => ("pod", "node"),
            Field::Network => ("attachment", "network"),
            Field::Ifname => ("attachment", "ifname"),
            Field::Subnet => ("attachment", "subnet"),
            Field::Ip => ("attachment", "ip"),
            Field::Mac => ("attachment", "mac"),
        }
    }

    /// Its number in a cache.
    pub(crate) fn code(self) -> u8 {
        Field::ALL
            .iter()
            .position(|f| *f == self)
            .expect("every field is listed") as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Field> {
        Field::ALL.get(usize::from(code)).copied()
    }

    fn value(self, ctx: &Context) -> &str {
        match self {
            Field::PodNamespace => &ctx.pod.namespace,
            Field::PodName => &ctx.pod.name,
            Field::PodUid => &ctx.pod.uid,
            Field::PodNode => &ctx.pod.node,
            Field::Network => &ctx.attachment.network,
            Field::Ifname => &ctx.attachment.ifname,
            Field::Subnet => &ctx.attachment.subnet,
            Field::Ip => &ctx.attachment.ip,
            Field::Mac => &ctx.attachment.mac,
        }
    }

    /// The field `e` reads: `pod.namespace`, not `has(pod.namespace)` nor `pod["namespace"]`.
    fn read_by(e: &IdedExpr) -> Option<Field> {
        let Expr::Select(s) = &e.expr else {
            return None;
        };
        let Expr::Ident(var) = &s.operand.expr else {
            return None;
        };
        if s.test {
            return None;
        }
        Field::ALL
            .into_iter()
            .find(|f| f.path() == (var.as_str(), s.field.as_str()))
    }
}

/// What a `match` program gives without running it, for some contexts (see the module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shortcut {
    /// The program is this literal.
    Always(bool),
    /// The program is false unless `field` is `value`.
    Requires { field: Field, value: String },
}

impl Shortcut {
    /// The shortcut of an instrumented `match` program, if it has one.
    pub(crate) fn of(program: &IdedExpr) -> Option<Shortcut> {
        if let Expr::Literal(LiteralValue::Boolean(b)) = &program.expr {
            return Some(Shortcut::Always(*b.inner()));
        }
        let mut first = program;
        while let Some([left, _]) = binary(first, operators::LOGICAL_AND) {
            first = left;
        }
        let [a, b] = binary(first, operators::EQUALS)?;
        let (field, value) = match (Field::read_by(a), string(b)) {
            (Some(field), Some(value)) => (field, value),
            _ => (Field::read_by(b)?, string(a)?),
        };
        Some(Shortcut::Requires {
            field,
            value: value.to_owned(),
        })
    }

    /// The program's value for `ctx`, when the shortcut tells it.
    pub(crate) fn decide(&self, ctx: &Context) -> Option<bool> {
        match self {
            Shortcut::Always(b) => Some(*b),
            Shortcut::Requires { field, value } => (field.value(ctx) != value).then_some(false),
        }
    }
}

/// The operands of `e` if it is a call of the global function (operator) `name` with two.
fn binary<'a>(e: &'a IdedExpr, name: &str) -> Option<[&'a IdedExpr; 2]> {
    match &e.expr {
        Expr::Call(c) if c.func_name == name && c.target.is_none() => match &c.args[..] {
            [a, b] => Some([a, b]),
            _ => None,
        },
        _ => None,
    }
}

fn string(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::parser::PrattParser;

    fn parse(src: &str) -> IdedExpr {
        PrattParser::new()
            .enable_optional_syntax(true)
            .parse(src)
            .unwrap()
    }

    fn requires(field: Field, value: &str) -> Option<Shortcut> {
        Some(Shortcut::Requires {
            field,
            value: value.to_owned(),
        })
    }

    #[test]
    fn shortcuts_are_read_off_the_program() {
        for (src, want) in [
            ("true", Some(Shortcut::Always(true))),
            ("false", Some(Shortcut::Always(false))),
            (
                r#"pod.namespace == "db""#,
                requires(Field::PodNamespace, "db"),
            ),
            (
                r#""db" == pod.namespace"#,
                requires(Field::PodNamespace, "db"),
            ),
            (
                r#"pod.namespace == "db" && pod.name.startsWith("web-")"#,
                requires(Field::PodNamespace, "db"),
            ),
            (
                r#"attachment.network == "lan" && pod.name == "x" && pod.uid != "" && true"#,
                requires(Field::Network, "lan"),
            ),
            (
                r#"(pod.node == "n1" && pod.name == "a") && pod.uid == "u""#,
                requires(Field::PodNode, "n1"),
            ),
            (r#"attachment.mac == """#, requires(Field::Mac, "")),
            // Not the first operand of `&&`: it may not even be evaluated first.
            (r#"pod.name.startsWith("x") && pod.namespace == "db""#, None),
            (r#"pod.namespace == "db" || pod.name == "x""#, None),
            (r#"!(pod.namespace == "db")"#, None),
            (r#"pod.namespace != "db""#, None),
            (r#"pod.labels == "db""#, None),
            (r#"pod["namespace"] == "db""#, None),
            (r#"has(pod.namespace) && pod.namespace == "db""#, None),
            (r#"pod.namespace == pod.name"#, None),
            (r#"pod.namespace == 'db' + ''"#, None),
            (r#"true && pod.namespace == "db""#, None),
            (r#"[1].exists(pod, pod == 1)"#, None),
            ("1 == 1", None),
        ] {
            assert_eq!(Shortcut::of(&parse(src)), want, "{src}");
        }
    }

    #[test]
    fn a_requirement_decides_only_when_the_field_differs() {
        let mut ctx = Context::sample();
        let s = Shortcut::of(&parse(r#"pod.namespace == "default" && false"#)).unwrap();
        assert_eq!(s.decide(&ctx), None);
        ctx.pod.namespace = "other".into();
        assert_eq!(s.decide(&ctx), Some(false));
        for field in Field::ALL {
            assert_eq!(Field::from_code(field.code()), Some(field));
            let (var, name) = field.path();
            let src = format!(r#"{var}.{name} == "x""#);
            assert_eq!(Shortcut::of(&parse(&src)), requires(field, "x"), "{src}");
        }
        assert_eq!(Field::from_code(9), None);
    }
}
