//! Compiled rules as bytes, so that a short-lived process can keep what it compiled for the next
//! one. The CNI plugin is a fresh process on every ADD: parsing, type-checking, instrumenting
//! and trial-running 100 rules cost such a process about 0.45 ms; reading them back from the
//! cache a tenth of that, and the validation is not repeated (see `docs/rules.md`, Performance).
//!
//! What is stored is the output of [`compile`](super::compile) for a whole set, per rule: the
//! spec it was compiled from and the instrumented program of each expression, with the
//! [`RulesFingerprint`] of the rules in etcd the set was compiled from. Two ways to read it:
//!
//! - [`decode_all`] (`RuleSet::from_cache`): the whole set, for a caller that has read only the
//!   rules' fingerprint from etcd, when it is the one the cache was written with: the rules are
//!   then those the set was compiled from. The programs stay encoded until they run (each is
//!   decoded on its first evaluation), so a process decodes only what it evaluates.
//! - [`index`] and [`decode_rule`] (`RuleSet::from_mirrored_cached`): rule by rule, for a caller
//!   that has read the rules; a cached rule is used only for a spec equal to the one just read.
//!
//! Either way the cache can be stale or missing without changing a decision: it only ever saves
//! the work of compiling the same specs again.
//!
//! The bytes are not a format for anyone else: they are tied to the build that wrote them (the
//! caller's `build` identity, this crate's version and [`FORMAT`] are checked first), carry a
//! checksum of their content, and are decoded defensively — any mismatch, truncation or
//! implausible value makes the whole cache unusable, and the caller compiles instead. A program
//! is written only once it has been seen to decode, so that decoding it later, lazily, cannot
//! fail on bytes that passed the checksum.
//!
//! Layout (integers are LEB128 varints, `i64` zigzag-encoded, strings and blobs length-prefixed):
//! `MAGIC`, the identity string, the checksum of the payload (8 bytes), the payload. The payload
//! is the fingerprint (count, highest revision), the rule count, then per rule its name and its
//! entry as a blob, so that an entry is decoded only for a rule that is read: the spec field by
//! field, then the expressions in field order (`match`, `ip`, `mac`, `sticky.key` where the spec
//! has them), each as a `needs_metadata` byte, its shortcut (`super::shortcut`: none, a
//! literal, or a field and the value it must have) and the expression tree in prefix order, as
//! a blob.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedEntryExpr, IdedExpr, ListExpr, LiteralValue,
    MapEntryExpr, MapExpr, SelectExpr, StructExpr, StructFieldExpr,
};
use cel::common::types::{CelBool, CelBytes, CelDouble, CelInt, CelString, CelUInt};

use super::engine::CompiledRule;
use super::expr::{CompiledExpr, Want};
use super::fingerprint::RulesFingerprint;
use super::shortcut::{Field, Shortcut};
use super::spec::{AllocationRuleSpec, DenySpec, StickySpec};

/// Bumped whenever the layout, or what compiling produces, changes in a way the crate version
/// would not show.
pub(crate) const FORMAT: u32 = 2;

const MAGIC: &[u8; 8] = b"smv-rule";

/// Deeper trees are not read back, so that decoding stays well within any thread's stack (in a
/// debug build too). No real rule comes near; a deeper one is compiled on every ADD instead.
const MAX_DEPTH: usize = 512;

