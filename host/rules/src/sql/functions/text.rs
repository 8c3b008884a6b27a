//! String functions, regular expressions, base64 and hashes. Non-string arguments convert by
//! the standard rules (numbers and booleans printed, arrays and objects as JSON); `Null` and
//! `Undefined` do not convert, so they give `Undefined`. Lengths and indexes count characters
//! (Unicode scalar values).

use std::borrow::Cow;

use base64::Engine as _;
use sha2::Digest as _;

use super::super::json::parse_json;
use super::super::value::{Value, to_i64, to_str};
use super::{Func, take};

pub(super) fn call<'a>(func: Func, mut vals: Vec<Value<'a>>, regex: Option<&regex::Regex>) -> Value<'a> {
    match func {
        Func::Concat => return concat(vals),
        Func::Encode => {
            let bytes = match take(&mut vals, 0) {
                Value::Binary(b) => b,
                Value::Ref(Value::Binary(b)) => Cow::Borrowed(b.as_ref()),
                other => match to_str(&other) {
                    Some(t) => Cow::Owned(t.into_owned().into_bytes()),
                    None => return Value::Undefined,
                },
            };
            return encode(bytes, &vals[1]);
        }
        _ => {}
    }
    let s = |i: usize| vals.get(i).and_then(to_str);
    let owned = |v: String| Value::String(Cow::Owned(v));
    // Every other function needs its first argument as text.
    let Some(first) = s(0) else {
        return Value::Undefined;
    };
    match func {
        Func::Lower => owned(first.to_lowercase()),
        Func::Upper => owned(first.to_uppercase()),
        Func::Length => Value::Int(first.chars().count() as i64),
        Func::NumBytes => Value::Int(first.len() as i64),
        Func::Ltrim => owned(first.trim_start_matches(is_space).to_owned()),
        Func::Rtrim => owned(first.trim_end_matches(is_space).to_owned()),
        Func::Trim => owned(first.trim_matches(is_space).to_owned()),
        Func::Chr => match to_i64(&vals[0]) {
            Some(code @ 0..=127) => owned(char::from(code as u8).to_string()),
            _ => Value::Undefined,
        },
        Func::StartsWith => s(1).map_or(Value::Undefined, |p| Value::Bool(first.starts_with(p.as_ref()))),
        Func::EndsWith => s(1).map_or(Value::Undefined, |p| Value::Bool(first.ends_with(p.as_ref()))),
        Func::IndexOf => match s(1) {
            Some(needle) => Value::Int(match first.find(needle.as_ref()) {
                Some(byte) => first[..byte].chars().count() as i64,
                None => -1,
            }),
            None => Value::Undefined,
        },
        Func::Substring => substring(&first, &vals[1], vals.get(2)),
        Func::Lpad | Func::Rpad => match to_i64(&vals[1]) {
            Some(n) => {
                let pad = " ".repeat(n.clamp(0, 1000) as usize);
                owned(if func == Func::Lpad {
                    format!("{pad}{first}")
                } else {
                    format!("{first}{pad}")
                })
            }
            None => Value::Undefined,
        },
        Func::Replace => match (s(1), s(2)) {
            (Some(from), Some(to)) => owned(first.replace(from.as_ref(), &to)),
            _ => Value::Undefined,
        },
        Func::RegexpMatches | Func::RegexpReplace | Func::RegexpSubstr => {
            let compiled;
            let re = match regex {
                Some(r) => r,
                None => match s(1).map(|p| regex::Regex::new(&p)) {
                    Some(Ok(r)) => {
                        compiled = r;
                        &compiled
                    }
                    _ => return Value::Undefined,
                },
            };
            match func {
                Func::RegexpMatches => Value::Bool(re.is_match(&first)),
                Func::RegexpSubstr => re
                    .find(&first)
                    .map_or(Value::Undefined, |m| owned(m.as_str().to_owned())),
                _ => match s(2) {
                    Some(with) => owned(re.replace_all(&first, with.as_ref()).into_owned()),
                    None => Value::Undefined,
                },
            }
        }
        Func::Decode => decode(&first, &vals[1]),
        Func::Sha1 => owned(hex(&sha1::Sha1::digest(first.as_bytes()))),
        Func::Sha224 => owned(hex(&sha2::Sha224::digest(first.as_bytes()))),
        Func::Sha256 => owned(hex(&sha2::Sha256::digest(first.as_bytes()))),
        Func::Sha384 => owned(hex(&sha2::Sha384::digest(first.as_bytes()))),
        Func::Sha512 => owned(hex(&sha2::Sha512::digest(first.as_bytes()))),
        _ => Value::Undefined,
    }
}

