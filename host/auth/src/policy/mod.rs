//! The AWS IoT Core policy engine: parse and validate policy documents, substitute policy
//! variables for a connection, and check actions on resources.
//!
//! ```
//! use shoal_auth::policy::{Action, ArnConfig, CompiledPolicies, Policy, VarContext};
//!
//! let policy = Policy::parse(r#"{
//!     "Version": "2012-10-17",
//!     "Statement": [
//!         {"Effect": "Allow", "Action": "iot:Connect",
//!          "Resource": "arn:aws:iot:us-east-1:000000000000:client/${iot:ClientId}"},
//!         {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
//!          "Resource": "arn:aws:iot:us-east-1:000000000000:topic/my/${iot:ClientId}/*"},
//!         {"Effect": "Deny", "Action": "iot:Publish",
//!          "Resource": "arn:aws:iot:us-east-1:000000000000:topic/my/${iot:ClientId}/bar"}
//!     ]
//! }"#).expect("valid policy");
//!
//! let ctx = VarContext { client_id: Some("dev1".into()), ..Default::default() };
//! let compiled = CompiledPolicies::new(&ArnConfig::default(), &[("p", "1", &policy)], &ctx);
//! assert!(compiled.check(Action::Publish, "my/dev1/temp").allowed);
//! let denied = compiled.check(Action::Publish, "my/dev1/bar");
//! assert_eq!(denied.to_string(), r#"denied by statement 2 of policy "p" version "1""#);
//! assert_eq!(compiled.check(Action::Publish, "my/dev2/temp").to_string(), "denied: no statement allowed");
//! ```
//!
//! # Semantics (summary; `docs/POLICY_SEMANTICS.md` has the details and the reasons)
//!
//! **Document.** `Version` is required and must be `"2012-10-17"` (`"2008-10-17"` is rejected:
//! it would match `${…}` as literal text). `Statement` is an object or a non-empty array. Each
//! statement has `Effect` (`"Allow"`/`"Deny"`, case-sensitive as in IAM), `Action` *or*
//! `NotAction`, `Resource`, and optionally `Sid` and `Condition`. `NotResource`, `Principal`
//! and `NotPrincipal` are rejected, as are unknown and duplicate keys. The size limit counts
//! characters excluding whitespace (default 2048, [`ParseOptions::max_chars`]). Errors carry a
//! JSON path: `$.Statement[1].Effect: must be "Allow" or "Deny", found "allow"`.
//!
//! **Actions** are case-insensitive (`iot:publish`), may use `*`/`?` wildcards (`iot:*Shadow`),
//! and must cover at least one known action.
//!
//! **Resources** are `*` or `arn:{partition}:iot:{region}:{account}:{type}/{name}` with a known
//! type (`client`, `topic`, `topicfilter`, `thing`, `rolealias`) unless the type is wildcarded.
//! Patterns match the whole request ARN, case-sensitively; `*` is any sequence (it crosses `/`
//! and `:`), `?` exactly one character. MQTT `+` and `#` in a policy are literal characters: a
//! `topicfilter/` resource is a pattern over the literal text of the filter the client
//! subscribes with.
//!
//! **Variables** (`${iot:ClientId}`, `${aws:SourceIp}`, `${iot:Connection.Thing.*}`,
//! `${iot:Certificate.*}`) are allowed in the resource name and in string condition values.
//! Substituted text is always literal: a client id of `*` matches only `*`. For topic and
//! topic-filter resources (Publish, Receive, RetainPublish, GetRetainedMessage, Subscribe), a
//! value containing `+` or `#` makes the resource unresolvable, so a client id of `+` can never
//! subscribe to `my/+` through `topicfilter/my/${iot:ClientId}`. An unresolvable variable (no
//! value, empty value, certificate value with wildcards or over 1024 characters) makes that
//! resource entry match nothing; the statement's other resources still apply.
//!
//! **Conditions**: `String{Equals,NotEquals,EqualsIgnoreCase,NotEqualsIgnoreCase,Like,NotLike}`,
//! `Bool`, `IpAddress`, `NotIpAddress`, `Null`, with `ForAllValues:`/`ForAnyValue:` and
//! `…IfExists`, over the connection-scoped keys (the policy variables, including `.List` forms).
//! Everything else is rejected at parse time, never ignored.
//!
//! **Evaluation**: explicit Deny wins over Allow; otherwise any Allow; otherwise deny. The
//! [`Decision`] names the deciding statement.

mod action;
mod compiled;
mod condition;
mod document;
mod glob;
mod json;
mod vars;

pub use action::{Action, ActionPattern, ResourceType};
pub use compiled::{
    ArnConfig, ArnConfigError, CompileNote, CompiledPolicies, Decision, PolicyLint, StatementRef,
};
pub use condition::Condition;
pub use document::{
    ActionList, DEFAULT_MAX_CHARS, Effect, POLICY_VERSION, ParseOptions, Policy, PolicyError,
    ResourcePattern, Statement,
};
pub use vars::{
    AltNameKind, AltNames, CertificateContext, DistinguishedName, DnAttribute, MAX_CERT_VALUE_CHARS,
    MAX_CERT_VALUES, ThingContext, VarContext,
};

#[cfg(test)]
mod tests;
