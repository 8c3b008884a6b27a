//! The `email` action's sender: plain-text mail handed to an SMTP relay by tasks on the
//! runtime, never by the rules workers. A worker queues the email (bounded; a full queue drops
//! it and counts it) and goes on; the sender runs at most [`MAX_SESSIONS`] SMTP sessions at
//! once, one session per email, every connect and every command/reply bounded by the relay's
//! timeout. An email is retried with a doubling pause (200 ms, 400 ms, ... at most 10 s) on a
//! connection error, a timeout or a 4xx reply, up to the action's retries; a 5xx reply, a TLS
//! failure and a malformed email (CR or LF in the subject or an address, an invalid address)
//! are final. An email that still fails is handed back (the `on_failure` callback) with an
//! error naming the step and quoting the server's reply, so the rule's error action runs.
//!
//! The session: greeting, `EHLO` (`HELO` when `EHLO` is refused with 5xx), `STARTTLS` and
//! `EHLO` again when configured (implicit TLS is also supported), `AUTH PLAIN` when credentials
//! are configured (never over a plain connection), `MAIL FROM`, one `RCPT TO` per recipient
//! (any rejected recipient fails the email), `DATA`, the message, `QUIT`. The message is
//! `text/plain; charset=utf-8` sent as 8bit (`BODY=8BITMIME` when the server advertises it and
//! the message is not ASCII), with a RFC 2047 encoded subject when it is not plain ASCII.
//! Recipient addresses are ASCII only (no `SMTPUTF8`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// SMTP sessions open at once, across all email actions.
pub(crate) const MAX_SESSIONS: usize = 4;
/// Where the TLS roots are read from when [`SmtpConfig::ca_file`] is not set.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The longest reply line read (RFC 5321 allows 512 bytes; servers are generous).
const MAX_REPLY_LINE: u64 = 4096;
/// The most lines a multi-line reply may have.
const MAX_REPLY_LINES: usize = 100;
/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// How to reach the SMTP relay.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// The relay as `host:port` (`[v6 address]:port` for an IPv6 literal).
    pub relay: String,
    /// The envelope sender and the `From:` header: `alerts@example.com` or
    /// `Shoal <alerts@example.com>`.
    pub from: String,
    /// Whether and how the session is encrypted.
    pub tls: SmtpTls,
    /// The user for `AUTH PLAIN` (with [`SmtpConfig::password`]); needs TLS.
    pub username: Option<String>,
    /// The password for `AUTH PLAIN` (with [`SmtpConfig::username`]).
    pub password: Option<String>,
    /// PEM file of the roots trusted for the relay's certificate; [`DEFAULT_CA_FILE`] when
    /// not set. Only read when TLS is on.
    pub ca_file: Option<PathBuf>,
    /// Bounds the connection (TCP and TLS handshake) and every command and its reply.
    pub timeout: Duration,
    /// The name sent with `EHLO`/`HELO`.
    pub hello_name: String,
}

/// The relay's encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (no credentials may be sent).
    None,
    /// Plain connection upgraded with `STARTTLS`, which the relay must advertise.
    StartTls,
    /// TLS from the first byte (port 465 style).
    Tls,
}

impl FromStr for SmtpTls {
    type Err = String;

    /// `none`, `starttls` or `tls` (any case).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            _ => Err(format!(
                "unknown SMTP TLS mode {s:?} (expected none, starttls or tls)"
            )),
        }
    }
}

/// One email to send.
pub(crate) struct Email {
    /// Recipients (bare addresses), all of them in the `To:` header.
    pub to: Vec<String>,
    /// The subject (no CR or LF).
    pub subject: String,
    /// The plain-text body; any line endings.
    pub body: String,
    /// Further attempts after a transient failure.
    pub retries: u32,
    /// Called with the final error when the email could not be sent.
    pub on_failure: Box<dyn FnOnce(String) + Send>,
}

/// Counters of the sender.
#[derive(Debug, Default)]
pub(crate) struct MailCounters {
    /// Emails the relay accepted.
    pub sent: AtomicU64,
    /// Emails given up on (their `on_failure` was called).
    pub failed: AtomicU64,
    /// Further attempts made after a transient failure.
    pub retried: AtomicU64,
    /// Emails not queued because the queue was full or the sender had stopped.
    pub dropped: AtomicU64,
}

/// The handle rules workers use.
pub(crate) struct Mailer {
    /// The queue to the sender task.
    tx: tokio::sync::mpsc::Sender<Email>,
    /// What happened to the emails so far.
    pub counters: Arc<MailCounters>,
}

impl Mailer {
    /// Checks `config` (relay, sender, credentials, TLS roots: the CA file is read here) and
    /// starts the sender task on `rt` with a queue of `capacity` emails.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        config: SmtpConfig,
        capacity: usize,
    ) -> Result<Mailer, String> {
        let relay = Arc::new(Relay::new(config)?);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Email>(capacity.max(1));
        let counters = Arc::new(MailCounters::default());
        let c = counters.clone();
        rt.spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
            while let Some(email) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (relay, c) = (relay.clone(), c.clone());
                tokio::spawn(async move {
                    deliver(&relay, email, &c).await;
                    drop(permit);
                });
            }
        });
        Ok(Mailer { tx, counters })
    }

    /// Queues an email; `Err` when the queue is full (dropped and counted).
    pub(crate) fn send(&self, email: Email) -> Result<(), String> {
        self.tx.try_send(email).map_err(|e| {
            self.counters.dropped.fetch_add(1, Relaxed);
            match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    "the email queue is full; email dropped".to_string()
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    "the email sender has stopped".to_string()
                }
            }
        })
    }
}

/// The checked configuration the sessions use.
struct Relay {
    /// `host:port`, as configured (also the prefix of every error).
    addr: String,
    /// The encryption mode.
    tls: SmtpTls,
    /// The TLS client configuration and the name the certificate must match (TLS on).
    tls_client: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The `From:` header's value.
    from_header: String,
    /// The bare envelope sender.
    from_addr: String,
    /// `AUTH PLAIN` user and password.
    auth: Option<(String, String)>,
    /// See [`SmtpConfig::timeout`].
    timeout: Duration,
    /// See [`SmtpConfig::hello_name`].
    hello_name: String,
}

