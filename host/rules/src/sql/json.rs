//! JSON in and out, hand-written for the message path.
//!
//! Reading: a payload is parsed once into a [`Value`] tree whose strings borrow from the
//! message bytes (only strings with escapes are copied). It is a strict RFC 8259 parser (UTF-8,
//! no trailing commas, no comments, nesting up to 128 levels, lone surrogates refused) written
//! for this one job: on a 200-byte reading it is about twice as fast as building a
//! `serde_json::Value`, which matters because every rule evaluation starts here.
//!
//! Writing: compact JSON, object keys in document and projection order (`serde_json` without
//! its `preserve_order` feature would sort them), `Undefined` members left out, binary data as
//! base64 text.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;

use super::value::{Entries, Value, format_decimal};

/// How deeply a document may nest before it is refused (as `serde_json` does).
const MAX_DEPTH: usize = 128;

/// Parses a message payload. A JSON object becomes an addressable [`Value::Object`]; anything
/// else (other JSON values included: AWS treats a payload of `80` as non-JSON) is
/// [`Value::Binary`].
pub(crate) fn parse_payload(bytes: &[u8]) -> Value<'_> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{')
        && let Some(v @ Value::Object(_)) = parse_json(bytes)
    {
        return v;
    }
    Value::Binary(Cow::Borrowed(bytes))
}

/// Parses one JSON document (any value), or `None` if `bytes` is not exactly that.
pub(crate) fn parse_json(bytes: &[u8]) -> Option<Value<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        s: text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    r.ws();
    let v = r.value()?;
    r.ws();
    (r.i == r.b.len()).then_some(v)
}

struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'{' => self.nested(Self::object),
            b'[' => self.nested(Self::array),
            b'"' => self.string().map(Value::String),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            b'n' => self.word("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<Value<'a>>) -> Option<Value<'a>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn word(&mut self, w: &str, v: Value<'a>) -> Option<Value<'a>> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Some(v)
        } else {
            None
        }
    }

    fn object(&mut self) -> Option<Value<'a>> {
        self.i += 1; // {
        let mut entries: Entries<'a> = Vec::with_capacity(if self.depth == 1 { 16 } else { 4 });
        self.ws();
        if self.eat(b'}') {
            return Some(Value::Object(entries));
        }
        loop {
            if self.peek() != Some(b'"') {
                return None;
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            let v = self.value()?;
            entries.push((key, v));
            self.ws();
            if self.eat(b'}') {
                return Some(Value::Object(entries));
            }
            if !self.eat(b',') {
                return None;
            }
            self.ws();
        }
    }

    fn array(&mut self) -> Option<Value<'a>> {
        self.i += 1; // [
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Some(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            if self.eat(b']') {
                return Some(Value::Array(items));
            }
            if !self.eat(b',') {
                return None;
            }
            self.ws();
        }
    }

    /// A string, borrowed unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i + 1;
        let mut j = plain_run(self.b, start);
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(Cow::Borrowed(&self.s[start..j]));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => j = plain_run(self.b, j + 1),
            }
        }
        let mut out = String::with_capacity(j - start + 16);
        out.push_str(&self.s[start..j]);
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    let esc = *self.b.get(j + 1)?;
                    j += 2;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4(j)?;
                            j += 4;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                // A high surrogate must be followed by an escaped low one.
                                if self.b.get(j..j + 2)? != b"\\u" {
                                    return None;
                                }
                                let lo = self.hex4(j + 2)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                j += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code)?);
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {
                    // Copy a run of plain bytes at once (the input is valid UTF-8 and runs end
                    // on ASCII bytes, so the slice is on character boundaries).
                    let run = j;
                    j = plain_run(self.b, j);
                    out.push_str(&self.s[run..j]);
                }
            }
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.s.get(at..at + 4)?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    }

    /// A number per RFC 8259. Integers that fit are `Int`; others are doubles and, as SQL
    /// 2016-03-23 reads them, whole values (`10.0`) become `Int` too. Decimals of up to 15
    /// digits with a small exponent take Clinger's fast path (an exact mantissa times an exact
    /// power of ten is correctly rounded); the rest go through the standard library's parser.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.i;
        let b = self.b;
        let mut j = start;
        let negative = b[j] == b'-';
        if negative {
            j += 1;
        }
        let mut mantissa: u64 = 0;
        let mut digits = 0usize;
        let mut digit = |c: u8, digits: &mut usize| {
            if *digits < 19 {
                mantissa = mantissa * 10 + u64::from(c - b'0');
            }
            *digits += 1;
        };
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                while let Some(&c @ b'0'..=b'9') = b.get(j) {
                    digit(c, &mut digits);
                    j += 1;
                }
            }
            _ => return None,
        }
        let mut fraction = 0usize;
        if b.get(j) == Some(&b'.') {
            j += 1;
            let d = j;
            while let Some(&c @ b'0'..=b'9') = b.get(j) {
                // Leading zeros of a fraction do not count against the 15 digits.
                if digits > 0 || c != b'0' {
                    digit(c, &mut digits);
                }
                j += 1;
            }
            if j == d {
                return None;
            }
            fraction = j - d;
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            let sign = match b.get(j) {
                Some(b'-') => {
                    j += 1;
                    -1
                }
                Some(b'+') => {
                    j += 1;
                    1
                }
                _ => 1,
            };
            let d = j;
            while let Some(&c @ b'0'..=b'9') = b.get(j) {
                exponent = (exponent * 10 + i64::from(c - b'0')).min(100_000);
                j += 1;
            }
            if j == d {
                return None;
            }
            exponent *= sign;
        }
        self.i = j;
        if fraction == 0 && exponent == 0 && digits <= 18 {
            let n = mantissa as i64;
            return Some(Value::Int(if negative { -n } else { n }));
        }
        let scale = exponent - fraction as i64;
        if digits <= 15 && (-22..=22).contains(&scale) {
            let m = mantissa as f64;
            let d = if scale < 0 {
                m / POW10[(-scale) as usize]
            } else {
                m * POW10[scale as usize]
            };
            return Some(Value::number(if negative { -d } else { d }));
        }
        let text = &self.s[start..j];
        if fraction == 0
            && exponent == 0
            && let Ok(i) = text.parse::<i64>()
        {
            return Some(Value::Int(i));
        }
        let d: f64 = text.parse().ok()?;
        if d.is_finite() {
            Some(Value::number(d))
        } else {
            // Beyond f64 (1e400): keep the document addressable; the number is unusable.
            Some(Value::Undefined)
        }
    }
}