/// White space as Java's `String.trim` sees it: spaces, tabs, line breaks and other control
/// characters.
fn is_space(c: char) -> bool {
    c <= ' '
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `concat(...)`: no arguments is `Undefined`, one is returned as is; with an array among
/// them the result is one array (array arguments spliced in, others appended); otherwise the
/// text of every argument joined.
fn concat(vals: Vec<Value<'_>>) -> Value<'_> {
    if vals.len() <= 1 {
        return vals.into_iter().next().unwrap_or(Value::Undefined);
    }
    if vals.iter().any(Value::is_undefined) {
        return Value::Undefined;
    }
    if vals.iter().any(|v| matches!(v.get(), Value::Array(_))) {
        let mut out = Vec::new();
        for v in vals {
            match v {
                Value::Array(items) => out.extend(items),
                Value::Ref(Value::Array(items)) => out.extend(items.iter().map(Value::view)),
                other => out.push(other),
            }
        }
        return Value::Array(out);
    }
    let mut out = String::new();
    for v in &vals {
        match to_str(v) {
            Some(s) => out.push_str(&s),
            None => return Value::Undefined,
        }
    }
    Value::String(Cow::Owned(out))
}

/// `substring(s, start[, end])` with AWS's clamping: indexes below 0 become 0, beyond the
/// length become the length, and `start >= end` gives "".
fn substring<'a>(s: &str, start: &Value<'_>, end: Option<&Value<'_>>) -> Value<'a> {
    let len = s.chars().count() as i64;
    let Some(start) = to_i64(start) else {
        return Value::Undefined;
    };
    let end = match end {
        None => len,
        Some(e) => match to_i64(e) {
            Some(e) => e,
            None => return Value::Undefined,
        },
    };
    let (start, end) = (start.clamp(0, len) as usize, end.clamp(0, len) as usize);
    if start >= end {
        return Value::str("");
    }
    Value::String(Cow::Owned(s.chars().skip(start).take(end - start).collect()))
}

fn scheme_ok(scheme: &Value<'_>) -> bool {
    matches!(scheme.get(), Value::String(s) if s.eq_ignore_ascii_case("base64"))
}

/// `encode(value, 'base64')` on bytes already extracted from the value.
pub(super) fn encode<'a>(bytes: Cow<'_, [u8]>, scheme: &Value<'_>) -> Value<'a> {
    if !scheme_ok(scheme) {
        return Value::Undefined;
    }
    Value::String(Cow::Owned(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// `decode(value, 'base64')`: a JSON document decodes to its value (so fields of it can be
/// read), UTF-8 text to a string, other bytes to binary; undecodable input is `Null`, as AWS
/// documents.
fn decode<'a>(text: &str, scheme: &Value<'_>) -> Value<'a> {
    if !scheme_ok(scheme) {
        return Value::Undefined;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let Ok(bytes) = engine.decode(text.trim()) else {
        return Value::Null;
    };
    if let Some(v) = parse_json(&bytes) {
        return v.into_owned();
    }
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(Cow::Owned(s)),
        Err(e) => Value::Binary(Cow::Owned(e.into_bytes())),
    }
}
