//! The stored shadow document and the update, get and delete operations on it.
//!
//! Everything here is pure: the caller loads the [`StoredShadow`] (if any), calls
//! [`apply_update`], [`get_response`] or [`apply_delete`] with the current time, stores the
//! returned document, and publishes or returns the returned payloads. The caller must
//! serialize operations on one shadow (load, apply, store) so versions stay linear.
//!
//! Payload shapes (AWS developer guide, "Device Shadow service documents"):
//!
//! | payload | shape |
//! |---|---|
//! | `/update/accepted`, HTTP update | `{"state": <request state>, "metadata": <its timestamps>, "version", "timestamp", "clientToken"?}` |
//! | `/update/delta` | `{"state": <delta>, "metadata": <desired metadata of the delta>, "version", "timestamp", "clientToken"?}` |
//! | `/update/documents` | `{"previous": {"state","metadata","version"} \| null, "current": {…}, "timestamp", "clientToken"?}` |
//! | `/get/accepted`, HTTP get | `{"state": {"desired"?,"reported"?,"delta"?}, "metadata": {"desired"?,"reported"?}, "version", "timestamp", "clientToken"?}` |
//! | `/delete/accepted`, HTTP delete | `{"version", "timestamp", "clientToken"?}` |
//!
//! `timestamp` is always the `now_secs` passed in (epoch seconds), as are the metadata
//! timestamps of what an update writes. JSON object keys come out in lexicographic order
//! (serde_json's default map); JSON key order carries no meaning.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::delta::{compute_delta, delta_metadata};
use super::error::ShadowError;
use super::limits::ShadowLimits;
use super::merge::{merge_section, serialized_len};
use super::names::{ShadowName, ThingName};
use super::request::{StatePatch, UpdateRequest};

/// One section of a shadow (`desired` or `reported`): its state object and the metadata tree
/// that mirrors it (see "Metadata" in the [module docs](super)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// The section's state. Never contains `null`.
    pub state: Map<String, Value>,
    /// `{"timestamp": T}` for every scalar leaf, mirroring `state`.
    pub metadata: Map<String, Value>,
}

/// A shadow as the store keeps it.
///
/// A deleted shadow is kept as a *tombstone* (`deleted: true`, no sections) that remembers the
/// version, so that re-creating the shadow continues the numbering: AWS continues it when the
/// shadow is re-created within 48 hours of the delete and restarts otherwise; *Shoal* always
/// continues. A store may drop tombstones (e.g. after 48 hours) at the price of restarting the
/// numbering at 1, which is what AWS does after 48 hours.
///
/// Serialize it with a self-describing format (JSON: [`StoredShadow::to_json_bytes`]); it holds
/// `serde_json::Value`s, which binary formats such as postcard cannot deserialize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredShadow {
    /// The desired section; `None` when absent.
    #[serde(default)]
    pub desired: Option<Section>,
    /// The reported section; `None` when absent.
    #[serde(default)]
    pub reported: Option<Section>,
    /// The version: 1 after the first update, +1 per accepted update, unchanged by delete.
    pub version: u64,
    /// When the shadow was last updated or deleted, in epoch seconds.
    pub updated_secs: u64,
    /// Tombstone flag: the shadow was deleted. Get and delete answer 404; an update re-creates
    /// it at `version + 1`.
    #[serde(default)]
    pub deleted: bool,
}

impl StoredShadow {
    /// Whether the shadow exists (is not a tombstone).
    pub fn exists(&self) -> bool {
        !self.deleted
    }

    /// The tombstone this shadow leaves when deleted at `now_secs`: no sections, same version.
    pub fn tombstone(&self, now_secs: u64) -> StoredShadow {
        StoredShadow {
            desired: None,
            reported: None,
            version: self.version,
            updated_secs: now_secs,
            deleted: true,
        }
    }

    /// `{"desired"?: …, "reported"?: …}`: the state without the delta.
    pub fn state_json(&self) -> Value {
        self.sections_json(|section| &section.state)
    }

    /// `{"desired"?: …, "reported"?: …}`: the metadata of both sections.
    pub fn metadata_json(&self) -> Value {
        self.sections_json(|section| &section.metadata)
    }

