//! Reliability: graceful shutdown of the real binary under load (SIGTERM),
//! and hostile inputs at the HTTP layer (deep JSON, huge headers).

use super::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The binary on the fixture's data and models.
fn ml_service() -> Command {
    let s = &fixture().settings;
    let mut c = Command::new(env!("CARGO_BIN_EXE_ml-service"));
    c.arg("serve")
        .env("SQLITE_PATH", &s.data.sqlite_path)
        .env("MODEL_PATH", &s.models.model_path)
        .env("MODEL_POLL_INTERVAL_S", "0")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("MODEL_STORAGE");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_accepted_request_and_exits_zero() {
    let grace = Duration::from_millis(1500);
    let mut cmd = ml_service();
    cmd.env("SHUTDOWN_GRACE_MS", grace.as_millis().to_string())
        .env("DRAIN_TIMEOUT_MS", "5000")
        .env("PREDICTION_CACHE", "false");
    let mut server = serve_process(cmd).await;
    let base = format!("http://{}", server.addr);
    let users = SqliteStore::open(&fixture().settings.data.sqlite_path, 1)
        .unwrap()
        .user_ids(40)
        .unwrap();
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Eight request streams until the server stops taking connections.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let load: Vec<_> = (0..8)
        .map(|t| {
            let (client, base, users, stop) = (
                client.clone(),
                base.clone(),
                users.clone(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut out: Vec<(Duration, Result<u16, String>)> = vec![];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let body =
                        json!({"user_a_id": users[i % 40], "user_b_id": users[(i + 3) % 40]});
                    let r = client
                        .post(format!("{base}/match/score"))
                        .json(&body)
                        .send()
                        .await;
                    let done = t0.elapsed();
                    match r {
                        Ok(r) => out.push((done, Ok(r.status().as_u16()))),
                        Err(e) => {
                            out.push((done, Err(e.to_string())));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    i += 8;
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let pid = server.child.id().to_string();
    let signalled = t0.elapsed();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Readiness turns false at once…
    let mut unready_after = None;
    while t0.elapsed() < signalled + Duration::from_millis(500) {
        let r = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["draining"], true, "{v}");
            unready_after = Some(t0.elapsed() - signalled);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        unready_after.is_some(),
        "readiness still 200 after the signal"
    );
    // …while a new connection is still served during the grace period.
    let fresh = reqwest::Client::new();
    let r = fresh
        .post(format!("{base}/match/score"))
        .json(&json!({"user_a_id": users[0], "user_b_id": users[1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t0.elapsed() < signalled + grace,
        "the check took past the grace period"
    );

    // After the grace period, new connections are refused and the process exits 0.
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    });
    tokio::time::sleep(grace + Duration::from_millis(500)).await;
    let refused = reqwest::Client::new()
        .get(format!("{base}/health/live"))
        .send()
        .await;
    assert!(refused.is_err(), "still accepting after the grace period");
    let (status, _server) = tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .expect("exited within grace + drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
    stop.store(true, Ordering::Relaxed);

    // Every request the server answered succeeded; transport errors happen
    // only once it stopped accepting (a request it never took).
    let mut answered = 0;
    for l in load {
        for (at, r) in l.await.unwrap() {
            match r {
                Ok(status) => {
                    assert_eq!(status, 200, "a request answered {status} at {at:?}");
                    answered += 1;
                }
                Err(e) => assert!(
                    at >= signalled + grace,
                    "{e} at {at:?}, before the grace period ended ({:?})",
                    signalled + grace
                ),
            }
        }
    }
    assert!(answered > 100, "only {answered} requests");
}

#[tokio::test]
async fn deeply_nested_json_and_huge_headers_are_refused_without_harm() {
    let app = spawn_app().await;
    let u = app.users(2);
    // 100,000 nested arrays where a list of strings belongs: refused with a
    // field error, not a stack overflow.
    let deep = format!(
        r#"{{"user_a_id":"{}","user_b_id":"{}","context":{{"interests":{}{}}}}}"#,
        u[0],
        u[1],
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = app
        .post_raw("/match/score", "application/json", deep.into_bytes())
        .await;
    assert!(
        matches!(r.status().as_u16(), 400 | 413 | 422),
        "{}",
        r.status()
    );
    // Nesting in an unknown field is refused too, before any of it is used.
    let deep = format!(
        r#"{{"user_a_id":"{}","user_b_id":"{}","x":{}1{}}}"#,
        u[0],
        u[1],
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let r = app
        .post_raw("/match/score", "application/json", deep.into_bytes())
        .await;
    assert!(matches!(r.status().as_u16(), 400 | 422), "{}", r.status());
    // A 1 MiB header: refused (431) or the connection closed; never served.
    let r = app
        .client
        .get(format!("{}/health", app.base))
        .header("x-junk", "a".repeat(1 << 20))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 431);
    }
    // A thousand headers.
    let mut req = app.client.get(format!("{}/health", app.base));
    for i in 0..1000 {
        req = req.header(format!("x-h{i}"), "v");
    }
    if let Ok(r) = req.send().await {
        assert_eq!(r.status(), 431);
    }
    // Still serving.
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// Schemathesis: ST_BIN, else what scripts/setup-schemathesis.sh installs.
fn schemathesis() -> Option<PathBuf> {
    fetched(
        "ST_BIN",
        ".fixtures/st-venv/bin/st",
        "scripts/setup-schemathesis.sh",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document() {
    let Some(st) = schemathesis() else { return };
    // The binary with an API key and an admin key, so that every operation,
    // the admin ones included, is reached with and without credentials.
    let mut cmd = ml_service();
    cmd.env("ML_SERVICE_API_KEY", "st-caller-key")
        .env("ML_SERVICE_ADMIN_KEY", "st-admin-key")
        .env("LOG_LEVEL", "warn");
    let server = serve_process(cmd).await;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let seconds = std::env::var("SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "40".into());
    let addr = server.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&st)
            .arg("--config-file")
            .arg(&config)
            .args(["--no-color", "run"])
            .arg(format!("http://{addr}/openapi.json"))
            // Every check (the config turns all on; a `--checks` flag here
            // would override its one per-operation exception).
            .args(["--workers", "2", "--max-time", &seconds])
            .args(["--seed", "20261127"])
            .env("ST_API_KEY", "st-caller-key")
            .env("ST_ADMIN_KEY", "st-admin-key")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: thousands of cases over every operation.
    assert!(text.contains("Tested: 20"), "{text}");
    drop(server);
}

/// Arbitrary JSON, biased toward the API's own field names and value shapes
/// (ids, enum words, numbers at the edges), nested a few levels.
fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let key = prop_oneof![
        Just("user_id".to_string()),
        Just("user_a_id".to_string()),
        Just("user_b_id".to_string()),
        Just("context".to_string()),
        Just("destination".to_string()),
        Just("interests".to_string()),
        Just("dates".to_string()),
        Just("limit".to_string()),
        Just("filters".to_string()),
        Just("budget".to_string()),
        Just("duration".to_string()),
        Just("notification_type".to_string()),
        Just("urgency".to_string()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        (0u32..200).prop_map(Value::from),
        any::<u128>().prop_map(|u| Value::from(uuid::Uuid::from_u128(u).to_string())),
        prop_oneof![
            Just("low"),
            Just("medium"),
            Just("high"),
            Just("weekend"),
            Just("week"),
            Just("extended"),
            Just("match_found"),
            Just("message"),
            Just("trip_reminder"),
            Just("Kyoto"),
            Just("2026-05-01"),
            Just("2026-05-01/2026-05-09"),
            Just("food"),
        ]
        .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn no_body_makes_a_prediction_handler_fail_or_answer_outside_its_contract() {
    use proptest::prelude::*;
    use tower::ServiceExt as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The real router on the fixture, called in process (no sockets).
    let settings = fixture().settings.clone();
    let router = {
        let s = settings.clone();
        // Start-up runs off the runtime's threads, as `serve` runs it.
        let predictor = rt
            .block_on(async move { tokio::task::spawn_blocking(move || app::prepare(&s)).await })
            .unwrap()
            .unwrap();
        let _entered = rt.enter();
        ml_server::routes::router(
            predictor,
            &settings,
            ml_server::admission::Admission::new(&settings.http),
        )
    };
    let known: Vec<String> = SqliteStore::open(&settings.data.sqlite_path, 1)
        .unwrap()
        .user_ids(4)
        .unwrap();
    // A fixed seed: the same 400 bodies on every run (CI must not flake on
    // how many happen to be valid); change it to explore others.
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261127),
        ..ProptestConfig::default()
    };
    let paths = [
        "/match/score",
        "/recommend/destinations",
        "/notifications/optimize",
    ];
    let answered = std::sync::atomic::AtomicUsize::new(0);
    proptest!(config, |(body in json_value(), raw in proptest::collection::vec(any::<u8>(), 0..64), path in 0usize..3, use_raw in any::<bool>(), swap_in_user in any::<bool>(), ids_only in any::<bool>())| {
        // Sometimes put known user ids in, so valid requests reach the model.
        let mut body = body;
        if swap_in_user {
            if let Value::Object(m) = &mut body {
                let ids: &[(&str, &String)] = if path == 0 {
                    &[("user_a_id", &known[1]), ("user_b_id", &known[2])]
                } else {
                    &[("user_id", &known[0])]
                };
                // Only the endpoint's own fields, so some bodies are valid;
                // half of these with nothing but what is required.
                m.retain(|k, _| ["context", "limit", "filters", "notification_type", "urgency"].contains(&k.as_str()));
                if ids_only {
                    m.clear();
                    if path == 2 {
                        m.insert("notification_type".into(), Value::from("message"));
                    }
                }
                for (k, id) in ids {
                    m.insert(k.to_string(), Value::from(id.as_str()));
                }
            }
        }
        let bytes = if use_raw { raw.clone() } else { serde_json::to_vec(&body).unwrap() };
        let req = axum::http::Request::post(paths[path])
            .header("content-type", "application/json")
            .body(axum::body::Body::from(bytes))
            .unwrap();
        let (status, body) = rt.block_on(async {
            let resp = router.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            (status, body)
        });
        let v: Value = serde_json::from_slice(&body).expect("every answer is JSON");
        prop_assert!(matches!(status, 200 | 400 | 404 | 422), "{status} {v}");
        if status == 200 {
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if status != 200 {
            prop_assert!(v["error"]["code"].is_string(), "{v}");
        }
    });
    // Some bodies were valid and reached the models.
    let answered = answered.into_inner();
    assert!(
        answered >= 10,
        "only {answered} of 400 bodies were answered"
    );
}

/// A small tmpfs mounted for a test (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// None where mounting is not allowed (skipped loudly; a failure under CI,
    /// which runs as root).
    fn mount(bytes: usize) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a tmpfs under CI"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_new_version_and_the_old_one_keeps_serving() {
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        return;
    };
    let models = disk.path().join("models");
    let mut settings = fixture().settings.clone();
    copy_dir(&settings.models.model_path, &models);
    settings.models.model_path = models.clone();
    settings.model_poll_interval_s = 1;
    let app = spawn_with(settings.clone()).await;
    let u = app.users(3);
    let recommend = || async {
        let r = app
            .post(
                "/recommend/destinations",
                json!({"user_id": u[0], "limit": 5}),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.headers()["x-model-version"].to_str().unwrap().to_string()
    };
    assert_eq!(recommend().await, "recommendation/1");
    // Traffic on all three endpoints throughout: not one request fails while
    // the disk fills, a version fails to be written, and space returns.
    let load = Background::start(&app, app.users(100), 3);

    // Fill the disk but for 64 KiB: a new recommendation version (hundreds
    // of KiB) cannot be written.
    let free = {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(disk.path())
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; free - (64 << 10)]).unwrap();
    let err = try_cli(&["train", "recommendation"], &settings)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("No space left") || msg.contains("os error 28"),
        "{msg}"
    );
    // No version 2 exists, and the service goes on with version 1.
    let repo = ModelRepository::local(&models).unwrap();
    assert_eq!(
        repo.versions(ModelKind::Recommendation).await.unwrap(),
        vec![1]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..10 {
        assert_eq!(recommend().await, "recommendation/1");
    }
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);

    // Space again: the next train writes a version the poller serves.
    std::fs::remove_file(&filler).unwrap();
    run_cli(&["train", "recommendation"], &settings).await;
    let versions = repo.versions(ModelKind::Recommendation).await.unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let want = format!("recommendation/{}", versions[1]);
    let t0 = Instant::now();
    while recommend().await != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never served {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.assert_all_ok().await;
}
