//! Streams ([`StreamStore`]) in the embedded redb file, next to the broker's state.
//!
//! Tables (every name in a key was checked with [`check_name`] when it was written, so all of
//! them sort below [`NAME_END`], which bounds the range scans over names):
//!
//! * `stream_entries`: `(stream, ms, seq) -> key length (u32 LE) ++ key ++ data`: one stream's
//!   records are a contiguous range in id order, so trimming removes the first entries of that
//!   range and reading after an id is a range scan.
//! * `stream_meta`: `stream -> (last id, length)`: the last id survives trimming (ids keep
//!   rising) and the length is kept here so neither counting nor trimming scans the stream.
//! * `stream_groups`: `(stream, group) -> (cursor ms, cursor seq, pending count)`.
//! * `stream_pending`: `(stream, group, ms, seq) -> consumer`: a group's pending list.
//! * `stream_consumers`: `(stream, group, consumer, ms, seq) -> ()`: the same list by consumer,
//!   for [`StreamStore::read_pending`].
//!
//! Every operation is one redb transaction on tokio's blocking pool; writes (an append batch,
//! whatever streams it mixes, is one of them) commit with [`Durability::Immediate`], so `Ok`
//! means the change is on disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use shoal_rules::stream::{
    GroupInfo, GroupStart, NewRecord, Record, StreamError, StreamId, StreamInfo, StreamStore, check_name,
    check_records, not_found_group, not_found_stream,
};

/// `(stream, ms, seq) -> key length ++ key ++ data`.
pub(crate) const STREAM_ENTRIES: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("stream_entries");
/// A stream's meta row: the last id given (`(ms, seq)`, none before the first append) and the
/// number of records kept.
type Meta = (Option<(u64, u64)>, u64);
/// `stream -> (last id, length)`.
pub(crate) const STREAM_META: TableDefinition<&str, Meta> = TableDefinition::new("stream_meta");
/// `(stream, group) -> (cursor ms, cursor seq, pending count)`.
pub(crate) const STREAM_GROUPS: TableDefinition<(&str, &str), (u64, u64, u64)> =
    TableDefinition::new("stream_groups");
/// `(stream, group, ms, seq) -> consumer`.
pub(crate) const STREAM_PENDING: TableDefinition<(&str, &str, u64, u64), &str> =
    TableDefinition::new("stream_pending");
/// `(stream, group, consumer, ms, seq) -> ()`.
pub(crate) const STREAM_CONSUMERS: TableDefinition<(&str, &str, &str, u64, u64), ()> =
    TableDefinition::new("stream_consumers");

/// Sorts after every valid stream, group and consumer name (they are made of `[A-Za-z0-9_.-]`).
const NAME_END: &str = "\u{7f}";

/// Creates the stream tables (called when the file is opened, so readers always find them).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(STREAM_ENTRIES)?;
    txn.open_table(STREAM_META)?;
    txn.open_table(STREAM_GROUPS)?;
    txn.open_table(STREAM_PENDING)?;
    txn.open_table(STREAM_CONSUMERS)?;
    Ok(())
}

/// Streams in the embedded file (shares the [`Database`] with [`crate::EmbeddedStore`]; get one
/// from [`crate::EmbeddedStore::stream_store`]).
#[derive(Clone)]
pub struct EmbeddedStreamStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStreamStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStreamStore {
    pub(crate) fn new(db: Arc<Database>, path: Arc<PathBuf>) -> Self {
        EmbeddedStreamStore { db, path }
    }

    /// Runs `f` on the blocking pool (redb blocks on file I/O and `fsync`).
    async fn blocking<T, F>(&self, f: F) -> Result<T, StreamError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StreamError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StreamError::Unavailable(format!("embedded stream task failed: {e}")))?
    }
}

fn redb_err(what: &str, e: impl Into<redb::Error>) -> StreamError {
    StreamError::Unavailable(format!("redb {what}: {}", e.into()))
}

