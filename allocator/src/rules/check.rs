//! A static type checker for rule expressions, in the spirit of cel-go's checker (the `cel`
//! crate has none). It knows the declared variables (`pod`, `attachment`), their fields, and the
//! signature of every function the environment offers, so a misspelled field, an unknown
//! function or `"10.0.0." + 5` is a compile error with a position, in whatever branch it is —
//! not a failure on the first pod that takes that branch.
//!
//! Where a type is not known statically (`dyn`, heterogeneous lists) the checker lets the
//! expression through and the interpreter decides at run time, as cel-go does.

use std::collections::HashMap;
use std::fmt;

use cel::common::ast::{ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr};

use super::net;

/// A static type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Type,
    Ip,
    Cidr,
    Pod,
    Attachment,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Opt(Box<Ty>),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Type => f.write_str("type"),
            Ty::Ip => f.write_str("net.IP"),
            Ty::Cidr => f.write_str("net.CIDR"),
            Ty::Pod => f.write_str("pod"),
            Ty::Attachment => f.write_str("attachment"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Opt(t) => write!(f, "optional_type({t})"),
        }
    }
}

fn list(t: Ty) -> Ty {
    Ty::List(Box::new(t))
}

fn map(k: Ty, v: Ty) -> Ty {
    Ty::Map(Box::new(k), Box::new(v))
}

fn opt(t: Ty) -> Ty {
    Ty::Opt(Box::new(t))
}

/// The fields of `pod`, in the order the docs list them.
pub(crate) const POD_FIELDS: [&str; 6] =
    ["namespace", "name", "uid", "node", "labels", "annotations"];

/// The fields of `pod` that come from CNI_ARGS and the node, without the pod mirror.
pub(crate) const POD_BASIC_FIELDS: [&str; 4] = ["namespace", "name", "uid", "node"];

/// The fields of `attachment`.
pub(crate) const ATTACHMENT_FIELDS: [&str; 5] = ["network", "ifname", "subnet", "ip", "mac"];

fn pod_field(name: &str) -> Option<Ty> {
    match name {
        "labels" | "annotations" => Some(map(Ty::String, Ty::String)),
        _ if POD_FIELDS.contains(&name) => Some(Ty::String),
        _ => None,
    }
}

fn attachment_field(name: &str) -> Option<Ty> {
    ATTACHMENT_FIELDS.contains(&name).then_some(Ty::String)
}

/// A type error at node `id`.
#[derive(Debug)]
pub(crate) struct CheckError {
    pub(crate) id: u64,
    pub(crate) message: String,
}

/// The result of a successful check: the expression's type and every node's.
pub(crate) struct Checked {
    pub(crate) ty: Ty,
    pub(crate) types: HashMap<u64, Ty>,
}

/// Type-checks `expr`.
pub(crate) fn check(expr: &IdedExpr) -> Result<Checked, CheckError> {
    let mut checker = Checker {
        scopes: Vec::new(),
        types: HashMap::new(),
    };
    let ty = checker.expr(expr)?;
    Ok(Checked {
        ty,
        types: checker.types,
    })
}

/// Parameter patterns of the signature table.
#[derive(Clone, Copy, Debug)]
enum P {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    Ip,
    Cidr,
    AnyList,
    StrList,
    AnyMap,
}

impl P {
    fn accepts(self, t: &Ty) -> bool {
        if *t == Ty::Dyn {
            return true;
        }
        match self {
            P::Bool => *t == Ty::Bool,
            P::Int => *t == Ty::Int,
            P::Uint => *t == Ty::Uint,
            P::Double => *t == Ty::Double,
            P::Str => *t == Ty::String,
            P::Bytes => *t == Ty::Bytes,
            P::Ip => *t == Ty::Ip,
            P::Cidr => *t == Ty::Cidr,
            P::AnyList => matches!(t, Ty::List(_)),
            P::StrList => matches!(t, Ty::List(e) if matches!(**e, Ty::String | Ty::Dyn)),
            P::AnyMap => matches!(t, Ty::Map(..)),
        }
    }
}

