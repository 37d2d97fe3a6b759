//! Integration tests: the real server on a port chosen by the OS, called over
//! HTTP, on a small generated dataset with models trained for the test run.
//! The harness is `helpers.rs`; the endpoint tests are here, the others in
//! one file per concern.

use chrono::{DateTime, Datelike, Timelike, Utc};
use ml_backend::ModelRepository;
use ml_core::catalogue::Catalogue;
use ml_core::features::{match_features, parse_tz, UserFeatures};
use ml_core::model::ModelKind;
use ml_core::post::match_context;
use ml_core::types::{Budget, InteractionKind, TripDuration};
use ml_data::{DataSource, SqliteStore};
use ml_server::app;
use ml_server::settings::Settings;
use ml_train::export;
use ml_train::train::TrainingData;
use ml_train::train_model as train;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

mod deploy;
mod experiments;
mod grpc;
mod helpers;
mod interests;
mod kserve;
mod lifecycle;
mod movielens;
mod notifications;
mod observability;
mod postgres;
mod prediction_log;
mod redis_cache;
mod reliability;
mod s3;

pub(crate) use helpers::*;

#[tokio::test]
async fn health_tells_the_truth() {
    let app = spawn_app().await;
    let r = app.get("/health").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"status": "healthy", "models_loaded": true, "database_connected": true, "redis_connected": false, "gpu_available": false})
    );
}

