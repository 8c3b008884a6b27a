//! `parse_time(pattern, timestamp[, zone])`: formats epoch milliseconds with a Joda-Time /
//! `SimpleDateFormat` pattern.
//!
//! Supported letters: `G` era, `y`/`u` year, `Y` year of era, `M` month (`M`, `MM`, `MMM`
//! Jan, `MMMM` January), `d` day of month, `D` day of year, `E` weekday (`EEE` Mon, `EEEE`
//! Monday), `e` weekday number (1 = Monday), `a` AM/PM, `H` hour 0-23, `k` 1-24, `K` 0-11,
//! `h` 1-12, `m` minute, `s` second, `S` fraction of second, `Z` offset (`+0100`, `ZZ`
//! `+01:00`, `ZZZ` zone id), `z` zone name, `X` ISO offset (`Z`, `+01`, `XX` `+0100`, `XXX`
//! `+01:00`). Text in single quotes is literal (`''` is a quote); other non-letters are copied.
//! Zones: `UTC` (and `GMT`, `Z`, `Etc/UTC`) and fixed offsets (`+01:00`, `-0530`, `UTC+2`);
//! named regional zones such as `America/Belize` need a time-zone database Shoal does not
//! ship, and give `Undefined`.

use super::super::value::{Num, Value};

/// A compiled date pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pattern(Vec<Item>);

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Text(String),
    Field(char, usize),
}

const LETTERS: &str = "GyYuMdDEeaHkKhmsSZzX";

impl Pattern {
    pub(crate) fn parse(p: &str) -> Result<Pattern, String> {
        let mut items = Vec::new();
        let mut text = String::new();
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    text.push('\'');
                    continue;
                }
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted text".to_owned()),
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            text.push('\'');
                        }
                        Some('\'') => break,
                        Some(q) => text.push(q),
                    }
                }
            } else if c.is_ascii_alphabetic() {
                if !LETTERS.contains(c) {
                    return Err(format!("unsupported pattern letter '{c}'"));
                }
                let mut count = 1;
                while chars.peek() == Some(&c) {
                    chars.next();
                    count += 1;
                }
                if !text.is_empty() {
                    items.push(Item::Text(std::mem::take(&mut text)));
                }
                items.push(Item::Field(c, count));
            } else {
                text.push(c);
            }
        }
        if !text.is_empty() {
            items.push(Item::Text(text));
        }
        Ok(Pattern(items))
    }
}

/// A fixed-offset time zone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Zone {
    offset_secs: i64,
}

impl Zone {
    pub(crate) const UTC: Zone = Zone { offset_secs: 0 };

    /// Parses `UTC`-like names and fixed offsets; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<Zone> {
        let s = s.trim();
        let upper = s.to_ascii_uppercase();
        if matches!(
            upper.as_str(),
            "UTC" | "GMT" | "UT" | "Z" | "ZULU" | "UNIVERSAL" | "ETC/UTC" | "ETC/GMT" | "ETC/UCT" | "UCT"
        ) {
            return Some(Zone::UTC);
        }
        let rest = ["UTC", "GMT", "UT"]
            .iter()
            .find_map(|p| upper.strip_prefix(p))
            .unwrap_or(&upper);
        let (sign, digits) = match rest.as_bytes().first() {
            Some(b'+') => (1, &rest[1..]),
            Some(b'-') => (-1, &rest[1..]),
            _ => return None,
        };
        let (h, m) = match digits.split_once(':') {
            Some((h, m)) => (h, m),
            None if digits.len() > 2 => digits.split_at(digits.len() - 2),
            None => (digits, "0"),
        };
        let ok = |t: &str| !t.is_empty() && t.len() <= 2 && t.bytes().all(|b| b.is_ascii_digit());
        if !ok(h) || !ok(m) {
            return None;
        }
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 18 || m > 59 || (h == 18 && m > 0) {
            return None;
        }
        Some(Zone {
            offset_secs: sign * (h * 3600 + m * 60),
        })
    }

    fn offset(&self, colon: bool, utc_as_z: bool) -> String {
        if utc_as_z && self.offset_secs == 0 {
            return "Z".to_owned();
        }
        let sign = if self.offset_secs < 0 { '-' } else { '+' };
        let a = self.offset_secs.abs();
        let (h, m) = (a / 3600, a % 3600 / 60);
        if colon {
            format!("{sign}{h:02}:{m:02}")
        } else {
            format!("{sign}{h:02}{m:02}")
        }
    }

    fn id(&self) -> String {
        if self.offset_secs == 0 {
            "UTC".to_owned()
        } else {
            self.offset(true, false)
        }
    }
}

