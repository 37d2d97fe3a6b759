#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 20), from the seeds in
# fuzz/seeds/ (copied into a scratch corpus). Fails on any crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
export RUSTC_BOOTSTRAP=1
for target in features import request_bodies; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  cp -n fuzz/seeds/$target/* "$corpus/" 2>/dev/null || true
  log=fuzz/$target.log
  if ! cargo fuzz run --release -s none "$target" "$corpus" -- \
      -max_total_time="$seconds" -max_len=8192 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target failed (crash input in fuzz/artifacts/$target)" >&2
    exit 1
  fi
  echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
done
