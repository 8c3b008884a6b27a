//! Running the fleet: provisioning, then one tokio task per truck, each with its own MQTT
//! connection (mutual TLS, its own certificate, client id = thing name, persistent session).
//!
//! # What a truck does
//!
//! * Every reporting interval (simulated seconds; `interval / time_scale` real seconds) it
//!   advances its [`Truck`] model and publishes the reading to `fleet/{truck}/telemetry` at
//!   QoS 1.
//! * On every (re)connection it subscribes to its shadow's `update/delta`, `get/accepted` and
//!   `update/rejected`, reports its whole device state to `$aws/things/{truck}/shadow/update`
//!   and asks for the shadow (`get`), so desired state set while it was away is applied too.
//! * It reports again whenever the door, the compressor, the setpoint or the interval changes.
//! * A delta (or the `delta` of a `get/accepted`) with `setpoint` / `interval` is applied to the
//!   model and reported back, which clears the delta (AWS shadow semantics).
//! * During a connectivity-loss incident it disconnects and keeps its readings; when the
//!   network is back it reconnects (the session, subscriptions and queued deltas resumed) and
//!   publishes the held readings in order, with their original timestamps, before new ones.
//! * During a telemetry stall it stays connected (its client answers keep-alives) but sends
//!   nothing, and keeps its readings; when the stall ends it publishes them in order, as after
//!   a connectivity loss. Only silence gives it away (a watchdog, not a lifecycle event).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{Credentials, ShoalHttp};
use crate::mqtt::{Topics, device_options, tls_config};
use crate::provision::{ProvisionedTruck, TruckSpec, provision};
use crate::truck::{
    DEFAULT_SETPOINT_C, DeviceState, INTERVAL_RANGE_S, IncidentKind, Reading, Truck, TruckConfig,
};

/// Requests a truck's MQTT client queues before publishes wait in the truck's own outbox.
const CHANNEL_CAPACITY: usize = 1024;
/// The most publishes a truck holds while its client queue is full (the oldest are dropped).
const MAX_OUTBOX: usize = 100_000;
/// The shortest real time between two readings of one truck.
const MIN_PERIOD: Duration = Duration::from_millis(5);
/// How long a stopping truck waits for its connection to close.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Everything [`Fleet::start`] needs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Shoal's HTTP API (`http://127.0.0.1:8080`).
    pub http: String,
    /// Shoal's MQTT/TLS listener (`127.0.0.1:8883`).
    pub mqtts: String,
    /// Shoal's CA certificate (`DATA/tls/ca.pem`): trusted for MQTT/TLS and HTTPS.
    pub ca_file: PathBuf,
    /// An admin access key, for provisioning.
    pub credentials: Credentials,
    /// Where certificates and keys are kept between runs.
    pub state_dir: PathBuf,
    /// Number of trucks (`truck-1` ..).
    pub trucks: usize,
    /// Reporting interval, simulated seconds.
    pub interval_s: f64,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Seed of the whole fleet.
    pub seed: u64,
    /// Probability of an incident per truck and simulated hour.
    pub incident_rate: f64,
    /// Initial cargo setpoint, °C.
    pub setpoint_c: f64,
    /// The simulated clock's start, Unix ms (default: now).
    pub start_ms: Option<i64>,
}

