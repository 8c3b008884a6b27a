//! MQTT over WebSocket at `GET /mqtt` (subprotocols `mqtt` and `mqttv3.1`), HTTP side.
//!
//! The upgrade is authenticated here, before the 101: a SigV4 presigned URL (signing name
//! `iotdevicegateway` as AWS's SDKs use, or any other Shoal accepts) whose key then becomes the
//! connection's identity, or the TLS client certificate of an HTTPS connection (judged at
//! CONNECT like on MQTT/TLS), or nothing when HTTP authentication is off (the plain listener's
//! anonymous access then applies). The upgraded bytes are bridged to the MQTT server's internal
//! Unix socket (see `shoal_broker::mqtt::ws`) behind a preamble naming the client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_auth::sigv4::{self, Authorization, SigV4Error};
use shoal_broker::mqtt::ws::WsHello;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::AppState;
use super::auth::TlsPeer;
use super::error::ApiError;

/// The subprotocols accepted, in order of preference.
const PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Connections bridged right now.
pub static BRIDGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
    let Some(socket) = s.ws_socket.clone() else {
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
    // Reach the MQTT server first, so a failure is an HTTP error and not a dead WebSocket.
    let hello = WsHello {
        peer,
        access_key,
        certificates,
    };
    let mut bridge = match open_bridge(&socket, &hello).await {
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
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        BRIDGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        let r =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut bridge, 16 * 1024, 16 * 1024).await;
        BRIDGED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = r {
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
async fn open_bridge(path: &std::path::Path, hello: &WsHello) -> std::io::Result<tokio::net::UnixStream> {
    let io = async {
        let mut s = tokio::net::UnixStream::connect(path).await?;
        s.write_all(&hello.encode()).await?;
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
