//! `shoal serve`: wires the store, the broker, the MQTT listeners and the HTTP API, writes
//! `ports.json`, and shuts everything down on SIGTERM/SIGINT within a few seconds.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use shoal_auth::pki::CertificateAuthority;
use shoal_auth::policy::ArnConfig;
use shoal_auth::service::{
    AnonymousAccess, IdentityConfig, IdentityError, IdentityService, KeyCipher, ThingLookup,
};
use shoal_auth::tls::ClientAuth;
use shoal_broker::mqtt::{Listener, ListenerKind};
use shoal_broker::session::KickReason;
use shoal_broker::{Broker, BrokerConfig};
use shoal_plugin_host::{
    Clock, DurableKv, HostConfig, HostServices, KvBackend, MemoryKv, PluginHost, PluginKv, ShadowReader,
    SystemClock,
};
use shoal_rules::{EngineConfig, EngineDeps, RulesEngine};
use shoal_things::registry::{Registry, RegistryConfig, RegistryError, RegistryLimits};
use shoal_things::shadow::{ShadowConfig, ShadowKey, ShadowName, ShadowService, ThingName};

use crate::api::{AppServices, router};
use crate::config::{AnonymousSetting, Config, HttpAuth};

/// Runs the server until a shutdown signal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data dir {}", cfg.data_dir.display()))?;
    let stores = shoal_store::open(&cfg.store, &cfg.data_dir)
        .await
        .with_context(|| format!("opening the store {:?}", cfg.store))?;
    tracing::info!(store = stores.broker.kind(), "store opened");
    let rt = tokio::runtime::Handle::current();
    let broker_cfg = BrokerConfig {
        limits: cfg.limits.clone(),
        ..BrokerConfig::default()
    };
    let ca = Arc::new(CertificateAuthority::load_or_create(&cfg.data_dir.join("tls"))?);
    let anonymous = match &cfg.anonymous_access {
        AnonymousSetting::AllowAll => AnonymousAccess::AllowAll,
        AnonymousSetting::Deny => AnonymousAccess::Deny,
        AnonymousSetting::Policy(p) => AnonymousAccess::Policy(p.clone()),
    };
    if anonymous == AnonymousAccess::AllowAll
        && let Some(addr) = cfg.mqtt_listen
    {
        tracing::warn!(
            %addr,
            "the plain MQTT listener lets any client connect and do anything (development mode; \
             set --anonymous-access deny or policy:NAME for production)"
        );
    }
    let registry = Arc::new(Registry::new(
        stores.registry,
        RegistryConfig {
            region: cfg.region.clone(),
            account_id: cfg.account.clone(),
            limits: RegistryLimits {
                type_delete_delay: cfg.thing_type_delete_delay,
                ..RegistryLimits::default()
            },
            ..RegistryConfig::default()
        },
    ));
    let identity = IdentityService::start(
        stores.auth,
        ca.clone(),
        IdentityConfig {
            arn: ArnConfig::new(&cfg.region, &cfg.account)
                .map_err(|e| anyhow::anyhow!("region/account: {e}"))?,
            anonymous,
            client_auth: if cfg.mqtts_client_auth_required {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            },
            cert_validity_days: 3650,
            keys: Arc::new(
                KeyCipher::load_or_create(&cfg.key_encryption_key_file)
                    .context("the key-encryption key of access keys")?,
            ),
        },
        Arc::new(RegistryThings(registry.clone())),
    )
    .await
    .context("loading identities")?;
    if cfg.http_auth == HttpAuth::SigV4 {
        let credentials = cfg.data_dir.join("credentials");
        if let Some(id) = identity
            .bootstrap_admin_key(&credentials)
            .await
            .context("creating the first admin access key")?
        {
            tracing::info!(
                access_key = %id,
                path = %credentials.display(),
                "created the first admin access key (HTTP requests must be signed with an access key)"
            );
        }
    } else {
        tracing::warn!(
            "HTTP authentication is off (--http-auth none): anyone who reaches the HTTP listener can do anything"
        );
    }
    let broker = Broker::start(broker_cfg, stores.broker, identity.clone(), &rt)
        .await
        .context("loading broker state from the store")?;
    identity.set_broker(&broker);
    let shadows = ShadowService::start(stores.shadows, broker.clone(), ShadowConfig::default(), &rt);
    let (plugins, plugin_kv) = start_plugins(&cfg, stores.plugin_kv.clone(), &shadows, &rt).await?;
    let engine_cfg = EngineConfig {
        workers: cfg.rules_workers,
        queue_capacity: cfg.rules_queue,
        inline: cfg.rules_inline,
        nap: cfg.rules_nap,
        jobs_at_once: cfg.rules_batch,
        archive_dir: Some(cfg.data_dir.join("archive")),
        stream_max_len: cfg.stream_max_len,
        stream_queue: cfg.stream_queue,
        webhook_targets: cfg.webhook_targets.clone(),
        webhook_ca_file: cfg.webhook_ca_file.clone(),
        smtp: cfg.smtp.clone(),
        ..EngineConfig::default()
    };
    let engine_deps = EngineDeps {
        broker: broker.clone(),
        shadows: shadows.clone(),
        plugins: plugins.clone(),
        streams: stores.streams.clone(),
        rt: rt.clone(),
    };
    // Loading the rules may wait on the store (Redis): off the executor threads.
    let rule_store = stores.rules.clone();
    let rules = tokio::task::spawn_blocking(move || RulesEngine::start(engine_cfg, rule_store, engine_deps))
        .await
        .context("starting the rules engine")?
        .context("starting the rules engine")?;
    if !cfg.rules.is_empty() {
        let (engine, configured) = (rules.clone(), cfg.rules.clone());
        tokio::task::spawn_blocking(move || engine.apply_configured(&configured))
            .await
            .context("applying the configured rules")?
            .context("a rule in the configuration file")?;
        tracing::info!(
            rules = cfg.rules.len(),
            "rules from the configuration file applied"
        );
    }

    let mut listeners = Vec::new();
    if let Some(addr) = cfg.mqtt_listen {
        let socket = TcpListener::bind(addr).with_context(|| format!("binding MQTT on {addr}"))?;
        listeners.push(Listener {
            name: "mqtt",
            socket,
            kind: ListenerKind::Tcp,
        });
    }
    if let Some(addr) = cfg.mqtts_listen {
        let (cert, key) = match &cfg.tls {
            Some((c, k)) => (c.clone(), k.clone()),
            None => ca.ensure_server_cert(&[])?,
        };
        let tls = shoal_auth::tls::server_config(
            &std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?,
            &std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
            identity.verifier(),
        )?;
        let socket = TcpListener::bind(addr).with_context(|| format!("binding MQTT/TLS on {addr}"))?;
        listeners.push(Listener {
            name: "mqtts",
            socket,
            kind: ListenerKind::Tls(tls),
        });
    }
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;

    // The bridge socket sits in a directory of its own (mode 0700), and every connection to it
    // must bring this process's random token: only our HTTP side can speak for a client.
    let ws = if cfg.mqtt_ws {
        // Where versions before the token put the socket.
        let _ = std::fs::remove_file(cfg.data_dir.join("mqtt-ws.sock"));
        Some(shoal_broker::mqtt::WsListener {
            name: "ws",
            path: cfg.data_dir.join("ws").join("mqtt.sock"),
            token: shoal_broker::mqtt::ws::WsToken::generate()
                .context("making the WebSocket bridge's token")?,
        })
    } else {
        None
    };
    let ws_socket = ws.as_ref().map(|w| w.path.clone());
    let ws_token = ws.as_ref().map(|w| w.token.clone());
    // With every MQTT listener off (an HTTP-only node), there is no MQTT server to start.
    let mut mqtt = if listeners.is_empty() && ws.is_none() {
        tracing::warn!("every MQTT listener is off: serving HTTP only");
        None
    } else {
        Some(
            shoal_broker::mqtt::start(broker.clone(), listeners, ws, cfg.workers)
                .context("starting MQTT (a data dir path too long for a Unix socket? use --mqtt-ws off)")?,
        )
    };
    let mut ports: BTreeMap<&str, String> = mqtt
        .as_ref()
        .map(|m| m.addrs().iter().map(|(n, a)| (*n, a.to_string())).collect())
        .unwrap_or_default();
    ports.insert("http", http_addr.to_string());
    for (name, addr) in &ports {
        tracing::info!(listener = name, %addr, "listening");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut state = AppServices::new(
        broker.clone(),
        shadows.clone(),
        identity.clone(),
        registry,
        plugins.clone(),
        rules.clone(),
    );
    state.sigv4 = cfg.http_auth == HttpAuth::SigV4;
    state.ws_socket = ws_socket;
    state.body_read_timeout = cfg.http_read_timeout;
    state.archive_dir = Some(cfg.data_dir.join("archive"));
    state.dashboard_dir = cfg.dashboard_dir.clone();
    let mut app = router(state.into());
    if let Some(token) = ws_token {
        // `/mqtt` finds it in the request's extensions (see api::ws).
        app = app.layer(axum::Extension(token));
    }
    // The HTTP threads stop last (below): until the MQTT side has said goodbye and the store
    // is flushed, WebSocket bridges carry the broker's DISCONNECTs and requests in flight get
    // their answers; the accept loops stop with everything else.
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let http_threads = crate::http_server::HttpThreads::start(cfg.http_threads, &http_stop_rx)
        .context("starting the HTTP threads")?;
    if let Some(addr) = cfg.https_listen {
        let (cert, key) = match &cfg.tls {
            Some((c, k)) => (c.clone(), k.clone()),
            None => ca.ensure_server_cert(&[])?,
        };
        let tls = shoal_auth::tls::https_server_config(
            &std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?,
            &std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
            identity.verifier(),
        )?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTPS on {addr}"))?;
        let bound = listener.local_addr()?;
        ports.insert("https", bound.to_string());
        tracing::info!(listener = "https", addr = %bound, "listening");
        tokio::spawn(crate::http_server::serve(
            listener,
            Some(tls),
            app.clone(),
            cfg.http_read_timeout,
            http_threads.clone(),
            stop_rx.clone(),
        ));
    }
    crate::plugin_watch::spawn(
        plugins,
        cfg.data_dir.join("plugins").join("watch"),
        stop_rx.clone(),
    );
    let http_task = tokio::spawn(crate::http_server::serve(
        http,
        None,
        app,
        cfg.http_read_timeout,
        http_threads,
        stop_rx.clone(),
    ));
    write_ports(&cfg, &ports)?;

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    broker.kick_all(KickReason::ServerShuttingDown);
    // Each kicked connection says goodbye and closes itself (over WebSocket the close
    // handshake waits up to a second for the client's answer); the MQTT server's stop drops
    // whatever is still open, so it waits for that first (bounded).
    let open = open_after(&broker, Duration::from_millis(2000)).await;
    if open > 0 {
        tracing::warn!(
            open,
            "MQTT connections still open after their goodbye; closing them"
        );
    }
    if let Some(mqtt) = mqtt.as_mut()
        && tokio::time::timeout(Duration::from_secs(3), mqtt.stop(true))
            .await
            .is_err()
    {
        tracing::warn!("MQTT connections did not close in time");
    }
    if !broker.flush(Duration::from_millis(1500)).await {
        tracing::warn!("the store did not confirm every write before exit");
    }
    // Buffered Parquet archive rows go to their files (rules workers may still be finishing
    // the last messages: they had the broker's flush to do so).
    let flushed = tokio::task::spawn_blocking(move || rules.flush_archive(Duration::from_millis(3000))).await;
    if !matches!(flushed, Ok(true)) {
        tracing::warn!("the rules archive was not all written before exit");
    }
    if let Some(kv) = plugin_kv {
        let flushed = tokio::task::spawn_blocking(move || kv.flush(Duration::from_millis(1000))).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("plugin key-value changes were not all written before exit");
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), http_task).await;
    let _ = http_stop_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// Waits (at most `within`) until no MQTT connection is open; how many still are.
