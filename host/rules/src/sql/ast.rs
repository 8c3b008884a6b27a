//! The parsed form of a statement: what the parser builds and the evaluator walks.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::functions::{Func, Prepared};
use super::value::Value;

/// An expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A literal (`1`, `2.5`, `'text'`, `true`, `null`), folded constants included.
    Literal(Value<'static>),
    /// `*` used as a value: the whole current document (the payload, or the element of a
    /// nested `SELECT`).
    Payload,
    /// A bare name: a key of the current document.
    Field(Box<str>),
    /// `expr.name`
    Member(Box<Expr>, Box<str>),
    /// `expr[index]`, which behaves like `get(expr, index)`.
    Index(Box<Expr>, Box<Expr>),
    /// `-expr`
    Neg(Box<Expr>),
    /// `NOT expr`
    Not(Box<Expr>),
    /// `left op right`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    /// A function call; `prepared` holds what could be worked out at parse time (a compiled
    /// regular expression, a date pattern).
    Call {
        func: Func,
        args: Vec<Expr>,
        prepared: Option<Box<Prepared>>,
    },
    /// `cast(expr AS type)`
    Cast(Box<Expr>, CastType),
    /// `[a, b, ...]`
    Array(Vec<Expr>),
    /// `{'key': expr, ...}`
    Object(Vec<(Box<str>, Expr)>),
    /// `(SELECT ... FROM expr [WHERE ...])`
    Subquery(Box<Subquery>),
}

/// Binary operators, loosest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// The target types of `cast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastType {
    Int,
    Decimal,
    Bool,
    String,
}

/// What a `SELECT` produces.
#[derive(Debug, Clone)]
pub(crate) enum Select {
    /// `SELECT VALUE expr`
    Value(Expr),
    /// `SELECT item, item, ...`
    Items(Vec<Item>),
}

/// One item of a `SELECT` list.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// `*`: every key of the current document.
    Star,
    /// `expr [AS a.b]`; `name` is the alias path, or the name derived from the expression.
    Expr { expr: Expr, name: Vec<Box<str>> },
}

/// The `SELECT` and `WHERE` of a statement or nested query.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub(crate) select: Select,
    pub(crate) filter: Option<Expr>,
}

/// A nested `(SELECT ... FROM expr ...)`: the query runs once per element of `source`.
#[derive(Debug, Clone)]
pub(crate) struct Subquery {
    pub(crate) query: Query,
    pub(crate) source: Expr,
}

impl Expr {
    /// Calls `f` on this expression and every expression inside it.
    pub(crate) fn any(&self, f: &mut impl FnMut(&Expr) -> bool) -> bool {
        if f(self) {
            return true;
        }
        match self {
            Expr::Literal(_) | Expr::Payload | Expr::Field(_) => false,
            Expr::Member(e, _) | Expr::Neg(e) | Expr::Not(e) | Expr::Cast(e, _) => e.any(f),
            Expr::Index(a, b) | Expr::Binary(_, a, b) => a.any(f) || b.any(f),
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => {
                operand.as_ref().is_some_and(|e| e.any(f))
                    || whens.iter().any(|(w, t)| w.any(f) || t.any(f))
                    || otherwise.as_ref().is_some_and(|e| e.any(f))
            }
            Expr::Call { args, .. } | Expr::Array(args) => args.iter().any(|e| e.any(f)),
            Expr::Object(entries) => entries.iter().any(|(_, e)| e.any(f)),
            Expr::Subquery(s) => s.source.any(f) || s.query.any(f),
        }
    }
}

impl Query {
    pub(crate) fn any(&self, f: &mut impl FnMut(&Expr) -> bool) -> bool {
        let select = match &self.select {
            Select::Value(e) => e.any(f),
            Select::Items(items) => items.iter().any(|i| match i {
                Item::Star => false,
                Item::Expr { expr, .. } => expr.any(f),
            }),
        };
        select || self.filter.as_ref().is_some_and(|e| e.any(f))
    }
}

impl Query {
    /// Whether the `SELECT` list has a `*` item.
    fn selects_star(&self) -> bool {
        matches!(&self.select, Select::Items(items) if items.iter().any(|i| matches!(i, Item::Star)))
    }
}

/// Top-level payload keys, as [`Reads`] finds them.
pub(crate) type PayloadKeys = Arc<[Box<str>]>;

/// The top-level keys of the payload a statement or template may read, worked out once at
/// parse time so a message's payload is parsed into only those members (see
/// [`super::eval::Ctx`]). Over-approximate by design: names inside nested queries count too,
/// though most name keys of an array's elements; a key too many costs a little parse time, a
/// key too few would be a wrong answer.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    keys: Vec<Box<str>>,
    /// `*` read as a value or selected as an item, anywhere: the whole document.
    whole: bool,
}

impl Reads {
    pub(crate) fn query(&mut self, query: &Query) {
        self.whole |= query.selects_star();
        query.any(&mut |e| {
            self.note(e);
            false
        });
    }

    pub(crate) fn expr(&mut self, expr: &Expr) {
        expr.any(&mut |e| {
            self.note(e);
            false
        });
    }

    fn note(&mut self, e: &Expr) {
        match e {
            Expr::Payload => self.whole = true,
            Expr::Field(name) if !self.keys.contains(name) => self.keys.push(name.clone()),
            Expr::Subquery(s) => self.whole |= s.query.selects_star(),
            _ => {}
        }
    }

    /// The keys read, or `None` when the whole document may be. Statements and templates
    /// that read the same keys share one list, so a message's partly parsed payload is
    /// recognised as theirs by address (see [`super::eval::Ctx::doc_for`]), not key by key.
    pub(crate) fn keys(mut self) -> Option<PayloadKeys> {
        if self.whole {
            return None;
        }
        self.keys.sort_unstable();
        Some(intern(self.keys))
    }
}

/// The one shared list of `keys` (sorted): the live list with these keys, or a new one.
/// Lists no statement holds any more are forgotten on the way.
fn intern(keys: Vec<Box<str>>) -> PayloadKeys {
    static LISTS: Mutex<Vec<Weak<[Box<str>]>>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock();
    lists.retain(|w| w.strong_count() > 0);
    if let Some(shared) = lists.iter().find_map(|w| w.upgrade().filter(|l| **l == *keys)) {
        return shared;
    }
    let list: PayloadKeys = keys.into();
    lists.push(Arc::downgrade(&list));
    list
}
