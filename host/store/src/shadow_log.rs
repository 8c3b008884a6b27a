//! The embedded shadow store's redo log: what makes a shadow write durable without a redb
//! `fsync` per batch.
//!
//! # Why
//!
//! A redb commit with [`Durability::Immediate`] writes the batch's B-tree pages and syncs the
//! file; under load the sync took 3-5 ms on this project's machines (it flushes every page the
//! commit dirtied, about one 4 KiB leaf per update), and redb holds its write lock through it,
//! so nothing else could be merged meanwhile: the embedded store's throughput was the number of
//! those cycles per second. With this log, a batch commits to redb with [`Durability::None`]
//! (the pages go to the operating system, not to the disk), its documents are appended to this
//! file as one record, and a separate thread syncs the file (one small sequential write) and
//! only then answers the batch's callers; meanwhile the writer merges and commits the next
//! batch. A caller is still answered only when its write would survive a crash.
//!
//! # Format
//!
//! A sequence of records, each `[len: u32][crc: u32][seq: u64][id: u64][count: u32]` followed by
//! `count` entries `[name_len: u16][flags: u8][doc_len: u32][name][doc]`, all little-endian.
//! `len` counts the bytes after the `crc` field, `crc` is the CRC-32 of those bytes. An entry
//! is the whole document after the batch (its storage name, [`FLAG_EXISTS`] unless it is a
//! tombstone, and the JSON the `shadows` table holds), so replaying a record twice is harmless.
//! `id` is a random number the redb file keeps in its `shadow_log` table: a log left beside a
//! different (say, re-created) database is not replayed into it.
//!
//! # Sequence numbers and recovery
//!
//! Every batch that writes gets the next sequence number, and its redb transaction stores that
//! number in the `shadow_log` table, atomically with the documents. Whatever redb made durable
//! (its own checkpoints, or any other durable commit on the same file, such as the broker's
//! session writes) therefore says which records it already contains. On open, the records after
//! that number are replayed in one durable transaction, in order. The log is the run of
//! records from the start of the file whose numbers follow each other; the first torn,
//! corrupt, foreign or out-of-sequence record ends it (such a record was never synced, so its
//! callers were never answered, or it is older than the run). If the run does not continue
//! what redb holds (a gap), nothing after the gap is replayed. The file is then emptied (and
//! synced), so no record written before the reopen can be read as part of a later log.
//!
//! # Checkpoints
//!
//! When the log has grown past [`CHECKPOINT_BYTES`] or [`CHECKPOINT_AGE`] has passed since the
//! last checkpoint, the writer commits its next batch with [`Durability::Immediate`], which
//! makes every earlier batch durable in redb too, and writes the next records from the start
//! of the file again. The file is not truncated there (it grows in zero-filled steps of up to
//! [`GROW_BY`], so a sync flushes record data only), so older records follow the newest ones:
//! their numbers are below the newest's, so they end the log, as does a record cut in two by
//! a newer one (it fails its CRC). Only [`ShadowLog::open`] empties the file: records it left
//! could carry the very numbers the next ones get.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, Table, TableDefinition};

use crate::embedded_shadows::{NAMED_SHADOWS, SHADOWS, put_document};

/// `"applied" -> the sequence number of the last batch in this file`.
pub(crate) const LOG_SEQ: TableDefinition<&str, u64> = TableDefinition::new("shadow_log");
const SEQ_KEY: &str = "applied";
/// `"id" -> the number every record of this file's log carries`.
const ID_KEY: &str = "id";

/// The entry's shadow exists (is not a tombstone): a named one belongs in `named_shadows`.
const FLAG_EXISTS: u8 = 1;

/// `len`, `crc`.
const FRAME: usize = 8;
/// `seq`, `id`, `count`.
const RECORD_HEAD: usize = 20;
/// `name_len`, `flags`, `doc_len`.
const ENTRY_HEAD: usize = 7;
/// A `len` above this is damage, not a record (a batch is at most 1,024 documents).
const MAX_RECORD: usize = 1 << 30;

