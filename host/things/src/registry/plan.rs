//! The registry operations as pure functions over a [`Snapshot`] of the records they read.
//!
//! # How an operation runs
//!
//! Every mutating operation is a *plan*: a pure function from a [`Snapshot`] to a [`Step`].
//! If the snapshot lacks something the operation needs, the plan answers
//! [`Step::Read`] with what to load (records by key, the members or the size of an index); the
//! store loads it into the snapshot and calls the plan again. Once everything is there it
//! answers [`Step::Commit`] with the [`Write`]s to apply and the [`Outcome`] to return, or a
//! [`RegistryError`] that leaves the store untouched. What a plan needs may depend on what it
//! read (adding a thing to a group reads the thing's groups, then those groups' records), hence
//! the rounds.
//!
//! The store makes the whole run atomic: the memory and embedded stores run it under one lock
//! or write transaction; the Redis store runs it optimistically and applies the writes only if
//! nothing it read has changed (see [`super::store`]), so the plan may run more than once.
//!
//! # Writes keep the indexes
//!
//! Plans emit the index changes ([`Write::IndexAdd`], [`Write::IndexRemove`]) along with the
//! records, so the indexes are always exactly derived from the records. A plan that changes
//! the members of [`IndexKey::GroupsOfThing`], [`IndexKey::ThingsInGroup`] or
//! [`IndexKey::ChildGroups`] also [`Write::Touch`]es the owning record (the thing, the group,
//! the parent), and a plan that reads those members always reads the owner too: an optimistic
//! store then detects a concurrent membership change by the owner's revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::RegistryError;
use super::limits::RegistryLimits;
use super::model::{
    Attributes, IndexKey, Record, RecordKey, Thing, ThingGroup, ThingType, thing_index_entries,
};
use super::names::{ThingGroupName, ThingTypeName};
use super::requests::AttributePayload;
use crate::shadow::ThingName;

/// Most read rounds a plan may ask for before the store gives up (a plan needs at most 3).
pub const MAX_READ_ROUNDS: usize = 8;

/// What a plan asks the store to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Records, by key (absent records load as `None`).
    pub records: BTreeSet<RecordKey>,
    /// Indexes whose full member list to load.
    pub members: BTreeSet<IndexKey>,
    /// Indexes whose size to load.
    pub lens: BTreeSet<IndexKey>,
}

impl Reads {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.members.is_empty() && self.lens.is_empty()
    }
}

/// What a store loaded for a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    records: BTreeMap<RecordKey, Option<Record>>,
    members: BTreeMap<IndexKey, Vec<String>>,
    lens: BTreeMap<IndexKey, u64>,
}

impl Snapshot {
    /// Stores a loaded record (`None`: it does not exist).
    pub fn put_record(&mut self, key: RecordKey, record: Option<Record>) {
        self.records.insert(key, record);
    }

    /// Stores the loaded members of an index, ascending.
    pub fn put_members(&mut self, index: IndexKey, members: Vec<String>) {
        self.members.insert(index, members);
    }

    /// Stores the loaded size of an index.
    pub fn put_len(&mut self, index: IndexKey, len: u64) {
        self.lens.insert(index, len);
    }

    /// A loaded record: `None` if not loaded, `Some(None)` if loaded and absent.
    pub fn record(&self, key: &RecordKey) -> Option<&Option<Record>> {
        self.records.get(key)
    }

    /// Every loaded record.
    pub fn records(&self) -> impl Iterator<Item = (&RecordKey, &Option<Record>)> {
        self.records.iter()
    }

    /// Every loaded member list.
    pub fn member_lists(&self) -> impl Iterator<Item = (&IndexKey, &Vec<String>)> {
        self.members.iter()
    }

    /// Every loaded index size.
    pub fn index_lens(&self) -> impl Iterator<Item = (&IndexKey, u64)> {
        self.lens.iter().map(|(k, v)| (k, *v))
    }

