-- The prediction log: one row per answer the service gave, in a schema of the
-- service's own (`ml_service`), apart from the app's tables. The service
-- writes it as a login role granted `ml_service_writer` (PREDICTION_LOG_DATABASE_URL),
-- while the app data stays readable only (`ml_service_reader`).
CREATE SCHEMA IF NOT EXISTS ml_service;
REVOKE ALL ON SCHEMA ml_service FROM PUBLIC;

CREATE TABLE IF NOT EXISTS ml_service.predictions (
    id             uuid PRIMARY KEY,          -- UUID v7: time-ordered
    at             timestamptz NOT NULL,
    endpoint       text NOT NULL CHECK (endpoint IN ('match', 'recommend', 'notify')),
    model          text NOT NULL,
    version        bigint NOT NULL,
    route          text NOT NULL,             -- the A/B split: '3=90,4=10'
    user_id        uuid NOT NULL,
    other_user_id  uuid,
    request_digest text NOT NULL,
    score          real,
    decision       jsonb NOT NULL,
    cached         boolean NOT NULL,
    fallback       boolean NOT NULL
);
-- The key is time-ordered (v7 ids compare by their first 48 bits, the
-- millisecond), so inserts append and a time range is a key range: retention
-- deletes by key. No other index: each would cost every answer another
-- b-tree insert.

-- The role the service writes its log as. It cannot log in: grant it to a
-- login role (`CREATE ROLE ml_service_log LOGIN PASSWORD '…' IN ROLE
-- ml_service_writer`). Roles are cluster-wide; two databases migrating at once
-- may race to create it, and the loser finds it made.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ml_service_writer') THEN
        CREATE ROLE ml_service_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;

GRANT USAGE ON SCHEMA ml_service TO ml_service_writer;
GRANT SELECT, INSERT, DELETE ON ml_service.predictions TO ml_service_writer;
