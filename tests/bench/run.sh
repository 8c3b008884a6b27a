#!/usr/bin/env bash
# Side-by-side benchmark: Shoal vs Mosquitto on this machine, same load generator, same
# scenarios, brokers alternating, a fresh broker process (on a fresh port) for every run.
#
#   tests/bench/run.sh                 # every scenario, 10 s windows, 1 repetition
#   tests/bench/run.sh --quick         # smoke run: short windows, 2000 idle connections
#   tests/bench/run.sh --repeat 3 --scenarios fan-in,latency-qos1
#   tests/bench/run.sh --report FILE   # print the table of an earlier results file
#
# Scenarios (names for --scenarios; a bare prefix such as `fan-in` selects both QoS):
#   fan-in-qos0 fan-in-qos1     8 publishers -> 1 subscriber on bench/in/+, as fast as possible
#   fan-out-qos0 fan-out-qos1   1 publisher -> 100 subscribers on one topic, as fast as possible
#   p2p-qos0 p2p-qos1           50 publisher/subscriber pairs, as fast as possible
#   latency-qos0 latency-qos1   8 publishers at a fixed total rate (--rate, default 10000 msg/s)
#                               -> 1 subscriber; end-to-end latency percentiles
#   conns                       10000 idle connections (keep-alive 60 s); broker RSS per connection
#
# Method (see also the doc comment of tests/src/bin/shoal-loadgen.rs):
# * The binaries are built if missing and copied into the work directory first, so a rebuild
#   elsewhere during the run cannot swap them.
# * For each repetition and scenario, both brokers run back to back; the order flips every
#   repetition. With --repeat R the table shows the median of the R runs.
# * CPU placement: by default nothing is pinned and both processes float over both cores:
#   Shoal (2 ntex workers) can use both, Mosquitto (single-threaded) at most one, and the load
#   generator (2 tokio workers) competes with either broker the same way. --pin puts the broker
#   on CPU 1 and the load generator on CPU 0 (then Shoal has one core, like Mosquitto).
# * Mosquitto 2.0 gets: listener PORT 127.0.0.1, allow_anonymous true, max_queued_messages 1000,
#   max_inflight_messages 100, persistence false, max_connections -1. Shoal gets
#   `serve --store memory --mqtts-listen off` with its defaults (queue 1000, inflight 100).
# * Besides the load generator's JSON, each run records the broker's CPU time (utime+stime from
#   /proc/PID/stat, over the whole load-generator run, as % of one core), VmRSS before and after,
#   VmHWM (peak), the load generator's CPU time (bash `times`), the CPU that every other process
#   used meanwhile (/proc/stat busy ticks minus both; other work on the machine skews results),
#   warning/error lines in the broker's log, and for Shoal its /metrics counters.
# * conns: RSS is read after the broker settled (before) and while all connections are held
#   (the last of one-per-second samples, after a 2 s settle); per connection =
#   (RSS_held - RSS_before) / connected. Both processes need an open-file limit above N (the
#   script raises the soft limit up to the hard one).
# * Disturbance: this machine may be shared. Before each run the script waits (up to
#   --quiet-wait s) until the rest of the machine is under --max-other-cpu % of a core; a run
#   during which other processes used more than that is kept in the raw file with
#   "disturbed": true, retried (--retries), and left out of the table when a clean run exists.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAIN=${TOOLCHAIN:-+1.97.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

