//! Operator verbs for identities and the registry: `shoal thing|thing-type|thing-group|cert|ca|policy`.
//!
//! Each verb is one call to Shoal's management API under `/api/v1` (see `api/identity.rs` and
//! `api/registry.rs`); what it prints is the API's JSON answer. `cert create --out DIR` also
//! writes the certificate, the private key (returned once, never stored by Shoal) and Shoal's
//! root CA into `DIR`, named like the files AWS's console hands out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::cli::{Api, Endpoint, encode, finish, read_arg, runtime};

/// `KEY=VALUE` on the command line.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn attributes(attrs: &[(String, String)]) -> Value {
    let m: Map<String, Value> = attrs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(m)
}

/// Paging options shared by the list verbs.
#[derive(Debug, Args)]
pub struct Page {
    /// Results per page (1-250).
    #[arg(long)]
    max_results: Option<u32>,
    /// Continue after this token (from an earlier answer's `nextToken`).
    #[arg(long)]
    next_token: Option<String>,
}

impl Page {
    fn push(&self, q: &mut Vec<String>) {
        if let Some(n) = self.max_results {
            q.push(format!("maxResults={n}"));
        }
        if let Some(t) = &self.next_token {
            q.push(format!("nextToken={}", encode(t)));
        }
    }
}

