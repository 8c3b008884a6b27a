//! Claim verification: did the cold chain hold for one truck over a time window?
//!
//! Reads the telemetry a rule archived (`DATA/archive/{rule}/{YYYY-MM-DD}.jsonl`, one JSON
//! document per line, and the Parquet files `DATA/archive/{rule}/{YYYY-MM-DD}/*.parquet`, one
//! row per document; documents as the simulator publishes them: `truck`, `ts` epoch ms, `tempC`,
//! `humidity`, `door`, `presence`, `lat`, `lon`), keeps the thing's readings inside the window,
//! and reports every temperature and humidity excursion (start, end, duration, peak), door
//! openings (where and when), human presence, departures from the planned route, data gaps,
//! and a verdict with its reasons. The report states its inputs (thresholds, the planned route
//! and its corridor, files read, line counts) so it can be reproduced.
//!
//! A route deviation is a stretch of readings farther than the corridor from the planned
//! polyline (great-circle distance, [`shoal_geo::distance_to_polyline_m`]). It is listed and
//! named among the reasons, but does not change the verdict by itself: a detour does not
//! warm the cargo.
//!
//! Archive files are per day of arrival, so the day before the window, its days and the two
//! after it are read (readings that arrive more than two days late are not seen).
//!
//! Pure computation over the files: the API handler and the CLI only format the report.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use shoal_rules::sql::{civil_from_days, days_from_civil};

/// How many days after the window's last day late readings are looked for.
const LATE_DAYS: i64 = 2;

/// What to verify.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimQuery {
    /// The thing (truck).
    pub thing: String,
    /// Window start, epoch ms (inclusive).
    pub from_ms: i64,
    /// Window end, epoch ms (exclusive).
    pub to_ms: i64,
    /// Highest acceptable cargo temperature, °C.
    pub max_temp_c: f64,
    /// Highest acceptable relative humidity, %.
    pub max_humidity: f64,
    /// A silence longer than this between readings is a data gap, seconds.
    pub max_gap_secs: u64,
    /// The archiving rule whose files are read.
    pub archive: String,
    /// The planned route, when one is known: readings outside its corridor are deviations.
    pub route: Option<PlannedRoute>,
}

/// The route a truck should stay near (as the cold-chain fleet keeps it in a named shadow).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedRoute {
    /// Where it was read (`shadow route of truck-7, version 3`).
    pub source: String,
    /// The route's name, when it has one.
    pub name: Option<String>,
    /// The polyline, `(lat, lon)` in degrees.
    pub points: Vec<(f64, f64)>,
    /// How far from the polyline a truck may be, metres.
    pub corridor_m: f64,
}

impl PlannedRoute {
    /// The plan in a shadow document's `state.desired`: `{"name", "points": [[lat, lon], ...],
    /// "corridorM"}`. `None` when it has no usable points; `corridor_m` (when given) overrides
    /// the document's corridor, else 2000 m.
    pub fn from_shadow(doc: &Value, source: String, corridor_m: Option<f64>) -> Option<PlannedRoute> {
        let desired = doc.pointer("/state/desired")?;
        let points: Vec<(f64, f64)> = desired
            .get("points")?
            .as_array()?
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([lat, lon]) => {
                    let (lat, lon) = (lat.as_f64()?, lon.as_f64()?);
                    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
                }
                _ => None,
            })
            .collect::<Option<_>>()?;
        if points.is_empty() {
            return None;
        }
        let corridor_m = corridor_m
            .or_else(|| desired.get("corridorM").and_then(Value::as_f64))
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or(2000.0);
        Some(PlannedRoute {
            source,
            name: desired.get("name").and_then(Value::as_str).map(str::to_owned),
            points,
            corridor_m,
        })
    }
}

/// One stretch of readings over a threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Excursion {
    /// First reading over the threshold, epoch ms.
    pub start_ms: i64,
    /// First reading back within it (or the last reading over it when none came back).
    pub end_ms: i64,
    /// `end - start`, seconds.
    pub duration_secs: f64,
    /// The worst value.
    pub peak: f64,
    /// Readings over the threshold.
    pub readings: usize,
    /// Whether the window ended before the value came back.
    pub open: bool,
}

/// A door opening or a presence detection: when, how long, where it started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// First reading with the door open (or someone inside), epoch ms.
    pub start_ms: i64,
    /// First reading after it ended (or the last one in the window).
    pub end_ms: i64,
    /// Seconds.
    pub duration_secs: f64,
    /// Position at the start, when reported.
    pub lat: Option<f64>,
    /// Position at the start, when reported.
    pub lon: Option<f64>,
}