impl Relay {
    /// Checks the configuration; reads the TLS roots (blocking: call from sync code).
    fn new(config: SmtpConfig) -> Result<Relay, String> {
        let addr = config.relay.trim().to_string();
        let host = relay_host(&addr).map_err(|e| format!("smtp relay {addr:?}: {e}"))?;
        if config.timeout.is_zero() {
            return Err(format!("smtp {addr}: the timeout must be more than 0"));
        }
        let hello_name = config.hello_name.trim().to_string();
        if hello_name.is_empty() || hello_name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("smtp {addr}: invalid EHLO name {:?}", config.hello_name));
        }
        let (from_header, from_addr) =
            from_parts(&config.from).map_err(|e| format!("smtp {addr}: sender: {e}"))?;
        let auth = match (config.username, config.password) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                if config.tls == SmtpTls::None {
                    return Err(format!(
                        "smtp {addr}: refusing to send credentials over a plain connection \
                         (set tls to starttls or tls)"
                    ));
                }
                if u.contains('\0') || p.contains('\0') {
                    return Err(format!(
                        "smtp {addr}: the username and password may not contain NUL"
                    ));
                }
                Some((u, p))
            }
            _ => return Err(format!("smtp {addr}: a username needs a password and vice versa")),
        };
        let tls_client = match config.tls {
            SmtpTls::None => None,
            SmtpTls::StartTls | SmtpTls::Tls => {
                let path = config.ca_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE));
                let client = tls_client_config(&path).map_err(|e| format!("smtp {addr}: {e}"))?;
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("smtp {addr}: {host:?} is not a valid TLS server name: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(client), name))
            }
        };
        Ok(Relay {
            addr,
            tls: config.tls,
            tls_client,
            from_header,
            from_addr,
            auth,
            timeout: config.timeout,
            hello_name,
        })
    }

    /// A transient failure at `step`.
    fn retry(&self, step: &str, what: impl std::fmt::Display) -> Failure {
        Failure::Retry(format!("smtp {}: {step}: {what}", self.addr))
    }

    /// A final failure at `step`.
    fn fatal(&self, step: &str, what: impl std::fmt::Display) -> Failure {
        Failure::Fatal(format!("smtp {}: {step}: {what}", self.addr))
    }

    /// The failure for a timeout at `step`.
    fn timed_out(&self, step: &str) -> Failure {
        self.retry(
            step,
            format_args!("no reply within {} ms", self.timeout.as_millis()),
        )
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn relay_host(relay: &str) -> Result<&str, String> {
    let (host, port) = relay.rsplit_once(':').ok_or("expected host:port")?;
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("expected host:port".to_string());
    }
    Ok(host)
}

/// The rustls client configuration trusting the PEM certificates of `path`.
fn tls_client_config(path: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        certs.push(cert.map_err(|e| format!("CA file {}: {e:?}", path.display()))?);
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("CA file {}: no usable certificate", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why an attempt failed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Worth another attempt: connection error, timeout, 4xx reply.
    Retry(String),
    /// Will not get better: 5xx reply, TLS failure, protocol error.
    Fatal(String),
}

/// Sends one email, retrying, and reports a failure through its callback.
async fn deliver(relay: &Relay, email: Email, c: &MailCounters) {
    let Email {
        to,
        subject,
        body,
        retries,
        on_failure,
    } = email;
    let id = uuid::Uuid::new_v4();
    let message = match Message::new(relay, &to, &subject, &body, SystemTime::now(), &id.to_string()) {
        Ok(m) => m,
        Err(e) => {
            c.failed.fetch_add(1, Relaxed);
            on_failure(format!("smtp {}: email not sent: {e}", relay.addr));
            return;
        }
    };
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0;
    let error = loop {
        match session(relay, &message).await {
            Ok(()) => {
                c.sent.fetch_add(1, Relaxed);
                return;
            }
            Err(Failure::Fatal(e)) => break e,
            Err(Failure::Retry(e)) => {
                if attempt >= retries {
                    break e;
                }
            }
        }
        attempt += 1;
        c.retried.fetch_add(1, Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    };
    c.failed.fetch_add(1, Relaxed);
    let attempts = attempt + 1;
    on_failure(format!("{error} (after {attempts} attempt(s))"));
}

/// An email checked and formatted once, the same for every attempt.
struct Message {
    /// Bare recipient addresses.
    rcpts: Vec<String>,
    /// The `DATA` content: headers, body, the final `.` line.
    data: Vec<u8>,
}

impl Message {
    /// Checks the recipients and the subject and formats the message.
    fn new(
        relay: &Relay,
        to: &[String],
        subject: &str,
        body: &str,
        now: SystemTime,
        id: &str,
    ) -> Result<Message, String> {
        if to.is_empty() {
            return Err("no recipient".to_string());
        }
        for a in to {
            validate_address(a).map_err(|e| format!("recipient: {e}"))?;
        }
        if subject.contains(['\r', '\n']) {
            return Err("the subject contains CR or LF (header injection refused)".to_string());
        }
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut data = String::with_capacity(body.len() + 512);
        data.push_str(&format!("From: {}\r\n", relay.from_header));
        data.push_str(&format!("To: {}\r\n", fold_list(4, to)));
        data.push_str(&format!("Subject: {}\r\n", encode_header_text(subject)));
        data.push_str(&format!("Date: {}\r\n", rfc5322_date(secs)));
        data.push_str(&format!("Message-ID: <{id}@shoal>\r\n"));
        data.push_str("MIME-Version: 1.0\r\n");
        data.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        data.push_str("Content-Transfer-Encoding: 8bit\r\n");
        data.push_str("\r\n");
        data.push_str(&stuff_body(body));
        data.push_str(".\r\n");
        Ok(Message {
            rcpts: to.to_vec(),
            data: data.into_bytes(),
        })
    }
}

/// `items` joined with `, `, folded (CRLF and a space) before an item that would take the line
/// past 78 characters; `first` is the length of what precedes the list on its first line.
fn fold_list(first: usize, items: &[String]) -> String {
    let mut out = String::new();
    let mut col = first;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
            col += 1;
            if col + 1 + item.len() > 78 {
                out.push_str("\r\n ");
                col = 1;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(item);
        col += item.len();
    }
    out
}

/// The body with every line ending (CRLF, LF or a lone CR) made CRLF, a `.` doubled at the
/// start of a line (dot-stuffing), and a final CRLF when missing. The body's end (`.` CRLF)
/// is not included.
fn stuff_body(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    let mut line_start = true;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
                line_start = true;
            }
            '\n' => {
                out.push_str("\r\n");
                line_start = true;
            }
            _ => {
                if line_start && c == '.' {
                    out.push('.');
                }
                out.push(c);
                line_start = false;
            }
        }
    }
    if !line_start {
        out.push_str("\r\n");
    }
    out
}

