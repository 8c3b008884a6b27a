//! Streams: named, append-only, ordered logs of records that the `stream` rule action (and a
//! plugin's `stream-append` action) write and that consumers read back by offset or through
//! consumer groups — the role Kinesis plays for AWS IoT rules.
//!
//! The semantics are Redis Streams' (the Redis backend is a Redis Stream per stream; the
//! embedded and memory backends reproduce it):
//!
//! * a record's id is `{ms}-{seq}`: the append time in Unix milliseconds and a sequence within
//!   that millisecond; ids rise strictly within a stream, even if the clock steps back;
//! * a stream keeps its newest `max_len` records (older ones are trimmed on append);
//! * a consumer group has a cursor (the last id delivered to it) and a pending list (delivered,
//!   not yet acknowledged, with the consumer it went to); [`StreamStore::read_group`] delivers
//!   the records after the cursor and moves it; [`StreamStore::read_pending`] re-reads what a
//!   consumer was given and did not acknowledge (after a crash); [`StreamStore::ack`] removes
//!   records from the pending list.
//!
//! [`MemoryStreamStore`] is the reference implementation; `shoal-store` has the embedded and
//! Redis ones and a conformance suite that runs against all three.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

/// A record's id: append time (Unix ms) and a sequence number within that millisecond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Unix milliseconds.
    pub ms: u64,
    /// Sequence within `ms`.
    pub seq: u64,
}

impl StreamId {
    /// The id before every record (`0-0`).
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `{ms}-{seq}` (or `{ms}`, meaning `{ms}-0`).
    pub fn parse(text: &str) -> Result<StreamId, StreamError> {
        let bad = || StreamError::Invalid(format!("{text:?} is not a stream id (expected MS-SEQ)"));
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }

    /// The id an append at `now_ms` gets after `last`.
    pub fn next_after(last: Option<StreamId>, now_ms: u64) -> StreamId {
        match last {
            Some(l) if now_ms <= l.ms => StreamId {
                ms: l.ms,
                seq: l.seq.saturating_add(1),
            },
            _ => StreamId { ms: now_ms, seq: 0 },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What stream operations fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A name, id or argument is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such stream or group.
    #[error("{0}")]
    NotFound(String),
    /// The group exists already.
    #[error("{0}")]
    Exists(String),
    /// The backend is unreachable or failed.
    #[error("stream store unavailable: {0}")]
    Unavailable(String),
}

/// Checks a stream or group name: 1-128 characters from `[A-Za-z0-9_.-]`.
pub fn check_name(what: &str, name: &str) -> Result<(), StreamError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StreamError::Invalid(format!(
            "invalid {what} name {name:?}: use 1-128 characters from [A-Za-z0-9_.-]"
        )))
    }
}

/// A record to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// The stream (created by its first append).
    pub stream: String,
    /// The partition key (Kinesis's; kept with the record for consumers), may be empty.
    pub key: String,
    /// The record's bytes (usually a JSON document).
    pub data: Vec<u8>,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: StreamId,
    /// Its partition key (may be empty).
    pub key: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// A consumer group's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// The last id delivered to the group.
    pub last_delivered: StreamId,
    /// Records delivered and not acknowledged.
    pub pending: u64,
}

/// A stream's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its name.
    pub name: String,
    /// Records kept.
    pub length: u64,
    /// The oldest kept record's id.
    pub first_id: Option<StreamId>,
    /// The newest record's id (kept even when trimming removed it).
    pub last_id: Option<StreamId>,
    /// Its consumer groups, by name.
    pub groups: Vec<GroupInfo>,
}

/// Where a new consumer group starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStart {
    /// With the oldest kept record.
    Beginning,
    /// With the next record appended.
    End,
    /// With the first record after this id.
    After(StreamId),
}

