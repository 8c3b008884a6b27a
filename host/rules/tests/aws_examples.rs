//! The examples of AWS's IoT SQL reference, one row each, naming the page they mirror
//! (developerguide/<page>.html). Inputs and statements follow the documented semantics; where
//! the documentation's own example is inconsistent the comment says what we do instead.

mod common;

use common::{run, run_on};

struct Case {
    page: &'static str,
    sql: &'static str,
    topic: &'static str,
    payload: &'static str,
    want: &'static str,
}

const CASES: &[Case] = &[
    Case {
        page: "iot-sql-reference",
        sql: "SELECT color AS rgb FROM 'topic/subtopic' WHERE temperature > 50",
        topic: "topic/subtopic",
        payload: r#"{"color":"red","temperature":100}"#,
        want: r#"{"rgb":"red"}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT * FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#"{"color":"red","temperature":50}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT color FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#"{"color":"red"}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT color as my_color, temperature as fahrenheit FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#"{"my_color":"red","fahrenheit":50}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT *, 15 as speed FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#"{"color":"red","temperature":50,"speed":15}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT VALUE color FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#""red""#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT color.red as red_value FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":{"red":255,"green":0,"blue":0}, "temperature":50}"#,
        want: r#"{"red_value":255}"#,
    },
    Case {
        page: "iot-sql-select",
        sql: "SELECT (temperature - 32) * 5 / 9 AS celsius, upper(color) as my_color FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":50}"#,
        want: r#"{"celsius":10,"my_color":"RED"}"#,
    },
    Case {
        page: "iot-rule-sql-version (array as a top-level object)",
        sql: "SELECT VALUE arr FROM 'topic'",
        topic: "topic",
        payload: r#"{"a": {"b":"c"}, "arr":[1,2,3,4]}"#,
        want: "[1,2,3,4]",
    },
    Case {
        page: "iot-sql-where",
        sql: "SELECT color AS my_color FROM 'topic/subtopic' WHERE temperature > 50 AND color <> 'red'",
        topic: "topic/subtopic",
        payload: r#"{"color":"red", "temperature":40}"#,
        want: "<none>",
    },
    Case {
        page: "iot-sql-where (non-JSON payload)",
        sql: "SELECT decode(encode(*, 'base64'), 'base64') AS value FROM 'topic/subtopic' \
              WHERE decode(encode(*, 'base64'), 'base64') > 50",
        topic: "topic/subtopic",
        payload: "80",
        want: r#"{"value":80}"#,
    },
    Case {
        page: "iot-sql-from (# wildcard)",
        sql: "SELECT temperature AS t FROM 'topic/#'",
        topic: "topic/subtopic-3/details",
        payload: r#"{"temperature": 70}"#,
        want: r#"{"t":70}"#,
    },
    Case {
        page: "iot-sql-case",
        sql: "SELECT CASE color WHEN 'green' THEN 'go' WHEN 'yellow' THEN 'caution' WHEN 'red' THEN 'stop' \
              ELSE 'you are not at a stop light' END as instructions FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"color":"yellow"}"#,
        want: r#"{"instructions":"caution"}"#,
    },
    Case {
        page: "iot-sql-literals (object)",
        sql: "SELECT {'latitude': get(lat_long, 0),'longitude':get(lat_long, 1)} as lat_long FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"lat_long": [47.606,-122.332]}"#,
        want: r#"{"lat_long":{"latitude":47.606,"longitude":-122.332}}"#,
    },
    Case {
        page: "iot-sql-literals (array)",
        sql: "SELECT [lat,long] as lat_long FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"lat": 47.606, "long": -122.332}"#,
        want: r#"{"lat_long":[47.606,-122.332]}"#,
    },
    Case {
        page: "iot-sql-json (get for keys with hyphens and digits)",
        sql: r#"SELECT * from 'iot/rules' WHERE get(get(get(mydata,"item2"),"0"),"my-key") = "myValue""#,
        topic: "iot/rules",
        payload: r#"{"mydata":{"item2":{"0":{"my-key":"myValue"}}}}"#,
        want: r#"{"mydata":{"item2":{"0":{"my-key":"myValue"}}}}"#,
    },
    Case {
        page: "iot-sql-json (dotted alias)",
        sql: "SELECT foo.bar AS bar.baz FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"foo":{"bar":"RED","bar1":"GREEN","bar2":"BLUE"}}"#,
        want: r#"{"bar":{"baz":"RED"}}"#,
    },
    Case {
        page: "iot-sql-json (function on an attribute; sha256 as Shoal has no md5)",
        sql: "SELECT temp, sha256(deviceid) AS hashed_id FROM 'topic/#'",
        topic: "topic/a",
        payload: r#"{"deviceid":"iot123","temp":54.98,"humidity":32.43}"#,
        want: r#"{"temp":54.98,"hashed_id":"916ed1fe781dbb8c3e40c1935fc39154e9ccd0f70c727eb0e2993d61d399d336"}"#,
    },
    Case {
        page: "iot-sql-nested-queries (values to an array)",
        sql: "SELECT (SELECT VALUE n FROM e) as sensors FROM 'my/topic'",
        topic: "my/topic",
        payload: r#"{"e":[{"n":"temperature","u":"Cel","t":1234,"v":22.5},
                        {"n":"light","u":"lm","t":1235,"v":135},
                        {"n":"acidity","u":"pH","t":1235,"v":7}]}"#,
        want: r#"{"sensors":["temperature","light","acidity"]}"#,
    },
    Case {
        page: "iot-sql-nested-queries (filtered)",
        sql: "SELECT (SELECT v FROM e WHERE n = 'temperature') as temperature FROM 'my/topic'",
        topic: "my/topic",
        payload: r#"{"e":[{"n":"temperature","u":"Cel","t":1234,"v":22.5},
                        {"n":"light","u":"lm","t":1235,"v":135}]}"#,
        want: r#"{"temperature":[{"v":22.5}]}"#,
    },
    Case {
        page: "iot-sql-nested-queries (flattened)",
        sql: "SELECT get((SELECT v FROM e WHERE n = 'temperature'), 0).v as temperature FROM 'topic'",
        topic: "topic",
        payload: r#"{"e":[{"n":"temperature","u":"Cel","t":1234,"v":22.5},
                        {"n":"light","u":"lm","t":1235,"v":135}]}"#,
        want: r#"{"temperature":22.5}"#,
    },
    Case {
        page: "binary-payloads (SELECT * passes bytes)",
        sql: "SELECT * FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: "\u{1}raw\u{2}",
        want: "<bytes:\u{1}raw\u{2}>",
    },
    Case {
        page: "binary-payloads (WHERE on a function)",
        sql: "SELECT * FROM 'topic/subtopic' WHERE timestamp() % 12 = 3",
        topic: "topic/subtopic",
        payload: "not json",
        want: "<bytes:not json>",
    },
    Case {
        page: "binary-payloads (adding data)",
        sql: "SELECT encode(*, 'base64') AS data, timestamp() AS ts FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: "hello",
        want: r#"{"data":"aGVsbG8=","ts":1481825251155}"#,
    },
    Case {
        page: "binary-payloads (field of a binary payload)",
        sql: "SELECT * FROM 'topic/subtopic' WHERE device_type = 'thermostat'",
        topic: "topic/subtopic",
        payload: "\u{0}\u{1}",
        want: "<none>",
    },
    Case {
        page: "iot-sql-functions decode (JSON document inside base64)",
        sql: r#"SELECT decode(encoded_temp,"base64").temperature AS temp from 'topic/subtopic'"#,
        topic: "topic/subtopic",
        payload: r#"{"encoded_temp":"eyAidGVtcGVyYXR1cmUiOiAzMyB9Cg=="}"#,
        want: r#"{"temp":33}"#,
    },
    Case {
        page: "iot-sql-functions topic",
        sql: "SELECT topic() AS t, topic(1) AS first FROM 'things/+/thingOne'",
        topic: "things/myThings/thingOne",
        payload: "{}",
        want: r#"{"t":"things/myThings/thingOne","first":"things"}"#,
    },
    Case {
        page: "iot-sql-data-types (NULL keyword)",
        sql: "SELECT NULL AS n FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: "{}",
        want: r#"{"n":null}"#,
    },
    Case {
        page: "iot-sql-data-types (Undefined is omitted)",
        sql: "SELECT foo, bar FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"foo":null}"#,
        want: r#"{"foo":null}"#,
    },
    Case {
        page: "iot-sql-data-types (whole decimals are Int in 2016-03-23)",
        sql: "SELECT t, t / 4 AS quarter FROM 'topic/subtopic'",
        topic: "topic/subtopic",
        payload: r#"{"t":10.0}"#,
        want: r#"{"t":10,"quarter":2}"#,
    },
    Case {
        page: "iot-substitution-templates (the rule's SQL)",
        sql: "SELECT *, timestamp() AS timestamp FROM 'my/iot/topic'",
        topic: "my/iot/topic",
        payload: r#"{"deviceid":"iot123","temp":54.98,"coords":{"latitude":47.615694,"longitude":-122.3359976}}"#,
        want: r#"{"deviceid":"iot123","temp":54.98,"coords":{"latitude":47.615694,"longitude":-122.3359976},"timestamp":1481825251155}"#,
    },
];

