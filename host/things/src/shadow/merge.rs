//! Merging an update into a section, and the metadata (timestamps) that goes with it.
//!
//! The rules are documented in the [`shadow`](super) module docs ("Merge" and "Metadata").

use std::io;

use serde_json::{Map, Value};

use super::document::Section;
use super::request::SectionPatch;

/// The metadata of `value` freshly written at `timestamp`.
///
/// Scalars and `null` get `{"timestamp": timestamp}` (for `null` this is what
/// `/update/accepted` reports for a deletion), objects and arrays mirror their members.
pub(crate) fn fresh_metadata(value: &Value, timestamp: u64) -> Value {
    match value {
        Value::Object(map) => Value::Object(fresh_metadata_map(map, timestamp)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| fresh_metadata(item, timestamp)).collect())
        }
        _ => leaf(timestamp),
    }
}

fn fresh_metadata_map(map: &Map<String, Value>, timestamp: u64) -> Map<String, Value> {
    map.iter()
        .map(|(key, value)| (key.clone(), fresh_metadata(value, timestamp)))
        .collect()
}

fn leaf(timestamp: u64) -> Value {
    let mut map = Map::new();
    map.insert("timestamp".into(), timestamp.into());
    Value::Object(map)
}

/// Is this metadata object a leaf (`{"timestamp": <number>}`) rather than the metadata of a
/// state object?
///
/// Unambiguous: the metadata of a state object maps every key to an object or an array, so
/// even a state object whose only key is `timestamp` has metadata
/// `{"timestamp": {"timestamp": T}}`, whose `timestamp` is not a number.
pub(crate) fn is_leaf_metadata(map: &Map<String, Value>) -> bool {
    map.len() == 1 && map.get("timestamp").is_some_and(Value::is_number)
}

/// Applies `patch` to a section (`None` = the section is absent), writing at `timestamp`.
///
/// Returns the new section, `None` if it was removed or ended up empty.
pub(crate) fn merge_section(
    current: Option<&Section>,
    patch: &SectionPatch,
    timestamp: u64,
) -> Option<Section> {
    match patch {
        SectionPatch::Keep => current.cloned(),
        SectionPatch::Remove => None,
        SectionPatch::Merge(patch) => {
            let section = match current {
                Some(current) => {
                    let (state, metadata) = merged(&current.state, &current.metadata, patch, timestamp);
                    Section { state, metadata }
                }
                None => {
                    let mut section = Section::default();
                    merge_into(&mut section.state, &mut section.metadata, patch, timestamp);
                    section
                }
            };
            (!section.state.is_empty()).then_some(section)
        }
    }
}