/// `shoal thing ...`
#[derive(Debug, Subcommand)]
pub enum ThingCmd {
    /// Register a thing.
    Create {
        /// Thing name (`[a-zA-Z0-9:_-]{1,128}`).
        name: String,
        /// Thing type.
        #[arg(long = "type")]
        thing_type: Option<String>,
        /// An attribute, `KEY=VALUE` (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
    },
    /// Print a thing.
    Describe {
        /// Thing name.
        name: String,
    },
    /// Change a thing's type or attributes (`--attr KEY=` removes an attribute).
    Update {
        /// Thing name.
        name: String,
        /// New thing type.
        #[arg(long = "type")]
        thing_type: Option<String>,
        /// Remove the thing type.
        #[arg(long, conflicts_with = "thing_type")]
        remove_type: bool,
        /// An attribute, `KEY=VALUE` (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
        /// Replace all attributes instead of merging.
        #[arg(long)]
        replace: bool,
        /// Fail with a version conflict unless the thing is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Delete a thing.
    Delete {
        /// Thing name.
        name: String,
        /// Fail with a version conflict unless the thing is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// List things, optionally those with one attribute value or of one type.
    List {
        /// Only things with this attribute value, `KEY=VALUE`.
        #[arg(long = "attr", value_parser = parse_kv)]
        attr: Option<(String, String)>,
        /// Only things of this type.
        #[arg(long = "type")]
        thing_type: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// The principals (certificates) attached to a thing.
    Principals {
        /// Thing name.
        name: String,
    },
    /// Attach a certificate (id or ARN) to a thing.
    AttachPrincipal {
        /// Thing name.
        name: String,
        /// Certificate id or ARN.
        principal: String,
    },
    /// Detach a certificate (id or ARN) from a thing.
    DetachPrincipal {
        /// Thing name.
        name: String,
        /// Certificate id or ARN.
        principal: String,
    },
    /// The groups a thing belongs to.
    Groups {
        /// Thing name.
        name: String,
    },
}

/// `shoal thing-type ...`
#[derive(Debug, Subcommand)]
pub enum ThingTypeCmd {
    /// Create a thing type.
    Create {
        /// Type name.
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// A searchable attribute name (repeatable, at most 3).
        #[arg(long = "searchable-attr")]
        searchable: Vec<String>,
    },
    /// Print a thing type.
    Describe {
        /// Type name.
        name: String,
    },
    /// Deprecate a thing type (or undo that with `--undo`).
    Deprecate {
        /// Type name.
        name: String,
        /// Undo the deprecation.
        #[arg(long)]
        undo: bool,
    },
    /// Delete a deprecated, unused thing type.
    Delete {
        /// Type name.
        name: String,
    },
    /// List thing types.
    List {
        #[command(flatten)]
        page: Page,
    },
}

/// `shoal thing-group ...`
#[derive(Debug, Subcommand)]
pub enum ThingGroupCmd {
    /// Create a thing group.
    Create {
        /// Group name.
        name: String,
        /// Parent group (fixed at creation).
        #[arg(long)]
        parent: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// An attribute, `KEY=VALUE` (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
    },
    /// Print a thing group.
    Describe {
        /// Group name.
        name: String,
    },
    /// Delete a thing group (it must have no child groups).
    Delete {
        /// Group name.
        name: String,
    },
    /// List thing groups.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Add a thing to a group.
    Add {
        /// Group name.
        group: String,
        /// Thing name.
        thing: String,
    },
    /// Remove a thing from a group.
    Remove {
        /// Group name.
        group: String,
        /// Thing name.
        thing: String,
    },
    /// The things in a group.
    Members {
        /// Group name.
        group: String,
        #[command(flatten)]
        page: Page,
    },
}

/// `shoal cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Issue a device certificate and key pair signed by Shoal's CA (the key is shown once).
    Create {
        /// Attach the certificate to this thing (and use its name as the subject CN).
        #[arg(long)]
        thing: Option<String>,
        /// Subject common name (default: the thing name).
        #[arg(long)]
        common_name: Option<String>,
        /// Write `certificate.pem.crt`, `private.pem.key`, `public.pem.key` and `root-ca.pem`
        /// into this directory (created if missing) instead of printing the key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Leave the certificate INACTIVE.
        #[arg(long)]
        inactive: bool,
    },
    /// Sign a device's certificate signing request with Shoal's CA.
    SignCsr {
        /// The CSR (PEM file; `-` reads standard input).
        #[arg(long)]
        csr: String,
        /// Attach the certificate to this thing (registered first if it is new).
        #[arg(long)]
        thing: Option<String>,
        /// Write the certificate PEM to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Leave the certificate INACTIVE.
        #[arg(long)]
        inactive: bool,
    },
    /// Register a certificate signed by a registered CA ("bring your own CA").
    Register {
        /// The certificate (PEM file; `-` reads standard input).
        #[arg(long)]
        pem: String,
        /// Attach the certificate to this thing.
        #[arg(long)]
        thing: Option<String>,
        /// Leave the certificate INACTIVE.
        #[arg(long)]
        inactive: bool,
    },
    /// List certificates.
    List,
    /// Print a certificate.
    Describe {
        /// Certificate id.
        id: String,
    },
    /// Set a certificate ACTIVE.
    Activate {
        /// Certificate id.
        id: String,
    },
    /// Set a certificate INACTIVE (closes its live connections).
    Deactivate {
        /// Certificate id.
        id: String,
    },
    /// Revoke a certificate (closes its live connections; cannot be undone).
    Revoke {
        /// Certificate id.
        id: String,
    },
    /// Delete an INACTIVE or REVOKED certificate with nothing attached.
    Delete {
        /// Certificate id.
        id: String,
    },
}

/// `shoal ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Print Shoal's own root CA (or write its PEM to `--out`).
    Get {
        /// Write the PEM to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Register your own CA certificate.
    Register {
        /// The CA certificate (PEM file; `-` reads standard input).
        #[arg(long)]
        pem: String,
        /// Leave the CA INACTIVE.
        #[arg(long)]
        inactive: bool,
        /// Register unknown certificates it signed on first connect (PENDING_ACTIVATION).
        #[arg(long)]
        auto_registration: bool,
    },
    /// List registered CA certificates.
    List,
    /// Change a CA's status or auto-registration.
    Update {
        /// CA certificate id.
        id: String,
        /// ACTIVE or INACTIVE.
        #[arg(long)]
        status: Option<String>,
        /// ENABLE or DISABLE.
        #[arg(long)]
        auto_registration: Option<String>,
    },
}

/// `shoal policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create a policy from an AWS IoT policy document.
    Create {
        /// Policy name.
        name: String,
        /// The document (file; `-` reads standard input).
        #[arg(long)]
        document: String,
    },
    /// Print a policy and its default version's document.
    Get {
        /// Policy name.
        name: String,
    },
    /// List policies.
    List,
    /// Delete a policy (it must be attached to nothing).
    Delete {
        /// Policy name.
        name: String,
    },
    /// Add a version to a policy (at most 5 are kept).
    CreateVersion {
        /// Policy name.
        name: String,
        /// The document (file; `-` reads standard input).
        #[arg(long)]
        document: String,
        /// Make it the default version.
        #[arg(long)]
        set_default: bool,
    },
    /// Delete a non-default policy version.
    DeleteVersion {
        /// Policy name.
        name: String,
        /// Version id.
        version: String,
    },
    /// Make a version the default one.
    SetDefault {
        /// Policy name.
        name: String,
        /// Version id.
        version: String,
    },
    /// Attach a policy to a certificate (id or ARN) or an access key (AKIA...).
    Attach {
        /// Policy name.
        name: String,
        /// Certificate id or ARN.
        target: String,
    },
    /// Detach a policy from a certificate (id or ARN).
    Detach {
        /// Policy name.
        name: String,
        /// Certificate id or ARN.
        target: String,
    },
    /// The certificates a policy is attached to.
    Targets {
        /// Policy name.
        name: String,
    },
}

fn run(fut: impl Future<Output = Result<Value, String>>) -> ExitCode {
    match runtime() {
        Ok(rt) => finish(&rt, fut),
        Err(c) => c,
    }
}

/// Runs `shoal thing ...`.
pub fn thing(ep: &Endpoint, cmd: ThingCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            ThingCmd::Create {
                name,
                thing_type,
                attrs,
            } => {
                let mut body = json!({});
                if let Some(t) = thing_type {
                    body["thingTypeName"] = json!(t);
                }
                if !attrs.is_empty() {
                    body["attributePayload"] = json!({ "attributes": attributes(&attrs) });
                }
                api.post(&format!("/things/{}", encode(&name)), body).await
            }
            ThingCmd::Describe { name } => api.get(&format!("/things/{}", encode(&name)), &[]).await,
            ThingCmd::Update {
                name,
                thing_type,
                remove_type,
                attrs,
                replace,
                expected_version,
            } => {
                let mut body = json!({});
                if let Some(t) = thing_type {
                    body["thingTypeName"] = json!(t);
                }
                if remove_type {
                    body["removeThingType"] = json!(true);
                }
                if !attrs.is_empty() || replace {
                    body["attributePayload"] = json!({ "attributes": attributes(&attrs), "merge": !replace });
                }
                if let Some(v) = expected_version {
                    body["expectedVersion"] = json!(v);
                }
                api.patch(&format!("/things/{}", encode(&name)), body).await?;
                api.get(&format!("/things/{}", encode(&name)), &[]).await
            }
            ThingCmd::Delete {
                name,
                expected_version,
            } => {
                let q: Vec<String> = expected_version
                    .map(|v| format!("expectedVersion={v}"))
                    .into_iter()
                    .collect();
                api.delete(&format!("/things/{}", encode(&name)), &q).await
            }
            ThingCmd::List {
                attr,
                thing_type,
                page,
            } => {
                let mut q = Vec::new();
                if let Some((k, v)) = attr {
                    q.push(format!("attributeName={}", encode(&k)));
                    q.push(format!("attributeValue={}", encode(&v)));
                }
                if let Some(t) = thing_type {
                    q.push(format!("thingTypeName={}", encode(&t)));
                }
                page.push(&mut q);
                api.get("/things", &q).await
            }
            ThingCmd::Principals { name } => {
                api.get(&format!("/things/{}/principals", encode(&name)), &[])
                    .await
            }
            ThingCmd::AttachPrincipal { name, principal } => {
                api.post(
                    &format!("/things/{}/principals", encode(&name)),
                    json!({ "principal": principal }),
                )
                .await
            }
            ThingCmd::DetachPrincipal { name, principal } => {
                api.delete(
                    &format!("/things/{}/principals/{}", encode(&name), encode(&principal)),
                    &[],
                )
                .await
            }
            ThingCmd::Groups { name } => {
                api.get(&format!("/things/{}/thing-groups", encode(&name)), &[])
                    .await
            }
        }
    })
}

