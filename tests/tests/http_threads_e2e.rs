//! `--http-threads`: HTTP connections served on their own single-threaded runtimes (the
//! default, one per CPU) or on the main runtime (`0`) behave the same: signed data-plane
//! requests from concurrent connections are all answered, a shadow sees every update once, and
//! the server still stops promptly with a keep-alive connection open.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // test code: blocking waits and unwraps are fine

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use shoal_tests::TestHost;

/// Names of the server's threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn concurrent_shadow_updates(host: &TestHost, thing: &str, clients: usize, each: usize) {
    let path = format!("/things/{thing}/shadow");
    std::thread::scope(|s| {
        for c in 0..clients {
            let path = &path;
            s.spawn(move || {
                for i in 0..each {
                    let body = serde_json::json!({
                        "state": {"reported": {"client": c, "seq": i}},
                        "clientToken": format!("c{c}-{i}"),
                    });
                    let (code, text) = host.http_json("POST", path, &body);
                    assert_eq!(code, 200, "update {c}/{i}: {text}");
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["clientToken"], format!("c{c}-{i}"), "{text}");
                }
            });
        }
    });
    let (code, text) = host.http_get(&path);
    assert_eq!(code, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["version"],
        (clients * each) as u64,
        "every update applied once: {text}"
    );
}

fn check(threads: usize) {
    let n = threads.to_string();
    let mut host = TestHost::start(&["--http-threads", &n]);
    let names = threads_named(host.pid(), "shoal-http-");
    let expected: Vec<String> = (0..threads).map(|i| format!("shoal-http-{i}")).collect();
    assert_eq!(names, expected, "--http-threads {threads}");

    concurrent_shadow_updates(&host, &format!("http-threads-{threads}"), 6, 15);
    let (code, _) = shoal_tests::http_get(host.http, "/health");
    assert_eq!(code, 200);

    // A keep-alive connection that stays open does not hold the server up.
    let mut idle = std::net::TcpStream::connect(host.http).unwrap();
    write!(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let got = idle.read(&mut buf).unwrap();
    assert!(
        buf[..got].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..got])
    );
    let start = Instant::now();
    let status = host.stop_within(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // No connection outlives the server (the HTTP threads are not joined: process exit is what
    // closes a connection they still hold, so this guards against a server that lingers).
    let closed = matches!(idle.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the idle connection was left open");
}

#[test]
fn http_on_dedicated_threads() {
    check(3);
}

#[test]
fn http_on_the_main_runtime() {
    check(0);
}