/// The object `state` (with `metadata`, its metadata object) with `patch` merged in, built
/// afresh: what [`merge_into`] leaves in a copy of both, without copying the members the
/// patch replaces or deletes only to drop them again. A device usually reports most of its
/// fields in every update; for one that reports all of them, nothing of the old section is
/// copied (the section's nodes, a `{"timestamp": T}` object per leaf, are most of a merge's
/// cost).
fn merged(
    state: &Map<String, Value>,
    metadata: &Map<String, Value>,
    patch: &Map<String, Value>,
    timestamp: u64,
) -> (Map<String, Value>, Map<String, Value>) {
    let untouched = |map: &Map<String, Value>| -> Map<String, Value> {
        map.iter()
            .filter(|(key, _)| !patch.contains_key(key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    };
    let mut new_state = untouched(state);
    let mut new_metadata = untouched(metadata);
    let keep = |key: &String, state_out: &mut Map<String, Value>, metadata_out: &mut Map<String, Value>| {
        if let Some(value) = state.get(key) {
            state_out.insert(key.clone(), value.clone());
        }
        if let Some(value) = metadata.get(key) {
            metadata_out.insert(key.clone(), value.clone());
        }
    };
    for (key, value) in patch {
        match value {
            Value::Null => {}
            Value::Object(patch) => {
                if let Some(Value::Object(current)) = state.get(key) {
                    let rebuilt;
                    let member_metadata = match metadata.get(key) {
                        Some(Value::Object(map)) if !is_leaf_metadata(map) => map,
                        _ => {
                            rebuilt = fresh_metadata_map(current, timestamp);
                            &rebuilt
                        }
                    };
                    let (s, m) = merged(current, member_metadata, patch, timestamp);
                    new_state.insert(key.clone(), Value::Object(s));
                    new_metadata.insert(key.clone(), Value::Object(m));
                } else if let Some((created, created_metadata)) = create(patch, timestamp) {
                    new_state.insert(key.clone(), Value::Object(created));
                    new_metadata.insert(key.clone(), Value::Object(created_metadata));
                } else {
                    // Only deletions, over a member that is not an object: it stays as it was.
                    keep(key, &mut new_state, &mut new_metadata);
                }
            }
            value => {
                new_state.insert(key.clone(), value.clone());
                new_metadata.insert(key.clone(), fresh_metadata(value, timestamp));
            }
        }
    }
    (new_state, new_metadata)
}

/// Merges `patch` into the object `state`, keeping `metadata` (its metadata object) in step.
fn merge_into(
    state: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    timestamp: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(patch) => {
                if let Some(Value::Object(current)) = state.get_mut(key) {
                    // Reuse the member's metadata object; rebuild it if it is missing or not an
                    // object's metadata (only possible with a hand-edited store).
                    let mut member_metadata = match metadata.remove(key) {
                        Some(Value::Object(map)) if !is_leaf_metadata(&map) => map,
                        _ => fresh_metadata_map(current, timestamp),
                    };
                    merge_into(current, &mut member_metadata, patch, timestamp);
                    metadata.insert(key.clone(), Value::Object(member_metadata));
                } else if let Some((created, created_metadata)) = create(patch, timestamp) {
                    state.insert(key.clone(), Value::Object(created));
                    metadata.insert(key.clone(), Value::Object(created_metadata));
                }
            }
            value => {
                state.insert(key.clone(), value.clone());
                metadata.insert(key.clone(), fresh_metadata(value, timestamp));
            }
        }
    }
}

/// The object (and its metadata) that writing `patch` where no object exists creates: `patch`
/// without its deletions, or `None` when it consisted only of deletions.
fn create(patch: &Map<String, Value>, timestamp: u64) -> Option<(Map<String, Value>, Map<String, Value>)> {
    let mut state = Map::new();
    let mut metadata = Map::new();
    merge_into(&mut state, &mut metadata, patch, timestamp);
    (patch.is_empty() || !state.is_empty()).then_some((state, metadata))
}

