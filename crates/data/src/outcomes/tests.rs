//! The join, feedback, arm sums and leases on both stores, over one small
//! world whose every outcome is set by hand.

use super::*;
use crate::predlog::PredictionStore;
use crate::PredictionRecord;
use chrono::TimeZone;
use ml_core::types::{
    Channel, Dataset, Interaction, InteractionKind, MatchOutcome, NotificationRecord,
    NotificationType,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap()
}

fn windows() -> JoinWindows {
    JoinWindows {
        matched: Duration::days(14),
        recommended: Duration::days(30),
        send_tolerance: Duration::minutes(60),
        open: Duration::hours(24),
    }
}

/// Three users (a, b, c) and the catalogue from the demo generator, with
/// every interaction, match and notification replaced by the scenario's.
struct World {
    data: Dataset,
    a: Uuid,
    b: Uuid,
    c: Uuid,
    /// Three destinations' (id, name).
    d: [(Uuid, String); 3],
}

fn world() -> World {
    let mut data = ml_train::generator::generate(&ml_train::generator::GeneratorConfig {
        users: 3,
        ..Default::default()
    });
    let (a, b, c) = (
        data.profiles[0].id,
        data.profiles[1].id,
        data.profiles[2].id,
    );
    let d = [0, 1, 2].map(|i| (data.destinations[i].id, data.destinations[i].name.clone()));
    let t = t0();
    let interaction = |kind, dest: usize, at| Interaction {
        user_id: a,
        destination_id: d[dest].0,
        kind,
        rating: None,
        occurred_at: at,
    };
    data.interactions = vec![
        // Counted: a booking and a save of the second place (one row, booked).
        interaction(InteractionKind::Booked, 1, t + Duration::days(1)),
        interaction(InteractionKind::Saved, 1, t + Duration::days(2)),
        // Not counted: a view, a save before the answer, one after the window.
        interaction(InteractionKind::Viewed, 0, t + Duration::hours(1)),
        interaction(InteractionKind::Saved, 2, t - Duration::days(1)),
        interaction(InteractionKind::Visited, 0, t + Duration::days(31)),
    ];
    let decided = |x, y, matched, at| MatchOutcome {
        user_a: x,
        user_b: y,
        destination_id: None,
        trip_start: None,
        trip_interests: vec![],
        matched,
        decided_at: at,
        true_probability: None,
    };
    data.matches = vec![
        // The pair (a, b) in the other order, two days later: joined.
        decided(b, a, true, t + Duration::days(2)),
        // (c, a) decided after the 14-day window: not joined.
        decided(a, c, false, t + Duration::days(20)),
    ];
    let sent = |user, channel, at, opened| NotificationRecord {
        user_id: user,
        notification_type: NotificationType::Reminder,
        channel,
        sent_at: at,
        opened_at: opened,
    };
    let send_at = t + Duration::hours(1);
    data.notifications = vec![
        // b: sent 5 minutes after the chosen time, opened 10 minutes later.
        sent(
            b,
            Channel::Push,
            send_at + Duration::minutes(5),
            Some(send_at + Duration::minutes(15)),
        ),
        // b again on another channel: not the one chosen.
        sent(b, Channel::Email, send_at, Some(send_at)),
        // c: sent on time, never opened.
        sent(c, Channel::Email, send_at, None),
    ];
    data.activity.clear();
    data.consents.clear();
    World { data, a, b, c, d }
}

fn prediction(
    n: u8,
    endpoint: &'static str,
    version: u64,
    user: Uuid,
    other: Option<Uuid>,
    score: f32,
    decision: String,
) -> PredictionRecord {
    let at = t0() + Duration::milliseconds(i64::from(n));
    PredictionRecord {
        id: uuid::Builder::from_unix_timestamp_millis(at.timestamp_millis() as u64, &[n; 10])
            .into_uuid(),
        at,
        endpoint: endpoint.into(),
        model: match endpoint {
            "match" => "travel_match",
            "recommend" => "destination_recommender",
            _ => "engagement_timing",
        }
        .into(),
        version,
        route: "3=50,4=50".into(),
        user_id: user,
        other_user_id: other,
        request_digest: "00".into(),
        score: Some(score),
        decision,
        cached: false,
        fallback: n == 2,
        latency_us: Some(1_000 * u32::from(n)),
    }
}

