#!/usr/bin/env bash
# CPU an idle server burns: runs one release `shoal serve --store memory` with the rules of
# tests/bench/plugin.sh (mode none, plugin or rules10; default plugin, which loads the
# threshold-alert plugin so its epoch ticker exists), sends it nothing, and over a window of
# SECS seconds (default 20) after start-up prints, per thread group and in all, milliseconds of
# CPU per second of wall time (utime + stime deltas from /proc; resolution 1/CLK_TCK s).
#
#   tests/bench/idle-cpu.sh            # plugin, 20 s
#   tests/bench/idle-cpu.sh none 30
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:-plugin}
SECS=${2:-20}
MAX_OTHER=25
QUIET_WAIT=60
. "$HERE/lib.sh"
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}/release
[ -x "$BIN/shoal" ] || {
    echo "idle-cpu.sh: build first: cargo +1.97.0 build --release -p shoal-server" >&2
    exit 2
}
wait_quiet
WORK=$(mktemp -d /tmp/shoal-idle-cpu.XXXXXX)
trap '[ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
start_rules_broker "$BIN/shoal" "$WORK" "$MODE" "${WASM:-$ROOT/plugins/dist/threshold-alert.wasm}"
# One message through the rules (the plugin's first call starts its epoch ticker), then time
# for start-up work and the ticker's idle countdown to finish.
if command -v mosquitto_pub >/dev/null; then
    mosquitto_pub -p "$port" -t bench/idle -m '{"temp": 1.5}'
fi
sleep 3
thread_ticks "$BROKER_PID" >"$WORK/t0"
sleep "$SECS"
thread_ticks "$BROKER_PID" >"$WORK/t1"
echo "idle shoal ($MODE), ${SECS} s window: ms of CPU per second"
join -a 2 -e 0 -o 0,1.2,2.2 "$WORK/t0" "$WORK/t1" | awk -v s="$SECS" -v hz="$CLK_TCK" '
    { d = ($3 - $2) * 1000 / hz / s; all += d; if (d > 0) printf "  %-20s %6.1f\n", $1, d }
    END { printf "  %-20s %6.1f\n", "all threads", all }'