    /// The part of `reads` not loaded yet.
    pub fn missing(&self, reads: &Reads) -> Reads {
        Reads {
            records: reads
                .records
                .iter()
                .filter(|k| !self.records.contains_key(*k))
                .cloned()
                .collect(),
            members: reads
                .members
                .iter()
                .filter(|k| !self.members.contains_key(*k))
                .cloned()
                .collect(),
            lens: reads
                .lens
                .iter()
                .filter(|k| !self.lens.contains_key(*k))
                .cloned()
                .collect(),
        }
    }

    /// A loaded thing (`None` if absent or not loaded).
    pub fn thing(&self, name: &ThingName) -> Option<&Thing> {
        match self.records.get(&RecordKey::Thing(name.clone())) {
            Some(Some(Record::Thing(t))) => Some(t),
            _ => None,
        }
    }

    /// A loaded thing type (`None` if absent or not loaded).
    pub fn thing_type(&self, name: &ThingTypeName) -> Option<&ThingType> {
        match self.records.get(&RecordKey::ThingType(name.clone())) {
            Some(Some(Record::ThingType(t))) => Some(t),
            _ => None,
        }
    }

    /// A loaded thing group (`None` if absent or not loaded).
    pub fn group(&self, name: &ThingGroupName) -> Option<&ThingGroup> {
        match self.records.get(&RecordKey::ThingGroup(name.clone())) {
            Some(Some(Record::ThingGroup(g))) => Some(g),
            _ => None,
        }
    }
}

/// One change a plan makes. A store applies a commit's writes in order, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the record (under [`Record::key`]).
    Put(Record),
    /// Delete the record (a no-op if absent).
    Delete(RecordKey),
    /// Mark the record changed without changing it (optimistic stores bump its revision; a
    /// no-op if absent). See the [module docs](self).
    Touch(RecordKey),
    /// Add a member to an index (a no-op if present).
    IndexAdd(IndexKey, String),
    /// Remove a member from an index (a no-op if absent).
    IndexRemove(IndexKey, String),
}

/// What a committed operation returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The thing as stored (created, found equal, or updated).
    Thing(Thing),
    /// The thing type as stored.
    ThingType(ThingType),
    /// The thing group as stored.
    ThingGroup(ThingGroup),
    /// Nothing to return (deletes, memberships).
    Nothing,
}

/// A plan's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Load these and call the plan again.
    Read(Reads),
    /// Apply `writes` (possibly none) atomically and return `outcome`.
    Commit {
        /// The changes, in order.
        writes: Vec<Write>,
        /// The result.
        outcome: Outcome,
    },
}

/// A plan as a store receives it. It may be called several times (once per read round, and
/// again after an optimistic conflict); it must be pure.
pub type Plan = Arc<dyn Fn(&Snapshot) -> Result<Step, RegistryError> + Send + Sync>;

/// Runs `plan` to its commit, calling `load` to fill the snapshot for each read round; for
/// stores that can read and write in one transaction (memory, embedded). Returns the final
/// snapshot too, so optimistic stores can validate what the plan read.
pub fn run_plan<F>(plan: &Plan, mut load: F) -> Result<(Snapshot, Vec<Write>, Outcome), RegistryError>
where
    F: FnMut(&Reads, &mut Snapshot) -> Result<(), RegistryError>,
{
    let mut snapshot = Snapshot::default();
    for _ in 0..MAX_READ_ROUNDS {
        match plan(&snapshot)? {
            Step::Commit { writes, outcome } => return Ok((snapshot, writes, outcome)),
            Step::Read(reads) => {
                let missing = snapshot.missing(&reads);
                if missing.is_empty() {
                    return Err(RegistryError::InternalFailure(
                        "registry plan asked again for data it already has".into(),
                    ));
                }
                load(&missing, &mut snapshot)?;
            }
        }
    }
    Err(RegistryError::InternalFailure(format!(
        "registry plan needed more than {MAX_READ_ROUNDS} read rounds"
    )))
}

/// Collects what a plan is missing while it looks things up.
struct View<'a> {
    snap: &'a Snapshot,
    need: Reads,
}