/// Result types of the signature table.
#[derive(Clone, Copy, Debug)]
enum R {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    StrList,
    Ip,
    Cidr,
}

impl R {
    fn ty(self) -> Ty {
        match self {
            R::Bool => Ty::Bool,
            R::Int => Ty::Int,
            R::Uint => Ty::Uint,
            R::Double => Ty::Double,
            R::Str => Ty::String,
            R::Bytes => Ty::Bytes,
            R::StrList => list(Ty::String),
            R::Ip => Ty::Ip,
            R::Cidr => Ty::Cidr,
        }
    }
}

/// One overload: a member function takes its receiver as the first parameter.
struct Sig {
    name: &'static str,
    member: bool,
    params: &'static [P],
    ret: R,
}

const fn g(name: &'static str, params: &'static [P], ret: R) -> Sig {
    Sig {
        name,
        member: false,
        params,
        ret,
    }
}

const fn m(name: &'static str, params: &'static [P], ret: R) -> Sig {
    Sig {
        name,
        member: true,
        params,
        ret,
    }
}

/// Every non-generic function of the environment (operators, `type`, `dyn` and the optional
/// library are generic and handled in code). A test evaluates each entry to prove the runtime
/// has it.
const SIGS: &[Sig] = &[
    // Standard library: conversions.
    g("int", &[P::Int], R::Int),
    g("int", &[P::Uint], R::Int),
    g("int", &[P::Double], R::Int),
    g("int", &[P::Str], R::Int),
    g("uint", &[P::Int], R::Uint),
    g("uint", &[P::Uint], R::Uint),
    g("uint", &[P::Double], R::Uint),
    g("uint", &[P::Str], R::Uint),
    g("double", &[P::Int], R::Double),
    g("double", &[P::Uint], R::Double),
    g("double", &[P::Double], R::Double),
    g("double", &[P::Str], R::Double),
    g("string", &[P::Int], R::Str),
    g("string", &[P::Uint], R::Str),
    g("string", &[P::Double], R::Str),
    g("string", &[P::Str], R::Str),
    g("string", &[P::Bool], R::Str),
    g("string", &[P::Bytes], R::Str),
    g("string", &[P::Ip], R::Str),
    g("string", &[P::Cidr], R::Str),
    g("bool", &[P::Bool], R::Bool),
    g("bool", &[P::Str], R::Bool),
    g("bytes", &[P::Str], R::Bytes),
    g("bytes", &[P::Bytes], R::Bytes),
    // Standard library: size and string predicates.
    g("size", &[P::Str], R::Int),
    g("size", &[P::Bytes], R::Int),
    g("size", &[P::AnyList], R::Int),
    g("size", &[P::AnyMap], R::Int),
    m("size", &[P::Str], R::Int),
    m("size", &[P::Bytes], R::Int),
    m("size", &[P::AnyList], R::Int),
    m("size", &[P::AnyMap], R::Int),
    m("contains", &[P::Str, P::Str], R::Bool),
    m("startsWith", &[P::Str, P::Str], R::Bool),
    m("endsWith", &[P::Str, P::Str], R::Bool),
    m("matches", &[P::Str, P::Str], R::Bool),
    g("matches", &[P::Str, P::Str], R::Bool),
    // Strings extension.
    m("charAt", &[P::Str, P::Int], R::Str),
    m("indexOf", &[P::Str, P::Str], R::Int),
    m("indexOf", &[P::Str, P::Str, P::Int], R::Int),
    m("lastIndexOf", &[P::Str, P::Str], R::Int),
    m("lastIndexOf", &[P::Str, P::Str, P::Int], R::Int),
    m("lowerAscii", &[P::Str], R::Str),
    m("upperAscii", &[P::Str], R::Str),
    m("trim", &[P::Str], R::Str),
    m("reverse", &[P::Str], R::Str),
    m("replace", &[P::Str, P::Str, P::Str], R::Str),
    m("replace", &[P::Str, P::Str, P::Str, P::Int], R::Str),
    m("split", &[P::Str, P::Str], R::StrList),
    m("split", &[P::Str, P::Str, P::Int], R::StrList),
    m("substring", &[P::Str, P::Int], R::Str),
    m("substring", &[P::Str, P::Int, P::Int], R::Str),
    m("join", &[P::StrList], R::Str),
    m("join", &[P::StrList, P::Str], R::Str),
    m("format", &[P::Str, P::AnyList], R::Str),
    g("strings.quote", &[P::Str], R::Str),
    // Kubernetes IP library.
    g("ip", &[P::Str], R::Ip),
    g("isIP", &[P::Str], R::Bool),
    g("ip.isCanonical", &[P::Str], R::Bool),
    m("family", &[P::Ip], R::Int),
    m("isUnspecified", &[P::Ip], R::Bool),
    m("isLoopback", &[P::Ip], R::Bool),
    m("isLinkLocalMulticast", &[P::Ip], R::Bool),
    m("isLinkLocalUnicast", &[P::Ip], R::Bool),
    m("isGlobalUnicast", &[P::Ip], R::Bool),
    // Kubernetes CIDR library.
    g("cidr", &[P::Str], R::Cidr),
    g("isCIDR", &[P::Str], R::Bool),
    m("containsIP", &[P::Cidr, P::Ip], R::Bool),
    m("containsIP", &[P::Cidr, P::Str], R::Bool),
    m("containsCIDR", &[P::Cidr, P::Cidr], R::Bool),
    m("containsCIDR", &[P::Cidr, P::Str], R::Bool),
    m("ip", &[P::Cidr], R::Ip),
    m("masked", &[P::Cidr], R::Cidr),
    m("prefixLength", &[P::Cidr], R::Int),
];

