#!/usr/bin/env bash
# Device Shadow update throughput of Shoal: backend {embedded, redis} x transport {mqtt, http},
# plus the raw Redis ceiling measured in the same run on the same kind of redis-server.
#
#   tests/bench/shadow.sh                  # 10 s windows, 1 repetition
#   tests/bench/shadow.sh --quick          # smoke run: 3 s windows, small ceiling runs
#   tests/bench/shadow.sh --repeat 2 --backends redis --transports mqtt
#   tests/bench/shadow.sh --report FILE    # print the table of an earlier results file
#
# Targets (from the issue): embedded >= 20,000 updates/s over MQTT and over HTTP; Shoal on Redis
# >= 50 % of the raw Redis ceiling (redis-benchmark running the equivalent CAS Lua script).
#
# Method
# * Every run gets a fresh shoal (fresh data dir; `--store embedded`, or `--store
#   redis://127.0.0.1:PORT/0` on a fresh `redis-server --save '' --appendonly no` on a fresh
#   port), and the load generator tests/src/bin/shoal-shadowbench.rs (see its doc comment):
#   mqtt: 32 clients x 8 requests in flight, 8 things per client (256 things), QoS 1;
#   http: 64 keep-alive connections x 1 request in flight, 8 things per connection (512 things).
#   Each request is a reported-state update of the classic shadow with a fresh clientToken;
#   updates/s counts accepted updates inside the measured window (after a warm-up).
# * Embedded: the redb file lives under the work directory (mktemp in /tmp, a real ext4 disk
#   here), and every batch is committed with fsync (Durability::Immediate), as in production.
# * Raw Redis ceiling, once per repetition, on a fresh redis-server with the same options:
#   `redis-benchmark -c 50 -n N -r 1000` (no pipelining) running
#     - evalsha-cas: EVALSHA of a script doing what one Shoal update costs Redis: HMGET rev+doc,
#       compare the revision, HINCRBY rev, HSET doc (a stored shadow as Shoal writes it
#       for these updates, ~350 bytes), ZADD to an index (Shoal's classic shadow skips the ZADD,
#       so this ceiling is, if anything, slightly low). This is THE ceiling the ratio uses.
#     - eval-cas: the same script sent with EVAL (script text hashed on every call), reference.
#     - hset: plain `HSET key doc <json>`, reference.
#   Shoal itself needs two round trips per update (HMGET, then EVALSHA of its CAS script; see
#   host/store/src/redis_shadows.rs), so "ceiling" is one script call per update.
# * CPU accounting (the machine has 2 cores, shared by redis-server, shoal and the load
#   generator; nothing is pinned by default): redis-server is single-threaded, so its ceiling is
#   one core; in the ceiling runs redis-benchmark (also single-threaded) takes part of the other
#   core, so redis-server has its core to itself. In the Shoal runs redis-server competes with
#   shoal and the load generator for the same two cores. To make that visible, the load
#   generator samples the CPU time (utime+stime, /proc/PID/stat) of shoal, redis-server and
#   itself over exactly the measured window (`cpu.*` columns, % of one core; 200 = both cores)
#   and the whole machine's busy time (/proc/stat); `other` = machine - those three (loopback
#   softirq time shows up there too, a few %). For the ceiling the same is sampled over the
#   redis-benchmark run. The table derives "redis CPU us/update" (redis-server CPU time per
#   accepted update: the Redis-side cost, independent of who else used the cores) and shows
#   the ratio both raw (updates/s / ceiling ops/s) and at equal Redis CPU (Redis-side cost of
#   one ceiling op / Redis-side cost of one Shoal update), which says how much of the gap is
#   Redis work per update rather than CPU taken by shoal and the load generator.
#   --pin puts redis-server on CPU 1 and shoal + load generator (or redis-benchmark) on CPU 0.
# * Quiet machine: before each run the script waits (up to --quiet-wait s) until the machine is
#   under --max-other-cpu % of a core busy (sampled over 1 s); a run during which other
#   processes used more than that is marked "disturbed", retried (--retries), and left out of
#   the table when a clean run exists.
# * The binaries are built if missing (--rebuild forces it) and copied into the work directory,
#   so a rebuild elsewhere during the run cannot swap them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAIN=${TOOLCHAIN:-+1.97.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}
REDIS_CLI=${REDIS_CLI:-redis-cli}

