//! Operator verbs that talk to a running Shoal over its HTTP API and print JSON.
//!
//! `shoal shadow get|update|delete|list` use the AWS data-plane paths, so what they print is
//! exactly what boto3 would receive. Errors go to stderr with the server's message and a
//! non-zero exit code.

use std::io::Read as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the server is, and the access key requests are signed with (SigV4).
///
/// The key comes from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` when both are set, else
/// from a credentials file (AWS's format): `--credentials-file`, else
/// `$SHOAL_DATA_DIR/credentials`, else `./shoal-data/credentials` (where `shoal serve` writes
/// its first admin key). Without one, requests go unsigned.
#[derive(Debug, Clone, Args)]
pub struct Endpoint {
    /// Base URL of Shoal's HTTP listener.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub endpoint: String,
    /// Credentials file (AWS format: `[profile]`, `aws_access_key_id`, `aws_secret_access_key`).
    #[arg(long, global = true, env = "SHOAL_CREDENTIALS_FILE")]
    pub credentials_file: Option<std::path::PathBuf>,
    /// Profile in the credentials file.
    #[arg(long, global = true, env = "AWS_PROFILE", default_value = "default")]
    pub profile: String,
    /// Region of the signature's scope.
    #[arg(long, global = true, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Print the server's answer as JSON (the default when standard output is not a terminal).
    #[arg(long, global = true, conflicts_with = "table")]
    pub json: bool,
    /// Print tables (the default on a terminal).
    #[arg(long, global = true)]
    pub table: bool,
    /// PEM file of the CA an `https://` endpoint's certificate is checked against (e.g.
    /// `DATA/tls/ca.pem`); default: the system's roots.
    #[arg(long, global = true, env = "SHOAL_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

static CA: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();

/// The HTTP client of the CLI: trusts `--ca-file`, else the system's roots.
pub(crate) fn http_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    match CA.get().and_then(Option::as_ref) {
        Some(pem) => match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(certs) => {
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            Err(e) => eprintln!("shoal: --ca-file: {e}"),
        },
        None => {
            if let Ok(roots) = rustls_native_roots() {
                for c in roots {
                    b = b.add_root_certificate(c);
                }
            }
        }
    }
    b.build().unwrap_or_else(|_| reqwest::Client::new())
}

/// The system's CA bundle (Debian's path), as reqwest certificates.
fn rustls_native_roots() -> Result<Vec<reqwest::Certificate>, String> {
    for p in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(p) {
            return reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string());
        }
    }
    Ok(Vec::new())
}

/// How answers are printed: tables for people, JSON for scripts.
static TABLES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether answers are printed as JSON (not tables).
pub(crate) fn json_output() -> bool {
    !TABLES.get().copied().unwrap_or(false)
}

/// The CLI's access key: `(id, secret, region)`.
pub(crate) fn credentials() -> Option<(String, String, String)> {
    CREDENTIALS
        .get()
        .and_then(Option::as_ref)
        .map(|c| (c.key_id.clone(), c.secret.clone(), c.region.clone()))
}

/// Chooses the output format once per process.
pub fn init_output(ep: &Endpoint) {
    use std::io::IsTerminal as _;
    let tables = !ep.json && (ep.table || std::io::stdout().is_terminal());
    let _ = TABLES.set(tables);
}

/// The access key the CLI signs with.
#[derive(Debug, Clone)]
struct Credentials {
    key_id: String,
    secret: String,
    region: String,
}

static CREDENTIALS: std::sync::OnceLock<Option<Credentials>> = std::sync::OnceLock::new();

/// Reads `[profile]` of an AWS credentials file.
fn read_profile(path: &std::path::Path, profile: &str) -> Result<Option<(String, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    match shoal_auth::sigv4::credentials_in(&text, profile) {
        Some(pair) => Ok(Some(pair)),
        _ => Err(format!(
            "{} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
            path.display()
        )),
    }
}

