//! The delta between `desired` and `reported`, and its metadata.
//!
//! Rules (AWS developer guide, "Delta state" and "/update/delta"):
//!
//! * The delta iterates over `desired`: a desired key missing from `reported`, or whose value
//!   differs, is included; keys only in `reported` never are.
//! * When both sides hold objects, the comparison recurses and the delta keeps the path from
//!   the root to each difference (`{"lights":{"color":{"g":255}}}`).
//! * Arrays are values: a differing array is copied whole.
//! * A desired object facing a non-object reported value is copied whole.
//! * When nothing differs there is no delta at all (no `delta` key, no `/update/delta`).
//! * The delta's metadata is the desired metadata of the delta's leaves.
//!
//! *Shoal:* values are compared with `serde_json::Value` equality, which keeps JSON numbers as
//! received: integers are exact (`i64`/`u64`) and other numbers are `f64`, and an integer never
//! equals a float, so `1` and `1.0` differ and produce a delta. (The Greengrass shadow manager
//! compares numbers numerically; AWS does not document it.) Devices should report numbers in
//! the form they were desired.

use serde_json::{Map, Value};

use super::merge::is_leaf_metadata;

/// The delta of `desired` against `reported` (`None` for an absent section), or `None` when
/// nothing in `desired` differs from `reported`.
///
/// An absent `reported` makes the whole of `desired` the delta.
pub fn compute_delta(
    desired: Option<&Map<String, Value>>,
    reported: Option<&Map<String, Value>>,
) -> Option<Map<String, Value>> {
    let empty = Map::new();
    let delta = object_delta(desired?, reported.unwrap_or(&empty));
    (!delta.is_empty()).then_some(delta)
}

fn object_delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut delta = Map::new();
    for (key, wanted) in desired {
        match (wanted, reported.get(key)) {
            (Value::Object(wanted), Some(Value::Object(actual))) => {
                let nested = object_delta(wanted, actual);
                if !nested.is_empty() {
                    delta.insert(key.clone(), Value::Object(nested));
                }
            }
            (wanted, Some(actual)) if wanted == actual => {}
            (wanted, _) => {
                delta.insert(key.clone(), wanted.clone());
            }
        }
    }
    delta
}

