//! `shoal-loadgen`: an MQTT 3.1.1 load generator for comparing brokers (Shoal, Mosquitto) on
//! the same machine.
//!
//! Every scenario runs many clients in this one process (rumqttc, one event loop task per
//! client, on a tokio multi-thread runtime) and prints one JSON object on stdout; human logs go
//! to stderr.
//!
//! # Measurement method
//!
//! * **Setup before load.** Every client is connected (CONNACK received) and every subscriber
//!   subscribed (SUBACK received and checked) before the first PUBLISH leaves.
//! * **Payload header.** Each payload starts with a 28-byte header: a magic number, a run id
//!   unique to this process, the publisher index, a per-publisher sequence number and the send
//!   time in nanoseconds since a process-wide monotonic epoch ([`Instant`]). Subscribers count
//!   only payloads with this run's id (others are reported as `foreign`), check that each
//!   publisher's sequence numbers arrive in order (`duplicates`: seen before; `reordered`: first
//!   seen after a higher one of the same publisher — MQTT keeps one publisher's messages on one
//!   topic in order, so both should be 0), and, in the latency scenario, record `now - send
//!   time` in an HDR histogram. Publishers and subscribers share the process, so the two clocks
//!   are the same clock.
//! * **Latency.** Measured from just before the publish call (the message enters rumqttc's
//!   request channel) to the subscriber's event loop handing the PUBLISH over: both client
//!   stacks, loopback TCP twice and the broker. Only messages sent inside the measured window
//!   are recorded. The offered rate is fixed: publisher `i` of `P` sends message `k` at
//!   `t0 + (k + i/P) / r` with `r` its share of `--rate`; tokio timers have millisecond
//!   resolution, so a late tick sends what is due at once (small bursts), and the timestamp is
//!   the actual send time. `achieved_rate` (and `rate_ok`) tell whether the rate was held.
//! * **Counters.** `queued`: PUBLISH requests accepted by rumqttc's bounded request channel
//!   (publishers await it: that is the client-side backpressure); `sent`: PUBLISH packets the
//!   client event loops wrote and flushed; `acked`: PUBACKs received (QoS 1); `received`: this
//!   run's PUBLISH packets read by subscribers (QoS 1 subscriptions acknowledge them
//!   automatically).
//! * **Steady-state rates.** Load starts at `t0`; the counters are sampled at `t0 + warmup` and
//!   at `t0 + warmup + duration`; rates are the differences divided by the measured time
//!   between the two samples. `msgs_per_sec` is deliveries read by all subscribers per second;
//!   `publish_per_sec` is PUBLISH packets sent per second (QoS 0) or acknowledged per second
//!   (QoS 1).
//! * **Loss.** After the window, publishers stop; the load generator waits (at most `--drain`
//!   seconds) until every queued request is sent and, at QoS 1, acknowledged, then until the
//!   subscribers have everything expected or nothing new arrived for half a second. `expected`
//!   is `sent` times the number of subscribers each message matches; `lost = expected -
//!   received` over the whole run (warm-up included). A broker may legitimately drop messages
//!   when a subscriber cannot keep up (queue limits), at QoS 1 too: loss measures that.
//! * **Errors.** A connection error during the run ends that client; it is counted
//!   (`dead_clients`) and the first messages are reported in `errors`. Setup failures abort the
//!   run with a JSON object carrying `error`.
//! * **Idle connections** (`conns`): raw TCP sockets, each bound to a source address in
//!   127.0.0.1..127.0.0.K (so ephemeral ports do not run out), send a hand-encoded MQTT 3.1.1
//!   CONNECT (clean session, keep-alive 60 s) and read the CONNACK. When every attempt has
//!   finished, `READY <connected>` is printed on stdout; the connections are then held for
//!   `--hold` seconds (sending PINGREQ every keep-alive/2) while the caller measures the
//!   broker's memory, and the JSON summary follows.
//! * **mTLS handshakes** (`handshakes`): `--concurrency` worker tasks, each in a loop until the
//!   end of the window: open TCP (from 127.0.0.1..127.0.0.K, so TIME_WAIT sockets do not
//!   exhaust the ephemeral ports), a full TLS handshake (rustls with ring; the server
//!   certificate verified against `--ca` for `--server-name`; the client certificate `--cert` /
//!   `--key`), a hand-encoded MQTT 3.1.1 CONNECT (clean session, a fresh client id per
//!   connection), the CONNACK (must be accepted), DISCONNECT, TLS close_notify and close.
//!   **No session resumption**: the one client configuration has resumption disabled
//!   (`Resumption::disabled()`: no session ids or tickets stored or offered), so every
//!   connection pays the full handshake (ECDHE, the server's signature, the client's
//!   CertificateVerify, both chain verifications). Counted by completion time: a connection
//!   finishing inside the window counts; `handshakes_per_sec` = those / window. Failures are
//!   counted by kind (`tcp`, `tls`, `mqtt_io`, `connack_refused`, `timeout`), and latency
//!   percentiles reported for the TLS handshake alone and for the whole connect (TCP connect
//!   to CONNACK). The negotiated protocol version, cipher suite and key-exchange group are
//!   reported.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// MQTT load generator: fan-in, fan-out, point-to-point, latency, idle-connection and TLS
/// handshake scenarios.
#[derive(Debug, Parser)]
#[command(name = "shoal-loadgen", version, about)]
struct Cli {
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// P publishers -> 1 subscriber on `bench/in/+`, publishing as fast as they can (or at
    /// `--rate`).
    FanIn {
        #[command(flatten)]
        load: Load,
        /// Publishers.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Fixed offered rate, messages per second over all publishers (default: as fast as
        /// they can). With a rate, latency percentiles and `rate_ok` are reported too.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// 1 publisher -> S subscribers on `bench/out`, publishing as fast as it can.
    FanOut {
        #[command(flatten)]
        load: Load,
        /// Subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
    },
    /// N pairs: publisher i -> subscriber i on `bench/p2p/i`, as fast as they can (or at
    /// `--rate`).
    P2p {
        #[command(flatten)]
        load: Load,
        /// Publisher/subscriber pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Fixed offered rate, messages per second over all publishers (default: as fast as
        /// they can).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// P publishers at a fixed total rate -> subscriber(s) on `bench/lat/+`; latency percentiles.
    Latency {
        #[command(flatten)]
        load: Load,
        /// Publishers sharing the offered rate.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Subscribers, each on `bench/lat/+`.
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Offered rate, messages per second over all publishers.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
    },
    /// N idle MQTT connections held open (the caller measures broker memory).
    Conns(ConnsArgs),
    /// Full mTLS handshakes + MQTT CONNECT/CONNACK/DISCONNECT per second, C at a time.
    Handshakes(HandshakeArgs),
}

/// The broker to load.
#[derive(Debug, Clone, Args)]
struct Target {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Free text copied into the JSON output (e.g. the broker's name).
    #[arg(long, default_value = "")]
    label: String,
}

/// Options of the message scenarios.
#[derive(Debug, Clone, Args)]
struct Load {
    #[command(flatten)]
    target: Target,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload size in bytes (at least 28: the measurement header; 120 with `--json`).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// JSON payloads (`{"shlg":"<header as hex>","temp":-20.5,"humidity":80,"pad":"..."}`)
    /// instead of binary ones, for rules and plugins that read fields.
    #[arg(long)]
    json: bool,
    /// Measured window in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up in seconds before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// QoS 1 messages in flight per publisher (rumqttc `inflight`).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Capacity of each client's rumqttc request channel.
    #[arg(long, default_value_t = 100)]
    channel_cap: usize,
    /// Longest wait, in seconds, for in-flight messages after the publishers stop.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

#[derive(Debug, Clone, Args)]
struct ConnsArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to hold them once all are connected.
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
    /// Keep-alive in the CONNECT, seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// Source addresses 127.0.0.1..127.0.0.K to spread over (0: let the kernel choose).
    #[arg(long, default_value_t = 16)]
    source_addrs: u8,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Attempts per connection before it counts as failed.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
}

#[derive(Debug, Clone, Args)]
struct HandshakeArgs {
    #[command(flatten)]
    target: Target,
    /// CA certificate(s), PEM, the server's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate (chain), PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Client private key, PEM (PKCS#8, SEC1 or PKCS#1).
    #[arg(long)]
    key: PathBuf,
    /// Name the server certificate is verified against (DNS name or IP address).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// TLS versions offered: 1.2, 1.3, or any (both; the server chooses).
    #[arg(long, default_value = "1.3", value_parser = ["1.2", "1.3", "any"])]
    tls: String,
    /// Connections in progress at once (one worker task each).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured window in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up in seconds before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Source addresses 127.0.0.1..127.0.0.K to spread over (0: let the kernel choose).
    #[arg(long, default_value_t = 16)]
    source_addrs: u8,
    /// Client id prefix: connection n of worker w uses `{prefix}{run}-{w}-{n}`.
    #[arg(long, default_value = "hs")]
    client_id_prefix: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let name = scenario_name(&cli.scenario);
    let label = match &cli.scenario {
        Scenario::FanIn { load, .. }
        | Scenario::FanOut { load, .. }
        | Scenario::P2p { load, .. }
        | Scenario::Latency { load, .. } => load.target.label.clone(),
        Scenario::Conns(c) => c.target.label.clone(),
        Scenario::Handshakes(h) => h.target.label.clone(),
    };
    match rt.block_on(run(cli.scenario)) {
        Ok(v) => {
            emit(&v);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-loadgen: {name}: {e:#}");
            emit(&json!({ "scenario": name, "label": label, "error": format!("{e:#}") }));
            std::process::ExitCode::FAILURE
        }
    }
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::FanIn { .. } => "fan-in",
        Scenario::FanOut { .. } => "fan-out",
        Scenario::P2p { .. } => "p2p",
        Scenario::Latency { .. } => "latency",
        Scenario::Conns(_) => "conns",
        Scenario::Handshakes(_) => "handshakes",
    }
}

/// Writes one line on stdout (the machine-readable channel) and flushes it.
fn emit_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn emit(v: &Value) {
    emit_line(&v.to_string());
}

/// A `--rate` must be a positive number of messages per second.
fn check_rate(rate: Option<f64>) -> anyhow::Result<Option<f64>> {
    match rate {
        Some(r) if r.is_nan() || r <= 0.0 => bail!("--rate must be positive"),
        r => Ok(r),
    }
}

async fn run(scenario: Scenario) -> anyhow::Result<Value> {
    let name = scenario_name(&scenario);
    match scenario {
        Scenario::FanIn {
            load,
            publishers,
            rate,
        } => {
            let rate = check_rate(rate)?;
            let plan = Plan {
                publishers: (0..publishers).map(|i| format!("bench/in/{i}")).collect(),
                subscribers: vec!["bench/in/+".into()],
                deliveries_per_message: 1,
                rate,
                params: json!({ "publishers": publishers, "subscribers": 1, "rate": rate }),
            };
            run_plan(name, &load, plan).await
        }
        Scenario::FanOut { load, subscribers } => {
            let plan = Plan {
                publishers: vec!["bench/out".into()],
                subscribers: vec!["bench/out".into(); subscribers],
                deliveries_per_message: subscribers as u64,
                rate: None,
                params: json!({ "publishers": 1, "subscribers": subscribers }),
            };
            run_plan(name, &load, plan).await
        }
        Scenario::P2p { load, pairs, rate } => {
            let rate = check_rate(rate)?;
            let topics: Vec<String> = (0..pairs).map(|i| format!("bench/p2p/{i}")).collect();
            let plan = Plan {
                publishers: topics.clone(),
                subscribers: topics,
                deliveries_per_message: 1,
                rate,
                params: json!({ "pairs": pairs, "rate": rate }),
            };
            run_plan(name, &load, plan).await
        }
        Scenario::Latency {
            load,
            publishers,
            subscribers,
            rate,
        } => {
            let rate = check_rate(Some(rate))?;
            let plan = Plan {
                publishers: (0..publishers).map(|i| format!("bench/lat/{i}")).collect(),
                subscribers: vec!["bench/lat/+".into(); subscribers],
                deliveries_per_message: subscribers as u64,
                rate,
                params: json!({ "publishers": publishers, "subscribers": subscribers, "rate": rate }),
            };
            run_plan(name, &load, plan).await
        }
        Scenario::Conns(args) => conns(args).await,
        Scenario::Handshakes(args) => handshakes(args).await,
    }
}

// ----- the payload header ----------------------------------------------------------------

/// `"SHLG"`: marks payloads written by this tool.
const MAGIC: u32 = 0x5348_4C47;
/// Bytes of the measurement header at the start of every payload.
const HEADER: usize = 28;
/// Smallest JSON payload (the header as hex and the fixed fields).
const JSON_MIN: usize = 120;

/// The process-wide monotonic epoch that send timestamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn ns_of(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The header fields of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    run: u32,
    publisher: u32,
    seq: u64,
    sent_ns: u64,
}

impl Header {
    /// A payload of `len` bytes (at least [`HEADER`]) starting with this header.
    fn payload(&self, len: usize) -> Vec<u8> {
        let mut p = Vec::with_capacity(len.max(HEADER));
        p.extend_from_slice(&MAGIC.to_le_bytes());
        p.extend_from_slice(&self.run.to_le_bytes());
        p.extend_from_slice(&self.publisher.to_le_bytes());
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&self.sent_ns.to_le_bytes());
        p.resize(len.max(HEADER), 0xA5);
        p
    }

    /// A JSON payload of `len` bytes (at least [`JSON_MIN`]) carrying this header as hex.
    fn json_payload(&self, len: usize) -> Vec<u8> {
        let mut p = String::with_capacity(len.max(JSON_MIN));
        p.push_str("{\"shlg\":\"");
        for b in self.payload(HEADER) {
            p.push_str(&format!("{b:02x}"));
        }
        p.push_str("\",\"temp\":-20.5,\"humidity\":80,\"pad\":\"");
        while p.len() + 2 < len {
            p.push('x');
        }
        p.push_str("\"}");
        p.into_bytes()
    }

    fn parse(p: &[u8]) -> Option<Header> {
        if let Some(hex) = p.strip_prefix(b"{\"shlg\":\"") {
            let raw: Vec<u8> = hex
                .get(..HEADER * 2)?
                .chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
                .collect::<Option<_>>()?;
            return Header::parse(&raw);
        }
        let u32_at = |i: usize| p.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
        let u64_at = |i: usize| p.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
        if u32_at(0)? != MAGIC {
            return None;
        }
        Some(Header {
            run: u32_at(4)?,
            publisher: u32_at(8)?,
            seq: u64_at(12)?,
            sent_ns: u64_at(20)?,
        })
    }
}

/// A run id that differs between runs (time and pid mixed; no need for cryptographic quality).
fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 32) as u32
}

