//! Listeners: the ntex server that accepts MQTT over TCP and TLS on its own thread.
//!
//! ntex runs single-threaded workers (each a tokio current-thread runtime) and will not start
//! inside a tokio runtime, so [`start`] runs the ntex system on a dedicated OS thread and hands
//! back a `Send` [`MqttServer`] handle the tokio side uses to stop it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use ntex::service::fn_service;
use ntex::{Service, SharedCfg};
use ntex_mqtt::{MqttServiceConfig, QoS, v3, v5};

use super::{Ctx, HandlerError};
use crate::broker::Broker;

/// How a listener speaks.
#[derive(Clone)]
pub enum ListenerKind {
    /// Plain TCP.
    Tcp,
    /// TLS with this rustls configuration.
    Tls(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerKind::Tcp => f.write_str("Tcp"),
            ListenerKind::Tls(_) => f.write_str("Tls"),
        }
    }
}

/// A bound socket to serve MQTT on.
#[derive(Debug)]
pub struct Listener {
    /// Its name in logs and in `ports.json` (`mqtt`, `mqtts`).
    pub name: &'static str,
    /// The bound socket (bind it yourself so port 0 resolves before start).
    pub socket: TcpListener,
    /// TCP or TLS.
    pub kind: ListenerKind,
}

/// The internal Unix socket the HTTP listener bridges MQTT-over-WebSocket connections to (see
/// [`super::ws`]).
#[derive(Debug, Clone)]
pub struct WsListener {
    /// Its name in logs and to the authorizer (`ws`).
    pub name: &'static str,
    /// The socket file (created mode 0600; an old one is replaced). Its directory is created
    /// if missing and restricted to its owner (mode 0700), so give it one of its own.
    pub path: std::path::PathBuf,
    /// The secret every bridged connection's preamble must carry (see [`super::ws`]); the
    /// HTTP side that bridges gets the same one.
    pub token: super::ws::WsToken,
}

/// Creates the bridge socket's own directory, mode 0700 (tightened if it exists), so nobody
/// else can reach the socket even for the moment between its creation and its chmod.
fn private_socket_dir(path: &std::path::Path) -> io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A running MQTT server.
#[derive(Debug)]
pub struct MqttServer {
    server: ntex::server::Server,
    thread: Option<JoinHandle<()>>,
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl MqttServer {
    /// The bound addresses by listener name.
    pub fn addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.addrs
    }