impl<'a> View<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        View {
            snap,
            need: Reads::default(),
        }
    }

    fn record(&mut self, key: RecordKey) -> Option<&'a Record> {
        match self.snap.records.get(&key) {
            Some(r) => r.as_ref(),
            None => {
                self.need.records.insert(key);
                None
            }
        }
    }

    fn thing(&mut self, name: &ThingName) -> Option<Thing> {
        match self.record(RecordKey::Thing(name.clone())) {
            Some(Record::Thing(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn thing_type(&mut self, name: &ThingTypeName) -> Option<ThingType> {
        match self.record(RecordKey::ThingType(name.clone())) {
            Some(Record::ThingType(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn group(&mut self, name: &ThingGroupName) -> Option<ThingGroup> {
        match self.record(RecordKey::ThingGroup(name.clone())) {
            Some(Record::ThingGroup(g)) => Some(g.clone()),
            _ => None,
        }
    }

    fn members(&mut self, index: IndexKey) -> Vec<String> {
        match self.snap.members.get(&index) {
            Some(m) => m.clone(),
            None => {
                self.need.members.insert(index);
                Vec::new()
            }
        }
    }

    fn len(&mut self, index: IndexKey) -> u64 {
        match self.snap.lens.get(&index) {
            Some(n) => *n,
            None => {
                self.need.lens.insert(index);
                0
            }
        }
    }

    /// `Some(Step::Read)` if anything looked up so far was not loaded: the plan must return it
    /// before trusting any of the lookups.
    fn pending(&mut self) -> Option<Step> {
        if self.need.is_empty() {
            None
        } else {
            Some(Step::Read(std::mem::take(&mut self.need)))
        }
    }
}

fn commit(writes: Vec<Write>, outcome: Outcome) -> Result<Step, RegistryError> {
    Ok(Step::Commit { writes, outcome })
}

/// Appends the index changes between `before` and `after` of one thing.
fn reindex_thing(writes: &mut Vec<Write>, name: &str, before: Option<&Thing>, after: Option<&Thing>) {
    let old: BTreeSet<IndexKey> = before
        .map(thing_index_entries)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let new: BTreeSet<IndexKey> = after
        .map(thing_index_entries)
        .unwrap_or_default()
        .into_iter()
        .collect();
    for k in old.difference(&new) {
        writes.push(Write::IndexRemove(k.clone(), name.to_owned()));
    }
    for k in new.difference(&old) {
        writes.push(Write::IndexAdd(k.clone(), name.to_owned()));
    }
}

/// Drops the attributes whose value is empty: an empty value means "no such attribute"
/// (AWS: "To remove an attribute, call UpdateThing with an empty attribute value").
pub fn without_empty_values(attributes: &Attributes) -> Attributes {
    attributes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The attributes after applying `payload` to `current`: no payload or no `attributes`
/// keeps them; `merge` sets the given values and deletes the empty ones; otherwise the given
/// attributes (minus empty values) replace all of them.
pub fn apply_attribute_payload(current: &Attributes, payload: Option<&AttributePayload>) -> Attributes {
    let Some(AttributePayload {
        attributes: Some(given),
        merge,
    }) = payload
    else {
        return current.clone();
    };
    if !*merge {
        return without_empty_values(given);
    }
    let mut out = current.clone();
    for (k, v) in given {
        if v.is_empty() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Checks a thing's attribute count against the limit for its type status.
pub fn check_thing_attribute_count(
    attributes: &Attributes,
    has_type: bool,
    limits: &RegistryLimits,
) -> Result<(), RegistryError> {
    let (max, what) = if has_type {
        (limits.max_attributes_with_type, "with")
    } else {
        (limits.max_attributes_without_type, "without")
    };
    if attributes.len() > max {
        return Err(RegistryError::InvalidRequest(format!(
            "A thing {what} a thing type can have at most {max} attributes; the request leaves {}",
            attributes.len()
        )));
    }
    Ok(())
}

fn thing_not_found(name: &ThingName) -> RegistryError {
    RegistryError::ResourceNotFound(format!("Thing {name} cannot be found."))
}

fn type_not_found(name: &ThingTypeName) -> RegistryError {
    RegistryError::ResourceNotFound(format!("Thing type {name} cannot be found."))
}

fn group_not_found(name: &ThingGroupName) -> RegistryError {
    RegistryError::ResourceNotFound(format!("Thing group {name} cannot be found."))
}

fn check_version(what: &str, name: &str, expected: Option<u64>, actual: u64) -> Result<(), RegistryError> {
    match expected {
        Some(v) if v != actual => Err(RegistryError::VersionConflict(format!(
            "The version for {what} {name} does not match the expected version."
        ))),
        _ => Ok(()),
    }
}

/// `CreateThing`, validated. Idempotent: creating a thing that exists with the same type and
/// attributes returns it unchanged (AWS: "If this call is made multiple times using the same
/// thing name and configuration, the call will succeed"), even if its type has been
/// deprecated since (*Shoal*: the repeat creates nothing new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateThing {
    /// The name.
    pub name: ThingName,
    /// The type, which must exist and not be deprecated.
    pub type_name: Option<ThingTypeName>,
    /// The attributes (validated, empty values dropped).
    pub attributes: Attributes,
    /// The new thing's id.
    pub thing_id: String,
    /// The new thing's ARN.
    pub arn: String,
    /// The time of the request.
    pub now_ms: u64,
    /// The limits.
    pub limits: RegistryLimits,
}

impl CreateThing {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        check_thing_attribute_count(&self.attributes, self.type_name.is_some(), &self.limits)?;
        let mut v = View::new(snap);
        let existing = v.thing(&self.name);
        let ty = self.type_name.as_ref().map(|t| v.thing_type(t));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        if let Some(existing) = existing {
            if existing.type_name == self.type_name && existing.attributes == self.attributes {
                return commit(Vec::new(), Outcome::Thing(existing));
            }
            return Err(RegistryError::ResourceAlreadyExists {
                message: format!(
                    "Thing {} already exists in account with different attributes",
                    self.name
                ),
                resource_id: existing.thing_id,
                resource_arn: existing.arn,
            });
        }
        if let (Some(name), Some(ty)) = (&self.type_name, ty) {
            let Some(ty) = ty else {
                return Err(type_not_found(name));
            };
            if ty.deprecated {
                // AWS's wording, typo included.
                return Err(RegistryError::InvalidRequest(format!(
                    "Can not create new thing with depreated thing type:{name}"
                )));
            }
        }
        let thing = Thing {
            name: self.name.clone(),
            thing_id: self.thing_id.clone(),
            arn: self.arn.clone(),
            type_name: self.type_name.clone(),
            attributes: self.attributes.clone(),
            version: 1,
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
        };
        let mut writes = vec![Write::Put(Record::Thing(thing.clone()))];
        reindex_thing(&mut writes, self.name.as_str(), None, Some(&thing));
        commit(writes, Outcome::Thing(thing))
    }
}

/// What `UpdateThing` does with the thing's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeChange {
    /// Keep it.
    Keep,
    /// Set it (the type must exist; a deprecated type only if the thing already has it).
    Set(ThingTypeName),
    /// Remove it (`removeThingType`).
    Remove,
}

/// `UpdateThing`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateThing {
    /// The thing.
    pub name: ThingName,
    /// The type change.
    pub type_change: TypeChange,
    /// The attribute payload (names and values validated).
    pub attributes: Option<AttributePayload>,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
    /// The time of the request.
    pub now_ms: u64,
    /// The limits.
    pub limits: RegistryLimits,
}

impl UpdateThing {
    /// The plan: the version always increases by one, even if nothing else changes.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let mut v = View::new(snap);
        let current = v.thing(&self.name);
        let new_type = match &self.type_change {
            TypeChange::Set(t) => Some(v.thing_type(t)),
            _ => None,
        };
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return Err(thing_not_found(&self.name));
        };
        check_version(
            "thing",
            self.name.as_str(),
            self.expected_version,
            current.version,
        )?;
        let type_name = match (&self.type_change, new_type) {
            (TypeChange::Keep, _) => current.type_name.clone(),
            (TypeChange::Remove, _) => None,
            (TypeChange::Set(name), Some(ty)) => {
                let Some(ty) = ty else {
                    return Err(type_not_found(name));
                };
                if ty.deprecated && current.type_name.as_ref() != Some(name) {
                    return Err(RegistryError::InvalidRequest(format!(
                        "Can not update a thing to use deprecated thing type: {name}"
                    )));
                }
                Some(name.clone())
            }
            (TypeChange::Set(name), None) => return Err(type_not_found(name)),
        };
        let attributes = apply_attribute_payload(&current.attributes, self.attributes.as_ref());
        check_thing_attribute_count(&attributes, type_name.is_some(), &self.limits)?;
        let thing = Thing {
            type_name,
            attributes,
            version: current.version + 1,
            updated_ms: self.now_ms,
            ..current.clone()
        };
        let mut writes = vec![Write::Put(Record::Thing(thing.clone()))];
        reindex_thing(&mut writes, self.name.as_str(), Some(&current), Some(&thing));
        commit(writes, Outcome::Thing(thing))
    }
}

/// `DeleteThing`. Deleting a thing that does not exist succeeds (AWS: "Returns successfully
/// with no error if ... you specify a thing that doesn't exist"). The thing leaves its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteThing {
    /// The thing.
    pub name: ThingName,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
}

impl DeleteThing {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let name = self.name.as_str();
        let mut v = View::new(snap);
        let current = v.thing(&self.name);
        let groups = v.members(IndexKey::GroupsOfThing(name.to_owned()));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return commit(Vec::new(), Outcome::Nothing);
        };
        check_version("thing", name, self.expected_version, current.version)?;
        let mut writes = vec![Write::Delete(RecordKey::Thing(self.name.clone()))];
        reindex_thing(&mut writes, name, Some(&current), None);
        for g in groups {
            writes.push(Write::IndexRemove(
                IndexKey::ThingsInGroup(g.clone()),
                name.to_owned(),
            ));
            writes.push(Write::IndexRemove(
                IndexKey::GroupsOfThing(name.to_owned()),
                g.clone(),
            ));
            if let Ok(g) = ThingGroupName::parse(&g) {
                writes.push(Write::Touch(RecordKey::ThingGroup(g)));
            }
        }
        commit(writes, Outcome::Nothing)
    }
}

/// `CreateThingType`, validated. Idempotent like [`CreateThing`] (same description and
/// searchable attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateThingType {
    /// The name.
    pub name: ThingTypeName,
    /// The description (validated; empty is `None`).
    pub description: Option<String>,
    /// The searchable attributes (validated).
    pub searchable_attributes: Vec<String>,
    /// The new type's id.
    pub id: String,
    /// The new type's ARN.
    pub arn: String,
    /// The time of the request.
    pub now_ms: u64,
}

