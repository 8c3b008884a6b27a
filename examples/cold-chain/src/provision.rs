//! Registers the fleet with Shoal over its HTTP API (SigV4-signed with an admin key): the thing
//! type `refrigerated-truck`, the static group `fleet`, one thing per truck, one device
//! certificate per truck, and the single least-privilege policy `truck-policy` attached to
//! every certificate.
//!
//! Idempotent: things that exist are updated, existing memberships, attachments and the policy
//! are fine, and a certificate saved in the state directory by an earlier run is reused while
//! Shoal still knows it as `ACTIVE` (a new one is issued otherwise, e.g. against a fresh Shoal).
//!
//! State directory layout, per truck: `{state_dir}/{truck}/certificate.pem`,
//! `{state_dir}/{truck}/private.key` (mode 0600) and `{state_dir}/{truck}/certificate.json`
//! (`{"certificateId", "certificateArn"}`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::http::{Answer, ShoalHttp};
use crate::truck::number;

/// The fleet's thing type.
pub const THING_TYPE: &str = "refrigerated-truck";
/// The fleet's static thing group.
pub const THING_GROUP: &str = "fleet";
/// The policy attached to every truck's certificate.
pub const POLICY_NAME: &str = "truck-policy";
/// The cargo attribute (attribute values may not contain spaces).
pub const CARGO: &str = "frozen-fish";
/// The named shadow holding a truck's planned route: `state.desired` is
/// `{"name", "points": [[lat, lon], ...], "corridorM"}`, read by the `cold-chain-alerts` plugin
/// (corridor deviations), claim reports and the dashboard. The truck itself never reads it.
pub const ROUTE_SHADOW: &str = "route";
/// How far from its planned route a truck may be, metres.
pub const CORRIDOR_M: f64 = 2_000.0;

/// What to register for one truck.
#[derive(Debug, Clone, PartialEq)]
pub struct TruckSpec {
    /// Thing name (`truck-7`).
    pub name: String,
    /// Route name (`hamburg-copenhagen`), a thing attribute.
    pub route: String,
    /// Setpoint, °C, a thing attribute.
    pub setpoint_c: f64,
    /// The planned route's polyline, `(lat, lon)`, for the named shadow [`ROUTE_SHADOW`].
    pub route_points: Vec<(f64, f64)>,
}

/// A registered truck and where its credentials are.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionedTruck {
    /// Thing name, also its MQTT client id.
    pub name: String,
    /// The certificate's id.
    pub certificate_id: String,
    /// The certificate's ARN.
    pub certificate_arn: String,
    /// The certificate (PEM).
    pub cert_path: PathBuf,
    /// Its private key (PEM).
    pub key_path: PathBuf,
    /// The certificate came from the state directory (an earlier run), not issued now.
    pub reused: bool,
}

/// The `truck-policy` document for the ARN prefix `arn:aws:iot:{region}:{account}`: connect
/// only as the thing the certificate is attached to, publish only its telemetry
/// (`fleet/{thing}/telemetry`: not its alerts or silence, which the rules publish) and to the
/// thing's own classic shadow (`get`, `update`), subscribe to and
/// receive only that shadow's answers. Named shadows (the planned route) stay out of reach.
pub fn truck_policy_document(arn_prefix: &str) -> Value {
    let thing = "${iot:Connection.Thing.ThingName}";
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAsOwnThing",
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": format!("{arn_prefix}:client/{thing}"),
            },
            {
                "Sid": "PublishOwnTelemetryAndShadow",
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [
                    format!("{arn_prefix}:topic/fleet/{thing}/telemetry"),
                    format!("{arn_prefix}:topic/$aws/things/{thing}/shadow/get"),
                    format!("{arn_prefix}:topic/$aws/things/{thing}/shadow/update"),
                ],
            },
            {
                "Sid": "SubscribeOwnShadow",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    format!("{arn_prefix}:topicfilter/$aws/things/{thing}/shadow/get/*"),
                    format!("{arn_prefix}:topicfilter/$aws/things/{thing}/shadow/update/*"),
                ],
            },
            {
                "Sid": "ReceiveOwnShadow",
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [
                    format!("{arn_prefix}:topic/$aws/things/{thing}/shadow/get/*"),
                    format!("{arn_prefix}:topic/$aws/things/{thing}/shadow/update/*"),
                ],
            },
        ],
    })
}

/// `arn:aws:iot:us-east-1:000000000000` from any ARN of the deployment.
pub fn arn_prefix(arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6 && parts[0] == "arn" && parts[2] == "iot").then(|| parts[..5].join(":"))
}

/// Fails with a readable message unless the answer is 2xx or one of `also_fine`.
fn check(a: &Answer, what: &str, also_fine: &[u16]) -> anyhow::Result<()> {
    if a.ok() || also_fine.contains(&a.status) {
        return Ok(());
    }
    let hint = match a.status {
        401 | 403 => " (check --credentials-file: it must hold an admin access key of this shoal)",
        _ => "",
    };
    bail!("{what}: HTTP {} {}{hint}", a.status, a.message())
}