/// `parse_time` itself: `timestamp` in epoch milliseconds (numbers or numeric strings),
/// `zone` defaulting to UTC.
pub(crate) fn parse_time<'a>(
    pattern: &Pattern,
    timestamp: &Value<'_>,
    zone: Option<&Value<'_>>,
) -> Value<'a> {
    let ms = match Num::of(timestamp) {
        Some(Num::Int(i)) => i,
        Some(Num::Dec(d)) if d.abs() < 9.2e18 => d.floor() as i64,
        _ => return Value::Undefined,
    };
    let zone = match zone.map(Value::get) {
        None => Zone::UTC,
        Some(Value::String(s)) => match Zone::parse(s) {
            Some(z) => z,
            None => return Value::Undefined,
        },
        Some(_) => return Value::Undefined,
    };
    Value::str(format(pattern, ms, &zone))
}

/// Broken-down local time.
struct Civil {
    year: i64,
    month: usize,
    day: i64,
    day_of_year: i64,
    weekday: usize,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
}

fn civil(ms: i64, zone: &Zone) -> Civil {
    let local = ms.saturating_add(zone.offset_secs * 1000);
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month: month as usize,
        day,
        day_of_year: days - days_from_civil(year, 1, 1) + 1,
        // 1970-01-01 was a Thursday; 1 = Monday .. 7 = Sunday.
        weekday: (days + 3).rem_euclid(7) as usize + 1,
        hour: in_day / 3_600_000,
        minute: in_day / 60_000 % 60,
        second: in_day / 1000 % 60,
        millis: in_day % 1000,
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`]: (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn pad(out: &mut String, n: i64, width: usize) {
    use std::fmt::Write as _;
    if n < 0 {
        out.push('-');
    }
    let _ = write!(out, "{:0width$}", n.unsigned_abs());
}

fn format(pattern: &Pattern, ms: i64, zone: &Zone) -> String {
    let t = civil(ms, zone);
    let mut out = String::new();
    for item in &pattern.0 {
        let (c, n) = match item {
            Item::Text(s) => {
                out.push_str(s);
                continue;
            }
            Item::Field(c, n) => (*c, *n),
        };
        match c {
            'G' => out.push_str(if t.year > 0 { "AD" } else { "BC" }),
            'y' | 'u' | 'Y' => {
                let year = if c == 'Y' && t.year <= 0 {
                    1 - t.year
                } else {
                    t.year
                };
                if n == 2 {
                    pad(&mut out, year.rem_euclid(100), 2);
                } else {
                    pad(&mut out, year, n);
                }
            }
            'M' if n >= 4 => out.push_str(MONTHS[t.month - 1]),
            'M' if n == 3 => out.push_str(&MONTHS[t.month - 1][..3]),
            'M' => pad(&mut out, t.month as i64, n),
            'd' => pad(&mut out, t.day, n),
            'D' => pad(&mut out, t.day_of_year, n),
            'E' if n >= 4 => out.push_str(DAYS[t.weekday - 1]),
            'E' => out.push_str(&DAYS[t.weekday - 1][..3]),
            'e' => pad(&mut out, t.weekday as i64, n),
            'a' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'H' => pad(&mut out, t.hour, n),
            'k' => pad(&mut out, if t.hour == 0 { 24 } else { t.hour }, n),
            'K' => pad(&mut out, t.hour % 12, n),
            'h' => pad(&mut out, if t.hour % 12 == 0 { 12 } else { t.hour % 12 }, n),
            'm' => pad(&mut out, t.minute, n),
            's' => pad(&mut out, t.second, n),
            'S' => {
                // A fraction: S is tenths, SS hundredths, SSS milliseconds, more are zeros.
                let digits = format!("{:03}", t.millis);
                for i in 0..n {
                    out.push(digits.as_bytes().get(i).map_or('0', |&b| b as char));
                }
            }
            'Z' if n == 1 => out.push_str(&zone.offset(false, false)),
            'Z' if n == 2 => out.push_str(&zone.offset(true, false)),
            'Z' => out.push_str(&zone.id()),
            'z' if n >= 4 && zone.offset_secs == 0 => out.push_str("Coordinated Universal Time"),
            'z' => out.push_str(&zone.id()),
            'X' if n == 1 => {
                let o = zone.offset(false, true);
                // `+01` unless the offset has minutes.
                out.push_str(if o.len() == 5 && o.ends_with("00") {
                    &o[..3]
                } else {
                    &o
                });
            }
            'X' if n == 2 => out.push_str(&zone.offset(false, true)),
            'X' => out.push_str(&zone.offset(true, true)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(p: &str, ms: i64, zone: &str) -> String {
        format(&Pattern::parse(p).unwrap(), ms, &Zone::parse(zone).unwrap())
    }

    #[test]
    fn aws_example_with_a_fixed_offset() {
        // AWS formats 100000000 ms in America/Belize (UTC-6, no DST) as
        // "1970.01.01 AD at 21:46:40 CST"; with the offset spelled out we print the offset.
        assert_eq!(
            fmt("yyyy.MM.dd G 'at' HH:mm:ss z", 100_000_000, "-06:00"),
            "1970.01.01 AD at 21:46:40 -06:00"
        );
        assert_eq!(
            fmt("yyyy.MM.dd G 'at' HH:mm:ss z", 100_000_000, "UTC"),
            "1970.01.02 AD at 03:46:40 UTC"
        );
    }

    #[test]
    fn letters() {
        let ms = 1_481_825_251_155; // 2016-12-15T18:07:31.155Z, a Thursday
        for (p, want) in [
            ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2016-12-15T18:07:31.155+0000"),
            ("yy/M/d", "16/12/15"),
            ("MMM MMMM", "Dec December"),
            ("EEE EEEE e", "Thu Thursday 4"),
            ("D", "350"),
            ("h:mm a", "6:07 PM"),
            ("K k H", "6 18 18"),
            ("S SS SSSS", "1 15 1550"),
            ("ZZ ZZZ z zzzz", "+00:00 UTC UTC Coordinated Universal Time"),
            ("X XX XXX", "Z Z Z"),
            ("'it''s' ''", "it's '"),
            ("yyyy", "2016"),
        ] {
            assert_eq!(fmt(p, ms, "UTC"), want, "{p}");
        }
        assert_eq!(
            fmt("HH:mm X XX XXX Z", ms, "+05:30"),
            "23:37 +0530 +0530 +05:30 +0530"
        );
        assert_eq!(fmt("HH X", ms, "UTC-3"), "15 -03");
    }

    #[test]
    fn midnight_and_noon() {
        assert_eq!(fmt("h a k K", 0, "UTC"), "12 AM 24 0");
        assert_eq!(fmt("h a", 12 * 3_600_000, "UTC"), "12 PM");
    }

    #[test]
    fn dates_before_1970_and_leap_years() {
        assert_eq!(
            fmt("yyyy-MM-dd HH:mm:ss.SSS", -1, "UTC"),
            "1969-12-31 23:59:59.999"
        );
        assert_eq!(fmt("yyyy-MM-dd D", 951_782_400_000, "UTC"), "2000-02-29 60");
        assert_eq!(fmt("yyyy-MM-dd", 4_107_542_400_000, "UTC"), "2100-03-01");
        assert_eq!(
            fmt("yyyy G YYYY", -62_167_219_200_000 - 86_400_000, "UTC"),
            "-0001 BC 0002"
        );
    }

    #[test]
    fn zones() {
        for z in ["UTC", "utc", "GMT", "Z", "Etc/UTC", "+00:00"] {
            assert_eq!(Zone::parse(z), Some(Zone::UTC), "{z}");
        }
        for (z, secs) in [
            ("+01:00", 3600),
            ("-0530", -19800),
            ("UTC+2", 7200),
            ("GMT-03:30", -12600),
        ] {
            assert_eq!(Zone::parse(z), Some(Zone { offset_secs: secs }), "{z}");
        }
        for z in ["America/Belize", "CET", "+19:00", "+1:60", "+", "1"] {
            assert_eq!(Zone::parse(z), None, "{z}");
        }
    }

    #[test]
    fn bad_patterns() {
        assert!(Pattern::parse("yyyy-ww").unwrap_err().contains("'w'"));
        assert!(Pattern::parse("'open").is_err());
    }
}
