#!/usr/bin/env bash
# Install one pinned PyPI package into its own git-ignored venv under
# .fixtures/ (idempotent) and print the path of one of its commands.
#   scripts/pip-tool.sh VENV_NAME "PACKAGE==VERSION" COMMAND
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.fixtures/$1
if ! { [ -f "$venv/.ok" ] && [ -x "$venv/bin/$3" ]; }; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$2" >&2
  touch "$venv/.ok"
  echo "installed $2 into $venv" >&2
fi
echo "$(pwd)/$venv/bin/$3"
