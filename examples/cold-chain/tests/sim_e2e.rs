//! The simulator against a real `shoal serve` (child process, free ports, temporary data
//! directory): provisioning, telemetry from every truck, the shadow's reported state, desired
//! state obeyed, idempotent re-provisioning, and the policy keeping each truck to its own
//! topics.
//!
//! Needs the `shoal` binary: `$SHOAL_BIN`, else `shoal` in the target directory this test was
//! built into (`cargo build -p shoal-server` first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};
use shoal_coldchain::mqtt::{device_options, telemetry_topic, tls_config_from_files};
use shoal_coldchain::{Credentials, Fleet, FleetConfig, ShoalHttp};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// A running `shoal serve` (the workspace's end-to-end harness), killed on drop.
type Shoal = shoal_tests::TestHost;

/// The admin key shoal wrote to its data directory.
fn credentials(shoal: &Shoal) -> Credentials {
    Credentials::from_file(&shoal.data_dir.join("credentials")).expect("credentials")
}

/// An anonymous observer on the plain MQTT listener (allowed by default on loopback),
/// subscribed to `filter`; messages arrive on the returned channel as `(topic, payload)`.
async fn observer(
    addr: SocketAddr,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new("coldchain-observer", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // Wait for the SUBACK so nothing published afterwards is missed.
    timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("observer: {e}"),
            }
        }
    })
    .await
    .expect("observer SUBACK");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

/// Polls `GET /things/{thing}/shadow` until `pred` holds for the document; panics after
/// `within` with the last answer.
async fn shadow_until(
    api: &ShoalHttp,
    thing: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let a = api
            .get(&format!("/things/{thing}/shadow"))
            .await
            .expect("GET shadow");
        if a.status == 200 && pred(&a.body) {
            return a.body;
        }
        assert!(
            Instant::now() < deadline,
            "shadow of {thing} never matched: {} {}",
            a.status,
            a.body
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the event loop until `stop` says so, a connection error (returned), or `within`.
async fn poll_until(
    el: &mut EventLoop,
    within: Duration,
    mut stop: impl FnMut(&Event) -> bool,
) -> Result<Vec<Event>, (Vec<Event>, String)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, el.poll()).await {
            Err(_) => return Err((seen, "timed out".into())),
            Ok(Err(e)) => return Err((seen, e.to_string())),
            Ok(Ok(ev)) => {
                let done = stop(&ev);
                seen.push(ev);
                if done {
                    return Ok(seen);
                }
            }
        }
    }
}

