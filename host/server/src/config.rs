//! Configuration: a TOML file, overridden by `SHOAL_*` environment variables, overridden by
//! command-line flags. Every key has the same name in all three (`--max-payload-size`,
//! `SHOAL_MAX_PAYLOAD_SIZE`, `[limits] max_payload_size`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use clap::Args;
use serde::Deserialize;
use shoal_broker::Limits;
use shoal_rules::{SmtpConfig, SmtpTls, TopicRulePayload, WebhookTarget};

/// Flags of `shoal serve` (each also `SHOAL_<NAME>` and a TOML key).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: embedded store, generated certificates, ports.json.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// MQTT over TCP listen address (`off` to disable).
    #[arg(long, env = "SHOAL_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
    /// MQTT over TLS listen address (`off` to disable).
    #[arg(long, env = "SHOAL_MQTTS_LISTEN")]
    pub mqtts_listen: Option<String>,
    /// HTTP listen address (health, metrics, API).
    #[arg(long, env = "SHOAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// HTTPS listen address (the same API over TLS, with optional client certificates):
    /// `off` (default), `on` (127.0.0.1:8443) or an address.
    #[arg(long, env = "SHOAL_HTTPS_LISTEN")]
    pub https_listen: Option<String>,
    /// MQTT over WebSocket at `/mqtt` on the HTTP and HTTPS listeners (default true).
    #[arg(long, env = "SHOAL_MQTT_WS")]
    pub mqtt_ws: Option<bool>,
    /// Store: `embedded` (default), `memory`, or `redis://host:port/db`.
    #[arg(long, env = "SHOAL_STORE")]
    pub store: Option<String>,
    /// TLS server certificate chain (PEM); generated into the data dir when unset.
    #[arg(long, env = "SHOAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS server private key (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// MQTT worker threads (default: number of CPUs).
    #[arg(long, env = "SHOAL_WORKERS")]
    pub workers: Option<usize>,
    /// Threads serving HTTP connections, each a single-threaded runtime (default: number of
    /// CPUs; 0 serves them on the main runtime).
    #[arg(long, env = "SHOAL_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Log filter (tracing `EnvFilter` syntax), default `info`.
    #[arg(long, env = "SHOAL_LOG")]
    pub log: Option<String>,
    /// What clients without a certificate (the plain MQTT listener) may do: `allow-all`,
    /// `deny`, or `policy:NAME`. Default: `allow-all` when the plain listener is on loopback,
    /// `deny` otherwise.
    #[arg(long, env = "SHOAL_ANONYMOUS_ACCESS")]
    pub anonymous_access: Option<String>,
    /// Client certificates on the TLS listener: `required` (default, like AWS IoT) or
    /// `optional` (clients without one get the anonymous access).
    #[arg(long, env = "SHOAL_MQTTS_CLIENT_AUTH")]
    pub mqtts_client_auth: Option<String>,
    /// AWS region used in ARNs (policies match `arn:aws:iot:REGION:ACCOUNT:...`).
    #[arg(long, env = "SHOAL_REGION")]
    pub region: Option<String>,
    /// AWS account id used in ARNs.
    #[arg(long, env = "SHOAL_ACCOUNT")]
    pub account: Option<String>,
    /// Seconds a thing type must have been deprecated before it can be deleted (default 300,
    /// as AWS IoT).
    #[arg(long, env = "SHOAL_THING_TYPE_DELETE_DELAY_SECS")]
    pub thing_type_delete_delay_secs: Option<u64>,
    /// Rules engine worker threads (default 2). Each device's messages go to one worker, in
    /// order; plugin calls run there.
    #[arg(long, env = "SHOAL_RULES_WORKERS")]
    pub rules_workers: Option<usize>,
    /// Messages each rules worker may have waiting (default 10000). From three quarters full,
    /// a publisher whose message goes to that worker is held back until the queue is down to
    /// half, at most 100 ms (`shoal_rules_held_back_total`; a queue that does not drain in time,
    /// behind a slow plugin, holds no one until it has); past the limit a message skips the
    /// rules (still routed to subscribers; `shoal_rules_dropped_total` counts it).
    #[arg(long, env = "SHOAL_RULES_QUEUE")]
    pub rules_queue: Option<usize>,
    /// Run rules that never wait (no plugin or shadow action) on the broker's I/O threads
    /// instead of the rules workers (default true; false hands every rule to the workers; see
    /// docs/BENCHMARKS.md, "Rules on the I/O thread", for the trade-off).
    #[arg(long, env = "SHOAL_RULES_INLINE")]
    pub rules_inline: Option<bool>,
    /// Microseconds an idle rules worker naps before it takes what arrived meanwhile in one go
    /// (default 1000, at most 100000; 0: woken for every message). Jobs wait at most one nap; a worker idle
    /// for five naps sleeps until the next job wakes it.
    #[arg(long, env = "SHOAL_RULES_NAP_US")]
    pub rules_nap_us: Option<u64>,
    /// Most queued messages a rules worker takes at once (default 64, at least 1). The messages
    /// taken together that a rule hands to a plugin built against interface 0.3.0 go to it in
    /// one call, which saves the cost of entering the plugin per message; 1 turns that off.
    #[arg(long, env = "SHOAL_RULES_BATCH")]
    pub rules_batch: Option<usize>,
    /// Records each stream keeps; older ones are trimmed (default 1000000).
    #[arg(long, env = "SHOAL_STREAM_MAX_LEN")]
    pub stream_max_len: Option<u64>,
    /// Stream records that may wait for the writer before new ones are dropped (default 100000).
    #[arg(long, env = "SHOAL_STREAM_QUEUE")]
    pub stream_queue: Option<usize>,
    /// A webhook target plugins may call by name, `NAME=http://host:port/path` (repeatable;
    /// `[webhook_targets.NAME]` in the file takes headers, timeout_ms and retries too).
    #[arg(long = "webhook-target", env = "SHOAL_WEBHOOK_TARGETS", value_delimiter = ',')]
    pub webhook_targets: Vec<String>,
    /// PEM file of the CAs https webhook targets are checked against (default: the system's).
    #[arg(long, env = "SHOAL_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// SMTP relay for `email` actions, `host:port`.
    #[arg(long, env = "SHOAL_SMTP_RELAY")]
    pub smtp_relay: Option<String>,
    /// Sender of `email` actions (`alerts@example.com` or `Name <alerts@example.com>`).
    #[arg(long, env = "SHOAL_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// `none` (default), `starttls` or `tls` (implicit TLS).
    #[arg(long, env = "SHOAL_SMTP_TLS")]
    pub smtp_tls: Option<String>,
    /// User for SMTP AUTH PLAIN (only sent over TLS).
    #[arg(long, env = "SHOAL_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// Password for SMTP AUTH (prefer the environment variable to the flag).
    #[arg(long, env = "SHOAL_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// PEM file of the CAs the relay's certificate is checked against (default: the system's).
    #[arg(long, env = "SHOAL_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// Authentication of HTTP requests: `sigv4` (default: every request but `/health` and
    /// `/metrics` must be signed with an access key) or `none` (development only; refused
    /// unless the HTTP listener is on loopback).
    #[arg(long, env = "SHOAL_HTTP_AUTH")]
    pub http_auth: Option<String>,
    /// The 32-byte key (64 hex characters) that seals access-key secrets in the store;
    /// default `DATA/access-keys.kek`, created when missing. Nodes sharing a Redis must share it.
    #[arg(long, env = "SHOAL_KEY_ENCRYPTION_KEY_FILE")]
    pub key_encryption_key_file: Option<PathBuf>,
    /// Seconds an HTTP client has to send a request's headers, and again its body (default
    /// 30); a slower client is disconnected.
    #[arg(long, env = "SHOAL_HTTP_READ_TIMEOUT")]
    pub http_read_timeout: Option<u64>,
    /// Serve the dashboard (`/dashboard/`) from this directory instead of the copy built into
    /// the binary (for working on the page).
    #[arg(long, env = "SHOAL_DASHBOARD_DIR")]
    pub dashboard_dir: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Limit flags; unset ones come from the file or the defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Largest PUBLISH payload in bytes (default 131072).
    #[arg(long, env = "SHOAL_MAX_PAYLOAD_SIZE")]
    pub max_payload_size: Option<u32>,
    /// Longest topic in bytes (default 256).
    #[arg(long, env = "SHOAL_MAX_TOPIC_LENGTH")]
    pub max_topic_length: Option<usize>,
    /// Most topic levels (default 8).
    #[arg(long, env = "SHOAL_MAX_TOPIC_LEVELS")]
    pub max_topic_levels: Option<usize>,
    /// Longest client id in bytes (default 128).
    #[arg(long, env = "SHOAL_MAX_CLIENT_ID_LENGTH")]
    pub max_client_id_length: Option<usize>,
    /// QoS 1/2 messages in flight to a client (default 100).
    #[arg(long, env = "SHOAL_MAX_INFLIGHT")]
    pub max_inflight: Option<u16>,
    /// QoS 1/2 messages a client may have in flight to us (default 100).
    #[arg(long, env = "SHOAL_MAX_RECEIVE")]
    pub max_receive: Option<u16>,
    /// Messages queued per session (default 1000).
    #[arg(long, env = "SHOAL_MAX_QUEUED_MESSAGES")]
    pub max_queued_messages: Option<usize>,
    /// Open connections (default 100000).
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Topic aliases per client (default 64).
    #[arg(long, env = "SHOAL_MAX_TOPIC_ALIASES")]
    pub max_topic_aliases: Option<u16>,
    /// Highest keep-alive in seconds (default 1200).
    #[arg(long, env = "SHOAL_MAX_KEEP_ALIVE_SECS")]
    pub max_keep_alive_secs: Option<u16>,
    /// Subscriptions per session (default 1000).
    #[arg(long, env = "SHOAL_MAX_SUBSCRIPTIONS_PER_SESSION")]
    pub max_subscriptions_per_session: Option<usize>,
    /// Longest session expiry in seconds (default 604800).
    #[arg(long, env = "SHOAL_MAX_SESSION_EXPIRY_SECS")]
    pub max_session_expiry_secs: Option<u32>,
    /// Seconds a client may leave its socket full before it is disconnected (default 30).
    #[arg(long, env = "SHOAL_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u16>,
}

