#!/usr/bin/env bash
# HTTP data-plane publish vs MQTT publish, in one run (issue #7), with Mosquitto as the MQTT peer.
#
#   tests/bench/http.sh                 # 10 s windows, 1 repetition
#   tests/bench/http.sh --quick         # 3 s windows
#   tests/bench/http.sh --repeat 3 --clients 32
#
# Method
# * Load generator: tests/src/bin/shoal-shadowbench.rs with `--publish` (see its doc comment):
#   the same ~120-byte JSON bodies to `bench/{c}/{k}` (8 topics per client), nothing subscribed.
#   A request is complete at its PUBACK (MQTT, QoS 1) or its 200 (HTTP `POST
#   /topics/bench%2F{c}%2F{k}?qos=1`, HTTP/1.1 keep-alive, one request in flight per
#   connection since HTTP/1.1 does not pipeline).
# * Runs, each against a fresh broker (`--store memory`, MQTT on TCP):
#     shoal-http-sigv4   C connections, every request SigV4-signed with the admin key that shoal
#                        wrote to DATA/credentials (signing in the load generator, verifying in
#                        shoal: both are in the figure, as in real life);
#     shoal-http-none    the same with `--http-auth none` (what SigV4 costs end to end);
#     shoal-mqtt-1       C MQTT clients, 1 publish in flight each (the same concurrency as HTTP);
#     shoal-mqtt-8       C MQTT clients, 8 in flight each;
#     mosquitto-mqtt-1 / mosquitto-mqtt-8   the same against Mosquitto.
# * Ratios printed: HTTP signed / HTTP unsigned, HTTP signed / Shoal MQTT at the same
#   concurrency, Shoal MQTT / Mosquitto MQTT. Nothing is pinned; the 2 cores are shared by the
#   broker and the load generator (the JSON results carry their CPU %).
# * SigV4's own cost per request, without HTTP: `cargo +1.97.0 test -p shoal-auth --release
#   --test bench -- --ignored --nocapture bench_sigv4`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAIN=${TOOLCHAIN:-+1.97.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
REPEAT=1
DURATION=10
WARMUP=2
CLIENTS=32
REBUILD=0

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=3; WARMUP=1 ;;
        --repeat) REPEAT=$2; shift ;;
        --clients) CLIENTS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --rebuild) REBUILD=1 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "http.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

[ -x "$MOSQUITTO" ] || { echo "http.sh: $MOSQUITTO not found (apt-get install mosquitto)" >&2; exit 2; }
REL="$CARGO_TARGET_DIR/release"
if [ "$REBUILD" = 1 ] || [ ! -x "$REL/shoal" ] || [ ! -x "$REL/shoal-shadowbench" ]; then
    (cd "$ROOT" && cargo "$TOOLCHAIN" build --release --locked -p shoal-server -p shoal-tests \
        --bin shoal --bin shoal-shadowbench)
fi
WORK=$(mktemp -d /tmp/shoal-httpbench.XXXXXX)
cp "$REL/shoal" "$REL/shoal-shadowbench" "$WORK/"
RESULTS="$WORK/results.jsonl"
BROKER_PID=""
# shellcheck source=tests/bench/lib.sh
source "$HERE/lib.sh"
trap 'stop_broker' EXIT

start_shoal() { # DIR AUTH -> sets BROKER_PID, MQTT_PORT, HTTP_PORT
    local dir=$1 auth=$2
    MQTT_PORT=$(free_port)
    "$WORK/shoal" serve --data-dir "$dir" --store memory --mqtt-listen "127.0.0.1:$MQTT_PORT" \
        --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth "$auth" >"$dir.log" 2>&1 &
    BROKER_PID=$!
    wait_listen "$MQTT_PORT" || { tail "$dir.log" >&2; exit 1; }
    HTTP_PORT=$(shoal_addr "$dir" http | cut -d: -f2)
}

start_mosquitto() { # DIR -> sets BROKER_PID, MQTT_PORT
    local dir=$1
    MQTT_PORT=$(free_port)
    mkdir -p "$dir"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\n' \
        "$MQTT_PORT" >"$dir/mosquitto.conf"
    "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir.log" 2>&1 &
    BROKER_PID=$!
    wait_listen "$MQTT_PORT" || { tail "$dir.log" >&2; exit 1; }
}