    fn sections_json(&self, part: impl Fn(&Section) -> &Map<String, Value>) -> Value {
        let mut map = Map::new();
        if let Some(desired) = &self.desired {
            map.insert("desired".into(), Value::Object(part(desired).clone()));
        }
        if let Some(reported) = &self.reported {
            map.insert("reported".into(), Value::Object(part(reported).clone()));
        }
        Value::Object(map)
    }

    /// The current delta (see [`compute_delta`]), `None` when desired and reported agree.
    pub fn delta(&self) -> Option<Map<String, Value>> {
        compute_delta(
            self.desired.as_ref().map(|s| &s.state),
            self.reported.as_ref().map(|s| &s.state),
        )
    }

    /// The size the state limit counts: the compact JSON of `desired` plus the compact JSON of
    /// `reported`, in bytes, an absent section counting 0 (so `{"desired":{"a":1}}` counts 7,
    /// for `{"a":1}`). Metadata, version and timestamps are excluded, as on AWS.
    pub fn state_size(&self) -> usize {
        state_size(self.desired.as_ref(), self.reported.as_ref())
    }

    /// The shadow as JSON bytes, for the store.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // A struct of maps, strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a shadow written by [`StoredShadow::to_json_bytes`].
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

fn state_size(desired: Option<&Section>, reported: Option<&Section>) -> usize {
    [desired, reported]
        .into_iter()
        .flatten()
        .map(|section| serialized_len(&section.state))
        .sum()
}

/// What an accepted update produces.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The new document to store.
    pub shadow: StoredShadow,
    /// The `/update/accepted` payload (also the HTTP `UpdateThingShadow` response body).
    pub accepted: Value,
    /// The `/update/delta` payload, present when the updated shadow has a delta.
    ///
    /// AWS publishes `/update/delta` after an accepted update "when the shadow's state
    /// changes" and desired differs from reported, with *all* differing desired keys; the
    /// Greengrass shadow manager publishes it after every accepted update whose resulting
    /// delta is non-empty, and the v1 SDKs de-duplicate deltas carrying the version of the
    /// client's own (even reported-only) update. *Shoal* therefore returns it after every
    /// accepted update (MQTT or HTTP, desired or reported) that leaves a non-empty delta.
    pub delta: Option<Value>,
    /// The `/update/documents` payload.
    pub documents: Value,
}

/// What an accepted delete produces.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteOutcome {
    /// The tombstone to store in place of the shadow.
    pub shadow: StoredShadow,
    /// The `/delete/accepted` payload (also the HTTP `DeleteThingShadow` response body).
    pub accepted: Value,
}

/// The messages an accepted update publishes, as [`update_payloads`] builds them.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePayloads {
    /// The `/update/accepted` payload (see [`UpdateOutcome::accepted`]).
    pub accepted: Value,
    /// The `/update/delta` payload (see [`UpdateOutcome::delta`]).
    pub delta: Option<Value>,
    /// The `/update/documents` payload as compact JSON bytes, written straight from the two
    /// documents (no intermediate `Value`; see [`documents_json`]).
    pub documents: Vec<u8>,
}

/// Applies a validated update to the stored shadow (`None`: never existed).
///
/// This is [`updated_shadow`] followed by [`update_payloads`]; a store that must apply the
/// update under a lock (see [`crate::shadow::ShadowStore::mutate`]) runs only the first there
/// and builds the payloads afterwards, from the documents before and after.
///
/// Returns the new document and the `accepted`, `delta` and `documents` payloads, each
/// carrying the request's `clientToken` when it had one.
pub fn apply_update(
    current: Option<&StoredShadow>,
    request: &UpdateRequest,
    now_secs: u64,
    limits: &ShadowLimits,
) -> Result<UpdateOutcome, ShadowError> {
    let shadow = updated_shadow(current, request, now_secs, limits)?;
    let payloads = update_payloads(current, &shadow, request, now_secs);
    Ok(UpdateOutcome {
        accepted: payloads.accepted,
        delta: payloads.delta,
        // Bytes this module just wrote always parse.
        documents: serde_json::from_slice(&payloads.documents).unwrap_or(Value::Null),
        shadow,
    })
}

