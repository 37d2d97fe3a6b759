#!/usr/bin/env bash
# Overload, measured: ml-service (release, demo data, prediction cache off so
# every request runs the model) driven by wrk at 1×, 2× and 4× its admission
# capacity (MAX_IN_FLIGHT=50 connections), over bodies rotating through 1,000
# user pairs. For each point: requests/s, the share shed with 503
# `overloaded`, p99 of all answers (wrk), p99 of the accepted requests as the
# server measured them (its `ml_inference_duration_seconds` histogram for
# answers that carry a model version, admission wait included), and the
# process's peak RSS (VmHWM). Accepted requests stay within the queue wait
# (QUEUE_TIMEOUT_MS) plus their own work, and memory does not grow with load.
#
#   bench/overload.sh                # 10 s per point
#   DURATION=30 bench/overload.sh
source "$(dirname "$0")/common.sh"
duration=${DURATION:-10}

# p99 (ms) from a Prometheus histogram: accepted requests on /match/score.
accepted_p99() {
  curl -s "http://127.0.0.1:$mport/metrics" | python3 -c '
import re, sys
buckets = {}
for line in sys.stdin:
    if not line.startswith("ml_inference_duration_seconds_bucket{"):
        continue
    if "endpoint=\"/match/score\"" not in line or "model=\"travel_match\"" not in line:
        continue
    le = re.search(r"le=\"([^\"]+)\"", line).group(1)
    buckets[float("inf") if le == "+Inf" else float(le)] = buckets.get(float("inf") if le == "+Inf" else float(le), 0) + float(line.split()[-1])
total = buckets.get(float("inf"), 0)
for le in sorted(buckets):
    if total and buckets[le] >= 0.99 * total:
        print(f"≤ {le * 1000:g}ms ({int(total)} accepted)")
        break
'
}

point() { # connections queue-timeout-ms
  start_service PREDICTION_CACHE=false MAX_IN_FLIGHT=50 QUEUE_TIMEOUT_MS="$2"
  run_wrk match 50 2 >/dev/null
  local rps p50 p99 bad n
  read -r rps p50 p99 bad n < <(run_wrk match "$1" "$duration" | wrk_fields)
  local hwm
  hwm=$(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")
  printf '| %s | %s ms | %s | %.1f %% | %s | %s | %s |\n' "$1" "$2" "$rps" \
    "$(echo "100 * $bad / $n" | bc -l)" "$p99" "$(accepted_p99)" "$hwm"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "$(nproc) cores, wrk -t1, ${duration}s per point, MAX_IN_FLIGHT=50, /match/score, prediction cache off"
echo
echo "| connections | QUEUE_TIMEOUT_MS | requests/s | shed (503) | p99 all (wrk) | p99 accepted (server) | peak RSS |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for c in 50 100 200 800; do
  point "$c" 100
done
# A short queue wait: beyond capacity the excess is shed at once.
point 200 2
point 800 2
