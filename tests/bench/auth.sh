#!/usr/bin/env bash
# Authorization overhead: Shoal's QoS 0 throughput with a policy evaluated on every CONNECT,
# PUBLISH, SUBSCRIBE and delivery, against the same runs with authorization off.
#
#   tests/bench/auth.sh                    # fan-in, p2p and fan-out QoS 0, 10 s windows, 3 reps
#   tests/bench/auth.sh --quick            # smoke run: 2 s windows, 1 repetition
#   tests/bench/auth.sh --report FILE      # print the table of an earlier results file
#
# Modes (a fresh `shoal serve --store memory --mqtts-listen off` per run):
#   allow-all   --anonymous-access allow-all: no policy is evaluated (authorization off)
#   policy      --anonymous-access policy:bench: tests/bench/policy-bench.json (10 statements,
#               ${iot:ClientId} in client/topic/topicfilter resources, a Deny) is compiled for
#               every client at CONNECT and checked on every PUBLISH, SUBSCRIBE and delivery
# The policy is created through the HTTP API right after start, in both modes (unused in
# allow-all), before the load generator connects.
#
# Scenarios: fan-in-qos0 (8 publishers -> 1 subscriber on bench/in/+), p2p-qos0 (50 pairs on
# bench/p2p/i), fan-out-qos0 (1 publisher -> 100 subscribers on bench/out); 256-byte payloads.
#
# Method: as tests/bench/run.sh (helpers in tests/bench/lib.sh). Per repetition and scenario
# both modes run back to back, the order flipping every repetition; the table shows medians and
# the ratio policy / allow-all of the medians, PASS when deliveries/s keep >= 90 %. Each run
# also records: the broker's CPU, the load generator's, and other processes' (a run during which
# other processes used more than --max-other-cpu % of a core is marked disturbed, retried, and
# left out of the table when a clean run exists); denials during the load (from /metrics:
# refused CONNECTs, refused PUBLISHes (protocol errors), deliveries dropped as unauthorized; and
# "denied" lines in the broker log), which must all be 0; and, after the load, a probe
# (tests/bench/authz-probe.py) showing that the policy was really enforced in that broker:
# an uncovered client id, a denied filter and a denied topic are refused in `policy` mode
# ("enforced") and accepted in `allow-all` mode ("open").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAIN=${TOOLCHAIN:-+1.97.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}

ALL_SCENARIOS="fan-in-qos0,p2p-qos0,fan-out-qos0"
SCENARIOS=$ALL_SCENARIOS
REPEAT=3
QUICK=0
PIN=0
REBUILD=0
DURATION=""
WARMUP=""
RESULTS=""
REPORT=""
KEEP=0
MAX_OTHER=25
QUIET_WAIT=120
RETRIES=2
THRESHOLD=0.90
POLICY=""
WORKERS=""

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --quick             2 s windows after 1 s warm-up, 1 repetition
  --scenarios LIST    comma-separated, from $ALL_SCENARIOS
  --repeat R          runs per mode and scenario; the table shows medians (default 3)
  --duration S        measured window per run in seconds (default 10, quick 2)
  --warmup S          warm-up before the window (default 2, quick 1)
  --pin               broker on CPU 1, load generator on CPU 0 (default: no pinning)
  --workers N         Shoal's --workers (default: its default, one per CPU)
  --policy FILE       enforce this policy document instead of tests/bench/policy-bench.json
                      (it must allow what the load generator does; the probe's verdict
                      assumes policy-bench.json)
  --rebuild           build the binaries even when they exist
  --results FILE      JSON lines output (default tests/bench/results/auth-DATE.jsonl)
  --report FILE       only print the table of an existing results file
  --keep              keep the work directory (broker logs, probe outputs)
  --max-other-cpu P   disturbance threshold, % of a core (default 25)
  --quiet-wait S      before each run, wait up to S s for the machine to be that quiet (120)
  --retries N         retries of a disturbed run (default 2)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --pin) PIN=1 ;;
        --policy) POLICY=$2; shift ;;
        --workers) WORKERS=$2; shift ;;
        --rebuild) REBUILD=1 ;;
        --results) RESULTS=$2; shift ;;
        --report) REPORT=$2; shift ;;
        --keep) KEEP=1 ;;
        --max-other-cpu) MAX_OTHER=$2; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift ;;
        --retries) RETRIES=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "auth.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

command -v python3 >/dev/null || { echo "auth.sh: python3 is required" >&2; exit 2; }
command -v curl >/dev/null || { echo "auth.sh: curl is required" >&2; exit 2; }

