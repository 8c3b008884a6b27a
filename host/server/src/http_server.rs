//! The HTTP and HTTPS listeners: one axum application, served by hyper with a header read
//! timeout; HTTPS behind rustls (tokio-rustls), with optional TLS client certificates. A certificate that passed the
//! handshake (checked against Shoal's CA and the registered CAs) reaches the authentication
//! middleware as [`TlsPeer`], where a request without a SigV4 signature is authenticated by it.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true.
///
/// Each connection is HTTP/1.1 with upgrades (for `/mqtt`). A client gets `read_timeout` to
/// send a request's headers, or is disconnected (slow-loris); the authentication middleware
/// gives it the same time again for the body.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    read_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
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
        let app = app.clone();
        let Some(acceptor) = acceptor.clone() else {
            tokio::spawn(serve_connection(tcp, peer, TlsPeer::default(), app, read_timeout));
            continue;
        };
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            let handshake = async {
                let _permit = handshakes.acquire_owned().await.map_err(std::io::Error::other)?;
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
            serve_connection(tls, peer, TlsPeer(Arc::new(certs)), app, read_timeout).await;
        });
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