ALL_SCENARIOS="fan-in-qos0,fan-in-qos1,fan-out-qos0,fan-out-qos1,p2p-qos0,p2p-qos1,latency-qos0,latency-qos1,conns"
SCENARIOS=$ALL_SCENARIOS
REPEAT=1
QUICK=0
PIN=0
REBUILD=0
DURATION=""
WARMUP=""
RATE=10000
CONNS=""
HOLD=""
RESULTS=""
REPORT=""
KEEP=0
MOSQ_NODELAY=0
MAX_OTHER=25
QUIET_WAIT=120
RETRIES=2

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --quick             short windows (2 s + 1 s warm-up), 2000 idle connections held 4 s
  --scenarios LIST    comma-separated scenario names or prefixes (default: all)
  --repeat R          runs per broker and scenario; the table shows medians (default 1)
  --duration S        measured window per run in seconds (default 10, quick 2)
  --warmup S          warm-up before the window (default 2, quick 1)
  --rate R            offered rate of the latency scenarios, msg/s (default 10000)
  --conns N           idle connections for 'conns' (default 10000, quick 2000)
  --hold S            seconds to hold them (default 10, quick 4)
  --pin               broker on CPU 1, load generator on CPU 0 (default: no pinning)
  --rebuild           build the binaries even when they exist
  --results FILE      JSON lines output (default tests/bench/results/bench-DATE.jsonl)
  --report FILE       only print the table of an existing results file
  --keep              keep the work directory (broker logs, configs)
  --max-other-cpu P   a run during which other processes used more than P % of a core is
                      marked disturbed, left out of the table and retried (default 25)
  --quiet-wait S      before each run, wait up to S s for the machine to be that quiet (120)
  --retries N         retries of a disturbed run (default 2)
  --mosquitto-nodelay add 'set_tcp_nodelay true' to Mosquitto's listener (Shoal, through ntex,
                      always sets TCP_NODELAY; Mosquitto 2.0 does not by default, which adds
                      Nagle/delayed-ACK waits to QoS 0 deliveries)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --conns) CONNS=$2; shift ;;
        --hold) HOLD=$2; shift ;;
        --pin) PIN=1 ;;
        --rebuild) REBUILD=1 ;;
        --results) RESULTS=$2; shift ;;
        --report) REPORT=$2; shift ;;
        --keep) KEEP=1 ;;
        --mosquitto-nodelay) MOSQ_NODELAY=1 ;;
        --max-other-cpu) MAX_OTHER=$2; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift ;;
        --retries) RETRIES=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

command -v python3 >/dev/null || { echo "run.sh: python3 is required (JSON and the table)" >&2; exit 2; }

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
# Disturbed runs (other processes busy meanwhile) are left out when a clean one exists.
clean_keys = {(r.get("key"), r.get("broker")) for r in every if not r.get("disturbed")}
runs = [r for r in every if not r.get("disturbed") or (r.get("key"), r.get("broker")) not in clean_keys]
excluded = len(every) - len(runs)
order = []
by = {}
for r in runs:
    key = r.get("key", r.get("scenario"))
    if key not in order:
        order.append(key)
    by.setdefault((key, r["broker"]), []).append(r)

def get(r, path):
    v = r
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v or v[p] is None:
            return None
        v = v[p]
    return v

def med(rs, path):
    vals = [get(r, path) for r in rs]
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None

THROUGHPUT = [
    ("deliveries/s", "msgs_per_sec", 0),
    ("publish/s", "publish_per_sec", 0),
    ("loss %", "loss_pct", 2),
    ("reordered msgs", "reordered", 0),
    ("duplicate msgs", "duplicates", 0),
    ("broker CPU % (1 core=100)", "broker_stats.cpu_pct", 0),
    ("broker peak RSS MB", "broker_stats.hwm_mb", 1),
    ("load generator CPU %", "broker_stats.loadgen_cpu_pct", 0),
    ("other processes CPU %", "broker_stats.other_cpu_pct", 0),
]
LATENCY = [
    ("achieved rate msg/s", "achieved_rate", 0),
    ("latency p50 us", "latency_us.p50", 0),
    ("latency p90 us", "latency_us.p90", 0),
    ("latency p99 us", "latency_us.p99", 0),
    ("latency p99.9 us", "latency_us.p999", 0),
    ("latency max us", "latency_us.max", 0),
    ("loss %", "loss_pct", 2),
    ("reordered msgs", "reordered", 0),
    ("broker CPU % (1 core=100)", "broker_stats.cpu_pct", 0),
    ("other processes CPU %", "broker_stats.other_cpu_pct", 0),
]
CONNS = [
    ("connected", "connected", 0),
    ("failed", "failed", 0),
    ("dropped while held", "dropped_during_hold", 0),
    ("connects/s", "connects_per_sec", 0),
    ("RSS before MB", "broker_stats.rss_before_mb", 1),
    ("RSS held MB", "broker_stats.rss_held_mb", 1),
    ("KB per connection", "broker_stats.kb_per_conn", 2),
]

