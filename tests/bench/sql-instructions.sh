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
. "$HERE/lib.sh"
cd "$HERE/../.."
BENCH=$(release_test_binary shoal-rules bench)
small=$(instructions "$BENCH" SQL_BENCH_FRESH_ONLY=10000)
large=$(instructions "$BENCH" SQL_BENCH_FRESH_ONLY=110000)
echo "instructions per evaluation (fresh context): $(((large - small) / 110000))"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host/rules || echo ' + uncommitted changes')"
