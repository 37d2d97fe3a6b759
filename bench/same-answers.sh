#!/usr/bin/env bash
# Two builds of the service answer the same: both on the demo data of
# bench/common.sh (prediction cache off), every bench body posted to each
# (recommendations also with limit 50 and a budget filter, notifications
# with every type and urgency), answers compared field by field without
# `latency_ms`. A notification's `send_at` can differ by a second when the
# two requests straddle one (the plan starts a minute from now).
#
#   bench/same-answers.sh BIN_A BIN_B
set -euo pipefail
BENCH_BIN=$1
export BENCH_BIN
source "$(dirname "$0")/common.sh"
start_service PREDICTION_CACHE=false
pa=$pid
porta=$port
bin=$2 start_service PREDICTION_CACHE=false
pb=$pid
portb=$port
trap 'kill $pa $pb 2>/dev/null || true' EXIT
python3 - "$porta" "$portb" "$work" <<'PY'
import json
import sys
import urllib.request

pa, pb, work = sys.argv[1:]


def post(port, path, body):
    r = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body.encode(),
        headers={"content-type": "application/json"},
    )
    answer = json.loads(urllib.request.urlopen(r).read())
    answer.pop("latency_ms", None)
    return answer


paths = {"recommend": "/recommend/destinations", "notify": "/notifications/optimize", "match": "/match/score"}
for ep, path in paths.items():
    bodies = open(f"{work}/{ep}.jsonl").read().splitlines()
    if ep == "recommend":
        bodies += [json.dumps({**json.loads(b), "limit": 50, "filters": {"budget": "medium"}}) for b in bodies[:300]]
    if ep == "notify":
        bodies += [
            json.dumps({**json.loads(b), "urgency": u, "notification_type": t})
            for u in ["low", "medium", "high"]
            for t in ["match_found", "reminder", "message"]
            for b in bodies[:100]
        ]
    differ = 0
    for b in bodies:
        x, y = post(pa, path, b), post(pb, path, b)
        if x != y:
            differ += 1
            if differ <= 3:
                print("differs:", ep, b, x, y)
    print(f"{ep}: {len(bodies)} requests, {differ} differ")
PY