def fmt(v, digits):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"

table = [("scenario", "metric", "Mosquitto", "Shoal", "Shoal/Mosquitto")]
notes = []
for key in order:
    m = by.get((key, "mosquitto"), [])
    s = by.get((key, "shoal"), [])
    sample = (m or s)[0]
    scen = sample.get("scenario")
    metrics = CONNS if scen == "conns" else LATENCY if scen == "latency" else THROUGHPUT
    for name, path, digits in metrics:
        mv, sv = med(m, path), med(s, path)
        ratio = "-"
        if path.endswith("other_cpu_pct"):
            pass  # a disturbance indicator (noise of a few % either way), not a result
        elif isinstance(mv, (int, float)) and isinstance(sv, (int, float)) and mv not in (0, None):
            ratio = f"{sv / mv:.2f}"
        table.append((key, name, fmt(mv, digits), fmt(sv, digits), ratio))
    for broker, rs in (("mosquitto", m), ("shoal", s)):
        for r in rs:
            if r.get("error"):
                notes.append(f"{key} {broker} rep {r.get('rep')}: ERROR {r['error']}")
            for e in (r.get("errors") or [])[:3]:
                notes.append(f"{key} {broker} rep {r.get('rep')}: {e}")
            if r.get("dead_clients"):
                notes.append(f"{key} {broker} rep {r.get('rep')}: {r['dead_clients']} client connections died")
            if r.get("rate_ok") is False:
                notes.append(f"{key} {broker} rep {r.get('rep')}: offered rate not achieved ({r.get('achieved_rate', 0):.0f}/s)")
            b = r.get("broker_stats", {})
            if b.get("log_errors") or b.get("log_warnings"):
                top = "; ".join(f"{n}x '{t}'" for n, t in b.get("log_top", []))
                notes.append(f"{key} {broker} rep {r.get('rep')}: broker log: {b.get('log_errors', 0)} error and {b.get('log_warnings', 0)} warning lines ({top})")
            mt = b.get("metrics") or {}
            drops = {k.split('"')[1]: int(v) for k, v in mt.items() if k.startswith("shoal_messages_dropped_total") and v}
            if broker == "shoal" and (drops or r.get("lost")):
                verdict = "all accounted for" if drops.get("queue_full", 0) == r.get("lost") else "MISMATCH"
                notes.append(f"{key} shoal rep {r.get('rep')}: lost {r.get('lost')}, broker counted drops {drops or 0} ({verdict})")
            for k in ("shoal_protocol_errors_total", "shoal_connects_refused_total"):
                if mt.get(k):
                    notes.append(f"{key} shoal rep {r.get('rep')}: {k} = {int(mt[k])}")
            if b.get("pid_alive_at_end") is False:
                notes.append(f"{key} {broker} rep {r.get('rep')}: the broker process was gone at the end of the run")
            if r.get("disturbed"):
                notes.append(f"{key} {broker} rep {r.get('rep')}: only disturbed runs (other processes used {b['other_cpu_pct']:.0f}% of a core)")

widths = [max(len(row[i]) for row in table) for i in range(5)]
for i, row in enumerate(table):
    print("| " + " | ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(row)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for mline in meta:
    print(f"\n{mline.get('meta')}: {json.dumps({k: v for k, v in mline.items() if k != 'meta'})}")
if excluded:
    notes.insert(0, f"{excluded} disturbed run(s) left out (other processes busy during the run; see the raw file)")
counts = sorted({len(v) for v in by.values()})
print(f"\nEach cell: median of {' or '.join(map(str, counts))} run(s).")
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
    CONNS=${CONNS:-2000}
    HOLD=${HOLD:-4}
else
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-2}
    CONNS=${CONNS:-10000}
    HOLD=${HOLD:-10}