/// Runs `shoal thing-type ...`.
pub fn thing_type(ep: &Endpoint, cmd: ThingTypeCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            ThingTypeCmd::Create {
                name,
                description,
                searchable,
            } => {
                let mut props = json!({});
                if let Some(d) = description {
                    props["thingTypeDescription"] = json!(d);
                }
                if !searchable.is_empty() {
                    props["searchableAttributes"] = json!(searchable);
                }
                let body = if props.as_object().is_some_and(Map::is_empty) {
                    json!({})
                } else {
                    json!({ "thingTypeProperties": props })
                };
                api.post(&format!("/thing-types/{}", encode(&name)), body).await
            }
            ThingTypeCmd::Describe { name } => api.get(&format!("/thing-types/{}", encode(&name)), &[]).await,
            ThingTypeCmd::Deprecate { name, undo } => {
                api.post(
                    &format!("/thing-types/{}/deprecate", encode(&name)),
                    json!({ "undoDeprecate": undo }),
                )
                .await
            }
            ThingTypeCmd::Delete { name } => {
                api.delete(&format!("/thing-types/{}", encode(&name)), &[]).await
            }
            ThingTypeCmd::List { page } => {
                let mut q = Vec::new();
                page.push(&mut q);
                api.get("/thing-types", &q).await
            }
        }
    })
}

