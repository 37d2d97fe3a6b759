//! Model lifecycle against the real server: versions swapped under load
//! without a failed request, corrupt versions rejected while the old one
//! serves, sticky A/B routing, a shadow version, the fallback when a model
//! fails or times out, and the admin endpoints' keys.

use super::*;
use ml_backend::{BackendError, InferenceBackend, LoadedModel, ModelMeta, Outputs};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

const ADMIN_KEY: &str = "admin-key-for-tests";

/// Settings on a private copy of the fixture's models (version 1 of each),
/// with the admin key set and polling off unless a test turns it on.
fn lifecycle_settings(models: &std::path::Path) -> Settings {
    let mut s = fixture().settings.clone();
    copy_dir(&s.models.model_path, models);
    s.models.model_path = models.to_path_buf();
    s.model_poll_interval_s = 0;
    s.http.admin_keys = vec![ADMIN_KEY.to_string().into()];
    s
}

/// Write a copy of version `from` as the next version; returns its number.
async fn clone_version(repo: &ModelRepository, kind: ModelKind, from: u64) -> u64 {
    let (bytes, meta) = repo.read(kind, from).await.unwrap();
    repo.write(&bytes, meta).await.unwrap().version
}

impl TestApp {
    /// POST /admin/models/reload; returns each model's status by name.
    async fn reload(&self) -> HashMap<String, Value> {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/admin/models/reload",
                Some(ADMIN_KEY),
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Vec<Value> = r.json().await.unwrap();
        v.into_iter()
            .map(|s| (s["model"].as_str().unwrap().to_string(), s))
            .collect()
    }

    /// The version header of a match request by user a.
    async fn match_version(&self, a: &str, b: &str) -> String {
        let r = self
            .post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
            .await;
        assert_eq!(r.status(), 200);
        r.headers()["x-model-version"].to_str().unwrap().to_string()
    }
}

