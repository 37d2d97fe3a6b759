//! The Postgres store against a real Postgres: each test makes a fresh
//! database ([`TestDb`]) and drops it afterwards, even when the test fails.

use ml_data::testing::TestDb;
use ml_data::{DataSource, PgOptions, PgStore, TrainingSample};
use ml_train::generator::{generate, GeneratorConfig};
use std::time::Duration;
use tokio_postgres::NoTls;

#[tokio::test]
async fn migrations_apply_once_enforce_constraints_and_enable_row_level_security() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let store = db.store(false);
    assert_eq!(store.migrate().await.unwrap(), vec![1, 2, 3, 4, 5]);
    assert!(store.migrate().await.unwrap().is_empty(), "idempotent");
    let c = db.client().await;
    let tables: Vec<String> = ml_data::import::TABLES
        .iter()
        .map(|t| t.to_string())
        .collect();
    let rls: Vec<(String, bool)> = c
        .query(
            "SELECT relname::text, relrowsecurity FROM pg_class WHERE relname = ANY($1) ORDER BY 1",
            &[&tables],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rls.len(), ml_data::import::TABLES.len(), "{rls:?}");
    assert!(rls.iter().all(|(_, on)| *on), "{rls:?}");
    // The auth stub exists where there was none.
    let uid = c.query_one("SELECT auth.uid() IS NULL", &[]).await.unwrap();
    assert!(uid.get::<_, bool>(0));

    c.batch_execute(
        "INSERT INTO profiles (id, display_name, age, interests, travel_style, style_pace, style_comfort,
           style_spontaneity, openness, conscientiousness, extraversion, agreeableness, neuroticism,
           languages, timezone, budget, preferred_duration)
         VALUES ('00000000-0000-4000-8000-000000000001', 'a', 30, '{food,art}', 'cultural', 0.4, 0.5, 0.2,
           0.5, 0.5, 0.5, 0.5, 0.5, '{en}', 'Europe/Paris', 'medium', 'week')",
    )
    .await
    .unwrap();
    let bad_budget = c
        .batch_execute(
            "INSERT INTO profiles (id, display_name, age, travel_style, style_pace, style_comfort, style_spontaneity,
               openness, conscientiousness, extraversion, agreeableness, neuroticism, timezone, budget, preferred_duration)
             VALUES (gen_random_uuid(), 'b', 30, 'cultural', 0.4, 0.5, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5, 'UTC', 'huge', 'week')",
        )
        .await;
    assert!(
        bad_budget.is_err(),
        "a budget outside low/medium/high was accepted"
    );
    let self_match = c
        .batch_execute(
            "INSERT INTO match_outcomes (user_a, user_b, matched, decided_at)
             VALUES ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000001', true, now())",
        )
        .await;
    assert!(
        self_match.is_err(),
        "a user matched with themselves was accepted"
    );
}

#[tokio::test]
async fn an_existing_auth_schema_is_left_as_it_is() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let c = db.client().await;
    // What a Supabase project already has (in part).
    c.batch_execute(
        "CREATE SCHEMA auth; CREATE TABLE auth.users (id uuid PRIMARY KEY, aud text, phone text);",
    )
    .await
    .unwrap();
    db.store(false).migrate().await.unwrap();
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'auth' AND table_name = 'users' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, ["id", "aud", "phone"]);
    let uid = c
        .query_opt(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'auth' AND p.proname = 'uid'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        uid.is_none(),
        "the stub's auth.uid() was added to an existing auth schema"
    );
}