BACKENDS=embedded,redis
TRANSPORTS=mqtt,http
REPEAT=1
QUICK=0
PIN=0
REBUILD=0
DURATION=""
WARMUP=""
MQTT_CLIENTS=32
INFLIGHT=8
HTTP_CLIENTS=64
HTTP_CLIENT=raw
THINGS=8
QOS=1
CEILING_N=""
CEILING_C=50
RESULTS=""
REPORT=""
KEEP=0
MAX_OTHER=25
QUIET_WAIT=120
RETRIES=2

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --quick             3 s windows (1 s warm-up), 100000-request ceiling runs
  --repeat R          repetitions; the table shows medians (default 1)
  --duration S        measured window per run in seconds (default 10, quick 3)
  --warmup S          warm-up before the window (default 2, quick 1)
  --backends LIST     embedded,redis (default both)
  --transports LIST   mqtt,http (default both)
  --mqtt-clients N    MQTT clients (default 32)
  --inflight W        requests in flight per MQTT client, <= 10 (default 8)
  --http-clients N    HTTP keep-alive connections (default 64)
  --http-client C     the load generator's HTTP client: raw (default) or hyper
  --things K          things per client / connection (default 8)
  --qos Q             MQTT request and subscription QoS (default 1)
  --ceiling-n N       requests per redis-benchmark test (default 300000, quick 100000)
  --ceiling-c N       redis-benchmark connections (default 50)
  --pin               redis-server on CPU 1, everything else on CPU 0
  --rebuild           build the binaries even when they exist
  --results FILE      JSON lines output (default tests/bench/results/shadow-DATE.jsonl)
  --report FILE       only print the table of an existing results file
  --keep              keep the work directory (logs, data)
  --max-other-cpu P   runs during which other processes used more than P % of a core are
                      marked disturbed and retried (default 25)
  --quiet-wait S      before each run, wait up to S s for the machine to be that quiet (120)
  --retries N         retries of a disturbed run (default 2)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --backends) BACKENDS=$2; shift ;;
        --transports) TRANSPORTS=$2; shift ;;
        --mqtt-clients) MQTT_CLIENTS=$2; shift ;;
        --inflight) INFLIGHT=$2; shift ;;
        --http-clients) HTTP_CLIENTS=$2; shift ;;
        --http-client) HTTP_CLIENT=$2; shift ;;
        --things) THINGS=$2; shift ;;
        --qos) QOS=$2; shift ;;
        --ceiling-n) CEILING_N=$2; shift ;;
        --ceiling-c) CEILING_C=$2; shift ;;
        --pin) PIN=1 ;;
        --rebuild) REBUILD=1 ;;
        --results) RESULTS=$2; shift ;;
        --report) REPORT=$2; shift ;;
        --keep) KEEP=1 ;;
        --max-other-cpu) MAX_OTHER=$2; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift ;;
        --retries) RETRIES=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "shadow.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

command -v python3 >/dev/null || { echo "shadow.sh: python3 is required (JSON and the table)" >&2; exit 2; }

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
clean = {r["key"] for r in every if not r.get("disturbed") and not r.get("error")}
runs = [r for r in every if r["key"] not in clean or (not r.get("disturbed") and not r.get("error"))]
excluded = len(every) - len(runs)
by = {}
order = []
for r in runs:
    if r["key"] not in by:
        order.append(r["key"])
    by.setdefault(r["key"], []).append(r)

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

def fmt(v, d=0):
    if v is None:
        return "-"
    return f"{v:,.{d}f}"

def us_per_op(rs, cpu_path, rate_path):
    vals = []
    for r in rs:
        c, n = get(r, cpu_path), get(r, rate_path)
        if isinstance(c, (int, float)) and n:
            vals.append(c / 100 / n * 1e6)
    return statistics.median(vals) if vals else None

ceil_keys = [k for k in order if k.startswith("ceiling-")]
shoal_keys = [k for k in order if not k.startswith("ceiling-")]
ceiling = med(by.get("ceiling-evalsha-cas", []), "rps")
ceiling_us = us_per_op(by.get("ceiling-evalsha-cas", []), "cpu_pct.redis", "rps")