bench() { # NAME REP ARGS... : one load generator run, its JSON line tagged with name and rep
    local name=$1 rep=$2
    shift 2
    "$WORK/shoal-shadowbench" "$@" --publish --duration "$DURATION" --warmup "$WARMUP" \
        --watch "broker=$BROKER_PID" --label "$name" 2>"$WORK/$name-$rep.err" \
        | python3 -c 'import json, sys; v = json.loads(sys.stdin.read()); v["rep"] = int(sys.argv[1]); print(json.dumps(v))' "$rep" \
        >>"$RESULTS" || { echo "$name: failed, see $WORK/$name-$rep.err" >&2; tail -3 "$WORK/$name-$rep.err" >&2; }
}

for rep in $(seq 1 "$REPEAT"); do
    d="$WORK/shoal-sigv4-$rep"
    start_shoal "$d" sigv4
    bench shoal-http-sigv4 "$rep" http --port "$HTTP_PORT" --clients "$CLIENTS" --credentials-file "$d/credentials"
    bench shoal-mqtt-1 "$rep" mqtt --port "$MQTT_PORT" --clients "$CLIENTS" --inflight 1
    bench shoal-mqtt-8 "$rep" mqtt --port "$MQTT_PORT" --clients "$CLIENTS" --inflight 8
    stop_broker
    d="$WORK/shoal-none-$rep"
    start_shoal "$d" none
    bench shoal-http-none "$rep" http --port "$HTTP_PORT" --clients "$CLIENTS"
    stop_broker
    start_mosquitto "$WORK/mosquitto-$rep"
    bench mosquitto-mqtt-1 "$rep" mqtt --port "$MQTT_PORT" --clients "$CLIENTS" --inflight 1
    bench mosquitto-mqtt-8 "$rep" mqtt --port "$MQTT_PORT" --clients "$CLIENTS" --inflight 8
    stop_broker
done

python3 - "$RESULTS" "$CLIENTS" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    runs.setdefault(v["label"], []).append(v)
def med(name, key="updates_per_sec"):
    xs = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
    return statistics.median(xs) if xs else None
def lat(name, q):
    xs = [r["latency_us"][q] for r in runs.get(name, []) if r.get("latency_us")]
    return statistics.median(xs) if xs else None
print(f"\npublishes acknowledged per second, {sys.argv[2]} clients/connections, median of {max(len(r) for r in runs.values())} run(s)")
print(f"{'run':<20}{'msg/s':>10}{'p50 us':>10}{'p99 us':>10}{'broker CPU %':>14}{'errors':>10}")
for name in ["shoal-http-sigv4", "shoal-http-none", "shoal-mqtt-1", "shoal-mqtt-8", "mosquitto-mqtt-1", "mosquitto-mqtt-8"]:
    rs = runs.get(name, [])
    if not rs:
        print(f"{name:<20}{'failed':>10}")
        continue
    cpu = statistics.median([r["cpu_pct"].get("broker") or 0 for r in rs])
    errs = sum(sum(r.get("errors", {}).values()) for r in rs)
    print(f"{name:<20}{med(name):>10.0f}{lat(name, 'p50'):>10.0f}{lat(name, 'p99'):>10.0f}{cpu:>14.0f}{errs:>10}")
def ratio(a, b, what):
    x, y = med(a), med(b)
    if x and y:
        print(f"{what:<58}{x / y:>6.2f}")
print()
ratio("shoal-http-sigv4", "shoal-http-none", "HTTP publish, SigV4 / unsigned")
ratio("shoal-http-sigv4", "shoal-mqtt-1", "HTTP publish (SigV4) / Shoal MQTT QoS 1, same concurrency")
ratio("shoal-http-sigv4", "shoal-mqtt-8", "HTTP publish (SigV4) / Shoal MQTT QoS 1, 8 in flight")
ratio("shoal-mqtt-1", "mosquitto-mqtt-1", "Shoal MQTT / Mosquitto MQTT, 1 in flight")
ratio("shoal-mqtt-8", "mosquitto-mqtt-8", "Shoal MQTT / Mosquitto MQTT, 8 in flight")
EOF
echo "results: $RESULTS"
