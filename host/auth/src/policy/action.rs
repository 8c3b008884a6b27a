//! AWS IoT policy actions (`iot:Connect`, `iot:Publish`, …) and action patterns with wildcards.

use std::fmt;

/// An AWS IoT Core data-plane action that a policy can allow or deny.
///
/// The resource each action is checked against is given by [`Action::resource_type`], following
/// the developer guide's "AWS IoT Core action resources" table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `iot:Connect`: checked on every MQTT CONNECT; resource `client/{clientId}`.
    Connect,
    /// `iot:DeleteConnection`: disconnecting a client through the API; resource `client/{clientId}`.
    DeleteConnection,
    /// `iot:Publish`: checked on every PUBLISH; resource `topic/{topic}`.
    Publish,
    /// `iot:Subscribe`: checked for every filter of a SUBSCRIBE; resource `topicfilter/{filter}`.
    Subscribe,
    /// `iot:Receive`: checked on every delivery to a client; resource `topic/{topic}`.
    Receive,
    /// `iot:RetainPublish`: publishing with the RETAIN flag (also needs `iot:Publish`);
    /// resource `topic/{topic}`.
    RetainPublish,
    /// `iot:GetRetainedMessage`: reading one retained message; resource `topic/{topic}`.
    GetRetainedMessage,
    /// `iot:ListRetainedMessages`: listing retained messages; resource `*` only.
    ListRetainedMessages,
    /// `iot:GetThingShadow`: resource `thing/{thing}` or `thing/{thing}/{shadowName}`.
    GetThingShadow,
    /// `iot:UpdateThingShadow`: resource `thing/{thing}` or `thing/{thing}/{shadowName}`.
    UpdateThingShadow,
    /// `iot:DeleteThingShadow`: resource `thing/{thing}` or `thing/{thing}/{shadowName}`.
    DeleteThingShadow,
    /// `iot:ListNamedShadowsForThing`: resource `*` only.
    ListNamedShadowsForThing,
    /// `iot:DescribeJobExecution` (jobs over HTTPS): resource `thing/{thing}`.
    DescribeJobExecution,
    /// `iot:GetPendingJobExecutions` (jobs over HTTPS): resource `thing/{thing}`.
    GetPendingJobExecutions,
    /// `iot:UpdateJobExecution` (jobs over HTTPS): resource `thing/{thing}`.
    UpdateJobExecution,
    /// `iot:StartNextPendingJobExecution` (jobs over HTTPS): resource `thing/{thing}`.
    StartNextPendingJobExecution,
    /// `iot:AssumeRoleWithCertificate` (credentials provider): resource `rolealias/{alias}`.
    AssumeRoleWithCertificate,
}

/// The kind of resource an action is checked against: the `{type}` in
/// `arn:aws:iot:{region}:{account}:{type}/{name}`, or [`ResourceType::All`] for the actions whose
/// only valid resource is `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `client/{clientId}`.
    Client,
    /// `topic/{topicName}`.
    Topic,
    /// `topicfilter/{topicFilter}`.
    TopicFilter,
    /// `thing/{thingName}` or `thing/{thingName}/{shadowName}`.
    Thing,
    /// `rolealias/{roleAlias}`.
    RoleAlias,
    /// No resource-level permission: only the policy resource `*` matches.
    All,
}

impl ResourceType {
    /// The ARN resource-type word (`"topic"`, …), or `None` for [`ResourceType::All`].
    pub fn arn_type(self) -> Option<&'static str> {
        match self {
            ResourceType::Client => Some("client"),
            ResourceType::Topic => Some("topic"),
            ResourceType::TopicFilter => Some("topicfilter"),
            ResourceType::Thing => Some("thing"),
            ResourceType::RoleAlias => Some("rolealias"),
            ResourceType::All => None,
        }
    }

    /// The resource-type words a policy resource ARN may use.
    pub const ARN_TYPES: [&'static str; 5] = ["client", "topic", "topicfilter", "thing", "rolealias"];
}

impl Action {
    /// Every action, in declaration order (the order of [`Action::index`]).
    pub const ALL: [Action; 17] = [
        Action::Connect,
        Action::DeleteConnection,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::RetainPublish,
        Action::GetRetainedMessage,
        Action::ListRetainedMessages,
        Action::GetThingShadow,
        Action::UpdateThingShadow,
        Action::DeleteThingShadow,
        Action::ListNamedShadowsForThing,
        Action::DescribeJobExecution,
        Action::GetPendingJobExecutions,
        Action::UpdateJobExecution,
        Action::StartNextPendingJobExecution,
        Action::AssumeRoleWithCertificate,
    ];

