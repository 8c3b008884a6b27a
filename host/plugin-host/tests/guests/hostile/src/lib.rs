//! A plugin that misbehaves on request, by topic: `spin` (infinite loop), `memhog` (allocates
//! until the memory limit), `grow/<MiB>` (allocates that much, then answers), `panic`, `stack`
//! (unbounded recursion), `huge/<count>/<bytes>` (that many publish actions of that size),
//! `fs/read` and `fs/write` (the payload is the path). Anything else is echoed back.

wit_bindgen::generate!({ world: "rule-plugin", path: "../../../../../wit/deps/shoal-plugin-0.1.0" });

use shoal::plugin::types::Publish;
use std::hint::black_box;

struct Hostile;

fn publish(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Action {
    Action::Publish(Publish {
        topic: topic.into(),
        payload: payload.into(),
        qos: 0,
        retain: false,
    })
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: [u64; 16]) -> u64 {
    let pad = black_box(pad);
    recurse(depth + 1, pad) + pad[(depth % 16) as usize]
}

impl Guest for Hostile {
    fn init(_config: Vec<(String, String)>) -> Result<(), PluginError> {
        Ok(())
    }

    fn on_message(msg: Message) -> Result<Vec<Action>, PluginError> {
        let topic = msg.topic.as_str();
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        match topic {
            "spin" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "memhog" => {
                let mut chunks = Vec::new();
                loop {
                    chunks.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "panic" => panic!("plugin panicked on purpose"),
            "stack" => Ok(vec![publish("stack", recurse(0, [1; 16]).to_string())]),
            "fs/read" => match std::fs::read_to_string(&text) {
                Ok(content) => Ok(vec![publish("fs/content", content)]),
                Err(e) => Err(PluginError::Rejected(format!("cannot read {text}: {e}"))),
            },
            "fs/write" => match std::fs::write(&text, b"written by a plugin") {
                Ok(()) => Ok(vec![publish("fs/written", text)]),
                Err(e) => Err(PluginError::Rejected(format!("cannot write {text}: {e}"))),
            },
            _ => {
                if let Some(mib) = topic.strip_prefix("grow/") {
                    let mib: usize = mib.parse().unwrap_or(1);
                    let block = black_box(vec![7u8; mib << 20]);
                    return Ok(vec![publish("grown", block.len().to_string())]);
                }
                if let Some(spec) = topic.strip_prefix("huge/") {
                    let mut parts = spec.split('/');
                    let count: usize = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    let size: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
                    return Ok((0..count)
                        .map(|i| publish(format!("huge/{i}"), vec![b'x'; size]))
                        .collect());
                }
                Ok(vec![publish(format!("hostile/{topic}"), msg.payload)])
            }
        }
    }
}

export!(Hostile);
