//! Small JSON helpers for configuration-driven plugins.

use std::borrow::Cow;

use serde_json::Value;

mod scan;

/// The value at `path` inside `value`: a dotted path (`sensors.temp`, `readings.0.value`,
/// array elements by index) or a JSON Pointer (`/sensors/temp`). `None` when any step is
/// missing.
///
/// ```
/// # use shoal_sdk::serde_json::json;
/// let v = json!({"sensors": {"temp": -3}, "readings": [{"v": 1}]});
/// assert_eq!(shoal_sdk::json::path(&v, "sensors.temp"), Some(&json!(-3)));
/// assert_eq!(shoal_sdk::json::path(&v, "readings.0.v"), Some(&json!(1)));
/// assert_eq!(shoal_sdk::json::path(&v, "/sensors/temp"), Some(&json!(-3)));
/// assert_eq!(shoal_sdk::json::path(&v, "sensors.humidity"), None);
/// ```
pub fn path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.starts_with('/') || path.is_empty() {
        return value.pointer(path);
    }
    path.split('.').try_fold(value, |v, step| match v {
        Value::Object(map) => map.get(step),
        Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Parses `json` and returns the values at `paths` (same syntax as [`path`]), in order, without
/// building the rest of the document: everything else is checked for syntax and skipped. For
/// a few fields of a larger payload this is several times cheaper than parsing a whole
/// [`Value`] (no map or string allocations for the fields you skip). Invalid JSON is an error;
/// a missing field is `None`.
///
/// ```
/// let payload = br#"{"temp": -3.5, "meta": {"fw": "2.1", "tags": ["a", "b"]}, "big": [1, 2, 3]}"#;
/// let got = shoal_sdk::json::select(payload, &["temp", "meta.tags.1", "/meta/fw", "nope"]).unwrap();
/// assert_eq!(got, [Some((-3.5).into()), Some("b".into()), Some("2.1".into()), None]);
/// ```
pub fn select(json: &[u8], paths: &[&str]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    Paths::new(paths).select(json)
}

/// Paths split once, for [`Paths::select`] on every message: the same as [`select`] without
/// splitting the paths again per call. Build it in `init`.
///
/// ```
/// let paths = shoal_sdk::json::Paths::new(&["temp", "meta.fw"]);
/// let got = paths.select(br#"{"temp": -3.5, "meta": {"fw": "2.1"}}"#).unwrap();
/// assert_eq!(got, [Some((-3.5).into()), Some("2.1".into())]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    steps: Vec<Vec<String>>,
    /// Each step as an array index (`None` when it is not one), read by `usize`'s parser (so
    /// `+1` and `01` are 1), as [`path`] reads dotted paths; [`path`] hands JSON Pointers to
    /// serde_json, which is stricter about indices.
    index: Vec<Vec<Option<usize>>>,
}

impl Paths {
    /// Splits `paths` (the syntax of [`path`]).
    pub fn new(paths: &[&str]) -> Paths {
        let steps: Vec<Vec<String>> = paths
            .iter()
            .map(|p| segments(p).into_iter().map(Cow::into_owned).collect())
            .collect();
        let index = steps
            .iter()
            .map(|p| p.iter().map(|step| step.parse::<usize>().ok()).collect())
            .collect();
        Paths { steps, index }
    }

    /// How many paths there are.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The values at the paths in `json`, in order, as [`select`] returns them.
    pub fn select(&self, json: &[u8]) -> Result<Vec<Option<Value>>, serde_json::Error> {
        let mut out = Vec::new();
        self.select_into(json, &mut out)?;
        Ok(out)
    }

    /// [`Paths::select`] into `out` (cleared first, then one entry per path), so a plugin
    /// that keeps the vector between messages allocates nothing for it. On an error `out`
    /// holds one `None` per path.
    ///
    /// ```
    /// let paths = shoal_sdk::json::Paths::new(&["temp"]);
    /// let mut values = Vec::new();
    /// paths.select_into(br#"{"temp": -3.5}"#, &mut values).unwrap();
    /// assert_eq!(values, [Some((-3.5).into())]);
    /// assert!(paths.select_into(b"{", &mut values).is_err());
    /// assert_eq!(values, [None]);
    /// ```
    pub fn select_into(&self, json: &[u8], out: &mut Vec<Option<Value>>) -> Result<(), serde_json::Error> {
        out.clear();
        out.resize(self.steps.len(), None);
        if scan::select(self, json, out).is_some() {
            return Ok(());
        }
        // The byte scanner declined (invalid JSON, or something it leaves to serde_json, such
        // as an escaped key): serde_json decides, and words the error.
        out.iter_mut().for_each(|v| *v = None);
        let outcome = self.select_with_serde(json, out);
        if outcome.is_err() {
            out.iter_mut().for_each(|v| *v = None);
        }
        outcome
    }

    /// [`Paths::select`] through serde_json's deserializer: the reference the byte scanner
    /// must agree with, and what answers whenever the scanner declines.
    fn select_with_serde(&self, json: &[u8], out: &mut [Option<Value>]) -> Result<(), serde_json::Error> {
        if std::str::from_utf8(json).is_err() {
            // JSON is UTF-8 throughout (RFC 8259), but serde_json skips the strings it does not
            // keep without checking them; its full parse says where the document goes wrong.
            return Err(match serde_json::from_slice::<Value>(json) {
                Err(e) => e,
                Ok(_) => <serde_json::Error as serde::de::Error>::custom("the document is not UTF-8"),
            });
        }
        if self.steps.is_empty() {
            // Nothing to take, but the payload must still be JSON.
            serde_json::from_slice::<serde::de::IgnoredAny>(json)?;
        }
        // The paths a step is wanted by are a bit set, so walking allocates nothing; more than
        // 64 paths take one pass per 64.
        for (n, chunk) in self.steps.chunks(64).enumerate() {
            let mut de = serde_json::Deserializer::from_slice(json);
            serde::de::DeserializeSeed::deserialize(
                Select {
                    paths: chunk,
                    wanted: all(chunk.len()),
                    depth: 0,
                    out: &mut out[n * 64..],
                },
                &mut de,
            )?;
            de.end()?;
        }
        Ok(())
    }
}

/// The set of the first `n` (at most 64) paths.
fn all(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The indices in a set, lowest first.
fn members(mut set: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (set != 0).then(|| {
            let i = set.trailing_zeros() as usize;
            set &= set - 1;
            i
        })
    })
}

