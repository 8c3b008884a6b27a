#!/usr/bin/env bash
# Instructions per client publish with the ten inline rules of `tests/bench/plugin.sh --with
# rules10` (host/server/tests/inline_rules_bench.rs: Broker::publish of the load generator's
# 200-byte reading through the real broker, shadow service and rules engine, no sockets),
# counted by valgrind's cachegrind. Unlike time, the count does not move with this VM's other
# tenants, so it shows what a change to the inline rules path did. Builds the release bench,
# runs it with INLINE_BENCH_ONLY=10000 and =110000 (each plus a tenth as warm-up), with the
# rules and without (INLINE_BENCH_RULES=0), and divides each difference by the 110,000
# publishes between them. Needs valgrind (apt-get install valgrind).
#
#   tests/bench/inline-rules-instructions.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
command -v valgrind >/dev/null || {
    echo "inline-rules-instructions.sh: needs valgrind (apt-get install valgrind)" >&2
    exit 1
}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shoal-target}
cd "$ROOT"
BENCH=$(cargo +1.97.0 test -p shoal-server --release --test inline_rules_bench --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "inline_rules_bench" and m.get("executable"):
        print(m["executable"])')
[ -x "$BENCH" ] || {
    echo "inline-rules-instructions.sh: could not build the bench" >&2
    exit 1
}
count() {
    INLINE_BENCH_RULES=$2 INLINE_BENCH_ONLY=$1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        "$BENCH" --ignored --nocapture 2>&1 | awk '/I *refs/ {gsub(",", "", $NF); print $NF}'
}
none=$((($(count 110000 0) - $(count 10000 0)) / 110000))
ten=$((($(count 110000 10) - $(count 10000 10)) / 110000))
echo "instructions per publish: no rules $none, ten inline rules $ten (the rules add $((ten - none)))"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host || echo ' + uncommitted changes')"
