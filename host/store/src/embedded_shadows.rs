//! Shadows in the embedded redb file, with group commit.
//!
//! Layout (in the same file as the broker's tables, see [`crate::embedded`]):
//!
//! * `shadows`: [`ShadowKey::storage_name`] (`thing` or `thing~shadow`) `->` the
//!   [`StoredShadow`] as JSON ([`StoredShadow::to_json_bytes`]), tombstones included.
//! * `named_shadows`: `(thing, shadow) -> ()` for every named shadow that exists (is not a
//!   tombstone). It is written in the same transaction as `shadows`, so it never disagrees with
//!   it, and [`ShadowStore::list_named`] is a plain range scan over one thing's entries: no
//!   tombstone to skip, no document to decode, and a thing whose name extends another's (`a`,
//!   `ab`) is a different tuple prefix, never part of the range.
//!
//! # Why group commit, and the log
//!
//! A mutation is durable when `mutate` returns. One redb commit with [`Durability::Immediate`]
//! (page writes and an `fsync`) per mutation would cap the store near a thousand updates per
//! second however many devices report at once. Instead a dedicated writer thread takes
//! *every* mutation waiting in its channel, runs them in arrival order inside one write
//! transaction and commits once, **without** a sync ([`Durability::None`]); it appends the
//! documents the batch wrote to the shadow log (a file beside the redb file, see
//! [`crate::shadow_log`]) and hands the batch to a second thread, which syncs the log (one
//! small write, for every batch committed since its last sync) and only then answers the
//! batch's callers. Meanwhile the writer runs the next batch: the sync, which redb would hold
//! its write lock through, no longer stops the merging. Every so often the writer commits a
//! batch durably instead (a checkpoint), after which the log starts over. Throughput grows with
//! the number of concurrent callers instead of being bounded by the commit latency, and a
//! bigger batch is cheaper per mutation (mutations share dirtied pages).
//!
//! Readers (below) may see a batch a little before its callers are answered: between its
//! commit and its log's sync. If the machine fails in that window, the batch is lost although
//! someone read it; its writers were never told it succeeded.
//!
//! Each mutation's function reads the document through the batch's write transaction, so it
//! sees the writes of the mutations before it in the same batch: the batch is exactly the
//! sequential execution of its mutations, and redb's single-writer lock serialises batches with
//! each other and with the broker's own transactions. If anything fails at the storage level,
//! the transaction is dropped (aborted) and every caller in the batch gets the error: nothing of
//! the batch is written. Callers are answered only after the commit and the log's sync,
//! rejections included (a rejection may rest on what an earlier, unsynced batch wrote). If the
//! log cannot be written or synced, every caller of the batches concerned (and of any batch not
//! answered yet) gets an error and the store refuses all writes until shoal restarts. Such a
//! failed write may still have been applied: its batch had committed to redb, where readers see
//! it and a later durable commit (of the broker's own tables, say, or at shutdown) or the
//! replay of what reached the log can keep it; as with a timeout, the caller cannot know.
//!
//! The writer lingers briefly before committing a batch while mutations keep arriving (up to
//! 30 µs between two, 1 ms in all). Measured with 64 concurrent callers, this keeps batches
//! near 64 instead of two alternating halves. (Splitting the work over two threads, one preparing the next
//! batch while the other commits, was tried and measured slower: it splits the callers into
//! more, smaller commits, and a commit's cost is mostly per page, not per mutation.)
//!
//! Reads ([`ShadowStore::get`], [`ShadowStore::list_named`]) use read transactions on tokio's
//! blocking pool and never wait for the writer; they see the last committed batch (see above on
//! reading ahead of the log's sync).
//!
//! # The writer's document cache
//!
//! The writer is the one stage every mutation passes through, so its work per mutation bounds
//! the store's throughput. It therefore keeps the documents it last read or wrote, decoded, in
//! memory ([`DocCache`], bounded by [`CACHE_BYTES`] of encoded JSON), and a mutation of a
//! recently used shadow neither reads nor decodes it. The cache cannot go stale: this writer
//! is the only one that changes the shadow tables (the redb file is locked to this process),
//! and when a batch fails (its transaction aborted) the cache is emptied, since it may hold
//! documents that were never committed.

