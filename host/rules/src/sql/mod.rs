//! The AWS IoT SQL dialect, SQL version 2016-03-23.
//!
//! ```
//! use shoal_rules::sql::{Ctx, Output, Sql};
//!
//! let sql = Sql::parse("SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry' WHERE temp > -15")?;
//! assert!(sql.matches_topic("fleet/truck-7/telemetry"));
//!
//! let ctx = Ctx::new("fleet/truck-7/telemetry", br#"{"temp": -9.5, "door": "closed"}"#);
//! let out = sql.evaluate(&ctx)?;
//! assert_eq!(out, Some(Output::Json(r#"{"temp":-9.5,"truck":"truck-7"}"#.to_owned())));
//!
//! let cold = Ctx::new("fleet/truck-7/telemetry", br#"{"temp": -19.5}"#);
//! assert_eq!(sql.evaluate(&cold)?, None); // WHERE was false
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The pipeline, one module per stage: `lexer` (tokens on demand) → `parser` (recursive
//! descent into the `ast`, checking function names and arities, compiling literal regular
//! expressions and date patterns) → `eval` over a [`Ctx`] (the payload is read lazily, once,
//! by `json` into `value`s that borrow from the message) → the output written back by `json`.
//! `functions` holds the built-ins, `ops` the operators, `template` the `${expr}`
//! substitutions, which reuse the parser. `docs/IOT_SQL.md` is the user-facing reference.

mod ast;
mod error;
mod eval;
mod functions;
mod json;
mod lexer;
mod ops;
mod parser;
mod template;
mod value;

use shoal_broker::topic::{Topic, TopicFilter, matches_filter};

pub use error::{EvalError, Position, ShadowFailure, SqlError};
pub use eval::{Ctx, Services, ShadowRequest, SystemServices};
pub use functions::time::{civil_from_days, days_from_civil};
pub use template::Template;

use ast::{BinOp, Expr, Item, PayloadKeys, Query, Reads, Select};
use eval::{Env, passes, project};
use functions::Func;
use json::{canonical_object, write_json};
use ops::holds;
use value::{Value, lookup};

/// A parsed rule statement: `SELECT ... [FROM '<topic filter>'] [WHERE ...]`.
///
/// Parse once when the rule is created; [`Sql::evaluate`] (or [`Sql::filter`] then
/// [`Sql::select`]) then runs it per message without
/// re-reading the text. `FROM` is optional, as in AWS, for rules only reached through Basic
/// Ingest (`$aws/rules/{rule}/...`).
#[derive(Clone)]
pub struct Sql {
    source: String,
    query: Query,
    from: Option<TopicFilter>,
    uses_shadow: bool,
    star_only: bool,
    /// The payload keys the statement reads (`None`: it may read the whole document).
    keys: Option<PayloadKeys>,
    /// A `WHERE` of the commonest form, `key <comparison> literal` (`temp > 40`), which
    /// [`Sql::filter`] tests without the general evaluator.
    test: Option<FieldTest>,
}

/// `WHERE key <op> literal`, with `op` one of `= <> < <= > >=`.
#[derive(Clone)]
struct FieldTest {
    key: Box<str>,
    op: BinOp,
    literal: Value<'static>,
}

impl FieldTest {
    fn of(filter: Option<&Expr>) -> Option<FieldTest> {
        let Some(Expr::Binary(op, l, r)) = filter else {
            return None;
        };
        let (Expr::Field(key), Expr::Literal(literal)) = (&**l, &**r) else {
            return None;
        };
        matches!(
            op,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
        .then(|| FieldTest {
            key: key.clone(),
            op: *op,
            literal: literal.clone(),
        })
    }
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sql").field(&self.source).finish()
    }
}

/// What a statement produced for a message whose `WHERE` held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A JSON document: the object built by the `SELECT` list (keys in projection order), or
    /// any JSON value for `SELECT VALUE`.
    Json(String),
    /// Raw bytes: `SELECT *` over a payload that is not a JSON object (passed on unchanged),
    /// `SELECT VALUE` of binary data, or the empty payload of a `SELECT VALUE` that was
    /// `Undefined` (AWS serializes a lone `Undefined` as nothing).
    Binary(Vec<u8>),
}

impl Output {
    /// The bytes to publish or store.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Output::Json(s) => s.as_bytes(),
            Output::Binary(b) => b,
        }
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Output::Json(s) => s.into_bytes(),
            Output::Binary(b) => b,
        }
    }

    /// The document as `serde_json` (for the shadow action and tests); `None` for binary
    /// output.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            Output::Json(s) => serde_json::from_str(s).ok(),
            Output::Binary(_) => None,
        }
    }
}