/// A silence between two readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    /// The last reading before it, epoch ms.
    pub from_ms: i64,
    /// The first reading after it.
    pub to_ms: i64,
    /// Seconds.
    pub duration_secs: f64,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReport {
    /// The query, as run.
    pub inputs: ClaimQuery,
    /// The files read (relative to the archive directory), and how many lines were skipped
    /// because they were not JSON objects.
    pub files: Vec<String>,
    /// Lines that were not JSON objects with a numeric `ts`.
    pub skipped_lines: usize,
    /// The thing's readings in the window.
    pub readings: usize,
    /// First and last reading in the window, epoch ms.
    pub first_ms: Option<i64>,
    /// Last reading.
    pub last_ms: Option<i64>,
    /// Temperature lowest / highest seen.
    pub temp_range_c: Option<(f64, f64)>,
    /// Temperature excursions above `maxTempC`.
    pub temperature_excursions: Vec<Excursion>,
    /// Humidity excursions above `maxHumidity`.
    pub humidity_excursions: Vec<Excursion>,
    /// Door openings.
    pub door_openings: Vec<Event>,
    /// Someone detected inside the container.
    pub presence: Vec<Event>,
    /// Stretches outside the planned route's corridor (`peak`: the farthest, metres); empty
    /// when no route was planned.
    pub route_deviations: Vec<Excursion>,
    /// Silences longer than `maxGapSecs` (and at the window's edges).
    pub gaps: Vec<Gap>,
    /// `held`, `broken` or `inconclusive`.
    pub verdict: &'static str,
    /// Why.
    pub reasons: Vec<String>,
    /// The readings (ts, tempC, humidity) for charts.
    pub series: Vec<(i64, Option<f64>, Option<f64>)>,
}

/// Why a claim cannot be verified.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The query is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The archive could not be read.
    #[error("cannot read the archive {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Parses `2026-11-26T10:00:00Z` (optionally with fractional seconds or a `+HH:MM` offset),
/// a date `2026-11-26` (midnight UTC), or epoch milliseconds.
pub fn parse_time(text: &str) -> Result<i64, ClaimError> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|e| ClaimError::Invalid(format!("{t:?}: {e}")));
    }
    let bad = || {
        ClaimError::Invalid(format!(
            "{t:?} is not a time: use 2026-11-26T10:00:00Z, 2026-11-26 or epoch milliseconds"
        ))
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (date, rest) = t.split_once(['T', ' ']).unwrap_or((t, ""));
    let mut d = date.split('-');
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(day), None) if y.len() == 4 && m.len() == 2 && day.len() == 2 => {
            (num(y)?, num(m)?, num(day)?)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let mut ms = days_from_civil(y, m, day) * 86_400_000;
    if rest.is_empty() {
        return Ok(ms);
    }
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']).filter(|i| *i >= 8) {
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
        (c, sign * (num(oh)? * 3_600_000 + num(om)? * 60_000))
    } else {
        (rest, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut p = hms.split(':');
    let (h, mi, s) = match (p.next(), p.next(), p.next(), p.next()) {
        (Some(h), Some(mi), Some(s), None) => (num(h)?, num(mi)?, num(s)?),
        (Some(h), Some(mi), None, None) => (num(h)?, num(mi)?, 0),
        _ => return Err(bad()),
    };
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let frac_ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        num(&digits)?
    };
    ms += h * 3_600_000 + mi * 60_000 + s * 1000 + frac_ms - offset_ms;
    Ok(ms)
}

