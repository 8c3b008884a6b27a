//! [`Registry`]: the AWS IoT registry operations over a [`RegistryStore`].
//!
//! Each mutating operation validates its request (names, attribute patterns, descriptions),
//! builds the pure plan of [`super::plan`] with fresh ids, ARNs and the current time, and hands
//! it to the store, which runs it atomically. Reads and listings go to the store directly.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::RegistryError;
use super::limits::{RegistryConfig, name_from_arn};
use super::model::{
    GroupRef, IndexKey, Record, RecordKey, Thing, ThingGroup, ThingType, new_uuid, now_ms,
    validate_attribute_name, validate_attributes, validate_description,
};
use super::names::{ThingGroupName, ThingTypeName, parse_thing_name};
use super::plan::{
    CreateThing, CreateThingGroup, CreateThingType, DeleteThing, DeleteThingGroup, DeleteThingType,
    DeprecateThingType, Membership, Outcome, Reads, Snapshot, Step, TypeChange, UpdateThing,
    UpdateThingGroup, check_group_attribute_count, without_empty_values,
};
use super::requests::{
    AttributePayload, CreateThingGroupRequest, CreateThingRequest, CreateThingTypeRequest,
    DEFAULT_MAX_RESULTS, DeprecateThingTypeRequest, ListThingGroupsFilter, ListThingsFilter, MAX_MAX_RESULTS,
    Page, PageRequest, ThingGroupMembershipRequest, UpdateThingGroupRequest, UpdateThingRequest,
};
use super::store::RegistryStore;
use crate::shadow::ThingName;

/// How many index members a listing examines for one page at most before it returns what it
/// has (possibly nothing) with a token to continue: bounds the cost of a page whose filter
/// matches few things.
pub const SCAN_BUDGET: usize = 10_000;

/// Index members fetched per round trip while listing.
const SCAN_BATCH_MAX: usize = 1000;

/// The thing registry: AWS IoT's thing, thing type and thing group operations.
///
/// Cheap to clone. Every operation is atomic in the store; concurrent callers, on one node or
/// on several sharing a Redis store, never lose each other's updates.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    config: Arc<RegistryConfig>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store.kind())
            .field("config", &self.config)
            .finish()
    }
}

/// The typed result of a plan that returns a record.
fn unexpected(outcome: &Outcome) -> RegistryError {
    RegistryError::InternalFailure(format!(
        "registry plan returned an unexpected outcome: {outcome:?}"
    ))
}

fn into_thing(outcome: Outcome) -> Result<Thing, RegistryError> {
    match outcome {
        Outcome::Thing(t) => Ok(t),
        other => Err(unexpected(&other)),
    }
}

fn into_type(outcome: Outcome) -> Result<ThingType, RegistryError> {
    match outcome {
        Outcome::ThingType(t) => Ok(t),
        other => Err(unexpected(&other)),
    }
}

fn into_group(outcome: Outcome) -> Result<ThingGroup, RegistryError> {
    match outcome {
        Outcome::ThingGroup(g) => Ok(g),
        other => Err(unexpected(&other)),
    }
}

/// Validates a request's attribute payload (names and values; empty values are allowed: they
/// delete in a merge).
fn validate_payload(payload: Option<&AttributePayload>) -> Result<(), RegistryError> {
    if let Some(attributes) = payload.and_then(|p| p.attributes.as_ref()) {
        validate_attributes(attributes)?;
    }
    Ok(())
}

/// A description from a request: validated, empty meaning none.
fn description(field: &str, value: Option<&String>) -> Result<Option<String>, RegistryError> {
    match value {
        Some(d) => {
            validate_description(field, d)?;
            Ok((!d.is_empty()).then(|| d.clone()))
        }
        None => Ok(None),
    }
}

