//! Micro-benchmark of the message-path check (no Criterion): run with
//! `cargo +1.97.0 test -p shoal-auth --release -- --ignored --nocapture`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use shoal_auth::policy::{Action, ArnConfig, CompiledPolicies, Policy, ThingContext, VarContext};

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:us-east-1:000000000000:client/${iot:ClientId}"},
    {"Effect": "Allow", "Action": "iot:Publish",
     "Resource": "arn:aws:iot:us-east-1:000000000000:topic/dt/${iot:ClientId}/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
     "Resource": "arn:aws:iot:us-east-1:000000000000:topic/cmd/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe",
     "Resource": "arn:aws:iot:us-east-1:000000000000:topicfilter/cmd/${iot:Connection.Thing.ThingName}/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Subscribe"],
     "Resource": ["arn:aws:iot:us-east-1:000000000000:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*",
                  "arn:aws:iot:us-east-1:000000000000:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"]},
    {"Effect": "Allow", "Action": "iot:Receive",
     "Resource": "arn:aws:iot:us-east-1:000000000000:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
    {"Effect": "Allow", "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow"],
     "Resource": "arn:aws:iot:us-east-1:000000000000:thing/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Deny", "Action": "iot:Publish",
     "Resource": "arn:aws:iot:us-east-1:000000000000:topic/dt/${iot:ClientId}/secret*"},
    {"Effect": "Allow", "Action": "iot:Publish",
     "Resource": "arn:aws:iot:us-east-1:000000000000:topic/fleet/${iot:Connection.Thing.Attributes[fleet]}/?/status"},
    {"Effect": "Deny", "Action": "iot:Publish",
     "Resource": "arn:aws:iot:*:*:topic/dt/${iot:ClientId}/blocked/*"}
  ]
}"#;

