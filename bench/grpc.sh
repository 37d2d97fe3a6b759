#!/usr/bin/env bash
# gRPC against HTTP for match scoring: one ml-service (release, demo data,
# prediction cache off so every request runs the model), driven by the same
# single-threaded Rust client (crates/server/examples/grpc_load.rs) over HTTP
# (JSON, keep-alive connections) and over gRPC (tonic, one HTTP/2 channel),
# at concurrency 50, rotating over 1,000 user pairs; wrk's HTTP figure beside
# them for reference. Prints requests/s, p50 and p99.
#
#   bench/grpc.sh            # 10 s per run
#   DURATION=5 bench/grpc.sh
#
# The load generator shares the machine's cores with the service: compare
# rows of one run, not figures across machines.
DURATION=${DURATION:-10}
source "$(dirname "$0")/common.sh"
cargo build --release --quiet -p ml-server --example grpc_load
load=target/release/examples/grpc_load
export PREDICTION_CACHE=false
paste -d' ' - - < "$work/users.txt" > "$work/pairs.txt"

gport=$(free_port)
port=$(free_port)
mport=$(free_port)
ML_SERVICE_PORT="$port" PROMETHEUS_PORT="$mport" GRPC_PORT="$gport" "$bin" serve &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

# Warm the features near-cache over every pair, both ways.
"$load" http "127.0.0.1:$port" "$work/pairs.txt" 50 2 >/dev/null
"$load" grpc "127.0.0.1:$gport" "$work/pairs.txt" 50 2 >/dev/null

echo "$(nproc) cores, concurrency 50, ${duration}s per run, prediction cache off"
echo
echo "| client | transport | requests/s | p50 ms | p99 ms | errors |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for t in http grpc http grpc; do
  if [ "$t" = http ]; then a="127.0.0.1:$port"; else a="127.0.0.1:$gport"; fi
  read -r _ rps p50 p99 err < <("$load" "$t" "$a" "$work/pairs.txt" 50 "$duration")
  printf '| grpc_load (Rust) | %s | %s | %s | %s | %s |\n' "$t" "$rps" "$p50" "$p99" "$err"
done
read -r rps p50 p99 bad _ < <(run_wrk match 50 "$duration" | wrk_fields)
printf '| wrk | http | %s | %s | %s | %s |\n' "$rps" "$p50" "$p99" "$bad"