/// The configuration file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    mqtt_listen: Option<String>,
    mqtts_listen: Option<String>,
    http_listen: Option<String>,
    https_listen: Option<String>,
    mqtt_ws: Option<bool>,
    store: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    workers: Option<usize>,
    http_threads: Option<usize>,
    log: Option<String>,
    anonymous_access: Option<String>,
    mqtts_client_auth: Option<String>,
    region: Option<String>,
    account: Option<String>,
    thing_type_delete_delay_secs: Option<u64>,
    rules_workers: Option<usize>,
    rules_queue: Option<usize>,
    rules_inline: Option<bool>,
    rules_nap_us: Option<u64>,
    rules_batch: Option<usize>,
    stream_max_len: Option<u64>,
    stream_queue: Option<usize>,
    webhook_targets: BTreeMap<String, WebhookTarget>,
    webhook_ca_file: Option<PathBuf>,
    smtp: Option<SmtpFile>,
    http_auth: Option<String>,
    key_encryption_key_file: Option<PathBuf>,
    http_read_timeout: Option<u64>,
    /// Rules the file defines (created or replaced at start).
    rules: BTreeMap<String, TopicRulePayload>,
    limits: Option<Limits>,
}

/// `[smtp]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SmtpFile {
    relay: Option<String>,
    from: Option<String>,
    tls: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
    hello_name: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// MQTT/TCP address, `None` when disabled.
    pub mqtt_listen: Option<SocketAddr>,
    /// MQTT/TLS address, `None` when disabled.
    pub mqtts_listen: Option<SocketAddr>,
    /// HTTP address.
    pub http_listen: SocketAddr,
    /// HTTPS address, `None` when disabled.
    pub https_listen: Option<SocketAddr>,
    /// MQTT over WebSocket at `/mqtt`.
    pub mqtt_ws: bool,
    /// Store URL.
    pub store: String,
    /// TLS certificate and key, when configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// MQTT worker threads.
    pub workers: usize,
    /// HTTP connection threads (0: the main runtime serves them).
    pub http_threads: usize,
    /// Log filter.
    pub log: String,
    /// Broker limits.
    pub limits: Limits,
    /// Anonymous (certificate-less) access: `allow-all`, `deny`, `policy:NAME`.
    pub anonymous_access: AnonymousSetting,
    /// Whether the TLS listener requires client certificates.
    pub mqtts_client_auth_required: bool,
    /// ARN region.
    pub region: String,
    /// ARN account.
    pub account: String,
    /// How long a thing type must have been deprecated before it can be deleted.
    pub thing_type_delete_delay: Duration,
    /// Rules engine worker threads.
    pub rules_workers: usize,
    /// Queue capacity of each rules worker.
    pub rules_queue: usize,
    /// Whether rules that never wait run on the I/O threads.
    pub rules_inline: bool,
    /// How long an idle rules worker naps between looks at its queue.
    pub rules_nap: Duration,
    /// Most queued messages a rules worker takes at once.
    pub rules_batch: usize,
    /// Records each stream keeps.
    pub stream_max_len: u64,
    /// Stream writer queue.
    pub stream_queue: usize,
    /// Webhook targets plugins call by name.
    pub webhook_targets: BTreeMap<String, WebhookTarget>,
    /// Roots for https webhooks.
    pub webhook_ca_file: Option<PathBuf>,
    /// The relay for `email` actions, when configured.
    pub smtp: Option<SmtpConfig>,
    /// Rules from the configuration file, created or replaced at start.
    pub rules: BTreeMap<String, TopicRulePayload>,
    /// How HTTP requests authenticate.
    pub http_auth: HttpAuth,
    /// The key-encryption key of access-key secrets.
    pub key_encryption_key_file: PathBuf,
    /// How long an HTTP client may take to send headers, and then a body.
    pub http_read_timeout: std::time::Duration,
    /// Where the dashboard's files are read from (`None`: the embedded copies).
    pub dashboard_dir: Option<PathBuf>,
}

