//! The `Condition` element: the subset of IAM condition operators Shoal evaluates exactly, over
//! the connection-scoped keys of [`VarContext`]. Everything else is rejected when the policy is
//! parsed: a condition that was silently ignored would turn a restricted Allow into an
//! unrestricted one.

use std::fmt;
use std::net::IpAddr;

use crate::policy::action::Action;
use crate::policy::document::{Effect, PolicyError, check_members};
use crate::policy::glob;
use crate::policy::json::{Json, Path, quote};
use crate::policy::vars::{Template, Var, VarContext};

/// A condition operator Shoal supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    IpAddress,
    NotIpAddress,
    Null,
}

impl Op {
    const ALL: [(&'static str, Op); 10] = [
        ("StringEquals", Op::StringEquals),
        ("StringNotEquals", Op::StringNotEquals),
        ("StringEqualsIgnoreCase", Op::StringEqualsIgnoreCase),
        ("StringNotEqualsIgnoreCase", Op::StringNotEqualsIgnoreCase),
        ("StringLike", Op::StringLike),
        ("StringNotLike", Op::StringNotLike),
        ("Bool", Op::Bool),
        ("IpAddress", Op::IpAddress),
        ("NotIpAddress", Op::NotIpAddress),
        ("Null", Op::Null),
    ];

    /// Negated operators are true when the key matches none of the values, and (IAM) when the
    /// key is absent.
    fn negated(self) -> bool {
        matches!(
            self,
            Op::StringNotEquals | Op::StringNotEqualsIgnoreCase | Op::StringNotLike | Op::NotIpAddress
        )
    }
}

/// `ForAllValues:` / `ForAnyValue:` set qualifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qualifier {
    None,
    ForAllValues,
    ForAnyValue,
}

/// The values listed for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Values {
    /// String operators: templates (variables allowed; wildcards only for `StringLike`).
    Strings(Vec<Template>),
    /// `Bool`.
    Bools(Vec<bool>),
    /// `IpAddress` / `NotIpAddress`.
    Nets(Vec<IpNet>),
    /// `Null`: `true` = the key must be absent.
    Null(bool),
}

/// One condition: an operator applied to one key with one or more values. A statement's
/// conditions are ANDed; the values of one condition are ORed (for negated operators: the key
/// must match none of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    operator: String,
    key: String,
    op: Op,
    qualifier: Qualifier,
    if_exists: bool,
    var: Var,
    values: Values,
}

impl Condition {
    /// The operator as written, e.g. `"ForAllValues:StringEquals"`.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The condition key as written, e.g. `"iot:Connection.Thing.IsAttached"`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Evaluates the condition in `ctx`, for a statement with `effect`, when checking `action`.
    ///
    /// IAM semantics, with one deliberate deviation: `ForAllValues:` over an absent or empty key
    /// is vacuously true in IAM, which lets a certificate *without* an Organization pass
    /// `ForAllValues:StringEquals {"iot:Certificate.Subject.Organization.List": [...]}`. In Shoal,
    /// for certificate keys, that case never helps to grant access: it is false in an Allow
    /// statement (and stays true, as in IAM, in a Deny statement). `iot:ConnectAttributes` keeps
    /// the IAM semantics, which AWS's own examples rely on ("no attributes" passes
    /// `ForAllValues:StringEquals {"iot:ConnectAttributes": []}`).
    pub(crate) fn evaluate(&self, ctx: &VarContext, effect: Effect, action: Action) -> bool {
        let values = self.var.value_strings(ctx, Some(action));
        if let Values::Null(must_be_absent) = self.values {
            return values.is_none_or(|v| v.is_empty()) == must_be_absent;
        }
        if values.is_none() && self.if_exists {
            return true;
        }
        let values = values.unwrap_or_default();
        if values.is_empty() {
            return match self.qualifier {
                Qualifier::ForAllValues => !(self.var.is_certificate() && effect == Effect::Allow),
                Qualifier::ForAnyValue => false,
                Qualifier::None => self.op.negated(),
            };
        }
        let test = |request_value: &String| {
            let any = self.matches_any(request_value, ctx);
            if self.op.negated() { !any } else { any }
        };
        match self.qualifier {
            Qualifier::ForAllValues => values.iter().all(test),
            Qualifier::ForAnyValue => values.iter().any(test),
            Qualifier::None => values.first().is_some_and(test),
        }
    }

