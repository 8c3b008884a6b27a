//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`): verifying a request's signature (the HTTP
//! listener) and signing one (the CLI, tests, benchmarks).
//!
//! Both directions build the same canonical request, so a request signed here verifies here;
//! the rules are botocore's, which AWS IoT's clients share:
//! - the canonical URI is the **raw** (still percent-encoded) path with dot segments and empty
//!   segments removed, percent-encoded once more (every byte but `A-Za-z0-9-_.~/`), so
//!   `/topics/a%2Fb` signs as `/topics/a%252Fb`;
//! - the canonical query decodes each `name=value` and re-encodes both strictly, sorted;
//! - signed header values are trimmed, inner runs of spaces collapsed, repeats joined by `,`;
//! - the payload hash is the hex SHA-256 of the body (`x-amz-content-sha256`, when sent, must
//!   be that hash).
//!
//! A signature is accepted when it was made with the key's secret over this request, for one
//! of [`SERVICES`], within [`MAX_SKEW_SECS`] of the server's clock (a presigned URL: from its
//! `X-Amz-Date` until `X-Amz-Expires` later, at most [`MAX_EXPIRES_SECS`]). Any region is
//! accepted (Shoal is one region; the signature still covers the one the client chose). Two
//! lenient forms are tried as well, because AWS's own SDKs produce them: the `host` header
//! without its port (the v1 device SDK signs WebSocket URLs that way), and, for presigned
//! URLs, `X-Amz-Security-Token` left out of the canonical query (appended after signing).

use std::fmt;

use ring::{digest, hmac};

/// The only algorithm.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Signing names accepted: botocore's `iot-data` (`iotdata`) and `iot`, AWS's documented
/// `iotdevicegateway` (MQTT over WebSocket) and API Gateway's `execute-api`.
pub const SERVICES: [&str; 4] = ["iotdata", "iotdevicegateway", "iot", "execute-api"];

/// How far a header-signed request's `x-amz-date` may be from the server's clock.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// The longest `X-Amz-Expires` of a presigned URL (AWS: seven days).
pub const MAX_EXPIRES_SECS: i64 = 7 * 24 * 3600;

/// The hex SHA-256 of an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a request is not authenticated. Every variant is answered with 403 and AWS's exception
/// name ([`SigV4Error::aws_type`]) in `x-amzn-ErrorType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// Neither an `Authorization` header nor a presigned query.
    #[error("Missing Authentication Token")]
    Missing,
    /// A part of the authorization is missing or malformed.
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is unknown or not active.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The date is outside the window.
    #[error("{0}")]
    Expired(String),
    /// A well-formed signature that does not match (wrong secret, or the request differs from
    /// what was signed). Carries the canonical request and string to sign the server computed,
    /// as AWS does, so a client author can see what differs.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS \
         Secret Access Key and signing method. Consult the service documentation for details.\n\n\
         The Canonical String for this request should have been\n'{canonical}'\n\n\
         The String-to-Sign should have been\n'{string_to_sign}'\n"
    )]
    Mismatch {
        /// The canonical request computed by the server.
        canonical: String,
        /// The string to sign computed by the server.
        string_to_sign: String,
    },
    /// Something the signature covers is inconsistent (a body that is not the signed hash...).
    #[error("{0}")]
    Invalid(String),
}

impl SigV4Error {
    /// AWS's exception name for the `x-amzn-ErrorType` header.
    pub fn aws_type(&self) -> &'static str {
        match self {
            SigV4Error::Missing => "MissingAuthenticationTokenException",
            SigV4Error::Incomplete(_) => "IncompleteSignatureException",
            SigV4Error::UnknownKey => "UnrecognizedClientException",
            SigV4Error::Expired(_) | SigV4Error::Mismatch { .. } | SigV4Error::Invalid(_) => {
                "InvalidSignatureException"
            }
        }
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SigV4Error::Missing => "missing",
            SigV4Error::Incomplete(_) => "malformed",
            SigV4Error::UnknownKey => "unknown_key",
            SigV4Error::Expired(_) => "expired",
            SigV4Error::Mismatch { .. } => "mismatch",
            SigV4Error::Invalid(_) => "invalid",
        }
    }
}

