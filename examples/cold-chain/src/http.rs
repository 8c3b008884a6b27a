//! A small SigV4-signed client for Shoal's HTTP API (management under `/api/v1`, the data
//! plane under `/things/{thing}/shadow` and `/topics/...`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::Value;

/// Region of the signatures (Shoal's default `--region`).
pub const REGION: &str = "us-east-1";

/// An access key: the `[default]` profile of an AWS credentials file.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `aws_access_key_id`.
    pub key_id: String,
    /// `aws_secret_access_key`.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the `[default]` profile of an AWS credentials file (Shoal writes one to
    /// `DATA/credentials` at first start).
    pub fn from_file(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
        Credentials::parse(&text).with_context(|| {
            format!(
                "{} has no [default] profile with aws_access_key_id and aws_secret_access_key",
                path.display()
            )
        })
    }

    /// The `[default]` profile of a credentials file's text (keys before any section header
    /// count as `[default]` too).
    pub fn parse(text: &str) -> Option<Credentials> {
        let (key_id, secret) = shoal_auth::sigv4::credentials_in(text, "default")?;
        Some(Credentials { key_id, secret })
    }
}

/// An HTTP answer: status and body (JSON, or the text as a JSON string, or `null` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error message of an error body (`{"message": ...}`), else the body as text.
    pub fn message(&self) -> String {
        match self.body.get("message").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => match &self.body {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            },
        }
    }
}

/// A signed client for one Shoal.
#[derive(Debug, Clone)]
pub struct ShoalHttp {
    base: reqwest::Url,
    creds: Credentials,
    client: reqwest::Client,
}

impl ShoalHttp {
    /// A client for the Shoal at `base` (`http://127.0.0.1:8080`). For an `https://` base,
    /// `ca_pem` (Shoal's CA, `DATA/tls/ca.pem`) is the only trusted root.
    pub fn new(base: &str, creds: Credentials, ca_pem: Option<&[u8]>) -> anyhow::Result<ShoalHttp> {
        let base = reqwest::Url::parse(base.trim_end_matches('/'))
            .with_context(|| format!("{base:?} is not a URL (e.g. http://127.0.0.1:8080)"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            bail!("{base} is not an http:// or https:// URL");
        }
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            for c in reqwest::Certificate::from_pem_bundle(pem).context("reading the CA certificate")? {
                b = b.add_root_certificate(c);
            }
        }
        Ok(ShoalHttp {
            base,
            creds,
            client: b.build().context("building the HTTP client")?,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with an optional JSON body.
    pub async fn put(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        self.request(Method::PUT, path, body).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.request(Method::PATCH, path, Some(body)).await
    }

    /// One signed request. `path` is sent as given (already percent-encoded), query included.
    /// Fails only when no answer came (Shoal unreachable, timeout); any status is an answer.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        let url = self
            .base
            .join(path)
            .with_context(|| format!("bad request path {path:?}"))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => bail!("{url} has no host"),
        };
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        // Control-plane calls are signed for `iot`, the data plane for `iotdata` (as the AWS
        // SDKs do).
        let service = if url.path().starts_with("/api/") {
            "iot"
        } else {
            "iotdata"
        };
        let signed = shoal_auth::sigv4::sign(
            &shoal_auth::sigv4::Request {
                method: method.as_str(),
                path: url.path(),
                query: url.query().unwrap_or(""),
                headers: vec![("host", host.as_bytes())],
            },
            &bytes,
            &shoal_auth::sigv4::SigningKey {
                key_id: &self.creds.key_id,
                secret: &self.creds.secret,
                region: REGION,
                service,
            },
            shoal_auth::sigv4::unix_now(),
        );
        let mut req = self.client.request(method.clone(), url.clone());
        for (name, value) in signed {
            req = req.header(name, value);
        }
        if body.is_some() {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "cannot connect"
            } else if e.is_timeout() {
                "no answer in time"
            } else {
                "request failed"
            };
            anyhow::anyhow!(
                "{method} {url}: {why} (is shoal running at {}?): {e}",
                self.base()
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_profile() {
        let text = "[other]\naws_access_key_id = X\naws_secret_access_key = Y\n\n[default]\n\
                    # comment\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key=secret/with=equals\n";
        let c = Credentials::parse(text).unwrap();
        assert_eq!(c.key_id, "AKIDEXAMPLE");
        assert_eq!(c.secret, "secret/with=equals");
        assert!(!format!("{c:?}").contains("secret/with"));
        assert!(Credentials::parse("[other]\naws_access_key_id = X\naws_secret_access_key = Y\n").is_none());
        assert!(Credentials::parse("aws_access_key_id = A\n").is_none());
        assert!(Credentials::parse("aws_access_key_id = A\naws_secret_access_key = B").is_some());
    }

    #[test]
    fn rejects_bad_bases() {
        let c = Credentials {
            key_id: "a".into(),
            secret: "b".into(),
        };
        assert!(ShoalHttp::new("127.0.0.1:8080", c.clone(), None).is_err());
        assert!(ShoalHttp::new("ftp://x", c.clone(), None).is_err());
        let h = ShoalHttp::new("http://127.0.0.1:8080/", c, None).unwrap();
        assert_eq!(h.base(), "http://127.0.0.1:8080");
    }

    #[test]
    fn answer_messages() {
        let a = Answer {
            status: 409,
            body: serde_json::json!({"message": "exists"}),
        };
        assert!(!a.ok());
        assert_eq!(a.message(), "exists");
    }
}
