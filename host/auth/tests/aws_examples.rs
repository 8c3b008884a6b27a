//! The example policies of the AWS IoT Core developer guide ("Connect policy examples",
//! "Publish/Subscribe policy examples", "Receive policy examples", "Retained message policy
//! examples", the basic/thing/X.509 policy variable pages), checked through the public API in
//! the guide's ARN namespace (us-east-1, account 123456789012).

use std::collections::BTreeMap;

use shoal_auth::policy::{
    Action, ArnConfig, CertificateContext, CompiledPolicies, DistinguishedName, DnAttribute, Policy,
    ThingContext, VarContext,
};

fn arn() -> ArnConfig {
    ArnConfig::new("us-east-1", "123456789012").expect("valid ARN config")
}

fn parse(text: &str) -> Policy {
    let policy = Policy::parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.lint(&arn()).is_empty(), "{:?}", policy.lint(&arn()));
    policy
}

fn compile(policy: &Policy, ctx: &VarContext) -> CompiledPolicies {
    CompiledPolicies::new(&arn(), &[("example", "1", policy)], ctx)
}

fn client(id: &str) -> VarContext {
    VarContext {
        client_id: Some(id.to_owned()),
        ..Default::default()
    }
}

/// A registered device: a thing named like the client id, attached to the certificate.
fn thing(name: &str) -> VarContext {
    VarContext {
        client_id: Some(name.to_owned()),
        thing: Some(ThingContext {
            thing_name: name.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn basic_policy_variables() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
      {
        "Effect": "Allow",
        "Action": ["iot:Connect"],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"
        ]
      },
      {
        "Effect": "Allow",
        "Action": ["iot:Publish"],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:topic/my/topic/${iot:ClientId}"
        ]
      }
    ]
}"#,
    );
    let c = compile(&p, &client("client1"));
    assert!(c.check(Action::Connect, "client1").allowed);
    assert!(c.check(Action::Publish, "my/topic/client1").allowed);
    assert!(!c.check(Action::Publish, "my/topic/client2").allowed);
    assert!(!c.check(Action::Publish, "my/topic/client1/x").allowed);
}

/// The guide's warning: "A client can connect using + as the client ID. This would allow the
/// user to subscribe to any topic that matches the topic filter my/+/topic". Not in Shoal.
#[test]
fn basic_policy_variables_plus_client_id_pitfall_is_closed() {
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"]},
    {"Effect": "Allow", "Action": ["iot:Subscribe"],
     "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/my/${iot:ClientId}/topic"]}
]}"#,
    );
    let c = compile(&p, &client("+"));
    assert!(c.check(Action::Connect, "+").allowed);
    assert!(!c.check(Action::Subscribe, "my/+/topic").allowed);
    let d = c.check(Action::Subscribe, "my/+/topic");
    assert_eq!(d.to_string(), "denied: no statement allowed");
    assert!(
        c.notes()[0].to_string().contains("MQTT wildcard"),
        "{}",
        c.notes()[0]
    );
    let c = compile(&p, &client("client1"));
    assert!(c.check(Action::Subscribe, "my/client1/topic").allowed);
}

#[test]
fn connect_policy_examples() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
      {
        "Effect": "Allow",
        "Action": [
          "iot:Connect"
        ],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:client/client1"
        ]
      }
    ]
}"#,
    );
    let c = compile(&p, &client("client1"));
    assert!(c.check(Action::Connect, "client1").allowed);
    assert!(!c.check(Action::Connect, "client2").allowed);

    // Deny client1 and client2; allow a client id equal to the thing name.
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
      {
        "Effect": "Deny",
        "Action": [
          "iot:Connect"
        ],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:client/client1",
          "arn:aws:iot:us-east-1:123456789012:client/client2"
        ]
      },
      {
        "Effect": "Allow",
        "Action": [
          "iot:Connect"
        ],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"
        ]
      }
    ]
}"#,
    );
    assert!(
        compile(&p, &thing("thing1"))
            .check(Action::Connect, "thing1")
            .allowed
    );
    let d = compile(&p, &thing("client1"))
        .check(Action::Connect, "client1")
        .to_string();
    assert_eq!(d, r#"denied by statement 0 of policy "example" version "1""#);
    assert!(
        !compile(&p, &client("thing1"))
            .check(Action::Connect, "thing1")
            .allowed,
        "not a registered thing"
    );
}

