use std::fmt;

/// Why a plugin declined a configuration or a message.
///
/// The host tells these apart: a [`Rejected`](PluginError::Rejected) message goes to the rule's
/// error action and the plugin stays healthy; [`Failed`](PluginError::Failed) counts against the
/// plugin's health; [`Config`](PluginError::Config) (from [`Plugin::init`](crate::Plugin::init))
/// marks the configuration unusable. A panic is none of these: it traps, and the host discards
/// the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// This message is not acceptable (bad payload, missing field). A business decision, not a
    /// fault.
    Rejected(String),
    /// The configuration is unusable.
    Config(String),
    /// The plugin could not do its job (a fault it detected itself, e.g. the key-value store
    /// was unavailable).
    Failed(String),
}

impl PluginError {
    /// A [`PluginError::Rejected`]: this message is not acceptable.
    pub fn rejected(reason: impl Into<String>) -> Self {
        PluginError::Rejected(reason.into())
    }

    /// A [`PluginError::Config`]: the configuration is unusable.
    pub fn config(reason: impl Into<String>) -> Self {
        PluginError::Config(reason.into())
    }

    /// A [`PluginError::Failed`]: the plugin could not do its job.
    pub fn failed(reason: impl Into<String>) -> Self {
        PluginError::Failed(reason.into())
    }

    /// The reason text, whatever the kind.
    pub fn reason(&self) -> &str {
        match self {
            PluginError::Rejected(r) | PluginError::Config(r) | PluginError::Failed(r) => r,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Rejected(r) => write!(f, "rejected: {r}"),
            PluginError::Config(r) => write!(f, "bad configuration: {r}"),
            PluginError::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// A key-value failure inside `on_message` is the plugin failing to do its job.
impl From<crate::kv::Error> for PluginError {
    fn from(e: crate::kv::Error) -> Self {
        PluginError::Failed(format!("key-value store: {e}"))
    }
}

/// A shadow read failure inside `on_message` is the plugin failing to do its job.
impl From<crate::shadow::Error> for PluginError {
    fn from(e: crate::shadow::Error) -> Self {
        PluginError::Failed(format!("shadow: {e}"))
    }
}