// ----- counters --------------------------------------------------------------------------

/// Counters shared by every client task of a run.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    foreign: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    dead_clients: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Error messages kept for the report.
const MAX_ERRORS: usize = 20;

impl Counters {
    fn error(&self, msg: String) {
        eprintln!("shoal-loadgen: {msg}");
        if let Ok(mut e) = self.errors.lock()
            && e.len() < MAX_ERRORS
        {
            e.push(msg);
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            received: self.received.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    sent: u64,
    acked: u64,
    received: u64,
}

// ----- clients ---------------------------------------------------------------------------

/// How long connecting or subscribing one client may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Setup operations in progress at once.
const SETUP_CONCURRENCY: usize = 32;

fn qos_of(q: u8) -> QoS {
    if q == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

/// Connects one client and, when `filter` is set, subscribes it; returns once the CONNACK
/// (and SUBACK) arrived.
async fn setup_client(
    load: &Load,
    client_id: String,
    filter: Option<String>,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(client_id.clone(), load.target.host.clone(), load.target.port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(load.inflight.max(1))
        .set_max_packet_size(load.payload + 4096, load.payload + 4096);
    let (client, mut el) = AsyncClient::new(opts, load.channel_cap.max(1));
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(SETUP_TIMEOUT.as_secs());
    el.set_network_options(net);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    match tokio::time::timeout_at(deadline, el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {}
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
            bail!("{client_id}: CONNACK refused: {:?}", ack.code)
        }
        Ok(Ok(other)) => bail!("{client_id}: expected a CONNACK, got {other:?}"),
        Ok(Err(e)) => bail!("{client_id}: connect failed: {e}"),
        Err(_) => bail!("{client_id}: no CONNACK within {SETUP_TIMEOUT:?}"),
    }
    if let Some(filter) = filter {
        client
            .subscribe(filter.clone(), qos_of(load.qos))
            .await
            .with_context(|| format!("{client_id}: subscribe request"))?;
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                    if let Some(SubscribeReasonCode::Failure) | None = ack.return_codes.first() {
                        bail!("{client_id}: SUBSCRIBE {filter} refused: {:?}", ack.return_codes);
                    }
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("{client_id}: connection lost while subscribing: {e}"),
                Err(_) => bail!("{client_id}: no SUBACK within {SETUP_TIMEOUT:?}"),
            }
        }
    }
    Ok((client, el))
}

/// Sets up many clients, [`SETUP_CONCURRENCY`] at a time; in input order.
async fn setup_many(
    load: &Load,
    ids_and_filters: Vec<(String, Option<String>)>,
) -> anyhow::Result<Vec<(AsyncClient, EventLoop)>> {
    let sem = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, (id, filter)) in ids_and_filters.into_iter().enumerate() {
        let (load, sem) = (load.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, setup_client(&load, id, filter).await)
        });
    }
    let mut out: Vec<Option<(AsyncClient, EventLoop)>> = Vec::new();
    out.resize_with(set.len(), || None);
    let mut first_err = None;
    while let Some(res) = set.join_next().await {
        match res {
            Ok((i, Ok(c))) => out[i] = Some(c),
            Ok((_, Err(e))) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("setup task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out.into_iter().flatten().collect())
}

/// What a subscriber's event loop task checks and records.
struct SubState {
    run: u32,
    /// Per publisher: the sequence numbers seen (a bit set) and the highest one.
    seen: Vec<SeqTracker>,
    /// Latency histogram (ns) and the send-time window it records, when measuring latency.
    latency: Option<(Histogram<u64>, u64, u64)>,
}

impl SubState {
    fn on_message(&mut self, payload: &[u8], c: &Counters) {
        let h = match Header::parse(payload) {
            Some(h) if h.run == self.run => h,
            _ => {
                c.foreign.fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(seen) = self.seen.get_mut(h.publisher as usize) else {
            c.foreign.fetch_add(1, Relaxed);
            return;
        };
        c.received.fetch_add(1, Relaxed);
        match seen.see(h.seq) {
            Seen::InOrder => {}
            Seen::Duplicate => {
                c.duplicates.fetch_add(1, Relaxed);
            }
            Seen::Reordered => {
                c.reordered.fetch_add(1, Relaxed);
            }
        }
        if let Some((hist, from, to)) = &mut self.latency
            && h.sent_ns >= *from
            && h.sent_ns < *to
        {
            hist.saturating_record(now_ns().saturating_sub(h.sent_ns).max(1));
        }
    }
}

/// How a sequence number relates to those seen before from the same publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Higher than any before (gaps are losses, counted elsewhere).
    InOrder,
    /// Seen before.
    Duplicate,
    /// New, but lower than one seen before.
    Reordered,
}

/// The sequence numbers seen from one publisher.
#[derive(Debug, Default)]
struct SeqTracker {
    bits: Vec<u64>,
    /// Highest sequence number seen plus one (0: none yet).
    next: u64,
}

impl SeqTracker {
    fn see(&mut self, seq: u64) -> Seen {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= bit;
        if seq < self.next {
            Seen::Reordered
        } else {
            self.next = seq + 1;
            Seen::InOrder
        }
    }
}

/// Drives one client's event loop until it sends DISCONNECT or its connection fails.
/// Returns the subscriber's latency histogram, if any.
async fn drive(
    name: String,
    mut el: EventLoop,
    c: Arc<Counters>,
    closing: Arc<AtomicBool>,
    mut sub: Option<SubState>,
) -> Option<Histogram<u64>> {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(s) = sub.as_mut() {
                    s.on_message(&p.payload, &c);
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                c.sent.fetch_add(1, Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                c.acked.fetch_add(1, Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(Event::Incoming(Packet::Disconnect)) => {
                if !closing.load(Relaxed) {
                    c.dead_clients.fetch_add(1, Relaxed);
                    c.error(format!("{name}: the broker sent DISCONNECT"));
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                if !closing.load(Relaxed) {
                    c.dead_clients.fetch_add(1, Relaxed);
                    c.error(format!("{name}: connection error: {e}"));
                }
                break;
            }
        }
    }
    sub.and_then(|s| s.latency.map(|(h, _, _)| h))
}

/// One publisher's loop: as fast as the request channel takes them, or at `rate` per second
/// on a fixed schedule (`start + k / rate`; a late tick sends at once, so bursts catch up).
#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    client: AsyncClient,
    index: u32,
    topic: String,
    qos: QoS,
    payload_len: usize,
    json: bool,
    run: u32,
    schedule: Option<(Instant, f64)>,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        if let Some((start, rate)) = schedule {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
                if stop.load(Relaxed) {
                    break;
                }
            }
        }
        let header = Header {
            run,
            publisher: index,
            seq,
            sent_ns: now_ns(),
        };
        if client
            .publish(
                topic.as_str(),
                qos,
                false,
                if json {
                    header.json_payload(payload_len)
                } else {
                    header.payload(payload_len)
                },
            )
            .await
            .is_err()
        {
            // The event loop ended (its error is already recorded).
            break;
        }
        c.queued.fetch_add(1, Relaxed);
        seq += 1;
    }
}

/// A message scenario: who publishes where and who subscribes to what.
struct Plan {
    /// One topic per publisher.
    publishers: Vec<String>,
    /// One filter per subscriber.
    subscribers: Vec<String>,
    /// Subscribers each message reaches.
    deliveries_per_message: u64,
    /// Fixed total offered rate (`--rate`); `None`: as fast as possible.
    rate: Option<f64>,
    /// Scenario parameters for the report.
    params: Value,
}

async fn run_plan(name: &str, load: &Load, plan: Plan) -> anyhow::Result<Value> {
    if load.payload < HEADER {
        bail!("--payload must be at least {HEADER} bytes");
    }
    if load.json && load.payload < JSON_MIN {
        bail!("--payload must be at least {JSON_MIN} bytes with --json");
    }
    if plan.publishers.is_empty() || plan.subscribers.is_empty() {
        bail!("need at least one publisher and one subscriber");
    }
    let _ = rlimit::increase_nofile_limit((plan.publishers.len() + plan.subscribers.len()) as u64 * 2 + 1024);
    let _ = epoch();
    let run = run_id();
    let qos = qos_of(load.qos);
    let tag = run % 1_000_000;
    eprintln!(
        "shoal-loadgen: {name} qos{} on {}:{}: {} publishers, {} subscribers, run {run:08x}",
        load.qos,
        load.target.host,
        load.target.port,
        plan.publishers.len(),
        plan.subscribers.len()
    );

    let subs = setup_many(
        load,
        plan.subscribers
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("lg{tag}-s{i}"), Some(f.clone())))
            .collect(),
    )
    .await
    .context("setting up subscribers")?;
    let pubs = setup_many(
        load,
        (0..plan.publishers.len())
            .map(|i| (format!("lg{tag}-p{i}"), None))
            .collect(),
    )
    .await
    .context("setting up publishers")?;

    let counters = Arc::new(Counters::default());
    let closing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_secs_f64(load.warmup.max(0.0));
    let window = Duration::from_secs_f64(load.duration.max(0.1));
    let start = Instant::now() + Duration::from_millis(20);
    let (w0, w1) = (start + warmup, start + warmup + window);

    let mut sub_clients = Vec::new();
    let mut drivers = JoinSet::new();
    for (i, (client, el)) in subs.into_iter().enumerate() {
        let latency = match plan.rate {
            Some(_) => Some((
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?,
                ns_of(w0),
                ns_of(w1),
            )),
            None => None,
        };
        let state = SubState {
            run,
            seen: (0..plan.publishers.len())
                .map(|_| SeqTracker::default())
                .collect(),
            latency,
        };
        drivers.spawn(drive(
            format!("subscriber {i}"),
            el,
            counters.clone(),
            closing.clone(),
            Some(state),
        ));
        sub_clients.push(client);
    }
    let mut pub_clients = Vec::new();
    let mut publishers = JoinSet::new();
    let per_pub_rate = plan.rate.map(|r| r / plan.publishers.len() as f64);
    for (i, ((client, el), topic)) in pubs.into_iter().zip(&plan.publishers).enumerate() {
        drivers.spawn(drive(
            format!("publisher {i}"),
            el,
            counters.clone(),
            closing.clone(),
            None,
        ));
        // Stagger the publishers' schedules evenly over one period.
        let schedule = per_pub_rate.map(|r| {
            let offset = Duration::from_secs_f64(i as f64 / plan.publishers.len() as f64 / r);
            (start + offset, r)
        });
        publishers.spawn(publish_loop(
            client.clone(),
            i as u32,
            topic.clone(),
            qos,
            load.payload,
            load.json,
            run,
            schedule,
            stop.clone(),
            counters.clone(),
        ));
        pub_clients.push(client);
    }

    tokio::time::sleep_until(w0.into()).await;
    let s0 = counters.snapshot();
    tokio::time::sleep_until(w1.into()).await;
    let s1 = counters.snapshot();
    stop.store(true, Relaxed);
    eprintln!("shoal-loadgen: window done, draining");

    // Publishers blocked on a full channel return once it moves; give up after the drain time.
    let drain = Duration::from_secs_f64(load.drain.max(0.0));
    let drain_deadline = tokio::time::Instant::now() + drain;
    let _ = tokio::time::timeout_at(drain_deadline, async {
        while publishers.join_next().await.is_some() {}
    })
    .await;
    publishers.abort_all();
    let dead = || counters.dead_clients.load(Relaxed) > 0;
    // Everything queued is sent, and at QoS 1 acknowledged.
    while tokio::time::Instant::now() < drain_deadline && !dead() {
        let (q, s, a) = (
            counters.queued.load(Relaxed),
            counters.sent.load(Relaxed),
            counters.acked.load(Relaxed),
        );
        if s >= q && (load.qos == 0 || a >= s) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Subscribers have everything, or nothing more arrives.
    let quiet = Duration::from_millis(500);
    let mut last = (counters.received.load(Relaxed), Instant::now());
    while tokio::time::Instant::now() < drain_deadline {
        let expected = counters.sent.load(Relaxed) * plan.deliveries_per_message;
        let r = counters.received.load(Relaxed);
        if r >= expected {
            break;
        }
        if r != last.0 {
            last = (r, Instant::now());
        } else if last.1.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    closing.store(true, Relaxed);
    for client in pub_clients.iter().chain(&sub_clients) {
        let _ = client.try_disconnect();
    }
    let mut hist: Option<Histogram<u64>> = None;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(res) = drivers.join_next().await {
            if let Ok(Some(h)) = res {
                match hist.as_mut() {
                    Some(acc) => {
                        let _ = acc.add(&h);
                    }
                    None => hist = Some(h),
                }
            }
        }
    })
    .await;
    drivers.abort_all();

    let secs = s1.at.duration_since(s0.at).as_secs_f64().max(1e-9);
    let sent = counters.sent.load(Relaxed);
    let acked = counters.acked.load(Relaxed);
    let received = counters.received.load(Relaxed);
    let expected = sent * plan.deliveries_per_message;
    let lost = expected.saturating_sub(received);
    let publish_delta = if load.qos == 0 {
        s1.sent - s0.sent
    } else {
        s1.acked - s0.acked
    };
    let mut out = json!({
        "scenario": name,
        "label": load.target.label,
        "qos": load.qos,
        "payload": load.payload,
        "json": load.json,
        "params": plan.params,
        "duration": load.duration,
        "warmup": load.warmup,
        "inflight": load.inflight,
        "window_secs": secs,
        "msgs_per_sec": (s1.received - s0.received) as f64 / secs,
        "publish_per_sec": publish_delta as f64 / secs,
        "queued": counters.queued.load(Relaxed),
        "sent": sent,
        "acked": acked,
        "received": received,
        "expected": expected,
        "lost": lost,
        "loss_pct": if expected == 0 { 0.0 } else { lost as f64 * 100.0 / expected as f64 },
        "extra": received.saturating_sub(expected),
        "duplicates": counters.duplicates.load(Relaxed),
        "reordered": counters.reordered.load(Relaxed),
        "foreign": counters.foreign.load(Relaxed),
        "dead_clients": counters.dead_clients.load(Relaxed),
        "errors": counters.errors(),
    });
    if let Some(rate) = plan.rate {
        let achieved = (s1.sent - s0.sent) as f64 / secs;
        out["offered_rate"] = json!(rate);
        out["achieved_rate"] = json!(achieved);
        out["rate_ok"] = json!(achieved >= rate * 0.98);
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        out["latency_us"] = match &hist {
            Some(h) if !h.is_empty() => json!({
                "count": h.len(),
                "mean": us(h.mean() as u64),
                "p50": us(h.value_at_quantile(0.50)),
                "p90": us(h.value_at_quantile(0.90)),
                "p99": us(h.value_at_quantile(0.99)),
                "p999": us(h.value_at_quantile(0.999)),
                "max": us(h.max()),
            }),
            _ => Value::Null,
        };
    }
    eprintln!(
        "shoal-loadgen: {name} qos{}: {:.0} msg/s received, {:.0} publish/s, lost {lost} of {expected}",
        load.qos,
        (s1.received - s0.received) as f64 / secs,
        publish_delta as f64 / secs
    );
    Ok(out)
}

