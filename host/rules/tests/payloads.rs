//! Payloads that are not JSON objects (AWS: `SELECT *` passes the bytes on, field access is
//! `Undefined`), odd JSON, and outputs.

mod common;

use common::{TOPIC, run, run_on};
use shoal_rules::sql::{Ctx, Output, Sql, Template};

#[test]
fn non_json_payloads() {
    let bin: &[u8] = b"\x00\x01\xfe\xff";
    // SELECT * passes any non-object payload on byte for byte.
    for payload in [
        bin,
        b"plain text",
        b"80",
        b"[1,2]",
        b"\"str\"",
        b"{broken",
        b"",
        b"null",
    ] {
        let sql = Sql::parse("SELECT * FROM '#'").unwrap();
        let out = sql.evaluate(&Ctx::new(TOPIC, payload)).unwrap();
        assert_eq!(out, Some(Output::Binary(payload.to_vec())), "{payload:?}");
    }
    // Field access is Undefined, so comparisons are too and WHERE fails.
    assert_eq!(run_on("SELECT * FROM '#' WHERE a = 1", TOPIC, bin), "<none>");
    assert_eq!(run_on("SELECT VALUE isUndefined(a) FROM '#'", TOPIC, bin), "true");
    assert_eq!(run_on("SELECT a, b.c FROM '#'", TOPIC, bin), "{}");
    // Functions of the message still work; `*` adds nothing to an object being built.
    assert_eq!(
        run_on(
            "SELECT *, topic(2) AS truck, clientid() AS c FROM '#'",
            TOPIC,
            bin
        ),
        r#"{"truck":"truck-7","c":"truck-7"}"#
    );
    assert_eq!(
        run_on(
            "SELECT encode(*, 'base64') AS data FROM '#' WHERE length(encode(*, 'base64')) = 8",
            TOPIC,
            bin
        ),
        r#"{"data":"AAH+/w=="}"#
    );
    // SELECT VALUE * keeps the bytes; embedded in JSON they become base64.
    assert_eq!(run_on("SELECT VALUE * FROM '#'", TOPIC, b"raw"), "<bytes:raw>");
    assert_eq!(
        run_on("SELECT {'p': *} AS o FROM '#'", TOPIC, bin),
        r#"{"o":{"p":"AAH+/w=="}}"#
    );
    // A text payload converts to a string where a function wants one.
    assert_eq!(
        run_on("SELECT VALUE upper(*) FROM '#'", TOPIC, b"hello"),
        r#""HELLO""#
    );
    assert_eq!(
        run_on("SELECT VALUE length(*) FROM '#'", TOPIC, bin),
        "<undefined>"
    );
    // A JSON number payload is "non-JSON" for addressing, but decode(encode(*)) reads it.
    assert_eq!(
        run_on(
            "SELECT VALUE decode(encode(*, 'base64'), 'base64') * 2 FROM '#'",
            TOPIC,
            b"21"
        ),
        "42"
    );
}