/// Registers the fleet (see the module documentation) and returns each truck's credentials,
/// in the order of `trucks`.
pub async fn provision(
    api: &ShoalHttp,
    state_dir: &Path,
    trucks: &[TruckSpec],
) -> anyhow::Result<Vec<ProvisionedTruck>> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;

    let a = api
        .post(
            &format!("/api/v1/thing-types/{THING_TYPE}"),
            &json!({"thingTypeProperties": {
                "thingTypeDescription": "Refrigerated truck with a cold-chain logger",
                "searchableAttributes": ["route", "cargo", "setpoint"],
            }}),
        )
        .await
        .context("registering the thing type")?;
    check(&a, &format!("creating thing type {THING_TYPE}"), &[409])?;

    let a = api
        .post(
            &format!("/api/v1/thing-groups/{THING_GROUP}"),
            &json!({"thingGroupProperties": {
                "thingGroupDescription": "Cold-chain fleet (simulated)",
            }}),
        )
        .await?;
    check(&a, &format!("creating thing group {THING_GROUP}"), &[409])?;

    let mut prefix: Option<String> = None;
    for t in trucks {
        let arn = ensure_thing(api, t).await?;
        let plan = json!({"state": {"desired": {
            "name": t.route,
            "points": t.route_points.iter().map(|&(lat, lon)| [lat, lon]).collect::<Vec<_>>(),
            "corridorM": CORRIDOR_M,
        }}});
        let a = api
            .post(&format!("/things/{}/shadow?name={ROUTE_SHADOW}", t.name), &plan)
            .await?;
        check(&a, &format!("writing {}'s planned route", t.name), &[])?;
        if prefix.is_none() {
            prefix = arn.as_deref().and_then(arn_prefix);
        }
        let a = api
            .put(
                &format!("/api/v1/thing-groups/{THING_GROUP}/things/{}", t.name),
                Some(&json!({})),
            )
            .await?;
        check(&a, &format!("adding {} to group {THING_GROUP}", t.name), &[])?;
    }

    let prefix = prefix.unwrap_or_else(|| "arn:aws:iot:*:*".to_owned());
    let a = api
        .post(
            "/api/v1/policies",
            &json!({"policyName": POLICY_NAME, "policyDocument": truck_policy_document(&prefix)}),
        )
        .await?;
    check(&a, &format!("creating policy {POLICY_NAME}"), &[409])?;

    let mut out = Vec::with_capacity(trucks.len());
    for t in trucks {
        let p = ensure_certificate(api, state_dir, &t.name).await?;
        let a = api
            .post(
                &format!("/api/v1/policies/{POLICY_NAME}/targets"),
                &json!({"target": p.certificate_id}),
            )
            .await?;
        check(
            &a,
            &format!("attaching {POLICY_NAME} to {}'s certificate", t.name),
            &[],
        )?;
        out.push(p);
    }
    Ok(out)
}

