//! `shoal-shadowbench`: a Device Shadow update benchmark for Shoal, over MQTT or HTTP.
//!
//! Every mode runs all its clients in this one process (a tokio multi-thread runtime) and prints
//! one JSON object on stdout; human logs go to stderr.
//!
//! # Workload
//!
//! Client `c` owns the things `bench-{c}-0` .. `bench-{c}-{K-1}` (`K` = `--things`, per client)
//! and updates them round-robin, so no two clients ever touch the same shadow. Each request is a
//! reported-state update of the classic shadow with changing values and a fresh clientToken:
//!
//! ```json
//! {"state":{"reported":{"temperature":21.7,"humidity":43,"seq":1234,"status":"ok","fw":"1.2.3"}},
//!  "clientToken":"<run>-<client>-<seq>"}
//! ```
//!
//! * **`mqtt`**: `C` MQTT 3.1.1 clients (rumqttc, clean session). Before the load starts each
//!   client is connected and subscribed to `$aws/things/{thing}/shadow/update/accepted` and
//!   `/rejected` of its own things only (so no response reaches a client that did not ask).
//!   Each client keeps `W` requests in flight (`--inflight`, at most 10: the per-client limit
//!   AWS and Shoal enforce with 429): it publishes `W` requests to
//!   `$aws/things/{thing}/shadow/update`, and publishes the next one whenever a response
//!   (accepted or rejected) with one of its clientTokens arrives. Latency is the time from just
//!   before the publish call to the client's event loop handing over the matching
//!   `/update/accepted`. Rejections are counted by their `code` (`rejected_429`, ...). A request
//!   without any answer after `--timeout` seconds counts as `timeout` and frees its slot.
//! * **`http`**: `C` HTTP/1.1 keep-alive connections (no pool, no TLS), each with one
//!   `POST /things/{thing}/shadow` in flight at a time (HTTP/1.1 does not pipeline). The client
//!   (`--client`) is `raw` by default: the request written with one `write_all` and the
//!   response read and parsed (`httparse`, then `Content-Length` or chunked body) by the same
//!   task, so the load generator spends little of the CPU the server shares with it; `hyper`
//!   is hyper's connection-level client (a connection task beside the request task, which
//!   cost ~13 µs of CPU per request on the 2-core machine). Latency is from just before the
//!   request is written to the end of the response body. Non-200 answers are counted as `http_{status}`; connection failures as
//!   `connect` / `io` (the connection is re-opened after 100 ms).
//!
//! With `--publish`, both modes send plain publishes instead of shadow updates (the same JSON
//! bodies, to `bench/{c}/{k}`), for comparing the HTTP data plane with MQTT: `mqtt` publishes at
//! QoS 1 and a request is complete at its PUBACK (nothing is subscribed); `http` POSTs
//! `/topics/bench%2F{c}%2F{k}?qos=1` and a request is complete at its 200.
//! `http --credentials-file FILE` signs every request with SigV4 (the `[default]` key of an AWS
//! credentials file, e.g. `DATA/credentials`), as a real client would, per request.
//!
//! # Measurement
//!
//! Load starts for every client at once at `t0` (after setup). The number of accepted updates
//! is sampled at `t0 + warmup` and `t0 + warmup + duration`; `updates_per_sec` is the
//! difference divided by the time between the samples. Latencies are recorded (HDR histogram,
//! 3 significant digits) for requests *sent* inside that window. At the end of the window
//! clients stop sending, wait (at most `--drain` s) for their outstanding answers, then
//! disconnect; anything still unanswered is reported as `unanswered`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Device Shadow update benchmark: MQTT request/response or HTTP POST.
#[derive(Debug, Parser)]
#[command(name = "shoal-shadowbench", version, about)]
struct Cli {
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Updates over MQTT: `$aws/things/{thing}/shadow/update` -> `/update/accepted`.
    Mqtt(MqttArgs),
    /// Updates over HTTP: `POST /things/{thing}/shadow`.
    Http(HttpArgs),
}

/// Options shared by both modes.
#[derive(Debug, Clone, Args)]
struct Common {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port (MQTT port in `mqtt` mode, HTTP port in `http` mode).
    #[arg(long)]
    port: u16,
    /// Free text copied into the JSON output (e.g. the backend's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Measured window in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up in seconds before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Things per client (client `c` updates `bench-{c}-0` .. `bench-{c}-{K-1}` round-robin).
    #[arg(long, default_value_t = 8)]
    things: usize,
    /// Longest wait, in seconds, for outstanding answers after the window.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Seconds after which a request without an answer counts as `timeout`.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// A process whose CPU time (utime + stime from /proc/PID/stat) is reported over the
    /// measured window, as `cpu.NAME` in % of one core (repeatable). This process is always
    /// reported as `cpu.bench`, the whole machine as `cpu.machine` (/proc/stat busy time, steal
    /// included), everything else as `cpu.other`, and the hypervisor's steal as `cpu.steal`.
    #[arg(long = "watch", value_name = "NAME=PID")]
    watch: Vec<String>,
    /// Clock ticks per second of /proc (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Plain publishes to `bench/{c}/{k}` instead of shadow updates (see the module doc).
    #[arg(long)]
    publish: bool,
}

