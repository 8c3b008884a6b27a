//! The AWS IoT JSON response bodies of the registry operations (botocore `iot` output shapes),
//! for the HTTP front end. Timestamps are epoch seconds (the REST-JSON default), absent
//! optional members are omitted, and `nextToken` appears only when there is a next page.

use serde_json::{Map, Value, json};

use super::model::{GroupRef, Thing, ThingGroup, ThingType};
use super::requests::Page;
use crate::shadow::ThingName;

fn seconds(ms: u64) -> Value {
    // Milliseconds as fractional seconds; exact for any realistic date.
    #[allow(clippy::cast_precision_loss)]
    let s = ms as f64 / 1000.0;
    json!(s)
}

fn with_token(mut body: Map<String, Value>, token: Option<&String>) -> Value {
    if let Some(t) = token {
        body.insert("nextToken".into(), t.as_str().into());
    }
    Value::Object(body)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `CreateThing`: `{thingName, thingArn, thingId}`.
pub fn create_thing_response(t: &Thing) -> Value {
    json!({"thingName": t.name, "thingArn": t.arn, "thingId": t.thing_id})
}

/// `ThingAttribute` (an item of `ListThings`).
pub fn thing_attribute(t: &Thing) -> Value {
    let mut m = object(json!({
        "thingName": t.name,
        "thingArn": t.arn,
        "attributes": t.attributes,
        "version": t.version,
    }));
    if let Some(ty) = &t.type_name {
        m.insert("thingTypeName".into(), ty.as_str().into());
    }
    Value::Object(m)
}

/// `DescribeThing`: `ThingAttribute` plus `defaultClientId` (the thing name) and `thingId`.
pub fn describe_thing_response(t: &Thing) -> Value {
    let mut m = object(thing_attribute(t));
    m.insert("defaultClientId".into(), t.name.as_str().into());
    m.insert("thingId".into(), t.thing_id.as_str().into());
    Value::Object(m)
}

/// `ListThings`: `{things: [ThingAttribute], nextToken?}`.
pub fn list_things_response(page: &Page<Thing>) -> Value {
    let things: Vec<Value> = page.items.iter().map(thing_attribute).collect();
    with_token(object(json!({ "things": things })), page.next_token.as_ref())
}

/// `CreateThingType`: `{thingTypeName, thingTypeArn, thingTypeId}`.
pub fn create_thing_type_response(t: &ThingType) -> Value {
    json!({"thingTypeName": t.name, "thingTypeArn": t.arn, "thingTypeId": t.id})
}

fn thing_type_properties(t: &ThingType) -> Value {
    let mut m = Map::new();
    if let Some(d) = &t.description {
        m.insert("thingTypeDescription".into(), d.as_str().into());
    }
    if !t.searchable_attributes.is_empty() {
        m.insert("searchableAttributes".into(), json!(t.searchable_attributes));
    }
    Value::Object(m)
}

fn thing_type_metadata(t: &ThingType) -> Value {
    let mut m = object(json!({"deprecated": t.deprecated, "creationDate": seconds(t.created_ms)}));
    if let Some(d) = t.deprecation_date_ms {
        m.insert("deprecationDate".into(), seconds(d));
    }
    Value::Object(m)
}

/// `ThingTypeDefinition` (an item of `ListThingTypes`).
pub fn thing_type_definition(t: &ThingType) -> Value {
    json!({
        "thingTypeName": t.name,
        "thingTypeArn": t.arn,
        "thingTypeProperties": thing_type_properties(t),
        "thingTypeMetadata": thing_type_metadata(t),
    })
}

/// `DescribeThingType`: `ThingTypeDefinition` plus `thingTypeId`.
pub fn describe_thing_type_response(t: &ThingType) -> Value {
    let mut m = object(thing_type_definition(t));
    m.insert("thingTypeId".into(), t.id.as_str().into());
    Value::Object(m)
}

/// `ListThingTypes`: `{thingTypes: [ThingTypeDefinition], nextToken?}`.
pub fn list_thing_types_response(page: &Page<ThingType>) -> Value {
    let types: Vec<Value> = page.items.iter().map(thing_type_definition).collect();
    with_token(object(json!({ "thingTypes": types })), page.next_token.as_ref())
}

/// `CreateThingGroup`: `{thingGroupName, thingGroupArn, thingGroupId}`.
pub fn create_thing_group_response(g: &ThingGroup) -> Value {
    json!({"thingGroupName": g.name, "thingGroupArn": g.arn, "thingGroupId": g.id})
}

/// `GroupNameAndArn`.
pub fn group_name_and_arn(g: &GroupRef) -> Value {
    json!({"groupName": g.name, "groupArn": g.arn})
}

/// `DescribeThingGroup`.
pub fn describe_thing_group_response(g: &ThingGroup) -> Value {
    let mut props = object(json!({"attributePayload": {"attributes": g.attributes}}));
    if let Some(d) = &g.description {
        props.insert("thingGroupDescription".into(), d.as_str().into());
    }
    let roots: Vec<Value> = g.root_to_parent.iter().map(group_name_and_arn).collect();
    let mut meta = object(json!({"rootToParentThingGroups": roots, "creationDate": seconds(g.created_ms)}));
    if let Some(p) = &g.parent {
        meta.insert("parentGroupName".into(), p.as_str().into());
    }
    json!({
        "thingGroupName": g.name,
        "thingGroupId": g.id,
        "thingGroupArn": g.arn,
        "version": g.version,
        "thingGroupProperties": props,
        "thingGroupMetadata": meta,
    })
}

/// `UpdateThingGroup`: `{version}`.
pub fn update_thing_group_response(g: &ThingGroup) -> Value {
    json!({"version": g.version})
}

/// `ListThingGroups`: `{thingGroups: [GroupNameAndArn], nextToken?}`.
pub fn list_thing_groups_response(page: &Page<ThingGroup>) -> Value {
    let groups: Vec<Value> = page
        .items
        .iter()
        .map(|g| group_name_and_arn(&g.group_ref()))
        .collect();
    with_token(object(json!({ "thingGroups": groups })), page.next_token.as_ref())
}

/// `ListThingGroupsForThing`: `{thingGroups: [GroupNameAndArn], nextToken?}`.
pub fn list_thing_groups_for_thing_response(page: &Page<GroupRef>) -> Value {
    let groups: Vec<Value> = page.items.iter().map(group_name_and_arn).collect();
    with_token(object(json!({ "thingGroups": groups })), page.next_token.as_ref())
}

/// `ListThingsInThingGroup`: `{things: [name], nextToken?}`.
pub fn list_things_in_thing_group_response(page: &Page<ThingName>) -> Value {
    let things: Vec<&str> = page.items.iter().map(ThingName::as_str).collect();
    with_token(object(json!({ "things": things })), page.next_token.as_ref())
}
