#!/usr/bin/env bash
# A Python environment with `implicit` (ALS) for the recommendation baseline,
# in the git-ignored .fixtures/venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.fixtures/venv
if [ -f "$venv/.ok" ] && "$venv/bin/python" -c "import implicit" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "implicit==0.7.3" "numpy<3" "scipy<2"
touch "$venv/.ok"
echo "installed implicit into $venv"