/// Finds the access key (see [`Endpoint`]) once per process.
pub fn init_credentials(ep: &Endpoint) -> Result<(), String> {
    let ca = match &ep.ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("--ca-file {}: {e}", p.display()))?),
        None => None,
    };
    let _ = CA.set(ca);
    let found = if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        Some((id, secret))
    } else if let Some(p) = &ep.credentials_file {
        Some(read_profile(p, &ep.profile)?.ok_or_else(|| format!("{} does not exist", p.display()))?)
    } else {
        let dir = std::env::var_os("SHOAL_DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("./shoal-data"));
        read_profile(&dir.join("credentials"), &ep.profile)?
    };
    let _ = CREDENTIALS.set(found.map(|(key_id, secret)| Credentials {
        key_id,
        secret,
        region: ep.region.clone(),
    }));
    Ok(())
}

/// Signs `req` with the CLI's access key, if it has one.
fn sign(req: &mut reqwest::Request) {
    let Some(Some(c)) = CREDENTIALS.get() else {
        return;
    };
    let url = req.url();
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return,
    };
    let body: &[u8] = req.body().and_then(reqwest::Body::as_bytes).unwrap_or_default();
    let added = shoal_auth::sigv4::sign(
        &shoal_auth::sigv4::Request {
            method: req.method().as_str(),
            path: url.path(),
            query: url.query().unwrap_or(""),
            headers: vec![("host", host.as_bytes())],
        },
        body,
        &shoal_auth::sigv4::SigningKey {
            key_id: &c.key_id,
            secret: &c.secret,
            region: &c.region,
            service: "iot",
        },
        shoal_auth::sigv4::unix_now(),
    );
    for (name, value) in added {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, v);
        }
    }
}

/// `shoal shadow ...`
#[derive(Debug, Subcommand)]
pub enum ShadowCmd {
    /// Print a shadow document.
    Get {
        /// Thing name.
        thing: String,
        /// Named shadow (omit for the classic shadow).
        #[arg(long)]
        name: Option<String>,
    },
    /// Update a shadow with a request document (`{"state":{"desired":{...}}}`).
    Update {
        /// Thing name.
        thing: String,
        /// Named shadow.
        #[arg(long)]
        name: Option<String>,
        /// The request document; `-` (default) reads standard input.
        #[arg(long, short, default_value = "-")]
        payload: String,
    },
    /// Delete a shadow.
    Delete {
        /// Thing name.
        thing: String,
        /// Named shadow.
        #[arg(long)]
        name: Option<String>,
    },
    /// List a thing's named shadows.
    List {
        /// Thing name.
        thing: String,
        /// Results per page (1-100).
        #[arg(long)]
        page_size: Option<usize>,
        /// Continue after this token.
        #[arg(long)]
        next_token: Option<String>,
    },
}

/// `shoal publish TOPIC`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name.
    pub topic: String,
    /// Payload; `-` reads standard input.
    #[arg(long, short, default_value = "")]
    pub message: String,
    /// QoS 0 or 1.
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Retain the message.
    #[arg(long)]
    pub retain: bool,
}

pub(crate) fn read_arg(v: &str) -> Result<String, String> {
    if v == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        Ok(s)
    } else {
        Ok(v.to_owned())
    }
}

fn shadow_url(ep: &Endpoint, thing: &str, name: &Option<String>) -> String {
    let mut url = format!(
        "{}/things/{}/shadow",
        ep.endpoint.trim_end_matches('/'),
        encode(thing)
    );
    if let Some(n) = name {
        url.push_str(&format!("?name={}", encode(n)));
    }
    url
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Result<Value, String> {
    let (client, req) = req.build_split();
    let mut req = req.map_err(|e| format!("cannot build the request: {e}"))?;
    sign(&mut req);
    let resp = client
        .execute(req)
        .await
        .map_err(|e| format!("cannot reach Shoal: {e}"))?;
    let status = resp.status();
    let kind = resp
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        Ok(body)
    } else {
        let msg = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("request failed");
        let hint = match kind.as_deref() {
            Some("MissingAuthenticationTokenException") => {
                "\n(no access key found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass \
                 --credentials-file DATA/credentials)"
            }
            _ => "",
        };
        Err(format!(
            "{} {}: {msg}{hint}",
            status.as_u16(),
            kind.unwrap_or_default()
        ))
    }
}