#[test]
fn json_objects() {
    // Whitespace and escapes survive; output is compact, keys in document order.
    assert_eq!(
        run(
            "SELECT * FROM '#'",
            "  {\n \"b\" : 1 ,\n \"a\" : \"x\\ny\\u00e9\" }  "
        ),
        r#"{"b":1,"a":"x\nyé"}"#
    );
    // Nested documents pass through whole.
    let doc = r#"{"a":{"b":[1,{"c":[true,false,null]}],"d":{}},"e":[]}"#;
    assert_eq!(run("SELECT * FROM '#'", doc), doc);
    assert_eq!(
        run("SELECT a FROM '#'", doc),
        r#"{"a":{"b":[1,{"c":[true,false,null]}],"d":{}}}"#
    );
    // Escaped keys are found by their unescaped text.
    assert_eq!(run("SELECT VALUE get(*, 'a\"b') FROM '#'", r#"{"a\"b":7}"#), "7");
    assert_eq!(run("SELECT VALUE get(*, 'é') FROM '#'", r#"{"\u00e9":8}"#), "8");
    // Duplicate keys: the last one is read.
    assert_eq!(run("SELECT VALUE a FROM '#'", r#"{"a":1,"a":2}"#), "2");
    // Large numbers and exponents.
    assert_eq!(
        run(
            "SELECT * FROM '#'",
            r#"{"big":18446744073709551615,"e":1.5e300,"small":-2e-9,"w":3.0}"#
        ),
        r#"{"big":18446744073709552000,"e":1.5e300,"small":-2e-9,"w":3}"#
    );
    // An empty object.
    assert_eq!(run("SELECT * FROM '#'", "{}"), "{}");
    assert_eq!(run("SELECT a FROM '#'", "{}"), "{}");
    // Deeply nested JSON beyond serde_json's limit is not addressable; it passes as bytes.
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    assert!(run("SELECT * FROM '#'", &deep).starts_with("<bytes:"));
}

#[test]
fn output_accessors() {
    let sql = Sql::parse("SELECT temp FROM '#'").unwrap();
    let out = sql.evaluate(&Ctx::new("t", br#"{"temp":1}"#)).unwrap().unwrap();
    assert_eq!(out.as_bytes(), br#"{"temp":1}"#);
    assert_eq!(out.to_json(), Some(serde_json::json!({"temp": 1})));
    assert_eq!(out.clone().into_bytes(), br#"{"temp":1}"#.to_vec());
    let bin = Output::Binary(vec![1, 2]);
    assert_eq!(bin.to_json(), None);
    assert_eq!(bin.as_bytes(), &[1, 2]);
}

#[test]
fn select_value_outputs() {
    assert_eq!(run("SELECT VALUE 5 FROM '#'", "{}"), "5");
    assert_eq!(run("SELECT VALUE 'x' FROM '#'", "{}"), r#""x""#);
    assert_eq!(run("SELECT VALUE null FROM '#'", "{}"), "null");
    assert_eq!(run("SELECT VALUE true FROM '#'", "{}"), "true");
    // An Undefined VALUE serializes to nothing: an empty payload.
    assert_eq!(run("SELECT VALUE missing FROM '#'", "{}"), "<undefined>");
}

#[test]
fn one_context_serves_many_rules() {
    // The payload is parsed once per context and shared by every statement evaluated with it.
    let ctx = Ctx::new("fleet/t1/telemetry", br#"{"temp": 3, "door": "open"}"#).with_timestamp(7);
    let rules = [
        "SELECT temp FROM 'fleet/+/telemetry' WHERE temp > 0",
        "SELECT door, timestamp() AS ts FROM 'fleet/#' WHERE door = 'open'",
        "SELECT * FROM 'fleet/+/telemetry' WHERE temp > 10",
    ];
    let outs: Vec<Option<String>> = rules
        .iter()
        .map(|r| {
            Sql::parse(r)
                .unwrap()
                .evaluate(&ctx)
                .unwrap()
                .map(|o| String::from_utf8(o.into_bytes()).unwrap())
        })
        .collect();
    assert_eq!(
        outs,
        vec![
            Some(r#"{"temp":3}"#.to_owned()),
            Some(r#"{"door":"open","ts":7}"#.to_owned()),
            None
        ]
    );
}

/// Statements and templates evaluated on one context share the payload's parse, although each
/// has only the keys it reads built (see `Ctx`): every one must still see what a parse of the
/// whole payload shows it, in any order.
#[test]
fn rules_sharing_a_message_see_the_whole_payload_whatever_each_parsed() {
    let statements = [
        "SELECT a FROM '#'",
        "SELECT b.c AS c, d[1] AS d FROM '#' WHERE a = 1",
        "SELECT VALUE (SELECT VALUE v FROM d2) FROM '#'",
        "SELECT * FROM '#'",
        "SELECT VALUE isUndefined(e) FROM '#'",
        "SELECT a, * FROM '#'",
    ];
    let templates = ["${b.c}-${a}", "${topic(1)}", "${d2}"];
    let payloads: [&[u8]; 5] = [
        br#"{"a":1,"b":{"c":2},"d":[1,2],"d2":[{"v":"x"},{"v":7}],"e":null}"#,
        br#"{"b":{"c":"\u0041"},"a":1,"a":2}"#,
        br#"{"a":1,"b":01}"#,
        br#"{"a":1,"b":[1,]}"#,
        br#"{"a":1} x"#,
    ];
    let sqls: Vec<Sql> = statements.iter().map(|s| Sql::parse(s).unwrap()).collect();
    let tpls: Vec<Template> = templates.iter().map(|t| Template::parse(t).unwrap()).collect();
    for payload in payloads {
        // Each alone on a fresh context, then all in turn on a shared one, in both orders.
        let alone: Vec<String> = sqls
            .iter()
            .map(|s| format!("{:?}", s.evaluate(&Ctx::new(TOPIC, payload))))
            .chain(
                tpls.iter()
                    .map(|t| format!("{:?}", t.render(&Ctx::new(TOPIC, payload)))),
            )
            .collect();
        let count = sqls.len() + tpls.len();
        for order in [(0..count).collect::<Vec<_>>(), (0..count).rev().collect()] {
            let ctx = Ctx::new(TOPIC, payload);
            let mut shared = vec![String::new(); count];
            for i in order {
                shared[i] = match sqls.get(i) {
                    Some(s) => format!("{:?}", s.evaluate(&ctx)),
                    None => format!("{:?}", tpls[i - sqls.len()].render(&ctx)),
                };
            }
            assert_eq!(shared, alone, "{}", String::from_utf8_lossy(payload));
        }
    }
    // And what the statements see is the payload's content, not just agreement.
    let ctx = Ctx::new(TOPIC, payloads[0]);
    assert_eq!(
        sqls[1].evaluate(&ctx).unwrap(),
        Some(Output::Json(r#"{"c":2,"d":2}"#.to_owned()))
    );
    assert_eq!(tpls[0].render(&ctx).unwrap(), "2-1");
    assert_eq!(
        sqls[2].evaluate(&ctx).unwrap(),
        Some(Output::Json(r#"["x",7]"#.to_owned()))
    );
}

#[test]
fn select_star_says_when_the_payload_is_its_output() {
    let star = Sql::parse("SELECT * FROM '#' WHERE t > 0").unwrap();
    let list = Sql::parse("SELECT t FROM '#'").unwrap();
    assert!(star.selects_payload());
    assert!(!list.selects_payload());
    assert!(
        !Sql::parse("SELECT *, topic() AS x FROM '#'")
            .unwrap()
            .selects_payload()
    );
    // Compact JSON object: the payload is the output byte for byte.
    let compact = Ctx::new(TOPIC, br#"{"t":1,"a":"x"}"#);
    assert!(star.filter(&compact).unwrap());
    assert!(star.payload_is_output(&compact));
    assert_eq!(star.select(&compact).unwrap().as_bytes(), br#"{"t":1,"a":"x"}"#);
    assert!(!list.payload_is_output(&compact));
    // Not compact (spaces, 1.0): the output is rebuilt, so the payload is not it.
    let spaced = Ctx::new(TOPIC, br#"{"t": 1.0, "a": "x"}"#);
    assert!(!star.payload_is_output(&spaced));
    assert_eq!(
        star.select(&spaced).unwrap(),
        Output::Json(r#"{"t":1,"a":"x"}"#.into())
    );
    // Not a JSON object: passed on as is, but not as a JSON document.
    let binary = Ctx::new(TOPIC, b"\x00\x01");
    assert!(!star.payload_is_output(&binary));
    assert!(!star.filter(&binary).unwrap());
    // evaluate = filter, then select.
    assert_eq!(star.evaluate(&Ctx::new(TOPIC, br#"{"t":0}"#)).unwrap(), None);
}
