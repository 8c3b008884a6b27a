//! AWS IoT SQL values and the standard conversions between them.
//!
//! One enum serves both as the parsed payload and as the result of every expression. Strings
//! and composite values borrow from the payload (or from literals in the statement) wherever
//! they can: a payload is parsed once into a tree whose strings point into the message bytes,
//! and a field access returns a [`Value::Ref`] into that tree instead of a copy. Only values a
//! function builds are owned.
//!
//! Numbers follow SQL version 2016-03-23: a whole number is an `Int` even when written `10.0`
//! (AWS documents this quirk), other numbers are `Decimal`. AWS's `Decimal` has 34 significant
//! digits; ours is an IEEE double whose arithmetic results are rounded to 15 significant digits
//! (see [`round_decimal`]), which gives the same answers for the values devices send.

use std::borrow::Cow;
use std::fmt;

use super::json::write_json;

/// An object's entries in document order. Duplicate keys may occur (JSON allows them); the last
/// one wins on lookup, as in most JSON readers.
pub(crate) type Entries<'a> = Vec<(Cow<'a, str>, Value<'a>)>;

/// A value of the AWS IoT SQL type system.
#[derive(Debug, Clone)]
pub(crate) enum Value<'a> {
    /// A missing key, a failed conversion, a function given bad arguments. Never serialized:
    /// an `Undefined` projection is left out of the output.
    Undefined,
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Any other number. Never NaN or infinite.
    Decimal(f64),
    /// UTF-8 text.
    String(Cow<'a, str>),
    /// An array; never holds `Undefined`.
    Array(Vec<Value<'a>>),
    /// An object; never holds `Undefined`.
    Object(Entries<'a>),
    /// A payload that is not a JSON object, or decoded bytes that are not text. Serialized as
    /// base64 text when embedded in a JSON document.
    Binary(Cow<'a, [u8]>),
    /// A borrowed value (from the payload tree, a literal, ...). Never points at another `Ref`.
    Ref(&'a Value<'a>),
}

impl<'a> Value<'a> {
    /// A cheap view of a borrowed value: scalars are copied, strings and bytes borrowed,
    /// arrays and objects referenced.
    pub(crate) fn view(v: &'a Value<'a>) -> Value<'a> {
        match v {
            Value::Ref(r) => Value::Ref(r),
            Value::Undefined => Value::Undefined,
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Decimal(d) => Value::Decimal(*d),
            Value::String(s) => Value::String(Cow::Borrowed(s)),
            Value::Binary(b) => Value::Binary(Cow::Borrowed(b)),
            Value::Array(_) | Value::Object(_) => Value::Ref(v),
        }
    }

    /// The value itself, looking through a [`Value::Ref`].
    pub(crate) fn get(&self) -> &Value<'a> {
        match self {
            Value::Ref(r) => r,
            v => v,
        }
    }

    pub(crate) fn is_undefined(&self) -> bool {
        matches!(self.get(), Value::Undefined)
    }

    pub(crate) fn str(s: impl Into<Cow<'a, str>>) -> Value<'a> {
        Value::String(s.into())
    }

    /// A `Decimal`, or `Undefined` for NaN and infinities (AWS: "imaginary results are
    /// returned as Undefined").
    pub(crate) fn decimal(d: f64) -> Value<'a> {
        if d.is_finite() {
            Value::Decimal(d)
        } else {
            Value::Undefined
        }
    }

    /// A number parsed from JSON or written in the statement: whole numbers are `Int`
    /// (SQL 2016-03-23 treats `10.0` as `10`).
    pub(crate) fn number(d: f64) -> Value<'a> {
        match whole_to_i64(d) {
            Some(i) => Value::Int(i),
            None => Value::decimal(d),
        }
    }

    /// A copy that borrows nothing.
    pub(crate) fn into_owned(self) -> Value<'static> {
        match self {
            Value::Undefined => Value::Undefined,
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Decimal(d) => Value::Decimal(d),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
            Value::Binary(b) => Value::Binary(Cow::Owned(b.into_owned())),
            Value::Array(a) => Value::Array(a.into_iter().map(Value::into_owned).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
            Value::Ref(r) => r.clone().into_owned(),
        }
    }

    /// Converts from a `serde_json` document (what the engine's services hand back).
    pub(crate) fn from_json(v: serde_json::Value) -> Value<'static> {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(f)) => Value::number(f),
                (None, None) => Value::Undefined,
            },
            serde_json::Value::String(s) => Value::String(Cow::Owned(s)),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Looks `key` up in an object's entries (the last duplicate wins).
