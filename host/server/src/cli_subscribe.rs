//! `shoal subscribe FILTER...`: prints the messages published to topic filters, over MQTT over
//! WebSocket at the server's `/mqtt` (the HTTP endpoint the other verbs use), signed with the
//! CLI's access key as a SigV4 presigned URL. The MQTT 3.1.1 client and the WebSocket framing
//! are the few packets a subscriber needs, written here rather than pulling in a client stack.

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::cli::{Endpoint, print_text, runtime};

/// `shoal subscribe`
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Topic filters (`fleet/+/telemetry`, `#`...).
    #[arg(required = true)]
    pub filters: Vec<String>,
    /// QoS of the subscriptions (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// MQTT client id (default: `shoal-cli-<random>`).
    #[arg(long)]
    pub client_id: Option<String>,
}

/// Runs `shoal subscribe ...`.
pub fn subscribe(ep: &Endpoint, args: SubscribeArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let json = crate::cli::json_output();
    let timeout = args.timeout.map(Duration::from_secs_f64);
    let fut = run(ep, args, json);
    let res = rt.block_on(async {
        match timeout {
            Some(t) => tokio::time::timeout(t, fut).await.unwrap_or(Ok(())),
            None => fut.await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(ep: &Endpoint, args: SubscribeArgs, json: bool) -> Result<(), String> {
    let rest = ep
        .endpoint
        .strip_prefix("http://")
        .ok_or("shoal subscribe needs an http:// endpoint (MQTT over WebSocket at /mqtt)")?;
    let host = rest.split('/').next().unwrap_or(rest).to_owned();
    let mut query = String::new();
    if let Some(c) = crate::cli::credentials() {
        query = shoal_auth::sigv4::presign(
            "/mqtt",
            "",
            &host,
            &shoal_auth::sigv4::SigningKey {
                key_id: &c.0,
                secret: &c.1,
                region: &c.2,
                service: "iotdevicegateway",
            },
            shoal_auth::sigv4::unix_now(),
            300,
        );
    }
    let mut ws = WebSocket::connect(&host, &query).await?;
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("shoal-cli-{:08x}", rand_u32()));
    ws.send(&connect_packet(&client_id, 60)).await?;
    let ack = ws.recv_packet().await?;
    if ack.first() != Some(&0x20) || ack.get(3) != Some(&0) {
        return Err(format!(
            "the server refused the MQTT connection (CONNACK {ack:02x?})"
        ));
    }
    ws.send(&subscribe_packet(1, &args.filters, args.qos)).await?;
    let mut seen = 0u64;
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    loop {
        let packet = tokio::select! {
            p = ws.recv_packet() => p?,
            _ = ping.tick() => {
                ws.send(&[0xC0, 0x00]).await?;
                continue;
            }
        };
        match packet.first().map(|b| b >> 4) {
            Some(9) => {
                // SUBACK: 0x80 is a refused filter.
                if let Some(i) = packet.iter().skip(4).position(|c| *c == 0x80) {
                    return Err(format!(
                        "the server refused the subscription to {}",
                        args.filters.get(i).map(String::as_str).unwrap_or("?")
                    ));
                }
            }
            Some(3) => {
                let (topic, payload, qos, id) = parse_publish(&packet)?;
                if qos > 0 {
                    ws.send(&[0x40, 0x02, (id >> 8) as u8, id as u8]).await?;
                }
                let line = if json {
                    let p = match std::str::from_utf8(&payload) {
                        Ok(s) => json!({"topic": topic, "payload": s, "qos": qos}),
                        Err(_) => json!({"topic": topic, "payloadBase64":
                            base64::engine::general_purpose::STANDARD.encode(&payload), "qos": qos}),
                    };
                    format!("{p}\n")
                } else {
                    format!("{topic} {}\n", String::from_utf8_lossy(&payload))
                };
                print_text(&line);
                seen += 1;
                if args.count.is_some_and(|c| seen >= c) {
                    let _ = ws.send(&[0xE0, 0x00]).await;
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn utf8(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    utf8("MQTT", &mut body);
    body.push(4); // 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    utf8(client_id, &mut body);
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend(body);
    p
}

fn subscribe_packet(id: u16, filters: &[String], qos: u8) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for f in filters {
        utf8(f, &mut body);
        body.push(qos);
    }
    let mut p = vec![0x82];
    remaining_length(body.len(), &mut p);
    p.extend(body);
    p
}

/// `(topic, payload, qos, packet id)` of a PUBLISH packet.
fn parse_publish(p: &[u8]) -> Result<(String, Vec<u8>, u8, u16), String> {
    let qos = (p[0] >> 1) & 3;
    let (_, mut i) = read_remaining(p, 1).ok_or("a malformed PUBLISH")?;
    let bad = || "a malformed PUBLISH".to_owned();
    let len = u16::from_be_bytes([*p.get(i).ok_or_else(bad)?, *p.get(i + 1).ok_or_else(bad)?]) as usize;
    i += 2;
    let topic = String::from_utf8_lossy(p.get(i..i + len).ok_or_else(bad)?).into_owned();
    i += len;
    let mut id = 0;
    if qos > 0 {
        id = u16::from_be_bytes([*p.get(i).ok_or_else(bad)?, *p.get(i + 1).ok_or_else(bad)?]);
        i += 2;
    }
    Ok((topic, p.get(i..).unwrap_or_default().to_vec(), qos, id))
}

/// The remaining length at `p[at..]`: `(length, index after it)`.
fn read_remaining(p: &[u8], at: usize) -> Option<(usize, usize)> {
    let (mut n, mut mult, mut i) = (0usize, 1usize, at);
    loop {
        let b = *p.get(i)?;
        n += (b & 0x7f) as usize * mult;
        i += 1;
        if b & 0x80 == 0 {
            return Some((n, i));
        }
        mult *= 128;
        if mult > 128 * 128 * 128 * 128 {
            return None;
        }
    }
}

/// A client WebSocket carrying binary frames.
struct WebSocket {
    tcp: TcpStream,
    /// Unparsed bytes of frames and MQTT packets.
    frames: Vec<u8>,
    mqtt: Vec<u8>,
}

impl WebSocket {
    async fn connect(host: &str, query: &str) -> Result<WebSocket, String> {
        let mut tcp = TcpStream::connect(host)
            .await
            .map_err(|e| format!("cannot reach Shoal at {host}: {e}"))?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand_u32().to_be_bytes().repeat(4));
        let path = if query.is_empty() {
            "/mqtt".to_owned()
        } else {
            format!("/mqtt?{query}")
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 || head.len() > 64 * 1024 {
                return Err("the server closed the connection during the WebSocket handshake".into());
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if !text.starts_with("HTTP/1.1 101") {
            // The body carries the server's message.
            let mut body = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut body))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let msg = serde_json::from_slice::<serde_json::Value>(&body[..n])
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body[..n]).into_owned());
            let status = text.lines().next().unwrap_or_default();
            return Err(format!("WebSocket upgrade refused: {status}: {msg}"));
        }
        let expected = ntex::ws::hash_key(key.as_bytes()).map_err(|e| e.to_string())?;
        if !text
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("sec-websocket-accept:") && l.contains(&expected))
        {
            return Err("the server's Sec-WebSocket-Accept does not match".into());
        }
        Ok(WebSocket {
            tcp,
            frames: Vec::new(),
            mqtt: Vec::new(),
        })
    }

    /// Sends one binary frame (masked, as a client must).
    async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.frame(0x2, data).await
    }

    async fn frame(&mut self, opcode: u8, data: &[u8]) -> Result<(), String> {
        let mut f = vec![0x80 | opcode];
        match data.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = rand_u32().to_be_bytes();
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.map_err(|e| format!("sending: {e}"))
    }

    /// The next whole MQTT packet.
    async fn recv_packet(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some((len, at)) = read_remaining(&self.mqtt, 1)
                && self.mqtt.len() >= at + len
            {
                return Ok(self.mqtt.drain(..at + len).collect());
            }
            let payload = self.recv_frame().await?;
            self.mqtt.extend_from_slice(&payload);
        }
    }

    /// The payload of the next data frame (answering pings, failing on close).
    async fn recv_frame(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.frames) {
                self.frames.drain(..used);
                match opcode {
                    0x0..=0x2 => return Ok(payload),
                    0x8 => return Err("the server closed the connection".into()),
                    0x9 => self.frame(0xA, &payload).await?,
                    _ => {}
                }
                continue;
            }
            let mut buf = [0u8; 16 * 1024];
            let n = self
                .tcp
                .read(&mut buf)
                .await
                .map_err(|e| format!("receiving: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.frames.extend_from_slice(&buf[..n]);
        }
    }
}

/// `(opcode, payload, bytes used)` of the first whole server frame in `b`.
fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let opcode = b.first()? & 0x0f;
    let masked = b.get(1)? & 0x80 != 0;
    let (len, mut at) = match b.get(1)? & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let data = b.get(at..at + len)?;
    let payload = match mask {
        Some(m) => data.iter().enumerate().map(|(i, x)| x ^ m[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((opcode, payload, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_and_frames() {
        let c = connect_packet("cli", 60);
        assert_eq!(&c[..4], &[0x10, 15, 0, 4]);
        let s = subscribe_packet(1, &["a/#".to_owned()], 1);
        assert_eq!(s, vec![0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1]);
        let mut p = vec![0x32];
        let body = [&[0u8, 3][..], b"a/b", &[0, 7], b"hello"].concat();
        remaining_length(body.len(), &mut p);
        p.extend(body);
        assert_eq!(
            parse_publish(&p).unwrap(),
            ("a/b".into(), b"hello".to_vec(), 1, 7)
        );
        let mut big = Vec::new();
        remaining_length(321, &mut big);
        assert_eq!(read_remaining(&[&[0x30][..], &big].concat(), 1), Some((321, 3)));
        let frame = [&[0x82u8, 126, 0x01, 0x00][..], &[7u8; 256]].concat();
        assert_eq!(parse_frame(&frame), Some((2, vec![7u8; 256], 260)));
        assert_eq!(parse_frame(&frame[..100]), None);
    }
}
