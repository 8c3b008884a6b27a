//! A deterministic model of one refrigerated truck: where it is, how fast it goes, the cargo's
//! temperature and humidity, the door, whether someone is inside, and the incidents that make
//! a cold chain interesting. Everything random comes from a seeded [`StdRng`], so the same
//! configuration always produces the same readings.
//!
//! # Time
//!
//! The model runs on *simulated* time: [`Truck::advance`] moves it forward by a number of
//! simulated seconds (internally in steps of at most [`MAX_STEP_S`]), and readings carry the
//! simulated clock as their timestamp (`start_ms` plus the simulated time elapsed). The
//! reporting interval (`interval_s`) is in simulated seconds too; the runtime maps it to real
//! time with the time scale.
//!
//! # Normal operation
//!
//! The truck drives its route at 70–90 km/h (a bounded random walk around 80), stops
//! [`END_STOP_S`] at the destination and drives back. The cargo's temperature follows the
//! setpoint (first-order, time constant 10 minutes, at most 1 °C per minute); readings add
//! ±0.3 °C of sensor noise. Humidity wanders between 60 and 75 %. The door is closed and nobody
//! is inside.
//!
//! # Incidents
//!
//! With probability `incident_rate`, a truck gets one incident in each simulated hour (the
//! first hour's no earlier than two minutes in); its kind, start and size come from the seed.
//! Tests and demos can script incidents instead ([`Truck::with_incidents`]).
//!
//! | kind | effect |
//! | --- | --- |
//! | compressor failure | compressor reported `failed`; temperature rises 0.5 °C per minute up to the ambient temperature (5–15 °C) for 1–3 h, then cools back |
//! | door open | the truck stands still with the door open for 2–6 min; warm, moist air gets in |
//! | detour | the truck leaves its corridor sideways by 3–8 km for 20–60 min |
//! | presence | a person is inside the container for 10–45 min |
//! | humidity rise | the cargo thaws: humidity climbs to 92–98 %, temperature creeps up, for 30–90 min |
//! | connectivity loss | no network for 10–60 reporting intervals: readings are buffered and sent late |
//! | telemetry stall | the data logger hangs for 10–60 reporting intervals while the connection stays up (the MQTT client still answers keep-alives): readings are buffered and sent late; half the random connectivity losses are stalls |
//!
//! The door and presence in a reading are *latched*: `true` if the door was open (someone was
//! inside) at any moment since the previous reading, so short events are never lost between
//! two samples.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::route::{LatLon, Route, destination};

/// The longest internal simulation step, seconds.
pub const MAX_STEP_S: f64 = 10.0;
/// How long a truck stands at the end of its route before driving back, seconds.
pub const END_STOP_S: f64 = 15.0 * 60.0;
/// Firmware version the trucks report.
pub const FIRMWARE: &str = "1.4.2";
/// Default cargo setpoint, °C (frozen fish).
pub const DEFAULT_SETPOINT_C: f64 = -20.0;
/// Accepted setpoints (desired state outside this range is ignored), °C.
pub const SETPOINT_RANGE_C: (f64, f64) = (-40.0, 15.0);
/// Accepted reporting intervals, simulated seconds.
pub const INTERVAL_RANGE_S: (f64, f64) = (0.1, 86_400.0);

const HOUR_S: f64 = 3600.0;
const MINUTE_S: f64 = 60.0;

/// What can go wrong with a truck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncidentKind {
    /// The refrigeration unit stops; the cargo warms up.
    CompressorFailure,
    /// The door is opened mid-route.
    DoorOpen,
    /// The truck leaves its planned corridor.
    Detour,
    /// A person is inside the container.
    Presence,
    /// Humidity rises: the cargo is thawing.
    HumidityRise,
    /// The truck loses its network and reports late.
    ConnectivityLoss,
    /// The truck stays connected but sends nothing for a while, then reports late.
    TelemetryStall,
}

impl IncidentKind {
    /// Every kind, in a fixed order.
    pub const ALL: [IncidentKind; 7] = [
        IncidentKind::CompressorFailure,
        IncidentKind::DoorOpen,
        IncidentKind::Detour,
        IncidentKind::Presence,
        IncidentKind::HumidityRise,
        IncidentKind::ConnectivityLoss,
        IncidentKind::TelemetryStall,
    ];

    /// The kinds a random draw picks from (a stall is a connectivity loss drawn as one, so
    /// the seeds of earlier versions keep their schedules).
    const DRAWN: [IncidentKind; 6] = [
        IncidentKind::CompressorFailure,
        IncidentKind::DoorOpen,
        IncidentKind::Detour,
        IncidentKind::Presence,
        IncidentKind::HumidityRise,
        IncidentKind::ConnectivityLoss,
    ];

