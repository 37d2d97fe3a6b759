-- App data, embedded SQLite flavour. Same tables and columns as the Postgres
-- migration; uuids are TEXT, instants are INTEGER Unix milliseconds (UTC), lists
-- are JSON arrays in TEXT.
CREATE TABLE IF NOT EXISTS profiles (
    id                 TEXT PRIMARY KEY,
    display_name       TEXT NOT NULL,
    age                INTEGER NOT NULL CHECK (age BETWEEN 13 AND 120),
    interests          TEXT NOT NULL DEFAULT '[]',
    travel_style       TEXT NOT NULL CHECK (travel_style IN ('backpacker','adventurer','cultural','comfort','luxury','relaxer')),
    style_pace         REAL NOT NULL CHECK (style_pace BETWEEN 0 AND 1),
    style_comfort      REAL NOT NULL CHECK (style_comfort BETWEEN 0 AND 1),
    style_spontaneity  REAL NOT NULL CHECK (style_spontaneity BETWEEN 0 AND 1),
    openness           REAL NOT NULL CHECK (openness BETWEEN 0 AND 1),
    conscientiousness  REAL NOT NULL CHECK (conscientiousness BETWEEN 0 AND 1),
    extraversion       REAL NOT NULL CHECK (extraversion BETWEEN 0 AND 1),
    agreeableness      REAL NOT NULL CHECK (agreeableness BETWEEN 0 AND 1),
    neuroticism        REAL NOT NULL CHECK (neuroticism BETWEEN 0 AND 1),
    languages          TEXT NOT NULL DEFAULT '[]',
    timezone           TEXT NOT NULL,
    budget             TEXT NOT NULL CHECK (budget IN ('low','medium','high')),
    preferred_duration TEXT NOT NULL CHECK (preferred_duration IN ('weekend','week','month')),
    created_at         INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS destinations (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    country      TEXT NOT NULL,
    tags         TEXT NOT NULL,
    cost_level   TEXT NOT NULL CHECK (cost_level IN ('low','medium','high')),
    trip_lengths TEXT NOT NULL,
    latitude     REAL NOT NULL,
    longitude    REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS interactions (
    id             INTEGER PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES profiles(id),
    destination_id TEXT NOT NULL REFERENCES destinations(id),
    kind           TEXT NOT NULL CHECK (kind IN ('viewed','saved','booked','visited','rated')),
    rating         REAL CHECK (rating BETWEEN 1 AND 5),
    occurred_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user_id, occurred_at);

CREATE TABLE IF NOT EXISTS match_outcomes (
    id               INTEGER PRIMARY KEY,
    user_a           TEXT NOT NULL REFERENCES profiles(id),
    user_b           TEXT NOT NULL REFERENCES profiles(id),
    destination_id   TEXT REFERENCES destinations(id),
    trip_start       TEXT,
    trip_interests   TEXT NOT NULL DEFAULT '[]',
    matched          INTEGER NOT NULL CHECK (matched IN (0, 1)),
    decided_at       INTEGER NOT NULL,
    true_probability REAL,
    CHECK (user_a <> user_b)
);

CREATE TABLE IF NOT EXISTS activity_events (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES profiles(id),
    occurred_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS activity_user ON activity_events (user_id, occurred_at);

CREATE TABLE IF NOT EXISTS notification_log (
    id                INTEGER PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES profiles(id),
    notification_type TEXT NOT NULL CHECK (notification_type IN ('match_found','message','reminder')),
    channel           TEXT NOT NULL CHECK (channel IN ('push','email','sms')),
    sent_at           INTEGER NOT NULL,
    opened_at         INTEGER
);
CREATE INDEX IF NOT EXISTS notification_user ON notification_log (user_id, sent_at);
