//! The store writer: one task that commits broker state changes in order, in batches.
//!
//! Producers (publish handlers on ntex workers, ack callbacks, the sweeper) are synchronous code
//! holding a session lock, so they cannot await a store: they [`Persister::submit`] an op and get
//! a ticket. The writer task drains everything that piled up, commits it as one batch
//! ([`BrokerStore::apply`]), and advances the committed ticket. A publish that must be durable
//! before its PUBACK (a message queued for an offline persistent session, a retained message)
//! waits for its ticket with [`Persister::wait`].
//!
//! When the store fails the writer keeps the batch, marks the store down, and retries with
//! backoff; live routing never waits on it beyond [`crate::config::BrokerConfig::durable_ack_timeout`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::metrics::BrokerMetrics;
use crate::store::{SharedStore, StoreOp};

/// Most ops committed in one batch.
const MAX_BATCH: usize = 4096;

type OpSender = mpsc::UnboundedSender<(u64, StoreOp)>;

/// Hands state changes to the writer task.
#[derive(Debug)]
pub struct Persister {
    /// The last ticket handed out, and the channel (gone once closed).
    tx: Mutex<(u64, Option<OpSender>)>,
    committed: watch::Receiver<u64>,
    metrics: Arc<BrokerMetrics>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Persister {
    /// Starts the writer task on `rt`.
    pub fn start(store: SharedStore, metrics: Arc<BrokerMetrics>, rt: &tokio::runtime::Handle) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctx, crx) = watch::channel(0u64);
        let last_error = Arc::new(Mutex::new(None));
        metrics.store_up.store(1, Relaxed);
        rt.spawn(writer(
            store.clone(),
            rx,
            ctx,
            metrics.clone(),
            last_error.clone(),
        ));
        rt.spawn(pinger(store, metrics.clone(), last_error.clone()));
        Persister {
            tx: Mutex::new((0, Some(tx))),
            committed: crx,
            metrics,
            last_error,
        }
    }

    /// Queues `op` for the store; returns its ticket. Callers that must keep ops in order
    /// (everything about one session) submit while holding that session's lock.
    pub fn submit(&self, op: StoreOp) -> u64 {
        let mut g = self.tx.lock();
        g.0 += 1;
        let ticket = g.0;
        if let Some(tx) = &g.1
            && tx.send((ticket, op)).is_ok()
        {
            self.metrics.store_pending.fetch_add(1, Relaxed);
        }
        ticket
    }

    /// The latest ticket handed out.
    pub fn last_ticket(&self) -> u64 {
        self.tx.lock().0
    }

    /// Waits until `ticket` is committed, at most `timeout`. Returns `false` on timeout.
    pub async fn wait(&self, ticket: u64, timeout: Duration) -> bool {
        let mut rx = self.committed.clone();
        if *rx.borrow() >= ticket {
            return true;
        }
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|c| *c >= ticket)).await,
            Ok(Ok(_))
        )
    }

    /// Stops accepting ops and waits (at most `timeout`) for everything queued to commit.
    pub async fn close(&self, timeout: Duration) -> bool {
        let last = {
            let mut g = self.tx.lock();
            g.1 = None;
            g.0
        };
        self.wait(last, timeout).await
    }

    /// Whether the store answered its last request, and the last error if not.
    pub fn health(&self) -> (bool, Option<String>) {
        (
            self.metrics.store_up.load(Relaxed) == 1,
            self.last_error.lock().clone(),
        )
    }
}

async fn writer(
    store: SharedStore,
    mut rx: mpsc::UnboundedReceiver<(u64, StoreOp)>,
    committed: watch::Sender<u64>,
    metrics: Arc<BrokerMetrics>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut batch: Vec<StoreOp> = Vec::new();
    let mut last = 0u64;
    while let Some((t, op)) = rx.recv().await {
        batch.push(op);
        last = t;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((t, op)) => {
                    batch.push(op);
                    last = t;
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.apply(&batch).await {
                Ok(()) => {
                    if metrics.store_up.swap(1, Relaxed) == 0 {
                        tracing::info!(store = store.kind(), "store is answering again");
                    }
                    *last_error.lock() = None;
                    break;
                }
                Err(e) => {
                    BrokerMetrics::inc(&metrics.store_errors);
                    if metrics.store_up.swap(0, Relaxed) == 1 {
                        tracing::error!(store = store.kind(), error = %e, pending = batch.len(), "store write failed; retrying, live routing continues");
                    }
                    *last_error.lock() = Some(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        metrics.store_pending.fetch_sub(batch.len() as i64, Relaxed);
        BrokerMetrics::inc(&metrics.store_batches);
        batch.clear();
        let _ = committed.send(last);
    }
    let _ = committed.send(last);
}

/// Notices a store that went away even when nothing is being written.
async fn pinger(store: SharedStore, metrics: Arc<BrokerMetrics>, last_error: Arc<Mutex<Option<String>>>) {
    let weak = Arc::downgrade(&store);
    drop(store);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(store) = weak.upgrade() else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => {
                if metrics.store_pending.load(Relaxed) == 0 && metrics.store_up.swap(1, Relaxed) == 0 {
                    tracing::info!(store = store.kind(), "store is answering again");
                    *last_error.lock() = None;
                }
            }
            Ok(Err(e)) => {
                BrokerMetrics::inc(&metrics.store_errors);
                if metrics.store_up.swap(0, Relaxed) == 1 {
                    tracing::error!(store = store.kind(), error = %e, "store is not answering");
                }
                *last_error.lock() = Some(e.to_string());
            }
            Err(_) => {
                BrokerMetrics::inc(&metrics.store_errors);
                if metrics.store_up.swap(0, Relaxed) == 1 {
                    tracing::error!(store = store.kind(), "store ping timed out");
                }
                *last_error.lock() = Some("ping timed out".into());
            }
        }
    }
}
