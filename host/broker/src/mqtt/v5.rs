//! MQTT 5 handlers: handshake, PUBLISH, SUBSCRIBE/UNSUBSCRIBE/DISCONNECT, and connection end.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ntex::util::ByteString;
use ntex_mqtt::v5::codec::{
    self, ConnectAckReason, DisconnectReasonCode as Dis, PublishAckReason, RetainHandling,
    SubscribeAckReason, UnsubscribeAckReason,
};
use ntex_mqtt::{Control, Reason, v5};

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
use crate::watchdog::Refusal;

pub(crate) type Session = v5::Session<Rc<Conn>>;

fn refuse<St>(ctx: &Ctx, c: v5::Connect, code: ConnectAckReason, msg: String) -> v5::ConnectAck<St> {
    BrokerMetrics::inc(&ctx.broker.metrics.connects_refused);
    tracing::info!(listener = ctx.listener, client_id = %c.packet().client_id, reason = ?code, "{msg}");
    c.fail_with(codec::ConnectAck {
        reason_code: code,
        reason_string: Some(ByteString::from(msg)),
        ..Default::default()
    })
}

pub(crate) async fn connect(ctx: Ctx, c: v5::Connect) -> Result<v5::ConnectAck<Rc<Conn>>, HandlerError> {
    let b = ctx.broker.clone();
    let lim = &b.cfg.limits;
    if b.is_closing() {
        return Ok(refuse(
            &ctx,
            c,
            ConnectAckReason::ServerUnavailable,
            "server is shutting down".into(),
        ));
    }
    if b.metrics.connections.load(Relaxed) >= lim.max_connections as i64 {
        let msg = format!("connection limit of {} reached", lim.max_connections);
        return Ok(refuse(&ctx, c, ConnectAckReason::QuotaExceeded, msg));
    }
    let pkt = c.packet();
    let (client_id, assigned) = if pkt.client_id.is_empty() {
        (ClientId::generate(), true)
    } else {
        match ClientId::parse(pkt.client_id.clone(), lim.max_client_id_length) {
            Ok(id) => (id, false),
            Err(e) => {
                return Ok(refuse(
                    &ctx,
                    c,
                    ConnectAckReason::ClientIdentifierNotValid,
                    e.to_string(),
                ));
            }
        }
    };
    let will = match &pkt.last_will {
        None => None,
        Some(w) => {
            let props = MessageProps {
                user_properties: w.user_properties.clone(),
                content_type: w.content_type.clone(),
                response_topic: w.response_topic.clone(),
                correlation_data: w.correlation_data.clone(),
                utf8_payload: w.is_utf8_payload.unwrap_or(false),
            };
            let parts = WillParts {
                topic: &w.topic,
                payload: &w.message,
                qos: w.qos,
                retain: w.retain,
                props,
                expiry: w.message_expiry_interval,
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
            };
            match will_message(&b, parts, &client_id) {
                Ok(w) => Some(w),
                Err(msg) => return Ok(refuse(&ctx, c, ConnectAckReason::TopicNameInvalid, msg)),
            }
        }
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
        persistent: pkt.session_expiry_interval_secs > 0,
        has_will: will.is_some(),
    };
    let principal = match b.authorizer().authenticate(&req).await {
        Ok(p) => Arc::new(p),
        Err(AuthRefusal::BadCredentials(m)) => {
            return Ok(refuse(&ctx, c, ConnectAckReason::BadUserNameOrPassword, m));
        }
        Err(AuthRefusal::NotAuthorized(m)) => return Ok(refuse(&ctx, c, ConnectAckReason::NotAuthorized, m)),
    };
    if let Some(w) = &will {
        let action = Action::Publish {
            topic: &w.message.topic,
            retain: w.message.retain,
        };
        if !b.authorizer().authorize(&principal, &client_id, action) {
            let msg = format!("not authorized to publish the will to {}", w.message.topic);
            return Ok(refuse(&ctx, c, ConnectAckReason::NotAuthorized, msg));
        }
    }
    let pkt = c.packet();
    let requested_expiry = pkt.session_expiry_interval_secs;
    let expiry = requested_expiry.min(lim.max_session_expiry_secs);
    let keep_alive = pkt.keep_alive;
    let peer = PeerLimits {
        window: usize::from(
            lim.max_inflight
                .min(pkt.receive_max.map_or(u16::MAX, NonZeroU16::get))
                .max(1),
        ),
        max_packet: pkt.max_packet_size.map_or(0, |v| v.get()),
        topic_alias_max: pkt.topic_alias_max,
    };
    let problem_info = pkt.request_problem_info;
    let clean_start = pkt.clean_start;
    let attached = b.attach(ConnectParams {
        client_id: client_id.clone(),
        clean_start,
        expiry_secs: expiry,
        principal: principal.clone(),
        protocol: 5,
    });
    if !b.authorizer().still_valid(&principal) {
        attached.ctl.kick(crate::session::KickReason::NotAuthorized);
    }
    b.metrics.connections.fetch_add(1, Relaxed);
    BrokerMetrics::inc(&b.metrics.connections_total);
    tracing::debug!(listener = ctx.listener, %client_id, clean_start, expiry, present = attached.session_present, "v5 client connected");
    spawn_writer(
        b.clone(),
        attached.session.clone(),
        attached.ctl.clone(),
        Sink::V5(c.sink()),
        peer,
    );
    crate::lifecycle::connected(&b, &client_id, &principal, attached.ctl.generation, peer_addr);
    let conn = Rc::new(Conn {
        broker: b.clone(),
        session: attached.session,
        ctl: attached.ctl,
        client_id: client_id.clone(),
        principal,
        will: RefCell::new(will),
        problem_info,
        zero_expiry_at_connect: requested_expiry == 0,
        listener: ctx.listener,
        protocol_errors: Cell::new(0),
        order: Default::default(),
        ending: Default::default(),
    });
    let max_keep_alive = lim.max_keep_alive_secs;
    let (receive_max, alias_max, max_packet) =
        (lim.max_receive, lim.max_topic_aliases, lim.max_packet_size());
    let mut ack = c.ack(conn).max_send(Some(lim.max_inflight)).with(|p| {
        p.session_present = attached.session_present;
        p.assigned_client_id = assigned.then(|| client_id.as_bytestring().clone());
        p.receive_max = NonZeroU16::new(receive_max).unwrap_or(NonZeroU16::MIN);
        p.topic_alias_max = alias_max;
        p.max_packet_size = Some(max_packet);
        p.max_qos = QoS::ExactlyOnce;
        p.retain_available = true;
        p.wildcard_subscription_available = true;
        p.subscription_identifiers_available = true;
        p.shared_subscription_available = true;
        if expiry != requested_expiry {
            p.session_expiry_interval_secs = Some(expiry);
        }
    });
    if keep_alive == 0 || keep_alive > max_keep_alive {
        // v5 Server Keep Alive: the client must use ours.
        ack = ack.with(|p| p.server_keepalive_sec = Some(max_keep_alive));
    } else {
        // Enforced at 1.5 times the client's keep-alive [MQTT-3.1.2-22].
        ack = ack.keep_alive(keep_alive.saturating_add(keep_alive.div_ceil(2)));
    }
    Ok(ack)
}

