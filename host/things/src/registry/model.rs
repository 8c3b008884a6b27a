//! The registry's records (things, thing types, thing groups), the keys a store files them
//! under, the secondary indexes, and the validation of their fields.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::names::{ThingGroupName, ThingTypeName};
use crate::shadow::ThingName;

/// Longest attribute name (AWS `AttributeName`: max 128).
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 128;
/// Longest attribute value (AWS `AttributeValue`: max 800).
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 800;
/// Longest thing type or thing group description (AWS: max 2028).
pub const MAX_DESCRIPTION_LEN: usize = 2028;

/// Attribute names and values: `name -> value`, sorted by name.
pub type Attributes = BTreeMap<String, String>;

/// A thing in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    /// The thing's name (immutable: AWS cannot rename things).
    pub name: ThingName,
    /// A random UUID (v4) assigned at creation.
    pub thing_id: String,
    /// `arn:…:thing/{name}`.
    pub arn: String,
    /// The thing's type, if any.
    pub type_name: Option<ThingTypeName>,
    /// The attributes.
    pub attributes: Attributes,
    /// 1 after creation, +1 per `UpdateThing`.
    pub version: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time of the last `UpdateThing` (the creation time before that).
    pub updated_ms: u64,
}

/// A thing type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingType {
    /// The type's name.
    pub name: ThingTypeName,
    /// A random UUID (v4) assigned at creation.
    pub id: String,
    /// `arn:…:thingtype/{name}`.
    pub arn: String,
    /// `thingTypeDescription`.
    pub description: Option<String>,
    /// `searchableAttributes` (attribute names).
    pub searchable_attributes: Vec<String>,
    /// Deprecated types cannot be given to new things.
    pub deprecated: bool,
    /// When it was deprecated (milliseconds since the Unix epoch); `None` unless deprecated.
    pub deprecation_date_ms: Option<u64>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A group's name and ARN, as in AWS `GroupNameAndArn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    /// The group's name.
    pub name: ThingGroupName,
    /// The group's ARN.
    pub arn: String,
}

/// A (static) thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingGroup {
    /// The group's name.
    pub name: ThingGroupName,
    /// A random UUID (v4) assigned at creation.
    pub id: String,
    /// `arn:…:thinggroup/{name}`.
    pub arn: String,
    /// The direct parent, fixed at creation (AWS cannot re-parent a group).
    pub parent: Option<ThingGroupName>,
    /// The ancestors from the root down to the parent (`rootToParentThingGroups`); empty for a
    /// root group.
    pub root_to_parent: Vec<GroupRef>,
    /// `thingGroupDescription`.
    pub description: Option<String>,
    /// The group's attributes.
    pub attributes: Attributes,
    /// 1 after creation, +1 per `UpdateThingGroup`.
    pub version: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time of the last `UpdateThingGroup` (the creation time before that).
    pub updated_ms: u64,
}

impl ThingGroup {
    /// The root of the group's hierarchy (the group itself for a root group).
    pub fn root(&self) -> &ThingGroupName {
        self.root_to_parent.first().map_or(&self.name, |g| &g.name)
    }

    /// The group's level in its hierarchy: 1 for a root group.
    pub fn depth(&self) -> usize {
        self.root_to_parent.len() + 1
    }

    /// The group's name and ARN.
    pub fn group_ref(&self) -> GroupRef {
        GroupRef {
            name: self.name.clone(),
            arn: self.arn.clone(),
        }
    }
}

/// Identifies one record in a registry store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    /// A [`Thing`].
    Thing(ThingName),
    /// A [`ThingType`].
    ThingType(ThingTypeName),
    /// A [`ThingGroup`].
    ThingGroup(ThingGroupName),
}

impl RecordKey {
    /// The record kind: `thing`, `type` or `group`.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordKey::Thing(_) => "thing",
            RecordKey::ThingType(_) => "type",
            RecordKey::ThingGroup(_) => "group",
        }
    }

    /// The record's name.
    pub fn name(&self) -> &str {
        match self {
            RecordKey::Thing(n) => n.as_str(),
            RecordKey::ThingType(n) => n.as_str(),
            RecordKey::ThingGroup(n) => n.as_str(),
        }
    }

    /// `{kind}:{name}`: unique over all records (the kinds contain no `:` and come first).
    pub fn storage_name(&self) -> String {
        format!("{}:{}", self.kind(), self.name())
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A thing.
    Thing(Thing),
    /// A thing type.
    ThingType(ThingType),
    /// A thing group.
    ThingGroup(ThingGroup),
}