/// The scenario's predictions: two matches, a recommendation, two
/// notification plans.
fn predictions(w: &World) -> Vec<PredictionRecord> {
    let send_at = (t0() + Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let items = format!(
        r#"{{"items":[["{}",0.9],["{}",0.8],["{}",0.7]]}}"#,
        w.d[0].1, w.d[1].1, w.d[2].1
    );
    vec![
        prediction(
            1,
            "match",
            3,
            w.a,
            Some(w.b),
            0.8,
            r#"{"score":0.8}"#.into(),
        ),
        prediction(
            2,
            "match",
            4,
            w.c,
            Some(w.a),
            0.3,
            r#"{"score":0.3}"#.into(),
        ),
        prediction(3, "recommend", 3, w.a, None, 0.9, items),
        prediction(
            4,
            "notify",
            3,
            w.b,
            None,
            0.6,
            format!(r#"{{"send_at":"{send_at}","channel":"push","propensity":1.0}}"#),
        ),
        prediction(
            5,
            "notify",
            4,
            w.c,
            None,
            0.6,
            format!(r#"{{"send_at":"{send_at}","channel":"email","propensity":1.0}}"#),
        ),
    ]
}

async fn scenario<S: ExperimentStore + PredictionStore>(store: &S, w: &World) {
    let p = predictions(w);
    store.write(p.clone()).await.unwrap();
    let (from, to) = (t0() - Duration::hours(1), t0() + Duration::hours(1));
    let soon = t0() + Duration::hours(3);

    let joined = store.join(from, to, soon, &windows()).await.unwrap();
    assert_eq!(
        joined,
        Joined {
            matches: 1,
            recommendations: 1,
            notifications: 1
        }
    );
    let one = |v: Vec<Outcome>| {
        assert_eq!(v.len(), 1, "{v:?}");
        v.into_iter().next().unwrap()
    };
    let m = one(store.outcomes(p[0].id).await.unwrap());
    assert_eq!(
        (m.kind, m.value, m.source.as_str(), m.delay_ms),
        (
            OutcomeKind::Matched,
            1.0,
            "joined",
            Some(2 * 86_400_000 - 1)
        )
    );
    assert!(store.outcomes(p[1].id).await.unwrap().is_empty());
    let r = one(store.outcomes(p[2].id).await.unwrap());
    assert_eq!(
        (r.kind, r.item.as_str(), r.position),
        (OutcomeKind::Booked, w.d[1].1.as_str(), Some(2))
    );
    let n = one(store.outcomes(p[3].id).await.unwrap());
    assert_eq!(
        (n.kind, n.delay_ms),
        (OutcomeKind::Opened, Some(10 * 60_000))
    );
    // c's email is not opened, but its open window is still running.
    assert!(store.outcomes(p[4].id).await.unwrap().is_empty());

    // Again: nothing changes. Two days on: c's email counts as not opened.
    assert_eq!(
        store.join(from, to, soon, &windows()).await.unwrap(),
        Joined::default()
    );
    let later = store
        .join(from, to, t0() + Duration::days(2), &windows())
        .await
        .unwrap();
    assert_eq!(later.total(), 1);
    let n = one(store.outcomes(p[4].id).await.unwrap());
    assert_eq!((n.kind, n.value), (OutcomeKind::NotOpened, 0.0));

    // Feedback: new, then a repeat; it wins over a joined row, which a
    // later join leaves alone.
    let feedback = |id, kind: OutcomeKind| Outcome {
        prediction_id: id,
        item: String::new(),
        source: "feedback".into(),
        kind,
        value: kind.value(),
        position: None,
        delay_ms: Some(5),
        at: t0() + Duration::days(1),
    };
    assert!(store
        .feedback(feedback(p[1].id, OutcomeKind::Matched))
        .await
        .unwrap());
    assert!(!store
        .feedback(feedback(p[1].id, OutcomeKind::Matched))
        .await
        .unwrap());
    assert!(store
        .feedback(feedback(p[0].id, OutcomeKind::NotMatched))
        .await
        .unwrap());
    assert_eq!(
        store.join(from, to, soon, &windows()).await.unwrap(),
        Joined::default()
    );
    let m = one(store.outcomes(p[0].id).await.unwrap());
    assert_eq!(
        (m.kind, m.source.as_str()),
        (OutcomeKind::NotMatched, "feedback")
    );

    // The arms: a (version 3) scored 0.8 and did not match; c (version 4)
    // scored 0.3 and matched.
    let q = |endpoint: &str, model: &str| ArmQuery {
        model: model.into(),
        endpoint: endpoint.into(),
        route: "3=50,4=50".into(),
        since: t0() - Duration::days(1),
    };
    let arms = store.arms(&q("match", "travel_match")).await.unwrap();
    assert_eq!(arms.len(), 2, "{arms:?}");
    let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
    let (v3, v4) = (&arms[0], &arms[1]);
    assert_eq!(
        (v3.version, v3.users, v3.predictions, v3.outcomes, v3.n),
        (3, 1, 1, 1, 1)
    );
    assert!(close(v3.sum, -(0.2f64.ln())), "{v3:?}");
    assert!(close(v3.sum_sq, 0.2f64.ln().powi(2)), "{v3:?}");
    assert_eq!((v3.secondary_n, v3.secondary_sum), (1, 0.0));
    assert!(close(v4.sum, -(0.3f64.ln())), "{v4:?}");
    assert_eq!((v4.fallbacks, v4.secondary_sum), (1, 1.0));
    assert_eq!(v4.latency_p99_us, Some(2_000.0));

    let rec = store
        .arms(&q("recommend", "destination_recommender"))
        .await
        .unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].n, rec[0].sum, rec[0].secondary_sum),
        (1, 1.0, 1.0),
        "{rec:?}"
    );
    let notify = store.arms(&q("notify", "engagement_timing")).await.unwrap();
    assert_eq!(notify.len(), 2);
    assert_eq!((notify[0].sum, notify[1].sum), (1.0, 0.0), "{notify:?}");
    assert_eq!(notify[0].median_delay_ms, Some(600_000.0));
    assert_eq!(notify[1].median_delay_ms, None);
    // Another split: nothing.
    let mut other = q("match", "travel_match");
    other.route = "3".into();
    assert!(store.arms(&other).await.unwrap().is_empty());

    // Leases: one holder at a time, renewable, taken over once expired.
    let ttl = Duration::seconds(30);
    assert!(store.lease("auto/travel_match", "r1", ttl).await.unwrap());
    assert!(!store.lease("auto/travel_match", "r2", ttl).await.unwrap());
    assert!(store.lease("auto/travel_match", "r1", ttl).await.unwrap());
    assert!(store.lease("auto/other", "r2", ttl).await.unwrap());
    assert!(store
        .lease("auto/travel_match", "r1", Duration::seconds(-1))
        .await
        .unwrap());
    assert!(store.lease("auto/travel_match", "r2", ttl).await.unwrap());
}

#[tokio::test]
async fn sqlite_joins_outcomes_records_feedback_and_sums_arms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let w = world();
    crate::SqliteStore::open(&path, 1)
        .unwrap()
        .write_dataset(&w.data, true)
        .unwrap();
    let store = SqlitePredictions::open(&path).unwrap();
    scenario(&store, &w).await;
}

#[tokio::test]
async fn postgres_joins_outcomes_records_feedback_and_sums_arms() {
    let Some(mut db) = crate::testing::TestDb::new().await else {
        return;
    };
    let admin = db.store(false);
    admin.migrate().await.unwrap();
    let w = world();
    admin.write_dataset(&w.data, true).await.unwrap();
    // As the service's writer role: it may read the app tables the join
    // needs, through their row-level security.
    let writer = db.login_in("ml_service_writer").await;
    let store = db.store_as(&writer);
    scenario(&PgPredictions::new(store), &w).await;
}
