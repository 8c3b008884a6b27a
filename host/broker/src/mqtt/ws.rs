//! MQTT over WebSocket, ntex side.
//!
//! The HTTP listener (axum, tokio) answers the WebSocket upgrade at `/mqtt`, authenticates it
//! (SigV4 presigned URL or TLS client certificate), then bridges the upgraded connection's
//! bytes to this internal Unix socket (in a directory of its own, mode 0700; the socket mode
//! 0600). Each bridged connection starts with a preamble that says who the client is (see
//! [`WsHello::encode`] for its layout). The preamble carries the bridge's [`WsToken`], a random
//! secret the process made at start and gave both sides in memory: the ntex side compares it
//! in constant time and drops a connection that does not bring it, so nothing that merely
//! reaches the socket can pass itself off as an authenticated client. The ntex side answers one
//! byte (`1`) once it has read and checked the preamble, and only then does the bridge forward
//! the client's frames, so nothing but the preamble is ever buffered before the WebSocket layer
//! is in place. Then: [`WsMeta`] (answers the connect code's queries: the client's real
//! address, the TLS chain, the verified access key) → ntex's `WsTransport` (binary frames,
//! pings, close) → the same MQTT service as the TCP listeners.

use std::any::{Any, TypeId};
use std::net::SocketAddr;

use ntex::codec::{Decoder, Encoder};
use ntex::io::{FilterBuf, FilterLayer, Io};
use ntex::util::{BytePages, BytesMut};

/// Longest preamble accepted (after its 4-byte length).
pub const MAX_HELLO: usize = 64 * 1024;

/// Length of a [`WsToken`].
pub const TOKEN_LEN: usize = 32;

/// The secret of the bridge socket: made at start from the system's random source, held in
/// memory by both sides of the bridge and never written anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct WsToken([u8; TOKEN_LEN]);

impl std::fmt::Debug for WsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsToken(..)")
    }
}

impl WsToken {
    /// A fresh token from the system's random source (ring's `SystemRandom`).
    pub fn generate() -> std::io::Result<WsToken> {
        use ring::rand::SecureRandom as _;
        let mut b = [0u8; TOKEN_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| std::io::Error::other("the system random source failed"))?;
        Ok(WsToken(b))
    }

    /// A token of the given bytes (tests).
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> WsToken {
        WsToken(bytes)
    }

    /// Whether `other` is this token, in time independent of where they differ (every byte is
    /// compared, the differences OR-ed together).
    fn matches(&self, other: &[u8]) -> bool {
        if other.len() != TOKEN_LEN {
            return false;
        }
        let diff = self.0.iter().zip(other).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Who a bridged WebSocket client is, as the HTTP side verified it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsHello {
    /// The client's address (the TCP peer of the HTTP connection).
    pub peer: Option<SocketAddr>,
    /// The access key whose SigV4 presigned URL opened the connection.
    pub access_key: Option<String>,
    /// The TLS client certificate chain (DER, leaf first) of an HTTPS connection.
    pub certificates: Vec<Vec<u8>>,
}

/// A preamble that would exceed [`MAX_HELLO`] (a client certificate chain that large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the connection's identity (its TLS client certificate chain) takes {size} bytes, more than the {MAX_HELLO} the bridge carries"
)]
pub struct HelloTooLarge {
    /// The size the preamble would have had.
    pub size: usize,
}