out = []
hdr = ("backend", "transport", "updates/s", "p50 us", "p90 us", "p99 us", "max us", "errors",
       "shoal CPU%", "redis CPU%", "bench CPU%", "other CPU%", "steal%", "redis us/upd", "shoal us/upd", "target", "verdict")
out.append(hdr)
notes = []
for k in shoal_keys:
    rs = by[k]
    backend, transport = k.split("-", 1)
    ups = med(rs, "updates_per_sec")
    errs = {}
    for r in rs:
        for e, n in (r.get("errors") or {}).items():
            errs[e] = errs.get(e, 0) + n
    err_s = ",".join(f"{e}={n}" for e, n in sorted(errs.items())) or "0"
    if backend == "embedded":
        target = "20,000/s"
        verdict = "-" if ups is None else ("PASS" if ups >= 20000 else "MISS")
    else:
        target = "50% of ceiling"
        if ups is not None and ceiling:
            ratio = ups / ceiling
            verdict = f"{ratio * 100:.0f}% {'PASS' if ratio >= 0.5 else 'MISS'}"
        else:
            verdict = "-"
    out.append((backend, transport, fmt(ups), fmt(med(rs, "latency_us.p50")), fmt(med(rs, "latency_us.p90")),
                fmt(med(rs, "latency_us.p99")), fmt(med(rs, "latency_us.max")), err_s,
                fmt(med(rs, "cpu_pct.shoal")), fmt(med(rs, "cpu_pct.redis")), fmt(med(rs, "cpu_pct.bench")),
                fmt(med(rs, "cpu_pct.other")), fmt(med(rs, "cpu_pct.steal")),
                fmt(us_per_op(rs, "cpu_pct.redis", "updates_per_sec"), 1),
                fmt(us_per_op(rs, "cpu_pct.shoal", "updates_per_sec"), 1), target, verdict))
    for r in rs:
        if r.get("error"):
            notes.append(f"{k} rep {r.get('rep')}: ERROR {r['error']}")
        for s in (r.get("error_samples") or [])[:2]:
            notes.append(f"{k} rep {r.get('rep')}: {s}")
        if r.get("shoal_log_warnings"):
            notes.append(f"{k} rep {r.get('rep')}: shoal log: {r['shoal_log_warnings']} warning/error lines, e.g. {r.get('shoal_log_sample')}")
        if r.get("disturbed"):
            notes.append(f"{k} rep {r.get('rep')}: only disturbed runs (other processes {get(r, 'cpu_pct.other')}% of a core)")
        calls = r.get("redis_calls_per_update")
        if calls and r.get("rep") == rs[0].get("rep"):
            notes.append(f"{k}: Redis commands per accepted update (INFO commandstats, Lua-internal included): "
                         + ", ".join(f"{c} {v:.2f}" for c, v in sorted(calls.items())))