use std::any::Any;
use std::fs::File;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use shoal_things::shadow::{
    Mutated, Mutation, ShadowKey, ShadowName, ShadowStore, ShadowStoreError, StoredShadow, ThingName,
};
use tokio::sync::oneshot;

use crate::shadow_log::{LOG_SEQ, ShadowLog};

/// `storage_name -> JSON document`.
pub(crate) const SHADOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("shadows");
/// `(thing, shadow) -> ()` for every existing named shadow.
pub(crate) const NAMED_SHADOWS: TableDefinition<(&str, &str), ()> = TableDefinition::new("named_shadows");

/// How long the writer waits for one more mutation before it commits a batch (see
/// [`run_batch`]): long enough for a woken caller to resubmit, short next to a commit.
const BATCH_GAP: Duration = Duration::from_micros(30);
/// How long after a batch started the writer may still wait for more mutations (it keeps
/// taking those already queued, up to [`MAX_BATCH`]).
const MAX_LINGER: Duration = Duration::from_millis(1);

/// Upper bound on the mutations committed in one transaction, so one commit's latency (and the
/// memory held for it) stays bounded under a flood; the rest go into the next batch at once.
const MAX_BATCH: usize = 1024;

/// Bound on the writer's document cache, counted as the documents' encoded JSON size. Decoded,
/// a document takes several times that (a B-tree node per JSON object, and every metadata
/// leaf `{"timestamp":T}` is an object; estimated at up to ~20x, not measured), so budget up
/// to ~160 MiB of memory for it (some 20,000 typical small shadows). When full, random
/// entries make room.
const CACHE_BYTES: usize = 8 << 20;

/// Sorts after every character a shadow name may contain (all ASCII below `~`), so
/// `(thing, NAME_MAX)` bounds one thing's range in `named_shadows` from above.
const NAME_MAX: &str = "\u{7f}";

/// A [`ShadowStore`] in the embedded redb file, sharing the [`Database`] with
/// [`crate::EmbeddedStore`] (a redb file can be opened only once).
///
/// Get one from [`crate::EmbeddedStore::shadow_store`]. Cheap to clone: all clones feed the same
/// writer thread (see the [module docs](self) on group commit). The thread holds the database only while it runs a batch, so dropping every
/// handle closes the file as before; the thread then ends by itself.
#[derive(Clone)]
pub struct EmbeddedShadowStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for EmbeddedShadowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedShadowStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One mutation waiting for the writer.
struct Job {
    key: ShadowKey,
    f: Mutation,
    reply: oneshot::Sender<Reply>,
}

/// The writer's answer to one [`Job`].
// Built once and moved once per mutation: boxing the common variant would cost more than the
// size difference.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Done(Result<Mutated, ShadowStoreError>),
    /// The mutation function panicked; the payload is re-raised in the caller's task, so a
    /// panicking function behaves as with the other backends (which run it in the caller's
    /// task) and the writer thread survives. Nothing was written for this mutation.
    Panicked(Box<dyn Any + Send>),
}

impl Reply {
    fn unavailable(why: &str) -> Reply {
        Reply::Done(Err(ShadowStoreError::Unavailable(why.to_owned())))
    }
}

impl EmbeddedShadowStore {
    /// Replays the shadow log into `db` (see [`crate::shadow_log`]) and starts the writer and
    /// syncer threads. The tables must exist (see [`crate::EmbeddedStore::open`]).
    pub(crate) fn start(db: Arc<Database>, path: Arc<PathBuf>) -> Result<EmbeddedShadowStore, String> {
        let (log, _) = ShadowLog::open(&db, &path)?;
        let (jobs, rx) = mpsc::channel();
        let (done, synced) = mpsc::channel();
        let failed = Arc::new(OnceLock::new());
        let file = log.file();
        let syncer_failed = Arc::clone(&failed);
        std::thread::Builder::new()
            .name("shoal-shadow-sync".into())
            .spawn(move || syncer_loop(&file, &synced, &syncer_failed))
            .map_err(|e| format!("cannot start the shadow log's sync thread: {e}"))?;
        let weak = Arc::downgrade(&db);
        let writer = Writer {
            log,
            cache: DocCache::new(CACHE_BYTES),
            done,
            failed,
        };
        std::thread::Builder::new()
            .name("shoal-shadow-writer".into())
            .spawn(move || writer_loop(&weak, &rx, writer))
            .map_err(|e| format!("cannot start the shadow writer thread: {e}"))?;
        Ok(EmbeddedShadowStore { db, path, jobs })
    }

