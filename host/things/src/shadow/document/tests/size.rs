//! The state size limit, persistence and number handling.

use super::*;

/// `{"a":"xxx…"}` of exactly `size` bytes of compact JSON.
fn blob(size: usize) -> Value {
    json!({ "a": "x".repeat(size - 8) })
}

#[test]
fn state_size_counts_compact_desired_plus_reported() {
    assert_eq!(serialized_len(&obj(blob(100))), 100);
    let shadow = stored(1, Some(json!({"a": 1})), Some(json!({"bb": [1, 2]})));
    assert_eq!(shadow.state_size(), r#"{"a":1}"#.len() + r#"{"bb":[1,2]}"#.len());
    assert_eq!(stored(1, None, None).state_size(), 0);
}

#[test]
fn the_state_limit_is_inclusive_and_checked_after_the_merge() {
    // Exactly the limit is accepted, one byte more is 413.
    assert_eq!(
        update(None, json!({"state": {"desired": blob(8192)}}), 1)
            .shadow
            .state_size(),
        8192
    );
    assert_eq!(
        update_err(None, json!({"state": {"desired": blob(8193)}}), 1),
        ShadowError::new(413, "Json document too large. Size is 8193, max allowed: 8192")
    );
    // desired and reported add up.
    let half = update(None, json!({"state": {"desired": blob(4096)}}), 1).shadow;
    assert_eq!(
        update(Some(&half), json!({"state": {"reported": blob(4096)}}), 2)
            .shadow
            .state_size(),
        8192
    );
    assert_eq!(
        update_err(Some(&half), json!({"state": {"reported": blob(4097)}}), 2),
        ShadowError::document_too_large(8193, 8192)
    );
    // A small request that grows a big document over the limit is refused...
    let full = update(None, json!({"state": {"desired": blob(8190)}}), 1).shadow;
    assert_eq!(
        update_err(Some(&full), json!({"state": {"reported": {"b": 1}}}), 2),
        ShadowError::document_too_large(8197, 8192)
    );
    // ...while a request larger than the limit that shrinks the document is fine.
    let mut shrink = Map::new();
    shrink.insert("a".into(), json!("short"));
    for n in 0..1000 {
        shrink.insert(format!("missing{n}"), Value::Null);
    }
    let body = json!({"state": {"desired": shrink}});
    assert!(body.to_string().len() > 8192);
    assert_eq!(
        update(Some(&full), body, 3).shadow.state_json(),
        json!({"desired": {"a": "short"}})
    );
    // Metadata does not count: many tiny leaves whose metadata is far larger still fit.
    let mut many = Map::new();
    for n in 0..900 {
        many.insert(format!("{n:03}"), json!(0));
    }
    let outcome = update(None, json!({"state": {"reported": many}}), 1);
    assert!(outcome.shadow.state_size() <= 8192);
    assert!(serde_json::to_vec(&outcome.shadow.metadata_json()).unwrap().len() > 8192);
}

#[test]
fn shadows_over_a_lowered_limit_can_still_shrink() {
    let big = update(
        None,
        json!({"state": {"desired": blob(8000), "reported": {"k": 1}}}),
        1,
    )
    .shadow;
    let lowered = ShadowLimits {
        max_state_bytes: 4096,
        ..limits()
    };
    let shrink = apply_update(
        Some(&big),
        &request(json!({"state": {"reported": {"k": null}}})),
        2,
        &lowered,
    )
    .unwrap();
    assert_eq!(shrink.shadow.state_size(), 8000);
    assert_eq!(
        apply_update(
            Some(&big),
            &request(json!({"state": {"reported": {"k": 12}}})),
            2,
            &lowered
        )
        .unwrap_err(),
        ShadowError::document_too_large(8008, 4096)
    );
    let raised = ShadowLimits {
        max_state_bytes: 30 * 1024,
        ..limits()
    };
    assert!(
        apply_update(
            None,
            &request(json!({"state": {"desired": blob(20_000)}})),
            1,
            &raised
        )
        .is_ok()
    );
}

#[test]
fn stored_shadows_round_trip_as_json() {
    let shadow = update(
        None,
        json!({"state": {"desired": {"a": [1, {"b": 2.5}], "c": "\u{e9}"}, "reported": {"n": -3}}}),
        42,
    )
    .shadow;
    let bytes = shadow.to_json_bytes();
    assert_eq!(StoredShadow::from_json_bytes(&bytes).unwrap(), shadow);
    let tombstone = shadow.tombstone(50);
    assert_eq!(
        StoredShadow::from_json_bytes(&tombstone.to_json_bytes()).unwrap(),
        tombstone
    );
    assert_eq!(
        serde_json::to_value(&tombstone).unwrap(),
        json!({"desired": null, "reported": null, "version": 1, "updated_secs": 50, "deleted": true})
    );
    // Optional fields may be missing.
    assert_eq!(
        StoredShadow::from_json_bytes(br#"{"version":3,"updated_secs":9}"#).unwrap(),
        StoredShadow {
            desired: None,
            reported: None,
            version: 3,
            updated_secs: 9,
            deleted: false
        }
    );
    assert!(StoredShadow::from_json_bytes(b"{}").is_err());
}

#[test]
fn numbers_are_kept_and_compared_as_received() {
    let outcome = update(
        None,
        json!({"state": {"desired": {"t": 1, "f": 1.0, "big": u64::MAX, "neg": i64::MIN}, "reported": {"t": 1.0, "f": 1.0}}}),
        1,
    );
    assert_eq!(
        outcome.shadow.state_json()["desired"],
        json!({"t": 1, "f": 1.0, "big": u64::MAX, "neg": i64::MIN})
    );
    assert_eq!(
        outcome.shadow.delta().map(Value::Object),
        Some(json!({"t": 1, "big": u64::MAX, "neg": i64::MIN}))
    );
}
