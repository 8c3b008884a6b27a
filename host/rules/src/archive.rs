//! The `archive` action's writer. A rule archives in one of two formats:
//!
//! - **JSON lines** (the default): selected documents appended to
//!   `{dir}/{rule}/{YYYY-MM-DD}.jsonl` (the UTC day of the message), one file per rule and day,
//!   so a day of one rule is one file DuckDB (`read_json_auto`) or pandas
//!   (`read_json(lines=True)`) reads as is. A line is on its way to disk within milliseconds
//!   (the writer flushes whenever its queue runs empty; no fsync per line).
//! - **Parquet**: documents are buffered per rule and written as one Parquet file
//!   `{dir}/{rule}/{YYYY-MM-DD}/part-{unix ms}.parquet` when the buffer holds `rows` rows (or
//!   64 MiB of JSON text), when its oldest row is `age` old, when the UTC day changes, and at
//!   shutdown. A day of one rule is one directory. The schema is inferred per file (see
//!   [`crate::parquet_archive`]), so files may differ in columns: DuckDB reads them with
//!   `read_parquet('.../{day}/*.parquet', union_by_name = true)`, pandas file by file
//!   (`pd.concat`). A file is written under a hidden temporary name, synced, then renamed, so
//!   a reader never sees half a file (temporary files a killed process left are removed at
//!   start). Rows still in the buffer when the process is killed (not stopped) are lost.
//!
//! Rules workers hand records to one writer thread through a bounded queue and never wait for
//! the disk; a full queue drops the record and counts it. A JSON document is archived as it
//! was selected; a binary output as `{"payloadBase64": "..."}`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::parquet_archive::Row;

/// How a rule's archive is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON line per document, one file per rule and day.
    Jsonl,
    /// Parquet files of at most `rows` rows, written at the latest `age` after their first row.
    Parquet { rows: usize, age: Duration },
}

/// One document for the archive.
pub(crate) struct Record {
    pub rule: String,
    pub at_ms: u64,
    /// The document's JSON text.
    pub line: String,
    pub format: Format,
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub(crate) struct ArchiveCounters {
    /// Documents written (lines handed to the file, rows in a complete Parquet file).
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Rows waiting in Parquet buffers.
    pub buffered: AtomicU64,
}

enum Msg {
    Record(Record),
    /// Write every buffer out and flush every file, then answer.
    Flush(SyncSender<()>),
}

/// The handle rules workers use.
pub(crate) struct Archive {
    tx: SyncSender<Msg>,
    pub counters: Arc<ArchiveCounters>,
}

impl Archive {
    pub(crate) fn start(dir: PathBuf, capacity: usize) -> std::io::Result<Archive> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(ArchiveCounters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("shoal-archive".into())
            .spawn(move || Writer::new(dir, c).run(rx))?;
        Ok(Archive { tx, counters })
    }

    /// Queues a record; `Err` when the queue is full (the record is dropped and counted).
    pub(crate) fn append(&self, record: Record) -> Result<(), String> {
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                Err("the archive writer is behind; record dropped".into())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
                Err("the archive writer has stopped".into())
            }
        }
    }

    /// Writes every buffered Parquet row out and flushes every file, after the records
    /// queued before this call; blocks (waiting behind the queue) for at most `timeout`.
    /// `false` when the writer did not finish in time or has stopped.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        if send_by(&self.tx, Msg::Flush(ack_tx), deadline).is_err() {
            return false;
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Why [`send_by`] did not queue its message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendByError {
    /// The receiving thread has stopped.
    Stopped,
    /// The queue stayed full until the deadline.
    TimedOut,
}

/// Queues `msg` on a bounded queue, waiting (parked in 1 ms steps) while it is full, but not
/// past `deadline`. For the rare control messages (flush, barrier) that must not be dropped
/// the way records are.
pub(crate) fn send_by<T>(queue: &SyncSender<T>, mut msg: T, deadline: Instant) -> Result<(), SendByError> {
    loop {
        match queue.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(SendByError::Stopped),
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    return Err(SendByError::TimedOut);
                }
                msg = back;
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
    }
}