/// `2026-11-26T10:00:00Z` (second precision, UTC).
pub fn format_time(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

struct Reading {
    ts: i64,
    temp: Option<f64>,
    humidity: Option<f64>,
    door_open: bool,
    presence: bool,
    lat: Option<f64>,
    lon: Option<f64>,
}

fn reading(v: &Value) -> Option<Reading> {
    let ts = v.get("ts")?.as_i64()?;
    Some(Reading {
        ts,
        temp: v.get("tempC").and_then(Value::as_f64),
        humidity: v.get("humidity").and_then(Value::as_f64),
        door_open: v.get("door").and_then(Value::as_str) == Some("open"),
        presence: v.get("presence").and_then(Value::as_bool).unwrap_or(false),
        lat: v.get("lat").and_then(Value::as_f64),
        lon: v.get("lon").and_then(Value::as_f64),
    })
}

/// Verifies `q` against the archive under `archive_root` (`DATA/archive`).
pub fn verify(archive_root: &Path, q: ClaimQuery) -> Result<ClaimReport, ClaimError> {
    if q.to_ms <= q.from_ms {
        return Err(ClaimError::Invalid("the window ends before it starts".into()));
    }
    if q.to_ms - q.from_ms > 366 * 86_400_000 {
        return Err(ClaimError::Invalid("a window is at most 366 days".into()));
    }
    if q.archive.is_empty() || !q.archive.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ClaimError::Invalid(format!(
            "archive {:?} is not a rule name ([a-zA-Z0-9_]+)",
            q.archive
        )));
    }
    let dir = archive_root.join(&q.archive);
    if !dir.is_dir() {
        return Err(ClaimError::Invalid(format!(
            "no archive for rule {:?} (nothing under {}): is a rule with an archive action archiving the telemetry?",
            q.archive,
            dir.display()
        )));
    }
    let mut files = Vec::new();
    let mut skipped = 0;
    let mut rows = Vec::new();
    // A device clock ahead of the server's (or a simulator's) puts readings in the previous
    // day's file: read that one too.
    let first_day = q.from_ms.div_euclid(86_400_000) - 1;
    // Files are partitioned by the day a message arrived: a truck that lost connectivity
    // catches up later, so readings of the window may be in the next days' files too.
    let last_day = (q.to_ms - 1).div_euclid(86_400_000) + LATE_DAYS;
    // One archived document: a reading of the thing inside the window is kept; a document that
    // is not JSON or not a reading is counted as skipped.
    let mut take = |doc: Option<Value>| {
        let Some(r) = doc.as_ref().and_then(|v| {
            let thing = v.get("truck").or_else(|| v.get("thing")).and_then(Value::as_str);
            if thing != Some(q.thing.as_str()) {
                return Some(None);
            }
            reading(v).map(Some)
        }) else {
            skipped += 1;
            return;
        };
        if let Some(r) = r.filter(|r| (q.from_ms..q.to_ms).contains(&r.ts)) {
            rows.push(r);
        }
    };
    for day in first_day..=last_day {
        let (y, m, d) = civil_from_days(day);
        let day_name = format!("{y:04}-{m:02}-{d:02}");
        // JSON lines: `{day}.jsonl`.
        let name = format!("{day_name}.jsonl");
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.push(format!("{}/{name}", q.archive));
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    take(serde_json::from_str::<Value>(line).ok());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ClaimError::Io { path, source }),
        }
        // Parquet: `{day}/part-*.parquet`, in the order they were written.
        let folder = dir.join(&day_name);
        let parts = match std::fs::read_dir(&folder) {
            Ok(entries) => {
                let mut parts: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".parquet") && !n.starts_with('.'))
                    .collect();
                parts.sort();
                parts
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ClaimError::Io { path: folder, source }),
        };
        for part in parts {
            let path = folder.join(&part);
            let docs = shoal_rules::parquet_archive::read(&path).map_err(|e| ClaimError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            files.push(format!("{}/{day_name}/{part}", q.archive));
            for doc in docs {
                take(Some(doc));
            }
        }
    }
    // Devices catching up after a loss of connectivity publish late: order by their time.
    rows.sort_by_key(|r| r.ts);
    rows.dedup_by_key(|r| r.ts);
    Ok(report(q, files, skipped, &rows))
}

fn excursions(rows: &[Reading], value: impl Fn(&Reading) -> Option<f64>, limit: f64) -> Vec<Excursion> {
    let mut out: Vec<Excursion> = Vec::new();
    let mut cur: Option<Excursion> = None;
    for r in rows {
        let Some(v) = value(r) else { continue };
        if v > limit {
            match cur.as_mut() {
                Some(e) => {
                    e.end_ms = r.ts;
                    e.peak = e.peak.max(v);
                    e.readings += 1;
                }
                None => {
                    cur = Some(Excursion {
                        start_ms: r.ts,
                        end_ms: r.ts,
                        duration_secs: 0.0,
                        peak: v,
                        readings: 1,
                        open: true,
                    });
                }
            }
        } else if let Some(mut e) = cur.take() {
            e.end_ms = r.ts;
            e.open = false;
            out.push(e);
        }
    }
    out.extend(cur);
    for e in &mut out {
        e.duration_secs = (e.end_ms - e.start_ms) as f64 / 1000.0;
    }
    out
}