#[tokio::test]
async fn match_score_has_the_spec_shape_and_a_model_version() {
    let app = spawn_app().await;
    let u = app.users(2);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1], "context": {"destination": "Paris", "dates": "2024-07-15", "interests": ["art", "food"]}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model-version"], "travel_match/1");
    let v: Value = r.json().await.unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["confidence", "factors", "latency_ms", "score"]);
    let f: Vec<&String> = v["factors"].as_object().unwrap().keys().collect();
    assert_eq!(f, ["interest_overlap", "personality", "travel_style"]);
    for x in [
        &v["score"],
        &v["confidence"],
        &v["factors"]["interest_overlap"],
        &v["factors"]["travel_style"],
        &v["factors"]["personality"],
    ] {
        let x = x.as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{x}");
    }
    assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
    // Symmetric: swapping the users gives the same score.
    let w: Value = app
        .post(
            "/match/score",
            json!({"user_a_id": u[1], "user_b_id": u[0], "context": {"destination": "Paris", "dates": "2024-07-15", "interests": ["art", "food"]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["score"], w["score"]);
}

#[tokio::test]
async fn scores_differ_between_pairs() {
    // A model that ignored its inputs would give every pair the same score.
    let app = spawn_app().await;
    let u = app.users(12);
    let mut scores = std::collections::HashSet::new();
    for w in u.windows(2) {
        let v: Value = app
            .post(
                "/match/score",
                json!({"user_a_id": w[0], "user_b_id": w[1]}),
            )
            .await
            .json()
            .await
            .unwrap();
        scores.insert(v["score"].to_string());
    }
    assert!(scores.len() >= 8, "{scores:?}");
}

#[tokio::test]
async fn recommendations_honour_limit_and_filters_and_skip_visited_places() {
    let app = spawn_app().await;
    let cat = Catalogue::new(app.store.load_destinations().unwrap());
    let data = app.store.load_dataset().unwrap();
    // The user with the most booked or visited places.
    let mut consumed: std::collections::HashMap<_, std::collections::HashSet<_>> =
        Default::default();
    for i in &data.interactions {
        if matches!(
            i.kind,
            InteractionKind::Booked | InteractionKind::Visited | InteractionKind::Rated
        ) {
            consumed
                .entry(i.user_id)
                .or_default()
                .insert(i.destination_id);
        }
    }
    let (user, places) = consumed.iter().max_by_key(|(_, s)| s.len()).unwrap();
    assert!(!places.is_empty());

    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": user, "limit": 100}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model-version"], "recommendation/1");
    let v: Value = r.json().await.unwrap();
    let recs = v["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 100);
    let mut last = f64::INFINITY;
    for rec in recs {
        let d = &cat.destinations[cat
            .find_by_name(rec["destination"].as_str().unwrap())
            .unwrap()];
        assert!(
            !places.contains(&d.id),
            "recommended {} which the user already visited",
            d.name
        );
        let s = rec["score"].as_f64().unwrap();
        assert!(s <= last, "not sorted by score");
        last = s;
        assert!(!rec["reason"].as_str().unwrap().is_empty());
    }

    let v: Value = app
        .post("/recommend/destinations", json!({"user_id": user, "limit": 7, "filters": {"budget": "low", "duration": "weekend"}}))
        .await
        .json()
        .await
        .unwrap();
    let recs = v["recommendations"].as_array().unwrap();
    assert!(!recs.is_empty() && recs.len() <= 7);
    // JSON Schema's integer: 7.0 is 7.
    let same: Value = app
        .post("/recommend/destinations", json!({"user_id": user, "limit": 7.0, "filters": {"budget": "low", "duration": "weekend"}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same["recommendations"], v["recommendations"]);
    for rec in recs {
        let d = &cat.destinations[cat
            .find_by_name(rec["destination"].as_str().unwrap())
            .unwrap()];
        assert_eq!(d.cost_level, Budget::Low, "{}", d.name);
        assert!(
            d.trip_lengths.contains(&TripDuration::Weekend),
            "{}",
            d.name
        );
    }
    // Reasons name the signal that drove the score: history reasons name places
    // from the user's own history.
    let engaged: std::collections::HashSet<String> = data
        .interactions
        .iter()
        .filter(|i| i.user_id == *user)
        .map(|i| {
            cat.destinations[cat.index_of(&i.destination_id).unwrap()]
                .name
                .clone()
        })
        .collect();
    let mut from_history = 0;
    for rec in recs {
        let reason = rec["reason"].as_str().unwrap();
        if let Some(rest) = reason
            .strip_prefix("Because you explored ")
            .or(reason.strip_prefix("Because you visited "))
        {
            from_history += 1;
            for name in rest.split(" and ") {
                assert!(
                    engaged.contains(name),
                    "{reason}: {name} is not in the user's history"
                );
            }
        } else {
            assert!(
                reason.starts_with("Matches your interest in ")
                    || reason.starts_with("Fits your ")
                    || reason == "Popular with travellers like you",
                "{reason}"
            );
        }
    }
    assert!(
        from_history > 0,
        "a user with this much history gets history-driven reasons"
    );
    // Default limit is 10.
    let v: Value = app
        .post("/recommend/destinations", json!({"user_id": user}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["recommendations"].as_array().unwrap().len(), 10);
}

/// Two servers on the fixture's data with the prediction cache off (every
/// request computes): one with the default settings, one after `change`.
async fn spawn_default_and(change: impl FnOnce(&mut Settings)) -> (TestApp, TestApp) {
    let mut settings = fixture().settings.clone();
    settings.cache.prediction_cache = false;
    let default = spawn_with(settings.clone()).await;
    change(&mut settings);
    (default, spawn_with(settings).await)
}

/// Model calls of `model` with at most `rows` rows so far, from the
/// `ml_prediction_batch_size` histogram in a metrics scrape (`rows` one of
/// its bucket bounds).
fn calls_of_at_most(scrape: &str, model: &str, rows: usize) -> f64 {
    scrape
        .lines()
        .find(|l| {
            l.starts_with("ml_prediction_batch_size_bucket")
                && l.contains(&format!("model=\"{model}\""))
                && l.contains(&format!("le=\"{rows}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The notification model runs on the hours a plan weighs only (a message:
/// its 12-hour window) and the answers are those all 168 rows give
/// (TIMING_PLAN_HOURS=false), for every type and urgency; the calls of at
/// most 16 rows show the shortcut in use.
#[tokio::test]
async fn notification_plans_from_their_hours_equal_those_from_the_whole_week() {
    let (fast, whole) = spawn_default_and(|s| s.inference.timing_plan_hours = false).await;
    let users = fast.users(120);
    let kinds = ["message", "match_found", "reminder"];
    let urgencies = ["low", "medium", "high"];
    let body = |i: usize, user: &str| json!({"user_id": user, "notification_type": kinds[i % 3], "urgency": urgencies[(i / 3) % 3]});
    let small_calls = |text: String| calls_of_at_most(&text, "notification_timing", 16);
    let before = small_calls(fast.scrape().await);
    let mut messages = 0;
    for (i, user) in users.iter().enumerate() {
        let both = || async {
            let path = "/notifications/optimize";
            (
                fast.post_json(path, body(i, user)).await,
                whole.post_json(path, body(i, user)).await,
            )
        };
        let (mut a, mut b) = both().await;
        if a != b {
            // The two answers were made at different moments: a new hour (or
            // a send time a minute from now, to the second) may have begun
            // between them. Asked again, both fall within one hour.
            (a, b) = both().await;
        }
        assert_eq!(a, b, "user {user}, {}", body(i, user));
        messages += usize::from(i % 9 == 4);
    }
    let after = small_calls(fast.scrape().await);
    // Medium-urgency messages (one request in nine) weigh at most 13 hours.
    assert!(
        after - before >= messages as f64,
        "{} of {messages} medium-urgency messages ran in 16 rows or fewer: the shortcut is not in use",
        after - before
    );
}

/// Reasons named from the affine model's effects table (the default) are
/// those measured with one model row per history destination
/// (REC_LINEAR_ATTRIBUTION=false): every user's answer is the same, score for
/// score and reason for reason, with and without filters. And the table is
/// in use: the default server runs three rows per request (the model's
/// answer on the empty row, popularity alone, is the table's base), which
/// the metrics' buckets show as at most four.
#[tokio::test]
async fn recommendation_reasons_from_the_effects_table_equal_the_measured_ones() {
    let (fast, measured) = spawn_default_and(|s| s.inference.rec_linear_attribution = false).await;
    let users = fast.users(300);
    let body = |i: usize, user: &str| {
        if i.is_multiple_of(3) {
            json!({"user_id": user, "limit": 20, "filters": {"budget": "medium"}})
        } else {
            json!({"user_id": user, "limit": 10})
        }
    };
    // Model calls of at most four rows for recommendations (the test
    // binary's servers share one metrics recorder; other tests can only add).
    let small_calls = |text: String| calls_of_at_most(&text, "recommendation", 4);
    let before = small_calls(fast.scrape().await);
    let mut answers = vec![];
    for (i, user) in users.iter().enumerate() {
        let r = fast.post("/recommend/destinations", body(i, user)).await;
        answers.push(r.json::<Value>().await.unwrap());
    }
    let after = small_calls(fast.scrape().await);
    assert!(
        after - before >= users.len() as f64,
        "{} of {} requests ran in four rows or fewer: the effects table is not in use",
        after - before,
        users.len()
    );
    let mut history_reasons = 0;
    for (i, (user, a)) in users.iter().zip(&answers).enumerate() {
        let b: Value = measured
            .post("/recommend/destinations", body(i, user))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(a, &b, "user {user}");
        history_reasons += a["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"].as_str().unwrap().starts_with("Because you"))
            .count();
    }
    assert!(
        history_reasons > 100,
        "only {history_reasons} history reasons: the comparison says little"
    );
}

/// The user's busiest local hour and whether it is on weekends, computed here
/// from the raw events (average sessions per day, weekdays and weekends apart).
fn busiest_hour(activity: &[DateTime<Utc>], tz: &str) -> (u32, bool) {
    let tz = parse_tz(tz);
    let mut wd = [0f32; 24];
    let mut we = [0f32; 24];
    for t in activity {
        let l = t.with_timezone(&tz);
        if l.weekday().number_from_monday() >= 6 {
            we[l.hour() as usize] += 1.0 / 2.0;
        } else {
            wd[l.hour() as usize] += 1.0 / 5.0;
        }
    }
    let best = |a: &[f32; 24]| {
        (0..24)
            .map(|h| (h, a[h]))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap()
    };
    let ((wh, wv), (eh, ev)) = (best(&wd), best(&we));
    if wv >= ev {
        (wh as u32, false)
    } else {
        (eh as u32, true)
    }
}

/// The reason the service should give for sending at local time `local`:
/// the chosen hour and kind of day, then — when the user's busiest hour is
/// another — what ruled that one out, naming it.
fn check_reason<Tz: chrono::TimeZone>(reason: &str, local: DateTime<Tz>, busiest: (u32, bool)) {
    let weekend = local.weekday().number_from_monday() >= 6;
    let days = if weekend { "weekends" } else { "weekdays" };
    let head = format!(
        "Active around {} on {days}",
        ml_core::post::hour_span(local.hour() as usize)
    );
    assert!(
        reason.starts_with(&head),
        "{reason:?} should start {head:?}"
    );
    if busiest == (local.hour(), weekend) {
        assert_eq!(reason, head);
    } else {
        let peak = ml_core::post::hour_span(busiest.0 as usize);
        let rest = &reason[head.len()..];
        assert!(
            rest.starts_with("; ") && rest.contains(&peak),
            "{reason:?} should say why not {peak}"
        );
    }
}

#[tokio::test]
async fn notification_plans_are_in_the_future_outside_quiet_hours_and_explain_the_chosen_time() {
    let app = spawn_app().await;
    let data = app.store.load_dataset().unwrap();
    let mut checked = 0;
    for p in data.profiles.iter().take(40) {
        let activity: Vec<_> = data
            .activity
            .iter()
            .filter(|a| a.user_id == p.id)
            .map(|a| a.occurred_at)
            .collect();
        let before = Utc::now();
        let r = app
            .post(
                "/notifications/optimize",
                json!({"user_id": p.id, "notification_type": "match_found", "urgency": "medium"}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-model-version"], "notification_timing/1");
        let v: Value = r.json().await.unwrap();
        let send_at = v["send_at"].as_str().unwrap();
        assert!(send_at.ends_with('Z'), "{send_at}");
        let t = DateTime::parse_from_rfc3339(send_at)
            .unwrap()
            .with_timezone(&Utc);
        assert!(
            t > before && t <= before + chrono::Duration::hours(25),
            "{t}"
        );
        let local_time = t.with_timezone(&parse_tz(&p.timezone));
        let local = local_time.hour();
        assert!(
            (8..22).contains(&local),
            "{send_at} is {local}h local in {}",
            p.timezone
        );
        // Only a channel the user agreed to; push where the app has no answer.
        let channel = v["channel"].as_str().unwrap();
        let agreed = data
            .consents
            .iter()
            .find(|c| c.user_id == p.id && c.channel.as_str() == channel)
            .map(|c| c.granted);
        assert!(
            agreed.unwrap_or(channel == "push"),
            "{channel} for {} ({agreed:?})",
            p.id
        );
        let c = v["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
        if activity.len() >= 10 {
            check_reason(
                v["reason"].as_str().unwrap(),
                local_time,
                busiest_hour(&activity, &p.timezone),
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "too few users with history were checked");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_service_keeps_serving() {
    let app = spawn_app().await;
    let u = app.users(2);
    let (a, b) = (&u[0], &u[1]);
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            "/match/score",
            json!({"user_a_id": a}),
            422,
            "invalid_field",
            Some("user_b_id"),
        ),
        (
            "/match/score",
            json!({"user_a_id": "not-a-uuid", "user_b_id": b}),
            422,
            "invalid_field",
            Some("user_a_id"),
        ),
        (
            "/match/score",
            json!({"user_a_id": a, "user_b_id": a}),
            422,
            "invalid_field",
            Some("user_b_id"),
        ),
        (
            "/match/score",
            json!({"user_a_id": a, "user_b_id": "00000000-0000-4000-8000-000000000000"}),
            404,
            "unknown_user",
            Some("user_b_id"),
        ),
        (
            "/match/score",
            json!({"user_a_id": a, "user_b_id": b, "context": {"dates": "July"}}),
            422,
            "invalid_field",
            Some("context.dates"),
        ),
        (
            "/match/score",
            json!({"user_a_id": a, "user_b_id": b, "context": {"interests": "art"}}),
            422,
            "invalid_field",
            Some("context.interests"),
        ),
        (
            "/match/score",
            json!({"user_a_id": a, "user_b_id": b, "extra": 1}),
            422,
            "invalid_field",
            Some("extra"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": 0}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": 101}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": "ten"}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": 2.5}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": -3}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "limit": 1e12}),
            422,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "filters": {"budget": "huge"}}),
            422,
            "invalid_field",
            Some("filters.budget"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": a, "filters": {"duration": "year"}}),
            422,
            "invalid_field",
            Some("filters.duration"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": 42}),
            422,
            "invalid_field",
            Some("user_id"),
        ),
        (
            "/recommend/destinations",
            json!({"user_id": "00000000-0000-4000-8000-000000000000"}),
            404,
            "unknown_user",
            Some("user_id"),
        ),
        (
            "/notifications/optimize",
            json!({"user_id": a}),
            422,
            "invalid_field",
            Some("notification_type"),
        ),
        (
            "/notifications/optimize",
            json!({"user_id": a, "notification_type": "spam"}),
            422,
            "invalid_field",
            Some("notification_type"),
        ),
        (
            "/notifications/optimize",
            json!({"user_id": a, "notification_type": "message", "urgency": "now"}),
            422,
            "invalid_field",
            Some("urgency"),
        ),
        (
            "/notifications/optimize",
            json!([1, 2]),
            422,
            "invalid_field",
            Some("body"),
        ),
    ];
    for (path, body, status, code, field) in cases {
        let got = error_of(app.post(path, body.clone()).await).await;
        assert_eq!(
            got,
            (status, code.to_string(), field.map(str::to_string)),
            "{path} {body}"
        );
    }
    let malformed = app
        .post_raw(
            "/match/score",
            "application/json",
            b"{\"user_a_id\": ".to_vec(),
        )
        .await;
    assert_eq!(error_of(malformed).await.0, 400);
    let wrong_type = app
        .post_raw("/match/score", "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(error_of(wrong_type).await.0, 415);
    let no_type = app
        .client
        .post(format!("{}/match/score", app.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(no_type).await.0, 415);
    let big = format!(
        "{{\"user_a_id\": \"{a}\", \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let too_large = app
        .post_raw("/match/score", "application/json", big.into_bytes())
        .await;
    assert_eq!(
        error_of(too_large).await,
        (413, "payload_too_large".into(), None)
    );
    let long = app
        .post(
            "/match/score",
            json!({"user_a_id": a, "user_b_id": b, "context": {"destination": "x".repeat(300)}}),
        )
        .await;
    assert_eq!(
        error_of(long).await.2.as_deref(),
        Some("context.destination")
    );
    assert_eq!(error_of(app.get("/no/such/path").await).await.0, 404);
    // Still serving.
    assert_eq!(app.get("/health").await.status(), 200);
    let ok = app
        .post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn the_openapi_document_matches_what_the_server_accepts() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        paths,
        [
            "/admin/experiments/join",
            "/admin/experiments/{model}",
            "/admin/models",
            "/admin/models/reload",
            "/feedback",
            "/health",
            "/health/live",
            "/health/ready",
            "/match/score",
            "/notifications/optimize",
            "/recommend/destinations",
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{name}",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/ready",
            "/v2/models/{name}/versions/{version}",
            "/v2/models/{name}/versions/{version}/infer",
            "/v2/models/{name}/versions/{version}/ready"
        ]
    );
    assert_eq!(app.get("/health").await.status(), 200);
    let schemas = &doc["components"]["schemas"];
    // A logged answer for /feedback to report on.
    let answered = app
        .post(
            "/match/score",
            json!({"user_a_id": app.users(2)[0], "user_b_id": app.users(2)[1]}),
        )
        .await;
    let prediction = answered.headers()["x-prediction-id"]
        .to_str()
        .unwrap()
        .to_string();
    for path in [
        "/match/score",
        "/recommend/destinations",
        "/notifications/optimize",
        "/feedback",
    ] {
        let reference = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"]
            .as_str()
            .unwrap();
        let schema = &schemas[reference.rsplit('/').next().unwrap()];
        let required: Vec<String> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(!required.is_empty());
        // An empty body is refused for the first required field, and every
        // required field is reported when it alone is missing.
        let (status, _, field) = error_of(app.post(path, json!({})).await).await;
        assert_eq!(status, 422);
        assert!(required.contains(&field.unwrap()), "{path}");
        let props = schema["properties"].as_object().unwrap();
        let full: serde_json::Map<String, Value> = props
            .keys()
            .filter(|k| required.contains(k))
            .map(|k| {
                let v = match k.as_str() {
                    "user_a_id" | "user_id" => json!(app.users(2)[0]),
                    "user_b_id" => json!(app.users(2)[1]),
                    "notification_type" => json!("message"),
                    "prediction_id" => json!(prediction),
                    "outcome" => json!("not_matched"),
                    other => panic!("no sample value for required field {other}"),
                };
                (k.clone(), v)
            })
            .collect();
        assert_eq!(
            app.post(path, Value::Object(full.clone())).await.status(),
            200,
            "{path}: required fields alone are enough"
        );
        for k in &required {
            let mut partial = full.clone();
            partial.remove(k);
            assert_eq!(
                error_of(app.post(path, Value::Object(partial)).await)
                    .await
                    .2
                    .as_deref(),
                Some(k.as_str())
            );
        }
        // Unknown fields are refused, as the schema says.
        assert_eq!(schema["additionalProperties"], json!(false), "{path}");
    }
    let budget = &schemas["Budget"]["enum"];
    assert_eq!(budget, &json!(["low", "medium", "high"]));
}

#[tokio::test]
async fn the_served_model_is_the_trained_file_and_gives_the_trainers_outputs() {
    let f = fixture();
    let models = tempfile::tempdir().unwrap();
    let settings = settings_in(
        f.settings.data.sqlite_path.clone(),
        models.path().to_path_buf(),
    );
    let store = SqliteStore::open(&settings.data.sqlite_path, 1).unwrap();
    let data = store.load_dataset().unwrap();
    let td = TrainingData::new(&data);
    let art = train(ModelKind::TravelMatch, &td, 9).unwrap();
    let onnx = export::to_onnx(&art);
    let repo = ModelRepository::local(models.path()).unwrap();
    repo.write(&onnx, export::meta_of(&art, 0)).await.unwrap();
    assert_eq!(
        std::fs::read(models.path().join("travel_match/1/model.onnx")).unwrap(),
        onnx
    );

    let app = spawn_with(settings).await;
    let cat = Catalogue::new(store.load_destinations().unwrap());
    let u = app.users(6);
    for w in u.chunks(2) {
        let r = app
            .post("/match/score", json!({"user_a_id": w[0], "user_b_id": w[1], "context": {"destination": "Kyoto", "interests": ["food"]}}))
            .await;
        assert_eq!(r.headers()["x-model-version"], "travel_match/1");
        let v: Value = r.json().await.unwrap();
        let feats = [
            features_of(&store, &cat, &w[0]).await,
            features_of(&store, &cat, &w[1]).await,
        ];
        let mut ctx = match_context(&cat, Some("Kyoto"), &["food".into()]);
        ctx.rarity = art.params.interest_rarity.clone();
        let x = match_features(&feats[0], &feats[1], &ctx);
        let expected = art.predict(&art.params.match_layout().select(&x));
        assert!(
            (v["score"].as_f64().unwrap() - expected[0][0] as f64).abs() < 1e-3,
            "{v} vs {expected:?}"
        );
        assert!(
            (v["factors"]["personality"].as_f64().unwrap() - expected[1][2] as f64).abs() < 1e-3
        );
    }
}

#[tokio::test]
async fn eval_reports_the_served_model_against_ceiling_and_baselines() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let s = &f.settings;
    run_cli(
        &[
            "eval",
            "travel_match",
            "--report",
            &out.path().display().to_string(),
            "--robustness",
            "--robustness-scale",
            "0.06",
        ],
        s,
    )
    .await;
    let md = std::fs::read_to_string(out.path().join("travel_match.md")).unwrap();
    for needle in [
        "| served model |",
        "| generator's true probability (ceiling) |",
        "| interest overlap alone",
        "| logistic regression on the same features |",
        "## Accuracy by confidence decile",
        "## Robustness across generator settings",
        "seed 11, 10x users",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    // The served model's AUC in the report is a number between the baselines' and 1.
    let line = md
        .lines()
        .find(|l| l.starts_with("| served model |"))
        .unwrap();
    let auc: f64 = line.split('|').nth(2).unwrap().trim().parse().unwrap();
    assert!(auc > 0.6 && auc < 1.0, "{line}");
    for svg in ["roc.svg", "calibration.svg", "confidence.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("<polyline"),
            "{svg}"
        );
    }
}

/// The rows of a Markdown table section: predictor → (within ±1 h, log-likelihood).
fn timing_rows(section: &str) -> std::collections::HashMap<String, (f64, f64)> {
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| predictor") && !l.starts_with("| ---"))
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                c[1].to_string(),
                (c[2].parse().unwrap(), c[3].parse().unwrap()),
            )
        })
        .collect()
}

#[tokio::test]
async fn timing_beats_both_baselines_on_demo_and_on_movielens_activity() {
    let Some(ml) = fixture_dir("ml-1m") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let s = &fixture().settings;
    run_cli(
        &[
            "eval",
            "notification_timing",
            "--report",
            &out.path().display().to_string(),
            "--movielens",
            &ml.display().to_string(),
            "--demo-users",
            "2000",
        ],
        s,
    )
    .await;
    let md = std::fs::read_to_string(out.path().join("notification_timing.md")).unwrap();
    let sections: Vec<&str> = md.split("\n## ").skip(1).collect();
    assert_eq!(sections.len(), 2, "{md}");
    assert!(sections[1].starts_with("MovieLens-1M"), "{md}");
    for section in &sections {
        let rows = timing_rows(section);
        let model = rows["served model"];
        for baseline in [
            "population's busiest hour / pattern",
            "user's raw histogram",
        ] {
            let b = rows[baseline];
            assert!(
                model.0 > b.0 && model.1 > b.1,
                "model {model:?} vs {baseline} {b:?} in\n{section}"
            );
        }
        if let Some(c) = rows.get("true rhythm (ceiling)") {
            assert!(c.1 > model.1, "the true rhythm is the ceiling");
        }
    }
    assert!(sections[0].contains("True open probability"), "{md}");
}

#[tokio::test]
async fn the_recommender_beats_popularity_and_als_clearly_on_movielens_100k() {
    let (Some(ml), Some(venv)) = (fixture_dir("ml-100k"), fixture_dir("venv")) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let s = &fixture().settings;
    run_cli(
        &[
            "eval",
            "recommendation",
            "--report",
            &out.path().display().to_string(),
            "--movielens",
            &ml.display().to_string(),
            "--als",
            &venv.join("bin/python").display().to_string(),
        ],
        s,
    )
    .await;
    let md = std::fs::read_to_string(out.path().join("recommendation-ml-100k.md")).unwrap();
    let ndcg_of = |prefix: &str| -> f64 {
        let line = md
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} row in\n{md}"));
        line.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    let served = ndcg_of("| served model");
    let popular = ndcg_of("| popularity (this run)");
    assert!(
        served > popular * 1.8 && served > 0.25,
        "served NDCG@10 {served} vs popularity {popular}\n{md}"
    );
    let als = ndcg_of("| implicit ALS");
    assert!(
        als > popular && served > als,
        "served {served}, ALS {als}, popularity {popular}\n{md}"
    );
}

#[tokio::test]
async fn movielens_imported_as_app_data_is_trained_and_served_by_the_same_code() {
    let Some(ml) = fixture_dir("ml-100k") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path().join("data/app.db"), dir.path().join("models"));
    run_cli(&["data", "import", &ml.display().to_string()], &settings).await;
    // serve trains what the data allows: recommendation and timing, not match.
    let app = spawn_with(settings).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["models_loaded"], false);
    let data = app.store.load_dataset().unwrap();
    assert_eq!(data.profiles.len(), 943);
    let cat = Catalogue::new(data.destinations.clone());
    let user = data.profiles[0].id;
    let rated: std::collections::HashSet<String> = data
        .interactions
        .iter()
        .filter(|i| i.user_id == user)
        .map(|i| {
            cat.destinations[cat.index_of(&i.destination_id).unwrap()]
                .name
                .clone()
        })
        .collect();
    assert!(!rated.is_empty());
    let r = app
        .post(
            "/recommend/destinations",
            json!({"user_id": user, "limit": 20}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let recs = v["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 20);
    for rec in recs {
        assert!(
            !rated.contains(rec["destination"].as_str().unwrap()),
            "recommended a movie the user rated"
        );
    }
    let other = data.profiles[1].id;
    let m = app
        .post(
            "/match/score",
            json!({"user_a_id": user, "user_b_id": other}),
        )
        .await;
    assert_eq!(error_of(m).await, (503, "model_unavailable".into(), None));
    let n = app
        .post(
            "/notifications/optimize",
            json!({"user_id": user, "notification_type": "reminder"}),
        )
        .await;
    assert_eq!(n.status(), 200);
}

/// The value of the first sample of `name` whose labels contain all of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_have_the_spec_names_and_labels() {
    let app = spawn_app().await;
    let u = app.users(2);
    assert_eq!(
        app.post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]})
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.post("/match/score", json!({"user_a_id": u[0]}))
            .await
            .status(),
        422
    );
    let unknown = json!({"user_id": "00000000-0000-4000-8000-000000000000"});
    assert_eq!(
        app.post("/recommend/destinations", unknown).await.status(),
        404
    );
    let text = app
        .client
        .get(&app.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok = [
        "endpoint=\"/match/score\"",
        "model=\"travel_match\"",
        "version=\"1\"",
        "status=\"200\"",
    ];
    assert!(
        sample(&text, "ml_inference_requests_total", &ok).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ml_inference_errors_total",
            &["kind=\"invalid_field\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &text,
            "ml_inference_errors_total",
            &[
                "endpoint=\"/recommend/destinations\"",
                "kind=\"unknown_user\""
            ]
        )
        .unwrap()
            >= 1.0
    );
    // Sub-millisecond buckets, so percentiles of fast requests mean something.
    let bucket = [
        "endpoint=\"/match/score\"",
        "model=\"travel_match\"",
        "le=\"0.0001\"",
    ];
    assert!(
        sample(&text, "ml_inference_duration_seconds_bucket", &bucket).is_some(),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ml_prediction_batch_size_count",
            &["model=\"travel_match\""]
        )
        .unwrap()
            >= 1.0
    );
    for model in ["travel_match", "recommendation", "notification_timing"] {
        let m = format!("model=\"{model}\"");
        assert!(sample(&text, "ml_model_load_time_seconds", &[&m]).unwrap() > 0.0);
        assert!(sample(&text, "ml_model_memory_bytes", &[&m]).unwrap() > 0.0);
    }
    assert!(sample(&text, "ml_inflight_requests", &[]).is_some());
    assert!(sample(&text, "ml_inference_queue_depth", &["queue=\"pool\""]).is_some());
    assert!(sample(
        &text,
        "ml_inference_queue_depth",
        &["queue=\"travel_match\""]
    )
    .is_some());
    assert!(sample(&text, "ml_process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert_eq!(sample(&text, "ml_build_info", &["version="]), Some(1.0));
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/health", app.base))
        .header("x-request-id", "trip-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trip-42");
    let r = app.get("/health").await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "generated id {id:?} is a UUID"
    );
    // Error responses carry one too.
    let r = app.get("/nope").await;
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_get_their_own_answers() {
    // Answers one at a time come from a service that does not wait for
    // company; the concurrent ones from one whose batches wait up to
    // 300 ms, so they fill up even on a busy test machine.
    let alone = spawn_app().await;
    let mut settings = fixture().settings.clone();
    settings.inference.batch_size = 32;
    settings.inference.batch_max_delay_us = 300_000;
    // Every request must reach the model.
    settings.cache.prediction_cache = false;
    let app = spawn_with(settings).await;
    let u = app.users(41);
    let body = |i: usize| json!({"user_a_id": u[i], "user_b_id": u[i + 1]});
    let mut sequential = vec![];
    for i in 0..40 {
        let r = alone.post("/match/score", body(i)).await;
        assert_eq!(r.status(), 200);
        sequential.push(r.json::<Value>().await.unwrap()["score"].clone());
    }
    let metrics = app
        .client
        .get(&app.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The recorder is the process's: tests beside this one drive at most
    // eight concurrent match streams, so only calls over 8 rows are this
    // test's evidence.
    let before = calls_over(&metrics, "travel_match", 8);
    let app = std::sync::Arc::new(app);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            let b = body(i);
            tokio::spawn(async move {
                let r = app.post("/match/score", b).await;
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()["score"].clone()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            t.await.unwrap(),
            sequential[i],
            "pair {i} got another pair's answer"
        );
    }
    let metrics = app
        .client
        .get(&app.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        calls_over(&metrics, "travel_match", 8) > before,
        "40 concurrent match requests never shared a model call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_recommendations_and_notifications_share_model_calls_and_get_their_own_answers()
{
    // The default BATCH_MAX_ROWS batches both: a recommendation is 4 rows,
    // a medium-urgency reminder's plan at most 37. Answers one at a time
    // come from a service that does not wait for company; the concurrent
    // ones from one whose batches wait up to 300 ms, so they fill up.
    let alone = spawn_app().await;
    let mut settings = fixture().settings.clone();
    settings.inference.batch_size = 32;
    settings.inference.batch_max_delay_us = 300_000;
    settings.cache.prediction_cache = false;
    // All 80 requests in flight at once (the default admits 50).
    settings.http.max_in_flight = 100;
    let app = Arc::new(spawn_with(settings).await);
    let u = app.users(40);
    let rec = |i: usize| json!({"user_id": u[i], "limit": 10});
    let note =
        |i: usize| json!({"user_id": u[i], "notification_type": "reminder", "urgency": "medium"});
    let answer = |v: Value, path: &str| {
        if path == "/recommend/destinations" {
            v["destinations"].clone()
        } else {
            json!([v["send_at"], v["channel"], v["confidence"]])
        }
    };
    const PATHS: [&str; 2] = ["/recommend/destinations", "/notifications/optimize"];
    let mut sequential = vec![];
    for i in 0..u.len() {
        for (path, body) in PATHS.into_iter().zip([rec(i), note(i)]) {
            let r = alone.post(path, body).await;
            assert_eq!(r.status(), 200);
            sequential.push(answer(r.json().await.unwrap(), path));
        }
    }
    let before = app.scrape().await;
    let tasks: Vec<_> = (0..u.len())
        .flat_map(|i| PATHS.into_iter().zip([rec(i), note(i)]))
        .map(|(path, body)| {
            let app = app.clone();
            tokio::spawn(async move {
                let r = app.post(path, body).await;
                assert_eq!(r.status(), 200);
                answer(r.json().await.unwrap(), path)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        let want = &sequential[i];
        if i % 2 == 0 {
            assert_eq!(&got, want, "user {}'s recommendations", i / 2);
        } else {
            // A plan made a moment later may name the current hour's slot
            // by its next occurrence; the slot chosen is the same.
            assert!(same_slot_of(&got, want), "user {}: {got} vs {want}", i / 2);
        }
    }
    let after = app.scrape().await;
    // The recorder is the process's, shared with tests running beside this
    // one, so the evidence is calls no single request of any test makes:
    // more rows than the largest recommendation (34) or plan (168).
    for (model, rows) in [("recommendation", 64), ("notification_timing", 256)] {
        assert!(
            calls_over(&after, model, rows) > calls_over(&before, model, rows),
            "40 concurrent {model} requests never shared a model call"
        );
    }
}

/// Calls of `model` that carried more than `rows` rows (`rows` a bucket of
/// `ml_prediction_batch_size`).
fn calls_over(text: &str, model: &str, rows: usize) -> f64 {
    let m = format!("model=\"{model}\"");
    let le = format!("le=\"{rows}\"");
    let count = sample(text, "ml_prediction_batch_size_count", &[&m]).unwrap_or(0.0);
    let within = sample(text, "ml_prediction_batch_size_bucket", &[&m, &le]).unwrap_or(0.0);
    count - within
}

/// A fetched file a test needs: the path in `env_var`, else `default`
/// (relative to the repository root). Missing: None, with a loud SKIPPED
/// line naming the `setup` script, except under CI=true, where the test fails.
fn fetched(env_var: &str, default: &str, setup: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(default)
        });
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing under CI (run {setup})",
        p.display()
    );
    eprintln!("SKIPPED: {} is missing (run {setup})", p.display());
    None
}

/// The ONNX Runtime library that scripts/fetch-onnxruntime.sh fetches.
fn ort_dylib() -> Option<PathBuf> {
    fetched(
        "ORT_DYLIB_PATH",
        ".fixtures/onnxruntime/libonnxruntime.so.1.31.1",
        "scripts/fetch-onnxruntime.sh",
    )
}

/// The three endpoints' answers for a few users, without the latency field.
async fn answers(app: &TestApp) -> Vec<Value> {
    let u = app.users(6);
    let ok = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let mut out = vec![];
    for i in 0..3 {
        let mut m = ok(app
            .post(
                "/match/score",
                json!({"user_a_id": u[2 * i], "user_b_id": u[2 * i + 1]}),
            )
            .await)
        .await;
        m.as_object_mut().unwrap().remove("latency_ms");
        out.push(m);
        let r = ok(app
            .post(
                "/recommend/destinations",
                json!({"user_id": u[i], "limit": 10}),
            )
            .await)
        .await;
        out.push(r["destinations"].clone());
        let n = ok(app
            .post(
                "/notifications/optimize",
                json!({"user_id": u[i], "notification_type": "match_found", "urgency": "medium"}),
            )
            .await)
        .await;
        out.push(json!([n["send_at"], n["channel"], n["confidence"]]));
    }
    out
}

/// Largest difference between two JSON documents' numbers; panics when their
/// shape or any string differs.
fn json_max_diff(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs(),
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{a} vs {b}");
            x.iter()
                .zip(y)
                .map(|(x, y)| json_max_diff(x, y))
                .fold(0.0, f64::max)
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.iter()
                .map(|(k, v)| json_max_diff(v, &y[k]))
                .fold(0.0, f64::max)
        }
        _ => {
            assert_eq!(a, b);
            0.0
        }
    }
}

#[tokio::test]
async fn the_onnx_runtime_backend_serves_the_same_answers_as_tract() {
    let Some(dylib) = ort_dylib() else { return };
    let tract = spawn_app().await;
    let mut settings = fixture().settings.clone();
    settings.backend.inference_backend = ml_server::settings::BackendKind::Onnxruntime;
    settings.backend.ort_dylib_path = Some(dylib);
    let ort = spawn_with(settings).await;
    let health: Value = ort.get("/health").await.json().await.unwrap();
    assert_eq!(health["gpu_available"], false);
    assert_eq!(health["models_loaded"], true);
    let (a, b) = (answers(&tract).await, answers(&ort).await);
    // Responses are rounded to 4 decimals; the backends agree within 1e-4
    // before rounding, so at most one unit of the last place differs.
    let d = json_max_diff(&Value::Array(a), &Value::Array(b));
    assert!(d <= 1.5e-4, "tract and ONNX Runtime answers differ by {d}");
}

#[tokio::test]
async fn gpu_asked_for_without_a_gpu_falls_back_to_the_cpu() {
    let Some(dylib) = ort_dylib() else { return };
    let mut settings = fixture().settings.clone();
    settings.backend.enable_gpu = true;
    settings.backend.ort_dylib_path = Some(dylib);
    let app = spawn_with(settings).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    // This CPU build of ONNX Runtime has no CUDA provider: the service serves
    // on the CPU and says so.
    assert_eq!(health["gpu_available"], false);
    let u = app.users(2);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn onnx_runtime_without_its_library_refuses_to_start_with_a_clear_error() {
    let mut settings = fixture().settings.clone();
    settings.backend.inference_backend = ml_server::settings::BackendKind::Onnxruntime;
    settings.backend.ort_dylib_path = None;
    let err = app::prepare(&settings)
        .err()
        .expect("started without a library");
    assert!(format!("{err:#}").contains("ORT_DYLIB_PATH"), "{err:#}");
    settings.backend.ort_dylib_path = Some("/nonexistent/libonnxruntime.so".into());
    let err = app::prepare(&settings)
        .err()
        .expect("started without a library");
    assert!(
        format!("{err:#}").contains("fetch-onnxruntime.sh"),
        "{err:#}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Whether two notification answers (`[send_at, channel, confidence]`)
/// chose the same slot: the same send time, or the same confidence (the
/// slot's probability), since a slot at the current hour is "now" for one
/// call and its next occurrence for a call a moment later.
fn same_slot_of(a: &Value, b: &Value) -> bool {
    a[0] == b[0] || (a[2].as_f64().unwrap() - b[2].as_f64().unwrap()).abs() < 1e-3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantize_writes_int8_versions_that_are_measured_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = fixture().settings.clone();
    copy_dir(&settings.models.model_path, dir.path());
    settings.models.model_path = dir.path().to_path_buf();
    let float = spawn_with(settings.clone()).await;
    let repo = ModelRepository::local(dir.path()).unwrap();
    for kind in ModelKind::ALL {
        run_cli(&["models", "quantize", kind.as_str()], &settings).await;
        assert_eq!(repo.versions(kind).await.unwrap(), vec![1, 2], "{kind}");
        let (bytes, meta) = repo.read(kind, 2).await.unwrap();
        let q = meta
            .quantization
            .as_ref()
            .expect("model.json records the quantization");
        assert_eq!(q.source_version, 1);
        assert_eq!(q.int8_bytes, bytes.len());
        assert_eq!(q.float_bytes, repo.read(kind, 1).await.unwrap().0.len());
        let expected = repo
            .read(kind, 1)
            .await
            .unwrap()
            .1
            .evaluation
            .unwrap()
            .metrics;
        // The float metric measured through the served file is the trainer's.
        if kind == ModelKind::TravelMatch {
            assert_eq!(q.metric, "auc");
        }
        if let Some(m) = expected.get(&q.metric) {
            assert!(
                (m - q.float_metric).abs() < 1e-3,
                "{kind}: {} vs trainer's {m}",
                q.float_metric
            );
        }
        assert!(
            (q.int8_metric - q.float_metric).abs() < 0.05 * q.float_metric.abs().max(0.01),
            "{kind}: INT8 {} vs float {}",
            q.int8_metric,
            q.float_metric
        );
        for us in [
            q.float_us_batch1,
            q.int8_us_batch1,
            q.float_us_batch32,
            q.int8_us_batch32,
        ] {
            assert!(us > 0.0 && us.is_finite());
        }
    }
    // A second quantize of an INT8 version is refused.
    let err = try_cli(&["models", "quantize", "travel_match"], &settings)
        .await
        .expect_err("quantized an INT8 model again");
    assert!(format!("{err:#}").contains("already an INT8"), "{err:#}");
    // A new start serves the INT8 versions with answers close to the float ones.
    let int8 = spawn_with(settings).await;
    let r = int8
        .post(
            "/match/score",
            json!({"user_a_id": int8.users(2)[0], "user_b_id": int8.users(2)[1]}),
        )
        .await;
    assert_eq!(r.headers()["x-model-version"], "travel_match/2");
    // Both services answer now, moments apart: a notification's answer
    // depends on the time (the next quarter-hour), and quantizing takes
    // seconds, long enough to cross one.
    let before = answers(&float).await;
    let after = answers(&int8).await;
    let mut same_slot = 0;
    for (a, b) in before.iter().zip(&after) {
        // Recommendations may reorder near-ties; compare the match and
        // notification answers' numbers.
        if a.is_array() && a.as_array().unwrap().len() == 3 {
            // Slot scores can be near-ties: INT8 may pick a neighbouring
            // hour, and then the confidence is another slot's. Where both
            // pick the same slot, its probability barely moves.
            if same_slot_of(a, b) {
                same_slot += 1;
                let d = (a[2].as_f64().unwrap() - b[2].as_f64().unwrap()).abs();
                assert!(d < 0.05, "notification confidence moved by {d}: {a} vs {b}");
            } else {
                eprintln!("INT8 chose another slot: {a} vs {b}");
            }
        } else if a.is_object() {
            let d = (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs();
            assert!(d < 0.05, "match score moved by {d}");
        }
    }
    // Over more users: most keep their slot. (Three alone flaked: with near-
    // ties across 168 hours, two of three moved once in a few dozen runs.)
    let (mut same, mut total) = (same_slot, 3);
    for u in float.users(15).iter().skip(3) {
        let body = json!({"user_id": u, "notification_type": "match_found", "urgency": "medium"});
        let a: Value = float
            .post("/notifications/optimize", body.clone())
            .await
            .json()
            .await
            .unwrap();
        let b: Value = int8
            .post("/notifications/optimize", body)
            .await
            .json()
            .await
            .unwrap();
        total += 1;
        if same_slot_of(
            &json!([a["send_at"], a["channel"], a["confidence"]]),
            &json!([b["send_at"], b["channel"], b["confidence"]]),
        ) {
            same += 1;
        }
    }
    assert!(
        same * 3 >= total * 2,
        "INT8 changed the send time of {} of {total} notifications",
        total - same
    );
}

#[tokio::test]
async fn repeated_requests_are_answered_from_the_in_process_cache() {
    let app = spawn_app().await;
    let u = app.users(2);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    assert_eq!(r.headers()["x-cache"], "miss");
    let first: Value = r.json().await.unwrap();
    // Another spelling of the same request: the same key.
    let again = format!(
        "{{\"user_b_id\": \"{}\", \"context\": null, \"user_a_id\": \"{}\"}}",
        u[1].to_uppercase(),
        u[0]
    );
    let mut hit = None;
    for _ in 0..50 {
        // The answer is stored in the background; give it a moment.
        let r = app
            .post_raw(
                "/match/score",
                "application/json",
                again.clone().into_bytes(),
            )
            .await;
        assert_eq!(r.status(), 200);
        if r.headers()["x-cache"] == "hit" {
            hit = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let hit = hit.expect("the repeat was never a cache hit");
    assert_eq!(hit["score"], first["score"]);
    assert_eq!(hit["factors"], first["factors"]);
    // A different request is not.
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[1], "user_b_id": u[0]}),
        )
        .await;
    assert_eq!(r.headers()["x-cache"], "miss");
    // With the prediction cache off, nothing is a hit.
    let mut s = fixture().settings.clone();
    s.cache.prediction_cache = false;
    let off = spawn_with(s).await;
    for _ in 0..3 {
        let r = off
            .post(
                "/match/score",
                json!({"user_a_id": u[0], "user_b_id": u[1]}),
            )
            .await;
        assert_eq!(r.headers()["x-cache"], "miss");
    }
}

/// The TypeScript client's own tests (`clients/typescript`, `node --test`),
/// run against this build's binary. Without Node.js and npm the test is skipped
/// with a message, except under CI=true, where it fails.
#[test]
fn the_typescript_client_passes_its_tests_against_the_real_service() {
    use std::process::Command;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    let have_npm = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_npm {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "npm is missing under CI"
        );
        eprintln!("SKIPPED: Node.js/npm not installed: the TypeScript client is not tested");
        return;
    }
    if !dir.join("node_modules/typescript").is_dir() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm ci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("ML_SERVICE_BIN", env!("CARGO_BIN_EXE_ml-service"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn with_api_keys_the_prediction_endpoints_need_one_of_them() {
    let mut s = fixture().settings.clone();
    s.http.api_keys = vec![
        "old-key-1".to_string().into(),
        "new-key-2".to_string().into(),
    ];
    let app = spawn_with(s).await;
    let u = app.users(2);
    let body = json!({"user_a_id": u[0], "user_b_id": u[1]});
    let call = |key: Option<&'static str>| {
        let mut r = app
            .client
            .post(format!("{}/match/score", app.base))
            .json(&body);
        if let Some(k) = key {
            r = r.header("authorization", k);
        }
        r.send()
    };
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer old-key-"),
        Some("old-key-1"),
        Some("Basic b2xkLWtleS0x"),
    ] {
        let r = call(bad).await.unwrap();
        assert_eq!(r.status(), 401, "{bad:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let text = r.text().await.unwrap();
        assert!(text.contains("\"unauthorized\""), "{text}");
        assert!(
            !text.contains("key-1") && !text.contains("key-2"),
            "a key leaked: {text}"
        );
    }
    // Both keys work (rotation), and health, readiness, metrics and the API
    // description stay open.
    for good in ["Bearer old-key-1", "Bearer new-key-2"] {
        assert_eq!(call(Some(good)).await.unwrap().status(), 200, "{good}");
    }
    for path in ["/health", "/health/live", "/health/ready", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let m = app.client.get(&app.metrics).send().await.unwrap();
    assert_eq!(m.status(), 200);
}

#[tokio::test]
async fn liveness_and_readiness_tell_apart_a_running_process_and_a_serving_one() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live").await.status(), 200);
    let r = app.get("/health/ready").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);
    // A repository whose match model is corrupt: alive, not ready.
    let dir = tempfile::tempdir().unwrap();
    let mut s = fixture().settings.clone();
    copy_dir(&s.models.model_path, dir.path());
    s.models.model_path = dir.path().to_path_buf();
    for v in std::fs::read_dir(dir.path().join("travel_match")).unwrap() {
        std::fs::write(v.unwrap().path().join("model.onnx"), b"not a model").unwrap();
    }
    let broken = spawn_with(s).await;
    assert_eq!(broken.get("/health/live").await.status(), 200);
    let r = broken.get("/health/ready").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["models_loaded"], false);
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_are_shed_and_a_deadline_ends_slow_ones() {
    let mut s = fixture().settings.clone();
    s.http.max_in_flight = 2;
    s.http.queue_timeout_ms = 50;
    // Each match call waits 400 ms for company in its batch: slow on purpose.
    s.inference.batch_max_delay_us = 400_000;
    s.cache.prediction_cache = false;
    let app = spawn_with(s.clone()).await;
    let u = app.users(2);
    let body = json!({"user_a_id": u[0], "user_b_id": u[1]});
    let (answers, health) = tokio::join!(
        futures::future::join_all((0..6).map(|_| app.post("/match/score", body.clone()))),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            app.get("/health").await.status()
        }
    );
    assert_eq!(health, 200, "health is not subject to admission");
    let mut ok = 0;
    for r in answers {
        if r.status() == 200 {
            ok += 1;
            continue;
        }
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(error_of(r).await, (503, "overloaded".into(), None));
    }
    assert_eq!(ok, 2, "exactly MAX_IN_FLIGHT requests were admitted");

    // A deadline shorter than the work: the request is stopped and says so.
    s.http.request_timeout_ms = 100;
    let app = spawn_with(s).await;
    let t0 = std::time::Instant::now();
    let r = app.post("/match/score", body).await;
    assert!(t0.elapsed() < std::time::Duration::from_millis(390));
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_of(r).await, (503, "deadline_exceeded".into(), None));
}
