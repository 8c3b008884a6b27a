//! Operators, following the tables of AWS's "Operators" page.
//!
//! - Arithmetic: `Int op Int` is an `Int` (integer division truncates), any `Decimal` makes a
//!   `Decimal`, numeric strings convert to `Decimal` (`"5" - 2` is `3`), anything else is
//!   `Undefined`. `+` with a `String` on either side concatenates instead (`"5" + 2` is
//!   `"52"`): AWS documents `+` as overloaded. Division or remainder by zero is `Undefined`;
//!   an `Int` overflow continues as a `Decimal`.
//! - `=` and `<>` compare numbers by value (`1 = 1.0`), strings, booleans, `null`, arrays
//!   (in order) and objects (in any key order); values of different types are unequal
//!   (`"5" = 5` is false); `Undefined` on either side gives `Undefined`.
//! - `<`, `<=`, `>`, `>=` convert both sides to `Decimal` (numeric strings included) and are
//!   `Undefined` otherwise; AWS defines no ordering of strings.
//! - `AND`, `OR`, `NOT` accept booleans and the strings "true"/"false"; other operands are
//!   unknown, combined by three-valued logic (`false AND x` is false, `true OR x` is true,
//!   anything else unknown is `Undefined`).

use std::borrow::Cow;
use std::cmp::Ordering;

use super::ast::BinOp;
use super::eval::discard;
use super::value::{Num, Value, lookup, round_decimal, to_bool, to_str};

/// Applies an arithmetic, comparison, `IN` or `CONTAINS` operator (not `AND`/`OR`, which
/// the evaluator short-circuits).
pub(crate) fn binary<'a>(op: BinOp, l: &Value<'_>, r: &Value<'_>) -> Value<'a> {
    if l.is_undefined() || r.is_undefined() {
        return Value::Undefined;
    }
    let b = |o: Option<bool>| match o {
        Some(b) => Value::Bool(b),
        None => Value::Undefined,
    };
    match op {
        BinOp::Eq => Value::Bool(equals(l, r)),
        BinOp::Ne => Value::Bool(!equals(l, r)),
        BinOp::Lt => b(compare(l, r).map(Ordering::is_lt)),
        BinOp::Le => b(compare(l, r).map(Ordering::is_le)),
        BinOp::Gt => b(compare(l, r).map(Ordering::is_gt)),
        BinOp::Ge => b(compare(l, r).map(Ordering::is_ge)),
        BinOp::In => match r.get() {
            Value::Array(items) => Value::Bool(items.iter().any(|i| equals(l, i))),
            _ => Value::Undefined,
        },
        BinOp::Contains => match (l.get(), r.get()) {
            (Value::Array(items), _) => Value::Bool(items.iter().any(|i| equals(i, r))),
            (Value::String(hay), Value::String(needle)) => Value::Bool(hay.contains(needle.as_ref())),
            _ => Value::Undefined,
        },
        BinOp::Add => add(l, r),
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => match (Num::of(l), Num::of(r)) {
            (Some(a), Some(b)) => arithmetic(op, a, b),
            _ => Value::Undefined,
        },
        BinOp::And | BinOp::Or => Value::Undefined,
    }
}

/// Whether `l <op> r` is true: the same answer as `to_bool(&binary(op, l, r)) == Some(true)`,
/// with a comparison of two numbers (the commonest `WHERE`, `temp > 40`) done in place.
#[inline]
pub(crate) fn holds(op: BinOp, l: &Value<'_>, r: &Value<'_>) -> bool {
    // As `compare` and `equals` do, a mixed pair compares as decimals (`-0.0 = 0`).
    let ord = match (l, r) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Value::Decimal(a), Value::Decimal(b)) => a.partial_cmp(b),
        (Value::Int(a), Value::Decimal(b)) => (*a as f64).partial_cmp(b),
        (Value::Decimal(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
        _ => None,
    };
    // Anything else (and a NaN, which no `Value` holds) takes the general path.
    let Some(ord) = ord else {
        return holds_slow(op, l, r);
    };
    match op {
        BinOp::Eq => ord.is_eq(),
        BinOp::Ne => ord.is_ne(),
        BinOp::Lt => ord.is_lt(),
        BinOp::Le => ord.is_le(),
        BinOp::Gt => ord.is_gt(),
        BinOp::Ge => ord.is_ge(),
        _ => holds_slow(op, l, r),
    }
}