/// `YYYY-MM-DD` of a Unix time in milliseconds (UTC).
pub(crate) fn utc_day(ms: u64) -> String {
    let (y, m, d) = crate::sql::civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A rule's Parquet rows waiting to be written.
struct Batch {
    day: String,
    rows: Vec<Row>,
    /// The JSON text size of `rows`.
    bytes: usize,
    since: Instant,
    max_rows: usize,
    max_age: Duration,
}

struct Writer {
    dir: PathBuf,
    counters: Arc<ArchiveCounters>,
    /// Open JSON-lines files by (rule, day).
    files: HashMap<(String, String), std::io::BufWriter<std::fs::File>>,
    /// Parquet buffers by rule.
    batches: HashMap<String, Batch>,
    /// The Unix time (ms) the last Parquet file was named after: names rise strictly.
    last_name_ms: u128,
}

/// A Parquet buffer holding this much JSON text is written whatever its row count.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// While records keep coming, due Parquet buffers are looked at every this many records.
const DUE_CHECK_EVERY: usize = 256;

impl Writer {
    fn new(dir: PathBuf, counters: Arc<ArchiveCounters>) -> Writer {
        Writer {
            dir,
            counters,
            files: HashMap::new(),
            batches: HashMap::new(),
            last_name_ms: 0,
        }
    }

    /// Removes the temporary files of Parquet writes a killed process left behind
    /// (`{rule}/{day}/.part-*.tmp`).
    fn sweep(&self) {
        let Ok(rules) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for day in rules
            .flatten()
            .filter_map(|r| std::fs::read_dir(r.path()).ok())
            .flatten()
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(day.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".part-") && name.ends_with(".tmp") {
                    match std::fs::remove_file(f.path()) {
                        Ok(()) => {
                            tracing::info!(file = %f.path().display(), "removed an unfinished archive file")
                        }
                        Err(e) => {
                            tracing::warn!(file = %f.path().display(), error = %e, "cannot remove an unfinished archive file")
                        }
                    }
                }
            }
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.sweep();
        loop {
            let due = self.batches.values().map(|b| b.since + b.max_age).min();
            let got = match due {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match got {
                Ok(first) => {
                    let mut next = Some(first);
                    let mut handled = 0;
                    while let Some(msg) = next.take() {
                        self.handle(msg);
                        handled += 1;
                        if handled % DUE_CHECK_EVERY == 0 {
                            // A steady stream must not hold back an old buffer.
                            let now = Instant::now();
                            self.write_batches(|b| now >= b.since + b.max_age);
                        }
                        next = rx.try_recv().ok();
                    }
                    self.flush_lines();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_batches(|_| true);
                    self.flush_lines();
                    return;
                }
            }
            let now = Instant::now();
            self.write_batches(|b| now >= b.since + b.max_age);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Flush(ack) => {
                self.write_batches(|_| true);
                self.flush_lines();
                let _ = ack.try_send(());
            }
            Msg::Record(r) => match r.format {
                Format::Jsonl => self.append_line(r),
                Format::Parquet { rows, age } => self.buffer_row(r, rows, age),
            },
        }
    }

    fn append_line(&mut self, r: Record) {
        let day = utc_day(r.at_ms);
        let key = (r.rule.clone(), day.clone());
        if !self.files.contains_key(&key) {
            // A new day: close the rule's other files.
            self.files.retain(|(rule, _), _| rule != &r.rule);
            let folder = self.dir.join(&r.rule);
            let file = std::fs::create_dir_all(&folder).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(folder.join(format!("{day}.jsonl")))
            });
            match file {
                Ok(f) => {
                    self.files.insert(key.clone(), std::io::BufWriter::new(f));
                }
                Err(e) => {
                    let n = self.counters.errors.fetch_add(1, Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        tracing::warn!(rule = %r.rule, dir = %folder.display(), error = %e, "cannot open the archive file");
                    }
                }
            }
        }
        if let Some(w) = self.files.get_mut(&key) {
            match w.write_all(r.line.as_bytes()).and_then(|()| w.write_all(b"\n")) {
                Ok(()) => {
                    self.counters.written.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Relaxed);
                    tracing::warn!(rule = %r.rule, error = %e, "cannot write the archive");
                    self.files.remove(&key);
                }
            }
        }
    }

    fn flush_lines(&mut self) {
        for w in self.files.values_mut() {
            if let Err(e) = w.flush() {
                self.counters.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot flush the archive");
            }
        }
    }

    fn buffer_row(&mut self, r: Record, max_rows: usize, max_age: Duration) {
        let doc = match serde_json::from_str(&r.line) {
            Ok(doc) => doc,
            Err(e) => {
                // The engine hands over JSON it serialized itself; this is a bug, not input.
                self.counters.dropped.fetch_add(1, Relaxed);
                let n = self.counters.errors.fetch_add(1, Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::warn!(rule = %r.rule, error = %e, "an archive record is not JSON; dropped");
                }
                return;
            }
        };
        let day = utc_day(r.at_ms);
        if self.batches.get(&r.rule).is_some_and(|b| b.day != day)
            && let Some(old) = self.batches.remove(&r.rule)
        {
            self.write_parquet(&r.rule, old);
        }
        let batch = self.batches.entry(r.rule.clone()).or_insert_with(|| Batch {
            day,
            rows: Vec::new(),
            bytes: 0,
            since: Instant::now(),
            max_rows,
            max_age,
        });
        batch.rows.push(crate::parquet_archive::row_of(doc));
        batch.bytes += r.line.len();
        batch.max_rows = max_rows;
        batch.max_age = max_age;
        self.counters.buffered.fetch_add(1, Relaxed);
        if (batch.rows.len() >= batch.max_rows || batch.bytes >= MAX_BATCH_BYTES)
            && let Some(full) = self.batches.remove(&r.rule)
        {
            self.write_parquet(&r.rule, full);
        }
    }

    /// Writes out the batches `pick` selects (oldest first).
    fn write_batches(&mut self, pick: impl Fn(&Batch) -> bool) {
        let mut rules: Vec<(Instant, String)> = self
            .batches
            .iter()
            .filter(|(_, b)| pick(b))
            .map(|(r, b)| (b.since, r.clone()))
            .collect();
        rules.sort();
        for (_, rule) in rules {
            if let Some(batch) = self.batches.remove(&rule) {
                self.write_parquet(&rule, batch);
            }
        }
    }

    fn write_parquet(&mut self, rule: &str, batch: Batch) {
        let n = batch.rows.len() as u64;
        self.counters.buffered.fetch_sub(n, Relaxed);
        let folder = self.dir.join(rule).join(&batch.day);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.last_name_ms = now.max(self.last_name_ms + 1);
        match write_parquet_file(&folder, &batch.rows, &mut self.last_name_ms) {
            Ok(_) => {
                self.counters.written.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                self.counters.dropped.fetch_add(n, Relaxed);
                tracing::warn!(rule, dir = %folder.display(), rows = n, error = %e, "cannot write an archive Parquet file; its rows are lost");
            }
        }
    }
}