impl CreateThingType {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let mut v = View::new(snap);
        let existing = v.thing_type(&self.name);
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        if let Some(existing) = existing {
            if existing.description == self.description
                && existing.searchable_attributes == self.searchable_attributes
            {
                return commit(Vec::new(), Outcome::ThingType(existing));
            }
            return Err(RegistryError::ResourceAlreadyExists {
                message: format!(
                    "Thing Type {} already exists in current account with different properties",
                    self.name
                ),
                resource_id: existing.id,
                resource_arn: existing.arn,
            });
        }
        let ty = ThingType {
            name: self.name.clone(),
            id: self.id.clone(),
            arn: self.arn.clone(),
            description: self.description.clone(),
            searchable_attributes: self.searchable_attributes.clone(),
            deprecated: false,
            deprecation_date_ms: None,
            created_ms: self.now_ms,
        };
        let writes = vec![
            Write::Put(Record::ThingType(ty.clone())),
            Write::IndexAdd(IndexKey::ThingTypes, self.name.as_str().to_owned()),
        ];
        commit(writes, Outcome::ThingType(ty))
    }
}

/// `DeprecateThingType`: deprecating a deprecated type keeps its original deprecation date
/// (so the deletion wait does not restart); `undo` clears both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecateThingType {
    /// The type.
    pub name: ThingTypeName,
    /// `undoDeprecate`.
    pub undo: bool,
    /// The time of the request.
    pub now_ms: u64,
}

