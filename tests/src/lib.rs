//! Test harness for Shoal's end-to-end tests: [`TestHost`] runs a real `shoal serve` as a child
//! process on free ports (read back from `ports.json`), [`RedisServer`] a real `redis-server`.
//! Both clean up after themselves when dropped.
//!
//! The harness is deliberately blocking (plain processes and sockets, polled with short
//! sleeps): tests call it before and after their async parts, never from a server path.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the `shoal` binary is: `$SHOAL_BIN`, else next to the test executable's target dir.
pub fn shoal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/shoal
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("shoal");
    assert!(
        bin.exists(),
        "shoal binary not found at {} — run `cargo build -p shoal-server` first or set SHOAL_BIN",
        bin.display()
    );
    bin
}

/// A running `shoal serve`.
pub struct TestHost {
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// MQTT/TCP address.
    pub mqtt: SocketAddr,
    /// MQTT/TLS address.
    pub mqtts: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
}

impl TestHost {
    /// Starts shoal in a fresh temporary data dir with `args` added to `serve`.
    pub fn start(args: &[&str]) -> TestHost {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut h = TestHost::launch(dir, args.iter().map(|s| s.to_string()).collect());
        h._tmp = Some(tmp);
        h
    }

    fn launch(data_dir: PathBuf, args: Vec<String>) -> TestHost {
        let ports = data_dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let log = data_dir.join(format!(
            "shoal-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--mqtt-listen",
                "127.0.0.1:0",
                "--mqtts-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(&args)
            .env("SHOAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf);
        let mut child = cmd.spawn().expect("spawn shoal");
        let deadline = Instant::now() + Duration::from_secs(20);
        let parsed = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break v;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "shoal exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "shoal did not write ports.json in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr = |k: &str| -> SocketAddr {
            parsed[k]
                .as_str()
                .unwrap_or_else(|| panic!("ports.json lacks {k}: {parsed}"))
                .parse()
                .expect("address")
        };
        TestHost {
            mqtt: addr("mqtt"),
            mqtts: addr("mqtts"),
            http: addr("http"),
            child: Some(child),
            _tmp: None,
            data_dir,
            args,
            log,
        }
    }

    /// The MQTT/TCP port.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt.port()
    }

    /// The CA certificate clients should trust on the TLS port.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit (panics after `timeout`).
    pub fn stop_within(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "shoal did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for a clean exit, start again on the same data dir (new ports).
    pub fn restart(&mut self) {
        let st = self.stop_within(Duration::from_secs(5));
        assert!(st.success(), "shoal exited with {st}:\n{}", self.log_tail());
        let tmp = self._tmp.take();
        let mut next = TestHost::launch(self.data_dir.clone(), self.args.clone());
        next._tmp = tmp;
        drop(std::mem::replace(self, next));
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The first admin access key, which shoal wrote to `DATA/credentials`: `(id, secret)`.
    pub fn credentials(&self) -> Option<(String, String)> {
        read_credentials(&self.data_dir.join("credentials"))
    }

    /// `GET path` on the HTTP listener, signed with the admin key: `(status, body)`.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_request_as(self.http, self.credentials().as_ref(), "GET", path, None)
    }

    /// `METHOD path` with a JSON body, signed with the admin key: `(status, body)`.
    pub fn http_json(&self, method: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
        http_request_as(
            self.http,
            self.credentials().as_ref(),
            method,
            path,
            Some(body.to_string().as_bytes()),
        )
    }

    /// A device certificate issued by this shoal (attached to thing `name`, with a policy
    /// allowing everything attached): paths of the certificate and key PEM files.
    pub fn device_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let (code, body) = self.http_json(
            "POST",
            "/api/v1/certificates",
            &serde_json::json!({"thingName": name, "commonName": name}),
        );
        assert_eq!(code, 200, "create certificate: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let (code, body) = self.http_json(
            "POST",
            "/api/v1/policies",
            &serde_json::json!({"policyName": "test-allow-all", "policyDocument":
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}}),
        );
        assert!(code == 200 || code == 409, "create policy: {body}");
        let id = v["certificateId"].as_str().expect("id");
        let (code, body) = self.http_json(
            "POST",
            "/api/v1/policies/test-allow-all/targets",
            &serde_json::json!({"target": id}),
        );
        assert_eq!(code, 200, "attach policy: {body}");
        let cert = self.data_dir.join(format!("{name}.crt"));
        let key = self.data_dir.join(format!("{name}.key"));
        std::fs::write(&cert, v["certificatePem"].as_str().expect("pem")).expect("write cert");
        std::fs::write(&key, v["keyPair"]["PrivateKey"].as_str().expect("key")).expect("write key");
        (cert, key)
    }

    /// One metric's value from `/metrics` (the first sample whose name and labels match).
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                (name == sample).then(|| v.parse().ok())?
            })
            .unwrap_or_else(|| panic!("metric {sample} not found in:\n{body}"))
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `[default]` of an AWS credentials file: `(id, secret)`.
pub fn read_credentials(path: &Path) -> Option<(String, String)> {
    shoal_auth::sigv4::credentials_in(&std::fs::read_to_string(path).ok()?, "default")
}

/// A minimal unsigned HTTP/1.1 GET (for health and metrics).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// A minimal unsigned HTTP/1.1 request with an optional JSON body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    http_request_as(addr, None, method, path, body)
}

/// A minimal HTTP/1.1 request with an optional JSON body, SigV4-signed with `key` when given.
pub fn http_request_as(
    addr: SocketAddr,
    key: Option<&(String, String)>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let host = addr.to_string();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some((id, secret)) = key {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let now = shoal_auth::sigv4::unix_now();
        let signed = shoal_auth::sigv4::sign(
            &shoal_auth::sigv4::Request {
                method,
                path: p,
                query: q,
                headers: vec![("host", host.as_bytes())],
            },
            body.unwrap_or_default(),
            &shoal_auth::sigv4::SigningKey {
                key_id: id,
                secret,
                region: "us-east-1",
                service: "iot",
            },
            now,
        );
        for (n, v) in signed {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    match body {
        Some(b) => {
            write!(
                s,
                "{head}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .expect("write");
            s.write_all(b).expect("write body");
        }
        None => write!(s, "{head}\r\n").expect("write"),
    }
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if h.to_ascii_lowercase().starts_with("transfer-encoding: chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    r.read_to_end(&mut body).ok();
    let body = String::from_utf8_lossy(&body).to_string();
    (code, if chunked { dechunk(&body) } else { body })
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one (panics with a clear message when redis-server is not installed).
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = spawn_redis(port, dir.path());
        RedisServer {
            child: Some(child),
            port,
            dir,
        }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (the port stays ours to restart on).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.port, self.dir.path()));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(port: u16, dir: &Path) -> Child {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"PING\r\n");
            let mut buf = [0u8; 7];
            s.set_read_timeout(Some(Duration::from_secs(1))).ok();
            if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                return child;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("redis-server exited at start: {st}");
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command-line tool, returning its stdout; panics with stderr on failure.
pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
