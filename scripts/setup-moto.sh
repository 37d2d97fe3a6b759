#!/usr/bin/env bash
# A real S3-compatible server for the model-repository tests: moto's server
# mode from PyPI, in the git-ignored .fixtures/moto-venv. Idempotent; prints
# the path of `moto_server` (the tests read it from MOTO_SERVER, or find it
# at this path).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.fixtures/moto-venv
if ! { [ -f "$venv/.ok" ] && [ -x "$venv/bin/moto_server" ]; }; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5" >&2
  touch "$venv/.ok"
  echo "installed moto[server] into $venv" >&2
fi
echo "$(pwd)/$venv/bin/moto_server"
