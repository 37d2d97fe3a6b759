#!/usr/bin/env bash
# Schemathesis (PyPI, pinned) for the schema-driven API test, in the
# git-ignored .fixtures/st-venv. Idempotent; prints the path of `st`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.fixtures/st-venv
if ! { [ -f "$venv/.ok" ] && [ -x "$venv/bin/st" ]; }; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5" >&2
  touch "$venv/.ok"
  echo "installed schemathesis into $venv" >&2
fi
echo "$(pwd)/$venv/bin/st"
