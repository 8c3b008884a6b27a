//! Compiling policies for one connection, and the allocation-free check on the message path.

use std::fmt;

use crate::policy::action::{Action, ResourceType};
use crate::policy::condition::Condition;
use crate::policy::document::{Effect, Policy};
use crate::policy::glob::{self, Matcher, Tok};
use crate::policy::json::quote;
use crate::policy::vars::{Unresolved, VarContext};

/// The ARN namespace of this deployment: resources are
/// `arn:{partition}:iot:{region}:{account}:{type}/{name}`.
///
/// Policy resources are matched against full ARNs, so a policy written for another region or
/// account (`arn:aws:iot:eu-west-1:123456789012:topic/x`) matches nothing here;
/// [`Policy::lint`] reports such resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArnConfig {
    partition: String,
    region: String,
    account: String,
    prefix: String,
}

/// An invalid [`ArnConfig`] field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArnConfigError(String);

impl fmt::Display for ArnConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArnConfigError {}

impl ArnConfig {
    /// The default region, `us-east-1`.
    pub const DEFAULT_REGION: &'static str = "us-east-1";
    /// The default account, `000000000000`.
    pub const DEFAULT_ACCOUNT: &'static str = "000000000000";
    /// The default partition, `aws`.
    pub const DEFAULT_PARTITION: &'static str = "aws";

    /// An ARN namespace in the `aws` partition. Each field must be 1-64 ASCII letters, digits
    /// or `-`.
    pub fn new(region: &str, account: &str) -> Result<ArnConfig, ArnConfigError> {
        ArnConfig::with_partition(ArnConfig::DEFAULT_PARTITION, region, account)
    }

    /// An ARN namespace in another partition (`aws-cn`, `aws-us-gov`, …).
    pub fn with_partition(partition: &str, region: &str, account: &str) -> Result<ArnConfig, ArnConfigError> {
        for (what, v) in [("partition", partition), ("region", region), ("account", account)] {
            let ok =
                !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(ArnConfigError(format!(
                    "invalid ARN {what} {}: expected 1-64 ASCII letters, digits or '-'",
                    quote(v)
                )));
            }
        }
        Ok(ArnConfig {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            prefix: format!("arn:{partition}:iot:{region}:{account}:"),
        })
    }

    /// The partition.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// `arn:{partition}:iot:{region}:{account}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full resource string an action is checked against: the ARN
    /// `arn:…:{type}/{name}`, or `*` for the actions without resource-level permissions.
    pub fn resource_arn(&self, action: Action, name: &str) -> String {
        match action.resource_type().arn_type() {
            Some(t) => format!("{}{t}/{name}", self.prefix),
            None => "*".to_owned(),
        }
    }

    /// What every resource of `action` starts with (`*` for [`ResourceType::All`]).
    fn action_prefix(&self, action: Action) -> String {
        match action.resource_type().arn_type() {
            Some(t) => format!("{}{t}/", self.prefix),
            None => "*".to_owned(),
        }
    }
}

impl Default for ArnConfig {
    fn default() -> Self {
        let (p, r, a) = (
            ArnConfig::DEFAULT_PARTITION,
            ArnConfig::DEFAULT_REGION,
            ArnConfig::DEFAULT_ACCOUNT,
        );
        ArnConfig {
            partition: p.to_owned(),
            region: r.to_owned(),
            account: a.to_owned(),
            prefix: format!("arn:{p}:iot:{r}:{a}:"),
        }
    }
}

/// Identifies a statement, for decisions and log lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRef {
    /// The policy's name.
    pub policy_name: String,
    /// The policy's version id.
    pub policy_version: String,
    /// The statement's zero-based index in `Statement` (as in `$.Statement[N]`).
    pub statement_index: usize,
    /// The statement's `Sid`, if any.
    pub sid: Option<String>,
    /// The statement's effect.
    pub effect: Effect,
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement {}", self.statement_index)?;
        if let Some(sid) = &self.sid {
            write!(f, " (Sid {})", quote(sid))?;
        }
        write!(
            f,
            " of policy {} version {}",
            quote(&self.policy_name),
            quote(&self.policy_version)
        )
    }
}

/// The outcome of a check, and which statement decided it.
///
/// `by` is the first matching Deny statement (explicit deny), else the first matching Allow
/// statement, in the order the policies and their statements were given; `None` with
/// `allowed == false` is the default deny ("no statement allowed").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The deciding statement; `None` for the default deny.
    pub by: Option<&'a StatementRef>,
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.allowed, self.by) {
            (true, Some(s)) => write!(f, "allowed by {s}"),
            (true, None) => f.write_str("allowed"),
            (false, Some(s)) => write!(f, "denied by {s}"),
            (false, None) => f.write_str("denied: no statement allowed"),
        }
    }
}

