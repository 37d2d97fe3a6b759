#!/usr/bin/env bash
# Two builds of the service under the same load, alternated (A B A B ...),
# so that drift of a shared machine hits both alike. Per run: requests/s,
# p99, and the service's CPU time per request (user + system from /proc,
# over the measured seconds). Run a build against itself first to see the
# noise: on the 2-core machine of session 7 one build spread 57–82 µs.
#
#   bench/ab.sh ENDPOINT(match|recommend|notify|mixed) BIN_A BIN_B [ROUNDS=3]
#   A_ENV="TIMING_PLAN_HOURS=false" bench/ab.sh notify BIN BIN   # one build, two settings
#
# `mixed`: all three endpoints at once, over $work/mixed.tsv (bench/mixed.lua).
#
# Both run with the prediction cache off, on the demo data of bench/common.sh.
set -euo pipefail
ep=$1
a=$2
b=$3
rounds=${4:-3}
BENCH_BIN=$a
export BENCH_BIN
source "$(dirname "$0")/common.sh"
echo "| run | build | requests/s | p99 | service CPU per request |"
echo "| ---: | --- | ---: | ---: | ---: |"
for r in $(seq 1 "$rounds"); do
  for which in A B; do
    [ "$which" = A ] && bin=$a || bin=$b
    [ "$which" = A ] && extra=${A_ENV:-} || extra=${B_ENV:-}
    # shellcheck disable=SC2086 # settings split into words on purpose
    start_service PREDICTION_CACHE=false $extra
    read -r rps p99 us _ < <(cpu_point)
    echo "| $r | $which | $rps | $p99 | $us µs |"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
