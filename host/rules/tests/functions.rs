//! Every built-in function, with the examples of AWS's "Functions" page and edge cases:
//! argument conversions, `Null`/`Undefined` arguments, out-of-range values.

mod common;

use common::{Fixed, NOW, TOPIC, check, ctx, run, run_on, show};
use shoal_rules::sql::{Ctx, EvalError, ShadowFailure, Sql};

const P: &str = r#"{"s": "Hello", "n": -5, "d": 2.745, "ns": "-5.123", "b": true, "z": null,
    "arr": [1, 2, 3], "obj": {"k": "v"}, "lat_long": [47.606, -122.332], "u": "été€"}"#;

#[test]
fn context_functions() {
    check(
        P,
        &[
            ("topic()", r#""fleet/truck-7/telemetry""#),
            ("topic(1)", r#""fleet""#),
            ("topic(2)", r#""truck-7""#),
            ("topic(3)", r#""telemetry""#),
            ("topic(4)", "<undefined>"),
            ("topic(0)", "<undefined>"),
            ("topic(-1)", "<undefined>"),
            ("topic(2.9)", r#""truck-7""#),
            ("topic('2')", r#""truck-7""#),
            ("topic('x')", "<undefined>"),
            ("topic(z)", "<undefined>"),
            ("clientid()", r#""truck-7""#),
            ("principal()", r#""3f1c0a2b""#),
            ("accountid()", r#""123456789012""#),
            ("traceid()", "<undefined>"),
            ("timestamp()", "1481825251155"),
            ("sql_version()", r#""2016-03-23""#),
            ("newuuid()", r#""00000000-0000-4000-8000-000000000000""#),
            ("rand()", "0.25"),
            ("TOPIC(1)", r#""fleet""#),
        ],
    );
}

#[test]
fn context_defaults() {
    // Without a client id AWS reports "n/a"; without a principal, Undefined; a real uuid.
    let sql =
        Sql::parse("SELECT clientid() AS c, principal() AS p, newuuid() AS u, timestamp() AS t FROM '#'")
            .unwrap();
    let out = sql
        .evaluate(&Ctx::new("a/b", b"{}"))
        .unwrap()
        .unwrap()
        .to_json()
        .unwrap();
    assert_eq!(out["c"], "n/a");
    assert!(out.get("p").is_none());
    let uuid = out["u"].as_str().unwrap();
    assert_eq!(uuid.len(), 36);
    assert_eq!(uuid.as_bytes()[14], b'4');
    assert!(out["t"].as_i64().unwrap() > NOW);
    // timestamp() is read once per context and newuuid() differs per call.
    let two =
        Sql::parse("SELECT timestamp() AS a, timestamp() AS b, newuuid() AS x, newuuid() AS y FROM '#'")
            .unwrap();
    let out = two
        .evaluate(&Ctx::new("a/b", b"{}"))
        .unwrap()
        .unwrap()
        .to_json()
        .unwrap();
    assert_eq!(out["a"], out["b"]);
    assert_ne!(out["x"], out["y"]);
    let fixed = Ctx::new("a/b", b"{}").with_timestamp(42);
    assert_eq!(
        show(two.evaluate(&fixed).unwrap()).split(',').next(),
        Some(r#"{"a":42"#)
    );
}

#[test]
fn get_and_predicates() {
    check(
        P,
        &[
            (r#"get(["a", "b", "c"], 1)"#, r#""b""#),
            (r#"get({"a":"b"}, "a")"#, r#""b""#),
            // AWS's page says get("abc", 1) = "a", contradicting its own 0-based rule; we index.
            (r#"get("abc", 1)"#, r#""b""#),
            ("get(arr, '2')", "3"),
            ("get(arr, 3)", "<undefined>"),
            ("get(arr, -1)", "<undefined>"),
            ("get(arr, 'x')", "<undefined>"),
            ("get(obj, 'k')", r#""v""#),
            ("get(obj, 'missing')", "<undefined>"),
            ("get(obj, 1)", "<undefined>"),
            ("get(n, 0)", "<undefined>"),
            ("get(missing, 0)", "<undefined>"),
            ("get(*, 's')", r#""Hello""#),
            ("get(u, 3)", r#""€""#),
            ("isUndefined(missing)", "true"),
            ("isUndefined(5)", "false"),
            ("isUndefined(z)", "false"),
            ("isUndefined(floor([1,2,3]))", "true"),
            ("isNull(z)", "true"),
            ("isNull(Null)", "true"),
            ("isNull(5)", "false"),
            ("isNull(missing)", "false"),
            ("ISNULL(z)", "true"),
            ("nanvl(8, 3)", "8"),
            ("nanvl(missing, 3)", "3"),
            ("nanvl(z, 'x')", r#""x""#),
            ("nanvl('a', 3)", r#""a""#),
        ],
    );
}

#[test]
fn cast() {
    check(
        P,
        &[
            ("cast(true AS Int)", "1"),
            ("cast(false AS Integer)", "0"),
            ("cast(d AS Int)", "2"),
            ("cast(-1.5 AS Int)", "-2"),
            ("cast('7.9' AS Int)", "7"),
            ("cast('x' AS Int)", "<undefined>"),
            ("cast(z AS Int)", "<undefined>"),
            ("cast(arr AS Int)", "<undefined>"),
            ("cast(3 AS Decimal)", "3"),
            ("cast(3 AS Decimal) / 2", "1.5"),
            ("cast(true AS Decimal)", "1"),
            ("cast('5E-2' AS Double)", "0.05"),
            ("cast(obj AS Decimal)", "<undefined>"),
            ("cast(0 AS Bool)", "false"),
            ("cast(0.1 AS Boolean)", "true"),
            ("cast('TRUE' AS Bool)", "true"),
            ("cast('yes' AS Bool)", "<undefined>"),
            ("cast(z AS Bool)", "<undefined>"),
            ("cast(n AS String)", r#""-5""#),
            ("cast(d AS varchar)", r#""2.745""#),
            ("cast(b AS Text)", r#""true""#),
            ("cast(arr AS String)", r#""[1,2,3]""#),
            ("cast(obj AS nvarchar)", r#""{\"k\":\"v\"}""#),
            ("cast(z AS String)", "<undefined>"),
            ("cast(missing AS String)", "<undefined>"),
            ("CAST(s as ntext)", r#""Hello""#),
        ],
    );
}

#[test]
fn math() {
    check(
        P,
        &[
            ("abs(-5)", "5"),
            ("abs(n)", "5"),
            ("abs(-2.5)", "2.5"),
            ("abs(ns)", "5.123"),
            ("abs('x')", "<undefined>"),
            ("abs(b)", "<undefined>"),
            ("abs(z)", "<undefined>"),
            ("abs(missing)", "<undefined>"),
            ("ceil(1.2)", "2"),
            ("ceil(-1.2)", "-1"),
            ("ceil(5)", "5"),
            ("ceil('1.1')", "2"),
            ("floor(1.2)", "1"),
            ("floor(-1.2)", "-2"),
            ("floor('x')", "<undefined>"),
            ("round(1.2)", "1"),
            ("round(1.5)", "2"),
            ("round(1.7)", "2"),
            ("round(-1.1)", "-1"),
            ("round(-1.5)", "-2"),
            ("round(7)", "7"),
            ("round('2.5')", "3"),
            ("sqrt(9)", "3"),
            ("sqrt(2)", "1.4142135623730951"),
            ("sqrt(-1)", "<undefined>"),
            ("sqrt('16')", "4"),
            ("power(2, 5)", "32"),
            ("power('2', 0.5)", "1.4142135623730951"),
            ("power(0, -1)", "<undefined>"),
            ("power(b, 2)", "<undefined>"),
            ("mod(8, 3)", "2"),
            ("mod(-8, 3)", "-2"),
            ("mod(8.5, 3)", "2.5"),
            ("mod(8, 0)", "<undefined>"),
            ("remainder(8, 3)", "2"),
            ("mod('8', '3')", "2"),
            ("sign(-7)", "-1"),
            ("sign(0)", "0"),
            ("sign(13)", "1"),
            ("sign(-0.5)", "-1"),
            ("sign('2.1')", "1"),
            ("trunc(2.3, 0)", "2"),
            ("trunc(2.3123, 2)", "2.31"),
            ("trunc(2.888, 2)", "2.88"),
            ("trunc(2.00, 5)", "2"),
            ("trunc(0.29, 2)", "0.29"),
            ("trunc(-2.888, 1)", "-2.8"),
            ("trunc(7, 2)", "7"),
            ("trunc(1.23456, -3)", "1"),
            ("trunc(1.23456, 99)", "1.23456"),
            ("trunc('3.14159', 3)", "3.141"),
            ("exp(0)", "1"),
            ("ln(1)", "0"),
            ("ln(0)", "<undefined>"),
            ("log(100)", "2"),
            ("log(-1)", "<undefined>"),
            ("sin(0)", "0"),
            ("cos(0)", "1"),
            ("tan(3)", "-0.1425465430742778"),
            ("asin(0)", "0"),
            ("acos(0)", "1.5707963267948966"),
            ("acos(2)", "<undefined>"),
            ("atan(0)", "0"),
            ("atan2(1, 0)", "1.5707963267948966"),
            ("sinh(2.3)", "4.936961805545957"),
            ("cosh(2.3)", "5.037220649268761"),
            ("tanh(2.3)", "0.9800963962661914"),
            ("bitand(13, 5)", "5"),
            ("bitor(8, 5)", "13"),
            ("bitxor(13, 5)", "8"),
            ("bitnot(13)", "-14"),
            ("bitand(13.9, '5')", "5"),
            ("bitand(13, 'x')", "<undefined>"),
        ],
    );
}

#[test]
fn geo_distance() {
    check(
        P,
        &[
            ("geo_distance(0, 0, 0, 0)", "0"),
            // One degree of longitude on the equator: 2 * pi * 6371008.8 / 360.
            ("geo_distance(0, 0, 0, 1)", "111195.08"),
            // Pole to pole.
            ("geo_distance(90, 0, -90, 0)", "20015114.442"),
            // Paris to London (about 343.6 km on the mean sphere).
            (
                "round(geo_distance(48.8566, 2.3522, 51.5074, -0.1278) / 100)",
                "3436",
            ),
            ("geo_distance(lat_long[0], lat_long[1], '47.606', -122.332)", "0"),
            ("geo_distance(91, 0, 0, 0)", "<undefined>"),
            ("geo_distance(0, 181, 0, 0)", "<undefined>"),
            ("geo_distance(0, 0, 0, 'x')", "<undefined>"),
            ("geo_distance(0, 0, 0, missing)", "<undefined>"),
        ],
    );
}

#[test]
fn strings() {
    check(
        P,
        &[
            ("lower('HELLO')", r#""hello""#),
            (r#"lower(["HELLO"])"#, r#""[\"hello\"]""#),
            ("upper(s)", r#""HELLO""#),
            (r#"upper(["hello"])"#, r#""[\"HELLO\"]""#),
            ("upper(u)", r#""ÉTÉ€""#),
            ("lower(z)", "<undefined>"),
            ("lower(5)", r#""5""#),
            ("length('hi')", "2"),
            ("length(false)", "5"),
            ("length(u)", "4"),
            ("length('')", "0"),
            ("length(z)", "<undefined>"),
            ("numbytes('hi')", "2"),
            ("numbytes('€')", "3"),
            ("numbytes(u)", "8"),
            ("concat()", "<undefined>"),
            ("concat(1)", "1"),
            ("concat([1, 2, 3], 4)", "[1,2,3,4]"),
            (r#"concat([1, 2, 3], "hello")"#, r#"[1,2,3,"hello"]"#),
            (r#"concat("con", "cat")"#, r#""concat""#),
            (r#"concat(1, "hello")"#, r#""1hello""#),
            (r#"concat("he","is","man")"#, r#""heisman""#),
            (
                r#"concat([1, 2, 3], "hello", [4, 5, 6])"#,
                r#"[1,2,3,"hello",4,5,6]"#,
            ),
            ("concat(arr, arr)", "[1,2,3,1,2,3]"),
            ("concat(1, 2)", r#""12""#),
            ("concat('a', z)", "<undefined>"),
            ("concat('a', missing)", "<undefined>"),
            ("concat(arr, z)", "[1,2,3,null]"),
            ("concat(s, ' ', b)", r#""Hello true""#),
            (r#"startswith("ranger","ran")"#, "true"),
            ("startswith(s, 'h')", "false"),
            ("startswith(123, 12)", "true"),
            ("startswith(s, z)", "<undefined>"),
            (r#"endswith("cat","at")"#, "true"),
            ("endswith(s, missing)", "<undefined>"),
            (r#"indexof("abcd", "bc")"#, "1"),
            ("indexof(u, '€')", "3"),
            ("indexof(s, 'x')", "-1"),
            ("indexof(z, 'x')", "<undefined>"),
            (r#"substring("012345", 0)"#, r#""012345""#),
            (r#"substring("012345", 2)"#, r#""2345""#),
            (r#"substring("012345", 2.745)"#, r#""2345""#),
            ("substring(123, 2)", r#""3""#),
            (r#"substring("012345", -1)"#, r#""012345""#),
            ("substring(true, 1.2)", r#""rue""#),
            ("substring(false, -2.411E247)", r#""false""#),
            (r#"substring("012345", 1, 3)"#, r#""12""#),
            (r#"substring("012345", -50, 50)"#, r#""012345""#),
            (r#"substring("012345", 3, 1)"#, r#""""#),
            ("substring(u, 1, 3)", r#""té""#),
            ("substring(s, 'x')", "<undefined>"),
            ("substring(z, 1)", "<undefined>"),
            (r#"lpad("hello", 2)"#, r#""  hello""#),
            ("lpad(1, 3)", r#""   1""#),
            ("lpad('x', -4)", r#""x""#),
            ("lpad('x', 1.9)", r#"" x""#),
            ("length(lpad('x', 5000))", "1001"),
            ("lpad('x', arr)", "<undefined>"),
            (r#"rpad("hello", 2)"#, r#""hello  ""#),
            ("rpad(1, '3')", r#""1   ""#),
            (r#"ltrim(" h i ")"#, r#""h i ""#),
            (r#"rtrim(" h i ")"#, r#"" h i""#),
            (r#"trim(" hi ")"#, r#""hi""#),
            (r#"trim('\t x \n')"#, r#""x""#),
            ("trim(z)", "<undefined>"),
            ("chr(65)", r#""A""#),
            ("chr(49)", r#""1""#),
            ("chr(65.9)", r#""A""#),
            ("chr('66')", r#""B""#),
            ("chr(128)", "<undefined>"),
            ("chr(-1)", "<undefined>"),
            (r#"replace("abcd", "bc", "x")"#, r#""axd""#),
            (r#"replace("abcdabcd", "b", "x")"#, r#""axcdaxcd""#),
            ("replace(12321, 2, 'two')", r#""1two3two1""#),
            ("replace(s, z, 'x')", "<undefined>"),
        ],
    );
}

#[test]
fn regular_expressions() {
    check(
        P,
        &[
            (r#"regexp_matches("aaaa", "a{2,}")"#, "true"),
            (r#"regexp_matches("aaaa", "b")"#, "false"),
            (r"regexp_matches('abc123', '\d+$')", "true"),
            ("regexp_matches(12345, '^[0-9]+$')", "true"),
            ("regexp_matches(s, s)", "true"),
            ("regexp_matches(s, concat('h', '('))", "<undefined>"),
            ("regexp_matches(z, 'a')", "<undefined>"),
            ("regexp_matches(s, missing)", "<undefined>"),
            (r#"regexp_replace("abcd", "bc", "x")"#, r#""axd""#),
            (r#"regexp_replace("abcd", "b(.*)d", "$1")"#, r#""ac""#),
            ("regexp_replace(s, 'l', z)", "<undefined>"),
            (r#"regexp_substr("hihihello", "hi")"#, r#""hi""#),
            (r#"regexp_substr("hihihello", "(hi)*")"#, r#""hihi""#),
            ("regexp_substr(s, 'z+')", "<undefined>"),
        ],
    );
}

#[test]
fn invalid_literal_regex_is_a_parse_error() {
    // A literal pattern is compiled when the rule is created, so a bad one is reported then.
    let e = Sql::parse("SELECT * FROM '#' WHERE regexp_matches(s, 'a(')").unwrap_err();
    assert_eq!(e.position.column, 43);
    assert!(e.message.starts_with("invalid regular expression: "), "{e}");
}

#[test]
fn base64() {
    check(
        P,
        &[
            ("encode(s, 'base64')", r#""SGVsbG8=""#),
            ("encode(n, 'base64')", r#""LTU=""#),
            ("encode(obj, 'base64')", r#""eyJrIjoidiJ9""#),
            ("encode(z, 'base64')", "<undefined>"),
            ("encode(s, concat('base', '64'))", r#""SGVsbG8=""#),
            ("encode(s, concat('hex', ''))", "<undefined>"),
            ("decode('SGVsbG8=', 'base64')", r#""Hello""#),
            ("decode('SGVsbG8', 'BASE64')", r#""Hello""#),
            ("decode('eyJrIjoidiJ9', 'base64').k", r#""v""#),
            ("decode('NDI=', 'base64') + 1", "43"),
            ("decode('!!!', 'base64')", "null"),
            ("decode(z, 'base64')", "<undefined>"),
            ("decode(encode(s, 'base64'), 'base64')", r#""Hello""#),
            ("[decode('/wA=', 'base64')]", r#"["/wA="]"#),
        ],
    );
    // encode(*) encodes the payload bytes exactly as received, JSON or not.
    assert_eq!(
        run("SELECT VALUE encode(*, 'base64') FROM '#'", r#"{"a": 1}"#),
        r#""eyJhIjogMX0=""#
    );
    assert_eq!(
        run_on("SELECT VALUE encode(*, 'base64') FROM '#'", TOPIC, b"\xff\x00"),
        r#""/wA=""#
    );
    // decode to non-text bytes gives binary data.
    assert_eq!(
        run("SELECT VALUE decode('/wA=', 'base64') FROM '#'", "{}"),
        "<bytes:\u{fffd}\u{0}>"
    );
}

#[test]
fn hashes() {
    check(
        P,
        &[
            ("sha1('hello')", r#""aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d""#),
            (
                "sha224('hello')",
                r#""ea09ae9cc6768c50fcee903ed054556e5bfc8347907f12598aa24193""#,
            ),
            (
                "sha256('hello')",
                r#""2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824""#,
            ),
            (
                "sha384('hello')",
                r#""59e1748777448c69de6b800d7a33bbfb9ff1b463e44354c3553bcdb9c666fa90125a3c79f90397bdf5f6a13de828684f""#,
            ),
            (
                "sha512('hello')",
                r#""9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043""#,
            ),
            (
                "sha256(5)",
                r#""ef2d127de37b942baad06145e54b0c619a1f22327b2ebbcfbec78f5564afe39d""#,
            ),
            ("sha256(z)", "<undefined>"),
        ],
    );
}

#[test]
fn parse_time() {
    check(
        P,
        &[
            // AWS's example with America/Belize (UTC-6 all year) written as a fixed offset.
            (
                r#"parse_time("yyyy.MM.dd G 'at' HH:mm:ss z", 100000000, '-06:00')"#,
                r#""1970.01.01 AD at 21:46:40 -06:00""#,
            ),
            (
                r#"parse_time("yyyy.MM.dd G 'at' HH:mm:ss z", timestamp())"#,
                r#""2016.12.15 AD at 18:07:31 UTC""#,
            ),
            ("parse_time('yyyy', timestamp(), 'UTC')", r#""2016""#),
            (
                "parse_time('yyyy-MM-dd HH:mm:ss.SSS', '1481825251155')",
                r#""2016-12-15 18:07:31.155""#,
            ),
            ("parse_time('HH:mm', 0, '+05:30')", r#""05:30""#),
            ("parse_time('EEEE d MMMM', 1.5e12)", r#""Friday 14 July""#),
            ("parse_time(concat('yy', 'yy'), 0)", r#""1970""#),
            ("parse_time(concat('ww', ''), 0)", "<undefined>"),
            ("parse_time('yyyy', 0, 'America/Belize')", "<undefined>"),
            ("parse_time('yyyy', 'soon')", "<undefined>"),
            ("parse_time('yyyy', z)", "<undefined>"),
            ("parse_time('yyyy', 0, 5)", "<undefined>"),
        ],
    );
    let e = Sql::parse("SELECT parse_time('yyyy-ww', timestamp()) AS t FROM '#'").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid date pattern: unsupported pattern letter 'w' at 1:19"
    );
}

#[test]
fn thing_shadows() {
    let doc = serde_json::json!({"state": {"reported": {"alarm": "ON", "setpoint": -20}}, "version": 7});
    let named = serde_json::json!({"state": {"reported": {"fw": "1.2"}}});
    let services =
        Fixed::default()
            .with_shadow("truck-7", None, doc)
            .with_shadow("truck-7", Some("firmware"), named);
    let eval = |sql: &str| {
        let sql = Sql::parse(sql).unwrap();
        assert!(sql.uses_thing_shadow());
        sql.evaluate(&ctx(TOPIC, b"{\"t\":1}", &services)).map(show)
    };
    // Shoal's one-argument form, AWS's (thing, roleArn) and (thing, shadow, roleArn) forms.
    assert_eq!(
        eval("SELECT get_thing_shadow(topic(2)).state.reported.alarm AS a FROM '#'").unwrap(),
        r#"{"a":"ON"}"#
    );
    assert_eq!(
        eval(
            "SELECT * FROM '#' WHERE get_thing_shadow('truck-7', 'arn:aws:iam::123456789012:role/R')\
             .state.reported.alarm = 'ON'"
        )
        .unwrap(),
        r#"{"t":1}"#
    );
    assert_eq!(
        eval("SELECT VALUE get_thing_shadow('truck-7', 'firmware', 'arn:r').state.reported.fw FROM '#'")
            .unwrap(),
        r#""1.2""#
    );
    assert_eq!(
        eval("SELECT VALUE get_thing_shadow('truck-7').version + 1 FROM '#'").unwrap(),
        "8"
    );
    // A missing shadow is Undefined; a non-string thing name too.
    assert_eq!(
        eval("SELECT VALUE get_thing_shadow('truck-8') FROM '#'").unwrap(),
        "<undefined>"
    );
    assert_eq!(
        eval("SELECT VALUE get_thing_shadow(5) FROM '#'").unwrap(),
        "<undefined>"
    );
    // A failing store fails the evaluation, naming the thing.
    assert_eq!(
        eval("SELECT VALUE get_thing_shadow('broken') FROM '#'"),
        Err(EvalError::ThingShadow(Box::new(ShadowFailure {
            thing: "broken".to_owned(),
            message: "store unavailable".to_owned()
        })))
    );
    let roles = services.seen_roles.lock().unwrap().clone();
    assert_eq!(roles[0], None);
    assert_eq!(roles[1].as_deref(), Some("arn:aws:iam::123456789012:role/R"));
    assert!(!Sql::parse("SELECT * FROM '#'").unwrap().uses_thing_shadow());
}
