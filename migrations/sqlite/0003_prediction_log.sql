-- The prediction log: one row per answer the service gave (the service's own
-- table, apart from the app's). `at_ms` is Unix milliseconds (UTC); `decision`
-- is JSON; `cached` and `fallback` are 0 or 1. Same shape as the Postgres
-- migration's `ml_service.predictions`.
CREATE TABLE IF NOT EXISTS ml_predictions (
    id             TEXT PRIMARY KEY,
    at_ms          INTEGER NOT NULL,
    endpoint       TEXT NOT NULL,
    model          TEXT NOT NULL,
    version        INTEGER NOT NULL,
    route          TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    other_user_id  TEXT,
    request_digest TEXT NOT NULL,
    score          REAL,
    decision       TEXT NOT NULL,
    cached         INTEGER NOT NULL,
    fallback       INTEGER NOT NULL
);
-- Retention deletes by time; reports read one model's rows by time; outcomes
-- are joined by user.
CREATE INDEX IF NOT EXISTS ml_predictions_at ON ml_predictions (at_ms);
CREATE INDEX IF NOT EXISTS ml_predictions_model_at ON ml_predictions (model, at_ms);
CREATE INDEX IF NOT EXISTS ml_predictions_user_at ON ml_predictions (user_id, at_ms);