#[derive(Debug, Clone, Args)]
struct MqttArgs {
    #[command(flatten)]
    common: Common,
    /// MQTT clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests in flight per client (AWS and Shoal reject an 11th with 429).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    inflight: u16,
    /// QoS of the requests and of the response subscriptions (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
}

#[derive(Debug, Clone, Args)]
struct HttpArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent HTTP/1.1 keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Sign every request (SigV4) with the `[default]` key of this AWS credentials file.
    #[arg(long)]
    credentials_file: Option<std::path::PathBuf>,
    /// HTTP client: `raw` (one task per connection, requests written and responses parsed in
    /// place) or `hyper` (hyper's connection-level client).
    #[arg(long, value_enum, default_value_t = HttpClient::Raw)]
    client: HttpClient,
}

/// The HTTP client implementation ([`HttpArgs::client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HttpClient {
    Raw,
    Hyper,
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
            eprintln!("shoal-shadowbench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (name, label) = match &cli.mode {
        Mode::Mqtt(a) => ("mqtt", a.common.label.clone()),
        Mode::Http(a) => ("http", a.common.label.clone()),
    };
    let result = rt.block_on(async move {
        match cli.mode {
            Mode::Mqtt(a) => run_mqtt(a).await,
            Mode::Http(a) => run_http(a).await,
        }
    });
    // Client tasks that did not finish in time must not keep the process alive.
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(v) => {
            emit(&v);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-shadowbench: {name}: {e:#}");
            emit(&json!({ "mode": name, "label": label, "error": format!("{e:#}") }));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes one line on stdout (the machine-readable channel) and flushes it.
fn emit(v: &Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A run id that differs between runs (time and pid mixed; no need for cryptographic quality).
fn run_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 32) as u32
}

/// The update request body for sequence number `seq` with clientToken `token`.
fn update_body(seq: u64, token: &str) -> Vec<u8> {
    let temperature = 15.0 + (seq % 200) as f64 / 10.0;
    let humidity = 30 + seq % 40;
    format!(
        r#"{{"state":{{"reported":{{"temperature":{temperature:.1},"humidity":{humidity},"seq":{seq},"status":"ok","fw":"1.2.3"}}}},"clientToken":"{token}"}}"#
    )
    .into_bytes()
}

/// The clientToken in a response payload, without parsing the whole document.
fn client_token(payload: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""clientToken":""#;
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[start..start + len]).ok()
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant digits: valid constants, so this cannot fail.
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

// ----- counters --------------------------------------------------------------------------

/// Counters shared by every client task of a run.
#[derive(Debug, Default)]
struct Counters {
    /// Requests handed to the client stack.
    sent: AtomicU64,
    /// Accepted updates (`/update/accepted`, HTTP 200).
    accepted: AtomicU64,
    /// Answered with an error (`/update/rejected`, HTTP non-2xx).
    rejected: AtomicU64,
    /// Requests without an answer after `--timeout`.
    timeouts: AtomicU64,
    /// Responses that matched no outstanding request of their client.
    unmatched: AtomicU64,
    /// Client connections that failed during the run (MQTT: the client stops).
    dead_clients: AtomicU64,
    /// Errors by kind (`rejected_429`, `http_503`, `io`, `timeout`, ...).
    kinds: Mutex<BTreeMap<String, u64>>,
    /// The first error messages, for the report.
    samples: Mutex<Vec<String>>,
}

/// Error messages kept for the report.
const MAX_SAMPLES: usize = 10;

impl Counters {
    fn error(&self, kind: &str, msg: Option<String>) {
        if let Ok(mut k) = self.kinds.lock() {
            *k.entry(kind.to_owned()).or_insert(0) += 1;
        }
        if let Some(msg) = msg
            && let Ok(mut s) = self.samples.lock()
            && s.len() < MAX_SAMPLES
        {
            eprintln!("shoal-shadowbench: {msg}");
            s.push(msg);
        }
    }

    fn kinds(&self) -> BTreeMap<String, u64> {
        self.kinds.lock().map(|k| k.clone()).unwrap_or_default()
    }

    fn samples(&self) -> Vec<String> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The timing of one run, shared by every client task.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Load starts.
    start: Instant,
    /// Measured window: requests sent in `[from, to)` have their latency recorded.
    from: Instant,
    to: Instant,
    /// Clients give up waiting for outstanding answers.
    drain_until: Instant,
    /// A request without an answer for this long is a timeout.
    timeout: Duration,
}

impl Window {
    fn new(c: &Common) -> Window {
        let start = Instant::now() + Duration::from_millis(20);
        let from = start + Duration::from_secs_f64(c.warmup.max(0.0));
        let to = from + Duration::from_secs_f64(c.duration.max(0.1));
        Window {
            start,
            from,
            to,
            drain_until: to + Duration::from_secs_f64(c.drain.max(0.0)),
            timeout: Duration::from_secs_f64(c.timeout.max(0.1)),
        }
    }

    fn measured(&self, sent: Instant) -> bool {
        sent >= self.from && sent < self.to
    }

    fn stopped(&self) -> bool {
        Instant::now() >= self.to
    }
}

/// utime + stime of a whole process (all threads), in clock ticks.
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is the first, utime the
    // 12th, stime the 13th.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of the whole machine (all CPUs: user, nice, system, irq, softirq, steal) and,
/// separately, steal (time the hypervisor gave this VM's CPUs to someone else).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(([0, 1, 2, 5, 6, 7].iter().map(|&i| at(i)).sum(), at(7)))
}

