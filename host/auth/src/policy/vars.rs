//! Policy variables (`${iot:ClientId}`, `${iot:Connection.Thing.ThingName}`,
//! `${iot:Certificate.Subject.CommonName}`, …), the connection context they resolve against, and
//! templates: policy text with `*`/`?` wildcards and `${…}` variables.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::policy::action::Action;
use crate::policy::glob::{self, Tok};
use crate::policy::json::quote;

/// AWS keeps at most this many values of a multi-valued certificate attribute.
pub const MAX_CERT_VALUES: usize = 5;
/// AWS does not substitute certificate attribute values longer than this many characters.
pub const MAX_CERT_VALUE_CHARS: usize = 1024;

/// An X.509 distinguished-name attribute usable as `iot:Certificate.{Subject,Issuer}.<Attr>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnAttribute {
    /// `Country` (C).
    Country,
    /// `Organization` (O).
    Organization,
    /// `OrganizationalUnit` (OU).
    OrganizationalUnit,
    /// `DistinguishedNameQualifier` (dnQualifier).
    DistinguishedNameQualifier,
    /// `State` (ST).
    State,
    /// `CommonName` (CN).
    CommonName,
    /// `SerialNumber` (the DN attribute, not the certificate serial number).
    SerialNumber,
    /// `Title`.
    Title,
    /// `Surname` (SN).
    Surname,
    /// `GivenName` (GN).
    GivenName,
    /// `Initials`.
    Initials,
    /// `Pseudonym`.
    Pseudonym,
    /// `GenerationQualifier`.
    GenerationQualifier,
}

impl DnAttribute {
    /// Every attribute.
    pub const ALL: [DnAttribute; 13] = [
        DnAttribute::Country,
        DnAttribute::Organization,
        DnAttribute::OrganizationalUnit,
        DnAttribute::DistinguishedNameQualifier,
        DnAttribute::State,
        DnAttribute::CommonName,
        DnAttribute::SerialNumber,
        DnAttribute::Title,
        DnAttribute::Surname,
        DnAttribute::GivenName,
        DnAttribute::Initials,
        DnAttribute::Pseudonym,
        DnAttribute::GenerationQualifier,
    ];

    /// The name used in policy variables, e.g. `"CommonName"`.
    pub fn name(self) -> &'static str {
        match self {
            DnAttribute::Country => "Country",
            DnAttribute::Organization => "Organization",
            DnAttribute::OrganizationalUnit => "OrganizationalUnit",
            DnAttribute::DistinguishedNameQualifier => "DistinguishedNameQualifier",
            DnAttribute::State => "State",
            DnAttribute::CommonName => "CommonName",
            DnAttribute::SerialNumber => "SerialNumber",
            DnAttribute::Title => "Title",
            DnAttribute::Surname => "Surname",
            DnAttribute::GivenName => "GivenName",
            DnAttribute::Initials => "Initials",
            DnAttribute::Pseudonym => "Pseudonym",
            DnAttribute::GenerationQualifier => "GenerationQualifier",
        }
    }
}

/// A kind of X.509 alternative name, usable as
/// `iot:Certificate.{Subject,Issuer}.AlternativeName.<Kind>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AltNameKind {
    /// `RFC822Name` (e-mail address).
    Rfc822Name,
    /// `DNSName`.
    DnsName,
    /// `DirectoryName`.
    DirectoryName,
    /// `UniformResourceIdentifier`.
    UniformResourceIdentifier,
    /// `IPAddress`.
    IpAddress,
}

impl AltNameKind {
    /// Every kind.
    pub const ALL: [AltNameKind; 5] = [
        AltNameKind::Rfc822Name,
        AltNameKind::DnsName,
        AltNameKind::DirectoryName,
        AltNameKind::UniformResourceIdentifier,
        AltNameKind::IpAddress,
    ];

    /// The name used in policy variables, e.g. `"DNSName"`.
    pub fn name(self) -> &'static str {
        match self {
            AltNameKind::Rfc822Name => "RFC822Name",
            AltNameKind::DnsName => "DNSName",
            AltNameKind::DirectoryName => "DirectoryName",
            AltNameKind::UniformResourceIdentifier => "UniformResourceIdentifier",
            AltNameKind::IpAddress => "IPAddress",
        }
    }
}

