//! Streams ([`StreamStore`]) in Redis: each stream is a Redis Stream, so the semantics are
//! Redis's own and other Redis clients can read them too.
//!
//! Keys, under the store's prefix:
//!
//! * `{prefix}:stream:{name}`: the Redis Stream; every entry has the fields `k` (the partition
//!   key) and `d` (the data bytes). Appends use exact trimming (`XADD … MAXLEN n`, not `~`), so
//!   a stream keeps exactly its newest `n` records, as on the other backends.
//! * `{prefix}:streams`: a set of the stream names, for [`StreamStore::list`]. A name is added
//!   before its stream is written, so a failure in between leaves at most a name without a
//!   stream, which `list` skips.
//!
//! Consumer groups are Redis consumer groups (`XGROUP`, `XREADGROUP`, `XACK`). An append batch
//! is one pipeline (one round trip, not a transaction). Redis errors and timeouts are
//! [`StreamError::Unavailable`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use redis::Value;
use redis::aio::ConnectionManager;
use shoal_rules::stream::{
    GroupInfo, GroupStart, NewRecord, Record, StreamError, StreamId, StreamInfo, StreamStore, check_name,
    check_records, not_found_group, not_found_stream,
};

use crate::embedded_streams::successor;
use crate::redis_store::call;

/// How many streams [`StreamStore::list`] describes per pipelined round trip.
const LIST_CHUNK: usize = 128;

/// Streams in Redis, on the [`ConnectionManager`] of a [`crate::RedisStore`] (get one from
/// [`crate::RedisStore::stream_store`]).
#[derive(Clone)]
pub struct RedisStreamStore {
    conn: ConnectionManager,
    prefix: String,
    names_key: String,
}