/// The watched processes: (name, pid), this process included.
fn watched(common: &Common) -> Vec<(String, String)> {
    let mut out = vec![("bench".to_owned(), "self".to_owned())];
    for w in &common.watch {
        if let Some((name, pid)) = w.split_once('=') {
            out.push((name.to_owned(), pid.to_owned()));
        } else {
            eprintln!("shoal-shadowbench: ignoring --watch {w:?} (expected NAME=PID)");
        }
    }
    out
}

fn cpu_sample(procs: &[(String, String)]) -> (Vec<Option<u64>>, Option<(u64, u64)>) {
    (
        procs.iter().map(|(_, pid)| proc_ticks(pid)).collect(),
        machine_ticks(),
    )
}

/// What [`measure`] saw in the measured window.
struct Measured {
    accepted: u64,
    rejected: u64,
    secs: f64,
    /// `{name: % of one core}` for the watched processes, `machine`, `other` and `steal`.
    cpu: Value,
}

/// Samples the counters and the watched processes' CPU time at the window's start and end.
async fn measure(w: &Window, c: &Counters, common: &Common) -> Measured {
    let procs = watched(common);
    tokio::time::sleep_until(w.from.into()).await;
    let (a0, r0, t0) = (c.accepted.load(Relaxed), c.rejected.load(Relaxed), Instant::now());
    let (p0, m0) = cpu_sample(&procs);
    tokio::time::sleep_until(w.to.into()).await;
    let (a1, r1, t1) = (c.accepted.load(Relaxed), c.rejected.load(Relaxed), Instant::now());
    let (p1, m1) = cpu_sample(&procs);
    let secs = t1.duration_since(t0).as_secs_f64().max(1e-9);
    let tck = common.clk_tck.max(1) as f64;
    let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tck / secs * 100.0),
        _ => None,
    };
    let mut cpu = serde_json::Map::new();
    let mut sum = 0.0;
    for ((name, _), (a, b)) in procs.iter().zip(p0.into_iter().zip(p1)) {
        let v = pct(a, b);
        sum += v.unwrap_or(0.0);
        cpu.insert(name.clone(), json!(v.map(|v| (v * 10.0).round() / 10.0)));
    }
    if let Some(m) = pct(m0.map(|m| m.0), m1.map(|m| m.0)) {
        cpu.insert("machine".into(), json!((m * 10.0).round() / 10.0));
        cpu.insert("other".into(), json!(((m - sum) * 10.0).round() / 10.0));
    }
    if let Some(st) = pct(m0.map(|m| m.1), m1.map(|m| m.1)) {
        cpu.insert("steal".into(), json!((st * 10.0).round() / 10.0));
    }
    Measured {
        accepted: a1 - a0,
        rejected: r1 - r0,
        secs,
        cpu: Value::Object(cpu),
    }
}

