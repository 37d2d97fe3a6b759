#!/usr/bin/env bash
# The performance harness (issue 16): ml-service in release mode on the
# demo dataset beside a bare axum server that parses and validates the same
# JSON and answers a constant (crates/server/examples/bare_axum.rs), both
# driven by wrk at 50 connections over bodies rotating through 1,000 users.
# Per endpoint and mode (prediction cache off: every request computes; on),
# each with the prediction log off and on (rows written and dropped after):
# requests/s, p50/p95/p99, and the share of the bare server's requests/s
# measured just before and just after the point (their mean); then the
# service's peak RSS (VmHWM) and how long a start with models present takes
# to open its port.
#
#   bench/perf.sh                  # 10 s per point
#   DURATION=5 bench/perf.sh
#
# The load generator shares the machine's cores with the server: compare
# the ratios, which hold across noisy runs better than the absolute figures.
DURATION=${DURATION:-10}
source "$(dirname "$0")/common.sh"

# One wrk point: run_point PORT ENDPOINT -> "rps p50 p95 p99 non2xx"
run_point() {
  local out
  wrk -t1 -c50 -d2s -s bench/post-bodies.lua "http://127.0.0.1:$1$(path_of "$2")" -- "$work/$2.jsonl" >/dev/null
  out=$(wrk -t1 -c50 -d"${duration}s" --latency -s bench/post-bodies.lua \
    "http://127.0.0.1:$1$(path_of "$2")" -- "$work/$2.jsonl")
  read -r rps p50 p99 bad _ < <(echo "$out" | wrk_fields)
  p95=$(echo "$out" | awk '$1=="p95" {print $2}')
  echo "$rps $p50 $p95 $p99 $bad"
}

start_bare
bport=$port
bpid=$pid
trap 'kill $bpid ${pid:-} 2>/dev/null || true' EXIT

# The bare server's rate of an endpoint now. Each service point is taken
# between two bare points of its endpoint, and its share is of their mean:
# on a machine whose speed drifts by a quarter within a minute, one bare
# point per endpoint taken up to a minute away (as this script first did,
# all three before the service) moved the shares more than most changes did.
bare_point() { read -r rps _ < <(run_point "$bport" "$1"); echo "$rps"; }

echo "$(nproc) cores, wrk -t1 -c50, ${duration}s per point; bare axum measured just before and just after each point"
echo
echo "| endpoint | prediction cache | prediction log | requests/s | share of bare axum | p50 | p95 | p99 | non-2xx | bare axum before / after |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
# Each cache mode with the prediction log off, then on (every answer
# logged to the SQLite file: issue 35's cost).
for mode in off on; do
  [ "$mode" = off ] && cache=false || cache=true
  for log in off on; do
    [ "$log" = off ] && logging=false || logging=true
    start_service PREDICTION_CACHE=$cache PREDICTION_LOG=$logging
    for ep in match recommend notify; do
      before=$(bare_point "$ep")
      read -r rps p50 p95 p99 bad < <(run_point "$port" "$ep")
      after=$(bare_point "$ep")
      share=$(awk -v a="$rps" -v b="$before" -v c="$after" 'BEGIN {printf "%.2f", 2 * a / (b + c)}')
      echo "| $ep | $mode | $log | $rps | $share | $p50 | $p95 | $p99 | $bad | $before / $after |"
    done
    hwm=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")
    rows=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^ml_prediction_log_rows_total/ {sub(/.*outcome="/, ""); sub(/"}/, ""); printf "%s %s; ", $1, $2}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "| (peak RSS, cache $mode, log $log) | | | | | | | | ${hwm} MiB | ${rows:-} |"
  done
done

# Cold start with models present: from exec to the port answering.
port=$(free_port)
t0=$(date +%s%N)
ML_SERVICE_PORT=$port PROMETHEUS_PORT=0 GRPC_PORT=0 "$bin" serve &
pid=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/health/live"; do sleep 0.01; done
t1=$(date +%s%N)
kill "$pid"; wait "$pid" 2>/dev/null || true
echo
echo "cold start with models present: port answering after $(( (t1 - t0) / 1000000 )) ms"
