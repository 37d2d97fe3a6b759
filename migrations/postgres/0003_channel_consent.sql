-- What each user agreed to be notified on: one row per user and channel. A
-- channel without a row is unknown, and the service's DEFAULT_CHANNELS
-- decides (push only unless told otherwise). The app writes it when a user
-- answers a consent prompt or changes a setting; the service only reads it,
-- under row-level security like the other app-data tables.
CREATE TABLE IF NOT EXISTS channel_consent (
    user_id    uuid NOT NULL REFERENCES profiles(id),
    channel    text NOT NULL CHECK (channel IN ('push','email','sms')),
    granted    boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);

ALTER TABLE channel_consent ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON channel_consent TO ml_service_reader;
DROP POLICY IF EXISTS ml_service_read ON channel_consent;
CREATE POLICY ml_service_read ON channel_consent FOR SELECT TO ml_service_reader USING (true);
