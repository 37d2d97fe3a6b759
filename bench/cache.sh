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
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-5}
work=${BENCH_DIR:-target/bench}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin ml-service
bin=target/release/ml-service
mkdir -p "$work"
export SQLITE_PATH="$work/app.db" MODEL_PATH="$work/models" LOG_LEVEL=warn
[ -f "$SQLITE_PATH" ] || "$bin" train >/dev/null

python3 - "$SQLITE_PATH" "$work" <<'PY'
import json, sqlite3, sys
db, out = sys.argv[1:]
ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM profiles ORDER BY id LIMIT 2000")]
with open(f"{out}/match.jsonl", "w") as f:
    for a, b in zip(ids[::2], ids[1::2]):
        f.write(json.dumps({"user_a_id": a, "user_b_id": b}) + "\n")
with open(f"{out}/recommend.jsonl", "w") as f:
    for a in ids[:1000]:
        f.write(json.dumps({"user_id": a, "limit": 10}) + "\n")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
rpid=$!
trap 'kill $rpid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$rport"
stat() { redis-cli -p "$rport" info stats | awk -F: -v k="$1" '$1==k {gsub("\r",""); print $2}'; }

point() { # label endpoint env...
  local label=$1 ep=$2; shift 2
  local port mport pid path=/match/score
  [ "$ep" = recommend ] && path=/recommend/destinations
  port=$(free_port); mport=$(free_port)
  env "$@" ML_SERVICE_PORT=$port PROMETHEUS_PORT=$mport "$bin" serve &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  # Warm-up: one pass over the bodies (fills whatever cache the mode has).
  wrk -t1 -c50 -d2s -s bench/post-bodies.lua "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl" >/dev/null
  local c0 b0 o0 out
  c0=$(stat total_commands_processed); b0=$(stat total_net_input_bytes); o0=$(stat total_net_output_bytes)
  out=$(wrk -t1 -c50 -d${duration}s --latency -s bench/post-bodies.lua \
    "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl")
  local c1 b1 o1 n rps p50 p99 bad
  c1=$(stat total_commands_processed); b1=$(stat total_net_input_bytes); o1=$(stat total_net_output_bytes)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '| %s | %s | %s | %s | %s | %.2f | %.0f | %s |\n' "$path" "$label" "${rps%.*}" "$p50" "$p99" \
    "$(echo "($c1 - $c0) / $n" | bc -l)" "$(echo "($b1 - $b0 + $o1 - $o0) / $n" | bc -l)" "${bad:-0}"
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
