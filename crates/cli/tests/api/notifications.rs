//! What the notification plan respects of the app's data, through the
//! product path: `channel_consent` and `notification_log` rows loaded with
//! `data import` into a served store, then `/notifications/optimize` over
//! HTTP (and gRPC for the refusal).

use super::*;
use ml_core::types::Channel;
use ml_server::grpc::pb::mlservice as ml;
use ml_server::grpc::pb::mlservice::ml_service_client::MlServiceClient;
use tonic::Request;

#[tokio::test]
async fn plans_use_only_agreed_channels_and_keep_to_the_frequency_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings_in(dir.path().join("app.db"), dir.path().join("models"));
    // The fixture's models (trained on the same demo) serve; the store is
    // this test's own.
    copy_dir(&fixture().settings.models.model_path, &s.models.model_path);
    let app = spawn_with(s.clone()).await;
    let data = app.store.load_dataset().unwrap();
    let answered: std::collections::HashSet<_> = data.consents.iter().map(|c| c.user_id).collect();
    let unknown = data
        .profiles
        .iter()
        .find(|p| !answered.contains(&p.id))
        .expect("the demo has users who never answered")
        .id;
    let others: Vec<_> = data
        .profiles
        .iter()
        .map(|p| p.id)
        .filter(|id| *id != unknown)
        .take(3)
        .collect();
    let (refused, email_only, busy) = (others[0], others[1], others[2]);

    // What the app recorded: one user refused every channel, one agreed to
    // email only, one was sent three notifications in the last half hour.
    let now = Utc::now();
    let folder = dir.path().join("import");
    std::fs::create_dir_all(&folder).unwrap();
    let mut consent = String::from("user_id,channel,granted,updated_at\n");
    for (u, [push, email, sms]) in [
        (refused, [false, false, false]),
        (email_only, [false, true, false]),
        (busy, [true, false, false]),
    ] {
        for (c, g) in [("push", push), ("email", email), ("sms", sms)] {
            consent.push_str(&format!("{u},{c},{g},{}\n", now.to_rfc3339()));
        }
    }
    std::fs::write(folder.join("channel_consent.csv"), consent).unwrap();
    let sent: Vec<DateTime<Utc>> = [30, 20, 10]
        .map(|m| now - chrono::Duration::minutes(m))
        .to_vec();
    let mut log = String::from("user_id,notification_type,channel,sent_at,opened_at\n");
    for t in &sent {
        log.push_str(&format!("{busy},message,push,{},\n", t.to_rfc3339()));
    }
    std::fs::write(folder.join("notification_log.csv"), log).unwrap();
    run_cli(&["data", "import", &folder.display().to_string()], &s).await;

    let plan = |user: uuid::Uuid, kind: &str, urgency: &str| {
        app.post(
            "/notifications/optimize",
            json!({"user_id": user, "notification_type": kind, "urgency": urgency}),
        )
    };
    // Nobody is notified on a channel they did not agree to.
    let (status, code, field) = error_of(plan(refused, "match_found", "high").await).await;
    assert_eq!(
        (status, code.as_str(), field.as_deref()),
        (409, "no_consented_channel", Some("user_id"))
    );
    let mut grpc = MlServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap();
    let e = grpc
        .optimize_notification(Request::new(ml::NotifyRequest {
            user_id: refused.to_string(),
            notification_type: "reminder".into(),
            urgency: Some("low".into()),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    for urgency in ["low", "medium", "high"] {
        let v: Value = plan(email_only, "message", urgency)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["channel"], "email", "{v}");
    }
    // No answer on record: the default, push only.
    let v: Value = plan(unknown, "message", "high").await.json().await.unwrap();
    assert_eq!(v["channel"], "push", "{v}");

    // Three in the last half hour reach the cap of 3: a message (a
    // 12-hour window at medium urgency) moves past the day that holds
    // them, and the reason says so; an urgent one goes out now.
    let before = Utc::now();
    let v: Value = plan(busy, "message", "medium").await.json().await.unwrap();
    let send_at = DateTime::parse_from_rfc3339(v["send_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    // Under the cap there, and the hour before would have gone over it
    // (or was a quiet hour): the first hour the cap allows.
    let near = |at: DateTime<Utc>| {
        sent.iter()
            .filter(|t| (**t - at).abs() < chrono::Duration::hours(24))
            .count()
    };
    let tz = parse_tz(
        &data
            .profiles
            .iter()
            .find(|p| p.id == busy)
            .unwrap()
            .timezone,
    );
    let hour_before = send_at - chrono::Duration::hours(1);
    let quiet = |t: DateTime<Utc>| !(8..22).contains(&t.with_timezone(&tz).hour());
    assert!(near(send_at) < 3, "{v}");
    assert!(near(hour_before) == 3 || quiet(hour_before), "{v}");
    assert!(send_at > before + chrono::Duration::hours(12), "{v}");
    assert!(send_at <= before + chrono::Duration::hours(24 + 11), "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("would go over the cap of 3 notifications in 24 hours, so this is the first hour the cap allows"),
        "{reason}"
    );
    let v: Value = plan(busy, "message", "high").await.json().await.unwrap();
    let urgent = DateTime::parse_from_rfc3339(v["send_at"].as_str().unwrap()).unwrap();
    assert!(urgent <= before + chrono::Duration::hours(2), "{v}");
    assert_eq!(Channel::Push.as_str(), v["channel"]);
}