/// Runs `shoal thing-group ...`.
pub fn thing_group(ep: &Endpoint, cmd: ThingGroupCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            ThingGroupCmd::Create {
                name,
                parent,
                description,
                attrs,
            } => {
                let mut body = json!({});
                if let Some(p) = parent {
                    body["parentGroupName"] = json!(p);
                }
                let mut props = json!({});
                if let Some(d) = description {
                    props["thingGroupDescription"] = json!(d);
                }
                if !attrs.is_empty() {
                    props["attributePayload"] = json!({ "attributes": attributes(&attrs) });
                }
                if props.as_object().is_some_and(|m| !m.is_empty()) {
                    body["thingGroupProperties"] = props;
                }
                api.post(&format!("/thing-groups/{}", encode(&name)), body).await
            }
            ThingGroupCmd::Describe { name } => {
                api.get(&format!("/thing-groups/{}", encode(&name)), &[]).await
            }
            ThingGroupCmd::Delete { name } => {
                api.delete(&format!("/thing-groups/{}", encode(&name)), &[]).await
            }
            ThingGroupCmd::List { page } => {
                let mut q = Vec::new();
                page.push(&mut q);
                api.get("/thing-groups", &q).await
            }
            ThingGroupCmd::Add { group, thing } => {
                api.put(
                    &format!("/thing-groups/{}/things/{}", encode(&group), encode(&thing)),
                    json!({}),
                )
                .await
            }
            ThingGroupCmd::Remove { group, thing } => {
                api.delete(
                    &format!("/thing-groups/{}/things/{}", encode(&group), encode(&thing)),
                    &[],
                )
                .await
            }
            ThingGroupCmd::Members { group, page } => {
                let mut q = Vec::new();
                page.push(&mut q);
                api.get(&format!("/thing-groups/{}/things", encode(&group)), &q)
                    .await
            }
        }
    })
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("restricting {}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn str_field<'a>(v: &'a Value, k: &str) -> Result<&'a str, String> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the server's answer has no {k}"))
}

