//! Parsing and validating AWS IoT policy documents.

use std::fmt;
use std::str::FromStr;

use crate::policy::action::{Action, ActionPattern, ResourceType};
use crate::policy::condition::{Condition, parse_conditions};
use crate::policy::json::{Json, Path, quote};
use crate::policy::vars::{Part, Template};

/// The default limit on a policy document's size: 2048 characters excluding whitespace (AWS
/// IoT's CreatePolicy limit).
pub const DEFAULT_MAX_CHARS: usize = 2048;

/// The only accepted `Version`.
pub const POLICY_VERSION: &str = "2012-10-17";

/// Options for [`Policy::parse_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// The maximum number of characters, not counting whitespace (space, tab, CR, LF) anywhere
    /// in the document. Default [`DEFAULT_MAX_CHARS`].
    pub max_chars: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_chars: DEFAULT_MAX_CHARS,
        }
    }
}

/// Why a policy document was rejected: where (a JSON path such as `$.Statement[1].Effect`) and
/// why. Displays as `$.Statement[1].Effect: must be "Allow" or "Deny", found "allow"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The JSON path of the offending element (`$` for the whole document).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PolicyError {
    pub(crate) fn new(path: &Path, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            path: path.as_str().to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for PolicyError {}

/// A statement's `Effect`. Case-sensitive, as in IAM: `"allow"` is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// `"Allow"`.
    Allow,
    /// `"Deny"`: an explicit deny wins over every Allow.
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
        })
    }
}

/// A statement's `Action` or `NotAction` element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionList {
    /// `Action`: the statement applies to the actions any pattern covers.
    Action(Vec<ActionPattern>),
    /// `NotAction`: the statement applies to every action no pattern covers.
    NotAction(Vec<ActionPattern>),
}

impl ActionList {
    /// Whether the statement applies to `action`.
    pub fn covers(&self, action: Action) -> bool {
        match self {
            ActionList::Action(p) => p.iter().any(|p| p.matches(action)),
            ActionList::NotAction(p) => !p.iter().any(|p| p.matches(action)),
        }
    }
}

/// One entry of a statement's `Resource`: `*`, or an ARN pattern
/// `arn:{partition}:iot:{region}:{account}:{type}/{name}` with `*`/`?` wildcards and, in the
/// name part, `${…}` policy variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePattern {
    text: String,
    pub(crate) template: Template,
}

