#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that the `onnxruntime` backend loads at
# run time (the `ort` crate's `load-dynamic`): it comes from the pinned
# `onnxruntime` wheel on PyPI (sha256-checked), extracted into the git-ignored
# folder .fixtures/onnxruntime. Prints the library's path, for ORT_DYLIB_PATH.
#
#   scripts/fetch-onnxruntime.sh          # CPU build (what CI uses)
#   scripts/fetch-onnxruntime.sh --gpu    # onnxruntime-gpu: the CUDA execution
#                                         # provider (needs CUDA 12 + cuDNN 9 on the host)
#
#   export ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.31.1
if [ "${1:-}" = "--gpu" ]; then
  pkg=onnxruntime-gpu
  sha=${ORT_GPU_WHEEL_SHA256:-}
  out=.fixtures/onnxruntime-gpu
else
  pkg=onnxruntime
  sha=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
  out=.fixtures/onnxruntime
fi
lib="$out/libonnxruntime.so.$version"
if [ ! -f "$out/.ok" ]; then
  mkdir -p .fixtures/wheels "$out"
  # The library inside does not depend on Python; the wheel's tags are pinned so
  # every machine fetches the same file whatever its own Python is.
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    -d .fixtures/wheels "$pkg==$version" >&2
  wheel=$(ls .fixtures/wheels/"${pkg//-/_}"-"$version"-*.whl | head -n1)
  if [ -n "$sha" ]; then
    echo "$sha  $wheel" | sha256sum --check --quiet >&2
  else
    echo "warning: no pinned sha256 for $pkg; got $(sha256sum "$wheel")" >&2
  fi
  python3 - "$wheel" "$out" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith("onnxruntime/capi/libonnxruntime") and ".so" in n]
    if not names:
        sys.exit(f"no libonnxruntime*.so in {wheel}")
    for n in names:
        with open(os.path.join(out, os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
PY
  touch "$out/.ok"
  echo "fetched $pkg $version into $out" >&2
fi
realpath "$lib"