/// Durable streams (see the module docs for the semantics every backend keeps).
#[async_trait]
pub trait StreamStore: Send + Sync + 'static {
    /// `memory`, `embedded`, `redis`.
    fn kind(&self) -> &'static str;

    /// Appends records in order (several streams may be mixed), trimming each stream to its
    /// newest `max_len` records; returns the ids given, in the same order.
    async fn append(&self, records: &[NewRecord], max_len: u64) -> Result<Vec<StreamId>, StreamError>;

    /// Every stream, by name.
    async fn list(&self) -> Result<Vec<StreamInfo>, StreamError>;

    /// One stream; `NotFound` if nothing was ever appended to it.
    async fn info(&self, stream: &str) -> Result<StreamInfo, StreamError>;

    /// Up to `count` records with ids strictly after `after` (from the oldest when `None`),
    /// oldest first. A stream that does not exist has no records.
    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> Result<Vec<Record>, StreamError>;

    /// Creates a consumer group (and the stream, empty, if it does not exist); `Exists` if it
    /// does.
    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<(), StreamError>;

    /// Deletes a consumer group; `NotFound` if there is none.
    async fn delete_group(&self, stream: &str, group: &str) -> Result<(), StreamError>;

    /// Delivers up to `count` records after the group's cursor to `consumer`: moves the cursor
    /// and adds them to the group's pending list. `NotFound` if the group does not exist.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError>;

    /// Up to `count` records delivered to `consumer` and not acknowledged, oldest first (records
    /// trimmed from the stream since are left out).
    async fn read_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError>;

    /// Acknowledges records; returns how many were pending.
    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> Result<u64, StreamError>;

    /// Deletes a stream and its groups; `NotFound` if there is none.
    async fn delete(&self, stream: &str) -> Result<(), StreamError>;
}

#[derive(Debug, Default)]
struct MemGroup {
    last: StreamId,
    /// id -> consumer.
    pending: BTreeMap<StreamId, String>,
}

#[derive(Debug, Default)]
struct MemStream {
    records: BTreeMap<StreamId, (String, Vec<u8>)>,
    last: Option<StreamId>,
    groups: BTreeMap<String, MemGroup>,
}

impl MemStream {
    fn info(&self, name: &str) -> StreamInfo {
        StreamInfo {
            name: name.to_string(),
            length: self.records.len() as u64,
            first_id: self.records.keys().next().copied(),
            last_id: self.last,
            groups: self
                .groups
                .iter()
                .map(|(g, s)| GroupInfo {
                    name: g.clone(),
                    last_delivered: s.last,
                    pending: s.pending.len() as u64,
                })
                .collect(),
        }
    }
}

/// Streams in memory (`--store memory`, tests): the reference implementation.
#[derive(Debug, Default)]
pub struct MemoryStreamStore {
    streams: parking_lot::Mutex<BTreeMap<String, MemStream>>,
}

impl MemoryStreamStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The error every backend gives for a stream that does not exist.
pub fn not_found_stream(stream: &str) -> StreamError {
    StreamError::NotFound(format!("no stream named {stream:?}"))
}

/// The error every backend gives for a consumer group that does not exist.
pub fn not_found_group(stream: &str, group: &str) -> StreamError {
    StreamError::NotFound(format!("stream {stream:?} has no consumer group {group:?}"))
}

/// Checks the stream names of a batch to append (one bad name refuses the whole batch).
pub fn check_records(records: &[NewRecord]) -> Result<(), StreamError> {
    records.iter().try_for_each(|r| check_name("stream", &r.stream))
}