/// Creates or updates the thing; returns its ARN when Shoal said it.
async fn ensure_thing(api: &ShoalHttp, t: &TruckSpec) -> anyhow::Result<Option<String>> {
    let setpoint = match number(t.setpoint_c) {
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    let body = json!({
        "thingTypeName": THING_TYPE,
        "attributePayload": {"attributes": {
            "route": t.route,
            "cargo": CARGO,
            "setpoint": setpoint,
        }},
    });
    let path = format!("/api/v1/things/{}", t.name);
    let a = api.post(&path, &body).await?;
    if a.status == 409 {
        // It exists with other attributes (another route or setpoint): bring it up to date.
        let a = api.patch(&path, &body).await?;
        check(&a, &format!("updating thing {}", t.name), &[])?;
        let d = api.get(&path).await?;
        check(&d, &format!("describing thing {}", t.name), &[])?;
        return Ok(d.body.get("thingArn").and_then(Value::as_str).map(str::to_owned));
    }
    check(&a, &format!("creating thing {}", t.name), &[])?;
    Ok(a.body.get("thingArn").and_then(Value::as_str).map(str::to_owned))
}

/// Reuses the certificate saved for `thing` if Shoal still has it active, else issues one.
async fn ensure_certificate(
    api: &ShoalHttp,
    state_dir: &Path,
    thing: &str,
) -> anyhow::Result<ProvisionedTruck> {
    let dir = state_dir.join(thing);
    let cert_path = dir.join("certificate.pem");
    let key_path = dir.join("private.key");
    let meta_path = dir.join("certificate.json");

    if let Some((id, arn)) = saved_certificate(&meta_path, &cert_path, &key_path) {
        let a = api.get(&format!("/api/v1/certificates/{id}")).await?;
        // DescribeCertificate answers `{"certificateDescription": {..., "status"}}`.
        let desc = a.body.get("certificateDescription").unwrap_or(&a.body);
        if a.ok() && desc.get("status").and_then(Value::as_str) == Some("ACTIVE") {
            let a = api
                .post(
                    &format!("/api/v1/things/{thing}/principals"),
                    &json!({"principal": arn}),
                )
                .await?;
            check(&a, &format!("attaching the saved certificate to {thing}"), &[])?;
            return Ok(ProvisionedTruck {
                name: thing.to_owned(),
                certificate_id: id,
                certificate_arn: arn,
                cert_path,
                key_path,
                reused: true,
            });
        }
        check(
            &a,
            &format!("looking up {thing}'s saved certificate {id}"),
            &[404],
        )?;
        tracing::info!(thing, certificate = %id, "the saved certificate is unknown or inactive; issuing a new one");
    }

    let a = api
        .post(
            "/api/v1/certificates",
            &json!({"thingName": thing, "commonName": thing, "setAsActive": true}),
        )
        .await?;
    check(&a, &format!("issuing a certificate for {thing}"), &[])?;
    let field = |v: &Value, path: &[&str]| -> anyhow::Result<String> {
        let mut cur = v;
        for k in path {
            cur = cur.get(*k).unwrap_or(&Value::Null);
        }
        cur.as_str()
            .map(str::to_owned)
            .with_context(|| format!("the certificate answer has no {}", path.join(".")))
    };
    let id = field(&a.body, &["certificateId"])?;
    let arn = field(&a.body, &["certificateArn"])?;
    let pem = field(&a.body, &["certificatePem"])?;
    let key = field(&a.body, &["keyPair", "PrivateKey"])?;

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&key_path, key.as_bytes())?;
    std::fs::write(&cert_path, pem.as_bytes()).with_context(|| format!("writing {}", cert_path.display()))?;
    // Written last: its presence means the other two are complete.
    let meta = json!({"certificateId": id, "certificateArn": arn});
    std::fs::write(&meta_path, format!("{meta:#}\n"))
        .with_context(|| format!("writing {}", meta_path.display()))?;
    Ok(ProvisionedTruck {
        name: thing.to_owned(),
        certificate_id: id,
        certificate_arn: arn,
        cert_path,
        key_path,
        reused: false,
    })
}

/// `(certificateId, certificateArn)` saved by an earlier run, when all three files are there.
fn saved_certificate(meta: &Path, cert: &Path, key: &Path) -> Option<(String, String)> {
    if !cert.is_file() || !key.is_file() {
        return None;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(meta).ok()?).ok()?;
    Some((
        v.get("certificateId")?.as_str()?.to_owned(),
        v.get("certificateArn")?.as_str()?.to_owned(),
    ))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_uses_thing_name_variables_only() {
        let doc = truck_policy_document("arn:aws:iot:us-east-1:000000000000");
        let text = doc.to_string();
        assert!(text.contains("arn:aws:iot:us-east-1:000000000000:client/${iot:Connection.Thing.ThingName}"));
        assert!(text.contains(":topic/fleet/${iot:Connection.Thing.ThingName}/telemetry\""));
        assert!(text.contains(":topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/update/*"));
        assert!(
            !text.contains("/shadow/*"),
            "a truck may not reach its named shadows (the planned route): {text}"
        );
        assert!(
            !text.contains("\"*\""),
            "no resource may be a bare wildcard: {text}"
        );
        // Shoal's limit: 2048 characters without whitespace.
        assert!(text.chars().filter(|c| !c.is_whitespace()).count() <= 2048);
    }

    #[test]
    fn arn_prefixes() {
        assert_eq!(
            arn_prefix("arn:aws:iot:eu-west-1:123456789012:thing/truck-1").as_deref(),
            Some("arn:aws:iot:eu-west-1:123456789012")
        );
        assert_eq!(arn_prefix("arn:aws:s3:::bucket"), None);
        assert_eq!(arn_prefix("truck-1"), None);
    }

    #[test]
    fn saved_certificates_need_all_files() {
        let dir = tempfile::tempdir().unwrap();
        let (m, c, k) = (
            dir.path().join("certificate.json"),
            dir.path().join("certificate.pem"),
            dir.path().join("private.key"),
        );
        assert_eq!(saved_certificate(&m, &c, &k), None);
        std::fs::write(&c, "cert").unwrap();
        write_private(&k, b"key").unwrap();
        assert_eq!(saved_certificate(&m, &c, &k), None);
        std::fs::write(
            &m,
            r#"{"certificateId":"abc","certificateArn":"arn:aws:iot:r:a:cert/abc"}"#,
        )
        .unwrap();
        assert_eq!(
            saved_certificate(&m, &c, &k),
            Some(("abc".into(), "arn:aws:iot:r:a:cert/abc".into()))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&k).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
