//! MQTT over WebSocket at `GET /mqtt` (subprotocols `mqtt` and `mqttv3.1`), HTTP side.
//!
//! The upgrade is authenticated here, before the 101: a SigV4 presigned URL (signing name
//! `iotdevicegateway` as AWS's SDKs use, or any other Shoal accepts) whose key then becomes the
//! connection's identity, or the TLS client certificate of an HTTPS connection (judged at
//! CONNECT like on MQTT/TLS), or nothing when HTTP authentication is off (the plain listener's
//! anonymous access then applies). The upgraded bytes are bridged to the MQTT server's internal
//! Unix socket (see `shoal_broker::mqtt::ws`) behind a preamble naming the client and carrying
//! the bridge's token (a [`WsToken`] the server puts in every request's extensions).
//!
//! A bridge ends as soon as either direction ends (end of stream or error): the other side's
//! write half is shut down and what is still in flight the other way gets [`LINGER`] to pass.
//! A client that vanished without closing, or an MQTT connection the broker closed, therefore
//! never keeps the task, the MQTT connection or the socket alive; writes to a client that
//! stopped reading give up after the broker's write timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_auth::sigv4::{self, Authorization, SigV4Error};
use shoal_broker::mqtt::ws::{WsHello, WsToken};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::AppState;
use super::auth::TlsPeer;
use super::error::ApiError;

/// The subprotocols accepted, in order of preference.
const PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Connections bridged right now.
pub static BRIDGED: AtomicU64 = AtomicU64::new(0);

/// Bytes read at once, each way.
const CHUNK: usize = 16 * 1024;

/// Once one direction of a bridge has ended, how long the other may still run (the broker's
/// last packets and close frame on their way to the client, or the other way round).
const LINGER: Duration = Duration::from_secs(2);

/// Counts one live bridge in [`BRIDGED`] for as long as it lives (however its task ends).
struct Live<'a>(&'a AtomicU64);