impl ResourcePattern {
    /// Parses and validates one resource, returning the reason on failure.
    pub fn parse(text: &str) -> Result<ResourcePattern, String> {
        const FORM: &str = "arn:aws:iot:<region>:<account>:<type>/<name>";
        if !text.is_empty() && text.chars().all(|c| c == '*') {
            return Ok(ResourcePattern {
                text: text.to_owned(),
                template: Template {
                    parts: vec![Part::Star],
                },
            });
        }
        if !text.starts_with("arn:") {
            return Err(format!(
                "{} is not \"*\" or an ARN of the form {FORM}",
                quote(text)
            ));
        }
        let template = Template::parse(text, true)?;

        // Walk the ARN character by character: the five colon-separated fields before the
        // resource part, then the resource type up to the first '/'.
        #[derive(PartialEq)]
        enum Ch {
            Lit(char),
            Wild,
            Var,
        }
        let mut chars = Vec::new();
        for part in &template.parts {
            match part {
                Part::Lit(s) => chars.extend(s.chars().map(Ch::Lit)),
                Part::Star | Part::One => chars.push(Ch::Wild),
                Part::Var(_) => chars.push(Ch::Var),
            }
        }
        let var_in_prefix = || {
            format!(
                "{}: policy variables are only allowed in the resource name, after \"<type>/\"",
                quote(text)
            )
        };
        let mut fields: Vec<&[Ch]> = Vec::with_capacity(5);
        let mut start = 0;
        let mut resource_start = None;
        for (i, c) in chars.iter().enumerate() {
            match c {
                Ch::Var => return Err(var_in_prefix()),
                Ch::Lit(':') => {
                    fields.push(&chars[start..i]);
                    start = i + 1;
                    if fields.len() == 5 {
                        resource_start = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(resource_start) = resource_start else {
            return Err(format!(
                "{} is not an ARN of the form {FORM}: it needs six colon-separated parts",
                quote(text)
            ));
        };
        let field_text = |f: &[Ch]| -> String {
            f.iter()
                .map(|c| match c {
                    Ch::Lit(c) => *c,
                    _ => '*',
                })
                .collect()
        };
        if fields[1].is_empty() {
            return Err(format!("{}: empty partition (expected \"aws\")", quote(text)));
        }
        if fields[2].contains(&Ch::Wild) {
            return Err(format!(
                "{}: wildcards are not allowed in the service field (it must be \"iot\")",
                quote(text)
            ));
        }
        if field_text(fields[2]) != "iot" {
            return Err(format!(
                "{}: the service must be \"iot\", found {}",
                quote(text),
                quote(&field_text(fields[2]))
            ));
        }
        let resource = &chars[resource_start..];
        let slash = resource.iter().position(|c| *c == Ch::Lit('/'));
        let type_chars = &resource[..slash.unwrap_or(resource.len())];
        if type_chars.contains(&Ch::Var) {
            return Err(var_in_prefix());
        }
        if !type_chars.contains(&Ch::Wild) {
            let resource_type = field_text(type_chars);
            if !ResourceType::ARN_TYPES.contains(&resource_type.as_str()) {
                return Err(format!(
                    "{}: unknown resource type {} (expected one of {})",
                    quote(text),
                    quote(&resource_type),
                    ResourceType::ARN_TYPES.join(", ")
                ));
            }
            if slash.is_none() {
                return Err(format!(
                    "{}: missing \"/<name>\" after the resource type",
                    quote(text)
                ));
            }
        }
        if resource.contains(&Ch::Var) && slash.is_none() {
            return Err(var_in_prefix());
        }
        Ok(ResourcePattern {
            text: text.to_owned(),
            template,
        })
    }

    /// The resource as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the resource uses policy variables.
    pub fn has_variables(&self) -> bool {
        self.template.vars().next().is_some()
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One statement of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The optional `Sid`.
    pub sid: Option<String>,
    /// `Effect`.
    pub effect: Effect,
    /// `Action` or `NotAction`.
    pub actions: ActionList,
    /// `Resource` (at least one entry).
    pub resources: Vec<ResourcePattern>,
    /// `Condition`, flattened: every condition must hold (empty: unconditional).
    pub conditions: Vec<Condition>,
}

/// A validated AWS IoT policy document.
///
/// Construct with [`Policy::parse`] / [`Policy::parse_with`] (or `str::parse`). See the module
/// documentation of [`crate::policy`] for every accepted and rejected construct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    id: Option<String>,
    statements: Vec<Statement>,
}

impl Policy {
    /// Parses and validates a policy document with the default options (2048-character limit).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, &ParseOptions::default())
    }

    /// Parses and validates a policy document. Returns the first problem found, in document
    /// order, with its JSON path.
    pub fn parse_with(text: &str, options: &ParseOptions) -> Result<Policy, PolicyError> {
        let root = Path::root();
        let size = text
            .chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
            .count();
        if size == 0 {
            return Err(PolicyError::new(&root, "empty policy document"));
        }
        if size > options.max_chars {
            return Err(PolicyError::new(
                &root,
                format!(
                    "policy document is {size} characters long excluding whitespace; the limit is {}",
                    options.max_chars
                ),
            ));
        }
        let json = Json::parse(text).map_err(|e| PolicyError::new(&root, format!("not valid JSON: {e}")))?;
        Policy::from_json(&json)
    }

    fn from_json(json: &Json) -> Result<Policy, PolicyError> {
        let root = Path::root();
        let Json::Object(members) = json else {
            return Err(PolicyError::new(
                &root,
                format!(
                    "a policy document must be a JSON object, found {}",
                    json.describe()
                ),
            ));
        };
        check_members(members, &root)?;
        let mut version = None;
        let mut statement = None;
        let mut id = None;
        for (key, value) in members {
            match key.as_str() {
                "Version" => version = Some(value),
                "Statement" => statement = Some(value),
                "Id" => id = Some(value),
                _ => return Err(unknown_element(&root, key, &["Version", "Id", "Statement"])),
            }
        }
        let version_path = root.key("Version");
        match version {
            None => {
                return Err(PolicyError::new(
                    &root,
                    format!("missing required element \"Version\" (it must be \"{POLICY_VERSION}\")"),
                ));
            }
            Some(Json::String(v)) if v == POLICY_VERSION => {}
            Some(Json::String(v)) if v == "2008-10-17" => {
                return Err(PolicyError::new(
                    &version_path,
                    format!(
                        "must be \"{POLICY_VERSION}\"; \"2008-10-17\" is not accepted because it disables \
                         policy variables (${{...}} would be matched as literal text)"
                    ),
                ));
            }
            Some(other) => {
                return Err(PolicyError::new(
                    &version_path,
                    format!("must be \"{POLICY_VERSION}\", found {}", other.describe()),
                ));
            }
        }
        let id = match id {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(PolicyError::new(
                    &root.key("Id"),
                    format!("must be a string, found {}", other.describe()),
                ));
            }
        };
        let statement_path = root.key("Statement");
        let statements = match statement {
            None => return Err(PolicyError::new(&root, "missing required element \"Statement\"")),
            Some(Json::Object(m)) => vec![parse_statement(m, &statement_path)?],
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(PolicyError::new(
                    &statement_path,
                    "must contain at least one statement",
                ));
            }
            Some(Json::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = statement_path.index(i);
                    let Json::Object(m) = item else {
                        return Err(PolicyError::new(
                            &path,
                            format!("a statement must be an object, found {}", item.describe()),
                        ));
                    };
                    out.push(parse_statement(m, &path)?);
                }
                out
            }
            Some(other) => {
                return Err(PolicyError::new(
                    &statement_path,
                    format!(
                        "must be a statement object or an array of them, found {}",
                        other.describe()
                    ),
                ));
            }
        };
        for (i, s) in statements.iter().enumerate() {
            let Some(sid) = &s.sid else { continue };
            if let Some(j) = statements[..i].iter().position(|o| o.sid.as_ref() == Some(sid)) {
                let path = if matches!(statement, Some(Json::Array(_))) {
                    statement_path.index(i).key("Sid")
                } else {
                    statement_path.key("Sid")
                };
                return Err(PolicyError::new(
                    &path,
                    format!("duplicate Sid {} (also used by $.Statement[{j}])", quote(sid)),
                ));
            }
        }
        Ok(Policy { id, statements })
    }