impl Sql {
    /// Parses a statement. Errors carry the position and say what was expected:
    /// `expected FROM at 1:23, found 'WHER'`.
    pub fn parse(sql: &str) -> Result<Sql, SqlError> {
        let stmt = parser::Parser::new(sql, 0).statement()?;
        let uses_shadow = parser::calls(&stmt.query, Func::GetThingShadow);
        let star_only =
            matches!(&stmt.query.select, Select::Items(items) if matches!(items.as_slice(), [Item::Star]));
        let mut reads = Reads::default();
        reads.query(&stmt.query);
        let test = FieldTest::of(stmt.query.filter.as_ref());
        Ok(Sql {
            test,
            source: sql.to_owned(),
            query: stmt.query,
            from: stmt.from,
            uses_shadow,
            star_only,
            keys: reads.keys(),
        })
    }

    /// The statement as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `FROM` topic filter (`None` for a Basic-Ingest-only rule).
    pub fn topic_filter(&self) -> Option<&TopicFilter> {
        self.from.as_ref()
    }

    /// Whether a message on `topic` triggers this rule. `#` also matches the parent level
    /// (`fleet/#` matches `fleet`), as in MQTT and Shoal's broker; AWS's broker differs there.
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.from
            .as_ref()
            .is_some_and(|f| matches_filter(f.filter(), topic))
    }

    /// [`Sql::matches_topic`] for a validated topic.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.from.as_ref().is_some_and(|f| f.matches(topic))
    }

    /// Whether the statement calls `get_thing_shadow`, i.e. may block in
    /// [`Services::thing_shadow`].
    pub fn uses_thing_shadow(&self) -> bool {
        self.uses_shadow
    }

    /// Runs the statement over one message: `Ok(None)` when `WHERE` is not true, otherwise
    /// the output document. `WHERE` runs first and cannot see `SELECT` aliases, as in AWS.
    pub fn evaluate(&self, ctx: &Ctx<'_>) -> Result<Option<Output>, EvalError> {
        if !self.filter(ctx)? {
            return Ok(None);
        }
        self.select(ctx).map(Some)
    }

    /// Whether the message passes `WHERE` (true without one): the first half of
    /// [`Sql::evaluate`].
    pub fn filter(&self, ctx: &Ctx<'_>) -> Result<bool, EvalError> {
        if let Some(t) = &self.test {
            // What the general evaluation gives (a missing key is `Undefined`: false).
            return Ok(match ctx.doc_for(self.keys.as_ref()) {
                Value::Object(entries) => lookup(entries, &t.key).is_some_and(|v| holds(t.op, v, &t.literal)),
                _ => false,
            });
        }
        let env = Env::root(ctx, self.keys.as_ref());
        passes(self.query.filter.as_ref(), &env)
    }

    /// Whether the `SELECT` list is a lone `*`: the output is the message's payload (as AWS
    /// passes it on: a JSON object in Shoal's JSON form, anything else unchanged), and
    /// [`Sql::select`] cannot fail.
    pub fn selects_payload(&self) -> bool {
        self.star_only
    }

    /// Whether [`Sql::select`] would output the payload byte for byte: `SELECT *` over a
    /// JSON object already in Shoal's compact form. The caller may then use the payload
    /// instead of building the output.
    pub fn payload_is_output(&self, ctx: &Ctx<'_>) -> bool {
        self.star_only && canonical_object(ctx.payload()).is_some()
    }

    /// The output document of a message that passed [`Sql::filter`]: the second half of
    /// [`Sql::evaluate`]. A parsed payload is cached in `ctx`, so `WHERE` and `SELECT` parse
    /// it once between them.
    pub fn select(&self, ctx: &Ctx<'_>) -> Result<Output, EvalError> {
        let env = Env::root(ctx, self.keys.as_ref());
        if self.star_only {
            // The common `SELECT *`: a JSON object re-serialized, anything else passed on. A
            // payload already written as Shoal writes JSON goes on as it is: no tree, no
            // re-writing (the same bytes either way).
            if let Some(text) = canonical_object(ctx.payload()) {
                return Ok(Output::Json(text.to_owned()));
            }
            let doc = env.doc();
            return Ok(match doc {
                Value::Object(_) => Output::Json(to_text(doc)),
                _ => Output::Binary(ctx.payload().to_vec()),
            });
        }
        let v = project(&self.query.select, &env)?;
        Ok(match v.get() {
            Value::Undefined => Output::Binary(Vec::new()),
            Value::Binary(b) => Output::Binary(b.to_vec()),
            _ => Output::Json(to_text(&v)),
        })
    }
}