    /// Whether `request_value` matches one of the policy values (ignoring negation).
    fn matches_any(&self, request_value: &str, ctx: &VarContext) -> bool {
        match &self.values {
            Values::Strings(templates) => templates.iter().any(|t| {
                // An unresolvable variable in a value makes that value match nothing.
                let Ok(toks) = t.instantiate(ctx, false) else {
                    return false;
                };
                match self.op {
                    Op::StringLike | Op::StringNotLike => glob::matches(&toks, request_value),
                    Op::StringEqualsIgnoreCase | Op::StringNotEqualsIgnoreCase => {
                        literal(&toks).to_lowercase() == request_value.to_lowercase()
                    }
                    _ => literal(&toks) == request_value,
                }
            }),
            Values::Bools(bools) => bools
                .iter()
                .any(|b| request_value.eq_ignore_ascii_case(if *b { "true" } else { "false" })),
            Values::Nets(nets) => match request_value.parse::<IpAddr>() {
                Ok(ip) => nets.iter().any(|n| n.contains(ip)),
                Err(_) => false,
            },
            Values::Null(_) => false,
        }
    }
}

/// The text of a wildcard-free pattern.
fn literal(toks: &[glob::Tok]) -> String {
    toks.iter()
        .map(|t| match t {
            glob::Tok::Lit(s) => s.as_str(),
            glob::Tok::Star => "*",
            glob::Tok::One => "?",
        })
        .collect()
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", quote(&self.operator), quote(&self.key))
    }
}

fn parse_operator(name: &str) -> Result<(Op, Qualifier, bool), String> {
    let (qualifier, rest) = if let Some(r) = name.strip_prefix("ForAllValues:") {
        (Qualifier::ForAllValues, r)
    } else if let Some(r) = name.strip_prefix("ForAnyValue:") {
        (Qualifier::ForAnyValue, r)
    } else {
        (Qualifier::None, name)
    };
    let (base, if_exists) = match rest.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (rest, false),
    };
    let supported: Vec<&str> = Op::ALL.iter().map(|(n, _)| *n).collect();
    let Some(op) = Op::ALL.iter().find(|(n, _)| *n == base).map(|(_, op)| *op) else {
        let family = ["Numeric", "Date", "Binary", "Arn"]
            .iter()
            .find(|f| base.starts_with(**f));
        if family.is_some() {
            return Err(format!(
                "condition operator {} is not supported by Shoal (supported: {}, with optional \
                 ForAllValues:/ForAnyValue: and IfExists)",
                quote(name),
                supported.join(", ")
            ));
        }
        let hint = Op::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(base))
            .map(|(n, _)| format!(" (operator names are case-sensitive: did you mean \"{n}\"?)"))
            .unwrap_or_else(|| format!(" (supported: {})", supported.join(", ")));
        return Err(format!("unknown condition operator {}{hint}", quote(name)));
    };
    if op == Op::Null && (qualifier != Qualifier::None || if_exists) {
        return Err(format!(
            "{}: Null takes no ForAllValues:/ForAnyValue: or IfExists",
            quote(name)
        ));
    }
    Ok((op, qualifier, if_exists))
}

/// Condition values may be strings, numbers or booleans (converted to text), or arrays of them.
fn value_texts(json: &Json, path: &Path, allow_empty: bool) -> Result<Vec<(String, Path)>, PolicyError> {
    let scalar = |v: &Json, p: &Path| match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) => Ok(n.clone()),
        Json::Bool(b) => Ok(b.to_string()),
        other => Err(PolicyError::new(
            p,
            format!(
                "condition values must be strings (or arrays of strings), found {}",
                other.describe()
            ),
        )),
    };
    match json {
        Json::Array(items) if items.is_empty() && !allow_empty => Err(PolicyError::new(
            path,
            "must list at least one value (an empty list is only meaningful with ForAllValues:/ForAnyValue:)",
        )),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| scalar(v, &path.index(i)).map(|s| (s, path.index(i))))
            .collect(),
        other => Ok(vec![(scalar(other, path)?, path.clone())]),
    }
}

fn parse_bool(text: &str, path: &Path) -> Result<bool, PolicyError> {
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(PolicyError::new(
            path,
            format!("must be \"true\" or \"false\", found {}", quote(text)),
        ))
    }
}