widths = [max(len(str(row[i])) for row in out) for i in range(len(hdr))]
def show(table, widths):
    for i, row in enumerate(table):
        print("| " + " | ".join(str(c).ljust(widths[j]) if j < 2 else str(c).rjust(widths[j]) for j, c in enumerate(row)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
show(out, widths)

if ceil_keys:
    print()
    ct = [("raw Redis (redis-benchmark)", "ops/s", "p50 ms", "p99 ms", "redis CPU%", "client CPU%", "other CPU%", "steal%", "redis us/op")]
    for k in ceil_keys:
        rs = by[k]
        ct.append((k.removeprefix("ceiling-"), fmt(med(rs, "rps")), fmt(med(rs, "p50_ms"), 3), fmt(med(rs, "p99_ms"), 3),
                   fmt(med(rs, "cpu_pct.redis")), fmt(med(rs, "cpu_pct.client")), fmt(med(rs, "cpu_pct.other")),
                   fmt(med(rs, "cpu_pct.steal")), fmt(us_per_op(rs, "cpu_pct.redis", "rps"), 1)))
        for r in rs:
            if r.get("error"):
                notes.append(f"{k} rep {r.get('rep')}: ERROR {r['error']}")
            if r.get("disturbed"):
                notes.append(f"{k} rep {r.get('rep')}: only disturbed runs")
    show(ct, [max(len(str(row[i])) for row in ct) for i in range(len(ct[0]))])
    if ceiling:
        print()
        for k in shoal_keys:
            if not k.startswith("redis-"):
                continue
            rs = by[k]
            ups = med(rs, "updates_per_sec")
            shoal_us = us_per_op(rs, "cpu_pct.redis", "updates_per_sec")
            eq = f"{ceiling_us / shoal_us * 100:.0f}%" if ceiling_us and shoal_us else "-"
            # The same ratio within each repetition (the machine's speed drifts between them).
            ceil_by_rep = {r["rep"]: r["rps"] for r in by.get("ceiling-evalsha-cas", []) if r.get("rps")}
            per_rep = [f"rep {r['rep']}: {r['updates_per_sec'] / ceil_by_rep[r['rep']] * 100:.0f}%"
                       for r in rs if r.get("updates_per_sec") and r["rep"] in ceil_by_rep]
            print(f"Shoal-on-Redis {k.split('-', 1)[1]}: {fmt(ups)} updates/s / ceiling {fmt(ceiling)} EVALSHA-CAS/s = "
                  f"{(ups or 0) / ceiling * 100:.0f}% (target 50%; per repetition: {', '.join(per_rep) or '-'}); "
                  f"at equal Redis CPU (ceiling {fmt(ceiling_us, 1)} us/op vs Shoal {fmt(shoal_us, 1)} us/update): {eq}")

for m in meta:
    print(f"\n{m.get('meta')}: {json.dumps({k: v for k, v in m.items() if k != 'meta'})}")
counts = sorted({len(v) for v in by.values()})
print(f"\nEach cell: median of {' or '.join(map(str, counts))} run(s). CPU% = % of one core over the measured window (2 cores = 200).")
if excluded:
    notes.insert(0, f"{excluded} disturbed or failed run(s) left out (see the raw file)")
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
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
    CEILING_N=${CEILING_N:-100000}
else
    DURATION=${DURATION:-10}
    WARMUP=${WARMUP:-2}
    CEILING_N=${CEILING_N:-300000}
fi

IFS=, read -r -a backends <<<"$BACKENDS"
IFS=, read -r -a transports <<<"$TRANSPORTS"
for b in "${backends[@]}"; do
    case "$b" in embedded|redis) ;; *) echo "shadow.sh: unknown backend $b" >&2; exit 2 ;; esac
done
for t in "${transports[@]}"; do
    case "$t" in mqtt|http) ;; *) echo "shadow.sh: unknown transport $t" >&2; exit 2 ;; esac
done
NEED_REDIS=0
for b in "${backends[@]}"; do [ "$b" = redis ] && NEED_REDIS=1; done
if [ "$NEED_REDIS" = 1 ]; then
    for c in "$REDIS_SERVER" "$REDIS_BENCHMARK" "$REDIS_CLI"; do
        command -v "$c" >/dev/null || { echo "shadow.sh: $c not found (apt-get install redis-server redis-tools)" >&2; exit 2; }
    done
fi

BIN=$CARGO_TARGET_DIR/release
if [ "$REBUILD" = 1 ] || [ ! -x "$BIN/shoal" ] || [ ! -x "$BIN/shoal-shadowbench" ]; then
    echo "== building release binaries" >&2
    (cd "$ROOT" && cargo "$TOOLCHAIN" build --release -p shoal-server -p shoal-tests)
fi

WORK=$(mktemp -d /tmp/shoal-shadowbench.XXXXXX)
cp "$BIN/shoal" "$BIN/shoal-shadowbench" "$WORK/"
SHOAL=$WORK/shoal
BENCH=$WORK/shoal-shadowbench

if [ -z "$RESULTS" ]; then
    mkdir -p "$HERE/results"
    RESULTS=$HERE/results/shadow-$(date +%Y%m%d-%H%M%S).jsonl