    /// The number of actions.
    pub const COUNT: usize = Action::ALL.len();

    /// A dense index in `0..Action::COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The action name without the service prefix, e.g. `"Publish"`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "Connect",
            Action::DeleteConnection => "DeleteConnection",
            Action::Publish => "Publish",
            Action::Subscribe => "Subscribe",
            Action::Receive => "Receive",
            Action::RetainPublish => "RetainPublish",
            Action::GetRetainedMessage => "GetRetainedMessage",
            Action::ListRetainedMessages => "ListRetainedMessages",
            Action::GetThingShadow => "GetThingShadow",
            Action::UpdateThingShadow => "UpdateThingShadow",
            Action::DeleteThingShadow => "DeleteThingShadow",
            Action::ListNamedShadowsForThing => "ListNamedShadowsForThing",
            Action::DescribeJobExecution => "DescribeJobExecution",
            Action::GetPendingJobExecutions => "GetPendingJobExecutions",
            Action::UpdateJobExecution => "UpdateJobExecution",
            Action::StartNextPendingJobExecution => "StartNextPendingJobExecution",
            Action::AssumeRoleWithCertificate => "AssumeRoleWithCertificate",
        }
    }

    /// The resource this action is checked against.
    pub fn resource_type(self) -> ResourceType {
        match self {
            Action::Connect | Action::DeleteConnection => ResourceType::Client,
            Action::Publish | Action::Receive | Action::RetainPublish | Action::GetRetainedMessage => {
                ResourceType::Topic
            }
            Action::Subscribe => ResourceType::TopicFilter,
            Action::ListRetainedMessages | Action::ListNamedShadowsForThing => ResourceType::All,
            Action::GetThingShadow
            | Action::UpdateThingShadow
            | Action::DeleteThingShadow
            | Action::DescribeJobExecution
            | Action::GetPendingJobExecutions
            | Action::UpdateJobExecution
            | Action::StartNextPendingJobExecution => ResourceType::Thing,
            Action::AssumeRoleWithCertificate => ResourceType::RoleAlias,
        }
    }

    /// Looks up an action by its policy name, e.g. `"iot:Publish"`. Like IAM, the service prefix
    /// and the action name are case-insensitive (`"IOT:publish"` is `iot:Publish`).
    pub fn from_policy_name(name: &str) -> Option<Action> {
        let (service, action) = name.split_once(':')?;
        if !service.eq_ignore_ascii_case("iot") {
            return None;
        }
        Action::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(action))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iot:{}", self.name())
    }
}

/// One entry of a statement's `Action` (or `NotAction`) list: an exact action (`iot:Publish`), an
/// action wildcard (`iot:*`, `iot:*Shadow`, `iot:Get?hingShadow`), or `*` (every action).
///
/// Matching is case-insensitive, as in IAM. The set of actions a pattern covers is computed when
/// the policy is parsed; a pattern that covers no known action is rejected (it is a typo, or an
/// action Shoal does not know, and either way it would silently grant or deny nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionPattern {
    text: String,
    covers: u32,
}

const _: () = assert!(Action::COUNT <= 32, "ActionPattern::covers is a u32 bit set");