/// Parses a statement's `Condition` element.
pub(crate) fn parse_conditions(json: &Json, path: &Path) -> Result<Vec<Condition>, PolicyError> {
    let Json::Object(blocks) = json else {
        return Err(PolicyError::new(
            path,
            format!(
                "must be an object of {{\"<Operator>\": {{\"<key>\": <values>}}}}, found {}",
                json.describe()
            ),
        ));
    };
    check_members(blocks, path)?;
    let mut out = Vec::new();
    for (operator, block) in blocks {
        let op_path = path.key(operator);
        let (op, qualifier, if_exists) =
            parse_operator(operator).map_err(|r| PolicyError::new(&op_path, r))?;
        let Json::Object(keys) = block else {
            return Err(PolicyError::new(
                &op_path,
                format!(
                    "must be an object of {{\"<key>\": <values>}}, found {}",
                    block.describe()
                ),
            ));
        };
        if keys.is_empty() {
            return Err(PolicyError::new(&op_path, "must name at least one condition key"));
        }
        check_members(keys, &op_path)?;
        for (key, values) in keys {
            let key_path = op_path.key(key);
            let var = Var::parse(key).map_err(|r| {
                PolicyError::new(
                    &key_path,
                    format!("{r}; Shoal supports connection-scoped keys only (the policy variables)"),
                )
            })?;
            if var.is_multi() && qualifier == Qualifier::None && op != Op::Null {
                return Err(PolicyError::new(
                    &key_path,
                    "a multi-valued key (a .List key or iot:ConnectAttributes) needs a ForAnyValue: or \
                     ForAllValues: operator",
                ));
            }
            let texts = value_texts(values, &key_path, qualifier != Qualifier::None)?;
            let values = match op {
                Op::Null => {
                    if texts.len() != 1 {
                        return Err(PolicyError::new(&key_path, "Null takes exactly one value"));
                    }
                    Values::Null(parse_bool(&texts[0].0, &texts[0].1)?)
                }
                Op::Bool => {
                    if !var.is_bool() {
                        return Err(PolicyError::new(
                            &key_path,
                            format!(
                                "Bool applies to boolean keys (iot:Connection.Thing.IsAttached), not {}",
                                quote(key)
                            ),
                        ));
                    }
                    Values::Bools(
                        texts
                            .iter()
                            .map(|(t, p)| parse_bool(t, p))
                            .collect::<Result<_, _>>()?,
                    )
                }
                Op::IpAddress | Op::NotIpAddress => {
                    if var != Var::SourceIp {
                        return Err(PolicyError::new(
                            &key_path,
                            format!("{operator} applies to aws:SourceIp only, not {}", quote(key)),
                        ));
                    }
                    Values::Nets(
                        texts
                            .iter()
                            .map(|(t, p)| IpNet::parse(t).map_err(|r| PolicyError::new(p, r)))
                            .collect::<Result<_, _>>()?,
                    )
                }
                _ => {
                    let wildcards = matches!(op, Op::StringLike | Op::StringNotLike);
                    Values::Strings(
                        texts
                            .iter()
                            .map(|(t, p)| Template::parse(t, wildcards).map_err(|r| PolicyError::new(p, r)))
                            .collect::<Result<_, _>>()?,
                    )
                }
            };
            out.push(Condition {
                operator: operator.clone(),
                key: key.clone(),
                op,
                qualifier,
                if_exists,
                var,
                values,
            });
        }
    }
    Ok(out)
}

/// An IP network in CIDR notation (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(text: &str) -> Result<IpNet, String> {
        let bad = || format!("{} is not an IP address or CIDR block", quote(text));
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(bad()),
            },
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            IpNet::parse("1.2.3.4")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            !IpNet::parse("1.2.3.4")
                .unwrap()
                .contains("1.2.3.5".parse().unwrap())
        );
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(IpNet::parse("1.2.3.4/33").is_err());
        assert!(IpNet::parse("1.2.3/24").is_err());
        assert!(IpNet::parse("${aws:SourceIp}").is_err());
    }

    #[test]
    fn operators() {
        assert_eq!(
            parse_operator("StringEquals").unwrap(),
            (Op::StringEquals, Qualifier::None, false)
        );
        assert_eq!(
            parse_operator("ForAnyValue:StringLikeIfExists").unwrap(),
            (Op::StringLike, Qualifier::ForAnyValue, true)
        );
        assert!(
            parse_operator("stringequals")
                .unwrap_err()
                .contains("did you mean \"StringEquals\"")
        );
        assert!(
            parse_operator("NumericLessThan")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            parse_operator("DateGreaterThan")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(parse_operator("ArnLike").unwrap_err().contains("not supported"));
        assert!(
            parse_operator("Frobnicate")
                .unwrap_err()
                .contains("unknown condition operator")
        );
        assert!(parse_operator("NullIfExists").is_err());
    }
}