// ----- idle connections ------------------------------------------------------------------

/// A minimal MQTT 3.1.1 CONNECT: clean session, no will, no credentials.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let remaining = 10 + 2 + id.len();
    let mut p = Vec::with_capacity(remaining + 5);
    p.push(0x10);
    let mut n = remaining;
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    p.extend_from_slice(&keep_alive.to_be_bytes());
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

/// Opens one idle connection: TCP (from `source`, when set), CONNECT, CONNACK accepted.
async fn open_idle(
    dest: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    keep_alive: u16,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let mut stream = tokio::time::timeout(SETUP_TIMEOUT, socket.connect(dest))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    stream.set_nodelay(true).context("nodelay")?;
    stream
        .write_all(&connect_packet(client_id, keep_alive))
        .await
        .context("writing CONNECT")?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(SETUP_TIMEOUT, stream.read_exact(&mut ack))
        .await
        .context("no CONNACK in time")?
        .context("reading CONNACK")?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        bail!("expected a CONNACK, got {ack:02x?}");
    }
    if ack[3] != 0 {
        bail!("CONNACK refused with return code {}", ack[3]);
    }
    Ok(stream)
}

/// Holds an idle connection: answers nothing, pings every keep-alive/2, ends on `stop`.
/// Returns whether the broker closed it first.
async fn hold_idle(mut stream: TcpStream, keep_alive: u16, mut stop: watch::Receiver<bool>) -> bool {
    let ping_every = Duration::from_secs(u64::from(keep_alive.max(2)) / 2);
    let mut buf = [0u8; 64];
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // PINGRESP
            },
            _ = tokio::time::sleep_until(next_ping) => {
                if stream.write_all(&[0xC0, 0x00]).await.is_err() {
                    return true;
                }
                next_ping += ping_every;
            }
            _ = async { drop(stop.wait_for(|s| *s).await) } => {
                let _ = stream.write_all(&[0xE0, 0x00]).await;
                return false;
            }
        }
    }
}

