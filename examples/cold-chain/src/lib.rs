//! Cold-chain fleet simulator for Shoal (issue #8).
//!
//! A logistics company ships frozen fish in refrigerated trucks. Each truck reports its cargo
//! temperature, humidity, GPS position, door state and human presence over MQTT, keeps a
//! device shadow (door, compressor, firmware, setpoint, interval, position) and obeys desired
//! `setpoint` / `interval` changes. Incidents (compressor failure, door opened mid-route,
//! detour, a person inside, thawing, connectivity loss) are drawn from a seed, so a run can be
//! replayed exactly.
//!
//! * [`route`]: cities, routes, great-circle geometry.
//! * [`truck`]: the deterministic truck model.
//! * [`provision`]: registering the fleet with Shoal (things, certificates, policy).
//! * [`fleet`]: running the trucks against Shoal ([`Fleet`], [`run`]).
//! * [`mqtt`], [`http`]: the MQTT/TLS and signed-HTTP plumbing.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use shoal_coldchain::{Credentials, FleetConfig};
//! let creds = Credentials::from_file("shoal-data/credentials".as_ref())?;
//! let mut cfg = FleetConfig::new("http://127.0.0.1:8080", "127.0.0.1:8883", "shoal-data/tls/ca.pem", creds);
//! cfg.trucks = 3;
//! let fleet = shoal_coldchain::Fleet::start(&cfg).await?;
//! println!("{}", fleet.snapshot());
//! let last = fleet.stop().await;
//! # let _ = last;
//! # Ok(())
//! # }
//! ```

pub mod fleet;
pub mod http;
pub mod mqtt;
pub mod provision;
pub mod route;
pub mod truck;

pub use fleet::{Fleet, FleetConfig, FleetSnapshot, TruckSnapshot, run};
pub use http::{Credentials, ShoalHttp};
pub use provision::{ProvisionedTruck, TruckSpec, provision};
pub use route::{LatLon, Route};
pub use truck::{Incident, IncidentKind, Reading, Truck, TruckConfig};
