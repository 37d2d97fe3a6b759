-- App data, Postgres (Supabase) flavour: uuid keys, timestamptz, text[] lists.
-- Profiles are keyed by the auth.users id in a Supabase project; `ml-service
-- data migrate` applies this file (recorded in schema_migrations); the columns match the SQLite
-- migration one for one.
CREATE TABLE IF NOT EXISTS profiles (
    id                 uuid PRIMARY KEY,
    display_name       text NOT NULL,
    age                smallint NOT NULL CHECK (age BETWEEN 13 AND 120),
    interests          text[] NOT NULL DEFAULT '{}',
    travel_style       text NOT NULL CHECK (travel_style IN ('backpacker','adventurer','cultural','comfort','luxury','relaxer')),
    style_pace         real NOT NULL CHECK (style_pace BETWEEN 0 AND 1),
    style_comfort      real NOT NULL CHECK (style_comfort BETWEEN 0 AND 1),
    style_spontaneity  real NOT NULL CHECK (style_spontaneity BETWEEN 0 AND 1),
    openness           real NOT NULL CHECK (openness BETWEEN 0 AND 1),
    conscientiousness  real NOT NULL CHECK (conscientiousness BETWEEN 0 AND 1),
    extraversion       real NOT NULL CHECK (extraversion BETWEEN 0 AND 1),
    agreeableness      real NOT NULL CHECK (agreeableness BETWEEN 0 AND 1),
    neuroticism        real NOT NULL CHECK (neuroticism BETWEEN 0 AND 1),
    languages          text[] NOT NULL DEFAULT '{}',
    timezone           text NOT NULL,
    budget             text NOT NULL CHECK (budget IN ('low','medium','high')),
    preferred_duration text NOT NULL CHECK (preferred_duration IN ('weekend','week','month')),
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS destinations (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    country      text NOT NULL,
    tags         text[] NOT NULL,
    cost_level   text NOT NULL CHECK (cost_level IN ('low','medium','high')),
    trip_lengths text[] NOT NULL,
    latitude     double precision NOT NULL,
    longitude    double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS interactions (
    id             bigserial PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES profiles(id),
    destination_id uuid NOT NULL REFERENCES destinations(id),
    kind           text NOT NULL CHECK (kind IN ('viewed','saved','booked','visited','rated')),
    rating         real CHECK (rating BETWEEN 1 AND 5),
    occurred_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user_id, occurred_at);

CREATE TABLE IF NOT EXISTS match_outcomes (
    id               bigserial PRIMARY KEY,
    user_a           uuid NOT NULL REFERENCES profiles(id),
    user_b           uuid NOT NULL REFERENCES profiles(id),
    destination_id   uuid REFERENCES destinations(id),
    trip_start       date,
    trip_interests   text[] NOT NULL DEFAULT '{}',
    matched          boolean NOT NULL,
    decided_at       timestamptz NOT NULL,
    true_probability real,
    CHECK (user_a <> user_b)
);

CREATE TABLE IF NOT EXISTS activity_events (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES profiles(id),
    occurred_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS activity_user ON activity_events (user_id, occurred_at);

CREATE TABLE IF NOT EXISTS notification_log (
    id                bigserial PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES profiles(id),
    notification_type text NOT NULL CHECK (notification_type IN ('match_found','message','reminder')),
    channel           text NOT NULL CHECK (channel IN ('push','email','sms')),
    sent_at           timestamptz NOT NULL,
    opened_at         timestamptz
);
CREATE INDEX IF NOT EXISTS notification_user ON notification_log (user_id, sent_at);