/// The document an update leaves, or the rejection.
///
/// 1. **Version check.** If the request has a `version`, it must equal the current version,
///    else 409 `Version conflict`. The current version of a shadow that never existed is 0,
///    and that of a deleted one its tombstone's version, so `"version": 0` means "only if the
///    shadow was never created".
/// 2. **Merge** (see "Merge" in the [module docs](super)): `"state": null` clears both sections; a
///    section patch of `null` removes the section; objects merge; a section left empty is
///    removed. A deleted shadow is re-created from an empty state.
/// 3. **Size check** on the merged state (see [`StoredShadow::state_size`]): more than
///    `max_state_bytes` is 413 `Json document too large. Size is N, max allowed: M`. *Shoal:*
///    if the stored state is already over the limit (the limit was lowered), an update that
///    does not make it larger is still accepted, so such shadows can be shrunk.
/// 4. **Version** becomes current + 1 (a new shadow gets 1, a re-created one continues after
///    its tombstone) and `updated_secs` becomes `now_secs`.
pub fn updated_shadow(
    current: Option<&StoredShadow>,
    request: &UpdateRequest,
    now_secs: u64,
    limits: &ShadowLimits,
) -> Result<StoredShadow, ShadowError> {
    let live = current.filter(|shadow| shadow.exists());
    let current_version = current.map_or(0, |shadow| shadow.version);
    if request
        .version()
        .is_some_and(|expected| expected != current_version)
    {
        return Err(ShadowError::version_conflict());
    }

    let (desired, reported) = match request.state() {
        StatePatch::Clear => (None, None),
        StatePatch::Sections { desired, reported } => (
            merge_section(live.and_then(|shadow| shadow.desired.as_ref()), desired, now_secs),
            merge_section(
                live.and_then(|shadow| shadow.reported.as_ref()),
                reported,
                now_secs,
            ),
        ),
    };

    let size = state_size(desired.as_ref(), reported.as_ref());
    if size > limits.max_state_bytes && size > live.map_or(0, StoredShadow::state_size) {
        return Err(ShadowError::document_too_large(size, limits.max_state_bytes));
    }

    let version = current_version.checked_add(1).ok_or_else(ShadowError::internal)?;
    Ok(StoredShadow {
        desired,
        reported,
        version,
        updated_secs: now_secs,
        deleted: false,
    })
}

/// The messages of an accepted update: `previous` is the stored document the update was
/// applied to (tombstones included, `None` if there was none), `shadow` the document it left
/// ([`updated_shadow`]).
pub fn update_payloads(
    previous: Option<&StoredShadow>,
    shadow: &StoredShadow,
    request: &UpdateRequest,
    now_secs: u64,
) -> UpdatePayloads {
    let client_token = request.client_token();
    UpdatePayloads {
        accepted: accepted_payload(request, shadow.version, now_secs),
        delta: delta_payload(shadow, client_token, now_secs),
        documents: documents_json(previous, shadow, client_token, now_secs),
    }
}

/// The `/update/accepted` payload of `request`, accepted as `version`: the request's state
/// with a timestamp for each of its leaves, the version, the timestamp and the clientToken.
pub fn accepted_payload(request: &UpdateRequest, version: u64, now_secs: u64) -> Value {
    // A view of borrowed parts always serializes.
    serde_json::to_value(AcceptedView::of(request, version, now_secs)).unwrap_or_default()
}

/// [`accepted_payload`] as compact JSON, written straight from the request: no `Value` tree
/// is cloned from the patch only to be serialized and dropped (every MQTT and HTTP update
/// sends this).
pub fn accepted_json(request: &UpdateRequest, version: u64, now_secs: u64) -> Vec<u8> {
    serde_json::to_vec(&AcceptedView::of(request, version, now_secs)).unwrap_or_default()
}

/// The borrowed shape of `/update/accepted` (field order = key order).
#[derive(Serialize)]
struct AcceptedView<'a> {
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
    metadata: PatchView<'a>,
    state: PatchView<'a>,
    timestamp: u64,
    version: u64,
}

impl<'a> AcceptedView<'a> {
    fn of(request: &'a UpdateRequest, version: u64, now_secs: u64) -> Self {
        AcceptedView {
            client_token: request.client_token(),
            metadata: PatchView {
                patch: request.state(),
                stamp: Some(now_secs),
            },
            state: PatchView {
                patch: request.state(),
                stamp: None,
            },
            timestamp: now_secs,
            version,
        }
    }
}