fn begin_write(db: &Database) -> Result<WriteTransaction, StreamError> {
    let mut txn = db.begin_write().map_err(|e| redb_err("begin write", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| redb_err("durability", e))?;
    Ok(txn)
}

fn commit(txn: WriteTransaction) -> Result<(), StreamError> {
    txn.commit().map_err(|e| redb_err("commit", e))
}

fn encode_entry(key: &str, data: &[u8]) -> Result<Vec<u8>, StreamError> {
    let len = u32::try_from(key.len())
        .map_err(|_| StreamError::Invalid("a record's partition key is too long".into()))?;
    let mut v = Vec::with_capacity(4 + key.len() + data.len());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(data);
    Ok(v)
}

fn decode_entry(id: StreamId, bytes: &[u8]) -> Result<Record, StreamError> {
    let damaged = || StreamError::Unavailable(format!("embedded stream record {id} is damaged"));
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(damaged)?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| damaged())?;
    if rest.len() < len {
        return Err(damaged());
    }
    let (key, data) = rest.split_at(len);
    Ok(Record {
        id,
        key: String::from_utf8(key.to_vec()).map_err(|_| damaged())?,
        data: data.to_vec(),
    })
}

fn id_of(pair: (u64, u64)) -> StreamId {
    StreamId {
        ms: pair.0,
        seq: pair.1,
    }
}

/// The smallest id after `id`, `None` if there is none.
pub(crate) fn successor(id: StreamId) -> Option<StreamId> {
    if id.seq < u64::MAX {
        Some(StreamId {
            ms: id.ms,
            seq: id.seq + 1,
        })
    } else if id.ms < u64::MAX {
        Some(StreamId {
            ms: id.ms + 1,
            seq: 0,
        })
    } else {
        None
    }
}