/// Writes `rows` to a new `part-{ms}.parquet` in `folder` (through a hidden temporary file,
/// synced, then renamed), `ms` the first of `*name_ms` and the milliseconds after it that no
/// file has taken yet (a process restarted within the same millisecond), so the names of a
/// folder sort in the order the files were written. Returns the file's path.
fn write_parquet_file(folder: &Path, rows: &[Row], name_ms: &mut u128) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(folder)?;
    let mut name = format!("part-{:013}.parquet", *name_ms);
    while folder.join(&name).exists() {
        *name_ms += 1;
        name = format!("part-{:013}.parquet", *name_ms);
    }
    let tmp = folder.join(format!(".{name}.tmp"));
    let written = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        crate::parquet_archive::write(rows, &mut out).map_err(std::io::Error::other)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, folder.join(&name))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(folder.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_691_596_946), "2026-11-26");
        assert_eq!(utc_day(1_704_067_199_999), "2023-12-31");
    }

    #[test]
    fn appends_lines_per_rule_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::start(dir.path().to_path_buf(), 100).unwrap();
        for (rule, at, line) in [
            ("r1", 0, "{\"a\":1}"),
            ("r1", 0, "{\"a\":2}"),
            ("r1", 86_400_000, "{\"a\":3}"),
            ("r2", 0, "{}"),
        ] {
            archive
                .append(Record {
                    rule: rule.into(),
                    at_ms: at,
                    line: line.into(),
                    format: Format::Jsonl,
                })
                .unwrap();
        }
        // A flush answers only after the records queued before it are written and every file
        // flushed (waiting for one file to fill raced with the flush of the others: CI saw
        // `r1/1970-01-02.jsonl` still empty when `r2`'s file was already out).
        assert!(archive.flush(Duration::from_secs(10)));
        assert_eq!(archive.counters.written.load(Relaxed), 4);
        drop(archive);
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        assert_eq!(read("r1/1970-01-01.jsonl"), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(read("r1/1970-01-02.jsonl"), "{\"a\":3}\n");
        assert_eq!(read("r2/1970-01-01.jsonl"), "{}\n");
    }

    fn parquet_rows(path: &Path) -> Vec<serde_json::Value> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let field = |f: &parquet::record::Field| match f {
            parquet::record::Field::Null => json!(null),
            parquet::record::Field::Bool(b) => json!(b),
            parquet::record::Field::Long(n) => json!(n),
            parquet::record::Field::Double(x) => json!(x),
            parquet::record::Field::Str(s) => json!(s),
            other => panic!("unexpected field {other:?}"),
        };
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                serde_json::Value::Object(r.get_column_iter().map(|(n, f)| (n.clone(), field(f))).collect())
            })
            .collect()
    }

    fn parts(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    #[test]
    fn parquet_batches_are_written_when_full_when_the_day_changes_and_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::start(dir.path().to_path_buf(), 100).unwrap();
        let format = Format::Parquet {
            rows: 2,
            age: Duration::from_secs(3600),
        };
        let append = |at_ms: u64, line: &str| {
            archive
                .append(Record {
                    rule: "cold".into(),
                    at_ms,
                    line: line.into(),
                    format,
                })
                .unwrap()
        };
        append(0, r#"{"temp":-18,"truck":"t1"}"#);
        append(1, r#"{"temp":-17.5,"truck":"t2"}"#);
        append(2, r#"{"temp":-16,"truck":"t3"}"#);
        append(86_400_000, r#"{"temp":-15,"truck":"t4"}"#);
        append(86_400_001, r#"{"door":true}"#);
        append(86_400_002, r#"{"door":false}"#);
        assert!(archive.flush(Duration::from_secs(10)));
        assert_eq!(archive.counters.written.load(Relaxed), 6);
        assert_eq!(archive.counters.buffered.load(Relaxed), 0);
        let day0 = parts(&dir.path().join("cold/1970-01-01"));
        let day1 = parts(&dir.path().join("cold/1970-01-02"));
        // Day 0: a full batch of two, then the one left when day 1 began.
        assert_eq!(day0.len(), 2, "{day0:?}");
        assert_eq!(
            parquet_rows(&day0[0]),
            [
                json!({"temp": -18.0, "truck": "t1"}),
                json!({"temp": -17.5, "truck": "t2"})
            ]
        );
        assert_eq!(parquet_rows(&day0[1]), [json!({"temp": -16, "truck": "t3"})]);
        // Day 1: a full batch (the columns of both rows, nulls where a row lacks one), then
        // the row the flush wrote.
        assert_eq!(day1.len(), 2, "{day1:?}");
        assert_eq!(
            parquet_rows(&day1[0]),
            [
                json!({"temp": -15, "truck": "t4", "door": null}),
                json!({"temp": null, "truck": null, "door": true})
            ]
        );
        assert_eq!(parquet_rows(&day1[1]), [json!({"door": false})]);
        // No temporary file is left behind.
        for d in [&day0, &day1] {
            assert!(
                d.iter().all(|p| p.extension().is_some_and(|e| e == "parquet")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_parquet_batch_is_written_when_its_oldest_row_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::start(dir.path().to_path_buf(), 100).unwrap();
        archive
            .append(Record {
                rule: "slow".into(),
                at_ms: 0,
                line: "[1,2]".into(),
                format: Format::Parquet {
                    rows: 1000,
                    age: Duration::from_millis(50),
                },
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while archive.counters.written.load(Relaxed) < 1 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let files = parts(&dir.path().join("slow/1970-01-01"));
        assert_eq!(files.len(), 1, "{files:?}");
        // Not an object: one `value` column, JSON text.
        assert_eq!(parquet_rows(&files[0]), [json!({"value": "[1,2]"})]);
    }

    #[test]
    fn an_unwritable_parquet_folder_counts_the_rows_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the rule's folder should be.
        std::fs::write(dir.path().join("blocked"), b"").unwrap();
        let archive = Archive::start(dir.path().to_path_buf(), 100).unwrap();
        archive
            .append(Record {
                rule: "blocked".into(),
                at_ms: 0,
                line: "{}".into(),
                format: Format::Parquet {
                    rows: 1,
                    age: Duration::from_secs(60),
                },
            })
            .unwrap();
        assert!(archive.flush(Duration::from_secs(10)));
        assert_eq!(archive.counters.written.load(Relaxed), 0);
        assert_eq!(archive.counters.dropped.load(Relaxed), 1);
        assert_eq!(archive.counters.errors.load(Relaxed), 1);
    }

    /// The writer's own rate, JSON lines against Parquet, on ~184-byte documents:
    /// `cargo +1.97.0 test -p shoal-rules --release --lib -- --ignored --nocapture archive_rate`.
    #[test]
    #[ignore = "benchmark: run with --release -- --ignored --nocapture"]
    #[allow(clippy::print_stdout)]
    fn archive_rate() {
        const N: usize = 300_000;
        for format in [
            Format::Jsonl,
            Format::Parquet {
                rows: 10_000,
                age: Duration::from_secs(60),
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let archive = Archive::start(dir.path().to_path_buf(), 100_000).unwrap();
            let started = Instant::now();
            for i in 0..N {
                let line = format!(
                    r#"{{"truck":"truck-{:04}","ts":{},"tempC":-18.{},"humidity":81,"door":"closed","presence":false,"lat":53.55,"lon":9.99,"fw":"2.1.0","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
                    i % 1000,
                    1_795_000_000_000u64 + i as u64,
                    i % 10
                );
                let mut record = Record {
                    rule: "bench".into(),
                    at_ms: 1_795_000_000_000,
                    line,
                    format,
                };
                // Measure the writer, not the queue: wait for room instead of dropping.
                loop {
                    match archive.tx.try_send(Msg::Record(record)) {
                        Ok(()) => break,
                        Err(TrySendError::Full(Msg::Record(r))) => {
                            record = r;
                            std::thread::yield_now();
                        }
                        Err(_) => panic!("the writer stopped"),
                    }
                }
            }
            assert!(archive.flush(Duration::from_secs(120)));
            let took = started.elapsed();
            assert_eq!(archive.counters.written.load(Relaxed), N as u64);
            let bytes: u64 = walk(dir.path())
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            println!(
                "{format:?}: {N} documents in {took:?}: {:.0} documents/s, {:.1} MB on disk ({:.0} bytes each)",
                N as f64 / took.as_secs_f64(),
                bytes as f64 / 1e6,
                bytes as f64 / N as f64
            );
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
