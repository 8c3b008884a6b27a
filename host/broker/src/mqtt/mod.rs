//! The MQTT wire: ntex-mqtt handlers for v3.1.1 and v5 over TCP and TLS, feeding [`Broker`].
//!
//! Pipeline stages per connection: `listener` (accept, TLS) -> `v3`/`v5` handshake (client id,
//! authentication, session attach) -> publish / protocol handlers -> `conn` writer task.

pub mod conn;
pub mod listener;
pub mod tls;
mod v3;
mod v5;
pub mod ws;

use std::sync::Arc;

use ntex::util::{ByteString, Bytes};
use ntex_mqtt::v5::codec::DisconnectReasonCode;

use crate::broker::{Broker, Will};
use crate::message::{Message, MessageProps, QoS};
use crate::topic::Topic;

pub use listener::{Listener, ListenerKind, MqttServer, WsListener, start};

/// An error a handler ends a connection with: the DISCONNECT reason (v5) and a message for
/// the reason string and the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// v5 DISCONNECT reason code.
    pub reason: DisconnectReasonCode,
    /// What went wrong.
    pub message: String,
}

impl HandlerError {
    pub(crate) fn new(reason: DisconnectReasonCode, message: impl Into<String>) -> Self {
        HandlerError {
            reason,
            message: message.into(),
        }
    }
}

impl From<()> for HandlerError {
    fn from(_: ()) -> Self {
        HandlerError::new(DisconnectReasonCode::UnspecifiedError, "unspecified error")
    }
}

impl From<std::convert::Infallible> for HandlerError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

impl TryFrom<HandlerError> for ntex_mqtt::v5::PublishAck {
    type Error = HandlerError;

    fn try_from(err: HandlerError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// A CONNECT's last will, as either protocol version carries it.
pub(crate) struct WillParts<'a> {
    pub topic: &'a ByteString,
    pub payload: &'a Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub props: MessageProps,
    pub expiry: Option<u32>,
    pub delay_secs: u32,
}

/// Builds a will from a CONNECT's last will, validated like a PUBLISH.
pub(crate) fn will_message(
    broker: &Broker,
    w: WillParts<'_>,
    publisher: &crate::message::ClientId,
) -> Result<Will, String> {
    let WillParts {
        topic,
        payload,
        qos,
        retain,
        props,
        expiry,
        delay_secs,
    } = w;
    let topic = Topic::parse(topic.clone(), broker.topic_limits()).map_err(|e| format!("will topic: {e}"))?;
    if payload.len() > broker.cfg.limits.max_payload_size as usize {
        return Err(format!(
            "will payload of {} bytes exceeds the limit of {}",
            payload.len(),
            broker.cfg.limits.max_payload_size
        ));
    }
    let mut message = Message::new(topic, payload.clone(), qos, retain).with_expiry_interval(expiry);
    message.props = props;
    message.publisher = Some(publisher.clone());
    Ok(Will { message, delay_secs })
}

/// Shared state every handler factory clones.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub broker: Arc<Broker>,
    pub listener: &'static str,
}
