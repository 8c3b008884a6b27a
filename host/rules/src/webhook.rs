//! The `webhook` action's sender: HTTP POSTs made by tasks on the runtime, never by the rules
//! workers. A worker queues the request (bounded; a full queue drops it and counts it) and
//! goes on; the sender makes at most [`MAX_IN_FLIGHT`] requests at once, each bounded by the
//! action's timeout, retried with a doubling pause (200 ms, 400 ms, ...) on a connection error,
//! a timeout or a 5xx answer, up to the action's retries. A request that still fails is handed
//! back (the `on_failure` callback) so the rule's error action runs with AWS's error document.
//! A target that hangs or fails therefore costs the broker and the other rules nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Requests in flight at once, across all webhook actions.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// One request.
pub(crate) struct Request {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    pub retries: u32,
    /// Called with the final error when every attempt failed.
    pub on_failure: Box<dyn FnOnce(String) + Send>,
}

/// Counters of the sender.
#[derive(Debug, Default)]
pub(crate) struct WebhookCounters {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// The handle rules workers use.
pub(crate) struct Webhooks {
    tx: tokio::sync::mpsc::Sender<Request>,
    pub counters: Arc<WebhookCounters>,
}

impl Webhooks {
    pub(crate) fn start(rt: &tokio::runtime::Handle, capacity: usize) -> Webhooks {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(capacity.max(1));
        let counters = Arc::new(WebhookCounters::default());
        let c = counters.clone();
        rt.spawn(async move {
            let client = reqwest::Client::new();
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            while let Some(req) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, c) = (client.clone(), c.clone());
                tokio::spawn(async move {
                    send(&client, req, &c).await;
                    drop(permit);
                });
            }
        });
        Webhooks { tx, counters }
    }

    /// Queues a request; `Err` when the queue is full (dropped and counted).
    pub(crate) fn post(&self, req: Request) -> Result<(), String> {
        self.tx.try_send(req).map_err(|e| {
            self.counters.dropped.fetch_add(1, Relaxed);
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    "the webhook queue is full; request dropped".to_string()
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    "the webhook sender has stopped".to_string()
                }
            }
        })
    }
}

async fn send(client: &reqwest::Client, req: Request, c: &WebhookCounters) {
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0;
    let error = loop {
        let mut r = client.post(&req.url).timeout(req.timeout).body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        let error = match r.send().await {
            Ok(resp) if resp.status().is_success() => {
                c.sent.fetch_add(1, Relaxed);
                return;
            }
            // A 4xx will not get better by asking again.
            Ok(resp) if resp.status().is_client_error() => {
                break format!("{} answered {}", req.url, resp.status());
            }
            Ok(resp) => format!("{} answered {}", req.url, resp.status()),
            Err(e) if e.is_timeout() => {
                format!("{}: no answer within {} ms", req.url, req.timeout.as_millis())
            }
            Err(e) => format!("{}: {e}", req.url),
        };
        if attempt >= req.retries {
            break error;
        }
        attempt += 1;
        c.retried.fetch_add(1, Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    };
    c.failed.fetch_add(1, Relaxed);
    let attempts = attempt + 1;
    (req.on_failure)(format!("{error} (after {attempts} attempt(s))"));
}