/// The attributes of a distinguished name (certificate subject or issuer). Each attribute may
/// have several values, in certificate order; the policy variable without an index is the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DistinguishedName {
    values: BTreeMap<DnAttribute, Vec<String>>,
}

impl DistinguishedName {
    /// An empty name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a value of `attr` (builder style).
    pub fn with(mut self, attr: DnAttribute, value: impl Into<String>) -> Self {
        self.push(attr, value);
        self
    }

    /// Appends a value of `attr`.
    pub fn push(&mut self, attr: DnAttribute, value: impl Into<String>) {
        self.values.entry(attr).or_default().push(value.into());
    }

    /// The values of `attr`, in certificate order (possibly none).
    pub fn get(&self, attr: DnAttribute) -> &[String] {
        self.values.get(&attr).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The alternative names of a certificate's subject or issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AltNames {
    values: BTreeMap<AltNameKind, Vec<String>>,
}

impl AltNames {
    /// No alternative names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a name of `kind` (builder style).
    pub fn with(mut self, kind: AltNameKind, value: impl Into<String>) -> Self {
        self.push(kind, value);
        self
    }

    /// Appends a name of `kind`.
    pub fn push(&mut self, kind: AltNameKind, value: impl Into<String>) {
        self.values.entry(kind).or_default().push(value.into());
    }

    /// The names of `kind`, in certificate order (possibly none).
    pub fn get(&self, kind: AltNameKind) -> &[String] {
        self.values.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// What the `iot:Certificate.*` variables resolve against: the client certificate of the
/// connection, as the TLS layer parsed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateContext {
    /// The subject DN (`iot:Certificate.Subject.*`).
    pub subject: DistinguishedName,
    /// The issuer DN (`iot:Certificate.Issuer.*`).
    pub issuer: DistinguishedName,
    /// Subject alternative names (`iot:Certificate.Subject.AlternativeName.*`).
    pub subject_alt_names: AltNames,
    /// Issuer alternative names (`iot:Certificate.Issuer.AlternativeName.*`).
    pub issuer_alt_names: AltNames,
    /// The certificate serial number (`iot:Certificate.SerialNumber`), in the caller's format
    /// (Shoal uses lowercase hex without separators).
    pub serial_number: Option<String>,
    /// `iot:Certificate.Validity.NotBefore`, in the caller's format (Shoal uses RFC 3339 UTC).
    pub not_before: Option<String>,
    /// `iot:Certificate.Validity.NotAfter`, in the caller's format (Shoal uses RFC 3339 UTC).
    pub not_after: Option<String>,
}

/// What the `iot:Connection.Thing.*` variables resolve against.
///
/// AWS resolves these only for a registry thing whose name equals the MQTT client id **and**
/// that is attached to the connecting principal (AttachThingPrincipal); the caller builds a
/// `ThingContext` only in that case and leaves [`VarContext::thing`] `None` otherwise. That makes
/// `iot:Connection.Thing.IsAttached` `"true"` exactly when `thing` is `Some`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingContext {
    /// `iot:Connection.Thing.ThingName`.
    pub thing_name: String,
    /// `iot:Connection.Thing.ThingTypeName` (`None`: the thing has no type; unresolvable).
    pub thing_type_name: Option<String>,
    /// `iot:Connection.Thing.Attributes[name]` (names are case-sensitive).
    pub attributes: BTreeMap<String, String>,
}

/// Everything policy variables and condition keys can resolve against: fixed for the lifetime of
/// a connection, so [`crate::policy::CompiledPolicies`] substitutes it once, at connect time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VarContext {
    /// The MQTT client id (`iot:ClientId`).
    pub client_id: Option<String>,
    /// The client's IP address (`aws:SourceIp`).
    pub source_ip: Option<IpAddr>,
    /// The attached thing named like the client id, if any (`iot:Connection.Thing.*`).
    pub thing: Option<ThingContext>,
    /// The client certificate, if the client authenticated with one (`iot:Certificate.*`).
    pub certificate: Option<CertificateContext>,
    /// `iot:ConnectAttributes`: the MQTT features the CONNECT used, among
    /// [`VarContext::PERSISTENT_CONNECT`] (a session that outlives the connection: MQTT 3
    /// `cleanSession=0`, MQTT 5 session expiry > 0) and [`VarContext::LAST_WILL`] (a will
    /// message). Only the `iot:Connect` check sees this key; for every other action it is absent.
    pub connect_attributes: Vec<String>,
}