/// Header text as is when it is printable ASCII, else RFC 2047 encoded-words (`=?UTF-8?B?...?=`,
/// at most 75 characters each, split between characters, folded onto continuation lines).
fn encode_header_text(text: &str) -> String {
    if text.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        return text.to_string();
    }
    // 45 bytes encode to 60 base64 characters: 72 with `=?UTF-8?B?` and `?=`.
    const CHUNK: usize = 45;
    let mut words = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - start > CHUNK {
            words.push(&text[start..i]);
            start = i;
        }
    }
    words.push(&text[start..]);
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", BASE64.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// `secs` since the Unix epoch as a RFC 5322 date in UTC: `Tue, 15 Nov 1994 08:12:31 +0000`.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::sql::civil_from_days(days as i64); // days < 2^48: no wrap
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[(days % 7 + 4) as usize % 7];
    let month = MONTHS[(month - 1).clamp(0, 11) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The bare address of `Name <addr>` or `addr`.
fn extract_address(from: &str) -> &str {
    let t = from.trim();
    if let Some(inner) = t.strip_suffix('>')
        && let Some(i) = inner.rfind('<')
    {
        return inner[i + 1..].trim();
    }
    t
}

/// The `From:` header and the bare envelope sender of a configured sender.
fn from_parts(from: &str) -> Result<(String, String), String> {
    if from.contains(['\r', '\n']) {
        return Err(format!("{from:?} contains CR or LF (header injection refused)"));
    }
    let addr = extract_address(from);
    validate_address(addr)?;
    let t = from.trim();
    let name = t
        .strip_suffix('>')
        .and_then(|inner| inner.rfind('<').map(|i| inner[..i].trim()));
    let header = match name {
        Some("") | None => addr.to_string(),
        Some(name) => format!("{} <{addr}>", encode_header_text(name)),
    };
    Ok((header, addr.to_string()))
}

/// A basic check of a bare address: `local@domain`, ASCII, no spaces, no `<>`, no CR or LF.
fn validate_address(a: &str) -> Result<(), String> {
    if a.contains(['\r', '\n']) {
        return Err(format!(
            "address {a:?} contains CR or LF (header injection refused)"
        ));
    }
    if a.is_empty() {
        return Err("empty address".to_string());
    }
    if !a.is_ascii() {
        return Err(format!("address {a:?} is not ASCII (not supported)"));
    }
    if a.chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || "<>,;\"()".contains(c))
    {
        return Err(format!(
            "invalid address {a:?}: spaces, control characters and <>,;\"() are not allowed"
        ));
    }
    match a.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') => Ok(()),
        _ => Err(format!(
            "invalid address {a:?}: expected one '@' between a local part and a domain"
        )),
    }
}

/// A server reply: its code and its text lines (one per reply line, without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    /// The three-digit code.
    code: u16,
    /// The text of each line.
    lines: Vec<String>,
}

impl Reply {
    /// Whether an `EHLO` reply advertises `keyword` (the first word of a line after the first).
    fn advertises(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        let text = self
            .lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>();
        if !text.is_empty() {
            write!(f, " {}", text.join(" / "))?;
        }
        Ok(())
    }
}

/// Assembles a (possibly multi-line) reply from its lines.
#[derive(Debug, Default)]
struct ReplyParser {
    /// The code of the lines so far.
    code: Option<u16>,
    /// The text of the lines so far.
    lines: Vec<String>,
}

impl ReplyParser {
    /// Takes one line (with or without its CRLF); the reply once its last line is in.
    fn feed(&mut self, line: &str) -> Result<Option<Reply>, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (code, last, text) = parse_reply_line(line)?;
        if let Some(c) = self.code
            && c != code
        {
            return Err(format!(
                "malformed reply: line {line:?} does not continue reply {c}"
            ));
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(format!("reply {code} has more than {MAX_REPLY_LINES} lines"));
        }
        self.code = Some(code);
        self.lines.push(text.to_string());
        if last {
            self.code = None;
            return Ok(Some(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            }));
        }
        Ok(None)
    }
}

/// One reply line: its code, whether it is the last line (`250 ` rather than `250-`) and its
/// text.
fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), String> {
    let malformed = || format!("malformed reply line {line:?}");
    let digits = line
        .get(..3)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(malformed)?;
    let code: u16 = digits.parse().map_err(|_| malformed())?;
    if !(200..600).contains(&code) {
        return Err(malformed());
    }
    let text = line.get(4..).unwrap_or("");
    match line.as_bytes().get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, text)),
        Some(b'-') => Ok((code, false, text)),
        Some(_) => Err(malformed()),
    }
}

/// What a session reads and writes through: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP connection.
struct Session<'a> {
    /// The relay.
    relay: &'a Relay,
    /// The connection.
    io: BufReader<Box<dyn Io>>,
}

