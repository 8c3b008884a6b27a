#!/usr/bin/env bash
# Instructions per IoT SQL evaluation (fresh context: parse the payload, WHERE, SELECT, write
# the output) of host/rules/tests/bench.rs's statement, counted by valgrind's cachegrind. Unlike
# the time the bench prints, the count does not move with this VM's other tenants, so it shows
# what a change to the evaluator did. Builds the release bench, runs it with
# SQL_BENCH_FRESH_ONLY=10000 and =110000 (each plus a tenth as warm-up) and divides the
# difference by the 110,000 evaluations between them. Needs valgrind (apt-get install valgrind).
#
#   tests/bench/sql-instructions.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
command -v valgrind >/dev/null || {
    echo "sql-instructions.sh: needs valgrind (apt-get install valgrind)" >&2
    exit 1
}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
cd "$ROOT"
BENCH=$(cargo +1.97.0 test -p shoal-rules --release --test bench --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bench" and m.get("executable"):
        print(m["executable"])')
[ -x "$BENCH" ] || {
    echo "sql-instructions.sh: could not build the bench" >&2
    exit 1
}
count() {
    SQL_BENCH_FRESH_ONLY=$1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        "$BENCH" --ignored --nocapture 2>&1 | awk '/I *refs/ {gsub(",", "", $NF); print $NF}'
}
small=$(count 10000)
large=$(count 110000)
echo "instructions per evaluation (fresh context): $(((large - small) / 110000))"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host/rules || echo ' + uncommitted changes')"
