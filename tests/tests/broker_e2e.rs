//! End-to-end tests of the broker core against a real `shoal serve`, with clients nobody here
//! wrote: `mosquitto_pub`/`mosquitto_sub` and the `rumqttc` crate. Python paho tests for the
//! finer MQTT 5 behaviour live in `tests/python`.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // test code: blocking waits and unwraps are fine

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use shoal_tests::{RedisServer, TestHost, run_tool};
use tokio::sync::mpsc;

/// A rumqttc v3.1.1 client whose event loop runs in a task; incoming PUBLISH payloads and the
/// CONNACK's session-present flag come out of channels.
struct Client {
    client: AsyncClient,
    msgs: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    connacks: mpsc::UnboundedReceiver<bool>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(host: &TestHost, id: &str, clean: bool) -> Client {
        let mut opts = MqttOptions::new(id, "127.0.0.1", host.mqtt_port());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, eventloop) = AsyncClient::new(opts, 1000);
        let (tx, msgs) = mpsc::unbounded_channel();
        let (ctx, mut connacks) = mpsc::unbounded_channel();
        let acked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(drive(eventloop, tx, ctx, acked.clone()));
        let present = tokio::time::timeout(Duration::from_secs(10), connacks.recv())
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        let (ctx2, connacks2) = mpsc::unbounded_channel();
        let _ = ctx2.send(present);
        // Keep later CONNACKs flowing into the second channel.
        tokio::spawn(async move {
            while let Some(p) = connacks.recv().await {
                let _ = ctx2.send(p);
            }
        });
        Client {
            client,
            msgs,
            connacks: connacks2,
            acked,
            task,
        }
    }

    /// Waits until `n` PUBACKs arrived (the broker took responsibility for `n` messages).
    async fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} PUBACKs",
                self.acked.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn session_present(&mut self) -> bool {
        self.connacks.recv().await.expect("connack")
    }

    async fn recv(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(10), self.msgs.recv())
            .await
            .expect("a message in time")
            .expect("channel open")
    }

    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn drive(
    mut ev: EventLoop,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    connacks: mpsc::UnboundedSender<bool>,
    acked: Arc<AtomicUsize>,
) {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
            }
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                let _ = connacks.send(c.session_present);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn subscribe(c: &Client, filter: &str, qos: QoS) {
    c.client.subscribe(filter, qos).await.expect("subscribe");
    // SUBACK is handled by the event loop; give it a moment to be processed by the broker.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[test]
fn mosquitto_clients_v311_v5_and_tls() {
    let host = TestHost::start(&[]);
    let port = host.mqtt_port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args([
                "-p", &port, "-V", version, "-t", "cli/#", "-q", "2", "-v", "-C", "3", "-W", "10",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        std::thread::sleep(Duration::from_millis(400));
        for (qos, topic) in [("0", "cli/a"), ("1", "cli/b"), ("2", "cli/c")] {
            run_tool(
                Command::new("mosquitto_pub")
                    .args(["-p", &port, "-V", version, "-q", qos, "-t", topic, "-m", topic]),
            );
        }
        let out = sub.wait_with_output().expect("sub output");
        assert!(out.status.success(), "mosquitto_sub {version} failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec!["cli/a cli/a", "cli/b cli/b", "cli/c cli/c"]
        );
    }
    // Mutual TLS with the generated CA and a device certificate, both protocol versions.
    let tls_port = host.mqtts.port().to_string();
    let ca = host.ca_path();
    let (cert, key) = host.device_cert("tls-dev");
    let tls = |cmd: &mut Command| {
        cmd.args(["-p", &tls_port, "-i", "tls-dev", "--cafile"])
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key);
    };
    let mut publish = Command::new("mosquitto_pub");
    tls(&mut publish);
    run_tool(publish.args(["-q", "1", "-r", "-t", "tls/r", "-m", "over-tls"]));
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = Command::new("mosquitto_sub");
        tls(&mut sub);
        let out = run_tool(sub.args(["-V", version, "-t", "tls/#", "-C", "1", "-W", "10", "-v"]));
        assert_eq!(out.trim(), "tls/r over-tls");
    }
    // Without a client certificate the TLS listener refuses the handshake.
    let out = Command::new("mosquitto_sub")
        .args(["-p", &tls_port, "--cafile"])
        .arg(&ca)
        .args(["-t", "x", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub");
    assert!(
        !out.status.success(),
        "a client without a certificate got in over mTLS"
    );
    let (code, body) = host.http_get("/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(host.metric("shoal_messages_in_total") >= 7.0);
    assert_eq!(host.metric("shoal_retained_messages"), 1.0);
}

async fn offline_queue_survives_restart(extra: &[&str]) {
    let mut host = TestHost::start(extra);
    let sub = Client::connect(&host, "durable-sub", false).await;
    subscribe(&sub, "fleet/+/telemetry", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Publish 200 QoS 1 messages while the subscriber is away; each PUBACK means "stored".
    let publisher = Client::connect(&host, "pub", true).await;
    for i in 0..200 {
        publisher
            .client
            .publish(
                format!("fleet/t{}/telemetry", i % 7),
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .expect("publish");
    }
    publisher.wait_acked(200).await;
    publisher.disconnect().await;

    host.restart();

    let mut sub = Client::connect(&host, "durable-sub", false).await;
    assert!(
        sub.session_present().await,
        "session must be present after a restart"
    );
    for i in 0..200 {
        let (topic, payload) = sub.recv().await;
        assert_eq!(
            String::from_utf8_lossy(&payload),
            format!("m{i}"),
            "message {i} out of order or lost"
        );
        assert_eq!(topic, format!("fleet/t{}/telemetry", i % 7));
    }
    // And the subscription itself survived: new messages flow without re-subscribing.
    let p2 = Client::connect(&host, "pub2", true).await;
    p2.client
        .publish("fleet/x/telemetry", QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    let (_, payload) = sub.recv().await;
    assert_eq!(payload, b"after");
    sub.disconnect().await;
    p2.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_qos1_queue_survives_restart_embedded() {
    offline_queue_survives_restart(&["--store", "embedded"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_qos1_queue_survives_restart_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    offline_queue_survives_restart(&["--store", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_restart() {
    let mut host = TestHost::start(&[]);
    let p = Client::connect(&host, "retainer", true).await;
    p.client
        .publish("r/a", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    p.client
        .publish("r/b", QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    p.client
        .publish("r/b", QoS::AtLeastOnce, true, "two-b")
        .await
        .unwrap();
    p.client
        .publish("r/c", QoS::AtLeastOnce, true, "three")
        .await
        .unwrap();
    p.client.publish("r/c", QoS::AtLeastOnce, true, "").await.unwrap();
    p.wait_acked(5).await;
    p.disconnect().await;
    host.restart();
    let mut s = Client::connect(&host, "reader", true).await;
    subscribe(&s, "r/#", QoS::AtLeastOnce).await;
    let mut got = vec![s.recv().await, s.recv().await];
    got.sort();
    assert_eq!(
        got,
        vec![("r/a".into(), b"one".to_vec()), ("r/b".into(), b"two-b".to_vec())]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.msgs.recv())
            .await
            .is_err(),
        "deleted retained message came back"
    );
    s.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_live_traffic_and_reports_unhealthy() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let host = TestHost::start(&["--store", &url]);
    let mut sub = Client::connect(&host, "live-sub", true).await;
    subscribe(&sub, "live/#", QoS::AtLeastOnce).await;
    let p = Client::connect(&host, "live-pub", true).await;

    redis.kill();
    // Health notices within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = host.http_get("/health");
        if code == 503 {
            assert!(body.contains("\"up\":false"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never reported the store down: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(host.metric("shoal_store_up"), 0.0);
    // Live routing goes on.
    for i in 0..20 {
        p.client
            .publish("live/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..20 {
        let (_, payload) = sub.recv().await;
        assert_eq!(payload, format!("{i}").into_bytes());
    }
    // A retained publish while Redis is down is still acknowledged and served from memory.
    p.client
        .publish("live/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = host.http_get("/health");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never recovered: {code} {body}\n{}",
            host.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(host.metric("shoal_store_up"), 1.0);
    assert!(host.metric("shoal_store_errors_total") >= 1.0);
    assert!(host.log_text().contains("store"), "the outage was not logged");
    sub.disconnect().await;
    p.disconnect().await;
}

#[test]
fn sigterm_exits_cleanly_within_five_seconds_with_clients_connected() {
    let mut host = TestHost::start(&[]);
    let port = host.mqtt_port().to_string();
    let mut subs: Vec<_> = (0..5)
        .map(|i| {
            Command::new("mosquitto_sub")
                .args(["-p", &port, "-t", "x", "-i", &format!("idle{i}"), "-c", "-q", "1"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("mosquitto_sub")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let status = host.stop_within(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < Duration::from_secs(5));
    for s in &mut subs {
        let _ = s.kill();
        let _ = s.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishers_qos1_fan_in_loses_nothing() {
    let host = TestHost::start(&["--max-queued-messages", "100000"]);
    let mut sub = Client::connect(&host, "fanin-sub", true).await;
    subscribe(&sub, "in/+", QoS::AtLeastOnce).await;
    let publishers = 20;
    let per = 250;
    let mut pubs = Vec::new();
    for p in 0..publishers {
        pubs.push(Client::connect(&host, &format!("fanin-{p}"), true).await);
    }
    let mut tasks = Vec::new();
    for (p, c) in pubs.iter().enumerate() {
        let client = c.client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                client
                    .publish(format!("in/{p}"), QoS::AtLeastOnce, false, format!("{p}:{i}"))
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut next = vec![0usize; publishers];
    for _ in 0..publishers * per {
        let (_, payload) = sub.recv().await;
        let text = String::from_utf8(payload).unwrap();
        let (p, i) = text.split_once(':').unwrap();
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        // Per-publisher order is kept [MQTT-4.6.0-6].
        assert_eq!(i, next[p], "publisher {p} out of order");
        next[p] += 1;
    }
    assert_eq!(
        host.metric("shoal_messages_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    for c in pubs {
        c.disconnect().await;
    }
    sub.disconnect().await;
}