/// The parts of an HTTP request a signature covers.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path exactly as sent (percent-encoded), without the query.
    pub path: &'a str,
    /// The query exactly as sent, without `?` (empty when none).
    pub query: &'a str,
    /// Every header, names in any case, in the order received.
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl Request<'_> {
    fn header_values(&self, lower: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(lower))
            .map(|(_, v)| *v)
    }

    fn header(&self, lower: &str) -> Option<&str> {
        self.header_values(lower)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The credential scope: `AKID/20150830/us-east-1/iotdata/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Access key id.
    pub key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    /// Region.
    pub region: String,
    /// Signing name.
    pub service: String,
}

impl Credential {
    fn parse(text: &str) -> Result<Credential, SigV4Error> {
        let parts: Vec<&str> = text.split('/').collect();
        let [key_id, date, region, service, terminator] = parts[..] else {
            return Err(SigV4Error::Incomplete(format!(
                "Credential should be scoped to a valid region, service and date: {text:?} is not \
                 ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
            )));
        };
        if terminator != "aws4_request" {
            return Err(SigV4Error::Incomplete(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not {terminator:?}"
            )));
        }
        if key_id.is_empty() || region.is_empty() {
            return Err(SigV4Error::Incomplete(
                "Credential needs an access key id and a region".into(),
            ));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigV4Error::Incomplete(format!(
                "Credential should be scoped to a valid date (YYYYMMDD), not {date:?}"
            )));
        }
        if !SERVICES.contains(&service) {
            return Err(SigV4Error::Incomplete(format!(
                "Credential should be scoped to correct service: one of {}, not {service:?}",
                SERVICES.join(", ")
            )));
        }
        Ok(Credential {
            key_id: key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        })
    }

    fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

/// Where the signature was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The `Authorization` header.
    Header,
    /// A presigned URL's query, valid for this many seconds from its date (`None`: no
    /// `X-Amz-Expires`, as the AWS IoT Device SDK v2 signs WebSocket URLs; then the date must
    /// be within [`MAX_SKEW_SECS`] of the server's clock, as for a header).
    Query {
        /// `X-Amz-Expires`.
        expires: Option<i64>,
    },
}

/// A parsed (not yet verified) signature.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// Whose key, for which scope.
    pub credential: Credential,
    /// Lower-case signed header names, as listed.
    pub signed_headers: Vec<String>,
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// `x-amz-date` / `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
    pub amz_date: String,
    /// Header or presigned URL.
    pub placement: Placement,
}

impl Authorization {
    /// Finds and parses the signature of `req`: the `Authorization` header, else a presigned
    /// query. Checks the form only; [`Authorization::verify`] checks the signature.
    pub fn parse(req: &Request<'_>) -> Result<Authorization, SigV4Error> {
        if let Some(h) = req.header("authorization") {
            return Self::parse_header(req, h);
        }
        let q = decoded_query(req.query);
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let Some(algorithm) = get("X-Amz-Algorithm") else {
            return Err(SigV4Error::Missing);
        };
        if algorithm != ALGORITHM {
            return Err(SigV4Error::Incomplete(format!(
                "X-Amz-Algorithm must be {ALGORITHM}, not {algorithm:?}"
            )));
        }
        let need = |name: &str| {
            get(name).ok_or_else(|| {
                SigV4Error::Incomplete(format!("a presigned URL needs the query parameter {name}"))
            })
        };
        let credential = Credential::parse(need("X-Amz-Credential")?)?;
        let amz_date = need("X-Amz-Date")?.to_owned();
        let expires = match get("X-Amz-Expires") {
            None => None,
            Some(e) => Some(
                e.parse()
                    .ok()
                    .filter(|e| (1..=MAX_EXPIRES_SECS).contains(e))
                    .ok_or_else(|| {
                        SigV4Error::Incomplete(format!(
                            "X-Amz-Expires must be a number of seconds between 1 and {MAX_EXPIRES_SECS}"
                        ))
                    })?,
            ),
        };
        let signed_headers = signed_header_list(need("X-Amz-SignedHeaders")?)?;
        let signature = signature_bytes(need("X-Amz-Signature")?)?;
        Ok(Authorization {
            credential,
            signed_headers,
            signature,
            amz_date,
            placement: Placement::Query { expires },
        })
    }

