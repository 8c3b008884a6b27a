//! MQTT 3.1.1 handlers. Version 3 has no reason codes after CONNACK: a refused PUBLISH or
//! SUBSCRIBE closes the connection (SUBSCRIBE entries get 0x80), as AWS IoT does.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ntex::time::Seconds;
use ntex_mqtt::v3::codec::ConnectAckReason;
use ntex_mqtt::v5::codec::DisconnectReasonCode as Dis;
use ntex_mqtt::{Control, Reason, v3};

use super::conn::{Conn, PeerLimits, Sink, spawn_writer};
use super::{Ctx, HandlerError, WillParts, will_message};
use crate::auth::{Action, AuthRefusal, ConnectRequest};
use crate::broker::ConnectParams;
use crate::hook::Origin;
use crate::lifecycle::DisconnectReason;
use crate::message::{ClientId, Message, MessageProps, QoS};
use crate::metrics::BrokerMetrics;
use crate::session::SubOptions;
use crate::topic::{Topic, TopicFilter};

pub(crate) type Session = v3::Session<Rc<Conn>>;

fn refuse<St>(ctx: &Ctx, c: v3::Connect, code: ConnectAckReason, msg: &str) -> v3::ConnectAck<St> {
    BrokerMetrics::inc(&ctx.broker.metrics.connects_refused);
    tracing::info!(listener = ctx.listener, client_id = %c.packet().client_id, reason = ?code, "{msg}");
    c.failed(code)
}

pub(crate) async fn connect(ctx: Ctx, c: v3::Connect) -> Result<v3::ConnectAck<Rc<Conn>>, HandlerError> {
    let b = ctx.broker.clone();
    let lim = &b.cfg.limits;
    if b.is_closing() {
        return Ok(refuse(
            &ctx,
            c,
            ConnectAckReason::ServiceUnavailable,
            "server is shutting down",
        ));
    }
    if b.metrics.connections.load(Relaxed) >= lim.max_connections as i64 {
        return Ok(refuse(
            &ctx,
            c,
            ConnectAckReason::ServiceUnavailable,
            "connection limit reached",
        ));
    }
    let pkt = c.packet();
    let client_id = if pkt.client_id.is_empty() {
        if !pkt.clean_session {
            // [MQTT-3.1.3-8] a zero-byte client id needs clean session 1.
            return Ok(refuse(
                &ctx,
                c,
                ConnectAckReason::IdentifierRejected,
                "empty client id with clean session 0 [MQTT-3.1.3-8]",
            ));
        }
        ClientId::generate()
    } else {
        match ClientId::parse(pkt.client_id.clone(), lim.max_client_id_length) {
            Ok(id) => id,
            Err(e) => {
                return Ok(refuse(
                    &ctx,
                    c,
                    ConnectAckReason::IdentifierRejected,
                    &e.to_string(),
                ));
            }
        }
    };
    let will = match &pkt.last_will {
        None => None,
        Some(w) => match will_message(
            &b,
            WillParts {
                topic: &w.topic,
                payload: &w.message,
                qos: w.qos,
                retain: w.retain,
                props: MessageProps::default(),
                expiry: None,
                delay_secs: 0,
            },
            &client_id,
        ) {
            Ok(w) => Some(w),
            // v3 has no better code for a bad will than "not authorized" (AWS IoT closes too).
            Err(msg) => return Ok(refuse(&ctx, c, ConnectAckReason::NotAuthorized, &msg)),
        },
    };
    let peer_addr = c.io().query::<ntex::io::types::PeerAddr>().get().map(|p| p.0);
    let ws = c.io().query::<super::ws::WsAuth>().as_ref().map(|w| w.0.clone());
    let peer_certificates = c
        .io()
        .query::<ntex_tls::rustls::PeerCertChain<'static>>()
        .as_ref()
        .map(|chain| chain.0.iter().map(|c| c.as_ref().to_vec()).collect())
        .or_else(|| ws.as_ref().map(|w| w.certificates.clone()))
        .unwrap_or_default();
    let username = pkt.username.as_ref().map(|u| u.to_string());
    let password = pkt.password.as_ref().map(|p| p.to_vec());
    let req = ConnectRequest {
        client_id: &client_id,
        username: username.as_deref(),
        password: password.as_deref(),
        peer_addr,
        peer_certificates,
        access_key: ws.as_ref().and_then(|w| w.access_key.as_deref()),
        listener: ctx.listener,
        persistent: !pkt.clean_session,
        has_will: will.is_some(),
    };
    let principal = match b.authorizer().authenticate(&req).await {
        Ok(p) => Arc::new(p),
        Err(AuthRefusal::BadCredentials(m)) => {
            return Ok(refuse(&ctx, c, ConnectAckReason::BadUserNameOrPassword, &m));
        }
        Err(AuthRefusal::NotAuthorized(m)) => {
            return Ok(refuse(&ctx, c, ConnectAckReason::NotAuthorized, &m));
        }
    };
    if let Some(w) = &will {
        let action = Action::Publish {
            topic: &w.message.topic,
            retain: w.message.retain,
        };
        if !b.authorizer().authorize(&principal, &client_id, action) {
            return Ok(refuse(
                &ctx,
                c,
                ConnectAckReason::NotAuthorized,
                "not authorized to publish the will",
            ));
        }
    }
    let pkt = c.packet();
    let clean = pkt.clean_session;
    let keep_alive = pkt.keep_alive;
    // v3 clean session 0: the session persists; we bound it by the configured maximum.
    let expiry = if clean { 0 } else { lim.max_session_expiry_secs };
    let attached = b.attach(ConnectParams {
        client_id: client_id.clone(),
        clean_start: clean,
        expiry_secs: expiry,
        principal: principal.clone(),
        protocol: 4,
    });
    if !b.authorizer().still_valid(&principal) {
        attached.ctl.kick(crate::session::KickReason::NotAuthorized);
    }
    b.metrics.connections.fetch_add(1, Relaxed);
    BrokerMetrics::inc(&b.metrics.connections_total);
    tracing::debug!(listener = ctx.listener, %client_id, clean, present = attached.session_present, "v3 client connected");
    spawn_writer(
        b.clone(),
        attached.session.clone(),
        attached.ctl.clone(),
        Sink::V3(c.sink()),
        PeerLimits {
            window: usize::from(lim.max_inflight.max(1)),
            max_packet: 0,
            topic_alias_max: 0,
        },
    );
    crate::lifecycle::connected(&b, &client_id, &principal, attached.ctl.generation, peer_addr);
    let conn = Rc::new(Conn {
        broker: b.clone(),
        session: attached.session,
        ctl: attached.ctl,
        client_id,
        principal,
        will: RefCell::new(will),
        problem_info: false,
        zero_expiry_at_connect: clean,
        listener: ctx.listener,
        protocol_errors: Cell::new(0),
        order: Default::default(),
        ending: Default::default(),
    });
    let mut ack = c
        .ack(conn, attached.session_present)
        .max_send(Some(lim.max_inflight));
    if keep_alive == 0 {
        // No keep-alive asked for: still drop connections silent for 1.5x our maximum.
        let max = lim.max_keep_alive_secs;
        ack = ack.idle_timeout(Seconds(max.saturating_add(max.div_ceil(2))));
    }
    Ok(ack)
}

