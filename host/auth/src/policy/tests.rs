//! Unit tests of the policy engine: validation errors (path and reason), variables, the
//! wildcard-in-client-id attacks, conditions, evaluation order, and a randomized cross-check of
//! the compiled matcher against a direct full-ARN evaluation.

use std::collections::BTreeMap;

use super::glob::{self, Tok};
use super::*;

const ARN: &str = "arn:aws:iot:us-east-1:000000000000";

fn doc(statements: &str) -> String {
    format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#)
}

fn policy(statements: &str) -> Policy {
    let text = doc(statements);
    Policy::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn compile(p: &Policy, ctx: &VarContext) -> CompiledPolicies {
    CompiledPolicies::new(&ArnConfig::default(), &[("p", "1", p)], ctx)
}

fn client(id: &str) -> VarContext {
    VarContext {
        client_id: Some(id.to_owned()),
        ..Default::default()
    }
}

/// The error of an invalid full document.
fn err_doc(text: &str) -> PolicyError {
    match Policy::parse(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    }
}

/// The error of invalid statements.
fn err(statements: &str) -> PolicyError {
    err_doc(&doc(statements))
}

fn assert_err(e: &PolicyError, path: &str, reason_contains: &str) {
    assert_eq!(e.path, path, "{e}");
    assert!(
        e.reason.contains(reason_contains),
        "reason {:?} lacks {:?}",
        e.reason,
        reason_contains
    );
}

fn allow(action: &str, resource: &str) -> String {
    format!(r#"{{"Effect":"Allow","Action":"{action}","Resource":"{resource}"}}"#)
}

fn deny(action: &str, resource: &str) -> String {
    format!(r#"{{"Effect":"Deny","Action":"{action}","Resource":"{resource}"}}"#)
}

// ---------------------------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------------------------

#[test]
fn error_non_json() {
    let e = err_doc(r#"{"Version": "2012-10-17", "Statement": ["#);
    assert_err(&e, "$", "not valid JSON");
    assert!(e.reason.contains("line 1"), "{e}");
    assert_err(&err_doc("{\"a\":1} x"), "$", "not valid JSON");
    assert_err(&err_doc("   \n "), "$", "empty policy document");
}

#[test]
fn error_not_an_object() {
    assert_eq!(
        err_doc("[]").to_string(),
        "$: a policy document must be a JSON object, found an array"
    );
    assert_err(&err_doc("\"x\""), "$", "found \"x\"");
    assert_err(&err_doc("null"), "$", "found null");
}

#[test]
fn error_version() {
    assert_err(
        &err_doc(r#"{"Statement":[]}"#),
        "$",
        "missing required element \"Version\"",
    );
    assert_err(
        &err_doc(r#"{"Version":"2008-10-17","Statement":{}}"#),
        "$.Version",
        "disables policy variables",
    );
    assert_eq!(
        err_doc(r#"{"Version":"2012-10-18","Statement":{}}"#).to_string(),
        r#"$.Version: must be "2012-10-17", found "2012-10-18""#
    );
    assert_err(
        &err_doc(r#"{"Version":20121017,"Statement":{}}"#),
        "$.Version",
        "found 20121017",
    );
}

#[test]
fn error_statement_shape() {
    assert_eq!(
        err_doc(r#"{"Version":"2012-10-17"}"#).to_string(),
        r#"$: missing required element "Statement""#
    );
    assert_eq!(
        err_doc(r#"{"Version":"2012-10-17","Statement":[]}"#).to_string(),
        "$.Statement: must contain at least one statement"
    );
    assert_err(
        &err_doc(r#"{"Version":"2012-10-17","Statement":"Allow"}"#),
        "$.Statement",
        "must be a statement object or an array of them",
    );
    assert_err(
        &err(&format!("{},42", allow("iot:Connect", "*"))),
        "$.Statement[1]",
        "must be an object, found 42",
    );
    assert_err(
        &err_doc(r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow"}}"#),
        "$.Statement",
        "\"Action\"",
    );
}

#[test]
fn error_unknown_and_duplicate_elements() {
    assert_err(
        &err_doc(r#"{"Version":"2012-10-17","Statement":{},"Extra":1}"#),
        "$.Extra",
        "unknown element \"Extra\" (allowed: Version, Id, Statement)",
    );
    assert_err(
        &err_doc(r#"{"version":"2012-10-17","Statement":{}}"#),
        "$.version",
        "did you mean \"Version\"",
    );
    assert_err(
        &err(r#"{"effect":"Allow","Action":"iot:Connect","Resource":"*"}"#),
        "$.Statement[0].effect",
        "element names are case-sensitive: did you mean \"Effect\"?",
    );
    // serde_json would keep the last "Effect" and make this an Allow.
    assert_eq!(
        err(r#"{"Effect":"Deny","Effect":"Allow","Action":"iot:Connect","Resource":"*"}"#).to_string(),
        "$.Statement[0].Effect: duplicate key"
    );
    assert_err(
        &err_doc(r#"{"Version":"2012-10-17","Version":"2012-10-17","Statement":{}}"#),
        "$.Version",
        "duplicate key",
    );
    assert_err(
        &err_doc(r#"{"Version":"2012-10-17","Id":7,"Statement":{}}"#),
        "$.Id",
        "must be a string",
    );
}

#[test]
fn error_effect() {
    let s = format!(
        r#"{},{{"Effect":"allow","Action":"iot:Connect","Resource":"*"}}"#,
        allow("iot:Connect", "*")
    );
    assert_eq!(
        err(&s).to_string(),
        r#"$.Statement[1].Effect: must be "Allow" or "Deny", found "allow""#
    );
    assert_err(
        &err(r#"{"Effect":true,"Action":"iot:Connect","Resource":"*"}"#),
        "$.Statement[0].Effect",
        "found true",
    );
    assert_eq!(
        err(r#"{"Action":"iot:Connect","Resource":"*"}"#).to_string(),
        r#"$.Statement[0]: missing required element "Effect""#
    );
}

#[test]
fn error_actions() {
    let e = err(r#"{"Effect":"Allow","Action":["iot:Connect","iot:Publsh"],"Resource":"*"}"#);
    assert_err(
        &e,
        "$.Statement[0].Action[1]",
        "unknown action \"iot:Publsh\"; known actions: iot:Connect",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"iot:Frob*","Resource":"*"}"#),
        "$.Statement[0].Action",
        "matches no AWS IoT action",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}"#),
        "$.Statement[0].Action",
        "service prefix must be \"iot\"",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":[],"Resource":"*"}"#),
        "$.Statement[0].Action",
        "must not be an empty array",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":[7],"Resource":"*"}"#),
        "$.Statement[0].Action[0]",
        "must be a string, found 7",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":{"a":1},"Resource":"*"}"#),
        "$.Statement[0].Action",
        "must be a string or an array of strings, found an object",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"iot:Connect","NotAction":"iot:Publish","Resource":"*"}"#),
        "$.Statement[0]",
        "either \"Action\" or \"NotAction\"",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Resource":"*"}"#),
        "$.Statement[0]",
        "missing required element \"Action\"",
    );
}

#[test]
fn error_resources() {
    let cases: &[(&str, &str, &str)] = &[
        ("topic/foo", "$.Statement[0].Resource", "is not \"*\" or an ARN"),
        (
            "arn:aws:iot:us-east-1",
            "$.Statement[0].Resource",
            "six colon-separated parts",
        ),
        (
            "arn:aws:s3:::bucket/key",
            "$.Statement[0].Resource",
            "the service must be \"iot\", found \"s3\"",
        ),
        (
            "arn:aws:io*:us-east-1:1:topic/x",
            "$.Statement[0].Resource",
            "wildcards are not allowed in the service",
        ),
        (
            "arn::iot:us-east-1:1:topic/x",
            "$.Statement[0].Resource",
            "empty partition",
        ),
        (
            "arn:aws:iot:us-east-1:1:topics/x",
            "$.Statement[0].Resource",
            "unknown resource type \"topics\"",
        ),
        (
            "arn:aws:iot:us-east-1:1:topic",
            "$.Statement[0].Resource",
            "missing \"/<name>\"",
        ),
        (
            "arn:aws:iot:${iot:ClientId}:1:topic/x",
            "$.Statement[0].Resource",
            "only allowed in the resource name",
        ),
        (
            "arn:aws:iot:r:1:${iot:ClientId}/x",
            "$.Statement[0].Resource",
            "only allowed in the resource name",
        ),
        (
            "arn:aws:iot:r:1:*${iot:ClientId}",
            "$.Statement[0].Resource",
            "only allowed in the resource name",
        ),
        (
            "arn:aws:iot:r:1:topic/${iot:Thing.ThingName}",
            "$.Statement[0].Resource",
            "unknown policy variable \"iot:Thing.ThingName\" (did you mean iot:Connection.Thing.…?)",
        ),
        (
            "arn:aws:iot:r:1:topic/${iot:ClientId",
            "$.Statement[0].Resource",
            "unterminated policy variable",
        ),
        (
            "arn:aws:iot:r:1:topic/${iot:Certificate.Subject.Organization.List}",
            "$.Statement[0].Resource",
            "can only be a condition key",
        ),
        (
            "arn:aws:iot:r:1:topic/${aws:username}",
            "$.Statement[0].Resource",
            "unknown policy variable",
        ),
    ];
    for (resource, path, reason) in cases {
        assert_err(&err(&allow("iot:Connect", resource)), path, reason);
    }
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"iot:Connect","Resource":["*",""]}"#),
        "$.Statement[0].Resource[1]",
        "is not \"*\" or an ARN",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"iot:Connect"}"#),
        "$.Statement[0]",
        "missing required element \"Resource\"",
    );
}

#[test]
fn error_not_resource_and_principal() {
    assert_err(
        &err(r#"{"Effect":"Allow","Action":"iot:Connect","NotResource":"*"}"#),
        "$.Statement[0].NotResource",
        "NotResource is not supported",
    );
    assert_err(
        &err(r#"{"Effect":"Allow","Principal":"*","Action":"iot:Connect","Resource":"*"}"#),
        "$.Statement[0].Principal",
        "not allowed in AWS IoT policies",
    );
}

#[test]
fn error_duplicate_sid() {
    let s = r#"{"Sid":"a","Effect":"Allow","Action":"iot:Connect","Resource":"*"},
               {"Sid":"a","Effect":"Allow","Action":"iot:Publish","Resource":"*"}"#;
    assert_eq!(
        err(s).to_string(),
        r#"$.Statement[1].Sid: duplicate Sid "a" (also used by $.Statement[0])"#
    );
    assert_err(
        &err(r#"{"Sid":1,"Effect":"Allow","Action":"iot:Connect","Resource":"*"}"#),
        "$.Statement[0].Sid",
        "must be a string",
    );
}

#[test]
fn error_size_limit() {
    let base = doc(&allow("iot:Publish", &format!("{ARN}:topic/x")));
    let size = base.chars().filter(|c| !c.is_whitespace()).count();
    // Pad the topic to exactly 2048 non-whitespace characters: accepted.
    let pad = "a".repeat(DEFAULT_MAX_CHARS - size);
    let at_limit = doc(&allow("iot:Publish", &format!("{ARN}:topic/x{pad}")));
    assert!(Policy::parse(&at_limit).is_ok());
    // Whitespace is not counted.
    let spaced = at_limit.replace(',', " ,\n\t ");
    assert!(spaced.len() > DEFAULT_MAX_CHARS + 10);
    assert!(Policy::parse(&spaced).is_ok());
    // One more character: rejected.
    let over = doc(&allow("iot:Publish", &format!("{ARN}:topic/xb{pad}")));
    assert_eq!(
        Policy::parse(&over).unwrap_err().to_string(),
        "$: policy document is 2049 characters long excluding whitespace; the limit is 2048"
    );
    // The limit is a parameter.
    assert!(Policy::parse_with(&over, &ParseOptions { max_chars: 4096 }).is_ok());
    assert_err(
        &Policy::parse_with(&base, &ParseOptions { max_chars: 10 }).unwrap_err(),
        "$",
        "the limit is 10",
    );
    // Characters, not bytes.
    let unicode = doc(&allow(
        "iot:Publish",
        &format!("{ARN}:topic/{}", "é".repeat(1000)),
    ));
    assert!(unicode.len() > DEFAULT_MAX_CHARS);
    assert!(Policy::parse(&unicode).is_ok());
}

#[test]
fn error_conditions() {
    let with = |cond: &str| {
        err(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{cond}}}"#
        ))
    };
    let c = "$.Statement[0].Condition";
    assert_err(&with("[]"), c, "must be an object");
    assert_err(
        &with(r#"{"NumericLessThan":{"iot:ClientId":"3"}}"#),
        &format!("{c}.NumericLessThan"),
        "not supported by Shoal",
    );
    assert_err(
        &with(r#"{"DateLessThan":{"iot:Certificate.Validity.NotAfter":"2030-01-01T00:00:00Z"}}"#),
        &format!("{c}.DateLessThan"),
        "not supported",
    );
    assert_err(
        &with(r#"{"stringEquals":{"iot:ClientId":"a"}}"#),
        &format!("{c}.stringEquals"),
        "did you mean \"StringEquals\"",
    );
    assert_err(
        &with(r#"{"StringEquals":{"iot:ConnectAttributes":"LastWill"}}"#),
        &format!(r#"{c}.StringEquals["iot:ConnectAttributes"]"#),
        "needs a ForAnyValue: or ForAllValues:",
    );
    assert_err(
        &with(r#"{"ArnEquals":{"iot:LastWillTopic":"arn:aws:iot:*:*:topic/x"}}"#),
        &format!("{c}.ArnEquals"),
        "not supported",
    );
    assert_err(
        &with(r#"{"StringLike":{"iot:LastWillTopic":"x"}}"#),
        &format!(r#"{c}.StringLike["iot:LastWillTopic"]"#),
        "iot:LastWillTopic is not supported",
    );
    assert_err(
        &with(r#"{"StringLike":{"iot:Certificate.AvailableKeys":"x"}}"#),
        &format!(r#"{c}.StringLike["iot:Certificate.AvailableKeys"]"#),
        "not supported",
    );
    assert_err(
        &with(r#"{"StringEquals":{"aws:CurrentTime":"x"}}"#),
        &format!(r#"{c}.StringEquals["aws:CurrentTime"]"#),
        "connection-scoped keys only",
    );
    assert_err(
        &with(r#"{"Bool":{"iot:ClientId":"true"}}"#),
        &format!(r#"{c}.Bool["iot:ClientId"]"#),
        "Bool applies to boolean keys",
    );
    assert_err(
        &with(r#"{"Bool":{"iot:Connection.Thing.IsAttached":"yes"}}"#),
        &format!(r#"{c}.Bool["iot:Connection.Thing.IsAttached"]"#),
        "must be \"true\" or \"false\"",
    );
    assert_err(
        &with(r#"{"IpAddress":{"iot:ClientId":"1.2.3.4"}}"#),
        &format!(r#"{c}.IpAddress["iot:ClientId"]"#),
        "aws:SourceIp only",
    );
    assert_err(
        &with(r#"{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","10.0.0.0/99"]}}"#),
        &format!(r#"{c}.IpAddress["aws:SourceIp"][1]"#),
        "not an IP address or CIDR",
    );
    assert_err(
        &with(r#"{"StringEquals":{"iot:Certificate.Subject.Organization.List":"x"}}"#),
        &format!(r#"{c}.StringEquals["iot:Certificate.Subject.Organization.List"]"#),
        "needs a ForAnyValue: or ForAllValues:",
    );
    assert_err(
        &with(r#"{"StringEquals":{"iot:ClientId":[]}}"#),
        &format!(r#"{c}.StringEquals["iot:ClientId"]"#),
        "at least one value",
    );
    assert_err(
        &with(r#"{"StringEquals":{"iot:ClientId":null}}"#),
        &format!(r#"{c}.StringEquals["iot:ClientId"]"#),
        "found null",
    );
    assert_err(
        &with(r#"{"StringEquals":{}}"#),
        &format!("{c}.StringEquals"),
        "at least one condition key",
    );
    assert_err(
        &with(r#"{"StringEquals":"x"}"#),
        &format!("{c}.StringEquals"),
        "must be an object",
    );
    assert_err(
        &with(r#"{"Null":{"iot:ClientId":["true","false"]}}"#),
        &format!(r#"{c}.Null["iot:ClientId"]"#),
        "exactly one value",
    );
    assert_err(
        &with(r#"{"StringEquals":{"iot:ClientId":"a","iot:ClientId":"b"}}"#),
        &format!(r#"{c}.StringEquals["iot:ClientId"]"#),
        "duplicate key",
    );
    assert_err(
        &with(r#"{"StringLike":{"iot:ClientId":"${iot:Nope}"}}"#),
        &format!(r#"{c}.StringLike["iot:ClientId"]"#),
        "unknown policy variable",
    );
}

// ---------------------------------------------------------------------------------------------
// Parsing details
// ---------------------------------------------------------------------------------------------

#[test]
fn single_statement_object_and_strings() {
    let p = Policy::parse(
        r#"{"Version":"2012-10-17","Id":"x","Statement":{"Sid":"s","Effect":"Allow","Action":"iot:Connect","Resource":"*"}}"#,
    )
    .unwrap();
    assert_eq!(p.id(), Some("x"));
    assert_eq!(p.version(), "2012-10-17");
    assert_eq!(p.statements().len(), 1);
    let s = &p.statements()[0];
    assert_eq!(s.sid.as_deref(), Some("s"));
    assert_eq!(s.effect, Effect::Allow);
    assert!(s.actions.covers(Action::Connect));
    assert!(!s.actions.covers(Action::Publish));
    assert_eq!(s.resources[0].as_str(), "*");
    assert!(!s.resources[0].has_variables());
    let p2: Policy = doc(&allow("iot:Connect", "*")).parse().unwrap();
    assert_eq!(p2.statements()[0].actions, s.actions);
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

#[test]
fn default_deny_and_display() {
    let p = policy(&allow("iot:Connect", &format!("{ARN}:client/c1")));
    let c = compile(&p, &client("c1"));
    let d = c.check(Action::Connect, "c1");
    assert!(d.allowed);
    assert_eq!(
        d.to_string(),
        r#"allowed by statement 0 of policy "p" version "1""#
    );
    let d = c.check(Action::Connect, "c2");
    assert_eq!(
        d,
        Decision {
            allowed: false,
            by: None
        }
    );
    assert_eq!(d.to_string(), "denied: no statement allowed");
    assert!(!c.is_allowed(Action::Publish, "c1"));
}

#[test]
fn deny_overrides_allow_and_names_the_statement() {
    let s = format!(
        r#"{},{},{{"Sid":"NoBar","Effect":"Deny","Action":"iot:Publish","Resource":"{ARN}:topic/${{iot:ClientId}}/bar"}}"#,
        allow("iot:Connect", &format!("{ARN}:client/${{iot:ClientId}}")),
        allow("iot:Publish", &format!("{ARN}:topic/${{iot:ClientId}}/*")),
    );
    let p = policy(&s);
    let c = compile(&p, &client("c1"));
    assert!(c.check(Action::Publish, "c1/foo").allowed);
    let d = c.check(Action::Publish, "c1/bar");
    assert!(!d.allowed);
    let by = d.by.unwrap();
    assert_eq!(
        (by.statement_index, by.sid.as_deref(), by.effect),
        (2, Some("NoBar"), Effect::Deny)
    );
    assert_eq!(
        d.to_string(),
        r#"denied by statement 2 (Sid "NoBar") of policy "p" version "1""#
    );
    assert!(
        c.check(Action::Publish, "c1/bar/baz").allowed,
        "the Deny is exact"
    );
}

#[test]
fn deny_in_another_policy_wins() {
    let a = policy(&allow("iot:*", "*"));
    let b = policy(&deny("iot:Publish", &format!("{ARN}:topic/secret/*")));
    let c = CompiledPolicies::new(
        &ArnConfig::default(),
        &[("open", "3", &a), ("guard", "1", &b)],
        &client("x"),
    );
    assert!(c.check(Action::Publish, "public").allowed);
    let d = c.check(Action::Publish, "secret/x");
    assert!(!d.allowed);
    assert_eq!(d.by.unwrap().policy_name, "guard");
    assert_eq!(d.by.unwrap().policy_version, "1");
    assert_eq!(c.statements().len(), 2);
    // The first allowing statement is reported.
    assert_eq!(c.check(Action::Subscribe, "a/#").by.unwrap().policy_name, "open");
}

#[test]
fn iot_star_and_action_wildcards() {
    let p = policy(&allow("iot:*", "*"));
    let c = compile(&p, &VarContext::default());
    for a in Action::ALL {
        assert!(c.check(a, "anything/at/all").allowed, "{a}");
    }
    let p = policy(&allow(
        "iot:*Shadow",
        &format!("{ARN}:thing/${{iot:Connection.Thing.ThingName}}*"),
    ));
    let ctx = VarContext {
        client_id: Some("t1".into()),
        thing: Some(ThingContext {
            thing_name: "t1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = compile(&p, &ctx);
    for a in [
        Action::GetThingShadow,
        Action::UpdateThingShadow,
        Action::DeleteThingShadow,
    ] {
        assert!(c.check(a, "t1").allowed);
        assert!(c.check(a, "t1/named").allowed);
        assert!(!c.check(a, "t2").allowed);
    }
    assert!(
        !c.check(Action::ListNamedShadowsForThing, "t1").allowed,
        "not covered by *Shadow"
    );
    assert!(!c.check(Action::Publish, "t1").allowed);
}

#[test]
fn question_mark_and_case_sensitivity() {
    let p = policy(&allow("iot:publish", &format!("{ARN}:topic/room?/temp")));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Publish, "room1/temp").allowed);
    assert!(
        c.check(Action::Publish, "roomé/temp").allowed,
        "? is one character"
    );
    assert!(!c.check(Action::Publish, "room/temp").allowed);
    assert!(!c.check(Action::Publish, "room12/temp").allowed);
    assert!(
        !c.check(Action::Publish, "Room1/temp").allowed,
        "resources are case-sensitive"
    );
}

#[test]
fn mqtt_wildcards_in_policies_are_literal() {
    // AWS: "MQTT wildcard characters + and # are treated as literal characters" in policies.
    let p = policy(&format!(
        "{},{}",
        allow("iot:Subscribe", &format!("{ARN}:topicfilter/some/+/topic")),
        allow("iot:Publish", &format!("{ARN}:topic/some/#"))
    ));
    let c = compile(&p, &VarContext::default());
    assert!(
        c.check(Action::Subscribe, "some/+/topic").allowed,
        "the literal filter"
    );
    assert!(!c.check(Action::Subscribe, "some/x/topic").allowed);
    assert!(!c.check(Action::Subscribe, "some/#").allowed);
    assert!(
        !c.check(Action::Publish, "some/x").allowed,
        "# is not a wildcard in a policy"
    );
    // A policy `*` does match the text of MQTT wildcards: the author asked for it.
    let p = policy(&allow("iot:Subscribe", &format!("{ARN}:topicfilter/my/*")));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Subscribe, "my/#").allowed);
    assert!(c.check(Action::Subscribe, "my/+/x").allowed);
}

/// The AWS doc pitfall: a client id of `+` (or `#`) must not widen
/// `topicfilter/my/${iot:ClientId}`; a client id of `*` or `?` must not act as a policy wildcard.
#[test]
fn wildcard_client_id_attacks() {
    let p = policy(&format!(
        "{},{},{},{}",
        allow("iot:Connect", &format!("{ARN}:client/${{iot:ClientId}}")),
        allow(
            "iot:Subscribe",
            &format!("{ARN}:topicfilter/my/${{iot:ClientId}}")
        ),
        allow(
            "iot:Subscribe",
            &format!("{ARN}:topicfilter/my/${{iot:ClientId}}/#")
        ),
        allow("iot:Publish", &format!("{ARN}:topic/my/${{iot:ClientId}}")),
    ));
    for id in ["+", "#", "a+", "#b"] {
        let c = compile(&p, &client(id));
        assert!(
            c.check(Action::Connect, id).allowed,
            "a client id is just a client id"
        );
        assert!(!c.check(Action::Subscribe, &format!("my/{id}")).allowed, "{id}");
        assert!(!c.check(Action::Subscribe, &format!("my/{id}/#")).allowed, "{id}");
        assert!(!c.check(Action::Subscribe, "my/+").allowed, "{id}");
        assert!(!c.check(Action::Subscribe, "my/#").allowed, "{id}");
        assert!(!c.check(Action::Publish, &format!("my/{id}")).allowed, "{id}");
        assert!(
            c.notes().iter().any(|n| n.message.contains("MQTT wildcard")),
            "{:?}",
            c.notes()
        );
    }
    for id in ["*", "?", "a*", "**"] {
        let c = compile(&p, &client(id));
        // Literal: only the filter/topic spelled exactly like the id (in MQTT `*` and `?` are
        // ordinary characters, so that grants nothing beyond the client's own topic).
        assert!(c.check(Action::Subscribe, &format!("my/{id}")).allowed, "{id}");
        assert!(c.check(Action::Publish, &format!("my/{id}")).allowed, "{id}");
        for other in ["my/x", "my/ax", "my/a", "my/+", "my/#", "my/x/y"] {
            assert!(!c.check(Action::Subscribe, other).allowed, "{id} {other}");
            assert!(!c.check(Action::Publish, other).allowed, "{id} {other}");
        }
        assert!(!c.check(Action::Connect, "someone-else").allowed, "{id}");
    }
    // An ordinary client keeps its own filters, and the `/#` in the policy stays literal.
    let c = compile(&p, &client("c1"));
    assert!(c.check(Action::Subscribe, "my/c1").allowed);
    assert!(c.check(Action::Subscribe, "my/c1/#").allowed);
    assert!(!c.check(Action::Subscribe, "my/c1/x").allowed);
}

#[test]
fn substituted_values_are_literal_even_with_star_after() {
    let p = policy(&allow("iot:Publish", &format!("{ARN}:topic/${{iot:ClientId}}/*")));
    let c = compile(&p, &client("a?c"));
    assert!(c.check(Action::Publish, "a?c/x").allowed);
    assert!(!c.check(Action::Publish, "abc/x").allowed);
    let c = compile(&p, &client("${iot:ClientId}"));
    assert!(
        c.check(Action::Publish, "${iot:ClientId}/x").allowed,
        "no recursive substitution"
    );
}

#[test]
fn escapes() {
    let p = policy(&allow(
        "iot:Publish",
        &format!("{ARN}:topic/lit${{*}}/q${{?}}/d${{$}}"),
    ));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Publish, "lit*/q?/d$").allowed);
    assert!(!c.check(Action::Publish, "litx/qy/d$").allowed);
}

#[test]
fn unresolved_variables_match_nothing() {
    let s = format!(
        r#"{{"Effect":"Allow","Action":"iot:Publish","Resource":["{ARN}:topic/t/${{iot:Connection.Thing.ThingName}}","{ARN}:topic/c/${{iot:ClientId}}"]}}"#
    );
    let p = policy(&s);
    // No thing attached: the first resource is dropped, the second still applies.
    let c = compile(&p, &client("c1"));
    assert!(c.check(Action::Publish, "c/c1").allowed);
    assert!(!c.check(Action::Publish, "t/").allowed, "unresolved is not empty");
    assert!(
        !c.check(Action::Publish, "t/${iot:Connection.Thing.ThingName}")
            .allowed,
        "nor literal"
    );
    assert!(!c.check(Action::Publish, "t/c1").allowed);
    assert_eq!(c.notes().len(), 1);
    assert!(
        c.notes()[0]
            .to_string()
            .contains("${iot:Connection.Thing.ThingName} is unresolvable"),
        "{}",
        c.notes()[0]
    );
    // No client id either: nothing applies.
    let c = compile(&p, &VarContext::default());
    assert!(!c.check(Action::Publish, "c/").allowed);
    // An empty value is unresolvable too.
    let c = compile(&p, &client(""));
    assert!(!c.check(Action::Publish, "c/").allowed);
}

#[test]
fn unresolved_variable_in_deny_does_not_deny() {
    // As in AWS: the Deny's resource cannot match, so the Allow stands. (Write denies without
    // variables, or guard them with conditions, if that matters.)
    let s = format!(
        "{},{}",
        allow("iot:Publish", &format!("{ARN}:topic/*")),
        deny(
            "iot:Publish",
            &format!("{ARN}:topic/${{iot:Connection.Thing.Attributes[blocked]}}")
        )
    );
    let c = compile(&policy(&s), &client("c1"));
    assert!(c.check(Action::Publish, "x").allowed);
}

fn thing_ctx() -> VarContext {
    let mut attributes = BTreeMap::new();
    attributes.insert("building".to_owned(), "b7".to_owned());
    attributes.insert("Floor".to_owned(), "3".to_owned());
    VarContext {
        client_id: Some("t1".into()),
        source_ip: Some("10.1.2.3".parse().unwrap()),
        thing: Some(ThingContext {
            thing_name: "t1".into(),
            thing_type_name: Some("lamp".into()),
            attributes,
        }),
        certificate: Some(CertificateContext {
            subject: DistinguishedName::new()
                .with(DnAttribute::CommonName, "dev-t1")
                .with(DnAttribute::Organization, "Example Corp")
                .with(DnAttribute::OrganizationalUnit, "eng")
                .with(DnAttribute::OrganizationalUnit, "ops"),
            issuer: DistinguishedName::new().with(DnAttribute::CommonName, "Shoal CA"),
            subject_alt_names: AltNames::new().with(AltNameKind::DnsName, "t1.example.com"),
            serial_number: Some("0a1b".into()),
            not_after: Some("2030-01-01T00:00:00Z".into()),
            ..Default::default()
        }),
        connect_attributes: Vec::new(),
    }
}

#[test]
fn thing_and_certificate_variables() {
    let resources = [
        "topic/a/${iot:Connection.Thing.ThingName}",
        "topic/b/${iot:Connection.Thing.ThingTypeName}",
        "topic/c/${iot:Connection.Thing.Attributes[building]}/${iot:Connection.Thing.Attributes[Floor]}",
        "topic/d/${iot:Connection.Thing.IsAttached}",
        "topic/e/${iot:Certificate.Subject.CommonName}",
        "topic/f/${iot:Certificate.Issuer.CommonName}",
        "topic/g/${iot:Certificate.Subject.OrganizationalUnit.1}",
        "topic/h/${iot:Certificate.Subject.AlternativeName.DNSName}",
        "topic/i/${iot:Certificate.SerialNumber}",
        "topic/j/${iot:Certificate.Validity.NotAfter}",
        "topic/k/${aws:SourceIp}",
        "topic/l/${iot:Connection.Thing.Attributes[floor]}",
        "topic/m/${iot:Certificate.Subject.Country}",
    ];
    let list: Vec<String> = resources.iter().map(|r| format!("\"{ARN}:{r}\"")).collect();
    let s = format!(
        r#"{{"Effect":"Allow","Action":"iot:Publish","Resource":[{}]}}"#,
        list.join(",")
    );
    let c = compile(&policy(&s), &thing_ctx());
    for topic in [
        "a/t1",
        "b/lamp",
        "c/b7/3",
        "d/true",
        "e/dev-t1",
        "f/Shoal CA",
        "g/ops",
        "h/t1.example.com",
        "i/0a1b",
        "j/2030-01-01T00:00:00Z",
        "k/10.1.2.3",
    ] {
        assert!(c.check(Action::Publish, topic).allowed, "{topic}");
    }
    assert!(
        !c.check(Action::Publish, "l/3").allowed,
        "attribute names are case-sensitive"
    );
    assert!(!c.check(Action::Publish, "m/").allowed, "no Country");
    assert_eq!(c.notes().len(), 2, "{:?}", c.notes());
    // IsAttached is "false" without a thing; the thing variables are unresolvable.
    let c = compile(&policy(&s), &client("t1"));
    assert!(!c.check(Action::Publish, "d/true").allowed);
    assert!(!c.check(Action::Publish, "a/t1").allowed);
}

#[test]
fn certificate_values_with_wildcards_are_not_substituted() {
    let mut ctx = thing_ctx();
    let cert = ctx.certificate.as_mut().unwrap();
    cert.subject = DistinguishedName::new().with(DnAttribute::CommonName, "dev*");
    let p = policy(&allow(
        "iot:Connect",
        &format!("{ARN}:client/${{iot:Certificate.Subject.CommonName}}"),
    ));
    let c = compile(&p, &ctx);
    assert!(!c.check(Action::Connect, "dev*").allowed);
    assert!(!c.check(Action::Connect, "device").allowed);
    cert_long_value();
}

fn cert_long_value() {
    let mut ctx = thing_ctx();
    ctx.certificate.as_mut().unwrap().subject =
        DistinguishedName::new().with(DnAttribute::CommonName, "x".repeat(MAX_CERT_VALUE_CHARS + 1));
    let p = policy(&allow(
        "iot:Connect",
        "arn:aws:iot:*:*:client/${iot:Certificate.Subject.CommonName}",
    ));
    let c = compile(&p, &ctx);
    assert!(
        !c.check(Action::Connect, &"x".repeat(MAX_CERT_VALUE_CHARS + 1))
            .allowed
    );
}

#[test]
fn region_account_and_partition() {
    let p = policy(&format!(
        "{},{}",
        allow("iot:Publish", "arn:aws:iot:eu-west-1:123456789012:topic/eu"),
        allow("iot:Publish", "arn:aws:iot:*:*:topic/any")
    ));
    let c = compile(&p, &VarContext::default());
    assert!(!c.check(Action::Publish, "eu").allowed);
    assert!(c.check(Action::Publish, "any").allowed);
    let eu = ArnConfig::new("eu-west-1", "123456789012").unwrap();
    let c = CompiledPolicies::new(&eu, &[("p", "1", &p)], &VarContext::default());
    assert!(c.check(Action::Publish, "eu").allowed);
    assert_eq!(
        eu.resource_arn(Action::Subscribe, "a/#"),
        "arn:aws:iot:eu-west-1:123456789012:topicfilter/a/#"
    );
    assert_eq!(eu.resource_arn(Action::ListRetainedMessages, "x"), "*");
    assert!(ArnConfig::new("us-east-1", "12:3").is_err());
    assert!(ArnConfig::new("", "1").is_err());
    assert!(ArnConfig::with_partition("aws*", "r", "1").is_err());
    let cn = ArnConfig::with_partition("aws-cn", "cn-north-1", "1").unwrap();
    assert_eq!(cn.prefix(), "arn:aws-cn:iot:cn-north-1:1:");
    assert_eq!(
        ArnConfig::default().prefix(),
        "arn:aws:iot:us-east-1:000000000000:"
    );
}

#[test]
fn resource_types_per_action() {
    let p = policy(&allow("iot:*", &format!("{ARN}:topic/x")));
    let c = compile(&p, &VarContext::default());
    for a in [
        Action::Publish,
        Action::Receive,
        Action::RetainPublish,
        Action::GetRetainedMessage,
    ] {
        assert!(c.check(a, "x").allowed, "{a}");
    }
    for a in [Action::Subscribe, Action::Connect, Action::GetThingShadow] {
        assert!(!c.check(a, "x").allowed, "{a}");
    }
    // A type wildcard covers every type.
    let p = policy(&allow("iot:*", &format!("{ARN}:*")));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Subscribe, "x/#").allowed);
    assert!(c.check(Action::AssumeRoleWithCertificate, "alias").allowed);
    assert!(
        !c.check(Action::ListRetainedMessages, "").allowed,
        "needs Resource \"*\""
    );
    // Shadows: the named shadow is a separate resource.
    let p = policy(&allow("iot:GetThingShadow", &format!("{ARN}:thing/t1")));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::GetThingShadow, "t1").allowed);
    assert!(!c.check(Action::GetThingShadow, "t1/named").allowed);
}

#[test]
fn actions_without_resource_level_permissions() {
    let p = policy(&format!(
        "{},{}",
        allow("iot:ListRetainedMessages", "*"),
        allow("iot:ListNamedShadowsForThing", &format!("{ARN}:thing/t1"))
    ));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::ListRetainedMessages, "ignored").allowed);
    assert!(
        !c.check(Action::ListNamedShadowsForThing, "t1").allowed,
        "only \"*\" grants it"
    );
    let lint = p.lint(&ArnConfig::default());
    assert_eq!(lint.len(), 1, "{lint:?}");
    assert!(
        lint[0].message.contains("checked against \"*\" only"),
        "{}",
        lint[0]
    );
}

#[test]
fn not_action() {
    let p = policy(r#"{"Effect":"Allow","NotAction":["iot:Connect","iot:*Shadow"],"Resource":"*"}"#);
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Publish, "x").allowed);
    assert!(c.check(Action::ListNamedShadowsForThing, "x").allowed);
    assert!(!c.check(Action::Connect, "x").allowed);
    assert!(!c.check(Action::GetThingShadow, "x").allowed);
    let p = policy(&format!(
        r#"{},{{"Effect":"Deny","NotAction":"iot:Connect","Resource":"*"}}"#,
        allow("iot:*", "*")
    ));
    let c = compile(&p, &VarContext::default());
    assert!(c.check(Action::Connect, "x").allowed);
    assert!(!c.check(Action::Receive, "x").allowed);
}

fn cond_policy(effect: &str, condition: &str) -> Policy {
    policy(&format!(
        r#"{{"Effect":"{effect}","Action":"iot:Connect","Resource":"*","Condition":{condition}}}"#
    ))
}

fn connects(p: &Policy, ctx: &VarContext) -> bool {
    compile(p, ctx).check(Action::Connect, "x").allowed
}

#[test]
fn condition_is_attached() {
    let p = cond_policy(
        "Allow",
        r#"{"Bool":{"iot:Connection.Thing.IsAttached":["true"]}}"#,
    );
    assert!(connects(&p, &thing_ctx()));
    assert!(!connects(&p, &client("t1")));
    let c = compile(&p, &client("t1"));
    assert!(c.notes()[0].message.contains("does not hold"), "{}", c.notes()[0]);
    let p = cond_policy("Allow", r#"{"Bool":{"iot:Connection.Thing.IsAttached":false}}"#);
    assert!(connects(&p, &client("t1")));
}

#[test]
fn condition_strings() {
    let ctx = thing_ctx();
    for (cond, expected) in [
        (r#"{"StringEquals":{"iot:ClientId":"t1"}}"#, true),
        (r#"{"StringEquals":{"iot:ClientId":["a","t1"]}}"#, true),
        (r#"{"StringEquals":{"iot:ClientId":"T1"}}"#, false),
        (r#"{"StringEqualsIgnoreCase":{"iot:ClientId":"T1"}}"#, true),
        (r#"{"StringNotEqualsIgnoreCase":{"iot:ClientId":"T1"}}"#, false),
        (r#"{"StringNotEquals":{"iot:ClientId":["a","b"]}}"#, true),
        (r#"{"StringNotEquals":{"iot:ClientId":["a","t1"]}}"#, false),
        (r#"{"StringEquals":{"iot:ClientId":"*"}}"#, false),
        (r#"{"StringLike":{"iot:ClientId":"t*"}}"#, true),
        (r#"{"StringLike":{"iot:ClientId":"x*"}}"#, false),
        (r#"{"StringNotLike":{"iot:ClientId":"x*"}}"#, true),
        (
            r#"{"StringEquals":{"iot:ClientId":"${iot:Connection.Thing.ThingName}"}}"#,
            true,
        ),
        (
            r#"{"StringLike":{"iot:Certificate.Subject.CommonName":"dev-${iot:ClientId}"}}"#,
            true,
        ),
        (
            r#"{"StringEquals":{"iot:Connection.Thing.Attributes[building]":"b7"}}"#,
            true,
        ),
        (
            r#"{"StringEquals":{"iot:Connection.Thing.ThingTypeName":"lamp","iot:ClientId":"t1"}}"#,
            true,
        ),
        (
            r#"{"StringEquals":{"iot:Connection.Thing.ThingTypeName":"lamp"},"StringLike":{"iot:ClientId":"z*"}}"#,
            false,
        ),
        // Absent keys: positive operators false, negated true, IfExists true.
        (
            r#"{"StringEquals":{"iot:Certificate.Subject.Country":"US"}}"#,
            false,
        ),
        (
            r#"{"StringNotEquals":{"iot:Certificate.Subject.Country":"US"}}"#,
            true,
        ),
        (
            r#"{"StringEqualsIfExists":{"iot:Certificate.Subject.Country":"US"}}"#,
            true,
        ),
        (r#"{"StringEqualsIfExists":{"iot:ClientId":"nope"}}"#, false),
        (r#"{"Null":{"iot:Certificate.Subject.Country":"true"}}"#, true),
        (r#"{"Null":{"iot:Certificate.Subject.CommonName":"true"}}"#, false),
        (r#"{"Null":{"iot:Certificate.Subject.CommonName":"false"}}"#, true),
        // Unresolvable variable in a value: that value matches nothing.
        (
            r#"{"StringEquals":{"iot:ClientId":"${iot:Certificate.Subject.Country}"}}"#,
            false,
        ),
        (
            r#"{"StringNotEquals":{"iot:ClientId":"${iot:Certificate.Subject.Country}"}}"#,
            true,
        ),
        // Numbers and booleans are accepted as strings.
        (
            r#"{"StringEquals":{"iot:Connection.Thing.Attributes[Floor]":3}}"#,
            true,
        ),
    ] {
        assert_eq!(connects(&cond_policy("Allow", cond), &ctx), expected, "{cond}");
    }
}

#[test]
fn condition_source_ip() {
    let ctx = thing_ctx();
    for (cond, expected) in [
        (r#"{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}"#, true),
        (
            r#"{"IpAddress":{"aws:SourceIp":["192.168.0.0/16","10.1.2.3"]}}"#,
            true,
        ),
        (r#"{"IpAddress":{"aws:SourceIp":"192.168.0.0/16"}}"#, false),
        (r#"{"NotIpAddress":{"aws:SourceIp":"192.168.0.0/16"}}"#, true),
        (r#"{"StringEquals":{"aws:SourceIp":"10.1.2.3"}}"#, true),
    ] {
        assert_eq!(connects(&cond_policy("Allow", cond), &ctx), expected, "{cond}");
    }
    let none = VarContext::default();
    assert!(!connects(
        &cond_policy("Allow", r#"{"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}}"#),
        &none
    ));
    let mapped = VarContext {
        source_ip: Some("::ffff:10.1.2.3".parse().unwrap()),
        ..Default::default()
    };
    assert!(connects(
        &cond_policy("Allow", r#"{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}"#),
        &mapped
    ));
}

#[test]
fn condition_multi_valued() {
    let ctx = thing_ctx(); // OU = [eng, ops], O = [Example Corp]
    let orgs = r#"{"ForAllValues:StringEquals":{"iot:Certificate.Subject.Organization.List":["Example Corp","AnyCompany"]}}"#;
    assert!(connects(&cond_policy("Allow", orgs), &ctx));
    for (cond, expected) in [
        (
            r#"{"ForAllValues:StringEquals":{"iot:Certificate.Subject.OrganizationalUnit.List":["eng","ops","x"]}}"#,
            true,
        ),
        (
            r#"{"ForAllValues:StringEquals":{"iot:Certificate.Subject.OrganizationalUnit.List":["eng"]}}"#,
            false,
        ),
        (
            r#"{"ForAnyValue:StringEquals":{"iot:Certificate.Subject.OrganizationalUnit.List":["eng"]}}"#,
            true,
        ),
        (
            r#"{"ForAnyValue:StringLike":{"iot:Certificate.Subject.OrganizationalUnit.List":"o*"}}"#,
            true,
        ),
        (
            r#"{"ForAnyValue:StringEquals":{"iot:Certificate.Subject.OrganizationalUnit.List":["qa"]}}"#,
            false,
        ),
        (
            r#"{"ForAllValues:StringNotEquals":{"iot:Certificate.Subject.OrganizationalUnit.List":["qa"]}}"#,
            true,
        ),
        (r#"{"ForAnyValue:StringEquals":{"iot:ClientId":"t1"}}"#, true),
        (
            r#"{"ForAnyValue:StringEquals":{"iot:Certificate.Subject.Country.List":"US"}}"#,
            false,
        ),
        (
            r#"{"Null":{"iot:Certificate.Subject.Country.List":"true"}}"#,
            true,
        ),
    ] {
        assert_eq!(connects(&cond_policy("Allow", cond), &ctx), expected, "{cond}");
    }
    // Deviation from IAM: ForAllValues over an absent key does not grant in an Allow statement
    // (IAM: vacuously true, so a certificate without an Organization would pass)...
    let mut no_org = thing_ctx();
    no_org.certificate.as_mut().unwrap().subject =
        DistinguishedName::new().with(DnAttribute::CommonName, "x");
    assert!(!connects(&cond_policy("Allow", orgs), &no_org));
    assert!(!connects(&cond_policy("Allow", orgs), &client("t1")));
    // ...but still applies, as in IAM, in a Deny statement.
    let p = policy(&format!(
        r#"{},{{"Effect":"Deny","Action":"iot:Connect","Resource":"*","Condition":{orgs}}}"#,
        allow("iot:Connect", "*")
    ));
    assert!(!connects(&p, &no_org));
    let mut evil = thing_ctx();
    evil.certificate.as_mut().unwrap().subject =
        DistinguishedName::new().with(DnAttribute::Organization, "Evil");
    assert!(connects(&p, &evil));
}

#[test]
fn condition_in_deny_statement() {
    let p = policy(&format!(
        r#"{},{{"Effect":"Deny","Action":"iot:Publish","Resource":"*","Condition":{{"StringNotEquals":{{"iot:Connection.Thing.ThingTypeName":"gateway"}}}}}}"#,
        allow("iot:Publish", "*")
    ));
    assert!(
        !compile(&p, &thing_ctx()).check(Action::Publish, "x").allowed,
        "a lamp is not a gateway"
    );
    assert!(
        !compile(&p, &client("c")).check(Action::Publish, "x").allowed,
        "absent: negated is true"
    );
    let mut gw = thing_ctx();
    gw.thing.as_mut().unwrap().thing_type_name = Some("gateway".into());
    assert!(compile(&p, &gw).check(Action::Publish, "x").allowed);
}

// ---------------------------------------------------------------------------------------------
// Lint
// ---------------------------------------------------------------------------------------------

#[test]
fn lint_flags_unreachable_resources() {
    let p = policy(&format!(
        "{},{},{},{}",
        allow("iot:Subscribe", &format!("{ARN}:topic/a/#")),
        allow("iot:Publish", "arn:aws:iot:us-east-1:123456789012:topic/x"),
        allow("iot:Subscribe", &format!("{ARN}:topicfilter/${{iot:ClientId}}/#")),
        allow("iot:*", "*"),
    ));
    let lint = p.lint(&ArnConfig::default());
    assert_eq!(lint.len(), 2, "{lint:?}");
    assert_eq!(lint[0].path, "$.Statement[0].Resource[0]");
    assert!(
        lint[0]
            .message
            .contains("iot:Subscribe is checked against topicfilter/…"),
        "{}",
        lint[0]
    );
    assert_eq!(lint[1].path, "$.Statement[1].Resource[0]");
    assert!(lint[1].message.contains("can never match here"), "{}", lint[1]);
    assert!(
        p.lint(&ArnConfig::new("us-east-1", "123456789012").unwrap())
            .iter()
            .all(|l| !l.path.contains("[1]"))
    );
}

// ---------------------------------------------------------------------------------------------
// Randomized cross-check: compiled (partially evaluated) matching == direct full-ARN matching
// ---------------------------------------------------------------------------------------------

struct Rng(shoal_broker::rng::XorShift64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next()
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        self.0.pick(items).copied().unwrap_or_default()
    }
}

/// Direct evaluation: instantiate each resource and glob it against the full request ARN.
fn naive(p: &Policy, ctx: &VarContext, arn: &ArnConfig, action: Action, name: &str) -> bool {
    let full = arn.resource_arn(action, name);
    let strict = matches!(
        action.resource_type(),
        ResourceType::Topic | ResourceType::TopicFilter
    );
    let mut allowed = false;
    for s in p.statements() {
        if !s.actions.covers(action) || !s.conditions.iter().all(|c| c.evaluate(ctx, s.effect, action)) {
            continue;
        }
        let hit = s
            .resources
            .iter()
            .any(|r| match r.template.instantiate(ctx, strict) {
                Ok(toks) => glob::matches(&toks, &full),
                Err(_) => false,
            });
        match (hit, s.effect) {
            (true, Effect::Deny) => return false,
            (true, Effect::Allow) => allowed = true,
            _ => {}
        }
    }
    allowed
}

#[test]
fn compiled_matches_direct_evaluation() {
    let mut rng = Rng(shoal_broker::rng::XorShift64::new(0x9E37_79B9_7F4A_7C15));
    let prefixes = [
        "arn:aws:iot:us-east-1:000000000000:",
        "arn:aws:iot:*:000000000000:",
        "arn:aws:iot:*:*:",
        "arn:aws:iot:us-east-?:0*:",
        "arn:*:iot:*:*:",
        "arn:aws:iot:eu-west-1:000000000000:",
        "arn:aws:iot:us-east-1:000000000000:*",
    ];
    let types = [
        "topic/",
        "topicfilter/",
        "client/",
        "thing/",
        "*/",
        "*",
        "top*",
        "",
    ];
    let names = [
        "a",
        "a/b",
        "*",
        "a/*",
        "*/b",
        "?",
        "a?",
        "${iot:ClientId}",
        "a/${iot:ClientId}/*",
        "+",
        "#",
        "a/+",
        "x:y",
        "${iot:Connection.Thing.ThingName}/*",
        "*:topic/a",
        "",
    ];
    let tails = [
        "a",
        "a/b",
        "a/b/c",
        "c1",
        "a/c1/x",
        "+",
        "#",
        "a/+",
        "x:y",
        "x:y:topic/a",
        "t1/s",
        "",
        "b",
        "*",
    ];
    let arn = ArnConfig::default();
    let ctxs = [client("c1"), thing_ctx(), client("+"), VarContext::default()];
    let mut checked = 0;
    for _ in 0..300 {
        let n = 1 + rng.next() % 3;
        let mut statements = Vec::new();
        for _ in 0..n {
            let effect = if rng.next().is_multiple_of(4) {
                "Deny"
            } else {
                "Allow"
            };
            let mut resource = format!("{}{}{}", rng.pick(&prefixes), rng.pick(&types), rng.pick(&names));
            if rng.next().is_multiple_of(10) {
                resource = "*".to_owned();
            }
            if ResourcePattern::parse(&resource).is_err() {
                continue;
            }
            let action = rng.pick(&[
                "iot:*",
                "iot:Publish",
                "iot:Subscribe",
                "iot:Connect",
                "iot:*Shadow",
            ]);
            statements.push(format!(
                r#"{{"Effect":"{effect}","Action":"{action}","Resource":"{resource}"}}"#
            ));
        }
        if statements.is_empty() {
            continue;
        }
        let p = policy(&statements.join(","));
        for ctx in &ctxs {
            let compiled = compile(&p, ctx);
            for action in [
                Action::Publish,
                Action::Subscribe,
                Action::Connect,
                Action::GetThingShadow,
            ] {
                for tail in tails {
                    let expected = naive(&p, ctx, &arn, action, tail);
                    assert_eq!(
                        compiled.check(action, tail).allowed,
                        expected,
                        "{statements:?} {ctx:?} {action} {tail:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn residual_matchers_are_specialised() {
    let p = policy(&allow("iot:Publish", &format!("{ARN}:topic/my/*")));
    let c = compile(&p, &VarContext::default());
    let table = &c.tables[Action::Publish.index()];
    assert_eq!(table.allow.len(), 1);
    assert_eq!(table.allow[0].0, glob::Matcher::Prefix("my/".into()));
    let p = policy(&allow("iot:Publish", "*"));
    let c = compile(&p, &VarContext::default());
    assert_eq!(c.tables[Action::Publish.index()].allow[0].0, glob::Matcher::Any);
    assert_eq!(
        glob::Matcher::new(vec![Tok::Lit("a".into())]),
        glob::Matcher::Exact("a".into())
    );
}
