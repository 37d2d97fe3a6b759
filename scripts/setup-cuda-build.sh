#!/usr/bin/env bash
# Make a CUDA build of the embeddings possible on a machine without the CUDA
# toolkit: fetches nvcc and its headers (CUDA 13.0, pinned PyPI wheels:
# nvidia-cuda-nvcc, -crt, -runtime, -cccl, nvidia-nvvm) into the git-ignored
# .fixtures/cuda, and writes link stubs for the CUDA libraries candle links
# (libcuda, libcublas, libcublasLt, libcurand, libnvrtc; libcudart is the
# wheel's own): the real ones come
# from the GPU host's driver and its CUDA 13 libraries at run time.
#
#   eval "$(scripts/setup-cuda-build.sh)"     # exports CUDA_HOME, PATH, CUDA_COMPUTE_CAP, RUSTFLAGS
#   cargo build --release -p ml-embed --features cuda --example throughput --target-dir target-cuda
#
# CUDA_COMPUTE_CAP defaults to 90 (Hopper: H100, H200); set it before for
# another GPU. On a machine with the CUDA 13 toolkit installed, none of this
# is needed: `cargo build --features cuda` finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.fixtures/cuda
if [ ! -f "$root/.ok" ]; then
  mkdir -p .fixtures/wheels "$root"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    -d .fixtures/wheels nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 >&2
  for w in .fixtures/wheels/nvidia_cuda_nvcc-13.0.88-*.whl .fixtures/wheels/nvidia_cuda_crt-13.0.88-*.whl \
           .fixtures/wheels/nvidia_cuda_runtime-13.0.96-*.whl .fixtures/wheels/nvidia_cuda_cccl-13.0.85-*.whl \
           .fixtures/wheels/nvidia_nvvm-13.0.88-*.whl; do
    python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$root"
  done
  home="$root/nvidia/cu13"
  chmod +x "$home"/bin/* "$home"/nvvm/bin/*
  # Empty libraries under the real names: the linker only needs the names;
  # every CUDA symbol is left for the loader, which finds it in the real
  # libraries (LD_PRELOAD them where the loader would not look).
  mkdir -p "$home/lib/stubs"
  echo 'void ml_service_cuda_stub(void) {}' > "$root/stub.c"
  for lib in cuda cublas cublasLt curand nvrtc; do
    gcc -shared -fPIC -o "$home/lib/stubs/lib$lib.so" "$root/stub.c"
  done
  # candle's kernels also link the CUDA runtime, which the wheel ships.
  ln -sf ../libcudart.so.13 "$home/lib/stubs/libcudart.so"
  touch "$root/.ok"
  echo "CUDA 13.0 build tools in $home" >&2
fi
home="$(realpath "$root/nvidia/cu13")"
echo "export CUDA_HOME='$home'"
echo "export PATH='$home/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
echo "export RUSTFLAGS='-C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files'"