pub(crate) fn lookup<'e, 'a>(entries: &'e [(Cow<'a, str>, Value<'a>)], key: &str) -> Option<&'e Value<'a>> {
    entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `d` as an `i64` when it is a whole number in range.
pub(crate) fn whole_to_i64(d: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything below it in magnitude converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if d > -LIMIT && d < LIMIT {
        // The cast truncates; equality means `d` was whole (cheaper than `fract`, which is a
        // libm call on baseline x86-64).
        let i = d as i64;
        (i as f64 == d).then_some(i)
    } else {
        None
    }
}

/// Rounds an arithmetic result to 15 significant digits, the precision a double holds
/// exactly, so decimal arithmetic on device values gives decimal answers (`0.1 + 0.2` is
/// `0.3`, as in AWS's 34-digit decimals) instead of binary noise.
pub(crate) fn round_decimal(d: f64) -> f64 {
    if d == 0.0 || !d.is_finite() {
        return d;
    }
    let magnitude = d.abs().log10().floor() as i32;
    let scale = 14 - magnitude;
    if (0..=22).contains(&scale) {
        // 10^scale is exact for scale <= 22, so the division is correctly rounded.
        let p = 10f64.powi(scale);
        let scaled = (d * p).round();
        if scaled.abs() < 9_007_199_254_740_992.0 {
            return scaled / p;
        }
    }
    format!("{d:.14e}").parse().unwrap_or(d)
}

/// The magnitudes [`format_decimal`] prints with ryu: plain notation in both ryu and `{d}`.
const FAST_DECIMALS: std::ops::Range<f64> = 1e-4..1e7;

/// Formats a `Decimal` the way AWS prints it under SQL 2016-03-23: whole values as integers,
/// others in the shortest form that reads back to the same double, in scientific notation
/// only for very small or very large magnitudes.
pub(crate) fn format_decimal(d: f64, out: &mut String) {
    use fmt::Write as _;
    if let Some(i) = whole_to_i64(d) {
        let _ = write!(out, "{i}");
    } else if FAST_DECIMALS.contains(&d.abs()) {
        if short_decimal(d, out) {
            return;
        }
        // ryu prints these magnitudes in plain notation, digit for digit what `{d}` prints
        // (both give the shortest digits that read back to `d`; a test compares them).
        out.push_str(ryu::Buffer::new().format_finite(d));
    } else if d != 0.0 && (d.abs() < 1e-7 || d.abs() >= 1e21) {
        let _ = write!(out, "{d:e}");
    } else {
        let _ = write!(out, "{d}");
    }
}

/// Prints `d` (in [`FAST_DECIMALS`], not whole) when it has a decimal form with at most four
/// fraction digits, as device readings mostly do (`-9.5`, `61.25`), without ryu's general
/// algorithm; `false` (nothing written) otherwise. The digits are ryu's: `n / 10^k` is
/// correctly rounded (`n` < 2^53 and `10^k` are exact), so the decimal reads back to `d`;
/// below 1e7 a double's rounding interval is far narrower than 10^-4, so it holds at most one
/// decimal of up to four fraction digits, the one found at the smallest `k`; and one ending
/// in `0` (a shorter form exists) is left to ryu.
fn short_decimal(d: f64, out: &mut String) -> bool {
    for (k, divisor) in [10u64, 100, 1_000, 10_000].into_iter().enumerate() {
        let scale = divisor as f64;
        let scaled = d * scale;
        let n = scaled as i64;
        if n as f64 != scaled || n as f64 / scale != d {
            continue;
        }
        let n = n.unsigned_abs();
        let (whole, fraction) = (n / divisor, n % divisor);
        if fraction % 10 == 0 {
            return false;
        }
        if d < 0.0 {
            out.push('-');
        }
        push_digits(out, whole, 1);
        out.push('.');
        push_digits(out, fraction, k + 1);
        return true;
    }
    false
}

/// Writes `v` in decimal, zero-padded to at least `min_len` digits.
fn push_digits(out: &mut String, mut v: u64, min_len: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while v > 0 || digits.len() - at < min_len {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend(digits[at..].iter().map(|&c| char::from(c)));
}

/// Parses a string AWS converts to a `Decimal` (its table "To decimal"): strings matching
/// `^-?\d+(\.\d+)?((?i)E-?\d+)?$`.
pub(crate) fn parse_decimal(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return None;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok().filter(|d| d.is_finite())
}

/// A number for arithmetic: `Int` stays exact, everything else is a double.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    pub(crate) fn of(v: &Value<'_>) -> Option<Num> {
        match v.get() {
            Value::Int(i) => Some(Num::Int(*i)),
            Value::Decimal(d) => Some(Num::Dec(*d)),
            Value::String(s) => parse_decimal(s).map(Num::Dec),
            _ => None,
        }
    }

    pub(crate) fn f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dec(d) => d,
        }
    }
}