/// The value of one Prometheus series (0 when absent).
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn serving(status: &Value) -> Vec<(u64, f64)> {
    status["serving"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["share"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_under_concurrent_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    // Every request runs the model, so each one meets whatever version serves.
    settings.cache.prediction_cache = false;
    let repo = ModelRepository::local(dir.path()).unwrap();
    let app = Arc::new(spawn_with(settings.clone()).await);
    let users = app.users(60);
    // A second version appears while the service runs.
    assert_eq!(clone_version(&repo, ModelKind::TravelMatch, 1).await, 2);

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|t| {
            let (app, users, stop) = (Arc::clone(&app), users.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen: Vec<(u16, String)> = vec![];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = (&users[i % users.len()], &users[(i + 7) % users.len()]);
                    let r = app
                        .post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
                        .await;
                    let v = r
                        .headers()
                        .get("x-model-version")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    seen.push((r.status().as_u16(), v));
                    i += 8;
                }
                seen
            })
        })
        .collect();

    // Newest version (no serving.json), then promote and split and roll back,
    // reloading after each, five times over.
    let m = "travel_match";
    let s = app.reload().await;
    assert_eq!(serving(&s[m]), vec![(2, 1.0)]);
    assert_eq!(s[m]["changed"], true);
    for _ in 0..5 {
        run_cli(&["models", "promote", m, "1"], &settings).await;
        assert_eq!(serving(&app.reload().await[m]), vec![(1, 1.0)]);
        run_cli(&["models", "split", m, "1=50", "2=50"], &settings).await;
        assert_eq!(serving(&app.reload().await[m]), vec![(1, 0.5), (2, 0.5)]);
        run_cli(&["models", "rollback", m], &settings).await;
        assert_eq!(serving(&app.reload().await[m]), vec![(1, 1.0)]);
        run_cli(&["models", "promote", m, "2"], &settings).await;
        let s = app.reload().await;
        assert_eq!(serving(&s[m]), vec![(2, 1.0)]);
        // A reload that finds nothing new changes nothing.
        assert_eq!(app.reload().await[m]["changed"], false);
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = vec![];
    for l in load {
        seen.extend(l.await.unwrap());
    }
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let versions: std::collections::BTreeSet<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        versions,
        ["travel_match/1", "travel_match/2"].into_iter().collect(),
        "{} requests",
        seen.len()
    );
    // The other models were never touched.
    assert_eq!(
        serving(&app.reload().await["recommendation"]),
        vec![(1, 1.0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_mismatched_version_is_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    settings.model_poll_interval_s = 1;
    let repo = ModelRepository::local(dir.path()).unwrap();
    let app = spawn_with(settings.clone()).await;
    let u = app.users(2);
    assert_eq!(app.match_version(&u[0], &u[1]).await, "travel_match/1");
    // Traffic on all three endpoints throughout: not one request fails while
    // corrupt versions come, are rejected, promoted and refused.
    let load = Background::start(&app, app.users(100), 3);
    // v2: a truncated ONNX file; v3: another model's graph under travel_match's
    // model.json (a signature mismatch).
    let (bytes, meta) = repo.read(ModelKind::TravelMatch, 1).await.unwrap();
    let v2 = repo
        .write(&bytes[..bytes.len() / 2], meta.clone())
        .await
        .unwrap();
    let (other, _) = repo.read(ModelKind::Recommendation, 1).await.unwrap();
    let v3 = repo.write(&other, meta.clone()).await.unwrap();
    assert_eq!((v2.version, v3.version), (2, 3));
    // The poller tries them (several polls pass) and keeps version 1.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..20 {
        assert_eq!(app.match_version(&u[0], &u[1]).await, "travel_match/1");
    }
    let metrics = app.scrape().await;
    for v in ["2", "3"] {
        // Rejected once each, not on every poll.
        assert_eq!(
            series(
                &metrics,
                "ml_model_load_failures_total",
                &[("model", "travel_match"), ("version", v)]
            ),
            1.0,
            "version {v}"
        );
    }
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);
    // A forced reload retries them, fails again, and says why.
    let s = app.reload().await;
    assert_eq!(serving(&s["travel_match"]), vec![(1, 1.0)]);
    assert!(
        s["travel_match"]["error"]
            .as_str()
            .unwrap()
            .contains("travel_match"),
        "{}",
        s["travel_match"]
    );
    // Promoting a version that does not load is refused by the service too:
    // the old version keeps serving.
    run_cli(&["models", "promote", "travel_match", "2"], &settings).await;
    let s = app.reload().await;
    assert_eq!(serving(&s["travel_match"]), vec![(1, 1.0)]);
    assert!(
        s["travel_match"]["error"]
            .as_str()
            .unwrap()
            .contains("v2 does not load"),
        "{}",
        s["travel_match"]
    );
    // A good version promoted is picked up by the poller alone.
    let v4 = clone_version(&repo, ModelKind::TravelMatch, 1).await;
    run_cli(
        &["models", "promote", "travel_match", &v4.to_string()],
        &settings,
    )
    .await;
    let t0 = std::time::Instant::now();
    while app.match_version(&u[0], &u[1]).await != format!("travel_match/{v4}") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the poller never swapped in v{v4}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = app.scrape().await;
    assert!(
        series(
            &metrics,
            "ml_model_load_time_seconds",
            &[("model", "travel_match"), ("version", &v4.to_string())]
        ) > 0.0,
        "load time of v{v4} reported"
    );
    assert!(
        series(
            &metrics,
            "ml_model_memory_bytes",
            &[("model", "travel_match"), ("version", &v4.to_string())]
        ) > 0.0
    );
    assert_eq!(
        series(
            &metrics,
            "ml_model_traffic_share",
            &[("model", "travel_match"), ("version", &v4.to_string())]
        ),
        1.0
    );
    load.assert_all_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_split_is_sticky_per_user_near_its_weights_and_the_same_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let settings = lifecycle_settings(dir.path());
    let repo = ModelRepository::local(dir.path()).unwrap();
    clone_version(&repo, ModelKind::TravelMatch, 1).await;
    run_cli(
        &["models", "split", "travel_match", "1=80", "2=20"],
        &settings,
    )
    .await;
    // Two replicas on the same repository.
    let a = spawn_with(settings.clone()).await;
    let b = spawn_with(settings.clone()).await;
    let users = a.users(800);
    let mut by_user: BTreeMap<&str, String> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        let other = &users[(i + 1) % users.len()];
        by_user.insert(u, a.match_version(u, other).await);
    }
    let v2 = by_user.values().filter(|v| *v == "travel_match/2").count();
    // 20% of 800 is 160, with a binomial sd of about 11: ±4 sd.
    assert!((116..=204).contains(&v2), "{v2} of 800 users on v2");
    // Sticky: the same user gets the same version again, with another
    // partner, and on the other replica.
    for (i, u) in users.iter().enumerate().take(200) {
        let other = &users[(i + 5) % users.len()];
        assert_eq!(
            a.match_version(u, other).await,
            by_user[u.as_str()],
            "{u} on replica a"
        );
        assert_eq!(
            b.match_version(u, other).await,
            by_user[u.as_str()],
            "{u} on replica b"
        );
    }
    // The split is per model: recommendations stay on their one version.
    let r = a
        .post(
            "/recommend/destinations",
            json!({"user_id": users[0], "limit": 3}),
        )
        .await;
    assert_eq!(r.headers()["x-model-version"], "recommendation/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_version_sees_live_traffic_and_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    settings.cache.prediction_cache = false;
    // A genuinely different version 2: trained with another seed.
    run_cli(&["train", "travel_match", "--seed", "2"], &settings).await;
    let app = spawn_with(settings.clone()).await;
    assert_eq!(
        app.match_version(&app.users(2)[0], &app.users(2)[1]).await,
        "travel_match/2"
    );
    // A version cannot shadow itself.
    let err = try_cli(&["models", "shadow", "travel_match", "2"], &settings).await;
    assert!(format!("{:#}", err.unwrap_err()).contains("shadow"));
    run_cli(&["models", "promote", "travel_match", "1"], &settings).await;
    run_cli(&["models", "shadow", "travel_match", "2"], &settings).await;
    let s = app.reload().await;
    assert_eq!(
        (serving(&s["travel_match"]), &s["travel_match"]["shadow"]),
        (vec![(1, 1.0)], &json!(2))
    );
    let users = app.users(30);
    for w in users.windows(2) {
        assert_eq!(app.match_version(&w[0], &w[1]).await, "travel_match/1");
    }
    // Shadow runs happen off the request: wait for them to be counted.
    let t0 = std::time::Instant::now();
    let labels = [("model", "travel_match"), ("version", "2")];
    loop {
        let m = app.scrape().await;
        let ok = series(
            &m,
            "ml_shadow_requests_total",
            &[labels[0], labels[1], ("outcome", "ok")],
        );
        if ok >= 29.0 {
            assert!(series(&m, "ml_shadow_disagreement_count", &labels) >= 29.0);
            assert!(
                series(&m, "ml_shadow_disagreement_sum", &labels) > 0.0,
                "two different models never disagreed"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "shadow runs: {ok}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Shadow off.
    run_cli(&["models", "shadow", "travel_match", "--off"], &settings).await;
    assert_eq!(app.reload().await["travel_match"]["shadow"], Value::Null);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_key_and_are_off_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    settings.http.api_keys = vec!["caller-key".to_string().into()];
    let app = spawn_with(settings.clone()).await;
    for (key, status) in [
        (None, 401),
        (Some("caller-key"), 401),
        (Some("wrong"), 401),
        (Some(ADMIN_KEY), 200),
    ] {
        let r = app
            .admin(reqwest::Method::POST, "/admin/models/reload", key)
            .await;
        assert_eq!(r.status(), status, "{key:?}");
        let r = app.admin(reqwest::Method::GET, "/admin/models", key).await;
        assert_eq!(r.status(), status, "{key:?}");
    }
    // The admin key is not an API key either.
    let r = app
        .client
        .post(format!("{}/match/score", app.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"user_a_id": uuid::Uuid::nil(), "user_b_id": uuid::Uuid::nil()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    settings.http.admin_keys.clear();
    let app = spawn_with(settings).await;
    let r = app
        .admin(
            reqwest::Method::POST,
            "/admin/models/reload",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(error_of(r).await.0, 403);
}

/// A backend whose models fail or stall on demand (0: run, 1: fail, 2: stall).
struct Flaky {
    mode: Arc<AtomicU8>,
    /// Model calls that ran (stalled ones included).
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
struct FlakyModel {
    inner: Arc<dyn LoadedModel>,
    mode: Arc<AtomicU8>,
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

impl LoadedModel for FlakyModel {
    fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            1 => Err(BackendError::Inference("injected failure".into())),
            2 => {
                std::thread::sleep(Duration::from_millis(400));
                self.inner.run(input, rows)
            }
            _ => self.inner.run(input, rows),
        }
    }
}

impl InferenceBackend for Flaky {
    fn name(&self) -> &'static str {
        "flaky-tract"
    }
    fn load(&self, onnx: &[u8], meta: &ModelMeta) -> Result<Arc<dyn LoadedModel>, BackendError> {
        Ok(Arc::new(FlakyModel {
            inner: ml_backend::tract::TractBackend.load(onnx, meta)?,
            mode: Arc::clone(&self.mode),
            runs: Arc::clone(&self.runs),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_slow_model_is_answered_by_the_cache_or_the_documented_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    settings.inference.inference_timeout_ms = 100;
    let repo = ModelRepository::local(dir.path()).unwrap();
    let mode = Arc::new(AtomicU8::new(0));
    let app = spawn_with_backend(
        settings.clone(),
        Arc::new(Flaky {
            mode: Arc::clone(&mode),
            runs: Default::default(),
        }),
    )
    .await;
    let u = app.users(12);
    let store = SqliteStore::open(&settings.data.sqlite_path, 1).unwrap();
    let cat = Catalogue::new(store.load_destinations().unwrap());
    let features = |id: &str| {
        let id: uuid::Uuid = id.parse().unwrap();
        let store = &store;
        let cat = &cat;
        async move {
            let h = store.user_history(id).await.unwrap().unwrap();
            UserFeatures::from_history(h.profile.as_ref().unwrap(), &h, cat, Utc::now())
        }
    };

    // Version 1 answers and its answer is cached.
    let pair = json!({"user_a_id": u[0], "user_b_id": u[1]});
    let r = app.post("/match/score", pair.clone()).await;
    assert!(r.headers().get("x-fallback").is_none());
    let first: Value = r.json().await.unwrap();
    assert!(first.get("fallback").is_none(), "{first}");
    // Version 2 (the same graph) is promoted, and its model calls fail.
    let v2 = clone_version(&repo, ModelKind::TravelMatch, 1).await;
    run_cli(
        &["models", "promote", "travel_match", &v2.to_string()],
        &settings,
    )
    .await;
    app.reload().await;
    mode.store(1, Ordering::SeqCst);
    let before = app.scrape().await;

    // The same request: version 2 has no cached answer, version 1's stands in.
    let r = app.post("/match/score", pair).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "true");
    assert_eq!(r.headers()["x-model-version"], format!("travel_match/{v2}"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["fallback"], true);
    assert_eq!(
        (&v["score"], &v["factors"]),
        (&first["score"], &first["factors"])
    );

    // A new pair: the documented default, from the two users' features.
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[2], "user_b_id": u[3]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (a, b) = (features(&u[2]).await, features(&u[3]).await);
    let expected = ml_core::post::match_fallback(&match_features(&a, &b, &Default::default()));
    assert_eq!(v["fallback"], true);
    assert_eq!(v["confidence"], 0.0);
    assert!(
        (v["score"].as_f64().unwrap() - expected.score as f64).abs() < 1e-3,
        "{v} vs {expected:?}"
    );
    assert!(
        (v["factors"]["interest_overlap"].as_f64().unwrap()
            - a.interests.jaccard(&b.interests) as f64)
            .abs()
            < 1e-3
    );

    // Recommendations: the most popular destinations the user has not been
    // to, within the filters.
    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": u[4], "limit": 5, "filters": {"budget": "medium"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "true");
    let v: Value = r.json().await.unwrap();
    let (_, meta) = repo.read(ModelKind::Recommendation, 1).await.unwrap();
    let popularity = meta
        .params
        .destination_popularity
        .clone()
        .expect("trained models record popularity");
    let user = features(&u[4]).await;
    let mut expected: Vec<(f32, &str)> = meta
        .items()
        .iter()
        .zip(&popularity)
        .filter_map(|(id, p)| {
            let d = cat.index_of(&id.parse().unwrap())?;
            let dest = &cat.destinations[d];
            (!user.has_consumed(d)
                && ml_core::post::passes_filters(dest, Some(Budget::Medium), None))
            .then_some((*p, dest.name.as_str()))
        })
        .collect();
    expected.sort_by(|x, y| y.0.total_cmp(&x.0));
    // Each answer is an eligible destination, and together they are the five
    // most popular (ties in popularity may come in either order).
    let got: Vec<f32> = v["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["destination"].as_str().unwrap();
            expected
                .iter()
                .find(|(_, n)| *n == name)
                .unwrap_or_else(|| panic!("{name} is not eligible"))
                .0
        })
        .collect();
    let top: Vec<f32> = expected.iter().take(5).map(|(p, _)| *p).collect();
    assert_eq!(got, top, "{v}");

    // Notifications: the population's best hours under the same policy.
    let r = app
        .post(
            "/notifications/optimize",
            json!({"user_id": u[5], "notification_type": "match_found"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["fallback"], true);
    let send_at: DateTime<Utc> = v["send_at"].as_str().unwrap().parse().unwrap();
    assert!(send_at > Utc::now());

    // A stalled model: past INFERENCE_TIMEOUT_MS the fallback answers.
    mode.store(2, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[6], "user_b_id": u[7]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        t0.elapsed() < Duration::from_millis(390),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.json::<Value>().await.unwrap()["fallback"], true);

    // Each fallback is counted, by reason, and as an inference error.
    let after = app.scrape().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        series(&after, name, labels) - series(&before, name, labels)
    };
    assert_eq!(
        delta(
            "ml_fallbacks_total",
            &[("model", "travel_match"), ("reason", "inference_failed")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "ml_fallbacks_total",
            &[("model", "travel_match"), ("reason", "inference_timeout")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "ml_inference_errors_total",
            &[("endpoint", "/match/score"), ("kind", "inference_failed")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "ml_inference_errors_total",
            &[
                ("endpoint", "/recommend/destinations"),
                ("kind", "inference_failed")
            ]
        ),
        1.0
    );

    // Fallback answers are not cached: once the model works again, it answers.
    mode.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[2], "user_b_id": u[3]}),
        )
        .await;
    assert!(r.headers().get("x-fallback").is_none());
    assert!(r.json::<Value>().await.unwrap().get("fallback").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_costs_no_model_call() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = lifecycle_settings(dir.path());
    // One inference thread, no batching, no prediction cache: a stalled call
    // holds the thread and the next request waits in the queue.
    settings.backend.workers = 1;
    settings.inference.batch_size = 1;
    settings.cache.prediction_cache = false;
    settings.inference.inference_timeout_ms = 5000;
    let mode = Arc::new(AtomicU8::new(0));
    let runs: Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let app = Arc::new(
        spawn_with_backend(
            settings,
            Arc::new(Flaky {
                mode: Arc::clone(&mode),
                runs: Arc::clone(&runs),
            }),
        )
        .await,
    );
    let u = app.users(4);
    // Warm the users' features so that only the model call remains.
    for w in [[&u[0], &u[1]], [&u[2], &u[3]]] {
        let r = app
            .post(
                "/match/score",
                json!({"user_a_id": w[0], "user_b_id": w[1]}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    mode.store(2, Ordering::SeqCst);
    let before = runs.load(Ordering::SeqCst);
    // A caller whose call stalls the only inference thread (400 ms)…
    let first = {
        let app = Arc::clone(&app);
        let (a, b) = (u[0].clone(), u[1].clone());
        tokio::spawn(async move {
            app.post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
                .await
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …and one who sends a request, then hangs up while it waits its turn.
    let addr = app.base.trim_start_matches("http://").to_string();
    let body = json!({"user_a_id": u[2], "user_b_id": u[3]}).to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /match/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    assert_eq!(first.await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Only the first caller's model call ran.
    assert_eq!(runs.load(Ordering::SeqCst) - before, 1);
}

/// `REC_DENSE_MAX` picks the recommender's item model: `train` with it at 0
/// writes the low-rank form (its rank in `model.json`; the demo's catalogue
/// is smaller than the rank, so here it is full rank), which the service
/// loads and answers from over HTTP, reasons included, as from the dense one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rec_dense_max_switches_the_recommender_to_its_low_rank_form() {
    let dir = tempfile::tempdir().unwrap();
    let settings = lifecycle_settings(dir.path());
    let blend = |v: u64| -> Value {
        let path = dir.path().join(format!("recommendation/{v}/model.json"));
        let meta: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        meta["params"]["recommendation_blend"].clone()
    };
    assert!(
        blend(1).get("rank").is_none(),
        "dense by default: {}",
        blend(1)
    );
    run_cli(
        &["train", "recommendation", "--rec-dense-max", "0"],
        &settings,
    )
    .await;
    let rank = blend(2)["rank"].as_u64().expect("the low-rank form's rank");
    assert!((1..=256).contains(&rank), "{rank}");
    assert_eq!(blend(2)["repeat"], 0.0, "no repeat weight in that form");

    let app = spawn_with(settings).await;
    for user in app.users(5) {
        let r = app
            .post(
                "/recommend/destinations",
                json!({"user_id": user, "limit": 5}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-model-version"], "recommendation/2");
        let v: Value = r.json().await.unwrap();
        assert_ne!(v["fallback"], true, "{v}");
        let recs = v["recommendations"].as_array().unwrap();
        assert_eq!(recs.len(), 5, "{v}");
        assert!(
            recs.iter()
                .all(|r| !r["reason"].as_str().unwrap().is_empty()),
            "{v}"
        );
    }
}