    /// Runs `f` on the blocking pool with the database (read transactions block on file I/O).
    async fn blocking<T, F>(&self, f: F) -> Result<T, ShadowStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, ShadowStoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| ShadowStoreError::Unavailable(format!("embedded shadow store task failed: {e}")))?
    }
}

/// Maps a redb error: damage to the file is [`ShadowStoreError::Corrupt`], everything else (I/O,
/// locking, ...) is [`ShadowStoreError::Unavailable`].
fn redb_err(what: &str, e: impl Into<redb::Error>) -> ShadowStoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => ShadowStoreError::Corrupt(format!("redb {what}: {msg}")),
        other => ShadowStoreError::Unavailable(format!("redb {what}: {other}")),
    }
}

fn decode(storage_name: &str, bytes: &[u8]) -> Result<StoredShadow, ShadowStoreError> {
    StoredShadow::from_json_bytes(bytes)
        .map_err(|e| ShadowStoreError::Corrupt(format!("shadow {storage_name:?} does not decode: {e}")))
}

/// The documents the writer last read or wrote, by storage name, with their encoded size (see
/// the [module docs](self)).
struct DocCache {
    docs: indexmap::IndexMap<String, (Arc<StoredShadow>, usize), foldhash::fast::RandomState>,
    bytes: usize,
    /// At most this many encoded bytes are kept ([`CACHE_BYTES`] outside tests).
    budget: usize,
    /// Picks the entries to evict.
    rng: shoal_broker::rng::XorShift64,
}

