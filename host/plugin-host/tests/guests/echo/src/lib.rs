//! A well-behaved plugin that echoes messages and exercises every host call, chosen by topic.
//! Config: `tag` prefixes echoed topics (the hot-swap test tells versions apart by it);
//! `fail-init` makes `init` refuse its configuration.

wit_bindgen::generate!({ world: "rule-plugin", path: "../../../../../wit/deps/shoal-plugin-0.1.0" });

use shoal::plugin::host;
use shoal::plugin::types::{KvError, KvScope, LogLevel, Publish};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

struct Echo;

static TAG: Mutex<String> = Mutex::new(String::new());
static CALLS: AtomicU64 = AtomicU64::new(0);

fn publish(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Action {
    Action::Publish(Publish {
        topic: topic.into(),
        payload: payload.into(),
        qos: 0,
        retain: false,
    })
}

fn scope(msg: &Message) -> KvScope {
    match &msg.thing_name {
        Some(thing) => KvScope::Thing(thing.clone()),
        None => KvScope::Global,
    }
}

impl Guest for Echo {
    fn init(config: Vec<(String, String)>) -> Result<(), PluginError> {
        let mut tag = "echo".to_string();
        for (key, value) in config {
            match key.as_str() {
                "tag" => tag = value,
                "fail-init" => return Err(PluginError::Config(format!("refusing config: {value}"))),
                _ => {}
            }
        }
        *TAG.lock().unwrap() = tag;
        Ok(())
    }

    fn on_message(msg: Message) -> Result<Vec<Action>, PluginError> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let topic = msg.topic.as_str();
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let kv_err = |e: KvError| PluginError::Rejected(format!("{e:?}"));
        if topic == "fail" {
            return Err(PluginError::Failed("asked to fail".into()));
        }
        if topic == "reject" {
            return Err(PluginError::Rejected("asked to reject".into()));
        }
        if topic == "calls" {
            return Ok(vec![publish("calls", calls.to_string())]);
        }
        if topic == "now" {
            return Ok(vec![publish("now", host::now_ms().to_string())]);
        }
        if topic == "print" {
            println!("{text}");
            eprintln!("to stderr: {text}");
            return Ok(Vec::new());
        }
        if let Some(n) = topic.strip_prefix("log/") {
            let n: u32 = n.parse().unwrap_or(1);
            for i in 0..n {
                host::log(LogLevel::Info, &format!("line {i}: {text}"));
            }
            return Ok(Vec::new());
        }
        if topic == "metric" {
            host::counter_add("seen", 1);
            host::gauge_set("last", text.parse().unwrap_or(0.0));
            host::counter_add("bad name!", 1);
            return Ok(Vec::new());
        }
        if let Some(thing) = topic.strip_prefix("shadow/") {
            let doc = host::get_shadow(thing, None).map_err(PluginError::Failed)?;
            return Ok(vec![publish("shadow", doc.unwrap_or_else(|| "none".into()))]);
        }
        if let Some(key) = topic.strip_prefix("kv/set/") {
            host::kv_set(&scope(&msg), key, &msg.payload, None).map_err(kv_err)?;
            return Ok(vec![publish("kv/ok", "")]);
        }
        if let Some(key) = topic.strip_prefix("kv/ttl/") {
            host::kv_set(&scope(&msg), key, &msg.payload, Some(1)).map_err(kv_err)?;
            return Ok(vec![publish("kv/ok", "")]);
        }
        if let Some(key) = topic.strip_prefix("kv/get/") {
            let value = host::kv_get(&scope(&msg), key).map_err(kv_err)?;
            return Ok(vec![publish(
                "kv/value",
                value.unwrap_or_else(|| b"none".to_vec()),
            )]);
        }
        if let Some(key) = topic.strip_prefix("kv/del/") {
            let existed = host::kv_delete(&scope(&msg), key).map_err(kv_err)?;
            return Ok(vec![publish("kv/deleted", existed.to_string())]);
        }
        let tag = TAG.lock().unwrap().clone();
        Ok(vec![publish(format!("{tag}/{topic}"), msg.payload)])
    }
}

export!(Echo);