    /// The `Version` (always [`POLICY_VERSION`]).
    pub fn version(&self) -> &'static str {
        POLICY_VERSION
    }

    /// The optional `Id`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The statements, in document order (a single statement object is one statement).
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Policy, PolicyError> {
        Policy::parse(s)
    }
}

/// Rejects duplicate keys in an object (serde_json would silently keep the last one, so
/// `{"Effect": "Deny", "Effect": "Allow"}` would be an Allow).
pub(crate) fn check_members(members: &[(String, Json)], path: &Path) -> Result<(), PolicyError> {
    for (i, (key, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(k, _)| k == key) {
            return Err(PolicyError::new(&path.key(key), "duplicate key"));
        }
    }
    Ok(())
}

fn unknown_element(path: &Path, key: &str, allowed: &[&str]) -> PolicyError {
    let reason = match allowed.iter().find(|a| a.eq_ignore_ascii_case(key)) {
        Some(a) => format!(
            "unknown element {} (element names are case-sensitive: did you mean \"{a}\"?)",
            quote(key)
        ),
        None => format!("unknown element {} (allowed: {})", quote(key), allowed.join(", ")),
    };
    PolicyError::new(&path.key(key), reason)
}

/// A string, or a non-empty array of strings, each parsed by `parse`.
fn parse_list<T>(
    json: &Json,
    path: &Path,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, PolicyError> {
    match json {
        Json::String(s) => Ok(vec![parse(s).map_err(|r| PolicyError::new(path, r))?]),
        Json::Array(items) if items.is_empty() => Err(PolicyError::new(path, "must not be an empty array")),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let p = path.index(i);
                match item {
                    Json::String(s) => parse(s).map_err(|r| PolicyError::new(&p, r)),
                    other => Err(PolicyError::new(
                        &p,
                        format!("must be a string, found {}", other.describe()),
                    )),
                }
            })
            .collect(),
        other => Err(PolicyError::new(
            path,
            format!(
                "must be a string or an array of strings, found {}",
                other.describe()
            ),
        )),
    }
}