impl WsHello {
    /// The preamble bytes: a `u32` big-endian length, then the [`WsToken`] (32 bytes), the peer
    /// address (`u8` length + text, 0 for none), the access key (`u8` 0 for none, or 1 + `u16`
    /// length + text), and the certificates (`u16` count, then each as `u32` length + DER),
    /// all lengths big-endian. Fails when the result would exceed [`MAX_HELLO`].
    pub fn encode(&self, token: &WsToken) -> Result<Vec<u8>, HelloTooLarge> {
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        let size = TOKEN_LEN
            + 1
            + peer.len()
            + 1
            + self.access_key.as_ref().map_or(0, |k| 2 + k.len())
            + 2
            + self.certificates.iter().map(|c| 4 + c.len()).sum::<usize>();
        // Each field's own limit is far above what MAX_HELLO lets through, except the peer's
        // (an address is at most ~60 characters).
        if size > MAX_HELLO || peer.len() > usize::from(u8::MAX) {
            return Err(HelloTooLarge { size });
        }
        let mut out = Vec::with_capacity(4 + size);
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.extend_from_slice(&token.0);
        out.push(peer.len() as u8);
        out.extend_from_slice(peer.as_bytes());
        match &self.access_key {
            None => out.push(0),
            Some(k) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u16).to_be_bytes());
                out.extend_from_slice(k.as_bytes());
            }
        }
        out.extend_from_slice(&(self.certificates.len() as u16).to_be_bytes());
        for c in &self.certificates {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        Ok(out)
    }

    /// Parses the fields after the token (the body of [`WsHello::encode`] less its length and
    /// token).
    fn decode_fields(mut b: &[u8]) -> Result<WsHello, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err(format!("preamble: truncated {what}"));
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        fn text(bytes: &[u8], what: &str) -> Result<String, String> {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("preamble: {what} is not UTF-8"))
        }
        let n = take(&mut b, 1, "peer")?[0];
        let peer = match n {
            0 => None,
            n => {
                let t = text(take(&mut b, usize::from(n), "peer")?, "peer")?;
                Some(
                    t.parse::<SocketAddr>()
                        .map_err(|e| format!("preamble: peer {t:?}: {e}"))?,
                )
            }
        };
        let access_key = match take(&mut b, 1, "access key")?[0] {
            0 => None,
            1 => {
                let l = take(&mut b, 2, "access key")?;
                let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
                Some(text(take(&mut b, n, "access key")?, "access key")?)
            }
            x => return Err(format!("preamble: access key tag {x}")),
        };
        let l = take(&mut b, 2, "certificates")?;
        let count = u16::from_be_bytes([l[0], l[1]]);
        let mut certificates = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let l = take(&mut b, 4, "certificate")?;
            let n = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
            certificates.push(take(&mut b, n, "certificate")?.to_vec());
        }
        if !b.is_empty() {
            return Err(format!("preamble: {} bytes after the certificates", b.len()));
        }
        Ok(WsHello {
            peer,
            access_key,
            certificates,
        })
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

