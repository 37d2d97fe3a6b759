#!/usr/bin/env bash
# Server CPU per request: the bare axum server of bench/perf.sh
# (crates/server/examples/bare_axum.rs) and the service, alternated
# (bare, service, bare, service ...) under the same load, so that drift of a
# shared machine hits both alike. Per run: requests/s, p99, and the server's
# CPU time per request (user + system ticks from /proc over the measured
# seconds). The difference is what the service's own work costs a request;
# the ratio is roughly what perf.sh's share would read on a machine where
# the load generator had cores of its own. The service runs twice per
# round, with the prediction log off and on (issue 35: what logging every
# answer costs a request, the writer's work included).
#
#   bench/cpu.sh ENDPOINT(match|recommend|notify|mixed) [ROUNDS=3]
#   BENCH_BIN=/tmp/ml-service DURATION=4 bench/cpu.sh notify 4
#
# The service runs with the prediction cache off (every request computes),
# on the demo data of bench/common.sh.
set -euo pipefail
ep=$1
rounds=${2:-3}
source "$(dirname "$0")/common.sh"
echo "| run | server | requests/s | p99 | server CPU per request | of which the log's SQLite thread |"
echo "| ---: | --- | ---: | ---: | ---: | ---: |"
for r in $(seq 1 "$rounds"); do
  for which in bare "service, log off" "service, log on"; do
    case $which in
      bare) start_bare ;;
      "service, log off") start_service PREDICTION_CACHE=false PREDICTION_LOG=false ;;
      *) start_service PREDICTION_CACHE=false PREDICTION_LOG=true ;;
    esac
    read -r rps p99 us log_us < <(cpu_point)
    echo "| $r | $which | $rps | $p99 | $us µs | $log_us µs |"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
