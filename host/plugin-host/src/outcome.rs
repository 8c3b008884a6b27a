//! What a plugin call ends with.

use crate::message::Action;

/// The result of one plugin call.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The plugin accepted the message and asks the host to take these actions (maybe none).
    Ok(Vec<Action>),
    /// Business rejection (`plugin-error::rejected`): the message goes to the rule's error
    /// action; the plugin stays healthy and its instance is kept.
    Rejected(String),
    /// The call failed: the message goes to the rule's error action, the instance (if any) is
    /// discarded, and the failure counts against the version's health unless
    /// [`PluginFault::counts_against_health`] says otherwise.
    Failed(PluginFault),
}

impl Outcome {
    /// The actions, if the call succeeded.
    pub fn actions(&self) -> Option<&[Action]> {
        match self {
            Outcome::Ok(actions) => Some(actions),
            _ => None,
        }
    }

    /// The fault, if the call failed.
    pub fn fault(&self) -> Option<&PluginFault> {
        match self {
            Outcome::Failed(fault) => Some(fault),
            _ => None,
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    /// The guest trapped: a panic, `unreachable`, stack overflow, out-of-bounds access, a bad
    /// value crossing the boundary, ...
    #[error("plugin trapped: {message}")]
    Trap {
        /// wasmtime's description, plus the plugin's last stderr line when it wrote one (a
        /// Rust panic message).
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin exceeded its {deadline_ms} ms deadline")]
    Timeout {
        /// The deadline that was exceeded.
        deadline_ms: u32,
    },
    /// The instance tried to grow its memory past its limit.
    #[error("plugin exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The limit.
        limit_bytes: u64,
    },
    /// The plugin returned (or tried to hand the host) more data than allowed.
    #[error("plugin output over its limit: {detail}")]
    OutputLimit {
        /// Which limit, and by how much.
        detail: String,
    },
    /// The call used up its fuel budget.
    #[error("plugin used up its fuel budget of {budget}")]
    FuelExhausted {
        /// The budget.
        budget: u64,
    },
    /// The plugin reported a failure itself (`plugin-error::failed`, or `config` from
    /// `on-message`).
    #[error("plugin failed: {0}")]
    Error(String),
    /// A fresh instance's `init` refused its configuration (`plugin-error`) or could not start.
    #[error("plugin init failed: {0}")]
    Init(String),
    /// The version is suspended after too many consecutive failures; not called.
    #[error("plugin version is suspended: {reason}")]
    Suspended {
        /// Why (the last failures).
        reason: String,
    },
    /// Nothing to call: unknown plugin, no active version, or the host is out of instance
    /// slots. Not the plugin's fault.
    #[error("plugin unavailable: {0}")]
    Unavailable(String),
}

/// A fault's kind, for counting (`kind` label of `shoal_plugin_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// [`PluginFault::Trap`].
    Trap,
    /// [`PluginFault::Timeout`].
    Timeout,
    /// [`PluginFault::MemoryLimit`].
    MemoryLimit,
    /// [`PluginFault::OutputLimit`].
    OutputLimit,
    /// [`PluginFault::FuelExhausted`].
    FuelExhausted,
    /// [`PluginFault::Error`].
    Error,
    /// [`PluginFault::Init`].
    Init,
    /// [`PluginFault::Suspended`].
    Suspended,
    /// [`PluginFault::Unavailable`].
    Unavailable,
}

impl FaultKind {
    /// Every kind, in label order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Trap,
        FaultKind::Timeout,
        FaultKind::MemoryLimit,
        FaultKind::OutputLimit,
        FaultKind::FuelExhausted,
        FaultKind::Error,
        FaultKind::Init,
        FaultKind::Suspended,
        FaultKind::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::MemoryLimit => "memory_limit",
            FaultKind::OutputLimit => "output_limit",
            FaultKind::FuelExhausted => "fuel_exhausted",
            FaultKind::Error => "error",
            FaultKind::Init => "init",
            FaultKind::Suspended => "suspended",
            FaultKind::Unavailable => "unavailable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl PluginFault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            PluginFault::Trap { .. } => FaultKind::Trap,
            PluginFault::Timeout { .. } => FaultKind::Timeout,
            PluginFault::MemoryLimit { .. } => FaultKind::MemoryLimit,
            PluginFault::OutputLimit { .. } => FaultKind::OutputLimit,
            PluginFault::FuelExhausted { .. } => FaultKind::FuelExhausted,
            PluginFault::Error(_) => FaultKind::Error,
            PluginFault::Init(_) => FaultKind::Init,
            PluginFault::Suspended { .. } => FaultKind::Suspended,
            PluginFault::Unavailable(_) => FaultKind::Unavailable,
        }
    }

    /// Whether this fault counts towards suspending the version (everything the plugin did;
    /// not "suspended" or "unavailable", which are the host's answers).
    pub fn counts_against_health(&self) -> bool {
        !matches!(self, PluginFault::Suspended { .. } | PluginFault::Unavailable(_))
    }
}
