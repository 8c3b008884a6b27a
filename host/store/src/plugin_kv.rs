//! Plugins' key-value state ([`KvBackend`] of `shoal-plugin-host`) in the embedded redb file and
//! in Redis. The plugin host keeps the state in memory and writes changes behind in batches
//! (`DurableKv`), so these are only read at start and written off the plugin call path.
//!
//! Both encode an entry the same way: the key is `plugin`, the thing (empty for the plugin's
//! global scope; thing names are never empty) and the key bytes; the value is the expiry as 8
//! little-endian bytes (`u64::MAX`: none) followed by the value bytes.
//!
//! * embedded: table `plugin_kv`, `(plugin, thing, key) -> expiry ++ value`; one write
//!   transaction per batch, committed with an `fsync`.
//! * Redis: one hash `{prefix}:plugin-kv` whose field is `plugin \0 thing \0 key` (plugin and
//!   thing names contain no NUL); a batch is one `MULTI`/`EXEC` of `HSET`/`HDEL`; loading is
//!   `HSCAN` in pages.

use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use redis::aio::ConnectionManager;
use shoal_plugin_host::{KvBackend, KvChange, KvEntry};

use crate::redis_store::call;

/// `(plugin, thing or "", key) -> expiry ++ value`.
const PLUGIN_KV: TableDefinition<(&str, &str, &[u8]), &[u8]> = TableDefinition::new("plugin_kv");

fn encode_value(value: &[u8], expires_at_ms: Option<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires_at_ms.unwrap_or(u64::MAX).to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(bytes: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
    let (at, value) = bytes.split_first_chunk::<8>()?;
    let at = u64::from_le_bytes(*at);
    Some((value.to_vec(), (at != u64::MAX).then_some(at)))
}

/// Plugin state in the embedded file (shares the [`Database`] with [`crate::EmbeddedStore`]).
#[derive(Clone)]
pub struct EmbeddedPluginKv {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl EmbeddedPluginKv {
    pub(crate) fn new(db: Arc<Database>, path: Arc<PathBuf>) -> Self {
        EmbeddedPluginKv { db, path }
    }
}

impl std::fmt::Debug for EmbeddedPluginKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPluginKv")
            .field("path", &self.path)
            .finish()
    }
}

fn redb_err(what: &str, e: impl Into<redb::Error>) -> String {
    format!("redb {what}: {}", e.into())
}