/// A 64-bit checksum of `bytes`, against damage (the file's owner and mode are what make it
/// trusted: whoever could write it could as well write a matching SHA-256). Each step, on a
/// 64-bit word, is a bijection of the running value for a given word and of the word for a given
/// running value, so a change within one word always changes the sum; other damage (several
/// words, another length) goes unnoticed with a chance of about 2^-64, and the decoder's own
/// checks remain. Unlike SHA-256, it costs a fresh process neither the CPU feature detection (a
/// `cpuid`, slow in a virtual machine) nor the time.
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| {
        let x = (h ^ word).wrapping_mul(K);
        x ^ (x >> 29)
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut h = mix(0, bytes.len() as u64);
    for chunk in &mut chunks {
        h = mix(h, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h, u64::from_le_bytes(tail))
}

/// The identity a cache must carry to be read by this build.
fn identity(build: &str) -> String {
    format!(
        "{} {} format {FORMAT}; {build}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    )
}

/// Encodes compiled rules, the whole set compiled from the rules that had `fingerprint` in
/// etcd, for [`index`], [`decode_rule`] and [`decode_all`] in a process of the same build.
///
/// A program that would not decode (deeper than [`MAX_DEPTH`]) leaves its rule out: that rule
/// is compiled by each process that needs it, and the cache no longer holds the whole set.
pub(crate) fn encode(
    rules: &[CompiledRule],
    build: &str,
    fingerprint: &RulesFingerprint,
) -> Vec<u8> {
    let mut payload = Writer::default();
    payload.int(fingerprint.count);
    payload.int(fingerprint.max_mod_revision);
    let mut entries = Writer::default();
    let mut count = 0u64;
    let mut entry = Writer::default();
    let mut tree = Writer::default();
    'rules: for rule in rules {
        entry.bytes.clear();
        entry.spec(rule.spec());
        for e in rule.exprs() {
            entry.byte(u8::from(e.needs_metadata));
            entry.shortcut(e.shortcut.as_ref());
            let encoded = match (e.encoding(), e.program()) {
                (Some(encoded), _) => encoded,
                (None, Some(program)) => {
                    tree.bytes.clear();
                    tree.expr(program);
                    // Read back lazily, by a process that must then be able to decode it.
                    if decode_tree(&tree.bytes).is_none() {
                        continue 'rules;
                    }
                    &tree.bytes
                }
                (None, None) => continue 'rules,
            };
            entry.blob(encoded);
        }
        entries.str(rule.name());
        entries.blob(&entry.bytes);
        count += 1;
    }
    payload.uint(count);
    payload.bytes.extend_from_slice(&entries.bytes);
    let mut out = Writer::default();
    out.bytes.extend_from_slice(MAGIC);
    out.str(&identity(build));
    out.bytes
        .extend_from_slice(&checksum(&payload.bytes).to_le_bytes());
    out.bytes.extend_from_slice(&payload.bytes);
    out.bytes
}

/// The payload of a cache [`encode`] wrote with the same `build`, checksum verified, and the
/// fingerprint it was written with; the reader is left at the rule count.
fn open<'a>(bytes: &'a [u8], build: &str) -> Option<(RulesFingerprint, Reader<'a>)> {
    let mut r = Reader::new(bytes);
    if r.take(MAGIC.len())? != MAGIC || r.str_ref()? != identity(build) {
        return None;
    }
    let sum = r.take(8)?;
    if checksum(r.bytes).to_le_bytes() != sum {
        return None;
    }
    let fingerprint = RulesFingerprint {
        count: r.int()?,
        max_mod_revision: r.int()?,
    };
    Some((fingerprint, r))
}

/// The entries of a cache [`encode`] wrote with the same `build`, by rule name, still encoded
/// ([`decode_rule`] decodes one when it is needed), and the fingerprint it was written with.
/// `None` when the bytes are of another build, corrupt or truncated: the caller compiles
/// instead.
pub(crate) fn index<'a>(
    bytes: &'a [u8],
    build: &str,
) -> Option<(RulesFingerprint, HashMap<&'a str, &'a [u8]>)> {
    let (fingerprint, mut r) = open(bytes, build)?;
    let count = r.len()?;
    let mut entries = HashMap::with_capacity(count);
    for _ in 0..count {
        let name = r.str_ref()?;
        let entry = r.blob()?;
        entries.insert(name, entry);
    }
    r.bytes.is_empty().then_some((fingerprint, entries))
}

/// Every rule of a cache [`encode`] wrote with the same `build` and `fingerprint`: the whole set
/// compiled from the rules that had this fingerprint. The specs are decoded, the programs are
/// not: each is decoded from `cache` when first run. `None` for another fingerprint, another
/// build, damaged bytes, or when a rule is missing (the fingerprint counts them).
pub(crate) fn decode_all(
    cache: Arc<Vec<u8>>,
    build: &str,
    fingerprint: &RulesFingerprint,
) -> Option<Vec<CompiledRule>> {
    let (written, mut r) = open(&cache, build)?;
    let count = r.len()?;
    if written != *fingerprint || i64::try_from(count).ok()? != fingerprint.count {
        return None;
    }
    // Sized once: growing it would copy, and touch pages a fresh process must fault in.
    let mut rules = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.str_ref()?;
        let mut entry = r.sub()?;
        let spec = entry.spec()?;
        let rule = entry.rule(name, spec, Some(&cache))?;
        if !entry.bytes.is_empty() {
            return None;
        }
        rules.push(rule);
    }
    r.bytes.is_empty().then_some(rules)
}