fi

# Expand --scenarios (names or prefixes) against the full list, keeping the canonical order.
selected=()
IFS=, read -r -a wanted <<<"$SCENARIOS"
IFS=, read -r -a all <<<"$ALL_SCENARIOS"
for s in "${all[@]}"; do
    for w in "${wanted[@]}"; do
        if [ "$s" = "$w" ] || [[ "$s" == "$w"-* ]]; then
            selected+=("$s")
            break
        fi
    done
done
for w in "${wanted[@]}"; do
    ok=0
    for s in "${all[@]}"; do
        if [ "$s" = "$w" ] || [[ "$s" == "$w"-* ]]; then ok=1; fi
    done
    [ "$ok" = 1 ] || { echo "run.sh: unknown scenario '$w' (known: $ALL_SCENARIOS)" >&2; exit 2; }
done

BIN=$CARGO_TARGET_DIR/release
if [ "$REBUILD" = 1 ] || [ ! -x "$BIN/shoal" ] || [ ! -x "$BIN/shoal-loadgen" ]; then
    echo "== building release binaries" >&2
    (cd "$ROOT" && cargo "$TOOLCHAIN" build --release -p shoal-server -p shoal-tests)
fi
[ -x "$MOSQUITTO" ] || { echo "run.sh: $MOSQUITTO not found (apt-get install mosquitto)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/shoal-bench.XXXXXX)
cp "$BIN/shoal" "$BIN/shoal-loadgen" "$WORK/"
SHOAL=$WORK/shoal
LOADGEN=$WORK/shoal-loadgen

if [ -z "$RESULTS" ]; then
    mkdir -p "$HERE/results"
    RESULTS=$HERE/results/bench-$(date +%Y%m%d-%H%M%S).jsonl
fi
: >"$RESULTS"

# 10000 connections need as many descriptors in the broker and in the load generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

BROKER_PID=""
LOADGEN_PID=""
cleanup() {
    [ -n "$LOADGEN_PID" ] && kill "$LOADGEN_PID" 2>/dev/null || true
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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something listens on 127.0.0.1:$1 (without connecting to it).
wait_listen() {
    local port=$1 i
    for i in $(seq 1 200); do
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            return 1
        fi
        sleep 0.05
    done
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
# Busy ticks of the whole machine (all CPUs) from /proc/stat: user, nice, system, irq, softirq,
# steal (a tick spent in softirq is also charged to the interrupted task's stime, so the broker's
# and the load generator's loopback processing cancels out in "other").
sys_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Waits (at most $QUIET_WAIT s) until the rest of the machine uses under $MAX_OTHER % of a core,
# sampled over one second, so that a run does not start while something else is busy.
wait_quiet() {
    local waited=0 b0 b1 pct
    while :; do
        b0=$(sys_busy_ticks)
        sleep 1
        b1=$(sys_busy_ticks)
        pct=$(( (b1 - b0) * 100 / CLK_TCK ))
        if [ "$pct" -le "$MAX_OTHER" ] || [ "$waited" -ge "$QUIET_WAIT" ]; then
            [ "$waited" -gt 0 ] && echo "   (waited ${waited}s for the machine to quieten; now ${pct}% busy)" >&2
            return 0
        fi
        waited=$((waited + 1))
    done
}
# CPU seconds (user + system) of this shell's waited-for children, from a saved `times` output
# (`times` must run in this shell, not in a command substitution's subshell).
children_cpu_secs() {
    awk 'NR == 2 {
        n = split($0, f, " "); s = 0
        for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub("s", "", ms[2]); s += ms[1] * 60 + ms[2] }
        print s
    }' "$1"
}

# start_broker NAME PORT DIR: starts the broker, sets BROKER_PID, HTTP_ADDR (Shoal).
start_broker() {
    local name=$1 port=$2 dir=$3
    HTTP_ADDR=""
    mkdir -p "$dir"
    case "$name" in
        mosquitto)
            cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 1000
max_inflight_messages 100
persistence false
max_connections -1
EOF
            if [ "$MOSQ_NODELAY" = 1 ]; then echo "set_tcp_nodelay true" >>"$dir/mosquitto.conf"; fi
            "${BROKER_CPU[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
            BROKER_PID=$!
            ;;
        shoal)
            "${BROKER_CPU[@]}" "$SHOAL" serve --data-dir "$dir/data" --store memory \
                --mqtt-listen "127.0.0.1:$port" --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth none \
                >"$dir/broker.log" 2>&1 &
            BROKER_PID=$!
            ;;
    esac
    if ! wait_listen "$port"; then
        echo "run.sh: $name did not start listening on $port; its log:" >&2
        tail -20 "$dir/broker.log" >&2
        return 1
    fi
    if [ "$name" = shoal ]; then
        local i
        for i in $(seq 1 100); do
            [ -s "$dir/data/ports.json" ] && break
            sleep 0.05
        done
        HTTP_ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$dir/data/ports.json" 2>/dev/null || true)
    fi
}