/// Something [`CompiledPolicies::new`] left out, worth logging when a request is denied: a
/// statement whose condition does not hold for this connection, or a resource whose policy
/// variable could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileNote {
    /// The statement concerned.
    pub statement: StatementRef,
    /// What was left out and why.
    pub message: String,
}

impl fmt::Display for CompileNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.statement, self.message)
    }
}

/// A resource pattern with its variables substituted, or why that failed.
type Instantiated = Result<Vec<Tok>, Unresolved>;

/// The statements that apply to one action, as (matcher over the resource name, statement).
#[derive(Clone, Debug, Default)]
pub(crate) struct ActionTable {
    pub(crate) deny: Vec<(Matcher, u32)>,
    pub(crate) allow: Vec<(Matcher, u32)>,
    /// The action has no resource-level permissions: the resource name is ignored.
    ignores_resource: bool,
}

/// The policies of one connection, compiled for fast checks.
///
/// Built once per connection (at CONNECT, and again when the policies, the thing or the
/// certificate change): conditions are evaluated, policy variables substituted and resource
/// patterns partially evaluated against this deployment's ARN prefix, per action. A
/// [`check`](CompiledPolicies::check) then only matches the resource name against a few
/// precompiled matchers, without allocating.
#[derive(Clone, Debug)]
pub struct CompiledPolicies {
    refs: Vec<StatementRef>,
    pub(crate) tables: Vec<ActionTable>,
    notes: Vec<CompileNote>,
}

impl CompiledPolicies {
    /// Compiles `policies` — `(name, version, policy)` in evaluation order — for a connection
    /// described by `ctx`, in the ARN namespace `arn`.
    pub fn new(arn: &ArnConfig, policies: &[(&str, &str, &Policy)], ctx: &VarContext) -> CompiledPolicies {
        let mut refs = Vec::new();
        let mut notes = Vec::new();
        let mut tables: Vec<ActionTable> = Action::ALL
            .iter()
            .map(|a| ActionTable {
                ignores_resource: a.resource_type() == ResourceType::All,
                ..ActionTable::default()
            })
            .collect();
        let prefixes: Vec<String> = Action::ALL.iter().map(|a| arn.action_prefix(*a)).collect();

        for (name, version, policy) in policies {
            for (index, statement) in policy.statements().iter().enumerate() {
                let sref = StatementRef {
                    policy_name: (*name).to_owned(),
                    policy_version: (*version).to_owned(),
                    statement_index: index,
                    sid: statement.sid.clone(),
                    effect: statement.effect,
                };
                let Ok(id) = u32::try_from(refs.len()) else {
                    // 4 billion statements: cannot happen with 2048-character policies.
                    break;
                };
                // Each resource instantiated at most twice: plain, and MQTT-strict (topics).
                let mut instantiated: Vec<[Option<Instantiated>; 2]> =
                    vec![[None, None]; statement.resources.len()];
                let mut statement_notes: Vec<String> = Vec::new();
                let covered: Vec<Action> = Action::ALL
                    .into_iter()
                    .filter(|a| statement.actions.covers(*a))
                    .collect();
                let mut unmet: Vec<(Action, &Condition)> = Vec::new();
                // The statement's matchers per resource type (actions of one type share them).
                let mut by_type: Vec<(ResourceType, Vec<Matcher>)> = Vec::new();
                for &action in &covered {
                    // Conditions are evaluated now: their keys are fixed for the connection
                    // (iot:ConnectAttributes is fixed for each action).
                    if let Some(failed) = statement
                        .conditions
                        .iter()
                        .find(|c| !c.evaluate(ctx, statement.effect, action))
                    {
                        unmet.push((action, failed));
                        continue;
                    }
                    let resource_type = action.resource_type();
                    let matchers = match by_type.iter().find(|(t, _)| *t == resource_type) {
                        Some((_, m)) => m.clone(),
                        None => {
                            let strict =
                                matches!(resource_type, ResourceType::Topic | ResourceType::TopicFilter);
                            let mut matchers: Vec<Matcher> = Vec::new();
                            for (ri, resource) in statement.resources.iter().enumerate() {
                                let slot = &mut instantiated[ri][usize::from(strict)];
                                match slot.get_or_insert_with(|| resource.template.instantiate(ctx, strict)) {
                                    Ok(toks) => {
                                        for residual in glob::residuals(toks, &prefixes[action.index()]) {
                                            let m = Matcher::new(residual);
                                            if !matchers.contains(&m) {
                                                matchers.push(m);
                                            }
                                        }
                                    }
                                    Err(u) => {
                                        let msg = format!(
                                            "resource {} not applied: ${{{}}} is unresolvable: {}",
                                            quote(resource.as_str()),
                                            u.variable,
                                            u.reason
                                        );
                                        if !statement_notes.contains(&msg) {
                                            statement_notes.push(msg);
                                        }
                                    }
                                }
                            }
                            if matchers.contains(&Matcher::Any) {
                                matchers = vec![Matcher::Any];
                            }
                            by_type.push((resource_type, matchers.clone()));
                            matchers
                        }
                    };
                    let table = &mut tables[action.index()];
                    let list = match statement.effect {
                        Effect::Deny => &mut table.deny,
                        Effect::Allow => &mut table.allow,
                    };
                    list.extend(matchers.into_iter().map(|m| (m, id)));
                }
                if let Some((_, failed)) = unmet.first() {
                    let scope = if unmet.len() == covered.len() {
                        String::new()
                    } else {
                        let actions: Vec<String> = unmet.iter().map(|(a, _)| a.to_string()).collect();
                        format!(" to {}", actions.join(", "))
                    };
                    statement_notes.insert(
                        0,
                        format!("not applied{scope}: condition {failed} does not hold for this connection"),
                    );
                }
                notes.extend(statement_notes.into_iter().map(|message| CompileNote {
                    statement: sref.clone(),
                    message,
                }));
                refs.push(sref);
            }
        }
        CompiledPolicies { refs, tables, notes }
    }

