//! The prediction log on the embedded store: every answer of the three
//! endpoints, over HTTP and gRPC, gets a time-ordered id in `x-prediction-id`
//! and a row saying which version answered, on which route, for whom and
//! what it decided; sampling and the off switch keep the ids and write no
//! rows; a clean shutdown writes what was queued. (The Postgres store, down
//! and stalled under load: `postgres.rs`.)

use super::*;
use ml_data::{PredictionRecord, PredictionStore, SqlitePredictions};
use ml_server::grpc::pb::mlservice as ml;
use ml_server::grpc::pb::mlservice::ml_service_client::MlServiceClient;
use std::time::Duration;
use uuid::Uuid;

/// The answer's prediction id: a UUID of version 7.
fn prediction_id(r: &reqwest::Response) -> Uuid {
    let id: Uuid = r.headers()["x-prediction-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(id.get_version_num(), 7, "{id}");
    id
}

/// The row of `id`, waiting for the writer (it batches for 50 ms).
async fn row(log: &SqlitePredictions, id: Uuid) -> PredictionRecord {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(r) = log.get(id).await.unwrap() {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no log row for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_answer_has_an_id_and_a_row_with_what_was_decided() {
    let app = spawn_app().await;
    let log = SqlitePredictions::open(&fixture().settings.data.sqlite_path).unwrap();
    let u = app.users(3);
    let t0 = Utc::now();

    // A match: the row names both users and keeps the score and factors.
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1], "context": {"destination": "Kyoto"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let id = prediction_id(&r);
    let version = r.headers()["x-model-version"].to_str().unwrap().to_string();
    let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let m = row(&log, id).await;
    assert_eq!(
        (m.endpoint.as_ref(), format!("{}/{}", m.model, m.version)),
        ("match", version.clone())
    );
    assert_eq!(
        &*m.route,
        version.split('/').nth(1).unwrap(),
        "one version serves"
    );
    assert_eq!(m.user_id.to_string(), u[0]);
    assert_eq!(m.other_user_id.map(|x| x.to_string()), Some(u[1].clone()));
    assert_eq!(m.cached, cache == "hit");
    assert!(!m.fallback);
    assert!(m.at >= t0 - chrono::Duration::seconds(1) && m.at <= Utc::now());
    let d: Value = serde_json::from_str(&m.decision).unwrap();
    assert_eq!(d["score"], body["score"]);
    assert_eq!(d["factors"], body["factors"]);
    assert_eq!(
        m.score.map(f64::from),
        body["score"].as_f64().map(|s| s as f32 as f64)
    );
    // The request is kept only as its digest.
    assert_eq!(m.request_digest.len(), 32);
    assert!(m.request_digest.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!m.decision.contains("Kyoto"));

    // The same request again: a new id, and the row says the cache answered.
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1], "context": {"destination": "Kyoto"}}),
        )
        .await;
    let again = prediction_id(&r);
    assert_ne!(again, id);
    assert!(again > id, "ids are time-ordered");
    let m2 = row(&log, again).await;
    assert!(
        m2.cached,
        "the second answer came from the prediction cache"
    );
    assert_eq!(m2.request_digest, m.request_digest);

    // Recommendations: the destinations in order, with their scores.
    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": u[2], "limit": 5}),
        )
        .await;
    let id = prediction_id(&r);
    let body: Value = r.json().await.unwrap();
    let rec = row(&log, id).await;
    assert_eq!(
        (rec.endpoint.as_ref(), rec.model.as_ref()),
        ("recommend", "recommendation")
    );
    let d: Value = serde_json::from_str(&rec.decision).unwrap();
    let logged: Vec<(String, f64)> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i[0].as_str().unwrap().to_string(), i[1].as_f64().unwrap()))
        .collect();
    let answered: Vec<(String, f64)> = body["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["destination"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(logged.len(), 5);
    assert_eq!(logged, answered);

    // A notification: send time, channel and the greedy policy's propensity.
    let r = app
        .post(
            "/notifications/optimize",
            json!({"user_id": u[2], "notification_type": "message"}),
        )
        .await;
    let id = prediction_id(&r);
    let body: Value = r.json().await.unwrap();
    let n = row(&log, id).await;
    assert_eq!(n.endpoint, "notify");
    let d: Value = serde_json::from_str(&n.decision).unwrap();
    assert_eq!(d["send_at"], body["send_at"]);
    assert_eq!(d["channel"], body["channel"]);
    assert_eq!(d["propensity"], 1.0);

    // gRPC: the id comes as metadata, and the row is the same kind.
    let mut c = MlServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap();
    let g = c
        .recommend_destinations(ml::RecommendRequest {
            user_id: u[0].clone(),
            limit: Some(3),
            filters: None,
        })
        .await
        .unwrap();
    let id: Uuid = g
        .metadata()
        .get("x-prediction-id")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(id.get_version_num(), 7);
    let items: Vec<String> = g
        .into_inner()
        .recommendations
        .into_iter()
        .map(|r| r.destination)
        .collect();
    let g = row(&log, id).await;
    let d: Value = serde_json::from_str(&g.decision).unwrap();
    let logged: Vec<&str> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[0].as_str().unwrap())
        .collect();
    assert_eq!(logged, items);

    // Bad requests are not answers: no id, nothing logged.
    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": u[0], "limit": 0}),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("x-prediction-id").is_none());
    // The writer's counts are in the metrics.
    let text = app.scrape().await;
    assert!(
        text.contains("ml_prediction_log_rows_total{outcome=\"written\"}"),
        "{text}"
    );
}