# ----- the table ------------------------------------------------------------------------------

report() {
    THRESHOLD=$THRESHOLD python3 - "$1" <<'PY'
import json, os, statistics, sys

threshold = float(os.environ["THRESHOLD"])
rows = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
meta = [r for r in rows if r.get("meta")]
every = [r for r in rows if not r.get("meta")]
clean_keys = {(r.get("key"), r.get("mode")) for r in every if not r.get("disturbed")}
runs = [r for r in every if not r.get("disturbed") or (r.get("key"), r.get("mode")) not in clean_keys]
excluded = len(every) - len(runs)
order, by = [], {}
for r in runs:
    if r["key"] not in order:
        order.append(r["key"])
    by.setdefault((r["key"], r["mode"]), []).append(r)

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
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"

METRICS = [
    ("deliveries/s", "msgs_per_sec", 0, True),
    ("publish/s", "publish_per_sec", 0, False),
    ("loss %", "loss_pct", 2, False),
    ("broker CPU % (1 core=100)", "broker_stats.cpu_pct", 0, False),
    ("broker CPU us per delivery", "broker_stats.cpu_us_per_delivery", 2, False),
    ("load generator CPU %", "broker_stats.loadgen_cpu_pct", 0, False),
    ("other processes CPU %", "broker_stats.other_cpu_pct", 0, False),
]
table = [("scenario", "metric", "allow-all", "policy:bench", "policy/allow-all", "verdict")]
notes, verdicts = [], []
for key in order:
    a, p = by.get((key, "allow-all"), []), by.get((key, "policy"), [])
    for name, path, digits, judged in METRICS:
        av, pv = med(a, path), med(p, path)
        ratio, verdict = "-", ""
        if not path.endswith("other_cpu_pct") and av and pv is not None:
            ratio = f"{pv / av:.3f}"
            if judged:
                verdict = "PASS" if pv / av >= threshold else "MISS"
                verdicts.append((key, pv / av, verdict))
        table.append((key, name, fmt(av, digits), fmt(pv, digits), ratio, verdict))
    den = lambda rs, k: sum(int(get(r, "denials_during_load." + k) or 0) for r in rs)
    for name, k in (("denials during load: CONNECT refused", "connects_refused"),
                    ("denials during load: PUBLISH refused", "publish_refused"),
                    ("denials during load: deliveries dropped", "receive_denied"),
                    ("denials during load: log lines", "log_denied_lines")):
        table.append((key, name + " (sum)", str(den(a, k)), str(den(p, k)), "", ""))
    probe = lambda rs: ", ".join(f"{v} x{n}" for v, n in sorted(
        {v: sum(1 for r in rs if get(r, "probe.verdict") == v) for v in {get(r, "probe.verdict") for r in rs}}.items(),
        key=lambda kv: str(kv[0])))
    table.append((key, "probe after the load", probe(a), probe(p), "", ""))
    # Per-repetition ratios (both modes of a repetition ran back to back).
    reps = sorted({r["rep"] for r in a} & {r["rep"] for r in p})
    per = []
    for rep in reps:
        av = med([r for r in a if r["rep"] == rep], "msgs_per_sec")
        pv = med([r for r in p if r["rep"] == rep], "msgs_per_sec")
        if av:
            per.append(f"{pv / av:.3f}")
    if per:
        notes.append(f"{key}: deliveries/s ratio per repetition: {', '.join(per)}")
    for mode, rs in (("allow-all", a), ("policy", p)):
        for r in rs:
            if r.get("error"):
                notes.append(f"{key} {mode} rep {r.get('rep')}: ERROR {r['error']}")
            if r.get("dead_clients"):
                notes.append(f"{key} {mode} rep {r.get('rep')}: {r['dead_clients']} client connections died: {(r.get('errors') or [''])[0]}")
            b = r.get("broker_stats", {})
            if r.get("lost") and b.get("dropped_queue_full") != r.get("lost"):
                notes.append(f"{key} {mode} rep {r.get('rep')}: lost {r.get('lost')} but the broker counted {b.get('dropped_queue_full')} queue-full drops")
            if r.get("disturbed"):
                notes.append(f"{key} {mode} rep {r.get('rep')}: only disturbed runs (other processes used {b.get('other_cpu_pct', 0):.0f}% of a core)")

widths = [max(len(row[i]) for row in table) for i in range(6)]
for i, row in enumerate(table):
    print("| " + " | ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(row)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for m in meta:
    print(f"\n{m.get('meta')}: {json.dumps({k: v for k, v in m.items() if k != 'meta'})}")
counts = sorted({len(v) for v in by.values()})
print(f"\nEach cell: median of {' or '.join(map(str, counts))} run(s); verdict: policy/allow-all deliveries/s >= {threshold:.0%}.")
if excluded:
    notes.insert(0, f"{excluded} disturbed run(s) left out (see the raw file)")
if notes:
    print("\nNotes:")
    for n in notes:
        print(f"- {n}")
if verdicts:
    worst = min(v[1] for v in verdicts)
    print(f"\nOverall: {'PASS' if all(v[2] == 'PASS' for v in verdicts) else 'MISS'} (lowest ratio {worst:.3f})")
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

IFS=, read -r -a selected <<<"$SCENARIOS"
for s in "${selected[@]}"; do
    [[ ",$ALL_SCENARIOS," == *",$s,"* ]] || { echo "auth.sh: unknown scenario '$s' (known: $ALL_SCENARIOS)" >&2; exit 2; }
done

POLICY=${POLICY:-$HERE/policy-bench.json}
[ -r "$POLICY" ] || { echo "auth.sh: cannot read $POLICY" >&2; exit 2; }

# shellcheck source=tests/bench/lib.sh
. "$HERE/lib.sh"

BIN=$CARGO_TARGET_DIR/release
if [ "$REBUILD" = 1 ] || [ ! -x "$BIN/shoal" ] || [ ! -x "$BIN/shoal-loadgen" ]; then
    echo "== building release binaries" >&2
    (cd "$ROOT" && cargo "$TOOLCHAIN" build --release -p shoal-server -p shoal-tests)
fi

WORK=$(mktemp -d /tmp/shoal-auth-bench.XXXXXX)
cp "$BIN/shoal" "$BIN/shoal-loadgen" "$WORK/"
SHOAL=$WORK/shoal
LOADGEN=$WORK/shoal-loadgen
python3 -c 'import json, sys; print(json.dumps({"policyName": "bench", "policyDocument": json.load(open(sys.argv[1]))}))' \
    "$POLICY" >"$WORK/policy-body.json"

if [ -z "$RESULTS" ]; then
    mkdir -p "$HERE/results"
    RESULTS=$HERE/results/auth-$(date +%Y%m%d-%H%M%S).jsonl
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

loadgen_args() {
    local key=$1 port=$2 label=$3
    local common=(--port "$port" --label "$label" --duration "$DURATION" --warmup "$WARMUP" --payload 256 --qos 0)
    case "$key" in
        fan-in-qos0) echo fan-in "${common[@]}" --publishers 8 ;;
        p2p-qos0) echo p2p "${common[@]}" --pairs 50 ;;
        fan-out-qos0) echo fan-out "${common[@]}" --subscribers 100 ;;
    esac
}