#[test]
fn aws_documentation_examples() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|c| {
            let got = run_on(c.sql, c.topic, c.payload.as_bytes());
            (got != c.want).then(|| format!("[{}] {}\n    want {}\n    got  {got}", c.page, c.sql, c.want))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn from_filter_gates_rules() {
    // iot-sql-from: 'topic/+' matches one level only; 'topic/#' several; neither another root.
    let plus = shoal_rules::sql::Sql::parse("SELECT temperature AS t FROM 'topic/+'").unwrap();
    assert!(plus.matches_topic("topic/subtopic"));
    assert!(plus.matches_topic("topic/subtopic-2"));
    assert!(!plus.matches_topic("topic/subtopic-3/details"));
    assert!(!plus.matches_topic("topic-2/subtopic-x"));
    let hash = shoal_rules::sql::Sql::parse("SELECT temperature AS t FROM 'topic/#'").unwrap();
    assert!(hash.matches_topic("topic/subtopic-3/details"));
    assert!(!hash.matches_topic("topic-2/subtopic-x"));
    // Shoal follows MQTT (and its own broker) here: 'topic/#' also matches 'topic'.
    assert!(hash.matches_topic("topic"));
    let exact = shoal_rules::sql::Sql::parse("SELECT * FROM 'topic/subtopic'").unwrap();
    assert!(!exact.matches_topic("topic/subtopic-2"));
    // Leading wildcards never match $-topics.
    let all = shoal_rules::sql::Sql::parse("SELECT * FROM '#'").unwrap();
    assert!(!all.matches_topic("$aws/things/t/shadow/update"));
    let aws = shoal_rules::sql::Sql::parse("SELECT * FROM '$aws/things/+/shadow/update/accepted'").unwrap();
    assert!(aws.matches_topic("$aws/things/t1/shadow/update/accepted"));
}

#[test]
fn cast_examples() {
    // iot-sql-functions cast: cast(true as Int) = 1.
    assert_eq!(
        run("SELECT cast(true as Int) AS one FROM '#'", "{}"),
        r#"{"one":1}"#
    );
}