fn parse_statement(members: &[(String, Json)], path: &Path) -> Result<Statement, PolicyError> {
    const ALLOWED: [&str; 6] = ["Sid", "Effect", "Action", "NotAction", "Resource", "Condition"];
    check_members(members, path)?;
    let (mut sid, mut effect, mut action, mut not_action, mut resource, mut condition) =
        (None, None, None, None, None, None);
    for (key, value) in members {
        match key.as_str() {
            "Sid" => sid = Some(value),
            "Effect" => effect = Some(value),
            "Action" => action = Some(value),
            "NotAction" => not_action = Some(value),
            "Resource" => resource = Some(value),
            "Condition" => condition = Some(value),
            "NotResource" => {
                return Err(PolicyError::new(
                    &path.key(key),
                    "NotResource is not supported by Shoal: list the resources under \"Resource\", or add a \
                     Deny statement for the exceptions",
                ));
            }
            "Principal" | "NotPrincipal" => {
                return Err(PolicyError::new(
                    &path.key(key),
                    format!(
                        "{key} is not allowed in AWS IoT policies: the principal is whatever the policy is \
                         attached to"
                    ),
                ));
            }
            _ => return Err(unknown_element(path, key, &ALLOWED)),
        }
    }
    let sid = match sid {
        None => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(PolicyError::new(
                &path.key("Sid"),
                format!("must be a string, found {}", other.describe()),
            ));
        }
    };
    let effect_path = path.key("Effect");
    let effect = match effect {
        None => return Err(PolicyError::new(path, "missing required element \"Effect\"")),
        Some(Json::String(s)) if s == "Allow" => Effect::Allow,
        Some(Json::String(s)) if s == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(PolicyError::new(
                &effect_path,
                format!("must be \"Allow\" or \"Deny\", found {}", other.describe()),
            ));
        }
    };
    let actions = match (action, not_action) {
        (Some(_), Some(_)) => {
            return Err(PolicyError::new(
                path,
                "a statement has either \"Action\" or \"NotAction\", not both",
            ));
        }
        (None, None) => {
            return Err(PolicyError::new(
                path,
                "missing required element \"Action\" (or \"NotAction\")",
            ));
        }
        (Some(a), None) => ActionList::Action(parse_list(a, &path.key("Action"), ActionPattern::parse)?),
        (None, Some(a)) => {
            ActionList::NotAction(parse_list(a, &path.key("NotAction"), ActionPattern::parse)?)
        }
    };
    let Some(resource) = resource else {
        return Err(PolicyError::new(path, "missing required element \"Resource\""));
    };
    let resources = parse_list(resource, &path.key("Resource"), ResourcePattern::parse)?;
    let conditions = match condition {
        None => Vec::new(),
        Some(c) => parse_conditions(c, &path.key("Condition"))?,
    };
    Ok(Statement {
        sid,
        effect,
        actions,
        resources,
        conditions,
    })
}