impl std::fmt::Debug for RedisStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A reply that does not have the shape the command returns.
fn unexpected(what: &str, v: &Value) -> StreamError {
    let mut shown = format!("{v:?}");
    if shown.len() > 200 {
        let mut end = 200;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    StreamError::Unavailable(format!("redis {what}: unexpected reply {shown}"))
}

/// The server's error code (`NOGROUP`, `BUSYGROUP`, ...) if `v` is an error reply.
fn error_code(v: &Value) -> Option<&str> {
    match v {
        Value::ServerError(e) => Some(e.code()),
        _ => None,
    }
}

/// `v`, or [`StreamError::Unavailable`] if it is an error reply.
fn ok(what: &str, v: Value) -> Result<Value, StreamError> {
    match v {
        Value::ServerError(e) => Err(StreamError::Unavailable(format!(
            "redis {what}: {} {}",
            e.code(),
            e.details().unwrap_or("")
        ))),
        v => Ok(v),
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn count_of(v: &Value) -> Option<u64> {
    u64::try_from(int(v)?).ok()
}

fn id(v: &Value) -> Option<StreamId> {
    StreamId::parse(text(v)?).ok()
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// A field-value reply: a flat array (RESP2) or a map (RESP3).
fn fields(v: &Value) -> Option<Vec<(&str, &Value)>> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Some((text(k)?, v))).collect(),
        Value::Array(a) if a.len() % 2 == 0 => {
            a.chunks_exact(2).map(|p| Some((text(&p[0])?, &p[1]))).collect()
        }
        _ => None,
    }
}

fn field<'a>(fields: &[(&str, &'a Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// One entry, `[id, [field, value, ...]]`: its id and the record, `None` if its data is gone (a
/// pending entry trimmed from the stream comes back as `[id, nil]`).
fn entry(v: &Value) -> Option<(StreamId, Option<Record>)> {
    let [id_v, body] = items(v)? else {
        return None;
    };
    let id = id(id_v)?;
    if matches!(body, Value::Nil) {
        return Some((id, None));
    }
    let f = fields(body)?;
    let key = match field(&f, "k") {
        Some(k) => text(k)?.to_string(),
        None => String::new(),
    };
    let data = match field(&f, "d")? {
        Value::BulkString(b) => b.clone(),
        other => text(other)?.as_bytes().to_vec(),
    };
    Some((id, Some(Record { id, key, data })))
}

/// The entries of an `XRANGE` or `XREADGROUP` reply.
fn entries(v: &Value) -> Option<Vec<(StreamId, Option<Record>)>> {
    items(v)?.iter().map(entry).collect()
}

/// The entries of an `XREADGROUP` reply on one stream: nil when there is nothing, else
/// `[[key, entries]]` (RESP2) or `{key: entries}` (RESP3).
fn read_reply(v: &Value) -> Option<Vec<(StreamId, Option<Record>)>> {
    match v {
        Value::Nil => Some(Vec::new()),
        Value::Map(pairs) => match pairs.as_slice() {
            [] => Some(Vec::new()),
            [(_, e)] => entries(e),
            _ => None,
        },
        other => match items(other)? {
            [] => Some(Vec::new()),
            [stream] => match items(stream)? {
                [_, e] => entries(e),
                _ => None,
            },
            _ => None,
        },
    }
}

/// A [`StreamInfo`] from the replies of `XINFO STREAM` and `XINFO GROUPS`.
fn stream_info(name: &str, stream: &Value, groups: &Value) -> Option<StreamInfo> {
    let s = fields(stream)?;
    let length = count_of(field(&s, "length")?)?;
    let last_id = Some(id(field(&s, "last-generated-id")?)?).filter(|l| *l != StreamId::ZERO);
    let first_id = match field(&s, "first-entry") {
        None | Some(Value::Nil) => None,
        Some(e) => Some(id(items(e)?.first()?)?),
    };
    let mut group_infos = items(groups)?
        .iter()
        .map(|g| {
            let g = fields(g)?;
            Some(GroupInfo {
                name: text(field(&g, "name")?)?.to_string(),
                last_delivered: id(field(&g, "last-delivered-id")?)?,
                pending: count_of(field(&g, "pending")?)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    group_infos.sort_by(|a, b| a.name.cmp(&b.name));
    Some(StreamInfo {
        name: name.to_string(),
        length,
        first_id,
        last_id,
        groups: group_infos,
    })
}

impl RedisStreamStore {
    /// Uses `conn`; keys are `{prefix}:stream:{name}` and `{prefix}:streams`.
    pub fn with_connection(conn: ConnectionManager, prefix: &str) -> Self {
        RedisStreamStore {
            conn,
            prefix: prefix.to_string(),
            names_key: format!("{prefix}:streams"),
        }
    }

    fn key(&self, stream: &str) -> String {
        format!("{}:stream:{stream}", self.prefix)
    }

    /// Runs `pipe` (one round trip) and returns one reply per command; an error reply of a
    /// command is returned as a [`Value::ServerError`] for the caller to interpret, a lost
    /// connection or a timeout is [`StreamError::Unavailable`].
    async fn exec(
        &self,
        what: &str,
        pipe: &mut redis::Pipeline,
        n: usize,
    ) -> Result<Vec<Value>, StreamError> {
        pipe.ignore_errors();
        let mut conn = self.conn.clone();
        let reply: Value = call(what, pipe.query_async(&mut conn))
            .await
            .map_err(|e| StreamError::Unavailable(e.into_message()))?;
        match reply {
            Value::Array(replies) if replies.len() == n => Ok(replies),
            other => Err(unexpected(what, &other)),
        }
    }

    /// [`Self::exec`] of one command.
    async fn exec_one(&self, what: &str, cmd: redis::Cmd) -> Result<Value, StreamError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let mut replies = self.exec(what, &mut pipe, 1).await?;
        replies.pop().ok_or_else(|| unexpected(what, &Value::Nil))
    }

    /// `NotFound` unless the group exists.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), StreamError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(self.key(stream)).arg(group);
        let reply = self.exec_one("XPENDING", cmd).await?;
        if error_code(&reply) == Some("NOGROUP") {
            return Err(not_found_group(stream, group));
        }
        ok("XPENDING", reply).map(|_| ())
    }

    /// Describes `names` (in one round trip); streams that do not exist are left out.
    async fn describe(&self, names: &[String]) -> Result<Vec<StreamInfo>, StreamError> {
        let mut pipe = redis::pipe();
        for name in names {
            let key = self.key(name);
            pipe.cmd("EXISTS").arg(&key);
            pipe.cmd("XINFO").arg("STREAM").arg(&key);
            pipe.cmd("XINFO").arg("GROUPS").arg(&key);
        }
        let replies = self.exec("XINFO", &mut pipe, names.len() * 3).await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, r) in names.iter().zip(replies.chunks_exact(3)) {
            let exists = ok("EXISTS", r[0].clone())?;
            if count_of(&exists).ok_or_else(|| unexpected("EXISTS", &exists))? == 0 {
                continue;
            }
            let stream = ok("XINFO STREAM", r[1].clone())?;
            let groups = ok("XINFO GROUPS", r[2].clone())?;
            out.push(stream_info(name, &stream, &groups).ok_or_else(|| unexpected("XINFO STREAM", &stream))?);
        }
        Ok(out)
    }
}

#[async_trait]
impl StreamStore for RedisStreamStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// `SADD` of the names, then one `XADD key MAXLEN max_len * k key d data` per record, in one
    /// pipeline.
    async fn append(&self, records: &[NewRecord], max_len: u64) -> Result<Vec<StreamId>, StreamError> {
        check_records(records)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let max_len = max_len.max(1);
        let names: BTreeSet<&str> = records.iter().map(|r| r.stream.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(&self.names_key)
            .arg(names.into_iter().collect::<Vec<_>>());
        for r in records {
            pipe.cmd("XADD")
                .arg(self.key(&r.stream))
                .arg("MAXLEN")
                .arg(max_len)
                .arg("*")
                .arg("k")
                .arg(&r.key)
                .arg("d")
                .arg(r.data.as_slice());
        }
        let replies = self.exec("XADD", &mut pipe, records.len() + 1).await?;
        let mut replies = replies.into_iter();
        if let Some(sadd) = replies.next() {
            ok("SADD", sadd)?;
        }
        replies
            .map(|r| {
                let r = ok("XADD", r)?;
                id(&r).ok_or_else(|| unexpected("XADD", &r))
            })
            .collect()
    }

    async fn list(&self) -> Result<Vec<StreamInfo>, StreamError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&self.names_key);
        let reply = ok("SMEMBERS", self.exec_one("SMEMBERS", cmd).await?)?;
        let mut names = items(&reply)
            .and_then(|n| {
                n.iter()
                    .map(|n| text(n).map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| unexpected("SMEMBERS", &reply))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(LIST_CHUNK) {
            out.extend(self.describe(chunk).await?);
        }
        Ok(out)
    }

    async fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        self.describe(&[stream.to_string()])
            .await?
            .pop()
            .ok_or_else(|| not_found_stream(stream))
    }

    async fn range(
        &self,
        stream: &str,
        after: Option<StreamId>,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        let start = match after {
            None => StreamId::ZERO,
            Some(a) => match successor(a) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.key(stream))
            .arg(start.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let reply = ok("XRANGE", self.exec_one("XRANGE", cmd).await?)?;
        Ok(entries(&reply)
            .ok_or_else(|| unexpected("XRANGE", &reply))?
            .into_iter()
            .filter_map(|(_, r)| r)
            .collect())
    }

    async fn create_group(&self, stream: &str, group: &str, start: GroupStart) -> Result<(), StreamError> {
        check_name("stream", stream)?;
        check_name("group", group)?;
        let start = match start {
            GroupStart::Beginning => "0".to_string(),
            GroupStart::End => "$".to_string(),
            GroupStart::After(id) => id.to_string(),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(&self.names_key).arg(stream);
        pipe.cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key(stream))
            .arg(group)
            .arg(start)
            .arg("MKSTREAM");
        let mut replies = self.exec("XGROUP CREATE", &mut pipe, 2).await?.into_iter();
        if let Some(sadd) = replies.next() {
            ok("SADD", sadd)?;
        }
        match replies.next() {
            Some(r) if error_code(&r) == Some("BUSYGROUP") => Err(StreamError::Exists(format!(
                "stream {stream:?} already has a consumer group {group:?}"
            ))),
            Some(r) => ok("XGROUP CREATE", r).map(|_| ()),
            None => Err(unexpected("XGROUP CREATE", &Value::Nil)),
        }
    }

    async fn delete_group(&self, stream: &str, group: &str) -> Result<(), StreamError> {
        let key = self.key(stream);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key);
        pipe.cmd("XGROUP").arg("DESTROY").arg(&key).arg(group);
        let replies = self.exec("XGROUP DESTROY", &mut pipe, 2).await?;
        let [exists, destroyed] = replies.as_slice() else {
            return Err(unexpected("XGROUP DESTROY", &Value::Nil));
        };
        let exists = ok("EXISTS", exists.clone())?;
        if count_of(&exists).ok_or_else(|| unexpected("EXISTS", &exists))? == 0 {
            return Err(not_found_group(stream, group));
        }
        let destroyed = ok("XGROUP DESTROY", destroyed.clone())?;
        match count_of(&destroyed) {
            Some(0) => Err(not_found_group(stream, group)),
            Some(_) => Ok(()),
            None => Err(unexpected("XGROUP DESTROY", &destroyed)),
        }
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        check_name("consumer", consumer)?;
        if count == 0 {
            // `COUNT 0` means "no limit" to Redis.
            self.ensure_group(stream, group).await?;
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.key(stream))
            .arg(">");
        let reply = self.exec_one("XREADGROUP", cmd).await?;
        if error_code(&reply) == Some("NOGROUP") {
            return Err(not_found_group(stream, group));
        }
        let reply = ok("XREADGROUP", reply)?;
        Ok(read_reply(&reply)
            .ok_or_else(|| unexpected("XREADGROUP", &reply))?
            .into_iter()
            .filter_map(|(_, r)| r)
            .collect())
    }

    /// `XREADGROUP … STREAMS key <id>`: the consumer's pending entries after `id`, from `0`;
    /// repeated after the last id seen while trimmed entries (nil) took up room in the reply.
    async fn read_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Record>, StreamError> {
        if count == 0 {
            self.ensure_group(stream, group).await?;
            return Ok(Vec::new());
        }
        let key = self.key(stream);
        let mut out = Vec::new();
        let mut after = StreamId::ZERO;
        loop {
            let want = count - out.len();
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(want)
                .arg("STREAMS")
                .arg(&key)
                .arg(after.to_string());
            let reply = self.exec_one("XREADGROUP", cmd).await?;
            if error_code(&reply) == Some("NOGROUP") {
                return Err(not_found_group(stream, group));
            }
            let reply = ok("XREADGROUP", reply)?;
            let page = read_reply(&reply).ok_or_else(|| unexpected("XREADGROUP", &reply))?;
            let full = page.len() >= want;
            let last = page.last().map(|(id, _)| *id);
            out.extend(page.into_iter().filter_map(|(_, r)| r));
            match last {
                Some(l) if full && out.len() < count => after = l,
                _ => return Ok(out),
            }
        }
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[StreamId]) -> Result<u64, StreamError> {
        if ids.is_empty() {
            self.ensure_group(stream, group).await?;
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(self.key(stream)).arg(group);
        for id in ids {
            cmd.arg(id.to_string());
        }
        let reply = ok("XACK", self.exec_one("XACK", cmd).await?)?;
        let n = count_of(&reply).ok_or_else(|| unexpected("XACK", &reply))?;
        if n == 0 {
            // Redis answers 0 for a group or stream that does not exist as well.
            self.ensure_group(stream, group).await?;
        }
        Ok(n)
    }

    async fn delete(&self, stream: &str) -> Result<(), StreamError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.key(stream));
        pipe.cmd("SREM").arg(&self.names_key).arg(stream);
        let replies = self.exec("DEL", &mut pipe, 2).await?;
        let [deleted, removed] = replies.as_slice() else {
            return Err(unexpected("DEL", &Value::Nil));
        };
        ok("SREM", removed.clone())?;
        let deleted = ok("DEL", deleted.clone())?;
        match count_of(&deleted) {
            Some(0) => Err(not_found_stream(stream)),
            Some(_) => Ok(()),
            None => Err(unexpected("DEL", &deleted)),
        }
    }
}
