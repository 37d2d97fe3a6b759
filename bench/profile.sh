#!/usr/bin/env bash
# A flat CPU profile of the service under load, as issue 16's profile was
# taken: the release binary on the demo data (prediction cache off), wrk at
# 50 connections on one endpoint, `perf record` on the service for 4 s.
#
#   bench/profile.sh ENDPOINT(match|recommend|notify)
#   perf report -i target/bench/ENDPOINT.perf --no-children --sort comm,dso,symbol
#   CALL_GRAPH=1 bench/profile.sh ENDPOINT   # with stacks: see bench/stacks.py
#
# Needs `perf` (Debian: linux-perf) and permission to profile the process.
set -euo pipefail
ep=$1
source "$(dirname "$0")/common.sh"
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
path=$(path_of "$ep")
start_service PREDICTION_CACHE=false
trap 'kill $pid 2>/dev/null || true' EXIT
wrk -t1 -c50 -d2s -s bench/post-bodies.lua "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl" >/dev/null
# CALL_GRAPH=1: stacks too (DWARF unwinding, fewer samples), for
# bench/stacks.py on `perf script`'s output.
if [ -n "${CALL_GRAPH:-}" ]; then
  perf record -F 500 --call-graph dwarf,16384 -p "$pid" -o "$work/$ep.perf" -- sleep 3 >/dev/null 2>&1 &
else
  perf record -F 2000 -p "$pid" -o "$work/$ep.perf" -- sleep 4 >/dev/null 2>&1 &
fi
rec=$!
wrk -t1 -c50 -d6s --latency -s bench/post-bodies.lua "http://127.0.0.1:$port$path" -- "$work/$ep.jsonl" |
  grep -E "Requests/sec|99%"
wait "$rec" || true
echo "profile: $work/$ep.perf"