/// The log size at which the writer checkpoints (see the [module docs](self)).
pub(crate) const CHECKPOINT_BYTES: u64 = 64 << 20;
/// The longest time between checkpoints while shadows are written.
pub(crate) const CHECKPOINT_AGE: Duration = Duration::from_secs(30);
/// The file grows in steps of zeros (synced with the record that needed them, by the sync
/// thread): the records after it overwrite blocks the file already has, and syncing one
/// flushes data only, not the file's size and extents as well (a 16 KiB write and `fdatasync`
/// on this project's machine: 0.2 ms p50 in place against 0.25-0.3 ms appended, idle). Each
/// step doubles the file, from [`GROW_MIN`] (a store with a few shadows keeps a small file) up
/// to steps of [`GROW_BY`].
const GROW_MIN: u64 = 64 << 10;
const GROW_BY: u64 = 4 << 20;

/// The path of the log beside the redb file `db_path`.
pub(crate) fn log_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".shadow-log");
    PathBuf::from(name)
}

/// One document in a record.
#[derive(Debug, PartialEq)]
pub(crate) struct Entry<'a> {
    pub(crate) name: &'a str,
    pub(crate) exists: bool,
    pub(crate) doc: &'a [u8],
}

/// One batch's record.
#[derive(Debug, PartialEq)]
pub(crate) struct Record<'a> {
    pub(crate) seq: u64,
    pub(crate) id: u64,
    pub(crate) entries: Vec<Entry<'a>>,
}

/// The log as the writer thread holds it: the file, where the next record goes, and the record
/// of the batch being built.
pub(crate) struct ShadowLog {
    file: Arc<File>,
    /// Where the next record is written.
    len: u64,
    /// The file's length: zeros (or stale records) from `len` to here.
    allocated: u64,
    /// The sequence number of the batch being built.
    seq: u64,
    /// The database's log id, in every record.
    id: u64,
    /// The record being built; starts with its frame and head, filled in by [`ShadowLog::seal`].
    buf: Vec<u8>,
    entries: u32,
    last_checkpoint: Instant,
}

