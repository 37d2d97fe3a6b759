#!/usr/bin/env bash
# Peak memory of `ml-service train` reading Postgres, at several TRAIN_MAX_USERS
# bounds, over a database of USERS users with demo-like histories (default
# 1,000,000: about 163 million rows, ~20 GB of Postgres; USERS=200000 takes
# minutes). The database is made fresh and dropped at the end.
#
# The data: `data demo --users 1000`, then clones of those 1,000 users under new
# ids (md5 of id and copy number), each with the original's interactions,
# activity, notifications and match outcomes (pairs cloned within one copy).
#
#   USERS=200000 BOUNDS="10000 50000" bench/train-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-1000000}
bounds=${BOUNDS:-"10000 50000"}
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=mlsvc_bench_$$
work=$(mktemp -d)
cargo build --release --quiet --bin ml-service
bin=$PWD/target/release/ml-service
psql "$admin" -qc "CREATE DATABASE $db"
trap 'psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; rm -rf "$work"' EXIT
export DATABASE_URL=${admin%/*}/$db LOG_LEVEL=warn MODEL_PATH=$work/models
base=1000
copies=$(( users / base - 1 ))
"$bin" data demo --users $base --seed 1 >/dev/null
t0=$(date +%s)
psql "$DATABASE_URL" -q <<SQL
-- Bulk fill: foreign-key triggers off (the clones are consistent by
-- construction), per-user indexes rebuilt after.
SET session_replication_role = replica;
DROP INDEX interactions_user, activity_user, notification_user;
CREATE TEMP TABLE c AS SELECT g FROM generate_series(1, $copies) g;
CREATE FUNCTION pg_temp.clone(id uuid, g int) RETURNS uuid LANGUAGE sql IMMUTABLE AS
  \$\$ SELECT md5(id::text || g)::uuid \$\$;
INSERT INTO profiles (id, display_name, age, interests, travel_style, style_pace, style_comfort,
  style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
  languages, timezone, budget, preferred_duration, created_at)
SELECT pg_temp.clone(id, g), display_name, age, interests, travel_style, style_pace, style_comfort,
  style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
  languages, timezone, budget, preferred_duration, created_at FROM profiles, c;
INSERT INTO interactions (user_id, destination_id, kind, rating, occurred_at)
SELECT pg_temp.clone(user_id, g), destination_id, kind, rating, occurred_at
FROM (SELECT * FROM interactions) i, c;
INSERT INTO match_outcomes (user_a, user_b, destination_id, trip_start, trip_interests, matched, decided_at, true_probability)
SELECT pg_temp.clone(user_a, g), pg_temp.clone(user_b, g), destination_id, trip_start, trip_interests, matched, decided_at, true_probability
FROM (SELECT * FROM match_outcomes) m, c;
INSERT INTO activity_events (user_id, occurred_at)
SELECT pg_temp.clone(user_id, g), occurred_at FROM (SELECT * FROM activity_events) a, c;
INSERT INTO notification_log (user_id, notification_type, channel, sent_at, opened_at)
SELECT pg_temp.clone(user_id, g), notification_type, channel, sent_at, opened_at
FROM (SELECT * FROM notification_log) n, c;
CREATE INDEX interactions_user ON interactions (user_id, occurred_at);
CREATE INDEX activity_user ON activity_events (user_id, occurred_at);
CREATE INDEX notification_user ON notification_log (user_id, sent_at);
ANALYZE;
SQL
rows=$(psql "$DATABASE_URL" -tAc "SELECT (SELECT count(*) FROM profiles) || ' users, ' ||
  (SELECT count(*) FROM interactions) + (SELECT count(*) FROM match_outcomes) +
  (SELECT count(*) FROM activity_events) + (SELECT count(*) FROM notification_log) || ' history rows, ' ||
  pg_size_pretty(pg_database_size(current_database()))")
echo "data: $rows (filled in $(( $(date +%s) - t0 )) s)"
echo
echo "| TRAIN_MAX_USERS | users read | peak RSS | wall time |"
echo "| --- | --- | --- | --- |"
for b in $bounds; do
  rm -rf "$MODEL_PATH"
  /usr/bin/time -f "%M %e" -o "$work/time" env TRAIN_MAX_USERS=$b "$bin" train >"$work/train.log" 2>&1 ||
    { cat "$work/train.log"; exit 1; }
  read -r kb secs < "$work/time"
  kept=$(grep -o '^read [0-9]* users' "$work/train.log" | grep -o '[0-9]*')
  echo "| $b | $kept | $(( kb / 1024 )) MiB | ${secs} s |"
done
