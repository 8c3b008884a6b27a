//! `shoal-coldchain`: provisions a fleet of refrigerated trucks in Shoal and runs them.
//!
//! ```text
//! shoal-coldchain --http http://127.0.0.1:8080 --mqtts 127.0.0.1:8883 \
//!     --ca-file shoal-data/tls/ca.pem --credentials-file shoal-data/credentials \
//!     --trucks 10 --interval 5 --time-scale 60 --seed 7 --incident-rate 0.3 [--duration SECS]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_coldchain::{Credentials, FleetConfig};

/// Cold-chain fleet simulator: refrigerated trucks reporting to Shoal over MQTT/TLS, each with
/// its own certificate.
#[derive(Debug, Parser)]
#[command(name = "shoal-coldchain", version, about)]
struct Cli {
    /// Shoal's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "SHOAL_HTTP")]
    http: String,
    /// Shoal's MQTT/TLS listener, host:port.
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtts: String,
    /// Shoal's CA certificate (DATA/tls/ca.pem).
    #[arg(long, default_value = "shoal-data/tls/ca.pem")]
    ca_file: PathBuf,
    /// AWS credentials file with an admin access key in [default] (DATA/credentials).
    #[arg(long, default_value = "shoal-data/credentials")]
    credentials_file: PathBuf,
    /// Where certificates and keys are kept between runs.
    #[arg(long, default_value = "coldchain-state")]
    state_dir: PathBuf,
    /// Number of trucks (truck-1 .. truck-N).
    #[arg(long, default_value_t = 10)]
    trucks: usize,
    /// Reporting interval of each truck, in simulated seconds.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 60.0)]
    time_scale: f64,
    /// Seed: the same seed gives the same routes, readings and incidents.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Probability of an incident per truck and simulated hour (0..1).
    #[arg(long, default_value_t = 0.3)]
    incident_rate: f64,
    /// Initial cargo setpoint, °C.
    #[arg(long, default_value_t = -20.0, allow_hyphen_values = true)]
    setpoint: f64,
    /// Stop after this many real seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds between two summary lines.
    #[arg(long, default_value_t = 5.0)]
    summary_every: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,shoal_coldchain=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Everything here chooses the ring provider explicitly; this covers any library default.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-coldchain: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-coldchain: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let duration = match cli.duration {
        Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(_) => anyhow::bail!("--duration must be positive"),
        None => None,
    };
    if !(cli.summary_every.is_finite() && cli.summary_every > 0.0) {
        anyhow::bail!("--summary-every must be positive");
    }
    let credentials = Credentials::from_file(&cli.credentials_file)?;
    let cfg = FleetConfig {
        state_dir: cli.state_dir,
        trucks: cli.trucks,
        interval_s: cli.interval,
        time_scale: cli.time_scale,
        seed: cli.seed,
        incident_rate: cli.incident_rate,
        setpoint_c: cli.setpoint,
        ..FleetConfig::new(cli.http, cli.mqtts, cli.ca_file, credentials)
    };
    cfg.validate()?;
    shoal_coldchain::run(&cfg, duration, Duration::from_secs_f64(cli.summary_every)).await?;
    Ok(())
}