async fn conns(args: ConnsArgs) -> anyhow::Result<Value> {
    let want = args.connections as u64 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => eprintln!(
            "shoal-loadgen: warning: open-file limit is {got}, below the {want} needed; raise `ulimit -n`"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("shoal-loadgen: warning: cannot raise the open-file limit: {e}"),
    }
    let dest = tokio::net::lookup_host((args.target.host.as_str(), args.target.port))
        .await
        .with_context(|| format!("resolving {}", args.target.host))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{} has no IPv4 address", args.target.host))?;
    let sources: Vec<IpAddr> = if dest.ip().is_loopback() {
        (1..=args.source_addrs)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    } else {
        Vec::new()
    };
    let tag = run_id() % 1_000_000;
    eprintln!(
        "shoal-loadgen: conns: opening {} connections to {dest} from {} source addresses",
        args.connections,
        sources.len().max(1)
    );
    let c = Arc::new(Counters::default());
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let attempts_failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in 0..args.connections {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let (c, sem, stop) = (c.clone(), sem.clone(), stop_rx.clone());
        let (connected, failed, attempts_failed, dropped) = (
            connected.clone(),
            failed.clone(),
            attempts_failed.clone(),
            dropped.clone(),
        );
        let (keep_alive, attempts) = (args.keep_alive, args.attempts.max(1));
        tasks.spawn(async move {
            let id = format!("idle{tag}-{i}");
            let permit = sem.acquire_owned().await;
            let mut stream = None;
            for attempt in 1..=attempts {
                match open_idle(dest, source, &id, keep_alive).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => {
                        attempts_failed.fetch_add(1, Relaxed);
                        if attempt == attempts {
                            c.error(format!("{id}: {e:#}"));
                        } else {
                            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                        }
                    }
                }
            }
            drop(permit);
            let Some(stream) = stream else {
                failed.fetch_add(1, Relaxed);
                return;
            };
            connected.fetch_add(1, Relaxed);
            if hold_idle(stream, keep_alive, stop).await {
                dropped.fetch_add(1, Relaxed);
            }
        });
    }
    let total = args.connections as u64;
    while connected.load(Relaxed) + failed.load(Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let n = connected.load(Relaxed);
    eprintln!(
        "shoal-loadgen: conns: {n} connected, {} failed in {connect_secs:.2} s; holding {} s",
        failed.load(Relaxed),
        args.hold
    );
    emit_line(&format!("READY {n}"));
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let dropped_during_hold = dropped.load(Relaxed);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(json!({
        "scenario": "conns",
        "label": args.target.label,
        "params": {
            "connections": args.connections,
            "hold": args.hold,
            "keep_alive": args.keep_alive,
            "source_addrs": sources.len(),
            "concurrency": args.concurrency,
        },
        "connected": n,
        "failed": failed.load(Relaxed),
        "failed_attempts": attempts_failed.load(Relaxed),
        "dropped_during_hold": dropped_during_hold,
        "connect_secs": connect_secs,
        "connects_per_sec": n as f64 / connect_secs.max(1e-9),
        "errors": c.errors(),
    }))
}

