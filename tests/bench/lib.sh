# Shared helpers of the identity, plugin and rules benchmarks (tests/bench/auth.sh, tls.sh,
# plugin.sh, thread-cpu.sh, and the instruction counts sql-instructions.sh and
# inline-rules-instructions.sh): the same measurement and disturbance handling as
# tests/bench/run.sh (which keeps its own copy).
# Source it after setting MAX_OTHER (% of a core) and QUIET_WAIT (s); it uses BROKER_PID.
# shellcheck shell=bash

CLK_TCK=$(getconf CLK_TCK)
BROKER_PID=""

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

# Waits for Shoal's DIR/ports.json and prints the address of listener $2 (mqtt, mqtts, http).
shoal_addr() {
    local dir=$1 name=$2 i
    for i in $(seq 1 200); do
        [ -s "$dir/ports.json" ] && break
        kill -0 "$BROKER_PID" 2>/dev/null || return 1
        sleep 0.05
    done
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$dir/ports.json" "$name"
}

# POSTs JSON (file $3, or stdin when "-") to Shoal's HTTP API at $1 (host:port), path $2; fails
# (printing the answer) unless the status is 2xx.
shoal_post() {
    local addr=$1 path=$2 body=$3 out code
    out=$(mktemp)
    code=$(curl -s -o "$out" -w '%{http_code}' --max-time 10 -X POST -H 'content-type: application/json' \
        --data-binary "@$body" "http://$addr$path") || code=000
    if [ "${code:0:1}" != 2 ]; then
        echo "POST $path: HTTP $code: $(head -c 400 "$out")" >&2
        rm -f "$out"
        return 1
    fi
    cat "$out"
    rm -f "$out"
}

# utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Busy ticks of the whole machine (all CPUs) from /proc/stat: user, nice, system, irq, softirq,
# steal.
sys_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Waits (at most $QUIET_WAIT s) until the rest of the machine uses under $MAX_OTHER % of a core,
# sampled over one second, so that a run does not start while something else is busy.
wait_quiet() {
    local waited=0 b0 b1 pct
    while :; do
        b0=$(sys_busy_ticks)
        sleep 1
        b1=$(sys_busy_ticks)
        pct=$(((b1 - b0) * 100 / CLK_TCK))
        if [ "$pct" -le "$MAX_OTHER" ] || [ "$waited" -ge "$QUIET_WAIT" ]; then
            [ "$waited" -gt 0 ] && echo "   (waited ${waited}s for the machine to quieten; now ${pct}% busy)" >&2
            return 0
        fi
        waited=$((waited + 1))
    done
}

# CPU seconds (user + system) of this shell's waited-for children, from a saved `times` output.
children_cpu_secs() {
    awk 'NR == 2 {
        n = split($0, f, " "); s = 0
        for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub("s", "", ms[2]); s += ms[1] * 60 + ms[2] }
        print s
    }' "$1"
}

