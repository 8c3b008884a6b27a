//! The AWS-IoT-compatible thing registry: things, thing types, thing groups and group
//! membership, with AWS IoT's validation rules, limits, versions and error codes.
//!
//! * [`Registry`] is the entry point: one async method per AWS operation (`CreateThing`,
//!   `DescribeThing`, `UpdateThing`, `DeleteThing`, `ListThings`, the thing-type and
//!   thing-group operations, `AddThingToThingGroup`, `RemoveThingFromThingGroup`,
//!   `ListThingsInThingGroup`, `ListThingGroupsForThing`). Requests deserialize from AWS's JSON
//!   ([`requests`]); [`aws`] renders the AWS response bodies and [`RegistryError`] the error
//!   code, HTTP status and body.
//! * [`plan`] holds the rules, as pure functions over a snapshot of the records an operation
//!   reads; [`store`] is the storage seam ([`RegistryStore`]) that runs them atomically, with
//!   [`MemoryRegistryStore`] as the reference implementation (redb and Redis backends live in
//!   `shoal-store`).
//!
//! # AWS behaviour
//!
//! Verified against the botocore `iot` service model or the AWS developer guide:
//!
//! * Names of things, types and groups: `[a-zA-Z0-9:_-]{1,128}`. Attribute names:
//!   `[a-zA-Z0-9_.,@/:#-]{1,128}`; values: `[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}`. Descriptions: at
//!   most 2028 characters of `[\p{Graph}\x20]`. `maxResults`: 1 to 250.
//! * `CreateThing`, `CreateThingType` and `CreateThingGroup` are idempotent: the same name and
//!   configuration return the existing resource; a different configuration is
//!   `ResourceAlreadyExistsException` (409, with `resourceId` and `resourceArn`).
//! * Versions start at 1 and increase by one per `UpdateThing` / `UpdateThingGroup`;
//!   `expectedVersion` mismatches are `VersionConflictException` (409).
//! * `DeleteThing` and `DeleteThingGroup` of a missing resource succeed.
//! * `merge` only matters to the update operations; an empty value deletes the attribute.
//! * 3 attributes without a type, 50 with one; one type per thing; deprecated types cannot be
//!   given to new things; a type can be deleted only when deprecated (for five minutes) and
//!   unused.
//! * Group hierarchies at most 7 deep, parents fixed at creation; at most 10 groups per
//!   thing, and not two groups of the same hierarchy; a group with child groups cannot be
//!   deleted (`Cannot delete thing group : {name} when there are still child groups attached
//!   to it`).
//!
//! *Shoal* choices where AWS is silent or unverified (see the items for details): the
//! exception for exceeded limits is `InvalidRequestException` (no registry operation lists
//! `LimitExceededException`); a missing parent group is `InvalidRequestException`; an empty
//! attribute value is treated as absent in every request, creates included; listings are
//! ordered by name, and `ListThingTypes`' `thingTypeName` is a prefix filter (as moto observed);
//! `ListThingGroups` without `recursive` lists all descendants (as moto does). Messages follow
//! AWS's wording where it is known and are Shoal's otherwise.

pub mod api;
pub mod aws;
mod error;
mod limits;
pub mod model;
mod names;
pub mod plan;
pub mod requests;
pub mod store;

#[cfg(test)]
mod tests;

pub use crate::shadow::ThingName;
pub use api::Registry;
pub use error::RegistryError;
pub use limits::{RegistryConfig, RegistryLimits, name_from_arn};
pub use model::{GroupRef, IndexKey, Record, RecordKey, Thing, ThingGroup, ThingType};
pub use names::{ThingGroupName, ThingTypeName, invalid_name, parse_thing_name};
pub use requests::{
    AttributePayload, CreateThingGroupRequest, CreateThingRequest, CreateThingTypeRequest,
    DeprecateThingTypeRequest, ListThingGroupsFilter, ListThingsFilter, Page, PageRequest,
    ThingGroupMembershipRequest, ThingGroupProperties, ThingTypeProperties, UpdateThingGroupRequest,
    UpdateThingRequest,
};
pub use store::{MemoryRegistryStore, RegistryStore};
