#!/usr/bin/env bash
# mTLS handshakes per second: Shoal's MQTT/TLS listener vs Mosquitto with
# `require_certificate true`, the same CA, server certificate and key, and the same client
# certificate, side by side in one run.
#
#   tests/bench/tls.sh                     # TLS 1.3 and 1.2, 10 s windows, 3 repetitions
#   tests/bench/tls.sh --quick             # smoke run: 2 s windows, 1 repetition
#   tests/bench/tls.sh --report FILE       # print the table of an earlier results file
#
# Each connection (`shoal-loadgen handshakes`, --concurrency workers, 2 tokio threads): TCP
# connect, a full TLS handshake (rustls/ring client, **resumption disabled**: no session ids or
# tickets stored or offered, so every handshake is a full one with ECDHE X25519 and ECDSA P-256
# signatures on both sides), MQTT 3.1.1 CONNECT with a fresh client id, CONNACK accepted,
# DISCONNECT, close_notify, close. handshakes/s counts connections completed in the window.
#
# Certificates: a setup Shoal instance generates its CA (DIR/tls/ca.pem), its server certificate
# (DIR/tls/server.pem: server + CA, ECDSA P-256; DIR/tls/server.key) and one device certificate
# (POST /api/v1/certificates, ECDSA P-256). Every Shoal run starts on a copy of that tls/
# directory (`--store memory`), registers the device certificate
# (POST /api/v1/certificates/register), creates tests/bench/policy-bench.json and attaches it, so
# each CONNECT is also authenticated (certificate registered and ACTIVE) and authorized
# (policy compiled, iot:Connect checked). Mosquitto 2.0 gets the same files:
#   listener PORT 127.0.0.1, cafile ca.pem, certfile server.pem, keyfile server.key,
#   require_certificate true, use_identity_as_username false, allow_anonymous true,
#   persistence false, max_connections -1, and `set_tcp_nodelay true` ("mosquitto").
# "mosquitto-default" is the same without set_tcp_nodelay (Mosquitto's default: Nagle's
# algorithm on, which delays its TLS 1.3 post-handshake records and the CONNACK behind delayed
# ACKs; --no-mosquitto-default leaves it out).
#
# Method: as tests/bench/run.sh (helpers in tests/bench/lib.sh): a fresh broker process per
# run, brokers alternating (order rotating every repetition), medians of --repeat runs, broker
# CPU (and CPU ms per handshake), load generator CPU, other processes' CPU (disturbed runs are
# retried and left out when a clean run exists). --pin puts the broker on CPU 1 and the load
# generator on CPU 0 (one core each; Mosquitto is single-threaded, Shoal then has one worker's
# worth of CPU too).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAIN=${TOOLCHAIN:-+1.97.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

VERSIONS="1.3,1.2"
REPEAT=3
QUICK=0
PIN=0
REBUILD=0
DURATION=""
WARMUP=""
CONCURRENCY=8
THREADS=2
MOSQ_DEFAULT=1
RESULTS=""
REPORT=""
KEEP=0
MAX_OTHER=25
QUIET_WAIT=120
RETRIES=2

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --quick                 2 s windows after 1 s warm-up, 1 repetition
  --tls LIST              TLS versions, comma-separated: 1.3, 1.2 (default 1.3,1.2)
  --repeat R              runs per broker and version; the table shows medians (default 3)
  --duration S            measured window per run in seconds (default 10, quick 2)
  --warmup S              warm-up before the window (default 2, quick 1)
  --concurrency C         connections in progress at once (default 8)
  --threads T             load generator tokio threads (default 2)
  --no-mosquitto-default  skip Mosquitto without set_tcp_nodelay
  --pin                   broker on CPU 1, load generator on CPU 0 (default: no pinning)
  --rebuild               build the binaries even when they exist
  --results FILE          JSON lines output (default tests/bench/results/tls-DATE.jsonl)
  --report FILE           only print the table of an existing results file
  --keep                  keep the work directory
  --max-other-cpu P       disturbance threshold, % of a core (default 25)
  --quiet-wait S          before each run, wait up to S s for the machine to be that quiet (120)
  --retries N             retries of a disturbed run (default 2)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --tls) VERSIONS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --concurrency) CONCURRENCY=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --no-mosquitto-default) MOSQ_DEFAULT=0 ;;
        --pin) PIN=1 ;;
        --rebuild) REBUILD=1 ;;
        --results) RESULTS=$2; shift ;;
        --report) REPORT=$2; shift ;;
        --keep) KEEP=1 ;;
        --max-other-cpu) MAX_OTHER=$2; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift ;;
        --retries) RETRIES=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "tls.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

command -v python3 >/dev/null || { echo "tls.sh: python3 is required" >&2; exit 2; }
command -v curl >/dev/null || { echo "tls.sh: curl is required" >&2; exit 2; }