#[tokio::test]
async fn a_dataset_round_trips_and_a_bad_row_writes_nothing() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let store = db.store(false);
    store.migrate().await.unwrap();
    let d = generate(&GeneratorConfig {
        users: 120,
        ..Default::default()
    });
    store.write_dataset(&d, false).await.unwrap();
    assert_eq!(store.count_profiles().await.unwrap(), 120);
    let back = store.dataset(TrainingSample::ALL).await.unwrap();
    let mut profiles = d.profiles.clone();
    profiles.sort_by_key(|p| p.id);
    assert_eq!(back.profiles, profiles);
    assert_eq!(back.interactions, d.interactions);
    assert_eq!(back.matches, d.matches);
    assert_eq!(back.activity, d.activity);
    assert_eq!(back.notifications, d.notifications);
    let mut consents = d.consents.clone();
    consents.sort_by_key(|c| (c.user_id, c.channel.as_str()));
    assert!(!consents.is_empty());
    assert_eq!(back.consents, consents);
    let mut dest = d.destinations.clone();
    dest.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back.destinations, dest);

    let u = &d.profiles[3];
    let h = store.user_history(u.id).await.unwrap().unwrap();
    assert_eq!(h.profile.as_ref(), Some(u));
    let mine = |id| d.activity.iter().filter(|a| a.user_id == id).count();
    assert_eq!(h.activity.len(), mine(u.id));
    assert_eq!(h.consents, d.consents_of(u.id));
    assert!(store
        .user_history(uuid::Uuid::nil())
        .await
        .unwrap()
        .is_none());
    let ids = store.user_ids(5).await.unwrap();
    assert_eq!(
        ids,
        profiles[..5]
            .iter()
            .map(|p| p.id.to_string())
            .collect::<Vec<_>>()
    );

    // A replacing write with one bad row: refused whole, the emptying included.
    let mut d2 = generate(&GeneratorConfig {
        users: 30,
        seed: 7,
        ..Default::default()
    });
    d2.profiles[29].age = 7;
    assert!(store.write_dataset(&d2, true).await.is_err());
    assert_eq!(
        store.count_profiles().await.unwrap(),
        120,
        "nothing half-written"
    );
    d2.profiles[29].age = 30;
    store.write_dataset(&d2, true).await.unwrap();
    assert_eq!(store.count_profiles().await.unwrap(), 30);

    let s = store
        .load_sample(TrainingSample { max_users: 10 })
        .await
        .unwrap();
    assert!(s.profiles.len() < 30, "{}", s.profiles.len());
    assert_eq!(s.destinations.len(), d2.destinations.len());
}

#[tokio::test]
async fn the_service_role_reads_through_row_level_security_and_cannot_write() {
    let Some(mut db) = TestDb::new().await else {
        return;
    };
    let owner = db.store(false);
    owner.migrate().await.unwrap();
    let d = generate(&GeneratorConfig {
        users: 20,
        ..Default::default()
    });
    owner.write_dataset(&d, false).await.unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (reader, outsider) = (format!("mlsvc_r_{suffix}"), format!("mlsvc_o_{suffix}"));
    db.roles.push(reader.clone());
    db.roles.push(outsider.clone());
    let c = db.client().await;
    c.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN IN ROLE ml_service_reader;
         CREATE ROLE {outsider} LOGIN;
         GRANT SELECT ON profiles TO {outsider};"
    ))
    .await
    .unwrap();

    let as_reader = PgStore::connect(
        &db.url_as(&reader),
        &PgOptions {
            pool_size: 1,
            timeout: Some(Duration::from_secs(5)),
            read_only: true,
        },
    )
    .unwrap();
    let u = &d.profiles[0];
    let h = as_reader.user_history(u.id).await.unwrap().unwrap();
    assert_eq!(h.profile.as_ref(), Some(u));
    assert_eq!(
        as_reader.destinations().await.unwrap().len(),
        d.destinations.len()
    );
    as_reader.ping().await.unwrap();
    // The role holds no write grant (and the service's sessions are read-only too).
    let (rc, conn) = tokio_postgres::connect(&db.url_as(&reader), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let write = rc.batch_execute("DELETE FROM notification_log").await;
    assert!(write.is_err(), "the reader role could delete");

    // A role with a table grant but no policy sees no rows: RLS is on.
    let (oc, conn) = tokio_postgres::connect(&db.url_as(&outsider), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = oc
        .query_one("SELECT count(*) FROM profiles", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop((rc, oc, c, as_reader));
}

#[tokio::test]
async fn a_read_only_session_refuses_writes() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    db.store(false).migrate().await.unwrap();
    let ro = db.store(true);
    let e = ro
        .write_dataset(
            &generate(&GeneratorConfig {
                users: 5,
                ..Default::default()
            }),
            false,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[tokio::test]
async fn a_query_past_its_deadline_fails_fast_and_the_pool_recovers() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    db.store(false).migrate().await.unwrap();
    let store = PgStore::connect(
        &db.url(),
        &PgOptions {
            pool_size: 1,
            timeout: Some(Duration::from_millis(300)),
            read_only: true,
        },
    )
    .unwrap();
    store.ping().await.unwrap();
    // Hold a lock the store's read needs: its query waits, and the deadline
    // (client side and statement_timeout) ends it.
    let c = db.client().await;
    c.batch_execute("BEGIN; LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let r = store.user_history(uuid::Uuid::new_v4()).await;
    assert!(r.is_err(), "{r:?}");
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // The one pooled connection was replaced or is healthy again.
    assert!(store
        .user_history(uuid::Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
}