impl FleetConfig {
    /// A configuration with the defaults: 10 trucks, 5 s interval, time scale 60, seed 7,
    /// incident rate 0.3, setpoint -20 °C, state in `./coldchain-state`.
    pub fn new(
        http: impl Into<String>,
        mqtts: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        credentials: Credentials,
    ) -> FleetConfig {
        FleetConfig {
            http: http.into(),
            mqtts: mqtts.into(),
            ca_file: ca_file.into(),
            credentials,
            state_dir: PathBuf::from("coldchain-state"),
            trucks: 10,
            interval_s: 5.0,
            time_scale: 60.0,
            seed: 7,
            incident_rate: 0.3,
            setpoint_c: DEFAULT_SETPOINT_C,
            start_ms: None,
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.trucks == 0 || self.trucks > 10_000 {
            bail!("--trucks must be between 1 and 10000");
        }
        if !(INTERVAL_RANGE_S.0..=INTERVAL_RANGE_S.1).contains(&self.interval_s) {
            bail!(
                "--interval must be between {} and {} seconds",
                INTERVAL_RANGE_S.0,
                INTERVAL_RANGE_S.1
            );
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            bail!("--time-scale must be positive");
        }
        if !(0.0..=1.0).contains(&self.incident_rate) {
            bail!("--incident-rate must be between 0 and 1");
        }
        let (lo, hi) = crate::truck::SETPOINT_RANGE_C;
        if !(lo..=hi).contains(&self.setpoint_c) {
            bail!("--setpoint must be between {lo} and {hi} °C");
        }
        Ok(())
    }

    /// The model configuration of every truck, for a simulated clock starting at `start_ms`.
    pub fn truck_configs(&self, start_ms: i64) -> Vec<TruckConfig> {
        (1..=self.trucks)
            .map(|n| {
                TruckConfig::for_fleet(
                    n,
                    self.seed,
                    self.setpoint_c,
                    self.interval_s,
                    self.incident_rate,
                    start_ms,
                )
            })
            .collect()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ----- statistics ---------------------------------------------------------------------------

/// Live counters of one truck.
#[derive(Debug, Default)]
struct TruckStats {
    name: String,
    connected: AtomicBool,
    connects: AtomicU64,
    telemetry: AtomicU64,
    shadow_updates: AtomicU64,
    acked: AtomicU64,
    held: AtomicU64,
    dropped: AtomicU64,
    incidents: AtomicU32,
    errors: AtomicU64,
    setpoint_milli: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// One truck's state, as [`Fleet::truck_snapshots`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TruckSnapshot {
    /// Thing name.
    pub name: String,
    /// Connected to Shoal right now.
    pub connected: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Telemetry messages handed to the MQTT client.
    pub telemetry_sent: u64,
    /// Shadow updates handed to the MQTT client.
    pub shadow_updates: u64,
    /// PUBACKs received (telemetry and shadow updates).
    pub acked: u64,
    /// Readings and publishes held back (no network, or the client's queue full).
    pub held: u64,
    /// Publishes dropped because the outbox was full.
    pub dropped: u64,
    /// Incidents under way.
    pub incidents: Vec<IncidentKind>,
    /// Connection errors so far.
    pub errors: u64,
    /// The setpoint in force, °C.
    pub setpoint_c: f64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The whole fleet at one moment (its `Display` is the one-line summary).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    /// Time since the fleet started.
    pub elapsed: Duration,
    /// Number of trucks.
    pub trucks: usize,
    /// Trucks connected now.
    pub connected: usize,
    /// Telemetry messages sent.
    pub telemetry_sent: u64,
    /// Shadow updates sent.
    pub shadow_updates: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// Held back readings and publishes.
    pub held: u64,
    /// Dropped publishes.
    pub dropped: u64,
    /// Incidents under way, by kind.
    pub incidents: BTreeMap<IncidentKind, usize>,
    /// Connection errors.
    pub errors: u64,
    /// The most recent connection error of any truck.
    pub last_error: Option<String>,
}

impl FleetSnapshot {
    /// Incidents under way, all kinds.
    pub fn incidents_active(&self) -> usize {
        self.incidents.values().sum()
    }

    fn of(elapsed: Duration, trucks: &[TruckSnapshot]) -> FleetSnapshot {
        let mut s = FleetSnapshot {
            elapsed,
            trucks: trucks.len(),
            ..FleetSnapshot::default()
        };
        for t in trucks {
            s.connected += usize::from(t.connected);
            s.telemetry_sent += t.telemetry_sent;
            s.shadow_updates += t.shadow_updates;
            s.acked += t.acked;
            s.held += t.held;
            s.dropped += t.dropped;
            s.errors += t.errors;
            for k in &t.incidents {
                *s.incidents.entry(*k).or_default() += 1;
            }
            if t.last_error.is_some() {
                s.last_error.clone_from(&t.last_error);
            }
        }
        s
    }
}

impl std::fmt::Display for FleetSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>7.1}s] trucks {}/{} connected | telemetry {} sent, {} acked | shadow updates {} | held {} | incidents {}",
            self.elapsed.as_secs_f64(),
            self.connected,
            self.trucks,
            self.telemetry_sent,
            self.acked,
            self.shadow_updates,
            self.held,
            self.incidents_active(),
        )?;
        if !self.incidents.is_empty() {
            let kinds: Vec<String> = self.incidents.iter().map(|(k, n)| format!("{k} {n}")).collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        if self.dropped > 0 {
            write!(f, " | dropped {}", self.dropped)?;
        }
        if self.errors > 0 {
            write!(f, " | connection errors {}", self.errors)?;
            if let Some(e) = &self.last_error {
                write!(f, " (last: {e})")?;
            }
        }
        Ok(())
    }
}

