//! Micro-benchmark of what the rules engine adds to a client's publish on the I/O thread (no
//! sockets, no Criterion): one `Broker::publish` of the load generator's 200-byte JSON
//! reading, through the real broker, shadow service and rules engine on memory stores, first
//! with no rules, then with the ten rules of `tests/bench/plugin.sh --with rules10` running
//! inline (the default of `shoal serve`). Run with
//! `cargo +1.97.0 test -p shoal-server --release --test inline_rules_bench -- --ignored --nocapture`.
//!
//! `INLINE_BENCH_ONLY=N` times only N publishes with the ten rules (plus a tenth as warm-up;
//! with `INLINE_BENCH_RULES=0` without rules), for an instruction count, which unlike time
//! does not move with this VM's other tenants: `valgrind --tool=cachegrind --cache-sim=no` of
//! N = 110,000 minus N = 10,000, divided by 110,000 (the difference with the warm-ups), is the
//! instructions per publish (tests/bench/inline-rules-instructions.sh).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use shoal_auth::pki::CertificateAuthority;
use shoal_auth::policy::ArnConfig;
use shoal_auth::service::{AnonymousAccess, IdentityConfig, IdentityService, KeyCipher, NoThings};
use shoal_auth::tls::ClientAuth;
use shoal_broker::auth::Principal;
use shoal_broker::hook::Origin;
use shoal_broker::message::{ClientId, Message};
use shoal_broker::{Broker, BrokerConfig, QoS, Topic};
use shoal_rules::{EngineConfig, EngineDeps, FileRuleStore, RulesEngine, TopicRulePayload};
use shoal_things::shadow::{ShadowConfig, ShadowService};