impl Record {
    /// The key the record is stored under.
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Thing(t) => RecordKey::Thing(t.name.clone()),
            Record::ThingType(t) => RecordKey::ThingType(t.name.clone()),
            Record::ThingGroup(g) => RecordKey::ThingGroup(g.name.clone()),
        }
    }

    /// The record as JSON (the inner struct; the kind is implied by the key).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Structs of strings, maps and numbers always serialize.
        match self {
            Record::Thing(t) => serde_json::to_vec(t),
            Record::ThingType(t) => serde_json::to_vec(t),
            Record::ThingGroup(g) => serde_json::to_vec(g),
        }
        .unwrap_or_default()
    }

    /// Reads a record written by [`Record::to_json_bytes`] under `key`; fails (with a reason
    /// naming the key) if it does not decode or names another record.
    pub fn from_json_bytes(key: &RecordKey, bytes: &[u8]) -> Result<Record, RegistryError> {
        let record = match key {
            RecordKey::Thing(_) => serde_json::from_slice(bytes).map(Record::Thing),
            RecordKey::ThingType(_) => serde_json::from_slice(bytes).map(Record::ThingType),
            RecordKey::ThingGroup(_) => serde_json::from_slice(bytes).map(Record::ThingGroup),
        }
        .map_err(|e| {
            RegistryError::InternalFailure(format!(
                "registry record {} does not decode: {e}",
                key.storage_name()
            ))
        })?;
        if record.key() != *key {
            return Err(RegistryError::InternalFailure(format!(
                "registry record {} holds {}",
                key.storage_name(),
                record.key().storage_name()
            )));
        }
        Ok(record)
    }
}

/// A secondary index: a set of names, ordered bytewise, kept by the store in the same atomic
/// write as the records it derives from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKey {
    /// Every thing name.
    Things,
    /// Every thing type name.
    ThingTypes,
    /// Every thing group name.
    ThingGroups,
    /// The things of a type.
    ThingsOfType(String),
    /// The things that have an attribute (any value).
    ThingsWithAttribute(String),
    /// The things whose attribute `.0` is `.1`.
    ThingsWithAttributeValue(String, String),
    /// The direct children of a group.
    ChildGroups(String),
    /// The things in a group (direct members).
    ThingsInGroup(String),
    /// The groups a thing is in.
    GroupsOfThing(String),
}

impl IndexKey {
    /// A string unique per index, for backends that keep every index in one keyspace:
    /// `things`, `types`, `groups`, `type:{t}`, `attr:{n}`, `attrv:{n}={v}` (attribute names
    /// cannot contain `=`), `children:{g}`, `members:{g}`, `groups-of:{t}`.
    pub fn storage_id(&self) -> String {
        match self {
            IndexKey::Things => "things".into(),
            IndexKey::ThingTypes => "types".into(),
            IndexKey::ThingGroups => "groups".into(),
            IndexKey::ThingsOfType(t) => format!("type:{t}"),
            IndexKey::ThingsWithAttribute(n) => format!("attr:{n}"),
            IndexKey::ThingsWithAttributeValue(n, v) => format!("attrv:{n}={v}"),
            IndexKey::ChildGroups(g) => format!("children:{g}"),
            IndexKey::ThingsInGroup(g) => format!("members:{g}"),
            IndexKey::GroupsOfThing(t) => format!("groups-of:{t}"),
        }
    }
}

/// The index entries of a thing: `(index, thing name)` pairs.
pub fn thing_index_entries(thing: &Thing) -> Vec<IndexKey> {
    let mut out = vec![IndexKey::Things];
    if let Some(t) = &thing.type_name {
        out.push(IndexKey::ThingsOfType(t.as_str().to_owned()));
    }
    for (k, v) in &thing.attributes {
        out.push(IndexKey::ThingsWithAttribute(k.clone()));
        out.push(IndexKey::ThingsWithAttributeValue(k.clone(), v.clone()));
    }
    out
}

fn is_attr_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b'@' | b'/' | b':' | b'#' | b'-')
}

fn is_attr_value_char(b: u8) -> bool {
    is_attr_name_char(b) || matches!(b, b'=' | b'[' | b']')
}

/// Checks an attribute name: `[a-zA-Z0-9_.,@/:#-]+`, at most 128 characters.
pub fn validate_attribute_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_LEN || !name.bytes().all(is_attr_name_char) {
        return Err(RegistryError::InvalidRequest(format!(
            "Invalid attribute name '{name}': it must be 1 to {MAX_ATTRIBUTE_NAME_LEN} characters from \
             [a-zA-Z0-9_.,@/:#-]"
        )));
    }
    Ok(())
}

