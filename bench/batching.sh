#!/usr/bin/env bash
# Dynamic batching, measured: ml-service in release mode on the demo dataset,
# driven by wrk (Debian package `wrk`) at concurrency 1, 8, 50 and 200 with
# batching off (BATCH_SIZE=1) and on (BATCH_SIZE=32, with BATCH_MAX_DELAY_US=0
# and =500), on /match/score (one model row per request) and
# /recommend/destinations (~35 rows per request). Prints requests/s, p50, p99
# and non-2xx responses per setting.
#
#   bench/batching.sh                       # 5 s per point, tract backend
#   DURATION=10 BACKEND=onnxruntime bench/batching.sh
#
# The load generator shares the machine's cores with the service, so compare
# rows of one run, not figures across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-5}
backend=${BACKEND:-tract}
work=${BENCH_DIR:-target/bench}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin ml-service
bin=target/release/ml-service
mkdir -p "$work"
# Every request runs the model: the prediction cache is off (features still
# come from the near-cache after the warm-up, as in production).
export SQLITE_PATH="$work/app.db" MODEL_PATH="$work/models" LOG_LEVEL=warn PREDICTION_CACHE=false
if [ "$backend" = onnxruntime ]; then
  ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
  export ORT_DYLIB_PATH INFERENCE_BACKEND=onnxruntime
fi
# First use: the demo dataset and the three models.
[ -f "$SQLITE_PATH" ] || "$bin" train >/dev/null

python3 - "$SQLITE_PATH" "$work" <<'PY'
import json, sqlite3, sys
db, out = sys.argv[1:]
ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM profiles ORDER BY id LIMIT 2000")]
with open(f"{out}/match.jsonl", "w") as f:
    for a, b in zip(ids[::2], ids[1::2]):
        f.write(json.dumps({"user_a_id": a, "user_b_id": b}) + "\n")
with open(f"{out}/recommend.jsonl", "w") as f:
    for a in ids:
        f.write(json.dumps({"user_id": a, "limit": 10}) + "\n")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_mode() { # label batch_size delay_us
  local port mport pid
  port=$(free_port); mport=$(free_port)
  BATCH_SIZE=$2 BATCH_MAX_DELAY_US=$3 ML_SERVICE_PORT=$port PROMETHEUS_PORT=$mport "$bin" serve &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
  for ep in match recommend; do
    local path=/match/score
    [ $ep = recommend ] && path=/recommend/destinations
    wrk -t1 -c50 -d1s -s bench/post-bodies.lua "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl" >/dev/null
    for c in 1 8 50 200; do
      local out
      out=$(wrk -t1 -c$c -d${duration}s --latency -s bench/post-bodies.lua \
        "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl")
      local rps p50 p99 bad
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1=="50%" {print $2}' <<<"$out")
      p99=$(awk '$1=="99%" {print $2}' <<<"$out")
      bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$path" "$1" "$c" "${rps%.*}" "$p50" "$p99" "${bad:-0}"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "backend $backend, $(nproc) cores, wrk -t1, ${duration}s per point"
echo
echo "| endpoint | batching | connections | requests/s | p50 | p99 | non-2xx |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
run_mode "off (BATCH_SIZE=1)" 1 0
run_mode "on, 32, delay 0" 32 0
run_mode "on, 32, delay 500 µs" 32 500
