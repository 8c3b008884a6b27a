//! `shoal claim verify --thing T --from T1 --to T2 [--max-temp -18 --max-humidity 85]`: asks
//! `/api/v1/claims/verify` whether the cold chain held and prints the report (JSON, or a table
//! of the verdict and its reasons on a terminal); `--html FILE` also saves the HTML page.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::cli::{Api, Endpoint, encode, finish, runtime};

/// `shoal claim ...`
#[derive(Debug, Subcommand)]
pub enum ClaimCmd {
    /// Verify a claim from the archived telemetry of one thing over a time window.
    Verify {
        /// The thing (truck).
        #[arg(long)]
        thing: String,
        /// Window start: 2026-11-26T10:00:00Z, a date, or epoch milliseconds.
        #[arg(long)]
        from: String,
        /// Window end (exclusive).
        #[arg(long)]
        to: String,
        /// Highest acceptable temperature, °C (default -18).
        #[arg(long, allow_negative_numbers = true)]
        max_temp: Option<f64>,
        /// Highest acceptable relative humidity, % (default 85).
        #[arg(long)]
        max_humidity: Option<f64>,
        /// A silence longer than this many seconds is a data gap (default 600).
        #[arg(long)]
        max_gap: Option<u64>,
        /// The rule whose archive holds the telemetry (default `telemetry`).
        #[arg(long)]
        archive: Option<String>,
        /// The named shadow holding the planned route (default `route`; `""` checks no route).
        #[arg(long)]
        route_shadow: Option<String>,
        /// How far from the planned route a truck may be, metres (default: the plan's own).
        #[arg(long)]
        corridor: Option<f64>,
        /// Also save the report as an HTML page (with a temperature chart) here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// Runs `shoal claim ...`.
pub fn claim(ep: &Endpoint, cmd: ClaimCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let api = Api::new(ep);
    finish(&rt, async move {
        let ClaimCmd::Verify {
            thing,
            from,
            to,
            max_temp,
            max_humidity,
            max_gap,
            archive,
            route_shadow,
            corridor,
            html,
        } = cmd;
        let mut q = vec![
            format!("thing={}", encode(&thing)),
            format!("from={}", encode(&from)),
            format!("to={}", encode(&to)),
        ];
        if let Some(t) = max_temp {
            q.push(format!("maxTemp={t}"));
        }
        if let Some(h) = max_humidity {
            q.push(format!("maxHumidity={h}"));
        }
        if let Some(g) = max_gap {
            q.push(format!("maxGap={g}"));
        }
        if let Some(a) = archive {
            q.push(format!("archive={}", encode(&a)));
        }
        if let Some(r) = route_shadow {
            q.push(format!("routeShadow={}", encode(&r)));
        }
        if let Some(c) = corridor {
            q.push(format!("corridor={c}"));
        }
        let report = api.get("/claims/verify", &q).await?;
        if let Some(path) = html {
            q.push("format=html".into());
            let page = match api.get("/claims/verify", &q).await? {
                Value::String(page) => page,
                other => other.to_string(),
            };
            std::fs::write(&path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("shoal: the report page is in {}", path.display());
        }
        Ok(report)
    })
}
