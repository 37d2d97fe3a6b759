//! The service on Postgres: the `data` commands write to it, `train` and
//! `serve` read from it, and a Postgres that goes away, or stalls, degrades
//! the service instead of stopping it. Each test has a fresh database; the
//! faults come from a TCP proxy the test controls, between the service and a
//! real Postgres.

use super::*;
use ml_data::testing::TestDb;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward bytes both ways.
    Up,
    /// Close every connection, and each new one at once (a stopped server).
    Down,
    /// Keep connections open and forward nothing (a stalled server or network).
    Stall,
}

/// A TCP proxy in front of Postgres whose behaviour the test switches.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Up);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let now = *rx.borrow();
                match now {
                    Mode::Down => drop(inbound),
                    Mode::Stall => {
                        tokio::spawn(async move {
                            let _ = rx.wait_for(|m| *m != Mode::Stall).await;
                            drop(inbound);
                        });
                    }
                    Mode::Up => {
                        tokio::spawn(async move {
                            let Ok(outbound) = TcpStream::connect(target).await else {
                                return;
                            };
                            pipe(inbound, outbound, rx).await;
                        });
                    }
                }
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let c: tokio_postgres::Config = url.parse().unwrap();
        format!(
            "postgres://{}@{}/{}",
            c.get_user().unwrap(),
            self.addr,
            c.get_dbname().unwrap()
        )
    }
}

async fn pipe(mut a: TcpStream, mut b: TcpStream, mut mode: watch::Receiver<Mode>) {
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => None,
        m = mode.wait_for(|m| *m != Mode::Up) => m.ok().map(|m| *m),
    };
    if changed == Some(Mode::Stall) {
        // Hold both ends open and silent until the mode changes again.
        let _ = mode.wait_for(|m| *m != Mode::Stall).await;
    }
}