#[test]
fn connect_attributes_examples() {
    let with = |attrs: &[&str]| VarContext {
        client_id: Some("device1".into()),
        connect_attributes: attrs.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let (plain, persistent, will, both) = (
        with(&[]),
        with(&[VarContext::PERSISTENT_CONNECT]),
        with(&[VarContext::LAST_WILL]),
        with(&[VarContext::PERSISTENT_CONNECT, VarContext::LAST_WILL]),
    );
    let connects = |p: &Policy, ctx: &VarContext| compile(p, ctx).check(Action::Connect, "device1").allowed;

    // "allows connect with PersistentConnect" (and nothing else).
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*",
            "Condition": {"ForAllValues:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]}"#,
    );
    assert!(connects(&p, &plain) && connects(&p, &persistent));
    assert!(!connects(&p, &will) && !connects(&p, &both));

    // "only allows connect using default features": an empty list, vacuously true for no features.
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*",
            "Condition": {"ForAllValues:StringEquals": {"iot:ConnectAttributes": []}}}]}"#,
    );
    assert!(connects(&p, &plain));
    assert!(!connects(&p, &persistent) && !connects(&p, &will));

    // "disallows PersistentConnect, any other feature is allowed" (Allow + Deny ForAnyValue).
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*"},
            {"Effect": "Deny", "Action": ["iot:Connect"], "Resource": "*",
             "Condition": {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]}"#,
    );
    assert!(connects(&p, &plain) && connects(&p, &will));
    assert!(!connects(&p, &persistent) && !connects(&p, &both));

    // "allows connect only with PersistentConnect".
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*",
            "Condition": {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]}"#,
    );
    assert!(connects(&p, &persistent) && connects(&p, &both));
    assert!(!connects(&p, &plain) && !connects(&p, &will));

    // The key exists for iot:Connect only: other actions see it absent.
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*",
            "Condition": {"ForAnyValue:StringEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]}"#,
    );
    let c = compile(&p, &persistent);
    assert!(c.check(Action::Connect, "device1").allowed);
    assert!(!c.check(Action::Publish, "x").allowed);
    assert!(
        c.notes()[0]
            .message
            .contains("not applied to iot:DeleteConnection, iot:Publish"),
        "{}",
        c.notes()[0]
    );

    // The guide's "disallows PersistentConnect" example is missing its closing brace.
    let broken = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["iot:Connect"],
        "Resource": "*", "Condition": {"ForAllValues:StringNotEquals": {"iot:ConnectAttributes": ["PersistentConnect"]}}}]"#;
    let e = Policy::parse(broken).expect_err("not JSON");
    assert_eq!(e.path, "$");
    assert!(e.reason.starts_with("not valid JSON"), "{e}");
}