fi
: >"$RESULTS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SHOAL_PID=""
REDIS_PID=""
cleanup() {
    [ -n "$SHOAL_PID" ] && kill -KILL "$SHOAL_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill -KILL "$REDIS_PID" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

if [ "$PIN" = 1 ]; then
    REDIS_CPU=(taskset -c 1)
    REST_CPU=(taskset -c 0)
else
    REDIS_CPU=()
    REST_CPU=()
fi

CLK_TCK=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
sys_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
sys_steal_ticks() { awk '/^cpu / { print $9; exit }' /proc/stat; }
children_cpu_secs() {
    awk 'NR == 2 {
        n = split($0, f, " "); s = 0
        for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub("s", "", ms[2]); s += ms[1] * 60 + ms[2] }
        print s
    }' "$1"
}

# Waits (at most $QUIET_WAIT s) until the machine uses under $MAX_OTHER % of a core.
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

# start_redis DIR: a fresh redis-server on a fresh port; sets REDIS_PID, REDIS_PORT.
start_redis() {
    local dir=$1 i
    REDIS_PORT=$(free_port)
    mkdir -p "$dir"
    "${REDIS_CPU[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$dir" --logfile "$dir/redis.log" &
    REDIS_PID=$!
    for i in $(seq 1 100); do
        if "$REDIS_CLI" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
            return 0
        fi
        sleep 0.05
    done
    echo "shadow.sh: redis-server did not answer on $REDIS_PORT" >&2
    return 1
}

stop_redis() {
    [ -n "$REDIS_PID" ] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
}