impl<'a> Live<'a> {
    fn new(gauge: &'a AtomicU64) -> Live<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Live(gauge)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bad(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Response {
    ApiError {
        status,
        error_type,
        body: json!({ "message": message.into() }),
    }
    .into_response()
}

/// `GET /mqtt`.
pub async fn upgrade(State(s): State<AppState>, mut req: Request) -> Response {
    let (Some(socket), Some(token)) = (s.ws_socket.clone(), req.extensions().get::<WsToken>().cloned())
    else {
        return bad(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "MQTT over WebSocket is off on this server",
        );
    };
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return bad(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "/mqtt takes a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return bad(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "Sec-WebSocket-Version must be 13",
        );
    }
    let Some(accept) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| ntex::ws::hash_key(k.as_bytes()).ok())
    else {
        return bad(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "a valid Sec-WebSocket-Key is required",
        );
    };
    let offered: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_ascii_lowercase()))
        .collect();
    let protocol = PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied();
    if !offered.is_empty() && protocol.is_none() {
        return bad(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            format!("Sec-WebSocket-Protocol must offer mqtt or mqttv3.1, not {offered:?}"),
        );
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let certificates: Vec<Vec<u8>> = req
        .extensions()
        .get::<TlsPeer>()
        .map(|t| t.0.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    let access_key = match authenticate(&s, &req, &certificates) {
        Ok(k) => k,
        Err(e) => {
            s.auth_metrics.count(e.label());
            tracing::info!(peer = ?peer, reason = e.label(), "MQTT over WebSocket refused: {}", e.to_string().lines().next().unwrap_or_default());
            return bad(StatusCode::FORBIDDEN, e.aws_type(), e.to_string());
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return bad(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "this connection cannot be upgraded",
        );
    };
    let hello = WsHello {
        peer,
        access_key,
        certificates,
    };
    let preamble = match hello.encode(&token) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(peer = ?peer, "MQTT over WebSocket refused: {e}");
            return bad(
                StatusCode::BAD_REQUEST,
                "InvalidRequestException",
                format!("{e}: use a shorter chain or a presigned URL"),
            );
        }
    };
    // Reach the MQTT server first, so a failure is an HTTP error and not a dead WebSocket.
    let bridge = match open_bridge(&socket, &preamble).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "MQTT over WebSocket: the MQTT server did not take the connection");
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                format!("the MQTT server is not accepting connections: {e}"),
            );
        }
    };
    let stall = Duration::from_secs(u64::from(s.broker.cfg.limits.write_timeout_secs.max(1)));
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        let _live = Live::new(&BRIDGED);
        let client = hyper_util::rt::TokioIo::new(upgraded);
        if let Err(e) = run_bridge(client, bridge, stall).await {
            tracing::debug!(peer = ?peer, error = %e, "MQTT over WebSocket connection ended");
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let hs = resp.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        hs.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// The access key of a presigned URL; `None` for a certificate or (auth off) nobody.
fn authenticate(s: &AppState, req: &Request, certificates: &[Vec<u8>]) -> Result<Option<String>, SigV4Error> {
    let sreq = super::auth::signed_parts(req.method(), req.uri(), req.headers());
    match Authorization::parse(&sreq) {
        Ok(auth) => {
            auth.check_time(sigv4::unix_now())?;
            let secret = s.identity.signing_secret(&auth.credential.key_id)?;
            auth.verify_cached(&sreq, sigv4::EMPTY_SHA256, &secret, &s.sigv4_keys)?;
            s.auth_metrics.count("ok");
            Ok(Some(auth.credential.key_id))
        }
        Err(SigV4Error::Missing) if !certificates.is_empty() || !s.sigv4 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Connects to the MQTT server's bridge socket, sends the preamble and waits for its answer.
async fn open_bridge(path: &std::path::Path, preamble: &[u8]) -> std::io::Result<tokio::net::UnixStream> {
    let io = async {
        let mut s = tokio::net::UnixStream::connect(path).await?;
        s.write_all(preamble).await?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await?;
        if ack[0] != 1 {
            return Err(std::io::Error::other("unexpected answer to the preamble"));
        }
        Ok(s)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))?
}

/// Copies `r` to `w` until `r` ends, then shuts `w` down. With `stall`, a write that makes no
/// progress for that long (a peer that stopped reading) is an error.
async fn pump<R, W>(mut r: R, mut w: W, stall: Option<Duration>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn bounded<T>(
        stall: Option<Duration>,
        f: impl Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        match stall {
            None => f.await,
            Some(d) => tokio::time::timeout(d, f)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer stopped reading"))?,
        }
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        bounded(stall, async {
            w.write_all(&buf[..n]).await?;
            w.flush().await
        })
        .await?;
    }
    bounded(stall, w.shutdown()).await
}

/// Bridges `client` (the upgraded connection) and `broker` (the MQTT server's socket) until
/// either direction ends; returns the first error. Writes to the client give up after `stall`
/// without progress; the broker is trusted to read (it has its own timeouts).
pub(crate) async fn run_bridge<C, B>(client: C, broker: B, stall: Duration) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    /// The first direction ended: unless it failed, the other gets [`LINGER`] to deliver
    /// what is in flight, but nobody waits for a peer that never closes.
    async fn finish(
        first: std::io::Result<()>,
        other: impl Future<Output = std::io::Result<()>>,
    ) -> std::io::Result<()> {
        first?;
        tokio::time::timeout(LINGER, other).await.unwrap_or(Ok(()))
    }
    let (client_r, client_w) = tokio::io::split(client);
    let (broker_r, broker_w) = tokio::io::split(broker);
    let mut up = std::pin::pin!(pump(client_r, broker_w, None));
    let mut down = std::pin::pin!(pump(broker_r, client_w, Some(stall)));
    tokio::select! {
        r = &mut up => finish(r, down).await,
        r = &mut down => finish(r, up).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio::time::{Instant, timeout};

    const BOUND: Duration = Duration::from_secs(5);

    async fn read_some(r: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let n = timeout(BOUND, r.read(&mut buf)).await.unwrap().unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn the_bridge_ends_when_the_broker_closes_though_the_client_stays_silent() {
        let (mut client, client_end) = duplex(64 * 1024);
        let (mut broker, broker_end) = duplex(64 * 1024);
        let live = AtomicU64::new(0);
        let task = async {
            let _live = Live::new(&live);
            run_bridge(client_end, broker_end, Duration::from_secs(30)).await
        };
        let test = async {
            client.write_all(b"ping").await.unwrap();
            assert_eq!(read_some(&mut broker).await, b"ping");
            broker.write_all(b"pong").await.unwrap();
            assert_eq!(read_some(&mut client).await, b"pong");
            assert_eq!(live.load(Ordering::Relaxed), 1);
            // The broker says its last words and closes; the client neither reads nor closes.
            broker.write_all(b"bye").await.unwrap();
            drop(broker);
        };
        let t0 = Instant::now();
        let (r, ()) = timeout(BOUND, async { tokio::join!(task, test) }).await.unwrap();
        r.unwrap();
        assert!(
            t0.elapsed() < LINGER + Duration::from_secs(1),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(live.load(Ordering::Relaxed), 0);
        // What was in flight arrived, then the end of the stream.
        assert_eq!(read_some(&mut client).await, b"bye");
        assert_eq!(read_some(&mut client).await, b"");
    }

    #[tokio::test]
    async fn the_bridge_ends_when_the_client_goes_though_the_broker_stays_silent() {
        let (client, client_end) = duplex(1024);
        let (mut broker, broker_end) = duplex(1024);
        let task = tokio::spawn(run_bridge(client_end, broker_end, Duration::from_secs(30)));
        drop(client);
        timeout(BOUND, task).await.unwrap().unwrap().unwrap();
        // The broker's side was shut down: it reads the end of the stream.
        assert_eq!(read_some(&mut broker).await, b"");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_ends_the_bridge() {
        let (_client, client_end) = duplex(1024);
        let (mut broker, broker_end) = duplex(1024 * 1024);
        let task = tokio::spawn(run_bridge(client_end, broker_end, Duration::from_millis(200)));
        broker.write_all(&[0u8; 64 * 1024]).await.unwrap();
        let r = timeout(BOUND, task).await.unwrap().unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_gauge_falls_however_a_bridge_ends() {
        let g = AtomicU64::new(0);
        let a = Live::new(&g);
        let b = Live::new(&g);
        assert_eq!(g.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(g.load(Ordering::Relaxed), 0);
    }
}