/// `maxResults` checked against 1..=250, defaulting to 50.
pub fn max_results(page: &PageRequest) -> Result<usize, RegistryError> {
    let n = page.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if n == 0 || n > MAX_MAX_RESULTS {
        return Err(RegistryError::InvalidRequest(format!(
            "1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy constraint: \
             Member must have value between 1 and {MAX_MAX_RESULTS}"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

const TOKEN_PREFIX: &str = "shoal1.";

/// The `nextToken` that resumes a listing after the name `last`: opaque to clients (a version
/// tag and the name in hex), stable across nodes and restarts.
pub fn encode_token(last: &str) -> String {
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * last.len());
    token.push_str(TOKEN_PREFIX);
    for b in last.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The name a `nextToken` resumes after; `InvalidRequestException` if it is not one of ours.
pub fn decode_token(token: &str) -> Result<String, RegistryError> {
    let invalid = || RegistryError::InvalidRequest("The nextToken is invalid".into());
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(invalid)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

fn page_cursor(page: &PageRequest) -> Result<Option<String>, RegistryError> {
    page.next_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_token)
        .transpose()
}

/// The first `limit` of `names` (ascending, more than `limit` meaning there is a next page)
/// as a page.
fn page_from_sorted<T>(mut items: Vec<(String, T)>, limit: usize) -> Page<T> {
    let next_token = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|(n, _)| encode_token(n))
    } else {
        None
    };
    Page {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next_token,
    }
}

fn thing_key(name: &str) -> Option<RecordKey> {
    ThingName::parse(name).ok().map(RecordKey::Thing)
}

fn type_key(name: &str) -> Option<RecordKey> {
    ThingTypeName::parse(name).ok().map(RecordKey::ThingType)
}

fn group_key(name: &str) -> Option<RecordKey> {
    ThingGroupName::parse(name).ok().map(RecordKey::ThingGroup)
}

impl Registry {
    /// A registry on `store`.
    pub fn new(store: Arc<dyn RegistryStore>, config: RegistryConfig) -> Self {
        Registry {
            store,
            config: Arc::new(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    async fn transact<F>(&self, plan: F) -> Result<Outcome, RegistryError>
    where
        F: Fn(&Snapshot) -> Result<Step, RegistryError> + Send + Sync + 'static,
    {
        self.store.transact(Arc::new(plan)).await
    }

    async fn get(&self, key: RecordKey) -> Result<Option<Record>, RegistryError> {
        let reads = Reads {
            records: [key.clone()].into(),
            ..Reads::default()
        };
        let snap = self.store.read(&reads).await?;
        Ok(snap.record(&key).cloned().flatten())
    }

    // -----------------------------------------------------------------------------------------
    // Things
    // -----------------------------------------------------------------------------------------

    /// `CreateThing`. Returns the thing (the existing one when the call repeats an earlier
    /// create with the same type and attributes).
    pub async fn create_thing(&self, name: &str, req: &CreateThingRequest) -> Result<Thing, RegistryError> {
        let name = parse_thing_name(name, "thingName")?;
        let type_name = req
            .thing_type_name
            .as_deref()
            .map(ThingTypeName::parse)
            .transpose()?;
        validate_payload(req.attribute_payload.as_ref())?;
        let attributes = req
            .attribute_payload
            .as_ref()
            .and_then(|p| p.attributes.as_ref())
            .map(without_empty_values)
            .unwrap_or_default();
        let op = CreateThing {
            arn: self.config.arn("thing", name.as_str()),
            name,
            type_name,
            attributes,
            thing_id: new_uuid(),
            now_ms: now_ms(),
            limits: self.config.limits.clone(),
        };
        into_thing(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DescribeThing`.
    pub async fn describe_thing(&self, name: &str) -> Result<Thing, RegistryError> {
        let name = parse_thing_name(name, "thingName")?;
        match self.get(RecordKey::Thing(name.clone())).await? {
            Some(Record::Thing(t)) => Ok(t),
            _ => Err(RegistryError::ResourceNotFound(format!(
                "Thing {name} cannot be found."
            ))),
        }
    }

    /// `UpdateThing`. Returns the updated thing (AWS answers `{}`).
    pub async fn update_thing(&self, name: &str, req: &UpdateThingRequest) -> Result<Thing, RegistryError> {
        let name = parse_thing_name(name, "thingName")?;
        let type_change = match (&req.thing_type_name, req.remove_thing_type) {
            (Some(_), true) => {
                return Err(RegistryError::InvalidRequest(
                    "Cannot set thingTypeName and removeThingType at the same time".into(),
                ));
            }
            (Some(t), false) => TypeChange::Set(ThingTypeName::parse(t)?),
            (None, true) => TypeChange::Remove,
            (None, false) => TypeChange::Keep,
        };
        validate_payload(req.attribute_payload.as_ref())?;
        let op = UpdateThing {
            name,
            type_change,
            attributes: req.attribute_payload.clone(),
            expected_version: req.expected_version,
            now_ms: now_ms(),
            limits: self.config.limits.clone(),
        };
        into_thing(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DeleteThing` (succeeds if the thing does not exist).
    pub async fn delete_thing(&self, name: &str, expected_version: Option<u64>) -> Result<(), RegistryError> {
        let op = DeleteThing {
            name: parse_thing_name(name, "thingName")?,
            expected_version,
        };
        self.transact(move |s| op.plan(s)).await.map(|_| ())
    }

    /// `ListThings`, ordered by name.
    ///
    /// Filters combine with AND. `attributeValue` requires `attributeName`; `attributeName`
    /// alone lists the things that have the attribute. A page may hold fewer than
    /// `maxResults` things with a `nextToken` when a sparse filter examined [`SCAN_BUDGET`]
    /// candidates.
    pub async fn list_things(
        &self,
        filter: &ListThingsFilter,
        page: &PageRequest,
    ) -> Result<Page<Thing>, RegistryError> {
        if let Some(n) = &filter.attribute_name {
            validate_attribute_name(n)?;
        }
        if filter.attribute_value.is_some() && filter.attribute_name.is_none() {
            return Err(RegistryError::InvalidRequest(
                "attributeValue requires attributeName".into(),
            ));
        }
        let type_name = filter
            .thing_type_name
            .as_deref()
            .map(ThingTypeName::parse)
            .transpose()?;
        let exact_value = if filter.use_prefix_attribute_value {
            None
        } else {
            filter.attribute_value.clone()
        };
        let index = match (&filter.attribute_name, &exact_value, &type_name) {
            (Some(n), Some(v), _) => IndexKey::ThingsWithAttributeValue(n.clone(), v.clone()),
            (Some(n), None, _) => IndexKey::ThingsWithAttribute(n.clone()),
            (None, _, Some(t)) => IndexKey::ThingsOfType(t.as_str().to_owned()),
            (None, _, None) => IndexKey::Things,
        };
        let filter = filter.clone();
        let pick = move |r: Option<&Record>| -> Option<Thing> {
            let Some(Record::Thing(t)) = r else {
                return None;
            };
            if type_name
                .as_ref()
                .is_some_and(|ty| t.type_name.as_ref() != Some(ty))
            {
                return None;
            }
            if let Some(n) = &filter.attribute_name {
                let value = t.attributes.get(n)?;
                match &filter.attribute_value {
                    Some(want) if filter.use_prefix_attribute_value => {
                        if !value.starts_with(want.as_str()) {
                            return None;
                        }
                    }
                    Some(want) if value != want => return None,
                    _ => {}
                }
            }
            Some(t.clone())
        };
        self.filtered_page(
            &index,
            filter.name_prefix.as_deref().unwrap_or(""),
            page,
            thing_key,
            pick,
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Thing types
    // -----------------------------------------------------------------------------------------

    /// `CreateThingType`. Returns the type (the existing one when the call repeats an earlier
    /// create with the same properties).
    pub async fn create_thing_type(
        &self,
        name: &str,
        req: &CreateThingTypeRequest,
    ) -> Result<ThingType, RegistryError> {
        let name = ThingTypeName::parse(name)?;
        let props = req.thing_type_properties.clone().unwrap_or_default();
        let description = description("thingTypeDescription", props.thing_type_description.as_ref())?;
        let searchable_attributes = props.searchable_attributes.unwrap_or_default();
        for a in &searchable_attributes {
            validate_attribute_name(a)?;
        }
        if searchable_attributes.len() > self.config.limits.max_searchable_attributes {
            return Err(RegistryError::InvalidRequest(format!(
                "A thing type can have at most {} searchable attributes",
                self.config.limits.max_searchable_attributes
            )));
        }
        let op = CreateThingType {
            arn: self.config.arn("thingtype", name.as_str()),
            name,
            description,
            searchable_attributes,
            id: new_uuid(),
            now_ms: now_ms(),
        };
        into_type(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DescribeThingType`.
    pub async fn describe_thing_type(&self, name: &str) -> Result<ThingType, RegistryError> {
        let name = ThingTypeName::parse(name)?;
        match self.get(RecordKey::ThingType(name.clone())).await? {
            Some(Record::ThingType(t)) => Ok(t),
            _ => Err(RegistryError::ResourceNotFound(format!(
                "Thing type {name} cannot be found."
            ))),
        }
    }

    /// `DeprecateThingType` (or undo it). Returns the type as stored.
    pub async fn deprecate_thing_type(
        &self,
        name: &str,
        req: &DeprecateThingTypeRequest,
    ) -> Result<ThingType, RegistryError> {
        let op = DeprecateThingType {
            name: ThingTypeName::parse(name)?,
            undo: req.undo_deprecate,
            now_ms: now_ms(),
        };
        into_type(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DeleteThingType`: only a type deprecated for at least
    /// [`super::RegistryLimits::type_delete_delay`] that no thing has.
    pub async fn delete_thing_type(&self, name: &str) -> Result<(), RegistryError> {
        let op = DeleteThingType {
            name: ThingTypeName::parse(name)?,
            now_ms: now_ms(),
            delay_ms: u64::try_from(self.config.limits.type_delete_delay.as_millis()).unwrap_or(u64::MAX),
        };
        self.transact(move |s| op.plan(s)).await.map(|_| ())
    }

    /// `ListThingTypes`, ordered by name. `thingTypeName` filters by name prefix (as moto
    /// observed AWS to do).
    pub async fn list_thing_types(
        &self,
        name_prefix: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<ThingType>, RegistryError> {
        let pick = |r: Option<&Record>| match r {
            Some(Record::ThingType(t)) => Some(t.clone()),
            _ => None,
        };
        self.filtered_page(
            &IndexKey::ThingTypes,
            name_prefix.unwrap_or(""),
            page,
            type_key,
            pick,
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Thing groups
    // -----------------------------------------------------------------------------------------

    /// `CreateThingGroup`. Returns the group (the existing one when the call repeats an
    /// earlier create with the same parent and properties).
    pub async fn create_thing_group(
        &self,
        name: &str,
        req: &CreateThingGroupRequest,
    ) -> Result<ThingGroup, RegistryError> {
        let name = ThingGroupName::parse(name)?;
        let parent = req
            .parent_group_name
            .as_deref()
            .map(|p| ThingGroupName::parse_field(p, "parentGroupName"))
            .transpose()?;
        let props = req.thing_group_properties.clone().unwrap_or_default();
        let description = description("thingGroupDescription", props.thing_group_description.as_ref())?;
        validate_payload(props.attribute_payload.as_ref())?;
        let attributes = props
            .attribute_payload
            .as_ref()
            .and_then(|p| p.attributes.as_ref())
            .map(without_empty_values)
            .unwrap_or_default();
        check_group_attribute_count(&attributes, &self.config.limits)?;
        let op = CreateThingGroup {
            arn: self.config.arn("thinggroup", name.as_str()),
            name,
            parent,
            description,
            attributes,
            id: new_uuid(),
            now_ms: now_ms(),
            limits: self.config.limits.clone(),
        };
        into_group(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DescribeThingGroup`.
    pub async fn describe_thing_group(&self, name: &str) -> Result<ThingGroup, RegistryError> {
        let name = ThingGroupName::parse(name)?;
        self.find_group(&name).await
    }

    async fn find_group(&self, name: &ThingGroupName) -> Result<ThingGroup, RegistryError> {
        match self.get(RecordKey::ThingGroup(name.clone())).await? {
            Some(Record::ThingGroup(g)) => Ok(g),
            _ => Err(RegistryError::ResourceNotFound(format!(
                "Thing group {name} cannot be found."
            ))),
        }
    }

    /// `UpdateThingGroup`. Returns the updated group (AWS answers `{"version": ...}`).
    pub async fn update_thing_group(
        &self,
        name: &str,
        req: &UpdateThingGroupRequest,
    ) -> Result<ThingGroup, RegistryError> {
        let name = ThingGroupName::parse(name)?;
        let props = &req.thing_group_properties;
        let new_description = match &props.thing_group_description {
            Some(d) => Some(description("thingGroupDescription", Some(d))?),
            None => None,
        };
        validate_payload(props.attribute_payload.as_ref())?;
        let op = UpdateThingGroup {
            name,
            description: new_description,
            attributes: props.attribute_payload.clone(),
            expected_version: req.expected_version,
            now_ms: now_ms(),
            limits: self.config.limits.clone(),
        };
        into_group(self.transact(move |s| op.plan(s)).await?)
    }

    /// `DeleteThingGroup` (succeeds if the group does not exist; fails while it has child
    /// groups). Its things leave it.
    pub async fn delete_thing_group(
        &self,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError> {
        let op = DeleteThingGroup {
            name: ThingGroupName::parse(name)?,
            expected_version,
        };
        self.transact(move |s| op.plan(s)).await.map(|_| ())
    }

    /// `ListThingGroups`, ordered by name (see [`ListThingGroupsFilter`] for `recursive`).
    pub async fn list_thing_groups(
        &self,
        filter: &ListThingGroupsFilter,
        page: &PageRequest,
    ) -> Result<Page<ThingGroup>, RegistryError> {
        let prefix = filter.name_prefix_filter.clone().unwrap_or_default();
        let recursive = filter.recursive.unwrap_or(true);
        let any_group = |r: Option<&Record>| match r {
            Some(Record::ThingGroup(g)) => Some(g.clone()),
            _ => None,
        };
        match &filter.parent_group {
            None if recursive => {
                self.filtered_page(&IndexKey::ThingGroups, &prefix, page, group_key, any_group)
                    .await
            }
            None => {
                let root = |r: Option<&Record>| match r {
                    Some(Record::ThingGroup(g)) if g.parent.is_none() => Some(g.clone()),
                    _ => None,
                };
                self.filtered_page(&IndexKey::ThingGroups, &prefix, page, group_key, root)
                    .await
            }
            Some(parent) => {
                let parent = ThingGroupName::parse_field(parent, "parentGroup")?;
                self.find_group(&parent).await?;
                let children = IndexKey::ChildGroups(parent.as_str().to_owned());
                if !recursive {
                    return self
                        .filtered_page(&children, &prefix, page, group_key, any_group)
                        .await;
                }
                let limit = max_results(page)?;
                let cursor = page_cursor(page)?;
                let descendants = self.descendants(&parent).await?;
                let names: Vec<String> = descendants
                    .into_iter()
                    .filter(|n| n.starts_with(prefix.as_str()))
                    .filter(|n| cursor.as_ref().is_none_or(|c| n > c))
                    .take(limit + 1)
                    .collect();
                let records = self.load(names.iter().filter_map(|n| group_key(n))).await?;
                let items = names
                    .into_iter()
                    .filter_map(|n| {
                        let key = group_key(&n)?;
                        let g = any_group(records.record(&key).and_then(Option::as_ref))?;
                        Some((n, g))
                    })
                    .collect();
                Ok(page_from_sorted(items, limit))
            }
        }
    }

    /// All descendants of `group` (not the group itself), ascending.
    async fn descendants(&self, group: &ThingGroupName) -> Result<BTreeSet<String>, RegistryError> {
        let mut found = BTreeSet::new();
        let mut frontier = vec![group.as_str().to_owned()];
        while let Some(g) = frontier.pop() {
            let children = self.scan_all(&IndexKey::ChildGroups(g)).await?;
            for c in children {
                if found.insert(c.clone()) {
                    frontier.push(c);
                }
            }
        }
        Ok(found)
    }

    async fn scan_all(&self, index: &IndexKey) -> Result<Vec<String>, RegistryError> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let batch = self
                .store
                .scan(index, "", out.last().map(String::as_str), SCAN_BATCH_MAX)
                .await?;
            let done = batch.len() < SCAN_BATCH_MAX;
            out.extend(batch);
            if done {
                return Ok(out);
            }
        }
    }

    async fn load(&self, keys: impl Iterator<Item = RecordKey>) -> Result<Snapshot, RegistryError> {
        let reads = Reads {
            records: keys.collect(),
            ..Reads::default()
        };
        if reads.is_empty() {
            return Ok(Snapshot::default());
        }
        self.store.read(&reads).await
    }

    /// Resolves a membership request's group and thing (by name, else by ARN).
    fn membership(&self, req: &ThingGroupMembershipRequest, add: bool) -> Result<Membership, RegistryError> {
        let group = match (&req.thing_group_name, &req.thing_group_arn) {
            (Some(n), _) => ThingGroupName::parse(n)?,
            (None, Some(arn)) => {
                let n = name_from_arn(arn, "thinggroup")
                    .ok_or_else(|| RegistryError::InvalidRequest(format!("Invalid thingGroupArn: {arn}")))?;
                ThingGroupName::parse_field(n, "thingGroupArn")?
            }
            (None, None) => {
                return Err(RegistryError::InvalidRequest(
                    "Both thingGroupArn and thingGroupName are empty. Need to specify at least one of them"
                        .into(),
                ));
            }
        };
        let thing = match (&req.thing_name, &req.thing_arn) {
            (Some(n), _) => parse_thing_name(n, "thingName")?,
            (None, Some(arn)) => {
                let n = name_from_arn(arn, "thing")
                    .ok_or_else(|| RegistryError::InvalidRequest(format!("Invalid thingArn: {arn}")))?;
                parse_thing_name(n, "thingArn")?
            }
            (None, None) => {
                return Err(RegistryError::InvalidRequest(
                    "Both thingArn and thingName are empty. Need to specify at least one of them".into(),
                ));
            }
        };
        Ok(Membership {
            group,
            group_arn: req.thing_group_arn.clone(),
            thing,
            thing_arn: req.thing_arn.clone(),
            add,
            limits: self.config.limits.clone(),
        })
    }

    /// `AddThingToThingGroup` (a no-op if the thing is already in the group).
    pub async fn add_thing_to_thing_group(
        &self,
        req: &ThingGroupMembershipRequest,
    ) -> Result<(), RegistryError> {
        let op = self.membership(req, true)?;
        self.transact(move |s| op.plan(s)).await.map(|_| ())
    }

    /// `RemoveThingFromThingGroup` (a no-op if the thing is not in the group).
    pub async fn remove_thing_from_thing_group(
        &self,
        req: &ThingGroupMembershipRequest,
    ) -> Result<(), RegistryError> {
        let op = self.membership(req, false)?;
        self.transact(move |s| op.plan(s)).await.map(|_| ())
    }

    /// `ListThingsInThingGroup`, ordered by name; `recursive` includes the things of all
    /// descendant groups (each once).
    pub async fn list_things_in_thing_group(
        &self,
        group: &str,
        recursive: bool,
        page: &PageRequest,
    ) -> Result<Page<ThingName>, RegistryError> {
        let group = ThingGroupName::parse(group)?;
        let limit = max_results(page)?;
        let cursor = page_cursor(page)?;
        self.find_group(&group).await?;
        let mut groups = vec![group.as_str().to_owned()];
        if recursive {
            groups.extend(self.descendants(&group).await?);
        }
        // The first `limit + 1` names of the union are among the first `limit + 1` of each.
        let mut names = BTreeSet::new();
        for g in groups {
            let batch = self
                .store
                .scan(&IndexKey::ThingsInGroup(g), "", cursor.as_deref(), limit + 1)
                .await?;
            names.extend(batch);
        }
        let items = names
            .into_iter()
            .take(limit + 1)
            .filter_map(|n| ThingName::parse(&n).ok().map(|t| (n, t)))
            .collect();
        Ok(page_from_sorted(items, limit))
    }

    /// `ListThingGroupsForThing`, ordered by group name.
    pub async fn list_thing_groups_for_thing(
        &self,
        thing: &str,
        page: &PageRequest,
    ) -> Result<Page<GroupRef>, RegistryError> {
        let thing = self.describe_thing(thing).await?;
        let pick = |r: Option<&Record>| match r {
            Some(Record::ThingGroup(g)) => Some(g.group_ref()),
            _ => None,
        };
        self.filtered_page(
            &IndexKey::GroupsOfThing(thing.name.as_str().to_owned()),
            "",
            page,
            group_key,
            pick,
        )
        .await
    }

    /// One page of the records named by `index` (members starting with `prefix`) that `pick`
    /// accepts, in name order.
    async fn filtered_page<T, P>(
        &self,
        index: &IndexKey,
        prefix: &str,
        page: &PageRequest,
        key_of: fn(&str) -> Option<RecordKey>,
        pick: P,
    ) -> Result<Page<T>, RegistryError>
    where
        P: Fn(Option<&Record>) -> Option<T>,
    {
        let limit = max_results(page)?;
        let mut cursor = page_cursor(page)?;
        let batch = (limit + 1).clamp(32, SCAN_BATCH_MAX);
        let mut items: Vec<(String, T)> = Vec::new();
        let mut scanned = 0;
        loop {
            let names = self.store.scan(index, prefix, cursor.as_deref(), batch).await?;
            let exhausted = names.len() < batch;
            let records = self.load(names.iter().filter_map(|n| key_of(n))).await?;
            for name in names {
                scanned += 1;
                let record = key_of(&name).and_then(|k| records.record(&k).cloned().flatten());
                if let Some(item) = pick(record.as_ref()) {
                    if items.len() == limit {
                        // One more match exists: this page is full and there is a next one.
                        items.push((name, item));
                        return Ok(page_from_sorted(items, limit));
                    }
                    items.push((name.clone(), item));
                }
                cursor = Some(name);
            }
            if exhausted {
                return Ok(Page {
                    items: items.into_iter().map(|(_, t)| t).collect(),
                    next_token: None,
                });
            }
            if scanned >= SCAN_BUDGET {
                return Ok(Page {
                    items: items.into_iter().map(|(_, t)| t).collect(),
                    next_token: cursor.as_deref().map(encode_token),
                });
            }
        }
    }
}