# start_shoal DIR STORE: sets SHOAL_PID, MQTT_PORT, HTTP_PORT.
start_shoal() {
    local dir=$1 store=$2 i
    mkdir -p "$dir/data"
    "${REST_CPU[@]}" "$SHOAL" serve --data-dir "$dir/data" --store "$store" \
        --mqtt-listen 127.0.0.1:0 --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth none >"$dir/shoal.log" 2>&1 &
    SHOAL_PID=$!
    for i in $(seq 1 200); do
        [ -s "$dir/data/ports.json" ] && break
        kill -0 "$SHOAL_PID" 2>/dev/null || break
        sleep 0.05
    done
    if [ ! -s "$dir/data/ports.json" ]; then
        echo "shadow.sh: shoal did not start; its log:" >&2
        tail -20 "$dir/shoal.log" >&2
        return 1
    fi
    read -r MQTT_PORT HTTP_PORT < <(python3 -c 'import json, sys
p = json.load(open(sys.argv[1]))
print(p["mqtt"].rsplit(":", 1)[1], p["http"].rsplit(":", 1)[1])' "$dir/data/ports.json")
}

stop_shoal() {
    local i
    [ -n "$SHOAL_PID" ] || return 0
    kill -TERM "$SHOAL_PID" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$SHOAL_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$SHOAL_PID" 2>/dev/null || true
    wait "$SHOAL_PID" 2>/dev/null || true
    SHOAL_PID=""
}

commandstats() {
    "$REDIS_CLI" -p "$REDIS_PORT" info commandstats 2>/dev/null | tr -d '\r' | grep '^cmdstat_' || true
}

# run_shoal BACKEND TRANSPORT REP ATTEMPT: one Shoal run; appends one JSON line to $RESULTS.
run_shoal() {
    local backend=$1 transport=$2 rep=$3 attempt=$4
    local key="$backend-$transport" dir="$WORK/$backend-$transport-$rep-$attempt" store port rc=0
    mkdir -p "$dir"
    local watch=()
    if [ "$backend" = redis ]; then
        if ! start_redis "$dir/redis"; then
            printf '{"key":"%s","rep":%s,"attempt":%s,"error":"redis-server did not start"}\n' "$key" "$rep" "$attempt" >>"$RESULTS"
            stop_redis
            return
        fi
        store="redis://127.0.0.1:$REDIS_PORT/0"
    else
        store=embedded
    fi
    if ! start_shoal "$dir" "$store"; then
        printf '{"key":"%s","rep":%s,"attempt":%s,"error":"shoal did not start"}\n' "$key" "$rep" "$attempt" >>"$RESULTS"
        stop_shoal
        stop_redis
        return
    fi
    watch+=(--watch "shoal=$SHOAL_PID")
    [ -n "$REDIS_PID" ] && watch+=(--watch "redis=$REDIS_PID")
    sleep 0.5
    [ -n "$REDIS_PID" ] && commandstats >"$dir/cmdstats0"
    local args
    if [ "$transport" = mqtt ]; then
        port=$MQTT_PORT
        args=(mqtt --clients "$MQTT_CLIENTS" --inflight "$INFLIGHT" --qos "$QOS")
    else
        port=$HTTP_PORT
        args=(http --clients "$HTTP_CLIENTS" --client "$HTTP_CLIENT")
    fi
    echo "== [$rep/$REPEAT] $backend over $transport" >&2
    timeout $(( ${DURATION%.*} + ${WARMUP%.*} + 90 )) "${REST_CPU[@]}" "$BENCH" "${args[@]}" --port "$port" \
        --label "$backend" --duration "$DURATION" --warmup "$WARMUP" --things "$THINGS" \
        --clk-tck "$CLK_TCK" "${watch[@]}" >"$dir/out" 2>"$dir/bench.log" || rc=$?
    [ -n "$REDIS_PID" ] && commandstats >"$dir/cmdstats1"
    [ -n "$REDIS_PID" ] && "$REDIS_CLI" -p "$REDIS_PORT" --raw hget "shoal:shadow:bench-0-0" doc >"$dir/sample-doc" 2>/dev/null || true
    stop_shoal
    stop_redis
    python3 - "$dir" "$RESULTS" "$key" "$backend" "$transport" "$rep" "$attempt" "$rc" "$MAX_OTHER" <<'PY'
import json, os, re, sys
d, results, key, backend, transport, rep, attempt, rc, max_other = sys.argv[1:]
line = None
try:
    with open(f"{d}/out") as f:
        for l in f:
            if l.startswith("{"):
                line = json.loads(l)
except OSError:
    pass
if line is None:
    line = {"error": f"no JSON from the load generator (exit {rc})"}
    try:
        with open(f"{d}/bench.log") as f:
            line["error"] += ": " + " / ".join(f.read().strip().splitlines()[-3:])
    except OSError:
        pass
def stats(p):
    out = {}
    try:
        with open(p) as f:
            for l in f:
                m = re.match(r"cmdstat_(\S+?):calls=(\d+)", l)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out
s0, s1 = stats(f"{d}/cmdstats0"), stats(f"{d}/cmdstats1")
acc = line.get("accepted") or 0
if s1 and acc:
    calls = {c: (n - s0.get(c, 0)) / acc for c, n in s1.items()}
    line["redis_calls_per_update"] = {c: v for c, v in calls.items() if v >= 0.01}
try:
    with open(f"{d}/sample-doc") as f:
        line["stored_doc_bytes"] = len(f.read().rstrip("\n"))
except OSError:
    pass
warn = []
try:
    with open(f"{d}/shoal.log", errors="replace") as f:
        for l in f:
            if re.search(r"\s(WARN|ERROR)\s", l):
                warn.append(l.strip()[:200])
except OSError:
    pass
line["shoal_log_warnings"] = len(warn)
if warn:
    line["shoal_log_sample"] = warn[0]
other = (line.get("cpu_pct") or {}).get("other")
line.update({"key": key, "backend": backend, "transport": transport, "rep": int(rep), "attempt": int(attempt)})
line["disturbed"] = isinstance(other, (int, float)) and other > float(max_other)
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
lat = line.get("latency_us") or {}
cpu = line.get("cpu_pct") or {}
msg = line.get("error") or "{:,.0f} updates/s  p50 {} p99 {} us  errors {}  CPU shoal {} redis {} bench {} other {}".format(
    line.get("updates_per_sec", 0), lat.get("p50"), lat.get("p99"), line.get("errors"),
    cpu.get("shoal"), cpu.get("redis"), cpu.get("bench"), cpu.get("other"))
print("   " + msg + ("  (disturbed)" if line["disturbed"] else ""), file=sys.stderr)
PY
}

# The ceiling workload: what one Shoal update asks of Redis, as one script call (see the header).
CAS_SCRIPT="local cur = redis.call('HMGET', KEYS[1], 'rev', 'doc')
local rev = cur[1] or '0'
if rev == ARGV[1] then
  return {0, rev, cur[2]}
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return {1}"
# A stored shadow exactly as Shoal writes it for shoal-shadowbench's updates (~350 bytes).
DOC='{"desired":null,"reported":{"state":{"fw":"1.2.3","humidity":43,"seq":123456,"status":"ok","temperature":21.7},"metadata":{"fw":{"timestamp":1795675742},"humidity":{"timestamp":1795675742},"seq":{"timestamp":1795675742},"status":{"timestamp":1795675742},"temperature":{"timestamp":1795675742}}},"version":1234,"updated_secs":1795675742,"deleted":false}'

# run_ceiling TEST REP ATTEMPT: one redis-benchmark test on a fresh redis-server.
run_ceiling() {
    local test=$1 rep=$2 attempt=$3
    local key="ceiling-$test" rc=0 cmd
    local dir="$WORK/$key-$rep-$attempt"
    if ! start_redis "$dir"; then
        printf '{"key":"%s","rep":%s,"attempt":%s,"error":"redis-server did not start"}\n' "$key" "$rep" "$attempt" >>"$RESULTS"
        stop_redis
        return
    fi
    case "$test" in
        evalsha-cas)
            local sha
            sha=$("$REDIS_CLI" -p "$REDIS_PORT" script load "$CAS_SCRIPT")
            cmd=(EVALSHA "$sha" 2 "shoal:shadow:bench-__rand_int__" "shoal:shadows:bench-__rand_int__" -1 "$DOC" name)
            ;;
        eval-cas)
            cmd=(EVAL "$CAS_SCRIPT" 2 "shoal:shadow:bench-__rand_int__" "shoal:shadows:bench-__rand_int__" -1 "$DOC" name)
            ;;
        hset)
            cmd=(HSET "shoal:shadow:bench-__rand_int__" doc "$DOC")
            ;;
    esac
    echo "== [$rep/$REPEAT] raw Redis ceiling: $test" >&2
    commandstats >"$dir/cmdstats0"
    local r0 b0 s0 t0 r1 b1 s1 t1 lg0 lg1
    times >"$dir/times0"
    lg0=$(children_cpu_secs "$dir/times0")
    r0=$(cpu_ticks "$REDIS_PID")
    b0=$(sys_busy_ticks)
    s0=$(sys_steal_ticks)
    t0=$(date +%s.%N)
    "${REST_CPU[@]}" "$REDIS_BENCHMARK" -h 127.0.0.1 -p "$REDIS_PORT" -c "$CEILING_C" -n "$CEILING_N" -r 1000 \
        --csv "${cmd[@]}" >"$dir/out" 2>"$dir/bench.log" || rc=$?
    t1=$(date +%s.%N)
    r1=$(cpu_ticks "$REDIS_PID")
    b1=$(sys_busy_ticks)
    s1=$(sys_steal_ticks)
    times >"$dir/times1"
    lg1=$(children_cpu_secs "$dir/times1")
    commandstats >"$dir/cmdstats1"
    stop_redis
    python3 - "$dir" "$RESULTS" "$key" "$test" "$rep" "$attempt" "$rc" "$MAX_OTHER" "$CEILING_N" "$CEILING_C" \
        "$r0" "$r1" "$b0" "$b1" "$s0" "$s1" "$t0" "$t1" "$lg0" "$lg1" "$CLK_TCK" <<'PY'
