#!/usr/bin/env bash
# Dynamic batching, measured: ml-service in release mode on the demo dataset,
# driven by wrk (Debian package `wrk`) at concurrency 1, 8, 50 and 200 with
# batching off (BATCH_SIZE=1) and on (BATCH_SIZE=32, with BATCH_MAX_DELAY_US=0
# and =500), on /match/score (one model row per request) and
# /recommend/destinations (4 rows per request; below the default
# BATCH_MAX_ROWS=64, so it is batched too; BATCH_MAX_ROWS=4 sends each on its
# own). Prints requests/s, p50, p99 and non-2xx responses.
#
#   bench/batching.sh                       # 5 s per point, tract backend
#   DURATION=10 BACKEND=onnxruntime bench/batching.sh
#
# The load generator shares the machine's cores with the service, so compare
# rows of one run, not figures across machines.
source "$(dirname "$0")/common.sh"
backend=${BACKEND:-tract}
# Every request runs the model: the prediction cache is off (features still
# come from the near-cache after the warm-up, as in production).
export PREDICTION_CACHE=false
if [ "$backend" = onnxruntime ]; then
  ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
  export ORT_DYLIB_PATH INFERENCE_BACKEND=onnxruntime
fi

run_mode() { # label batch_size delay_us
  start_service BATCH_SIZE="$2" BATCH_MAX_DELAY_US="$3"
  for ep in match recommend; do
    run_wrk $ep 50 1 >/dev/null
    for c in 1 8 50 200; do
      read -r rps p50 p99 bad _ < <(run_wrk $ep $c "$duration" | wrk_fields)
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$ep" "$1" "$c" "$rps" "$p50" "$p99" "$bad"
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