impl DeprecateThingType {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let mut v = View::new(snap);
        let current = v.thing_type(&self.name);
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return Err(type_not_found(&self.name));
        };
        let next = if self.undo {
            ThingType {
                deprecated: false,
                deprecation_date_ms: None,
                ..current.clone()
            }
        } else if current.deprecated {
            current.clone()
        } else {
            ThingType {
                deprecated: true,
                deprecation_date_ms: Some(self.now_ms),
                ..current.clone()
            }
        };
        let writes = if next == current {
            Vec::new()
        } else {
            vec![Write::Put(Record::ThingType(next.clone()))]
        };
        commit(writes, Outcome::ThingType(next))
    }
}

/// `DeleteThingType`: the type must be deprecated, for at least the configured delay, and no
/// thing may have it (AWS: "You cannot delete a thing type if it has things associated with
/// it").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteThingType {
    /// The type.
    pub name: ThingTypeName,
    /// The time of the request.
    pub now_ms: u64,
    /// How long the type must have been deprecated, in milliseconds.
    pub delay_ms: u64,
}

impl DeleteThingType {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let name = self.name.as_str();
        let mut v = View::new(snap);
        let current = v.thing_type(&self.name);
        let in_use = v.len(IndexKey::ThingsOfType(name.to_owned()));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return Err(type_not_found(&self.name));
        };
        if !current.deprecated {
            return Err(RegistryError::InvalidRequest(format!(
                "Thing type {name} must be deprecated before it can be deleted"
            )));
        }
        let since = current.deprecation_date_ms.unwrap_or(0);
        if self.now_ms.saturating_sub(since) < self.delay_ms {
            return Err(RegistryError::InvalidRequest(format!(
                "Thing type {name} was deprecated less than {} seconds ago; wait before deleting it",
                self.delay_ms / 1000
            )));
        }
        if in_use > 0 {
            return Err(RegistryError::InvalidRequest(format!(
                "Can not delete thing type {name}: {in_use} thing(s) are still associated with it"
            )));
        }
        let writes = vec![
            Write::Delete(RecordKey::ThingType(self.name.clone())),
            Write::IndexRemove(IndexKey::ThingTypes, name.to_owned()),
        ];
        commit(writes, Outcome::Nothing)
    }
}