impl std::str::FromStr for Sql {
    type Err = SqlError;

    fn from_str(s: &str) -> Result<Sql, SqlError> {
        Sql::parse(s)
    }
}

fn to_text(v: &Value<'_>) -> String {
    let mut out = String::with_capacity(128);
    write_json(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `WHERE key <op> literal` shortcut gives exactly the general evaluator's answer for
    /// every comparison, literal and payload value type, a missing key, duplicate keys and a
    /// payload that is not JSON: against `true AND x <op> lit` (no shortcut; the evaluator's
    /// field-against-literal arm) and `lit <mirrored op> x` (operands built as values, then
    /// `ops::binary`). The statements select `x` and `y`, so the payload is parsed into those
    /// keys only, as most rules' are; one context serves all three statements and a fourth
    /// that reads every key, as the engine shares a message's context between its rules.
    #[test]
    fn the_field_test_shortcut_agrees_with_the_evaluator() {
        let literals = [
            "5",
            "5.0",
            "5.5",
            "-3",
            "-5.5",
            "0",
            "0.0",
            "-9223372036854775808",
            "9223372036854775807",
            "'5'",
            "'abc'",
            "'true'",
            "true",
            "null",
        ];
        let payloads = [
            r#"{"x":5}"#,
            r#"{"x":5.0}"#,
            r#"{"x":6}"#,
            r#"{"x":4.9}"#,
            r#"{"x":-3}"#,
            r#"{"x":-0.0}"#,
            r#"{"x":0}"#,
            r#"{"x":9223372036854775807}"#,
            r#"{"x":-9223372036854775808}"#,
            r#"{"x":"5"}"#,
            r#"{"x":"5.5"}"#,
            r#"{"x":"abc"}"#,
            r#"{"x":"true"}"#,
            r#"{"x":true}"#,
            r#"{"x":null}"#,
            r#"{"x":[5]}"#,
            r#"{"x":{"a":1}}"#,
            r#"{"y":5}"#,
            r#"{"x":1,"y":2,"x":5}"#,
            "not json",
        ];
        fn mirror(op: &str) -> &str {
            match op {
                "<" => ">",
                "<=" => ">=",
                ">" => "<",
                ">=" => "<=",
                same => same,
            }
        }
        let everything = Sql::parse("SELECT * FROM 'a' WHERE y <> 7").unwrap();
        let mut checked = 0;
        for op in ["=", "<>", "<", "<=", ">", ">="] {
            for lit in literals {
                let fast = Sql::parse(&format!("SELECT x, y FROM 'a' WHERE x {op} {lit}")).unwrap();
                assert!(fast.test.is_some(), "{op} {lit}");
                let general =
                    Sql::parse(&format!("SELECT x, y FROM 'a' WHERE true AND x {op} {lit}")).unwrap();
                let mirrored =
                    Sql::parse(&format!("SELECT x, y FROM 'a' WHERE {lit} {} x", mirror(op))).unwrap();
                assert!(general.test.is_none() && mirrored.test.is_none());
                for payload in payloads {
                    let ctx = Ctx::new("a", payload.as_bytes());
                    let want = mirrored.filter(&ctx).unwrap();
                    assert_eq!(
                        general.filter(&ctx).unwrap(),
                        want,
                        "true AND x {op} {lit} over {payload}"
                    );
                    assert_eq!(fast.filter(&ctx).unwrap(), want, "x {op} {lit} over {payload}");
                    let _ = everything.filter(&ctx).unwrap();
                    // Again once the whole document is built.
                    assert_eq!(
                        fast.filter(&ctx).unwrap(),
                        want,
                        "x {op} {lit} over {payload}, whole"
                    );
                    checked += usize::from(want);
                }
            }
        }
        // The grid is not trivially false.
        assert!(checked > 50, "{checked}");
        // Not a comparison, or not `key <op> literal`: no shortcut.
        for sql in [
            "SELECT * FROM 'a' WHERE x + 1",
            "SELECT * FROM 'a' WHERE 5 < x",
            "SELECT * FROM 'a' WHERE x.y > 5",
            "SELECT * FROM 'a' WHERE x IN [5]",
        ] {
            assert!(Sql::parse(sql).unwrap().test.is_none(), "{sql}");
        }
    }
}
