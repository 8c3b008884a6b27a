//! A plugin of interface 0.3.0 written without the SDK, so it can misuse `on-batch`. Each
//! message's answer is a publish of its payload to its topic. Config `mode`: `extra` returns
//! one answer more than the batch has messages, `over` hands `batch.answer` one more, `short`
//! returns without the last message's answer, `outside` calls `batch.answer` from
//! `on-message`, `halves` answers the first half through `batch.answer` and returns the rest,
//! `careless` logs for every message yet returns every answer (breaking the rule that a
//! message that changes something is answered by itself); anything else (or none) returns
//! every answer.

wit_bindgen::generate!({
    world: "shoal:plugin/rule-plugin@0.3.0",
    path: "../../../../../wit",
    generate_all,
});

use shoal::plugin0_1_0::types::Publish;
use shoal::plugin0_3_0::batch as host_batch;
use std::sync::Mutex;

struct Batch;

static MODE: Mutex<String> = Mutex::new(String::new());

fn mode() -> String {
    MODE.lock().map(|m| m.clone()).unwrap_or_default()
}

fn publish(topic: &[u8], payload: &[u8]) -> Action {
    Action::Publish(Publish {
        topic: String::from_utf8_lossy(topic).into_owned(),
        payload: payload.to_vec(),
        qos: 0,
        retain: false,
    })
}

impl Guest for Batch {
    fn init(config: Vec<(String, String)>) -> Result<(), PluginError> {
        for (key, value) in config {
            if key == "mode"
                && let Ok(mut mode) = MODE.lock()
            {
                *mode = value;
            }
        }
        Ok(())
    }

    fn on_message(msg: Message) -> Result<Vec<Action>, PluginError> {
        let (topic, rest) = msg.data.split_at(msg.topic_len as usize);
        let actions = vec![publish(topic, &rest[..msg.payload_len as usize])];
        if mode() == "outside" {
            host_batch::answer(&[Ok(actions.clone())]);
        }
        Ok(actions)
    }

    fn on_batch(data: Vec<u8>, messages: Vec<Header>) -> Vec<Result<Vec<Action>, PluginError>> {
        let mode = mode();
        let mut at = 0usize;
        let mut answers = Vec::new();
        for h in &messages {
            let len = h.topic_len as usize
                + h.payload_len as usize
                + h.client_id_len.unwrap_or(0) as usize
                + h.thing_name_len.unwrap_or(0) as usize
                + h.user_properties_len as usize;
            let bytes = &data[at..at + len];
            at += len;
            let (topic, rest) = bytes.split_at(h.topic_len as usize);
            if mode == "careless" {
                shoal::plugin0_1_0::host::log(shoal::plugin0_1_0::types::LogLevel::Info, "handled one");
            }
            answers.push(Ok(vec![publish(topic, &rest[..h.payload_len as usize])]));
        }
        match mode.as_str() {
            "extra" => answers.push(Ok(Vec::new())),
            "short" => {
                answers.pop();
            }
            "over" => {
                answers.push(Ok(Vec::new()));
                host_batch::answer(&answers);
                return Vec::new();
            }
            "halves" => {
                let second = answers.split_off(answers.len() / 2);
                host_batch::answer(&answers);
                return second;
            }
            _ => {}
        }
        answers
    }
}

export!(Batch);