fn target_of(url: &str) -> SocketAddr {
    let c: tokio_postgres::Config = url.parse().unwrap();
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".into()
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

/// Settings for a service on the test database (its own models and files).
fn pg_settings(db: &TestDb, dir: &std::path::Path) -> Settings {
    let mut s = settings_in(dir.join("unused.db"), dir.join("models"));
    s.data.database_url = Some(db.url().into());
    s
}

async fn profiles_in(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM profiles", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn data_commands_fill_postgres_and_train_and_serve_read_from_it() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = pg_settings(&db, dir.path());
    // `data migrate` makes the schema; `data demo` migrates as needed too.
    run_cli(&["data", "migrate"], &s).await;
    run_cli(&["data", "demo", "--users", "300", "--seed", "9"], &s).await;
    assert_eq!(profiles_in(&db).await, 300);
    let again = try_cli(&["data", "demo", "--users", "10"], &s).await;
    assert!(
        again.unwrap_err().to_string().contains("--replace"),
        "a full store was overwritten without --replace"
    );

    // Training reads Postgres (a bounded sample of it), and start-up serves
    // the result, reading users from Postgres.
    run_cli(&["train", "travel_match", "--train-max-users", "200"], &s).await;
    let repo = ModelRepository::local(&s.models.model_path).unwrap();
    assert_eq!(
        repo.versions(ModelKind::TravelMatch).await.unwrap(),
        vec![1]
    );
    let app = spawn_with(s.clone()).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["database_connected"], true, "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    let ids = db.store(true).user_ids(2).await.unwrap();
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": ids[0], "user_b_id": ids[1]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": ids[0], "user_b_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(error_of(r).await.1, "unknown_user");
}

#[tokio::test]
async fn an_import_with_bad_rows_reports_each_and_writes_nothing_to_either_store() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("import");
    std::fs::create_dir_all(&files).unwrap();
    let (p1, p2, d1) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    std::fs::write(
        files.join("destinations.jsonl"),
        format!(
            r#"{{"id":"{d1}","name":"Lisbon","country":"Portugal","tags":["food","beach"],"cost_level":"medium","trip_lengths":["weekend","week"],"latitude":38.72,"longitude":-9.14}}"#
        ),
    )
    .unwrap();
    let header = "id,display_name,age,interests,travel_style,style_pace,style_comfort,style_spontaneity,openness,conscientiousness,extraversion,agreeableness,neuroticism,languages,timezone,budget,preferred_duration";
    let row = |id: uuid::Uuid, age: u32| {
        format!("{id},Ana,{age},hiking;food,adventurer,0.7,0.3,0.5,0.6,0.5,0.4,0.7,0.3,en,Europe/Lisbon,medium,week")
    };
    std::fs::write(
        files.join("profiles.csv"),
        format!("{header}\n{}\n{}\n", row(p1, 31), row(p2, 7)),
    )
    .unwrap();
    std::fs::write(
        files.join("interactions.jsonl"),
        format!(
            "{{\"user_id\":\"{p1}\",\"destination_id\":\"{d1}\",\"kind\":\"saved\",\"occurred_at\":\"2024-03-01T12:00:00Z\"}}\n{{\"user_id\":\"{p2}\",\"destination_id\":\"{}\",\"kind\":\"saved\",\"occurred_at\":\"2024-03-01T12:00:00Z\"}}\n",
            uuid::Uuid::new_v4()
        ),
    )
    .unwrap();
    let path = files.display().to_string();
    // Three problems: p2's age, and so its interaction's user, and that
    // interaction's unknown destination.
    let pg = pg_settings(&db, dir.path());
    let sqlite = settings_in(dir.path().join("app.db"), dir.path().join("models"));
    for s in [&pg, &sqlite] {
        let e = try_cli(&["data", "import", &path], s).await.unwrap_err();
        assert!(
            e.to_string().contains("3 problem(s)") && e.to_string().contains("nothing was written"),
            "{e:#}"
        );
    }
    assert_eq!(profiles_in(&db).await, 0);
    let sq = ml_data::SqliteStore::open(&sqlite.data.sqlite_path, 1).unwrap();
    assert_eq!(sq.count_profiles().unwrap(), 0);

    // Fixed, the same files land in both stores, whole.
    std::fs::write(
        files.join("profiles.csv"),
        format!("{header}\n{}\n{}\n", row(p1, 31), row(p2, 70)),
    )
    .unwrap();
    std::fs::write(
        files.join("interactions.jsonl"),
        format!(
            "{{\"user_id\":\"{p1}\",\"destination_id\":\"{d1}\",\"kind\":\"saved\",\"occurred_at\":\"2024-03-01T12:00:00Z\"}}\n"
        ),
    )
    .unwrap();
    for s in [&pg, &sqlite] {
        run_cli(&["data", "import", &path], s).await;
    }
    assert_eq!(profiles_in(&db).await, 2);
    assert_eq!(sq.count_profiles().unwrap(), 2);
    // Importing the same rows again is refused: their ids are taken.
    let e = try_cli(&["data", "import", &path], &pg).await.unwrap_err();
    assert!(e.to_string().contains("problem(s)"), "{e:#}");
    assert_eq!(profiles_in(&db).await, 2);
}

