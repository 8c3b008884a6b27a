#!/usr/bin/env bash
# CPU per message by broker thread: a steadier figure than throughput ratios on a machine the
# load generator saturates. Runs one release `shoal serve --store memory` with the rules of
# tests/bench/plugin.sh (mode none, plugin or rules10), drives it with `shoal-loadgen --json`
# for 12 s, and over a 6 s window in the middle prints, per thread group (shoal-mqtt:work =
# the MQTT I/O threads, shoal-rules = the rules workers), microseconds of CPU per published
# message (utime + stime deltas from /proc over the shoal_messages_in_total delta), and the
# load generator's whole process as (loadgen).
#
#   tests/bench/thread-cpu.sh plugin p2p          # or: none|rules10, fan-in
#   tests/bench/thread-cpu.sh plugin p2p --perf   # also `perf record` the window to /tmp/thread-cpu.perf
#
# PERF_ARGS replaces perf's call-graph option (default -g), e.g.
# PERF_ARGS="--call-graph dwarf,16384" for stacks through code built without frame pointers.
# With SHOAL_PLUGIN_PROFILER=perfmap in the environment the server names the plugin's
# compiled functions for perf. WASM=path picks another threshold-alert build (A/B).
# SHOAL_SERVE_ARGS adds `shoal serve` flags, e.g. SHOAL_SERVE_ARGS=--rules-inline=false.
# RATE=N offers a fixed N messages/s instead of as fast as possible (compare modes at one rate).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:?mode: none, plugin or rules10}
SCENARIO=${2:?scenario: p2p or fan-in}
PERF=${3:-}
MAX_OTHER=25
QUIET_WAIT=60
. "$HERE/lib.sh"
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}/release
[ -x "$BIN/shoal" ] && [ -x "$BIN/shoal-loadgen" ] || {
    echo "thread-cpu.sh: build first: cargo +1.97.0 build --release -p shoal-server -p shoal-tests" >&2
    exit 2
}
wait_quiet # (at most QUIET_WAIT s) so a leftover load does not share the cores
WORK=$(mktemp -d /tmp/shoal-thread-cpu.XXXXXX)
trap '[ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
start_rules_broker "$BIN/shoal" "$WORK" "$MODE" "${WASM:-$ROOT/plugins/dist/threshold-alert.wasm}"
case "$SCENARIO" in
    p2p) args=(p2p --pairs 50) ;;
    fan-in) args=(fan-in --publishers 8) ;;
    *) echo "thread-cpu.sh: scenario p2p or fan-in" >&2; exit 2 ;;
esac
[ -z "${RATE:-}" ] || args+=(--rate "$RATE")
"$BIN/shoal-loadgen" "${args[@]}" --port "$port" --label "$MODE" --duration 10 --warmup 2 \
    --payload 200 --json --qos 0 >"$WORK/out" 2>&1 &
LOADGEN=$!
messages_in() { curl -s "http://$http/metrics" | awk '/^shoal_messages_in_total/ { print $2 }'; }
sleep 4
{ thread_ticks "$BROKER_PID"; thread_ticks "$LOADGEN" | awk '{ s += $2 } END { print "(loadgen)", s }'; } | sort >"$WORK/t0"
m0=$(messages_in)
if [ "$PERF" = --perf ]; then
    perf record -F 999 ${PERF_ARGS:--g} -p "$BROKER_PID" -o /tmp/thread-cpu.perf -- sleep 6 >/dev/null 2>&1
else
    sleep 6
fi
{ thread_ticks "$BROKER_PID"; thread_ticks "$LOADGEN" | awk '{ s += $2 } END { print "(loadgen)", s }'; } | sort >"$WORK/t1"
m1=$(messages_in)
wait "$LOADGEN"
echo "$MODE $SCENARIO: $((m1 - m0)) messages in the window"
join "$WORK/t0" "$WORK/t1" | awk -v m=$((m1 - m0)) -v hz="$CLK_TCK" \
    '{ d = $3 - $2; if (d > 0) printf "  %-18s %6.2f us CPU per message\n", $1, d * 1e6 / hz / m }'
grep '^{' "$WORK/out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
lat = d.get("latency_us") or {}
print("  loadgen: {:,.0f} deliveries/s, sent {:,}, latency p50 {:,.0f} / p99 {:,.0f} us".format(
    d["msgs_per_sec"], d["sent"], lat.get("p50", 0), lat.get("p99", 0)))'
curl -s "http://$http/metrics" | grep -E "^shoal_rules_dropped_total|^shoal_plugin_batche|^shoal_rules_(held_back|hold_timeouts)_total|^shoal_messages_dropped_total.*queue_full" | sed "s/^/  /" || true