/// Checks an attribute value: `[a-zA-Z0-9_.,@/:#=\[\]-]*`, at most 800 characters.
pub fn validate_attribute_value(name: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_ATTRIBUTE_VALUE_LEN || !value.bytes().all(is_attr_value_char) {
        return Err(RegistryError::InvalidRequest(format!(
            "Invalid value for attribute '{name}': it must be at most {MAX_ATTRIBUTE_VALUE_LEN} \
             characters from [a-zA-Z0-9_.,@/:#=[]-]"
        )));
    }
    Ok(())
}

/// Checks every name and value of `attributes`.
pub fn validate_attributes(attributes: &Attributes) -> Result<(), RegistryError> {
    for (k, v) in attributes {
        validate_attribute_name(k)?;
        validate_attribute_value(k, v)?;
    }
    Ok(())
}

/// Checks a thing type or thing group description: at most 2028 characters matching
/// `[\p{Graph}\x20]*` (printable ASCII: `\p{Graph}` is ASCII-only in Java regexes).
pub fn validate_description(field: &str, description: &str) -> Result<(), RegistryError> {
    if description.len() > MAX_DESCRIPTION_LEN || !description.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(RegistryError::InvalidRequest(format!(
            "Invalid {field}: it must be at most {MAX_DESCRIPTION_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A random (version 4) UUID, formatted `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
///
/// The bits come from SipHash keyed by a fresh [`RandomState`] (per-process random keys,
/// different for every call) over the time and a process-wide counter: unpredictable enough
/// for resource ids and unique in practice, without a random-number crate.
pub fn new_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let word = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(nanos);
        h.finish()
    };
    let (hi, lo) = (word(1), word(2));
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn attribute_patterns_follow_aws() {
        for ok in ["a", "serial.no", "x,y@z/w:v#u-t_s", &"n".repeat(128)] {
            validate_attribute_name(ok).unwrap();
        }
        for bad in ["", "a b", "a=b", "a[0]", "é", &"n".repeat(129)] {
            assert!(validate_attribute_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "v", "a=b[0]", "x,y@z/w:v#u-t_s.", &"v".repeat(800)] {
            validate_attribute_value("k", ok).unwrap();
        }
        for bad in ["a b", "a\"b", "é", "{}", &"v".repeat(801)] {
            assert!(validate_attribute_value("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn descriptions_are_printable_ascii() {
        validate_description("d", "A lamp, v2 (indoor) ~!").unwrap();
        validate_description("d", &"x".repeat(2028)).unwrap();
        assert!(validate_description("d", &"x".repeat(2029)).is_err());
        assert!(validate_description("d", "tab\there").is_err());
        assert!(validate_description("d", "é").is_err());
    }

    #[test]
    fn uuids_are_v4_and_unique() {
        let ids: HashSet<String> = (0..1000).map(|_| new_uuid()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(20) {
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
            assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn records_round_trip_and_check_their_key() {
        let thing = Thing {
            name: ThingName::parse("t").unwrap(),
            thing_id: new_uuid(),
            arn: "arn:aws:iot:r:a:thing/t".into(),
            type_name: None,
            attributes: [("k".to_owned(), "v".to_owned())].into(),
            version: 1,
            created_ms: 5,
            updated_ms: 5,
        };
        let r = Record::Thing(thing);
        let key = r.key();
        assert_eq!(key.storage_name(), "thing:t");
        assert_eq!(Record::from_json_bytes(&key, &r.to_json_bytes()).unwrap(), r);
        let other = RecordKey::Thing(ThingName::parse("u").unwrap());
        assert!(Record::from_json_bytes(&other, &r.to_json_bytes()).is_err());
        let group_key = RecordKey::ThingGroup(ThingGroupName::parse("t").unwrap());
        assert!(Record::from_json_bytes(&group_key, &r.to_json_bytes()).is_err());
        assert!(Record::from_json_bytes(&key, b"{").is_err());
    }

    #[test]
    fn index_ids_are_distinct() {
        let ids: HashSet<String> = [
            IndexKey::Things,
            IndexKey::ThingTypes,
            IndexKey::ThingGroups,
            IndexKey::ThingsOfType("a".into()),
            IndexKey::ThingsWithAttribute("a".into()),
            IndexKey::ThingsWithAttributeValue("a".into(), "b".into()),
            IndexKey::ThingsWithAttributeValue("a".into(), "".into()),
            IndexKey::ChildGroups("a".into()),
            IndexKey::ThingsInGroup("a".into()),
            IndexKey::GroupsOfThing("a".into()),
        ]
        .iter()
        .map(IndexKey::storage_id)
        .collect();
        assert_eq!(ids.len(), 10);
    }
}
