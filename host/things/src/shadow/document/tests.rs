use serde_json::{Value, json};

use super::*;
use crate::shadow::merge::fresh_metadata;

mod size;

fn limits() -> ShadowLimits {
    ShadowLimits::default()
}

fn request(body: Value) -> UpdateRequest {
    UpdateRequest::parse(body.to_string().as_bytes(), &limits()).unwrap()
}

fn update(current: Option<&StoredShadow>, body: Value, now: u64) -> UpdateOutcome {
    apply_update(current, &request(body), now, &limits()).unwrap()
}

fn update_err(current: Option<&StoredShadow>, body: Value, now: u64) -> ShadowError {
    apply_update(current, &request(body), now, &limits()).unwrap_err()
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn section(state: Value, metadata: Value) -> Option<Section> {
    Some(Section {
        state: obj(state),
        metadata: obj(metadata),
    })
}

fn thing() -> ThingName {
    ThingName::parse("myLightBulb").unwrap()
}

/// A shadow at `version` holding `desired`/`reported`, all written at time 1.
fn stored(version: u64, desired: Option<Value>, reported: Option<Value>) -> StoredShadow {
    let to_section = |state: Value| Section {
        metadata: obj(fresh_metadata(&state, 1)),
        state: obj(state),
    };
    StoredShadow {
        desired: desired.map(to_section),
        reported: reported.map(to_section),
        version,
        updated_secs: 1,
        deleted: false,
    }
}

#[test]
fn the_developer_guide_lights_example_end_to_end() {
    // An app sets the desired state of a new shadow.
    let first = update(
        None,
        json!({"state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}}, "clientToken": "token"}),
        100,
    );
    let desired_metadata = json!({
        "color": {"timestamp": 100},
        "sequence": [{"timestamp": 100}, {"timestamp": 100}, {"timestamp": 100}]
    });
    assert_eq!(
        first.accepted,
        json!({
            "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
            "metadata": {"desired": desired_metadata},
            "version": 1,
            "timestamp": 100,
            "clientToken": "token"
        })
    );
    assert_eq!(
        first.delta,
        Some(json!({
            "state": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
            "metadata": desired_metadata,
            "version": 1,
            "timestamp": 100,
            "clientToken": "token"
        }))
    );
    assert_eq!(
        first.documents,
        json!({
            "previous": null,
            "current": {
                "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                "metadata": {"desired": desired_metadata},
                "version": 1
            },
            "timestamp": 100,
            "clientToken": "token"
        })
    );
    assert_eq!(
        first.shadow,
        StoredShadow {
            desired: section(
                json!({"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}),
                desired_metadata.clone()
            ),
            reported: None,
            version: 1,
            updated_secs: 100,
            deleted: false,
        }
    );

    // The device reports its colour (no client token).
    let second = update(
        Some(&first.shadow),
        json!({"state": {"reported": {"color": "GREEN"}}}),
        200,
    );
    assert_eq!(
        second.accepted,
        json!({
            "state": {"reported": {"color": "GREEN"}},
            "metadata": {"reported": {"color": {"timestamp": 200}}},
            "version": 2,
            "timestamp": 200
        })
    );
    // The delta still carries every differing desired key, with the desired timestamps.
    assert_eq!(
        second.delta,
        Some(json!({
            "state": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
            "metadata": desired_metadata,
            "version": 2,
            "timestamp": 200
        }))
    );
    assert_eq!(
        second.documents,
        json!({
            "previous": {
                "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                "metadata": {"desired": desired_metadata},
                "version": 1
            },
            "current": {
                "state": {
                    "desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                    "reported": {"color": "GREEN"}
                },
                "metadata": {"desired": desired_metadata, "reported": {"color": {"timestamp": 200}}},
                "version": 2
            },
            "timestamp": 200
        })
    );

    // A GET returns the full document with the delta.
    assert_eq!(
        get_response(Some(&second.shadow), &thing(), None, Some("get-1"), 300).unwrap(),
        json!({
            "state": {
                "desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                "reported": {"color": "GREEN"},
                "delta": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}
            },
            "metadata": {"desired": desired_metadata, "reported": {"color": {"timestamp": 200}}},
            "version": 2,
            "timestamp": 300,
            "clientToken": "get-1"
        })
    );

    // The device catches up: no delta remains, so none is published and GET has no delta key.
    let third = update(
        Some(&second.shadow),
        json!({"state": {"reported": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}}}),
        400,
    );
    assert_eq!(third.delta, None);
    assert_eq!(
        get_payload(&third.shadow, None, 500),
        json!({
            "state": {
                "desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                "reported": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}
            },
            "metadata": {
                "desired": desired_metadata,
                "reported": {
                    "color": {"timestamp": 400},
                    "sequence": [{"timestamp": 400}, {"timestamp": 400}, {"timestamp": 400}]
                }
            },
            "version": 3,
            "timestamp": 500
        })
    );
}

#[test]
fn nested_delta_keeps_the_path_and_desired_metadata() {
    let shadow = stored(
        17,
        None,
        Some(json!({"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "engine": "ON"})),
    );
    let outcome = update(
        Some(&shadow),
        json!({"state": {"desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}}}}),
        50,
    );
    assert_eq!(
        outcome.delta,
        Some(json!({
            "state": {"lights": {"color": {"g": 255}}},
            "metadata": {"lights": {"color": {"g": {"timestamp": 50}}}},
            "version": 18,
            "timestamp": 50
        }))
    );
    assert_eq!(
        get_payload(&outcome.shadow, None, 60),
        json!({
            "state": {
                "desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}},
                "reported": {"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "engine": "ON"},
                "delta": {"lights": {"color": {"g": 255}}}
            },
            "metadata": {
                "desired": {"lights": {"color": {"r": {"timestamp": 50}, "g": {"timestamp": 50}, "b": {"timestamp": 50}}}},
                "reported": {
                    "lights": {"color": {"r": {"timestamp": 1}, "g": {"timestamp": 1}, "b": {"timestamp": 1}}},
                    "engine": {"timestamp": 1}
                }
            },
            "version": 18,
            "timestamp": 60
        })
    );
}

#[test]
fn accepted_echoes_only_the_request_fields_including_deletions() {
    let shadow = stored(
        3,
        Some(json!({"color": {"r": 10}, "engine": "ON", "mode": "eco"})),
        Some(json!({"temp": 55})),
    );
    let outcome = update(
        Some(&shadow),
        json!({"state": {"desired": {"engine": null, "color": {"g": 7}}}, "clientToken": "c1", "ignored": true}),
        9,
    );
    assert_eq!(
        outcome.accepted,
        json!({
            "state": {"desired": {"engine": null, "color": {"g": 7}}},
            "metadata": {"desired": {"engine": {"timestamp": 9}, "color": {"g": {"timestamp": 9}}}},
            "version": 4,
            "timestamp": 9,
            "clientToken": "c1"
        })
    );
    assert_eq!(
        outcome.shadow.desired,
        section(
            json!({"color": {"r": 10, "g": 7}, "mode": "eco"}),
            json!({"color": {"r": {"timestamp": 1}, "g": {"timestamp": 9}}, "mode": {"timestamp": 1}})
        )
    );
    assert_eq!(outcome.shadow.reported, shadow.reported);
}

#[test]
fn null_section_removes_it_and_is_echoed() {
    let shadow = stored(5, Some(json!({"color": "red"})), Some(json!({"color": "blue"})));
    let outcome = update(
        Some(&shadow),
        json!({"state": {"reported": {"color": "red"}, "desired": null}}),
        20,
    );
    assert_eq!(
        outcome.accepted,
        json!({
            "state": {"reported": {"color": "red"}, "desired": null},
            "metadata": {"reported": {"color": {"timestamp": 20}}, "desired": {"timestamp": 20}},
            "version": 6,
            "timestamp": 20
        })
    );
    assert_eq!(outcome.delta, None);
    assert_eq!(
        outcome.shadow,
        StoredShadow {
            desired: None,
            reported: section(json!({"color": "red"}), json!({"color": {"timestamp": 20}})),
            version: 6,
            updated_secs: 20,
            deleted: false,
        }
    );
}

#[test]
fn deleting_every_desired_key_removes_the_section() {
    let shadow = stored(2, Some(json!({"a": 1, "b": {"c": 2}})), Some(json!({"z": 0})));
    let outcome = update(
        Some(&shadow),
        json!({"state": {"desired": {"a": null, "b": null}}}),
        5,
    );
    assert_eq!(outcome.shadow.desired, None);
    assert_eq!(
        outcome.documents,
        json!({
            "previous": {
                "state": {"desired": {"a": 1, "b": {"c": 2}}, "reported": {"z": 0}},
                "metadata": {
                    "desired": {"a": {"timestamp": 1}, "b": {"c": {"timestamp": 1}}},
                    "reported": {"z": {"timestamp": 1}}
                },
                "version": 2
            },
            "current": {
                "state": {"reported": {"z": 0}},
                "metadata": {"reported": {"z": {"timestamp": 1}}},
                "version": 3
            },
            "timestamp": 5
        })
    );
}

#[test]
fn null_state_clears_everything_but_keeps_the_shadow() {
    let shadow = stored(7, Some(json!({"a": 1})), Some(json!({"b": 2})));
    let outcome = update(Some(&shadow), json!({"state": null, "clientToken": "wipe"}), 30);
    assert_eq!(
        outcome.accepted,
        json!({"state": null, "metadata": {"timestamp": 30}, "version": 8, "timestamp": 30, "clientToken": "wipe"})
    );
    assert_eq!(outcome.delta, None);
    assert_eq!(
        outcome.documents["current"],
        json!({"state": {}, "metadata": {}, "version": 8})
    );
    assert!(outcome.shadow.exists());
    assert_eq!(
        get_response(Some(&outcome.shadow), &thing(), None, None, 31).unwrap(),
        json!({"state": {}, "metadata": {}, "version": 8, "timestamp": 31})
    );
}

#[test]
fn empty_state_creates_an_empty_shadow_at_version_one() {
    let outcome = update(None, json!({"state": {}}), 10);
    assert_eq!(
        outcome.accepted,
        json!({"state": {}, "metadata": {}, "version": 1, "timestamp": 10})
    );
    assert_eq!(outcome.delta, None);
    assert_eq!(
        outcome.documents,
        json!({"previous": null, "current": {"state": {}, "metadata": {}, "version": 1}, "timestamp": 10})
    );
    assert_eq!(
        outcome.shadow,
        StoredShadow {
            desired: None,
            reported: None,
            version: 1,
            updated_secs: 10,
            deleted: false
        }
    );
    // A further empty update still bumps the version.
    let again = update(Some(&outcome.shadow), json!({"state": {"desired": {}}}), 11);
    assert_eq!(again.shadow.version, 2);
    assert_eq!(again.shadow.desired, None);
}

#[test]
fn delta_includes_keys_deleted_from_reported_but_still_desired() {
    let shadow = stored(4, Some(json!({"a": 1, "b": 2})), Some(json!({"a": 1, "b": 2})));
    assert_eq!(shadow.delta(), None);
    let outcome = update(Some(&shadow), json!({"state": {"reported": {"b": null}}}), 8);
    assert_eq!(
        outcome.delta,
        Some(json!({"state": {"b": 2}, "metadata": {"b": {"timestamp": 1}}, "version": 5, "timestamp": 8}))
    );
}

#[test]
fn delta_is_absent_when_the_update_resolves_or_removes_the_difference() {
    let shadow = stored(4, Some(json!({"color": "RED"})), Some(json!({"color": "GREEN"})));
    // Deleting the desired key removes the difference: no delta (aws-iot-device-sdk-js#52).
    assert_eq!(
        update(Some(&shadow), json!({"state": {"desired": {"color": null}}}), 8).delta,
        None
    );
    // Reporting the desired value resolves it.
    assert_eq!(
        update(Some(&shadow), json!({"state": {"reported": {"color": "RED"}}}), 8).delta,
        None
    );
    // Reporting something unrelated leaves the difference: the delta is published again.
    assert_eq!(
        update(
            Some(&shadow),
            json!({"state": {"reported": {"temp": 4}}, "clientToken": "dev"}),
            8
        )
        .delta,
        Some(json!({
            "state": {"color": "RED"},
            "metadata": {"color": {"timestamp": 1}},
            "version": 5,
            "timestamp": 8,
            "clientToken": "dev"
        }))
    );
}

#[test]
fn reported_only_keys_never_appear_in_the_delta() {
    let outcome = update(
        None,
        json!({"state": {"desired": {"a": 1}, "reported": {"a": 1, "temp": 20}}}),
        3,
    );
    assert_eq!(outcome.delta, None);
    assert_eq!(outcome.shadow.delta(), None);
}

#[test]
fn optimistic_locking_example_from_the_developer_guide() {
    let shadow = stored(10, Some(json!({"colors": ["RED", "GREEN", "BLUE"]})), None);
    let conflict = update_err(
        Some(&shadow),
        json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 9, "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"}),
        70,
    );
    assert_eq!(conflict, ShadowError::version_conflict());
    assert_eq!(
        conflict.rejected_payload(Some("426bfd96-e720-46d3-95cd-014e3ef12bb6"), 70),
        json!({
            "code": 409,
            "message": "Version conflict",
            "timestamp": 70,
            "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"
        })
    );
    // A newer version than the current one conflicts too.
    assert_eq!(
        update_err(
            Some(&shadow),
            json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 11}),
            70
        ),
        ShadowError::version_conflict()
    );

    let accepted = update(
        Some(&shadow),
        json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 10}),
        71,
    );
    assert_eq!(
        accepted.accepted,
        json!({
            "state": {"desired": {"colors": ["BLUE"]}},
            "metadata": {"desired": {"colors": [{"timestamp": 71}]}},
            "version": 11,
            "timestamp": 71
        })
    );
    assert_eq!(
        accepted.shadow.state_json(),
        json!({"desired": {"colors": ["BLUE"]}})
    );
    assert_eq!(accepted.shadow.version, 11);
}

#[test]
fn version_of_a_never_created_shadow_is_zero() {
    assert_eq!(
        update(None, json!({"state": {"desired": {"a": 1}}, "version": 0}), 1)
            .shadow
            .version,
        1
    );
    assert_eq!(
        update_err(None, json!({"state": {"desired": {"a": 1}}, "version": 1}), 1),
        ShadowError::version_conflict()
    );
}

#[test]
fn every_update_increments_the_version() {
    let mut shadow = update(None, json!({"state": {"reported": {"n": 0}}}), 1).shadow;
    assert_eq!(shadow.version, 1);
    for n in 1..=5 {
        shadow = update(Some(&shadow), json!({"state": {"reported": {"n": n}}}), 1 + n).shadow;
    }
    assert_eq!(shadow.version, 6);
    assert_eq!(shadow.updated_secs, 6);
}

#[test]
fn version_overflow_is_an_internal_error() {
    let shadow = stored(u64::MAX, None, Some(json!({"a": 1})));
    assert_eq!(
        update_err(Some(&shadow), json!({"state": {}}), 1),
        ShadowError::internal()
    );
}

#[test]
fn delete_keeps_the_version_and_an_update_continues_it() {
    let shadow = stored(4, Some(json!({"color": "RED"})), Some(json!({"color": "GREEN"})));
    let deleted = apply_delete(Some(&shadow), &thing(), None, None, 1_591_057_529).unwrap();
    assert_eq!(
        deleted.accepted,
        json!({"version": 4, "timestamp": 1_591_057_529})
    );
    assert_eq!(
        deleted.shadow,
        StoredShadow {
            desired: None,
            reported: None,
            version: 4,
            updated_secs: 1_591_057_529,
            deleted: true
        }
    );
    assert!(!deleted.shadow.exists());

    // Get and delete of the deleted shadow are 404.
    let missing = ShadowError::new(404, "No shadow exists with name: 'myLightBulb'");
    assert_eq!(
        get_response(Some(&deleted.shadow), &thing(), None, None, 2),
        Err(missing.clone())
    );
    assert_eq!(
        apply_delete(Some(&deleted.shadow), &thing(), None, None, 2),
        Err(missing)
    );

    // The version check compares with the tombstone's version.
    assert_eq!(
        update_err(
            Some(&deleted.shadow),
            json!({"state": {"reported": {"on": true}}, "version": 3}),
            5
        ),
        ShadowError::version_conflict()
    );
    // Re-creating continues the numbering, starts from an empty state, and has no previous.
    let recreated = update(
        Some(&deleted.shadow),
        json!({"state": {"reported": {"on": true}}, "version": 4, "clientToken": "again"}),
        6,
    );
    assert_eq!(
        recreated.accepted,
        json!({
            "state": {"reported": {"on": true}},
            "metadata": {"reported": {"on": {"timestamp": 6}}},
            "version": 5,
            "timestamp": 6,
            "clientToken": "again"
        })
    );
    assert_eq!(recreated.delta, None);
    assert_eq!(
        recreated.documents,
        json!({
            "previous": null,
            "current": {"state": {"reported": {"on": true}}, "metadata": {"reported": {"on": {"timestamp": 6}}}, "version": 5},
            "timestamp": 6,
            "clientToken": "again"
        })
    );
    assert!(recreated.shadow.exists());
}

#[test]
fn get_and_delete_of_a_missing_shadow_are_404() {
    let shadow = ShadowName::parse("simShadow1").unwrap();
    assert_eq!(
        get_response(None, &thing(), Some(&shadow), Some("t"), 1),
        Err(ShadowError::new(
            404,
            "No shadow exists with name: 'myLightBulb~simShadow1'"
        ))
    );
    assert_eq!(
        apply_delete(None, &thing(), None, Some("t"), 1),
        Err(ShadowError::new(404, "No shadow exists with name: 'myLightBulb'"))
    );
}

#[test]
fn client_token_is_echoed_everywhere() {
    let created = update(
        None,
        json!({"state": {"desired": {"x": 1}}, "clientToken": "tok"}),
        1,
    );
    assert_eq!(created.accepted["clientToken"], json!("tok"));
    assert_eq!(created.delta.as_ref().unwrap()["clientToken"], json!("tok"));
    assert_eq!(created.documents["clientToken"], json!("tok"));
    assert_eq!(
        get_response(Some(&created.shadow), &thing(), None, Some("g"), 2).unwrap()["clientToken"],
        json!("g")
    );
    assert_eq!(
        apply_delete(Some(&created.shadow), &thing(), None, Some("d"), 3)
            .unwrap()
            .accepted,
        json!({"version": 1, "timestamp": 3, "clientToken": "d"})
    );
    assert_eq!(delete_payload(9, None, 4), json!({"version": 9, "timestamp": 4}));

    let anonymous = update(None, json!({"state": {"desired": {"x": 1}}}), 1);
    for payload in [
        &anonymous.accepted,
        anonymous.delta.as_ref().unwrap(),
        &anonymous.documents,
    ] {
        assert!(payload.get("clientToken").is_none(), "{payload}");
    }
}

#[test]
fn metadata_tracks_nested_objects_and_arrays_across_updates() {
    let first = update(
        None,
        json!({"state": {"reported": {"pos": {"lat": 1.5, "lon": 2.5}, "wheels": [{"psi": 30}, {"psi": 31}], "tags": []}}}),
        10,
    );
    let second = update(
        Some(&first.shadow),
        json!({"state": {"reported": {"pos": {"lat": 1.75}, "wheels": [{"psi": 29}], "tags": ["a", ["b"]]}}}),
        20,
    );
    assert_eq!(
        second.shadow.metadata_json(),
        json!({"reported": {
            "pos": {"lat": {"timestamp": 20}, "lon": {"timestamp": 10}},
            "wheels": [{"psi": {"timestamp": 20}}],
            "tags": [{"timestamp": 20}, [{"timestamp": 20}]]
        }})
    );
    assert_eq!(
        second.shadow.state_json(),
        json!({"reported": {"pos": {"lat": 1.75, "lon": 2.5}, "wheels": [{"psi": 29}], "tags": ["a", ["b"]]}})
    );
}

/// `/update/documents` is written straight from the documents: compact, keys in the same
/// lexicographic order as every `Value`-built payload, a tombstone's `previous` is `null`.
#[test]
fn documents_payload_bytes_are_compact_with_sorted_keys() {
    let before = stored(
        3,
        Some(json!({"b": 1, "a": {"z": true}})),
        Some(json!({"t": -1.5})),
    );
    let body = json!({"state": {"reported": {"t": 2}}, "clientToken": "tok"});
    let after = updated_shadow(Some(&before), &request(body.clone()), 200, &limits()).unwrap();
    let bytes = documents_json(Some(&before), &after, Some("tok"), 200);
    let expected = json!({
        "clientToken": "tok",
        "current": {"state": after.state_json(), "metadata": after.metadata_json(), "version": 4},
        "previous": {"state": before.state_json(), "metadata": before.metadata_json(), "version": 3},
        "timestamp": 200,
    });
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
    // The same bytes as the payloads built for a whole update.
    let payloads = update_payloads(Some(&before), &after, &request(body), 200);
    assert_eq!(payloads.documents, serde_json::to_vec(&expected).unwrap());

    let tombstone = before.tombstone(150);
    let recreated = documents_json(Some(&tombstone), &after, None, 200);
    let v: Value = serde_json::from_slice(&recreated).unwrap();
    assert_eq!(v["previous"], Value::Null);
    assert!(v.get("clientToken").is_none());
}

/// `accepted_json` writes, byte for byte, what serializing the accepted payload built as a
/// `Value` (the request's state echoed, `fresh_metadata` of it) gives, for every shape a
/// request's state can take.
#[test]
fn accepted_json_is_the_value_built_payload_written_directly() {
    let bodies = [
        json!({"state": {"reported": {"temp": -18.5, "door": "closed", "seq": 123}}, "clientToken": "abc"}),
        json!({"state": {
            "desired": {"a": {"b": {"c": [1, [2, {"d": true}], {}]}}, "e": null},
            "reported": null
        }}),
        json!({"state": null, "clientToken": "t"}),
        json!({"state": {}}),
        json!({"state": {"desired": null}}),
        json!({"state": {"reported": {"list": [], "obj": {}, "s": "x", "n": 1}}, "version": 4}),
    ];
    for body in bodies {
        let req = request(body.clone());
        let echoed = req.state().to_json();
        let mut expected = json!({
            "metadata": fresh_metadata(&echoed, 1_700_000_000),
            "state": echoed,
            "timestamp": 1_700_000_000u64,
            "version": 9,
        });
        if let Some(token) = req.client_token() {
            expected["clientToken"] = json!(token);
        }
        let bytes = accepted_json(&req, 9, 1_700_000_000);
        assert_eq!(String::from_utf8(bytes).unwrap(), expected.to_string(), "{body}");
        assert_eq!(accepted_payload(&req, 9, 1_700_000_000), expected, "{body}");
    }
}