    fn parse_header(req: &Request<'_>, h: &str) -> Result<Authorization, SigV4Error> {
        let Some(rest) = h.trim().strip_prefix(ALGORITHM) else {
            return Err(SigV4Error::Incomplete(format!(
                "Authorization header must use {ALGORITHM}"
            )));
        };
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                return Err(SigV4Error::Incomplete(format!(
                    "Authorization header requires each component as key=value, not {part:?}"
                )));
            };
            match k.trim() {
                "Credential" => credential = Some(v.trim()),
                "SignedHeaders" => signed = Some(v.trim()),
                "Signature" => signature = Some(v.trim()),
                _ => {}
            }
        }
        let missing = |what: &str| {
            SigV4Error::Incomplete(format!(
                "Authorization header requires '{what}' parameter. Authorization={h}"
            ))
        };
        let credential = Credential::parse(credential.ok_or_else(|| missing("Credential"))?)?;
        let signed_headers = signed_header_list(signed.ok_or_else(|| missing("SignedHeaders"))?)?;
        let signature = signature_bytes(signature.ok_or_else(|| missing("Signature"))?)?;
        let amz_date = match req.header("x-amz-date") {
            Some(d) => d.trim().to_owned(),
            None => {
                return Err(SigV4Error::Incomplete(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header \
                     (Shoal reads X-Amz-Date)"
                        .into(),
                ));
            }
        };
        Ok(Authorization {
            credential,
            signed_headers,
            signature,
            amz_date,
            placement: Placement::Header,
        })
    }

    /// Checks the date window (cheap, before the body is read) against `now` (Unix seconds).
    pub fn check_time(&self, now: i64) -> Result<(), SigV4Error> {
        let t = parse_amz_date(&self.amz_date).ok_or_else(|| {
            SigV4Error::Incomplete(format!(
                "the date {:?} is not in the form YYYYMMDDTHHMMSSZ",
                self.amz_date
            ))
        })?;
        if !self.amz_date.starts_with(&self.credential.date) {
            return Err(SigV4Error::Invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: \
                 {:?} != {:?}",
                self.credential.date,
                &self.amz_date[..8]
            )));
        }
        match self.placement {
            Placement::Header | Placement::Query { expires: None } => {
                if (now - t).abs() > MAX_SKEW_SECS {
                    return Err(SigV4Error::Expired(format!(
                        "Signature expired: {} is now outside the allowed window of {} minutes around {}",
                        self.amz_date,
                        MAX_SKEW_SECS / 60,
                        format_amz_date(now)
                    )));
                }
            }
            Placement::Query {
                expires: Some(expires),
            } => {
                if t - now > MAX_SKEW_SECS {
                    return Err(SigV4Error::Expired(format!(
                        "Signature not yet current: {} is still later than {}",
                        self.amz_date,
                        format_amz_date(now + MAX_SKEW_SECS)
                    )));
                }
                if now > t + expires {
                    return Err(SigV4Error::Expired(format!(
                        "Signature expired: {} is now earlier than {} ({} - {expires} sec.)",
                        format_amz_date(t + expires),
                        format_amz_date(now),
                        format_amz_date(now)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Verifies the signature over `req` with `secret`, given the hex SHA-256 of the body.
    /// Call [`Authorization::check_time`] first.
    pub fn verify(&self, req: &Request<'_>, body_sha256: &str, secret: &str) -> Result<(), SigV4Error> {
        self.verify_with(req, body_sha256, &signing_key(secret, &self.credential))
    }

    /// [`Authorization::verify`] with the signing key from `cache` (derived once per key, day,
    /// region and service instead of four HMACs per request).
    pub fn verify_cached(
        &self,
        req: &Request<'_>,
        body_sha256: &str,
        secret: &str,
        cache: &KeyCache,
    ) -> Result<(), SigV4Error> {
        let (key, cached) = cache.get(&self.credential, secret);
        self.verify_with(req, body_sha256, &key)?;
        if !cached {
            // Only keys that verified a signature are kept: a caller cannot fill the cache
            // with made-up scopes.
            cache.insert(&self.credential, secret, key);
        }
        Ok(())
    }

    fn verify_with(&self, req: &Request<'_>, body_sha256: &str, key: &hmac::Key) -> Result<(), SigV4Error> {
        if !self.signed_headers.iter().any(|h| h == "host") {
            return Err(SigV4Error::Incomplete(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
            ));
        }
        let mut payloads = vec![body_sha256.to_owned()];
        match self.placement {
            Placement::Header => {
                if let Some(claimed) = req.header("x-amz-content-sha256") {
                    let claimed = claimed.trim();
                    if claimed != body_sha256 {
                        return Err(SigV4Error::Invalid(
                            "The provided 'x-amz-content-sha256' header does not match what was computed."
                                .into(),
                        ));
                    }
                }
            }
            Placement::Query { .. } => payloads.push("UNSIGNED-PAYLOAD".to_owned()),
        }
        let host = req.header("host").unwrap_or_default().trim();
        let mut hosts = vec![None];
        if let Some((name, port)) = host.rsplit_once(':')
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            hosts.push(Some(name));
        }
        let omit: &[&str] = match self.placement {
            Placement::Header => &[],
            Placement::Query { .. } => &["X-Amz-Signature"],
        };
        let mut queries = vec![canonical_query(req.query, omit)];
        if matches!(self.placement, Placement::Query { .. })
            && decoded_query(req.query)
                .iter()
                .any(|(k, _)| k == "X-Amz-Security-Token")
        {
            queries.push(canonical_query(
                req.query,
                &["X-Amz-Signature", "X-Amz-Security-Token"],
            ));
        }
        let mut first = None;
        for query in &queries {
            for host_override in &hosts {
                let headers = canonical_headers(req, &self.signed_headers, *host_override)?;
                for payload in &payloads {
                    let canonical = canonical_request(
                        req.method,
                        req.path,
                        query,
                        &headers,
                        &self.signed_headers,
                        payload,
                    );
                    let sts = string_to_sign(&self.amz_date, &self.credential, &canonical);
                    if hmac::verify(key, sts.as_bytes(), &self.signature).is_ok() {
                        return Ok(());
                    }
                    first.get_or_insert((canonical, sts));
                }
            }
        }
        let (canonical, string_to_sign) = first.unwrap_or_default();
        Err(SigV4Error::Mismatch {
            canonical,
            string_to_sign,
        })
    }
}

fn signed_header_list(text: &str) -> Result<Vec<String>, SigV4Error> {
    let v: Vec<String> = text
        .split(';')
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if v.is_empty() {
        return Err(SigV4Error::Incomplete("SignedHeaders is empty".into()));
    }
    Ok(v)
}

fn signature_bytes(hex: &str) -> Result<Vec<u8>, SigV4Error> {
    let bad = || SigV4Error::Incomplete("Signature must be 64 hexadecimal characters".into());
    if hex.len() != 64 {
        return Err(bad());
    }
    (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Percent-encodes everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`), upper-case hex.
pub fn uri_encode(data: &[u8], keep_slash: bool, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 15) as usize] as char);
        }
    }
}

/// Decodes `%XX` escapes (a malformed escape stays as it is; `+` is not a space).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decoded_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v)).into_owned(),
            )
        })
        .collect()
}

/// The canonical URI of a raw path (see the module documentation).
pub fn canonical_uri(raw_path: &str) -> String {
    let segments: Vec<&str> =
        raw_path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .fold(Vec::new(), |mut acc, s| {
                if s == ".." {
                    acc.pop();
                } else {
                    acc.push(s);
                }
                acc
            });
    let mut normalized = String::with_capacity(raw_path.len() + 1);
    normalized.push('/');
    normalized.push_str(&segments.join("/"));
    if raw_path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    let mut out = String::with_capacity(normalized.len() + 8);
    uri_encode(normalized.as_bytes(), true, &mut out);
    out
}

/// The canonical query of a raw query, without the parameters named in `omit`.
pub fn canonical_query(raw: &str, omit: &[&str]) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = percent_decode(k);
            if omit.iter().any(|o| o.as_bytes() == k.as_slice()) {
                return None;
            }
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&k, false, &mut ek);
            uri_encode(&percent_decode(v), false, &mut ev);
            Some((ek, ev))
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn canonical_headers(
    req: &Request<'_>,
    signed: &[String],
    host_override: Option<&str>,
) -> Result<String, SigV4Error> {
    let mut out = String::new();
    let mut names: Vec<&String> = signed.iter().collect();
    names.sort();
    for name in names {
        let values: Vec<String> = if name == "host"
            && let Some(h) = host_override
        {
            vec![h.to_owned()]
        } else {
            req.header_values(name)
                .map(|v| collapse(&String::from_utf8_lossy(v)))
                .collect()
        };
        if values.is_empty() {
            return Err(SigV4Error::Invalid(format!(
                "The header '{name}' is listed in SignedHeaders but is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &str,
    signed: &[String],
    payload: &str,
) -> String {
    let mut names: Vec<&str> = signed.iter().map(String::as_str).collect();
    names.sort_unstable();
    format!(
        "{method}\n{}\n{query}\n{headers}\n{}\n{payload}",
        canonical_uri(path),
        names.join(";")
    )
}

fn string_to_sign(amz_date: &str, cred: &Credential, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        cred.scope(),
        sha256_hex(canonical.as_bytes())
    )
}

fn signing_key(secret: &str, cred: &Credential) -> hmac::Key {
    let step = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let k_date = step(format!("AWS4{secret}").as_bytes(), &cred.date);
    let k_region = step(k_date.as_ref(), &cred.region);
    let k_service = step(k_region.as_ref(), &cred.service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Derived signing keys by (key id, date, region, service), with the secret they came from so
/// a hit is only taken for the same secret. Bounded: cleared past 10,000 entries (a day's keys
/// are re-derived once).
#[derive(Default)]
pub struct KeyCache {
    map: parking_lot::Mutex<std::collections::HashMap<String, (String, hmac::Key)>>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyCache({} keys)", self.map.lock().len())
    }
}

impl KeyCache {
    const MAX: usize = 10_000;

    fn id(cred: &Credential) -> String {
        format!("{}/{}", cred.key_id, cred.scope())
    }

    /// The signing key for `cred`, and whether it came from the cache.
    fn get(&self, cred: &Credential, secret: &str) -> (hmac::Key, bool) {
        if let Some((s, k)) = self.map.lock().get(&Self::id(cred))
            && s == secret
        {
            return (k.clone(), true);
        }
        (signing_key(secret, cred), false)
    }

    fn insert(&self, cred: &Credential, secret: &str, key: hmac::Key) {
        let mut map = self.map.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(Self::id(cred), (secret.to_owned(), key));
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// The clock signatures are made and checked with: Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Unix seconds to `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// What a client signs with.
#[derive(Clone)]
pub struct SigningKey<'a> {
    /// Access key id.
    pub key_id: &'a str,
    /// Secret access key.
    pub secret: &'a str,
    /// Region of the scope.
    pub region: &'a str,
    /// Signing name (one of [`SERVICES`]).
    pub service: &'a str,
}

impl fmt::Debug for SigningKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The access key of `[profile]` in the text of an AWS credentials file (`aws_access_key_id`,
/// `aws_secret_access_key`; `#`/`;` comments; keys before any section header belong to
/// `[default]`): `(id, secret)`, or `None` when the profile lacks either.
pub fn credentials_in(text: &str, profile: &str) -> Option<(String, String)> {
    let (mut section, mut id, mut secret) = ("default".to_owned(), None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some((id.filter(|s| !s.is_empty())?, secret.filter(|s| !s.is_empty())?))
}

/// Signs a request in the `Authorization` header: returns the headers to add
/// (`x-amz-date`, `x-amz-content-sha256`, `authorization`). `req.headers` must hold `host`;
/// every header given is signed.
pub fn sign(req: &Request<'_>, body: &[u8], key: &SigningKey<'_>, now: i64) -> Vec<(&'static str, String)> {
    let amz_date = format_amz_date(now);
    let payload = sha256_hex(body);
    let cred = Credential {
        key_id: key.key_id.to_owned(),
        date: amz_date[..8].to_owned(),
        region: key.region.to_owned(),
        service: key.service.to_owned(),
    };
    let mut all: Vec<(&str, &[u8])> = req.headers.clone();
    all.push(("x-amz-date", amz_date.as_bytes()));
    all.push(("x-amz-content-sha256", payload.as_bytes()));
    let full = Request {
        headers: all,
        ..req.clone()
    };
    let mut signed: Vec<String> = full.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    signed.sort();
    signed.dedup();
    // Every name comes from the request itself, so canonical_headers cannot fail here.
    let headers = canonical_headers(&full, &signed, None).unwrap_or_default();
    let canonical = canonical_request(
        req.method,
        req.path,
        &canonical_query(req.query, &[]),
        &headers,
        &signed,
        &payload,
    );
    let sts = string_to_sign(&amz_date, &cred, &canonical);
    let sig = hmac::sign(&signing_key(key.secret, &cred), sts.as_bytes());
    let auth = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={}",
        key.key_id,
        cred.scope(),
        signed.join(";"),
        hex(sig.as_ref())
    );
    vec![
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", payload),
        ("authorization", auth),
    ]
}

/// A presigned query for `GET path` on `host` (signed header: `host` only; payload: the empty
/// body), valid `expires` seconds: returns the query to append after `?`.
pub fn presign(path: &str, query: &str, host: &str, key: &SigningKey<'_>, now: i64, expires: i64) -> String {
    let amz_date = format_amz_date(now);
    let cred = Credential {
        key_id: key.key_id.to_owned(),
        date: amz_date[..8].to_owned(),
        region: key.region.to_owned(),
        service: key.service.to_owned(),
    };
    let mut q = String::from(query);
    let mut add = |k: &str, v: &str| {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(k);
        q.push('=');
        uri_encode(v.as_bytes(), false, &mut q);
    };
    add("X-Amz-Algorithm", ALGORITHM);
    add("X-Amz-Credential", &format!("{}/{}", key.key_id, cred.scope()));
    add("X-Amz-Date", &amz_date);
    add("X-Amz-Expires", &expires.to_string());
    add("X-Amz-SignedHeaders", "host");
    let req = Request {
        method: "GET",
        path,
        query: &q,
        headers: vec![("host", host.as_bytes())],
    };
    let signed = vec!["host".to_owned()];
    let headers = canonical_headers(&req, &signed, None).unwrap_or_default();
    let canonical = canonical_request(
        "GET",
        path,
        &canonical_query(&q, &[]),
        &headers,
        &signed,
        EMPTY_SHA256,
    );
    let sts = string_to_sign(&amz_date, &cred, &canonical);
    let sig = hmac::sign(&signing_key(key.secret, &cred), sts.as_bytes());
    q.push_str("&X-Amz-Signature=");
    q.push_str(&hex(sig.as_ref()));
    q
}

#[cfg(test)]
mod tests;
