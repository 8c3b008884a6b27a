//! Operators, types and conversions, following the tables of AWS's "Operators" and "Data
//! types" pages; precedence; `Undefined` propagation; `CASE`; paths and arrays.

mod common;

use common::{check, run};

/// A payload with one value of every type.
const P: &str = r#"{
    "i": 5, "neg": -3, "d": 2.5, "whole": 10.0, "s": "abc", "n5": "5", "nd": "2.5", "t": "TRUE",
    "f": "false", "b": true, "nb": false, "z": null, "arr": [1, "two", 3.5, null, [4], {"k": "v"}],
    "obj": {"a": {"b": {"c": 42}}, "list": [{"x": 1}, {"x": 2}]}, "empty": {}, "big": 9223372036854775807
}"#;

#[test]
fn arithmetic() {
    check(
        P,
        &[
            // Int op Int stays Int; integer division truncates toward zero.
            ("i + 2", "7"),
            ("i - 7", "-2"),
            ("i * neg", "-15"),
            ("i / 2", "2"),
            ("neg / 2", "-1"),
            ("i % 3", "2"),
            ("neg % 2", "-1"),
            // Any Decimal makes a Decimal; arithmetic results are decimal-exact for such values.
            ("d + 1", "3.5"),
            ("0.1 + 0.2", "0.3"),
            ("1.1 * 3", "3.3"),
            ("i / 2.5", "2"),
            ("7 / 2.0", "3"),
            ("7 / cast(2 AS Decimal)", "3.5"),
            ("d % 1", "0.5"),
            ("-7.5 % 2", "-1.5"),
            // The 2016-03-23 quirk: 10.0 is an Int, so this divides integers.
            ("whole / 4", "2"),
            // Numeric strings convert to Decimal for - * / %.
            ("n5 - 2", "3"),
            ("nd * 2", "5"),
            ("'10' / '4'", "2.5"),
            ("'7' % 2", "1"),
            ("s - 1", "<undefined>"),
            // + concatenates as soon as one side is a string (AWS: '+' is overloaded).
            ("n5 + 2", r#""52""#),
            ("2 + n5", r#""25""#),
            ("s + i", r#""abc5""#),
            ("s + b", r#""abctrue""#),
            ("s + arr", r#""abc[1,\"two\",3.5,null,[4],{\"k\":\"v\"}]""#),
            ("s + z", "<undefined>"),
            ("s + missing", "<undefined>"),
            // Other types do not add.
            ("i + b", "<undefined>"),
            ("i + z", "<undefined>"),
            ("arr + arr", "<undefined>"),
            ("b * 2", "<undefined>"),
            // Division and remainder by zero.
            ("i / 0", "<undefined>"),
            ("d / 0", "<undefined>"),
            ("i % 0", "<undefined>"),
            ("d % 0.0", "<undefined>"),
            // Overflow continues as a Decimal.
            ("big + 1", "9223372036854780000"),
            ("big * 2", "18446744073709600000"),
            // Unary minus.
            ("-i", "-5"),
            ("-neg", "3"),
            ("-d", "-2.5"),
            ("-n5", "-5"),
            ("-s", "<undefined>"),
            ("- -i", "5"),
            ("-(i + 1)", "-6"),
        ],
    );
}

#[test]
fn equality() {
    check(
        P,
        &[
            ("i = 5", "true"),
            ("i = 5.0", "true"),
            ("d = 2.5", "true"),
            ("i = d", "false"),
            ("s = 'abc'", "true"),
            ("s = \"abc\"", "true"),
            ("s = 'ABC'", "false"),
            // Mismatched types are unequal, even when one would convert.
            ("n5 = 5", "false"),
            ("n5 <> 5", "true"),
            ("b = 'true'", "false"),
            ("b = true", "true"),
            ("z = null", "true"),
            ("z <> null", "false"),
            ("z = 0", "false"),
            ("arr = [1, 'two', 3.5, null, [4], {'k': 'v'}]", "true"),
            ("arr = [1, 'two']", "false"),
            ("[1, 2] = [2, 1]", "false"),
            ("[1, 2] <> [2, 1]", "true"),
            ("obj.a = {'b': {'c': 42}}", "true"),
            ("{'x': 1, 'y': 2} = {'y': 2, 'x': 1}", "true"),
            ("{'x': 1} = {'x': 1, 'y': 2}", "false"),
            ("empty = {}", "true"),
            ("i != 4", "true"),
            // Undefined on either side.
            ("missing = 1", "<undefined>"),
            ("1 = missing", "<undefined>"),
            ("missing <> 1", "<undefined>"),
            ("missing = missing", "<undefined>"),
        ],
    );
}

#[test]
fn ordering() {
    check(
        P,
        &[
            ("i > 4", "true"),
            ("i >= 5", "true"),
            ("i < 5.5", "true"),
            ("i <= 4.99", "false"),
            ("neg < -2", "true"),
            ("d > i", "false"),
            // Numeric strings compare as numbers.
            ("n5 > 4", "true"),
            ("'10' > '9'", "true"),
            ("nd <= 2.5", "true"),
            // Strings that are not numbers, and other types, do not order.
            ("s > 'abb'", "<undefined>"),
            ("b > 0", "<undefined>"),
            ("z < 1", "<undefined>"),
            ("arr > 1", "<undefined>"),
            ("missing > 1", "<undefined>"),
        ],
    );
}

#[test]
fn logic_is_three_valued() {
    check(
        P,
        &[
            ("b AND true", "true"),
            ("b AND nb", "false"),
            ("b OR nb", "true"),
            ("NOT b", "false"),
            ("NOT nb", "true"),
            // The strings "true"/"false" in any case are booleans here.
            ("t AND true", "true"),
            ("f OR false", "false"),
            ("NOT t", "false"),
            ("NOT 'False'", "true"),
            // Other values are unknown: false AND x is false, true OR x is true, else Undefined.
            ("nb AND missing", "false"),
            ("missing AND nb", "false"),
            ("b AND missing", "<undefined>"),
            ("b OR missing", "true"),
            ("missing OR b", "true"),
            ("nb OR missing", "<undefined>"),
            ("i AND b", "<undefined>"),
            ("s OR nb", "<undefined>"),
            ("NOT missing", "<undefined>"),
            ("NOT i", "<undefined>"),
            ("NOT z", "<undefined>"),
        ],
    );
}

#[test]
fn in_and_contains() {
    check(
        P,
        &[
            ("3.5 IN arr", "true"),
            ("'two' IN arr", "true"),
            ("null IN arr", "true"),
            ("[4] IN arr", "true"),
            ("{'k': 'v'} IN arr", "true"),
            ("'2' IN arr", "false"),
            ("i IN [1, 5, 9]", "true"),
            ("i IN s", "<undefined>"),
            ("missing IN arr", "<undefined>"),
            ("arr CONTAINS 'two'", "true"),
            ("arr CONTAINS 7", "false"),
            ("s CONTAINS 'bc'", "true"),
            ("s CONTAINS 'x'", "false"),
            ("s CONTAINS 1", "<undefined>"),
            ("i CONTAINS 5", "<undefined>"),
        ],
    );
}

#[test]
fn precedence() {
    check(
        P,
        &[
            ("1 + 2 * 3", "7"),
            ("(1 + 2) * 3", "9"),
            ("10 - 4 - 3", "3"),
            ("100 / 10 / 5", "2"),
            ("2 * 3 % 4", "2"),
            ("-2 * 3", "-6"),
            ("1 + 2 = 3", "true"),
            ("1 < 2 = true", "true"),
            ("1 + 1 > 1 AND 2 > 1", "true"),
            ("true OR false AND false", "true"),
            ("(true OR false) AND false", "false"),
            ("NOT false AND false", "false"),
            ("NOT (false AND false)", "true"),
            ("NOT 1 = 2", "true"),
            ("i > 4 AND s = 'abc' OR b = false", "true"),
            ("-obj.a.b.c", "-42"),
            ("-arr[0]", "-1"),
            ("'a' + 1 + 2", r#""a12""#),
            ("1 + 2 + 'a'", r#""3a""#),
        ],
    );
}

#[test]
fn paths_and_arrays() {
    check(
        P,
        &[
            ("obj.a.b.c", "42"),
            ("obj.a.b", r#"{"c":42}"#),
            ("obj.a.x.c", "<undefined>"),
            ("obj.list[1].x", "2"),
            ("obj.list[2].x", "<undefined>"),
            ("arr[0]", "1"),
            ("arr[4][0]", "4"),
            ("arr[5].k", r#""v""#),
            ("arr[-1]", "<undefined>"),
            ("arr[1.9]", r#""two""#),
            ("arr['1']", r#""two""#),
            ("arr[6]", "<undefined>"),
            ("obj['a'].b.c", "42"),
            ("obj[0]", "<undefined>"),
            ("s[1]", r#""b""#),
            ("s.x", "<undefined>"),
            ("i.x", "<undefined>"),
            ("z.x", "<undefined>"),
            ("missing.x.y", "<undefined>"),
            ("*.obj.a.b.c", "42"),
            ("{'a': {'b': [10, 20]}}.a.b[1]", "20"),
            ("[[1, 2], [3, 4]][1][0]", "3"),
            ("(obj).a.b.c", "42"),
        ],
    );
}

#[test]
fn constructors_drop_undefined() {
    check(
        P,
        &[
            ("[i, missing, s]", r#"[5,"abc"]"#),
            ("{'a': i, 'b': missing, \"c\": z}", r#"{"a":5,"c":null}"#),
            ("{}", "{}"),
            ("[]", "[]"),
            ("{a: 1, 'a': 2}", r#"{"a":2}"#),
            ("{'n': {'m': [obj.a.b.c]}}", r#"{"n":{"m":[42]}}"#),
        ],
    );
}

#[test]
fn case_expressions() {
    check(
        P,
        &[
            (
                "CASE i WHEN 4 THEN 'four' WHEN 5 THEN 'five' ELSE 'other' END",
                r#""five""#,
            ),
            ("CASE i WHEN 5.0 THEN 'five' END", r#""five""#),
            ("CASE n5 WHEN 5 THEN 'num' WHEN '5' THEN 'str' END", r#""str""#),
            ("CASE i WHEN 1 THEN 'one' END", "<undefined>"),
            ("CASE i WHEN 1 THEN 'one' ELSE i * 2 END", "10"),
            // An Undefined subject makes the whole CASE Undefined, ELSE included.
            ("CASE missing WHEN 1 THEN 'one' ELSE 'else' END", "<undefined>"),
            ("CASE i WHEN missing THEN 'x' ELSE 'else' END", r#""else""#),
            ("CASE i WHEN 5 THEN missing ELSE 'else' END", "<undefined>"),
            // The first matching WHEN wins.
            ("case i when 5 then 'a' when 5 then 'b' end", r#""a""#),
            // Shoal also takes expressions after WHEN (AWS documents constants only).
            ("CASE i WHEN 2 + 3 THEN 'sum' END", r#""sum""#),
            // The searched form.
            (
                "CASE WHEN i > 10 THEN 'big' WHEN i > 3 THEN 'mid' ELSE 'small' END",
                r#""mid""#,
            ),
            (
                "CASE WHEN missing > 1 THEN 'x' ELSE 'fallback' END",
                r#""fallback""#,
            ),
            (
                "CASE WHEN t THEN 'string true counts' END",
                r#""string true counts""#,
            ),
            ("CASE WHEN i THEN 'ints do not' ELSE 'no' END", r#""no""#),
            (
                "CASE CASE i WHEN 5 THEN 1 END WHEN 1 THEN 'nested' END",
                r#""nested""#,
            ),
        ],
    );
}

#[test]
fn literals() {
    check(
        "{}",
        &[
            ("1", "1"),
            ("-1", "-1"),
            ("1.50", "1.5"),
            ("10.0", "10"),
            ("1e3", "1000"),
            ("2.5E-3", "0.0025"),
            ("12345678901234567890", "12345678901234567000"),
            ("'single'", r#""single""#),
            ("\"double\"", r#""double""#),
            ("'it''s'", r#""it's""#),
            ("'say \"hi\"'", r#""say \"hi\"""#),
            (r"'tab\there'", r#""tab\there""#),
            (r"'\u00e9t\u00e9'", r#""été""#),
            ("TRUE", "true"),
            ("false", "false"),
            ("Null", "null"),
            ("''", r#""""#),
        ],
    );
}

#[test]
fn undefined_in_where_is_false() {
    assert_eq!(run("SELECT i FROM '#' WHERE missing > 1", P), "<none>");
    assert_eq!(run("SELECT i FROM '#' WHERE NOT (missing > 1)", P), "<none>");
    assert_eq!(run("SELECT i FROM '#' WHERE i", P), "<none>");
    assert_eq!(run("SELECT i FROM '#' WHERE t", P), r#"{"i":5}"#);
    assert_eq!(run("SELECT i FROM '#' WHERE 'yes'", P), "<none>");
    assert_eq!(
        run("SELECT i FROM '#' WHERE isUndefined(missing)", P),
        r#"{"i":5}"#
    );
}

#[test]
fn projections() {
    // Undefined projections are left out; later keys replace earlier ones in place.
    assert_eq!(run("SELECT i, missing, s FROM '#'", P), r#"{"i":5,"s":"abc"}"#);
    assert_eq!(
        run("SELECT *, 'x' AS s, 7 AS extra FROM '#'", r#"{"s":"old","i":1}"#),
        r#"{"s":"x","i":1,"extra":7}"#
    );
    assert_eq!(run("SELECT 1 AS a, 2 AS a FROM '#'", "{}"), r#"{"a":2}"#);
    assert_eq!(
        run("SELECT i AS x.y, s AS x.z, 1 AS x.y.w FROM '#'", P),
        r#"{"x":{"y":{"w":1},"z":"abc"}}"#
    );
    // Names of un-aliased items.
    assert_eq!(
        run(
            "SELECT obj.a.b.c, arr[1], upper(s), cast(i AS String), i + 1, topic(2) FROM '#'",
            P
        ),
        r#"{"c":42,"arr":"two","upper":"ABC","i":"5","_5":6,"topic":"truck-7"}"#
    );
    // * twice, and * after other items, still gives every key once.
    assert_eq!(
        run("SELECT 0 AS i, *, * FROM '#'", r#"{"i":1,"j":2}"#),
        r#"{"i":1,"j":2}"#
    );
    // SELECT VALUE of an object or array literal.
    assert_eq!(run("SELECT VALUE {'a': i} FROM '#'", P), r#"{"a":5}"#);
    assert_eq!(run("SELECT VALUE [i, s] FROM '#'", P), r#"[5,"abc"]"#);
    // A field called `value` is still a field where VALUE cannot be the keyword.
    assert_eq!(run("SELECT value FROM '#'", r#"{"value":3}"#), r#"{"value":3}"#);
    assert_eq!(
        run("SELECT value, 1 AS x FROM '#'", r#"{"value":3}"#),
        r#"{"value":3,"x":1}"#
    );
    assert_eq!(run("SELECT value AS v FROM '#'", r#"{"value":3}"#), r#"{"v":3}"#);
    assert_eq!(
        run("SELECT value.x FROM '#'", r#"{"value":{"x":4}}"#),
        r#"{"x":4}"#
    );
    assert_eq!(
        run("SELECT value[0] AS v FROM '#'", r#"{"value":[9]}"#),
        r#"{"v":9}"#
    );
    assert_eq!(run("SELECT VALUE value FROM '#'", r#"{"value":3}"#), "3");
    assert_eq!(run("SELECT VALUE * FROM '#'", r#"{"a":1}"#), r#"{"a":1}"#);
    // Keywords and functions are case-insensitive; field names are not.
    assert_eq!(
        run("select I, i, UPPER(s) as U from '#' where i = 5", P),
        r#"{"i":5,"U":"ABC"}"#
    );
}

#[test]
fn nested_selects() {
    let p = r#"{"e":[{"n":"t","v":1},{"n":"l","v":2},{"n":"t","v":3},{"v":4}], "nums":[1,2,3,4]}"#;
    check(
        p,
        &[
            ("(SELECT VALUE v FROM e WHERE n = 't')", "[1,3]"),
            (
                "(SELECT n, v * 10 AS tens FROM e WHERE v > 1)",
                r#"[{"n":"l","tens":20},{"n":"t","tens":30},{"tens":40}]"#,
            ),
            ("(SELECT * FROM e WHERE v = 4)", r#"[{"v":4}]"#),
            ("(SELECT VALUE n FROM e)", r#"["t","l","t"]"#),
            ("(SELECT VALUE * FROM nums WHERE * > 2)", "[3,4]"),
            ("(SELECT VALUE x FROM missing)", "<undefined>"),
            ("(SELECT VALUE x FROM nums)", "[]"),
            ("(SELECT VALUE v + 1 FROM [{'v': 1}, {'v': 2}])", "[2,3]"),
            ("(SELECT VALUE topic(3) FROM e WHERE v = 1)", r#"["telemetry"]"#),
            ("(SELECT VALUE (SELECT VALUE * FROM [1, 2]) FROM [0])", "[[1,2]]"),
            // Elements of a built array that point into the payload.
            (
                "(SELECT VALUE n FROM [get(e, 0), e[1], {'n': 'lit'}])",
                r#"["t","l","lit"]"#,
            ),
            ("(SELECT * FROM [e[0]])", r#"[{"n":"t","v":1}]"#),
        ],
    );
}
