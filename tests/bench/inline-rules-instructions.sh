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
. "$HERE/lib.sh"
cd "$HERE/../.."
BENCH=$(release_test_binary shoal-server inline_rules_bench)
# Each count is assigned on its own so that a failed run stops the script (set -e), and an
# empty count (the bench failed under valgrind: no summary) fails the arithmetic.
small=$(instructions "$BENCH" INLINE_BENCH_RULES=0 INLINE_BENCH_ONLY=10000)
large=$(instructions "$BENCH" INLINE_BENCH_RULES=0 INLINE_BENCH_ONLY=110000)
none=$(((large - small) / 110000))
small=$(instructions "$BENCH" INLINE_BENCH_RULES=10 INLINE_BENCH_ONLY=10000)
large=$(instructions "$BENCH" INLINE_BENCH_RULES=10 INLINE_BENCH_ONLY=110000)
ten=$(((large - small) / 110000))
echo "instructions per publish: no rules $none, ten inline rules $ten (the rules add $((ten - none)))"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host || echo ' + uncommitted changes')"