/// The implicit conversion to `Int` that functions taking an `Int` apply: numbers and numeric
/// strings, rounded down (AWS: "rounded down to the nearest Int").
pub(crate) fn to_i64(v: &Value<'_>) -> Option<i64> {
    match Num::of(v)? {
        Num::Int(i) => Some(i),
        Num::Dec(d) => {
            let f = d.floor();
            // Saturate: an index or count beyond i64 is out of range either way.
            Some(if f >= 9.2e18 {
                i64::MAX
            } else if f <= -9.2e18 {
                i64::MIN
            } else {
                f as i64
            })
        }
    }
}

/// The standard conversion to `Boolean`: booleans and the strings "true"/"false" in any case.
pub(crate) fn to_bool(v: &Value<'_>) -> Option<bool> {
    match v.get() {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The standard conversion to `String`: numbers and booleans printed, arrays and objects
/// serialized as JSON, `Null` and `Undefined` give `None` (Undefined). Binary data converts
/// when it is UTF-8 text.
pub(crate) fn to_str<'v>(v: &'v Value<'_>) -> Option<Cow<'v, str>> {
    match v.get() {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Null | Value::Undefined => None,
        Value::Binary(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        other => {
            let mut out = String::new();
            write_json(other, &mut out);
            Some(Cow::Owned(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path of `format_decimal` (ryu) against `{d}` over the magnitudes it takes:
    /// random bit patterns, the powers of ten at its edges, typical sensor readings.
    #[test]
    fn fast_decimal_printing_matches_core_fmt() {
        let mut rng = shoal_broker::rng::XorShift64::new(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.next();
        let mut checked = 0;
        let mut check = |d: f64| {
            if !d.is_finite() || whole_to_i64(d).is_some() || !FAST_DECIMALS.contains(&d.abs()) {
                return;
            }
            let mut fast = String::new();
            format_decimal(d, &mut fast);
            assert_eq!(fast, format!("{d}"), "{d:e}");
            checked += 1;
        };
        // The powers of ten the range spans (-4..7).
        let (lo, hi) = (
            FAST_DECIMALS.start.log10().round() as i32,
            FAST_DECIMALS.end.log10().round() as i32,
        );
        for _ in 0..400_000 {
            // Random bits, and random magnitudes spread evenly over the fast path's range.
            check(f64::from_bits(next()));
            let m = (next() % 1_000_000) as f64 / 1_000_000.0;
            let e = (next() % (hi - lo) as u64) as i32 + lo;
            check((1.0 + m * 9.0) * 10f64.powi(e) * if next() % 2 == 0 { 1.0 } else { -1.0 });
        }
        // Short decimals (up to six fraction digits, so the four-digit path and ryu both run).
        for _ in 0..200_000 {
            let k = (next() % 7) as i32;
            let n = (next() % 100_000_000) as f64 / 10f64.powi(k);
            check(if next() % 2 == 0 { n } else { -n });
        }
        for e in lo..hi {
            let p = 10f64.powi(e);
            for d in [
                p,
                p * 1.5,
                p * 0.999_999_999,
                p * 1.000_000_000_1,
                p + 0.1,
                -p - 0.25,
            ] {
                check(d);
            }
        }
        for d in [
            -20.5,
            3.7,
            -18.25,
            0.1,
            0.2 + 0.1,
            1.0 / 3.0,
            98.6,
            53.551_086,
            9.993_71,
        ] {
            check(d);
        }
        assert!(checked > 400_000, "only {checked} values in range");
    }

    #[test]
    fn decimal_strings() {
        for (s, want) in [
            ("0", Some(0.0)),
            ("-1.2", Some(-1.2)),
            ("5E-12", Some(5e-12)),
            ("5e3", Some(5000.0)),
            ("12.50", Some(12.5)),
            ("+1", None),
            (".5", None),
            ("1.", None),
            ("1e", None),
            ("1e+3", None),
            (" 1", None),
            ("0x10", None),
            ("", None),
            ("-", None),
            ("NaN", None),
            ("1e999", None),
        ] {
            assert_eq!(parse_decimal(s), want, "{s:?}");
        }
    }

    #[test]
    fn rounding_to_fifteen_digits() {
        assert_eq!(round_decimal(0.1 + 0.2), 0.3);
        assert_eq!(round_decimal(1.1 * 3.0), 3.3);
        assert_eq!(round_decimal(-0.000_000_000_1 * 3.0), -0.000_000_000_3);
        assert_eq!(round_decimal(1e300 * 3.0), 3e300);
        assert_eq!(round_decimal(123_456.789), 123_456.789);
    }

    #[test]
    fn decimal_formatting() {
        for (d, want) in [
            (3.0, "3"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e-9, "1e-9"),
            (1.5e300, "1.5e300"),
            (1e20, "100000000000000000000"),
        ] {
            let mut s = String::new();
            format_decimal(d, &mut s);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn to_int_rounds_down() {
        assert_eq!(to_i64(&Value::Decimal(2.745)), Some(2));
        assert_eq!(to_i64(&Value::Decimal(-1.5)), Some(-2));
        assert_eq!(to_i64(&Value::str("7.9")), Some(7));
        assert_eq!(to_i64(&Value::Decimal(-2.411e247)), Some(i64::MIN));
        assert_eq!(to_i64(&Value::Bool(true)), None);
    }

    #[test]
    fn string_conversion() {
        assert_eq!(to_str(&Value::Int(-3)).as_deref(), Some("-3"));
        assert_eq!(to_str(&Value::Decimal(2.5)).as_deref(), Some("2.5"));
        assert_eq!(to_str(&Value::Bool(false)).as_deref(), Some("false"));
        assert_eq!(to_str(&Value::Null), None);
        assert_eq!(to_str(&Value::Undefined), None);
        assert_eq!(
            to_str(&Value::Binary(Cow::Borrowed(b"ok"))).as_deref(),
            Some("ok")
        );
        assert_eq!(to_str(&Value::Binary(Cow::Borrowed(&[0xff]))), None);
        let arr = Value::Array(vec![Value::str("a"), Value::Null, Value::Undefined]);
        assert_eq!(to_str(&arr).as_deref(), Some(r#"["a",null]"#));
    }
}
