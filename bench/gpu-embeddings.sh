#!/usr/bin/env bash
# Embedding throughput, CPU against GPU, on a CUDA host (the one prepared
# script the device check runs). Takes the `throughput` example built with
# `--features cuda` (scripts/setup-cuda-build.sh) and a model folder; finds
# the CUDA 13 libraries the build links (the driver's libcuda; cuBLAS,
# cuRAND and NVRTC from a CUDA install or PyTorch's nvidia-* wheels) and
# preloads them. With PyTorch present it also times PyTorch (transformers'
# BertModel, same weights, same texts, float32) on the same GPU as a yardstick.
#
#   bench/gpu-embeddings.sh target-cuda/release/examples/throughput MODEL_DIR [SECONDS]
set -euo pipefail
bin=${1:?throughput binary}
model=${2:?model folder}
secs=${3:-3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
find_lib() {
  local name=$1 p
  p=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}')
  if [ -z "$p" ]; then
    p=$(find /usr/local/nvidia /usr/local/cuda* /usr/lib /opt -name "$name" 2>/dev/null | head -n1)
  fi
  if [ -z "$p" ] && command -v python3 >/dev/null; then
    local site
    site=$(python3 -c 'import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
    [ -n "$site" ] && p=$(find "$site/nvidia" -name "$name" 2>/dev/null | head -n1)
  fi
  [ -n "$p" ] || { echo "cannot find $name" >&2; exit 1; }
  echo "$p"
}
preload=""
for l in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  preload="$preload:$(find_lib "$l")"
done
export LD_PRELOAD="${preload#:}"
echo "preloaded: $LD_PRELOAD"
"$bin" "$model" --gpu --seconds "$secs"
"$bin" "$model" --print-texts > /tmp/embedding-texts.txt
unset LD_PRELOAD
if python3 -c 'import torch, transformers' 2>/dev/null; then
  python3 - "$model" "$secs" /tmp/embedding-texts.txt <<'PY'
import sys, time, torch
from transformers import BertModel, PreTrainedTokenizerFast
folder, secs = sys.argv[1], float(sys.argv[2])
tok = PreTrainedTokenizerFast(tokenizer_file=f"{folder}/tokenizer.json", pad_token="[PAD]")
model = BertModel.from_pretrained(folder, torch_dtype=torch.float32).cuda().eval()
texts = [l.rstrip("\n") for l in open(sys.argv[3]) if l.strip()]
def run(batch):
    n, t0 = 0, None
    with torch.inference_mode():
        for warm in (True, False):
            t0 = time.perf_counter(); n = 0
            while time.perf_counter() - t0 < (0.5 if warm else secs):
                for i in range(0, len(texts), batch):
                    enc = tok(texts[i:i + batch], padding=True, return_tensors="pt").to("cuda")
                    h = model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).float()
                    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
                    v.cpu()
                    n += len(texts[i:i + batch])
    return n / (time.perf_counter() - t0)
print(f"pytorch cuda: {run(1):.0f} texts/s at batch 1, {run(32):.0f} texts/s at batch 32")
PY
fi