struct Shared {
    trucks: Vec<TruckStats>,
    started: Instant,
}

// ----- the fleet ----------------------------------------------------------------------------

/// A running fleet. Dropping it aborts the trucks; [`Fleet::stop`] disconnects them cleanly.
pub struct Fleet {
    provisioned: Vec<ProvisionedTruck>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("trucks", &self.provisioned.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Provisions the fleet (see [`crate::provision`]) and starts every truck. Fails when
    /// Shoal cannot be reached, refuses the credentials, or a file cannot be read.
    pub async fn start(cfg: &FleetConfig) -> anyhow::Result<Fleet> {
        cfg.validate()?;
        let ca = std::fs::read(&cfg.ca_file)
            .with_context(|| format!("cannot read the CA file {}", cfg.ca_file.display()))?;
        let https = cfg.http.starts_with("https:");
        let api = ShoalHttp::new(&cfg.http, cfg.credentials.clone(), https.then_some(&ca[..]))?;
        let start_ms = cfg.start_ms.unwrap_or_else(now_ms);
        let configs = cfg.truck_configs(start_ms);
        let specs: Vec<TruckSpec> = configs
            .iter()
            .map(|c| TruckSpec {
                name: c.name.clone(),
                route: c.route.name.clone(),
                setpoint_c: c.setpoint_c,
                route_points: c.route.points.iter().map(|p| (p.lat, p.lon)).collect(),
            })
            .collect();
        let provisioned = provision(&api, &cfg.state_dir, &specs)
            .await
            .with_context(|| format!("provisioning the fleet at {}", cfg.http))?;
        let trucks = configs
            .iter()
            .map(Truck::new)
            .zip(provisioned)
            .collect::<Vec<_>>();
        Fleet::launch(cfg, trucks)
    }

    /// Starts already provisioned trucks (models built by the caller, e.g. with scripted
    /// incidents). Must run inside a tokio runtime.
    pub fn launch(cfg: &FleetConfig, trucks: Vec<(Truck, ProvisionedTruck)>) -> anyhow::Result<Fleet> {
        if !(cfg.time_scale.is_finite() && cfg.time_scale > 0.0) {
            bail!("--time-scale must be positive");
        }
        let ca = std::fs::read(&cfg.ca_file)
            .with_context(|| format!("cannot read the CA file {}", cfg.ca_file.display()))?;
        let mut prepared = Vec::with_capacity(trucks.len());
        for (truck, p) in trucks {
            let read = |path: &std::path::Path| {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
            };
            let tls = tls_config(&ca, &read(&p.cert_path)?, &read(&p.key_path)?)
                .with_context(|| format!("TLS set-up of {}", p.name))?;
            let opts = device_options(&p.name, &cfg.mqtts, tls)?;
            prepared.push((truck, p, opts));
        }
        let shared = Arc::new(Shared {
            trucks: prepared
                .iter()
                .map(|(t, p, _)| {
                    let s = TruckStats {
                        name: p.name.clone(),
                        ..TruckStats::default()
                    };
                    s.setpoint_milli.store(milli(t.setpoint_c()), Relaxed);
                    s
                })
                .collect(),
            started: Instant::now(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut provisioned = Vec::with_capacity(prepared.len());
        for (i, (truck, p, opts)) in prepared.into_iter().enumerate() {
            tasks.spawn(truck_task(
                truck,
                opts,
                cfg.time_scale,
                shared.clone(),
                i,
                stop_rx.clone(),
            ));
            provisioned.push(p);
        }
        Ok(Fleet {
            provisioned,
            shared,
            stop,
            tasks,
        })
    }

    /// The trucks' names and credentials.
    pub fn provisioned(&self) -> &[ProvisionedTruck] {
        &self.provisioned
    }

    /// Every truck's counters.
    pub fn truck_snapshots(&self) -> Vec<TruckSnapshot> {
        self.shared
            .trucks
            .iter()
            .map(|s| {
                let mask = s.incidents.load(Relaxed);
                TruckSnapshot {
                    name: s.name.clone(),
                    connected: s.connected.load(Relaxed),
                    connects: s.connects.load(Relaxed),
                    telemetry_sent: s.telemetry.load(Relaxed),
                    shadow_updates: s.shadow_updates.load(Relaxed),
                    acked: s.acked.load(Relaxed),
                    held: s.held.load(Relaxed),
                    dropped: s.dropped.load(Relaxed),
                    incidents: IncidentKind::ALL
                        .into_iter()
                        .filter(|k| mask & k.bit() != 0)
                        .collect(),
                    errors: s.errors.load(Relaxed),
                    setpoint_c: s.setpoint_milli.load(Relaxed) as i64 as f64 / 1000.0,
                    last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
                }
            })
            .collect()
    }

    /// The fleet's counters.
    pub fn snapshot(&self) -> FleetSnapshot {
        FleetSnapshot::of(self.shared.started.elapsed(), &self.truck_snapshots())
    }

    /// Waits until every truck is connected; `false` after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.snapshot();
            if s.connected == s.trucks {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Disconnects every truck and waits for them (a few seconds at most).
    pub async fn stop(mut self) -> FleetSnapshot {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        for s in &self.shared.trucks {
            s.connected.store(false, Relaxed);
        }
        self.snapshot()
    }
}

/// The setpoint as stored in an atomic (milli-degrees, two's complement).
fn milli(c: f64) -> u64 {
    (c * 1000.0).round() as i64 as u64
}

/// Provisions and runs the fleet, printing a summary line to stdout every `summary_every`,
/// until `duration` has passed (or Ctrl-C). Returns the final counters.
pub async fn run(
    cfg: &FleetConfig,
    duration: Option<Duration>,
    summary_every: Duration,
) -> anyhow::Result<FleetSnapshot> {
    let fleet = Fleet::start(cfg).await?;
    let reused = fleet.provisioned().iter().filter(|p| p.reused).count();
    say(&format!(
        "provisioned {} trucks at {} ({} new certificates, {reused} reused; state in {}); running, interval {} s, time scale {}x",
        fleet.provisioned().len(),
        cfg.http,
        fleet.provisioned().len() - reused,
        cfg.state_dir.display(),
        cfg.interval_s,
        cfg.time_scale,
    ));
    let deadline = duration.map(|d| Instant::now() + d);
    let every = summary_every.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let until_end = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => say(&fleet.snapshot().to_string()),
            _ = until_end => break,
            _ = &mut ctrl_c => {
                say("interrupted; stopping");
                break;
            }
        }
    }
    let last = fleet.stop().await;
    say(&format!("stopped: {last}"));
    Ok(last)
}

/// One line on stdout.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ----- one truck ----------------------------------------------------------------------------

/// What the connection task tells its truck.
enum Net {
    Connected,
    Message { topic: String, payload: Vec<u8> },
}

/// A publish waiting for room in the client's queue.
struct Pending {
    topic: String,
    payload: Vec<u8>,
    shadow: bool,
}

/// The real time between two readings.
fn period(interval_s: f64, time_scale: f64) -> Duration {
    Duration::from_secs_f64(interval_s / time_scale).max(MIN_PERIOD)
}

fn shadow_report(topics: &Topics, state: &DeviceState) -> Pending {
    Pending {
        topic: topics.update.clone(),
        payload: json!({"state": {"reported": state.to_reported()}})
            .to_string()
            .into_bytes(),
        shadow: true,
    }
}

fn telemetry(topics: &Topics, r: &Reading) -> Pending {
    Pending {
        topic: topics.telemetry.clone(),
        payload: r.to_json().to_string().into_bytes(),
        shadow: false,
    }
}

/// Hands queued publishes to the client until its queue is full.
fn flush(client: &AsyncClient, outbox: &mut VecDeque<Pending>, s: &TruckStats) {
    while let Some(o) = outbox.front() {
        match client.try_publish(o.topic.clone(), QoS::AtLeastOnce, false, o.payload.clone()) {
            Ok(()) => {
                if o.shadow {
                    s.shadow_updates.fetch_add(1, Relaxed);
                } else {
                    s.telemetry.fetch_add(1, Relaxed);
                }
                outbox.pop_front();
            }
            Err(_) => break,
        }
    }
    while outbox.len() > MAX_OUTBOX {
        outbox.pop_front();
        s.dropped.fetch_add(1, Relaxed);
    }
}

async fn truck_task(
    mut truck: Truck,
    opts: MqttOptions,
    time_scale: f64,
    shared: Arc<Shared>,
    idx: usize,
    mut stop: watch::Receiver<bool>,
) {
    let Some(s) = shared.trucks.get(idx) else {
        return;
    };
    let name = truck.name().to_owned();
    let topics = Topics::new(&name);
    let (client, eventloop) = AsyncClient::new(opts, CHANNEL_CAPACITY);
    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    let (offline_tx, offline_rx) = watch::channel(false);
    let mut conn = tokio::spawn(connection(
        eventloop,
        net_tx,
        offline_rx,
        stop.clone(),
        shared.clone(),
        idx,
    ));

    // Readings taken without network, in order.
    let mut held: VecDeque<Reading> = VecDeque::new();
    let mut outbox: VecDeque<Pending> = VecDeque::new();
    let mut reported: Option<DeviceState> = None;
    let mut offline = false;
    let mut next = Instant::now() + period(truck.interval_s(), time_scale);

    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let reading = truck.tick();
                next += period(truck.interval_s(), time_scale);
                // After a stall (a suspended laptop), carry on instead of bursting.
                next = next.max(Instant::now());
                s.incidents.store(truck.active_mask(), Relaxed);
                if truck.is_offline() {
                    if !offline {
                        offline = true;
                        tracing::info!(truck = %name, "connectivity lost: holding readings");
                        // The connection task drops the link as a dead network would: no
                        // DISCONNECT, so Shoal sees the connection lost (and says so in a
                        // lifecycle event).
                        let _ = offline_tx.send(true);
                    }
                    held.push_back(reading);
                } else if truck.is_stalled() {
                    if held.is_empty() {
                        tracing::info!(truck = %name, "telemetry stalled: holding readings, connection kept");
                    }
                    held.push_back(reading);
                } else {
                    if offline {
                        offline = false;
                        tracing::info!(truck = %name, held = held.len(), "connectivity back: catching up");
                        let _ = offline_tx.send(false);
                    }
                    outbox.extend(held.drain(..).map(|r| telemetry(&topics, &r)));
                    outbox.push_back(telemetry(&topics, &reading));
                    let state = truck.device_state();
                    if reported.as_ref().is_none_or(|r| state.differs_from(r)) {
                        outbox.push_back(shadow_report(&topics, &state));
                        reported = Some(state);
                    }
                }
            }
            Some(ev) = net_rx.recv() => match ev {
                Net::Connected => {
                    let filters = topics
                        .subscriptions()
                        .map(|t| SubscribeFilter::new(t.to_owned(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(truck = %name, error = %e, "cannot queue the shadow subscriptions");
                    }
                    if !offline {
                        let state = truck.device_state();
                        outbox.push_back(shadow_report(&topics, &state));
                        reported = Some(state);
                        outbox.push_back(Pending {
                            topic: topics.get.clone(),
                            payload: b"{}".to_vec(),
                            shadow: true,
                        });
                    }
                }
                Net::Message { topic, payload } => {
                    let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                    let desired = if topic == topics.delta {
                        v.get("state")
                    } else if topic == topics.get_accepted {
                        v.get("state").and_then(|s| s.get("delta"))
                    } else {
                        if topic == topics.update_rejected {
                            tracing::warn!(truck = %name, answer = %v, "shadow update rejected");
                        }
                        None
                    };
                    if let Some(d) = desired.and_then(Value::as_object) {
                        let applied = truck.apply_desired(d);
                        if !applied.refused.is_empty() {
                            tracing::warn!(truck = %name, refused = ?applied.refused, "desired state not applicable");
                        }
                        if applied.changed() {
                            tracing::info!(
                                truck = %name,
                                setpoint = truck.setpoint_c(),
                                interval = truck.interval_s(),
                                "desired state applied"
                            );
                            s.setpoint_milli.store(milli(truck.setpoint_c()), Relaxed);
                            if applied.interval_s.is_some() {
                                next = next.min(Instant::now() + period(truck.interval_s(), time_scale));
                            }
                            let state = truck.device_state();
                            if !offline {
                                outbox.push_back(shadow_report(&topics, &state));
                                reported = Some(state);
                            }
                        }
                    }
                }
            }
        }
        flush(&client, &mut outbox, s);
        s.held.store((held.len() + outbox.len()) as u64, Relaxed);
    }

    flush(&client, &mut outbox, s);
    let _ = client.try_disconnect();
    tokio::select! {
        _ = &mut conn => {}
        _ = tokio::time::sleep(STOP_GRACE) => conn.abort(),
    }
    s.connected.store(false, Relaxed);
}

/// Drives a truck's MQTT connection: reconnects with a back-off after errors, stays away
/// while `offline`, forwards connections and incoming messages, counts PUBACKs.
async fn connection(
    mut el: EventLoop,
    tx: mpsc::UnboundedSender<Net>,
    mut offline: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    idx: usize,
) {
    let Some(s) = shared.trucks.get(idx) else {
        return;
    };
    const FIRST_BACKOFF: Duration = Duration::from_millis(250);
    let mut backoff = FIRST_BACKOFF;
    let mut last_logged: Option<String> = None;
    loop {
        if *offline.borrow() {
            s.connected.store(false, Relaxed);
            tokio::select! {
                r = offline.wait_for(|v| !*v) => if r.is_err() { break },
                _ = stop.changed() => break,
            }
            // Drop what is left of the old connection: the next poll reconnects and resumes
            // the session (unacknowledged publishes are sent again).
            el.clean();
            continue;
        }
        let polled = tokio::select! {
            polled = el.poll() => polled,
            r = offline.wait_for(|v| *v) => {
                if r.is_err() {
                    break;
                }
                // The network went away: drop the socket without a DISCONNECT. What was
                // unacknowledged is resent after the reconnection.
                el.clean();
                s.connected.store(false, Relaxed);
                continue;
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                s.connected.store(true, Relaxed);
                s.connects.fetch_add(1, Relaxed);
                backoff = FIRST_BACKOFF;
                if last_logged.take().is_some() {
                    tracing::info!(truck = %s.name, "connected again");
                }
                let _ = tx.send(Net::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(Net::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                });
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                s.acked.fetch_add(1, Relaxed);
            }
            Ok(Event::Incoming(Packet::Disconnect)) => s.connected.store(false, Relaxed),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                s.connected.store(false, Relaxed);
                if *stop.borrow() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                s.connected.store(false, Relaxed);
                if *stop.borrow() {
                    break;
                }
                if *offline.borrow() {
                    continue;
                }
                s.errors.fetch_add(1, Relaxed);
                let msg = e.to_string();
                if let Ok(mut l) = s.last_error.lock() {
                    *l = Some(msg.clone());
                }
                if last_logged.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(truck = %s.name, error = %msg, "MQTT connection failed; retrying");
                    last_logged = Some(msg);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                    _ = offline.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    s.connected.store(false, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            key_id: "k".into(),
            secret: "s".into(),
        }
    }

    #[test]
    fn config_validation() {
        let ok = FleetConfig::new("http://127.0.0.1:8080", "127.0.0.1:8883", "ca.pem", creds());
        ok.validate().unwrap();
        for bad in [
            FleetConfig {
                trucks: 0,
                ..ok.clone()
            },
            FleetConfig {
                interval_s: 0.0,
                ..ok.clone()
            },
            FleetConfig {
                time_scale: 0.0,
                ..ok.clone()
            },
            FleetConfig {
                incident_rate: 1.5,
                ..ok.clone()
            },
            FleetConfig {
                setpoint_c: 40.0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let cfgs = ok.truck_configs(1);
        assert_eq!(cfgs.len(), 10);
        assert_eq!(cfgs[9].name, "truck-10");
    }

    #[test]
    fn periods() {
        assert_eq!(period(5.0, 60.0), Duration::from_secs_f64(5.0 / 60.0));
        assert_eq!(period(1.0, 1.0), Duration::from_secs(1));
        assert_eq!(period(0.1, 1e6), MIN_PERIOD);
    }

    #[test]
    fn setpoints_round_trip_through_the_atomic() {
        for c in [-20.0, -25.5, 0.0, 4.25] {
            assert_eq!(milli(c) as i64 as f64 / 1000.0, c);
        }
    }

    #[test]
    fn summary_line() {
        let t = TruckSnapshot {
            name: "truck-1".into(),
            connected: true,
            connects: 1,
            telemetry_sent: 10,
            shadow_updates: 2,
            acked: 12,
            held: 0,
            dropped: 0,
            incidents: vec![IncidentKind::DoorOpen],
            errors: 0,
            setpoint_c: -20.0,
            last_error: None,
        };
        let mut u = t.clone();
        u.connected = false;
        u.incidents = vec![IncidentKind::DoorOpen, IncidentKind::Detour];
        let s = FleetSnapshot::of(Duration::from_secs(3), &[t, u]);
        assert_eq!(s.connected, 1);
        assert_eq!(s.telemetry_sent, 20);
        assert_eq!(s.incidents_active(), 3);
        let line = s.to_string();
        assert!(line.contains("trucks 1/2 connected"), "{line}");
        assert!(line.contains("telemetry 20 sent, 24 acked"), "{line}");
        assert!(line.contains("incidents 3 (door-open 2, detour 1)"), "{line}");
    }
}