// ----- mTLS handshakes -------------------------------------------------------------------

/// Failure kinds counted by the handshake scenario.
const HS_KINDS: usize = HsFailure::ALL.len();

/// Why one handshake-and-connect attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HsFailure {
    /// TCP connect (or socket setup) failed.
    Tcp,
    /// The TLS handshake failed (certificate refused, alert, reset...).
    Tls,
    /// Writing CONNECT or reading CONNACK failed after the handshake.
    MqttIo,
    /// The broker answered with a refusing CONNACK (or not a CONNACK).
    ConnackRefused,
    /// A step took longer than [`SETUP_TIMEOUT`].
    Timeout,
}

impl HsFailure {
    const ALL: [HsFailure; 5] = [
        HsFailure::Tcp,
        HsFailure::Tls,
        HsFailure::MqttIo,
        HsFailure::ConnackRefused,
        HsFailure::Timeout,
    ];

    fn name(self) -> &'static str {
        match self {
            HsFailure::Tcp => "tcp",
            HsFailure::Tls => "tls",
            HsFailure::MqttIo => "mqtt_io",
            HsFailure::ConnackRefused => "connack_refused",
            HsFailure::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The client configuration shared by every connection: the CA as the only root, the client
/// certificate, the requested TLS versions, and **no resumption** (nothing is stored, so
/// nothing is offered: every connection is a full handshake).
fn tls_client_config(a: &HandshakeArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&a.ca)?) {
        let c = c.map_err(|e| anyhow::anyhow!("{}: {e:?}", a.ca.display()))?;
        roots.add(c).context("adding the CA certificate")?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", a.ca.display());
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&a.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", a.cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", a.cert.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&a.key)?)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", a.key.display()))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match a.tls.as_str() {
        "1.2" => &[&rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        _ => rustls::ALL_VERSIONS,
    };
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("client certificate and key")?;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// What one successful attempt measured, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct HsTiming {
    /// The TLS handshake alone (TCP already connected).
    tls_ns: u64,
    /// TCP connect to CONNACK received.
    total_ns: u64,
}

