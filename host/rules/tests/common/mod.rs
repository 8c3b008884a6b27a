//! Helpers shared by the SQL test files: a fixed message context and one-line evaluators.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use shoal_rules::sql::{Ctx, Output, Services, ShadowRequest, Sql};

/// The topic every helper publishes to unless told otherwise.
pub const TOPIC: &str = "fleet/truck-7/telemetry";
/// `timestamp()` in every helper context: 2016-12-15T18:07:31.155Z.
pub const NOW: i64 = 1_481_825_251_155;

/// Deterministic services: numbered uuids, `rand()` = 0.25, shadows from a map (a thing named
/// `broken` makes the store fail).
#[derive(Default)]
pub struct Fixed {
    pub shadows: HashMap<(String, Option<String>), serde_json::Value>,
    next: AtomicU32,
    pub seen_roles: std::sync::Mutex<Vec<Option<String>>>,
}

impl Fixed {
    pub fn with_shadow(mut self, thing: &str, name: Option<&str>, doc: serde_json::Value) -> Fixed {
        self.shadows
            .insert((thing.to_owned(), name.map(str::to_owned)), doc);
        self
    }
}

impl Services for Fixed {
    fn now_ms(&self) -> i64 {
        NOW
    }

    fn new_uuid(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012}")
    }

    fn random(&self) -> f64 {
        0.25
    }

    fn thing_shadow(&self, r: &ShadowRequest<'_>) -> Result<Option<serde_json::Value>, String> {
        self.seen_roles
            .lock()
            .expect("roles lock")
            .push(r.role_arn.map(str::to_owned));
        if r.thing == "broken" {
            return Err("store unavailable".to_owned());
        }
        Ok(self
            .shadows
            .get(&(r.thing.to_owned(), r.shadow.map(str::to_owned)))
            .cloned())
    }
}

/// A context for `payload` on `topic` with a client id, principal and fixed services.
pub fn ctx<'c>(topic: &'c str, payload: &'c [u8], services: &'c Fixed) -> Ctx<'c> {
    Ctx::new(topic, payload)
        .with_client_id("truck-7")
        .with_principal("3f1c0a2b")
        .with_account_id("123456789012")
        .with_services(services)
}

/// Renders an evaluation result compactly: the JSON text, `<none>` when WHERE failed,
/// `<undefined>` for an empty `SELECT VALUE`, `<bytes:...>` for other binary output.
pub fn show(out: Option<Output>) -> String {
    match out {
        None => "<none>".to_owned(),
        Some(Output::Json(s)) => s,
        Some(Output::Binary(b)) if b.is_empty() => "<undefined>".to_owned(),
        Some(Output::Binary(b)) => format!("<bytes:{}>", String::from_utf8_lossy(&b)),
    }
}

/// Runs a whole statement against `payload` on `topic`.
pub fn run_on(sql: &str, topic: &str, payload: &[u8]) -> String {
    let services = Fixed::default();
    let sql = Sql::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    show(
        sql.evaluate(&ctx(topic, payload, &services))
            .expect("evaluation failed"),
    )
}

/// Runs a whole statement against `payload` on [`TOPIC`].
pub fn run(sql: &str, payload: &str) -> String {
    run_on(sql, TOPIC, payload.as_bytes())
}

/// Evaluates one expression (`SELECT VALUE <expr>`) against `payload`.
pub fn value(expr: &str, payload: &str) -> String {
    run(&format!("SELECT VALUE {expr} FROM '#'"), payload)
}

/// Evaluates a table of `(expression, expected)` against `payload`, reporting every mismatch
/// at once.
pub fn check(payload: &str, cases: &[(&str, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(expr, want)| {
            let got = value(expr, payload);
            (got != *want).then(|| format!("  {expr}\n    want {want}\n    got  {got}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Asserts that `sql` fails to parse with exactly `message` (the full display text).
pub fn parse_error(sql: &str) -> String {
    match Sql::parse(sql) {
        Ok(_) => panic!("parsed: {sql}"),
        Err(e) => e.to_string(),
    }
}