# run_attempt KEY MODE REP ATTEMPT: one run; appends one JSON line to $RESULTS.
run_attempt() {
    local key=$1 mode=$2 rep=$3 attempt=$4
    local dir="$WORK/$key-$mode-$rep-$attempt" port http access
    mkdir -p "$dir"
    port=$(free_port)
    case "$mode" in
        allow-all) access=allow-all ;;
        policy) access=policy:bench ;;
    esac
    echo "== [$rep/$REPEAT] $key, $mode (port $port)" >&2
    "${BROKER_CPU[@]}" "$SHOAL" serve --data-dir "$dir/data" --store memory --anonymous-access "$access" \
        --mqtt-listen "127.0.0.1:$port" --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth none \
        ${WORKERS:+--workers "$WORKERS"} >"$dir/broker.log" 2>&1 &
    BROKER_PID=$!
    if ! wait_listen "$port" || ! http=$(shoal_addr "$dir/data" http) \
        || ! shoal_post "$http" /api/v1/policies "$WORK/policy-body.json" >/dev/null; then
        echo "auth.sh: shoal did not start, or the policy was refused; its log:" >&2
        tail -20 "$dir/broker.log" >&2
        printf '{"key":"%s","mode":"%s","rep":%s,"attempt":%s,"error":"broker setup failed"}\n' \
            "$key" "$mode" "$rep" "$attempt" >>"$RESULTS"
        stop_broker
        return
    fi
    sleep 0.5
    # shellcheck disable=SC2207
    local args=($(loadgen_args "$key" "$port" "$mode"))
    local budget
    budget=$(python3 -c "print(int(float('$DURATION') + float('$WARMUP') + 120))")
    measured "$dir" "$budget" "${LOADGEN_CPU[@]}" "$LOADGEN" "${args[@]}"
    shoal_metrics_json "$http" >"$dir/metrics-load.json" || echo '{}' >"$dir/metrics-load.json"
    grep -c 'denied' "$dir/broker.log" >"$dir/denied-lines" || true
    timeout 30 python3 "$HERE/authz-probe.py" 127.0.0.1 "$port" >"$dir/probe.json" 2>"$dir/probe.log" \
        || echo '{"verdict":"probe failed"}' >"$dir/probe.json"
    shoal_metrics_json "$http" >"$dir/metrics-probe.json" || echo '{}' >"$dir/metrics-probe.json"
    stop_broker
    python3 - "$dir" "$RESULTS" "$key" "$mode" "$rep" "$attempt" "$MAX_OTHER" <<'PY'