/// `CreateThingGroup`, validated. Idempotent: the same parent, description and attributes
/// return the existing group (AWS: "If the ThingGroup that you create has the exact same
/// attributes as an existing ThingGroup, you will get a 200 success response").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateThingGroup {
    /// The name.
    pub name: ThingGroupName,
    /// The parent, which must exist.
    pub parent: Option<ThingGroupName>,
    /// The description (validated; empty is `None`).
    pub description: Option<String>,
    /// The attributes (validated, empty values dropped, within the limit).
    pub attributes: Attributes,
    /// The new group's id.
    pub id: String,
    /// The new group's ARN.
    pub arn: String,
    /// The time of the request.
    pub now_ms: u64,
    /// The limits.
    pub limits: RegistryLimits,
}

impl CreateThingGroup {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let mut v = View::new(snap);
        let existing = v.group(&self.name);
        let parent = self.parent.as_ref().map(|p| v.group(p));
        let children = self
            .parent
            .as_ref()
            .map(|p| v.len(IndexKey::ChildGroups(p.as_str().to_owned())));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        if let Some(existing) = existing {
            if existing.parent == self.parent
                && existing.description == self.description
                && existing.attributes == self.attributes
            {
                return commit(Vec::new(), Outcome::ThingGroup(existing));
            }
            return Err(RegistryError::ResourceAlreadyExists {
                message: format!(
                    "Thing Group {} already exists in current account with different properties",
                    self.name
                ),
                resource_id: existing.id,
                resource_arn: existing.arn,
            });
        }
        let mut root_to_parent = Vec::new();
        if let (Some(parent_name), Some(parent)) = (&self.parent, parent) {
            let Some(parent) = parent else {
                return Err(RegistryError::InvalidRequest(format!(
                    "Parent thing group {parent_name} does not exist"
                )));
            };
            let depth = parent.depth() + 1;
            if depth > self.limits.max_group_depth {
                return Err(RegistryError::InvalidRequest(format!(
                    "Thing group {} would be at level {depth} of its hierarchy; a thing group \
                     hierarchy can be at most {} levels deep",
                    self.name, self.limits.max_group_depth
                )));
            }
            let children = usize::try_from(children.unwrap_or(0)).unwrap_or(usize::MAX);
            if children >= self.limits.max_child_groups {
                return Err(RegistryError::InvalidRequest(format!(
                    "Thing group {parent_name} already has the maximum of {} child groups",
                    self.limits.max_child_groups
                )));
            }
            root_to_parent = parent.root_to_parent.clone();
            root_to_parent.push(parent.group_ref());
        }
        let group = ThingGroup {
            name: self.name.clone(),
            id: self.id.clone(),
            arn: self.arn.clone(),
            parent: self.parent.clone(),
            root_to_parent,
            description: self.description.clone(),
            attributes: self.attributes.clone(),
            version: 1,
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
        };
        let name = self.name.as_str().to_owned();
        let mut writes = vec![
            Write::Put(Record::ThingGroup(group.clone())),
            Write::IndexAdd(IndexKey::ThingGroups, name.clone()),
        ];
        if let Some(parent) = &self.parent {
            writes.push(Write::IndexAdd(
                IndexKey::ChildGroups(parent.as_str().to_owned()),
                name,
            ));
            writes.push(Write::Touch(RecordKey::ThingGroup(parent.clone())));
        }
        commit(writes, Outcome::ThingGroup(group))
    }
}