impl Session<'_> {
    /// Writes `command` (without CRLF; none for the greeting) and reads the reply, within the
    /// timeout; a reply whose code is not in `ok` is an error (4xx transient, else final).
    async fn exchange(&mut self, step: &str, command: Option<&[u8]>, ok: &[u16]) -> Result<Reply, Failure> {
        let reply = self.ask(step, command).await?;
        check(self.relay, step, reply, ok)
    }

    /// Writes `command` (without CRLF; none for the greeting) and reads the reply, whatever
    /// its code, within the timeout.
    async fn ask(&mut self, step: &str, command: Option<&[u8]>) -> Result<Reply, Failure> {
        match tokio::time::timeout(self.relay.timeout, self.write_read(step, command)).await {
            Ok(r) => r,
            Err(_) => Err(self.relay.timed_out(step)),
        }
    }

    /// Writes `command` and CRLF, then reads one reply.
    async fn write_read(&mut self, step: &str, command: Option<&[u8]>) -> Result<Reply, Failure> {
        let relay = self.relay;
        if let Some(command) = command {
            let w = self.io.get_mut();
            w.write_all(command).await.map_err(|e| relay.retry(step, e))?;
            w.write_all(b"\r\n").await.map_err(|e| relay.retry(step, e))?;
            w.flush().await.map_err(|e| relay.retry(step, e))?;
        }
        let mut parser = ReplyParser::default();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| relay.retry(step, e))?;
            if !buf.ends_with(b"\n") {
                if n as u64 >= MAX_REPLY_LINE {
                    return Err(relay.fatal(step, "reply line too long"));
                }
                return Err(relay.retry(step, "connection closed by the server"));
            }
            let line = String::from_utf8_lossy(&buf);
            if let Some(reply) = parser.feed(&line).map_err(|e| relay.fatal(step, e))? {
                return Ok(reply);
            }
        }
    }

    /// `EHLO`, or `HELO` when `EHLO` is refused with 5xx; the `EHLO` reply (extensions) or an
    /// empty one.
    async fn hello(&mut self) -> Result<Reply, Failure> {
        let ehlo = format!("EHLO {}", self.relay.hello_name);
        let reply = self.ask("EHLO", Some(ehlo.as_bytes())).await?;
        if !(500..600).contains(&reply.code) {
            return check(self.relay, "EHLO", reply, &[250]);
        }
        let helo = format!("HELO {}", self.relay.hello_name);
        match self.exchange("HELO", Some(helo.as_bytes()), &[250]).await {
            Ok(_) => Ok(Reply {
                code: 250,
                lines: Vec::new(),
            }),
            Err(Failure::Fatal(e)) => Err(Failure::Fatal(format!("{e} (after EHLO was rejected: {reply})"))),
            Err(retry) => Err(retry),
        }
    }
}

/// `reply` when its code is in `ok`, else the failure (transient for 4xx, final otherwise).
fn check(relay: &Relay, step: &str, reply: Reply, ok: &[u16]) -> Result<Reply, Failure> {
    if ok.contains(&reply.code) {
        return Ok(reply);
    }
    let error = format!("smtp {}: {step} rejected: {reply}", relay.addr);
    if (400..500).contains(&reply.code) {
        Err(Failure::Retry(error))
    } else {
        Err(Failure::Fatal(error))
    }
}

/// The TLS handshake over `io`, within the timeout.
async fn handshake(relay: &Relay, io: Box<dyn Io>) -> Result<Box<dyn Io>, Failure> {
    const STEP: &str = "TLS handshake";
    let Some((connector, name)) = &relay.tls_client else {
        return Err(relay.fatal(STEP, "TLS is not configured"));
    };
    match tokio::time::timeout(relay.timeout, connector.connect(name.clone(), io)).await {
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err(e)) => {
            // A certificate or protocol problem will not go away by itself.
            if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                Err(relay.fatal(STEP, e))
            } else {
                Err(relay.retry(STEP, e))
            }
        }
        Err(_) => Err(relay.retry(
            STEP,
            format_args!("no answer within {} ms", relay.timeout.as_millis()),
        )),
    }
}

