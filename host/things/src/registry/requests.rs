//! Request bodies and query parameters, with AWS's JSON field names so front ends can
//! deserialize them straight from the HTTP request (`serde_json` for bodies, a query-string
//! deserializer for the `List*` parameters). Names in URI paths are passed separately.
//!
//! Unknown fields (`tags`, `billingGroupName`, `mqtt5Configuration`, ...) are accepted and
//! ignored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::model::Attributes;

/// A nested structure that must be a JSON object (serde's derive also reads a struct from an
/// array of its fields, which AWS refuses).
fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    if !v.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    T::deserialize(v).map_err(serde::de::Error::custom)
}

/// Like [`object`], or `null`.
fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    if !v.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object or null"));
    }
    T::deserialize(v).map(Some).map_err(serde::de::Error::custom)
}

/// `attributePayload`: attributes and, for the update operations, whether to merge them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttributePayload {
    /// The attributes. Absent leaves an update's attributes unchanged.
    #[serde(default)]
    pub attributes: Option<Attributes>,
    /// Merge into the stored attributes instead of replacing them (only `UpdateThing` and
    /// `UpdateThingGroup` read it). An empty value deletes the attribute.
    #[serde(default)]
    pub merge: bool,
}

impl AttributePayload {
    /// A payload replacing the attributes with `attributes`.
    pub fn replace<K: Into<String>, V: Into<String>>(attributes: impl IntoIterator<Item = (K, V)>) -> Self {
        AttributePayload {
            attributes: Some(
                attributes
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            merge: false,
        }
    }

    /// A payload merging `attributes` (empty values delete).
    pub fn merge<K: Into<String>, V: Into<String>>(attributes: impl IntoIterator<Item = (K, V)>) -> Self {
        AttributePayload {
            merge: true,
            ..Self::replace(attributes)
        }
    }
}

/// `CreateThing` body (`POST /things/{thingName}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingRequest {
    /// `thingTypeName`.
    #[serde(default)]
    pub thing_type_name: Option<String>,
    /// `attributePayload` (`merge` is ignored).
    #[serde(default, deserialize_with = "object_or_null")]
    pub attribute_payload: Option<AttributePayload>,
}

/// `UpdateThing` body (`PATCH /things/{thingName}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingRequest {
    /// `thingTypeName`: the new type.
    #[serde(default)]
    pub thing_type_name: Option<String>,
    /// `attributePayload`.
    #[serde(default, deserialize_with = "object_or_null")]
    pub attribute_payload: Option<AttributePayload>,
    /// `expectedVersion`.
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// `removeThingType`.
    #[serde(default)]
    pub remove_thing_type: bool,
}

/// `thingTypeProperties`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingTypeProperties {
    /// `thingTypeDescription`.
    #[serde(default)]
    pub thing_type_description: Option<String>,
    /// `searchableAttributes`.
    #[serde(default)]
    pub searchable_attributes: Option<Vec<String>>,
}

/// `CreateThingType` body (`POST /thing-types/{thingTypeName}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingTypeRequest {
    /// `thingTypeProperties`.
    #[serde(default, deserialize_with = "object_or_null")]
    pub thing_type_properties: Option<ThingTypeProperties>,
}

/// `DeprecateThingType` body (`POST /thing-types/{thingTypeName}/deprecate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeprecateThingTypeRequest {
    /// `undoDeprecate`.
    #[serde(default)]
    pub undo_deprecate: bool,
}

/// `thingGroupProperties`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingGroupProperties {
    /// `thingGroupDescription`.
    #[serde(default)]
    pub thing_group_description: Option<String>,
    /// `attributePayload` (`merge` only matters for `UpdateThingGroup`).
    #[serde(default, deserialize_with = "object_or_null")]
    pub attribute_payload: Option<AttributePayload>,
}

/// `CreateThingGroup` body (`POST /thing-groups/{thingGroupName}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingGroupRequest {
    /// `parentGroupName`.
    #[serde(default)]
    pub parent_group_name: Option<String>,
    /// `thingGroupProperties`.
    #[serde(default, deserialize_with = "object_or_null")]
    pub thing_group_properties: Option<ThingGroupProperties>,
}