#[test]
fn publish_prefixed_by_thing_name() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "iot:Connect"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"
            ]
        },
        {
            "Effect": "Allow",
            "Action": [
                "iot:Publish"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:topic/${iot:Connection.Thing.ThingName}/*"
            ]
        }
    ]
}"#,
    );
    let c = compile(&p, &thing("thing1"));
    assert!(c.check(Action::Connect, "thing1").allowed);
    assert!(c.check(Action::Publish, "thing1/a").allowed);
    assert!(c.check(Action::Publish, "thing1/a/b/c").allowed);
    assert!(!c.check(Action::Publish, "thing1").allowed);
    assert!(!c.check(Action::Publish, "thing2/a").allowed);
    // Unregistered: the thing variables are unresolvable, nothing is allowed.
    let c = compile(&p, &client("thing1"));
    assert!(!c.check(Action::Connect, "thing1").allowed);
    assert!(!c.check(Action::Publish, "thing1/a").allowed);
}

#[test]
fn subscribe_and_receive_room_star() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "iot:Connect"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:client/client1",
                "arn:aws:iot:us-east-1:123456789012:client/client2",
                "arn:aws:iot:us-east-1:123456789012:client/client3"
            ]
        },
        {
            "Effect": "Allow",
            "Action": [
                "iot:Subscribe"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:topicfilter/${iot:ClientId}/room*"
            ]
        },
        {
            "Effect": "Allow",
            "Action": [
                "iot:Receive"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/room*"
            ]
        }
    ]
}"#,
    );
    let c = compile(&p, &client("client2"));
    assert!(c.check(Action::Connect, "client2").allowed);
    assert!(!c.check(Action::Connect, "client4").allowed);
    assert!(c.check(Action::Subscribe, "client2/room1").allowed);
    assert!(
        c.check(Action::Subscribe, "client2/room/#").allowed,
        "policy * matches the filter text"
    );
    assert!(c.check(Action::Receive, "client2/room7").allowed);
    assert!(!c.check(Action::Receive, "client1/room7").allowed);
    assert!(!c.check(Action::Subscribe, "client2/kitchen").allowed);
}

#[test]
fn subscribe_literal_plus() {
    // "In a policy, the MQTT wildcard character + is treated as a literal, not a wildcard.
    // Attempts to subscribe to topic filters that match the pattern some/+/topic fail".
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
      {
        "Effect": "Allow",
        "Action": [
          "iot:Connect"
        ],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:client/client1"
        ]
      },
      {
        "Effect": "Allow",
        "Action": [
          "iot:Subscribe"
        ],
        "Resource": [
          "arn:aws:iot:us-east-1:123456789012:topicfilter/some/+/topic"
        ]
      }
    ]
}"#,
    );
    let c = compile(&p, &client("client1"));
    assert!(c.check(Action::Subscribe, "some/+/topic").allowed);
    assert!(!c.check(Action::Subscribe, "some/sensor/topic").allowed);
}

#[test]
fn subscribe_two_topics_and_receive() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["iot:Connect"],
         "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]},
        {"Effect": "Allow", "Action": ["iot:Subscribe"],
         "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/my/topic",
                      "arn:aws:iot:us-east-1:123456789012:topicfilter/my/othertopic"]},
        {"Effect": "Allow", "Action": ["iot:Receive"],
         "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/my/topic"]}
    ]
}"#,
    );
    let c = compile(&p, &thing("thing1"));
    assert!(c.check(Action::Subscribe, "my/topic").allowed);
    assert!(c.check(Action::Subscribe, "my/othertopic").allowed);
    assert!(!c.check(Action::Subscribe, "my/#").allowed);
    assert!(c.check(Action::Receive, "my/topic").allowed);
    assert!(
        !c.check(Action::Receive, "my/othertopic").allowed,
        "Receive is checked separately"
    );
}

#[test]
fn publish_except_bar() {
    let p = parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "iot:Connect"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:client/client1",
                "arn:aws:iot:us-east-1:123456789012:client/client2"
            ]
        },
        {
            "Effect": "Allow",
            "Action": [
                "iot:Publish"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/*"
            ]
        },
        {
            "Effect": "Deny",
            "Action": [
                "iot:Publish"
            ],
            "Resource": [
                "arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/bar"
            ]
        }
    ]
}"#,
    );
    let c = compile(&p, &client("client1"));
    assert!(c.check(Action::Publish, "client1/foo").allowed);
    let d = c.check(Action::Publish, "client1/bar");
    assert!(!d.allowed);
    assert_eq!(d.by.map(|s| s.statement_index), Some(2));
}

/// Several guide examples write `${iot:Thing.ThingName}`, which is not a policy variable (AWS
/// would leave it unsubstituted and the statement would never match). Shoal rejects it.
#[test]
fn guide_typo_thing_thing_name_is_rejected() {
    let e = Policy::parse(
        r#"{
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["iot:Connect"],
         "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]},
        {"Effect": "Allow", "Action": ["iot:Publish"],
         "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/my/topic/${iot:Thing.ThingName}"]}
    ]
}"#,
    )
    .expect_err("unknown variable");
    assert_eq!(e.path, "$.Statement[1].Resource[0]");
    assert!(e.reason.contains("did you mean iot:Connection.Thing."), "{e}");
}

#[test]
fn certificate_organization_condition() {
    let p = parse(
        r#"{
    "Version":"2012-10-17",
    "Statement":[
      {
        "Effect":"Allow",
        "Action":[
          "iot:Connect"
        ],
        "Resource":[
          "arn:aws:iot:us-east-1:123456789012:client/client1",
          "arn:aws:iot:us-east-1:123456789012:client/client2",
          "arn:aws:iot:us-east-1:123456789012:client/client3"
        ]
      },
      {
        "Effect":"Allow",
        "Action":[
          "iot:Publish"
        ],
        "Resource":[
          "arn:aws:iot:us-east-1:123456789012:topic/my/topic/${iot:ClientId}"
        ],
        "Condition":{
          "ForAllValues:StringEquals":{
            "iot:Certificate.Subject.Organization.List":[
              "Example Corp",
              "AnyCompany"
            ]
          }
        }
      }
    ]
}"#,
    );
    let with_orgs = |orgs: &[&str]| {
        let mut subject = DistinguishedName::new();
        for o in orgs {
            subject.push(DnAttribute::Organization, *o);
        }
        VarContext {
            client_id: Some("client1".into()),
            certificate: Some(CertificateContext {
                subject,
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let publishes = |ctx: &VarContext| {
        compile(&p, ctx)
            .check(Action::Publish, "my/topic/client1")
            .allowed
    };
    assert!(publishes(&with_orgs(&["Example Corp"])));
    assert!(publishes(&with_orgs(&["AnyCompany", "Example Corp"])));
    assert!(!publishes(&with_orgs(&["Example Corp", "Evil Inc"])));
    // IAM would allow a certificate without an Organization (ForAllValues over nothing is true);
    // Shoal does not (see POLICY_SEMANTICS.md).
    assert!(!publishes(&with_orgs(&[])));
    assert!(
        compile(&p, &with_orgs(&[]))
            .check(Action::Connect, "client1")
            .allowed
    );
}

#[test]
fn certificate_common_name_as_client_id() {
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect",
            "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Certificate.Subject.CommonName}"}]}"#,
    );
    let ctx = VarContext {
        client_id: Some("dev-7".into()),
        certificate: Some(CertificateContext {
            subject: DistinguishedName::new().with(DnAttribute::CommonName, "dev-7"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = compile(&p, &ctx);
    assert!(c.check(Action::Connect, "dev-7").allowed);
    assert!(!c.check(Action::Connect, "dev-8").allowed);
}

#[test]
fn thing_is_attached_and_attributes() {
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"],
             "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": ["true"]}}},
            {"Effect": "Allow", "Action": ["iot:Publish"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.Attributes[fleet]}/*"]},
            {"Effect": "Allow", "Action": ["iot:Subscribe"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/type/${iot:Connection.Thing.ThingTypeName}/#"]}
        ]}"#,
    );
    let mut attributes = BTreeMap::new();
    attributes.insert("fleet".to_owned(), "north".to_owned());
    let ctx = VarContext {
        client_id: Some("lamp-1".into()),
        thing: Some(ThingContext {
            thing_name: "lamp-1".into(),
            thing_type_name: Some("lamp".into()),
            attributes,
        }),
        ..Default::default()
    };
    let c = compile(&p, &ctx);
    assert!(c.check(Action::Connect, "lamp-1").allowed);
    assert!(c.check(Action::Publish, "fleet/north/status").allowed);
    assert!(!c.check(Action::Publish, "fleet/south/status").allowed);
    assert!(c.check(Action::Subscribe, "type/lamp/#").allowed);
    assert!(
        !compile(&p, &client("lamp-1"))
            .check(Action::Connect, "lamp-1")
            .allowed
    );
}

#[test]
fn retained_message_examples() {
    let p = parse(
        r#"{
	"Version":"2012-10-17",
	"Statement": [
		{
			"Effect": "Allow",
			"Action": [
				"iot:Connect"
			],
			"Resource": [
				"arn:aws:iot:us-east-1:123456789012:client/device1"
			]
		},
		{
			"Effect": "Allow",
			"Action": [
				"iot:Publish",
				"iot:RetainPublish"
			],
			"Resource": [
				"arn:aws:iot:us-east-1:123456789012:topic/device/sample/configuration"
			]
		},
		{
			"Effect": "Allow",
			"Action": [
				"iot:GetRetainedMessage"
			],
			"Resource": [
				"arn:aws:iot:us-east-1:123456789012:topic/device/sample/configuration"
			]
		},
		{
			"Effect": "Allow",
			"Action": [
				"iot:ListRetainedMessages"
			],
			"Resource": [
				"*"
			]
		}
	]
}"#,
    );
    let c = compile(&p, &client("device1"));
    for a in [Action::Publish, Action::RetainPublish, Action::GetRetainedMessage] {
        assert!(c.check(a, "device/sample/configuration").allowed, "{a}");
        assert!(!c.check(a, "device/sample/other").allowed, "{a}");
    }
    assert!(c.check(Action::ListRetainedMessages, "").allowed);
}

#[test]
fn shadow_topics_and_shadow_actions() {
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]},
            {"Effect": "Allow", "Action": ["iot:Publish"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"]},
            {"Effect": "Allow", "Action": ["iot:Subscribe"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"]},
            {"Effect": "Allow", "Action": ["iot:Receive"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"]},
            {"Effect": "Allow", "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
             "Resource": ["arn:aws:iot:us-east-1:123456789012:thing/${iot:Connection.Thing.ThingName}",
                          "arn:aws:iot:us-east-1:123456789012:thing/${iot:Connection.Thing.ThingName}/*"]}
        ]}"#,
    );
    let c = compile(&p, &thing("thing1"));
    assert!(
        c.check(Action::Publish, "$aws/things/thing1/shadow/update")
            .allowed
    );
    assert!(
        c.check(Action::Publish, "$aws/things/thing1/shadow/name/s1/get")
            .allowed
    );
    assert!(
        c.check(Action::Subscribe, "$aws/things/thing1/shadow/update/delta")
            .allowed
    );
    assert!(c.check(Action::Subscribe, "$aws/things/thing1/shadow/#").allowed);
    assert!(
        c.check(Action::Receive, "$aws/things/thing1/shadow/get/accepted")
            .allowed
    );
    assert!(
        !c.check(Action::Publish, "$aws/things/thing2/shadow/update")
            .allowed
    );
    assert!(c.check(Action::UpdateThingShadow, "thing1").allowed);
    assert!(c.check(Action::GetThingShadow, "thing1/s1").allowed);
    assert!(!c.check(Action::DeleteThingShadow, "thing2").allowed);
    assert!(!c.check(Action::ListNamedShadowsForThing, "thing1").allowed);
}

#[test]
fn allow_everything() {
    let p = parse(
        r#"{"Version": "2012-10-17", "Statement": [{"Action": ["iot:*"], "Effect": "Allow", "Resource": "*"}]}"#,
    );
    let c = compile(&p, &VarContext::default());
    for a in Action::ALL {
        assert!(c.check(a, "anything").allowed, "{a}");
    }
}