impl DocCache {
    fn new(budget: usize) -> Self {
        DocCache {
            docs: indexmap::IndexMap::default(),
            bytes: 0,
            budget,
            rng: shoal_broker::rng::XorShift64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn get(&self, name: &str) -> Option<Arc<StoredShadow>> {
        self.docs.get(name).map(|(doc, _)| Arc::clone(doc))
    }

    /// Remembers `doc` (encoded as `size` bytes) for `name`, evicting random entries (O(1)
    /// each) to stay within the budget. A document bigger than the whole budget is not kept.
    fn put(&mut self, name: String, doc: Arc<StoredShadow>, size: usize) {
        // The common case, a shadow updated again, in place: one lookup.
        if let Some(entry) = self.docs.get_mut(&name) {
            let bytes = self.bytes - entry.1 + size;
            if bytes <= self.budget {
                self.bytes = bytes;
                *entry = (doc, size);
                return;
            }
        }
        if let Some((_, old)) = self.docs.swap_remove(&name) {
            self.bytes -= old;
        }
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget && !self.docs.is_empty() {
            let i = self.rng.index(self.docs.len());
            if let Some((_, (_, old))) = self.docs.swap_remove_index(i) {
                self.bytes -= old;
            }
        }
        self.bytes += size;
        self.docs.insert(name, (doc, size));
    }

    fn clear(&mut self) {
        self.docs.clear();
        self.bytes = 0;
    }
}

/// What the writer thread owns.
struct Writer {
    log: ShadowLog,
    cache: DocCache,
    /// Committed batches, to the syncer thread, which answers their callers.
    done: mpsc::Sender<Committed>,
    /// Set (by either thread) when the log could not be written or synced: from then on every
    /// mutation fails with this message, since what was acknowledged can no longer be made
    /// durable in order.
    failed: Arc<OnceLock<String>>,
}

/// A committed batch on its way to the syncer thread.
struct Committed {
    jobs: Vec<Job>,
    replies: Vec<Reply>,
    /// The batch's record is in the log and must be synced before the callers hear of it
    /// (otherwise it was a checkpoint, durable already, or it wrote nothing; it is still
    /// answered only after the batches before it, whose results it may have read).
    sync: bool,
}

impl Committed {
    fn answer(self) {
        for (job, reply) in self.jobs.into_iter().zip(self.replies) {
            // The caller may have given up (its future was dropped); nothing to tell then.
            let _ = job.reply.send(reply);
        }
    }

    fn fail(self, why: &str) {
        for job in self.jobs {
            let _ = job.reply.send(Reply::unavailable(why));
        }
    }
}

/// Records that the log could not be written or synced (`what`): from now on the store refuses
/// writes (see [`Writer::failed`]). Returns the message callers get (the first failure's).
fn log_failed(failed: &OnceLock<String>, what: &str, e: &std::io::Error) -> String {
    tracing::error!(error = %e, "shadow log {what} failed; shadow writes refused until restart");
    failed
        .get_or_init(|| {
            format!(
                "the embedded shadow store could not {what} its log ({e}); it refuses writes \
                 until shoal restarts"
            )
        })
        .clone()
}

/// The writer thread: one batch per wake-up until every sender is gone.
fn writer_loop(db: &Weak<Database>, rx: &mpsc::Receiver<Job>, mut writer: Writer) {
    let mut previous_len = 0;
    while let Ok(first) = rx.recv() {
        if let Some(why) = writer.failed.get() {
            let _ = first.reply.send(Reply::unavailable(why));
            continue;
        }
        // Only upgraded for the batch: between batches the thread does not keep the file open.
        let Some(db) = db.upgrade() else {
            let closed = ShadowStoreError::Unavailable("embedded store is closed".into());
            let _ = first.reply.send(Reply::Done(Err(closed)));
            continue;
        };
        // A lone caller (the last batch had one mutation) does not wait for company.
        previous_len = run_batch(&db, &mut writer, first, rx, previous_len > 1);
    }
}

/// The syncer thread: takes every committed batch waiting, syncs the log once for all of them
/// (if any wrote to it), then answers their callers in order.
fn syncer_loop(file: &File, rx: &mpsc::Receiver<Committed>, failed: &OnceLock<String>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let synced = if group.iter().any(|c| c.sync) {
            file.sync_data()
        } else {
            Ok(())
        };
        if let Err(e) = synced {
            log_failed(failed, "sync", &e);
        }
        // A failure reported before (by this thread, or the writer's log write) may have
        // dropped pages that a later sync no longer reports: nothing after it is answered as
        // durable.
        match failed.get() {
            Some(why) => group.into_iter().for_each(|c| c.fail(why)),
            None => group.into_iter().for_each(Committed::answer),
        }
    }
}

/// Runs one batch starting with `first` and commits it, then hands it to the syncer thread,
/// which answers every caller in it; returns the batch size.
///
/// The batch takes every mutation already queued and, with `linger`, keeps taking mutations as
/// long as they arrive less than [`BATCH_GAP`] apart, waiting for them for at most
/// [`MAX_LINGER`] after the batch started. Each mutation runs as soon as it is taken, so the
/// waiting overlaps with the work. Lingering matters with many concurrent callers: the callers
/// answered by the previous commit resubmit over the next few dozen microseconds. Without it
/// the next batch would hold only those that were already queued, and the callers would settle
/// into two cohorts taking turns, each commit carrying half of them: more commits (whose cost
/// is mostly per page written, not per mutation) for the same work.
fn run_batch(
    db: &Database,
    writer: &mut Writer,
    first: Job,
    rx: &mpsc::Receiver<Job>,
    linger: bool,
) -> usize {
    let mut jobs = Vec::new();
    let mut replies = Vec::new();
    let result = write_batch(db, writer, first, rx, linger, &mut jobs, &mut replies);
    let n = jobs.len();
    match result {
        Ok(sync) => {
            if let Err(mpsc::SendError(batch)) = writer.done.send(Committed { jobs, replies, sync }) {
                // Only if the syncer thread died, which it does not do by itself.
                batch.fail("embedded shadow store: the log's sync thread is gone");
            }
        }
        Err(e) => {
            // The cache may hold documents of the aborted transaction.
            writer.cache.clear();
            tracing::warn!(mutations = n, error = %e, "embedded shadow batch failed");
            for job in jobs {
                let _ = job.reply.send(Reply::Done(Err(e.clone())));
            }
        }
    }
    n
}

/// One write transaction for the whole batch, committed without a sync, its documents then
/// appended to the log (or, every so often, committed with [`Durability::Immediate`] as a
/// checkpoint; see [`crate::shadow_log`]). Returns whether the log must be synced before the
/// callers are answered. Every job taken is pushed to `jobs` (so it is answered whatever
/// happens) and, once run, its answer to `replies`. An `Err` means the batch failed: nothing
/// was written, or (the log could not be written) the store now refuses writes.
fn write_batch(
    db: &Database,
    writer: &mut Writer,
    first: Job,
    rx: &mpsc::Receiver<Job>,
    linger: bool,
    jobs: &mut Vec<Job>,
    replies: &mut Vec<Reply>,
) -> Result<bool, ShadowStoreError> {
    let started = Instant::now();
    jobs.push(first);
    let checkpoint = writer.log.checkpoint_due();
    writer.log.begin();
    let mut txn = db.begin_write().map_err(|e| redb_err("begin", e))?;
    let durability = if checkpoint {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| redb_err("durability", e))?;
    {
        let open = |e: redb::TableError| redb_err("opening table", e);
        let mut docs = txn.open_table(SHADOWS).map_err(open)?;
        let mut named = txn.open_table(NAMED_SHADOWS).map_err(open)?;
        while let Some(job) = jobs.get(replies.len()) {
            replies.push(apply_job(&mut docs, &mut named, writer, job)?);
            if jobs.len() >= MAX_BATCH {
                break;
            }
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::TryRecvError::Empty) if linger && started.elapsed() < MAX_LINGER => {
                    rx.recv_timeout(BATCH_GAP).ok()
                }
                Err(_) => None,
            };
            match next {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
        if writer.log.has_entries() {
            let mut seqs = txn.open_table(LOG_SEQ).map_err(open)?;
            writer.log.mark(&mut seqs).map_err(|e| redb_err("write", e))?;
        }
    }
    if let Some(why) = writer.failed.get() {
        // The log failed while this batch ran: do not commit what cannot be made durable.
        return Err(ShadowStoreError::Unavailable(why.clone()));
    }
    txn.commit().map_err(|e| redb_err("commit", e))?;
    if checkpoint {
        writer.log.checkpointed();
        return Ok(false);
    }
    if !writer.log.has_entries() {
        return Ok(false);
    }
    writer
        .log
        .append()
        .map_err(|e| ShadowStoreError::Unavailable(log_failed(&writer.failed, "write", &e)))?;
    Ok(true)
}

/// Reads the current document (from the cache, else through the write transaction, so earlier
/// mutations of the batch are visible either way), runs the function and writes its result. A
/// storage error aborts the batch (`Err`); an undecodable document only fails this mutation
/// (`Ok(Reply::Done(Err))`).
fn apply_job(
    docs: &mut Table<&str, &[u8]>,
    named: &mut Table<(&str, &str), ()>,
    writer: &mut Writer,
    job: &Job,
) -> Result<Reply, ShadowStoreError> {
    if job.reply.is_closed() {
        // The caller is gone (cancelled or timed out): it cannot learn the outcome, so do not
        // write something nobody asked for any more.
        return Ok(Reply::Done(Err(ShadowStoreError::Unavailable(
            "caller went away".into(),
        ))));
    }
    let name = job.key.storage_name();
    let previous = match writer.cache.get(&name) {
        Some(doc) => Some(doc),
        None => match docs.get(name.as_str()).map_err(|e| redb_err("read", e))? {
            Some(bytes) => match decode(&name, bytes.value()) {
                Ok(doc) => {
                    let doc = Arc::new(doc);
                    writer
                        .cache
                        .put(name.clone(), Arc::clone(&doc), bytes.value().len());
                    Some(doc)
                }
                Err(e) => return Ok(Reply::Done(Err(e))),
            },
            None => None,
        },
    };
    let current = match std::panic::catch_unwind(AssertUnwindSafe(|| (job.f)(previous.as_deref()))) {
        Ok(Ok(current)) => current,
        Ok(Err(rejection)) => return Ok(Reply::Done(Ok(Mutated::Rejected(rejection)))),
        Err(panic) => return Ok(Reply::Panicked(panic)),
    };
    let bytes = current.to_json_bytes();
    put_document(docs, named, &name, current.exists(), &bytes).map_err(|e| redb_err("write", e))?;
    writer.log.add(&name, current.exists(), &bytes);
    let current = Arc::new(current);
    writer.cache.put(name, Arc::clone(&current), bytes.len());
    Ok(Reply::Done(Ok(Mutated::Applied { previous, current })))
}

/// Writes the document stored under `name` ([`ShadowKey::storage_name`]: `thing` or
/// `thing~shadow`) and keeps `named_shadows` in step: a named shadow is listed while it exists
/// (is not a tombstone). The writer and the log's replay both write through here.
pub(crate) fn put_document(
    docs: &mut Table<&str, &[u8]>,
    named: &mut Table<(&str, &str), ()>,
    name: &str,
    exists: bool,
    doc: &[u8],
) -> Result<(), redb::StorageError> {
    docs.insert(name, doc)?;
    if let Some(index_key) = name.split_once('~') {
        if exists {
            named.insert(index_key, ())?;
        } else {
            named.remove(index_key)?;
        }
    }
    Ok(())
}

#[async_trait]
impl ShadowStore for EmbeddedShadowStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &ShadowKey) -> Result<Option<StoredShadow>, ShadowStoreError> {
        let name = key.storage_name();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let docs = txn
                .open_table(SHADOWS)
                .map_err(|e| redb_err("opening table", e))?;
            match docs.get(name.as_str()).map_err(|e| redb_err("read", e))? {
                Some(bytes) => decode(&name, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// Queues the mutation for the writer thread and waits for the commit of its batch (see the
    /// [module docs](self) for why). If this future is dropped before the batch runs, the
    /// mutation is skipped; if it is dropped later, it may or may not have been applied.
    async fn mutate(&self, key: &ShadowKey, f: Mutation) -> Result<Mutated, ShadowStoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key: key.clone(),
            f,
            reply,
        };
        self.jobs
            .send(job)
            .map_err(|_| ShadowStoreError::Unavailable("embedded shadow writer has stopped".into()))?;
        match answer.await {
            Ok(Reply::Done(result)) => result,
            Ok(Reply::Panicked(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(ShadowStoreError::Unavailable(
                "embedded shadow writer stopped before answering".into(),
            )),
        }
    }

    async fn list_named(
        &self,
        thing: &ThingName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ShadowName>, ShadowStoreError> {
        // An `after` at or beyond every possible name leaves nothing (and would make an
        // inverted range).
        if limit == 0 || after.is_some_and(|a| a >= NAME_MAX) {
            return Ok(Vec::new());
        }
        let thing = thing.as_str().to_owned();
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let err = |e: redb::StorageError| redb_err("read", e);
            let txn = db.begin_read().map_err(|e| redb_err("begin read", e))?;
            let named = txn
                .open_table(NAMED_SHADOWS)
                .map_err(|e| redb_err("opening table", e))?;
            let t = thing.as_str();
            let lower = match &after {
                Some(a) => Bound::Excluded((t, a.as_str())),
                None => Bound::Included((t, "")),
            };
            let upper = Bound::Excluded((t, NAME_MAX));
            let mut out = Vec::new();
            for entry in named.range((lower, upper)).map_err(err)? {
                let (k, _) = entry.map_err(err)?;
                let (_, shadow) = k.value();
                let shadow = ShadowName::parse(shadow).map_err(|e| {
                    ShadowStoreError::Corrupt(format!("named shadow {shadow:?} of {thing:?}: {e}"))
                })?;
                out.push(shadow);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(version: u64) -> Arc<StoredShadow> {
        Arc::new(StoredShadow {
            desired: None,
            reported: None,
            version,
            updated_secs: 0,
            deleted: false,
        })
    }

    #[test]
    fn the_document_cache_stays_within_its_budget() {
        let mut cache = DocCache::new(100);
        cache.put("a".into(), doc(1), 40);
        cache.put("b".into(), doc(1), 40);
        assert_eq!(cache.bytes, 80);
        // Replacing an entry counts its new size only.
        cache.put("a".into(), doc(2), 50);
        assert_eq!(cache.bytes, 90);
        assert_eq!(cache.get("a").map(|d| d.version), Some(2));
        // Over budget: something is evicted, the new entry is kept.
        cache.put("c".into(), doc(1), 30);
        assert!(cache.bytes <= 100, "{} bytes cached", cache.bytes);
        assert_eq!(cache.get("c").map(|d| d.version), Some(1));
        assert_eq!(cache.bytes, cache.docs.values().map(|(_, n)| n).sum::<usize>());
        // Bigger than the whole budget: not kept, and an older copy is dropped.
        cache.put("c".into(), doc(2), 101);
        assert!(cache.get("c").is_none());
        assert_eq!(cache.bytes, cache.docs.values().map(|(_, n)| n).sum::<usize>());
        cache.clear();
        assert_eq!((cache.bytes, cache.docs.len()), (0, 0));
    }
}