fn events(rows: &[Reading], on: impl Fn(&Reading) -> bool) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cur: Option<Event> = None;
    for r in rows {
        if on(r) {
            match cur.as_mut() {
                Some(e) => e.end_ms = r.ts,
                None => {
                    cur = Some(Event {
                        start_ms: r.ts,
                        end_ms: r.ts,
                        duration_secs: 0.0,
                        lat: r.lat,
                        lon: r.lon,
                    });
                }
            }
        } else if let Some(mut e) = cur.take() {
            e.end_ms = r.ts;
            out.push(e);
        }
    }
    out.extend(cur);
    for e in &mut out {
        e.duration_secs = (e.end_ms - e.start_ms) as f64 / 1000.0;
    }
    out
}

fn report(q: ClaimQuery, files: Vec<String>, skipped: usize, rows: &[Reading]) -> ClaimReport {
    let gap_ms = i64::try_from(q.max_gap_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let mut gaps = Vec::new();
    let mut edges = vec![q.from_ms];
    edges.extend(rows.iter().map(|r| r.ts));
    edges.push(q.to_ms);
    for w in edges.windows(2) {
        if w[1] - w[0] > gap_ms {
            gaps.push(Gap {
                from_ms: w[0],
                to_ms: w[1],
                duration_secs: (w[1] - w[0]) as f64 / 1000.0,
            });
        }
    }
    let temps: Vec<f64> = rows.iter().filter_map(|r| r.temp).collect();
    let temp_range_c = temps.iter().copied().fold(None, |acc: Option<(f64, f64)>, t| {
        Some(acc.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))))
    });
    let temperature_excursions = excursions(rows, |r| r.temp, q.max_temp_c);
    let humidity_excursions = excursions(rows, |r| r.humidity, q.max_humidity);
    let door_openings = events(rows, |r| r.door_open);
    let presence = events(rows, |r| r.presence);
    let route_deviations = q.route.as_ref().map_or_else(Vec::new, |plan| {
        excursions(
            rows,
            |r| Some(shoal_geo::distance_to_polyline_m((r.lat?, r.lon?), &plan.points).round()),
            plan.corridor_m,
        )
    });
    let mut reasons = Vec::new();
    let verdict = if rows.is_empty() {
        reasons.push(format!(
            "no readings from {} between {} and {}",
            q.thing,
            format_time(q.from_ms),
            format_time(q.to_ms)
        ));
        "inconclusive"
    } else if !temperature_excursions.is_empty() {
        for e in &temperature_excursions {
            reasons.push(format!(
                "temperature above {} °C from {} for {:.0} s (peak {:.1} °C{})",
                q.max_temp_c,
                format_time(e.start_ms),
                e.duration_secs,
                e.peak,
                if e.open {
                    ", still above at the window's end"
                } else {
                    ""
                }
            ));
        }
        "broken"
    } else {
        let silent: f64 = gaps.iter().map(|g| g.duration_secs).sum();
        let window = (q.to_ms - q.from_ms) as f64 / 1000.0;
        if silent > window / 4.0 {
            reasons.push(format!(
                "the data has gaps over {:.0} s of the {:.0} s window: the chain cannot be shown to have held",
                silent, window
            ));
            "inconclusive"
        } else {
            reasons.push(format!(
                "{} readings, all at or below {} °C (highest {:.1} °C)",
                rows.len(),
                q.max_temp_c,
                temp_range_c.map_or(f64::NAN, |r| r.1)
            ));
            if !gaps.is_empty() {
                reasons.push(format!(
                    "{} data gap(s) totalling {:.0} s, each bounded by readings within the limit",
                    gaps.len(),
                    silent
                ));
            }
            "held"
        }
    };
    if !humidity_excursions.is_empty() {
        reasons.push(format!(
            "{} humidity excursion(s) above {} % (possible thawing)",
            humidity_excursions.len(),
            q.max_humidity
        ));
    }
    if !door_openings.is_empty() {
        reasons.push(format!("{} door opening(s)", door_openings.len()));
    }
    if !presence.is_empty() {
        reasons.push(format!(
            "someone was inside the container {} time(s)",
            presence.len()
        ));
    }
    if let Some(plan) = &q.route
        && !route_deviations.is_empty()
    {
        let farthest = route_deviations.iter().map(|d| d.peak).fold(0.0, f64::max);
        reasons.push(format!(
            "left the planned route{} {} time(s), at most {:.1} km off (corridor {:.1} km)",
            plan.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
            route_deviations.len(),
            farthest / 1000.0,
            plan.corridor_m / 1000.0
        ));
    }
    ClaimReport {
        files,
        skipped_lines: skipped,
        readings: rows.len(),
        first_ms: rows.first().map(|r| r.ts),
        last_ms: rows.last().map(|r| r.ts),
        temp_range_c,
        temperature_excursions,
        humidity_excursions,
        door_openings,
        presence,
        route_deviations,
        gaps,
        verdict,
        reasons,
        series: rows.iter().map(|r| (r.ts, r.temp, r.humidity)).collect(),
        inputs: q,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as a self-contained HTML page (inline SVG chart, no scripts, no network).
pub fn html(r: &ClaimReport) -> String {
    use std::fmt::Write as _;
    let q = &r.inputs;
    let mut out = String::new();
    let color = match r.verdict {
        "held" => "#1b7f3b",
        "broken" => "#b3261e",
        _ => "#8a6d00",
    };
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Claim report: {thing}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         .verdict{{font-size:1.6em;color:{color}}}</style></head><body>\
         <h1>Cold-chain claim report: {thing}</h1>\
         <p class=\"verdict\" id=\"verdict\">Verdict: <b>{verdict}</b></p><ul>",
        thing = esc(&q.thing),
        verdict = r.verdict,
    );
    for reason in &r.reasons {
        let _ = write!(out, "<li>{}</li>", esc(reason));
    }
    let _ = write!(
        out,
        "</ul><h2>Inputs</h2><table><tr><th>thing</th><td>{}</td></tr>\
         <tr><th>window</th><td>{} – {}</td></tr><tr><th>max temperature</th><td>{} °C</td></tr>\
         <tr><th>max humidity</th><td>{} %</td></tr><tr><th>max gap</th><td>{} s</td></tr>\
         <tr><th>archive</th><td>{} ({} files, {} readings, {} lines skipped)</td></tr>\
         <tr><th>planned route</th><td>{}</td></tr></table>",
        esc(&q.thing),
        format_time(q.from_ms),
        format_time(q.to_ms),
        q.max_temp_c,
        q.max_humidity,
        q.max_gap_secs,
        esc(&q.archive),
        r.files.len(),
        r.readings,
        r.skipped_lines,
        q.route.as_ref().map_or_else(
            || "none known (route deviations not checked)".to_string(),
            |p| esc(&format!(
                "{} ({} points, corridor {} m; {})",
                p.name.as_deref().unwrap_or("unnamed"),
                p.points.len(),
                p.corridor_m,
                p.source
            ))
        )
    );
    out.push_str(&chart(r));
    let table = |out: &mut String, title: &str, head: &str, rows: Vec<String>| {
        let _ = write!(out, "<h2>{title} ({})</h2>", rows.len());
        if !rows.is_empty() {
            let _ = write!(out, "<table><tr>{head}</tr>{}</table>", rows.concat());
        }
    };
    let exc_rows = |v: &[Excursion], unit: &str| {
        v.iter()
            .map(|e| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{:.0} s</td><td>{:.1} {unit}</td></tr>",
                    format_time(e.start_ms),
                    format_time(e.end_ms),
                    e.duration_secs,
                    e.peak
                )
            })
            .collect::<Vec<_>>()
    };
    let head = "<th>start</th><th>end</th><th>duration</th><th>peak</th>";
    table(
        &mut out,
        "Temperature excursions",
        head,
        exc_rows(&r.temperature_excursions, "°C"),
    );
    table(
        &mut out,
        "Humidity excursions",
        head,
        exc_rows(&r.humidity_excursions, "%"),
    );
    let ev_rows = |v: &[Event]| {
        v.iter()
            .map(|e| {
                format!(
                    "<tr><td>{}</td><td>{:.0} s</td><td>{}</td></tr>",
                    format_time(e.start_ms),
                    e.duration_secs,
                    match (e.lat, e.lon) {
                        (Some(a), Some(o)) => format!("{a:.4}, {o:.4}"),
                        _ => "–".into(),
                    }
                )
            })
            .collect::<Vec<_>>()
    };
    if q.route.is_some() {
        table(
            &mut out,
            "Departures from the planned route",
            head,
            exc_rows(&r.route_deviations, "m off"),
        );
    }
    let head = "<th>start</th><th>duration</th><th>where</th>";
    table(&mut out, "Door openings", head, ev_rows(&r.door_openings));
    table(
        &mut out,
        "Presence inside the container",
        head,
        ev_rows(&r.presence),
    );
    let gap_rows = r
        .gaps
        .iter()
        .map(|g| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{:.0} s</td></tr>",
                format_time(g.from_ms),
                format_time(g.to_ms),
                g.duration_secs
            )
        })
        .collect();
    table(
        &mut out,
        "Data gaps",
        "<th>from</th><th>to</th><th>duration</th>",
        gap_rows,
    );
    out.push_str("</body></html>\n");
    out
}

