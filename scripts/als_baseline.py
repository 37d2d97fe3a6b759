"""implicit's ALS on the split `ml-service eval recommendation --export-split DIR`
wrote, with the same protocol: factors 64, regularisation and iterations picked
on validation (trained on train), refitted on train + validation, full ranking
excluding train and validation items, top-10 metrics. Prints one JSON line."""
import json
import math
import sys

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits


def load(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path)]
    return [(int(u), int(i)) for u, i in rows if u]


def matrix(pairs, users, items):
    u = np.array([p[0] for p in pairs], dtype=np.int32)
    i = np.array([p[1] for p in pairs], dtype=np.int32)
    return sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (u, i)), shape=(users, items))


def metrics(model, history, targets, users):
    ids = np.arange(users)
    rec, _ = model.recommend(ids, history[ids], N=10, filter_already_liked_items=True)
    acc = dict(recall=0.0, ndcg=0.0, mrr=0.0, hit=0.0, precision=0.0)
    n = 0
    for u in range(users):
        t = targets.get(u)
        if not t:
            continue
        n += 1
        hits = [int(i) in t for i in rec[u][:10]]
        k = sum(hits)
        acc["recall"] += k / len(t)
        acc["precision"] += k / 10
        acc["hit"] += 1.0 if k else 0.0
        acc["mrr"] += next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0)
        dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(t), 10)))
        acc["ndcg"] += dcg / idcg
    return {k: v / max(n, 1) for k, v in acc.items()}


def main(d):
    meta = json.load(open(f"{d}/meta.json"))
    users, items = meta["users"], meta["items"]
    train, valid, test = (load(f"{d}/{p}.tsv") for p in ("train", "valid", "test"))

    def group(pairs):
        out = {}
        for u, i in pairs:
            out.setdefault(u, set()).add(i)
        return out

    x_train = matrix(train, users, items)
    x_tv = matrix(train + valid, users, items)
    valid_t, test_t = group(valid), group(test)
    best = None
    with threadpool_limits(1, "blas"):
        for reg in (0.01, 0.1, 1.0):
            for iters in (15, 30):
                m = AlternatingLeastSquares(factors=64, regularization=reg, iterations=iters, random_state=7)
                m.fit(x_train, show_progress=False)
                score = metrics(m, x_train, valid_t, users)["ndcg"]
                if best is None or score > best[0]:
                    best = (score, reg, iters)
        _, reg, iters = best
        m = AlternatingLeastSquares(factors=64, regularization=reg, iterations=iters, random_state=7)
        m.fit(x_tv, show_progress=False)
        out = metrics(m, x_tv, test_t, users)
    out.update(regularization=reg, iterations=iters)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