/// Namespaces of qualified function names: `strings.quote(…)` parses as a call on `strings`.
const NAMESPACES: [&str; 3] = ["strings", "optional", "ip"];

/// Identifiers that name types (`type(x) == string`).
const TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// For tests: one sample call per table entry.
#[cfg(test)]
pub(crate) fn table_samples() -> Vec<String> {
    fn sample(p: P, cidr: bool) -> &'static str {
        match p {
            P::Bool => "true",
            P::Int => "1",
            P::Uint => "1u",
            P::Double => "1.5",
            P::Str if cidr => "'10.0.0.0/8'",
            P::Str => "'10.0.0.1'",
            P::Bytes => "b'ab'",
            P::Ip => "ip('10.0.0.1')",
            P::Cidr => "cidr('10.0.0.0/8')",
            P::AnyList | P::StrList => "['a', 'b']",
            P::AnyMap => "{'a': 'b'}",
        }
    }
    SIGS.iter()
        .map(|s| {
            let cidr = s.name.to_lowercase().contains("cidr");
            let args: Vec<&str> = s.params.iter().map(|p| sample(*p, cidr)).collect();
            if s.member {
                format!("{}.{}({})", args[0], s.name, args[1..].join(", "))
            } else {
                format!("{}({})", s.name, args.join(", "))
            }
        })
        .collect()
}

fn is_num(t: &Ty) -> bool {
    matches!(t, Ty::Int | Ty::Uint | Ty::Double)
}

/// The least common type of two branches or elements.
fn join(a: &Ty, b: &Ty) -> Ty {
    match (a, b) {
        _ if a == b => a.clone(),
        (Ty::List(x), Ty::List(y)) => list(join(x, y)),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => map(join(k1, k2), join(v1, v2)),
        (Ty::Opt(x), Ty::Opt(y)) => opt(join(x, y)),
        _ => Ty::Dyn,
    }
}

/// Whether `==` between the two types can ever be true (cel-go's checker rejects the rest).
fn comparable(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null) => true,
        _ if is_num(a) && is_num(b) => true,
        (Ty::List(x), Ty::List(y)) | (Ty::Opt(x), Ty::Opt(y)) => comparable(x, y),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => comparable(k1, k2) && comparable(v1, v2),
        _ => a == b,
    }
}

