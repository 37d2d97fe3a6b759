//! Criterion benchmarks of the request path's pieces (issue 16): JSON decode
//! and encode, feature computation, one model call per model at batch 1 and
//! 32 (tract, and ONNX Runtime when `ORT_DYLIB_PATH` names its library), and
//! each endpoint's whole computation through the `Predictor` with the
//! prediction cache off (features from the near-cache, as under steady load).
//!
//!   cargo bench -p ml-cli --bench hot_path
//!   cargo bench -p ml-cli --bench hot_path -- inference/   # one group
//!
//! The models are trained once per run on the demo dataset (800 users), as
//! the integration tests train theirs.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ml_api::{MatchRequest, NotifyRequest, RecommendRequest};
use ml_backend::{InferenceBackend, LoadedModel, ModelRepository};
use ml_cli::args::{DemoSettings, ServeArgs, TrainingSettings};
use ml_core::features::{self, UserFeatures};
use ml_core::model::ModelKind;
use ml_core::types::UserHistory;
use ml_server::app;
use ml_server::service::Predictor;
use ml_server::settings::Settings;
use std::hint::black_box;
use std::sync::Arc;
use uuid::Uuid;

/// The trained service and a few users' data, built once.
struct Setup {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    predictor: Arc<Predictor>,
    repo: ModelRepository,
    settings: Settings,
    users: Vec<Uuid>,
    histories: Vec<UserHistory>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut s = Settings::from_env();
    s.data.database_url = None;
    s.data.sqlite_path = dir.path().join("app.db");
    s.models.model_path = dir.path().join("models");
    s.cache.prediction_cache = false;
    s.cache.redis_url = None;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let predictor = {
        let s = s.clone();
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let _entered = handle.enter();
            // As `serve` starts: the demo dataset (800 users) into the
            // empty store, the models trained, then the server's start-up.
            ml_cli::serve::prepare(&ServeArgs {
                server: s,
                training: ml_server::settings::from_env::<TrainingSettings>(),
                demo: DemoSettings {
                    demo_users: 800,
                    demo_seed: 5,
                    demo_synonym_rate: 0.0,
                },
            })
            .expect("the service prepares")
        })
        .join()
        .expect("prepare does not panic")
    };
    let store = {
        let s = s.clone();
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let _entered = handle.enter();
            app::open_store(&s.data, app::Access::Read).expect("the store opens")
        })
        .join()
        .expect("open_store does not panic")
    };
    let users: Vec<Uuid> = rt
        .block_on(store.user_ids(64))
        .expect("user ids")
        .iter()
        .map(|id| id.parse().expect("a uuid"))
        .collect();
    let histories = users
        .iter()
        .map(|id| {
            rt.block_on(predictor.data().user_history(*id))
                .expect("a history")
                .expect("a known user")
        })
        .collect();
    let repo = ModelRepository::local(&s.models.model_path).expect("the model repository");
    Setup {
        _dir: dir,
        rt,
        predictor,
        repo,
        settings: s,
        users,
        histories,
    }
}

fn features_of(s: &Setup, h: &UserHistory) -> UserFeatures {
    let p = h.profile.as_ref().expect("a profile");
    UserFeatures::from_history(p, h, s.predictor.catalogue(), chrono::Utc::now())
}

/// The version of `kind` that answers the first user.
fn served(s: &Setup, kind: ModelKind) -> Arc<ml_server::lifecycle::ServedModel> {
    let vs = s.predictor.models().get(kind).expect("a serving version");
    Arc::clone(vs.pick(kind, s.users[0]))
}

fn json(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("json");
    let body = serde_json::to_vec(&serde_json::json!({
        "user_a_id": s.users[0], "user_b_id": s.users[1],
        "context": {"destination": "Lisbon", "interests": ["food", "beach"]}
    }))
    .expect("json");
    g.bench_function("decode_match_request", |b| {
        b.iter(|| ml_api::parse_json::<MatchRequest>(black_box(&body)).expect("valid"))
    });
    let body =
        serde_json::to_vec(&serde_json::json!({"user_id": s.users[0], "limit": 10})).expect("json");
    g.bench_function("decode_recommend_request", |b| {
        b.iter(|| ml_api::parse_json::<RecommendRequest>(black_box(&body)).expect("valid"))
    });
    let answer =
        s.rt.block_on(s.predictor.recommend(&RecommendRequest {
            user_id: s.users[0],
            limit: 10,
            filters: None,
        }))
        .expect("an answer")
        .body;
    g.bench_function("encode_recommend_response", |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)).expect("encodes"))
    });
    g.finish();
}