/// The value at the remaining `steps` of a path inside `value`, copied.
fn resolve(value: &Value, steps: &[String]) -> Option<Value> {
    steps
        .iter()
        .try_fold(value, |v, step| match v {
            Value::Object(map) => map.get(step.as_str()),
            Value::Array(items) => step.parse::<usize>().ok().and_then(|n| items.get(n)),
            _ => None,
        })
        .cloned()
}

/// A path's steps: JSON Pointer (`/a/b`, with `~1` and `~0` escapes) or dotted (`a.b`).
/// Borrowed from `path` unless a step has an escape.
fn segments(path: &str) -> Vec<Cow<'_, str>> {
    if path.is_empty() {
        Vec::new()
    } else if let Some(pointer) = path.strip_prefix('/') {
        pointer
            .split('/')
            .map(|s| match s.contains('~') {
                true => Cow::Owned(s.replace("~1", "/").replace("~0", "~")),
                false => Cow::Borrowed(s),
            })
            .collect()
    } else {
        path.split('.').map(Cow::Borrowed).collect()
    }
}

/// Walks one JSON value on behalf of the `wanted` paths that reach it at `depth`.
struct Select<'p, 'o> {
    paths: &'p [Vec<String>],
    wanted: u64,
    depth: usize,
    out: &'o mut [Option<Value>],
}

