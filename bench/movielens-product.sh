#!/usr/bin/env bash
# The recommender measured through the product path on MovieLens-1M (issue 34):
# the training and validation parts of RecBole's split (ratings >= 3, per-user
# random 8:1:1, seed 2020) written as a MovieLens folder, `data import`,
# `serve` (which trains), every test user's POST /recommend/destinations
# (limit 10) over HTTP, NDCG@10 and Recall@10 from those answers, and the
# paired difference against EASE tuned on the split. This is the integration
# test `movielens::movielens_1m_imported_trained_and_served_over_http_ranks_above_the_floor`,
# which CI runs; this script runs it alone and prints its report.
#
#   bench/movielens-product.sh        # needs scripts/fetch-fixtures.sh first
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-fixtures.sh >/dev/null
report=$(mktemp)
MOVIELENS_PRODUCT_REPORT="$report" CI=true cargo test --release -p ml-cli --test api \
  movielens_1m_imported_trained_and_served_over_http -- --nocapture >/dev/null
cat "$report"
rm -f "$report"
