//! The writer behind the `stream` action and plugins' `stream-append`: rules workers queue
//! records (bounded; a full queue drops the record, counts it and fails the action, so the
//! rule's error action runs) and one task on the runtime appends them to the [`StreamStore`]
//! in batches (up to [`BATCH`] records per call: one pipeline on Redis, one transaction on the
//! embedded store). A batch the store refuses is retried with a doubling pause (200 ms, 400 ms,
//! ... up to [`RETRIES`] times); records still not written go to their `on_failure` callbacks.
//! A slow or absent store therefore fills the queue, never blocks a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::stream::{NewRecord, StreamStore};

/// Most records per append.
pub(crate) const BATCH: usize = 512;
/// Further attempts of a batch the store refused.
pub(crate) const RETRIES: u32 = 3;
/// How long one append may take before it counts as failed.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Called with the error when a record could not be written.
pub(crate) type OnFailure = Box<dyn FnOnce(String) + Send>;

/// Counters of the writer.
#[derive(Debug, Default)]
pub(crate) struct SinkCounters {
    pub appended: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
}

/// The handle rules workers use.
pub(crate) struct StreamSink {
    tx: tokio::sync::mpsc::Sender<(NewRecord, OnFailure)>,
    pub counters: Arc<SinkCounters>,
}

impl StreamSink {
    /// Starts the writer task.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        store: Arc<dyn StreamStore>,
        capacity: usize,
        max_len: u64,
    ) -> StreamSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(NewRecord, OnFailure)>(capacity.max(1));
        let counters = Arc::new(SinkCounters::default());
        let c = counters.clone();
        rt.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                write(&*store, std::mem::take(&mut batch), max_len, &c).await;
            }
        });
        StreamSink { tx, counters }
    }

    /// Queues a record; `Err` when the queue is full (dropped and counted).
    pub(crate) fn append(&self, record: NewRecord, on_failure: OnFailure) -> Result<(), String> {
        self.tx.try_send((record, on_failure)).map_err(|e| {
            self.counters.dropped.fetch_add(1, Relaxed);
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    "the stream writer is behind (queue full); record dropped".to_string()
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    "the stream writer has stopped".to_string()
                }
            }
        })
    }
}

async fn write(store: &dyn StreamStore, batch: Vec<(NewRecord, OnFailure)>, max_len: u64, c: &SinkCounters) {
    let (records, callbacks): (Vec<NewRecord>, Vec<OnFailure>) = batch.into_iter().unzip();
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0;
    let error = loop {
        c.batches.fetch_add(1, Relaxed);
        let error = match tokio::time::timeout(APPEND_TIMEOUT, store.append(&records, max_len)).await {
            Ok(Ok(_)) => {
                c.appended.fetch_add(records.len() as u64, Relaxed);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "the {} stream store did not answer within {} s",
                store.kind(),
                APPEND_TIMEOUT.as_secs()
            ),
        };
        if attempt >= RETRIES {
            break error;
        }
        attempt += 1;
        tracing::debug!(error = %error, attempt, "stream append failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    };
    c.failed.fetch_add(records.len() as u64, Relaxed);
    tracing::warn!(records = records.len(), error = %error, "stream records could not be written");
    for cb in callbacks {
        cb(format!("{error} (after {} attempt(s))", attempt + 1));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stream::MemoryStreamStore;

    #[tokio::test]
    async fn records_arrive_in_order_in_batches() {
        let store = Arc::new(MemoryStreamStore::new());
        let sink = StreamSink::start(&tokio::runtime::Handle::current(), store.clone(), 10_000, 1000);
        for i in 0..2000 {
            let rec = NewRecord {
                stream: if i % 2 == 0 { "even" } else { "odd" }.into(),
                key: format!("k{i}"),
                data: i.to_string().into_bytes(),
            };
            sink.append(rec, Box::new(|e| panic!("{e}"))).unwrap();
        }
        for _ in 0..200 {
            if sink.counters.appended.load(Relaxed) == 2000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sink.counters.appended.load(Relaxed), 2000);
        let even = store.range("even", None, 2000).await.unwrap();
        assert_eq!(even.len(), 1000);
        let values: Vec<String> = even
            .iter()
            .map(|r| String::from_utf8(r.data.clone()).unwrap())
            .collect();
        let want: Vec<String> = (0..2000).step_by(2).map(|i: i32| i.to_string()).collect();
        assert_eq!(values, want);
        assert!(even.windows(2).all(|w| w[0].id < w[1].id));
        assert!(sink.counters.batches.load(Relaxed) < 2000);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_says_so() {
        let store = Arc::new(MemoryStreamStore::new());
        // A current-thread runtime: the writer cannot run while this test holds the thread.
        let sink = StreamSink::start(&tokio::runtime::Handle::current(), store, 2, 10);
        let rec = || NewRecord {
            stream: "s".into(),
            key: String::new(),
            data: b"x".to_vec(),
        };
        sink.append(rec(), Box::new(|_| {})).unwrap();
        sink.append(rec(), Box::new(|_| {})).unwrap();
        let err = sink.append(rec(), Box::new(|_| {})).unwrap_err();
        assert!(err.contains("queue full"), "{err}");
        assert_eq!(sink.counters.dropped.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn records_the_store_refuses_reach_their_callbacks() {
        let store = Arc::new(MemoryStreamStore::new());
        let sink = StreamSink::start(&tokio::runtime::Handle::current(), store, 10, 10);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let bad = NewRecord {
            stream: "no/slashes".into(),
            key: String::new(),
            data: b"x".to_vec(),
        };
        sink.append(bad, Box::new(move |e| tx.send(e).unwrap())).unwrap();
        let error = rx.recv().await.unwrap();
        assert!(error.contains("invalid stream name"), "{error}");
        assert!(error.contains("4 attempt"), "{error}");
        assert_eq!(sink.counters.failed.load(Relaxed), 1);
    }
}