/// Up to `count` records of `stream` from `from` (inclusive), oldest first.
fn records_from(
    entries: &impl ReadableTable<(&'static str, u64, u64), &'static [u8]>,
    stream: &str,
    from: Option<StreamId>,
    count: usize,
) -> Result<Vec<Record>, StreamError> {
    let Some(from) = from else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if count == 0 {
        return Ok(out);
    }
    let rows = entries
        .range((stream, from.ms, from.seq)..=(stream, u64::MAX, u64::MAX))
        .map_err(|e| redb_err("read stream_entries", e))?;
    for row in rows.take(count) {
        let (k, v) = row.map_err(|e| redb_err("read stream_entries", e))?;
        let (_, ms, seq) = k.value();
        out.push(decode_entry(StreamId { ms, seq }, v.value())?);
    }
    Ok(out)
}

/// A stream's state from its meta row.
fn stream_info(
    entries: &impl ReadableTable<(&'static str, u64, u64), &'static [u8]>,
    groups: &impl ReadableTable<(&'static str, &'static str), (u64, u64, u64)>,
    stream: &str,
    last: Option<(u64, u64)>,
    length: u64,
) -> Result<StreamInfo, StreamError> {
    let first_id = match entries
        .range((stream, 0u64, 0u64)..=(stream, u64::MAX, u64::MAX))
        .map_err(|e| redb_err("read stream_entries", e))?
        .next()
    {
        Some(row) => {
            let (k, _) = row.map_err(|e| redb_err("read stream_entries", e))?;
            let (_, ms, seq) = k.value();
            Some(StreamId { ms, seq })
        }
        None => None,
    };
    let mut group_infos = Vec::new();
    for row in groups
        .range((stream, "")..(stream, NAME_END))
        .map_err(|e| redb_err("read stream_groups", e))?
    {
        let (k, v) = row.map_err(|e| redb_err("read stream_groups", e))?;
        let (ms, seq, pending) = v.value();
        group_infos.push(GroupInfo {
            name: k.value().1.to_string(),
            last_delivered: StreamId { ms, seq },
            pending,
        });
    }
    Ok(StreamInfo {
        name: stream.to_string(),
        length,
        first_id,
        last_id: last.map(id_of),
        groups: group_infos,
    })
}

/// Removes a group's pending list (both tables).
fn drop_pending(txn: &WriteTransaction, stream: &str, group: &str) -> Result<(), StreamError> {
    let mut pending = txn
        .open_table(STREAM_PENDING)
        .map_err(|e| redb_err("open stream_pending", e))?;
    pending
        .retain_in(
            (stream, group, 0u64, 0u64)..=(stream, group, u64::MAX, u64::MAX),
            |_, _| false,
        )
        .map_err(|e| redb_err("delete stream_pending", e))?;
    let mut consumers = txn
        .open_table(STREAM_CONSUMERS)
        .map_err(|e| redb_err("open stream_consumers", e))?;
    consumers
        .retain_in(
            (stream, group, "", 0u64, 0u64)..(stream, group, NAME_END, 0u64, 0u64),
            |_, _| false,
        )
        .map_err(|e| redb_err("delete stream_consumers", e))?;
    Ok(())
}

fn append(
    db: &Database,
    records: &[NewRecord],
    max_len: u64,
    now: u64,
) -> Result<Vec<StreamId>, StreamError> {
    let max_len = max_len.max(1);
    let txn = begin_write(db)?;
    let mut ids = Vec::with_capacity(records.len());
    {
        let mut entries = txn
            .open_table(STREAM_ENTRIES)
            .map_err(|e| redb_err("open stream_entries", e))?;
        let mut meta = txn
            .open_table(STREAM_META)
            .map_err(|e| redb_err("open stream_meta", e))?;
        // The batch's streams: last id and length, read once and written back once.
        let mut state: HashMap<&str, (Option<StreamId>, u64)> = HashMap::new();
        for r in records {
            let s = r.stream.as_str();
            let (last, length) = match state.get_mut(s) {
                Some(st) => st,
                None => {
                    let st = match meta.get(s).map_err(|e| redb_err("read stream_meta", e))? {
                        Some(m) => {
                            let (last, length) = m.value();
                            (last.map(id_of), length)
                        }
                        None => (None, 0),
                    };
                    state.entry(s).or_insert(st)
                }
            };
            let id = StreamId::next_after(*last, now);
            entries
                .insert((s, id.ms, id.seq), encode_entry(&r.key, &r.data)?.as_slice())
                .map_err(|e| redb_err("write stream_entries", e))?;
            *last = Some(id);
            *length += 1;
            ids.push(id);
        }
        for (s, (last, length)) in state {
            let mut length = length;
            if length > max_len {
                // Drop the oldest records: the first entries of the stream's range, read and
                // removed one by one, so this costs the number trimmed, not the stream's size.
                let excess = usize::try_from(length - max_len).unwrap_or(usize::MAX);
                let removed = entries
                    .extract_from_if((s, 0u64, 0u64)..=(s, u64::MAX, u64::MAX), |_, _| true)
                    .map_err(|e| redb_err("trim stream_entries", e))?;
                let mut n = 0u64;
                for row in removed.take(excess) {
                    row.map_err(|e| redb_err("trim stream_entries", e))?;
                    n += 1;
                }
                length -= n;
            }
            meta.insert(s, (last.map(|l| (l.ms, l.seq)), length))
                .map_err(|e| redb_err("write stream_meta", e))?;
        }
    }
    commit(txn)?;
    Ok(ids)
}

fn list(db: &Database) -> Result<Vec<StreamInfo>, StreamError> {
    let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
    let meta = txn
        .open_table(STREAM_META)
        .map_err(|e| redb_err("open stream_meta", e))?;
    let entries = txn
        .open_table(STREAM_ENTRIES)
        .map_err(|e| redb_err("open stream_entries", e))?;
    let groups = txn
        .open_table(STREAM_GROUPS)
        .map_err(|e| redb_err("open stream_groups", e))?;
    let mut out = Vec::new();
    for row in meta.iter().map_err(|e| redb_err("read stream_meta", e))? {
        let (k, v) = row.map_err(|e| redb_err("read stream_meta", e))?;
        let (last, length) = v.value();
        out.push(stream_info(&entries, &groups, k.value(), last, length)?);
    }
    Ok(out)
}

fn info(db: &Database, stream: &str) -> Result<StreamInfo, StreamError> {
    let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
    let meta = txn
        .open_table(STREAM_META)
        .map_err(|e| redb_err("open stream_meta", e))?;
    let Some(m) = meta.get(stream).map_err(|e| redb_err("read stream_meta", e))? else {
        return Err(not_found_stream(stream));
    };
    let (last, length) = m.value();
    let entries = txn
        .open_table(STREAM_ENTRIES)
        .map_err(|e| redb_err("open stream_entries", e))?;
    let groups = txn
        .open_table(STREAM_GROUPS)
        .map_err(|e| redb_err("open stream_groups", e))?;
    stream_info(&entries, &groups, stream, last, length)
}

fn range(
    db: &Database,
    stream: &str,
    after: Option<StreamId>,
    count: usize,
) -> Result<Vec<Record>, StreamError> {
    let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
    let entries = txn
        .open_table(STREAM_ENTRIES)
        .map_err(|e| redb_err("open stream_entries", e))?;
    let from = match after {
        Some(a) => successor(a),
        None => Some(StreamId::ZERO),
    };
    records_from(&entries, stream, from, count)
}

fn create_group(db: &Database, stream: &str, group: &str, start: GroupStart) -> Result<(), StreamError> {
    let txn = begin_write(db)?;
    {
        let mut meta = txn
            .open_table(STREAM_META)
            .map_err(|e| redb_err("open stream_meta", e))?;
        let mut groups = txn
            .open_table(STREAM_GROUPS)
            .map_err(|e| redb_err("open stream_groups", e))?;
        if groups
            .get((stream, group))
            .map_err(|e| redb_err("read stream_groups", e))?
            .is_some()
        {
            return Err(StreamError::Exists(format!(
                "stream {stream:?} already has a consumer group {group:?}"
            )));
        }
        let existing = meta
            .get(stream)
            .map_err(|e| redb_err("read stream_meta", e))?
            .map(|m| m.value());
        let last = match existing {
            Some((last, _)) => last.map(id_of),
            None => {
                meta.insert(stream, (None, 0))
                    .map_err(|e| redb_err("write stream_meta", e))?;
                None
            }
        };
        let cursor = match start {
            GroupStart::Beginning => StreamId::ZERO,
            GroupStart::End => last.unwrap_or(StreamId::ZERO),
            GroupStart::After(id) => id,
        };
        groups
            .insert((stream, group), (cursor.ms, cursor.seq, 0))
            .map_err(|e| redb_err("write stream_groups", e))?;
    }
    commit(txn)
}

fn delete_group(db: &Database, stream: &str, group: &str) -> Result<(), StreamError> {
    let txn = begin_write(db)?;
    {
        let mut groups = txn
            .open_table(STREAM_GROUPS)
            .map_err(|e| redb_err("open stream_groups", e))?;
        if groups
            .remove((stream, group))
            .map_err(|e| redb_err("delete stream_groups", e))?
            .is_none()
        {
            return Err(not_found_group(stream, group));
        }
    }
    drop_pending(&txn, stream, group)?;
    commit(txn)
}

fn read_group(
    db: &Database,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) -> Result<Vec<Record>, StreamError> {
    let txn = begin_write(db)?;
    let out;
    {
        let mut groups = txn
            .open_table(STREAM_GROUPS)
            .map_err(|e| redb_err("open stream_groups", e))?;
        let Some((ms, seq, mut pending_count)) = groups
            .get((stream, group))
            .map_err(|e| redb_err("read stream_groups", e))?
            .map(|g| g.value())
        else {
            return Err(not_found_group(stream, group));
        };
        let entries = txn
            .open_table(STREAM_ENTRIES)
            .map_err(|e| redb_err("open stream_entries", e))?;
        out = records_from(&entries, stream, successor(StreamId { ms, seq }), count)?;
        let Some(last) = out.last().map(|r| r.id) else {
            return Ok(out);
        };
        let mut pending = txn
            .open_table(STREAM_PENDING)
            .map_err(|e| redb_err("open stream_pending", e))?;
        let mut consumers = txn
            .open_table(STREAM_CONSUMERS)
            .map_err(|e| redb_err("open stream_consumers", e))?;
        for r in &out {
            let (ms, seq) = (r.id.ms, r.id.seq);
            let before = pending
                .insert((stream, group, ms, seq), consumer)
                .map_err(|e| redb_err("write stream_pending", e))?
                .map(|c| c.value().to_string());
            match before {
                // Cannot happen (the cursor only moves forward), but keep both tables in step.
                Some(c) => {
                    consumers
                        .remove((stream, group, c.as_str(), ms, seq))
                        .map_err(|e| redb_err("delete stream_consumers", e))?;
                }
                None => pending_count += 1,
            }
            consumers
                .insert((stream, group, consumer, ms, seq), ())
                .map_err(|e| redb_err("write stream_consumers", e))?;
        }
        groups
            .insert((stream, group), (last.ms, last.seq, pending_count))
            .map_err(|e| redb_err("write stream_groups", e))?;
    }
    commit(txn)?;
    Ok(out)
}

fn read_pending(
    db: &Database,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) -> Result<Vec<Record>, StreamError> {
    let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
    let groups = txn
        .open_table(STREAM_GROUPS)
        .map_err(|e| redb_err("open stream_groups", e))?;
    if groups
        .get((stream, group))
        .map_err(|e| redb_err("read stream_groups", e))?
        .is_none()
    {
        return Err(not_found_group(stream, group));
    }
    let consumers = txn
        .open_table(STREAM_CONSUMERS)
        .map_err(|e| redb_err("open stream_consumers", e))?;
    let entries = txn
        .open_table(STREAM_ENTRIES)
        .map_err(|e| redb_err("open stream_entries", e))?;
    let mut out = Vec::new();
    if count == 0 {
        return Ok(out);
    }
    for row in consumers
        .range((stream, group, consumer, 0u64, 0u64)..=(stream, group, consumer, u64::MAX, u64::MAX))
        .map_err(|e| redb_err("read stream_consumers", e))?
    {
        let (k, _) = row.map_err(|e| redb_err("read stream_consumers", e))?;
        let (_, _, _, ms, seq) = k.value();
        // Trimmed since it was delivered: left out.
        if let Some(v) = entries
            .get((stream, ms, seq))
            .map_err(|e| redb_err("read stream_entries", e))?
        {
            out.push(decode_entry(StreamId { ms, seq }, v.value())?);
            if out.len() >= count {
                break;
            }
        }
    }
    Ok(out)
}

fn ack(db: &Database, stream: &str, group: &str, ids: &[StreamId]) -> Result<u64, StreamError> {
    let txn = begin_write(db)?;
    let mut acked = 0u64;
    {
        let mut groups = txn
            .open_table(STREAM_GROUPS)
            .map_err(|e| redb_err("open stream_groups", e))?;
        let Some((ms, seq, pending_count)) = groups
            .get((stream, group))
            .map_err(|e| redb_err("read stream_groups", e))?
            .map(|g| g.value())
        else {
            return Err(not_found_group(stream, group));
        };
        let mut pending = txn
            .open_table(STREAM_PENDING)
            .map_err(|e| redb_err("open stream_pending", e))?;
        let mut consumers = txn
            .open_table(STREAM_CONSUMERS)
            .map_err(|e| redb_err("open stream_consumers", e))?;
        for id in ids {
            let removed = pending
                .remove((stream, group, id.ms, id.seq))
                .map_err(|e| redb_err("delete stream_pending", e))?
                .map(|c| c.value().to_string());
            if let Some(c) = removed {
                consumers
                    .remove((stream, group, c.as_str(), id.ms, id.seq))
                    .map_err(|e| redb_err("delete stream_consumers", e))?;
                acked += 1;
            }
        }
        if acked == 0 {
            return Ok(0);
        }
        groups
            .insert((stream, group), (ms, seq, pending_count.saturating_sub(acked)))
            .map_err(|e| redb_err("write stream_groups", e))?;
    }
    commit(txn)?;
    Ok(acked)
}

fn delete(db: &Database, stream: &str) -> Result<(), StreamError> {
    let txn = begin_write(db)?;
    let mut group_names = Vec::new();
    {
        let mut meta = txn
            .open_table(STREAM_META)
            .map_err(|e| redb_err("open stream_meta", e))?;
        if meta
            .remove(stream)
            .map_err(|e| redb_err("delete stream_meta", e))?
            .is_none()
        {
            return Err(not_found_stream(stream));
        }
        let mut entries = txn
            .open_table(STREAM_ENTRIES)
            .map_err(|e| redb_err("open stream_entries", e))?;
        entries
            .retain_in((stream, 0u64, 0u64)..=(stream, u64::MAX, u64::MAX), |_, _| false)
            .map_err(|e| redb_err("delete stream_entries", e))?;
        let mut groups = txn
            .open_table(STREAM_GROUPS)
            .map_err(|e| redb_err("open stream_groups", e))?;
        for row in groups
            .range((stream, "")..(stream, NAME_END))
            .map_err(|e| redb_err("read stream_groups", e))?
        {
            let (k, _) = row.map_err(|e| redb_err("read stream_groups", e))?;
            group_names.push(k.value().1.to_string());
        }
        for g in &group_names {
            groups
                .remove((stream, g.as_str()))
                .map_err(|e| redb_err("delete stream_groups", e))?;
        }
    }
    for g in &group_names {
        drop_pending(&txn, stream, g)?;
    }
    commit(txn)
}

#[async_trait]
impl StreamStore for EmbeddedStreamStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn append(&self, records: &[NewRecord], max_len: u64) -> Result<Vec<StreamId>, StreamError> {
        check_records(records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let records = records.to_vec();
        let now = shoal_broker::message::now_ms();
        self.blocking(move |db| append(db, &records, max_len, now)).await
    }

    async fn list(&self) -> Result<Vec<StreamInfo>, StreamError> {
        self.blocking(list).await
    }

    async fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        let stream = stream.to_string();
        self.blocking(move |db| info(db, &stream)).await
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.to_string();
        self.blocking(move |db| range(db, &stream, after, count)).await
    }

    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<(), StreamError> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        let (stream, group) = (stream.to_string(), group.to_string());
        self.blocking(move |db| create_group(db, &stream, &group, start))
            .await
    }

    async fn delete_group(&self, stream: &str, group: &str) -> Result<(), StreamError> {
        let (stream, group) = (stream.to_string(), group.to_string());
        self.blocking(move |db| delete_group(db, &stream, &group)).await
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        check_name("consumer", consumer)?;
        let (stream, group, consumer) = (stream.to_string(), group.to_string(), consumer.to_string());
        self.blocking(move |db| read_group(db, &stream, &group, &consumer, count))
            .await
    }

    async fn read_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        let (stream, group, consumer) = (stream.to_string(), group.to_string(), consumer.to_string());
        self.blocking(move |db| read_pending(db, &stream, &group, &consumer, count))
            .await
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> Result<u64, StreamError> {
        let (stream, group, ids) = (stream.to_string(), group.to_string(), ids.to_vec());
        self.blocking(move |db| ack(db, &stream, &group, &ids)).await
    }

    async fn delete(&self, stream: &str) -> Result<(), StreamError> {
        let stream = stream.to_string();
        self.blocking(move |db| delete(db, &stream)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let id = StreamId { ms: 5, seq: 1 };
        #[allow(clippy::unwrap_used)]
        let bytes = encode_entry("k€y", b"\0\xffdata").unwrap();
        assert_eq!(
            decode_entry(id, &bytes),
            Ok(Record {
                id,
                key: "k€y".into(),
                data: b"\0\xffdata".to_vec(),
            })
        );
        assert!(decode_entry(id, b"\x05\0\0\0ab").is_err());
        assert!(decode_entry(id, b"ab").is_err());
        assert_eq!(
            successor(StreamId { ms: 1, seq: u64::MAX }),
            Some(StreamId { ms: 2, seq: 0 })
        );
        assert_eq!(
            successor(StreamId {
                ms: u64::MAX,
                seq: u64::MAX
            }),
            None
        );
    }
}