/// One attempt: a whole SMTP session delivering `message`.
async fn session(relay: &Relay, message: &Message) -> Result<(), Failure> {
    let tcp = match tokio::time::timeout(relay.timeout, TcpStream::connect(&relay.addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(relay.retry("connect", e)),
        Err(_) => {
            return Err(relay.retry(
                "connect",
                format_args!("no connection within {} ms", relay.timeout.as_millis()),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = Box::new(tcp);
    if relay.tls == SmtpTls::Tls {
        io = handshake(relay, io).await?;
    }
    let mut s = Session {
        relay,
        io: BufReader::new(io),
    };
    s.exchange("greeting", None, &[220]).await?;
    let mut ehlo = s.hello().await?;
    if relay.tls == SmtpTls::StartTls {
        if !ehlo.advertises("STARTTLS") {
            return Err(relay.fatal(
                "STARTTLS",
                format_args!("not advertised by the server (EHLO: {ehlo})"),
            ));
        }
        s.exchange("STARTTLS", Some(b"STARTTLS"), &[220]).await?;
        if !s.io.buffer().is_empty() {
            return Err(relay.fatal("STARTTLS", "unexpected data after the reply (refused)"));
        }
        let io = handshake(relay, s.io.into_inner()).await?;
        s = Session {
            relay,
            io: BufReader::new(io),
        };
        let ehlo_tls = format!("EHLO {}", relay.hello_name);
        ehlo = s
            .exchange("EHLO after STARTTLS", Some(ehlo_tls.as_bytes()), &[250])
            .await?;
    }
    if let Some((user, password)) = &relay.auth {
        if relay.tls == SmtpTls::None {
            return Err(relay.fatal(
                "AUTH PLAIN",
                "refusing to send credentials over a plain connection",
            ));
        }
        let token = BASE64.encode(format!("\0{user}\0{password}"));
        s.exchange(
            "AUTH PLAIN",
            Some(format!("AUTH PLAIN {token}").as_bytes()),
            &[235],
        )
        .await?;
    }
    let mut mail = format!("MAIL FROM:<{}>", relay.from_addr);
    if !message.data.is_ascii() && ehlo.advertises("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    s.exchange(
        &format!("MAIL FROM <{}>", relay.from_addr),
        Some(mail.as_bytes()),
        &[250],
    )
    .await?;
    for rcpt in &message.rcpts {
        let command = format!("RCPT TO:<{rcpt}>");
        s.exchange(
            &format!("RCPT TO <{rcpt}>"),
            Some(command.as_bytes()),
            &[250, 251],
        )
        .await?;
    }
    s.exchange("DATA", Some(b"DATA"), &[354]).await?;
    // The message ends with ".\r\n"; `exchange` appends the CRLF itself.
    let data = message.data.strip_suffix(b"\r\n").unwrap_or(&message.data);
    s.exchange("end of DATA", Some(data), &[250]).await?;
    // The relay has the message; a failing QUIT changes nothing.
    let _ = s.exchange("QUIT", Some(b"QUIT"), &[221]).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    fn relay(from: &str) -> Relay {
        Relay::new(SmtpConfig {
            relay: "127.0.0.1:2525".into(),
            from: from.into(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
            hello_name: "shoal.test".into(),
        })
        .unwrap()
    }

    #[test]
    fn body_crlf_and_dot_stuffing() {
        assert_eq!(stuff_body("a\n.b\r\nc\rd"), "a\r\n..b\r\nc\r\nd\r\n");
        assert_eq!(stuff_body(".\n..x\n"), "..\r\n...x\r\n");
        assert_eq!(stuff_body("x.y\r\n\r\n"), "x.y\r\n\r\n");
        assert_eq!(stuff_body(""), "");
        assert_eq!(stuff_body("\r\r\n"), "\r\n\r\n");
        assert_eq!(stuff_body("é"), "é\r\n");
    }

    #[test]
    fn subject_encoded_word() {
        assert_eq!(encode_header_text("Plain subject"), "Plain subject");
        assert_eq!(
            encode_header_text("Température"),
            format!("=?UTF-8?B?{}?=", BASE64.encode("Température"))
        );
        // Long text: several words of at most 75 characters, split between characters.
        let long = "é".repeat(60);
        let encoded = encode_header_text(&long);
        let words: Vec<&str> = encoded.split("\r\n ").collect();
        assert!(words.len() > 1);
        let mut decoded = Vec::new();
        for w in words {
            assert!(w.len() <= 75, "{w}");
            let b64 = w.strip_prefix("=?UTF-8?B?").unwrap().strip_suffix("?=").unwrap();
            let bytes = BASE64.decode(b64).unwrap();
            assert!(std::str::from_utf8(&bytes).is_ok());
            decoded.extend(bytes);
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), long);
        // Control characters are encoded too.
        assert!(encode_header_text("a\u{7}b").starts_with("=?UTF-8?B?"));
    }

    #[test]
    fn date_format() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(784_887_151), "Tue, 15 Nov 1994 08:12:31 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 +0000");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            extract_address("Shoal <alerts@example.com>"),
            "alerts@example.com"
        );
        assert_eq!(extract_address(" alerts@example.com "), "alerts@example.com");
        assert_eq!(extract_address("<a@b.c>"), "a@b.c");
        assert!(validate_address("a@b.c").is_ok());
        for bad in ["", "a", "a@", "@b", "a@b@c", "a b@c", "<a@b>", "a@b,c@d", "é@b.c"] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            from_parts("Shoal <alerts@example.com>").unwrap(),
            (
                "Shoal <alerts@example.com>".to_string(),
                "alerts@example.com".to_string()
            )
        );
        assert_eq!(
            from_parts("alerts@example.com").unwrap(),
            ("alerts@example.com".to_string(), "alerts@example.com".to_string())
        );
        let (header, _) = from_parts("Bassin Nord é <a@b.c>").unwrap();
        assert!(
            header.starts_with("=?UTF-8?B?") && header.ends_with("?= <a@b.c>"),
            "{header}"
        );
        assert!(from_parts("Shoal <bad>").is_err());
    }

    #[test]
    fn header_injection_refused() {
        let r = relay("alerts@example.com");
        let now = UNIX_EPOCH;
        let e = Message::new(&r, &["a@b.c".into()], "hi\r\nBcc: x@y.z", "", now, "id")
            .err()
            .unwrap();
        assert!(e.contains("CR or LF"), "{e}");
        let e = Message::new(&r, &["a@b.c\r\nBcc: x@y.z".into()], "hi", "", now, "id")
            .err()
            .unwrap();
        assert!(e.contains("CR or LF"), "{e}");
        let e = Message::new(&r, &[], "hi", "", now, "id").err().unwrap();
        assert!(e.contains("no recipient"), "{e}");
        assert!(from_parts("a@b.c\nBcc: x@y.z").unwrap_err().contains("CR or LF"));
    }

    #[test]
    fn message_format() {
        let r = relay("Shoal <alerts@example.com>");
        let m = Message::new(
            &r,
            &["a@b.c".into(), "d@e.f".into()],
            "Hi",
            ".x\ny",
            UNIX_EPOCH,
            "id1",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(m.data).unwrap(),
            "From: Shoal <alerts@example.com>\r\nTo: a@b.c, d@e.f\r\nSubject: Hi\r\n\
             Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <id1@shoal>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             ..x\r\ny\r\n.\r\n"
        );
        let many: Vec<String> = (0..10).map(|i| format!("recipient{i}@example.com")).collect();
        let folded = fold_list(4, &many);
        assert!(folded.lines().all(|l| l.trim_end().len() <= 78), "{folded}");
        assert_eq!(folded.replace("\r\n ", " "), many.join(", "));
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_reply_line("250 OK").unwrap(), (250, true, "OK"));
        assert_eq!(parse_reply_line("250-SIZE 10").unwrap(), (250, false, "SIZE 10"));
        assert_eq!(parse_reply_line("354").unwrap(), (354, true, ""));
        for bad in ["", "25", "2x0 OK", "250xOK", "999 no", "hello"] {
            assert!(parse_reply_line(bad).is_err(), "{bad:?}");
        }
        let mut p = ReplyParser::default();
        assert_eq!(p.feed("250-mail.example.com\r\n").unwrap(), None);
        assert_eq!(p.feed("250-starttls\r\n").unwrap(), None);
        assert_eq!(p.feed("250-8BITMIME\r\n").unwrap(), None);
        let reply = p.feed("250 AUTH PLAIN LOGIN\r\n").unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert!(reply.advertises("STARTTLS") && reply.advertises("8bitmime") && reply.advertises("AUTH"));
        assert!(!reply.advertises("mail.example.com"));
        assert_eq!(
            reply.to_string(),
            "250 mail.example.com / starttls / 8BITMIME / AUTH PLAIN LOGIN"
        );
        // The parser is ready for the next reply.
        let reply = p.feed("550 5.1.1 no such user\n").unwrap().unwrap();
        assert_eq!(reply.to_string(), "550 5.1.1 no such user");
        let mut p = ReplyParser::default();
        p.feed("250-a").unwrap();
        assert!(p.feed("251 b").is_err());
    }

    #[test]
    fn config_checks() {
        assert_eq!("StartTLS".parse::<SmtpTls>().unwrap(), SmtpTls::StartTls);
        assert_eq!("none".parse::<SmtpTls>().unwrap(), SmtpTls::None);
        assert_eq!("tls".parse::<SmtpTls>().unwrap(), SmtpTls::Tls);
        assert!("ssl".parse::<SmtpTls>().is_err());
        let base = SmtpConfig {
            relay: "127.0.0.1:2525".into(),
            from: "alerts@example.com".into(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
            hello_name: "shoal.test".into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = |c: SmtpConfig| Mailer::start(rt.handle(), c, 1).err().unwrap_or_default();
        let creds = SmtpConfig {
            username: Some("u".into()),
            password: Some("p".into()),
            ..base.clone()
        };
        assert!(start(creds).contains("plain connection"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = start(SmtpConfig {
            tls: SmtpTls::StartTls,
            ca_file: Some(missing),
            ..base.clone()
        });
        assert!(e.contains("CA file") && e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = start(SmtpConfig {
            tls: SmtpTls::Tls,
            ca_file: Some(empty),
            ..base.clone()
        });
        assert!(e.contains("no usable certificate"), "{e}");
        assert!(
            start(SmtpConfig {
                relay: "localhost".into(),
                ..base.clone()
            })
            .contains("host:port")
        );
        assert!(
            start(SmtpConfig {
                from: "Shoal <nope>".into(),
                ..base.clone()
            })
            .contains("sender")
        );
        assert!(
            start(SmtpConfig {
                username: Some("u".into()),
                ..base.clone()
            })
            .contains("password")
        );
        assert!(
            start(SmtpConfig {
                timeout: Duration::ZERO,
                ..base.clone()
            })
            .contains("timeout")
        );
        assert!(Mailer::start(rt.handle(), base, 1).is_ok());
    }

    /// A full queue drops the email and counts it.
    #[test]
    fn full_queue_drops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = SmtpConfig {
            relay: "127.0.0.1:9".into(),
            from: "alerts@example.com".into(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
            hello_name: "shoal.test".into(),
        };
        // The current-thread runtime is not driven here, so nothing leaves the queue.
        let mailer = Mailer::start(rt.handle(), config, 1).unwrap();
        let email = || Email {
            to: vec!["a@b.c".into()],
            subject: "s".into(),
            body: "b".into(),
            retries: 0,
            on_failure: Box::new(|_| {}),
        };
        assert!(mailer.send(email()).is_ok());
        assert!(mailer.send(email()).unwrap_err().contains("full"));
        assert_eq!(mailer.counters.dropped.load(Relaxed), 1);
    }

    /// A relay that accepts connections but never greets: a timeout, retried.
    #[test]
    fn silent_relay_times_out_and_retries() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = SmtpConfig {
            relay: format!("127.0.0.1:{port}"),
            from: "alerts@example.com".into(),
            tls: SmtpTls::None,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_millis(150),
            hello_name: "shoal.test".into(),
        };
        let mailer = Mailer::start(rt.handle(), config, 4).unwrap();
        let (tx, rx) = mpsc::channel();
        mailer
            .send(Email {
                to: vec!["a@b.c".into()],
                subject: "s".into(),
                body: "b".into(),
                retries: 1,
                on_failure: Box::new(move |e| tx.send(e).unwrap()),
            })
            .unwrap();
        let e = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            e.contains("greeting: no reply within 150 ms") && e.contains("(after 2 attempt(s))"),
            "{e}"
        );
        assert_eq!(mailer.counters.retried.load(Relaxed), 1);
        assert_eq!(mailer.counters.failed.load(Relaxed), 1);
        drop(listener);
    }

    /// A scripted relay refusing `EHLO`: `HELO` is used, multi-line replies are read, the
    /// commands and the raw (dot-stuffed) message are as expected.
    #[test]
    fn scripted_relay_helo_fallback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (ttx, transcript) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = std::io::BufReader::new(stream);
            let mut said = |s: &str| std::io::Write::write_all(&mut w, s.as_bytes()).unwrap();
            said("220-fake.test ESMTP\r\n220 ready\r\n");
            let (mut commands, mut data) = (Vec::new(), String::new());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                commands.push(line.trim_end().to_string());
                match line.get(..4).unwrap_or("") {
                    "EHLO" => said("502 5.5.2 EHLO not supported\r\n"),
                    "HELO" => said("250 fake.test\r\n"),
                    "MAIL" => said("250-first line\r\n250 2.1.0 ok\r\n"),
                    "RCPT" => said("250 2.1.5 ok\r\n"),
                    "DATA" => {
                        said("354 go ahead\r\n");
                        loop {
                            let mut l = String::new();
                            r.read_line(&mut l).unwrap();
                            data.push_str(&l);
                            if l == ".\r\n" || l.is_empty() {
                                break;
                            }
                        }
                        said("250 2.0.0 queued\r\n");
                    }
                    "QUIT" => {
                        said("221 bye\r\n");
                        break;
                    }
                    _ => said("500 what?\r\n"),
                }
            }
            ttx.send((commands, data)).unwrap();
        });
        let rt = runtime();
        let mailer = Mailer::start(rt.handle(), config(port, SmtpTls::None), 4).unwrap();
        let (ftx, failures) = mpsc::channel();
        mailer.send(email("a@b.c", "Hi", "x\n.dot", 0, &ftx)).unwrap();
        let (commands, data) = transcript.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(
            commands,
            [
                "EHLO shoal.test",
                "HELO shoal.test",
                "MAIL FROM:<alerts@example.com>",
                "RCPT TO:<a@b.c>",
                "DATA",
                "QUIT"
            ]
        );
        assert!(
            data.starts_with("From: Shoal <alerts@example.com>\r\nTo: a@b.c\r\nSubject: Hi\r\n"),
            "{data}"
        );
        assert!(data.ends_with("\r\n\r\nx\r\n..dot\r\n.\r\n"), "{data:?}");
        // The sender counts the email once QUIT is answered.
        wait_until(&rt, || mailer.counters.sent.load(Relaxed) == 1);
        assert!(failures.try_recv().is_err());
    }

    /// The test SMTP server: aiosmtpd printing one JSON line per event on stdout.
    const SERVER: &str = r#"