impl VarContext {
    /// The `iot:ConnectAttributes` value for a persistent session.
    pub const PERSISTENT_CONNECT: &'static str = "PersistentConnect";
    /// The `iot:ConnectAttributes` value for a CONNECT with a will message.
    pub const LAST_WILL: &'static str = "LastWill";
}

/// Which values of a multi-valued certificate attribute a variable selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sel {
    /// The first value (no suffix).
    First,
    /// The zero-based `.N` value.
    Index(usize),
    /// Every value (`.List`); multi-valued, condition keys only.
    List,
}

/// A known policy variable / condition key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    ClientId,
    SourceIp,
    ThingName,
    ThingTypeName,
    ThingIsAttached,
    ThingAttribute(String),
    CertDn {
        issuer: bool,
        attr: DnAttribute,
        sel: Sel,
    },
    CertAlt {
        issuer: bool,
        kind: AltNameKind,
        sel: Sel,
    },
    CertSerialNumber,
    CertNotBefore,
    CertNotAfter,
    /// `iot:ConnectAttributes`: multi-valued, present only for the Connect action.
    ConnectAttributes,
}

/// Strips `prefix` from `s`, ASCII-case-insensitively.
fn strip_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

impl Var {
    /// Parses a variable / condition-key name. The fixed parts are case-insensitive (IAM
    /// condition keys are); the attribute name in `Attributes[name]` is case-sensitive.
    pub(crate) fn parse(name: &str) -> Result<Var, String> {
        let unknown = || {
            let hint = if strip_ci(name, "iot:Thing.").is_some() {
                " (did you mean iot:Connection.Thing.…?)"
            } else {
                ""
            };
            format!("unknown policy variable {}{hint}", quote(name))
        };
        if name.eq_ignore_ascii_case("iot:ClientId") {
            return Ok(Var::ClientId);
        }
        if name.eq_ignore_ascii_case("aws:SourceIp") {
            return Ok(Var::SourceIp);
        }
        if name.eq_ignore_ascii_case("iot:ConnectAttributes") {
            return Ok(Var::ConnectAttributes);
        }
        if name.eq_ignore_ascii_case("iot:LastWillTopic") {
            return Err("the condition key iot:LastWillTopic is not supported by Shoal".to_owned());
        }
        if let Some(rest) = strip_ci(name, "iot:Connection.Thing.") {
            if rest.eq_ignore_ascii_case("ThingName") {
                return Ok(Var::ThingName);
            }
            if rest.eq_ignore_ascii_case("ThingTypeName") {
                return Ok(Var::ThingTypeName);
            }
            if rest.eq_ignore_ascii_case("IsAttached") {
                return Ok(Var::ThingIsAttached);
            }
            if let Some(attr) = strip_ci(rest, "Attributes[") {
                let Some(attr) = attr.strip_suffix(']') else {
                    return Err(format!("{}: expected Attributes[<name>]", quote(name)));
                };
                let valid = |c: char| c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c);
                if attr.is_empty() || attr.len() > 128 || !attr.chars().all(valid) {
                    return Err(format!(
                        "{}: invalid thing attribute name (1-128 characters of [a-zA-Z0-9_.,@/:#-])",
                        quote(name)
                    ));
                }
                return Ok(Var::ThingAttribute(attr.to_owned()));
            }
            return Err(unknown());
        }
        if let Some(rest) = strip_ci(name, "iot:Certificate.") {
            if rest.eq_ignore_ascii_case("SerialNumber") {
                return Ok(Var::CertSerialNumber);
            }
            if rest.eq_ignore_ascii_case("Validity.NotBefore") {
                return Ok(Var::CertNotBefore);
            }
            if rest.eq_ignore_ascii_case("Validity.NotAfter") {
                return Ok(Var::CertNotAfter);
            }
            if rest.eq_ignore_ascii_case("AvailableKeys") {
                return Err("iot:Certificate.AvailableKeys is not supported by Shoal".to_owned());
            }
            let (issuer, rest) = if let Some(r) = strip_ci(rest, "Subject.") {
                (false, r)
            } else if let Some(r) = strip_ci(rest, "Issuer.") {
                (true, r)
            } else {
                return Err(unknown());
            };
            if let Some(alt) = strip_ci(rest, "AlternativeName.") {
                let (base, sel) = split_selector(name, alt)?;
                let kind = AltNameKind::ALL
                    .into_iter()
                    .find(|k| k.name().eq_ignore_ascii_case(base));
                return match kind {
                    Some(kind) => Ok(Var::CertAlt { issuer, kind, sel }),
                    None => Err(unknown()),
                };
            }
            let (base, sel) = split_selector(name, rest)?;
            let attr = DnAttribute::ALL
                .into_iter()
                .find(|a| a.name().eq_ignore_ascii_case(base));
            return match attr {
                Some(attr) => Ok(Var::CertDn { issuer, attr, sel }),
                None => Err(unknown()),
            };
        }
        Err(unknown())
    }

    /// Whether this is a multi-valued (`.List`) key.
    pub(crate) fn is_multi(&self) -> bool {
        matches!(
            self,
            Var::CertDn { sel: Sel::List, .. } | Var::CertAlt { sel: Sel::List, .. } | Var::ConnectAttributes
        )
    }

    /// Whether this key is boolean-valued (`"true"` / `"false"`).
    pub(crate) fn is_bool(&self) -> bool {
        matches!(self, Var::ThingIsAttached)
    }

    pub(crate) fn is_certificate(&self) -> bool {
        matches!(
            self,
            Var::CertDn { .. }
                | Var::CertAlt { .. }
                | Var::CertSerialNumber
                | Var::CertNotBefore
                | Var::CertNotAfter
        )
    }

    /// The values of this key in `ctx`, except `aws:SourceIp` (see [`Var::value_strings`]):
    /// `None` when the key is absent. A multi-valued key yields up to [`MAX_CERT_VALUES`] values;
    /// a single-valued key one.
    fn values<'a>(&self, ctx: &'a VarContext) -> Option<Vec<&'a str>> {
        let one = |v: Option<&'a str>| v.map(|v| vec![v]);
        match self {
            Var::ClientId => one(ctx.client_id.as_deref()),
            Var::SourceIp => None, // handled by `value_string`; see there
            Var::ThingName => one(ctx.thing.as_ref().map(|t| t.thing_name.as_str())),
            Var::ThingTypeName => one(ctx.thing.as_ref().and_then(|t| t.thing_type_name.as_deref())),
            Var::ThingIsAttached => one(Some(if ctx.thing.is_some() { "true" } else { "false" })),
            Var::ThingAttribute(name) => one(ctx
                .thing
                .as_ref()
                .and_then(|t| t.attributes.get(name))
                .map(String::as_str)),
            Var::CertDn { issuer, attr, sel } => {
                let cert = ctx.certificate.as_ref()?;
                let dn = if *issuer { &cert.issuer } else { &cert.subject };
                select(dn.get(*attr), *sel)
            }
            Var::CertAlt { issuer, kind, sel } => {
                let cert = ctx.certificate.as_ref()?;
                let names = if *issuer {
                    &cert.issuer_alt_names
                } else {
                    &cert.subject_alt_names
                };
                select(names.get(*kind), *sel)
            }
            Var::CertSerialNumber => one(ctx.certificate.as_ref().and_then(|c| c.serial_number.as_deref())),
            Var::CertNotBefore => one(ctx.certificate.as_ref().and_then(|c| c.not_before.as_deref())),
            Var::CertNotAfter => one(ctx.certificate.as_ref().and_then(|c| c.not_after.as_deref())),
            Var::ConnectAttributes => None,
        }
    }

    /// The values of this key as owned strings, when checking `action` (`None`: in a policy
    /// variable, where action-scoped keys are not allowed). `None` = absent. Only
    /// `iot:ConnectAttributes` can be present with no values.
    pub(crate) fn value_strings(&self, ctx: &VarContext, action: Option<Action>) -> Option<Vec<String>> {
        match self {
            Var::SourceIp => ctx.source_ip.map(|ip| vec![canonical_ip(ip).to_string()]),
            Var::ConnectAttributes => {
                (action == Some(Action::Connect)).then(|| ctx.connect_attributes.clone())
            }
            _ => self
                .values(ctx)
                .map(|v| v.into_iter().map(str::to_owned).collect()),
        }
    }

    /// The text substituted for `${this}`, or why there is none. Substituted text is always
    /// literal (the caller turns it into a [`Tok::Lit`]).
    pub(crate) fn substitute(&self, ctx: &VarContext) -> Result<String, &'static str> {
        let Some(mut values) = self.value_strings(ctx, None) else {
            return Err("no value in this connection");
        };
        if values.len() != 1 {
            return Err("no value in this connection");
        }
        let value = values.remove(0);
        if value.is_empty() {
            return Err("its value is empty");
        }
        if self.is_certificate() {
            if value.chars().count() > MAX_CERT_VALUE_CHARS {
                return Err("the certificate value is longer than 1024 characters");
            }
            if value.contains(['*', '?', '+', '#']) {
                return Err("the certificate value contains wildcard characters");
            }
        }
        Ok(value)
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn select(values: &[String], sel: Sel) -> Option<Vec<&str>> {
    let values = &values[..values.len().min(MAX_CERT_VALUES)];
    match sel {
        Sel::First => values.first().map(|v| vec![v.as_str()]),
        Sel::Index(i) => values.get(i).map(|v| vec![v.as_str()]),
        Sel::List if values.is_empty() => None,
        Sel::List => Some(values.iter().map(String::as_str).collect()),
    }
}

