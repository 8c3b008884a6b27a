//! Unit tests of the registry over the memory store. The full behaviour is covered by the
//! conformance suite in `shoal-store`, which runs against every backend.

use std::sync::Arc;

use serde_json::json;

use super::*;

fn registry() -> Registry {
    let mut config = RegistryConfig::default();
    config.limits.type_delete_delay = std::time::Duration::ZERO;
    Registry::new(Arc::new(MemoryRegistryStore::default()), config)
}

#[tokio::test]
async fn tokens_round_trip_and_reject_garbage() {
    for name in ["a", "thing-1", "x:y_z"] {
        assert_eq!(api::decode_token(&api::encode_token(name)).unwrap(), name);
    }
    for bad in ["", "abc", "shoal1.", "shoal1.zz", "shoal1.abc", "shoal1.ff"] {
        assert!(
            matches!(api::decode_token(bad), Err(RegistryError::InvalidRequest(_))),
            "{bad:?}"
        );
    }
    let r = registry();
    let page = PageRequest {
        next_token: Some("garbage".into()),
        max_results: None,
    };
    assert!(matches!(
        r.list_things(&ListThingsFilter::default(), &page).await,
        Err(RegistryError::InvalidRequest(_))
    ));
    for bad in [0, 251] {
        assert!(matches!(
            r.list_things(&ListThingsFilter::default(), &PageRequest::first(bad))
                .await,
            Err(RegistryError::InvalidRequest(_))
        ));
    }
}

#[tokio::test]
async fn requests_deserialize_from_aws_json() {
    let req: UpdateThingRequest = serde_json::from_value(json!({
        "thingTypeName": "lamp",
        "attributePayload": {"attributes": {"a": "1", "b": ""}, "merge": true},
        "expectedVersion": 3,
        "removeThingType": false,
        "unknownField": 1
    }))
    .unwrap();
    assert_eq!(req.expected_version, Some(3));
    assert_eq!(req.thing_type_name.as_deref(), Some("lamp"));
    assert!(req.attribute_payload.as_ref().unwrap().merge);
    let req: ThingGroupMembershipRequest =
        serde_json::from_value(json!({"thingGroupName": "g", "thingArn": "arn:aws:iot:r:a:thing/t"}))
            .unwrap();
    assert_eq!(req.thing_group_name.as_deref(), Some("g"));
    assert!(req.thing_name.is_none());
    let req: CreateThingGroupRequest = serde_json::from_value(json!({
        "parentGroupName": "p",
        "thingGroupProperties": {"thingGroupDescription": "d", "attributePayload": {"attributes": {"k": "v"}}},
        "tags": [{"Key": "a", "Value": "b"}]
    }))
    .unwrap();
    assert_eq!(req.parent_group_name.as_deref(), Some("p"));
}

#[tokio::test]
async fn aws_bodies_have_the_output_shapes() {
    let r = registry();
    r.create_thing_type(
        "lamp",
        &CreateThingTypeRequest {
            thing_type_properties: Some(ThingTypeProperties {
                thing_type_description: Some("A lamp".into()),
                searchable_attributes: Some(vec!["color".into()]),
            }),
        },
    )
    .await
    .unwrap();
    let t = r
        .create_thing(
            "t1",
            &CreateThingRequest {
                thing_type_name: Some("lamp".into()),
                attribute_payload: Some(AttributePayload::replace([("color", "red")])),
            },
        )
        .await
        .unwrap();
    let body = aws::describe_thing_response(&t);
    assert_eq!(body["defaultClientId"], "t1");
    assert_eq!(body["thingName"], "t1");
    assert_eq!(body["thingTypeName"], "lamp");
    assert_eq!(body["attributes"], json!({"color": "red"}));
    assert_eq!(body["version"], 1);
    assert_eq!(body["thingArn"], "arn:aws:iot:us-east-1:000000000000:thing/t1");
    assert_eq!(body["thingId"], t.thing_id.as_str());
    let created = aws::create_thing_response(&t);
    assert_eq!(created.as_object().unwrap().len(), 3);

    let ty = r
        .deprecate_thing_type("lamp", &DeprecateThingTypeRequest::default())
        .await
        .unwrap();
    let body = aws::describe_thing_type_response(&ty);
    assert_eq!(body["thingTypeProperties"]["thingTypeDescription"], "A lamp");
    assert_eq!(
        body["thingTypeProperties"]["searchableAttributes"],
        json!(["color"])
    );
    assert_eq!(body["thingTypeMetadata"]["deprecated"], true);
    assert!(body["thingTypeMetadata"]["deprecationDate"].is_f64());
    assert!(body["thingTypeMetadata"]["creationDate"].is_f64());

    r.create_thing_group("root", &CreateThingGroupRequest::default())
        .await
        .unwrap();
    let g = r
        .create_thing_group(
            "child",
            &CreateThingGroupRequest {
                parent_group_name: Some("root".into()),
                thing_group_properties: None,
            },
        )
        .await
        .unwrap();
    let body = aws::describe_thing_group_response(&g);
    assert_eq!(body["thingGroupMetadata"]["parentGroupName"], "root");
    assert_eq!(
        body["thingGroupMetadata"]["rootToParentThingGroups"],
        json!([{"groupName": "root", "groupArn": "arn:aws:iot:us-east-1:000000000000:thinggroup/root"}])
    );
    assert_eq!(body["version"], 1);
    assert_eq!(aws::update_thing_group_response(&g), json!({"version": 1}));

    let page = r
        .list_things(&ListThingsFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    let body = aws::list_things_response(&page);
    assert!(body.get("nextToken").is_none());
    assert_eq!(body["things"][0]["thingName"], "t1");
    assert!(body["things"][0].get("defaultClientId").is_none());
}

#[tokio::test]
async fn plans_ask_for_what_they_need_in_rounds() {
    use plan::{Membership, Step};
    let op = Membership {
        group: ThingGroupName::parse("g").unwrap(),
        group_arn: None,
        thing: ThingName::parse("t").unwrap(),
        thing_arn: None,
        add: true,
        limits: RegistryLimits::default(),
    };
    let snap = plan::Snapshot::default();
    let Step::Read(reads) = op.plan(&snap).unwrap() else {
        panic!("expected a read");
    };
    assert_eq!(reads.records.len(), 2);
    assert_eq!(reads.members.len(), 1);
}