fn orderable(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
        _ if is_num(a) && is_num(b) => true,
        _ => a == b && matches!(a, Ty::String | Ty::Bytes | Ty::Bool),
    }
}

fn no_overload(name: &str, target: Option<&Ty>, args: &[Ty]) -> String {
    let args: Vec<String> = args.iter().map(Ty::to_string).collect();
    let applied = match target {
        Some(t) => format!("{t}.({})", args.join(", ")),
        None => format!("({})", args.join(", ")),
    };
    format!("found no matching overload for '{name}' applied to '{applied}'")
}

struct Checker {
    scopes: Vec<(String, Ty)>,
    types: HashMap<u64, Ty>,
}

impl Checker {
    fn lookup(&self, name: &str) -> Option<&Ty> {
        self.scopes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<Ty, CheckError> {
        let err = |message: String| CheckError { id: e.id, message };
        let ty = match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => self.ident(name).map_err(err)?,
            Expr::Select(s) => self.select(e.id, s)?,
            Expr::Call(call) => self.call(e.id, call)?,
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for (i, x) in l.elements.iter().enumerate() {
                    let mut t = self.expr(x)?;
                    if l.optional_indices.contains(&i) {
                        t = match t {
                            Ty::Opt(inner) => *inner,
                            Ty::Dyn => Ty::Dyn,
                            other => {
                                return Err(CheckError {
                                    id: x.id,
                                    message: format!(
                                        "an optional element '?x' needs an optional value, got '{other}'"
                                    ),
                                })
                            }
                        };
                    }
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => join(&prev, &t),
                    });
                }
                list(elem.unwrap_or(Ty::Dyn))
            }
            Expr::Map(m) => {
                let mut kv: Option<(Ty, Ty)> = None;
                for entry in &m.entries {
                    let EntryExpr::MapEntry(me) = &entry.expr else {
                        return Err(err("unexpected field initializer in a map".to_owned()));
                    };
                    let k = self.expr(&me.key)?;
                    if !matches!(k, Ty::String | Ty::Int | Ty::Uint | Ty::Bool | Ty::Dyn) {
                        return Err(CheckError {
                            id: me.key.id,
                            message: format!("unsupported map key type '{k}'"),
                        });
                    }
                    let mut v = self.expr(&me.value)?;
                    if me.optional {
                        v = match v {
                            Ty::Opt(inner) => *inner,
                            other => other,
                        };
                    }
                    kv = Some(match kv {
                        None => (k, v),
                        Some((pk, pv)) => (join(&pk, &k), join(&pv, &v)),
                    });
                }
                let (k, v) = kv.unwrap_or((Ty::Dyn, Ty::Dyn));
                map(k, v)
            }
            Expr::Struct(s) => {
                return Err(err(format!(
                    "message construction ({} {{…}}) is not supported",
                    s.type_name
                )))
            }
            Expr::Comprehension(c) => self.comprehension(c)?,
            Expr::Unspecified => return Err(err("incomplete expression".to_owned())),
        };
        self.types.insert(e.id, ty.clone());
        Ok(ty)
    }

    fn ident(&self, name: &str) -> Result<Ty, String> {
        if let Some(t) = self.lookup(name) {
            return Ok(t.clone());
        }
        match name {
            "pod" => Ok(Ty::Pod),
            "attachment" => Ok(Ty::Attachment),
            _ if TYPE_NAMES.contains(&name) => Ok(Ty::Type),
            _ => Err(format!(
                "undeclared reference to '{name}' (the variables are pod and attachment)"
            )),
        }
    }

    fn field(&self, operand: &Ty, field: &str) -> Result<Ty, String> {
        match operand {
            Ty::Pod => pod_field(field).ok_or_else(|| {
                format!(
                    "undefined field '{field}' of pod (fields: {})",
                    POD_FIELDS.join(", ")
                )
            }),
            Ty::Attachment => attachment_field(field).ok_or_else(|| {
                format!(
                    "undefined field '{field}' of attachment (fields: {})",
                    ATTACHMENT_FIELDS.join(", ")
                )
            }),
            Ty::Map(k, v) if matches!(**k, Ty::String | Ty::Dyn) => Ok((**v).clone()),
            Ty::Dyn => Ok(Ty::Dyn),
            Ty::Opt(inner) => Ok(opt(self.field(inner, field)?)),
            other => Err(format!(
                "type '{other}' has no fields (selecting '{field}')"
            )),
        }
    }

    fn select(&mut self, id: u64, s: &SelectExpr) -> Result<Ty, CheckError> {
        let operand = self.expr(&s.operand)?;
        let err = |message: String| CheckError { id, message };
        if s.test {
            // has(x.f): the field must exist on a message, any key may be tested on a map.
            return match &operand {
                Ty::Pod | Ty::Attachment => self.field(&operand, &s.field).map(|_| Ty::Bool),
                Ty::Map(..) | Ty::Dyn => Ok(Ty::Bool),
                other => Err(format!(
                    "has() needs a map or an object, got '{other}' (testing '{}')",
                    s.field
                )),
            }
            .map_err(err);
        }
        self.field(&operand, &s.field).map_err(err)
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Ty, CheckError> {
        let range = self.expr(&c.iter_range)?;
        let (first, second) = match &range {
            Ty::List(t) if c.iter_var2.is_some() => (Ty::Int, (**t).clone()),
            Ty::List(t) => ((**t).clone(), Ty::Dyn),
            Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
            Ty::Dyn => (Ty::Dyn, Ty::Dyn),
            other => {
                return Err(CheckError {
                    id: c.iter_range.id,
                    message: format!("cannot iterate over a value of type '{other}'"),
                })
            }
        };
        let accu = self.expr(&c.accu_init)?;
        let depth = self.scopes.len();
        self.scopes.push((c.accu_var.clone(), accu));
        self.scopes.push((c.iter_var.clone(), first));
        if let Some(v2) = &c.iter_var2 {
            self.scopes.push((v2.clone(), second));
        }
        let result = (|| {
            self.expr(&c.loop_cond)?;
            let step = self.expr(&c.loop_step)?;
            // The accumulator takes the step's type from the second iteration on: `map` starts
            // from `[]` (list(dyn)) and appends the mapped type.
            self.scopes[depth].1 = join(&self.scopes[depth].1, &step);
            self.expr(&c.result)
        })();
        self.scopes.truncate(depth);
        result
    }

    fn call(&mut self, id: u64, call: &cel::common::ast::CallExpr) -> Result<Ty, CheckError> {
        let err = |message: String| CheckError { id, message };
        // `strings.quote(x)` is a call on the identifier `strings`: a qualified function name,
        // unless a comprehension variable of that name is in scope.
        let mut name = call.func_name.clone();
        let mut target = None;
        if let Some(t) = &call.target {
            match &t.expr {
                Expr::Ident(ns)
                    if NAMESPACES.contains(&ns.as_str()) && self.lookup(ns).is_none() =>
                {
                    name = format!("{ns}.{name}");
                }
                _ => target = Some(self.expr(t)?),
            }
        }
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            args.push(self.expr(a)?);
        }
        self.check_literals(&name, target.as_ref(), &call.args)?;
        let target_ref = target.as_ref();
        let bad = || err(no_overload(&name, target_ref, &args));
        let boolish = |t: &Ty| matches!(t, Ty::Bool | Ty::Dyn);
        let ty = match (name.as_str(), target_ref, args.as_slice()) {
            ("_&&_" | "_||_", None, [a, b]) => {
                if !(boolish(a) && boolish(b)) {
                    return Err(bad());
                }
                Ty::Bool
            }
            ("!_", None, [a]) => {
                if !boolish(a) {
                    return Err(bad());
                }
                Ty::Bool
            }
            ("-_", None, [a]) => match a {
                Ty::Int | Ty::Double | Ty::Dyn => a.clone(),
                _ => return Err(bad()),
            },
            ("_?_:_", None, [c, a, b]) => {
                if !boolish(c) {
                    return Err(err(format!(
                        "the condition of '? :' must be a bool, got '{c}'"
                    )));
                }
                join(a, b)
            }
            ("_==_" | "_!=_", None, [a, b]) => {
                if !comparable(a, b) {
                    return Err(bad());
                }
                Ty::Bool
            }
            ("_<_" | "_<=_" | "_>_" | "_>=_", None, [a, b]) => {
                if !orderable(a, b) {
                    return Err(bad());
                }
                Ty::Bool
            }
            ("_+_", None, [a, b]) => add(a, b).ok_or_else(bad)?,
            ("_-_" | "_*_" | "_/_", None, [a, b]) => arith(a, b, true).ok_or_else(bad)?,
            ("_%_", None, [a, b]) => arith(a, b, false).ok_or_else(bad)?,
            ("_[_]", None, [a, b]) => index(a, b, &call.args[1]).map_err(err)?,
            ("_[?_]", None, [a, b]) => {
                let inner = match a {
                    Ty::Opt(t) => (**t).clone(),
                    other => other.clone(),
                };
                opt(index(&inner, b, &call.args[1]).map_err(err)?)
            }
            ("_?._", None, [a, _]) => {
                let Expr::Literal(LiteralValue::String(field)) = &call.args[1].expr else {
                    return Err(bad());
                };
                let inner = match a {
                    Ty::Opt(t) => (**t).clone(),
                    other => other.clone(),
                };
                opt(self.field(&inner, field.inner()).map_err(err)?)
            }
            ("@in", None, [x, c]) => match c {
                Ty::List(t) if comparable(x, t) => Ty::Bool,
                Ty::Map(k, _) if comparable(x, k) => Ty::Bool,
                Ty::Dyn => Ty::Bool,
                Ty::List(_) | Ty::Map(..) => return Err(bad()),
                other => {
                    return Err(err(format!(
                        "'in' needs a list or a map on the right, got '{other}'"
                    )))
                }
            },
            ("@not_strictly_false", None, [_]) => Ty::Bool,
            ("type", None, [_]) => Ty::Type,
            ("dyn", None, [_]) => Ty::Dyn,
            ("optional.of" | "optional.ofNonZeroValue", None, [a]) => opt(a.clone()),
            ("optional.none", None, []) => opt(Ty::Dyn),
            ("hasValue", Some(Ty::Opt(_) | Ty::Dyn), []) => Ty::Bool,
            ("value", Some(Ty::Opt(t)), []) => (**t).clone(),
            ("value", Some(Ty::Dyn), []) => Ty::Dyn,
            ("orValue", Some(Ty::Opt(t)), [a]) => join(t, a),
            ("orValue", Some(Ty::Dyn), [_]) => Ty::Dyn,
            ("or", Some(Ty::Opt(t)), [Ty::Opt(u)]) => opt(join(t, u)),
            ("or", Some(Ty::Opt(_) | Ty::Dyn), [Ty::Dyn]) | ("or", Some(Ty::Dyn), [_]) => {
                opt(Ty::Dyn)
            }
            ("hasValue" | "value" | "orValue" | "or", Some(_), _) => return Err(bad()),
            _ => self.table(&name, target_ref, &args).map_err(err)?,
        };
        Ok(ty)
    }

    /// Overload resolution against [`SIGS`].
    fn table(&self, name: &str, target: Option<&Ty>, args: &[Ty]) -> Result<Ty, String> {
        let member = target.is_some();
        let all: Vec<&Sig> = SIGS.iter().filter(|s| s.name == name).collect();
        if all.is_empty() {
            return Err(format!("undeclared reference to '{name}'"));
        }
        let styled: Vec<&&Sig> = all.iter().filter(|s| s.member == member).collect();
        if styled.is_empty() {
            return Err(if member {
                format!("'{name}' is not a member function: call it as {name}(…)")
            } else {
                format!("'{name}' is a member function: call it as x.{name}(…)")
            });
        }
        let full: Vec<Ty> = target
            .into_iter()
            .cloned()
            .chain(args.iter().cloned())
            .collect();
        let candidates: Vec<&&&Sig> = styled
            .iter()
            .filter(|s| {
                s.params.len() == full.len()
                    && s.params.iter().zip(&full).all(|(p, t)| p.accepts(t))
            })
            .collect();
        let Some(first) = candidates.first() else {
            return Err(no_overload(name, target, args));
        };
        let ty = first.ret.ty();
        Ok(if candidates.iter().all(|s| s.ret.ty() == ty) {
            ty
        } else {
            Ty::Dyn
        })
    }

    /// Literal arguments that can be validated now: regular expressions, IP addresses, CIDRs.
    fn check_literals(
        &self,
        name: &str,
        target: Option<&Ty>,
        args: &[IdedExpr],
    ) -> Result<(), CheckError> {
        let literal = |i: usize| match args.get(i).map(|a| &a.expr) {
            Some(Expr::Literal(LiteralValue::String(s))) => Some((args[i].id, s.inner())),
            _ => None,
        };
        let fail = |id: u64, message: String| Err(CheckError { id, message });
        match (name, target) {
            ("matches", _) => {
                let i = if target.is_some() { 0 } else { 1 };
                if let Some((id, pattern)) = literal(i) {
                    if let Err(e) = regex::Regex::new(pattern) {
                        let e = e.to_string();
                        let reason = e.lines().last().unwrap_or_default().trim();
                        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                        return fail(
                            id,
                            format!("invalid regular expression {pattern:?}: {reason}"),
                        );
                    }
                }
            }
            ("ip", None) => {
                if let Some((id, s)) = literal(0) {
                    if let Err(e) = net::parse_ip(s) {
                        return fail(id, e);
                    }
                }
            }
            ("cidr", None) => {
                if let Some((id, s)) = literal(0) {
                    if let Err(e) = net::parse_cidr(s) {
                        return fail(id, e);
                    }
                }
            }
            ("containsIP", Some(Ty::Cidr)) => {
                if let Some((id, s)) = literal(0) {
                    if let Err(e) = net::parse_ip(s) {
                        return fail(id, e);
                    }
                }
            }
            ("containsCIDR", Some(Ty::Cidr)) => {
                if let Some((id, s)) = literal(0) {
                    if let Err(e) = net::parse_cidr(s) {
                        return fail(id, e);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn add(a: &Ty, b: &Ty) -> Option<Ty> {
    let addable = |t: &Ty| {
        matches!(
            t,
            Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::List(_)
        )
    };
    match (a, b) {
        (Ty::Dyn, Ty::Dyn) => Some(Ty::Dyn),
        (Ty::Dyn, t) | (t, Ty::Dyn) if addable(t) => Some(match t {
            Ty::List(_) => list(Ty::Dyn),
            other => other.clone(),
        }),
        (Ty::List(x), Ty::List(y)) => Some(list(join(x, y))),
        _ if a == b && addable(a) => Some(a.clone()),
        _ => None,
    }
}

fn arith(a: &Ty, b: &Ty, double_ok: bool) -> Option<Ty> {
    let ok = |t: &Ty| matches!(t, Ty::Int | Ty::Uint) || (double_ok && *t == Ty::Double);
    match (a, b) {
        (Ty::Dyn, Ty::Dyn) => Some(Ty::Dyn),
        (Ty::Dyn, t) | (t, Ty::Dyn) if ok(t) => Some(t.clone()),
        _ if a == b && ok(a) => Some(a.clone()),
        _ => None,
    }
}

fn index(container: &Ty, key: &Ty, key_expr: &IdedExpr) -> Result<Ty, String> {
    match container {
        Ty::List(t) => match key {
            Ty::Int | Ty::Uint | Ty::Dyn => Ok((**t).clone()),
            other => Err(format!("a list index must be an int, got '{other}'")),
        },
        Ty::Map(k, v) => {
            if comparable(k, key) {
                Ok((**v).clone())
            } else {
                Err(format!(
                    "a key of type '{key}' cannot be in a map({k}, {v})"
                ))
            }
        }
        Ty::Dyn => Ok(Ty::Dyn),
        Ty::Pod | Ty::Attachment => match &key_expr.expr {
            Expr::Literal(LiteralValue::String(field)) => {
                let field = field.inner();
                let found = if *container == Ty::Pod {
                    pod_field(field)
                } else {
                    attachment_field(field)
                };
                found.ok_or_else(|| format!("undefined field '{field}' of {container}"))
            }
            _ if matches!(key, Ty::String | Ty::Dyn) => Ok(Ty::Dyn),
            _ => Err(format!("a field name must be a string, got '{key}'")),
        },
        other => Err(format!("type '{other}' cannot be indexed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::context::Context;
    use cel::objects::Value;

    fn parse(src: &str) -> IdedExpr {
        cel::parser::PrattParser::new()
            .enable_optional_syntax(true)
            .parse(src)
            .unwrap()
    }

    /// The checker's table and the runtime agree: every declared overload exists in the
    /// environment, and the checker types its sample call with the declared result.
    #[test]
    fn every_declared_overload_exists_at_run_time() {
        let ctx = Context::sample().to_cel();
        let samples = table_samples();
        assert_eq!(samples.len(), SIGS.len());
        for (sig, src) in SIGS.iter().zip(&samples) {
            let ast = parse(src);
            let checked = check(&ast).unwrap_or_else(|e| panic!("{src}: {}", e.message));
            assert_eq!(checked.ty, sig.ret.ty(), "{src}");
            match Value::resolve(&ast, &ctx) {
                Ok(_) => {}
                Err(
                    e @ (cel::ExecutionError::UndeclaredReference(_)
                    | cel::ExecutionError::NoSuchOverload(_)),
                ) => panic!("{src}: {e}"),
                // Data errors (e.g. int('10.0.0.1')) are fine: the overload was found.
                Err(_) => {}
            }
        }
    }

    #[test]
    fn types_of_common_expressions() {
        for (src, ty) in [
            ("pod.labels", map(Ty::String, Ty::String)),
            ("pod.labels.app", Ty::String),
            ("pod.labels[?'app']", opt(Ty::String)),
            ("pod.labels[?'app'].orValue('')", Ty::String),
            ("pod.name.split('-')", list(Ty::String)),
            ("pod.name.split('-')[0]", Ty::String),
            ("[1, 2].map(x, x * 2)", list(Ty::Dyn)),
            ("[1, 'a']", list(Ty::Dyn)),
            ("{'a': 1}", map(Ty::String, Ty::Int)),
            ("true ? 1 : 'a'", Ty::Dyn),
            ("dyn(1) + 1", Ty::Int),
            ("ip('10.0.0.1')", Ty::Ip),
            ("cidr('10.0.0.0/8').masked()", Ty::Cidr),
            ("string(ip('10.0.0.1'))", Ty::String),
            ("pod.labels.exists(k, k == 'a')", Ty::Bool),
            ("pod.labels.exists_one(k, k == 'a')", Ty::Bool),
            ("type(1)", Ty::Type),
            ("strings.quote('a')", Ty::String),
            ("[?optional.of(1)]", list(Ty::Int)),
        ] {
            let checked = check(&parse(src)).unwrap_or_else(|e| panic!("{src}: {}", e.message));
            assert_eq!(checked.ty, ty, "{src}");
        }
    }

    #[test]
    fn qualified_names_yield_to_variables_in_scope() {
        // `ip` is a namespace (ip.isCanonical) unless a comprehension variable shadows it.
        let src = "['10.0.0.1'].all(ip, ip.startsWith('10.'))";
        assert_eq!(check(&parse(src)).unwrap().ty, Ty::Bool);
    }
}
