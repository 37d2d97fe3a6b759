//! Outcomes and experiments against the real server: `POST /feedback` (and
//! its gRPC twin) ties what the app reports to an answer and refuses what
//! does not fit it; an A/B test on the demo world between the trained match
//! model and one trained on a few percent of the data, played by
//! `experiments simulate` over HTTP, reaches the right verdict, and with
//! `--auto` the service rolls the weaker version back by itself.

use super::*;
use ml_data::{ExperimentStore, SqlitePredictions};
use ml_server::grpc::pb::mlservice as ml;
use ml_server::grpc::pb::mlservice::ml_service_client::MlServiceClient;
use std::time::Duration;
use uuid::Uuid;

const ADMIN_KEY: &str = "experiments-admin-key";

fn prediction_id(r: &reqwest::Response) -> Uuid {
    r.headers()["x-prediction-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn feedback_ties_outcomes_to_answers_and_refuses_what_does_not_fit() {
    let app = spawn_app().await;
    let log = SqlitePredictions::open(&fixture().settings.data.sqlite_path).unwrap();
    let u = app.users(3);

    // A match: its outcome once, then the same again (recorded once).
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    let m = prediction_id(&r);
    let fb = |body: Value| app.post("/feedback", body);
    let r = fb(json!({"prediction_id": m, "outcome": "matched"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["prediction_id"], &v["outcome"], &v["recorded"]),
        (&json!(m), &json!("matched"), &json!(true))
    );
    let v = fb(json!({"prediction_id": m, "outcome": "matched"})).await;
    assert_eq!(v.json::<Value>().await.unwrap()["recorded"], false);
    let stored = log.outcomes(m).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        (stored[0].source.as_str(), stored[0].value),
        ("feedback", 1.0)
    );

    // What does not fit the prediction is refused, naming the field.
    for (body, status, code, field) in [
        (
            json!({"prediction_id": m, "outcome": "booked"}),
            422,
            "invalid_field",
            Some("outcome"),
        ),
        (
            json!({"prediction_id": m, "outcome": "maybe"}),
            422,
            "invalid_field",
            Some("outcome"),
        ),
        (
            json!({"prediction_id": m, "outcome": "matched", "destination": "Kyoto"}),
            422,
            "invalid_field",
            Some("destination"),
        ),
        (
            json!({"prediction_id": m, "outcome": "matched", "occurred_at": "2020-01-01T00:00:00Z"}),
            422,
            "invalid_field",
            Some("occurred_at"),
        ),
        (
            json!({"prediction_id": "nope", "outcome": "matched"}),
            422,
            "invalid_field",
            Some("prediction_id"),
        ),
        (
            json!({"outcome": "matched"}),
            422,
            "invalid_field",
            Some("prediction_id"),
        ),
        (
            json!({"prediction_id": m, "outcome": "matched", "extra": 1}),
            422,
            "invalid_field",
            Some("extra"),
        ),
        // An id the log never held (made an hour ago): 404.
        (
            json!({"prediction_id": uuid::Builder::from_unix_timestamp_millis(
                (Utc::now() - chrono::Duration::hours(1)).timestamp_millis() as u64, &[7; 10]).into_uuid(),
                "outcome": "matched"}),
            404,
            "unknown_prediction",
            Some("prediction_id"),
        ),
    ] {
        let r = fb(body.clone()).await;
        assert_eq!(
            error_of(r).await,
            (status, code.to_string(), field.map(str::to_string)),
            "{body}"
        );
    }
    // The refused reports changed nothing.
    assert_eq!(log.outcomes(m).await.unwrap(), stored);

    // A recommendation: the outcome names one of its destinations, whose
    // position is kept; another destination is refused.
    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": u[2], "limit": 3}),
        )
        .await;
    let rec = prediction_id(&r);
    let body: Value = r.json().await.unwrap();
    let second = body["recommendations"][1]["destination"]
        .as_str()
        .unwrap()
        .to_string();
    let r = fb(json!({"prediction_id": rec, "outcome": "booked"})).await;
    assert_eq!(
        error_of(r).await,
        (422, "invalid_field".into(), Some("destination".into()))
    );
    let shown: Vec<&str> = body["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["destination"].as_str().unwrap())
        .collect();
    let elsewhere = ml_core::catalogue::builtin()
        .into_iter()
        .map(|d| d.name)
        .find(|n| !shown.contains(&n.as_str()))
        .unwrap();
    let r = fb(json!({"prediction_id": rec, "outcome": "saved", "destination": elsewhere})).await;
    assert_eq!(
        error_of(r).await,
        (422, "invalid_field".into(), Some("destination".into()))
    );
    let r = fb(json!({"prediction_id": rec, "outcome": "booked",
        "destination": second.to_uppercase()}))
    .await;
    assert_eq!(r.status(), 200);
    let o = log.outcomes(rec).await.unwrap();
    assert_eq!(
        (o.len(), o[0].item.as_str(), o[0].position),
        (1, second.as_str(), Some(2))
    );

    // gRPC: the same checks and the same record.
    let mut c = MlServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap();
    let g = c
        .feedback(ml::FeedbackRequest {
            prediction_id: m.to_string(),
            outcome: "matched".into(),
            destination: None,
            occurred_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!g.recorded, "a repeat over gRPC");
    let e = c
        .feedback(ml::FeedbackRequest {
            prediction_id: m.to_string(),
            outcome: "opened".into(),
            destination: None,
            occurred_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.metadata().get("x-error-field").unwrap().to_str().unwrap(),
        "outcome"
    );
    let e = c
        .feedback(ml::FeedbackRequest {
            prediction_id: Uuid::from_u128(7).to_string(),
            outcome: "matched".into(),
            destination: None,
            occurred_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Reported outcomes are counted.
    let metrics = app.scrape().await;
    assert!(
        metrics.contains("ml_outcome_feedback_total{result=\"recorded\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_the_prediction_log_feedback_says_why_it_cannot_be_recorded() {
    let mut s = fixture().settings.clone();
    s.prediction_log.prediction_log = false;
    let app = spawn_with(s).await;
    let r = app
        .post(
            "/feedback",
            json!({"prediction_id": Uuid::now_v7(), "outcome": "matched"}),
        )
        .await;
    assert_eq!(error_of(r).await, (503, "prediction_log_off".into(), None));
}

#[tokio::test]
async fn a_report_that_cannot_read_the_model_repository_says_so() {
    let (_dir, s) = world().await;
    // A serving.json that is not JSON: the repository cannot say what the
    // split is, so the report cannot be made; the answer names the
    // repository, not the model runtime.
    std::fs::write(
        s.models.model_path.join("travel_match/serving.json"),
        "{not json",
    )
    .unwrap();
    let app = spawn_with(s).await;
    let r = app
        .admin(
            reqwest::Method::GET,
            "/admin/experiments/travel_match",
            Some(ADMIN_KEY),
        )
        .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (503, "model_store_unavailable"));
}

/// A fresh copy of the tests' demo world (the same users as the fixture's)
/// and of the fixture's models, with the admin key set.
async fn world() -> (tempfile::TempDir, Settings) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings_in(dir.path().join("data/app.db"), dir.path().join("models"));
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    s.http.admin_keys = vec![ADMIN_KEY.to_string().into()];
    s.model_poll_interval_s = 1;
    s.experiments.outcome_join_interval_s = 0;
    s.experiments.experiment_auto_interval_s = 0;
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        ml_cli::store::open(&data, &demo(), app::Access::Serve).unwrap();
    })
    .await
    .unwrap();
    (dir, s)
}

/// The serving versions of travel_match, from /admin/models.
async fn serving(app: &TestApp) -> Vec<u64> {
    let v: Value = app
        .admin_json(reqwest::Method::GET, "/admin/models", ADMIN_KEY)
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "travel_match")
        .unwrap()["serving"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !done().await {
        assert!(t0.elapsed() < Duration::from_secs(60), "waited for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_ab_test_on_the_demo_world_finds_the_weaker_model_and_auto_rolls_it_back() {
    let (_dir, mut s) = world().await;
    // The challenger: a match model trained on about a tenth of the users.
    run_cli(&["train", "travel_match", "--train-max-users", "100"], &s).await;
    run_cli(
        &["models", "split", "travel_match", "1=50", "2=50", "--auto"],
        &s,
    )
    .await;
    let app = spawn_with(s.clone()).await;
    wait_for("the split to serve", async || serving(&app).await == [1, 2]).await;

    // The app's side, over HTTP: pairs asked, the world's outcomes written
    // to match_outcomes, joined.
    let demo = demo();
    let (users, seed) = (demo.demo_users.to_string(), demo.demo_seed.to_string());
    run_cli(
        &[
            "experiments",
            "simulate",
            "--url",
            &app.base,
            "--pairs",
            "3000",
            "--demo-users",
            &users,
            "--demo-seed",
            &seed,
            "--json",
        ],
        &s,
    )
    .await;
    let r: Value = app
        .admin_json(
            reqwest::Method::GET,
            "/admin/experiments/travel_match",
            ADMIN_KEY,
        )
        .await;
    assert_eq!(r["split"], "1=50,2=50", "{r:#}");
    assert_eq!(r["verdict"]["status"], "challenger_worse", "{r:#}");
    assert_eq!(r["verdict"]["serve"], 1, "{r:#}");
    let arms = r["arms"].as_array().unwrap();
    let metric = |i: usize| arms[i]["metric"].as_f64().unwrap();
    assert!(metric(1) > metric(0), "log-loss: {r:#}");
    // Every answer was logged and tied to its outcome; the users split as
    // the weights say.
    let predictions: u64 = arms
        .iter()
        .map(|a| a["predictions"].as_u64().unwrap())
        .sum();
    let outcomes: u64 = arms.iter().map(|a| a["outcomes"].as_u64().unwrap()).sum();
    assert_eq!((predictions, outcomes), (3000, 3000), "{r:#}");
    assert!(r["sample_ratio_p"].as_f64().unwrap() > 0.001, "{r:#}");
    assert!(arms[1]["comparison"]["p_value"].as_f64().unwrap() < 0.05);

    // The CLI's report says the same.
    run_cli(&["experiments", "report", "travel_match", "--no-join"], &s).await;

    // With automatic decisions on, the service rolls v2 back by itself and
    // records why in serving.json.
    drop(app);
    s.experiments.experiment_auto_interval_s = 1;
    let app = spawn_with(s.clone()).await;
    wait_for("the rollback", async || serving(&app).await == [1]).await;
    let repo = ModelRepository::local(&s.models.model_path).unwrap();
    let p = repo
        .serving(ml_core::model::ModelKind::TravelMatch)
        .await
        .unwrap()
        .unwrap();
    assert!(!p.auto);
    let d = p.decisions.last().unwrap();
    assert_eq!(
        (d.action.as_str(), d.serving, d.split.as_str()),
        ("rolled_back", 1, "1=50,2=50")
    );
    assert!(d.reason.contains("worse"), "{}", d.reason);
    assert_eq!(d.evidence["verdict"]["status"], "challenger_worse");
    let metrics = app.scrape().await;
    assert!(
        metrics.contains("ml_experiment_arm_metric{model=\"travel_match\",version=\"2\"}"),
        "{metrics}"
    );
}