/// The common part of the JSON report.
fn report(
    mode: &str,
    common: &Common,
    params: Value,
    m: Measured,
    hist: &Histogram<u64>,
    c: &Counters,
    unanswered: u64,
) -> Value {
    let Measured {
        accepted,
        rejected,
        secs,
        cpu,
    } = m;
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    let latency = if hist.is_empty() {
        Value::Null
    } else {
        json!({
            "count": hist.len(),
            "mean": us(hist.mean() as u64),
            "p50": us(hist.value_at_quantile(0.50)),
            "p90": us(hist.value_at_quantile(0.90)),
            "p99": us(hist.value_at_quantile(0.99)),
            "p999": us(hist.value_at_quantile(0.999)),
            "max": us(hist.max()),
        })
    };
    let mut errors = c.kinds();
    if unanswered > 0 {
        errors.insert("unanswered".into(), unanswered);
    }
    let dead = c.dead_clients.load(Relaxed);
    eprintln!(
        "shoal-shadowbench: {mode}: {:.0} updates/s, p50 {} us, p99 {} us, errors {errors:?}",
        accepted as f64 / secs,
        latency.get("p50").unwrap_or(&Value::Null),
        latency.get("p99").unwrap_or(&Value::Null),
    );
    json!({
        "mode": mode,
        "label": common.label,
        "params": params,
        "duration": common.duration,
        "warmup": common.warmup,
        "window_secs": secs,
        "updates_per_sec": accepted as f64 / secs,
        "rejected_per_sec": rejected as f64 / secs,
        "window_accepted": accepted,
        "sent": c.sent.load(Relaxed),
        "accepted": c.accepted.load(Relaxed),
        "rejected": c.rejected.load(Relaxed),
        "timeouts": c.timeouts.load(Relaxed),
        "unanswered": unanswered,
        "unmatched": c.unmatched.load(Relaxed),
        "dead_clients": dead,
        "latency_us": latency,
        "cpu_pct": cpu,
        "errors": errors,
        "error_samples": c.samples(),
    })
}

// ----- MQTT ------------------------------------------------------------------------------

/// How long connecting and subscribing one client may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Setup operations in progress at once.
const SETUP_CONCURRENCY: usize = 16;
/// MQTT keep-alive; also the longest a client waits before it looks at timeouts and the end of
/// the run when no packet arrives (the event loop is never polled inside a `select!`).
const KEEP_ALIVE: Duration = Duration::from_secs(2);

fn qos_of(q: u8) -> QoS {
    if q == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

/// Connects client `c` and subscribes it to the responses of its things.
async fn mqtt_setup(
    a: &MqttArgs,
    c: usize,
    tag: u32,
    things: &[String],
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let id = format!("sb{tag}-{c}");
    let mut opts = MqttOptions::new(id.clone(), a.common.host.clone(), a.common.port);
    opts.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_inflight(a.inflight.max(10) * 2)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut el) = AsyncClient::new(opts, usize::from(a.inflight) * 2 + 16);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(SETUP_TIMEOUT.as_secs());
    el.set_network_options(net);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    match tokio::time::timeout_at(deadline, el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {}
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => bail!("{id}: CONNACK refused: {:?}", ack.code),
        Ok(Ok(other)) => bail!("{id}: expected a CONNACK, got {other:?}"),
        Ok(Err(e)) => bail!("{id}: connect failed: {e}"),
        Err(_) => bail!("{id}: no CONNACK within {SETUP_TIMEOUT:?}"),
    }
    if a.common.publish {
        return Ok((client, el));
    }
    let filters: Vec<SubscribeFilter> = things
        .iter()
        .flat_map(|t| {
            ["accepted", "rejected"]
                .map(|r| SubscribeFilter::new(format!("$aws/things/{t}/shadow/update/{r}"), qos_of(a.qos)))
        })
        .collect();
    let n = filters.len();
    client
        .subscribe_many(filters)
        .await
        .with_context(|| format!("{id}: subscribe request"))?;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if ack.return_codes.len() != n
                    || ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    bail!("{id}: SUBSCRIBE refused: {:?}", ack.return_codes);
                }
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{id}: connection lost while subscribing: {e}"),
            Err(_) => bail!("{id}: no SUBACK within {SETUP_TIMEOUT:?}"),
        }
    }
    Ok((client, el))
}

/// One MQTT client during the run: keeps `W` requests in flight until the window ends, then
/// drains and disconnects. Returns its latency histogram.
struct MqttClient {
    c: usize,
    client: AsyncClient,
    /// Request topics of its things, `$aws/things/{thing}/shadow/update`.
    topics: Vec<String>,
    qos: QoS,
    /// clientToken prefix, `{run:08x}-{c}-`.
    prefix: String,
    seq: u64,
    /// Outstanding requests: sequence number -> send time.
    pending: HashMap<u64, Instant>,
    /// `--publish`: a request completes at its PUBACK.
    publish: bool,
    /// `--publish`: sequence numbers handed to rumqttc that have no packet id yet (rumqttc
    /// reports the id of each outgoing PUBLISH in the order they were handed over).
    unassigned: std::collections::VecDeque<u64>,
    /// `--publish`: packet id -> sequence number.
    by_pkid: HashMap<u16, u64>,
    hist: Histogram<u64>,
    w: Window,
    counters: Arc<Counters>,
}

