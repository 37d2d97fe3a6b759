-- The prediction log: one row per answer the service gave (the service's own
-- table, apart from the app's). The key is the prediction id's 16 bytes: a
-- UUID v7, time-ordered, so rows append at the end of the table's b-tree, and
-- a time range is a key range (retention deletes by key). No other index:
-- each would cost every answer a second b-tree insert. `at_ms` is Unix
-- milliseconds (UTC); `decision` is JSON; `cached` and `fallback` are 0 or 1.
-- Same columns as the Postgres migration's `ml_service.predictions`.
CREATE TABLE IF NOT EXISTS ml_predictions (
    id             BLOB PRIMARY KEY,
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
) WITHOUT ROWID;
