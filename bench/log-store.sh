#!/usr/bin/env bash
# Rows per second the prediction log's stores take on this machine (issue
# 35): batches of 2,000 rows as the server's writer makes them, into a fresh
# SQLite file and a fresh Postgres database (DATABASE_URL, default the local
# server), SECONDS each (default 10).
#
#   bench/log-store.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -p ml-data --example log_throughput -- "${1:-10}"