import csv, json, re, sys
(d, results, key, test, rep, attempt, rc, max_other, n, c, r0, r1, b0, b1, s0, s1, t0, t1, lg0, lg1, tck) = sys.argv[1:]
tck = float(tck)
wall = max(float(t1) - float(t0), 1e-9)
line = {"key": key, "test": test, "rep": int(rep), "attempt": int(attempt), "requests": int(n), "connections": int(c)}
try:
    with open(f"{d}/out") as f:
        lines = [l.strip() for l in f if l.strip()]
    # The test name (the command) is not escaped in the CSV: take the numeric fields from the end.
    hdr = next(csv.reader([lines[0]]))
    vals = lines[-1].rstrip('"').split('","')[-(len(hdr) - 1):]
    row = dict(zip(hdr[1:], vals))
    line["rps"] = float(row["rps"])
    line["p50_ms"] = float(row["p50_latency_ms"])
    line["p99_ms"] = float(row["p99_latency_ms"])
except Exception as e:
    line["error"] = f"redis-benchmark output not understood (exit {rc}): {e}"
redis = (int(r1) - int(r0)) / tck / wall * 100
client = (float(lg1) - float(lg0)) / wall * 100
machine = (int(b1) - int(b0)) / tck / wall * 100
line["cpu_pct"] = {"redis": round(redis, 1), "client": round(client, 1), "machine": round(machine, 1),
                   "other": round(machine - redis - client, 1),
                   "steal": round((int(s1) - int(s0)) / tck / wall * 100, 1)}