pub(crate) fn finish(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<Value, String>>,
) -> ExitCode {
    match rt.block_on(fut) {
        Ok(v) => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the answer (nothing for `null`). A closed standard output (`shoal ... | head`) is not
/// an error worth a panic: the rest is simply not printed.
pub(crate) fn print_json(v: &Value) {
    if TABLES.get().copied().unwrap_or(false) {
        if !v.is_null() {
            print_text(&render(v));
        }
        return;
    }
    if !v.is_null() {
        print_text(&format!(
            "{}\n",
            serde_json::to_string_pretty(v).unwrap_or_default()
        ));
    }
}

/// Writes `text` to standard output, ignoring a closed pipe.
pub(crate) fn print_text(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Shoal's `/api/v1` on one server, as the operator verbs call it: JSON in and out through
/// [`send`], paths relative to `/api/v1`, queries already encoded.
pub(crate) struct Api {
    base: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(ep: &Endpoint) -> Api {
        Api {
            base: format!("{}/api/v1", ep.endpoint.trim_end_matches('/')),
            http: http_client(),
        }
    }

    pub(crate) fn url(&self, path: &str, query: &[String]) -> String {
        if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{}", self.base, query.join("&"))
        }
    }

    pub(crate) async fn get(&self, path: &str, query: &[String]) -> Result<Value, String> {
        send(self.http.get(self.url(path, query))).await
    }

    pub(crate) async fn delete(&self, path: &str, query: &[String]) -> Result<Value, String> {
        send(self.http.delete(self.url(path, query))).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.post_query(path, &[], &body).await
    }

    pub(crate) async fn post_query(
        &self,
        path: &str,
        query: &[String],
        body: &Value,
    ) -> Result<Value, String> {
        send(self.http.post(self.url(path, query)).json(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> Result<Value, String> {
        send(self.http.put(self.url(path, &[])).json(&body)).await
    }

    pub(crate) async fn patch(&self, path: &str, body: Value) -> Result<Value, String> {
        send(self.http.patch(self.url(path, &[])).json(&body)).await
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("shoal: cannot start a runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Runs `shoal shadow ...`.
pub fn shadow(ep: &Endpoint, cmd: ShadowCmd) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let http = http_client();
    match cmd {
        ShadowCmd::Get { thing, name } => finish(&rt, send(http.get(shadow_url(ep, &thing, &name)))),
        ShadowCmd::Delete { thing, name } => finish(&rt, send(http.delete(shadow_url(ep, &thing, &name)))),
        ShadowCmd::Update { thing, name, payload } => {
            let body = match read_arg(&payload) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("shoal: {e}");
                    return ExitCode::FAILURE;
                }
            };
            finish(&rt, send(http.post(shadow_url(ep, &thing, &name)).body(body)))
        }
        ShadowCmd::List {
            thing,
            page_size,
            next_token,
        } => {
            let mut url = format!(
                "{}/api/things/shadow/ListNamedShadowsForThing/{}",
                ep.endpoint.trim_end_matches('/'),
                encode(&thing)
            );
            let mut q = Vec::new();
            if let Some(p) = page_size {
                q.push(format!("pageSize={p}"));
            }
            if let Some(t) = next_token {
                q.push(format!("nextToken={}", encode(&t)));
            }
            if !q.is_empty() {
                url.push('?');
                url.push_str(&q.join("&"));
            }
            finish(&rt, send(http.get(url)))
        }
    }
}

/// Runs `shoal publish ...`.
pub fn publish(ep: &Endpoint, args: PublishArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let body = match read_arg(&args.message) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!(
        "{}/topics/{}?qos={}&retain={}",
        ep.endpoint.trim_end_matches('/'),
        encode(&args.topic),
        args.qos,
        args.retain
    );
    finish(&rt, send(http_client().post(url).body(body)))
}

/// Longest cell printed; longer values are cut with `…`.
const MAX_CELL: usize = 48;

fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.lines().next().unwrap_or_default().to_owned(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    if s.chars().count() > MAX_CELL {
        let mut cut: String = s.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

fn table(rows: &[&serde_json::Map<String, Value>]) -> String {
    let mut cols: Vec<&str> = Vec::new();
    for r in rows {
        for (k, v) in r.iter() {
            // Certificates, documents and other bulky values stay out of tables.
            let bulky = v.as_str().is_some_and(|s| s.contains('\n')) || v.is_object();
            if !bulky && !cols.contains(&k.as_str()) {
                cols.push(k);
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r.get(*c).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let mut l = String::new();
        for (i, v) in vals.iter().enumerate() {
            if i + 1 == vals.len() {
                l.push_str(v);
            } else {
                l.push_str(&format!("{v:<w$}  ", w = widths[i]));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        out.push_str(&line(r));
    }
    out
}

/// An answer as people read it: a list of records as a table (with the other fields after
/// it), a record as `field  value` lines, anything else as it is.
pub(crate) fn render(v: &Value) -> String {
    match v {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let rows: Vec<_> = items.iter().filter_map(Value::as_object).collect();
            table(&rows)
        }
        Value::Object(m) => {
            let list = m.iter().find(|(_, v)| {
                v.as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
            });
            let mut out = String::new();
            if let Some((name, Value::Array(items))) = list {
                let rows: Vec<_> = items.iter().filter_map(Value::as_object).collect();
                out.push_str(&table(&rows));
                for (k, v) in m.iter().filter(|(k, _)| *k != name) {
                    if !v.is_null() {
                        out.push_str(&format!("{k}: {}\n", cell(v)));
                    }
                }
                return out;
            }
            let w = m.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            for (k, v) in m {
                let text = match v {
                    Value::String(s) if s.contains('\n') => format!("\n{s}"),
                    Value::Object(_) | Value::Array(_) => serde_json::to_string_pretty(v)
                        .unwrap_or_default()
                        .replace('\n', &format!("\n{:w$}  ", "")),
                    other => cell(other),
                };
                out.push_str(&format!("{k:<w$}  {}\n", text.trim_end()));
            }
            out
        }
        Value::Array(a) if a.is_empty() => "(none)\n".into(),
        Value::String(s) => format!("{s}\n"),
        other => format!("{other}\n"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn lists_become_tables_and_records_field_lines() {
        let v = json!({"keys": [
            {"accessKeyId": "AKIA1", "admin": true, "status": "Active", "policies": ["a", "b"]},
            {"accessKeyId": "AKIA2", "admin": false, "status": "Inactive", "policies": []},
        ], "nextToken": "t"});
        let t = super::render(&v);
        let lines: Vec<&str> = t.lines().collect();
        // Columns in the answer's (sorted) field order.
        assert_eq!(lines[0], "ACCESSKEYID  ADMIN  POLICIES  STATUS");
        assert_eq!(lines[1], "AKIA1        true   a,b       Active");
        assert_eq!(lines[2], "AKIA2        false            Inactive");
        assert_eq!(lines[3], "nextToken: t");
        let r = super::render(&json!({"thingName": "t1", "version": 3, "pem": "-----BEGIN\nX\n-----END"}));
        assert!(r.contains("thingName  t1\n"), "{r}");
        assert!(r.contains("version    3\n"), "{r}");
        assert!(r.contains("-----BEGIN\nX"), "{r}");
        assert_eq!(super::render(&json!([])), "(none)\n");
        let long = "x".repeat(100);
        assert!(super::render(&json!([{"a": long}])).contains('…'));
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(super::encode("fleet/truck 1"), "fleet%2Ftruck%201");
        assert_eq!(super::encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