pub(crate) async fn publish(s: &Session, p: v3::Publish) -> Result<(), HandlerError> {
    let conn: &Conn = s;
    let turn = conn.order.take();
    let b = &conn.broker;
    let fail = |reason: Dis, msg: String| {
        BrokerMetrics::inc(&b.metrics.protocol_errors);
        tracing::info!(client_id = %conn.client_id, topic = %p.packet().topic, "publish refused, closing: {msg}");
        Err(HandlerError::new(reason, msg))
    };
    let topic = match Topic::parse(p.packet().topic.clone(), b.topic_limits()) {
        Ok(t) => t,
        Err(e) => return fail(Dis::TopicNameInvalid, e.to_string()),
    };
    let payload = match p.read_all().await {
        Ok(b) => b,
        Err(e) => return fail(Dis::MalformedPacket, format!("payload: {e:?}")),
    };
    let max = b.cfg.limits.max_payload_size as usize;
    if payload.len() > max {
        return fail(
            Dis::PacketTooLarge,
            format!(
                "payload of {} bytes exceeds the limit of {max} bytes",
                payload.len()
            ),
        );
    }
    let retain = p.retain();
    if !conn.may_publish(&topic, retain) {
        BrokerMetrics::inc(&b.metrics.publish_denied);
        return fail(
            Dis::NotAuthorized,
            format!("not authorized to publish to {topic}"),
        );
    }
    let qos = p.qos();
    let m = &b.metrics;
    BrokerMetrics::inc(&m.messages_in);
    m.bytes_in.fetch_add(payload.len() as u64, Relaxed);
    let mut msg = Message::new(topic, payload, qos, retain);
    msg.publisher = Some(conn.client_id.clone());
    turn.wait().await;
    // A hook with no room (the rules workers behind) holds this connection back here, in
    // its order, rather than losing the message's rule evaluation.
    b.admit(&msg.topic, &conn.client_id).await;
    let routed = b.publish(
        msg,
        Some(Origin {
            client_id: &conn.client_id,
            principal: &conn.principal,
        }),
    );
    drop(turn);
    if qos != QoS::AtMostOnce
        && let Some(t) = routed.durable_ticket
    {
        b.wait_durable(t).await;
    }
    Ok(())
}