def stats(p):
    out = {}
    with open(p) as f:
        for l in f:
            m = re.match(r"cmdstat_(\S+?):calls=(\d+)", l)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out
try:
    s0, s1 = stats(f"{d}/cmdstats0"), stats(f"{d}/cmdstats1")
    line["redis_calls"] = {k: v - s0.get(k, 0) for k, v in s1.items() if v - s0.get(k, 0) > 0}
except OSError:
    pass
line["disturbed"] = line["cpu_pct"]["other"] > float(max_other)
with open(results, "a") as f:
    f.write(json.dumps(line) + "\n")
msg = line.get("error") or "{:,.0f} ops/s  p50 {} p99 {} ms  CPU redis {} client {} other {}".format(
    line["rps"], line["p50_ms"], line["p99_ms"], line["cpu_pct"]["redis"], line["cpu_pct"]["client"], line["cpu_pct"]["other"])
print("   " + msg + ("  (disturbed)" if line["disturbed"] else ""), file=sys.stderr)
PY
}

# retried KIND ARGS...: runs `run_KIND ARGS... ATTEMPT`, again while the result is disturbed.
retried() {
    local kind=$1 attempt
    shift
    for attempt in $(seq 1 $((RETRIES + 1))); do
        wait_quiet
        "run_$kind" "$@" "$attempt"
        if tail -n1 "$RESULTS" | python3 -c 'import json, sys; sys.exit(1 if json.loads(sys.stdin.read()).get("disturbed") else 0)'; then
            return 0
        fi
        echo "   disturbed by other processes; $([ "$attempt" -le "$RETRIES" ] && echo retrying || echo giving up)" >&2
    done
}

# ----- the runs -------------------------------------------------------------------------------

{
    printf '{"meta":"run","date":"%s","host_cpus":%s,"pin":%s,"duration":%s,"warmup":%s,"repeat":%s,' \
        "$(date -Is)" "$(nproc)" "$PIN" "$DURATION" "$WARMUP" "$REPEAT"
    printf '"mqtt_clients":%s,"inflight":%s,"http_clients":%s,"things_per_client":%s,"qos":%s,"ceiling_n":%s,"ceiling_c":%s,' \
        "$MQTT_CLIENTS" "$INFLIGHT" "$HTTP_CLIENTS" "$THINGS" "$QOS" "$CEILING_N" "$CEILING_C"
    printf '"git_now":"%s","shoal_built":"%s","shoal_md5":"%s","redis":"%s","kernel":"%s"}\n' \
        "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- host 2>/dev/null || echo '+dirty')" \
        "$(date -Is -r "$BIN/shoal")" "$(md5sum "$SHOAL" | cut -d' ' -f1)" \
        "$("$REDIS_SERVER" --version 2>/dev/null | sed -n 's/.*v=\([0-9.]*\).*/\1/p')" "$(uname -r)"
} >>"$RESULTS"

for rep in $(seq 1 "$REPEAT"); do
    # Alternate the order between repetitions so that drift does not favour one configuration.
    combos=()
    for b in "${backends[@]}"; do
        for t in "${transports[@]}"; do combos+=("$b $t"); done
    done
    if [ "$NEED_REDIS" = 1 ]; then
        combos+=("ceiling evalsha-cas" "ceiling eval-cas" "ceiling hset")
    fi
    if [ $((rep % 2)) = 0 ]; then
        rev=()
        for ((i = ${#combos[@]} - 1; i >= 0; i--)); do rev+=("${combos[$i]}"); done
        combos=("${rev[@]}")
    fi
    for combo in "${combos[@]}"; do
        read -r a b <<<"$combo"
        if [ "$a" = ceiling ]; then
            retried ceiling "$b" "$rep"
        else
            retried shoal "$a" "$b" "$rep"
        fi
    done
done

echo >&2
report "$RESULTS"
echo
echo "raw results: $RESULTS"