/// How HTTP requests authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAuth {
    /// SigV4 with an access key on every request but `/health` and `/metrics`.
    SigV4,
    /// Nothing is checked (development on loopback only).
    None,
}

/// What clients without a certificate may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymousSetting {
    /// Anything.
    AllowAll,
    /// Nothing.
    Deny,
    /// What this policy allows.
    Policy(String),
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for us.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is invalid.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn addr(key: &'static str, v: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("{v:?} is not an address like 127.0.0.1:1883 ({e})"),
    })
}

impl Config {
    /// Resolves flags (and their env vars) over the file over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let pick = |cli: &Option<String>, f: &Option<String>, d: &str| {
            cli.clone().or(f.clone()).unwrap_or(d.to_owned())
        };
        let mqtt = pick(&args.mqtt_listen, &file.mqtt_listen, "127.0.0.1:1883");
        let mqtts = pick(&args.mqtts_listen, &file.mqtts_listen, "127.0.0.1:8883");
        let http = pick(&args.http_listen, &file.http_listen, "127.0.0.1:8080");
        let http_listen = addr("http_listen", &http)?.ok_or(ConfigError::Invalid {
            key: "http_listen",
            message: "the HTTP listener cannot be disabled".into(),
        })?;
        let https = pick(&args.https_listen, &file.https_listen, "off");
        let https_listen = if https.eq_ignore_ascii_case("on") {
            Some(SocketAddr::from(([127, 0, 0, 1], 8443)))
        } else {
            addr("https_listen", &https)?
        };
        let http_auth = match pick(&args.http_auth, &file.http_auth, "sigv4")
            .to_ascii_lowercase()
            .as_str()
        {
            "sigv4" => HttpAuth::SigV4,
            "none" if http_listen.ip().is_loopback() && https_listen.is_none_or(|a| a.ip().is_loopback()) => {
                HttpAuth::None
            }
            "none" => {
                return Err(ConfigError::Invalid {
                    key: "http_auth",
                    message: format!(
                        "`none` is only allowed when the HTTP and HTTPS listeners are on loopback, not \
                         {http_listen}{}",
                        https_listen.map(|a| format!(" / {a}")).unwrap_or_default()
                    ),
                });
            }
            other => {
                return Err(ConfigError::Invalid {
                    key: "http_auth",
                    message: format!("{other:?} is not `sigv4` or `none`"),
                });
            }
        };
        let mut limits = file.limits.unwrap_or_default();
        let l = &args.limits;
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = l.$f { limits.$f = v; } )* };
        }
        over!(
            max_payload_size,
            max_topic_length,
            max_topic_levels,
            max_client_id_length,
            max_inflight,
            max_receive,
            max_queued_messages,
            max_connections,
            max_topic_aliases,
            max_keep_alive_secs,
            max_subscriptions_per_session,
            max_session_expiry_secs,
            write_timeout_secs
        );
        if limits.max_inflight == 0 || limits.max_receive == 0 {
            return Err(ConfigError::Invalid {
                key: "max_inflight/max_receive",
                message: "must be at least 1".into(),
            });
        }
        if limits.max_payload_size > 256 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "max_payload_size",
                message: "must be at most 256 MiB (the MQTT maximum)".into(),
            });
        }
        let tls_cert = args.tls_cert.clone().or(file.tls_cert);
        let tls_key = args.tls_key.clone().or(file.tls_key);
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert/tls_key",
                    message: "set both or neither".into(),
                });
            }
        };
        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mqtt_listen = addr("mqtt_listen", &mqtt)?;
        let anon = args.anonymous_access.clone().or(file.anonymous_access);
        let anonymous_access = match anon.as_deref() {
            None => {
                if mqtt_listen.is_some_and(|a| !a.ip().is_loopback()) {
                    AnonymousSetting::Deny
                } else {
                    AnonymousSetting::AllowAll
                }
            }
            Some("allow-all") => AnonymousSetting::AllowAll,
            Some("deny") => AnonymousSetting::Deny,
            Some(p) if p.starts_with("policy:") && p.len() > 7 => AnonymousSetting::Policy(p[7..].to_owned()),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "anonymous_access",
                    message: format!("{other:?} must be allow-all, deny or policy:NAME"),
                });
            }
        };
        let mqtts_client_auth_required = match args
            .mqtts_client_auth
            .clone()
            .or(file.mqtts_client_auth)
            .as_deref()
        {
            None | Some("required") => true,
            Some("optional") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "mqtts_client_auth",
                    message: format!("{other:?} must be required or optional"),
                });
            }
        };
        let mut webhook_targets = file.webhook_targets;
        for t in &args.webhook_targets {
            let Some((name, url)) = t.split_once('=') else {
                return Err(ConfigError::Invalid {
                    key: "webhook_targets",
                    message: format!("{t:?} is not NAME=URL"),
                });
            };
            webhook_targets.insert(
                name.trim().to_string(),
                WebhookTarget {
                    url: url.trim().to_string(),
                    headers: BTreeMap::new(),
                    timeout_ms: None,
                    retries: None,
                },
            );
        }
        for (name, t) in &webhook_targets {
            t.check(name).map_err(|e| ConfigError::Invalid {
                key: "webhook_targets",
                message: e.to_string(),
            })?;
        }
        let sf = file.smtp.unwrap_or_default();
        let smtp_relay = args.smtp_relay.clone().or(sf.relay);
        let smtp = match smtp_relay {
            None => None,
            Some(relay) => {
                let from = args.smtp_from.clone().or(sf.from).ok_or(ConfigError::Invalid {
                    key: "smtp_from",
                    message: "an SMTP relay needs a sender (smtp_from)".into(),
                })?;
                let tls = args.smtp_tls.clone().or(sf.tls).unwrap_or_else(|| "none".into());
                let tls: SmtpTls = tls.parse().map_err(|_| ConfigError::Invalid {
                    key: "smtp_tls",
                    message: format!("{tls:?} must be none, starttls or tls"),
                })?;
                Some(SmtpConfig {
                    relay,
                    from,
                    tls,
                    username: args.smtp_username.clone().or(sf.username),
                    password: args.smtp_password.clone().or(sf.password),
                    ca_file: args.smtp_ca_file.clone().or(sf.ca_file),
                    timeout: Duration::from_millis(sf.timeout_ms.unwrap_or(10_000).clamp(100, 300_000)),
                    hello_name: sf.hello_name.unwrap_or_else(|| "shoal".into()),
                })
            }
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./shoal-data"));
        Ok(Config {
            rules_inline: args.rules_inline.or(file.rules_inline).unwrap_or(true),
            rules_batch: args
                .rules_batch
                .or(file.rules_batch)
                .unwrap_or(shoal_rules::engine::DEFAULT_JOBS_AT_ONCE)
                .max(1),
            rules_nap: args
                .rules_nap_us
                .or(file.rules_nap_us)
                .map_or(shoal_rules::engine::DEFAULT_NAP, |us| {
                    Duration::from_micros(us.min(100_000))
                }),
            stream_max_len: args
                .stream_max_len
                .or(file.stream_max_len)
                .unwrap_or(1_000_000)
                .max(1),
            stream_queue: args.stream_queue.or(file.stream_queue).unwrap_or(100_000).max(1),
            webhook_targets,
            webhook_ca_file: args.webhook_ca_file.clone().or(file.webhook_ca_file),
            smtp,
            rules: file.rules,
            http_auth,
            key_encryption_key_file: args
                .key_encryption_key_file
                .clone()
                .or(file.key_encryption_key_file)
                .unwrap_or_else(|| data_dir.join("access-keys.kek")),
            http_read_timeout: std::time::Duration::from_secs(
                args.http_read_timeout
                    .or(file.http_read_timeout)
                    .unwrap_or(30)
                    .clamp(1, 3600),
            ),
            dashboard_dir: args.dashboard_dir.clone(),
            anonymous_access,
            mqtts_client_auth_required,
            region: args
                .region
                .clone()
                .or(file.region)
                .unwrap_or_else(|| "us-east-1".into()),
            account: args
                .account
                .clone()
                .or(file.account)
                .unwrap_or_else(|| "000000000000".into()),
            data_dir,
            mqtt_listen,
            mqtts_listen: addr("mqtts_listen", &mqtts)?,
            http_listen,
            https_listen,
            mqtt_ws: args.mqtt_ws.or(file.mqtt_ws).unwrap_or(true),
            store: args
                .store
                .clone()
                .or(file.store)
                .unwrap_or_else(|| "embedded".into()),
            thing_type_delete_delay: Duration::from_secs(
                args.thing_type_delete_delay_secs
                    .or(file.thing_type_delete_delay_secs)
                    .unwrap_or(300),
            ),
            tls,
            rules_workers: args
                .rules_workers
                .or(file.rules_workers)
                .unwrap_or(2)
                .clamp(1, 64),
            rules_queue: args.rules_queue.or(file.rules_queue).unwrap_or(10_000).max(1),
            workers: workers.max(1),
            http_threads: args
                .http_threads
                .or(file.http_threads)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .min(64),
            log: args.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
            limits,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.mqtt_listen, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.mqtts_listen, Some("127.0.0.1:8883".parse().unwrap()));
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.store, "embedded");
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.thing_type_delete_delay, Duration::from_secs(300));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(
            &p,
            "mqtt_listen = \"127.0.0.1:0\"\nmqtts_listen = \"off\"\nstore = \"memory\"\n[limits]\nmax_payload_size = 1000\nmax_inflight = 7\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(p),
            ..Default::default()
        };
        args.limits.max_inflight = Some(9);
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.mqtt_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.mqtts_listen, None);
        assert_eq!(c.store, "memory");
        assert_eq!(c.limits.max_payload_size, 1000);
        assert_eq!(c.limits.max_inflight, 9);
    }

    #[test]
    fn http_threads_from_the_file_then_the_flag_default_one_per_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            Config::resolve(&ServeArgs::default()).unwrap().http_threads,
            cpus.min(64)
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(&p, "http_threads = 0\n").unwrap();
        let mut args = ServeArgs {
            config: Some(p),
            ..Default::default()
        };
        assert_eq!(Config::resolve(&args).unwrap().http_threads, 0);
        args.http_threads = Some(3);
        assert_eq!(Config::resolve(&args).unwrap().http_threads, 3);
        args.http_threads = Some(1000);
        assert_eq!(Config::resolve(&args).unwrap().http_threads, 64, "capped");
    }

    #[test]
    fn bad_values_name_the_key() {
        let args = ServeArgs {
            mqtt_listen: Some("nonsense".into()),
            ..Default::default()
        };
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("mqtt_listen"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "no_such_key = 1\n").unwrap();
        let e = Config::resolve(&ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no_such_key"), "{e}");
    }

    #[test]
    fn rules_webhook_targets_and_smtp_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(
            &p,
            r#"
stream_max_len = 5000
[webhook_targets.ops]
url = "http://127.0.0.1:9/hook"
headers = { x-team = "a" }
retries = 1

[smtp]
relay = "127.0.0.1:2525"
from = "alerts@example.com"
tls = "starttls"

[rules.r1]
sql = "SELECT * FROM 'a/#'"
[[rules.r1.actions]]
stream = { streamName = "s", partitionKey = "${topic(2)}" }
"#,
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(p.clone()),
            webhook_targets: vec!["cli=http://127.0.0.1:9/x".into()],
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.stream_max_len, 5000);
        assert_eq!(c.webhook_targets.len(), 2);
        assert_eq!(c.webhook_targets["ops"].retries, Some(1));
        let smtp = c.smtp.unwrap();
        assert_eq!(smtp.tls, SmtpTls::StartTls);
        assert_eq!(smtp.from, "alerts@example.com");
        assert_eq!(c.rules["r1"].actions.len(), 1);
        // Mistakes name their key.
        args.webhook_targets = vec!["no-equals-sign".into()];
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("webhook_targets"), "{e}");
        args.webhook_targets = vec!["x=ftp://example.com/".into()];
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("http(s)://"), "{e}");
        args.webhook_targets = Vec::new();
        args.smtp_tls = Some("ssl".into());
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("smtp_tls"), "{e}");
        std::fs::write(&p, "[smtp]\nrelay = \"h:25\"\n").unwrap();
        let e = Config::resolve(&ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("smtp_from"), "{e}");
    }
}