fn context() -> VarContext {
    let mut attributes = BTreeMap::new();
    attributes.insert("fleet".to_owned(), "north".to_owned());
    VarContext {
        client_id: Some("sensor-0042".into()),
        thing: Some(ThingContext {
            thing_name: "sensor-0042".into(),
            thing_type_name: None,
            attributes,
        }),
        ..Default::default()
    }
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_check() {
    let policy = Policy::parse(POLICY).expect("valid policy");
    assert_eq!(policy.statements().len(), 10);
    let arn = ArnConfig::default();
    let ctx = context();

    let compile_iters = 20_000;
    let start = Instant::now();
    for _ in 0..compile_iters {
        black_box(CompiledPolicies::new(
            &arn,
            &[("bench", "1", black_box(&policy))],
            black_box(&ctx),
        ));
    }
    let compile_ns = start.elapsed().as_nanos() as f64 / compile_iters as f64;
    let compiled = CompiledPolicies::new(&arn, &[("bench", "1", &policy)], &ctx);

    let cases: [(&str, Action, &str, bool); 7] = [
        (
            "publish, allowed (statement 1)",
            Action::Publish,
            "dt/sensor-0042/temperature",
            true,
        ),
        (
            "publish, denied by Deny 7",
            Action::Publish,
            "dt/sensor-0042/secret/key",
            false,
        ),
        (
            "publish, denied by Deny 9 (region/account *)",
            Action::Publish,
            "dt/sensor-0042/blocked/x",
            false,
        ),
        (
            "publish, allowed by statement 8 (?)",
            Action::Publish,
            "fleet/north/7/status",
            true,
        ),
        (
            "publish, default deny (scans all)",
            Action::Publish,
            "dt/sensor-0043/temperature",
            false,
        ),
        (
            "receive, shadow topic",
            Action::Receive,
            "$aws/things/sensor-0042/shadow/update/delta",
            true,
        ),
        ("subscribe, default deny", Action::Subscribe, "cmd/other/#", false),
    ];
    let iters: u32 = if cfg!(debug_assertions) {
        200_000
    } else {
        5_000_000
    };
    let mut total = 0.0;
    println!("CompiledPolicies::new (10 statements, variables): {compile_ns:.0} ns");
    for (name, action, resource, expected) in cases {
        assert_eq!(compiled.check(action, resource).allowed, expected, "{name}");
        let start = Instant::now();
        for _ in 0..iters {
            black_box(compiled.check(black_box(action), black_box(resource)));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
        total += ns;
        println!("check {name:<48} {ns:>7.1} ns/check");
    }
    let mean = total / cases.len() as f64;
    println!(
        "mean {mean:.1} ns/check ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    if !cfg!(debug_assertions) {
        assert!(mean < 1000.0, "mean {mean} ns/check is over the 1 µs budget");
    }
}

/// The policy `tests/bench/auth.sh` enforces on every plain client of the full-broker benchmark
/// (anonymous access `policy:bench`), checked with the load generator's client ids and topics.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_check_full_broker_policy() {
    let policy = Policy::parse(include_str!("../../../tests/bench/policy-bench.json")).expect("valid policy");
    assert_eq!(policy.statements().len(), 10);
    let arn = ArnConfig::default();
    let ctx = |id: &str| VarContext {
        client_id: Some(id.into()),
        ..Default::default()
    };
    let compile_iters = 20_000;
    let start = Instant::now();
    for _ in 0..compile_iters {
        black_box(CompiledPolicies::new(
            &arn,
            &[("bench", "1", black_box(&policy))],
            black_box(&ctx("lg123456-s42")),
        ));
    }
    let compile_ns = start.elapsed().as_nanos() as f64 / compile_iters as f64;
    println!("full-broker policy: CompiledPolicies::new: {compile_ns:.0} ns");
    let cases: [(&str, &str, Action, &str, bool); 8] = [
        ("connect", "lg123456-p3", Action::Connect, "lg123456-p3", true),
        (
            "connect, uncovered id",
            "intruder",
            Action::Connect,
            "intruder",
            false,
        ),
        (
            "publish fan-in",
            "lg123456-p3",
            Action::Publish,
            "bench/in/3",
            true,
        ),
        (
            "publish p2p",
            "lg123456-p17",
            Action::Publish,
            "bench/p2p/17",
            true,
        ),
        (
            "publish fan-out",
            "lg123456-p0",
            Action::Publish,
            "bench/out",
            true,
        ),
        (
            "receive fan-out",
            "lg123456-s42",
            Action::Receive,
            "bench/out",
            true,
        ),
        (
            "subscribe fan-in",
            "lg123456-s0",
            Action::Subscribe,
            "bench/in/+",
            true,
        ),
        (
            "publish, explicit deny",
            "lg123456-p3",
            Action::Publish,
            "bench/admin/x",
            false,
        ),
    ];
    let iters: u32 = if cfg!(debug_assertions) {
        200_000
    } else {
        5_000_000
    };
    let mut total = 0.0;
    for (name, client, action, resource, expected) in cases {
        let compiled = CompiledPolicies::new(&arn, &[("bench", "1", &policy)], &ctx(client));
        assert_eq!(compiled.check(action, resource).allowed, expected, "{name}");
        let start = Instant::now();
        for _ in 0..iters {
            black_box(compiled.check(black_box(action), black_box(resource)));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
        total += ns;
        println!("full-broker policy: check {name:<28} {ns:>7.1} ns/check");
    }
    let mean = total / cases.len() as f64;
    println!("full-broker policy: mean {mean:.1} ns/check");
    if !cfg!(debug_assertions) {
        assert!(mean < 1000.0, "mean {mean} ns/check is over the 1 µs budget");
    }
}

/// The cost SigV4 adds to an HTTP request: parsing the `Authorization` header, the date check,
/// hashing the body, and verifying (signing key derivation, canonical request, HMAC), for a
/// boto3-shaped `iot-data publish` with a 200-byte body and a shadow update with 2 KiB.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_sigv4_verify() {
    use shoal_auth::sigv4::{Authorization, KeyCache, Request, SigningKey, sha256_hex, sign};
    let key = SigningKey {
        key_id: "AKIAIOSFODNN7EXAMPLE",
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "iotdata",
    };
    let now = 1_795_000_000;
    let iters: u32 = if cfg!(debug_assertions) { 2_000 } else { 100_000 };
    for (name, method, path, query, body) in [
        (
            "publish 200 B",
            "POST",
            "/topics/fleet%2Ftruck-7%2Ftelemetry",
            "qos=1",
            vec![b'x'; 200],
        ),
        (
            "shadow update 2 KiB",
            "POST",
            "/things/truck-7/shadow",
            "name=cfg",
            vec![b'y'; 2048],
        ),
        ("shadow get", "GET", "/things/truck-7/shadow", "", Vec::new()),
    ] {
        let base = Request {
            method,
            path,
            query,
            headers: vec![("host", b"127.0.0.1:8080".as_slice())],
        };
        let added = sign(&base, &body, &key, now);
        let mut req = base.clone();
        req.headers.push((
            "user-agent",
            b"Boto3/1.43.11 md/Botocore#1.43.11 ua/2.1 os/linux".as_slice(),
        ));
        req.headers.push(("content-length", b"200".as_slice()));
        for (n, v) in &added {
            req.headers.push((n, v.as_bytes()));
        }
        let cache = KeyCache::default();
        for cached in [false, true] {
            let verify = |req: &Request<'_>| {
                let a = Authorization::parse(req).expect("parse");
                a.check_time(now).expect("time");
                let hash = sha256_hex(black_box(&body));
                if cached {
                    a.verify_cached(req, &hash, key.secret, &cache).expect("verify");
                } else {
                    a.verify(req, &hash, key.secret).expect("verify");
                }
            };
            verify(&req);
            let start = Instant::now();
            for _ in 0..iters {
                verify(black_box(&req));
            }
            let us = start.elapsed().as_nanos() as f64 / f64::from(iters) / 1000.0;
            let how = if cached { "cached key" } else { "derived key" };
            println!("sigv4: verify {name:<22} {how:<12} {us:>6.2} µs/request");
        }
    }
}
