//! Numeric functions. Arguments convert as AWS's tables say: `Int` and `Decimal` as they are,
//! numeric strings to `Decimal`, anything else gives `Undefined`. Functions AWS documents as
//! "Decimal (with double precision)" compute in `f64` and are not rounded further.

use super::super::ops;
use super::super::value::{Num, Value, round_decimal, whole_to_i64};
use super::{Func, nums};

pub(super) fn call<'a>(func: Func, vals: &[Value<'_>]) -> Value<'a> {
    let Some(n) = nums(vals) else {
        return Value::Undefined;
    };
    let double = |f: fn(f64) -> f64| Value::decimal(f(n[0].f64()));
    match func {
        Func::Abs => match n[0] {
            Num::Int(i) => i
                .checked_abs()
                .map_or(Value::decimal((i as f64).abs()), Value::Int),
            Num::Dec(d) => Value::decimal(d.abs()),
        },
        Func::Ceil => to_int(n[0], f64::ceil),
        Func::Floor => to_int(n[0], f64::floor),
        // AWS's examples round half away from zero: round(1.5) = 2, round(-1.5) = -2.
        Func::Round => to_int(n[0], f64::round),
        Func::Sign => Value::Int(match n[0] {
            Num::Int(i) => i.signum(),
            Num::Dec(d) if d > 0.0 => 1,
            Num::Dec(d) if d < 0.0 => -1,
            Num::Dec(_) => 0,
        }),
        Func::Sqrt => double(f64::sqrt),
        Func::Exp => double(f64::exp),
        Func::Ln => double(f64::ln),
        Func::Log => double(f64::log10),
        Func::Sin => double(f64::sin),
        Func::Cos => double(f64::cos),
        Func::Tan => double(f64::tan),
        Func::Asin => double(f64::asin),
        Func::Acos => double(f64::acos),
        Func::Atan => double(f64::atan),
        Func::Sinh => double(f64::sinh),
        Func::Cosh => double(f64::cosh),
        Func::Tanh => double(f64::tanh),
        // atan2(y, x) as in Java's Math.atan2 (AWS: atan2(1, 0) = pi/2).
        Func::Atan2 => Value::decimal(n[0].f64().atan2(n[1].f64())),
        Func::Power => Value::decimal(n[0].f64().powf(n[1].f64())),
        Func::Mod => ops::remainder(n[0], n[1]),
        Func::Trunc => trunc(n[0], n[1]),
        Func::BitAnd => bits(&n, |a, b| a & b),
        Func::BitOr => bits(&n, |a, b| a | b),
        Func::BitXor => bits(&n, |a, b| a ^ b),
        // Two's complement, as Java's `~` (AWS's page shows bitnot(13) = 2, which no 64-bit
        // integer NOT produces; we return -14).
        Func::BitNot => floor_int(n[0]).map_or(Value::Undefined, |a| Value::Int(!a)),
        Func::GeoDistance => geo_distance(n[0].f64(), n[1].f64(), n[2].f64(), n[3].f64()),
        _ => Value::Undefined,
    }
}

/// Rounds with `f` to an `Int` (a `Decimal` when the result is beyond `i64`).
fn to_int<'a>(n: Num, f: fn(f64) -> f64) -> Value<'a> {
    match n {
        Num::Int(i) => Value::Int(i),
        Num::Dec(d) => {
            let r = f(d);
            whole_to_i64(r).map_or(Value::decimal(r), Value::Int)
        }
    }
}

fn floor_int(n: Num) -> Option<i64> {
    match n {
        Num::Int(i) => Some(i),
        Num::Dec(d) => whole_to_i64(d.floor()),
    }
}

fn bits<'a>(n: &[Num], f: fn(i64, i64) -> i64) -> Value<'a> {
    match (floor_int(n[0]), floor_int(n[1])) {
        (Some(a), Some(b)) => Value::Int(f(a, b)),
        _ => Value::Undefined,
    }
}

/// `trunc(x, places)`: drops digits after `places` decimal places (clamped to 0..=34); the
/// result has no trailing zeros, so a whole result is an `Int`.
fn trunc<'a>(x: Num, places: Num) -> Value<'a> {
    let places = floor_int(places).unwrap_or(0).clamp(0, 34) as usize;
    let d = match x {
        Num::Int(i) => return Value::Int(i),
        Num::Dec(d) => d,
    };
    // Work on the shortest decimal text of the double, so 0.29 truncates to 0.29 and not to
    // 0.28 (0.29 * 100 is 28.999999999999996 in binary).
    let text = if d.abs() >= 1e21 || (d != 0.0 && d.abs() < 1e-7) {
        format!("{d:.40}")
    } else {
        format!("{d}")
    };
    let cut = match text.find('.') {
        Some(dot) => &text[..(dot + 1 + places).min(text.len())],
        None => &text,
    };
    match cut.trim_end_matches('.').parse::<f64>() {
        Ok(v) => Value::number(v),
        Err(_) => Value::Undefined,
    }
}

/// Great-circle distance in metres between two WGS84 points given in degrees, on a sphere of
/// the mean Earth radius: the haversine distance, computed in its `atan2` form (the spherical
/// case of Vincenty's formula), which stays exact for antipodal points where `asin(sqrt(h))`
/// loses half its digits. Latitudes outside -90..=90 or longitudes outside -180..=180 give
/// `Undefined`.
pub(crate) fn geo_distance<'a>(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> Value<'a> {
    let lat_ok = |l: f64| (-90.0..=90.0).contains(&l);
    let lon_ok = |l: f64| (-180.0..=180.0).contains(&l);
    if !(lat_ok(lat1) && lat_ok(lat2) && lon_ok(lon1) && lon_ok(lon2)) {
        return Value::Undefined;
    }
    let d = shoal_geo::distance_m((lat1, lon1), (lat2, lon2));
    // Millimetre resolution is plenty and keeps the output readable.
    Value::decimal(round_decimal((d * 1000.0).round() / 1000.0))
}