/// Writes an issued certificate, its keys and the root CA into `dir`; replaces the private
/// key in `v` by the path it was written to.
async fn save_issued(api: &Api, dir: &Path, mut v: Value) -> Result<Value, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cert = dir.join("certificate.pem.crt");
    let key = dir.join("private.pem.key");
    let public = dir.join("public.pem.key");
    let root = dir.join("root-ca.pem");
    write_file(&cert, str_field(&v, "certificatePem")?, false)?;
    let pair = v.get("keyPair").cloned().unwrap_or(Value::Null);
    write_file(&key, str_field(&pair, "PrivateKey")?, true)?;
    write_file(&public, str_field(&pair, "PublicKey")?, false)?;
    let ca = api.get("/ca", &[]).await?;
    write_file(&root, str_field(&ca, "certificatePem")?, false)?;
    if let Some(m) = v.as_object_mut() {
        m.remove("keyPair");
        m.remove("certificatePem");
        m.insert(
            "files".into(),
            json!({
                "certificate": cert.display().to_string(),
                "privateKey": key.display().to_string(),
                "publicKey": public.display().to_string(),
                "rootCa": root.display().to_string(),
            }),
        );
    }
    Ok(v)
}

/// With `--out PATH`: writes the answer's `certificatePem` to `PATH` and replaces it in the
/// printed answer by `"file": PATH`; without, the answer as it is.
fn pem_to_file(mut v: Value, out: Option<&Path>) -> Result<Value, String> {
    let Some(path) = out else {
        return Ok(v);
    };
    write_file(path, str_field(&v, "certificatePem")?, false)?;
    if let Some(m) = v.as_object_mut() {
        m.remove("certificatePem");
        m.insert("file".into(), json!(path.display().to_string()));
    }
    Ok(v)
}

fn set_status(id: &str, status: &str) -> (String, Value) {
    (
        format!("/certificates/{}/status", encode(id)),
        json!({ "newStatus": status }),
    )
}

/// Runs `shoal cert ...`.
pub fn cert(ep: &Endpoint, cmd: CertCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            CertCmd::Create {
                thing,
                common_name,
                out,
                inactive,
            } => {
                let mut body = json!({ "setAsActive": !inactive });
                if let Some(t) = thing {
                    body["thingName"] = json!(t);
                }
                if let Some(cn) = common_name {
                    body["commonName"] = json!(cn);
                }
                let v = api.post("/certificates", body).await?;
                match out {
                    Some(dir) => save_issued(&api, &dir, v).await,
                    None => Ok(v),
                }
            }
            CertCmd::SignCsr {
                csr,
                thing,
                out,
                inactive,
            } => {
                let pem = read_input(&csr)?;
                let v = api
                    .post(
                        "/certificates/from-csr",
                        json!({ "certificateSigningRequest": pem, "setAsActive": !inactive, "thingName": thing }),
                    )
                    .await?;
                pem_to_file(v, out.as_deref())
            }
            CertCmd::Register { pem, thing, inactive } => {
                let pem = read_input(&pem)?;
                api.post(
                    "/certificates/register",
                    json!({ "certificatePem": pem, "setAsActive": !inactive, "thingName": thing }),
                )
                .await
            }
            CertCmd::List => api.get("/certificates", &[]).await,
            CertCmd::Describe { id } => api.get(&format!("/certificates/{}", encode(&id)), &[]).await,
            CertCmd::Activate { id } => {
                let (p, b) = set_status(&id, "ACTIVE");
                api.put(&p, b).await
            }
            CertCmd::Deactivate { id } => {
                let (p, b) = set_status(&id, "INACTIVE");
                api.put(&p, b).await
            }
            CertCmd::Revoke { id } => {
                let (p, b) = set_status(&id, "REVOKED");
                api.put(&p, b).await
            }
            CertCmd::Delete { id } => api.delete(&format!("/certificates/{}", encode(&id)), &[]).await,
        }
    })
}