#[async_trait]
impl StreamStore for MemoryStreamStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn append(&self, records: &[NewRecord], max_len: u64) -> Result<Vec<StreamId>, StreamError> {
        check_records(records)?;
        let now = shoal_broker::message::now_ms();
        let mut streams = self.streams.lock();
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            let s = streams.entry(r.stream.clone()).or_default();
            let id = StreamId::next_after(s.last, now);
            s.last = Some(id);
            s.records.insert(id, (r.key.clone(), r.data.clone()));
            while s.records.len() as u64 > max_len.max(1) {
                s.records.pop_first();
            }
            ids.push(id);
        }
        Ok(ids)
    }

    async fn list(&self) -> Result<Vec<StreamInfo>, StreamError> {
        Ok(self.streams.lock().iter().map(|(n, s)| s.info(n)).collect())
    }

    async fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        self.streams
            .lock()
            .get(stream)
            .map(|s| s.info(stream))
            .ok_or_else(|| not_found_stream(stream))
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        let streams = self.streams.lock();
        let Some(s) = streams.get(stream) else {
            return Ok(Vec::new());
        };
        let iter: Box<dyn Iterator<Item = (&StreamId, &(String, Vec<u8>))>> = match after {
            Some(a) => Box::new(
                s.records
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(s.records.iter()),
        };
        Ok(iter
            .take(count)
            .map(|(id, (key, data))| Record {
                id: *id,
                key: key.clone(),
                data: data.clone(),
            })
            .collect())
    }

    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<(), StreamError> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        let mut streams = self.streams.lock();
        let s = streams.entry(stream.to_string()).or_default();
        if s.groups.contains_key(group) {
            return Err(StreamError::Exists(format!(
                "stream {stream:?} already has a consumer group {group:?}"
            )));
        }
        let last = match start {
            GroupStart::Beginning => StreamId::ZERO,
            GroupStart::End => s.last.unwrap_or(StreamId::ZERO),
            GroupStart::After(id) => id,
        };
        s.groups.insert(
            group.to_string(),
            MemGroup {
                last,
                pending: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn delete_group(&self, stream: &str, group: &str) -> Result<(), StreamError> {
        let mut streams = self.streams.lock();
        streams
            .get_mut(stream)
            .and_then(|s| s.groups.remove(group))
            .map(|_| ())
            .ok_or_else(|| not_found_group(stream, group))
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        check_name("consumer", consumer)?;
        let mut streams = self.streams.lock();
        let s = streams
            .get_mut(stream)
            .ok_or_else(|| not_found_group(stream, group))?;
        let g = s
            .groups
            .get_mut(group)
            .ok_or_else(|| not_found_group(stream, group))?;
        let out: Vec<Record> = s
            .records
            .range((std::ops::Bound::Excluded(g.last), std::ops::Bound::Unbounded))
            .take(count)
            .map(|(id, (key, data))| Record {
                id: *id,
                key: key.clone(),
                data: data.clone(),
            })
            .collect();
        for r in &out {
            g.pending.insert(r.id, consumer.to_string());
        }
        if let Some(last) = out.last() {
            g.last = last.id;
        }
        Ok(out)
    }

    async fn read_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        let streams = self.streams.lock();
        let s = streams
            .get(stream)
            .ok_or_else(|| not_found_group(stream, group))?;
        let g = s
            .groups
            .get(group)
            .ok_or_else(|| not_found_group(stream, group))?;
        Ok(g.pending
            .iter()
            .filter(|(_, c)| c.as_str() == consumer)
            .filter_map(|(id, _)| {
                s.records.get(id).map(|(key, data)| Record {
                    id: *id,
                    key: key.clone(),
                    data: data.clone(),
                })
            })
            .take(count)
            .collect())
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> Result<u64, StreamError> {
        let mut streams = self.streams.lock();
        let g = streams
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
            .ok_or_else(|| not_found_group(stream, group))?;
        Ok(ids.iter().filter(|id| g.pending.remove(id).is_some()).count() as u64)
    }

    async fn delete(&self, stream: &str) -> Result<(), StreamError> {
        self.streams
            .lock()
            .remove(stream)
            .map(|_| ())
            .ok_or_else(|| not_found_stream(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_rise() {
        let id = StreamId::parse("1700000000000-3").unwrap();
        assert_eq!(id.to_string(), "1700000000000-3");
        assert_eq!(StreamId::parse("5").unwrap(), StreamId { ms: 5, seq: 0 });
        assert!(StreamId::parse("x-1").is_err());
        assert!(StreamId::parse("1-").is_err());
        assert_eq!(StreamId::next_after(None, 10), StreamId { ms: 10, seq: 0 });
        assert_eq!(
            StreamId::next_after(Some(StreamId { ms: 10, seq: 0 }), 10),
            StreamId { ms: 10, seq: 1 }
        );
        // The clock stepped back: the id still rises.
        assert_eq!(
            StreamId::next_after(Some(StreamId { ms: 10, seq: 4 }), 7),
            StreamId { ms: 10, seq: 5 }
        );
        assert!(check_name("stream", "fleet.telemetry-1_a").is_ok());
        assert!(check_name("stream", "a/b").is_err());
        assert!(check_name("stream", "").is_err());
    }
}