import json, sys
d, results, key, mode, rep, attempt, max_other = sys.argv[1:]
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
        with open(f"{d}/loadgen.log") as f:
            line["error"] += ": " + " / ".join(f.read().strip().splitlines()[-3:])
    except OSError:
        pass
def load(name, default):
    try:
        with open(f"{d}/{name}") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default
b = load("stats.json", {})
m = load("metrics-load.json", {})
mp = load("metrics-probe.json", {})
try:
    denied_lines = int(open(f"{d}/denied-lines").read().strip() or 0)
except (OSError, ValueError):
    denied_lines = None
b["dropped_queue_full"] = int(m.get('shoal_messages_dropped_total{reason="queue_full"}', 0))
b["metrics_load"] = {k: v for k, v in m.items() if k.startswith(("shoal_connects", "shoal_protocol", "shoal_messages", "shoal_connections_total"))}
b["metrics_after_probe"] = {k: v for k, v in mp.items() if k.startswith(("shoal_connects_refused", "shoal_protocol", 'shoal_messages_dropped_total{reason="unauthorized"}'))}
if line.get("received"):
    b["cpu_us_per_delivery"] = b.get("cpu_secs", 0) * 1e6 / line["received"]
line["denials_during_load"] = {
    "connects_refused": int(m.get("shoal_connects_refused_total", 0)),
    "publish_refused": int(m.get("shoal_protocol_errors_total", 0)),
    "receive_denied": int(m.get('shoal_messages_dropped_total{reason="unauthorized"}', 0)),
    "log_denied_lines": denied_lines,
}
line["probe"] = load("probe.json", {"verdict": "no output"})
line.update({"key": key, "mode": mode, "rep": int(rep), "attempt": int(attempt), "broker_stats": b})
line["disturbed"] = b.get("other_cpu_pct", 0) > float(max_other)
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
b = line["broker_stats"]
msg = "error: " + line["error"] if line.get("error") else "{:,.0f} deliveries/s  {:,.0f} publish/s  loss {:.2f}%  broker CPU {:.0f}%".format(
    line.get("msgs_per_sec", 0), line.get("publish_per_sec", 0), line.get("loss_pct", 0), b.get("cpu_pct", 0))
den = line["denials_during_load"]
msg += "  denials {}  probe {}  (other processes {:.0f}%)".format(
    sum(v or 0 for v in den.values()), line["probe"].get("verdict"), b.get("other_cpu_pct", 0))
print("   " + msg, file=sys.stderr)
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
    printf '{"meta":"run","date":"%s","host_cpus":%s,"pin":%s,"workers":"%s","duration":%s,"warmup":%s,"repeat":%s,' \
        "$(date -Is)" "$(nproc)" "$PIN" "${WORKERS:-default}" "$DURATION" "$WARMUP" "$REPEAT"
    printf '"git_now":"%s","shoal_built":"%s","shoal_md5":"%s","policy":"%s","policy_md5":"%s","kernel":"%s"}\n' \
        "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- host 2>/dev/null || echo '+dirty')" \
        "$(date -Is -r "$BIN/shoal")" "$(md5sum "$SHOAL" | cut -d' ' -f1)" \
        "$(basename "$POLICY")" "$(md5sum "$POLICY" | cut -d' ' -f1)" "$(uname -r)"
} >>"$RESULTS"

for rep in $(seq 1 "$REPEAT"); do
    for key in "${selected[@]}"; do
        if [ $((rep % 2)) = 1 ]; then
            modes=(allow-all policy)
        else
            modes=(policy allow-all)
        fi
        for mode in "${modes[@]}"; do
            run_one "$key" "$mode" "$rep"
        done
    done
done

echo >&2
report "$RESULTS"
echo
echo "raw results: $RESULTS"
