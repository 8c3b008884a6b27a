//! Alerts when a truck's `temp` rises above the configured `max` (the plugin guide's quickstart).

use serde::Deserialize;
use shoal_sdk::prelude::*;

/// What the devices send on `fleet/{truck}/telemetry`.
#[derive(Deserialize)]
struct Reading {
    temp: f64,
}

/// The plugin, built from its configuration.
pub struct TempAlert {
    max: f64,
}

impl Plugin for TempAlert {
    fn init(config: Config) -> Result<Self, PluginError> {
        Ok(TempAlert { max: config.parse("max")? })
    }

    fn on_message(&mut self, msg: &Message) -> Result<Vec<Action>, PluginError> {
        let reading: Reading = msg.payload_json()?; // not JSON / no `temp`: rejected
        if reading.temp <= self.max {
            return Ok(vec![]);
        }
        let truck = msg.thing_or_level(1).unwrap_or("unknown");
        shoal_sdk::info!("{truck} at {} > {}", reading.temp, self.max);
        Ok(vec![
            Action::alert(Severity::Critical, format!("{truck} too warm"), format!("temp {}", reading.temp))
                .thing(truck)
                .into(),
            Action::publish_json(format!("fleet/{truck}/alerts"), &json!({"temp": reading.temp}))
                .qos(1)
                .into(),
        ])
    }
}

export_plugin!(TempAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sdk::testing::Harness;

    #[test]
    fn alerts_above_max() {
        let mut h = Harness::<TempAlert>::new(&[("max", "-15")]).unwrap();
        let ok = h.send(Message::json("fleet/t1/telemetry", json!({"temp": -18}))).unwrap();
        assert!(ok.is_empty());
        let actions = h.send(Message::json("fleet/t1/telemetry", json!({"temp": -10}))).unwrap();
        assert_eq!(actions[0].as_alert().unwrap().thing.as_deref(), Some("t1"));
        assert_eq!(actions[1].as_publish().unwrap().topic, "fleet/t1/alerts");
    }

    #[test]
    fn rejects_bad_input() {
        let mut h = Harness::<TempAlert>::new(&[("max", "-15")]).unwrap();
        let bad = h.send(Message::new("fleet/t1/telemetry", "warm"));
        assert!(matches!(bad, Err(PluginError::Rejected(_))));
        assert!(Harness::<TempAlert>::new(&[]).is_err(), "max is required");
    }
}
