//! `shoal`: the Shoal IoT platform server and its operator CLI.

mod api;
mod cli;
mod config;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shoal: a self-hosted IoT device platform (MQTT broker, device shadows, rules, WASM plugins).
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (MQTT on TCP and TLS, HTTP for health, metrics and the API).
    Serve(Box<config::ServeArgs>),
    /// Device shadows of a running server (AWS data-plane API).
    Shadow {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli::ShadowCmd,
    },
    /// Publish a message through a running server's HTTP API.
    Publish {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(flatten)]
        args: cli::PublishArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Shadow { endpoint, cmd } => cli::shadow(&endpoint, cmd),
        Command::Publish { endpoint, args } => cli::publish(&endpoint, args),
        Command::Serve(args) => {
            let cfg = match config::Config::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shoal: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("shoal-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("shoal: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("shoal: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal as _;
    // ntex logs every worker start at info; keep its chatter at warn unless asked for.
    let quiet = ",ntex=warn,ntex_server=warn,ntex_rt=warn,ntex_net=warn,ntex_io=warn,ntex_mqtt=warn";
    let spec = if filter.contains("ntex") {
        filter.to_owned()
    } else {
        format!("{filter}{quiet}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