impl MqttClient {
    fn send(&mut self) -> bool {
        let seq = self.seq;
        self.seq += 1;
        let token = format!("{}{seq}", self.prefix);
        let topic = self.topics[(seq % self.topics.len() as u64) as usize].clone();
        let body = update_body(seq, &token);
        let now = Instant::now();
        match self.client.try_publish(topic, self.qos, false, body) {
            Ok(()) => {
                self.pending.insert(seq, now);
                if self.publish {
                    self.unassigned.push_back(seq);
                }
                self.counters.sent.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                self.counters.error(
                    "publish_failed",
                    Some(format!("client {}: publish failed: {e}", self.c)),
                );
                false
            }
        }
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        let accepted = topic.ends_with("/update/accepted");
        if !accepted && !topic.ends_with("/update/rejected") {
            self.counters.unmatched.fetch_add(1, Relaxed);
            return;
        }
        let seq = client_token(payload)
            .and_then(|t| t.strip_prefix(self.prefix.as_str()))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(sent) = seq.and_then(|s| self.pending.remove(&s)) else {
            self.counters.unmatched.fetch_add(1, Relaxed);
            return;
        };
        if accepted {
            self.counters.accepted.fetch_add(1, Relaxed);
            if self.w.measured(sent) {
                let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.hist.saturating_record(ns.max(1));
            }
        } else {
            self.counters.rejected.fetch_add(1, Relaxed);
            let code = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_u64));
            let kind = code.map_or_else(|| "rejected_unknown".to_owned(), |c| format!("rejected_{c}"));
            let msg = String::from_utf8_lossy(payload).into_owned();
            self.counters
                .error(&kind, Some(format!("client {}: rejected: {msg}", self.c)));
        }
    }

    fn on_outgoing_publish(&mut self, pkid: u16) {
        if let Some(seq) = self.unassigned.pop_front() {
            self.by_pkid.insert(pkid, seq);
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        let Some(sent) = self.by_pkid.remove(&pkid).and_then(|s| self.pending.remove(&s)) else {
            self.counters.unmatched.fetch_add(1, Relaxed);
            return;
        };
        self.counters.accepted.fetch_add(1, Relaxed);
        if self.w.measured(sent) {
            let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.hist.saturating_record(ns.max(1));
        }
    }

    /// Frees the slots of requests unanswered for too long.
    fn sweep(&mut self) {
        let timeout = self.w.timeout;
        let before = self.pending.len();
        self.pending.retain(|_, sent| sent.elapsed() < timeout);
        let pending = &self.pending;
        self.by_pkid.retain(|_, seq| pending.contains_key(seq));
        let expired = (before - self.pending.len()) as u64;
        if expired > 0 {
            self.counters.timeouts.fetch_add(expired, Relaxed);
            for _ in 0..expired {
                self.counters.error("timeout", None);
            }
        }
    }

    async fn run(mut self, mut el: EventLoop, inflight: usize) -> (Histogram<u64>, u64) {
        tokio::time::sleep_until(self.w.start.into()).await;
        for _ in 0..inflight {
            self.send();
        }
        let mut closing = false;
        let mut last_sweep = Instant::now();
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_publish(&p.topic, &p.payload);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if self.publish => {
                    self.on_outgoing_publish(pkid)
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) if self.publish => self.on_puback(ack.pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(Event::Incoming(Packet::Disconnect)) => {
                    if !closing {
                        self.counters.dead_clients.fetch_add(1, Relaxed);
                        self.counters.error(
                            "disconnected",
                            Some(format!("client {}: the server sent DISCONNECT", self.c)),
                        );
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    if !closing {
                        self.counters.dead_clients.fetch_add(1, Relaxed);
                        self.counters.error(
                            "connection",
                            Some(format!("client {}: connection error: {e}", self.c)),
                        );
                    }
                    break;
                }
            }
            if closing {
                continue;
            }
            if last_sweep.elapsed() >= Duration::from_millis(200) {
                self.sweep();
                last_sweep = Instant::now();
            }
            if self.w.stopped() {
                if self.pending.is_empty() || Instant::now() >= self.w.drain_until {
                    closing = true;
                    let _ = self.client.try_disconnect();
                }
            } else {
                while self.pending.len() < inflight {
                    if !self.send() {
                        break;
                    }
                }
            }
        }
        let unanswered = self.pending.len() as u64;
        (self.hist, unanswered)
    }
}

