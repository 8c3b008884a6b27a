#!/usr/bin/env bash
# Latency a rule adds: publish -> republished copy, against publish -> plain delivery of the
# same message, with the rules workers napping (`--rules-nap-us`, default 1000) or woken per
# message (`0`). For each nap setting it starts a release `shoal serve --store memory` with the
# rule `SELECT * FROM 'lat/in'` -> republish `lat/out` (QoS 0), connects one paho subscriber to
# both topics, publishes COUNT QoS 0 messages at RATE/s carrying their send time, and prints
# percentiles of both latencies in milliseconds (the first tenth of the messages, at most 200,
# warm up and are not counted).
#
#   tests/bench/rules-latency.sh                    # naps 0 and 1000, 2,000 messages at 500/s
#   COUNT=5000 RATE=1000 tests/bench/rules-latency.sh 0 200 1000
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}/release
[ -x "$BIN/shoal" ] || {
    echo "rules-latency.sh: build first: cargo +1.97.0 build --release -p shoal-server" >&2
    exit 2
}
NAPS=("$@")
[ ${#NAPS[@]} -gt 0 ] || NAPS=(0 1000)
COUNT=${COUNT:-2000}
RATE=${RATE:-500}
BROKER_PID=""
WORK=""
trap '[ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null; [ -n "$WORK" ] && rm -rf "$WORK"' EXIT
for nap in "${NAPS[@]}"; do
    WORK=$(mktemp -d /tmp/shoal-rules-latency.XXXXXX)
    port=$(free_port)
    "$BIN/shoal" serve --data-dir "$WORK/data" --store memory --mqtt-listen "127.0.0.1:$port" \
        --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth none --rules-nap-us "$nap" \
        >"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_listen "$port" && http=$(shoal_addr "$WORK/data" http) || { tail "$WORK/broker.log" >&2; exit 1; }
    curl -sf -X POST "http://$http/api/v1/rules/latency" -H 'content-type: application/json' \
        -d '{"sql": "SELECT * FROM '"'lat/in'"'", "actions": [{"republish": {"topic": "lat/out", "qos": 0}}]}' >/dev/null
    python3 - "$port" "$COUNT" "$RATE" "$nap" <<'PY'
import json, sys, threading, time
import paho.mqtt.client as mqtt

port, count, rate, nap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
got = {"lat/in": [], "lat/out": []}
done = threading.Event()
subscribed = threading.Event()

def on_message(_c, _u, m):
    now = time.perf_counter_ns()
    doc = json.loads(m.payload)
    got[m.topic].append((doc["i"], (now - doc["t"]) / 1e6))
    if len(got["lat/out"]) >= count and len(got["lat/in"]) >= count:
        done.set()

sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-sub")
sub.on_message = on_message
sub.on_subscribe = lambda *_: subscribed.set()
sub.connect("127.0.0.1", port)
sub.subscribe([("lat/in", 0), ("lat/out", 0)])
sub.loop_start()
subscribed.wait(5)
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-pub")
pub.connect("127.0.0.1", port)
pub.loop_start()
time.sleep(0.5)
start = time.perf_counter()
for i in range(count):
    target = start + i / rate
    while (d := target - time.perf_counter()) > 0:
        time.sleep(d)
    pub.publish("lat/in", json.dumps({"t": time.perf_counter_ns(), "i": i, "pad": "x" * 150}), qos=0)
done.wait(10 + count / rate)
sub.loop_stop(); pub.loop_stop()

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

warm = min(200, count // 10)
for topic, what in (("lat/in", "plain delivery"), ("lat/out", "through the rule")):
    xs = [ms for i, ms in got[topic] if i >= warm]
    print(f"naps {nap:>5} us  {what:<17} {len(xs):>6} msgs  p50 {pct(xs, 50):6.2f}  p90 {pct(xs, 90):6.2f}"
          f"  p99 {pct(xs, 99):6.2f}  max {max(xs) if xs else float('nan'):7.2f} ms")
PY
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
    rm -rf "$WORK"
    WORK=""
done