/// Runs `shoal ca ...`.
pub fn ca(ep: &Endpoint, cmd: CaCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            CaCmd::Get { out } => pem_to_file(api.get("/ca", &[]).await?, out.as_deref()),
            CaCmd::Register {
                pem,
                inactive,
                auto_registration,
            } => {
                let pem = read_input(&pem)?;
                api.post(
                    "/ca-certificates",
                    json!({
                        "caCertificate": pem,
                        "setAsActive": !inactive,
                        "allowAutoRegistration": auto_registration,
                    }),
                )
                .await
            }
            CaCmd::List => api.get("/ca-certificates", &[]).await,
            CaCmd::Update {
                id,
                status,
                auto_registration,
            } => {
                let mut body = json!({});
                if let Some(s) = status {
                    body["newStatus"] = json!(s.to_ascii_uppercase());
                }
                if let Some(a) = auto_registration {
                    body["newAutoRegistrationStatus"] = json!(a.to_ascii_uppercase());
                }
                api.patch(&format!("/ca-certificates/{}", encode(&id)), body)
                    .await
            }
        }
    })
}

/// A policy document from a file or standard input, checked to be JSON before it is sent.
fn read_document(arg: &str) -> Result<Value, String> {
    let text = read_input(arg)?;
    serde_json::from_str::<Value>(&text).map_err(|e| format!("the policy document is not JSON: {e}"))?;
    Ok(Value::String(text))
}

/// `-` is standard input; anything else is a file path.
fn read_input(arg: &str) -> Result<String, String> {
    if arg == "-" {
        read_arg(arg)
    } else {
        std::fs::read_to_string(arg).map_err(|e| format!("reading {arg}: {e}"))
    }
}

/// Runs `shoal policy ...`.
pub fn policy(ep: &Endpoint, cmd: PolicyCmd) -> ExitCode {
    let api = Api::new(ep);
    run(async move {
        match cmd {
            PolicyCmd::Create { name, document } => {
                let doc = read_document(&document)?;
                api.post("/policies", json!({ "policyName": name, "policyDocument": doc }))
                    .await
            }
            PolicyCmd::Get { name } => api.get(&format!("/policies/{}", encode(&name)), &[]).await,
            PolicyCmd::List => api.get("/policies", &[]).await,
            PolicyCmd::Delete { name } => api.delete(&format!("/policies/{}", encode(&name)), &[]).await,
            PolicyCmd::CreateVersion {
                name,
                document,
                set_default,
            } => {
                let doc = read_document(&document)?;
                api.post(
                    &format!("/policies/{}/versions", encode(&name)),
                    json!({ "policyDocument": doc, "setAsDefault": set_default }),
                )
                .await
            }
            PolicyCmd::DeleteVersion { name, version } => {
                api.delete(
                    &format!("/policies/{}/versions/{}", encode(&name), encode(&version)),
                    &[],
                )
                .await
            }
            PolicyCmd::SetDefault { name, version } => {
                api.put(
                    &format!("/policies/{}/default-version", encode(&name)),
                    json!({ "versionId": version }),
                )
                .await
            }
            PolicyCmd::Attach { name, target } => {
                api.post(
                    &format!("/policies/{}/targets", encode(&name)),
                    json!({ "target": target }),
                )
                .await
            }
            PolicyCmd::Detach { name, target } => {
                api.delete(
                    &format!("/policies/{}/targets/{}", encode(&name), encode(&target)),
                    &[],
                )
                .await
            }
            PolicyCmd::Targets { name } => {
                api.get(&format!("/policies/{}/targets", encode(&name)), &[])
                    .await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_arguments() {
        assert_eq!(parse_kv("fleet=north"), Ok(("fleet".into(), "north".into())));
        assert_eq!(parse_kv("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_kv("novalue").is_err());
    }

    #[test]
    fn attributes_become_an_object() {
        let v = attributes(&[("a".into(), "1".into()), ("b".into(), String::new())]);
        assert_eq!(v, json!({"a": "1", "b": ""}));
    }
}