async fn run_mqtt(a: MqttArgs) -> anyhow::Result<Value> {
    if a.clients == 0 || a.common.things == 0 {
        bail!("--clients and --things must be positive");
    }
    if a.common.publish && a.qos == 0 {
        bail!("--publish needs --qos 1 (a request completes at its PUBACK)");
    }
    let _ = rlimit::increase_nofile_limit(a.clients as u64 * 2 + 1024);
    let run = run_id();
    let tag = run % 1_000_000;
    let k = a.common.things;
    eprintln!(
        "shoal-shadowbench: mqtt on {}:{}: {} clients x {} in flight, {} things each, qos {}, run {run:08x}",
        a.common.host, a.common.port, a.clients, a.inflight, k, a.qos
    );
    let things_of = |c: usize| -> Vec<String> { (0..k).map(|i| format!("bench-{c}-{i}")).collect() };

    // Setup: every client connected and subscribed before any load.
    let sem = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut setup = JoinSet::new();
    for c in 0..a.clients {
        let (a, sem, things) = (a.clone(), sem.clone(), things_of(c));
        setup.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (c, mqtt_setup(&a, c, tag, &things).await)
        });
    }
    let mut clients: Vec<Option<(AsyncClient, EventLoop)>> = (0..a.clients).map(|_| None).collect();
    while let Some(res) = setup.join_next().await {
        match res {
            Ok((c, Ok(pair))) => clients[c] = Some(pair),
            Ok((_, Err(e))) => return Err(e.context("setting up the MQTT clients")),
            Err(e) => bail!("setup task failed: {e}"),
        }
    }

    let counters = Arc::new(Counters::default());
    let w = Window::new(&a.common);
    let inflight = usize::from(a.inflight);
    let mut tasks = JoinSet::new();
    for (c, pair) in clients.into_iter().enumerate() {
        let Some((client, el)) = pair else { continue };
        let mc = MqttClient {
            c,
            client,
            topics: if a.common.publish {
                (0..k).map(|i| format!("bench/{c}/{i}")).collect()
            } else {
                things_of(c)
                    .iter()
                    .map(|t| format!("$aws/things/{t}/shadow/update"))
                    .collect()
            },
            publish: a.common.publish,
            unassigned: std::collections::VecDeque::new(),
            by_pkid: HashMap::new(),
            qos: qos_of(a.qos),
            prefix: format!("{run:08x}-{c}-"),
            seq: 0,
            pending: HashMap::with_capacity(inflight * 2),
            hist: new_histogram(),
            w,
            counters: counters.clone(),
        };
        tasks.spawn(mc.run(el, inflight));
    }
    let measured = measure(&w, &counters, &a.common).await;
    eprintln!("shoal-shadowbench: window done, draining");
    let (hist, unanswered) = collect(tasks, &w).await;
    let params = json!({
        "clients": a.clients,
        "inflight": a.inflight,
        "things_per_client": k,
        "things": a.clients * k,
        "qos": a.qos,
        "publish": a.common.publish,
    });
    Ok(report(
        "mqtt", &a.common, params, measured, &hist, &counters, unanswered,
    ))
}

/// Waits for the client tasks (at most until the drain deadline plus a grace period) and
/// merges their histograms; returns the merged histogram and the unanswered requests.
async fn collect(mut tasks: JoinSet<(Histogram<u64>, u64)>, w: &Window) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let mut unanswered = 0;
    let deadline = w.drain_until + KEEP_ALIVE * 2 + Duration::from_secs(1);
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while let Some(res) = tasks.join_next().await {
            if let Ok((h, u)) = res {
                let _ = hist.add(&h);
                unanswered += u;
            }
        }
    })
    .await;
    if !tasks.is_empty() {
        eprintln!(
            "shoal-shadowbench: {} client task(s) did not finish; aborted",
            tasks.len()
        );
        tasks.abort_all();
    }
    (hist, unanswered)
}

// ----- HTTP ------------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One open HTTP/1.1 connection.
enum Conn {
    Hyper(Sender),
    Raw(RawConn),
}

