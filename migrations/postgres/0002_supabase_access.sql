-- Supabase conventions: an `auth` schema (a stub only where none exists, so a
-- plain Postgres behaves like a Supabase project), row-level security on every
-- app-data table, and the role the service reads as.
--
-- In a Supabase project `auth.users` already exists and is left untouched;
-- `profiles.id` is the `auth.users` id of the traveller.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        CREATE TABLE auth.users (
            id         uuid PRIMARY KEY,
            email      text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        -- Supabase's auth.uid(): the caller's user id from the request's JWT claims.
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
            $f$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $f$;
    END IF;
END $$;

-- The role ml-service reads as. It cannot log in: grant it to the login role
-- the service uses (`CREATE ROLE ml_service LOGIN PASSWORD '…' IN ROLE
-- ml_service_reader`). Roles are cluster-wide, so two databases migrating at
-- once may race to create it; the loser finds it made.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ml_service_reader') THEN
        CREATE ROLE ml_service_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;

DO $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ml_service_reader', current_schema());
    FOREACH t IN ARRAY ARRAY['profiles', 'destinations', 'interactions', 'match_outcomes',
                             'activity_events', 'notification_log'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT ON %I TO ml_service_reader', t);
        EXECUTE format('DROP POLICY IF EXISTS ml_service_read ON %I', t);
        EXECUTE format('CREATE POLICY ml_service_read ON %I FOR SELECT TO ml_service_reader USING (true)', t);
    END LOOP;
    -- In a Supabase project, signed-in users may read their own profile and
    -- the catalogue through the Data API; everything else stays server-side.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        DROP POLICY IF EXISTS own_profile ON profiles;
        CREATE POLICY own_profile ON profiles FOR SELECT TO authenticated USING (auth.uid() = id);
        DROP POLICY IF EXISTS catalogue ON destinations;
        CREATE POLICY catalogue ON destinations FOR SELECT TO authenticated USING (true);
    END IF;
END $$;
