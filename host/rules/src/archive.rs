//! The `archive` action's writer: selected documents appended as JSON lines to
//! `{dir}/{rule}/{YYYY-MM-DD}.jsonl` (the UTC day of the message), one file per rule and day,
//! so a day of one rule is one file DuckDB (`read_json_auto`) or pandas (`read_json(lines=True)`)
//! reads as is.
//!
//! Rules workers hand records to one writer thread through a bounded queue and never wait for
//! the disk; a full queue drops the record and counts it. The writer keeps the files of the
//! current day open, writes what is queued, and flushes whenever the queue runs empty (so a
//! record is on its way to disk within milliseconds; no fsync per line). A JSON document is
//! written as it was selected; a binary output as `{"payloadBase64": "..."}`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

/// One line for the archive.
pub(crate) struct Record {
    pub rule: String,
    pub at_ms: u64,
    /// The line, without its newline.
    pub line: String,
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub(crate) struct ArchiveCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

/// The handle rules workers use.
pub(crate) struct Archive {
    tx: SyncSender<Record>,
    pub counters: Arc<ArchiveCounters>,
}

impl Archive {
    pub(crate) fn start(dir: PathBuf, capacity: usize) -> std::io::Result<Archive> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(ArchiveCounters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("shoal-archive".into())
            .spawn(move || writer(dir, rx, c))?;
        Ok(Archive { tx, counters })
    }

    /// Queues a record; `Err` when the queue is full (the record is dropped and counted).
    pub(crate) fn append(&self, record: Record) -> Result<(), String> {
        match self.tx.try_send(record) {
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
}

/// `YYYY-MM-DD` of a Unix time in milliseconds (UTC).
pub(crate) fn utc_day(ms: u64) -> String {
    let (y, m, d) = crate::sql::civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn writer(dir: PathBuf, rx: Receiver<Record>, counters: Arc<ArchiveCounters>) {
    let mut open: HashMap<(String, String), std::io::BufWriter<std::fs::File>> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(r) = next.take() {
            let day = utc_day(r.at_ms);
            let key = (r.rule.clone(), day.clone());
            if !open.contains_key(&key) {
                // A new day: close the rule's other files.
                open.retain(|(rule, _), _| rule != &r.rule);
                let folder = dir.join(&r.rule);
                let file = std::fs::create_dir_all(&folder).and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(folder.join(format!("{day}.jsonl")))
                });
                match file {
                    Ok(f) => {
                        open.insert(key.clone(), std::io::BufWriter::new(f));
                    }
                    Err(e) => {
                        let n = counters.errors.fetch_add(1, Relaxed);
                        if n.is_power_of_two() || n == 0 {
                            tracing::warn!(rule = %r.rule, dir = %folder.display(), error = %e, "cannot open the archive file");
                        }
                    }
                }
            }
            if let Some(w) = open.get_mut(&key) {
                match w.write_all(r.line.as_bytes()).and_then(|()| w.write_all(b"\n")) {
                    Ok(()) => {
                        counters.written.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        counters.errors.fetch_add(1, Relaxed);
                        tracing::warn!(rule = %r.rule, error = %e, "cannot write the archive");
                        open.remove(&key);
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        for w in open.values_mut() {
            if let Err(e) = w.flush() {
                counters.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot flush the archive");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                })
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while archive.counters.written.load(Relaxed) < 4 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        drop(archive);
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
        // The writer flushes when its queue is empty; give it a moment after the last write.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read("r2/1970-01-01.jsonl").is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(read("r1/1970-01-01.jsonl"), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(read("r1/1970-01-02.jsonl"), "{\"a\":3}\n");
        assert_eq!(read("r2/1970-01-01.jsonl"), "{}\n");
    }
}