# ----- the table ------------------------------------------------------------------------------

report() {
    python3 - "$1" <<'PY'
import json, statistics, sys

rows = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
meta = [r for r in rows if r.get("meta")]
every = [r for r in rows if not r.get("meta")]
clean_keys = {(r.get("key"), r.get("broker")) for r in every if not r.get("disturbed")}
runs = [r for r in every if not r.get("disturbed") or (r.get("key"), r.get("broker")) not in clean_keys]
excluded = len(every) - len(runs)
order, brokers, by = [], [], {}
for r in runs:
    if r["key"] not in order:
        order.append(r["key"])
    if r["broker"] not in brokers:
        brokers.append(r["broker"])
    by.setdefault((r["key"], r["broker"]), []).append(r)
brokers.sort(key=lambda b: ["mosquitto", "mosquitto-default", "shoal"].index(b) if b in ("mosquitto", "mosquitto-default", "shoal") else 9)

def get(r, path):
    v = r
    for p in path.split("."):
        if not isinstance(v, dict) or v.get(p) is None:
            return None
        v = v[p]
    return v

def med(rs, path):
    vals = [get(r, path) for r in rs]
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None

def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"

METRICS = [
    ("handshakes/s", "handshakes_per_sec", 0),
    ("connect latency p50 ms", "latency_ms.total_p50", 2),
    ("connect latency p99 ms", "latency_ms.total_p99", 2),
    ("TLS handshake p50 ms", "latency_ms.tls_p50", 2),
    ("broker CPU % (1 core=100)", "broker_stats.cpu_pct", 0),
    ("broker CPU ms per handshake", "broker_stats.cpu_ms_per_handshake", 3),
    ("load generator CPU %", "broker_stats.loadgen_cpu_pct", 0),
    ("other processes CPU %", "broker_stats.other_cpu_pct", 0),
    ("failed connections", "failed_total", 0),
]
head = ["TLS", "metric"] + brokers + (["Shoal/Mosquitto"] if "shoal" in brokers and "mosquitto" in brokers else [])
table = [tuple(head)]
notes = []
for key in order:
    for name, path, digits in METRICS:
        vals = [med(by.get((key, b), []), path) for b in brokers]
        row = [key, name] + [fmt(v, digits) for v in vals]
        if len(head) > len(row):
            m, s = med(by.get((key, "mosquitto"), []), path), med(by.get((key, "shoal"), []), path)
            row.append(f"{s / m:.2f}" if m and s is not None and not path.endswith("other_cpu_pct") and path != "failed_total" else "-")
        table.append(tuple(row))
    for b in brokers:
        neg = {json.dumps(r.get("negotiated"), sort_keys=True) for r in by.get((key, b), [])}
        notes.append(f"TLS {key} {b}: negotiated {', '.join(sorted(neg))}")
        for r in by.get((key, b), []):
            if r.get("error"):
                notes.append(f"TLS {key} {b} rep {r.get('rep')}: ERROR {r['error']}")
            if r.get("failed_total"):
                notes.append(f"TLS {key} {b} rep {r.get('rep')}: {r['failed_total']} failed {r.get('failures_total')}: {(r.get('errors') or [''])[0]}")
            if r.get("disturbed"):
                notes.append(f"TLS {key} {b} rep {r.get('rep')}: only disturbed runs (other processes used {get(r, 'broker_stats.other_cpu_pct') or 0:.0f}% of a core)")

widths = [max(len(row[i]) for row in table) for i in range(len(head))]
for i, row in enumerate(table):
    print("| " + " | ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(row)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for m in meta:
    print(f"\n{m.get('meta')}: {json.dumps({k: v for k, v in m.items() if k != 'meta'})}")
counts = sorted({len(v) for v in by.values()})
print(f"\nEach cell: median of {' or '.join(map(str, counts))} run(s).")
if excluded:
    notes.insert(0, f"{excluded} disturbed run(s) left out (see the raw file)")
if notes:
    print("\nNotes:")
    for n in notes:
        print(f"- {n}")
PY
}

if [ -n "$REPORT" ]; then
    report "$REPORT"
    exit 0
fi

# ----- preparation ----------------------------------------------------------------------------

if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-1}
    REPEAT=1
else
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-2}
fi
IFS=, read -r -a versions <<<"$VERSIONS"
for v in "${versions[@]}"; do
    case "$v" in 1.2|1.3) ;; *) echo "tls.sh: unknown TLS version '$v' (1.2 or 1.3)" >&2; exit 2 ;; esac
done

# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"

BIN=$CARGO_TARGET_DIR/release
if [ "$REBUILD" = 1 ] || [ ! -x "$BIN/shoal" ] || [ ! -x "$BIN/shoal-loadgen" ]; then
    echo "== building release binaries" >&2
    (cd "$ROOT" && cargo "$TOOLCHAIN" build --release -p shoal-server -p shoal-tests)