async fn open_after(broker: &Broker, within: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let open = broker
            .metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        if open <= 0 || tokio::time::Instant::now() >= deadline {
            return open.max(0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts the plugin host (restoring the catalog and compiling or mapping active versions,
/// which is CPU work: on the blocking pool).
async fn start_plugins(
    cfg: &Config,
    kv_backend: Option<Arc<dyn KvBackend>>,
    shadows: &Arc<ShadowService>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<(PluginHost, Option<Arc<DurableKv>>)> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let shadows: Arc<dyn ShadowReader> = Arc::new(PluginShadows {
        shadows: shadows.clone(),
        rt: rt.clone(),
    });
    let config = HostConfig::new(&cfg.data_dir);
    // Loading the key-value state and the catalog blocks (the store, compiling active
    // versions): on the blocking pool.
    let (host, durable) = tokio::task::spawn_blocking(move || {
        let durable = match kv_backend {
            Some(backend) => Some(Arc::new(
                DurableKv::open(backend, clock.clone())
                    .map_err(|e| anyhow::anyhow!("loading plugin key-value state: {e}"))?,
            )),
            None => None,
        };
        let kv: Arc<dyn PluginKv> = match &durable {
            Some(d) => d.clone(),
            None => Arc::new(MemoryKv::new(clock.clone())),
        };
        let services = HostServices {
            kv,
            shadows,
            clock,
            catalog_store: None,
        };
        let host = PluginHost::new(config, services).context("starting the plugin host")?;
        Ok::<_, anyhow::Error>((host, durable))
    })
    .await
    .context("starting the plugin host")??;
    tracing::info!(plugins = host.plugins().len(), "plugin host started");
    Ok((host, durable))
}

/// Plugins' read-only view of shadows (`get-shadow`). Plugin calls run on blocking threads,
/// so this may wait for the shadow service, but only briefly: past the timeout the plugin
/// host gives (a quarter of the plugin's deadline, 5 to 50 ms) the plugin is told the shadow
/// is unavailable rather than have its deadline eaten.
struct PluginShadows {
    shadows: Arc<ShadowService>,
    rt: tokio::runtime::Handle,
}

impl ShadowReader for PluginShadows {
    fn get_shadow(
        &self,
        thing: &str,
        shadow_name: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        let thing = ThingName::parse(thing).map_err(|e| e.to_string())?;
        let shadow = shadow_name
            .map(ShadowName::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        let key = ShadowKey::new(thing, shadow);
        // Ask the runtime and wait on a plain channel: works from any thread (no nested
        // `block_on`), bounded by the timeout.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let service = self.shadows.clone();
        self.rt.spawn(async move {
            let _ = tx.send(service.get(&key, b"").await);
        });
        let read = rx.recv_timeout(timeout);
        match read {
            Ok(Ok(doc)) => Ok(Some(doc.to_string())),
            Ok(Err(r)) if r.error.code == 404 => Ok(None),
            Ok(Err(r)) => Err(format!("shadow unavailable: {}", r.error)),
            Err(_) => Err(format!(
                "shadow unavailable: the store did not answer within {} ms",
                timeout.as_millis()
            )),
        }
    }
}

/// The registry as the identity service sees it: the `iot:Connection.Thing.*` policy variables
/// of a connecting device, and whether a thing exists before a principal is attached to it.
#[derive(Debug)]
struct RegistryThings(Arc<Registry>);

#[async_trait]
impl ThingLookup for RegistryThings {
    async fn thing(&self, name: &str) -> Option<(Option<String>, BTreeMap<String, String>)> {
        match self.0.describe_thing(name).await {
            Ok(t) => Some((t.type_name.map(String::from), t.attributes)),
            Err(RegistryError::ResourceNotFound(_) | RegistryError::InvalidRequest(_)) => None,
            Err(e) => {
                tracing::warn!(thing = name, error = %e, "cannot read the thing for policy variables");
                None
            }
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, IdentityError> {
        match self.0.describe_thing(name).await {
            Ok(_) => Ok(true),
            // An invalid name names no thing.
            Err(RegistryError::ResourceNotFound(_) | RegistryError::InvalidRequest(_)) => Ok(false),
            Err(e) => Err(IdentityError::Unavailable(e.to_string())),
        }
    }
}

fn write_ports(cfg: &Config, ports: &BTreeMap<&str, String>) -> anyhow::Result<()> {
    let path = cfg.data_dir.join("ports.json");
    let tmp = cfg.data_dir.join("ports.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(ports)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