/// A request's `state` node as received ([`StatePatch::to_json`]), or with `stamp` its
/// metadata: the same shape with `{"timestamp": stamp}` for every leaf (what `fresh_metadata`
/// builds as a `Value`).
struct PatchView<'a> {
    patch: &'a StatePatch,
    stamp: Option<u64>,
}

impl Serialize for PatchView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use super::request::SectionPatch;
        use serde::ser::SerializeMap as _;
        let StatePatch::Sections { desired, reported } = self.patch else {
            return ValueView::of(&Value::Null, self.stamp).serialize(s);
        };
        let named = [("desired", desired), ("reported", reported)];
        let present = named
            .iter()
            .filter(|(_, p)| !matches!(p, SectionPatch::Keep))
            .count();
        let mut map = s.serialize_map(Some(present))?;
        for (name, section) in named {
            match section {
                SectionPatch::Keep => {}
                SectionPatch::Remove => {
                    map.serialize_entry(name, &ValueView::of(&Value::Null, self.stamp))?
                }
                SectionPatch::Merge(patch) => map.serialize_entry(name, &MapView(patch, self.stamp))?,
            }
        }
        map.end()
    }
}

/// A JSON value as it is (`stamp` `None`) or as its metadata (see [`PatchView`]).
enum ValueView<'a> {
    Plain(&'a Value),
    Map(MapView<'a>),
    Array(&'a [Value], u64),
    Leaf(u64),
}

impl<'a> ValueView<'a> {
    fn of(value: &'a Value, stamp: Option<u64>) -> Self {
        match (value, stamp) {
            (_, None) => ValueView::Plain(value),
            (Value::Object(map), Some(_)) => ValueView::Map(MapView(map, stamp)),
            (Value::Array(items), Some(t)) => ValueView::Array(items, t),
            (_, Some(t)) => ValueView::Leaf(t),
        }
    }
}

impl Serialize for ValueView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        match self {
            ValueView::Plain(v) => v.serialize(s),
            ValueView::Map(m) => m.serialize(s),
            ValueView::Array(items, t) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in *items {
                    seq.serialize_element(&ValueView::of(item, Some(*t)))?;
                }
                seq.end()
            }
            ValueView::Leaf(t) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("timestamp", t)?;
                map.end()
            }
        }
    }
}

/// An object as it is or as its metadata (see [`PatchView`]).
struct MapView<'a>(&'a Map<String, Value>, Option<u64>);

impl Serialize for MapView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let MapView(map, stamp) = self;
        if stamp.is_none() {
            return map.serialize(s);
        }
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in *map {
            out.serialize_entry(k, &ValueView::of(v, *stamp))?;
        }
        out.end()
    }
}

/// The `/update/delta` payload of an updated shadow, `None` when it has no delta (see
/// [`UpdateOutcome::delta`]).
pub fn delta_payload(shadow: &StoredShadow, client_token: Option<&str>, now_secs: u64) -> Option<Value> {
    shadow.delta().map(|delta| {
        let mut payload = Map::new();
        let metadata = shadow
            .desired
            .as_ref()
            .map(|desired| delta_metadata(&delta, &desired.metadata));
        payload.insert("metadata".into(), Value::Object(metadata.unwrap_or_default()));
        payload.insert("state".into(), Value::Object(delta));
        payload.insert("version".into(), shadow.version.into());
        envelope(payload, client_token, now_secs)
    })
}

/// The `/update/documents` payload as compact JSON:
/// `{"clientToken"?, "current": {"metadata","state","version"}, "previous": {…} | null,
/// "timestamp"}`, keys in lexicographic order like every other payload here. `previous` is
/// `null` when the shadow did not exist before (never created, or a tombstone).
///
/// Written straight from the stored sections: building it as a `Value` would clone both
/// documents' state and metadata trees only to serialize and drop them.
pub fn documents_json(
    previous: Option<&StoredShadow>,
    current: &StoredShadow,
    client_token: Option<&str>,
    now_secs: u64,
) -> Vec<u8> {
    let payload = DocumentsView {
        client_token,
        current: SnapshotView::of(current),
        previous: previous.filter(|p| p.exists()).map(SnapshotView::of),
        timestamp: now_secs,
    };
    // Maps of strings and JSON values always serialize.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The borrowed shape [`documents_json`] serializes (field order = key order).
#[derive(Serialize)]
struct DocumentsView<'a> {
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
    current: SnapshotView<'a>,
    previous: Option<SnapshotView<'a>>,
    timestamp: u64,
}

