//! `shoal`: the Shoal IoT platform server and its operator CLI.

mod api;
mod claim;
mod cli;
mod cli_claim;
mod cli_demo;
mod cli_identity;
mod cli_key;
mod cli_plugin;
mod cli_rule;
mod cli_stream;
mod cli_subscribe;
mod config;
mod http_server;
mod plugin_watch;
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

// Parsed once per process: boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (MQTT on TCP and TLS, HTTP for health, metrics and the API).
    Serve(Box<config::ServeArgs>),
    /// The cold-chain demo: shoal on the embedded store, the rules and alert plugin, and a fleet
    /// of simulated refrigerated trucks over mutual TLS.
    Demo(cli_demo::DemoArgs),
    /// Device shadows of a running server (AWS data-plane API).
    Shadow {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli::ShadowCmd,
    },
    /// Things in the registry of a running server.
    Thing {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::ThingCmd,
    },
    /// Thing types.
    ThingType {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::ThingTypeCmd,
    },
    /// Thing groups.
    ThingGroup {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::ThingGroupCmd,
    },
    /// Device certificates: issue, sign a CSR, register, activate, revoke.
    Cert {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::CertCmd,
    },
    /// Certificate authorities: Shoal's own and registered ones.
    Ca {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::CaCmd,
    },
    /// AWS IoT policies: documents, versions, attachments.
    Policy {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_identity::PolicyCmd,
    },
    /// WebAssembly plugins: deploy, activate, roll back, logs, replay.
    Plugin {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_plugin::PluginCmd,
    },
    /// Rules: AWS IoT SQL routing messages to actions and plugins.
    Rule {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_rule::RuleCmd,
    },
    /// Streams written by `stream` rule actions: read by offset or through consumer groups.
    Stream {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_stream::StreamCmd,
    },
    /// Claims: did the cold chain hold for a thing over a time window (from archived telemetry)?
    Claim {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_claim::ClaimCmd,
    },
    /// Access keys that sign HTTP requests (SigV4): create, list, deactivate, delete.
    Key {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        cmd: cli_key::KeyCmd,
    },
    /// Print the messages published to topic filters (MQTT over WebSocket at the server's
    /// `/mqtt`, signed with the CLI's access key).
    Subscribe {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(flatten)]
        args: cli_subscribe::SubscribeArgs,
    },
    /// Publish a message through a running server's HTTP API.
    Publish {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(flatten)]
        args: cli::PublishArgs,
    },
}

impl Command {
    fn endpoint(&self) -> Option<&cli::Endpoint> {
        match self {
            Command::Serve(_) | Command::Demo(_) => None,
            Command::Shadow { endpoint, .. }
            | Command::Publish { endpoint, .. }
            | Command::Thing { endpoint, .. }
            | Command::ThingType { endpoint, .. }
            | Command::ThingGroup { endpoint, .. }
            | Command::Cert { endpoint, .. }
            | Command::Ca { endpoint, .. }
            | Command::Policy { endpoint, .. }
            | Command::Plugin { endpoint, .. }
            | Command::Rule { endpoint, .. }
            | Command::Stream { endpoint, .. }
            | Command::Claim { endpoint, .. }
            | Command::Key { endpoint, .. }
            | Command::Subscribe { endpoint, .. } => Some(endpoint),
        }
    }
}

/// mimalloc instead of glibc's malloc: the shadow path spent 19 % of its samples in malloc/free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ep) = cli.command.endpoint() {
        cli::init_output(ep);
        if let Err(e) = cli::init_credentials(ep) {
            eprintln!("shoal: {e}");
            return ExitCode::FAILURE;
        }
    }
    match cli.command {
        Command::Key { endpoint, cmd } => cli_key::key(&endpoint, cmd),
        Command::Subscribe { endpoint, args } => cli_subscribe::subscribe(&endpoint, args),
        Command::Shadow { endpoint, cmd } => cli::shadow(&endpoint, cmd),
        Command::Publish { endpoint, args } => cli::publish(&endpoint, args),
        Command::Thing { endpoint, cmd } => cli_identity::thing(&endpoint, cmd),
        Command::ThingType { endpoint, cmd } => cli_identity::thing_type(&endpoint, cmd),
        Command::ThingGroup { endpoint, cmd } => cli_identity::thing_group(&endpoint, cmd),
        Command::Cert { endpoint, cmd } => cli_identity::cert(&endpoint, cmd),
        Command::Ca { endpoint, cmd } => cli_identity::ca(&endpoint, cmd),
        Command::Policy { endpoint, cmd } => cli_identity::policy(&endpoint, cmd),
        Command::Plugin { endpoint, cmd } => cli_plugin::plugin(&endpoint, cmd),
        Command::Rule { endpoint, cmd } => cli_rule::rule(&endpoint, cmd),
        Command::Stream { endpoint, cmd } => cli_stream::stream(&endpoint, cmd),
        Command::Claim { endpoint, cmd } => cli_claim::claim(&endpoint, cmd),
        Command::Demo(args) => cli_demo::demo(args),
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
    let mut spec = if filter.contains("ntex") {
        filter.to_owned()
    } else {
        format!("{filter}{quiet}")
    };
    // rustls warns on every client that sends an IP address as SNI (mosquitto and many
    // devices do; it is harmless): only its errors, unless asked for.
    if !filter.contains("rustls") {
        spec.push_str(",rustls::msgs=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