    /// `compressor-failure`, `door-open`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::CompressorFailure => "compressor-failure",
            IncidentKind::DoorOpen => "door-open",
            IncidentKind::Detour => "detour",
            IncidentKind::Presence => "presence",
            IncidentKind::HumidityRise => "humidity-rise",
            IncidentKind::ConnectivityLoss => "connectivity-loss",
            IncidentKind::TelemetryStall => "telemetry-stall",
        }
    }

    /// This kind's bit in [`Truck::active_mask`].
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for IncidentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scheduled incident, in simulated seconds since the truck started.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// What happens.
    pub kind: IncidentKind,
    /// When it starts.
    pub start_s: f64,
    /// How long it lasts.
    pub duration_s: f64,
    /// Its size: the lateral offset in metres for a detour, the humidity reached (%) for a
    /// humidity rise; unused otherwise.
    pub magnitude: f64,
}

impl Incident {
    /// Whether it is under way at `t` (simulated seconds).
    pub fn active_at(&self, t: f64) -> bool {
        t >= self.start_s && t < self.start_s + self.duration_s
    }

    fn end_s(&self) -> f64 {
        self.start_s + self.duration_s
    }
}

/// How one truck is set up.
#[derive(Debug, Clone)]
pub struct TruckConfig {
    /// Thing name and MQTT client id (`truck-7`).
    pub name: String,
    /// The route it starts on.
    pub route: Route,
    /// How far along the route it starts, metres.
    pub start_distance_m: f64,
    /// Cargo setpoint, °C.
    pub setpoint_c: f64,
    /// Reporting interval, simulated seconds.
    pub interval_s: f64,
    /// Seed of everything random about this truck.
    pub seed: u64,
    /// Probability of an incident in each simulated hour (0 = never).
    pub incident_rate: f64,
    /// The simulated clock at the start, Unix milliseconds.
    pub start_ms: i64,
}

impl TruckConfig {
    /// Truck number `n` (1-based) of a fleet: named `truck-{n}`, on route
    /// `Route::all()[(n - 1) % len]` (every other lap of the table drives it backwards),
    /// starting somewhere in the first half of it, with a seed derived from `fleet_seed` and `n`.
    pub fn for_fleet(
        n: usize,
        fleet_seed: u64,
        setpoint_c: f64,
        interval_s: f64,
        incident_rate: f64,
        start_ms: i64,
    ) -> TruckConfig {
        let routes = Route::all();
        let idx = n.saturating_sub(1);
        let mut route = routes
            .get(idx % routes.len().max(1))
            .cloned()
            .unwrap_or_else(|| Route::new("nowhere", vec![LatLon::new(0.0, 0.0)]));
        if (idx / routes.len().max(1)) % 2 == 1 {
            route = route.reversed();
        }
        let seed = mix(fleet_seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5E_ED0F_57A7);
        let start_distance_m = rng.random_range(0.0..=0.5) * route.length_m();
        TruckConfig {
            name: format!("truck-{n}"),
            route,
            start_distance_m,
            setpoint_c,
            interval_s,
            seed,
            incident_rate,
            start_ms,
        }
    }
}

/// SplitMix64's finaliser: spreads nearby seeds apart.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One telemetry sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Thing name.
    pub truck: String,
    /// Simulated clock, Unix milliseconds.
    pub ts_ms: i64,
    /// Position.
    pub lat: f64,
    /// Position.
    pub lon: f64,
    /// Speed, km/h.
    pub speed_kmh: f64,
    /// Cargo temperature (with sensor noise), °C.
    pub temp_c: f64,
    /// Relative humidity in the container, %.
    pub humidity: f64,
    /// The door was open at some moment since the previous reading.
    pub door_open: bool,
    /// Someone was inside at some moment since the previous reading.
    pub presence: bool,
    /// Setpoint in force, °C.
    pub setpoint_c: f64,
    /// Route name (`hamburg-copenhagen`).
    pub route: String,
    /// Sequence number, from 0, per truck.
    pub seq: u64,
}

impl Reading {
    /// The telemetry message published on `fleet/{truck}/telemetry`.
    pub fn to_json(&self) -> Value {
        json!({
            "truck": self.truck,
            "ts": self.ts_ms,
            "lat": round(self.lat, 5),
            "lon": round(self.lon, 5),
            "speedKmh": round(self.speed_kmh, 1),
            "tempC": round(self.temp_c, 2),
            "humidity": round(self.humidity, 1),
            "door": if self.door_open { "open" } else { "closed" },
            "presence": self.presence,
            "setpoint": number(self.setpoint_c),
            "route": self.route,
            "seq": self.seq,
        })
    }
}

/// The device state reported to the shadow.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Door open right now.
    pub door_open: bool,
    /// Compressor failed right now.
    pub compressor_failed: bool,
    /// Setpoint, °C.
    pub setpoint_c: f64,
    /// Reporting interval, seconds.
    pub interval_s: f64,
    /// Position.
    pub lat: f64,
    /// Position.
    pub lon: f64,
}