    /// Stops accepting and closes connections (`graceful`: waits for them to finish).
    pub async fn stop(&mut self, graceful: bool) {
        self.server.stop(graceful).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn mqtt_cfg(broker: &Broker) -> SharedCfg {
    let lim = &broker.cfg.limits;
    SharedCfg::new("MQTT")
        .add(
            ntex::io::IoConfig::new()
                // A client that stops reading is cut off after this long under back-pressure.
                .set_write_timeout(ntex::time::Seconds(lim.write_timeout_secs))
                // A frame that starts and then stalls (under 256 bytes per 10 s, or longer than
                // 60 s in all) ends the connection: this also frees connections whose packet
                // header promises more bytes than ever arrive.
                .set_frame_read_rate(ntex::time::Seconds(10), ntex::time::Seconds(60), 256)
                .set_write_size(ntex::util::BytePageSize::Size4),
        )
        .add(
            MqttServiceConfig::new()
                .set_max_qos(QoS::ExactlyOnce)
                .set_max_size(lim.max_packet_size())
                // No in-flight limiter in front of the publish handler: ntex's limiter parks
                // calls past its limits and resumes them in wake order, which reorders a QoS 0
                // flood. Receive Maximum is still enforced per protocol (v5), the read buffer
                // bounds what can pile up, and our handler keeps packet order itself.
                .set_max_receive(0)
                .set_max_receive_size(0)
                .set_max_send(lim.max_inflight)
                .set_max_topic_alias(lim.max_topic_aliases)
                .set_connect_timeout(ntex::time::Seconds(10)),
        )
        .into()
}

macro_rules! mqtt_service {
    ($ctx:expr) => {{
        let c3 = $ctx.clone();
        let c5 = $ctx.clone();
        ntex_mqtt::MqttServer::new()
            .v3(
                v3::MqttServer::new(async |s: &super::v3::Session, p| super::v3::publish(s, p).await)
                    .protocol(async |s: &super::v3::Session, m| super::v3::protocol(s, m).await)
                    .control(async |s: &super::v3::Session, c| super::v3::control(s, c).await)
                    .build(fn_service(move |c: v3::Connect| {
                        let ctx = c3.clone();
                        async move { super::v3::connect(ctx, c).await }
                    })),
            )
            .v5(
                v5::MqttServer::new(async |s: &super::v5::Session, p| super::v5::publish(s, p).await)
                    .protocol(async |s: &super::v5::Session, m| super::v5::protocol(s, m).await)
                    .control(async |s: &super::v5::Session, c| super::v5::control(s, c).await)
                    .build(fn_service(move |c: v5::Connect| {
                        let ctx = c5.clone();
                        async move { super::v5::connect(ctx, c).await }
                    })),
            )
    }};
}

/// Starts serving `listeners` (and the WebSocket bridge socket `ws`) with `workers` ntex worker
/// threads.
pub fn start(
    broker: Arc<Broker>,
    listeners: Vec<Listener>,
    ws: Option<WsListener>,
    workers: usize,
) -> io::Result<MqttServer> {
    let addrs = listeners
        .iter()
        .map(|l| Ok((l.name, l.socket.local_addr()?)))
        .collect::<io::Result<Vec<_>>>()?;
    let (tx, rx) = mpsc::channel::<io::Result<ntex::server::Server>>();
    let thread = std::thread::Builder::new()
        .name("shoal-mqtt".into())
        .spawn(move || {
            ntex::rt::System::build()
                .name("shoal-mqtt")
                // ntex's scheduling-latency sampler (a timer per thread every 100 ms, and a
                // watchdog thread reading them) and its arbiter pings: statistics Shoal does
                // not read (ntex's balancer still sees a worker stuck in a long turn through
                // `current_turn`), which woke an idle server ~30 times a second.
                .latency_interval(0)
                .ping_interval(0)
                .build(ntex::rt::DefaultRuntime)
                .block_on(async move {
                    let max_conns = broker.cfg.limits.max_connections;
                    let mut builder = ntex::server::build()
                        .workers(workers)
                        .max_connections(max_conns)
                        .disable_signals()
                        .graceful_shutdown_timeout(ntex::time::Seconds(2));
                    for l in listeners {
                        let ctx = Ctx {
                            broker: broker.clone(),
                            listener: l.name,
                        };
                        let cfg = mqtt_cfg(&broker);
                        let res = match l.kind {
                            ListenerKind::Tcp => {
                                builder.listen(l.name, l.socket, cfg, async move |_| mqtt_service!(ctx))
                            }
                            ListenerKind::Tls(tls) => {
                                builder.listen(l.name, l.socket, cfg, async move |_| {
                                    ntex_tls::max_concurrent_ssl_accept(4096);
                                    ntex_tls::rustls::TlsAcceptor::new(tls.clone())
                                        .map_err(|e| {
                                            ntex_mqtt::MqttError::Service(HandlerError::new(
                                                ntex_mqtt::v5::codec::DisconnectReasonCode::UnspecifiedError,
                                                format!("TLS handshake: {e}"),
                                            ))
                                        })
                                        .and_then(mqtt_service!(ctx))
                                })
                            }
                        };
                        builder = match res {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                    }
                    if let Some(ws) = ws {
                        let ctx = Ctx {
                            broker: broker.clone(),
                            listener: ws.name,
                        };
                        let max_frame = broker.cfg.limits.max_packet_size() as usize + 1024;
                        if let Err(e) = private_socket_dir(&ws.path) {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        let token = ws.token.clone();
                        let res = builder.bind_uds(ws.name, &ws.path, mqtt_cfg(&broker), async move |_| {
                            let token = token.clone();
                            fn_service(move |io: ntex::io::Io| {
                                let token = token.clone();
                                async move {
                                    super::ws::accept(io, max_frame, token).await.map_err(|e| {
                                        tracing::info!("MQTT over WebSocket bridge refused: {e}");
                                        ntex_mqtt::MqttError::Service(HandlerError::new(
                                            ntex_mqtt::v5::codec::DisconnectReasonCode::UnspecifiedError,
                                            e,
                                        ))
                                    })
                                }
                            })
                            .and_then(mqtt_service!(ctx))
                        });
                        builder = match res {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                        #[cfg(unix)]
                        {
                            use std::os::unix::fs::PermissionsExt as _;
                            if let Err(e) =
                                std::fs::set_permissions(&ws.path, std::fs::Permissions::from_mode(0o600))
                            {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let srv = builder.run();
                    let _ = tx.send(Ok(srv.clone()));
                    if let Err(e) = srv.await {
                        tracing::error!(error = %e, "MQTT server stopped with an error");
                    }
                });
        })?;
    let server = rx
        .recv()
        .map_err(|_| io::Error::other("MQTT server thread exited before starting"))??;
    Ok(MqttServer {
        server,
        thread: Some(thread),
        addrs,
    })
}
