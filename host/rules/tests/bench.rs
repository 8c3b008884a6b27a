//! Micro-benchmark of SQL evaluation (no Criterion): run with
//! `cargo +1.97.0 test -p shoal-rules --release --test bench -- --ignored --nocapture`.
//!
//! `SQL_BENCH_FRESH_ONLY=N` times only N fresh-context evaluations (plus a tenth as warm-up),
//! for a profiler or an instruction count, which unlike time does not vary with the machine's
//! other tenants: `valgrind --tool=cachegrind --cache-sim=no` of N = 110,000 minus N = 10,000,
//! divided by 110,000, is the instructions per evaluation.
#![allow(clippy::print_stdout)]

use std::hint::black_box;

use shoal_rules::sql::{Ctx, Output, Sql, Template};

mod timing;
use timing::{ns_per_iter, thread_cpu_ns};

const SQL: &str = "SELECT temp, topic(2) AS truck FROM 'fleet/+/telemetry' WHERE temp > -15";
const TOPIC: &str = "fleet/truck-0042/telemetry";

/// A 200-byte telemetry reading, the shape the cold-chain demo sends.
fn payload(temp: &str) -> Vec<u8> {
    let mut p = format!(
        r#"{{"deviceId":"truck-0042","ts":1718000000123,"temp":{temp},"humidity":61.5,"door":"closed","lat":59.3293,"lon":18.0686,"speed":72.4,"battery":3.97,"firmware":"2.4.1","seq":123456,"pad":""}}"#
    );
    let pad = 200 - p.len();
    p.insert_str(p.len() - 2, &"x".repeat(pad));
    p.into_bytes()
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn sql_evaluation_rate() {
    let sql = Sql::parse(SQL).unwrap();
    let warm = payload("-9.5");
    let cold = payload("-19.5");
    assert_eq!(warm.len(), 200);
    let expect = Some(Output::Json(r#"{"temp":-9.5,"truck":"truck-0042"}"#.to_owned()));
    assert_eq!(
        sql.evaluate(&Ctx::new(TOPIC, &warm).with_timestamp(0)),
        Ok(expect)
    );
    assert_eq!(sql.evaluate(&Ctx::new(TOPIC, &cold).with_timestamp(0)), Ok(None));
    let n = 1_000_000;
    if let Some(count) = std::env::var("SQL_BENCH_FRESH_ONLY")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        let full = ns_per_iter(count, || {
            let ctx = Ctx::new(TOPIC, black_box(&warm)).with_timestamp(0);
            black_box(sql.evaluate(&ctx).ok());
        });
        println!("evaluate, fresh context, {count} times: {full:.0} ns");
        return;
    }

    // Per message: a fresh context, so the payload is parsed, WHERE passes, SELECT builds and
    // serializes the output.
    let full = ns_per_iter(n, || {
        let ctx = Ctx::new(TOPIC, black_box(&warm)).with_timestamp(0);
        black_box(sql.evaluate(&ctx).ok());
    });
    // WHERE false: parse and filter only.
    let filtered = ns_per_iter(n, || {
        let ctx = Ctx::new(TOPIC, black_box(&cold)).with_timestamp(0);
        black_box(sql.evaluate(&ctx).ok());
    });
    // Per additional rule on a message already parsed (one context shared by every rule).
    let shared_ctx = Ctx::new(TOPIC, &warm).with_timestamp(0);
    let shared = ns_per_iter(n, || {
        black_box(sql.evaluate(black_box(&shared_ctx)).ok());
    });
    let matching = ns_per_iter(n, || {
        black_box(sql.matches_topic(black_box(TOPIC)));
    });
    let template = Template::parse("fleet/${topic(2)}/alerts").unwrap();
    let render = ns_per_iter(n, || {
        black_box(template.render(black_box(&shared_ctx)).ok());
    });
    let parse = ns_per_iter(n / 20, || {
        black_box(Sql::parse(black_box(SQL)).ok());
    });
    // For scale: what building a generic JSON tree of the same payload costs.
    let reference = ns_per_iter(n, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&warm)).ok());
    });

    let rate = |ns: f64| 1e9 / ns;
    let clock = if thread_cpu_ns().is_some() {
        "thread CPU time"
    } else {
        "wall time"
    };
    println!("statement: {SQL} ({clock} per call)");
    println!("payload:   {} bytes", warm.len());
    println!(
        "evaluate, fresh context (parse payload + WHERE + SELECT): {full:>7.0} ns  {:>9.0}/s",
        rate(full)
    );
    println!(
        "evaluate, WHERE false (parse payload + WHERE):           {filtered:>7.0} ns  {:>9.0}/s",
        rate(filtered)
    );
    println!(
        "evaluate, payload already parsed (shared context):       {shared:>7.0} ns  {:>9.0}/s",
        rate(shared)
    );
    println!("matches_topic:                                            {matching:>7.1} ns");
    println!("template render 'fleet/${{topic(2)}}/alerts':               {render:>7.0} ns");
    println!("Sql::parse:                                               {parse:>7.0} ns");
    println!("for scale, serde_json::from_slice::<Value> of the payload: {reference:>7.0} ns");
}
