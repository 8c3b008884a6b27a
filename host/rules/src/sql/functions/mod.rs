//! The built-in functions: their names and arities (checked at parse time), what can be
//! prepared once per statement (regular expressions, date patterns), and their evaluation.
//!
//! AWS says a function given arguments of the wrong type returns `Undefined`; so do these.
//! A wrong number of arguments is different: it is a mistake in the statement, so it is
//! reported when the rule is created, with the position.

mod math;
mod text;
pub(crate) mod time;

use std::borrow::Cow;

use super::ast::Expr;
use super::error::{EvalError, ShadowFailure};
use super::eval::{Env, ShadowRequest, eval};
use super::value::{Num, Value, to_i64, to_str};

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Topic,
    ClientId,
    Timestamp,
    Principal,
    AccountId,
    TraceId,
    SqlVersion,
    NewUuid,
    Rand,
    Get,
    IsUndefined,
    IsNull,
    Abs,
    Ceil,
    Floor,
    Round,
    Sqrt,
    Sign,
    Exp,
    Ln,
    Log,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Atan2,
    Power,
    Mod,
    Trunc,
    BitAnd,
    BitOr,
    BitXor,
    BitNot,
    Nanvl,
    Lower,
    Upper,
    Length,
    NumBytes,
    Ltrim,
    Rtrim,
    Trim,
    Chr,
    Concat,
    StartsWith,
    EndsWith,
    IndexOf,
    Substring,
    Lpad,
    Rpad,
    Replace,
    RegexpMatches,
    RegexpReplace,
    RegexpSubstr,
    Encode,
    Decode,
    ParseTime,
    GetThingShadow,
    GeoDistance,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// A function's name and how many arguments it takes.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) func: Func,
    pub(crate) min: usize,
    pub(crate) max: usize,
}

const ANY: usize = usize::MAX;

macro_rules! specs {
    ($($name:literal => $func:ident($min:expr, $max:expr)),* $(,)?) => {
        const SPECS: &[Spec] = &[$(Spec { name: $name, func: Func::$func, min: $min, max: $max }),*];
    };
}

specs! {
    "topic" => Topic(0, 1),
    "clientid" => ClientId(0, 0),
    "timestamp" => Timestamp(0, 0),
    "principal" => Principal(0, 0),
    "accountid" => AccountId(0, 0),
    "traceid" => TraceId(0, 0),
    "sql_version" => SqlVersion(0, 0),
    "newuuid" => NewUuid(0, 0),
    "rand" => Rand(0, 0),
    "get" => Get(2, 2),
    "isUndefined" => IsUndefined(1, 1),
    "isNull" => IsNull(1, 1),
    "abs" => Abs(1, 1),
    "ceil" => Ceil(1, 1),
    "floor" => Floor(1, 1),
    "round" => Round(1, 1),
    "sqrt" => Sqrt(1, 1),
    "sign" => Sign(1, 1),
    "exp" => Exp(1, 1),
    "ln" => Ln(1, 1),
    "log" => Log(1, 1),
    "sin" => Sin(1, 1),
    "cos" => Cos(1, 1),
    "tan" => Tan(1, 1),
    "asin" => Asin(1, 1),
    "acos" => Acos(1, 1),
    "atan" => Atan(1, 1),
    "sinh" => Sinh(1, 1),
    "cosh" => Cosh(1, 1),
    "tanh" => Tanh(1, 1),
    "atan2" => Atan2(2, 2),
    "power" => Power(2, 2),
    "mod" => Mod(2, 2),
    "remainder" => Mod(2, 2),
    "trunc" => Trunc(2, 2),
    "bitand" => BitAnd(2, 2),
    "bitor" => BitOr(2, 2),
    "bitxor" => BitXor(2, 2),
    "bitnot" => BitNot(1, 1),
    "nanvl" => Nanvl(2, 2),
    "lower" => Lower(1, 1),
    "upper" => Upper(1, 1),
    "length" => Length(1, 1),
    "numbytes" => NumBytes(1, 1),
    "ltrim" => Ltrim(1, 1),
    "rtrim" => Rtrim(1, 1),
    "trim" => Trim(1, 1),
    "chr" => Chr(1, 1),
    "concat" => Concat(0, ANY),
    "startswith" => StartsWith(2, 2),
    "endswith" => EndsWith(2, 2),
    "indexof" => IndexOf(2, 2),
    "substring" => Substring(2, 3),
    "lpad" => Lpad(2, 2),
    "rpad" => Rpad(2, 2),
    "replace" => Replace(3, 3),
    "regexp_matches" => RegexpMatches(2, 2),
    "regexp_replace" => RegexpReplace(3, 3),
    "regexp_substr" => RegexpSubstr(2, 2),
    "encode" => Encode(2, 2),
    "decode" => Decode(2, 2),
    "parse_time" => ParseTime(2, 3),
    "get_thing_shadow" => GetThingShadow(1, 3),
    "geo_distance" => GeoDistance(4, 4),
    "sha1" => Sha1(1, 1),
    "sha224" => Sha224(1, 1),
    "sha256" => Sha256(1, 1),
    "sha384" => Sha384(1, 1),
    "sha512" => Sha512(1, 1),
}

