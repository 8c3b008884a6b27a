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

/// The client: https targets are checked against the roots in `ca_file` (PEM), else the
/// system's bundle ([`crate::email::DEFAULT_CA_FILE`]) when it exists.
fn client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    let default = std::path::Path::new(crate::email::DEFAULT_CA_FILE);
    let path = match ca_file {
        Some(p) => Some(p),
        None => default.exists().then_some(default),
    };
    if let Some(path) = path {
        let pem = std::fs::read(path).map_err(|e| format!("webhook CA file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("webhook CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "webhook CA file {}: no certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the webhook client: {e}"))
}

impl Webhooks {
    /// Starts the sender; `ca_file` holds the roots https targets are checked against.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        capacity: usize,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Webhooks, String> {
        let client = client(ca_file)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(capacity.max(1));
        let counters = Arc::new(WebhookCounters::default());
        let c = counters.clone();
        rt.spawn(async move {
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
        Ok(Webhooks { tx, counters })
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
            // A certificate the roots do not vouch for will not improve by asking again.
            Err(e) if is_tls_error(&e) => break format!("{}: {}", req.url, chain(&e)),
            Err(e) => format!("{}: {}", req.url, chain(&e)),
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

/// The error and its causes, so a TLS failure says which certificate check failed.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn is_tls_error(e: &reqwest::Error) -> bool {
    let text = chain(e).to_lowercase();
    text.contains("certificate") || text.contains("tls handshake") || text.contains("invalid peer")
}