/// The metadata of a delta: for each leaf of `delta` (a scalar, an array, or a desired object
/// copied whole) the matching entry of `desired_metadata`, keeping the delta's shape.
///
/// Keys with no metadata (only possible with a hand-edited store) are left out.
pub fn delta_metadata(
    delta: &Map<String, Value>,
    desired_metadata: &Map<String, Value>,
) -> Map<String, Value> {
    let mut metadata = Map::new();
    for (key, value) in delta {
        match (value, desired_metadata.get(key)) {
            (Value::Object(nested), Some(Value::Object(nested_metadata)))
                if !is_leaf_metadata(nested_metadata) =>
            {
                metadata.insert(
                    key.clone(),
                    Value::Object(delta_metadata(nested, nested_metadata)),
                );
            }
            (_, Some(entry)) => {
                metadata.insert(key.clone(), entry.clone());
            }
            (_, None) => {}
        }
    }
    metadata
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn delta(desired: Value, reported: Value) -> Option<Value> {
        compute_delta(Some(&obj(desired)), Some(&obj(reported))).map(Value::Object)
    }

    #[test]
    fn developer_guide_delta_example() {
        assert_eq!(
            delta(
                json!({"color": "RED", "state": "STOP"}),
                json!({"color": "GREEN", "engine": "ON"})
            ),
            Some(json!({"color": "RED", "state": "STOP"}))
        );
    }

    #[test]
    fn nested_differences_keep_the_path_to_the_root() {
        assert_eq!(
            delta(
                json!({"lights": {"color": {"r": 255, "g": 255, "b": 255}}}),
                json!({"lights": {"color": {"r": 255, "g": 0, "b": 255}}})
            ),
            Some(json!({"lights": {"color": {"g": 255}}}))
        );
    }

    #[test]
    fn differing_arrays_are_copied_whole_and_equal_arrays_are_not() {
        assert_eq!(
            delta(
                json!({"seq": ["RED", "GREEN", "BLUE"], "same": [1, 2]}),
                json!({"seq": ["RED"], "same": [1, 2]})
            ),
            Some(json!({"seq": ["RED", "GREEN", "BLUE"]}))
        );
        assert_eq!(
            delta(json!({"seq": [{"a": 1}]}), json!({"seq": [{"a": 1}]})),
            None
        );
    }

    #[test]
    fn no_delta_when_everything_matches() {
        assert_eq!(
            delta(
                json!({"a": 1, "b": {"c": [1]}}),
                json!({"a": 1, "b": {"c": [1]}, "extra": 2})
            ),
            None
        );
    }

    #[test]
    fn reported_only_keys_are_ignored_and_missing_reported_keys_included() {
        assert_eq!(
            delta(json!({"a": 1, "b": {"c": 2}}), json!({"z": 9, "b": {"y": 8}})),
            Some(json!({"a": 1, "b": {"c": 2}}))
        );
    }

    #[test]
    fn absent_sections() {
        let desired = obj(json!({"a": 1}));
        assert_eq!(compute_delta(Some(&desired), None), Some(desired.clone()));
        assert_eq!(compute_delta(None, Some(&desired)), None);
        assert_eq!(compute_delta(None, None), None);
    }

    #[test]
    fn type_mismatches_copy_the_desired_value_whole() {
        assert_eq!(
            delta(
                json!({"a": {"x": 1, "y": 2}, "b": 1, "c": [1]}),
                json!({"a": "flat", "b": {"x": 1}, "c": {"0": 1}})
            ),
            Some(json!({"a": {"x": 1, "y": 2}, "b": 1, "c": [1]}))
        );
    }

    #[test]
    fn empty_desired_objects() {
        // Nothing is desired inside `a`: no delta against an object, the empty object otherwise.
        assert_eq!(delta(json!({"a": {}}), json!({"a": {"x": 1}})), None);
        assert_eq!(delta(json!({"a": {}}), json!({})), Some(json!({"a": {}})));
        assert_eq!(delta(json!({"a": {}}), json!({"a": 3})), Some(json!({"a": {}})));
    }

    #[test]
    fn numbers_compare_as_received() {
        assert_eq!(delta(json!({"t": 1}), json!({"t": 1.0})), Some(json!({"t": 1})));
        assert_eq!(delta(json!({"t": 1.5}), json!({"t": 1.5})), None);
        assert_eq!(delta(json!({"t": -3}), json!({"t": -3})), None);
        assert_eq!(delta(json!({"t": "1"}), json!({"t": 1})), Some(json!({"t": "1"})));
    }

    #[test]
    fn delta_metadata_projects_the_desired_metadata() {
        let desired_metadata = obj(json!({
            "color": {"timestamp": 1},
            "lights": {"r": {"timestamp": 2}, "g": {"timestamp": 3}},
            "seq": [{"timestamp": 4}, {"timestamp": 4}],
            "whole": {"x": {"timestamp": 5}, "y": {"z": {"timestamp": 6}}}
        }));
        let delta = obj(json!({
            "color": "RED",
            "lights": {"g": 255},
            "seq": ["a", "b"],
            "whole": {"x": 1, "y": {"z": 2}},
            "unknown": 1
        }));
        assert_eq!(
            Value::Object(delta_metadata(&delta, &desired_metadata)),
            json!({
                "color": {"timestamp": 1},
                "lights": {"g": {"timestamp": 3}},
                "seq": [{"timestamp": 4}, {"timestamp": 4}],
                "whole": {"x": {"timestamp": 5}, "y": {"z": {"timestamp": 6}}}
            })
        );
    }
}