/// The number of bytes of `value`'s compact JSON serialization (what the state size limit
/// counts), computed without building the string.
pub(crate) fn serialized_len(value: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Map<String, Value>` to an infallible writer cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
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

    fn section(state: Value, metadata: Value) -> Section {
        Section {
            state: obj(state),
            metadata: obj(metadata),
        }
    }

    fn merge(current: Option<&Section>, patch: Value, timestamp: u64) -> Option<Section> {
        merge_section(current, &SectionPatch::Merge(obj(patch)), timestamp)
    }

    /// The reference: what merging into a clone of the section gives.
    fn merge_by_cloning(current: &Section, patch: &Map<String, Value>, timestamp: u64) -> Option<Section> {
        let mut section = current.clone();
        merge_into(&mut section.state, &mut section.metadata, patch, timestamp);
        (!section.state.is_empty()).then_some(section)
    }

    /// A small deterministic generator (xorshift) of documents and patches over a few keys,
    /// so members collide, nest, change type and get deleted.
    struct Gen(shoal_broker::rng::XorShift64);

    impl Gen {
        fn next(&mut self, n: u64) -> u64 {
            self.0.below(n)
        }

        fn object(&mut self, depth: u32, nulls: bool) -> Map<String, Value> {
            let mut map = Map::new();
            for _ in 0..self.next(4) {
                let key = ["a", "b", "c", "timestamp"][self.next(4) as usize].to_string();
                let value = self.value(depth, nulls);
                map.insert(key, value);
            }
            map
        }

        fn value(&mut self, depth: u32, nulls: bool) -> Value {
            match self.next(if depth == 0 { 4 } else { 6 }) {
                0 if nulls => Value::Null,
                0 | 1 => Value::from(self.next(3)),
                2 => Value::from(["x", "y"][self.next(2) as usize]),
                3 => Value::Array(vec![Value::from(1), Value::from("z")]),
                _ => Value::Object(self.object(depth - 1, nulls)),
            }
        }
    }

    #[test]
    fn merging_without_cloning_gives_what_merging_into_a_clone_gives() {
        let mut g = Gen(shoal_broker::rng::XorShift64::new(0x9e37_79b9_7f4a_7c15));
        let mut compared = 0;
        for round in 0..20_000 {
            let state = g.object(3, false);
            if state.is_empty() {
                continue;
            }
            let mut current = Section {
                metadata: fresh_metadata_map(&state, 1),
                state,
            };
            // Now and then a stored section whose metadata does not mirror its state: a
            // member's metadata turned into a leaf, missing, or a stray key, at the top or
            // one level down.
            let first = current.metadata.keys().next().cloned();
            match (round % 11, first) {
                (0, Some(key)) => {
                    current.metadata.insert(key, json!({"timestamp": 3}));
                }
                (1, Some(key)) => {
                    current.metadata.remove(&key);
                }
                (2, _) => {
                    current.metadata.insert("b".into(), json!({"timestamp": 4}));
                }
                (3, _) => {
                    for value in current.metadata.values_mut() {
                        if let Value::Object(map) = value
                            && !is_leaf_metadata(map)
                        {
                            map.insert("a".into(), json!([]));
                            map.remove("c");
                        }
                    }
                }
                _ => {}
            }
            let patch = g.object(3, true);
            assert_eq!(
                merge(Some(&current), Value::Object(patch.clone()), 2),
                merge_by_cloning(&current, &patch, 2),
                "state {:?} patch {:?}",
                current.state,
                patch
            );
            compared += 1;
        }
        assert!(compared > 10_000, "{compared}");
    }

    #[test]
    fn fresh_metadata_mirrors_the_value() {
        assert_eq!(
            fresh_metadata(
                &json!({"a": 1, "b": null, "c": {"d": "x", "e": {}}, "f": [1, [2, 3], {"g": true}], "h": []}),
                9
            ),
            json!({
                "a": {"timestamp": 9},
                "b": {"timestamp": 9},
                "c": {"d": {"timestamp": 9}, "e": {}},
                "f": [{"timestamp": 9}, [{"timestamp": 9}, {"timestamp": 9}], {"g": {"timestamp": 9}}],
                "h": []
            })
        );
    }

    #[test]
    fn leaf_metadata_is_recognised_unambiguously() {
        assert!(is_leaf_metadata(&obj(json!({"timestamp": 5}))));
        assert!(!is_leaf_metadata(&obj(json!({"timestamp": {"timestamp": 5}}))));
        assert!(!is_leaf_metadata(&obj(json!({"timestamp": [{"timestamp": 5}]}))));
        assert!(!is_leaf_metadata(&obj(
            json!({"timestamp": 5, "x": {"timestamp": 5}})
        )));
        assert!(!is_leaf_metadata(&obj(json!({}))));
    }

    #[test]
    fn merging_into_an_absent_section_creates_it() {
        assert_eq!(
            merge(
                None,
                json!({"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}),
                100
            ),
            Some(section(
                json!({"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}),
                json!({
                    "color": {"timestamp": 100},
                    "sequence": [{"timestamp": 100}, {"timestamp": 100}, {"timestamp": 100}]
                })
            ))
        );
    }

    #[test]
    fn updates_touch_only_named_keys_and_keep_other_timestamps() {
        let current = section(
            json!({"color": "RED", "power": "on", "lights": {"r": 1, "g": 2}}),
            json!({"color": {"timestamp": 1}, "power": {"timestamp": 1}, "lights": {"r": {"timestamp": 1}, "g": {"timestamp": 1}}}),
        );
        assert_eq!(
            merge(
                Some(&current),
                json!({"color": "BLUE", "lights": {"g": 5, "b": 9}}),
                2
            ),
            Some(section(
                json!({"color": "BLUE", "power": "on", "lights": {"r": 1, "g": 5, "b": 9}}),
                json!({
                    "color": {"timestamp": 2},
                    "power": {"timestamp": 1},
                    "lights": {"r": {"timestamp": 1}, "g": {"timestamp": 2}, "b": {"timestamp": 2}}
                })
            ))
        );
    }

    #[test]
    fn null_deletes_keys_and_their_metadata_at_any_depth() {
        let current = section(
            json!({"a": 1, "b": {"c": 2, "d": {"e": 3, "f": 4}}}),
            json!({"a": {"timestamp": 1}, "b": {"c": {"timestamp": 1}, "d": {"e": {"timestamp": 1}, "f": {"timestamp": 1}}}}),
        );
        assert_eq!(
            merge(
                Some(&current),
                json!({"a": null, "b": {"d": {"e": null}}, "zz": null}),
                2
            ),
            Some(section(
                json!({"b": {"c": 2, "d": {"f": 4}}}),
                json!({"b": {"c": {"timestamp": 1}, "d": {"f": {"timestamp": 1}}}})
            ))
        );
    }

    #[test]
    fn deleting_every_key_removes_the_section_but_keeps_emptied_objects() {
        let current = section(json!({"a": 1}), json!({"a": {"timestamp": 1}}));
        assert_eq!(merge(Some(&current), json!({"a": null}), 2), None);

        let current = section(
            json!({"lights": {"color": "red"}}),
            json!({"lights": {"color": {"timestamp": 1}}}),
        );
        assert_eq!(
            merge(Some(&current), json!({"lights": {"color": null}}), 2),
            Some(section(json!({"lights": {}}), json!({"lights": {}})))
        );
    }

    #[test]
    fn arrays_are_replaced_whole_with_per_element_metadata() {
        let current = section(
            json!({"colors": ["RED", "GREEN", "BLUE"]}),
            json!({"colors": [{"timestamp": 1}, {"timestamp": 1}, {"timestamp": 1}]}),
        );
        assert_eq!(
            merge(Some(&current), json!({"colors": ["RED"]}), 2),
            Some(section(
                json!({"colors": ["RED"]}),
                json!({"colors": [{"timestamp": 2}]})
            ))
        );
        assert_eq!(
            merge(Some(&current), json!({"colors": [{"r": 1}, []]}), 3),
            Some(section(
                json!({"colors": [{"r": 1}, []]}),
                json!({"colors": [{"r": {"timestamp": 3}}, []]})
            ))
        );
    }

    #[test]
    fn type_changes_replace_value_and_metadata() {
        let current = section(
            json!({"a": {"x": 1}, "b": 5, "c": [1, 2]}),
            json!({"a": {"x": {"timestamp": 1}}, "b": {"timestamp": 1}, "c": [{"timestamp": 1}, {"timestamp": 1}]}),
        );
        assert_eq!(
            merge(
                Some(&current),
                json!({"a": "flat", "b": {"y": 2, "z": null}, "c": {"k": [3]}}),
                2
            ),
            Some(section(
                json!({"a": "flat", "b": {"y": 2}, "c": {"k": [3]}}),
                json!({"a": {"timestamp": 2}, "b": {"y": {"timestamp": 2}}, "c": {"k": [{"timestamp": 2}]}})
            ))
        );
    }

    #[test]
    fn objects_of_only_deletions_create_nothing() {
        assert_eq!(merge(None, json!({"a": {"b": null}}), 2), None);
        let current = section(json!({"x": 5}), json!({"x": {"timestamp": 1}}));
        // Onto a scalar: the scalar stays.
        assert_eq!(
            merge(Some(&current), json!({"x": {"b": null}}), 2),
            Some(current.clone())
        );
        // Mixed: the all-null member is dropped, the rest is created.
        assert_eq!(
            merge(
                Some(&current),
                json!({"n": {"gone": {"b": null}, "kept": {}, "v": 1}}),
                2
            ),
            Some(section(
                json!({"x": 5, "n": {"kept": {}, "v": 1}}),
                json!({"x": {"timestamp": 1}, "n": {"kept": {}, "v": {"timestamp": 2}}})
            ))
        );
    }

    #[test]
    fn empty_objects_are_stored_when_written_and_are_no_ops_when_merged() {
        assert_eq!(
            merge(None, json!({"a": {}}), 2),
            Some(section(json!({"a": {}}), json!({"a": {}})))
        );
        let current = section(json!({"a": {"b": 1}}), json!({"a": {"b": {"timestamp": 1}}}));
        assert_eq!(merge(Some(&current), json!({"a": {}}), 2), Some(current.clone()));
        // An empty patch leaves the section as it is; onto no section it creates none.
        assert_eq!(merge(Some(&current), json!({}), 2), Some(current.clone()));
        assert_eq!(merge(None, json!({}), 2), None);
    }

    #[test]
    fn keep_and_remove() {
        let current = section(json!({"a": 1}), json!({"a": {"timestamp": 1}}));
        assert_eq!(
            merge_section(Some(&current), &SectionPatch::Keep, 2),
            Some(current.clone())
        );
        assert_eq!(merge_section(None, &SectionPatch::Keep, 2), None);
        assert_eq!(merge_section(Some(&current), &SectionPatch::Remove, 2), None);
    }

    #[test]
    fn state_objects_with_a_timestamp_key_keep_correct_metadata() {
        let created = merge(None, json!({"event": {"timestamp": 5}}), 1).unwrap();
        assert_eq!(
            created.metadata,
            obj(json!({"event": {"timestamp": {"timestamp": 1}}}))
        );
        let merged = merge(Some(&created), json!({"event": {"kind": "boot"}}), 2).unwrap();
        assert_eq!(
            merged,
            section(
                json!({"event": {"timestamp": 5, "kind": "boot"}}),
                json!({"event": {"timestamp": {"timestamp": 1}, "kind": {"timestamp": 2}}})
            )
        );
    }

    #[test]
    fn inconsistent_stored_metadata_is_rebuilt() {
        // Metadata says `a` is a leaf although the state holds an object.
        let current = section(json!({"a": {"x": 1}}), json!({"a": {"timestamp": 1}}));
        assert_eq!(
            merge(Some(&current), json!({"a": {"y": 2}}), 2),
            Some(section(
                json!({"a": {"x": 1, "y": 2}}),
                json!({"a": {"x": {"timestamp": 2}, "y": {"timestamp": 2}}})
            ))
        );
    }

    #[test]
    fn serialized_len_counts_compact_utf8_bytes() {
        assert_eq!(serialized_len(&obj(json!({}))), 2);
        assert_eq!(serialized_len(&obj(json!({"a": 1}))), 7);
        assert_eq!(
            serialized_len(&obj(json!({"a": "\u{e9}"}))),
            "{\"a\":\"\u{e9}\"}".len()
        );
        assert_eq!(
            serialized_len(&obj(json!({"q": "\"\n"}))),
            r#"{"q":"\"\n"}"#.len()
        );
        assert_eq!(
            serialized_len(&obj(json!({"f": 1.5, "l": [true, null]}))),
            r#"{"f":1.5,"l":[true,null]}"#.len()
        );
    }
}