/// Settings with a store of their own (the tests' demo data, seeded at
/// start-up) and a copy of the fixture's models.
fn own_store(dir: &std::path::Path) -> (Settings, PathBuf) {
    let data = dir.join("app.db");
    let s = settings_in(data.clone(), dir.join("models"));
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    (s, data)
}

#[tokio::test]
async fn unsampled_users_and_the_off_switch_keep_ids_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, data) = own_store(dir.path());
    for (on, sample) in [(true, 0.0), (false, 1.0)] {
        s.prediction_log.prediction_log = on;
        s.prediction_log.prediction_log_sample = sample;
        let app = spawn_with(s.clone()).await;
        let u = app.users(2);
        let r = app
            .post(
                "/match/score",
                json!({"user_a_id": u[0], "user_b_id": u[1]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        prediction_id(&r);
    }
    // Well past the writer's 50 ms batching: still nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = SqlitePredictions::open(&data).unwrap();
    assert_eq!(log.count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_clean_shutdown_writes_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, data) = own_store(dir.path());
    s.http.shutdown_grace_ms = 0;
    let predictor = {
        let args = serve_args(s.clone());
        let backend = app::backend(&s.backend).unwrap();
        tokio::task::spawn_blocking(move || ml_cli::serve::prepare_with(&args, backend))
            .await
            .unwrap()
            .unwrap()
    };
    let listeners = app::Listeners {
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: None,
        metrics: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let base = format!("http://{}", listeners.http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (p, s) = (Arc::clone(&predictor), s.clone());
        async move {
            app::serve_until(listeners, p, &s, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let users = SqliteStore::open(&data, 1).unwrap().user_ids(40).unwrap();
    let client = reqwest::Client::new();
    let mut ids = vec![];
    for w in users.chunks(2) {
        let r = client
            .post(format!("{base}/match/score"))
            .json(&json!({"user_a_id": w[0], "user_b_id": w[1]}))
            .send()
            .await
            .unwrap();
        ids.push(prediction_id(&r));
    }
    // Stop at once: the last answers are still in the writer's queue or batch.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let log = SqlitePredictions::open(&data).unwrap();
    for id in ids {
        assert!(log.get(id).await.unwrap().is_some(), "{id} was not written");
    }
    assert_eq!(
        predictor
            .prediction_log()
            .counts()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