import sys, json, ssl, email, email.header
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, mode = int(sys.argv[1]), sys.argv[2]

def out(o):
    print(json.dumps(o), flush=True)

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        out({"event": "rcpt", "to": address})
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("tempfail"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content)
        subject = str(email.header.make_header(email.header.decode_header(msg["Subject"])))
        out({"event": "data", "from": envelope.mail_from, "to": envelope.rcpt_tos,
             "mail_options": envelope.mail_options, "content": envelope.content.decode("utf-8"),
             "subject": subject, "tls": session.ssl is not None})
        return "250 2.0.0 accepted"

def authenticator(server, session, envelope, mechanism, data):
    ok = data.login == b"user" and data.password == b"secret"
    out({"event": "auth", "mechanism": mechanism, "ok": ok})
    return AuthResult(success=ok, handled=False)

kw = {}
if mode != "plain":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    kw["authenticator"] = authenticator
    if mode == "starttls":
        kw.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    else:
        kw.update(ssl_context=ctx, auth_require_tls=False)
controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kw)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

    /// A running test server, killed when dropped.
    struct Server {
        child: Child,
        events: mpsc::Receiver<serde_json::Value>,
        port: u16,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Server {
        /// Starts the server (`plain`, `starttls` or `tls` with `cert_key`); fails the test
        /// when aiosmtpd is not installed (the README's test command installs it).
        fn start(mode: &str, cert_key: Option<(&Path, &Path)>, dir: &Path) -> Server {
            let ok = Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "python3 with aiosmtpd is not available (pip install aiosmtpd, or run tests/run-all.sh)"
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join(format!("aiosmtpd-{mode}.log"));
            let mut cmd = Command::new("python3");
            cmd.args(["-c", SERVER, &port.to_string(), mode]);
            if let Some((cert, key)) = cert_key {
                cmd.arg(cert).arg(key);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (ready_tx, ready_rx) = mpsc::channel();
            let (tx, events) = mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if line == "ready" {
                        let _ = ready_tx.send(());
                    } else if let Ok(v) = serde_json::from_str(&line) {
                        let _ = tx.send(v);
                    }
                }
            });
            let server = Server { child, events, port };
            if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
                panic!(
                    "aiosmtpd did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            server
        }

        /// Events until `done` says the collected ones are enough (at most 20 s).
        fn events_until(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut seen = Vec::new();
            while !done(&seen) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(v) => seen.push(v),
                    Err(_) => panic!("timed out waiting for server events; got {seen:?}"),
                }
            }
            seen
        }
    }

    fn config(port: u16, tls: SmtpTls) -> SmtpConfig {
        SmtpConfig {
            relay: format!("127.0.0.1:{port}"),
            from: "Shoal <alerts@example.com>".into(),
            tls,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            hello_name: "shoal.test".into(),
        }
    }

    /// An email whose failure goes to `failures`.
    fn email(to: &str, subject: &str, body: &str, retries: u32, failures: &mpsc::Sender<String>) -> Email {
        let tx = failures.clone();
        let to_owned = to.to_string();
        Email {
            to: vec![to.into()],
            subject: subject.into(),
            body: body.into(),
            retries,
            on_failure: Box::new(move |e| {
                let _ = tx.send(format!("{to_owned}: {e}"));
            }),
        }
    }

    fn count(events: &[serde_json::Value], event: &str, to: &str) -> usize {
        events
            .iter()
            .filter(|e| e["event"] == event && e["to"] == to)
            .count()
    }

    /// Waits (at most 10 s) for `done`, on the runtime's clock.
    fn wait_until(rt: &tokio::runtime::Runtime, done: impl Fn() -> bool) {
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !done() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
        });
        assert!(waited.is_ok(), "timed out waiting");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn email_end_to_end_aiosmtpd() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start("plain", None, dir.path());
        let rt = runtime();
        let mailer = Mailer::start(rt.handle(), config(server.port, SmtpTls::None), 16).unwrap();
        let (ftx, failures) = mpsc::channel();
        let subject = "Température ⚠ élevée";
        let body = "Bassin 3 à 31 °C\n.starts with a dot\n..two dots\r\nlast line";
        mailer.send(email("good@x.org", subject, body, 3, &ftx)).unwrap();
        mailer.send(email("reject@x.org", "nope", "x", 3, &ftx)).unwrap();
        mailer
            .send(email("tempfail@x.org", "later", "x", 1, &ftx))
            .unwrap();

        let mut errors: Vec<String> = (0..2)
            .map(|_| failures.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        errors.sort();
        let events = server.events_until(|seen| seen.iter().any(|e| e["event"] == "data"));

        // The accepted email.
        let data = events.iter().find(|e| e["event"] == "data").unwrap();
        assert_eq!(data["from"], "alerts@example.com");
        assert_eq!(data["to"], serde_json::json!(["good@x.org"]));
        assert_eq!(data["subject"], subject);
        assert!(
            data["mail_options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "BODY=8BITMIME"),
            "{data}"
        );
        let content = data["content"].as_str().unwrap();
        let (headers, received_body) = content.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            received_body,
            "Bassin 3 à 31 °C\r\n.starts with a dot\r\n..two dots\r\nlast line\r\n"
        );
        let headers: Vec<&str> = headers.split("\r\n").collect();
        for h in [
            "From: Shoal <alerts@example.com>",
            "To: good@x.org",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ] {
            assert!(headers.contains(&h), "{h:?} not in {headers:?}");
        }
        assert!(
            headers.iter().any(|h| h.starts_with("Subject: =?UTF-8?B?")),
            "{headers:?}"
        );
        let date = headers.iter().find(|h| h.starts_with("Date: ")).unwrap();
        assert!(date.ends_with(" +0000") && date.len() == "Date: Tue, 15 Nov 1994 08:12:31 +0000".len());
        let id = headers.iter().find(|h| h.starts_with("Message-ID: <")).unwrap();
        assert!(id.ends_with("@shoal>"), "{id}");

        // The rejected recipient: final at once.
        assert!(
            errors[0].starts_with(&format!(
                "reject@x.org: smtp 127.0.0.1:{}: RCPT TO <reject@x.org> rejected: 550 5.1.1 no such user",
                server.port
            )),
            "{}",
            errors[0]
        );
        assert!(errors[0].ends_with("(after 1 attempt(s))"), "{}", errors[0]);
        // The 4xx: retried once, then given up.
        assert!(
            errors[1].contains("RCPT TO <tempfail@x.org> rejected: 451 4.3.0"),
            "{}",
            errors[1]
        );
        assert!(errors[1].ends_with("(after 2 attempt(s))"), "{}", errors[1]);
        // Server events may lag behind the replies the client saw.
        let mut events = events;
        events.extend(
            server.events_until(|seen| {
                count(&[events.as_slice(), seen].concat(), "rcpt", "tempfail@x.org") >= 2
            }),
        );
        assert_eq!(count(&events, "rcpt", "reject@x.org"), 1, "{events:?}");
        assert_eq!(count(&events, "rcpt", "tempfail@x.org"), 2, "{events:?}");
        let c = &mailer.counters;
        // The sender counts the accepted email once QUIT is answered.
        wait_until(&rt, || c.sent.load(Relaxed) == 1);
        assert_eq!(
            [&c.sent, &c.failed, &c.retried, &c.dropped].map(|v| v.load(Relaxed)),
            [1, 2, 1, 0]
        );
    }

    /// A CA and a certificate for 127.0.0.1 it signed, made by the openssl tool; `None`
    /// (test skipped) when it is missing.
    fn certificates(dir: &Path) {
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(run(&["version"]), "the openssl tool is not available");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", "/CN=Shoal test CA"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem]);
            assert!(run(&args), "openssl: CA");
        }
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let mut args = vec!["req", "-subj", "/CN=127.0.0.1"];
        args.extend(ec);
        args.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
        assert!(run(&args), "openssl: leaf request");
        assert!(
            run(&[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "leaf.pem",
            ]),
            "openssl: leaf"
        );
    }

    #[test]
    fn email_tls_end_to_end_aiosmtpd() {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let (cert, key) = (dir.path().join("leaf.pem"), dir.path().join("leaf.key"));
        let starttls = Server::start("starttls", Some((&cert, &key)), dir.path());
        let implicit = Server::start("tls", Some((&cert, &key)), dir.path());
        let plain = Server::start("plain", None, dir.path());
        let rt = runtime();
        let (ftx, failures) = mpsc::channel();
        let secure = |port: u16, tls: SmtpTls, password: &str, ca: &str| SmtpConfig {
            username: Some("user".into()),
            password: Some(password.into()),
            ca_file: Some(dir.path().join(ca)),
            ..config(port, tls)
        };

        // STARTTLS and AUTH PLAIN.
        let mailer = Mailer::start(
            rt.handle(),
            secure(starttls.port, SmtpTls::StartTls, "secret", "ca.pem"),
            4,
        );
        let mailer = mailer.unwrap();
        mailer
            .send(email("good@x.org", "over starttls", "hello\n", 0, &ftx))
            .unwrap();
        let events = starttls.events_until(|seen| seen.iter().any(|e| e["event"] == "data"));
        let auth = events.iter().find(|e| e["event"] == "auth").unwrap();
        assert_eq!(
            (&auth["mechanism"], &auth["ok"]),
            (&serde_json::json!("PLAIN"), &serde_json::json!(true))
        );
        let data = events.iter().find(|e| e["event"] == "data").unwrap();
        assert_eq!(
            (&data["subject"], &data["tls"]),
            (&serde_json::json!("over starttls"), &serde_json::json!(true))
        );

        // A wrong password: 535, final.
        let bad = Mailer::start(
            rt.handle(),
            secure(starttls.port, SmtpTls::StartTls, "wrong", "ca.pem"),
            4,
        );
        bad.unwrap().send(email("good@x.org", "s", "b", 3, &ftx)).unwrap();
        let e = failures.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            e.contains("AUTH PLAIN rejected: 535") && e.ends_with("(after 1 attempt(s))"),
            "{e}"
        );

        // Implicit TLS.
        let mailer = Mailer::start(
            rt.handle(),
            secure(implicit.port, SmtpTls::Tls, "secret", "ca.pem"),
            4,
        );
        mailer
            .unwrap()
            .send(email("good@x.org", "over tls", "hello\n", 0, &ftx))
            .unwrap();
        let events = implicit.events_until(|seen| seen.iter().any(|e| e["event"] == "data"));
        assert!(
            events.iter().any(|e| e["event"] == "auth" && e["ok"] == true),
            "{events:?}"
        );

        // A certificate from another CA: the handshake fails, final.
        let other = Mailer::start(
            rt.handle(),
            secure(implicit.port, SmtpTls::Tls, "secret", "other-ca.pem"),
            4,
        );
        other
            .unwrap()
            .send(email("good@x.org", "s", "b", 3, &ftx))
            .unwrap();
        let e = failures.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            e.contains("TLS handshake") && e.ends_with("(after 1 attempt(s))"),
            "{e}"
        );

        // STARTTLS required but not offered.
        let no_tls = Mailer::start(
            rt.handle(),
            secure(plain.port, SmtpTls::StartTls, "secret", "ca.pem"),
            4,
        );
        no_tls
            .unwrap()
            .send(email("good@x.org", "s", "b", 3, &ftx))
            .unwrap();
        let e = failures.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(e.contains("STARTTLS: not advertised by the server"), "{e}");
        assert!(e.ends_with("(after 1 attempt(s))"), "{e}");
        assert!(plain.events.try_iter().next().is_none());
    }
}
