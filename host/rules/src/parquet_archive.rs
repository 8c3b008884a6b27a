//! Writes a batch of archived JSON documents as one Parquet file (one row group, Snappy
//! pages), with a schema inferred from the batch:
//!
//! - each top-level key of the documents is a column, columns in alphabetical order; every
//!   column is optional (a document without the key, or with `null`, gives a null);
//! - a column whose values are all booleans is `BOOLEAN`; all integers (that fit in 64 bits,
//!   signed) `INT64`; all numbers, some of them fractional or beyond `i64`, `DOUBLE`; all
//!   strings `BYTE_ARRAY` (`STRING`); anything else (objects, arrays, a mix of types) is
//!   `BYTE_ARRAY` (`JSON`) holding each value's JSON text;
//! - a column that is null in every row is `INT32` (`UNKNOWN`, the null type), which readers
//!   unify with any type when they read several files together.
//!
//! A document that is not an object (a `SELECT VALUE` of a number, an array...) is the row
//! `{"value": document}`. A batch whose documents are all empty objects has the one column
//! `value`, null throughout (a Parquet file needs a column to count rows). Integers beyond
//! 2^53 in a column that also holds fractions lose precision as `DOUBLE`.
//!
//! [`read`] turns such a file back into JSON documents.

use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::{Map, Value};

/// One archived document, as a row.
pub type Row = Map<String, Value>;

/// Turns a selected document into a row.
pub fn row_of(doc: Value) -> Row {
    match doc {
        Value::Object(map) => map,
        other => {
            let mut row = Map::new();
            row.insert("value".into(), other);
            row
        }
    }
}

/// What a column holds, from the values seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Json,
}

impl Kind {
    fn with(self, v: &Value) -> Kind {
        let this = match v {
            Value::Null => return self,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::Str,
            Value::Array(_) | Value::Object(_) => Kind::Json,
        };
        match (self, this) {
            (Kind::Null, k) => k,
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Json,
        }
    }

    fn column(self, name: &str) -> parquet::errors::Result<Type> {
        let (physical, logical) = match self {
            Kind::Null => (Physical::INT32, Some(LogicalType::Unknown)),
            Kind::Bool => (Physical::BOOLEAN, None),
            Kind::Int => (Physical::INT64, None),
            Kind::Float => (Physical::DOUBLE, None),
            Kind::Str => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
            Kind::Json => (Physical::BYTE_ARRAY, Some(LogicalType::Json)),
        };
        Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .build()
    }
}

/// The columns of a batch: names (sorted) and their kinds.
fn infer(rows: &[Row]) -> Vec<(&str, Kind)> {
    let mut columns: Vec<(&str, Kind)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for row in rows {
        // Rows of one rule mostly share their keys, in the same order: try the column after
        // the previous key's before hashing.
        let mut next = 0;
        for (key, value) in row {
            let i = match columns.get(next) {
                Some((name, _)) if *name == key.as_str() => next,
                _ => *index.entry(key.as_str()).or_insert_with(|| {
                    columns.push((key.as_str(), Kind::Null));
                    columns.len() - 1
                }),
            };
            columns[i].1 = columns[i].1.with(value);
            next = i + 1;
        }
    }
    if columns.is_empty() {
        columns.push(("value", Kind::Null));
    }
    columns.sort_unstable_by(|a, b| a.0.cmp(b.0));
    columns
}