/// Splits a `.N` / `.List` suffix off a certificate attribute name.
fn split_selector<'a>(full: &str, rest: &'a str) -> Result<(&'a str, Sel), String> {
    let Some((base, suffix)) = rest.rsplit_once('.') else {
        return Ok((rest, Sel::First));
    };
    if suffix.eq_ignore_ascii_case("List") {
        return Ok((base, Sel::List));
    }
    if !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_digit()) {
        return match suffix.parse::<usize>() {
            Ok(i) if i < MAX_CERT_VALUES => Ok((base, Sel::Index(i))),
            _ => Err(format!(
                "{}: the index must be 0-{} (AWS keeps at most {MAX_CERT_VALUES} values of an attribute)",
                quote(full),
                MAX_CERT_VALUES - 1
            )),
        };
    }
    Ok((rest, Sel::First))
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sel = |f: &mut fmt::Formatter<'_>, sel: &Sel| match sel {
            Sel::First => Ok(()),
            Sel::Index(i) => write!(f, ".{i}"),
            Sel::List => f.write_str(".List"),
        };
        match self {
            Var::ClientId => f.write_str("iot:ClientId"),
            Var::SourceIp => f.write_str("aws:SourceIp"),
            Var::ThingName => f.write_str("iot:Connection.Thing.ThingName"),
            Var::ThingTypeName => f.write_str("iot:Connection.Thing.ThingTypeName"),
            Var::ThingIsAttached => f.write_str("iot:Connection.Thing.IsAttached"),
            Var::ThingAttribute(a) => write!(f, "iot:Connection.Thing.Attributes[{a}]"),
            Var::CertDn { issuer, attr, sel: s } => {
                write!(
                    f,
                    "iot:Certificate.{}.{}",
                    if *issuer { "Issuer" } else { "Subject" },
                    attr.name()
                )?;
                sel(f, s)
            }
            Var::CertAlt { issuer, kind, sel: s } => {
                write!(
                    f,
                    "iot:Certificate.{}.AlternativeName.{}",
                    if *issuer { "Issuer" } else { "Subject" },
                    kind.name()
                )?;
                sel(f, s)
            }
            Var::CertSerialNumber => f.write_str("iot:Certificate.SerialNumber"),
            Var::CertNotBefore => f.write_str("iot:Certificate.Validity.NotBefore"),
            Var::CertNotAfter => f.write_str("iot:Certificate.Validity.NotAfter"),
            Var::ConnectAttributes => f.write_str("iot:ConnectAttributes"),
        }
    }
}