impl DeviceState {
    /// `{"door","compressor","firmware","setpoint","interval","lat","lon"}`: the `reported`
    /// section of a shadow update.
    pub fn to_reported(&self) -> Value {
        json!({
            "door": if self.door_open { "open" } else { "closed" },
            "compressor": if self.compressor_failed { "failed" } else { "ok" },
            "firmware": FIRMWARE,
            "setpoint": number(self.setpoint_c),
            "interval": number(self.interval_s),
            "lat": round(self.lat, 5),
            "lon": round(self.lon, 5),
        })
    }

    /// Whether anything worth a shadow update differs (the position alone is not).
    pub fn differs_from(&self, other: &DeviceState) -> bool {
        self.door_open != other.door_open
            || self.compressor_failed != other.compressor_failed
            || self.setpoint_c != other.setpoint_c
            || self.interval_s != other.interval_s
    }
}

/// What [`Truck::apply_desired`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredApplied {
    /// The new setpoint, if it changed.
    pub setpoint_c: Option<f64>,
    /// The new interval, if it changed.
    pub interval_s: Option<f64>,
    /// Keys that were present but refused (wrong type or out of range).
    pub refused: Vec<String>,
}

impl DesiredApplied {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.setpoint_c.is_some() || self.interval_s.is_some()
    }
}

/// One truck.
#[derive(Debug, Clone)]
pub struct Truck {
    name: String,
    route: Route,
    distance_m: f64,
    /// Seconds left standing at the end of the route.
    stop_left_s: f64,
    elapsed_s: f64,
    start_ms: i64,
    speed_kmh: f64,
    temp_c: f64,
    humidity: f64,
    humidity_base: f64,
    ambient_c: f64,
    setpoint_c: f64,
    interval_s: f64,
    incidents: Vec<Incident>,
    incident_rate: f64,
    /// No random incidents: only the scripted ones.
    scripted: bool,
    /// The next simulated hour to draw an incident for.
    next_window: u64,
    rng: StdRng,
    schedule_rng: StdRng,
    seq: u64,
    // State as of the last step.
    door_open: bool,
    presence: bool,
    compressor_failed: bool,
    offline: bool,
    stalled: bool,
    offset_m: f64,
    active_mask: u32,
    // Latched since the last reading.
    door_latch: bool,
    presence_latch: bool,
}

impl Truck {
    /// A truck with random incidents (see the module documentation).
    pub fn new(cfg: &TruckConfig) -> Truck {
        let mut t = Truck::build(cfg, false);
        t.schedule_window();
        t
    }

    /// A truck whose only incidents are `incidents` (no random ones, whatever the rate).
    pub fn with_incidents(cfg: &TruckConfig, incidents: Vec<Incident>) -> Truck {
        let mut t = Truck::build(cfg, true);
        t.incidents = incidents;
        t
    }

    fn build(cfg: &TruckConfig, scripted: bool) -> Truck {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let schedule_rng = StdRng::seed_from_u64(mix(cfg.seed ^ 0x1AC1_DE57));
        let humidity_base = rng.random_range(62.0..=73.0);
        Truck {
            name: cfg.name.clone(),
            route: cfg.route.clone(),
            distance_m: cfg.start_distance_m.clamp(0.0, cfg.route.length_m()),
            stop_left_s: 0.0,
            elapsed_s: 0.0,
            start_ms: cfg.start_ms,
            speed_kmh: rng.random_range(74.0..=86.0),
            temp_c: cfg.setpoint_c + rng.random_range(-0.2..=0.2),
            humidity: humidity_base,
            humidity_base,
            ambient_c: rng.random_range(5.0..=15.0),
            setpoint_c: cfg.setpoint_c,
            interval_s: cfg.interval_s.clamp(INTERVAL_RANGE_S.0, INTERVAL_RANGE_S.1),
            incidents: Vec::new(),
            incident_rate: cfg.incident_rate.clamp(0.0, 1.0),
            scripted,
            next_window: 0,
            rng,
            schedule_rng,
            seq: 0,
            door_open: false,
            presence: false,
            compressor_failed: false,
            offline: false,
            stalled: false,
            offset_m: 0.0,
            active_mask: 0,
            door_latch: false,
            presence_latch: false,
        }
    }