fn reason(conn: &Conn, msg: String) -> Option<ByteString> {
    conn.problem_info.then(|| ByteString::from(msg))
}

/// Refuses a PUBLISH: a negative PUBACK for QoS 1/2, a DISCONNECT for QoS 0 (it has no ack).
fn refuse_publish(
    conn: &Conn,
    p: v5::Publish,
    ack_reason: PublishAckReason,
    dis_reason: Dis,
    msg: String,
) -> Result<v5::PublishAck, HandlerError> {
    BrokerMetrics::inc(&conn.broker.metrics.protocol_errors);
    tracing::info!(client_id = %conn.client_id, topic = %p.packet().topic, "publish refused: {msg}");
    if p.qos() == QoS::AtMostOnce {
        return Err(HandlerError::new(dis_reason, msg));
    }
    let r = reason(conn, msg);
    let ack = p.ack().reason_code(ack_reason);
    Ok(match r {
        Some(r) => ack.reason(r),
        None => ack,
    })
}

pub(crate) async fn publish(s: &Session, p: v5::Publish) -> Result<v5::PublishAck, HandlerError> {
    let conn: &Conn = s;
    let turn = conn.order.take();
    let b = &conn.broker;
    let lim = &b.cfg.limits;
    let topic = match Topic::parse(p.packet().topic.clone(), b.topic_limits()) {
        Ok(t) => t,
        Err(e) => {
            return refuse_publish(
                conn,
                p,
                PublishAckReason::TopicNameInvalid,
                Dis::TopicNameInvalid,
                e.to_string(),
            );
        }
    };
    let payload = match p.read_all().await {
        Ok(b) => b,
        Err(e) => return Err(HandlerError::new(Dis::MalformedPacket, format!("payload: {e:?}"))),
    };
    if payload.len() > lim.max_payload_size as usize {
        let msg = format!(
            "payload of {} bytes exceeds the limit of {} bytes",
            payload.len(),
            lim.max_payload_size
        );
        return refuse_publish(conn, p, PublishAckReason::QuotaExceeded, Dis::PacketTooLarge, msg);
    }
    let props = &p.packet().properties;
    if props.is_utf8_payload && std::str::from_utf8(&payload).is_err() {
        let msg = "payload format indicator says UTF-8 but the payload is not".to_owned();
        return refuse_publish(
            conn,
            p,
            PublishAckReason::PayloadFormatInvalid,
            Dis::PayloadFormatInvalid,
            msg,
        );
    }
    let retain = p.retain();
    if !conn.may_publish(&topic, retain) {
        BrokerMetrics::inc(&b.metrics.publish_denied);
        let msg = format!("not authorized to publish to {topic}");
        return refuse_publish(conn, p, PublishAckReason::NotAuthorized, Dis::NotAuthorized, msg);
    }
    let qos = p.qos();
    let m = &b.metrics;
    BrokerMetrics::inc(&m.messages_in);
    m.bytes_in.fetch_add(payload.len() as u64, Relaxed);
    let mut msg =
        Message::new(topic, payload, qos, retain).with_expiry_interval(props.message_expiry_interval);
    msg.props = MessageProps {
        user_properties: props.user_properties.clone(),
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        utf8_payload: props.is_utf8_payload,
    };
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
    // A refused watchdog request: a QoS 1 publisher learns why from its PUBACK (a QoS 0 one
    // only from the log; it is no protocol error, so the connection stays).
    if let Some(e) = routed.refused
        && qos != QoS::AtMostOnce
    {
        let code = match e.refusal() {
            Refusal::Forbidden => PublishAckReason::NotAuthorized,
            Refusal::Limit => PublishAckReason::QuotaExceeded,
            Refusal::Malformed => PublishAckReason::ImplementationSpecificError,
        };
        let ack = p.ack().reason_code(code);
        return Ok(match reason(conn, e.to_string()) {
            Some(r) => ack.reason(r),
            None => ack,
        });
    }
    Ok(p.ack())
}