/// Opens one HTTP/1.1 connection (hyper's driver runs as its own task).
async fn http_connect(addr: SocketAddr, client: HttpClient) -> anyhow::Result<Conn> {
    let stream = tokio::time::timeout(SETUP_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    stream.set_nodelay(true).context("nodelay")?;
    if client == HttpClient::Raw {
        return Ok(Conn::Raw(RawConn {
            stream,
            buf: Vec::with_capacity(4096),
            request: Vec::with_capacity(1024),
        }));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::Hyper(sender))
}

/// A keep-alive connection driven in place: the request written whole, the response read
/// into `buf` until its head and body are complete.
struct RawConn {
    stream: tokio::net::TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The request being written (reused).
    request: Vec<u8>,
}

/// A response head: status, where the body starts, and how its length is known.
struct Head {
    status: u16,
    body_at: usize,
    length: BodyLength,
    close: bool,
}

enum BodyLength {
    Fixed(usize),
    Chunked,
    /// Until the server closes the connection.
    ToEnd,
}

impl RawConn {
    async fn post(&mut self, host: &str, path: &str, body: &[u8], headers: &[(&str, String)]) -> HttpOutcome {
        use std::io::Write as _;
        use tokio::io::AsyncWriteExt as _;
        self.request.clear();
        let _ = write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            let _ = write!(self.request, "{name}: {value}\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        if let Err(e) = self.stream.write_all(&self.request).await {
            return HttpOutcome::Io(format!("request: {e}"));
        }
        let head = loop {
            match parse_head(&self.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return HttpOutcome::Io(e),
            }
            if let Err(e) = self.fill().await {
                return HttpOutcome::Io(format!("response head: {e}"));
            }
        };
        let (body, end) = match self.body(&head).await {
            Ok(b) => b,
            Err(e) => return HttpOutcome::Io(format!("response body: {e}")),
        };
        let outcome = if head.status == 200 {
            HttpOutcome::Ok
        } else {
            HttpOutcome::Status(
                head.status,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            )
        };
        self.buf.drain(..end);
        if head.close {
            // The next request needs a new connection: report the close after this answer.
            return match outcome {
                HttpOutcome::Ok => HttpOutcome::OkClosed,
                other => other,
            };
        }
        outcome
    }

    /// Reads more bytes into `buf`; an error at end of stream.
    async fn fill(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt as _;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    /// The body of the response whose head is parsed, and the end of the response in `buf`.
    async fn body(&mut self, head: &Head) -> std::io::Result<(Vec<u8>, usize)> {
        match head.length {
            BodyLength::Fixed(n) => {
                while self.buf.len() < head.body_at + n {
                    self.fill().await?;
                }
                Ok((
                    self.buf[head.body_at..head.body_at + n].to_vec(),
                    head.body_at + n,
                ))
            }
            BodyLength::ToEnd => {
                while self.fill().await.is_ok() {}
                Ok((self.buf[head.body_at..].to_vec(), self.buf.len()))
            }
            BodyLength::Chunked => {
                let mut body = Vec::new();
                let mut at = head.body_at;
                loop {
                    let line_end = loop {
                        if let Some(i) = find(&self.buf[at..], b"\r\n") {
                            break at + i;
                        }
                        self.fill().await?;
                    };
                    let size_text = std::str::from_utf8(&self.buf[at..line_end]).unwrap_or("");
                    let size_text = size_text.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    at = line_end + 2;
                    while self.buf.len() < at + size + 2 {
                        self.fill().await?;
                    }
                    if size == 0 {
                        // No trailers expected: the empty line ends the body.
                        return Ok((body, at + 2));
                    }
                    body.extend_from_slice(&self.buf[at..at + size]);
                    at += size + 2;
                }
            }
        }
    }
}

/// The response head at the start of `buf`, `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let mut length = BodyLength::ToEnd;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = BodyLength::Fixed(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            length = BodyLength::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if matches!(length, BodyLength::ToEnd) {
        close = true;
    }
    Ok(Some(Head {
        status: resp.code.unwrap_or(0),
        body_at,
        length,
        close,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one HTTP request came to.
enum HttpOutcome {
    Ok,
    /// 200, and the server closed the connection after it.
    OkClosed,
    Status(u16, String),
    /// The connection failed; it must be re-opened.
    Io(String),
}

/// The access key a run signs with: `(id, secret)`.
type Key = Option<Arc<(String, String)>>;

fn read_key(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    shoal_tests::read_credentials(path).with_context(|| {
        format!(
            "{} has no aws_access_key_id / aws_secret_access_key",
            path.display()
        )
    })
}

/// The SigV4 headers of a request, when the run signs.
fn signed_headers(host: &str, path: &str, body: &[u8], key: &Key) -> Vec<(&'static str, String)> {
    let Some(k) = key else { return Vec::new() };
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    shoal_auth::sigv4::sign(
        &shoal_auth::sigv4::Request {
            method: "POST",
            path: p,
            query: q,
            headers: vec![("host", host.as_bytes())],
        },
        body,
        &shoal_auth::sigv4::SigningKey {
            key_id: &k.0,
            secret: &k.1,
            region: "us-east-1",
            service: "iotdata",
        },
        shoal_auth::sigv4::unix_now(),
    )
}

async fn http_post(conn: &mut Conn, host: &str, path: &str, body: Vec<u8>, key: &Key) -> HttpOutcome {
    let headers = signed_headers(host, path, &body, key);
    let sender = match conn {
        Conn::Raw(raw) => return raw.post(host, path, &body, &headers).await,
        Conn::Hyper(sender) => sender,
    };
    if let Err(e) = sender.ready().await {
        return HttpOutcome::Io(format!("connection not ready: {e}"));
    }
    let mut builder = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (n, v) in headers {
        builder = builder.header(n, v);
    }
    let req = match builder.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return HttpOutcome::Io(format!("building the request: {e}")),
    };
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return HttpOutcome::Io(format!("request: {e}")),
    };
    let status = resp.status();
    // The whole body is read so that the connection can carry the next request.
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return HttpOutcome::Io(format!("response body: {e}")),
    };
    if status == hyper::StatusCode::OK {
        HttpOutcome::Ok
    } else {
        HttpOutcome::Status(
            status.as_u16(),
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        )
    }
}

/// One connection's loop: a request, its response, the next request, until the window ends.
#[allow(clippy::too_many_arguments)] // one connection task: its whole configuration
async fn http_client(
    c: usize,
    addr: SocketAddr,
    host: String,
    mut sender: Option<Conn>,
    client: HttpClient,
    things: usize,
    run: u32,
    w: Window,
    counters: Arc<Counters>,
    (publish, key): (bool, Key),
) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let paths: Vec<String> = (0..things)
        .map(|i| {
            if publish {
                format!("/topics/bench%2F{c}%2F{i}?qos=1")
            } else {
                format!("/things/bench-{c}-{i}/shadow")
            }
        })
        .collect();
    tokio::time::sleep_until(w.start.into()).await;
    let mut seq = 0u64;
    while !w.stopped() {
        let mut s = match sender.take() {
            Some(s) => s,
            None => match http_connect(addr, client).await {
                Ok(s) => s,
                Err(e) => {
                    counters.error("connect", Some(format!("connection {c}: {e:#}")));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let token = format!("{run:08x}-{c}-{seq}");
        let body = update_body(seq, &token);
        let path = &paths[(seq % things as u64) as usize];
        seq += 1;
        let sent = Instant::now();
        counters.sent.fetch_add(1, Relaxed);
        let outcome = tokio::time::timeout(w.timeout, http_post(&mut s, &host, path, body, &key)).await;
        match outcome {
            Ok(outcome @ (HttpOutcome::Ok | HttpOutcome::OkClosed)) => {
                counters.accepted.fetch_add(1, Relaxed);
                if w.measured(sent) {
                    let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    hist.saturating_record(ns.max(1));
                }
                if matches!(outcome, HttpOutcome::Ok) {
                    sender = Some(s);
                }
            }
            Ok(HttpOutcome::Status(code, text)) => {
                counters.rejected.fetch_add(1, Relaxed);
                counters.error(
                    &format!("http_{code}"),
                    Some(format!("connection {c}: {code} {text}")),
                );
                sender = Some(s);
            }
            Ok(HttpOutcome::Io(e)) => {
                counters.dead_clients.fetch_add(1, Relaxed);
                counters.error("io", Some(format!("connection {c}: {e}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                // The connection is dropped (its request with it) and re-opened.
                counters.timeouts.fetch_add(1, Relaxed);
                counters.error("timeout", Some(format!("connection {c}: no answer in time")));
            }
        }
    }
    (hist, 0)
}

async fn run_http(a: HttpArgs) -> anyhow::Result<Value> {
    if a.clients == 0 || a.common.things == 0 {
        bail!("--clients and --things must be positive");
    }
    let _ = rlimit::increase_nofile_limit(a.clients as u64 * 2 + 1024);
    let addr = tokio::net::lookup_host((a.common.host.as_str(), a.common.port))
        .await
        .with_context(|| format!("resolving {}", a.common.host))?
        .next()
        .with_context(|| format!("{} has no address", a.common.host))?;
    let host = format!("{}:{}", a.common.host, a.common.port);
    let run = run_id();
    eprintln!(
        "shoal-shadowbench: http on {addr}: {} connections, {} things each, run {run:08x}",
        a.clients, a.common.things
    );
    // Setup: every connection open before any load.
    let mut senders = Vec::with_capacity(a.clients);
    for c in 0..a.clients {
        senders.push(
            http_connect(addr, a.client)
                .await
                .with_context(|| format!("opening connection {c}"))?,
        );
    }
    let key: Key = match &a.credentials_file {
        Some(p) => Some(Arc::new(read_key(p)?)),
        None => None,
    };
    let counters = Arc::new(Counters::default());
    let w = Window::new(&a.common);
    let mut tasks = JoinSet::new();
    for (c, s) in senders.into_iter().enumerate() {
        tasks.spawn(http_client(
            c,
            addr,
            host.clone(),
            Some(s),
            a.client,
            a.common.things,
            run,
            w,
            counters.clone(),
            (a.common.publish, key.clone()),
        ));
    }
    let measured = measure(&w, &counters, &a.common).await;
    eprintln!("shoal-shadowbench: window done, draining");
    let (hist, unanswered) = collect(tasks, &w).await;
    let params = json!({
        "clients": a.clients,
        "inflight": 1,
        "things_per_client": a.common.things,
        "things": a.clients * a.common.things,
        "publish": a.common.publish,
        "signed": key.is_some(),
        "client": format!("{:?}", a.client).to_lowercase(),
    });
    Ok(report(
        "http", &a.common, params, measured, &hist, &counters, unanswered,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_the_token() {
        let body = update_body(1234, "abc-1-1234");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["clientToken"], "abc-1-1234");
        assert_eq!(v["state"]["reported"]["seq"], 1234);
        assert_eq!(client_token(&body), Some("abc-1-1234"));
    }

    #[test]
    fn token_is_found_in_a_response() {
        let resp = br#"{"clientToken":"0000abcd-3-17","metadata":{},"version":4}"#;
        assert_eq!(client_token(resp), Some("0000abcd-3-17"));
        assert_eq!(client_token(br#"{"version":4}"#), None);
    }
}