    /// Thing name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Simulated seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_s
    }

    /// Reporting interval, simulated seconds.
    pub fn interval_s(&self) -> f64 {
        self.interval_s
    }

    /// Setpoint, °C.
    pub fn setpoint_c(&self) -> f64 {
        self.setpoint_c
    }

    /// The cargo's true temperature (no sensor noise), °C.
    pub fn true_temp_c(&self) -> f64 {
        self.temp_c
    }

    /// The route being driven now.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Incidents scheduled so far (past, current and known future ones).
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// Whether the truck has no network right now (a connectivity-loss incident).
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Whether a telemetry stall is under way (connected, sending nothing; a connectivity
    /// loss at the same time wins).
    pub fn is_stalled(&self) -> bool {
        self.stalled && !self.offline
    }

    /// The incidents under way, as a bit set of [`IncidentKind::bit`].
    pub fn active_mask(&self) -> u32 {
        self.active_mask
    }

    /// The kinds of the incidents under way.
    pub fn active_incidents(&self) -> Vec<IncidentKind> {
        IncidentKind::ALL
            .into_iter()
            .filter(|k| self.active_mask & k.bit() != 0)
            .collect()
    }

    /// Where the truck is (lateral detour offset included) and its heading.
    pub fn position(&self) -> LatLon {
        let (p, heading) = self.route.position_at(self.distance_m);
        if self.offset_m > 0.0 {
            destination(p, heading + 90.0, self.offset_m)
        } else {
            p
        }
    }

    /// The state the shadow should show.
    pub fn device_state(&self) -> DeviceState {
        let p = self.position();
        DeviceState {
            door_open: self.door_open,
            compressor_failed: self.compressor_failed,
            setpoint_c: self.setpoint_c,
            interval_s: self.interval_s,
            lat: p.lat,
            lon: p.lon,
        }
    }

    /// Changes the setpoint (clamped to [`SETPOINT_RANGE_C`]).
    pub fn set_setpoint(&mut self, c: f64) {
        self.setpoint_c = c.clamp(SETPOINT_RANGE_C.0, SETPOINT_RANGE_C.1);
    }

    /// Changes the reporting interval (clamped to [`INTERVAL_RANGE_S`]).
    pub fn set_interval(&mut self, s: f64) {
        self.interval_s = s.clamp(INTERVAL_RANGE_S.0, INTERVAL_RANGE_S.1);
    }

    /// Applies the `setpoint` and `interval` of a shadow's desired state or delta (other keys
    /// are ignored; values of the wrong type or out of range are refused and left alone).
    pub fn apply_desired(&mut self, state: &Map<String, Value>) -> DesiredApplied {
        let mut out = DesiredApplied::default();
        if let Some(v) = state.get("setpoint") {
            match v.as_f64() {
                Some(c) if (SETPOINT_RANGE_C.0..=SETPOINT_RANGE_C.1).contains(&c) => {
                    if c != self.setpoint_c {
                        self.setpoint_c = c;
                        out.setpoint_c = Some(c);
                    }
                }
                _ => out.refused.push("setpoint".into()),
            }
        }
        if let Some(v) = state.get("interval") {
            match v.as_f64() {
                Some(s) if (INTERVAL_RANGE_S.0..=INTERVAL_RANGE_S.1).contains(&s) => {
                    if s != self.interval_s {
                        self.interval_s = s;
                        out.interval_s = Some(s);
                    }
                }
                _ => out.refused.push("interval".into()),
            }
        }
        out
    }

    /// Advances one reporting interval and takes a reading.
    pub fn tick(&mut self) -> Reading {
        self.advance(self.interval_s);
        self.reading()
    }

    /// Moves the model `dt_s` simulated seconds forward.
    pub fn advance(&mut self, dt_s: f64) {
        if dt_s.is_nan() || dt_s <= 0.0 {
            return;
        }
        let steps = (dt_s / MAX_STEP_S).ceil().max(1.0);
        let dt = dt_s / steps;
        for _ in 0..steps as u64 {
            self.step(dt);
        }
    }

    /// Takes a reading of the current state (sensor noise added, latches reset).
    pub fn reading(&mut self) -> Reading {
        let p = self.position();
        let temp = self.temp_c + self.rng.random_range(-0.3..=0.3);
        let humidity = (self.humidity + self.rng.random_range(-0.5..=0.5)).clamp(0.0, 100.0);
        let r = Reading {
            truck: self.name.clone(),
            ts_ms: self.start_ms + (self.elapsed_s * 1000.0).round() as i64,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: self.speed_kmh,
            temp_c: temp,
            humidity,
            door_open: self.door_open || self.door_latch,
            presence: self.presence || self.presence_latch,
            setpoint_c: self.setpoint_c,
            route: self.route.name.clone(),
            seq: self.seq,
        };
        self.seq += 1;
        self.door_latch = false;
        self.presence_latch = false;
        r
    }

    /// Draws the incident (if any) of the next simulated hour.
    fn schedule_window(&mut self) {
        let w = self.next_window;
        self.next_window += 1;
        if self.scripted || self.incident_rate <= 0.0 {
            return;
        }
        let rng = &mut self.schedule_rng;
        // Always draw the same numbers, whatever the outcome, so that one window's decision
        // does not shift the next window's draws.
        let happens = rng.random::<f64>() < self.incident_rate;
        let mut kind = IncidentKind::DRAWN[rng.random_range(0..IncidentKind::DRAWN.len())];
        let from = (w as f64 * HOUR_S).max(2.0 * MINUTE_S);
        let start_s = rng.random_range(from..(w + 1) as f64 * HOUR_S - MINUTE_S);
        let (a, b) = (rng.random::<f64>(), rng.random::<f64>());
        if !happens {
            return;
        }
        if kind == IncidentKind::ConnectivityLoss && b < 0.5 {
            kind = IncidentKind::TelemetryStall;
        }
        let lerp = |lo: f64, hi: f64, x: f64| lo + (hi - lo) * x;
        let (duration_s, magnitude) = match kind {
            IncidentKind::CompressorFailure => (lerp(60.0, 180.0, a) * MINUTE_S, 0.0),
            IncidentKind::DoorOpen => (lerp(2.0, 6.0, a) * MINUTE_S, 0.0),
            IncidentKind::Detour => (lerp(20.0, 60.0, a) * MINUTE_S, lerp(3000.0, 8000.0, b)),
            IncidentKind::Presence => (lerp(10.0, 45.0, a) * MINUTE_S, 0.0),
            IncidentKind::HumidityRise => (lerp(30.0, 90.0, a) * MINUTE_S, lerp(92.0, 98.0, b)),
            IncidentKind::ConnectivityLoss | IncidentKind::TelemetryStall => {
                (lerp(10.0, 60.0, a).round() * self.interval_s, 0.0)
            }
        };
        self.incidents.push(Incident {
            kind,
            start_s,
            duration_s,
            magnitude,
        });
    }

    fn step(&mut self, dt: f64) {
        self.elapsed_s += dt;
        let t = self.elapsed_s;
        while !self.scripted && t >= self.next_window as f64 * HOUR_S {
            self.schedule_window();
        }
        // Forget incidents long over (keeps the list short on long runs).
        self.incidents.retain(|i| i.end_s() + HOUR_S > t);

        let mut mask = 0;
        let mut detour_m: f64 = 0.0;
        let mut thaw_target: Option<f64> = None;
        for i in self.incidents.iter().filter(|i| i.active_at(t)) {
            mask |= i.kind.bit();
            match i.kind {
                IncidentKind::Detour => {
                    // Leave and rejoin the corridor over five minutes.
                    let ramp = ((t - i.start_s) / 300.0)
                        .min((i.end_s() - t) / 300.0)
                        .clamp(0.0, 1.0);
                    detour_m = detour_m.max(i.magnitude * ramp);
                }
                IncidentKind::HumidityRise => {
                    thaw_target = Some(thaw_target.unwrap_or(0.0).max(i.magnitude));
                }
                _ => {}
            }
        }
        let has = |k: IncidentKind| mask & k.bit() != 0;
        self.active_mask = mask;
        self.door_open = has(IncidentKind::DoorOpen);
        self.presence = has(IncidentKind::Presence);
        self.compressor_failed = has(IncidentKind::CompressorFailure);
        self.offline = has(IncidentKind::ConnectivityLoss);
        self.stalled = has(IncidentKind::TelemetryStall);
        self.offset_m = detour_m;
        self.door_latch |= self.door_open;
        self.presence_latch |= self.presence;

        self.drive(dt);
        self.thermal(dt, thaw_target);
    }

    fn drive(&mut self, dt: f64) {
        if self.stop_left_s > 0.0 {
            self.speed_kmh = 0.0;
            self.stop_left_s -= dt;
            if self.stop_left_s <= 0.0 {
                self.stop_left_s = 0.0;
                self.route = self.route.reversed();
                self.distance_m = 0.0;
            }
            return;
        }
        if self.door_open {
            // The door is only ever open with the truck standing still.
            self.speed_kmh = 0.0;
            return;
        }
        if self.speed_kmh < 1.0 {
            self.speed_kmh = self.rng.random_range(70.0..=74.0);
        }
        let jitter = self.rng.random_range(-1.0..=1.0) * 2.0 * (dt / MAX_STEP_S).sqrt();
        let pull = (80.0 - self.speed_kmh) * 0.02 * dt / MAX_STEP_S;
        self.speed_kmh = (self.speed_kmh + jitter + pull).clamp(70.0, 90.0);
        self.distance_m += self.speed_kmh / 3.6 * dt;
        if self.distance_m >= self.route.length_m() {
            self.distance_m = self.route.length_m();
            self.stop_left_s = END_STOP_S;
            self.speed_kmh = 0.0;
        }
    }

    fn thermal(&mut self, dt: f64, thaw_target: Option<f64>) {
        let per_min = dt / MINUTE_S;
        if self.compressor_failed {
            // No cooling: warms 0.5 °C a minute until it reaches the outside temperature.
            if self.temp_c < self.ambient_c {
                self.temp_c = (self.temp_c + 0.5 * per_min).min(self.ambient_c);
            }
        } else {
            let pull = (self.setpoint_c - self.temp_c) * (1.0 - (-dt / 600.0).exp());
            self.temp_c += pull.clamp(-per_min, per_min);
        }
        if self.door_open {
            self.temp_c += (self.ambient_c - self.temp_c) * (1.0 - (-dt / 900.0).exp());
        }
        if thaw_target.is_some() {
            self.temp_c += 0.05 * per_min;
        }

        self.humidity_base =
            (self.humidity_base + self.rng.random_range(-0.2..=0.2) * per_min.sqrt()).clamp(62.0, 73.0);
        let (target, tau) = match thaw_target {
            Some(h) => (h, 20.0 * MINUTE_S),
            None if self.door_open => (85.0, 5.0 * MINUTE_S),
            None => (self.humidity_base, 15.0 * MINUTE_S),
        };
        self.humidity += (target - self.humidity) * (1.0 - (-dt / tau).exp());
    }
}

