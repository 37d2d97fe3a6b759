-- Outcomes tied to predictions, in the service's own schema: what happened
-- after an answer, joined from the app's tables (`source` 'joined') or
-- reported by the app (`source` 'feedback', POST /feedback). One row per
-- prediction and item (a recommendation's destination name; '' otherwise).
-- Same columns as SQLite's `ml_outcomes`; see its migration for each one.
CREATE TABLE IF NOT EXISTS ml_service.outcomes (
    prediction_id uuid NOT NULL,
    item          text NOT NULL DEFAULT '',
    source        text NOT NULL CHECK (source IN ('joined', 'feedback')),
    kind          text NOT NULL CHECK (kind IN ('matched', 'not_matched', 'saved', 'booked', 'visited', 'opened', 'not_opened')),
    value         double precision NOT NULL,
    position      integer,
    delay_ms      bigint,
    at            timestamptz NOT NULL,
    PRIMARY KEY (prediction_id, item)
);

-- How long each answer took, for the experiments' latency guardrail.
ALTER TABLE ml_service.predictions ADD COLUMN IF NOT EXISTS latency_us integer;

-- The outcome join looks a predicted pair up among the decided ones.
CREATE INDEX IF NOT EXISTS match_outcomes_pair ON match_outcomes (user_a, user_b, decided_at);

-- Leases: which replica acts for the service (an experiment's automatic
-- decision) until when.
CREATE TABLE IF NOT EXISTS ml_service.leases (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    until  timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON ml_service.outcomes, ml_service.leases TO ml_service_writer;

-- The join reads what the app recorded: the writer may read those tables
-- (and only those), through a policy like the reader's.
DO $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ml_service_writer', current_schema());
    FOREACH t IN ARRAY ARRAY['destinations', 'interactions', 'match_outcomes', 'notification_log'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO ml_service_writer', t);
        EXECUTE format('DROP POLICY IF EXISTS ml_service_join ON %I', t);
        EXECUTE format('CREATE POLICY ml_service_join ON %I FOR SELECT TO ml_service_writer USING (true)', t);
    END LOOP;
END $$;
