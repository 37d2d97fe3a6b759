#!/usr/bin/env bash
# Training time, peak memory and held-out quality of the recommender on a large
# synthetic catalogue, through the product path: a MovieLens-format folder
# (ITEMS destinations, USERS users with PER_USER ratings each on average,
# popularity skewed and taste clustered, so there is co-engagement to learn),
# `data import` into a fresh embedded store, then `ml-service train` under
# /usr/bin/time. Past REC_DENSE_MAX (10,000) the item model is low-rank
# (crates/train/src/lowrank.rs); set REC_DENSE_MAX to compare with the dense fit.
#
#   ITEMS=20000 bench/large-catalogue.sh
#   ITEMS=100000 USERS=20000 bench/large-catalogue.sh
set -euo pipefail
cd "$(dirname "$0")/.."
items=${ITEMS:-20000}
users=${USERS:-20000}
per_user=${PER_USER:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin ml-service
bin=$PWD/target/release/ml-service
python3 - "$work/large" "$items" "$users" "$per_user" <<'PY'
import os, random, sys
out, items, users, per_user = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(out)
rng = random.Random(7)
clusters = max(20, items // 100)
# Each destination belongs to one cluster; within it, Zipf-like popularity.
members = [[] for _ in range(clusters)]
for i in range(items):
    members[rng.randrange(clusters)].append(i)
weights = [[1.0 / (r + 1) ** 0.8 for r in range(len(m))] for m in members]
t0 = 1_600_000_000
with open(f"{out}/large.inter", "w") as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    for u in range(users):
        n = max(5, int(rng.expovariate(1 / per_user)))
        # A user's taste: three clusters, most of their ratings in the first.
        taste = [rng.randrange(clusters) for _ in range(3)]
        seen = set()
        t = t0 + rng.randrange(86400 * 365)
        for _ in range(n):
            c = taste[0] if rng.random() < 0.6 else taste[rng.randrange(1, 3)] if rng.random() < 0.8 else rng.randrange(clusters)
            if not members[c]:
                continue
            i = rng.choices(members[c], weights[c])[0]
            if i in seen:
                continue
            seen.add(i)
            t += rng.randrange(600, 86400 * 3)
            f.write(f"u{u}\tplace {i}\t{rng.choice([3, 4, 5])}\t{t}\n")
with open(f"{out}/large.item", "w") as f:
    f.write("item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n")
    for i in range(items):
        f.write(f"place {i}\tplace {i}\t2000\tDrama\n")
PY
export LOG_LEVEL=${LOG_LEVEL:-info}
db="$work/app.db"
"$bin" data import "$work/large" --sqlite-path "$db" 2>&1 | tail -n 2
/usr/bin/time -v "$bin" train recommendation --sqlite-path "$db" --model-path "$work/models" >"$work/train.log" 2>&1 || true
grep -v -E "^\s*$" "$work/train.log" | grep -E "recommend|error|Error|Maximum resident|Elapsed \(wall" | tail -n 20
du -h "$work"/models/recommendation/1/model.onnx 2>/dev/null || true