/// The negotiated parameters of a connection, for the report.
fn negotiated(conn: &rustls::ClientConnection) -> Value {
    json!({
        "version": conn.protocol_version().map(|v| format!("{v:?}")),
        "cipher_suite": conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())),
        "key_exchange": conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
    })
}

/// One attempt: TCP, full TLS handshake, CONNECT, CONNACK accepted, DISCONNECT, close.
async fn handshake_once(
    connector: &TlsConnector,
    server_name: &ServerName<'static>,
    dest: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    info: &OnceLock<Value>,
) -> Result<HsTiming, (HsFailure, String)> {
    let timed = |what: &'static str| move |_| (HsFailure::Timeout, format!("{what} timed out"));
    let t0 = Instant::now();
    let socket = TcpSocket::new_v4().map_err(|e| (HsFailure::Tcp, format!("socket: {e}")))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| (HsFailure::Tcp, format!("bind {ip}: {e}")))?;
    }
    let tcp = tokio::time::timeout(SETUP_TIMEOUT, socket.connect(dest))
        .await
        .map_err(timed("TCP connect"))?
        .map_err(|e| (HsFailure::Tcp, format!("TCP connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let t1 = Instant::now();
    let mut tls = tokio::time::timeout(SETUP_TIMEOUT, connector.connect(server_name.clone(), tcp))
        .await
        .map_err(timed("TLS handshake"))?
        .map_err(|e| (HsFailure::Tls, format!("TLS handshake: {e}")))?;
    let t2 = Instant::now();
    if info.get().is_none() {
        let _ = info.set(negotiated(tls.get_ref().1));
    }
    let io = |e: std::io::Error| (HsFailure::MqttIo, format!("after the handshake: {e}"));
    tls.write_all(&connect_packet(client_id, 30)).await.map_err(io)?;
    tls.flush().await.map_err(io)?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(SETUP_TIMEOUT, tls.read_exact(&mut ack))
        .await
        .map_err(timed("CONNACK"))?
        .map_err(io)?;
    let t3 = Instant::now();
    if ack[0] != 0x20 || ack[1] != 0x02 {
        return Err((
            HsFailure::ConnackRefused,
            format!("expected a CONNACK, got {ack:02x?}"),
        ));
    }
    if ack[3] != 0 {
        return Err((
            HsFailure::ConnackRefused,
            format!("CONNACK refused with return code {}", ack[3]),
        ));
    }
    // DISCONNECT, then close_notify and FIN; the broker's own close is not waited for.
    let _ = tls.write_all(&[0xE0, 0x00]).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Ok(HsTiming {
        tls_ns: ns(t2 - t1),
        total_ns: ns(t3 - t0),
    })
}

/// What one worker counted.
struct HsWorker {
    ok_window: u64,
    ok_total: u64,
    failed_window: [u64; HS_KINDS],
    failed_total: [u64; HS_KINDS],
    tls: Histogram<u64>,
    total: Histogram<u64>,
}

async fn handshakes(args: HandshakeArgs) -> anyhow::Result<Value> {
    let cfg = tls_client_config(&args)?;
    let connector = TlsConnector::from(cfg);
    let server_name = ServerName::try_from(args.server_name.clone())
        .with_context(|| format!("--server-name {:?}", args.server_name))?;
    let dest = tokio::net::lookup_host((args.target.host.as_str(), args.target.port))
        .await
        .with_context(|| format!("resolving {}", args.target.host))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{} has no IPv4 address", args.target.host))?;
    let sources: Vec<IpAddr> = if dest.ip().is_loopback() {
        (1..=args.source_addrs)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    } else {
        Vec::new()
    };
    let _ = rlimit::increase_nofile_limit(args.concurrency as u64 * 4 + 1024);
    let tag = run_id() % 1_000_000;
    let workers = args.concurrency.max(1);
    eprintln!(
        "shoal-loadgen: handshakes: {workers} workers against {dest} (TLS {}, server name {}, no resumption)",
        args.tls, args.server_name
    );
    let errors = Arc::new(Counters::default());
    let info = Arc::new(OnceLock::new());
    let failures_logged = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let w0 = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let w1 = w0 + Duration::from_secs_f64(args.duration.max(0.1));
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let (connector, server_name, sources, errors, info, failures_logged) = (
            connector.clone(),
            server_name.clone(),
            sources.clone(),
            errors.clone(),
            info.clone(),
            failures_logged.clone(),
        );
        let prefix = args.client_id_prefix.clone();
        tasks.spawn(async move {
            let mut st = HsWorker {
                ok_window: 0,
                ok_total: 0,
                failed_window: [0; HS_KINDS],
                failed_total: [0; HS_KINDS],
                tls: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
                total: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            };
            tokio::time::sleep_until(start.into()).await;
            let mut n = 0usize;
            while Instant::now() < w1 {
                let source = (!sources.is_empty()).then(|| sources[(w + n) % sources.len()]);
                let id = format!("{prefix}{tag}-{w}-{n}");
                n += 1;
                let res = handshake_once(&connector, &server_name, dest, source, &id, &info).await;
                let end = Instant::now();
                let in_window = end >= w0 && end < w1;
                match res {
                    Ok(t) => {
                        st.ok_total += 1;
                        if in_window {
                            st.ok_window += 1;
                            st.tls.saturating_record(t.tls_ns.max(1));
                            st.total.saturating_record(t.total_ns.max(1));
                        }
                    }
                    Err((kind, msg)) => {
                        st.failed_total[kind.index()] += 1;
                        if in_window {
                            st.failed_window[kind.index()] += 1;
                        }
                        // Keep the first messages only: a refusing broker fails thousands.
                        if failures_logged.fetch_add(1, Relaxed) < MAX_ERRORS as u64 {
                            errors.error(format!("{id}: {msg}"));
                        }
                        // Do not spin on a broker that refuses everything.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            anyhow::Ok(st)
        });
    }
    let mut ok_window = 0;
    let mut ok_total = 0;
    let mut failed_window = [0u64; HS_KINDS];
    let mut failed_total = [0u64; HS_KINDS];
    let mut tls = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?;
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?;
    while let Some(res) = tasks.join_next().await {
        let st = res.context("worker task")?.context("worker")?;
        ok_window += st.ok_window;
        ok_total += st.ok_total;
        for (acc, n) in failed_window.iter_mut().zip(st.failed_window) {
            *acc += n;
        }
        for (acc, n) in failed_total.iter_mut().zip(st.failed_total) {
            *acc += n;
        }
        let _ = tls.add(&st.tls);
        let _ = total.add(&st.total);
    }
    let secs = w1.duration_since(w0).as_secs_f64();
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    let pct = |h: &Histogram<u64>| {
        if h.is_empty() {
            return Value::Null;
        }
        json!({
            "count": h.len(),
            "mean": us(h.mean() as u64),
            "p50": us(h.value_at_quantile(0.50)),
            "p90": us(h.value_at_quantile(0.90)),
            "p99": us(h.value_at_quantile(0.99)),
            "p999": us(h.value_at_quantile(0.999)),
            "max": us(h.max()),
        })
    };
    let by_kind = |counts: &[u64; HS_KINDS]| {
        let mut m = serde_json::Map::new();
        for k in HsFailure::ALL {
            m.insert(k.name().into(), json!(counts[k.index()]));
        }
        Value::Object(m)
    };
    let rate = ok_window as f64 / secs;
    eprintln!(
        "shoal-loadgen: handshakes: {rate:.0}/s ({ok_window} in {secs:.1} s), {} failed in the window",
        failed_window.iter().sum::<u64>()
    );
    Ok(json!({
        "scenario": "handshakes",
        "label": args.target.label,
        "params": {
            "concurrency": workers,
            "tls": args.tls,
            "server_name": args.server_name,
            "resumption": "disabled",
            "source_addrs": sources.len(),
        },
        "duration": args.duration,
        "warmup": args.warmup,
        "window_secs": secs,
        "handshakes_per_sec": rate,
        "completed": ok_window,
        "completed_total": ok_total,
        "failed": failed_window.iter().sum::<u64>(),
        "failed_total": failed_total.iter().sum::<u64>(),
        "failures": by_kind(&failed_window),
        "failures_total": by_kind(&failed_total),
        "negotiated": info.get().cloned().unwrap_or(Value::Null),
        "latency_us": { "tls": pct(&tls), "total": pct(&total) },
        "errors": errors.errors(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            run: 7,
            publisher: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let p = h.payload(256);
        assert_eq!(p.len(), 256);
        assert_eq!(Header::parse(&p), Some(h));
        assert_eq!(Header::parse(&p[..HEADER - 1]), None);
        assert_eq!(Header::parse(b"not ours, not ours, not ours, not ours"), None);
        let j = h.json_payload(256);
        assert_eq!(j.len(), 256);
        let doc: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(doc["temp"], -20.5);
        assert_eq!(Header::parse(&j), Some(h));
    }

    #[test]
    fn sequence_tracking() {
        let mut t = SeqTracker::default();
        assert_eq!(t.see(0), Seen::InOrder);
        assert_eq!(t.see(2), Seen::InOrder);
        assert_eq!(t.see(1), Seen::Reordered);
        assert_eq!(t.see(2), Seen::Duplicate);
        assert_eq!(t.see(1), Seen::Duplicate);
        assert_eq!(t.see(200), Seen::InOrder);
        assert_eq!(t.see(130), Seen::Reordered);
    }

    #[test]
    fn connect_packet_is_well_formed() {
        let p = connect_packet("abc", 60);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 2]);
        assert_eq!(&p[10..12], &60u16.to_be_bytes());
        assert_eq!(&p[12..], &[0, 3, b'a', b'b', b'c']);
    }
}
