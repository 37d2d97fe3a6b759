-- What each user agreed to be notified on: one row per user and channel. A
-- channel without a row is unknown, and the service's DEFAULT_CHANNELS
-- decides (push only unless told otherwise). Same shape as the Postgres
-- migration; `granted` is 0 or 1, `updated_at` Unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS channel_consent (
    user_id    TEXT NOT NULL REFERENCES profiles(id),
    channel    TEXT NOT NULL CHECK (channel IN ('push','email','sms')),
    granted    INTEGER NOT NULL CHECK (granted IN (0, 1)),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, channel)
);