stop_broker() {
    local i
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "broker $BROKER_PID did not stop in 5 s after SIGTERM; killing it" >&2
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# measured DIR BUDGET CMD...: runs the load generator command (stdout to DIR/out, stderr to
# DIR/loadgen.log) under `timeout BUDGET` and writes DIR/stats.json: the broker's CPU over the
# run (% of one core, and seconds), the load generator's, and what every other process used
# meanwhile (`other_cpu_pct`; well above a few % means the run was disturbed).
measured() {
    local dir=$1 budget=$2
    shift 2
    local c0 c1 b0 b1 l0 l1 t0 t1 rc=0 alive=1
    c0=$(cpu_ticks "$BROKER_PID")
    b0=$(sys_busy_ticks)
    times >"$dir/times0"
    l0=$(children_cpu_secs "$dir/times0")
    t0=$(date +%s.%N)
    timeout "$budget" "$@" >"$dir/out" 2>"$dir/loadgen.log" || rc=$?
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$BROKER_PID")
    b1=$(sys_busy_ticks)
    times >"$dir/times1"
    l1=$(children_cpu_secs "$dir/times1")
    kill -0 "$BROKER_PID" 2>/dev/null || alive=0
    python3 - "$dir/stats.json" <<PY
import json, sys
wall = max(${t1:-0} - ${t0:-0}, 1e-9)
broker = (${c1:-0} - ${c0:-0}) / $CLK_TCK
loadgen = ${l1:-0} - ${l0:-0}
busy = (${b1:-0} - ${b0:-0}) / $CLK_TCK
json.dump({
    "wall_secs": wall,
    "cpu_secs": broker,
    "cpu_pct": broker / wall * 100,
    "loadgen_cpu_pct": loadgen / wall * 100,
    "other_cpu_pct": (busy - broker - loadgen) / wall * 100,
    "loadgen_exit": $rc,
    "pid_alive_at_end": bool($alive),
    "hwm_mb": $(hwm_kb "$BROKER_PID") / 1024,
}, open(sys.argv[1], "w"))
PY
}

# Prints the Prometheus text of Shoal's /metrics as a JSON object {name{labels}: value}.
shoal_metrics_json() {
    curl -s --max-time 5 "http://$1/metrics" | python3 -c '
import json, sys
m = {}
for l in sys.stdin:
    if l.strip() and not l.startswith("#"):
        k, _, v = l.strip().rpartition(" ")
        try:
            m[k] = float(v)
        except ValueError:
            pass
print(json.dumps(m))'
}

# Writes the rules (and uploads the plugin) of the rules/plugin benchmarks (tests/bench/plugin.sh,
# tests/bench/thread-cpu.sh) to the Shoal whose HTTP API is at $2. $1: none, plugin (the rule
# `SELECT * FROM 'bench/#'` calling plugin $4, the threshold plugin on `temp` > -15) or rules10
# (nine rules `SELECT temp, topic(2) AS dev ... WHERE temp > N` / `temp < -100` that never fire
# on the load's -20.5, and one that republishes every message to rollup/${topic(2)}). $3: a
# scratch directory for the rule files.
bench_rules() {
    local mode=$1 http=$2 work=$3 wasm=${4:-} i where config
    case "$mode" in
        plugin)
            config=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("{\"settings\":[[\"field\",\"temp\"],[\"max\",\"-15\"]]}"))')
            curl -sf -X POST -H 'content-type: application/wasm' --data-binary "@$wasm" \
                "http://$http/api/v1/plugins/threshold/versions?activate=true&config=$config" >/dev/null
            echo '{"sql":"SELECT * FROM '"'bench/#'"'","actions":[{"plugin":{"name":"threshold"}}]}' >"$work/rule.json"
            shoal_post "$http" /api/v1/rules/bench "$work/rule.json" >/dev/null
            ;;
        rules10)
            for i in 0 1 2 3 4 5 6 7 8; do
                if [ "$i" = 8 ]; then where="temp < -100"; else where="temp > $((i * 10))"; fi
                echo '{"sql":"SELECT temp, topic(2) AS dev FROM '"'bench/#'"' WHERE '"$where"'","actions":[{"republish":{"topic":"alerts/${topic(2)}"}}]}' >"$work/rule$i.json"
            done
            echo '{"sql":"SELECT temp, clientid() AS c FROM '"'bench/#'"' WHERE temp < 0","actions":[{"republish":{"topic":"rollup/${topic(2)}"}}]}' >"$work/rule9.json"
            for i in 0 1 2 3 4 5 6 7 8 9; do shoal_post "$http" "/api/v1/rules/bench$i" "$work/rule$i.json" >/dev/null; done
            ;;
    esac
}

# Starts `$1 serve` (embedded store, plain MQTT on a free port, HTTP without auth) in $2/data
# with the rules of bench_rules mode $3 (plugin mode loads the .wasm $4). Sets BROKER_PID,
# port and http; exits the script if the broker does not come up.
start_rules_broker() {
    local shoal=$1 work=$2 mode=$3 wasm=$4
    port=$(free_port)
    "$shoal" serve --data-dir "$work/data" --store memory --mqtt-listen "127.0.0.1:$port" \
        --mqtts-listen off --http-listen 127.0.0.1:0 --http-auth none ${SHOAL_SERVE_ARGS:-} \
        >"$work/broker.log" 2>&1 &
    BROKER_PID=$!
    wait_listen "$port" && http=$(shoal_addr "$work/data" http) || { tail "$work/broker.log" >&2; exit 1; }
    bench_rules "$mode" "$http" "$work" "$wasm"
}

# CPU ticks per thread name of process $1 (numbered names like shoal-rules-0 summed as
# shoal-rules), one "name ticks" line each, sorted.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$t/stat")"
    done 2>/dev/null | awk '{ k = $1; sub(/-[0-9]+$/, "", k); a[k] += $2 } END { for (k in a) print k, a[k] }' | sort
}


# Builds (release) the integration test $2 of package $1 and prints its executable's path;
# fails if valgrind is missing or the test does not build (call it as `VAR=$(...)` under
# `set -e`, so that stops the script: the `exit` leaves only the command substitution). For the instruction counts (sql-instructions.sh,
# inline-rules-instructions.sh).
release_test_binary() {
    local bin
    command -v valgrind >/dev/null || {
        echo "$(basename "$0"): needs valgrind (apt-get install valgrind)" >&2
        exit 1
    }
    bin=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." &&
        CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target} cargo +1.97.0 test -p "$1" --release --test "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$2")
    [ -x "$bin" ] || { echo "could not build the test $2 of $1" >&2; exit 1; }
    echo "$bin"
}

# Instructions valgrind's cachegrind counts for `$1 --ignored --nocapture` run with the
# environment assignments $2... (e.g. SQL_BENCH_FRESH_ONLY=10000). Fails (status 1, nothing
# printed) when the bench fails: valgrind still prints its summary then.
instructions() {
    local bin=$1 out
    shift
    out=$(env "$@" valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        "$bin" --ignored --nocapture 2>&1) || true
    grep -q "^test result: ok. 1 passed" <<<"$out" || {
        echo "$(basename "$0"): the bench failed under valgrind:" >&2
        tail -20 <<<"$out" >&2
        return 1
    }
    awk '/I *refs/ {gsub(",", "", $NF); print $NF}' <<<"$out"
}