/// AWS IoT functions Shoal knows by name but does not provide (they call AWS services, or
/// need algorithms it does not ship); naming them gets a clearer error than "unknown".
const AWS_ONLY: &[&str] = &[
    "aws_lambda",
    "get_dynamodb",
    "get_secret",
    "machinelearning_predict",
    "md2",
    "md5",
    "time_to_epoch",
    "transform",
    "get_mqtt_property",
    "get_registry_data",
    "get_user_properties",
];

/// The function called `name` (case-insensitive, as in AWS: `Round`, `isNull`).
pub(crate) fn lookup(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// Whether `name` is an AWS IoT function Shoal does not implement.
pub(crate) fn is_aws_only(name: &str) -> bool {
    AWS_ONLY.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl Func {
    /// The canonical name, used as the output key of an un-aliased call.
    pub(crate) fn name(self) -> &'static str {
        SPECS.iter().find(|s| s.func == self).map_or("_", |s| s.name)
    }
}

/// Work done once per statement for a call whose key argument is a literal.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    Regex(regex::Regex),
    TimePattern(time::Pattern),
}

/// Checks literal arguments and prepares what can be prepared. An `Err` names the argument
/// (0-based) and what is wrong with it.
pub(crate) fn prepare(func: Func, args: &[Expr]) -> Result<Option<Prepared>, (usize, String)> {
    let literal = |i: usize| match args.get(i) {
        Some(Expr::Literal(Value::String(s))) => Some(s.as_ref()),
        _ => None,
    };
    match func {
        Func::RegexpMatches | Func::RegexpReplace | Func::RegexpSubstr => match literal(1) {
            Some(p) => regex::Regex::new(p)
                .map(|r| Some(Prepared::Regex(r)))
                .map_err(|e| {
                    (
                        1,
                        format!("invalid regular expression: {}", last_line(&e.to_string())),
                    )
                }),
            None => Ok(None),
        },
        Func::ParseTime => match literal(0) {
            Some(p) => time::Pattern::parse(p)
                .map(|p| Some(Prepared::TimePattern(p)))
                .map_err(|e| (0, format!("invalid date pattern: {e}"))),
            None => Ok(None),
        },
        Func::Encode | Func::Decode => match literal(1) {
            Some(s) if !s.eq_ignore_ascii_case("base64") => Err((
                1,
                format!("unsupported encoding '{s}' (only 'base64' is supported)"),
            )),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The gist of a multi-line `regex` error (its last non-empty line).
/// The `n`th (from 1) `/`-separated level of `topic`: `topic(n)`. A byte scan: topics are
/// short, and this runs for most rules on every message.
fn topic_level(topic: &str, n: usize) -> Option<&str> {
    let mut level = 1;
    let mut start = 0;
    for (i, &c) in topic.as_bytes().iter().enumerate() {
        if c == b'/' {
            if level == n {
                return Some(&topic[start..i]);
            }
            level += 1;
            start = i + 1;
        }
    }
    (level == n).then(|| &topic[start..])
}

fn last_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

/// Evaluates a call.
pub(crate) fn call<'a>(
    func: Func,
    args: &'a [Expr],
    prepared: Option<&'a Prepared>,
    env: &Env<'a, '_>,
) -> Result<Value<'a>, EvalError> {
    let ctx = env.ctx;
    // Calls that need no evaluated arguments, or treat them specially.
    match func {
        Func::Topic => {
            return Ok(match args.first() {
                None => Value::str(ctx.topic()),
                Some(e) => {
                    let n = eval(e, env)?;
                    match to_i64(&n) {
                        Some(n) if n >= 1 => {
                            topic_level(ctx.topic(), n as usize).map_or(Value::Undefined, Value::str)
                        }
                        _ => Value::Undefined,
                    }
                }
            });
        }
        Func::ClientId => return Ok(Value::str(ctx.client_id().unwrap_or("n/a"))),
        Func::Timestamp => return Ok(Value::Int(ctx.timestamp_ms())),
        Func::Principal => return Ok(ctx.principal().map_or(Value::Undefined, Value::str)),
        Func::AccountId => return Ok(ctx.account_id().map_or(Value::Undefined, Value::str)),
        Func::TraceId => return Ok(ctx.trace_id().map_or(Value::Undefined, Value::str)),
        Func::SqlVersion => return Ok(Value::str("2016-03-23")),
        Func::NewUuid => return Ok(Value::str(ctx.services().new_uuid())),
        Func::Rand => return Ok(Value::decimal(ctx.services().random())),
        Func::Encode if matches!(args.first(), Some(Expr::Payload)) && env.is_root() => {
            // `encode(*, ...)` encodes the message bytes as received, JSON or not.
            let scheme = eval(&args[1], env)?;
            return Ok(text::encode(Cow::Borrowed(ctx.payload()), &scheme));
        }
        _ => {}
    }
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(eval(a, env)?);
    }
    let regex = match prepared {
        Some(Prepared::Regex(r)) => Some(r),
        _ => None,
    };
    let v = match func {
        Func::Get => get(take(&mut vals, 0), &vals[1]),
        Func::IsUndefined => Value::Bool(vals[0].is_undefined()),
        Func::IsNull => Value::Bool(matches!(vals[0].get(), Value::Null)),
        Func::Nanvl => {
            let first = take(&mut vals, 0);
            match first.get() {
                Value::Undefined | Value::Null => take(&mut vals, 1),
                _ => first,
            }
        }
        Func::GetThingShadow => thing_shadow(&vals, env)?,
        Func::ParseTime => {
            let pattern = match prepared {
                Some(Prepared::TimePattern(p)) => Cow::Borrowed(p),
                _ => match to_str(&vals[0]).map(|p| time::Pattern::parse(&p)) {
                    Some(Ok(p)) => Cow::Owned(p),
                    _ => return Ok(Value::Undefined),
                },
            };
            time::parse_time(&pattern, &vals[1], vals.get(2))
        }
        Func::Abs
        | Func::Ceil
        | Func::Floor
        | Func::Round
        | Func::Sqrt
        | Func::Sign
        | Func::Exp
        | Func::Ln
        | Func::Log
        | Func::Sin
        | Func::Cos
        | Func::Tan
        | Func::Asin
        | Func::Acos
        | Func::Atan
        | Func::Sinh
        | Func::Cosh
        | Func::Tanh
        | Func::Atan2
        | Func::Power
        | Func::Mod
        | Func::Trunc
        | Func::BitAnd
        | Func::BitOr
        | Func::BitXor
        | Func::BitNot
        | Func::GeoDistance => math::call(func, &vals),
        _ => text::call(func, vals, regex),
    };
    Ok(v)
}

