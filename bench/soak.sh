#!/usr/bin/env bash
# Soak: mixed traffic (match, recommendations, notifications over 1,000
# users each, prediction cache off) at ~70% of the capacity measured at the
# start, in windows; per window the rate, p50/p99, errors (non-2xx and socket
# errors) and the process's RSS. Fails (exit 1) on any error, or when RSS
# after the last window exceeds RSS after the first (warm-up) window by more
# than SOAK_RSS_GROWTH_MIB (default 8).
#
#   bench/soak.sh                               # 10 windows of 60 s (10 minutes)
#   SOAK_WINDOWS=4 SOAK_WINDOW_S=10 bench/soak.sh   # CI's short run
source "$(dirname "$0")/common.sh"
windows=${SOAK_WINDOWS:-10}
window_s=${SOAK_WINDOW_S:-60}
growth_limit=${SOAK_RSS_GROWTH_MIB:-8}
conns=200

start_service PREDICTION_CACHE=false
trap 'kill $pid 2>/dev/null || true' EXIT
mixed() { # delay-ms seconds
  wrk -t1 -c"$conns" -d"$2"s --latency -s bench/mixed.lua "http://127.0.0.1:$port" -- "$work/mixed.tsv" "$1"
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$pid/status"; }

# Warm-up (features of every user into the near-cache, the models' first
# calls, the page cache), then capacity: the same mix with no pause. Measured
# cold, the first second's shedding (requests waiting on cold reads past
# QUEUE_TIMEOUT_MS) put the capacity at a third of the warm figure.
mixed 0 5 >/dev/null
capacity=$(mixed 0 5 | wrk_fields | awk '{print $1}')
target=$((capacity * 7 / 10))
pause=$((conns * 1000 / target))
echo "$(nproc) cores; capacity of the mix ${capacity} requests/s; soak at ~70%: ${conns} connections pausing ${pause} ms; ${windows} × ${window_s} s"
echo
echo "| window | requests/s | p50 | p99 | errors | RSS (MiB) |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
errors=0
first_rss=""
for w in $(seq 1 "$windows"); do
  out=$(mixed "$pause" "$window_s")
  read -r rps p50 p99 bad n < <(echo "$out" | wrk_fields)
  sock=$(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}')
  e=$((bad + ${sock:-0}))
  errors=$((errors + e))
  rss=$(rss_mib)
  [ -n "$first_rss" ] || first_rss=$rss
  echo "| $w | $rps | $p50 | $p99 | $e | $rss |"
done
growth=$((rss - first_rss))
echo
echo "errors: $errors; RSS growth after the first window: ${growth} MiB (limit ${growth_limit})"
[ "$errors" -eq 0 ] && [ "$growth" -le "$growth_limit" ]