stop_broker() {
    local i
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "run.sh: broker $BROKER_PID did not stop in 5 s after SIGTERM; killing it" >&2
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# loadgen_args KEY PORT LABEL: the load generator's command line for a scenario.
loadgen_args() {
    local key=$1 port=$2 label=$3
    local common=(--port "$port" --label "$label" --duration "$DURATION" --warmup "$WARMUP" --payload 256)
    case "$key" in
        fan-in-qos*) echo fan-in "${common[@]}" --qos "${key##*qos}" --publishers 8 ;;
        fan-out-qos*) echo fan-out "${common[@]}" --qos "${key##*qos}" --subscribers 100 ;;
        p2p-qos*) echo p2p "${common[@]}" --qos "${key##*qos}" --pairs 50 ;;
        latency-qos*) echo latency "${common[@]}" --qos "${key##*qos}" --publishers 8 --subscribers 1 --rate "$RATE" ;;
        conns) echo conns --port "$port" --label "$label" --connections "$CONNS" --hold "$HOLD" --keep-alive 60 ;;
    esac
}

# run_one KEY BROKER REP: one run, retried while disturbed; appends JSON lines to $RESULTS.
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

# run_attempt KEY BROKER REP ATTEMPT: one run; appends one JSON line to $RESULTS.
run_attempt() {
    local key=$1 broker=$2 rep=$3 attempt=$4
    local dir="$WORK/$key-$broker-$rep-$attempt" port load1 rss0 cpu0 t0 t1 cpu1 rss1 hwm rss_held=0 rc=0
    port=$(free_port)
    load1=$(cut -d' ' -f1 /proc/loadavg)
    if ! start_broker "$broker" "$port" "$dir"; then
        printf '{"key":"%s","scenario":"%s","broker":"%s","rep":%s,"attempt":%s,"error":"broker did not start"}\n' \
            "$key" "${key%-qos*}" "$broker" "$rep" "$attempt" >>"$RESULTS"
        stop_broker
        return
    fi
    sleep 0.5
    rss0=$(rss_kb "$BROKER_PID")
    cpu0=$(cpu_ticks "$BROKER_PID")
    local busy0 busy1 lg0 lg1
    busy0=$(sys_busy_ticks)
    times >"$dir/times0"
    lg0=$(children_cpu_secs "$dir/times0")
    t0=$(date +%s.%N)
    # shellcheck disable=SC2207
    local args=($(loadgen_args "$key" "$port" "$broker"))
    local budget
    budget=$(python3 -c "print(int(float('$DURATION') + float('$WARMUP') + float('$HOLD') + 120))")
    echo "== [$rep/$REPEAT] $key on $broker (port $port)" >&2
    if [ "$key" = conns ]; then
        timeout "$budget" "${LOADGEN_CPU[@]}" "$LOADGEN" "${args[@]}" >"$dir/out" 2>"$dir/loadgen.log" &
        LOADGEN_PID=$!
        local i ready=0
        for i in $(seq 1 $((budget * 10))); do
            if grep -q '^READY' "$dir/out" 2>/dev/null; then ready=1; break; fi
            kill -0 "$LOADGEN_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [ "$ready" = 1 ]; then
            # Settle, then sample once a second while the connections are held.
            sleep 2
            local samples=$(( ${HOLD%.*} - 3 ))
            [ "$samples" -lt 1 ] && samples=1
            for i in $(seq 1 "$samples"); do
                rss_held=$(rss_kb "$BROKER_PID")
                sleep 1
            done
        fi
        wait "$LOADGEN_PID" || rc=$?
        LOADGEN_PID=""
    else
        timeout "$budget" "${LOADGEN_CPU[@]}" "$LOADGEN" "${args[@]}" >"$dir/out" 2>"$dir/loadgen.log" || rc=$?
    fi
    t1=$(date +%s.%N)
    cpu1=$(cpu_ticks "$BROKER_PID")
    busy1=$(sys_busy_ticks)
    times >"$dir/times1"
    lg1=$(children_cpu_secs "$dir/times1")
    rss1=$(rss_kb "$BROKER_PID")
    hwm=$(hwm_kb "$BROKER_PID")
    local alive=1
    kill -0 "$BROKER_PID" 2>/dev/null || alive=0
    if [ "$broker" = shoal ] && [ -n "$HTTP_ADDR" ]; then
        curl -s --max-time 5 "http://$HTTP_ADDR/metrics" >"$dir/metrics.txt" || true
    fi
    stop_broker
    python3 - "$dir" "$RESULTS" <<PY
import json, sys
d, results = sys.argv[1], sys.argv[2]
line = None
try:
    with open(f"{d}/out") as f:
        for l in f:
            if l.startswith("{"):
                line = json.loads(l)
except OSError:
    pass
if line is None:
    line = {"scenario": "${key%-qos*}", "error": "no JSON from the load generator (exit $rc); see loadgen.log"}
    try:
        with open(f"{d}/loadgen.log") as f:
            tail = f.read().strip().splitlines()[-3:]
        line["error"] += ": " + " / ".join(tail)
    except OSError:
        pass
wall = max(${t1:-0} - ${t0:-0}, 1e-9)
b = {
    "pid_alive_at_end": bool($alive),
    "load1": float("$load1"),
    "cpu_secs": (${cpu1:-0} - ${cpu0:-0}) / $CLK_TCK,
    "cpu_pct": (${cpu1:-0} - ${cpu0:-0}) / $CLK_TCK / wall * 100,
    # The load generator's CPU, and what everything else on the machine used meanwhile
    # (both in % of one core; "other" well above a few % means the numbers are disturbed).
    "loadgen_cpu_pct": (${lg1:-0} - ${lg0:-0}) / wall * 100,
    "other_cpu_pct": ((${busy1:-0} - ${busy0:-0}) - (${cpu1:-0} - ${cpu0:-0})) / $CLK_TCK / wall * 100
        - (${lg1:-0} - ${lg0:-0}) / wall * 100,
    "rss_before_mb": ${rss0:-0} / 1024,
    "rss_after_mb": ${rss1:-0} / 1024,
    "hwm_mb": ${hwm:-0} / 1024,
    "loadgen_exit": $rc,
}
if "${key}" == "conns" and ${rss_held:-0}:
    b["rss_held_mb"] = ${rss_held:-0} / 1024
    n = line.get("connected") or 0
    if n:
        b["kb_per_conn"] = (${rss_held:-0} - ${rss0:-0}) / n
# Warning and error lines of the broker's log, grouped by message (numbers masked).
import re, collections
kinds = collections.Counter()
levels = collections.Counter()
try:
    with open(f"{d}/broker.log", errors="replace") as f:
        for l in f:
            if "$broker" == "shoal":
                m = re.match(r"^\S+\s+(WARN|ERROR)\s+(.*?)(\s+[\w.]+=.*)?$", l.rstrip())
                if not m or "in-memory store" in m.group(2):
                    continue  # the in-memory store warning is what --store memory asks for
                level, text = m.group(1), m.group(2)
            else:
                text = l.rstrip().split(": ", 1)[-1]
                if not re.search(r"(?i)error|warning|unable|exceeded|out of memory|refused", text):
                    continue
                level = "ERROR" if re.search(r"(?i)error", text) else "WARN"
            levels[level] += 1
            kinds[re.sub(r"\d+", "N", text)[:120]] += 1
except OSError:
    pass
b["log_warnings"] = levels["WARN"]
b["log_errors"] = levels["ERROR"]
b["log_top"] = [[n, t] for t, n in kinds.most_common(3)]
try:
    m = {}
    with open(f"{d}/metrics.txt") as f:
        for l in f:
            if l and not l.startswith("#"):
                k, _, v = l.strip().rpartition(" ")
                if k:
                    m[k] = float(v)
    b["metrics"] = m
except OSError:
    pass
line.update({"key": "$key", "broker": "$broker", "rep": $rep, "attempt": $attempt, "broker_stats": b})
line["disturbed"] = b["other_cpu_pct"] > $MAX_OTHER
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
PY
    python3 - "$RESULTS" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    r = json.loads(f.read().strip().splitlines()[-1])
b = r.get("broker_stats", {})
if r.get("error"):
    msg = "error: " + r["error"]
elif r.get("scenario") == "conns":
    msg = "connected {} failed {}  RSS {:.1f} -> {:.1f} MB  {:.2f} KB/conn".format(
        r.get("connected"), r.get("failed"), b.get("rss_before_mb", 0), b.get("rss_held_mb", 0),
        b.get("kb_per_conn", 0))
else:
    lat = r.get("latency_us") or {}
    msg = "{:,.0f} deliveries/s  {:,.0f} publish/s  loss {:.2f}%  reordered {}  broker CPU {:.0f}%".format(
        r.get("msgs_per_sec", 0), r.get("publish_per_sec", 0), r.get("loss_pct", 0),
        r.get("reordered"), b.get("cpu_pct", 0))
    if lat:
        msg += "  p50 {} p99 {} us".format(lat.get("p50"), lat.get("p99"))
msg += "  (other processes {:.0f}%)".format(b.get("other_cpu_pct", 0))
print("   " + msg, file=sys.stderr)
PY
}