#[inline(never)]
fn holds_slow(op: BinOp, l: &Value<'_>, r: &Value<'_>) -> bool {
    let v = binary(op, l, r);
    let yes = to_bool(&v) == Some(true);
    discard(v);
    yes
}

fn add<'a>(l: &Value<'_>, r: &Value<'_>) -> Value<'a> {
    if matches!(l.get(), Value::String(_)) || matches!(r.get(), Value::String(_)) {
        return match (to_str(l), to_str(r)) {
            (Some(a), Some(b)) => Value::String(Cow::Owned(format!("{a}{b}"))),
            _ => Value::Undefined,
        };
    }
    match (l.get(), r.get()) {
        (Value::Int(_) | Value::Decimal(_), Value::Int(_) | Value::Decimal(_)) => {
            match (Num::of(l), Num::of(r)) {
                (Some(a), Some(b)) => arithmetic(BinOp::Add, a, b),
                _ => Value::Undefined,
            }
        }
        _ => Value::Undefined,
    }
}

/// `+ - * / %` on two numbers.
pub(crate) fn arithmetic<'a>(op: BinOp, a: Num, b: Num) -> Value<'a> {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        let exact = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div if y == 0 => return Value::Undefined,
            BinOp::Div => x.checked_div(y),
            BinOp::Mod => return remainder(a, b),
            _ => None,
        };
        if let Some(v) = exact {
            return Value::Int(v);
        }
    }
    let (x, y) = (a.f64(), b.f64());
    let d = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y == 0.0 => return Value::Undefined,
        BinOp::Div => x / y,
        BinOp::Mod => return remainder(a, b),
        _ => return Value::Undefined,
    };
    Value::decimal(round_decimal(d))
}

/// `%`, `mod()`, `remainder()`: the sign follows the dividend (Java's `%`).
pub(crate) fn remainder<'a>(a: Num, b: Num) -> Value<'a> {
    match (a, b) {
        (Num::Int(_), Num::Int(0)) => Value::Undefined,
        (Num::Int(x), Num::Int(y)) => Value::Int(x.checked_rem(y).unwrap_or(0)),
        _ if b.f64() == 0.0 => Value::Undefined,
        _ => Value::decimal(round_decimal(a.f64() % b.f64())),
    }
}

/// Unary minus.
pub(crate) fn negate<'a>(v: &Value<'_>) -> Value<'a> {
    match Num::of(v) {
        Some(Num::Int(i)) => i.checked_neg().map_or(Value::decimal(-(i as f64)), Value::Int),
        Some(Num::Dec(d)) => Value::decimal(-d),
        None => Value::Undefined,
    }
}

/// `=` for two defined values.
pub(crate) fn equals(l: &Value<'_>, r: &Value<'_>) -> bool {
    match (l.get(), r.get()) {
        (Value::Int(a), Value::Int(b)) => a == b,
        (Value::Int(_) | Value::Decimal(_), Value::Int(_) | Value::Decimal(_)) => {
            Num::of(l).map(Num::f64) == Num::of(r).map(Num::f64)
        }
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Null, Value::Null) => true,
        (Value::Binary(a), Value::Binary(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equals(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            let covers = |x: &[(Cow<'_, str>, Value<'_>)], y: &[(Cow<'_, str>, Value<'_>)]| {
                x.iter().all(|(k, v)| lookup(y, k).is_some_and(|w| equals(v, w)))
            };
            covers(a, b) && covers(b, a)
        }
        _ => false,
    }
}

/// Ordering for `< <= > >=`: both sides as numbers, else `None` (Undefined).
pub(crate) fn compare(l: &Value<'_>, r: &Value<'_>) -> Option<Ordering> {
    match (Num::of(l)?, Num::of(r)?) {
        (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
        (a, b) => a.f64().partial_cmp(&b.f64()),
    }
}