/// `x` rounded to `places` decimals.
fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

/// A JSON number, integral values without a fraction (`-20`, not `-20.0`).
pub fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(round(x, 3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn cfg(seed: u64, rate: f64) -> TruckConfig {
        let mut c = TruckConfig::for_fleet(1, seed, DEFAULT_SETPOINT_C, 60.0, rate, T0);
        c.start_distance_m = 10_000.0;
        c
    }

    fn incident(kind: IncidentKind, start_min: f64, minutes: f64, magnitude: f64) -> Incident {
        Incident {
            kind,
            start_s: start_min * MINUTE_S,
            duration_s: minutes * MINUTE_S,
            magnitude,
        }
    }

    fn run(t: &mut Truck, n: usize) -> Vec<Reading> {
        (0..n).map(|_| t.tick()).collect()
    }

    #[test]
    fn fleet_config() {
        let c1 = TruckConfig::for_fleet(1, 7, -20.0, 5.0, 0.3, T0);
        let c2 = TruckConfig::for_fleet(2, 7, -20.0, 5.0, 0.3, T0);
        let n = Route::all().len();
        let lap2 = TruckConfig::for_fleet(n + 1, 7, -20.0, 5.0, 0.3, T0);
        assert_eq!(c1.name, "truck-1");
        assert_eq!(c1.route.name, "hamburg-copenhagen");
        assert_eq!(lap2.route.name, "copenhagen-hamburg");
        assert_ne!(c1.route.name, c2.route.name);
        assert_ne!(c1.seed, c2.seed);
        assert!(c1.start_distance_m <= c1.route.length_m() / 2.0);
        assert_eq!(c1.seed, TruckConfig::for_fleet(1, 7, -20.0, 5.0, 0.3, T0).seed);
        assert_ne!(c1.seed, TruckConfig::for_fleet(1, 8, -20.0, 5.0, 0.3, T0).seed);
    }

    #[test]
    fn same_seed_same_readings() {
        for rate in [0.0, 1.0] {
            let a = run(&mut Truck::new(&cfg(42, rate)), 500);
            let b = run(&mut Truck::new(&cfg(42, rate)), 500);
            assert_eq!(a, b);
            let c = run(&mut Truck::new(&cfg(43, rate)), 500);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn no_incidents_stays_near_the_setpoint_for_an_hour() {
        for seed in 0..20 {
            let mut t = Truck::new(&cfg(seed, 0.0));
            for r in run(&mut t, 60) {
                assert!((r.temp_c - DEFAULT_SETPOINT_C).abs() <= 1.0, "seed {seed}: {r:?}");
                assert!((60.0..=75.0).contains(&r.humidity), "seed {seed}: {r:?}");
                assert!((70.0..=90.0).contains(&r.speed_kmh), "seed {seed}: {r:?}");
                assert!(!r.door_open && !r.presence);
                assert!(t.route().distance_m(LatLon::new(r.lat, r.lon)) < 50.0);
            }
            assert_eq!(t.active_mask(), 0);
            assert!(t.incidents().is_empty());
        }
    }

    #[test]
    fn readings_carry_simulated_time_and_sequence() {
        let mut t = Truck::new(&cfg(1, 0.0));
        let rs = run(&mut t, 3);
        assert_eq!(rs[0].ts_ms, T0 + 60_000);
        assert_eq!(rs[2].ts_ms, T0 + 180_000);
        assert_eq!(rs.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        let v = rs[0].to_json();
        for k in [
            "truck", "ts", "lat", "lon", "speedKmh", "tempC", "humidity", "door", "presence", "setpoint",
            "route", "seq",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["setpoint"], json!(-20));
        assert_eq!(v["door"], "closed");
        assert_eq!(v["route"], "hamburg-copenhagen");
    }

    #[test]
    fn the_truck_advances_along_its_route() {
        let mut t = Truck::new(&cfg(3, 0.0));
        let start = t.position();
        run(&mut t, 60);
        // One hour at 70-90 km/h.
        let d = crate::route::haversine_m(start, t.position()) / 1000.0;
        assert!((55.0..=90.0).contains(&d), "{d} km");
    }

    #[test]
    fn compressor_failure_warms_the_cargo() {
        let c = cfg(5, 0.0);
        let mut t = Truck::with_incidents(
            &c,
            vec![incident(IncidentKind::CompressorFailure, 10.0, 120.0, 0.0)],
        );
        let before = run(&mut t, 10);
        assert!(before.iter().all(|r| (r.temp_c + 20.0).abs() <= 1.0));
        let during = run(&mut t, 40);
        assert!(t.device_state().compressor_failed);
        assert_eq!(t.active_incidents(), vec![IncidentKind::CompressorFailure]);
        // Rising on average: every five-minute mean above the previous one, about 0.5 °C/min.
        let means: Vec<f64> = during
            .chunks(5)
            .map(|c| c.iter().map(|r| r.temp_c).sum::<f64>() / c.len() as f64)
            .collect();
        for w in means.windows(2) {
            assert!(w[1] > w[0], "{means:?}");
        }
        let rate = (means[means.len() - 1] - means[0]) / (5.0 * (means.len() - 1) as f64);
        assert!((0.35..=0.55).contains(&rate), "{rate} °C/min ({means:?})");
        // Capped at the ambient temperature (at most 15 °C).
        run(&mut t, 70);
        assert!(t.true_temp_c() <= 15.0 + 1e-9);
        assert!(t.true_temp_c() >= 5.0 - 1e-9);
        // Repaired: cools back to the setpoint.
        run(&mut t, 120);
        assert!(!t.device_state().compressor_failed);
        assert!((t.true_temp_c() + 20.0).abs() < 0.5, "{}", t.true_temp_c());
    }

    #[test]
    fn door_open_stops_the_truck_and_is_latched() {
        let mut c = cfg(6, 0.0);
        c.interval_s = 300.0;
        // Three minutes, entirely between two five-minute readings.
        let mut t = Truck::with_incidents(&c, vec![incident(IncidentKind::DoorOpen, 11.0, 3.0, 0.0)]);
        let rs = run(&mut t, 4);
        assert_eq!(
            rs.iter().map(|r| r.door_open).collect::<Vec<_>>(),
            [false, false, true, false]
        );
        let mut c = cfg(6, 0.0);
        c.interval_s = 30.0;
        let mut t = Truck::with_incidents(&c, vec![incident(IncidentKind::DoorOpen, 10.0, 5.0, 0.0)]);
        let rs = run(&mut t, 40);
        let open: Vec<&Reading> = rs.iter().filter(|r| r.door_open).collect();
        assert!((10..=11).contains(&open.len()), "{}", open.len());
        // Standing still while open (the last latched reading may already be moving again).
        assert!(open[..open.len() - 1].iter().all(|r| r.speed_kmh == 0.0));
        // Warm air gets in.
        let peak = open.iter().map(|r| r.temp_c).fold(f64::MIN, f64::max);
        assert!(peak > -19.0, "{peak}");
        assert!(rs.last().is_some_and(|r| r.speed_kmh >= 70.0));
    }

    #[test]
    fn detour_leaves_the_corridor_and_comes_back() {
        let c = cfg(7, 0.0);
        let mut t = Truck::with_incidents(&c, vec![incident(IncidentKind::Detour, 10.0, 30.0, 5000.0)]);
        let route = t.route().clone();
        let off = |r: &Reading| route.distance_m(LatLon::new(r.lat, r.lon));
        let rs = run(&mut t, 60);
        assert!(rs[..10].iter().all(|r| off(r) < 50.0));
        let max = rs.iter().map(off).fold(0.0, f64::max);
        assert!((3500.0..=5100.0).contains(&max), "{max}");
        assert!(rs[20..30].iter().all(|r| off(r) > 2000.0));
        assert!(rs[41..].iter().all(|r| off(r) < 50.0));
    }

    #[test]
    fn presence_and_humidity_rise() {
        let c = cfg(8, 0.0);
        let mut t = Truck::with_incidents(
            &c,
            vec![
                incident(IncidentKind::Presence, 5.0, 10.0, 0.0),
                incident(IncidentKind::HumidityRise, 20.0, 60.0, 95.0),
            ],
        );
        let rs = run(&mut t, 90);
        assert!(rs[..4].iter().all(|r| !r.presence));
        assert!(rs[5..14].iter().all(|r| r.presence));
        assert!(rs[16..].iter().all(|r| !r.presence));
        assert!(rs[..20].iter().all(|r| r.humidity <= 76.0));
        let peak = rs.iter().map(|r| r.humidity).fold(0.0, f64::max);
        assert!(peak > 90.0, "{peak}");
        // Slightly warmer while thawing, still close to the setpoint.
        assert!(rs[60..80].iter().all(|r| r.temp_c > -20.5 && r.temp_c < -18.0));
    }

    #[test]
    fn connectivity_loss_marks_the_truck_offline() {
        let c = cfg(9, 0.0);
        let mut t = Truck::with_incidents(&c, vec![incident(IncidentKind::ConnectivityLoss, 5.0, 10.0, 0.0)]);
        let flags: Vec<bool> = (0..20)
            .map(|_| {
                t.tick();
                t.is_offline()
            })
            .collect();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 10, "{flags:?}");
        // Readings at minutes 5..=14 (indexes 4..14) are taken offline.
        assert!(flags[4..14].iter().all(|&f| f), "{flags:?}");
    }

    #[test]
    fn a_stall_is_not_offline() {
        let c = cfg(9, 0.0);
        let mut t = Truck::with_incidents(
            &c,
            vec![
                incident(IncidentKind::TelemetryStall, 5.0, 10.0, 0.0),
                incident(IncidentKind::ConnectivityLoss, 12.0, 2.0, 0.0),
            ],
        );
        let flags: Vec<(bool, bool)> = (0..20)
            .map(|_| {
                t.tick();
                (t.is_stalled(), t.is_offline())
            })
            .collect();
        // Minutes 5..=14 stalled, of which 12 and 13 offline (which wins).
        assert_eq!(flags.iter().filter(|f| f.0).count(), 8, "{flags:?}");
        assert_eq!(flags.iter().filter(|f| f.1).count(), 2, "{flags:?}");
        assert!(flags.iter().all(|f| !(f.0 && f.1)), "{flags:?}");
    }

    #[test]
    fn random_incidents_follow_the_rate() {
        // rate 1: one incident per simulated hour; rate 0: none.
        let mut t = Truck::new(&cfg(11, 1.0));
        for _ in 0..(10 * 60) {
            t.tick();
        }
        let hours: std::collections::BTreeSet<u64> = t
            .incidents()
            .iter()
            .map(|i| (i.start_s / HOUR_S) as u64)
            .collect();
        // Old incidents are forgotten an hour after they end: the last few hours remain.
        assert!(hours.len() >= 2, "{:?}", t.incidents());
        // Over many trucks every kind shows up.
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let t = Truck::new(&cfg(seed, 1.0));
            assert_eq!(t.incidents().len(), 1);
            let i = &t.incidents()[0];
            assert!(i.start_s >= 120.0 && i.start_s < HOUR_S, "{i:?}");
            kinds.insert(i.kind);
        }
        assert_eq!(kinds.len(), IncidentKind::ALL.len(), "{kinds:?}");
    }

    #[test]
    fn desired_state_changes_behaviour() {
        let mut t = Truck::new(&cfg(12, 0.0));
        run(&mut t, 5);
        let delta = json!({"setpoint": -25, "interval": 30, "colour": "red"});
        let applied = t.apply_desired(delta.as_object().unwrap());
        assert_eq!(applied.setpoint_c, Some(-25.0));
        assert_eq!(applied.interval_s, Some(30.0));
        assert!(applied.refused.is_empty());
        let r = t.tick();
        assert_eq!(r.setpoint_c, -25.0);
        assert_eq!(r.ts_ms - T0, (5 * 60 + 30) * 1000);
        // The cargo follows within the hour.
        run(&mut t, 120);
        assert!((t.true_temp_c() + 25.0).abs() < 0.2, "{}", t.true_temp_c());
        let reported = t.device_state().to_reported();
        assert_eq!(reported["setpoint"], json!(-25));
        assert_eq!(reported["interval"], json!(30));
        assert_eq!(reported["firmware"], FIRMWARE);
        assert_eq!(reported["compressor"], "ok");
        // Nonsense is refused; an unchanged value is not a change.
        let bad = json!({"setpoint": "cold", "interval": 0});
        let applied = t.apply_desired(bad.as_object().unwrap());
        assert!(!applied.changed());
        assert_eq!(applied.refused, ["setpoint", "interval"]);
        let same = json!({"setpoint": -25});
        assert!(!t.apply_desired(same.as_object().unwrap()).changed());
    }

    #[test]
    fn the_truck_turns_around_at_the_end() {
        let mut c = cfg(13, 0.0);
        c.start_distance_m = c.route.length_m() - 5_000.0;
        let mut t = Truck::new(&c);
        let rs = run(&mut t, 30);
        assert!(rs.iter().any(|r| r.speed_kmh == 0.0));
        assert_eq!(t.route().name, "copenhagen-hamburg");
        assert!(
            rs.last()
                .is_some_and(|r| r.speed_kmh > 0.0 && r.route == "copenhagen-hamburg")
        );
    }

    #[test]
    fn json_numbers() {
        assert_eq!(number(-20.0), json!(-20));
        assert_eq!(number(2.5), json!(2.5));
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
