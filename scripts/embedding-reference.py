#!/usr/bin/env python3
"""Reference embeddings for crates/embed/tests/reference.json.

An independent implementation of all-MiniLM-L6-v2 as sentence-transformers
runs it (BERT forward, mean pooling over the attention mask, L2 normalise),
written in NumPy in float64 from the same safetensors file, so the Rust
(candle) model is checked against arithmetic it does not share. Run once when
the model or the texts change:

    scripts/pip-tool.sh ref-venv "numpy==2.2.6" python
    .fixtures/ref-venv/bin/pip install "safetensors==0.5.3" "tokenizers==0.21.4"
    .fixtures/ref-venv/bin/python scripts/embedding-reference.py \
        "$(scripts/fetch-embedding-model.sh)" > crates/embed/tests/reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

TEXTS = [
    "hiking",
    "trekking",
    "street food",
    "local cuisine and wine tasting",
    "Scuba diving off the coral reefs of the islands",
]


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(w, cfg, ids, types):
    g = lambda k: w[k].astype(np.float64)
    n = len(ids)
    x = g("embeddings.word_embeddings.weight")[ids]
    x = x + g("embeddings.position_embeddings.weight")[:n]
    x = x + g("embeddings.token_type_embeddings.weight")[types]
    x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"))
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda name, v: v @ g(p + name + ".weight").T + g(p + name + ".bias")
        q = lin("attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        a = lin("attention.output.dense", a)
        x = layer_norm(x + a, g(p + "attention.output.LayerNorm.weight"), g(p + "attention.output.LayerNorm.bias"))
        h = gelu(lin("intermediate.dense", x))
        h = lin("output.dense", h)
        x = layer_norm(x + h, g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"))
    m = x.mean(0)
    return m / np.linalg.norm(m)


def main():
    folder = sys.argv[1]
    w = load_file(f"{folder}/model.safetensors")
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    cfg = json.load(open(f"{folder}/config.json"))
    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    tok.no_padding()
    vectors = []
    for t in TEXTS:
        e = tok.encode(t)
        vectors.append([round(float(v), 7) for v in embed(w, cfg, e.ids, e.type_ids)])
    json.dump({"source": "scripts/embedding-reference.py (NumPy, float64)", "texts": TEXTS, "vectors": vectors}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
