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
}