/// The rule `name` compiled from `spec`, from its cache entry, if the entry was compiled from
/// an equal spec (and decodes).
pub(crate) fn decode_rule(
    entry: &[u8],
    name: &str,
    spec: &AllocationRuleSpec,
) -> Option<CompiledRule> {
    let mut r = Reader::new(entry);
    let cached = r.spec()?;
    if cached != *spec {
        return None;
    }
    let rule = r.rule(name, cached, None)?;
    r.bytes.is_empty().then_some(rule)
}

/// A program as [`Writer::expr`] wrote it, whole.
pub(crate) fn decode_tree(bytes: &[u8]) -> Option<IdedExpr> {
    let mut r = Reader::new(bytes);
    let tree = r.expr()?;
    r.bytes.is_empty().then_some(tree)
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn byte(&mut self, b: u8) {
        self.bytes.push(b);
    }

    fn uint(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.bytes.push(low);
                return;
            }
            self.bytes.push(low | 0x80);
        }
    }

    fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn blob(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.bytes.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.blob(s.as_bytes());
    }

    fn shortcut(&mut self, shortcut: Option<&Shortcut>) {
        match shortcut {
            None => self.byte(0),
            Some(Shortcut::Always(b)) => {
                self.byte(1);
                self.byte(u8::from(*b));
            }
            Some(Shortcut::Requires { field, value }) => {
                self.byte(2);
                self.byte(field.code());
                self.str(value);
            }
        }
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.byte(1);
                self.str(s);
            }
            None => self.byte(0),
        }
    }

    fn spec(&mut self, spec: &AllocationRuleSpec) {
        // Destructured so that a new field cannot be forgotten here.
        let AllocationRuleSpec {
            priority,
            r#match,
            subnet,
            subnets,
            ip,
            mac,
            deny,
            sticky,
        } = spec;
        self.int(i64::from(*priority));
        self.str(r#match);
        self.opt_str(subnet.as_deref());
        match subnets {
            Some(list) => {
                self.byte(1);
                self.uint(list.len() as u64);
                list.iter().for_each(|s| self.str(s));
            }
            None => self.byte(0),
        }
        self.opt_str(ip.as_deref());
        self.opt_str(mac.as_deref());
        self.opt_str(deny.as_ref().map(|DenySpec { message }| message.as_str()));
        match sticky {
            Some(StickySpec { key, hold_seconds }) => {
                self.byte(1);
                self.opt_str(key.as_deref());
                self.uint(u64::from(*hold_seconds));
            }
            None => self.byte(0),
        }
    }

    fn expr(&mut self, e: &IdedExpr) {
        self.uint(e.id);
        match &e.expr {
            Expr::Unspecified => self.byte(0),
            Expr::Call(c) => {
                self.byte(1);
                self.str(&c.func_name);
                match &c.target {
                    Some(t) => {
                        self.byte(1);
                        self.expr(t);
                    }
                    None => self.byte(0),
                }
                self.uint(c.args.len() as u64);
                c.args.iter().for_each(|a| self.expr(a));
            }
            Expr::Comprehension(c) => {
                self.byte(2);
                self.expr(&c.iter_range);
                self.str(&c.iter_var);
                self.opt_str(c.iter_var2.as_deref());
                self.str(&c.accu_var);
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.expr(part);
                }
            }
            Expr::Ident(name) => {
                self.byte(3);
                self.str(name);
            }
            Expr::List(l) => {
                self.byte(4);
                self.uint(l.elements.len() as u64);
                l.elements.iter().for_each(|x| self.expr(x));
                self.uint(l.optional_indices.len() as u64);
                l.optional_indices.iter().for_each(|i| self.uint(*i as u64));
            }
            Expr::Literal(v) => {
                self.byte(5);
                match v {
                    LiteralValue::Boolean(b) => {
                        self.byte(0);
                        self.byte(u8::from(*b.inner()));
                    }
                    LiteralValue::Bytes(b) => {
                        self.byte(1);
                        self.blob(b.inner());
                    }
                    LiteralValue::Double(d) => {
                        self.byte(2);
                        self.bytes
                            .extend_from_slice(&d.inner().to_bits().to_le_bytes());
                    }
                    LiteralValue::Int(i) => {
                        self.byte(3);
                        self.int(*i.inner());
                    }
                    LiteralValue::Null => self.byte(4),
                    LiteralValue::String(s) => {
                        self.byte(5);
                        self.str(s.inner());
                    }
                    LiteralValue::UInt(u) => {
                        self.byte(6);
                        self.uint(*u.inner());
                    }
                }
            }
            Expr::Map(m) => {
                self.byte(6);
                self.entries(&m.entries);
            }
            Expr::Select(s) => {
                self.byte(7);
                self.expr(&s.operand);
                self.str(&s.field);
                self.byte(u8::from(s.test));
            }
            Expr::Struct(s) => {
                self.byte(8);
                self.str(&s.type_name);
                self.entries(&s.entries);
            }
        }
    }

    fn entries(&mut self, entries: &[IdedEntryExpr]) {
        self.uint(entries.len() as u64);
        for entry in entries {
            self.uint(entry.id);
            match &entry.expr {
                EntryExpr::StructField(f) => {
                    self.byte(0);
                    self.str(&f.field);
                    self.byte(u8::from(f.optional));
                    self.expr(&f.value);
                }
                EntryExpr::MapEntry(m) => {
                    self.byte(1);
                    self.byte(u8::from(m.optional));
                    self.expr(&m.key);
                    self.expr(&m.value);
                }
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked and `None` on anything unexpected.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Where `bytes` start in what the first reader was given.
    at: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            at: 0,
            depth: 0,
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        self.at += n;
        Some(head)
    }

    /// A reader of the next blob, positioned as it is in what the first reader was given.
    fn sub(&mut self) -> Option<Reader<'a>> {
        let n = self.len()?;
        let at = self.at;
        Some(Reader {
            bytes: self.take(n)?,
            at,
            depth: 0,
        })
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn uint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte holds the top bit alone: anything more does not fit.
            if shift == 63 && bits > 1 {
                return None;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn int(&mut self) -> Option<i64> {
        let v = self.uint()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of things still to read: each takes at least one byte, so a count larger than
    /// what is left is corrupt (and would otherwise reserve unbounded memory).
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.uint()?).ok()?;
        (n <= self.bytes.len()).then_some(n)
    }

    fn blob(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn str_ref(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.blob()?).ok()
    }

    fn str(&mut self) -> Option<String> {
        Some(self.str_ref()?.to_owned())
    }

    fn opt_str(&mut self) -> Option<Option<String>> {
        if self.flag()? {
            Some(Some(self.str()?))
        } else {
            Some(None)
        }
    }

    /// The spec [`Writer::spec`] wrote.
    fn spec(&mut self) -> Option<AllocationRuleSpec> {
        let priority = i32::try_from(self.int()?).ok()?;
        let r#match = self.str()?;
        let subnet = self.opt_str()?;
        let subnets = if self.flag()? {
            let n = self.len()?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(self.str()?);
            }
            Some(list)
        } else {
            None
        };
        let ip = self.opt_str()?;
        let mac = self.opt_str()?;
        let deny = self.opt_str()?.map(|message| DenySpec { message });
        let sticky = if self.flag()? {
            let key = self.opt_str()?;
            let hold_seconds = u32::try_from(self.uint()?).ok()?;
            Some(StickySpec { key, hold_seconds })
        } else {
            None
        };
        Some(AllocationRuleSpec {
            priority,
            r#match,
            subnet,
            subnets,
            ip,
            mac,
            deny,
            sticky,
        })
    }

    /// The rule `name` compiled from `spec`: its expressions, in field order. With `cache`,
    /// the one this reader reads, the programs are left encoded in it, to be decoded when run.
    fn rule(
        &mut self,
        name: &str,
        spec: AllocationRuleSpec,
        cache: Option<&Arc<Vec<u8>>>,
    ) -> Option<CompiledRule> {
        let matcher = self.compiled(Want::Bool, cache)?;
        let ip = match &spec.ip {
            Some(_) => Some(self.compiled(Want::String, cache)?),
            None => None,
        };
        let mac = match &spec.mac {
            Some(_) => Some(self.compiled(Want::String, cache)?),
            None => None,
        };
        let sticky_key = match &spec.sticky {
            Some(_) => Some(self.compiled(Want::String, cache)?),
            None => None,
        };
        Some(CompiledRule::from_parts(
            name.to_owned(),
            spec,
            matcher,
            ip,
            mac,
            sticky_key,
        ))
    }

    fn compiled(&mut self, want: Want, cache: Option<&Arc<Vec<u8>>>) -> Option<CompiledExpr> {
        let needs_metadata = self.flag()?;
        let shortcut = self.shortcut()?;
        // Only a `match` has one.
        if shortcut.is_some() && want != Want::Bool {
            return None;
        }
        let tree = self.sub()?;
        Some(match cache {
            Some(cache) => CompiledExpr::encoded(
                Arc::clone(cache),
                tree.at..tree.at + tree.bytes.len(),
                want,
                needs_metadata,
                shortcut,
            ),
            None => {
                CompiledExpr::from_parts(decode_tree(tree.bytes)?, want, needs_metadata, shortcut)
            }
        })
    }

    /// What [`Writer::shortcut`] wrote.
    fn shortcut(&mut self) -> Option<Option<Shortcut>> {
        Some(match self.byte()? {
            0 => None,
            1 => Some(Shortcut::Always(self.flag()?)),
            2 => Some(Shortcut::Requires {
                field: Field::from_code(self.byte()?)?,
                value: self.str()?,
            }),
            _ => return None,
        })
    }

    // The tree is read recursively, one small function per kind of node: a recursion step
    // holds only that kind's locals, where one large `match` would hold every arm's.

    fn expr(&mut self) -> Option<IdedExpr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let id = self.uint()?;
        let expr = match self.byte()? {
            0 => Expr::Unspecified,
            1 => self.call()?,
            2 => self.comprehension()?,
            3 => Expr::Ident(self.str()?),
            4 => self.list()?,
            5 => Expr::Literal(self.literal()?),
            6 => Expr::Map(MapExpr {
                entries: self.entries()?,
            }),
            7 => self.select()?,
            8 => Expr::Struct(StructExpr {
                type_name: self.str()?,
                entries: self.entries()?,
            }),
            _ => return None,
        };
        self.depth -= 1;
        Some(IdedExpr { id, expr })
    }

    #[inline(never)]
    fn call(&mut self) -> Option<Expr> {
        let func_name = self.str()?;
        let target = if self.flag()? {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        let n = self.len()?;
        let args = self.exprs(n)?;
        Some(Expr::Call(CallExpr {
            func_name,
            target,
            args,
        }))
    }

    #[inline(never)]
    fn comprehension(&mut self) -> Option<Expr> {
        let iter_range = self.expr()?;
        let iter_var = self.str()?;
        let iter_var2 = self.opt_str()?;
        let accu_var = self.str()?;
        Some(Expr::Comprehension(Box::new(ComprehensionExpr {
            iter_range,
            iter_var,
            iter_var2,
            accu_var,
            accu_init: self.expr()?,
            loop_cond: self.expr()?,
            loop_step: self.expr()?,
            result: self.expr()?,
        })))
    }

    #[inline(never)]
    fn list(&mut self) -> Option<Expr> {
        let n = self.len()?;
        let elements = self.exprs(n)?;
        let m = self.len()?;
        let mut optional_indices = Vec::with_capacity(m);
        for _ in 0..m {
            let i = usize::try_from(self.uint()?).ok()?;
            optional_indices.push((i < elements.len()).then_some(i)?);
        }
        Some(Expr::List(ListExpr {
            elements,
            optional_indices,
        }))
    }

    #[inline(never)]
    fn literal(&mut self) -> Option<LiteralValue> {
        Some(match self.byte()? {
            0 => LiteralValue::Boolean(CelBool::from(self.flag()?)),
            1 => LiteralValue::Bytes(CelBytes::from(self.blob()?.to_vec())),
            2 => {
                let bits = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
                LiteralValue::Double(CelDouble::from(f64::from_bits(bits)))
            }
            3 => LiteralValue::Int(CelInt::from(self.int()?)),
            4 => LiteralValue::Null,
            5 => LiteralValue::String(CelString::from(self.str()?)),
            6 => LiteralValue::UInt(CelUInt::from(self.uint()?)),
            _ => return None,
        })
    }

    #[inline(never)]
    fn select(&mut self) -> Option<Expr> {
        let operand = Box::new(self.expr()?);
        let field = self.str()?;
        let test = self.flag()?;
        Some(Expr::Select(SelectExpr {
            operand,
            field,
            test,
        }))
    }

    /// `n` expressions into a vector of exactly that capacity (collecting into an `Option`
    /// cannot size it, and the slack would be pages to fault in, in a process that lives for
    /// one ADD).
    fn exprs(&mut self, n: usize) -> Option<Vec<IdedExpr>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.expr()?);
        }
        Some(out)
    }

    #[inline(never)]
    fn entries(&mut self) -> Option<Vec<IdedEntryExpr>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.entry()?);
        }
        Some(out)
    }

    fn entry(&mut self) -> Option<IdedEntryExpr> {
        let id = self.uint()?;
        let expr = match self.byte()? {
            0 => {
                let field = self.str()?;
                let optional = self.flag()?;
                let value = self.expr()?;
                EntryExpr::StructField(StructFieldExpr {
                    field,
                    value,
                    optional,
                })
            }
            1 => {
                let optional = self.flag()?;
                let key = self.expr()?;
                let value = self.expr()?;
                EntryExpr::MapEntry(MapEntryExpr {
                    key,
                    value,
                    optional,
                })
            }
            _ => return None,
        };
        Some(IdedEntryExpr { id, expr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile;
    use crate::rules::spec::DEFAULT_STICKY_KEY;

    fn whole(
        bytes: &[u8],
        build: &str,
        fingerprint: &RulesFingerprint,
    ) -> Option<Vec<CompiledRule>> {
        decode_all(Arc::new(bytes.to_vec()), build, fingerprint)
    }

    fn fp(count: i64) -> RulesFingerprint {
        RulesFingerprint {
            count,
            max_mod_revision: 40 + count,
        }
    }

    fn spec(r#match: &str) -> AllocationRuleSpec {
        AllocationRuleSpec {
            r#match: r#match.to_owned(),
            subnet: Some("lan".to_owned()),
            ..AllocationRuleSpec::default()
        }
    }

    /// Every kind of node the parser and the instrumentation produce, and every literal.
    const CORPUS: &[&str] = &[
        "true",
        "pod.namespace == 'db' && has(pod.labels.app) || 'x' in pod.annotations",
        "pod.labels[?'tier'].orValue('none') != 'db' ? attachment.ifname == 'x' : false",
        "[1, 2, 3].map(x, x * 2).filter(y, y > 2).exists(z, z == 4)",
        "{'a': 1, 'b': 2}.all(k, k.size() == 1) && !false && -1 < 2u + 0u",
        "{?'a': optional.of(1)}.size() == 1 && [?optional.none(), 1].size() == 1",
        "cidr('10.0.0.0/8').containsIP(ip('10.1.2.3')) && b'\\x00\\xff' != b'y'",
        "1.5e3 > -0.25 && null == null && type(1) == int && 18446744073709551615u > 0u",
        "pod.name.matches('^web-[0-9]+$') && pod.?name.hasValue() && 'héllo'.size() == 5",
        "'a.b'.replace('.', '-') + ['a'].join(',') + '%s'.format(['x']) != ''",
        "[[1], [2]].exists(l, l.exists(x, x == 2)) && [pod.labels, pod.annotations].size() == 2",
        "-9223372036854775807 - 1 < 0 && 0.0 == -0.0",
    ];

    fn round_trip(name: &str, spec: &AllocationRuleSpec) {
        let compiled = compile(name, spec).unwrap();
        let bytes = encode(std::slice::from_ref(&compiled), "test", &fp(1));
        let (_, index) = index(&bytes, "test").unwrap();
        let decoded = decode_rule(index[name], name, spec).unwrap();
        let all = whole(&bytes, "test", &fp(1)).unwrap();
        let [read] = &all[..] else { panic!("one rule") };
        assert_eq!(read.spec(), spec, "the spec is read back in full");
        assert_eq!(decoded.spec(), compiled.spec());
        for other in [&decoded, read] {
            assert_eq!(other.exprs().count(), compiled.exprs().count(), "{spec:?}");
            for (a, b) in compiled.exprs().zip(other.exprs()) {
                assert!(a.program().is_some());
                assert_eq!(a.program(), b.program(), "{spec:?}");
                assert_eq!(a.needs_metadata, b.needs_metadata, "{spec:?}");
                assert_eq!(a.shortcut, b.shortcut, "{spec:?}");
            }
        }
        // Written back without being decoded, then decoded: the same bytes.
        let lazy = whole(&bytes, "test", &fp(1)).unwrap();
        assert_eq!(encode(&lazy, "test", &fp(1)), bytes);
    }

    #[test]
    fn the_compiled_programs_come_back_identical() {
        for src in CORPUS {
            round_trip("r", &spec(src));
        }
        // Every action, the default sticky key, a chain.
        let full = AllocationRuleSpec {
            priority: -7,
            r#match: "pod.namespace == 'db'".into(),
            subnet: None,
            subnets: Some(vec!["a".into(), "b".into()]),
            ip: Some("'10.0.0.' + string(1 + 2)".into()),
            mac: Some("''".into()),
            deny: None,
            sticky: Some(StickySpec {
                key: None,
                hold_seconds: 60,
            }),
        };
        round_trip("full", &full);
        let keyed = AllocationRuleSpec {
            sticky: Some(StickySpec {
                key: Some("pod.uid".into()),
                hold_seconds: 1,
            }),
            ..full
        };
        round_trip("keyed", &keyed);
        let deny = AllocationRuleSpec {
            r#match: "true".into(),
            deny: Some(DenySpec {
                message: "no".into(),
            }),
            ..AllocationRuleSpec::default()
        };
        round_trip("deny", &deny);
        let chain = format!("0{} == 20", " + 1".repeat(20));
        round_trip("chain", &spec(&chain));
    }

    #[test]
    fn struct_literals_round_trip() {
        // The checker refuses them, so no compiled rule has one; the format still covers them.
        let e = IdedExpr {
            id: 3,
            expr: Expr::Struct(StructExpr {
                type_name: "T".into(),
                entries: vec![IdedEntryExpr {
                    id: 2,
                    expr: EntryExpr::StructField(StructFieldExpr {
                        field: "f".into(),
                        value: IdedExpr {
                            id: 1,
                            expr: Expr::Unspecified,
                        },
                        optional: true,
                    }),
                }],
            }),
        };
        let mut w = Writer::default();
        w.expr(&e);
        assert_eq!(Reader::new(&w.bytes).expr(), Some(e));
    }

    #[test]
    fn a_different_spec_is_not_taken_from_the_cache() {
        let base = AllocationRuleSpec {
            ip: Some("''".into()),
            sticky: Some(StickySpec {
                key: None,
                hold_seconds: 60,
            }),
            ..spec("true")
        };
        let bytes = encode(&[compile("r", &base).unwrap()], "b", &fp(1));
        let entry = index(&bytes, "b").unwrap().1["r"];
        assert!(decode_rule(entry, "r", &base).is_some());
        let variants = [
            AllocationRuleSpec {
                priority: 1,
                ..base.clone()
            },
            AllocationRuleSpec {
                r#match: "true ".into(),
                ..base.clone()
            },
            AllocationRuleSpec {
                subnet: Some("lan2".into()),
                ..base.clone()
            },
            AllocationRuleSpec {
                subnet: None,
                subnets: Some(vec!["lan".into()]),
                ..base.clone()
            },
            AllocationRuleSpec {
                ip: None,
                ..base.clone()
            },
            AllocationRuleSpec {
                mac: Some("''".into()),
                ..base.clone()
            },
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: None,
                    hold_seconds: 61,
                }),
                ..base.clone()
            },
            AllocationRuleSpec {
                sticky: Some(StickySpec {
                    key: Some(DEFAULT_STICKY_KEY.into()),
                    hold_seconds: 60,
                }),
                ..base.clone()
            },
            AllocationRuleSpec {
                sticky: None,
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v, &base);
            assert!(decode_rule(entry, "r", v).is_none(), "{v:?}");
        }
    }

    #[test]
    fn the_whole_set_is_read_only_for_the_fingerprint_it_was_written_with() {
        let rules = [
            compile("a", &spec("pod.name == 'a'")).unwrap(),
            compile("b", &spec("true")).unwrap(),
        ];
        let written = RulesFingerprint {
            count: 2,
            max_mod_revision: 17,
        };
        let bytes = encode(&rules, "b", &written);
        let all = whole(&bytes, "b", &written).unwrap();
        let names: Vec<&str> = all.iter().map(CompiledRule::name).collect();
        assert_eq!(names, ["a", "b"]);
        for other in [
            RulesFingerprint {
                count: 2,
                max_mod_revision: 18,
            },
            RulesFingerprint {
                count: 1,
                max_mod_revision: 17,
            },
            RulesFingerprint::EMPTY,
        ] {
            assert!(whole(&bytes, "b", &other).is_none(), "{other:?}");
        }
        // A cache that holds fewer rules than the fingerprint counts is not the whole set.
        let partial = encode(&rules[..1], "b", &written);
        assert!(whole(&partial, "b", &written).is_none());
        assert_eq!(index(&partial, "b").unwrap().0, written);
    }

    #[test]
    fn another_build_or_damaged_bytes_are_refused() {
        let rules: Vec<CompiledRule> = CORPUS
            .iter()
            .enumerate()
            .map(|(i, src)| compile(&format!("r{i}"), &spec(src)).unwrap())
            .collect();
        let n = CORPUS.len() as i64;
        let bytes = encode(&rules, "b", &fp(n));
        assert_eq!(index(&bytes, "b").unwrap().1.len(), CORPUS.len());
        assert_eq!(whole(&bytes, "b", &fp(n)).unwrap().len(), CORPUS.len());
        assert!(whole(&bytes, "other", &fp(n)).is_none());
        assert!(index(&bytes, "other").is_none());
        assert!(index(&[], "b").is_none());
        for cut in 0..bytes.len() {
            assert!(index(&bytes[..cut], "b").is_none(), "cut at {cut}");
            assert!(whole(&bytes[..cut], "b", &fp(n)).is_none(), "cut at {cut}");
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(index(&extended, "b").is_none());
        for i in (0..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x20;
            assert!(index(&damaged, "b").is_none(), "byte {i}");
            assert!(whole(&damaged, "b", &fp(n)).is_none(), "byte {i}");
        }
    }

    /// Below the checksum, decoding must still fail cleanly on anything: every truncation and
    /// many byte changes of real entries, and deep or huge claims.
    #[test]
    fn decoding_damaged_entries_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (i, src) in CORPUS.iter().enumerate() {
            let name = format!("r{i}");
            let s = spec(src);
            let bytes = encode(&[compile(&name, &s).unwrap()], "b", &fp(1));
            let entry = index(&bytes, "b").unwrap().1[name.as_str()].to_vec();
            for cut in 0..entry.len() {
                assert!(decode_rule(&entry[..cut], &name, &s).is_none());
            }
            for _ in 0..2000 {
                let mut damaged = entry.clone();
                let at = next() as usize % damaged.len();
                damaged[at] = next() as u8;
                let _ = decode_rule(&damaged, &name, &s);
                let mut r = Reader::new(&damaged);
                if let Some(spec) = r.spec() {
                    let _ = r.rule(&name, spec, None);
                }
            }
            for cut in 0..entry.len() {
                let mut r = Reader::new(&entry[..cut]);
                if let Some(spec) = r.spec() {
                    assert!(r.rule(&name, spec, None).is_none(), "cut at {cut}");
                }
            }
        }
        // Too deep, and counts larger than the input.
        let mut deep = Writer::default();
        for _ in 0..MAX_DEPTH + 1 {
            deep.uint(1);
            deep.byte(7);
        }
        assert_eq!(Reader::new(&deep.bytes).expr(), None);
        let mut huge = Writer::default();
        huge.uint(1);
        huge.byte(4);
        huge.uint(u64::MAX);
        assert_eq!(Reader::new(&huge.bytes).expr(), None);
        let mut overlong = Writer::default();
        overlong.bytes.extend_from_slice(&[0xff; 11]);
        assert_eq!(Reader::new(&overlong.bytes).uint(), None);
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(Reader::new(&too_big).uint(), None);
    }

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 300, -300] {
            let mut w = Writer::default();
            w.int(v);
            let mut r = Reader::new(&w.bytes);
            assert_eq!(r.int(), Some(v));
            assert!(r.bytes.is_empty());
        }
        for v in [0u64, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut w = Writer::default();
            w.uint(v);
            assert_eq!(Reader::new(&w.bytes).uint(), Some(v));
        }
    }
}