fi
[ -x "$MOSQUITTO" ] || { echo "tls.sh: $MOSQUITTO not found (apt-get install mosquitto)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/shoal-tls-bench.XXXXXX)
cp "$BIN/shoal" "$BIN/shoal-loadgen" "$WORK/"
SHOAL=$WORK/shoal
LOADGEN=$WORK/shoal-loadgen

if [ -z "$RESULTS" ]; then
    mkdir -p "$HERE/results"
    RESULTS=$HERE/results/tls-$(date +%Y%m%d-%H%M%S).jsonl
fi
: >"$RESULTS"

cleanup() {
    [ -n "$BROKER_PID" ] && kill -KILL "$BROKER_PID" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

if [ "$PIN" = 1 ]; then
    BROKER_CPU=(taskset -c 1)
    LOADGEN_CPU=(taskset -c 0)
else
    BROKER_CPU=()
    LOADGEN_CPU=()
fi

start_shoal() {
    local dir=$1
    "${BROKER_CPU[@]}" "$SHOAL" serve --data-dir "$dir" --store memory --mqtt-listen off \
        --mqtts-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --http-auth none >"$dir.log" 2>&1 &
    BROKER_PID=$!
}

# The certificates: CA, server certificate and one device certificate, from a setup instance.
PKI=$WORK/pki
mkdir -p "$PKI"
start_shoal "$PKI/data"
HTTP=$(shoal_addr "$PKI/data" http) || { echo "tls.sh: the setup Shoal did not start:" >&2; tail "$PKI/data.log" >&2; exit 1; }
echo '{"commonName":"tls-bench-device","setAsActive":true}' >"$PKI/req.json"
shoal_post "$HTTP" /api/v1/certificates "$PKI/req.json" >"$PKI/cert.json"
stop_broker
python3 - "$PKI" "$HERE/policy-bench.json" <<'PY'
import json, sys
d, policy = sys.argv[1], sys.argv[2]
c = json.load(open(f"{d}/cert.json"))
open(f"{d}/device.pem.crt", "w").write(c["certificatePem"])
open(f"{d}/device.pem.key", "w").write(c["keyPair"]["PrivateKey"])
json.dump({"certificatePem": c["certificatePem"], "setAsActive": True}, open(f"{d}/register.json", "w"))
json.dump({"policyName": "bench", "policyDocument": json.load(open(policy))}, open(f"{d}/policy.json", "w"))
json.dump({"target": c["certificateId"]}, open(f"{d}/attach.json", "w"))
PY
TLS_DIR=$PKI/data/tls
KEY_INFO=$(for f in "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" "$PKI/device.pem.crt"; do
    openssl x509 -in "$f" -noout -text 2>/dev/null | awk '/Public Key Algorithm|ASN1 OID|Signature Algorithm/ {$1=$1; print}' | sort -u | paste -sd' ' -
done | sort -u | paste -sd';' -)
echo "== certificates: $KEY_INFO" >&2

# start_broker NAME DIR: starts the broker with the shared certificates; sets BROKER_PID, PORT.
start_broker() {
    local name=$1 dir=$2
    mkdir -p "$dir"
    case "$name" in
        shoal)
            mkdir -p "$dir/data"
            cp -r "$TLS_DIR" "$dir/data/tls"
            start_shoal "$dir/data"
            local http mqtts
            if ! http=$(shoal_addr "$dir/data" http) || ! mqtts=$(shoal_addr "$dir/data" mqtts) \
                || ! shoal_post "$http" /api/v1/certificates/register "$PKI/register.json" >/dev/null \
                || ! shoal_post "$http" /api/v1/policies "$PKI/policy.json" >/dev/null \
                || ! shoal_post "$http" /api/v1/policies/bench/targets "$PKI/attach.json" >/dev/null; then
                tail -20 "$dir/data.log" >&2
                return 1
            fi
            PORT=${mqtts##*:}
            ;;
        mosquitto|mosquitto-default)
            PORT=$(free_port)
            cat >"$dir/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
cafile $TLS_DIR/ca.pem
certfile $TLS_DIR/server.pem
keyfile $TLS_DIR/server.key
require_certificate true
use_identity_as_username false
allow_anonymous true
persistence false
max_connections -1
EOF
            [ "$name" = mosquitto ] && echo "set_tcp_nodelay true" >>"$dir/mosquitto.conf"
            # Started as root, Mosquitto switches to the `mosquitto` user and could no longer read
            # the key in this private directory: stay the current user.
            echo "user $(id -un)" >>"$dir/mosquitto.conf"
            "${BROKER_CPU[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
            BROKER_PID=$!
            wait_listen "$PORT" || { tail -20 "$dir/broker.log" >&2; return 1; }
            ;;
    esac
}

run_attempt() {
    local key=$1 broker=$2 rep=$3 attempt=$4
    local dir="$WORK/$key-$broker-$rep-$attempt"
    echo "== [$rep/$REPEAT] TLS $key, $broker" >&2
    if ! start_broker "$broker" "$dir"; then
        printf '{"key":"%s","broker":"%s","rep":%s,"attempt":%s,"error":"broker setup failed"}\n' \
            "$key" "$broker" "$rep" "$attempt" >>"$RESULTS"
        stop_broker
        return
    fi
    sleep 0.5
    local budget
    budget=$(python3 -c "print(int(float('$DURATION') + float('$WARMUP') + 60))")
    measured "$dir" "$budget" "${LOADGEN_CPU[@]}" "$LOADGEN" --threads "$THREADS" handshakes \
        --port "$PORT" --label "$broker" --ca "$TLS_DIR/ca.pem" --cert "$PKI/device.pem.crt" \
        --key "$PKI/device.pem.key" --server-name localhost --tls "$key" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP"
    stop_broker
    python3 - "$dir" "$RESULTS" "$key" "$broker" "$rep" "$attempt" "$MAX_OTHER" <<'PY'
import json, sys
d, results, key, broker, rep, attempt, max_other = sys.argv[1:]
line = None
try:
    with open(f"{d}/out") as f:
        for l in f:
            if l.startswith("{"):
                line = json.loads(l)
except OSError:
    pass
if line is None:
    line = {"error": "no JSON from the load generator; see loadgen.log"}
try:
    b = json.load(open(f"{d}/stats.json"))
except (OSError, ValueError):
    b = {}
if line.get("completed_total"):
    b["cpu_ms_per_handshake"] = b.get("cpu_secs", 0) * 1e3 / line["completed_total"]
lat = line.get("latency_us") or {}
line["latency_ms"] = {
    f"{k}_{q}": (lat.get(k) or {}).get(q, 0) / 1000 for k in ("total", "tls") for q in ("p50", "p99")
}
line.update({"key": key, "broker": broker, "rep": int(rep), "attempt": int(attempt), "broker_stats": b})
line["disturbed"] = b.get("other_cpu_pct", 0) > float(max_other)
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
msg = "error: " + line["error"] if line.get("error") else "{:,.0f} handshakes/s  p50 {:.2f} ms  broker CPU {:.0f}% ({:.3f} ms/handshake)  failed {}".format(
    line.get("handshakes_per_sec", 0), line["latency_ms"]["total_p50"], b.get("cpu_pct", 0),
    b.get("cpu_ms_per_handshake", 0), line.get("failed_total"))
print("   " + msg + "  (other processes {:.0f}%)".format(b.get("other_cpu_pct", 0)), file=sys.stderr)
PY
}

run_one() {
    local attempt
    for attempt in $(seq 1 $((RETRIES + 1))); do
        wait_quiet
        run_attempt "$@" "$attempt"
        if ! tail -n1 "$RESULTS" | python3 -c 'import json, sys; sys.exit(1 if json.loads(sys.stdin.read()).get("disturbed") else 0)'; then
            echo "   disturbed by other processes; $([ "$attempt" -le "$RETRIES" ] && echo retrying || echo giving up)" >&2
            continue
        fi
        return 0
    done
}

# ----- the runs -------------------------------------------------------------------------------

{
    printf '{"meta":"run","date":"%s","host_cpus":%s,"pin":%s,"duration":%s,"warmup":%s,"repeat":%s,"concurrency":%s,"threads":%s,' \
        "$(date -Is)" "$(nproc)" "$PIN" "$DURATION" "$WARMUP" "$REPEAT" "$CONCURRENCY" "$THREADS"
    printf '"git_now":"%s","shoal_built":"%s","shoal_md5":"%s","mosquitto":"%s","openssl":"%s","certificates":"%s","kernel":"%s"}\n' \
        "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- host 2>/dev/null || echo '+dirty')" \
        "$(date -Is -r "$BIN/shoal")" "$(md5sum "$SHOAL" | cut -d' ' -f1)" \
        "$("$MOSQUITTO" -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1)" \
        "$(openssl version 2>/dev/null || echo unknown)" "$KEY_INFO" "$(uname -r)"
} >>"$RESULTS"

brokers=(mosquitto shoal)
[ "$MOSQ_DEFAULT" = 1 ] && brokers+=(mosquitto-default)
n=${#brokers[@]}
for rep in $(seq 1 "$REPEAT"); do
    for key in "${versions[@]}"; do
        # Rotate the order every repetition.
        for i in $(seq 0 $((n - 1))); do
            run_one "$key" "${brokers[$(((i + rep - 1) % n))]}" "$rep"
        done
    done
done

echo >&2
report "$RESULTS"
echo
echo "raw results: $RESULTS"