/// Writes `rows` as a Parquet file to `out`. Returns the number of rows written.
pub fn write<W: std::io::Write + Send>(rows: &[Row], out: W) -> parquet::errors::Result<usize> {
    let columns = infer(rows);
    let fields = columns
        .iter()
        .map(|(name, kind)| kind.column(name).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Type::group_type_builder("shoal_archive")
        .with_fields(fields)
        .build()?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(concat!("shoal ", env!("CARGO_PKG_VERSION")).into())
        .build();
    let mut writer = SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?;
    let mut group = writer.next_row_group()?;
    // The batch column by column, in one pass over each row: the key of a row's next member is
    // usually the next column (keys and columns are both sorted), else found by binary search.
    // Each column lists its (row, value) pairs, so memory follows the values present, not
    // columns × rows (documents whose keys vary would make that huge).
    let mut cells: Vec<Vec<(usize, &Value)>> = vec![Vec::new(); columns.len()];
    for (r, row) in rows.iter().enumerate() {
        let mut next = 0;
        for (key, value) in row {
            let at = match columns.get(next) {
                Some((name, _)) if *name == key.as_str() => next,
                _ => columns
                    .binary_search_by(|(name, _)| (*name).cmp(key.as_str()))
                    .map_err(|_| {
                        parquet::errors::ParquetError::General(format!("key {key:?} has no column"))
                    })?,
            };
            next = at + 1;
            if !value.is_null()
                && let Some(column) = cells.get_mut(at)
            {
                column.push((r, value));
            }
        }
    }
    let mut at = 0;
    while let Some(mut column) = group.next_column()? {
        let (Some(&(name, kind)), Some(column_cells)) = (columns.get(at), cells.get(at)) else {
            return Err(parquet::errors::ParquetError::General(
                "more columns than the schema has".into(),
            ));
        };
        at += 1;
        let values = column_cells.iter().map(|&(_, v)| Some(v));
        let mut levels = vec![0i16; rows.len()];
        for &(r, _) in column_cells {
            levels[r] = 1;
        }
        match (column.untyped(), kind) {
            (ColumnWriter::Int32ColumnWriter(w), Kind::Null) => {
                w.write_batch(&[], Some(&levels), None)?;
            }
            (ColumnWriter::BoolColumnWriter(w), Kind::Bool) => {
                let v: Vec<bool> = values
                    .flatten()
                    .map(|v| v.as_bool().unwrap_or_default())
                    .collect();
                w.write_batch(&v, Some(&levels), None)?;
            }
            (ColumnWriter::Int64ColumnWriter(w), Kind::Int) => {
                let v: Vec<i64> = values.flatten().map(|v| v.as_i64().unwrap_or_default()).collect();
                w.write_batch(&v, Some(&levels), None)?;
            }
            (ColumnWriter::DoubleColumnWriter(w), Kind::Float) => {
                let v: Vec<f64> = values.flatten().map(|v| v.as_f64().unwrap_or_default()).collect();
                w.write_batch(&v, Some(&levels), None)?;
            }
            (ColumnWriter::ByteArrayColumnWriter(w), Kind::Str) => {
                let v: Vec<ByteArray> = values
                    .flatten()
                    .map(|v| ByteArray::from(v.as_str().unwrap_or_default()))
                    .collect();
                w.write_batch(&v, Some(&levels), None)?;
            }
            (ColumnWriter::ByteArrayColumnWriter(w), Kind::Json) => {
                let v: Vec<ByteArray> = values
                    .flatten()
                    .map(|v| ByteArray::from(v.to_string().into_bytes()))
                    .collect();
                w.write_batch(&v, Some(&levels), None)?;
            }
            _ => {
                return Err(parquet::errors::ParquetError::General(format!(
                    "column {name:?}: the writer does not match the schema"
                )));
            }
        }
        column.close()?;
    }
    group.close()?;
    let written = writer.close()?.file_metadata().num_rows();
    if usize::try_from(written).ok() != Some(rows.len()) {
        return Err(parquet::errors::ParquetError::General(format!(
            "wrote {written} rows of {}",
            rows.len()
        )));
    }
    Ok(rows.len())
}

/// Reads an archive Parquet file back as JSON documents, one per row: a `JSON` column's text
/// is parsed back into its value, and a null (or absent) column is left out of the row's
/// object, as it was missing from the document archived. (A document that was not an object
/// comes back as `{"value": ...}`.)
pub fn read(path: &std::path::Path) -> Result<Vec<Value>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
    let json_columns: std::collections::HashSet<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .filter(|c| matches!(c.logical_type_ref(), Some(LogicalType::Json)))
        .map(|c| c.name().to_string())
        .collect();
    let mut docs = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        let mut doc = Map::new();
        for (name, field) in row.get_column_iter() {
            let value = match field {
                Field::Null => continue,
                Field::Bool(b) => Value::Bool(*b),
                Field::Int(n) => Value::from(*n),
                Field::Long(n) => Value::from(*n),
                Field::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
                Field::Str(s) if json_columns.contains(name) => {
                    serde_json::from_str(s).map_err(|e| format!("column {name:?}: {e}"))?
                }
                Field::Str(s) => Value::String(s.clone()),
                other => return Err(format!("column {name:?}: unexpected {other:?}")),
            };
            doc.insert(name.clone(), value);
        }
        docs.push(Value::Object(doc));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use serde_json::json;

    fn rows(docs: Vec<Value>) -> Vec<Row> {
        docs.into_iter().map(row_of).collect()
    }

    #[test]
    fn kinds_follow_the_values() {
        let batch = rows(vec![
            json!({"b": true, "i": 1, "f": 1, "s": "x", "o": {"k": 1}, "m": 1, "n": null}),
            json!({"b": false, "i": -2, "f": 2.5, "s": "y", "o": [1], "m": "one"}),
            json!({"i": null, "big": 18_446_744_073_709_551_615_u64}),
        ]);
        let kinds: Vec<(&str, Kind)> = infer(&batch);
        let get = |name: &str| kinds.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
        assert_eq!(get("b"), Some(Kind::Bool));
        assert_eq!(get("i"), Some(Kind::Int));
        assert_eq!(get("f"), Some(Kind::Float));
        assert_eq!(get("s"), Some(Kind::Str));
        assert_eq!(get("o"), Some(Kind::Json));
        assert_eq!(get("m"), Some(Kind::Json));
        assert_eq!(get("n"), Some(Kind::Null));
        assert_eq!(get("big"), Some(Kind::Float));
        assert_eq!(kinds.len(), 8);
        let names: Vec<&str> = kinds.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["b", "big", "f", "i", "m", "n", "o", "s"]);
        // No key at all: one null column, so the file still counts its rows.
        assert_eq!(infer(&rows(vec![json!({}), json!({})])), [("value", Kind::Null)]);
        assert_eq!(row_of(json!(5)), rows(vec![json!({"value": 5})]).remove(0));
    }

    #[test]
    fn a_written_file_reads_back_row_by_row() {
        let batch = rows(vec![
            json!({"temp": -18.5, "truck": "t1", "door": false, "n": 1, "tags": ["a"], "none": null}),
            json!({"truck": "t2", "n": 2, "extra": {"x": 1}}),
            json!("not an object"),
        ]);
        let mut bytes = Vec::new();
        assert_eq!(write(&batch, &mut bytes).unwrap(), 3);
        assert_eq!(&bytes[..4], b"PAR1");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), 3);
        let names: Vec<String> = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        assert_eq!(names.len(), 8, "{names:?}");
        let read: Vec<Vec<(String, Field)>> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                r.unwrap()
                    .get_column_iter()
                    .map(|(n, f)| (n.clone(), f.clone()))
                    .collect()
            })
            .collect();
        let field = |row: usize, name: &str| {
            read[row]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(field(0, "temp"), Field::Double(-18.5));
        assert_eq!(field(0, "truck"), Field::Str("t1".into()));
        assert_eq!(field(0, "door"), Field::Bool(false));
        assert_eq!(field(0, "n"), Field::Long(1));
        assert_eq!(field(0, "tags"), Field::Str("[\"a\"]".into()));
        assert_eq!(field(0, "none"), Field::Null);
        assert_eq!(field(0, "extra"), Field::Null);
        assert_eq!(field(1, "temp"), Field::Null);
        assert_eq!(field(1, "extra"), Field::Str("{\"x\":1}".into()));
        assert_eq!(field(2, "value"), Field::Str("not an object".into()));
        assert_eq!(field(2, "truck"), Field::Null);
    }

    #[test]
    fn rows_of_empty_objects_are_counted_and_read_back() {
        let batch = rows(vec![json!({}), json!({}), json!({})]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        assert_eq!(write(&batch, std::fs::File::create(&path).unwrap()).unwrap(), 3);
        assert_eq!(read(&path).unwrap(), [json!({}), json!({}), json!({})]);
    }

    #[test]
    fn read_gives_back_the_documents_written() {
        let docs = vec![
            json!({"temp": -18.5, "truck": "t1", "door": false, "n": 1, "tags": ["a", {"b": null}]}),
            json!({"truck": "t2", "n": 2, "extra": {"x": 1}, "mixed": 1}),
            json!({"mixed": "one", "s": "line\nbreak \"quoted\""}),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.parquet");
        write(&rows(docs.clone()), std::fs::File::create(&path).unwrap()).unwrap();
        assert_eq!(read(&path).unwrap(), docs);
        assert!(read(&dir.path().join("missing.parquet")).is_err());
        std::fs::write(dir.path().join("junk.parquet"), b"PAR1 not really").unwrap();
        assert!(read(&dir.path().join("junk.parquet")).is_err());
    }

    #[test]
    fn an_empty_batch_is_a_valid_file() {
        let mut bytes = Vec::new();
        assert_eq!(write(&[], &mut bytes).unwrap(), 0);
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }
}