impl<'de, 'p> serde::de::DeserializeSeed<'de> for Select<'p, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        if members(self.wanted).any(|i| self.paths[i].len() == self.depth) {
            // A path ends here: build this value once and answer every path below it from it.
            let value = <Value as serde::Deserialize>::deserialize(de)?;
            for i in members(self.wanted) {
                self.out[i] = resolve(&value, &self.paths[i][self.depth..]);
            }
            return Ok(());
        }
        de.deserialize_any(self)
    }
}

impl<'de, 'p> serde::de::Visitor<'de> for Select<'p, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Select {
            paths,
            wanted,
            depth,
            out,
        } = self;
        while let Some(hit) = map.next_key_seed(KeyMatch { paths, wanted, depth })? {
            match hit {
                Some(key_of) => {
                    let step = &paths[key_of][depth];
                    let below = members(wanted)
                        .filter(|&i| &paths[i][depth] == step)
                        .fold(0u64, |set, i| set | 1 << i);
                    map.next_value_seed(Select {
                        paths,
                        wanted: below,
                        depth: depth + 1,
                        out: &mut *out,
                    })?;
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Select {
            paths,
            wanted,
            depth,
            out,
        } = self;
        let mut index = 0usize;
        loop {
            let below = members(wanted)
                .filter(|&i| paths[i][depth].parse() == Ok(index))
                .fold(0u64, |set, i| set | 1 << i);
            let more = if below == 0 {
                seq.next_element::<serde::de::IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Select {
                    paths,
                    wanted: below,
                    depth: depth + 1,
                    out: &mut *out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    // A scalar where a path wanted to go deeper: those paths stay `None`.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Reads an object key and says which wanted path (by index) takes that step, without
/// allocating the key.
struct KeyMatch<'a> {
    paths: &'a [Vec<String>],
    wanted: u64,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(members(self.wanted).find(|&i| self.paths[i][self.depth] == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn select_agrees_with_path() {
        let doc = json!({
            "a": {"b": [10, {"c": "x"}], "d/e": 1, "t~": 2},
            "n": null, "s": "str", "dup": 1, "arr": [[0, 1], [2, 3]]
        });
        let text = doc.to_string();
        let paths = [
            "a.b.1.c", "a.b.0", "/a/d~1e", "/a/t~0", "a", "n", "s.x", "arr.1.0", "missing", "a.b.7", "",
        ];
        let got = select(text.as_bytes(), &paths).unwrap();
        for (p, g) in paths.iter().zip(&got) {
            let want = if let Some(ptr) = p.strip_prefix('/') {
                doc.pointer(&format!("/{ptr}"))
            } else {
                path(&doc, p)
            };
            assert_eq!(g.as_ref(), want, "{p}");
        }
        assert_eq!(
            select(br#"{"dup": 1, "dup": 2}"#, &["dup"]).unwrap(),
            [Some(json!(2))],
            "last wins"
        );
        assert!(select(b"{\"a\": 1", &["a"]).is_err());
        assert!(select(b"{\"a\": 1} x", &["a"]).is_err(), "trailing garbage");
        assert!(
            select(br#"{"a": [1, }"#, &["b"]).is_err(),
            "skipped parts are still checked"
        );
        assert_eq!(select(b"3", &["a"]).unwrap(), [None]);
        assert!(select(b"{", &[]).is_err(), "no paths: still checked");
        assert!(
            select(b"{\"a\": 1, \"b\": \"\xff\"}", &["a"]).is_err(),
            "a skipped string must be UTF-8 too"
        );
        assert_eq!(select(b"{}", &[]).unwrap(), []);
    }

    #[test]
    fn more_than_64_paths() {
        let doc =
            json!({"k": (0..100).map(|i| (format!("f{i}"), json!(i))).collect::<serde_json::Map<_, _>>()});
        let names: Vec<String> = (0..130).map(|i| format!("k.f{}", i % 100)).collect();
        let paths: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = select(doc.to_string().as_bytes(), &paths).unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &Some(json!(i % 100)), "{i}");
        }
        let reused = Paths::new(&paths);
        assert_eq!(reused.len(), 130);
        assert_eq!(reused.select(doc.to_string().as_bytes()).unwrap(), got);
    }
}