pub(crate) async fn protocol(
    s: &Session,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, HandlerError> {
    let conn: &Conn = s;
    let b = &conn.broker;
    match msg {
        v5::ProtocolMessage::Subscribe(mut sub) => {
            let sub_id = sub.packet().id;
            let mut retained = Vec::new();
            let mut refusals: Vec<String> = Vec::new();
            for mut item in sub.iter_mut() {
                let opts = *item.options();
                let filter = match TopicFilter::parse(item.topic().clone(), b.topic_limits()) {
                    Ok(f) => f,
                    Err(e) => {
                        BrokerMetrics::inc(&b.metrics.protocol_errors);
                        tracing::info!(client_id = %conn.client_id, filter = %item.topic(), "subscription refused: {e}");
                        refusals.push(format!("{}: {e}", item.topic()));
                        item.fail(SubscribeAckReason::TopicFilterInvalid);
                        continue;
                    }
                };
                if filter.share_group().is_some() && opts.no_local {
                    return Err(HandlerError::new(
                        Dis::ProtocolError,
                        "No Local must not be set on a shared subscription [MQTT-3.8.3-4]",
                    ));
                }
                if !b.authorizer().authorize(
                    &conn.principal,
                    &conn.client_id,
                    Action::Subscribe { filter: &filter },
                ) {
                    BrokerMetrics::inc(&b.metrics.subscribe_denied);
                    tracing::info!(client_id = %conn.client_id, %filter, "subscription not authorized");
                    refusals.push(format!("{filter}: not authorized"));
                    item.fail(SubscribeAckReason::NotAuthorized);
                    continue;
                }
                let so = SubOptions {
                    qos: opts.qos,
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    subscription_id: sub_id,
                };
                match b.subscribe(&conn.session, filter.clone(), so) {
                    Ok(existed) => {
                        item.confirm(opts.qos);
                        let send = match opts.retain_handling {
                            RetainHandling::AtSubscribe => true,
                            RetainHandling::AtSubscribeNew => !existed,
                            RetainHandling::NoAtSubscribe => false,
                        };
                        // Retained messages are not sent for shared subscriptions.
                        if send && filter.share_group().is_none() {
                            retained.push((filter, so));
                        }
                    }
                    Err(e) => {
                        tracing::info!(client_id = %conn.client_id, %filter, "subscription refused: {e}");
                        refusals.push(format!("{filter}: {e}"));
                        item.fail(SubscribeAckReason::QuotaExceeded);
                    }
                }
            }
            if !retained.is_empty() {
                let (b, session) = (b.clone(), conn.session.clone());
                // After the SUBACK has been written.
                ntex::rt::spawn(async move {
                    tokio::task::yield_now().await;
                    for (f, so) in retained {
                        b.send_retained(&session, &f, so);
                    }
                });
            }
            if !refusals.is_empty() && conn.problem_info {
                sub = sub.ack_reason(ByteString::from(refusals.join("; ")));
            }
            Ok(sub.ack())
        }
        v5::ProtocolMessage::Unsubscribe(mut unsub) => {
            let mut refusals: Vec<String> = Vec::new();
            for mut item in unsub.iter_mut() {
                match TopicFilter::parse(item.topic().clone(), b.topic_limits()) {
                    Ok(f) => {
                        if b.unsubscribe(&conn.session, &f) {
                            item.success();
                        } else {
                            refusals.push(format!("{f}: no such subscription"));
                            item.fail(UnsubscribeAckReason::NoSubscriptionExisted);
                        }
                    }
                    Err(e) => {
                        refusals.push(format!("{}: {e}", item.topic()));
                        item.fail(UnsubscribeAckReason::TopicFilterInvalid);
                    }
                }
            }
            if !refusals.is_empty() && conn.problem_info {
                unsub = unsub.ack_reason(ByteString::from(refusals.join("; ")));
            }
            Ok(unsub.ack())
        }
        v5::ProtocolMessage::Disconnect(d) => {
            let pkt = d.packet();
            if pkt.reason_code != Dis::DisconnectWithWillMessage {
                // A normal DISCONNECT discards the will [MQTT-3.14.4-3].
                conn.will.borrow_mut().take();
            }
            if let Some(expiry) = pkt.session_expiry_interval_secs {
                if conn.zero_expiry_at_connect && expiry != 0 {
                    return Err(HandlerError::new(
                        Dis::ProtocolError,
                        "session expiry cannot be set on DISCONNECT when CONNECT had 0 [MQTT-3.14.2-2]",
                    ));
                }
                b.set_session_expiry(&conn.session, expiry.min(b.cfg.limits.max_session_expiry_secs));
            }
            conn.ending(DisconnectReason::ClientInitiated);
            Ok(d.ack())
        }
        v5::ProtocolMessage::Auth(_) => Err(HandlerError::new(
            Dis::ProtocolError,
            "AUTH without an authentication method in CONNECT [MQTT-4.12.0-1]",
        )),
        other => Ok(other.ack()),
    }
}

pub(crate) async fn control(
    s: &Session,
    c: Control<HandlerError>,
) -> Result<Option<codec::Encoded>, HandlerError> {
    let conn: &Conn = s;
    match c {
        Control::Stop(Reason::Error(e)) => {
            conn.ending(DisconnectReason::ClientError);
            let e = e.into();
            BrokerMetrics::inc(&conn.broker.metrics.protocol_errors);
            tracing::info!(client_id = %conn.client_id, reason = ?e.reason, "disconnecting client: {}", e.message);
            Ok(Some(
                codec::Packet::from(codec::Disconnect {
                    reason_code: e.reason,
                    reason_string: Some(ByteString::from(e.message)),
                    ..Default::default()
                })
                .into(),
            ))
        }
        Control::Stop(Reason::Protocol(e)) => {
            conn.ending(super::v3::ending_of(e.get_ref()));
            BrokerMetrics::inc(&conn.broker.metrics.protocol_errors);
            conn.protocol_errors.set(conn.protocol_errors.get() + 1);
            let err = e.get_ref();
            tracing::info!(client_id = %conn.client_id, "protocol error, disconnecting: {err}");
            let mut pkt = codec::Disconnect::from_proto_error(err);
            if let ntex_mqtt::error::MqttProtocolError::Decode(d) = err
                && !matches!(d, ntex_mqtt::error::DecodeError::MaxSizeExceeded { .. })
            {
                pkt.reason_code = Dis::MalformedPacket;
            }
            if !matches!(err, ntex_mqtt::error::MqttProtocolError::KeepAliveTimeout) {
                pkt.reason_string = Some(ByteString::from(err.to_string()));
            }
            Ok(Some(codec::Packet::from(pkt).into()))
        }
        Control::Stop(Reason::PeerGone(_)) | Control::WrBackpressure(_) => Ok(None),
    }
}