impl ActionPattern {
    /// Parses one action pattern, returning the reason on failure.
    pub fn parse(text: &str) -> Result<ActionPattern, String> {
        if text == "*" {
            return Ok(ActionPattern {
                text: text.to_owned(),
                covers: all_bits(),
            });
        }
        let Some((service, name)) = text.split_once(':') else {
            return Err(format!(
                "{} is not an action: expected \"iot:<Action>\", \"iot:*\" or \"*\"",
                crate::policy::json::quote(text)
            ));
        };
        if service.eq_ignore_ascii_case("iotjobsdata") {
            return Err(format!(
                "{} is not supported: Shoal knows the job actions under the iot: prefix \
                 (e.g. iot:DescribeJobExecution)",
                crate::policy::json::quote(text)
            ));
        }
        if !service.eq_ignore_ascii_case("iot") {
            return Err(format!(
                "{} is not an AWS IoT action: the service prefix must be \"iot\"",
                crate::policy::json::quote(text)
            ));
        }
        if name.is_empty() {
            return Err("empty action name after \"iot:\"".to_owned());
        }
        let wildcard = name.contains(['*', '?']);
        let lower: Vec<char> = name.to_lowercase().chars().collect();
        let mut covers = 0u32;
        for action in Action::ALL {
            let candidate: Vec<char> = action.name().to_lowercase().chars().collect();
            if simple_glob(&lower, &candidate, wildcard) {
                covers |= 1 << action.index();
            }
        }
        if covers == 0 {
            let known: Vec<String> = Action::ALL.iter().map(|a| a.to_string()).collect();
            return Err(if wildcard {
                format!(
                    "action wildcard {} matches no AWS IoT action; known actions: {}",
                    crate::policy::json::quote(text),
                    known.join(", ")
                )
            } else {
                format!(
                    "unknown action {}; known actions: {}",
                    crate::policy::json::quote(text),
                    known.join(", ")
                )
            });
        }
        Ok(ActionPattern {
            text: text.to_owned(),
            covers,
        })
    }

    /// Whether this pattern covers `action`.
    pub fn matches(&self, action: Action) -> bool {
        self.covers & (1 << action.index()) != 0
    }

    /// The pattern as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The actions this pattern covers.
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        Action::ALL.into_iter().filter(|a| self.matches(*a))
    }
}

impl fmt::Display for ActionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn all_bits() -> u32 {
    (1u32 << Action::COUNT) - 1
}

/// A glob over characters: `*` is any sequence, `?` one character (when `wildcards`); else equality.
fn simple_glob(pattern: &[char], text: &[char], wildcards: bool) -> bool {
    if !wildcards {
        return pattern == text;
    }
    let (mut p, mut t) = (0usize, 0usize);
    let mut back: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    back = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                '?' if t < text.len() => {
                    p += 1;
                    t += 1;
                    continue;
                }
                c if t < text.len() && c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        } else if t == text.len() {
            return true;
        }
        match back {
            Some((bp, bt)) if bt < text.len() => {
                back = Some((bp, bt + 1));
                p = bp;
                t = bt + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(p: &str) -> Vec<Action> {
        ActionPattern::parse(p).unwrap().actions().collect()
    }

    #[test]
    fn exact_and_case_insensitive() {
        assert_eq!(covered("iot:Publish"), [Action::Publish]);
        assert_eq!(covered("IOT:publish"), [Action::Publish]);
        assert_eq!(covered("iot:RETAINPUBLISH"), [Action::RetainPublish]);
        assert_eq!(Action::from_policy_name("Iot:receive"), Some(Action::Receive));
        assert_eq!(Action::from_policy_name("iot:Nope"), None);
    }

    #[test]
    fn wildcards() {
        assert_eq!(covered("iot:*").len(), Action::COUNT);
        assert_eq!(covered("*").len(), Action::COUNT);
        assert_eq!(
            covered("iot:*Shadow"),
            [
                Action::GetThingShadow,
                Action::UpdateThingShadow,
                Action::DeleteThingShadow
            ]
        );
        assert_eq!(covered("iot:*ThingShadow").len(), 3);
        assert_eq!(covered("iot:*shadow*").len(), 4);
        assert_eq!(
            covered("iot:Get*"),
            [
                Action::GetRetainedMessage,
                Action::GetThingShadow,
                Action::GetPendingJobExecutions
            ]
        );
        assert_eq!(covered("iot:?ublish"), [Action::Publish]);
        assert_eq!(covered("iot:Re*"), [Action::Receive, Action::RetainPublish]);
    }

    #[test]
    fn rejects() {
        assert!(
            ActionPattern::parse("iot:Publsh")
                .unwrap_err()
                .contains("unknown action")
        );
        assert!(
            ActionPattern::parse("iot:Foo*")
                .unwrap_err()
                .contains("matches no AWS IoT action")
        );
        assert!(
            ActionPattern::parse("s3:GetObject")
                .unwrap_err()
                .contains("service prefix")
        );
        assert!(ActionPattern::parse("Publish").unwrap_err().contains("expected"));
        assert!(ActionPattern::parse("iot:").is_err());
        assert!(ActionPattern::parse("iot:?").is_err());
        assert!(ActionPattern::parse("iotjobsdata:DescribeJobExecution").is_err());
    }
}