/// One part of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Lit(String),
    Star,
    One,
    Var(Var),
}

/// Policy text with wildcards and variables, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) parts: Vec<Part>,
}

/// Why a template could not be instantiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unresolved {
    pub(crate) variable: String,
    pub(crate) reason: &'static str,
}

impl Template {
    /// Parses `text`. With `wildcards`, `*` and `?` are wildcards, else literal. `${name}` is a
    /// variable; `${*}`, `${?}` and `${$}` are the literal characters `*`, `?` and `$` (IAM's
    /// escapes). A `$` not followed by `{` is literal.
    pub(crate) fn parse(text: &str, wildcards: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '$' && rest[1..].starts_with('{') {
                let Some(end) = rest.find('}') else {
                    return Err("unterminated policy variable: \"${\" without a closing \"}\"".to_owned());
                };
                let name = &rest[2..end];
                match name {
                    "*" | "?" | "$" => lit.push_str(name),
                    _ => {
                        if name.contains(',') {
                            return Err(format!(
                                "policy variable {}: default values are not supported",
                                quote(&format!("${{{name}}}"))
                            ));
                        }
                        let var = Var::parse(name.trim())?;
                        if var.is_multi() {
                            return Err(format!(
                                "policy variable {} is multi-valued (.List): it can only be a condition key",
                                quote(&format!("${{{name}}}"))
                            ));
                        }
                        if !lit.is_empty() {
                            parts.push(Part::Lit(std::mem::take(&mut lit)));
                        }
                        parts.push(Part::Var(var));
                    }
                }
                rest = &rest[end + 1..];
                continue;
            }
            if wildcards && (c == '*' || c == '?') {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(if c == '*' { Part::Star } else { Part::One });
            } else {
                lit.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// The variables used.
    pub(crate) fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            _ => None,
        })
    }

    /// Substitutes every variable (as literal text) and returns the pattern. With `mqtt_strict`,
    /// a substituted value containing the MQTT wildcards `+` or `#` makes the template
    /// unresolvable: such a value must never widen a topic filter.
    pub(crate) fn instantiate(&self, ctx: &VarContext, mqtt_strict: bool) -> Result<Vec<Tok>, Unresolved> {
        let mut toks = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            toks.push(match part {
                Part::Lit(s) => Tok::Lit(s.clone()),
                Part::Star => Tok::Star,
                Part::One => Tok::One,
                Part::Var(v) => {
                    let value = v.substitute(ctx).map_err(|reason| Unresolved {
                        variable: v.to_string(),
                        reason,
                    })?;
                    if mqtt_strict && value.contains(['+', '#']) {
                        return Err(Unresolved {
                            variable: v.to_string(),
                            reason: "its value contains the MQTT wildcard characters + or #",
                        });
                    }
                    Tok::Lit(value)
                }
            });
        }
        Ok(glob::normalize(toks))
    }

    /// The pattern with every variable replaced by `*` (what it could match for some context).
    pub(crate) fn widened(&self) -> Vec<Tok> {
        let toks = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => Tok::Lit(s.clone()),
                Part::Star | Part::Var(_) => Tok::Star,
                Part::One => Tok::One,
            })
            .collect();
        glob::normalize(toks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_variables() {
        for (text, canonical) in [
            ("iot:ClientId", "iot:ClientId"),
            ("IOT:clientid", "iot:ClientId"),
            ("aws:SourceIp", "aws:SourceIp"),
            ("iot:Connection.Thing.ThingName", "iot:Connection.Thing.ThingName"),
            (
                "iot:Connection.Thing.ThingTypeName",
                "iot:Connection.Thing.ThingTypeName",
            ),
            (
                "iot:Connection.Thing.IsAttached",
                "iot:Connection.Thing.IsAttached",
            ),
            (
                "iot:Connection.Thing.Attributes[room-1]",
                "iot:Connection.Thing.Attributes[room-1]",
            ),
            (
                "iot:Certificate.Subject.CommonName",
                "iot:Certificate.Subject.CommonName",
            ),
            (
                "iot:Certificate.Issuer.Organization.2",
                "iot:Certificate.Issuer.Organization.2",
            ),
            (
                "iot:Certificate.Subject.Organization.List",
                "iot:Certificate.Subject.Organization.List",
            ),
            (
                "iot:Certificate.Subject.AlternativeName.DNSName",
                "iot:Certificate.Subject.AlternativeName.DNSName",
            ),
            (
                "iot:Certificate.Issuer.AlternativeName.IPAddress.1",
                "iot:Certificate.Issuer.AlternativeName.IPAddress.1",
            ),
            ("iot:Certificate.SerialNumber", "iot:Certificate.SerialNumber"),
            (
                "iot:Certificate.Subject.SerialNumber",
                "iot:Certificate.Subject.SerialNumber",
            ),
            (
                "iot:Certificate.Validity.NotAfter",
                "iot:Certificate.Validity.NotAfter",
            ),
        ] {
            assert_eq!(Var::parse(text).unwrap().to_string(), canonical);
        }
        for attr in DnAttribute::ALL {
            for side in ["Subject", "Issuer"] {
                let name = format!("iot:Certificate.{side}.{}", attr.name());
                assert_eq!(Var::parse(&name).unwrap().to_string(), name);
            }
        }
    }

    #[test]
    fn rejects_unknown_variables() {
        assert!(
            Var::parse("iot:Thing.ThingName")
                .unwrap_err()
                .contains("did you mean")
        );
        assert!(Var::parse("iot:Foo").is_err());
        assert!(Var::parse("aws:username").is_err());
        assert!(Var::parse("iot:Certificate.Subject.Nickname").is_err());
        assert!(
            Var::parse("iot:Certificate.Subject.Country.5")
                .unwrap_err()
                .contains("index")
        );
        assert!(Var::parse("iot:Connection.Thing.Attributes[]").is_err());
        assert!(Var::parse("iot:Connection.Thing.Attributes[a b]").is_err());
        assert!(Var::parse("iot:Connection.Thing.Attributes[a").is_err());
        assert!(Var::parse("iot:Certificate.AvailableKeys").is_err());
    }

    #[test]
    fn templates() {
        let t = Template::parse("my/${iot:ClientId}/*", true).unwrap();
        assert_eq!(
            t.parts,
            [
                Part::Lit("my/".into()),
                Part::Var(Var::ClientId),
                Part::Lit("/".into()),
                Part::Star
            ]
        );
        let t = Template::parse("a${*}b${?}c${$}d$e", true).unwrap();
        assert_eq!(t.parts, [Part::Lit("a*b?c$d$e".into())]);
        let t = Template::parse("a*?", false).unwrap();
        assert_eq!(t.parts, [Part::Lit("a*?".into())]);
        assert!(Template::parse("a${iot:ClientId", true).is_err());
        assert!(
            Template::parse("${aws:username, 'x'}", true)
                .unwrap_err()
                .contains("default")
        );
    }

    #[test]
    fn certificate_values() {
        let cert = CertificateContext {
            subject: DistinguishedName::new()
                .with(DnAttribute::Organization, "A")
                .with(DnAttribute::Organization, "B")
                .with(DnAttribute::CommonName, "*"),
            ..Default::default()
        };
        let ctx = VarContext {
            certificate: Some(cert),
            ..Default::default()
        };
        let org = Var::parse("iot:Certificate.Subject.Organization").unwrap();
        assert_eq!(org.substitute(&ctx), Ok("A".into()));
        let org1 = Var::parse("iot:Certificate.Subject.Organization.1").unwrap();
        assert_eq!(org1.substitute(&ctx), Ok("B".into()));
        let org2 = Var::parse("iot:Certificate.Subject.Organization.2").unwrap();
        assert!(org2.substitute(&ctx).is_err());
        let list = Var::parse("iot:Certificate.Subject.Organization.List").unwrap();
        assert_eq!(list.values(&ctx), Some(vec!["A", "B"]));
        let cn = Var::parse("iot:Certificate.Subject.CommonName").unwrap();
        assert!(
            cn.substitute(&ctx).is_err(),
            "AWS does not substitute values with wildcards"
        );
    }
}
