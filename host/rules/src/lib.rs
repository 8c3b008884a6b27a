//! Shoal's rules engine.
//!
//! [`sql`] is the AWS IoT SQL dialect (version 2016-03-23 semantics) as a pure library: it
//! parses a rule's `SELECT ... FROM '<topic filter>' WHERE ...` once into a typed tree (syntax
//! errors carry a line and column), matches topics against the rule's filter, and evaluates
//! the statement over one message (payload, topic, client id, principal, clock, thing shadows)
//! into the output document the rule's actions receive. Substitution templates (`${expr}` in
//! action fields) live beside it. It does no I/O: the only way out is the [`sql::Services`]
//! trait the engine implements (thing shadows, the clock, uuids).
//!
//! The supported grammar, functions, types, conversion rules and every place where AWS's
//! documentation is ambiguous are written down in `docs/IOT_SQL.md`.
//!
//! The engine itself: [`rule`] (definitions in AWS's `TopicRulePayload` shape, compiled and
//! checked), [`engine`] ([`RulesEngine`]: the broker hook, the worker threads, the actions
//! `republish`, `shadow`, `plugin`, `archive` (its writer thread in `archive`, Parquet files in
//! [`parquet_archive`]), `webhook` (its
//! sender in `webhook`), `stream` (the [`stream::StreamStore`] seam and its writer in
//! `stream_sink`) and `email` (the SMTP sender in [`email`]), the error action) and [`store`]
//! (persistence).
#![deny(missing_docs)]

mod archive;
pub mod email;
pub mod engine;
pub mod parquet_archive;
pub mod rule;
pub mod sql;
pub mod store;
pub mod stream;
mod stream_sink;
mod webhook;

pub use email::{SmtpConfig, SmtpTls};
pub use engine::{EngineConfig, EngineDeps, RuleInfo, RuleStats, RulesEngine, WebhookTarget};
pub use rule::{ActionSpec, Rule, RuleError, RuleName, TopicRulePayload};
pub use store::{FileRuleStore, RuleStore, StoredRule};