impl KvBackend for EmbeddedPluginKv {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn load(&self) -> Result<Vec<KvEntry>, String> {
        let txn = self.db.begin_read().map_err(|e| redb_err("begin read", e))?;
        let table = match txn.open_table(PLUGIN_KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(redb_err("open plugin_kv", e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| redb_err("scan plugin_kv", e))? {
            let (k, v) = row.map_err(|e| redb_err("scan plugin_kv", e))?;
            let (plugin, thing, key) = k.value();
            let (value, expires_at_ms) = decode_value(v.value())
                .ok_or_else(|| format!("plugin_kv: a value of {plugin} is damaged"))?;
            out.push(KvEntry {
                plugin: plugin.to_string(),
                thing: (!thing.is_empty()).then(|| thing.to_string()),
                key: key.to_vec(),
                value,
                expires_at_ms,
            });
        }
        Ok(out)
    }

    fn apply(&self, changes: &[KvChange]) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(|e| redb_err("begin write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb_err("durability", e))?;
        {
            let mut table = txn
                .open_table(PLUGIN_KV)
                .map_err(|e| redb_err("open plugin_kv", e))?;
            for c in changes {
                match c {
                    KvChange::Put(e) => {
                        let thing = e.thing.as_deref().unwrap_or("");
                        table
                            .insert(
                                (e.plugin.as_str(), thing, e.key.as_slice()),
                                encode_value(&e.value, e.expires_at_ms).as_slice(),
                            )
                            .map_err(|e| redb_err("write plugin_kv", e))?;
                    }
                    KvChange::Delete { plugin, thing, key } => {
                        table
                            .remove((plugin.as_str(), thing.as_deref().unwrap_or(""), key.as_slice()))
                            .map_err(|e| redb_err("delete plugin_kv", e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| redb_err("commit plugin_kv", e))
    }
}

/// Plugin state in Redis.
#[derive(Clone)]
pub struct RedisPluginKv {
    conn: ConnectionManager,
    key: String,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisPluginKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPluginKv").field("key", &self.key).finish()
    }
}

impl RedisPluginKv {
    /// Uses `conn`; the hash is `{prefix}:plugin-kv`. Its calls block the calling thread on
    /// `rt` (the plugin host calls them from its own threads, never from the runtime's).
    pub fn with_connection(conn: ConnectionManager, prefix: &str, rt: tokio::runtime::Handle) -> Self {
        RedisPluginKv {
            conn,
            key: format!("{prefix}:plugin-kv"),
            rt,
        }
    }
}

/// A hash field and its value, as `HSCAN` returns them.
type Pair = (Vec<u8>, Vec<u8>);

fn field(plugin: &str, thing: Option<&str>, key: &[u8]) -> Vec<u8> {
    let thing = thing.unwrap_or("");
    let mut f = Vec::with_capacity(plugin.len() + thing.len() + key.len() + 2);
    f.extend_from_slice(plugin.as_bytes());
    f.push(0);
    f.extend_from_slice(thing.as_bytes());
    f.push(0);
    f.extend_from_slice(key);
    f
}

fn parse_field(f: &[u8]) -> Option<(String, Option<String>, Vec<u8>)> {
    let mut parts = f.splitn(3, |&b| b == 0);
    let plugin = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let thing = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let key = parts.next()?.to_vec();
    Some((plugin, (!thing.is_empty()).then_some(thing), key))
}

impl KvBackend for RedisPluginKv {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn load(&self) -> Result<Vec<KvEntry>, String> {
        let mut conn = self.conn.clone();
        let key = self.key.clone();
        self.rt.block_on(async move {
            let mut out = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<Pair>) = call(
                    "HSCAN plugin-kv",
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await
                .map_err(|e| e.into_message())?;
                for (f, v) in page {
                    let (plugin, thing, k) =
                        parse_field(&f).ok_or_else(|| "plugin-kv: a damaged field".to_string())?;
                    let (value, expires_at_ms) = decode_value(&v)
                        .ok_or_else(|| format!("plugin-kv: a value of {plugin} is damaged"))?;
                    out.push(KvEntry {
                        plugin,
                        thing,
                        key: k,
                        value,
                        expires_at_ms,
                    });
                }
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        })
    }

    fn apply(&self, changes: &[KvChange]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in changes {
            match c {
                KvChange::Put(e) => {
                    pipe.cmd("HSET")
                        .arg(&self.key)
                        .arg(field(&e.plugin, e.thing.as_deref(), &e.key))
                        .arg(encode_value(&e.value, e.expires_at_ms))
                        .ignore();
                }
                KvChange::Delete { plugin, thing, key } => {
                    pipe.cmd("HDEL")
                        .arg(&self.key)
                        .arg(field(plugin, thing.as_deref(), key))
                        .ignore();
                }
            }
        }
        let mut conn = self.conn.clone();
        self.rt.block_on(async move {
            call::<()>("MULTI plugin-kv", pipe.query_async(&mut conn))
                .await
                .map_err(|e| e.into_message())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        assert_eq!(
            decode_value(&encode_value(b"v", Some(7))),
            Some((b"v".to_vec(), Some(7)))
        );
        assert_eq!(decode_value(&encode_value(b"", None)), Some((Vec::new(), None)));
        assert_eq!(decode_value(b"short"), None);
        assert_eq!(
            parse_field(&field("p", Some("t"), b"k\0x")),
            Some(("p".into(), Some("t".into()), b"k\0x".to_vec()))
        );
        assert_eq!(
            parse_field(&field("p", None, b"k")),
            Some(("p".into(), None, b"k".to_vec()))
        );
    }
}
