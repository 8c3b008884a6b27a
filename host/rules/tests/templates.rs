//! Substitution templates (`${expr}` in action fields), evaluated against the incoming
//! message like AWS's (developerguide/iot-substitution-templates.html).

mod common;

use common::{Fixed, TOPIC, ctx};
use shoal_rules::sql::{Ctx, EvalError, Template};

fn render(template: &str, payload: &str) -> String {
    let services = Fixed::default();
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
    t.render(&ctx(TOPIC, payload.as_bytes(), &services))
        .expect("render failed")
}

#[test]
fn renders() {
    let p = r#"{"deviceid":"iot123","temp":54.98,"n":3,"ok":true,"z":null,"coords":{"lat":47.6},"tags":["a","b"]}"#;
    for (template, want) in [
        // The AWS page's republish example.
        ("${topic()}/republish", "fleet/truck-7/telemetry/republish"),
        ("fleet/${topic(2)}/alerts", "fleet/truck-7/alerts"),
        ("device/${deviceid}", "device/iot123"),
        ("${temp}", "54.98"),
        ("${n * 2}", "6"),
        ("${ok}", "true"),
        ("${z}", "null"),
        ("${coords}", r#"{"lat":47.6}"#),
        ("${tags}", r#"["a","b"]"#),
        ("${tags[1]}", "b"),
        ("${coords.lat}", "47.6"),
        // Undefined renders as nothing.
        ("a/${missing}/b", "a//b"),
        // Functions, operators, nested braces and strings inside the expression.
        ("${upper(deviceid)}-${clientid()}", "IOT123-truck-7"),
        ("${ {'k': '}'}.k }", "}"),
        ("${concat(deviceid, '${x}')}", "iot123${x}"),
        ("${parse_time('yyyy/MM/dd', timestamp())}/data", "2016/12/15/data"),
        ("${CASE WHEN temp > 50 THEN 'hot' ELSE 'ok' END}", "hot"),
        // `$$` is a literal `$` (AWS republishes to `$$aws/...` to reach `$aws/...`); a `$`
        // without `{` is literal too.
        (
            "$$aws/things/${topic(2)}/shadow/update",
            "$aws/things/truck-7/shadow/update",
        ),
        ("cost: $5", "cost: $5"),
        ("trailing $", "trailing $"),
        ("no substitutions", "no substitutions"),
        ("", ""),
        ("${deviceid}${n}", "iot1233"),
        ("é${deviceid}é", "éiot123é"),
    ] {
        assert_eq!(render(template, p), want, "{template}");
    }
}

#[test]
fn templates_see_the_message_not_the_select() {
    // An alias from the rule's SELECT is just a missing key in the payload.
    assert_eq!(render("${t}", r#"{"temp": 5}"#), "");
    // The whole payload, JSON or not.
    assert_eq!(render("${*}", r#"{"a":1}"#), r#"{"a":1}"#);
    let services = Fixed::default();
    let t = Template::parse("got ${*} on ${topic()}").unwrap();
    assert_eq!(
        t.render(&ctx(TOPIC, b"plain", &services)).unwrap(),
        "got plain on fleet/truck-7/telemetry"
    );
    assert_eq!(
        t.render(&ctx(TOPIC, b"\xff", &services)).unwrap(),
        "got /w== on fleet/truck-7/telemetry"
    );
}

#[test]
fn errors() {
    for (template, want) in [
        ("a/${", "expected an expression at 1:5, found end of input"),
        ("a/${}", "empty substitution '${}' at 1:3"),
        ("a/${ }", "empty substitution '${}' at 1:3"),
        (
            "a/${topic(2)",
            "expected '}' to close the substitution at 1:13, found end of input",
        ),
        (
            "a/${topic(2) x}",
            "expected '}' to close the substitution at 1:14, found 'x'",
        ),
        ("a/${nope()}", "unknown function 'nope' at 1:5"),
        ("${'open}", "unterminated string literal at 1:3"),
        ("ok/${a}/${b +}", "expected an expression at 1:14, found '}'"),
    ] {
        match Template::parse(template) {
            Ok(_) => panic!("parsed: {template}"),
            Err(e) => assert_eq!(e.to_string(), want, "{template}"),
        }
    }
}

#[test]
fn accessors_and_failures() {
    let t: Template = "x/${topic(1)}".parse().unwrap();
    assert_eq!(t.source(), "x/${topic(1)}");
    assert!(!t.is_static());
    assert!(Template::parse("plain/$$").unwrap().is_static());
    // A failing shadow read fails the render.
    let services = Fixed::default();
    let t = Template::parse("${get_thing_shadow('broken').version}").unwrap();
    assert!(matches!(
        t.render(&Ctx::new("a", b"{}").with_services(&services)),
        Err(EvalError::ThingShadow(_))
    ));
}
