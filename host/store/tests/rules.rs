//! Rule definitions in Redis: saved, read back by another store on the same Redis (another
//! node, or the same one after a restart), replaced whole, refused when damaged, and an error
//! (not a hang) when Redis is gone.
#![allow(clippy::unwrap_used)]

mod common;

use common::RedisServer;
use shoal_rules::store::{RuleStore, StoredRule};
use shoal_store::RedisStore;

fn rule(name: &str, sql: &str) -> StoredRule {
    StoredRule {
        name: name.into(),
        created_ms: 42,
        payload: serde_json::from_str(&format!(
            r#"{{"sql":"{sql}","actions":[{{"stream":{{"streamName":"s"}}}}]}}"#
        ))
        .unwrap(),
    }
}

#[test]
fn rules_round_trip_through_redis() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt.block_on(RedisServer::start());
    let open = |prefix: &str| {
        let store = rt.block_on(RedisStore::connect(&redis.url(), prefix)).unwrap();
        store.rule_store(rt.handle().clone())
    };
    let a = open("node");
    assert!(a.load().unwrap().is_empty());
    assert_eq!(a.revision().unwrap(), Some(0));
    let rules = vec![rule("r1", "SELECT * FROM 'a/#'"), rule("r2", "SELECT x FROM 'b'")];
    assert_eq!(a.save(&rules).unwrap(), Some(1));
    assert_eq!(open("node").revision().unwrap(), Some(1));
    // Another store on the same Redis and prefix sees them; another prefix does not.
    assert_eq!(open("node").load().unwrap(), rules);
    assert!(open("other").load().unwrap().is_empty());
    assert_eq!(a.save(&rules[1..]).unwrap(), Some(2));
    assert_eq!(open("node").load().unwrap(), rules[1..].to_vec());
    // A damaged document is an error naming the key, not an empty rule set.
    rt.block_on(async {
        let mut raw = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("SET")
            .arg("node:rules")
            .arg("{oops")
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
    });
    let e = a.load().unwrap_err().to_string();
    assert!(e.contains("node:rules"), "{e}");
    // Redis gone: an error within the call timeout.
    drop(redis);
    let started = std::time::Instant::now();
    assert!(a.save(&rules).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