fn feature_code(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("features");
    let h = &s.histories[0];
    g.bench_function("user_from_history", |b| {
        b.iter(|| features_of(s, black_box(h)))
    });
    let a = features_of(s, &s.histories[0]);
    let bu = features_of(s, &s.histories[1]);
    let ctx = ml_core::post::match_context(s.predictor.catalogue(), Some("Lisbon"), &[]);
    g.bench_function("match_row", |b| {
        b.iter(|| features::match_features(black_box(&a), black_box(&bu), &ctx))
    });
    let timing = served(s, ModelKind::NotificationTiming);
    g.bench_function("timing_rows_168", |b| {
        b.iter(|| features::timing_features(black_box(&a), &timing.population))
    });
    let rec = served(s, ModelKind::Recommendation);
    g.bench_function("recommendation_rows", |b| {
        b.iter(|| {
            ml_core::inputs::rec_attribution_rows(
                black_box(&a),
                &rec.rec_columns,
                rec.meta.params.interest_space(),
                true,
            )
        })
    });
    g.finish();
}

/// Every model file loaded with `backend`, outside the batcher.
fn load_models(
    s: &Setup,
    backend: &dyn InferenceBackend,
) -> Vec<(ModelKind, Arc<dyn LoadedModel>, usize)> {
    ModelKind::ALL
        .iter()
        .map(|&k| {
            let v =
                s.rt.block_on(s.repo.latest(k))
                    .expect("versions")
                    .expect("a version");
            let (onnx, meta) = s.rt.block_on(s.repo.read(k, v)).expect("the files");
            let width = meta.features.len();
            (k, backend.load(&onnx, &meta).expect("it loads"), width)
        })
        .collect()
}

fn inference(c: &mut Criterion, s: &Setup) {
    let mut backends: Vec<(&str, Arc<dyn InferenceBackend>)> =
        vec![("tract", Arc::new(ml_backend::tract::TractBackend))];
    if let Ok(lib) = std::env::var("ORT_DYLIB_PATH") {
        let mut settings = s.settings.clone();
        settings.backend.inference_backend = ml_server::settings::BackendKind::Onnxruntime;
        settings.backend.ort_dylib_path = Some(lib.into());
        match app::backend(&settings.backend) {
            Ok(b) => backends.push(("onnxruntime", b)),
            Err(e) => eprintln!("ONNX Runtime left out: {e:#}"),
        }
    }
    let mut g = c.benchmark_group("inference");
    for (name, backend) in &backends {
        for (kind, model, width) in load_models(s, backend.as_ref()) {
            // Batch 1 and 32, and the rows one request of the model runs
            // (a recommendation 4, a notification 168).
            let served = match kind {
                ModelKind::Recommendation => 4,
                ModelKind::NotificationTiming => 168,
                _ => 1,
            };
            let mut sizes = vec![1usize, 32];
            if served > 1 {
                sizes.push(served);
            }
            for rows in sizes {
                let input: Vec<f32> = (0..rows * width).map(|i| (i % 7) as f32 / 7.0).collect();
                g.bench_function(format!("{name}/{kind}/batch{rows}"), |b| {
                    b.iter(|| model.run(black_box(&input), rows).expect("it runs"))
                });
            }
        }
    }
    g.finish();
}

fn endpoints(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("predictor");
    let p = &s.predictor;
    let n = s.users.len();
    // The users' features are in the near-cache after the first round, as
    // they are under steady load.
    let mut i = 0;
    g.bench_function("match", |b| {
        b.to_async(&s.rt).iter(|| {
            i += 1;
            let req = MatchRequest {
                user_a_id: s.users[i % n],
                user_b_id: s.users[(i + 1) % n],
                context: None,
            };
            async move { p.score_match(&req).await.expect("an answer") }
        })
    });
    g.bench_function("recommend", |b| {
        b.to_async(&s.rt).iter(|| {
            i += 1;
            let req = RecommendRequest {
                user_id: s.users[i % n],
                limit: 10,
                filters: None,
            };
            async move { p.recommend(&req).await.expect("an answer") }
        })
    });
    g.bench_function("notify", |b| {
        b.to_async(&s.rt).iter_batched(
            || {
                i += 1;
                serde_json::from_value::<NotifyRequest>(serde_json::json!({
                    "user_id": s.users[i % n], "notification_type": "message"
                }))
                .expect("a request")
            },
            |req| async move { p.optimize_notification(&req).await.expect("an answer") },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let s = setup();
    json(c, &s);
    feature_code(c, &s);
    inference(c, &s);
    endpoints(c, &s);
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
