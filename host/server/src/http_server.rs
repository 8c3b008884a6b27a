//! The HTTP and HTTPS listeners: one axum application, served by hyper with a header read
//! timeout; HTTPS behind rustls (tokio-rustls), with optional TLS client certificates. A certificate that passed the
//! handshake (checked against Shoal's CA and the registered CAs) reaches the authentication
//! middleware as [`TlsPeer`], where a request without a SigV4 signature is authenticated by it.
//!
//! Connections are accepted on the main runtime and served on [`HttpThreads`]: a few threads
//! each running its own single-threaded runtime, every connection on one of them for its whole
//! life (TLS handshake included). On the 2-core machine an HTTP shadow update on Redis cost
//! Shoal ~36 µs of CPU served by the main (work-stealing, two-thread) runtime, ~35 µs this way,
//! and ~24 µs with the Redis shadow store's connection per thread that this makes possible: no
//! task migrates between cores, and no other thread is woken for each request
//! (docs/BENCHMARKS.md). With no threads ([`HttpThreads::start`] with 0), connections are
//! served on the caller's runtime. The threads stop when the server has finished everything
//! else (`serve::run`), so WebSocket bridges still carry the broker's goodbyes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::api::TlsPeer;

/// Longest TLS handshake (including the wait for a handshake slot); a client that stalls in
/// it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait (within [`HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 256;

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// What every connection of one listener is served with.
struct Site {
    app: Router,
    acceptor: Option<TlsAcceptor>,
    handshakes: tokio::sync::Semaphore,
    read_timeout: Duration,
}

impl Site {
    /// Serves one accepted connection (after its TLS handshake, on an HTTPS listener).
    async fn serve(self: Arc<Self>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let Some(acceptor) = self.acceptor.clone() else {
            serve_connection(tcp, peer, TlsPeer::default(), self.app.clone(), self.read_timeout).await;
            return;
        };
        let handshake = async {
            let _permit = self.handshakes.acquire().await.map_err(std::io::Error::other)?;
            acceptor.accept(tcp).await
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTPS handshake timed out");
                return;
            }
        };
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        serve_connection(
            tls,
            peer,
            TlsPeer(Arc::new(certs)),
            self.app.clone(),
            self.read_timeout,
        )
        .await;
    }
}

/// A connection handed to an HTTP thread.
struct Handed {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    site: Arc<Site>,
}

/// The threads that serve HTTP connections, each with its own single-threaded tokio runtime
/// (see the [module docs](self)). They stop, dropping their connections, when `stop` given to
/// [`HttpThreads::start`] turns true.
#[derive(Debug)]
pub struct HttpThreads {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
    next: AtomicUsize,
}

impl HttpThreads {
    /// Starts `n` threads (none: connections are served on the listener's runtime).
    pub fn start(n: usize, stop: &tokio::sync::watch::Receiver<bool>) -> std::io::Result<Arc<HttpThreads>> {
        let mut senders = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handed>();
            let mut stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("shoal-http-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        loop {
                            let handed = tokio::select! {
                                h = rx.recv() => h,
                                _ = stopped(&mut stop) => None,
                            };
                            let Some(Handed { tcp, peer, site }) = handed else {
                                // The accept loops stop first (their handles close the
                                // channel): the connections this thread serves, WebSocket
                                // bridges among them, carry on until the stop itself.
                                stopped(&mut stop).await;
                                return;
                            };
                            match tokio::net::TcpStream::from_std(tcp) {
                                Ok(tcp) => {
                                    tokio::spawn(site.serve(tcp, peer));
                                }
                                Err(e) => {
                                    tracing::warn!(%peer, error = %e, "cannot serve an HTTP connection")
                                }
                            }
                        }
                    });
                    // Dropping the runtime here cancels the connections it still serves.
                })?;
            senders.push(tx);
        }
        Ok(Arc::new(HttpThreads {
            senders,
            next: AtomicUsize::new(0),
        }))
    }

    /// Serves `tcp` on the next thread in turn, or on this runtime when there are no threads
    /// (or the thread is gone).
    fn hand(&self, tcp: tokio::net::TcpStream, peer: SocketAddr, site: &Arc<Site>) {
        if self.senders.is_empty() {
            tokio::spawn(site.clone().serve(tcp, peer));
            return;
        }
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand an HTTP connection over");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if let Err(back) = self.senders[i].send(Handed {
            tcp,
            peer,
            site: site.clone(),
        }) {
            // The thread has stopped (the server is stopping): serve it here.
            let Handed { tcp, peer, site } = back.0;
            if let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) {
                tokio::spawn(site.serve(tcp, peer));
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, each
/// connection on one of `threads`.
///
/// Each connection is HTTP/1.1 with upgrades (for `/mqtt`). A client gets `read_timeout` to
/// send a request's headers, or is disconnected (slow-loris); the authentication middleware
/// gives it the same time again for the body.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    read_timeout: Duration,
    threads: Arc<HttpThreads>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let site = Arc::new(Site {
        app,
        acceptor: tls.map(TlsAcceptor::from),
        handshakes: tokio::sync::Semaphore::new(MAX_HANDSHAKES),
        read_timeout,
    });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        threads.hand(tcp, peer, &site);
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, certs: TlsPeer, app: Router, read_timeout: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(certs.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