/// The powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Serializes `v` as compact JSON, keys in document order. `Undefined` members are left out;
/// a top-level `Undefined` writes nothing.
pub(crate) fn write_json(v: &Value<'_>, out: &mut String) {
    match v.get() {
        Value::Undefined => {}
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            use fmt::Write as _;
            let _ = write!(out, "{i}");
        }
        Value::Decimal(d) => format_decimal(*d, out),
        Value::String(s) => write_json_str(s, out),
        Value::Binary(b) => {
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            let mut first = true;
            for item in items.iter().filter(|v| !v.is_undefined()) {
                if !first {
                    out.push(',');
                }
                first = false;
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(entries) => {
            out.push('{');
            let mut first = true;
            for (k, item) in entries.iter().filter(|(_, v)| !v.is_undefined()) {
                if !first {
                    out.push(',');
                }
                first = false;
                write_json_str(k, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
        Value::Ref(_) => {}
    }
}

/// `bytes` as text if it is a JSON object exactly as [`write_json`] would write it back after
/// [`parse_payload`]: compact (no whitespace outside strings), every string escape in the
/// writer's form, every number in its normalised form (`10` not `10.0`, `1500` not `1.5e3`).
/// Then `SELECT *` can pass the payload on as it is instead of parsing and re-writing it,
/// which is most of what the rule costs. Checked without building a tree: one pass, no
/// allocation except for numbers with a fraction or an exponent, which are read and written
/// back to compare. `None` only means "take the slow path".
pub(crate) fn canonical_object(bytes: &[u8]) -> Option<&str> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let s = std::str::from_utf8(bytes).ok()?;
    let mut c = Canonical {
        s,
        b: bytes,
        i: 0,
        scratch: String::new(),
    };
    (c.value(0) && c.i == bytes.len()).then_some(s)
}

struct Canonical<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    scratch: String,
}

impl Canonical<'_> {
    fn value(&mut self, depth: usize) -> bool {
        match self.b.get(self.i) {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth + 1),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn word(&mut self, w: &[u8]) -> bool {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.members(depth, b'}', true)
    }

    fn array(&mut self, depth: usize) -> bool {
        self.members(depth, b']', false)
    }

    /// The members of an object (`"key":value`, `keyed`) or an array up to `close`, with no
    /// whitespace anywhere.
    fn members(&mut self, depth: usize, close: u8, keyed: bool) -> bool {
        self.i += 1; // { or [
        if self.b.get(self.i) == Some(&close) {
            self.i += 1;
            return true;
        }
        loop {
            if keyed {
                if self.b.get(self.i) != Some(&b'"') || !self.string() || self.b.get(self.i) != Some(&b':') {
                    return false;
                }
                self.i += 1;
            }
            if !self.value(depth) {
                return false;
            }
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// A string whose escapes are the ones the writer produces (`\u` escapes and `\/` are
    /// left to the slow path).
    fn string(&mut self) -> bool {
        let mut j = plain_run(self.b, self.i + 1);
        loop {
            match self.b.get(j) {
                Some(b'"') => {
                    self.i = j + 1;
                    return true;
                }
                Some(b'\\') => match self.b.get(j + 1) {
                    Some(b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f') => j += 2,
                    // The writer's `\u` form: a control character without a short escape.
                    Some(b'u') => match self.b.get(j + 2..j + 6) {
                        Some([b'0', b'0', hi @ (b'0' | b'1'), lo @ (b'0'..=b'9' | b'a'..=b'f')])
                            if !matches!((hi, lo), (b'0', b'8' | b'9' | b'a' | b'c' | b'd')) =>
                        {
                            j += 6
                        }
                        _ => return false,
                    },
                    _ => return false,
                },
                Some(0..=0x1f) | None => return false,
                Some(_) => j = plain_run(self.b, j + 1),
            }
        }
    }

    /// A number the writer would write back byte for byte.
    fn number(&mut self) -> bool {
        let start = self.i;
        let mut j = start;
        if self.b[j] == b'-' {
            j += 1;
        }
        let digits = j;
        while self.b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        let int_digits = j - digits;
        let plain = !matches!(self.b.get(j), Some(b'.' | b'e' | b'E'));
        if plain && (1..=18).contains(&int_digits) {
            // A short integer: canonical unless it has a leading zero or is `-0`.
            let first = self.b[digits];
            self.i = j;
            return first != b'0' || (int_digits == 1 && start == digits);
        }
        if self.b.get(j) == Some(&b'.') && int_digits > 0 {
            // A plain decimal (`-20.5`) of at most 15 significant digits, the last one not 0,
            // and not below 1e-7: the shortest digits that read back as the same double are
            // its own (any two decimals of 15 digits or fewer are different doubles), and the
            // writer prints them without an exponent, so it is canonical as written.
            let fraction = j + 1;
            let mut end = fraction;
            while self.b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            let whole_zero = int_digits == 1 && self.b[digits] == b'0';
            let lead_zeros = if whole_zero {
                self.b[fraction..end].iter().take_while(|&&c| c == b'0').count()
            } else {
                0
            };
            let significant = if whole_zero { 0 } else { int_digits } + (end - fraction) - lead_zeros;
            if end > fraction
                && !matches!(self.b.get(end), Some(b'e' | b'E'))
                && self.b[end - 1] != b'0'
                && (self.b[digits] != b'0' || whole_zero)
                && significant <= 15
                && lead_zeros <= 6
            {
                self.i = end;
                return true;
            }
        }
        // An exponent, a long integer or a long decimal: read it as the parser does and write
        // it back.
        let Some(s) = self.s.get(start..) else {
            return false;
        };
        let mut reader = Reader {
            s,
            b: s.as_bytes(),
            i: 0,
            depth: 0,
        };
        let Some(v) = reader.number() else {
            return false;
        };
        self.scratch.clear();
        write_json(&v, &mut self.scratch);
        let end = start + reader.i;
        self.i = end;
        self.scratch.as_bytes() == &self.b[start..end]
    }
}

/// The index of the first byte at or after `from` that a string scan must look at: `"`, `\\`
/// or a control character (or `b.len()`). Eight bytes at a time while none is there.
fn plain_run(b: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut j = from;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20 (exact for thresholds up to 0x80), a quote or a backslash.
        let special = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')));
        if special {
            break;
        }
        j += 8;
    }
    while let Some(&c) = b.get(j) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        j += 1;
    }
    j
}

fn write_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    // Every character that needs escaping is ASCII, so bytes are enough (a UTF-8 continuation
    // or lead byte is >= 0x80 and never matches); runs that need none are copied whole.
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            use fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::value::lookup;

    fn json(v: &Value<'_>) -> String {
        let mut s = String::new();
        write_json(v, &mut s);
        s
    }

    fn roundtrip(text: &str) -> Option<String> {
        parse_json(text.as_bytes()).map(|v| json(&v))
    }

    #[test]
    fn payload_parsing_borrows_and_normalizes_numbers() {
        let bytes =
            br#"{"a":"x","b":10.0,"c":1.5,"d":[1,null,true],"e":{"f":"g\"h"},"n":18446744073709551615}"#;
        let v = parse_payload(bytes);
        let Value::Object(entries) = &v else {
            panic!("not an object")
        };
        assert!(matches!(
            lookup(entries, "a"),
            Some(Value::String(Cow::Borrowed("x")))
        ));
        assert!(matches!(lookup(entries, "b"), Some(Value::Int(10))));
        assert!(matches!(lookup(entries, "c"), Some(Value::Decimal(d)) if *d == 1.5));
        assert!(matches!(lookup(entries, "n"), Some(Value::Decimal(_))));
        assert_eq!(
            json(&v),
            r#"{"a":"x","b":10,"c":1.5,"d":[1,null,true],"e":{"f":"g\"h"},"n":18446744073709552000}"#
        );
    }

    #[test]
    fn non_objects_are_binary() {
        for p in [
            &b"80"[..],
            b"[1,2]",
            b"\"s\"",
            b"",
            b"{bad",
            b"\xff\x00",
            b"{} trailing",
            b"{\"a\":1,}",
        ] {
            assert!(matches!(parse_payload(p), Value::Binary(_)), "{p:?}");
        }
        assert!(matches!(parse_payload(b"  {\"a\":1}  "), Value::Object(_)));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let v = parse_payload(br#"{"a":1,"a":2}"#);
        let Value::Object(entries) = &v else { panic!() };
        assert!(matches!(lookup(entries, "a"), Some(Value::Int(2))));
    }

    #[test]
    fn reads_what_json_allows() {
        for (text, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("-12", "-12"),
            ("123456789012345678", "123456789012345678"),
            ("9223372036854775807", "9223372036854775807"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("9223372036854775808", "9223372036854776000"),
            ("1.25", "1.25"),
            ("1e2", "100"),
            ("1E-2", "0.01"),
            ("-1.5e+3", "-1500"),
            ("1e400", ""),
            ("0.1", "0.1"),
            ("-0.000123", "-0.000123"),
            ("123456.789012", "123456.789012"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("1234567890.12345678", "1234567890.1234567"),
            ("2.5e-3", "0.0025"),
            ("7e22", "7e22"),
            ("1e23", "1e23"),
            ("0.0000000000000000000000000001", "1e-28"),
            ("100000000000000000000", "100000000000000000000"),
            (r#""a\"b\\c\/d\b\f\n\r\t""#, r#""a\"b\\c/d\b\f\n\r\t""#),
            (r#""\u00e9\u20ac\ud83d\ude00""#, "\"é€😀\""),
            ("\"é€\"", "\"é€\""),
            (" [ 1 , [ ] , { } ] ", "[1,[],{}]"),
            (
                r#"{"k":{"k":{"k":[true,false,null]}}}"#,
                r#"{"k":{"k":{"k":[true,false,null]}}}"#,
            ),
        ] {
            assert_eq!(roundtrip(text).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn refuses_what_json_does_not() {
        for text in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "-",
            "--1",
            "0x10",
            "NaN",
            "tru",
            "nul",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":1,}",
            "\"unterminated",
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12""#,
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\ude00""#,
            "[1] [2]",
            "// c\n1",
        ] {
            assert_eq!(roundtrip(text), None, "{text:?}");
        }
        let deep_ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse_json(deep_ok.as_bytes()).is_some());
        let too_deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(parse_json(too_deep.as_bytes()).is_none());
    }

    /// What the fast check must agree with: the payload parses to an object that writes back
    /// to the same bytes.
    fn slow_canonical(bytes: &[u8]) -> bool {
        match parse_payload(bytes) {
            v @ Value::Object(_) => json(&v).as_bytes() == bytes,
            _ => false,
        }
    }

    #[test]
    fn canonical_objects_are_recognised_exactly() {
        for (text, want) in [
            (r#"{"shlg":"h","temp":-20.5,"humidity":80,"pad":"xxxx"}"#, true),
            (r#"{}"#, true),
            (r#"{"a":[1,[],{},null,true,false,"s"],"b":{"c":{"d":0}}}"#, true),
            (r#"{"a":"q\"b\\c\nd\re\tf\bg\fh"}"#, true),
            (r#"{"a":"é€😀"}"#, true),
            (r#"{"a":1,"a":2}"#, true),
            (
                r#"{"a":0.1,"b":-0.000123,"c":123456.789012,"d":0.30000000000000004}"#,
                true,
            ),
            (r#"{"a":1e23,"b":7e22,"c":1e-28}"#, true),
            (r#"{"a":-9223372036854775}"#, true),
            (r#"{ "a":1}"#, false),
            (r#"{"a": 1}"#, false),
            (r#"{"a":1} "#, false),
            (r#" {"a":1}"#, false),
            (r#"{"a":10.0}"#, false),
            (r#"{"a":1.50}"#, false),
            (r#"{"a":1e2}"#, false),
            (r#"{"a":-0}"#, false),
            (r#"{"a":1E23}"#, false),
            (r#"{"a":0.00000001}"#, false),
            (r#"{"a":1e400}"#, false),
            (r#"{"a":9223372036854775807}"#, true),
            (r#"{"a":9223372036854775808}"#, false),
            (r#"{"a":"\u0001\u001f"}"#, true),
            (r#"{"a":"\u0008"}"#, false),
            (r#"{"a":"\u001F"}"#, false),
            (r#"{"a":"\/"}"#, false),
            (r#"{"a":"\u00e9"}"#, false),
            (r#"{"a":01}"#, false),
            (r#"{"a":1,}"#, false),
            (r#"{"a"}"#, false),
            (r#"{"a":tru}"#, false),
            (r#"{"a":"x"#, false),
            (r#"[1]"#, false),
            (r#"80"#, false),
            ("{\"a\":\"\t\"}", false),
            ("", false),
        ] {
            assert_eq!(canonical_object(text.as_bytes()).is_some(), want, "{text}");
            assert_eq!(
                slow_canonical(text.as_bytes()),
                want,
                "slow path disagrees on {text}"
            );
        }
        assert!(canonical_object(b"{\"a\":\"\xff\"}").is_none());
        let deep_ok = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(canonical_object(deep_ok.as_bytes()).is_some());
        let too_deep = format!("{}{{}}{}", "{\"a\":".repeat(128), "}".repeat(128));
        assert!(canonical_object(too_deep.as_bytes()).is_none());
        assert!(!slow_canonical(too_deep.as_bytes()));
    }

    #[test]
    fn canonical_check_agrees_with_parse_and_write_on_generated_documents() {
        // A fixed-seed generator of near-JSON: pieces that are canonical, not canonical, or
        // not JSON at all, so all three outcomes are exercised.
        let pieces: &[&str] = &[
            "0",
            "-0",
            "7",
            "-12",
            "10.0",
            "1.5",
            "-20.5",
            "1e2",
            "2.5e-3",
            "1E5",
            "0.1",
            "1.10",
            "123456789012345678",
            "1234567890123456789",
            "1e400",
            "0.00000001",
            "\"s\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\/\"",
            "\"\\u0041\"",
            "\"\\u0001\"",
            "\"\\u000a\"",
            "\"é\"",
            "true",
            "false",
            "null",
            "tru",
            "[]",
            "{}",
            " ",
            "01",
            ".5",
            "0.0000001",
            "0.00000001",
            "-0.05",
            "0.50",
            "12345678901234.5",
            "123456789012345.5",
            "1.0e1",
            "-1.25",
            "0.000001234",
            "\"aaaaaaaa\\\"bbbbbbbbb\"",
            "\"0123456789abcdefghij\"",
            "\"0123456789\\nabcdef\u{1}ghij\"",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n
        };
        let mut agree = (0, 0);
        for _ in 0..20_000 {
            let mut doc = String::from("{");
            for k in 0..next(5) {
                if k > 0 {
                    doc.push(',');
                }
                doc.push_str(&format!("\"k{}\":", next(3)));
                match next(4) {
                    0 => doc.push_str(&format!(
                        "[{},{}]",
                        pieces[next(pieces.len())],
                        pieces[next(pieces.len())]
                    )),
                    1 => doc.push_str(&format!("{{\"n\":{}}}", pieces[next(pieces.len())])),
                    _ => doc.push_str(pieces[next(pieces.len())]),
                }
            }
            doc.push('}');
            let fast = canonical_object(doc.as_bytes()).is_some();
            assert_eq!(fast, slow_canonical(doc.as_bytes()), "{doc}");
            if fast {
                agree.0 += 1;
            } else {
                agree.1 += 1;
            }
        }
        assert!(agree.0 > 1_000 && agree.1 > 1_000, "{agree:?}");
    }

    #[test]
    fn writes_escapes() {
        let v = Value::str("a\"b\\c\nd\u{1}é");
        assert_eq!(json(&v), r#""a\"b\\c\nd\u0001é""#);
        let bin = Value::Binary(Cow::Borrowed(b"hi"));
        assert_eq!(json(&bin), r#""aGk=""#);
        assert_eq!(json(&Value::Undefined), "");
    }
}