/// `UpdateThingGroup`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateThingGroup {
    /// The group.
    pub name: ThingGroupName,
    /// `Some` sets the description (`Some(None)` clears it); `None` keeps it.
    pub description: Option<Option<String>>,
    /// The attribute payload (names and values validated).
    pub attributes: Option<AttributePayload>,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
    /// The time of the request.
    pub now_ms: u64,
    /// The limits.
    pub limits: RegistryLimits,
}

impl UpdateThingGroup {
    /// The plan: the version always increases by one.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let mut v = View::new(snap);
        let current = v.group(&self.name);
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return Err(group_not_found(&self.name));
        };
        check_version(
            "thing group",
            self.name.as_str(),
            self.expected_version,
            current.version,
        )?;
        let attributes = apply_attribute_payload(&current.attributes, self.attributes.as_ref());
        check_group_attribute_count(&attributes, &self.limits)?;
        let group = ThingGroup {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            attributes,
            version: current.version + 1,
            updated_ms: self.now_ms,
            ..current
        };
        commit(
            vec![Write::Put(Record::ThingGroup(group.clone()))],
            Outcome::ThingGroup(group),
        )
    }
}

/// Checks a group's attribute count.
pub fn check_group_attribute_count(
    attributes: &Attributes,
    limits: &RegistryLimits,
) -> Result<(), RegistryError> {
    if attributes.len() > limits.max_group_attributes {
        return Err(RegistryError::InvalidRequest(format!(
            "A thing group can have at most {} attributes; the request leaves {}",
            limits.max_group_attributes,
            attributes.len()
        )));
    }
    Ok(())
}

/// `DeleteThingGroup`. Deleting a group that does not exist succeeds (the operation has no
/// `ResourceNotFoundException` in the service model); a group with child groups cannot be
/// deleted (AWS: `Cannot delete thing group : {name} when there are still child groups attached
/// to it`). Its things leave it; they are not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteThingGroup {
    /// The group.
    pub name: ThingGroupName,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
}

impl DeleteThingGroup {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let name = self.name.as_str();
        let mut v = View::new(snap);
        let current = v.group(&self.name);
        let children = v.len(IndexKey::ChildGroups(name.to_owned()));
        let things = v.members(IndexKey::ThingsInGroup(name.to_owned()));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(current) = current else {
            return commit(Vec::new(), Outcome::Nothing);
        };
        check_version("thing group", name, self.expected_version, current.version)?;
        if children > 0 {
            return Err(RegistryError::InvalidRequest(format!(
                "Cannot delete thing group : {name} when there are still child groups attached to it"
            )));
        }
        let mut writes = vec![
            Write::Delete(RecordKey::ThingGroup(self.name.clone())),
            Write::IndexRemove(IndexKey::ThingGroups, name.to_owned()),
        ];
        if let Some(parent) = &current.parent {
            writes.push(Write::IndexRemove(
                IndexKey::ChildGroups(parent.as_str().to_owned()),
                name.to_owned(),
            ));
            writes.push(Write::Touch(RecordKey::ThingGroup(parent.clone())));
        }
        for t in things {
            writes.push(Write::IndexRemove(
                IndexKey::GroupsOfThing(t.clone()),
                name.to_owned(),
            ));
            writes.push(Write::IndexRemove(
                IndexKey::ThingsInGroup(name.to_owned()),
                t.clone(),
            ));
            if let Ok(t) = ThingName::parse(&t) {
                writes.push(Write::Touch(RecordKey::Thing(t)));
            }
        }
        commit(writes, Outcome::Nothing)
    }
}