/// `UpdateThingGroup` body (`PATCH /thing-groups/{thingGroupName}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingGroupRequest {
    /// `thingGroupProperties` (required by AWS; absent is treated as empty).
    #[serde(default, deserialize_with = "object")]
    pub thing_group_properties: ThingGroupProperties,
    /// `expectedVersion`.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// `AddThingToThingGroup` / `RemoveThingFromThingGroup` body
/// (`PUT /thing-groups/addThingToThingGroup`, `…/removeThingFromThingGroup`): the group by name
/// or ARN and the thing by name or ARN. When both are given they must agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingGroupMembershipRequest {
    /// `thingGroupName`.
    #[serde(default)]
    pub thing_group_name: Option<String>,
    /// `thingGroupArn`.
    #[serde(default)]
    pub thing_group_arn: Option<String>,
    /// `thingName`.
    #[serde(default)]
    pub thing_name: Option<String>,
    /// `thingArn`.
    #[serde(default)]
    pub thing_arn: Option<String>,
    /// `overrideDynamicGroups`: accepted; Shoal has no dynamic groups, so it changes nothing.
    #[serde(default)]
    pub override_dynamic_groups: bool,
}

impl ThingGroupMembershipRequest {
    /// A request naming the group and the thing.
    pub fn new(group: &str, thing: &str) -> Self {
        ThingGroupMembershipRequest {
            thing_group_name: Some(group.to_owned()),
            thing_name: Some(thing.to_owned()),
            ..Self::default()
        }
    }
}

/// `ListThings` filters (query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListThingsFilter {
    /// `attributeName`: only things with this attribute.
    #[serde(default)]
    pub attribute_name: Option<String>,
    /// `attributeValue`: ... whose value is this (requires `attributeName`).
    #[serde(default)]
    pub attribute_value: Option<String>,
    /// `usePrefixAttributeValue`: ... whose value starts with `attributeValue`.
    #[serde(default)]
    pub use_prefix_attribute_value: bool,
    /// `thingTypeName`: only things of this type.
    #[serde(default)]
    pub thing_type_name: Option<String>,
    /// `namePrefix` (*Shoal extension*, not an AWS parameter): only names starting with it.
    #[serde(default)]
    pub name_prefix: Option<String>,
}

/// `ListThingGroups` filters (query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListThingGroupsFilter {
    /// `parentGroup`: only descendants of this group (it must exist).
    #[serde(default)]
    pub parent_group: Option<String>,
    /// `namePrefixFilter`.
    #[serde(default)]
    pub name_prefix_filter: Option<String>,
    /// `recursive`: absent or `true` lists all descendants (all groups without
    /// `parentGroup`); `false` only direct children (only root groups without `parentGroup`).
    #[serde(default)]
    pub recursive: Option<bool>,
}

/// Paging parameters of every `List*` operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageRequest {
    /// `nextToken` from the previous page; `None` for the first page.
    #[serde(default)]
    pub next_token: Option<String>,
    /// `maxResults`: 1 to 250, default [`DEFAULT_MAX_RESULTS`].
    #[serde(default)]
    pub max_results: Option<u32>,
}

/// Page size when `maxResults` is absent.
pub const DEFAULT_MAX_RESULTS: u32 = 50;
/// Largest `maxResults` (AWS `RegistryMaxResults`: 1 to 250).
pub const MAX_MAX_RESULTS: u32 = 250;

impl PageRequest {
    /// The first page of at most `max_results` items.
    pub fn first(max_results: u32) -> Self {
        PageRequest {
            next_token: None,
            max_results: Some(max_results),
        }
    }

    /// The page after the one that returned `next_token`.
    pub fn after(next_token: Option<String>, max_results: u32) -> Self {
        PageRequest {
            next_token,
            max_results: Some(max_results),
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in ascending name order.
    pub items: Vec<T>,
    /// The token for the next page; `None` when this is the last one.
    pub next_token: Option<String>,
}