/// Temperature (and the limit) over the window as inline SVG.
fn chart(r: &ClaimReport) -> String {
    use std::fmt::Write as _;
    let (w, h, pad) = (800.0, 240.0, 40.0);
    let q = &r.inputs;
    let temps: Vec<(i64, f64)> = r
        .series
        .iter()
        .filter_map(|(t, c, _)| c.map(|c| (*t, c)))
        .collect();
    let (lo, hi) = r.temp_range_c.unwrap_or((q.max_temp_c - 5.0, q.max_temp_c + 5.0));
    let (lo, hi) = (lo.min(q.max_temp_c) - 1.0, hi.max(q.max_temp_c) + 1.0);
    let span = (q.to_ms - q.from_ms).max(1) as f64;
    let x = |t: i64| pad + (t - q.from_ms) as f64 / span * (w - 2.0 * pad);
    let y = |c: f64| h - pad - (c - lo) / (hi - lo) * (h - 2.0 * pad);
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>Temperature</h2><svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\"/>\
         <line x1=\"{pad}\" x2=\"{x2}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"#b3261e\" stroke-dasharray=\"4\"/>\
         <text x=\"{pad}\" y=\"{ty:.1}\" font-size=\"11\" fill=\"#b3261e\">limit {lim} °C</text>\
         <text x=\"4\" y=\"{top}\" font-size=\"11\">{hi:.1}</text><text x=\"4\" y=\"{bottom}\" font-size=\"11\">{lo:.1}</text>",
        x2 = w - pad,
        ly = y(q.max_temp_c),
        ty = y(q.max_temp_c) - 4.0,
        lim = q.max_temp_c,
        top = pad,
        bottom = h - pad,
    );
    if !temps.is_empty() {
        let points: Vec<String> = temps
            .iter()
            .map(|(t, c)| format!("{:.1},{:.1}", x(*t), y(*c)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(thing: &str) -> ClaimQuery {
        ClaimQuery {
            thing: thing.into(),
            from_ms: parse_time("2026-11-26T10:00:00Z").unwrap(),
            to_ms: parse_time("2026-11-26T11:00:00Z").unwrap(),
            max_temp_c: -18.0,
            max_humidity: 85.0,
            max_gap_secs: 300,
            archive: "telemetry".into(),
            route: None,
        }
    }

    fn write(dir: &Path, day: &str, lines: &[String]) {
        let d = dir.join("telemetry");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{day}.jsonl")), lines.join("\n") + "\n").unwrap();
    }

    fn line(truck: &str, ts: i64, temp: f64, door: &str) -> String {
        format!(
            r#"{{"truck":"{truck}","ts":{ts},"tempC":{temp},"humidity":70,"door":"{door}","presence":false,"lat":53.5,"lon":10.0}}"#
        )
    }

    /// An hour of truck-7 readings, one a minute from `from`, at -20 °C with the door closed,
    /// except minutes 10 and 11: door open, -17 and -15.5 °C.
    fn excursion_lines(from: i64) -> Vec<String> {
        let t = |m: i64| from + m * 60_000;
        let mut lines: Vec<String> = (0..60).map(|i| line("truck-7", t(i), -20.0, "closed")).collect();
        lines[10] = line("truck-7", t(10), -17.0, "open");
        lines[11] = line("truck-7", t(11), -15.5, "open");
        lines
    }

    #[test]
    fn times_parse_and_print() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2026-11-26").unwrap(),
            parse_time("2026-11-26T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-11-26T12:00:00+02:00").unwrap(),
            parse_time("2026-11-26T10:00:00Z").unwrap()
        );
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(parse_time("1795701600000").unwrap(), 1_795_701_600_000);
        assert_eq!(
            format_time(parse_time("2026-11-26T10:05:09Z").unwrap()),
            "2026-11-26T10:05:09Z"
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-26T25:00:00Z",
            "2026/11/26",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unbroken_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let q = query("truck-7");
        let lines: Vec<String> = (0..60)
            .map(|i| {
                line(
                    "truck-7",
                    q.from_ms + i * 60_000,
                    -20.0 + (i % 3) as f64 * 0.2,
                    "closed",
                )
            })
            .chain([line("truck-8", q.from_ms, 5.0, "open"), "not json".into()])
            .collect();
        write(dir.path(), "2026-11-26", &lines);
        let r = verify(dir.path(), q).unwrap();
        assert_eq!(r.verdict, "held", "{:?}", r.reasons);
        assert_eq!(r.readings, 60);
        assert_eq!(r.skipped_lines, 1);
        assert!(r.temperature_excursions.is_empty() && r.door_openings.is_empty());
        assert_eq!(r.files, ["telemetry/2026-11-26.jsonl"]);
        assert!(html(&r).contains("<b>held</b>"));
    }

    #[test]
    fn parquet_archives_give_the_report_json_lines_give() {
        let q = query("truck-7");
        let from = q.from_ms;
        let t = move |m: i64| from + m * 60_000;
        let mut lines = excursion_lines(from);
        lines.push(line("truck-8", t(5), 3.0, "open"));
        let as_jsonl = tempfile::tempdir().unwrap();
        write(as_jsonl.path(), "2026-11-26", &lines);
        let expected = verify(as_jsonl.path(), q.clone()).unwrap();
        assert_eq!(expected.verdict, "broken");

        // The same documents: the first 20 as JSON lines, the rest in two Parquet files.
        let mixed = tempfile::tempdir().unwrap();
        write(mixed.path(), "2026-11-26", &lines[..20]);
        let folder = mixed.path().join("telemetry/2026-11-26");
        std::fs::create_dir_all(&folder).unwrap();
        for (name, part) in [
            ("part-0000000000001.parquet", &lines[20..40]),
            ("part-0000000000002.parquet", &lines[40..]),
        ] {
            let rows: Vec<_> = part
                .iter()
                .map(|l| shoal_rules::parquet_archive::row_of(serde_json::from_str(l).unwrap()))
                .collect();
            shoal_rules::parquet_archive::write(&rows, std::fs::File::create(folder.join(name)).unwrap())
                .unwrap();
        }
        // A temporary file of an unfinished write is not read.
        std::fs::write(folder.join(".part-0000000000003.parquet.tmp"), b"half").unwrap();
        let got = verify(mixed.path(), q).unwrap();
        assert_eq!(
            got.files,
            [
                "telemetry/2026-11-26.jsonl",
                "telemetry/2026-11-26/part-0000000000001.parquet",
                "telemetry/2026-11-26/part-0000000000002.parquet"
            ]
        );
        assert_eq!(
            serde_json::to_value(&got.temperature_excursions).unwrap(),
            serde_json::to_value(&expected.temperature_excursions).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&got.door_openings).unwrap(),
            serde_json::to_value(&expected.door_openings).unwrap()
        );
        assert_eq!(
            (got.readings, got.skipped_lines, got.verdict),
            (60, 0, expected.verdict)
        );

        // A file that is not Parquet is an error naming it, not a silent gap.
        std::fs::write(folder.join("part-0000000000004.parquet"), b"junk").unwrap();
        let err = verify(mixed.path(), query("truck-7")).unwrap_err().to_string();
        assert!(err.contains("part-0000000000004.parquet"), "{err}");
    }

    #[test]
    fn an_excursion_breaks_it_with_start_end_and_peak() {
        let dir = tempfile::tempdir().unwrap();
        let q = query("truck-7");
        let from = q.from_ms;
        let t = move |m: i64| from + m * 60_000;
        let mut lines = excursion_lines(from);
        lines[12] = line("truck-7", t(12), -16.0, "closed");
        // Late (caught-up) readings are ordered by their own time.
        lines.swap(20, 40);
        write(dir.path(), "2026-11-26", &lines);
        let r = verify(dir.path(), q).unwrap();
        assert_eq!(r.verdict, "broken");
        assert_eq!(
            r.temperature_excursions,
            vec![Excursion {
                start_ms: t(10),
                end_ms: t(13),
                duration_secs: 180.0,
                peak: -15.5,
                readings: 3,
                open: false
            }]
        );
        assert_eq!(r.door_openings.len(), 1);
        assert_eq!(r.door_openings[0].duration_secs, 120.0);
        assert_eq!(r.door_openings[0].lat, Some(53.5));
        assert!(r.reasons[0].contains("peak -15.5"), "{:?}", r.reasons);
        let page = html(&r);
        assert!(page.contains("<b>broken</b>") && page.contains("<polyline"));
    }

    #[test]
    fn gaps_and_missing_data_are_inconclusive() {
        let dir = tempfile::tempdir().unwrap();
        let q = query("truck-7");
        // Readings only in the first ten minutes.
        let lines: Vec<String> = (0..10)
            .map(|i| line("truck-7", q.from_ms + i * 60_000, -20.0, "closed"))
            .collect();
        write(dir.path(), "2026-11-26", &lines);
        let r = verify(dir.path(), q.clone()).unwrap();
        assert_eq!(r.verdict, "inconclusive", "{:?}", r.reasons);
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].to_ms, q.to_ms);
        let r = verify(dir.path(), query("truck-9")).unwrap();
        assert_eq!(r.verdict, "inconclusive");
        assert_eq!(r.readings, 0);
    }

    #[test]
    fn bad_queries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = query("truck-7");
        assert!(
            verify(dir.path(), q.clone())
                .unwrap_err()
                .to_string()
                .contains("no archive")
        );
        q.archive = "../etc".into();
        assert!(verify(dir.path(), q.clone()).is_err());
        q.archive = "telemetry".into();
        q.to_ms = q.from_ms;
        assert!(verify(dir.path(), q).is_err());
    }

    #[test]
    fn departures_from_the_planned_route_are_listed_without_breaking_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        // Along the equator eastwards; the third and fourth readings are ~5.6 km north of it.
        let at = |ts: i64, lat: f64, lon: f64| {
            json!({"truck": "t1", "ts": ts, "tempC": -20.0, "door": "closed", "lat": lat, "lon": lon})
                .to_string()
        };
        let t0 = parse_time("2026-11-26T10:00:00Z").unwrap();
        let lines: Vec<String> = [(0.0, 0.1), (0.0, 0.2), (0.05, 0.3), (0.05, 0.4), (0.0, 0.5)]
            .iter()
            .enumerate()
            .map(|(i, &(lat, lon))| at(t0 + i as i64 * 60_000, lat, lon))
            .collect();
        write(dir.path(), "2026-11-26", &lines);
        let plan = PlannedRoute::from_shadow(
            &json!({"state": {"desired": {"name": "east", "points": [[0.0, 0.0], [0.0, 1.0]], "corridorM": 2000}}}),
            "test".into(),
            None,
        )
        .unwrap();
        assert_eq!(plan.corridor_m, 2000.0);
        let mut q = query("t1");
        (q.from_ms, q.to_ms) = (t0, t0 + 300_000);
        q.route = Some(plan);
        let r = verify(dir.path(), q).unwrap();
        assert_eq!(r.verdict, "held", "{:?}", r.reasons);
        assert_eq!(r.route_deviations.len(), 1, "{:?}", r.route_deviations);
        let d = &r.route_deviations[0];
        assert_eq!(
            (d.start_ms, d.end_ms, d.readings),
            (t0 + 120_000, t0 + 240_000, 2)
        );
        assert!((5_500.0..5_700.0).contains(&d.peak), "{}", d.peak);
        assert!(
            r.reasons
                .iter()
                .any(|s| s.contains("left the planned route east 1 time(s)")),
            "{:?}",
            r.reasons
        );
        let page = html(&r);
        assert!(page.contains("Departures from the planned route (1)"));
    }

    #[test]
    fn planned_routes_need_usable_points() {
        let plan = |desired: Value| {
            PlannedRoute::from_shadow(&json!({"state": {"desired": desired}}), "t".into(), None)
        };
        assert!(plan(json!({})).is_none());
        assert!(plan(json!({"points": []})).is_none());
        assert!(plan(json!({"points": [[91.0, 0.0]]})).is_none());
        assert!(plan(json!({"points": [[1.0, "x"]]})).is_none());
        assert!(plan(json!({"points": [[1.0, 2.0, 3.0]]})).is_none());
        let p = plan(json!({"points": [[1.0, 2.0]], "corridorM": -5})).unwrap();
        assert_eq!(p.corridor_m, 2000.0);
        let p = PlannedRoute::from_shadow(
            &json!({"state": {"desired": {"points": [[1.0, 2.0]], "corridorM": 500}}}),
            "t".into(),
            Some(750.0),
        )
        .unwrap();
        assert_eq!((p.corridor_m, p.name), (750.0, None));
    }
}