    /// Decides whether `action` is allowed on the resource named `resource`: the part of the
    /// ARN after `{type}/` — the client id for Connect, the topic for Publish/Receive/
    /// RetainPublish/GetRetainedMessage, the topic filter for Subscribe, `thing` or
    /// `thing/shadowName` for the shadow actions. Ignored for the actions whose only resource
    /// is `*` (ListRetainedMessages, ListNamedShadowsForThing).
    ///
    /// Explicit Deny wins; otherwise any Allow; otherwise the default deny. Does not allocate.
    #[inline]
    pub fn check(&self, action: Action, resource: &str) -> Decision<'_> {
        let table = &self.tables[action.index()];
        let resource = if table.ignores_resource { "" } else { resource };
        for (m, id) in &table.deny {
            if m.matches(resource) {
                return Decision {
                    allowed: false,
                    by: self.refs.get(*id as usize),
                };
            }
        }
        for (m, id) in &table.allow {
            if m.matches(resource) {
                return Decision {
                    allowed: true,
                    by: self.refs.get(*id as usize),
                };
            }
        }
        Decision {
            allowed: false,
            by: None,
        }
    }

    /// Shorthand for `check(action, resource).allowed`.
    #[inline]
    pub fn is_allowed(&self, action: Action, resource: &str) -> bool {
        self.check(action, resource).allowed
    }

    /// Statements and resources left out at compile time (unmet conditions, unresolvable
    /// variables), for diagnosing a "no statement allowed".
    pub fn notes(&self) -> &[CompileNote] {
        &self.notes
    }

    /// Every statement of the compiled policies, in evaluation order.
    pub fn statements(&self) -> &[StatementRef] {
        &self.refs
    }
}

/// A warning about a valid policy that will not do what its author probably meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLint {
    /// Where: `$.Statement[i].Resource[j]` (indices even where the document used a single
    /// object or string).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyLint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Policy {
    /// Finds resources that can never match in the ARN namespace `arn`, for any connection:
    /// resources of another region, account or partition, and resources whose type fits none
    /// of the statement's actions (e.g. `iot:Subscribe` on `topic/…` instead of
    /// `topicfilter/…`). Such policies are valid, but are almost certainly mistakes.
    pub fn lint(&self, arn: &ArnConfig) -> Vec<PolicyLint> {
        let mut out = Vec::new();
        for (si, statement) in self.statements().iter().enumerate() {
            let actions: Vec<Action> = Action::ALL
                .into_iter()
                .filter(|a| statement.actions.covers(*a))
                .collect();
            for (ri, resource) in statement.resources.iter().enumerate() {
                let path = format!("$.Statement[{si}].Resource[{ri}]");
                let pattern = resource.template.widened();
                if pattern == [Tok::Star] {
                    continue;
                }
                if glob::residuals(&pattern, arn.prefix()).is_empty() {
                    out.push(PolicyLint {
                        path,
                        message: format!(
                            "{} can never match here: resource ARNs in this deployment begin with {}",
                            quote(resource.as_str()),
                            quote(arn.prefix())
                        ),
                    });
                    continue;
                }
                let fits = actions
                    .iter()
                    .any(|a| !glob::residuals(&pattern, &arn.action_prefix(*a)).is_empty());
                if !fits {
                    let expected: Vec<String> = actions
                        .iter()
                        .map(|a| match a.resource_type().arn_type() {
                            Some(t) => format!("{a} is checked against {t}/…"),
                            None => format!("{a} is checked against \"*\" only"),
                        })
                        .collect();
                    out.push(PolicyLint {
                        path,
                        message: format!(
                            "{} matches none of the statement's actions ({})",
                            quote(resource.as_str()),
                            expected.join("; ")
                        ),
                    });
                }
            }
        }
        out
    }
}
