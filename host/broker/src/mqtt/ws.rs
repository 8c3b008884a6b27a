//! MQTT over WebSocket, ntex side.
//!
//! The HTTP listener (axum, tokio) answers the WebSocket upgrade at `/mqtt`, authenticates it
//! (SigV4 presigned URL or TLS client certificate), then bridges the upgraded connection's
//! bytes to this internal Unix socket (mode 0600 in the data dir). Each bridged connection
//! starts with a preamble, `u32` big-endian length + JSON [`WsHello`], that says who the client
//! is; the ntex side answers one byte (`1`) once it has read it, and only then does the bridge
//! forward the client's frames, so nothing but the preamble is ever buffered before the
//! WebSocket layer is in place. Then: [`WsMeta`] (answers the connect code's queries: the
//! client's real address, the TLS chain, the verified access key) → ntex's `WsTransport`
//! (binary frames, pings, close) → the same MQTT service as the TCP listeners.

use std::any::{Any, TypeId};
use std::net::SocketAddr;

use ntex::codec::{Decoder, Encoder};
use ntex::io::{FilterBuf, FilterLayer, Io};
use ntex::util::{BytePages, BytesMut};
use serde::{Deserialize, Serialize};

/// Longest preamble accepted.
pub const MAX_HELLO: usize = 64 * 1024;

/// Who a bridged WebSocket client is, as the HTTP side verified it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WsHello {
    /// The client's address (the TCP peer of the HTTP connection).
    pub peer: Option<SocketAddr>,
    /// The access key whose SigV4 presigned URL opened the connection.
    pub access_key: Option<String>,
    /// The TLS client certificate chain (DER, leaf first) of an HTTPS connection.
    pub certificates: Vec<Vec<u8>>,
}

impl WsHello {
    /// The preamble bytes (length + JSON).
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 4);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out
    }
}

/// The connection facts a WebSocket client's CONNECT is judged on, readable with
/// `io.query::<WsAuth>()`.
#[derive(Debug, Clone)]
pub struct WsAuth(pub WsHello);

/// A pass-through layer that answers queries for the bridged client.
#[derive(Debug)]
pub(crate) struct WsMeta(pub WsHello);

impl FilterLayer for WsMeta {
    fn query(&self, id: TypeId) -> Option<Box<dyn Any>> {
        if id == TypeId::of::<ntex::io::types::PeerAddr>() {
            self.0
                .peer
                .map(|p| Box::new(ntex::io::types::PeerAddr(p)) as Box<dyn Any>)
        } else if id == TypeId::of::<WsAuth>() {
            Some(Box::new(WsAuth(self.0.clone())))
        } else {
            None
        }
    }

    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> std::io::Result<()> {
        buf.with_read_buffers(|src, dst| {
            if let Some(src) = src {
                dst.extend_from_slice(src);
                src.clear();
            }
        });
        Ok(())
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> std::io::Result<()> {
        buf.with_write_buffers(BytePages::move_to);
        Ok(())
    }
}

/// Decodes the preamble; encodes the one-byte answer.
#[derive(Debug, Default)]
struct HelloCodec;

impl Decoder for HelloCodec {
    type Item = WsHello;
    type Error = String;

    fn decode(&self, src: &mut BytesMut) -> Result<Option<WsHello>, String> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_HELLO {
            return Err(format!("preamble of {len} bytes"));
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        let frame = src.split_to(4 + len);
        serde_json::from_slice(&frame[4..])
            .map(Some)
            .map_err(|e| format!("preamble: {e}"))
    }
}

impl Encoder for HelloCodec {
    type Item = u8;
    type Error = String;

    fn encode(&self, item: u8, dst: &mut BytePages) -> Result<(), String> {
        dst.extend_from_slice(&[item]);
        Ok(())
    }
}

/// Reads the preamble of a bridged connection, answers it, and stacks the metadata and
/// WebSocket layers: the result goes to the MQTT service.
pub(crate) async fn accept(io: Io, max_frame: usize) -> Result<ntex::io::IoBoxed, String> {
    let hello = match io.recv(&HelloCodec).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err("the bridge closed before its preamble".into()),
        Err(e) => return Err(format!("reading the preamble: {e:?}")),
    };
    io.send(1, &HelloCodec)
        .await
        .map_err(|e| format!("answering the preamble: {e:?}"))?;
    let io = io.add_filter(WsMeta(hello));
    let io = ntex::ws::WsTransport::create(io, ntex::ws::Codec::new().max_size(max_frame));
    Ok(io.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preamble_round_trips() {
        let h = WsHello {
            peer: Some("10.0.0.7:50123".parse().unwrap()),
            access_key: Some("AKIAEXAMPLE".into()),
            certificates: vec![vec![1, 2, 3]],
        };
        let bytes = h.encode();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(HelloCodec.decode(&mut buf).unwrap(), None);
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"rest");
        assert_eq!(HelloCodec.decode(&mut buf).unwrap(), Some(h));
        assert_eq!(&buf[..], b"rest");
        let mut big = BytesMut::from(&(MAX_HELLO as u32 + 1).to_be_bytes()[..]);
        assert!(HelloCodec.decode(&mut big).is_err());
    }
}
