#!/usr/bin/env bash
# Scale-out, proven locally: three ml-service replicas on loopback ports
# behind nginx (Debian's package), sharing one Postgres (a fresh database)
# and one Redis (a fresh key prefix) and one model repository (a temporary
# folder, with an A/B split of two match versions). It drives /match/score
# through nginx with wrk, kills one replica with SIGKILL mid-run, and then
# checks that
#   - no request was lost: nginx retries a request that failed on the killed
#     replica on another (predictions are reads: `non_idempotent` retries);
#   - every replica puts a user in the same A/B variant;
#   - an answer cached by one replica is served by another (Redis).
# Prints a table and a last line `RESULT lost=N ab_same=K/K cache_shared=yes|no`;
# exits non-zero when a check fails.
#
#   deploy/scale-out.sh                       # 20 s of load, kill at 8 s
#   DURATION=6 KILL_AT=3 deploy/scale-out.sh  # what the test runs
#
# Needs nginx and wrk (Debian), Postgres at DATABASE_ADMIN_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) and Redis at REDIS_URL
# (default redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20}
kill_at=${KILL_AT:-8}
admin_url=${DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
for tool in nginx wrk psql redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nginx wrk postgresql-client redis-tools)" >&2; exit 2; }
done
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  cargo build --release --quiet --bin ml-service
  bin=target/release/ml-service
fi

