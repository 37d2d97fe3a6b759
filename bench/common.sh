# Shared by the bench scripts (sourced): the release binary, the demo data and
# models in $work (made on first use), request bodies rotating over many users
# ($work/match.jsonl, recommend.jsonl, notify.jsonl), path_of and free_port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration=${DURATION:-5}
work=${BENCH_DIR:-target/bench}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
# BENCH_BIN: an already built binary (CI passes the one its tests built:
# building the bin alone resolves features differently and rebuilds).
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  cargo build --release --quiet --bin ml-service
  bin=target/release/ml-service
fi
mkdir -p "$work"
export SQLITE_PATH="$work/app.db" MODEL_PATH="$work/models" LOG_LEVEL=warn
[ -f "$SQLITE_PATH" ] || "$bin" train >/dev/null

# 2,000 user ids (the service's own listing), as 1,000 match pairs, 1,000
# recommendation and 1,000 notification requests.
"$bin" data users --limit 2000 --log-level warn > "$work/users.txt"
paste -d' ' - - < "$work/users.txt" |
  awk '{printf "{\"user_a_id\": \"%s\", \"user_b_id\": \"%s\"}\n", $1, $2}' > "$work/match.jsonl"
head -n 1000 "$work/users.txt" |
  awk '{printf "{\"user_id\": \"%s\", \"limit\": 10}\n", $1}' > "$work/recommend.jsonl"
head -n 1000 "$work/users.txt" |
  awk '{printf "{\"user_id\": \"%s\", \"notification_type\": \"message\"}\n", $1}' > "$work/notify.jsonl"

# PATH<TAB>BODY lines over all three endpoints, shuffled the same way each
# time ($work/mixed.tsv, for bench/mixed.lua).
{
  sed 's|^|/match/score\t|' "$work/match.jsonl"
  sed 's|^|/recommend/destinations\t|' "$work/recommend.jsonl"
  sed 's|^|/notifications/optimize\t|' "$work/notify.jsonl"
} | shuf --random-source=<(yes) > "$work/mixed.tsv"

# The path of an endpoint's short name (match, recommend, notify).
path_of() {
  case $1 in
    match) echo /match/score ;;
    recommend) echo /recommend/destinations ;;
    notify) echo /notifications/optimize ;;
    *) echo "unknown endpoint $1" >&2; return 2 ;;
  esac
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Start the service with extra environment ("$@"); sets $port, $mport (metrics)
# and $pid.
start_service() {
  port=$(free_port)
  mport=$(free_port)
  env "$@" ML_SERVICE_PORT="$port" PROMETHEUS_PORT="$mport" GRPC_PORT=0 "$bin" serve &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "the service did not start" >&2
  return 1
}

# Start the bare axum server of bench/perf.sh (built on first use) on a
# free port; sets $port and $pid as start_service does.
start_bare() {
  if [ -z "${bare_built:-}" ]; then
    cargo build --release --quiet -p ml-server --example bare_axum
    bare_built=1
  fi
  port=$(free_port)
  target/release/examples/bare_axum "$port" &
  pid=$!
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
    sleep 0.1
  done
  echo "the bare server did not start" >&2
  return 1
}

# wrk over one endpoint's bodies: run_wrk ENDPOINT(match|recommend) CONNECTIONS SECONDS
run_wrk() {
  local path=/match/score
  [ "$1" = recommend ] && path=/recommend/destinations
  wrk -t1 -c"$2" -d"$3"s --latency -s bench/post-bodies.lua \
    "http://127.0.0.1:$port$path" -- "$work/$1.jsonl"
}

# Fields of wrk's output: requests/s, p50, p99, non-2xx, total requests.
wrk_fields() {
  awk '/^Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2}
       /Non-2xx/ {bad=$5} /requests in/ {n=$1}
       END {sub(/\..*/, "", rps); printf "%s %s %s %s %s\n", rps, p50, p99, (bad==""?0:bad), n}'
}

# wrk at 50 connections for SECONDS on $port, over the bodies of endpoint
# $ep (match|recommend|notify, or mixed: all three, $work/mixed.tsv):
# load SECONDS [wrk options]
load() {
  local seconds=$1
  shift
  if [ "$ep" = mixed ]; then
    wrk -t1 -c50 -d"${seconds}s" "$@" -s bench/mixed.lua "http://127.0.0.1:$port" -- "$work/mixed.tsv" 0
  else
    wrk -t1 -c50 -d"${seconds}s" "$@" -s bench/post-bodies.lua \
      "http://127.0.0.1:$port$(path_of "$ep")" -- "$work/$ep.jsonl"
  fi
}

# CPU time per request of the server $pid under `load`: 2 s of warm-up,
# then $duration s measured by its user + system ticks in /proc.
# Prints "requests/s p99 microseconds-per-request log-thread-microseconds",
# the last being the part of the CPU spent on the prediction log's SQLite
# thread (`ml-log-sqlite`; 0 when the log is off).
cpu_point() {
  local c0 c1 l0 l1 out rps p99 n tick
  load 2 >/dev/null
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  l0=$(log_ticks)
  out=$(load "$duration" --latency)
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  l1=$(log_ticks)
  read -r rps _ p99 _ n < <(echo "$out" | wrk_fields)
  tick=$(( 1000000 / $(getconf CLK_TCK) ))
  echo "$rps $p99 $(( (c1 - c0) * tick / n )) $(( (l1 - l0) * tick / n ))"
}

# User + system ticks of the server's prediction-log thread so far.
log_ticks() {
  cat /proc/"$pid"/task/*/stat 2>/dev/null | awk '$2 == "(ml-log-sqlite)" {s += $14 + $15} END {print s + 0}'
}