# ----- the runs -------------------------------------------------------------------------------

{
    printf '{"meta":"run","date":"%s","host_cpus":%s,"pin":%s,"mosquitto_nodelay":%s,"duration":%s,"warmup":%s,"rate":%s,"conns":%s,"hold":%s,"repeat":%s,' \
        "$(date -Is)" "$(nproc)" "$PIN" "$MOSQ_NODELAY" "$DURATION" "$WARMUP" "$RATE" "$CONNS" "$HOLD" "$REPEAT"
    # The work tree's commit now; the binaries may be older: their build time and hash say which.
    printf '"git_now":"%s","shoal_built":"%s","shoal_md5":"%s","mosquitto":"%s","kernel":"%s"}\n' \
        "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- host 2>/dev/null || echo '+dirty')" \
        "$(date -Is -r "$BIN/shoal")" "$(md5sum "$SHOAL" | cut -d' ' -f1)" \
        "$("$MOSQUITTO" -h 2>/dev/null | sed -n 's/^mosquitto version //p' | head -1)" "$(uname -r)"
} >>"$RESULTS"

for rep in $(seq 1 "$REPEAT"); do
    for key in "${selected[@]}"; do
        if [ $((rep % 2)) = 1 ]; then
            brokers=(mosquitto shoal)
        else
            brokers=(shoal mosquitto)
        fi
        for broker in "${brokers[@]}"; do
            run_one "$key" "$broker" "$rep"
        done
    done
done

echo >&2
report "$RESULTS"
echo
echo "raw results: $RESULTS"