impl ShadowLog {
    /// Opens (creating) the log beside `db_path`, replays into `db` the records redb does not
    /// hold yet, and empties the file (synced). Returns the log and the number of records
    /// replayed.
    pub(crate) fn open(db: &Database, db_path: &Path) -> Result<(ShadowLog, usize), String> {
        let path = log_path(db_path);
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (records, tail) = parse(&bytes);
        if tail < bytes.len() {
            tracing::info!(
                path = %path.display(),
                ignored_bytes = bytes.len() - tail,
                "shadow log ends in a torn or stale record (never acknowledged); ignoring it"
            );
        }
        let (last, replayed, id) =
            replay(db, &records).map_err(|e| format!("replaying {}: {e}", path.display()))?;
        if replayed > 0 {
            tracing::info!(path = %path.display(), batches = replayed, "replayed the shadow log");
        }
        // What the file holds is in redb now or was never acknowledged: empty it, durably, so
        // none of it can follow (and be read as part of) the records written from now on.
        file.set_len(0)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("emptying {}: {e}", path.display()))?;
        if created {
            // The file's directory entry must be durable before anything relies on the file.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
            }
        }
        let log = ShadowLog {
            file: Arc::new(file),
            len: 0,
            allocated: 0,
            seq: last + 1,
            id,
            buf: Vec::new(),
            entries: 0,
            last_checkpoint: Instant::now(),
        };
        Ok((log, replayed))
    }

    /// The file, for the thread that syncs it.
    pub(crate) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Whether the next batch should be a checkpoint.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.len >= CHECKPOINT_BYTES || (self.len > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_AGE)
    }

    /// Starts the record of a new batch.
    pub(crate) fn begin(&mut self) {
        self.buf.clear();
        self.buf.resize(FRAME + RECORD_HEAD, 0);
        self.entries = 0;
    }

    /// Adds a document the batch wrote.
    pub(crate) fn add(&mut self, name: &str, exists: bool, doc: &[u8]) {
        // Storage names are at most 128 + 1 + 64 bytes and documents far below 4 GiB; the
        // conversions cannot fail for anything the shadow service accepts.
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let doc_len = u32::try_from(doc.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&name_len.to_le_bytes());
        self.buf.push(if exists { FLAG_EXISTS } else { 0 });
        self.buf.extend_from_slice(&doc_len.to_le_bytes());
        self.buf
            .extend_from_slice(&name.as_bytes()[..usize::from(name_len)]);
        self.buf.extend_from_slice(&doc[..doc_len as usize]);
        self.entries += 1;
    }

    /// Whether the batch wrote anything.
    pub(crate) fn has_entries(&self) -> bool {
        self.entries > 0
    }

    /// Stores the batch's sequence number in its transaction (call it when the batch wrote).
    pub(crate) fn mark(&self, table: &mut Table<&str, u64>) -> Result<(), redb::StorageError> {
        table.insert(SEQ_KEY, self.seq).map(|_| ())
    }

    /// Appends the batch's record (after its non-durable commit). Not synced: the caller
    /// hands the file to the syncing thread.
    pub(crate) fn append(&mut self) -> std::io::Result<()> {
        self.seal();
        let end = self.len + self.buf.len() as u64;
        if end > self.allocated {
            // Synced with the record by the sync thread (only that thread syncs, so it is the
            // one that sees a write-back error).
            let step = self.allocated.clamp(GROW_MIN, GROW_BY);
            let grown = end.max(self.allocated + step).next_multiple_of(GROW_MIN);
            let zeros = vec![0u8; (grown - self.allocated) as usize];
            self.file.write_all_at(&zeros, self.allocated)?;
            self.allocated = grown;
        }
        self.file.write_all_at(&self.buf, self.len)?;
        self.len += self.buf.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// After a batch committed durably: its number is used, and everything the log holds is in
    /// redb, so the next record goes to the start of the file again (see the
    /// [module docs](self) on what follows it there).
    pub(crate) fn checkpointed(&mut self) {
        if self.has_entries() {
            self.seq += 1;
        }
        self.last_checkpoint = Instant::now();
        self.len = 0;
    }

    /// Fills in the record's frame and head.
    fn seal(&mut self) {
        let body_len = u32::try_from(self.buf.len() - FRAME).unwrap_or(u32::MAX);
        self.buf[FRAME..FRAME + 8].copy_from_slice(&self.seq.to_le_bytes());
        self.buf[FRAME + 8..FRAME + 16].copy_from_slice(&self.id.to_le_bytes());
        self.buf[FRAME + 16..FRAME + 20].copy_from_slice(&self.entries.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[FRAME..]);
        self.buf[0..4].copy_from_slice(&body_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The well-formed records at the start of `bytes`, and where they end. Stops at the first
/// record that is cut short, fails its CRC or does not parse.
pub(crate) fn parse(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, next)) = parse_one(bytes, at) {
        records.push(record);
        at = next;
    }
    (records, at)
}

fn parse_one(bytes: &[u8], at: usize) -> Option<(Record<'_>, usize)> {
    let frame = bytes.get(at..at.checked_add(FRAME)?)?;
    let len = u32::from_le_bytes(frame[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame[4..8].try_into().ok()?);
    if !(RECORD_HEAD..=MAX_RECORD).contains(&len) {
        return None;
    }
    let end = at + FRAME + len;
    let body = bytes.get(at + FRAME..end)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let id = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(body[16..20].try_into().ok()?);
    let mut entries = Vec::new();
    let mut pos = RECORD_HEAD;
    for _ in 0..count {
        let head = body.get(pos..pos + ENTRY_HEAD)?;
        let name_len = usize::from(u16::from_le_bytes(head[0..2].try_into().ok()?));
        let flags = head[2];
        let doc_len = u32::from_le_bytes(head[3..7].try_into().ok()?) as usize;
        let name_at = pos + ENTRY_HEAD;
        let doc_at = name_at + name_len;
        let name = std::str::from_utf8(body.get(name_at..doc_at)?).ok()?;
        let doc = body.get(doc_at..doc_at.checked_add(doc_len)?)?;
        entries.push(Entry {
            name,
            exists: flags & FLAG_EXISTS != 0,
            doc,
        });
        pos = doc_at + doc_len;
    }
    (pos == body.len()).then_some((Record { seq, id, entries }, end))
}

/// Applies, in one durable transaction, the records of the log (see the [module docs](self))
/// after the one redb holds. Returns the last sequence number redb now holds, how many records
/// were applied, and the database's log id (chosen now if it had none).
fn replay(db: &Database, records: &[Record<'_>]) -> Result<(u64, usize, u64), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut applied = 0;
    let (last, id) = {
        let mut seqs = txn.open_table(LOG_SEQ)?;
        let mut docs = txn.open_table(SHADOWS)?;
        let mut named = txn.open_table(NAMED_SHADOWS)?;
        let held = seqs.get(SEQ_KEY)?.map(|v| v.value()).unwrap_or(0);
        let stored = seqs.get(ID_KEY)?.map(|v| v.value());
        let id = match stored {
            Some(id) => id,
            None => {
                let id = new_id();
                seqs.insert(ID_KEY, id)?;
                id
            }
        };
        let mut last = held;
        let mut previous: Option<u64> = None;
        for record in records {
            if record.id != id || previous.is_some_and(|p| record.seq != p + 1) {
                tracing::info!(
                    seq = record.seq,
                    foreign = record.id != id,
                    "shadow log: a record out of sequence or from another database ends the log"
                );
                break;
            }
            previous = Some(record.seq);
            if record.seq <= held {
                continue;
            }
            if record.seq != last + 1 {
                tracing::warn!(
                    held,
                    first = record.seq,
                    "shadow log: the log does not continue what the database holds; not replayed"
                );
                break;
            }
            for entry in &record.entries {
                put_document(&mut docs, &mut named, entry.name, entry.exists, entry.doc)?;
            }
            last = record.seq;
            applied += 1;
        }
        if last != held {
            seqs.insert(SEQ_KEY, last)?;
        }
        (last, id)
    };
    txn.commit()?;
    Ok((last, applied, id))
}

/// A number no other database's log is likely to carry.
fn new_id() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn record(log: &mut ShadowLog, docs: &[(&str, bool, &str)]) -> Vec<u8> {
        log.begin();
        for (name, exists, doc) in docs {
            log.add(name, *exists, doc.as_bytes());
        }
        log.seal();
        log.buf.clone()
    }

    fn open(dir: &Path) -> (Database, ShadowLog) {
        let path = dir.join("db.redb");
        let db = Database::create(&path).expect("db");
        let (log, _) = ShadowLog::open(&db, &path).expect("log");
        (db, log)
    }

    #[test]
    fn records_round_trip_and_parsing_stops_at_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, mut log) = open(dir.path());
        let one = record(
            &mut log,
            &[("t1", true, "{\"version\":1}"), ("t2~s", false, "{}")],
        );
        log.seq += 1;
        let two = record(&mut log, &[("t3", true, "{\"version\":3}")]);
        let mut bytes = [one.clone(), two.clone()].concat();
        let (records, end) = parse(&bytes);
        assert_eq!(end, bytes.len());
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seq, 1);
        assert_eq!(
            records[0].entries,
            vec![
                Entry {
                    name: "t1",
                    exists: true,
                    doc: b"{\"version\":1}"
                },
                Entry {
                    name: "t2~s",
                    exists: false,
                    doc: b"{}"
                },
            ]
        );
        assert_eq!((records[1].seq, records[1].entries.len()), (2, 1));
        // A torn second record: only the first parses, and the end says where it stopped.
        for cut in 1..two.len() {
            let (records, end) = parse(&bytes[..one.len() + cut]);
            assert_eq!((records.len(), end), (1, one.len()), "cut at {cut}");
        }
        // A flipped bit anywhere in the second record.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        assert_eq!(parse(&bytes).0.len(), 1);
        // Zeros (a preallocated or truncated-then-extended file) are no record.
        assert!(parse(&[0u8; 64]).0.is_empty());
    }

    #[test]
    fn replay_applies_what_redb_lacks_in_order_and_stops_at_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        {
            let (db, mut log) = open(dir.path());
            assert_eq!(log.seq, 1);
            // Batch 1 reaches redb durably (as another subsystem's durable commit would make
            // it); batches 2 and 3 only reach the log.
            let mut txn = db.begin_write().expect("txn");
            txn.set_durability(Durability::Immediate).expect("durability");
            {
                let mut docs = txn.open_table(SHADOWS).expect("table");
                docs.insert("a", b"a1".as_slice()).expect("insert");
                let mut seqs = txn.open_table(LOG_SEQ).expect("table");
                log.mark(&mut seqs).expect("mark");
            }
            txn.commit().expect("commit");
            let one = record(&mut log, &[("a", true, "a1")]);
            log.seq += 1;
            let two = record(&mut log, &[("a", true, "a2"), ("b~n", true, "b2")]);
            log.seq += 1;
            let three = record(&mut log, &[("b~n", false, "tomb")]);
            // Batch 5 after a gap (4 never written): stale or foreign, not replayed.
            log.seq += 2;
            let five = record(&mut log, &[("a", true, "a5")]);
            std::fs::write(log_path(&path), [one, two, three, five].concat()).expect("write log");
            drop(log);
            drop(db);
        }
        let db = Database::create(&path).expect("reopen");
        let (log, replayed) = ShadowLog::open(&db, &path).expect("log");
        assert_eq!(replayed, 2, "batches 2 and 3");
        assert_eq!(log.seq, 4);
        let txn = db.begin_read().expect("read");
        let docs = txn.open_table(SHADOWS).expect("table");
        assert_eq!(
            docs.get("a").expect("get").map(|v| v.value().to_vec()),
            Some(b"a2".to_vec())
        );
        assert_eq!(
            docs.get("b~n").expect("get").map(|v| v.value().to_vec()),
            Some(b"tomb".to_vec())
        );
        let named = txn.open_table(NAMED_SHADOWS).expect("table");
        assert!(
            named.get(("b", "n")).expect("get").is_none(),
            "the tombstone removed the index entry"
        );
        let seqs = txn.open_table(LOG_SEQ).expect("table");
        assert_eq!(seqs.get(SEQ_KEY).expect("get").map(|v| v.value()), Some(3));
        drop((seqs, named, docs, txn, log));
        assert_eq!(
            std::fs::metadata(log_path(&path)).expect("meta").len(),
            0,
            "emptied"
        );
        let (log, replayed) = ShadowLog::open(&db, &path).expect("log");
        assert_eq!((replayed, log.seq), (0, 4));
    }

    #[test]
    fn a_log_from_another_database_or_behind_a_gap_is_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let (db, mut log) = open(dir.path());
        // Another database's log, numbered as this one expects (1): not this database's id.
        let (_other_db, mut foreign) = open(other.path());
        let stray = record(&mut foreign, &[("a", true, "foreign")]);
        std::fs::write(log_path(&path), &stray).expect("write log");
        drop(log);
        let (reopened, replayed) = ShadowLog::open(&db, &path).expect("log");
        assert_eq!((replayed, reopened.seq), (0, 1));
        // This database's records, but starting at 3 when it holds nothing (1 and 2 missing).
        log = reopened;
        log.seq = 3;
        let three = record(&mut log, &[("a", true, "a3")]);
        std::fs::write(log_path(&path), &three).expect("write log");
        drop(log);
        let (_, replayed) = ShadowLog::open(&db, &path).expect("log");
        assert_eq!(replayed, 0);
        let txn = db.begin_read().expect("read");
        assert!(
            txn.open_table(SHADOWS)
                .expect("table")
                .get("a")
                .expect("get")
                .is_none()
        );
    }
}