/// Moves argument `i` out (its slot is left `Undefined`).
fn take<'a>(vals: &mut [Value<'a>], i: usize) -> Value<'a> {
    std::mem::replace(&mut vals[i], Value::Undefined)
}

/// `get(collection, key)` and `collection[key]`: an array or string by 0-based index
/// (converted to Int), an object by string key (not converted).
pub(crate) fn get<'a>(container: Value<'a>, key: &Value<'_>) -> Value<'a> {
    match container {
        Value::Ref(r) => match r {
            Value::Array(items) => {
                index(items.len(), key).map_or(Value::Undefined, |i| Value::view(&items[i]))
            }
            Value::Object(entries) => match key.get() {
                Value::String(k) => super::value::lookup(entries, k).map_or(Value::Undefined, Value::view),
                _ => Value::Undefined,
            },
            _ => Value::Undefined,
        },
        Value::Array(mut items) => match index(items.len(), key) {
            Some(i) => items.swap_remove(i),
            None => Value::Undefined,
        },
        Value::Object(mut entries) => match key.get() {
            Value::String(k) => match entries.iter().rposition(|(name, _)| name == k) {
                Some(i) => entries.swap_remove(i).1,
                None => Value::Undefined,
            },
            _ => Value::Undefined,
        },
        Value::String(s) => {
            let len = s.chars().count();
            match index(len, key).and_then(|i| s.chars().nth(i)) {
                Some(c) => Value::str(c.to_string()),
                None => Value::Undefined,
            }
        }
        _ => Value::Undefined,
    }
}