/// Decodes the preamble (checking its token); encodes the one-byte answer.
#[derive(Debug)]
struct HelloCodec {
    token: WsToken,
}

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
        if len < TOKEN_LEN {
            return Err(format!("preamble of {len} bytes, too short for its token"));
        }
        // The token first, as soon as it is in: a stranger is dropped without waiting for more.
        if src.len() >= 4 + TOKEN_LEN && !self.token.matches(&src[4..4 + TOKEN_LEN]) {
            return Err("the preamble does not carry this process's bridge token".into());
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        let frame = src.split_to(4 + len);
        WsHello::decode_fields(&frame[4 + TOKEN_LEN..]).map(Some)
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
pub(crate) async fn accept(io: Io, max_frame: usize, token: WsToken) -> Result<ntex::io::IoBoxed, String> {
    let codec = HelloCodec { token };
    let hello = match io.recv(&codec).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err("the bridge closed before its preamble".into()),
        Err(e) => return Err(format!("reading the preamble: {e:?}")),
    };
    io.send(1, &codec)
        .await
        .map_err(|e| format!("answering the preamble: {e:?}"))?;
    let io = io.add_filter(WsMeta(hello));
    let io = ntex::ws::WsTransport::create(io, ntex::ws::Codec::new().max_size(max_frame));
    Ok(io.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> HelloCodec {
        HelloCodec {
            token: WsToken::from_bytes([7; TOKEN_LEN]),
        }
    }

    #[test]
    fn the_preamble_round_trips() {
        let h = WsHello {
            peer: Some("10.0.0.7:50123".parse().unwrap()),
            access_key: Some("AKIAEXAMPLE".into()),
            certificates: vec![vec![1, 2, 3], vec![], vec![0xff; 3000]],
        };
        let token = WsToken::from_bytes([7; TOKEN_LEN]);
        let bytes = h.encode(&token).unwrap();
        // Compact: the certificates' bytes plus a few bytes of framing, not JSON arrays.
        assert!(bytes.len() < 3003 + 100, "{}", bytes.len());
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(codec().decode(&mut buf).unwrap(), None);
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"rest");
        assert_eq!(codec().decode(&mut buf).unwrap(), Some(h));
        assert_eq!(&buf[..], b"rest");
        let mut big = BytesMut::from(&(MAX_HELLO as u32 + 1).to_be_bytes()[..]);
        assert!(codec().decode(&mut big).is_err());
        // Nobody at all, and IPv6.
        for h in [
            WsHello::default(),
            WsHello {
                peer: Some("[2001:db8::1]:443".parse().unwrap()),
                ..WsHello::default()
            },
        ] {
            let mut buf = BytesMut::from(&h.encode(&token).unwrap()[..]);
            assert_eq!(codec().decode(&mut buf).unwrap(), Some(h));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_wrong_token_is_refused() {
        let h = WsHello {
            access_key: Some("AKIAEXAMPLE".into()),
            ..WsHello::default()
        };
        let mut other = [7; TOKEN_LEN];
        other[TOKEN_LEN - 1] = 8;
        let bytes = h.encode(&WsToken::from_bytes(other)).unwrap();
        let err = codec().decode(&mut BytesMut::from(&bytes[..])).unwrap_err();
        assert!(err.contains("token"), "{err}");
        // Refused as soon as the token is in, before the rest arrives.
        assert!(
            codec()
                .decode(&mut BytesMut::from(&bytes[..4 + TOKEN_LEN]))
                .is_err()
        );
        // A preamble too short to hold a token.
        let mut short = BytesMut::from(&5u32.to_be_bytes()[..]);
        short.extend_from_slice(b"hello");
        assert!(codec().decode(&mut short).is_err());
        // Garbage after a right token.
        let mut junk = BytesMut::from(&(TOKEN_LEN as u32 + 3).to_be_bytes()[..]);
        junk.extend_from_slice(&[7; TOKEN_LEN]);
        junk.extend_from_slice(&[0, 9, 9]);
        assert!(codec().decode(&mut junk).is_err());
    }

    #[test]
    fn an_oversized_chain_fails_to_encode_instead_of_being_cut() {
        let h = WsHello {
            certificates: vec![vec![0; 20_000]; 4],
            ..WsHello::default()
        };
        let e = h.encode(&WsToken::from_bytes([1; TOKEN_LEN])).unwrap_err();
        assert!(e.size > MAX_HELLO);
        assert!(e.to_string().contains("more than"), "{e}");
        // Just under the limit passes.
        let h = WsHello {
            certificates: vec![vec![0; MAX_HELLO - TOKEN_LEN - 1 - 1 - 2 - 4]],
            ..WsHello::default()
        };
        let bytes = h.encode(&WsToken::from_bytes([7; TOKEN_LEN])).unwrap();
        assert_eq!(bytes.len(), 4 + MAX_HELLO);
        assert_eq!(codec().decode(&mut BytesMut::from(&bytes[..])).unwrap(), Some(h));
    }

    #[test]
    fn tokens_are_random_and_never_printed() {
        let a = WsToken::generate().unwrap();
        let b = WsToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "WsToken(..)");
        assert!(a.matches(&a.0) && !a.matches(&b.0) && !a.matches(&a.0[1..]));
    }
}