tmp=$(mktemp -d)
db="mls_scale_$$"
prefix="scale-$$"
pids=()
nginx_pid=
cleanup() {
  for p in "${pids[@]}" $nginx_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  redis-cli -u "$redis_url" --scan --pattern "$prefix*" | xargs -r redis-cli -u "$redis_url" del >/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One data store, one model repository, one Redis prefix for every replica.
psql -q "$admin_url" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="${admin_url%/*}/$db" MODEL_PATH="$tmp/models" REDIS_URL="$redis_url" \
  CACHE_PREFIX="$prefix" LOG_LEVEL=warn MODEL_POLL_INTERVAL_S=1
"$bin" data migrate >/dev/null
"$bin" data demo --users 2000 >/dev/null
"$bin" train >/dev/null
"$bin" train travel_match --seed 2 >/dev/null
"$bin" models split travel_match 1=50 2=50 >/dev/null

ports=()
for r in 1 2 3; do
  port=$(free_port)
  ML_SERVICE_PORT=$port PROMETHEUS_PORT=0 GRPC_PORT=0 "$bin" serve &
  pids+=($!)
  ports+=("$port")
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { echo "replica on $port did not start" >&2; exit 1; }
done

lb=$(free_port)
mkdir -p "$tmp/nginx"
{
  echo "worker_processes 1; daemon off; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log;"
  echo "events { worker_connections 1024; }"
  echo "http {"
  echo "  access_log off;"
  echo "  client_body_temp_path $tmp/nginx; proxy_temp_path $tmp/nginx;"
  echo "  fastcgi_temp_path $tmp/nginx; uwsgi_temp_path $tmp/nginx; scgi_temp_path $tmp/nginx;"
  echo "  upstream ml { keepalive 64;"
  for port in "${ports[@]}"; do echo "    server 127.0.0.1:$port max_fails=1 fail_timeout=10s;"; done
  echo "  }"
  echo "  server { listen 127.0.0.1:$lb;"
  echo "    location / { proxy_pass http://ml; proxy_http_version 1.1; proxy_set_header Connection \"\";"
  echo "      proxy_next_upstream error timeout http_502 http_503 non_idempotent; proxy_next_upstream_tries 3;"
  echo "      proxy_connect_timeout 1s; proxy_read_timeout 6s; } }"
  echo "}"
} > "$tmp/nginx/nginx.conf"
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$lb/health" >/dev/null && break; sleep 0.1; done

# Match bodies over 1,000 pairs (the service's own user listing).
"$bin" data users --limit 2000 > "$tmp/users.txt"
paste -d' ' - - < "$tmp/users.txt" |
  awk '{printf "{\"user_a_id\": \"%s\", \"user_b_id\": \"%s\"}\n", $1, $2}' > "$tmp/match.jsonl"

# Load through nginx; one replica dies with SIGKILL mid-run.
wrk -t1 -c50 -d"${duration}s" --latency -s bench/post-bodies.lua \
  "http://127.0.0.1:$lb/match/score" -- "$tmp/match.jsonl" > "$tmp/wrk.txt" &
wrk_pid=$!
sleep "$kill_at"
kill -9 "${pids[1]}"
wait "$wrk_pid"
requests=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
rps=$(awk '/^Requests\/sec/ {sub(/\..*/, "", $2); print $2}' "$tmp/wrk.txt")
p99=$(awk '$1=="99%" {print $2}' "$tmp/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $5}' "$tmp/wrk.txt")
non2xx=${non2xx:-0}
sockerr=$(awk '/Socket errors/ {gsub(/,/, ""); print $4+$6+$8+$10}' "$tmp/wrk.txt")
sockerr=${sockerr:-0}
lost=$((non2xx + sockerr))

# A/B: each user's variant (x-model-version) asked of the two live replicas.
live=("${ports[0]}" "${ports[2]}")
same=0
checked=0
while read -r a b; do
  v1=$(curl -s -D - -o /dev/null "http://127.0.0.1:${live[0]}/match/score" -H 'content-type: application/json' \
    -d "{\"user_a_id\":\"$a\",\"user_b_id\":\"$b\"}" | awk -F': ' 'tolower($1)=="x-model-version" {print $2}' | tr -d '\r')
  v2=$(curl -s -D - -o /dev/null "http://127.0.0.1:${live[1]}/match/score" -H 'content-type: application/json' \
    -d "{\"user_a_id\":\"$a\",\"user_b_id\":\"$b\"}" | awk -F': ' 'tolower($1)=="x-model-version" {print $2}' | tr -d '\r')
  checked=$((checked + 1))
  [ -n "$v1" ] && [ "$v1" = "$v2" ] && same=$((same + 1))
  echo "$v1" >> "$tmp/variants.txt"
done < <(tail -n 100 "$tmp/users.txt" | paste -d' ' - -)
variants=$(sort -u "$tmp/variants.txt" | tr '\n' ' ')

# A fresh request (a context never asked before) answered by one replica,
# then asked of the other: a prediction-cache hit from Redis.
read -r a b < <(head -n 2 "$tmp/users.txt" | paste -d' ' - -)
body="{\"user_a_id\":\"$a\",\"user_b_id\":\"$b\",\"context\":{\"destination\":\"Lisbon\",\"interests\":[\"food\"]}}"
c1=$(curl -s -D - -o /dev/null "http://127.0.0.1:${live[0]}/match/score" -H 'content-type: application/json' -d "$body" |
  awk -F': ' 'tolower($1)=="x-cache" {print $2}' | tr -d '\r')
c2=$(curl -s -D - -o /dev/null "http://127.0.0.1:${live[1]}/match/score" -H 'content-type: application/json' -d "$body" |
  awk -F': ' 'tolower($1)=="x-cache" {print $2}' | tr -d '\r')
shared=no
[ "$c1" = miss ] && [ "$c2" = hit ] && shared=yes

echo "3 replicas behind nginx, wrk -c50 for ${duration}s, replica 2 killed (SIGKILL) at ${kill_at}s"
echo
echo "| requests | requests/s | p99 | non-2xx | socket errors | A/B same variant | variants seen | cache shared |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
echo "| $requests | $rps | $p99 | $non2xx | $sockerr | $same/$checked | $variants| $shared (replica A: $c1, replica B: $c2) |"
echo "RESULT lost=$lost ab_same=$same/$checked cache_shared=$shared"
[ "$lost" = 0 ] && [ "$same" = "$checked" ] && [ "$shared" = yes ]