#[path = "../../rules/tests/timing/mod.rs"]
mod timing;
use timing::ns_per_iter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The load generator's JSON reading (`shoal-loadgen --json --payload 200`): a hex header,
/// `temp` -20.5, `humidity` 80, padding to 200 bytes.
fn payload() -> Vec<u8> {
    let mut p = String::from("{\"shlg\":\"");
    p.push_str(&"0123456789abcdef".repeat(3));
    p.push_str("\",\"temp\":-20.5,\"humidity\":80,\"pad\":\"");
    while p.len() + 2 < 200 {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

/// The ten rules of `bench_rules rules10` (tests/bench/lib.sh): nine that never fire on
/// -20.5 and one that republishes every message to `rollup/${topic(2)}`.
fn rules10() -> Vec<(String, TopicRulePayload)> {
    let mut rules = Vec::new();
    for i in 0..9 {
        let filter = if i == 8 {
            "temp < -100".to_owned()
        } else {
            format!("temp > {}", i * 10)
        };
        let json = format!(
            r#"{{"sql":"SELECT temp, topic(2) AS dev FROM 'bench/#' WHERE {filter}","actions":[{{"republish":{{"topic":"alerts/${{topic(2)}}"}}}}]}}"#
        );
        rules.push((format!("bench{i}"), serde_json::from_str(&json).unwrap()));
    }
    let json = r#"{"sql":"SELECT temp, clientid() AS c FROM 'bench/#' WHERE temp < 0","actions":[{"republish":{"topic":"rollup/${topic(2)}"}}]}"#;
    rules.push(("bench9".to_owned(), serde_json::from_str(json).unwrap()));
    rules
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn inline_rules_cost_per_publish() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, rules) = rt.block_on(async {
        let handle = tokio::runtime::Handle::current();
        let stores = shoal_store::open("memory", dir.path()).await.unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir.path().join("tls")).unwrap());
        let cfg = IdentityConfig {
            arn: ArnConfig::new("us-east-1", "000000000000").unwrap(),
            anonymous: AnonymousAccess::AllowAll,
            client_auth: ClientAuth::Optional,
            cert_validity_days: 1,
            keys: Arc::new(KeyCipher::new(&[0; 32])),
        };
        let identity = IdentityService::start(stores.auth, ca, cfg, Arc::new(NoThings))
            .await
            .unwrap();
        let broker = Broker::start(BrokerConfig::default(), stores.broker, identity, &handle)
            .await
            .unwrap();
        let shadows = ShadowService::start(stores.shadows, broker.clone(), ShadowConfig::default(), &handle);
        // No plugin runs here: a small instance pool, so the bench also runs under valgrind
        // (which cannot reserve the default pool's terabytes of address space).
        let mut host = shoal_plugin_host::HostConfig::new(dir.path());
        host.max_instances = 1;
        host.max_memory_bytes = 1 << 20;
        let plugins =
            shoal_plugin_host::PluginHost::new(host, shoal_plugin_host::HostServices::default()).unwrap();
        let rules = RulesEngine::start(
            EngineConfig {
                inline: true,
                ..EngineConfig::default()
            },
            Arc::new(FileRuleStore::new(dir.path().join("rules.json"))),
            EngineDeps {
                broker: broker.clone(),
                shadows,
                plugins,
                streams: stores.streams,
                rt: handle,
            },
        )
        .unwrap();
        (broker, rules)
    });

    let body = Message::new(
        Topic::parse("bench".to_owned(), broker.topic_limits()).unwrap(),
        payload().into(),
        QoS::AtMostOnce,
        false,
    )
    .payload;
    assert_eq!(body.len(), 200);
    // Eight publishers, as in the fan-in scenario.
    let topics: Vec<Topic> = (0..8)
        .map(|i| Topic::parse(format!("bench/in/{i}"), broker.topic_limits()).unwrap())
        .collect();
    let ids: Vec<ClientId> = (0..8)
        .map(|i| ClientId::parse(format!("loadgen-pub-{i}"), 64).unwrap())
        .collect();
    let principal = Principal {
        id: Arc::from("anonymous"),
        attributes: Default::default(),
        grants: None,
    };
    let mut i = 0usize;
    let mut publish = || {
        i = i.wrapping_add(1);
        let k = i % 8;
        let msg = Message::new(topics[k].clone(), body.clone(), QoS::AtMostOnce, false);
        black_box(broker.publish(
            msg,
            Some(Origin {
                client_id: &ids[k],
                principal: &principal,
            }),
        ));
    };
    let only = std::env::var("INLINE_BENCH_ONLY")
        .ok()
        .and_then(|c| c.parse::<u32>().ok());
    let none = if only.is_none() {
        Some(ns_per_iter(1_000_000, &mut publish))
    } else {
        None
    };
    // INLINE_BENCH_RULES=0 with INLINE_BENCH_ONLY: the publishes without rules, for the
    // instruction count's baseline.
    let with_rules = std::env::var("INLINE_BENCH_RULES").map_or(true, |r| r != "0");
    if !with_rules {
        let n = only.unwrap_or(1_000_000);
        let ns = ns_per_iter(n, &mut publish);
        println!("no rules, {n} publishes: {ns:.0} ns per publish");
        rt.shutdown_background();
        return;
    }
    for (name, rule) in rules10() {
        rules.create(&name, rule).unwrap();
    }
    let n = only.unwrap_or(1_000_000);
    let ten = ns_per_iter(n, &mut publish);
    // Every message reached the ten rules (nine filtered out, one republished).
    let stats = rules.get("bench9").unwrap().stats;
    let timed = u64::from(n + n / 10);
    assert_eq!((stats.matched, stats.selected), (timed, timed), "{stats:?}");
    assert_eq!(rules.get("bench0").unwrap().stats.selected, 0);
    match none {
        None => println!("ten inline rules, {n} publishes: {ten:.0} ns per publish"),
        Some(none) => {
            println!("Broker::publish of a 200-byte JSON reading, no subscribers (thread CPU time):");
            println!("  no rules:          {none:>7.0} ns");
            println!("  ten inline rules:  {ten:>7.0} ns");
            println!("  the rules add:     {:>7.0} ns per message", ten - none);
        }
    }
    drop(rules);
    rt.shutdown_background();
}
