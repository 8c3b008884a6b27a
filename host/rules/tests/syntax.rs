//! What parses, and what does not: every error names its position and what was expected.

mod common;

use common::{parse_error, run};
use shoal_rules::sql::{Position, Sql};

#[test]
fn errors_name_position_and_token() {
    let cases: &[(&str, &str)] = &[
        // The example from the issue: a typo where FROM belongs.
        (
            "SELECT temp, topic(2) WHER temp > 1",
            "expected FROM at 1:23, found 'WHER'",
        ),
        (
            "SELECT temp FROM 'a/b' WHER temp > 1",
            "expected WHERE or end of statement at 1:24, found 'WHER'",
        ),
        ("SELEC * FROM 'a'", "expected SELECT at 1:1, found 'SELEC'"),
        ("", "expected SELECT at 1:1, found end of input"),
        ("SELECT", "expected an expression at 1:7, found end of input"),
        (
            "SELECT * FROM",
            "expected a topic filter in single quotes after FROM at 1:14, found end of input",
        ),
        (
            "SELECT * FROM a/b",
            "expected a topic filter in single quotes after FROM at 1:15, found 'a'",
        ),
        (
            "SELECT * FROM 'a/#/b'",
            "invalid topic filter: '#' must be the last character and occupy a whole level [MQTT-4.7.1-2] at 1:15, \
             found ''a/#/b''",
        ),
        (
            "SELECT * FROM 'a/b+'",
            "invalid topic filter: '+' must occupy a whole level [MQTT-4.7.1-3] at 1:15, found ''a/b+''",
        ),
        (
            "SELECT * FROM ''",
            "invalid topic filter: topic must not be empty [MQTT-4.7.3-1] at 1:15, found ''''",
        ),
        (
            "SELECT * FROM '$share/g/a'",
            "a rule cannot use a shared subscription filter at 1:15, found ''$share/g/a''",
        ),
        (
            "SELECT * FROM 'a' WHERE",
            "expected an expression at 1:24, found end of input",
        ),
        (
            "SELECT * FROM 'a' WHERE x >",
            "expected an expression at 1:28, found end of input",
        ),
        (
            "SELECT * FROM 'a' WHERE (x > 1",
            "expected ')' at 1:31, found end of input",
        ),
        (
            "SELECT * FROM 'a' WHERE x > 1)",
            "expected end of statement at 1:30, found ')'",
        ),
        ("SELECT a b FROM 'x'", "expected FROM at 1:10, found 'b'"),
        (
            "SELECT a, FROM 'x'",
            "expected an expression at 1:11, found 'FROM'",
        ),
        ("SELECT 'abc FROM 'x'", "expected FROM at 1:19, found 'x'"),
        ("SELECT 'abc", "unterminated string literal at 1:8"),
        ("SELECT a # b", "unexpected character '#' at 1:10"),
        ("SELECT a == b", "'==' is not an operator; use '=' at 1:10"),
        ("SELECT foo(1) FROM 'a'", "unknown function 'foo' at 1:8"),
        (
            "SELECT md5(x) FROM 'a'",
            "the AWS IoT function 'md5' is not supported by Shoal at 1:8",
        ),
        (
            "SELECT aws_lambda('arn', *) FROM 'a'",
            "the AWS IoT function 'aws_lambda' is not supported by Shoal at 1:8",
        ),
        (
            "SELECT abs(1, 2) FROM 'a'",
            "abs() takes 1 argument, got 2 at 1:8",
        ),
        (
            "SELECT topic(1, 2) FROM 'a'",
            "topic() takes 0 to 1 arguments, got 2 at 1:8",
        ),
        ("SELECT get(x) FROM 'a'", "get() takes 2 arguments, got 1 at 1:8"),
        (
            "SELECT geo_distance(1, 2, 3) FROM 'a'",
            "geo_distance() takes 4 arguments, got 3 at 1:8",
        ),
        (
            "SELECT abs(1 FROM 'a'",
            "expected ',' or ')' at 1:14, found 'FROM'",
        ),
        (
            "SELECT cast(x AS Float) FROM 'a'",
            "expected a cast type (Int, Integer, Decimal, Double, Bool, Boolean, String, Varchar, Nvarchar, Text, Ntext) at 1:18, found 'Float'",
        ),
        ("SELECT cast(x, Int) FROM 'a'", "expected AS at 1:14, found ','"),
        (
            "SELECT encode(*, 'hex') FROM 'a'",
            "unsupported encoding 'hex' (only 'base64' is supported) at 1:18",
        ),
        ("SELECT CASE x END FROM 'a'", "expected WHEN at 1:15, found 'END'"),
        (
            "SELECT CASE x WHEN 1 'one' END FROM 'a'",
            "expected THEN at 1:22, found ''one''",
        ),
        (
            "SELECT CASE x WHEN 1 THEN 2 FROM 'a'",
            "expected WHEN, ELSE or END at 1:29, found 'FROM'",
        ),
        (
            "SELECT CASE x WHEN 1 THEN 2 ELSE 3 FROM 'a'",
            "expected END at 1:36, found 'FROM'",
        ),
        (
            "SELECT a AS FROM 'x'",
            "expected an alias after AS at 1:13, found 'FROM'",
        ),
        (
            "SELECT a AS 'b' FROM 'x'",
            "expected an alias after AS at 1:13, found ''b''",
        ),
        // After '.', any word is a key (`a.from`), so this reads as `a.FROM 'x'`.
        (
            "SELECT a. FROM 'x'",
            "expected FROM, WHERE or end of statement at 1:16, found ''x''",
        ),
        (
            "SELECT a.1 FROM 'x'",
            "expected a field name after '.' at 1:10, found '1'",
        ),
        ("SELECT a[1 FROM 'x'", "expected ']' at 1:12, found 'FROM'"),
        (
            "SELECT [1, 2 FROM 'x'",
            "expected ',' or ']' at 1:14, found 'FROM'",
        ),
        ("SELECT {'a' 1} FROM 'x'", "expected ':' at 1:13, found '1'"),
        (
            "SELECT {1: 2} FROM 'x'",
            "expected an object key at 1:9, found '1'",
        ),
        (
            "SELECT end FROM 'x'",
            "expected an expression at 1:8, found 'end'",
        ),
        (
            "SELECT * FROM 'x' WHERE a IS NULL",
            "IS [NOT] NULL is not AWS IoT SQL; use isNull(x), isUndefined(x) or x = null at 1:27, found 'IS'",
        ),
        (
            "SELECT a || b FROM 'x'",
            "'||' is not an AWS IoT SQL operator; use concat(a, b) or a + b at 1:10, found '||'",
        ),
        (
            "SELECT * FROM 'x' WHERE a LIKE 'b%'",
            "LIKE is not AWS IoT SQL at 1:27, found 'LIKE'",
        ),
        (
            "SELECT (SELECT v FROM e",
            "expected ')' to close the nested SELECT at 1:24, found end of input",
        ),
        ("SELECT (SELECT v) FROM 'x'", "expected FROM at 1:17, found ')'"),
        ("SELECT * FROM 'x';", "unexpected character ';' at 1:18"),
        (
            "SELECT '\\u12' FROM 'x'",
            "invalid \\u escape (expected four hex digits of a character) at 1:9",
        ),
        // AWS IoT SQL has no comments.
        (
            "SELECT * FROM 'x' -- comment",
            "expected WHERE or end of statement at 1:19, found '-'",
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(sql, want)| {
            let got = parse_error(sql);
            (got != *want).then(|| format!("  {sql}\n    want {want}\n    got  {got}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn positions_count_lines_and_characters() {
    let e = Sql::parse("SELECT temp,\n       topic(2) AS truck\nFROM 'fleet/+/telemetry'\nWHER temp > -15")
        .unwrap_err();
    assert_eq!(
        e.position,
        Position {
            offset: 63,
            line: 4,
            column: 1
        }
    );
    assert_eq!(e.message, "expected WHERE or end of statement");
    assert_eq!(e.found.as_deref(), Some("'WHER'"));
    // Columns count characters: 'été' is 3 characters and 5 bytes.
    let e = Sql::parse("SELECT 'été' + FROM 'x'").unwrap_err();
    assert_eq!((e.position.offset, e.position.column), (17, 16));
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("SELECT {}1{} FROM 'x'", "(".repeat(500), ")".repeat(500));
    assert!(parse_error(&deep).starts_with("expression nested more than 64 levels deep"));
    let negs = format!("SELECT {}1 FROM 'x'", "- ".repeat(500));
    assert!(parse_error(&negs).starts_with("expression nested more than 64 levels deep"));
    let nots = format!("SELECT * FROM 'x' WHERE {}true", "NOT ".repeat(500));
    assert!(parse_error(&nots).starts_with("expression nested more than 64 levels deep"));
    // Moderate nesting is fine.
    let ok = format!("SELECT VALUE {}1{} FROM 'x'", "(".repeat(30), ")".repeat(30));
    assert_eq!(run(&ok, "{}"), "1");
}

#[test]
fn accepted_forms() {
    for sql in [
        "SELECT * FROM 'a/b'",
        "select * from 'a/b' where true",
        "SELECT * FROM \"a/+/c\"",
        "SELECT *",
        "SELECT * WHERE a > 1",
        "SELECT\n\t*\nFROM\n\t'#'",
        "SELECT *, topic() as t FROM '#'",
        "SELECT topic() as t, * FROM '#'",
        "SELECT VALUE a FROM '#'",
        "SELECT VALUE [a, b] FROM '#'",
        "SELECT VALUE * FROM '#'",
        "SELECT a AS end, b AS value, c AS select FROM '#'",
        "SELECT a.end.from FROM '#'",
        "SELECT contains, in FROM '#' WHERE contains CONTAINS in",
        "SELECT température FROM '#'",
        "SELECT _private, a_1 FROM '#'",
        "SELECT * FROM '$aws/things/+/shadow/update/accepted'",
        "SELECT * FROM '#' WHERE a <> 1 AND b != 2",
        "SELECT cast(a AS Integer), CAST(b as BOOLEAN), Cast(c AS nvarchar) FROM '#'",
        "SELECT isUndefined(a), ISNULL(b), Round(c) FROM '#'",
        "SELECT {} AS o, [] AS a, {'x': {'y': []}} AS n FROM '#'",
        "SELECT regexp_matches(a, b), regexp_replace(a, '(x)', '$1') FROM '#'",
        "SELECT parse_time(p, timestamp()) FROM '#'",
        "SELECT (SELECT VALUE * FROM arr) AS all FROM '#'",
    ] {
        if let Err(e) = Sql::parse(sql) {
            panic!("{sql}: {e}");
        }
    }
}

#[test]
fn parsed_statement_accessors() {
    let sql: Sql = "SELECT * FROM 'fleet/+/telemetry' WHERE temp > -15"
        .parse()
        .unwrap();
    assert_eq!(sql.source(), "SELECT * FROM 'fleet/+/telemetry' WHERE temp > -15");
    assert_eq!(sql.topic_filter().map(|f| f.as_str()), Some("fleet/+/telemetry"));
    assert!(sql.matches_topic("fleet/t1/telemetry"));
    assert!(!sql.matches_topic("fleet/t1/status"));
    let topic = shoal_broker::topic::Topic::parse("fleet/t1/telemetry", &Default::default()).unwrap();
    assert!(sql.matches(&topic));
    let ingest = Sql::parse("SELECT * WHERE temp > 1").unwrap();
    assert!(ingest.topic_filter().is_none());
    assert!(!ingest.matches_topic("anything"));
    assert_eq!(
        format!("{sql:?}"),
        "Sql(\"SELECT * FROM 'fleet/+/telemetry' WHERE temp > -15\")"
    );
}
