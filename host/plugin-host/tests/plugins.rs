//! The plugin host against real components (built from `tests/guests/` for wasm32-wasip2):
//! friendly and hostile plugins, limits, host calls, the catalog, hot swaps, restarts.

mod common;

use common::*;
use shoal_plugin_host::{
    Action, ArtifactSource, CatalogError, FsGrant, HealthStatus, LogLevel, Outcome, PluginConfig,
    PluginFault, PluginHost, Severity,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn lenient() -> PluginConfig {
    // Hostile calls fail on purpose; keep them from suspending the version mid-test. And give
    // them time: a memory hog or a huge output should meet its own limit, not the deadline
    // (page faults and big memsets take milliseconds on this shared machine).
    PluginConfig {
        max_consecutive_failures: 1000,
        deadline_ms: 1_000,
        ..PluginConfig::default()
    }
}

fn spin_config(deadline_ms: u32) -> PluginConfig {
    PluginConfig {
        max_consecutive_failures: 1000,
        deadline_ms,
        ..PluginConfig::default()
    }
}

#[test]
fn echo_plugin_answers_with_actions() {
    let t = test_host();
    let v = deploy(
        &t.host,
        "echo",
        "echo",
        PluginConfig::default().setting("tag", "v1"),
    );
    assert_eq!(v, 1);
    let out = t.host.invoke("echo", &msg("fleet/truck-1", "hello"));
    assert_eq!(published(&out), ("v1/fleet/truck-1".into(), "hello".into()));
    assert_eq!(
        t.host.invoke("echo", &msg("reject", "")),
        Outcome::Rejected("asked to reject".into())
    );
    let health = t.host.health("echo").unwrap();
    assert_eq!(health.status, HealthStatus::Healthy);
    assert_eq!(health.active_version, Some(1));
    assert_eq!(
        (health.calls.invocations, health.calls.ok, health.calls.rejected),
        (2, 1, 1)
    );
    let versions = t.host.versions("echo").unwrap();
    assert_eq!(versions.len(), 1);
    assert!(versions[0].active);
    assert_eq!(t.host.plugins(), vec!["echo".to_string()]);
    // Through a handle, too.
    let handle = t.host.handle("echo").unwrap();
    assert_eq!(published(&handle.invoke(&msg("x", "y"))).0, "v1/x");
}

#[test]
fn threshold_plugin_alerts_rejects_and_stays_quiet() {
    let t = test_host();
    let config = PluginConfig::default()
        .setting("field", "temp")
        .setting("max", "-15");
    deploy(&t.host, "cold", "threshold", config);
    let mut m = msg("fleet/truck-7/telemetry", r#"{"temp":-12.5,"door":"closed"}"#);
    m.thing_name = Some("truck-7".into());
    match t.host.invoke("cold", &m) {
        Outcome::Ok(actions) => match actions.as_slice() {
            [Action::Alert(a)] => {
                assert_eq!(a.severity, Severity::Warning);
                assert_eq!(a.thing.as_deref(), Some("truck-7"));
                assert!(a.body.contains("-12.5"), "{}", a.body);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.host.invoke("cold", &msg("t", r#"{"temp":-18}"#)),
        Outcome::Ok(vec![])
    );
    assert!(
        matches!(t.host.invoke("cold", &msg("t", "not json")), Outcome::Rejected(r) if r.contains("not a JSON object"))
    );
    assert!(matches!(
        t.host.invoke("cold", &msg("t", r#"{"x":1}"#)),
        Outcome::Rejected(_)
    ));
}

#[test]
fn uploads_that_are_not_plugin_components_are_refused_clearly() {
    let t = test_host();
    let err = t
        .host
        .upload("p", b"hello world", PluginConfig::default())
        .unwrap_err();
    assert!(matches!(err, CatalogError::NotWasm), "{err}");
    // The smallest core module: magic, version 1.
    let err = t
        .host
        .upload("p", b"\0asm\x01\0\0\0", PluginConfig::default())
        .unwrap_err();
    assert!(matches!(err, CatalogError::CoreModule), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
    // The smallest component: it exports nothing, so it does not fit the world.
    let err = t
        .host
        .upload("p", b"\0asm\x0d\0\x01\0", PluginConfig::default())
        .unwrap_err();
    assert!(matches!(err, CatalogError::WorldMismatch(_)), "{err}");
    assert!(err.to_string().contains("init"), "{err}");
    let err = t
        .host
        .upload("bad name", &guest("echo"), PluginConfig::default())
        .unwrap_err();
    assert!(matches!(err, CatalogError::InvalidName(_)), "{err}");
    let bad = PluginConfig {
        memory_limit_bytes: 1 << 40,
        ..PluginConfig::default()
    };
    assert!(matches!(
        t.host.upload("p", &guest("echo"), bad),
        Err(CatalogError::InvalidConfig(_))
    ));
    // Failed uploads leave no plugin behind.
    assert!(t.host.plugins().is_empty());
}

#[test]
fn a_plugin_importing_sockets_is_refused_at_upload_naming_the_imports() {
    let t = test_host();
    let err = t
        .host
        .upload("net", &guest("sockets"), PluginConfig::default())
        .unwrap_err();
    match &err {
        CatalogError::ForbiddenImports { names } => {
            assert!(names.iter().all(|n| n.starts_with("wasi:sockets/")), "{names:?}");
            assert!(
                names.iter().any(|n| n.starts_with("wasi:sockets/tcp")),
                "{names:?}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("wasi:sockets/"), "{err}");
    assert!(t.host.plugins().is_empty());
}

/// A bound that only a call the deadline failed to stop would exceed (the deadlines tested are
/// 10 and 50 ms): generous, because the test machine runs other tests at the same time.
const STOPPED_WELL_BEFORE: Duration = Duration::from_secs(1);

#[test]
fn an_infinite_loop_is_stopped_by_its_deadline() {
    let _serial = cpu_heavy();
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    deploy(&t.host, "spin", "hostile", spin_config(10));
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let out = t.host.invoke("spin", &msg("spin", ""));
        took.push(started.elapsed());
        assert_eq!(out, Outcome::Failed(PluginFault::Timeout { deadline_ms: 10 }));
        assert_healthy_echo(&t.host, "echo");
    }
    // Each call includes a fresh instantiation (the previous instance was discarded). How soon
    // after its deadline a loop stops is a figure for the benchmark (`tests/bench.rs`, "infinite
    // loop"), not an assertion here: a test machine running other tests beside this one delays
    // the trapped thread by whole scheduler slices. This test asserts that the deadline, and
    // nothing else, stopped the loop: never before it, and long before a stuck call would end.
    eprintln!("infinite loop, 10 ms deadline, stopped after: {took:?}");
    assert!(took.iter().all(|d| *d >= Duration::from_millis(10)), "{took:?}");
    assert!(took.iter().all(|d| *d < STOPPED_WELL_BEFORE), "{took:?}");
    // A 50 ms deadline holds too.
    let v = t
        .host
        .upload("spin50", &guest("hostile"), spin_config(50))
        .unwrap();
    t.host.activate("spin50", v.version).unwrap();
    let started = Instant::now();
    assert_eq!(
        t.host.invoke("spin50", &msg("spin", "")),
        Outcome::Failed(PluginFault::Timeout { deadline_ms: 50 })
    );
    let elapsed = started.elapsed();
    eprintln!("infinite loop, 50 ms deadline, stopped after: {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(50) && elapsed < STOPPED_WELL_BEFORE,
        "{elapsed:?}"
    );
    let health = t.host.health("spin").unwrap();
    assert_eq!(health.calls.failures.get("timeout"), Some(&5));
    let mut metrics = String::new();
    t.host.render_prometheus(&mut metrics);
    assert!(
        metrics.contains("shoal_plugin_timeouts_total{plugin=\"spin\",version=\"1\"} 5"),
        "{metrics}"
    );
}

#[test]
fn the_epoch_ticker_sleeps_while_idle_and_deadlines_still_hold_after() {
    let _serial = cpu_heavy();
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    let spin = deploy(&t.host, "spin", "hostile", spin_config(10));
    let parked = || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.host.epoch_ticker_parked() {
            assert!(Instant::now() < deadline, "the ticker never parked");
            std::thread::park_timeout(Duration::from_millis(10));
        }
    };
    let mut took = Vec::new();
    for _ in 0..3 {
        // Activating again keeps an instance ready (the last call's trap discarded it), so
        // the call below enters the guest without instantiating: only its own guard can wake
        // the ticker.
        t.host.activate("spin", spin).unwrap();
        parked();
        let host = t.host.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            let started = Instant::now();
            let out = host.invoke("spin", &msg("spin", ""));
            let _ = done_tx.send((out, started.elapsed()));
        });
        // A call the ticker does not see would spin for ever: fail instead of hanging.
        let (out, elapsed) = done_rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the infinite loop was not stopped: the ticker slept through the call");
        caller.join().unwrap();
        assert_eq!(out, Outcome::Failed(PluginFault::Timeout { deadline_ms: 10 }));
        took.push(elapsed);
    }
    eprintln!("infinite loop after an idle ticker, 10 ms deadline, stopped after: {took:?}");
    assert!(took.iter().all(|d| *d >= Duration::from_millis(10)), "{took:?}");
    assert!(took.iter().all(|d| *d < STOPPED_WELL_BEFORE), "{took:?}");
    // A call while the ticker sleeps runs normally, and wakes it.
    parked();
    assert_healthy_echo(&t.host, "echo");
    let deadline = Instant::now() + Duration::from_secs(1);
    while t.host.epoch_ticker_parked() {
        assert!(Instant::now() < deadline, "a call did not wake the ticker");
        std::thread::yield_now();
    }
}

#[test]
fn a_memory_hog_hits_its_limit_and_the_host_carries_on() {
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    deploy(&t.host, "hog", "hostile", lenient());
    for _ in 0..3 {
        let out = t.host.invoke("hog", &msg("memhog", ""));
        assert_eq!(
            out,
            Outcome::Failed(PluginFault::MemoryLimit {
                limit_bytes: 16 << 20
            })
        );
        assert_healthy_echo(&t.host, "echo");
    }
    // Below the limit works, and the high-water mark shows it.
    let out = t.host.invoke("hog", &msg("grow/8", ""));
    assert_eq!(published(&out), ("grown".into(), (8 << 20).to_string()));
    let hw = t.host.health("hog").unwrap().calls.memory_high_water_bytes;
    assert!((8 << 20..=16 << 20).contains(&hw), "{hw}");
    // A bigger limit lets more through.
    let cfg = PluginConfig {
        memory_limit_bytes: 48 << 20,
        ..lenient()
    };
    deploy(&t.host, "big", "hostile", cfg);
    assert_eq!(published(&t.host.invoke("big", &msg("grow/24", ""))).0, "grown");
}

#[test]
fn a_panic_is_a_trap_carrying_the_panic_message() {
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    deploy(&t.host, "boom", "hostile", lenient());
    match t.host.invoke("boom", &msg("panic", "")) {
        Outcome::Failed(PluginFault::Trap { message }) => {
            assert!(message.contains("plugin panicked on purpose"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_healthy_echo(&t.host, "echo");
    // The panic message went to the plugin's log (stderr lines are warnings).
    let logs = t.host.logs("boom", 100).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Warn && l.message.contains("panicked")),
        "{logs:?}"
    );
    // The next call gets a fresh instance and works.
    assert_eq!(published(&t.host.invoke("boom", &msg("x", "1"))).0, "hostile/x");
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let t = test_host();
    deploy(&t.host, "deep", "hostile", lenient());
    match t.host.invoke("deep", &msg("stack", "")) {
        // Rust keeps its stack in linear memory below the data: overflowing it is an
        // out-of-bounds access rather than wasm call-stack exhaustion. Either way, a trap.
        Outcome::Failed(PluginFault::Trap { message }) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(published(&t.host.invoke("deep", &msg("x", "1"))).0, "hostile/x");
}

#[test]
fn huge_output_is_refused_by_count_and_by_bytes() {
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    deploy(&t.host, "huge", "hostile", lenient());
    // 50 actions of 1 KB: within 100 actions and 1 MiB.
    assert_eq!(
        t.host
            .invoke("huge", &msg("huge/50/1000", ""))
            .actions()
            .map(<[Action]>::len),
        Some(50)
    );
    for spec in [
        "huge/1000/10",
        "huge/100000/10",
        "huge/10/200000",
        "huge/3/5000000",
    ] {
        match t.host.invoke("huge", &msg(spec, "")) {
            Outcome::Failed(PluginFault::OutputLimit { detail }) => assert!(!detail.is_empty()),
            other => panic!("{spec}: {other:?}"),
        }
        assert_healthy_echo(&t.host, "echo");
    }
    let failures = t.host.health("huge").unwrap().calls.failures;
    assert_eq!(failures.get("output_limit"), Some(&4));
}

#[test]
fn the_granted_directory_is_the_only_reachable_one() {
    let t = test_host();
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(granted.join("inside.txt"), "reference data").unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();

    let ro = PluginConfig {
        filesystem: Some(FsGrant::read_only(&granted)),
        ..lenient()
    };
    deploy(&t.host, "ro", "hostile", ro);
    let out = t.host.invoke("ro", &msg("fs/read", "/data/inside.txt"));
    assert_eq!(published(&out), ("fs/content".into(), "reference data".into()));
    let secret_host_path = root.path().join("secret.txt").display().to_string();
    for path in [
        "/data/../secret.txt",
        secret_host_path.as_str(),
        "/etc/passwd",
        "../secret.txt",
    ] {
        match t.host.invoke("ro", &msg("fs/read", path.to_string())) {
            Outcome::Rejected(why) => assert!(why.starts_with("cannot read"), "{path}: {why}"),
            other => panic!("{path}: read outside the grant: {other:?}"),
        }
    }
    // Read-only means read-only.
    assert!(matches!(
        t.host.invoke("ro", &msg("fs/write", "/data/new.txt")),
        Outcome::Rejected(_)
    ));
    assert!(!granted.join("new.txt").exists());

    let rw = PluginConfig {
        filesystem: Some(FsGrant {
            host_path: granted.clone(),
            guest_path: "/state".into(),
            writable: true,
        }),
        ..lenient()
    };
    deploy(&t.host, "rw", "hostile", rw);
    assert_eq!(
        published(&t.host.invoke("rw", &msg("fs/write", "/state/new.txt"))).0,
        "fs/written"
    );
    assert_eq!(
        std::fs::read_to_string(granted.join("new.txt")).unwrap(),
        "written by a plugin"
    );
    assert!(matches!(
        t.host.invoke("rw", &msg("fs/write", "/state/../escape.txt")),
        Outcome::Rejected(_)
    ));
    assert!(!root.path().join("escape.txt").exists());

    // No grant, no files.
    deploy(&t.host, "none", "hostile", lenient());
    assert!(matches!(
        t.host.invoke("none", &msg("fs/read", "/data/inside.txt")),
        Outcome::Rejected(_)
    ));
}

#[test]
fn consecutive_failures_suspend_a_version_until_it_is_activated_again() {
    let t = test_host();
    let cfg = PluginConfig {
        max_consecutive_failures: 3,
        ..PluginConfig::default()
    };
    deploy(&t.host, "flaky", "echo", cfg);
    // Failures separated by a success do not add up.
    for topic in ["fail", "fail", "ok", "fail", "fail"] {
        t.host.invoke("flaky", &msg(topic, ""));
    }
    assert_eq!(t.host.health("flaky").unwrap().status, HealthStatus::Failing);
    assert_eq!(t.host.health("flaky").unwrap().consecutive_failures, 2);
    // The third in a row suspends.
    assert_eq!(
        t.host.invoke("flaky", &msg("fail", "")),
        Outcome::Failed(PluginFault::Error("asked to fail".into()))
    );
    match t.host.invoke("flaky", &msg("ok", "")) {
        Outcome::Failed(PluginFault::Suspended { reason }) => {
            assert!(reason.contains("3 consecutive"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let health = t.host.health("flaky").unwrap();
    assert!(
        matches!(health.status, HealthStatus::Suspended { .. }),
        "{health:?}"
    );
    let mut metrics = String::new();
    t.host.render_prometheus(&mut metrics);
    assert!(
        metrics.contains("shoal_plugin_suspended{plugin=\"flaky\",version=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_plugin_failures_total{plugin=\"flaky\",version=\"1\",kind=\"suspended\"} 1")
    );

    // The suspension survives a restart.
    drop(t.host);
    let (host, _) = host_with(host_config(t.dir.path()));
    assert!(matches!(
        host.invoke("flaky", &msg("ok", "")),
        Outcome::Failed(PluginFault::Suspended { .. })
    ));
    assert!(host.versions("flaky").unwrap()[0].suspended.is_some());
    // Activating it again resumes it.
    host.activate("flaky", 1).unwrap();
    assert_eq!(published(&host.invoke("flaky", &msg("ok", "fine"))).1, "fine");
    assert_eq!(host.health("flaky").unwrap().status, HealthStatus::Healthy);
}

#[test]
fn a_configuration_that_init_refuses_is_caught_at_activation() {
    let t = test_host();
    deploy(
        &t.host,
        "p",
        "echo",
        PluginConfig::default().setting("tag", "good"),
    );
    let bad = t
        .host
        .upload(
            "p",
            &guest("echo"),
            PluginConfig::default().setting("fail-init", "please"),
        )
        .unwrap();
    match t.host.activate("p", bad.version) {
        Err(CatalogError::ActivationFailed {
            version: 2,
            fault: PluginFault::Init(why),
        }) => {
            assert!(why.contains("refusing config"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // Still on the good version.
    assert_eq!(published(&t.host.invoke("p", &msg("t", "x"))).0, "good/t");
    assert_eq!(t.host.health("p").unwrap().active_version, Some(1));
}

#[test]
fn instances_are_reused_and_a_failure_discards_one() {
    let t = test_host();
    deploy(&t.host, "p", "echo", PluginConfig::default());
    let calls = |host: &PluginHost| {
        published(&host.invoke("p", &msg("calls", "")))
            .1
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!((calls(&t.host), calls(&t.host), calls(&t.host)), (1, 2, 3));
    // A rejection keeps the instance.
    assert!(matches!(
        t.host.invoke("p", &msg("reject", "")),
        Outcome::Rejected(_)
    ));
    assert_eq!(calls(&t.host), 5);
    // A failure drops it: the next call runs on a fresh one.
    assert!(matches!(t.host.invoke("p", &msg("fail", "")), Outcome::Failed(_)));
    assert_eq!(calls(&t.host), 1);
    assert_eq!(t.host.health("p").unwrap().calls.instances_created, 2);
}

#[test]
fn host_calls_kv_log_shadows_clock_and_metrics() {
    let t = test_host();
    let cfg = PluginConfig {
        kv_quota_bytes: 200,
        kv_max_value_bytes: 100,
        ..lenient()
    };
    deploy(&t.host, "p", "echo", cfg);
    let thing = |topic: &str, payload: &str, thing: Option<&str>| {
        let mut m = msg(topic, payload.to_string());
        m.thing_name = thing.map(str::to_string);
        t.host.invoke("p", &m)
    };
    // Key-value, per thing and global.
    assert_eq!(published(&thing("kv/set/k", "one", Some("truck-1"))).0, "kv/ok");
    assert_eq!(published(&thing("kv/set/k", "global", None)).0, "kv/ok");
    assert_eq!(published(&thing("kv/get/k", "", Some("truck-1"))).1, "one");
    assert_eq!(published(&thing("kv/get/k", "", Some("truck-2"))).1, "none");
    assert_eq!(published(&thing("kv/get/k", "", None)).1, "global");
    assert_eq!(published(&thing("kv/del/k", "", Some("truck-1"))).1, "true");
    assert_eq!(published(&thing("kv/get/k", "", Some("truck-1"))).1, "none");
    // Value size and quota.
    let big = "x".repeat(101);
    assert!(matches!(thing("kv/set/big", &big, None), Outcome::Rejected(r) if r.contains("QuotaExceeded")));
    let near = "x".repeat(100);
    thing("kv/set/a", &near, None);
    assert!(matches!(thing("kv/set/b", &near, None), Outcome::Rejected(r) if r.contains("QuotaExceeded")));
    assert!(t.host.health("p").unwrap().kv_usage_bytes.unwrap() <= 200);
    // Bad keys.
    let long_key = format!("kv/get/{}", "k".repeat(300));
    assert!(matches!(thing(&long_key, "", None), Outcome::Rejected(r) if r.contains("InvalidKey")));
    // Expiry follows the host clock.
    thing("kv/del/a", "", None);
    thing("kv/ttl/t", "soon gone", None);
    assert_eq!(published(&thing("kv/get/t", "", None)).1, "soon gone");
    t.clock.advance(1_001);
    assert_eq!(published(&thing("kv/get/t", "", None)).1, "none");
    // Clock and shadows.
    assert_eq!(
        published(&thing("now", "", None)).1,
        t.clock.0.load(Ordering::SeqCst).to_string()
    );
    assert!(
        published(&thing("shadow/truck-7", "", None))
            .1
            .contains("reported")
    );
    assert_eq!(published(&thing("shadow/nobody", "", None)).1, "none");
    assert!(
        matches!(thing("shadow/broken", "", None), Outcome::Failed(PluginFault::Error(e)) if e.contains("unavailable"))
    );
    // Logs, stdout and stderr, rate-limited.
    thing("print", "printed line", None);
    let logs = t.host.logs("p", 10).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Info && l.message == "printed line"),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Warn && l.message == "to stderr: printed line")
    );
    thing("log/300", "burst", None);
    let health = t.host.health("p").unwrap();
    assert!(health.log_lines_dropped >= 150, "{health:?}");
    let logs = t.host.logs("p", 1000).unwrap();
    assert!(logs.len() <= 1000 && logs.iter().any(|l| l.message == "line 0: burst"));
    assert!(logs.iter().all(|l| l.version == 1));
    // Custom metrics.
    thing("metric", "21.5", None);
    thing("metric", "22.5", None);
    let mut metrics = String::new();
    t.host.render_prometheus(&mut metrics);
    assert!(
        metrics.contains("shoal_plugin_user_counter_total{plugin=\"p\",name=\"seen\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_plugin_user_gauge{plugin=\"p\",name=\"last\"} 22.5"));
    assert!(metrics.contains("shoal_plugin_metric_names_refused_total{plugin=\"p\"} 2"));
    assert!(metrics.contains("shoal_plugin_log_dropped_total{plugin=\"p\"}"));
    assert!(metrics.contains("shoal_plugin_call_duration_seconds_count{plugin=\"p\",version=\"1\"}"));
}

#[test]
fn a_fuel_budget_is_enforced_and_metered() {
    let _serial = cpu_heavy();
    let t = test_host();
    deploy(&t.host, "echo", "echo", PluginConfig::default());
    let cfg = PluginConfig {
        fuel: Some(5_000_000),
        ..lenient()
    };
    deploy(&t.host, "metered", "hostile", cfg);
    assert_eq!(
        published(&t.host.invoke("metered", &msg("x", "1"))).0,
        "hostile/x"
    );
    assert_eq!(
        t.host.invoke("metered", &msg("spin", "")),
        Outcome::Failed(PluginFault::FuelExhausted { budget: 5_000_000 })
    );
    assert_healthy_echo(&t.host, "echo");
    let consumed = t.host.health("metered").unwrap().calls.fuel_consumed;
    assert!(consumed >= 5_000_000, "{consumed}");
    let mut metrics = String::new();
    t.host.render_prometheus(&mut metrics);
    assert!(metrics.contains("shoal_plugin_fuel_consumed_total{plugin=\"metered\",version=\"1\"}"));
    assert!(!metrics.contains("shoal_plugin_fuel_consumed_total{plugin=\"echo\""));
}

#[test]
fn rollback_walks_back_through_the_activation_history() {
    let t = test_host();
    for tag in ["a", "b", "c"] {
        t.host
            .upload("p", &guest("echo"), PluginConfig::default().setting("tag", tag))
            .unwrap();
    }
    // Identical bytes and configuration: the same version again.
    let again = t
        .host
        .upload("p", &guest("echo"), PluginConfig::default().setting("tag", "b"))
        .unwrap();
    assert_eq!(again.version, 2);
    let tag = |host: &PluginHost| published(&host.invoke("p", &msg("t", ""))).0;
    assert!(matches!(
        t.host.invoke("p", &msg("t", "")),
        Outcome::Failed(PluginFault::Unavailable(_))
    ));
    assert!(matches!(
        t.host.rollback("p"),
        Err(CatalogError::NoPreviousVersion(_))
    ));
    for v in [1, 2, 3] {
        t.host.activate("p", v).unwrap();
    }
    assert_eq!(tag(&t.host), "c/t");
    assert_eq!(t.host.rollback("p").unwrap().version, 2);
    assert_eq!(tag(&t.host), "b/t");
    assert_eq!(t.host.rollback("p").unwrap().version, 1);
    assert_eq!(tag(&t.host), "a/t");
    assert!(matches!(
        t.host.rollback("p"),
        Err(CatalogError::NoPreviousVersion(_))
    ));
    // An inactive version can still be called by number (replay before activation).
    let out = t.host.invoke_version("p", 3, &msg("t", "")).unwrap();
    assert_eq!(published(&out).0, "c/t");
}

#[test]
fn delete_refuses_the_active_version_and_removes_unused_artifacts() {
    let t = test_host();
    let v1 = t
        .host
        .upload("p", &guest("echo"), PluginConfig::default())
        .unwrap();
    let v2 = t
        .host
        .upload("p", &guest("hostile"), PluginConfig::default())
        .unwrap();
    t.host.activate("p", v2.version).unwrap();
    assert!(matches!(
        t.host.delete("p", 2),
        Err(CatalogError::VersionActive { .. })
    ));
    assert!(matches!(
        t.host.delete("p", 9),
        Err(CatalogError::UnknownVersion { .. })
    ));
    let artifact = t.dir.path().join(format!("plugins/artifacts/{}.wasm", v1.sha256));
    assert!(artifact.exists());
    t.host.delete("p", 1).unwrap();
    assert!(!artifact.exists());
    assert_eq!(
        t.host
            .versions("p")
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![2]
    );
    // The active version keeps working; numbers are never reused.
    assert_eq!(published(&t.host.invoke("p", &msg("x", ""))).0, "hostile/x");
    assert_eq!(
        t.host
            .upload("p", &guest("echo"), PluginConfig::default())
            .unwrap()
            .version,
        3
    );
}

#[test]
fn the_catalog_survives_a_restart_and_the_precompiled_cache_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = host_config(dir.path());
        c.cache_dir = Some(cache.path().to_path_buf());
        c
    };
    let (host, _) = host_with(config());
    let v1 = host
        .upload("p", &guest("echo"), PluginConfig::default().setting("tag", "one"))
        .unwrap();
    let v2 = host
        .upload("p", &guest("echo"), PluginConfig::default().setting("tag", "two"))
        .unwrap();
    let compiled = v1.loaded.unwrap();
    assert_eq!(compiled.source, ArtifactSource::Compiled);
    // Same bytes, other settings: the second upload maps the first one's machine code.
    assert_eq!(v2.loaded.unwrap().source, ArtifactSource::Cache);
    host.activate("p", 1).unwrap();
    host.activate("p", 2).unwrap();
    let before = host.versions("p").unwrap();
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].to_string_lossy().starts_with(&v1.sha256));
    drop(host);

    let (host, _) = host_with(config());
    let after = host.versions("p").unwrap();
    assert_eq!(after.len(), 2);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.version, &b.sha256, &b.config, b.active),
            (a.version, &a.sha256, &a.config, a.active)
        );
    }
    assert_eq!(published(&host.invoke("p", &msg("t", ""))).0, "two/t");
    let active = after.iter().find(|v| v.active).unwrap();
    let from_cache = active.loaded.unwrap();
    assert_eq!(from_cache.source, ArtifactSource::Cache);
    assert!(
        from_cache.millis < compiled.millis,
        "cache load {} ms vs compile {} ms",
        from_cache.millis,
        compiled.millis
    );
    // Rollback history survived too.
    assert_eq!(host.rollback("p").unwrap().version, 1);
    assert_eq!(published(&host.invoke("p", &msg("t", ""))).0, "one/t");
    // Without the cache, a restart recompiles from the stored .wasm.
    drop(host);
    std::fs::remove_dir_all(cache.path()).unwrap();
    let (host, _) = host_with(config());
    assert_eq!(
        host.versions("p").unwrap()[0].loaded.unwrap().source,
        ArtifactSource::Compiled
    );
    assert_eq!(published(&host.invoke("p", &msg("t", ""))).0, "one/t");
}

#[test]
fn a_missing_artifact_makes_the_plugin_unavailable_not_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = host_config(dir.path());
        c.cache_dir = Some(cache.path().to_path_buf());
        c
    };
    let (host, _) = host_with(config());
    deploy(&host, "p", "echo", PluginConfig::default());
    deploy(&host, "q", "hostile", PluginConfig::default());
    let sha = host.versions("p").unwrap()[0].sha256.clone();
    drop(host);
    std::fs::remove_dir_all(cache.path()).unwrap();
    std::fs::remove_file(dir.path().join(format!("plugins/artifacts/{sha}.wasm"))).unwrap();
    let (host, _) = host_with(config());
    assert!(matches!(
        host.health("p").unwrap().status,
        HealthStatus::LoadFailed { .. }
    ));
    assert!(matches!(
        host.invoke("p", &msg("t", "")),
        Outcome::Failed(PluginFault::Unavailable(_))
    ));
    assert_eq!(published(&host.invoke("q", &msg("t", ""))).0, "hostile/t");
}

/// Several threads send numbered messages while the main thread swaps between three versions
/// 50 times; every number must come back exactly once.
#[test]
fn fifty_hot_swaps_lose_and_duplicate_no_message() {
    let _serial = cpu_heavy();
    let t = test_host();
    // This test is about swaps, not deadlines: a worker descheduled for 10 ms on this busy
    // 2-core machine must not time out.
    for tag in ["a", "b", "c"] {
        let config = PluginConfig {
            deadline_ms: 2_000,
            ..PluginConfig::default().setting("tag", tag)
        };
        t.host.upload("p", &guest("echo"), config).unwrap();
    }
    t.host.activate("p", 1).unwrap();
    let host = Arc::new(t.host);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (host, next, stop) = (host.clone(), next.clone(), stop.clone());
            std::thread::spawn(move || {
                let handle = host.handle("p").unwrap();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let out = handle.invoke(&msg("seq", seq.to_string()));
                    let (topic, payload) = published(&out);
                    assert_eq!(payload, seq.to_string());
                    seen.push((seq, topic));
                }
                seen
            })
        })
        .collect();
    for swap in 0..50u64 {
        // Let some traffic through between swaps.
        let mark = next.load(Ordering::Relaxed);
        while next.load(Ordering::Relaxed) < mark + 100 {
            assert!(!workers.iter().any(|w| w.is_finished()), "a worker stopped early");
            std::thread::yield_now();
        }
        host.activate("p", ((swap + 1) % 3 + 1) as u32).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut per_tag: HashMap<String, u64> = HashMap::new();
    let mut seqs = Vec::new();
    for worker in workers {
        for (seq, topic) in worker.join().unwrap() {
            seqs.push(seq);
            *per_tag.entry(topic).or_default() += 1;
        }
    }
    seqs.sort_unstable();
    let sent = next.load(Ordering::Relaxed);
    // Every number drawn was sent, and came back exactly once.
    assert_eq!(seqs.len() as u64, sent, "lost or duplicated messages");
    assert!(
        seqs.iter().copied().eq(0..sent),
        "a message was lost or ran twice"
    );
    assert_eq!(per_tag.len(), 3, "{per_tag:?}");
    let invocations: u64 = host
        .versions("p")
        .unwrap()
        .iter()
        .map(|v| v.calls.as_ref().unwrap().ok)
        .sum();
    assert_eq!(invocations, seqs.len() as u64);
    eprintln!("{} messages over 50 swaps, per version: {per_tag:?}", seqs.len());
}

#[test]
fn a_call_made_inside_an_async_task_cannot_take_the_caller_down() {
    let t = test_host();
    deploy(&t.host, "p", "echo", PluginConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (plain, printing) = rt.block_on(async {
        (
            t.host.invoke("p", &msg("x", "1")),
            t.host.invoke("p", &msg("print", "from async")),
        )
    });
    // Pure computation works anywhere; a WASI call (stdout) inside a tokio worker hits
    // wasmtime-wasi's blocking bridge, which panics there: the host turns that into a fault.
    assert_eq!(published(&plain).0, "echo/x");
    match printing {
        Outcome::Failed(PluginFault::Trap { message }) => {
            assert!(message.starts_with("host panicked during the call"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_healthy_echo(&t.host, "p");
}

#[test]
fn replay_is_a_dry_run_that_leaves_state_health_and_logs_alone() {
    let t = test_host();
    deploy(&t.host, "p", "echo", lenient().setting("tag", "v1"));
    t.host
        .upload("p", &guest("echo"), lenient().setting("tag", "v2"))
        .unwrap();
    let mut on_thing = msg("kv/set/k", "real");
    on_thing.thing_name = Some("truck-1".into());
    assert_eq!(published(&t.host.invoke("p", &on_thing)).0, "kv/ok");
    let before = t.host.health("p").unwrap();
    let logs_before = t.host.logs("p", 1000).unwrap().len();
    let recording: Vec<_> = [
        ("kv/get/k", "", Some("truck-1")),
        ("kv/set/k", "replayed", Some("truck-1")),
        ("kv/get/k", "", Some("truck-1")),
        ("print", "from the replay", None),
        ("reading", "42", None),
        ("fail", "", None),
    ]
    .into_iter()
    .map(|(topic, payload, thing)| {
        let mut m = msg(topic, payload.to_string());
        m.thing_name = thing.map(str::to_string);
        m
    })
    .collect();
    let candidate = t.host.replay("p", 2, &recording).unwrap();
    let active = t.host.replay("p", 1, &recording).unwrap();
    assert_eq!(candidate.outcomes.len(), recording.len());
    // Both start from the real state and see their own writes.
    for run in [&candidate, &active] {
        assert_eq!(published(&run.outcomes[0]).1, "real");
        assert_eq!(published(&run.outcomes[2]).1, "replayed");
        assert!(matches!(run.outcomes[5], Outcome::Failed(_)));
        assert!(
            run.logs.iter().any(|l| l.message == "from the replay"),
            "{:?}",
            run.logs
        );
    }
    // The versions differ where their configuration does.
    assert_eq!(published(&candidate.outcomes[4]).0, "v2/reading");
    assert_eq!(published(&active.outcomes[4]).0, "v1/reading");
    // Nothing leaked: state, health, counters and the plugin's log are as before.
    assert_eq!(
        published(&t.host.invoke("p", &{
            let mut m = msg("kv/get/k", "");
            m.thing_name = Some("truck-1".into());
            m
        }))
        .1,
        "real"
    );
    let after = t.host.health("p").unwrap();
    assert_eq!(after.consecutive_failures, 0);
    assert_eq!(after.calls.invocations, before.calls.invocations + 1);
    assert_eq!(t.host.logs("p", 1000).unwrap().len(), logs_before);
    assert!(matches!(
        t.host.replay("p", 9, &recording),
        Err(CatalogError::UnknownVersion { .. })
    ));
}

/// The SDK's JSON selection compiled to WebAssembly (its byte scanner, word-at-a-time string
/// skipping and serde_json fallback) answers as serde_json reading the whole document: the
/// first-party `threshold-alert` (`plugins/dist`, built by `plugins/build.sh`; field `temp`,
/// `max` 0, `missing` reject) over documents with every kind of string content (escapes,
/// control characters, multi-byte and invalid UTF-8) at every offset from 0 to 39 of a string
/// (so at every position in the scanner's 8-byte words), valid and not.
#[test]
fn the_sdks_json_selection_agrees_in_webassembly_and_natively() {
    let wasm = dist("threshold-alert");
    let t = test_host();
    let config = PluginConfig::default()
        .setting("field", "temp")
        .setting("max", "0")
        .setting("missing", "reject");
    let info = t.host.upload("threshold", &wasm, config).unwrap();
    t.host.activate("threshold", info.version).unwrap();
    let handle = t.host.handle("threshold").unwrap();

    let pieces: [&[u8]; 13] = [
        b"\\\"",
        b"\\\\",
        b"\\n",
        b"\\u00e9",
        b"\\ud83d\\ude00",
        b"\x01",
        b"\t",
        "é".as_bytes(),
        "😀".as_bytes(),
        b"\xff",
        b"\xc3",
        b"\"",
        b"\\x",
    ];
    let mut checked = (0, 0, 0);
    for piece in pieces {
        for at in 0..40 {
            for (temp, before) in [("3.5", true), ("-5", false), ("\"hot\"", true), ("", false)] {
                let mut text = b"x".repeat(at);
                text.extend_from_slice(piece);
                text.extend_from_slice(b"yyyyyyyyyyyyyyyyyyyy");
                let mut doc = b"{".to_vec();
                let field = |doc: &mut Vec<u8>| {
                    if !temp.is_empty() {
                        doc.extend_from_slice(format!("\"temp\":{temp},").as_bytes());
                    }
                };
                if before {
                    field(&mut doc);
                }
                doc.extend_from_slice(b"\"pad\":\"");
                doc.extend_from_slice(&text);
                doc.extend_from_slice(b"\",\"n\":1");
                if !before {
                    doc.push(b',');
                    field(&mut doc);
                    doc.pop();
                    if temp.is_empty() {
                        doc.push(b'1');
                    }
                }
                doc.push(b'}');
                // The reference: serde_json's own parse of the whole document (for these
                // documents as strict as the selection: no big exponents, no lone surrogates).
                let want = serde_json::from_slice::<serde_json::Value>(&doc)
                    .ok()
                    .and_then(|v| v.get("temp")?.as_f64())
                    .map(|v| usize::from(v > 0.0));
                let got = handle.invoke(&msg("fleet/t1/telemetry", doc.clone()));
                let got = match &got {
                    Outcome::Ok(actions) => Some(actions.len()),
                    Outcome::Rejected(_) => None,
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, want, "{}", String::from_utf8_lossy(&doc));
                match want {
                    Some(1) => checked.0 += 1,
                    Some(_) => checked.1 += 1,
                    None => checked.2 += 1,
                }
            }
        }
    }
    // Every kind of answer was seen: alerts, quiet readings, rejections.
    assert!(
        checked.0 > 100 && checked.1 > 100 && checked.2 > 100,
        "{checked:?}"
    );
}

/// Two versions of the plugin interface load and run side by side: the raw `echo` guest
/// targets world 0.1.0 (`wit/deps/shoal-plugin-0.1.0`), the SDK-built `echo` fixture
/// (`plugins/dist`, built by `plugins/build.sh`) targets 0.3.0, whose message comes packed
/// (as 0.2.0 packs it).
/// The fixture's report (`report` = `true`) shows that every part of the message arrives
/// exactly: a topic and user properties with multi-byte text, an empty property, duplicate
/// keys, client id and thing name; and without a client id, thing or properties.
#[test]
fn both_interface_versions_load_and_the_packed_message_arrives_whole() {
    let wasm = dist("echo");
    let t = test_host();
    deploy(&t.host, "old", "echo", PluginConfig::default());
    let config = PluginConfig::default()
        .setting("report", "true")
        .setting("prefix", "out");
    let info = t.host.upload("new", &wasm, config).unwrap();
    t.host.activate("new", info.version).unwrap();
    let world = |name: &str| t.host.versions(name).unwrap()[0].loaded.map(|l| l.world);
    assert_eq!(world("old"), Some("0.1.0"));
    assert_eq!(world("new"), Some("0.3.0"));
    assert_eq!(
        published(&t.host.invoke("old", &msg("fleet/truck-1", "hello"))),
        ("echo/fleet/truck-1".into(), "hello".into())
    );

    let payload = r#"{"seq":7,"note":"héllo 🐟"}"#;
    let full = shoal_plugin_host::Message {
        topic: "fleet/trück-7/🐟".into(),
        payload: payload.into(),
        qos: 1,
        timestamp_ms: 1_700_000_000_123,
        client_id: Some("truck-7".into()),
        thing_name: Some("Truck 7".into()),
        user_properties: vec![
            ("unit".into(), "°C".into()),
            (String::new(), String::new()),
            ("unit".into(), "K".into()),
        ],
    };
    let bare = shoal_plugin_host::Message {
        client_id: None,
        thing_name: None,
        user_properties: Vec::new(),
        qos: 0,
        ..full.clone()
    };
    for m in [&full, &bare] {
        let (topic, body) = published(&t.host.invoke("new", m));
        assert_eq!(topic, "out/7");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let properties: Vec<serde_json::Value> = m
            .user_properties
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect();
        assert_eq!(report["topic"], m.topic.as_str(), "{report}");
        assert_eq!(report["payload"], payload, "{report}");
        assert_eq!(report["qos"], m.qos, "{report}");
        assert_eq!(report["timestamp_ms"], m.timestamp_ms, "{report}");
        assert_eq!(report["client_id"], serde_json::json!(m.client_id), "{report}");
        assert_eq!(report["thing"], serde_json::json!(m.thing_name), "{report}");
        assert_eq!(report["properties"], serde_json::json!(properties), "{report}");
    }
    let health = t.host.health("new").unwrap();
    assert_eq!((health.calls.invocations, health.calls.ok), (2, 2));
}

/// Uploads `plugins/dist/<fixture>.wasm` as `name` with `config` and activates it.
fn deploy_dist(host: &PluginHost, name: &str, fixture: &str, config: PluginConfig) {
    let info = host
        .upload(name, &dist(fixture), config)
        .expect("the fixture uploads");
    host.activate(name, info.version).expect("the fixture activates");
}

fn kinds(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok(_) => "ok",
            Outcome::Rejected(_) => "rejected",
            Outcome::Failed(PluginFault::Trap { .. }) => "trap",
            Outcome::Failed(PluginFault::Timeout { .. }) => "timeout",
            Outcome::Failed(PluginFault::FuelExhausted { .. }) => "fuel",
            Outcome::Failed(PluginFault::Suspended { .. }) => "suspended",
            Outcome::Failed(_) => "failed",
        })
        .collect()
}

/// A batch (interface 0.3.0's `on-batch`) gives exactly the outcomes one call per message
/// gives, in order, from one instance: the SDK-built `echo` fixture reports every field of
/// each message, and one message without a `seq` is rejected without spoiling the others.
#[test]
fn a_batch_answers_each_message_as_single_calls_do() {
    let t = test_host();
    let config = || {
        PluginConfig::default()
            .setting("report", "true")
            .setting("prefix", "out")
    };
    deploy_dist(&t.host, "single", "echo", config());
    deploy_dist(&t.host, "batched", "echo", config());
    let msgs: Vec<shoal_plugin_host::Message> = (0..20)
        .map(|i| {
            let payload = if i == 7 {
                r#"{"no":"seq"}"#.to_string()
            } else {
                format!(r#"{{"seq":{i},"note":"héllo 🐟"}}"#)
            };
            shoal_plugin_host::Message {
                topic: format!("fleet/trück-{i}/t"),
                payload: payload.into(),
                qos: (i % 3) as u8,
                timestamp_ms: 1_700_000_000_000 + i,
                client_id: (i % 2 == 0).then(|| format!("truck-{i}")),
                thing_name: (i % 4 == 0).then(|| format!("Truck {i}")),
                user_properties: (0..i % 3).map(|k| (format!("k{k}"), format!("v{i}°"))).collect(),
            }
        })
        .collect();
    let single: Vec<Outcome> = msgs.iter().map(|m| t.host.invoke("single", m)).collect();
    let batched = t.host.invoke_batch("batched", &msgs);
    assert_eq!(batched, single);
    assert_eq!(kinds(&batched)[6..9], ["ok", "rejected", "ok"]);
    for (m, outcome) in msgs
        .iter()
        .zip(&batched)
        .filter(|(_, o)| matches!(o, Outcome::Ok(_)))
    {
        let report: serde_json::Value = serde_json::from_str(&published(outcome).1).unwrap();
        assert_eq!(report["topic"], m.topic.as_str(), "{report}");
        assert_eq!(report["timestamp_ms"], m.timestamp_ms, "{report}");
        assert_eq!(report["client_id"], serde_json::json!(m.client_id), "{report}");
        assert_eq!(report["thing"], serde_json::json!(m.thing_name), "{report}");
        assert_eq!(
            report["properties"].as_array().unwrap().len(),
            m.user_properties.len()
        );
    }
    let health = t.host.health("batched").unwrap();
    assert_eq!(
        (health.calls.invocations, health.calls.ok, health.calls.rejected),
        (20, 19, 1)
    );
    assert_eq!(
        health.calls.instances_created, 1,
        "one instance answered the whole batch"
    );
    assert_eq!((health.calls.batches, health.calls.batched_messages), (1, 20));
    assert_eq!(t.host.health("single").unwrap().calls.batches, 0);
    assert_eq!(health.status, HealthStatus::Healthy);
}

/// A trap in the middle of a batch is that message's alone. When the messages changed
/// nothing (the `panic` fixture as it is), the host runs the unanswered ones again one by one,
/// so the fault lands on the right one. When they write to the key-value store (`count`), the
/// SDK answers each before the next, so the host knows the trapping message and runs only the
/// ones after it again: every message is counted exactly once. (A 0.1.0 plugin, which has no
/// `on-batch`, gets one call per message.)
#[test]
fn a_trap_in_a_batch_fails_only_the_message_that_trapped() {
    let t = test_host();
    let pure = lenient().setting("trigger", "boom");
    let counting = pure.clone().setting("count", "true");
    for (name, config, answers) in [
        ("panicky", pure, ["a", "b", "c", "d"]),
        ("counting", counting, ["a:1", "b:2", "c:4", "d:5"]),
    ] {
        deploy_dist(&t.host, name, "panic", config);
        let msgs: Vec<_> = ["a", "b", "boom", "c", "d"]
            .iter()
            .map(|p| msg("t", *p))
            .collect();
        let out = t.host.invoke_batch(name, &msgs);
        assert_eq!(kinds(&out), ["ok", "ok", "trap", "ok", "ok"], "{name}");
        for (i, p) in [0, 1, 3, 4].into_iter().zip(answers) {
            assert_eq!(
                published(&out[i]),
                ("fixture/ok".into(), p.into()),
                "{name}: message {i}"
            );
        }
        let Outcome::Failed(PluginFault::Trap { message }) = &out[2] else {
            unreachable!()
        };
        assert!(message.contains("panicking on t as designed"), "{message}");
        // One batch; after the trap all five again one by one (`panicky`), or the two after
        // it, too few for another batch (`counting`).
        let health = t.host.health(name).unwrap();
        assert_eq!(
            (health.calls.batches, health.calls.batched_messages),
            (1, 5),
            "{name}"
        );
        assert_eq!((health.calls.invocations, health.calls.ok), (5, 4), "{name}");
        assert_eq!(health.calls.failures.get("trap"), Some(&1), "{name}");
    }

    deploy(&t.host, "old", "echo", PluginConfig::default());
    let out = t
        .host
        .invoke_batch("old", &[msg("x", "1"), msg("reject", ""), msg("y", "2")]);
    assert_eq!(kinds(&out), ["ok", "rejected", "ok"]);
    assert_eq!(published(&out[2]), ("echo/y".into(), "2".into()));
}

/// A message that never finishes times out alone, after its batch ran out of time and its
/// messages ran again one by one. A batch whose messages together run out of fuel falls back
/// the same way, and after it the host keeps that version's batches within the budget.
#[test]
fn time_outs_and_fuel_in_a_batch_land_on_single_messages() {
    let t = test_host();
    deploy_dist(
        &t.host,
        "spin",
        "infinite-loop",
        spin_config(50).setting("trigger", "spin"),
    );
    let out = t
        .host
        .invoke_batch("spin", &[msg("t", "a"), msg("t", "spin"), msg("t", "b")]);
    assert_eq!(kinds(&out), ["ok", "timeout", "ok"]);
    let health = t.host.health("spin").unwrap();
    assert_eq!(health.calls.batches, 1);
    assert_eq!(health.calls.failures.get("timeout"), Some(&1));

    let metered = |fuel: u64| PluginConfig {
        fuel: Some(fuel),
        max_consecutive_failures: 1000,
        ..PluginConfig::default()
    };
    let m = msg("fleet/truck-1", r#"{"seq":1}"#);
    deploy_dist(&t.host, "probe", "echo", metered(1 << 40));
    // The most one call took (the first call of an instance may take more than the next).
    let (mut one, mut before) = (0, 0);
    for _ in 0..3 {
        assert!(matches!(t.host.invoke("probe", &m), Outcome::Ok(_)));
        let total = t.host.health("probe").unwrap().calls.fuel_consumed;
        one = one.max(total - before);
        before = total;
    }
    assert!(one > 0);
    // Twenty messages share one budget of three messages' fuel: the batch runs out, and each
    // message then runs alone within its own.
    deploy_dist(&t.host, "tight", "echo", metered(3 * one));
    let msgs = vec![m.clone(); 20];
    let out = t.host.invoke_batch("tight", &msgs);
    assert_eq!(kinds(&out), vec!["ok"; 20], "{out:?}");
    let health = t.host.health("tight").unwrap();
    assert_eq!(health.calls.batches, 1);
    assert!(
        health.last_fault.as_deref().unwrap_or("").contains("fuel"),
        "{health:?}"
    );
    // Sized by the budget now: no more batches for this version.
    let out = t.host.invoke_batch("tight", &msgs);
    assert_eq!(kinds(&out), vec!["ok"; 20], "{out:?}");
    assert_eq!(t.host.health("tight").unwrap().calls.batches, 1);
    // With room for the batch, one call.
    deploy_dist(&t.host, "roomy", "echo", metered(400 * one));
    let out = t.host.invoke_batch("roomy", &msgs);
    assert_eq!(kinds(&out), vec!["ok"; 20], "{out:?}");
    let calls = t.host.health("roomy").unwrap().calls;
    assert_eq!((calls.batches, calls.batched_messages), (1, 20));
    assert!(calls.failures.is_empty(), "{calls:?}");
}

/// Failures inside a batch count toward suspension in order, and once the version is
/// suspended the rest of the batch is refused as single calls would be.
#[test]
fn a_batch_stops_at_a_suspension() {
    let t = test_host();
    let config = PluginConfig {
        max_consecutive_failures: 2,
        ..PluginConfig::default()
    }
    .setting("trigger", "boom");
    deploy_dist(&t.host, "fragile", "panic", config);
    let msgs: Vec<_> = ["ok", "boom", "boom", "boom", "ok"]
        .iter()
        .map(|p| msg("t", *p))
        .collect();
    let out = t.host.invoke_batch("fragile", &msgs);
    assert_eq!(kinds(&out), ["ok", "trap", "trap", "suspended", "suspended"]);
    assert!(matches!(
        t.host.health("fragile").unwrap().status,
        HealthStatus::Suspended { .. }
    ));
}

/// A 0.3.0 plugin that misuses the batch protocol (the raw `batch` guest) cannot make the
/// host lose or invent an answer: every message gets exactly one outcome, in order; answers
/// past the batch are ignored (and reported); a message left unanswered runs again by itself;
/// answering outside `on-batch` traps that call.
#[test]
fn misused_batch_answers_are_contained() {
    let t = test_host();
    let msgs = [msg("a", "1"), msg("b", "2"), msg("c", "3")];
    for (mode, fault) in [
        ("plain", None),
        ("halves", None),
        ("extra", Some("answered 4 messages of a batch of 3")),
        ("over", Some("answered 4 messages of a batch of 3")),
        ("short", Some("answered 2 messages of a batch of 3")),
    ] {
        deploy(&t.host, mode, "batch", lenient().setting("mode", mode));
        let out = t.host.invoke_batch(mode, &msgs);
        assert_eq!(kinds(&out), ["ok", "ok", "ok"], "{mode}: {out:?}");
        let topics: Vec<String> = out.iter().map(|o| published(o).0).collect();
        assert_eq!(topics, ["a", "b", "c"], "{mode}");
        let health = t.host.health(mode).unwrap();
        assert_eq!(health.calls.batches, 1, "{mode}");
        match fault {
            None => {
                assert_eq!(health.last_fault, None, "{mode}");
                assert_eq!(health.calls.instances_created, 1, "{mode}");
            }
            Some(fault) => assert!(
                health.last_fault.as_deref().unwrap_or("").contains(fault),
                "{mode}: {health:?}"
            ),
        }
    }
    // Breaking the rule that a message that changes something is answered by itself ends
    // batches for the version: the host could no longer tell what it may run again.
    deploy(
        &t.host,
        "careless",
        "batch",
        lenient().setting("mode", "careless"),
    );
    for _ in 0..2 {
        let out = t.host.invoke_batch("careless", &msgs);
        assert_eq!(kinds(&out), ["ok", "ok", "ok"], "{out:?}");
    }
    let health = t.host.health("careless").unwrap();
    assert_eq!((health.calls.batches, health.calls.invocations), (1, 6));
    assert!(
        health
            .last_fault
            .as_deref()
            .unwrap_or("")
            .contains("batch protocol"),
        "{health:?}"
    );
    deploy(&t.host, "outside", "batch", lenient().setting("mode", "outside"));
    let Outcome::Failed(PluginFault::Trap { message }) = t.host.invoke("outside", &msgs[0]) else {
        panic!("answering outside on-batch must trap")
    };
    assert!(message.contains("outside on-batch"), "{message}");
}

/// A batch never asks a plugin for more memory than its messages fit in comfortably: thirty
/// 200 KiB messages (6 MB) for a plugin limited to 4 MiB go over in calls of a bounded size,
/// and every one is answered. (A long deadline: with the default 10 ms, a machine busy with
/// the other tests once ran the first call past it, after which the host runs that slice's
/// messages one by one, and slow calls also make it size batches by time below three
/// messages: either way the byte bound is never reached.)
#[test]
fn big_messages_are_batched_within_the_plugins_memory() {
    let t = test_host();
    let config = PluginConfig {
        memory_limit_bytes: 4 << 20,
        deadline_ms: 10_000,
        ..PluginConfig::default()
    };
    deploy_dist(&t.host, "echo", "echo", config);
    let pad = "x".repeat(200 << 10);
    let msgs: Vec<_> = (0..30)
        .map(|i| msg("big", format!(r#"{{"seq":{i},"pad":"{pad}"}}"#)))
        .collect();
    let out = t.host.invoke_batch("echo", &msgs);
    assert_eq!(kinds(&out), vec!["ok"; 30], "{out:?}");
    let calls = t.host.health("echo").unwrap().calls;
    assert!(calls.batches >= 20, "{calls:?}");
    assert!(calls.memory_high_water_bytes <= 4 << 20, "{calls:?}");
}
