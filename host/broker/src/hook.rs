//! The seam where services behind the broker (shadows, the rules engine) see messages.

use std::sync::Arc;

use crate::auth::Principal;
use crate::message::{ClientId, Message};
use crate::topic::Topic;

/// What a hook decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// Route it to subscribers as usual.
    Continue,
    /// The hook took it (a reserved topic it serves); do not route it.
    Consumed,
}

/// A wait a hook asks a publishing connection to do before its message is handed over (see
/// [`MessageHook::admit`]).
pub type Admission = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// Who published a message, as hooks see it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The publishing client.
    pub client_id: &'a ClientId,
    /// Its principal.
    pub principal: &'a Principal,
}

/// Sees every message published by a client, before it is routed. Every registered hook sees
/// each message, in registration order, even when an earlier one consumed it. Runs on the broker's I/O
/// threads: it must not block; hand work to a bounded queue and return.
pub trait MessageHook: Send + Sync + 'static {
    /// Called once per accepted PUBLISH.
    fn on_publish(&self, msg: &Arc<Message>, origin: Origin<'_>) -> HookOutcome;

    /// Whether this hook might act on a message published on `topic` (see
    /// [`crate::Broker::has_audience`]: a service may skip building a message nobody would act
    /// on). Answering `true` is always correct, and is the default; `false` promises that
    /// [`MessageHook::on_publish`] would ignore any message on `topic`.
    fn wants(&self, _topic: &Topic) -> bool {
        true
    }

    /// Back-pressure. Called on the publishing connection, in its order, before a client's
    /// message on `topic` is published ([`crate::Broker::admit`]): `Some` asks the
    /// connection to wait for the returned future first, so that its later messages wait
    /// behind this one and the network pushes back on the client, instead of the hook
    /// dropping work it has no room for. The wait must be bounded; `None` (the default, and
    /// the answer whenever there is room) costs the publisher nothing.
    fn admit(&self, _topic: &Topic, _client_id: &ClientId) -> Option<Admission> {
        None
    }
}