fn check_telemetry(topic: &str, v: &Value) {
    let truck = topic
        .strip_prefix("fleet/")
        .and_then(|t| t.strip_suffix("/telemetry"))
        .unwrap_or_else(|| panic!("unexpected topic {topic}"));
    assert_eq!(v["truck"], truck, "{v}");
    let ts = v["ts"].as_i64().unwrap_or_else(|| panic!("ts: {v}"));
    let now = shoal_coldchain::fleet::now_ms();
    assert!(
        (now - 120_000..=now + 120_000).contains(&ts),
        "ts {ts} far from now {now}: {v}"
    );
    let lat = v["lat"].as_f64().unwrap_or_else(|| panic!("lat: {v}"));
    let lon = v["lon"].as_f64().unwrap_or_else(|| panic!("lon: {v}"));
    assert!(
        (40.0..65.0).contains(&lat) && (0.0..25.0).contains(&lon),
        "not in Europe: {v}"
    );
    let speed = v["speedKmh"].as_f64().unwrap_or_else(|| panic!("speedKmh: {v}"));
    assert!((0.0..=90.0).contains(&speed), "{v}");
    let temp = v["tempC"].as_f64().unwrap_or_else(|| panic!("tempC: {v}"));
    assert!((temp + 20.0).abs() <= 1.0, "{v}");
    let hum = v["humidity"].as_f64().unwrap_or_else(|| panic!("humidity: {v}"));
    assert!((55.0..=80.0).contains(&hum), "{v}");
    assert_eq!(v["door"], "closed", "{v}");
    assert_eq!(v["presence"], false, "{v}");
    assert_eq!(v["setpoint"], json!(-20), "{v}");
    let route = v["route"].as_str().unwrap_or_else(|| panic!("route: {v}"));
    assert!(shoal_coldchain::Route::by_name(route).is_some(), "{v}");
    assert!(v["seq"].is_u64(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_reports_obeys_its_shadow_and_stays_on_its_own_topics() {
    let shoal = Shoal::start(&[]);
    let creds = credentials(&shoal);
    let (_obs, mut telemetry) = observer(shoal.mqtt, "fleet/+/telemetry").await;

    let state = tempfile::tempdir().expect("state dir");
    let cfg = FleetConfig {
        state_dir: state.path().to_path_buf(),
        trucks: 3,
        interval_s: 0.5,
        time_scale: 1.0,
        incident_rate: 0.0,
        ..FleetConfig::new(
            format!("http://{}", shoal.http),
            shoal.mqtts.to_string(),
            shoal.ca_path(),
            creds.clone(),
        )
    };
    let fleet = Fleet::start(&cfg).await.expect("fleet starts");
    assert!(
        fleet.provisioned().iter().all(|p| !p.reused),
        "{:?}",
        fleet.provisioned()
    );
    assert!(
        fleet.wait_connected(Duration::from_secs(20)).await,
        "trucks did not connect: {}\n{}",
        fleet.snapshot(),
        shoal.log_tail()
    );

    // Telemetry from every truck, with the documented fields, in sequence.
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs.len() < 3 || seqs.values().any(|s| s.len() < 3) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((topic, payload))) = timeout(left, telemetry.recv()).await else {
            panic!(
                "telemetry missing: {seqs:?}\n{}\n{}",
                fleet.snapshot(),
                shoal.log_tail()
            );
        };
        let v: Value = serde_json::from_slice(&payload).expect("telemetry is JSON");
        check_telemetry(&topic, &v);
        seqs.entry(v["truck"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(v["seq"].as_u64().unwrap_or_default());
    }
    assert_eq!(
        seqs.keys().cloned().collect::<Vec<_>>(),
        ["truck-1", "truck-2", "truck-3"]
    );
    for (truck, s) in &seqs {
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{truck}: {s:?}");
    }

    // The registry knows the fleet.
    let api = ShoalHttp::new(&cfg.http, creds.clone(), None).expect("api");
    let d = api.get("/api/v1/things/truck-1").await.expect("describe");
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["thingTypeName"], "refrigerated-truck", "{}", d.body);
    assert_eq!(d.body["attributes"]["cargo"], "frozen-fish", "{}", d.body);
    assert_eq!(d.body["attributes"]["setpoint"], "-20", "{}", d.body);
    assert_eq!(d.body["attributes"]["route"], "hamburg-copenhagen", "{}", d.body);
    let g = api.get("/api/v1/thing-groups/fleet/things").await.expect("group");
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(g.body["things"].as_array().map(Vec::len), Some(3), "{}", g.body);

    // The shadow has the reported device state.
    let doc = shadow_until(&api, "truck-1", Duration::from_secs(10), |d| {
        d["state"]["reported"]["firmware"] == "1.4.2"
    })
    .await;
    let reported = &doc["state"]["reported"];
    assert_eq!(reported["door"], "closed", "{doc}");
    assert_eq!(reported["compressor"], "ok", "{doc}");
    assert_eq!(reported["setpoint"], json!(-20), "{doc}");
    assert_eq!(reported["interval"], json!(0.5), "{doc}");
    assert!(reported["lat"].is_f64() && reported["lon"].is_f64(), "{doc}");

    // Desired setpoint -25: truck-1 applies it, reports it back (the delta disappears) and its
    // telemetry carries it.
    let a = api
        .post(
            "/things/truck-1/shadow",
            &json!({"state": {"desired": {"setpoint": -25}}}),
        )
        .await
        .expect("update shadow");
    assert_eq!(a.status, 200, "{}", a.body);
    let doc = shadow_until(&api, "truck-1", Duration::from_secs(10), |d| {
        d["state"]["reported"]["setpoint"] == json!(-25)
    })
    .await;
    assert!(doc["state"].get("delta").is_none(), "delta left: {doc}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((topic, payload))) = timeout(left, telemetry.recv()).await else {
            panic!("no telemetry from truck-1 with setpoint -25");
        };
        let v: Value = serde_json::from_slice(&payload).expect("JSON");
        if topic == "fleet/truck-1/telemetry" && v["setpoint"] == json!(-25) {
            break;
        }
    }
    assert_eq!(
        fleet
            .truck_snapshots()
            .iter()
            .find(|t| t.name == "truck-1")
            .map(|t| t.setpoint_c),
        Some(-25.0)
    );
    let last = fleet.stop().await;
    assert_eq!(last.connected, 0);
    assert!(last.telemetry_sent >= 9 && last.acked > 0, "{last}");

    // Provisioning again reuses everything.
    let again = Fleet::start(&cfg).await.expect("second start");
    assert!(
        again.provisioned().iter().all(|p| p.reused),
        "{:?}",
        again.provisioned()
    );
    assert!(
        again.wait_connected(Duration::from_secs(20)).await,
        "{}",
        again.snapshot()
    );
    again.stop().await;

    // The policy: truck-1's certificate may publish its own telemetry, not truck-2's, and may
    // not connect as truck-2.
    let t1 = &cfg.state_dir.join("truck-1");
    let tls = tls_config_from_files(
        &shoal.ca_path(),
        &t1.join("certificate.pem"),
        &t1.join("private.key"),
    )
    .expect("tls");
    let mqtts = shoal.mqtts.to_string();

    let opts = device_options("truck-2", &mqtts, tls.clone()).expect("options");
    let (_c, mut el) = AsyncClient::new(opts, 10);
    match poll_until(&mut el, Duration::from_secs(10), |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await
    {
        Ok(events) => panic!("truck-1's certificate connected as truck-2: {events:?}"),
        Err((_, e)) => assert!(
            e.contains("refused") || e.contains("NotAuthorized") || e.contains("BadUserNamePassword"),
            "{e}"
        ),
    }

    while telemetry.try_recv().is_ok() {}
    let opts = device_options("truck-1", &mqtts, tls).expect("options");
    let (c, mut el) = AsyncClient::new(opts, 10);
    poll_until(&mut el, Duration::from_secs(10), |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await
    .unwrap_or_else(|(_, e)| panic!("truck-1 cannot connect: {e}\n{}", shoal.log_tail()));
    c.publish(
        telemetry_topic("truck-1"),
        QoS::AtLeastOnce,
        false,
        br#"{"probe":"own"}"#.to_vec(),
    )
    .await
    .expect("publish");
    poll_until(&mut el, Duration::from_secs(10), |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_)))
    })
    .await
    .unwrap_or_else(|(seen, e)| panic!("no PUBACK for its own topic ({e}): {seen:?}"));
    let (topic, payload) = timeout(Duration::from_secs(5), telemetry.recv())
        .await
        .expect("own publish delivered")
        .expect("observer alive");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("fleet/truck-1/telemetry", br#"{"probe":"own"}"#.as_slice())
    );

    c.publish(
        telemetry_topic("truck-2"),
        QoS::AtLeastOnce,
        false,
        br#"{"probe":"spoof"}"#.to_vec(),
    )
    .await
    .expect("publish");
    // MQTT 3.1.1 has no negative PUBACK: Shoal closes the connection. No PUBACK may come.
    match poll_until(&mut el, Duration::from_secs(10), |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_)))
    })
    .await
    {
        Ok(seen) => panic!("a publish to truck-2's topic was acknowledged: {seen:?}"),
        Err((seen, e)) => {
            assert!(
                seen.iter()
                    .any(|e| matches!(e, Event::Outgoing(Outgoing::Publish(_)))),
                "the spoofed publish was never sent ({e}): {seen:?}"
            );
            assert_ne!(e, "timed out", "the connection stayed up: {seen:?}");
        }
    }
    if let Ok(Some((topic, payload))) = timeout(Duration::from_secs(2), telemetry.recv()).await {
        panic!(
            "the spoofed message was delivered: {topic} {}",
            String::from_utf8_lossy(&payload)
        );
    }
    let denied: Vec<String> = shoal
        .log_text()
        .lines()
        .filter(|l| l.contains("fleet/truck-2/telemetry"))
        .map(str::to_owned)
        .collect();
    assert!(
        !denied.is_empty(),
        "no log line for the denied publish:\n{}",
        shoal.log_tail()
    );
}

#[tokio::test]
async fn unreachable_shoal_and_bad_credentials_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").expect("write");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let cfg = FleetConfig {
        state_dir: dir.path().join("state"),
        trucks: 1,
        ..FleetConfig::new(
            format!("http://127.0.0.1:{port}"),
            "127.0.0.1:1",
            &ca,
            Credentials {
                key_id: "AKIDNOPE".into(),
                secret: "nope".into(),
            },
        )
    };
    let e = Fleet::start(&cfg).await.expect_err("no shoal there");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("cannot connect") && msg.contains("is shoal running"),
        "{msg}"
    );

    let shoal = Shoal::start(&[]);
    let cfg = FleetConfig {
        http: format!("http://{}", shoal.http),
        mqtts: shoal.mqtts.to_string(),
        ca_file: shoal.ca_path(),
        ..cfg
    };
    let e = Fleet::start(&cfg).await.expect_err("bad key");
    let msg = format!("{e:#}");
    assert!(msg.contains("HTTP 403") || msg.contains("HTTP 401"), "{msg}");
    assert!(msg.contains("--credentials-file"), "{msg}");
}