fn index(len: usize, key: &Value<'_>) -> Option<usize> {
    let i = to_i64(key)?;
    usize::try_from(i).ok().filter(|&i| i < len)
}

/// `get_thing_shadow(thing[, shadow], roleArn)`; Shoal also accepts the thing alone.
fn thing_shadow<'a>(vals: &[Value<'_>], env: &Env<'a, '_>) -> Result<Value<'a>, EvalError> {
    let strs: Option<Vec<Cow<'_, str>>> = vals
        .iter()
        .map(|v| match v.get() {
            Value::String(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        })
        .collect();
    let Some(strs) = strs else {
        return Ok(Value::Undefined);
    };
    let request = match strs.as_slice() {
        [thing] => ShadowRequest {
            thing,
            shadow: None,
            role_arn: None,
        },
        [thing, role] => ShadowRequest {
            thing,
            shadow: None,
            role_arn: Some(role),
        },
        [thing, shadow, role] => ShadowRequest {
            thing,
            shadow: Some(shadow),
            role_arn: Some(role),
        },
        _ => return Ok(Value::Undefined),
    };
    match env.ctx.services().thing_shadow(&request) {
        Ok(Some(doc)) => Ok(Value::from_json(doc)),
        Ok(None) => Ok(Value::Undefined),
        Err(message) => Err(EvalError::ThingShadow(Box::new(ShadowFailure {
            thing: request.thing.to_owned(),
            message,
        }))),
    }
}

/// The numeric arguments of a function, or `None` if any is not a number or numeric string.
fn nums(vals: &[Value<'_>]) -> Option<Vec<Num>> {
    vals.iter().map(Num::of).collect()
}

#[cfg(test)]
mod tests {
    use super::topic_level;

    #[test]
    fn topic_levels_are_what_splitting_on_slashes_gives() {
        for topic in [
            "fleet/truck-1/telemetry",
            "a",
            "",
            "a//b",
            "/a",
            "a/",
            "/",
            "é/ü/x",
        ] {
            for n in 1..6 {
                assert_eq!(topic_level(topic, n), topic.split('/').nth(n - 1), "{topic} {n}");
            }
        }
    }
}
