-- Outcomes tied to predictions (the service's own table, like the log):
-- what happened after an answer, either joined from the app's tables
-- (`source` 'joined': a match decided, a recommended place saved, booked or
-- visited, a notification opened) or reported by the app (`source`
-- 'feedback', POST /feedback). One row per prediction and item: the item is
-- the destination's name for a recommendation, '' otherwise. `value` is the
-- outcome as a number (1 matched / 0 not; 1 per converted place; 1 opened /
-- 0 not), `position` a recommended place's 1-based rank, `delay_ms` the time
-- from the prediction (notifications: from the send) to the outcome, `at_ms`
-- when it happened (Unix milliseconds, UTC). Same columns as Postgres's
-- `ml_service.outcomes`.
CREATE TABLE IF NOT EXISTS ml_outcomes (
    prediction_id BLOB NOT NULL,
    item          TEXT NOT NULL DEFAULT '',
    source        TEXT NOT NULL CHECK (source IN ('joined', 'feedback')),
    kind          TEXT NOT NULL CHECK (kind IN ('matched', 'not_matched', 'saved', 'booked', 'visited', 'opened', 'not_opened')),
    value         REAL NOT NULL,
    position      INTEGER,
    delay_ms      INTEGER,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (prediction_id, item)
) WITHOUT ROWID;

-- How long each answer took, for the experiments' latency guardrail.
ALTER TABLE ml_predictions ADD COLUMN latency_us INTEGER;

-- The outcome join looks a predicted pair up among the decided ones.
CREATE INDEX IF NOT EXISTS match_outcomes_pair ON match_outcomes (user_a, user_b, decided_at);

-- Leases: which replica acts for the service (an experiment's automatic
-- decision) until when, so twenty replicas never act twenty times.
CREATE TABLE IF NOT EXISTS ml_leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
