#!/usr/bin/env bash
# The caches, measured: ml-service in release mode on the demo dataset, driven
# by wrk (Debian package `wrk`) at 50 connections over bodies rotating through
# 1,000 user pairs, in five settings:
#
#   no cache       features computed from SQLite on every request (CACHE_TTL=0)
#   near-cache     features from the in-process near-cache (no Redis)
#   Redis, cold    every request misses Redis (CACHE_TTL=0): MGET, compute, write back
#   Redis, warm    every request reads Redis (NEAR_CACHE_TTL=0, after `features refresh`)
#   predictions    answers from the prediction cache in Redis (after one pass)
#
# The prediction cache is off in the first four (PREDICTION_CACHE=false), so
# every request runs the model. Prints requests/s, p50, p99, and the Redis
# commands and bytes per request (from the Redis server's INFO, a redis-server
# this script starts on a free port).
#
#   bench/cache.sh                 # 5 s per point
#   DURATION=10 bench/cache.sh
source "$(dirname "$0")/common.sh"

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
rpid=$!
trap 'kill $rpid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$rport"
stat() { redis-cli -p "$rport" info stats | awk -F: -v k="$1" '$1==k {gsub("\r",""); print $2}'; }

point() { # label endpoint env...
  local label=$1 ep=$2; shift 2
  start_service "$@"
  # Warm-up: one pass over the bodies (fills whatever cache the mode has).
  run_wrk "$ep" 50 2 >/dev/null
  local c0 b0 o0 c1 b1 o1 rps p50 p99 bad n
  c0=$(stat total_commands_processed); b0=$(stat total_net_input_bytes); o0=$(stat total_net_output_bytes)
  read -r rps p50 p99 bad n < <(run_wrk "$ep" 50 "$duration" | wrk_fields)
  c1=$(stat total_commands_processed); b1=$(stat total_net_input_bytes); o1=$(stat total_net_output_bytes)
  printf '| %s | %s | %s | %s | %s | %.2f | %.0f | %s |\n' "$ep" "$label" "$rps" "$p50" "$p99" \
    "$(echo "($c1 - $c0) / $n" | bc -l)" "$(echo "($b1 - $b0 + $o1 - $o0) / $n" | bc -l)" "$bad"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "$(nproc) cores, wrk -t1 -c50, ${duration}s per point, Redis $(redis-server --version | awk '{print $3}')"
echo
echo "| endpoint | features from | requests/s | p50 | p99 | Redis commands / request | Redis bytes / request | non-2xx |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for ep in match recommend; do
  point "SQLite every time (no cache)" $ep PREDICTION_CACHE=false CACHE_TTL=0
  point "near-cache (in process)" $ep PREDICTION_CACHE=false
  point "Redis, cold (miss + write back)" $ep PREDICTION_CACHE=false CACHE_TTL=0 REDIS_URL="$redis_url" CACHE_PREFIX=cold$ep
  REDIS_URL="$redis_url" CACHE_PREFIX=warm "$bin" features refresh >/dev/null
  point "Redis, warm (no near-cache)" $ep PREDICTION_CACHE=false NEAR_CACHE_TTL=0 REDIS_URL="$redis_url" CACHE_PREFIX=warm
  point "prediction cache (Redis)" $ep REDIS_URL="$redis_url" CACHE_PREFIX=warm
done