#[tokio::test]
async fn postgres_down_or_stalled_degrades_to_the_caches_and_recovers_by_itself() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = pg_settings(&db, dir.path());
    run_cli(&["data", "demo", "--users", "200", "--seed", "3"], &s).await;
    let ids = db.store(true).user_ids(6).await.unwrap();
    // Serve the fixture's models (trained on the same catalogue) through the proxy.
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    let proxy = Proxy::start(target_of(&db.url())).await;
    s.data.database_url = Some(proxy.url(&db.url()).into());
    s.data.database_timeout_ms = 300;
    s.data.database_pool_size = 2;
    // Features come from the near-cache; answers are computed every time.
    s.cache.prediction_cache = false;
    let app = Arc::new(spawn_with(s).await);
    let score =
        |a: &str, b: &str| app.post("/match/score", json!({"user_a_id": a, "user_b_id": b}));
    assert_eq!(score(&ids[0], &ids[1]).await.status(), 200);
    // Background load through the whole test (down, stall, back up): match,
    // notification and recommendation requests for cached and uncached
    // users alike.
    let all = db.store(true).user_ids(200).await.unwrap();
    let load = Background::start(&app, all, 4);

    for mode in [Mode::Down, Mode::Stall] {
        proxy.set(mode);
        let health: Value = app.get("/health").await.json().await.unwrap();
        assert_eq!(health["database_connected"], false, "{mode:?}: {health}");
        assert_eq!(health["status"], "degraded", "{mode:?}");
        assert_eq!(
            app.get("/health/ready").await.status(),
            200,
            "{mode:?}: a shared database being down must not unready every replica"
        );
        // Users whose features are cached are still served.
        assert_eq!(score(&ids[0], &ids[1]).await.status(), 200, "{mode:?}");
        // Others get a marked fallback for matches and recommendations,
        // within the deadline rather than a hang…
        let t0 = std::time::Instant::now();
        let r = score(&ids[2], &ids[3]).await;
        let took = t0.elapsed();
        marked_fallback(r).await;
        assert!(
            took < std::time::Duration::from_secs(3),
            "{mode:?}: took {took:?} with a 300 ms deadline"
        );
        let r = app
            .post(
                "/recommend/destinations",
                json!({"user_id": ids[2], "limit": 4}),
            )
            .await;
        assert_eq!(r.status(), 200, "{mode:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["fallback"], true, "{v}");
        assert_eq!(v["recommendations"].as_array().unwrap().len(), 4, "{v}");
        // …and for a notification: the population's best hour under the
        // same policy, its time zone unknown (UTC), with no confidence.
        let r = app
            .post(
                "/notifications/optimize",
                json!({"user_id": ids[2], "notification_type": "message"}),
            )
            .await;
        let v = marked_fallback(r).await;
        assert!(
            v["reason"].as_str().unwrap().contains("time zone unknown"),
            "{v}"
        );
        let at = chrono::DateTime::parse_from_rfc3339(v["send_at"].as_str().unwrap()).unwrap();
        assert!(at > Utc::now() - chrono::Duration::seconds(5), "{v}");
    }

    // Back up: the pool reconnects by itself, with no restart.
    proxy.set(Mode::Up);
    let t0 = std::time::Instant::now();
    loop {
        let r = score(&ids[4], &ids[5]).await;
        if r.status() == 200 && r.headers().get("x-fallback").is_none() {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no recovery: {}",
            r.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["database_connected"], true, "{health}");
    assert_eq!(health["status"], "healthy");
    // Under the load, through down, stall and recovery: every match,
    // notification and recommendation was answered 200 (cached, computed or
    // a marked fallback).
    load.assert_all_ok().await;
}

/// Rows in the prediction log's table.
async fn logged_rows(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM ml_service.predictions", &[])
        .await
        .unwrap()
        .get(0)
}

/// Wait up to `secs` for `done`, polling.
async fn eventually<F: std::future::Future<Output = bool>>(
    secs: u64,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let t0 = std::time::Instant::now();
    while !done().await {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_prediction_log_down_or_stalled_drops_rows_answers_everything_and_resumes() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = pg_settings(&db, dir.path());
    run_cli(&["data", "demo", "--users", "200", "--seed", "3"], &s).await;
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    // The app data is read directly; the log is written through the proxy.
    let proxy = Proxy::start(target_of(&db.url())).await;
    s.prediction_log.prediction_log_database_url = Some(proxy.url(&db.url()).into());
    s.prediction_log.prediction_log_queue = 200;
    let app = Arc::new(spawn_with(s).await);
    let counts = || app.predictor.prediction_log().counts();
    let dropped = || counts().dropped.load(std::sync::atomic::Ordering::Relaxed);
    let all = db.store(true).user_ids(200).await.unwrap();
    let load = Background::start(&app, all, 4);
    eventually(10, "rows written while the store is up", || async {
        logged_rows(&db).await > 0
    })
    .await;
    assert_eq!(dropped(), 0);

    for mode in [Mode::Down, Mode::Stall] {
        proxy.set(mode);
        let before = dropped();
        // Rows are dropped (counted) rather than waited for or piled up.
        eventually(20, &format!("{mode:?}: rows dropped"), || async {
            dropped() > before
        })
        .await;
    }
    // Back up: the writer's back-off ends and it writes again, unrestarted.
    proxy.set(Mode::Up);
    let before = logged_rows(&db).await;
    eventually(60, "writing resumed by itself", || async {
        logged_rows(&db).await > before
    })
    .await;
    load.assert_all_ok().await;
    let text = app.scrape().await;
    assert!(
        text.contains("ml_prediction_log_rows_total{outcome=\"dropped_queue_full\"}")
            || text.contains("ml_prediction_log_rows_total{outcome=\"dropped_store_error\"}"),
        "{text}"
    );
}

/// The learning loop on Postgres: answers logged in `ml_service.predictions`,
/// the app's outcomes (written by `experiments simulate` into its
/// `match_outcomes`, as an app would) joined into `ml_service.outcomes`, a
/// report from the service, and feedback recorded there.
#[tokio::test]
async fn on_postgres_outcomes_are_joined_and_reported_and_feedback_recorded() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = pg_settings(&db, dir.path());
    run_cli(&["data", "demo", "--users", "300", "--seed", "9"], &s).await;
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    run_cli(&["train", "travel_match", "--train-max-users", "100"], &s).await;
    run_cli(&["models", "split", "travel_match", "1=50", "2=50"], &s).await;
    s.http.admin_keys = vec!["pg-admin".to_string().into()];
    s.experiments.outcome_join_interval_s = 0;
    let app = spawn_with(s.clone()).await;
    run_cli(
        &[
            "experiments",
            "simulate",
            "--url",
            &app.base,
            "--pairs",
            "400",
            "--demo-users",
            "300",
            "--demo-seed",
            "9",
            "--json",
        ],
        &s,
    )
    .await;
    let r: Value = app
        .admin_json(
            reqwest::Method::GET,
            "/admin/experiments/travel_match",
            "pg-admin",
        )
        .await;
    assert_eq!(r["split"], "1=50,2=50", "{r:#}");
    let arms = r["arms"].as_array().unwrap();
    let sum = |k: &str| arms.iter().map(|a| a[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("predictions"), sum("outcomes")), (400, 400), "{r:#}");
    assert!(arms.iter().all(|a| a["metric"].as_f64().is_some()), "{r:#}");
    let joined: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM ml_service.outcomes WHERE source = 'joined'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, 400);
    // Joining again through the service changes nothing.
    let j: Value = app
        .admin_json(reqwest::Method::POST, "/admin/experiments/join", "pg-admin")
        .await;
    assert_eq!(
        j,
        json!({"matches": 0, "recommendations": 0, "notifications": 0})
    );

    // Feedback lands in the service's schema.
    let ids = db.store(true).user_ids(2).await.unwrap();
    let answer = app
        .post(
            "/match/score",
            json!({"user_a_id": ids[0], "user_b_id": ids[1]}),
        )
        .await;
    let id = answer.headers()["x-prediction-id"]
        .to_str()
        .unwrap()
        .to_string();
    let f: Value = app
        .post(
            "/feedback",
            json!({"prediction_id": id, "outcome": "not_matched"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["recorded"], true, "{f}");
    let kind: String = db
        .client()
        .await
        .query_one(
            "SELECT kind FROM ml_service.outcomes WHERE prediction_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "not_matched");
}