/// `AddThingToThingGroup` / `RemoveThingFromThingGroup`, validated.
///
/// Adding a member or removing a non-member succeeds without a change. Adding enforces the
/// groups-per-thing limit and, if configured, that the thing is in no other group of the same
/// hierarchy (same root group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The group.
    pub group: ThingGroupName,
    /// `thingGroupArn`, if given: must equal the group's ARN.
    pub group_arn: Option<String>,
    /// The thing.
    pub thing: ThingName,
    /// `thingArn`, if given: must equal the thing's ARN.
    pub thing_arn: Option<String>,
    /// Add (`true`) or remove.
    pub add: bool,
    /// The limits.
    pub limits: RegistryLimits,
}

impl Membership {
    /// The plan.
    pub fn plan(&self, snap: &Snapshot) -> Result<Step, RegistryError> {
        let (g, t) = (self.group.as_str(), self.thing.as_str());
        let mut v = View::new(snap);
        let group = v.group(&self.group);
        let thing = v.thing(&self.thing);
        let groups = v.members(IndexKey::GroupsOfThing(t.to_owned()));
        if let Some(step) = v.pending() {
            return Ok(step);
        }
        let Some(group) = group else {
            return Err(group_not_found(&self.group));
        };
        let Some(thing) = thing else {
            return Err(thing_not_found(&self.thing));
        };
        if self.group_arn.as_ref().is_some_and(|a| *a != group.arn) {
            return Err(RegistryError::InvalidRequest(
                "ThingGroupName thingGroupArn does not match specified thingGroupName in request".into(),
            ));
        }
        if self.thing_arn.as_ref().is_some_and(|a| *a != thing.arn) {
            return Err(RegistryError::InvalidRequest(
                "ThingName thingArn does not match specified thingName in request".into(),
            ));
        }
        let is_member = groups.iter().any(|m| m == g);
        if self.add == is_member {
            return commit(Vec::new(), Outcome::Nothing);
        }
        if self.add {
            if groups.len() >= self.limits.max_groups_per_thing {
                return Err(RegistryError::InvalidRequest(format!(
                    "Thing {t} is already in the maximum of {} thing groups",
                    self.limits.max_groups_per_thing
                )));
            }
            if self.limits.one_group_per_hierarchy {
                let mut others = Vec::new();
                for other in &groups {
                    if let Ok(name) = ThingGroupName::parse(other) {
                        others.push(v.group(&name));
                    }
                }
                if let Some(step) = v.pending() {
                    return Ok(step);
                }
                if let Some(other) = others.into_iter().flatten().find(|o| o.root() == group.root()) {
                    return Err(RegistryError::InvalidRequest(format!(
                        "Thing {t} is already in thing group {} of the same hierarchy (root {}); a \
                         thing can't be in two groups of one hierarchy",
                        other.name,
                        group.root()
                    )));
                }
            }
        }
        let change: fn(IndexKey, String) -> Write = if self.add {
            Write::IndexAdd
        } else {
            Write::IndexRemove
        };
        let writes = vec![
            change(IndexKey::ThingsInGroup(g.to_owned()), t.to_owned()),
            change(IndexKey::GroupsOfThing(t.to_owned()), g.to_owned()),
            Write::Touch(RecordKey::Thing(self.thing.clone())),
            Write::Touch(RecordKey::ThingGroup(self.group.clone())),
        ];
        commit(writes, Outcome::Nothing)
    }
}
