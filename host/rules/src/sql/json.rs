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
/// [`Value::Binary`]. With `keys`, only the top-level members named there are built: the rest
/// is checked as strictly (so the payload is an object exactly when it is one without `keys`)
/// but not built, which is most of a parse's cost when a rule reads one or two fields.
pub(crate) fn parse_payload<'a>(bytes: &'a [u8], keys: Option<&[Box<str>]>) -> Value<'a> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{')
        && let Some(v @ Value::Object(_)) = read_whole(bytes, |r| match keys {
            None => r.value(),
            Some(keys) => r.object_with(keys),
        })
    {
        return v;
    }
    Value::Binary(Cow::Borrowed(bytes))
}

/// Parses one JSON document (any value), or `None` if `bytes` is not exactly that.
pub(crate) fn parse_json(bytes: &[u8]) -> Option<Value<'_>> {
    read_whole(bytes, Reader::value)
}

/// Runs `read` over `bytes` as UTF-8 text with optional whitespace around it, or `None` if
/// `bytes` is not text, `read` fails, or something follows what it read.
fn read_whole<'a>(
    bytes: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Option<Value<'a>>,
) -> Option<Value<'a>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        s: text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    r.ws();
    let v = read(&mut r)?;
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
    #[inline(always)]
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
            b'{' => self.nested(|r| {
                let mut entries: Entries<'a> = Vec::with_capacity(if r.depth == 1 { 16 } else { 4 });
                r.members(b'}', |r| {
                    let key = r.key()?;
                    r.colon()?;
                    let v = r.value()?;
                    entries.push((key, v));
                    Some(())
                })?;
                Some(Value::Object(entries))
            }),
            b'[' => self.nested(|r| {
                let mut items = Vec::new();
                r.members(b']', |r| {
                    items.push(r.value()?);
                    Some(())
                })?;
                Some(Value::Array(items))
            }),
            b'"' => self.string().map(Value::String),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            b'n' => self.word("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object with only the members named in `keys` built (the others checked).
    fn object_with(&mut self, keys: &[Box<str>]) -> Option<Value<'a>> {
        self.nested(|r| {
            let mut entries: Entries<'a> = Vec::with_capacity(keys.len());
            r.members(b'}', |r| {
                let key = r.key_if(|key| keys.iter().any(|k| **k == *key))?;
                r.colon()?;
                match key {
                    Some(key) => {
                        let v = r.value()?;
                        entries.push((key, v));
                        Some(())
                    }
                    None => r.skip(),
                }
            })?;
            Some(Value::Object(entries))
        })
    }

    /// Checks one value as [`Reader::value`] would read it, building nothing.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.nested(|r| {
                r.members(b'}', |r| {
                    if r.peek() != Some(b'"') {
                        return None;
                    }
                    r.skip_string()?;
                    r.colon()?;
                    r.skip()
                })
            }),
            b'[' => self.nested(|r| r.members(b']', Self::skip)),
            b'"' => self.skip_string().map(drop),
            b't' => self.word("true", ()),
            b'f' => self.word("false", ()),
            b'n' => self.word("null", ()),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// The members of an object (`close` is `}`) or the items of an array (`]`), from the
    /// opening bracket to the closing one; `each` reads one member or item.
    fn members(&mut self, close: u8, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.i += 1; // { or [
        self.ws();
        if self.eat(close) {
            return Some(());
        }
        loop {
            each(self)?;
            self.ws();
            if self.eat(close) {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
            self.ws();
        }
    }

    /// An object member's key.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string()
    }

    /// An object member's key when `wanted` says so (`Some(None)` for a key it does not
    /// want, checked but not built).
    fn key_if(&mut self, wanted: impl Fn(&str) -> bool) -> Option<Option<Cow<'a, str>>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let at = self.i;
        if self.skip_string()? {
            // Escapes: compare the decoded key (rare in keys, so read it again).
            self.i = at;
            return Some(self.string()?).map(|key| wanted(&key).then_some(key));
        }
        let key = &self.s[at + 1..self.i - 1];
        Some(wanted(key).then_some(Cow::Borrowed(key)))
    }

    /// The colon after a key, with the whitespace around it.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        if !self.eat(b':') {
            return None;
        }
        self.ws();
        Some(())
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn word<T>(&mut self, w: &str, v: T) -> Option<T> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Some(v)
        } else {
            None
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
                    let (c, next) = self.escape(j)?;
                    out.push(c);
                    j = next;
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

    /// Checks a string as [`Reader::string`] reads it without building it; `true` when it
    /// has escapes.
    #[inline(always)]
    fn skip_string(&mut self) -> Option<bool> {
        let mut escaped = false;
        let mut j = self.i + 1;
        loop {
            j = plain_run(self.b, j);
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    j = self.escape(j)?.1;
                }
                _ => return None, // a control character
            }
        }
    }

    /// The escape sequence at `j` (a backslash): the character it stands for and the index
    /// after it. A `\u` high surrogate must be followed by an escaped low one; a lone
    /// surrogate is refused.
    fn escape(&self, j: usize) -> Option<(char, usize)> {
        let c = match *self.b.get(j + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{08}',
            b'f' => '\u{0c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4(j + 2)?;
                if !(0xD800..0xDC00).contains(&hi) {
                    return Some((char::from_u32(hi)?, j + 6));
                }
                if self.b.get(j + 6..j + 8)? != b"\\u" {
                    return None;
                }
                let lo = self.hex4(j + 8)?;
                if !(0xDC00..0xE000).contains(&lo) {
                    return None;
                }
                let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Some((char::from_u32(code)?, j + 12));
            }
            _ => return None,
        };
        Some((c, j + 2))
    }

    /// Checks a number (RFC 8259's grammar) without converting it; [`Reader::number`] checks
    /// with it too.
    #[inline(always)]
    fn skip_number(&mut self) -> Option<()> {
        let b = self.b;
        let digits = |mut j: usize| {
            while let Some(b'0'..=b'9') = b.get(j) {
                j += 1;
            }
            j
        };
        let mut j = self.i;
        if b.get(j) == Some(&b'-') {
            j += 1;
        }
        j = match b.get(j)? {
            b'0' => j + 1,
            b'1'..=b'9' => digits(j + 1),
            _ => return None,
        };
        if b.get(j) == Some(&b'.') {
            let end = digits(j + 1);
            if end == j + 1 {
                return None;
            }
            j = end;
        }
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            if let Some(b'+' | b'-') = b.get(j) {
                j += 1;
            }
            let end = digits(j);
            if end == j {
                return None;
            }
            j = end;
        }
        self.i = j;
        Some(())
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
        self.skip_number()?;
        let text = &self.s[start..self.i];
        // The grammar is checked: only the value is worked out here.
        let b = text.as_bytes();
        let negative = b.first() == Some(&b'-');
        let mut mantissa: u64 = 0;
        let mut digits = 0usize;
        let mut fraction = 0usize;
        let mut in_fraction = false;
        let mut exponent: i64 = 0;
        for (j, &c) in b.iter().enumerate().skip(usize::from(negative)) {
            match c {
                b'0'..=b'9' => {
                    // Leading zeros (`0.05`) do not count against the 15 digits.
                    if digits > 0 || c != b'0' {
                        if digits < 19 {
                            mantissa = mantissa * 10 + u64::from(c - b'0');
                        }
                        digits += 1;
                    }
                    fraction += usize::from(in_fraction);
                }
                b'.' => in_fraction = true,
                _ => {
                    // `e` or `E`, then an optional sign and digits.
                    let (sign, rest) = match b.get(j + 1) {
                        Some(b'-') => (-1, &b[j + 2..]),
                        Some(b'+') => (1, &b[j + 2..]),
                        _ => (1, &b[j + 1..]),
                    };
                    for &e in rest {
                        exponent = (exponent * 10 + i64::from(e - b'0')).min(100_000);
                    }
                    exponent *= sign;
                    break;
                }
            }
        }
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
/// or a control character (or `b.len()`). Eight bytes at a time while eight remain.
#[inline(always)]
fn plain_run(b: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte that is zero, and possibly of bytes after the first zero one
    // (a borrow runs upward), so the lowest set bit always marks the first zero byte.
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut j = from;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Bytes below 0x20 (exact for thresholds up to 0x80), quotes and backslashes; the
        // lowest bit set is the first such byte, as above.
        let special = x.wrapping_sub(ONES * 0x20) & !x & HIGH
            | zeros(x ^ (ONES * u64::from(b'"')))
            | zeros(x ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            return j + (special.trailing_zeros() / 8) as usize;
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
    let b = s.as_bytes();
    let mut start = 0;
    // Every character that needs escaping is ASCII (`"`, `\\`, controls: what `plain_run`
    // stops at), so runs that need none are found eight bytes at a time and copied whole.
    loop {
        let i = plain_run(b, start);
        out.push_str(&s[start..i]);
        let Some(&c) = b.get(i) else { break };
        let escape = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            _ => "",
        };
        if escape.is_empty() {
            use fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", c);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
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
        let v = parse_payload(bytes, None);
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
            assert!(matches!(parse_payload(p, None), Value::Binary(_)), "{p:?}");
        }
        assert!(matches!(parse_payload(b"  {\"a\":1}  ", None), Value::Object(_)));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let v = parse_payload(br#"{"a":1,"a":2}"#, None);
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
        match parse_payload(bytes, None) {
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

    /// A fixed-seed generator of near-JSON objects with keys `k0`..`k2` (duplicates
    /// included): pieces that are canonical, not canonical, or not JSON at all, so every
    /// outcome of a check is exercised.
    fn generated_documents(count: usize) -> Vec<String> {
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
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\x\"",
            "\"é\"",
            "true",
            "false",
            "null",
            "tru",
            "[]",
            "{}",
            "[1,]",
            "{\"a\":}",
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
            "-",
            "1.",
            "1e",
            "1e+",
            "-01",
            "1E+2",
            "2e-0",
            "-0.0e-5",
            "[[1,{\"a\":[]}],\"x\"]",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n
        };
        (0..count)
            .map(|_| {
                let mut doc = String::from("{");
                for k in 0..next(5) {
                    if k > 0 {
                        doc.push(',');
                    }
                    // Sometimes the key is written with an escape (`\u0030` is `0`).
                    let key = next(3);
                    if next(5) == 0 {
                        doc.push_str(&format!("\"k\\u003{key}\":"));
                    } else {
                        doc.push_str(&format!("\"k{key}\":"));
                    }
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
                doc
            })
            .collect()
    }

    #[test]
    fn canonical_check_agrees_with_parse_and_write_on_generated_documents() {
        let mut agree = (0, 0);
        for doc in generated_documents(20_000) {
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

    /// What the full parse gives, cut down to the members named in `keys`.
    fn filtered(doc: &str, keys: &[Box<str>]) -> String {
        match parse_payload(doc.as_bytes(), None) {
            Value::Object(entries) => json(&Value::Object(
                entries
                    .into_iter()
                    .filter(|(k, _)| keys.iter().any(|w| **w == **k))
                    .collect(),
            )),
            other => json(&other),
        }
    }

    #[test]
    fn parsing_some_keys_agrees_with_parsing_all_on_generated_documents() {
        let key_sets: [&[&str]; 4] = [&[], &["k0"], &["k1", "k2"], &["k0", "k1", "k2", "n"]];
        let mut outcomes = (0, 0);
        for doc in generated_documents(20_000) {
            for keys in key_sets {
                let keys: Vec<Box<str>> = keys.iter().map(|k| Box::from(*k)).collect();
                let slim = parse_payload(doc.as_bytes(), Some(&keys));
                assert_eq!(json(&slim), filtered(&doc, &keys), "{doc} {keys:?}");
                match slim {
                    Value::Object(_) => outcomes.0 += 1,
                    _ => outcomes.1 += 1,
                }
            }
        }
        assert!(outcomes.0 > 10_000 && outcomes.1 > 10_000, "{outcomes:?}");
    }

    #[test]
    fn parsing_some_keys_checks_the_members_it_skips() {
        let keys: Vec<Box<str>> = vec!["temp".into()];
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (doc, object) in [
            (
                r#"{"temp":1,"other":{"a":[1,2,{"b":"c"}],"d":null}}"#.to_owned(),
                true,
            ),
            (r#" {"other":"\ud83d\ude00","temp":-2.5} "#.to_owned(), true),
            // Whatever the full parse refuses makes the payload binary, skipped member or not.
            (r#"{"temp":1,"other":"\ud83d"}"#.to_owned(), false),
            (r#"{"temp":1,"other":[1,]}"#.to_owned(), false),
            (r#"{"temp":1,"other":01}"#.to_owned(), false),
            (r#"{"temp":1,"other":tru}"#.to_owned(), false),
            (r#"{"temp":1,"other":"a"}x"#.to_owned(), false),
            ("{\"temp\":1,\"other\":\"a\u{1}\"}".to_owned(), false),
            // Nesting: 128 levels in all are allowed, 129 are not, in skipped members too.
            (format!(r#"{{"temp":1,"other":{}}}"#, deep(127)), true),
            (format!(r#"{{"temp":1,"other":{}}}"#, deep(128)), false),
        ] {
            let slim = parse_payload(doc.as_bytes(), Some(&keys));
            assert_eq!(matches!(slim, Value::Object(_)), object, "{doc}");
            assert_eq!(json(&slim), filtered(&doc, &keys), "{doc}");
        }
        assert!(matches!(parse_payload(b"[1]", Some(&keys)), Value::Binary(_)));
        assert!(matches!(parse_payload(b"80", Some(&keys)), Value::Binary(_)));
        assert!(matches!(
            parse_payload(&[0xff, b'{'], Some(&keys)),
            Value::Binary(_)
        ));
        assert!(matches!(
            parse_payload(b"{\"o\":\"\xff\"}", Some(&keys)),
            Value::Binary(_)
        ));
    }

    #[test]
    fn plain_run_finds_the_first_byte_a_string_scan_must_see() {
        let naive = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&j| b[j] == b'"' || b[j] == b'\\' || b[j] < 0x20)
                .unwrap_or(b.len())
        };
        // Every placement of one or two special bytes among plain ones (ASCII, UTF-8 lead and
        // continuation bytes, the bytes just above and below the thresholds).
        let plain = [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xa9, 0xff];
        let special = [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n'];
        for len in 0..20 {
            for (n, &p) in plain.iter().enumerate() {
                let mut b = vec![p; len];
                assert_eq!(plain_run(&b, 0), len);
                for i in 0..len {
                    for &s1 in &special {
                        b[i] = s1;
                        for from in 0..=len {
                            assert_eq!(plain_run(&b, from), naive(&b, from), "{b:?} {from}");
                        }
                        let k = (i + n + 3) % len;
                        let keep = b[k];
                        b[k] = special[n % special.len()];
                        assert_eq!(plain_run(&b, 0), naive(&b, 0), "{b:?}");
                        b[k] = keep;
                        b[i] = p;
                    }
                }
            }
        }
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