/// `{"metadata": {...}, "state": {...}, "version": N}` of one document.
#[derive(Serialize)]
struct SnapshotView<'a> {
    metadata: SectionsView<'a>,
    state: SectionsView<'a>,
    version: u64,
}

/// `{"desired"?: ..., "reported"?: ...}`: one part (state or metadata) of both sections.
#[derive(Serialize)]
struct SectionsView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reported: Option<&'a Map<String, Value>>,
}

impl<'a> SnapshotView<'a> {
    fn of(shadow: &'a StoredShadow) -> Self {
        let part = |f: fn(&Section) -> &Map<String, Value>| SectionsView {
            desired: shadow.desired.as_ref().map(f),
            reported: shadow.reported.as_ref().map(f),
        };
        SnapshotView {
            metadata: part(|s| &s.metadata),
            state: part(|s| &s.state),
            version: shadow.version,
        }
    }
}

/// Adds `timestamp` and, when present, `clientToken`.
fn envelope(mut payload: Map<String, Value>, client_token: Option<&str>, now_secs: u64) -> Value {
    payload.insert("timestamp".into(), now_secs.into());
    if let Some(token) = client_token {
        payload.insert("clientToken".into(), token.into());
    }
    Value::Object(payload)
}

/// The full shadow document: the `/get/accepted` payload and the HTTP `GetThingShadow` body.
///
/// `state` has `desired` and `reported` when present and `delta` when it is non-empty;
/// `metadata` has `desired` and `reported` (no `delta` metadata: the developer guide's GET
/// example and the SDKs' `ShadowMetadata` have only those two). An empty shadow renders as
/// `"state":{}, "metadata":{}`. This renders whatever it is given, tombstones included; use
/// [`get_response`] to answer 404 for missing and deleted shadows.
pub fn get_payload(shadow: &StoredShadow, client_token: Option<&str>, now_secs: u64) -> Value {
    let mut state = shadow.state_json();
    if let (Value::Object(state), Some(delta)) = (&mut state, shadow.delta()) {
        state.insert("delta".into(), Value::Object(delta));
    }
    let mut payload = Map::new();
    payload.insert("state".into(), state);
    payload.insert("metadata".into(), shadow.metadata_json());
    payload.insert("version".into(), shadow.version.into());
    envelope(payload, client_token, now_secs)
}

/// Answers a get: the [`get_payload`] of an existing shadow, or 404
/// `No shadow exists with name: '…'` when it never existed or was deleted.
pub fn get_response(
    current: Option<&StoredShadow>,
    thing: &ThingName,
    shadow: Option<&ShadowName>,
    client_token: Option<&str>,
    now_secs: u64,
) -> Result<Value, ShadowError> {
    match current.filter(|stored| stored.exists()) {
        Some(stored) => Ok(get_payload(stored, client_token, now_secs)),
        None => Err(ShadowError::no_shadow(thing, shadow)),
    }
}

/// The `/delete/accepted` payload: `{"version": N, "timestamp": T, "clientToken"?}`, where `N`
/// is the version of the deleted shadow (delete does not increment it).
pub fn delete_payload(version: u64, client_token: Option<&str>, now_secs: u64) -> Value {
    let mut payload = Map::new();
    payload.insert("version".into(), version.into());
    envelope(payload, client_token, now_secs)
}

/// Deletes a shadow: its tombstone and the `/delete/accepted` payload, or 404
/// `No shadow exists with name: '…'` when it never existed or was already deleted.
pub fn apply_delete(
    current: Option<&StoredShadow>,
    thing: &ThingName,
    shadow: Option<&ShadowName>,
    client_token: Option<&str>,
    now_secs: u64,
) -> Result<DeleteOutcome, ShadowError> {
    match current.filter(|stored| stored.exists()) {
        Some(stored) => Ok(DeleteOutcome {
            accepted: delete_payload(stored.version, client_token, now_secs),
            shadow: stored.tombstone(now_secs),
        }),
        None => Err(ShadowError::no_shadow(thing, shadow)),
    }
}

#[cfg(test)]
mod tests;
