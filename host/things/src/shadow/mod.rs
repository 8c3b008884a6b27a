//! The device-shadow document engine: AWS IoT Device Shadow semantics as pure functions.
//!
//! A request flows through three steps, none of which does I/O:
//!
//! 1. **Route**: [`ShadowTopic::parse`] recognises `$aws/things/{thing}/shadow[/name/{shadow}]/{get|update|delete}`.
//!    (HTTP callers build the [`ThingName`] and optional [`ShadowName`] from the path and `?name=`.)
//! 2. **Validate**: [`UpdateRequest::parse`] checks an update body against [`ShadowLimits`];
//!    [`request_client_token`] reads the token of a get or delete body.
//! 3. **Apply**: with the [`StoredShadow`] loaded from the store (if any), [`apply_update`],
//!    [`get_response`] or [`apply_delete`] return the new document to store and the payloads to
//!    publish (`…/accepted`, `…/update/delta`, `…/update/documents`) or a [`ShadowError`] whose
//!    [`ShadowError::rejected_payload`] goes to `…/rejected` (or becomes the HTTP error body).
//!
//! The exact semantics, including every point where AWS is ambiguous and the choice made, are
//! documented on the items and summarised in `docs/SHADOW_SEMANTICS.md`. Choices AWS leaves open are
//! marked *Shoal* below.
//!
//! # Merge
//!
//! (AWS developer guide, "Device Shadow service documents" and "Interacting with shadows".)
//!
//! * An update touches only the keys it names; `{}` is a valid update that changes nothing but
//!   the version.
//! * `null` deletes the key (a no-op when the key is absent), and its metadata with it.
//!   `"desired": null` / `"reported": null` removes the section; `"state": null` clears both
//!   sections but does not delete the shadow.
//! * An object merges recursively into an existing object.
//! * Any other value, arrays included, replaces the old value whole. Arrays containing `null`
//!   are rejected.
//! * *Shoal:* an object written where the key is absent or holds a non-object replaces it,
//!   with its `null`s dropped. If it consisted only of deletions (`{"a":{"b":null}}` onto no
//!   `a`), nothing is created and an existing non-object value is left alone; a literal `{}`
//!   is stored as `{}` (the AWS Greengrass shadow manager's behaviour).
//! * *Shoal:* an object emptied by deletions stays as `{}`; only a whole *section* that ends up
//!   empty is removed (as the Greengrass shadow manager does).
//!
//! # Metadata
//!
//! Metadata mirrors the state: every scalar leaf has `{"timestamp": <epoch seconds>}` of the
//! update that last wrote it, an object has an object of its members' metadata, and an array
//! has an array with one entry per element (recursively: `[{"a":1}]` gets
//! `[{"a":{"timestamp":T}}]`), as real AWS output shows. `{}` and `[]` have `{}` and `[]`.
//! Writing a value refreshes the timestamps of everything under it; merging into an object
//! keeps the timestamps of members the update did not name; deleting a key drops its metadata.
//! `/update/accepted` carries the metadata of exactly what the request wrote, deletions
//! included (`"engine": null` gets `"engine": {"timestamp": T}`).
//!
//! # Delta
//!
//! See [`compute_delta`]: iterate `desired`, include keys missing from or different in
//! `reported`, keep the path for nested differences, copy arrays and type mismatches whole,
//! and have no delta at all when nothing differs. Its metadata is the desired metadata of its
//! leaves ([`delta_metadata`]).
//!
//! ```
//! use serde_json::json;
//! use shoal_things::shadow::{ShadowLimits, ShadowTopic, UpdateRequest, apply_update};
//!
//! let topic = ShadowTopic::parse("$aws/things/lamp/shadow/update").unwrap().unwrap();
//! let body = br#"{"state":{"desired":{"on":true}},"clientToken":"c1"}"#;
//! let limits = ShadowLimits::default();
//! let request = UpdateRequest::parse(body, &limits).unwrap();
//! let outcome = apply_update(None, &request, 1_700_000_000, &limits).unwrap();
//! assert_eq!(topic.accepted_topic(), "$aws/things/lamp/shadow/update/accepted");
//! assert_eq!(outcome.accepted["version"], json!(1));
//! assert_eq!(outcome.delta.unwrap()["state"], json!({"on": true}));
//! ```

mod delta;
mod document;
mod error;
mod limits;
mod merge;
mod names;
mod request;
mod service;
mod store;
mod topic;

pub use delta::{compute_delta, delta_metadata};
pub use document::{
    DeleteOutcome, Section, StoredShadow, UpdateOutcome, UpdatePayloads, accepted_json, accepted_payload,
    apply_delete, apply_update, delete_payload, delta_payload, documents_json, get_payload, get_response,
    update_payloads, updated_shadow,
};
pub use error::ShadowError;
pub use limits::ShadowLimits;
pub use names::{MAX_SHADOW_NAME_LEN, MAX_THING_NAME_LEN, NameError, ShadowName, ThingName};
pub use request::{
    RequestRejection, SectionPatch, StatePatch, UpdateRequest, json_depth, request_client_token,
};
pub use service::{Rejection, SHARDS, ShadowConfig, ShadowService, now_secs};
pub use store::{MemoryShadowStore, Mutated, Mutation, ShadowKey, ShadowStore, ShadowStoreError};
pub use topic::{
    InvalidShadowTopic, ShadowOp, ShadowResponse, ShadowTopic, request_topic, response_topic, topic_prefix,
};