pub(crate) async fn protocol(
    s: &Session,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, HandlerError> {
    let conn: &Conn = s;
    let b = &conn.broker;
    match msg {
        v3::ProtocolMessage::Subscribe(mut sub) => {
            let mut retained = Vec::new();
            for mut item in sub.iter_mut() {
                let qos = item.qos();
                let filter = match TopicFilter::parse(item.topic().clone(), b.topic_limits()) {
                    Ok(f) => f,
                    Err(e) => {
                        BrokerMetrics::inc(&b.metrics.protocol_errors);
                        tracing::info!(client_id = %conn.client_id, filter = %item.topic(), "subscription refused: {e}");
                        item.fail();
                        continue;
                    }
                };
                if !b.authorizer().authorize(
                    &conn.principal,
                    &conn.client_id,
                    Action::Subscribe { filter: &filter },
                ) {
                    BrokerMetrics::inc(&b.metrics.subscribe_denied);
                    tracing::info!(client_id = %conn.client_id, %filter, "subscription not authorized");
                    item.fail();
                    continue;
                }
                let so = SubOptions::qos(qos);
                match b.subscribe(&conn.session, filter.clone(), so) {
                    Ok(_) => {
                        item.confirm(qos);
                        if filter.share_group().is_none() {
                            retained.push((filter, so));
                        }
                    }
                    Err(e) => {
                        tracing::info!(client_id = %conn.client_id, %filter, "subscription refused: {e}");
                        item.fail();
                    }
                }
            }
            if !retained.is_empty() {
                let (b, session) = (b.clone(), conn.session.clone());
                ntex::rt::spawn(async move {
                    tokio::task::yield_now().await;
                    for (f, so) in retained {
                        b.send_retained(&session, &f, so);
                    }
                });
            }
            Ok(sub.ack())
        }
        v3::ProtocolMessage::Unsubscribe(unsub) => {
            for t in unsub.iter() {
                if let Ok(f) = TopicFilter::parse(t.clone(), b.topic_limits()) {
                    b.unsubscribe(&conn.session, &f);
                }
            }
            Ok(unsub.ack())
        }
        v3::ProtocolMessage::Disconnect(d) => {
            // A normal DISCONNECT discards the will [MQTT-3.14.4-3].
            conn.will.borrow_mut().take();
            conn.ending(DisconnectReason::ClientInitiated);
            Ok(d.ack())
        }
        other => Ok(other.ack()),
    }
}

/// Why a protocol error ends a connection, as a lifecycle event says it.
pub(crate) fn ending_of(e: &ntex_mqtt::error::MqttProtocolError) -> DisconnectReason {
    match e {
        ntex_mqtt::error::MqttProtocolError::KeepAliveTimeout => DisconnectReason::KeepAliveTimeout,
        _ => DisconnectReason::ClientError,
    }
}

pub(crate) async fn control(
    s: &Session,
    c: Control<HandlerError>,
) -> Result<Option<v3::codec::Encoded>, HandlerError> {
    let conn: &Conn = s;
    match c {
        Control::Stop(Reason::Error(e)) => {
            conn.ending(DisconnectReason::ClientError);
            BrokerMetrics::inc(&conn.broker.metrics.protocol_errors);
            tracing::info!(client_id = %conn.client_id, "closing connection: {}", e.get_ref().message);
            Ok(None)
        }
        Control::Stop(Reason::Protocol(e)) => {
            conn.ending(ending_of(e.get_ref()));
            BrokerMetrics::inc(&conn.broker.metrics.protocol_errors);
            tracing::info!(client_id = %conn.client_id, "protocol error, closing: {}", e.get_ref());
            Ok(None)
        }
        Control::Stop(Reason::PeerGone(_)) | Control::WrBackpressure(_) => Ok(None),
    }
}
