//! The gRPC domain service against the HTTP API it mirrors: the same
//! answers, the same validation and error meanings (as gRPC codes), the API
//! key, the health service and reflection — over real connections with
//! tonic's client.

use super::*;
use ml_server::grpc::pb::mlservice as ml;
use ml_server::grpc::pb::mlservice::ml_service_client::MlServiceClient;
use tonic::transport::Channel;
use tonic::Code;

async fn client(app: &TestApp) -> MlServiceClient<Channel> {
    MlServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap()
}

fn meta<'a>(s: &'a tonic::Status, key: &str) -> Option<&'a str> {
    s.metadata().get(key).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_domain_rpcs_answer_as_the_http_api_does() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let u = app.users(6);
    for w in u.chunks(2) {
        let ctx = json!({"destination": "Kyoto", "interests": ["food", "art"]});
        let r = app
            .post(
                "/match/score",
                json!({"user_a_id": w[0], "user_b_id": w[1], "context": ctx}),
            )
            .await;
        let version = r.headers()["x-model-version"].to_str().unwrap().to_string();
        let http: Value = r.json().await.unwrap();
        let g = c
            .score_match(ml::MatchRequest {
                user_a_id: w[0].clone(),
                user_b_id: w[1].clone(),
                context: Some(ml::MatchContext {
                    destination: Some("Kyoto".into()),
                    dates: None,
                    interests: vec!["food".into(), "art".into()],
                }),
            })
            .await
            .unwrap();
        assert_eq!(g.metadata().get("x-model-version").unwrap(), &version);
        let g = g.into_inner();
        assert_eq!(
            g.score as f64,
            http["score"].as_f64().unwrap() as f32 as f64
        );
        assert_eq!(
            g.confidence as f64,
            http["confidence"].as_f64().unwrap() as f32 as f64
        );
        let f = g.factors.unwrap();
        assert_eq!(
            f.personality as f64,
            http["factors"]["personality"].as_f64().unwrap() as f32 as f64
        );
        assert!(!g.fallback);

        let http: Value = app
            .post(
                "/recommend/destinations",
                json!({"user_id": w[0], "limit": 5, "filters": {"budget": "medium"}}),
            )
            .await
            .json()
            .await
            .unwrap();
        let g = c
            .recommend_destinations(ml::RecommendRequest {
                user_id: w[0].clone(),
                limit: Some(5),
                filters: Some(ml::RecommendFilters {
                    budget: Some("medium".into()),
                    duration: None,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = g
            .recommendations
            .iter()
            .map(|r| r.destination.as_str())
            .collect();
        let http_names: Vec<&str> = http["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["destination"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 5);
        assert_eq!(names, http_names);

        let http: Value = app
            .post(
                "/notifications/optimize",
                json!({"user_id": w[1], "notification_type": "reminder", "urgency": "low"}),
            )
            .await
            .json()
            .await
            .unwrap();
        let g = c
            .optimize_notification(ml::NotifyRequest {
                user_id: w[1].clone(),
                notification_type: "reminder".into(),
                urgency: Some("low".into()),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.channel, http["channel"].as_str().unwrap());
        assert_eq!(
            g.confidence as f64,
            http["confidence"].as_f64().unwrap() as f32 as f64
        );
        assert!(chrono::DateTime::parse_from_rfc3339(&g.send_at).is_ok());
    }
    // The calls are counted under their method, beside the HTTP endpoints.
    let text = app.scrape().await;
    assert!(
        text.contains(r#"endpoint="/mlservice.v1.MlService/ScoreMatch""#),
        "{text}"
    );
}

#[tokio::test]
async fn bad_requests_get_the_codes_beside_the_http_statuses() {
    let app = spawn_app().await;
    let mut c = client(&app).await;
    let u = app.users(2);
    let cases: Vec<(ml::MatchRequest, Code, &str, Option<&str>, u16)> = vec![
        (
            ml::MatchRequest {
                user_a_id: "not-a-uuid".into(),
                user_b_id: u[1].clone(),
                context: None,
            },
            Code::InvalidArgument,
            "invalid_field",
            Some("user_a_id"),
            422,
        ),
        (
            ml::MatchRequest {
                user_a_id: u[0].clone(),
                user_b_id: u[0].clone(),
                context: None,
            },
            Code::InvalidArgument,
            "invalid_field",
            Some("user_b_id"),
            422,
        ),
        (
            ml::MatchRequest {
                user_a_id: u[0].clone(),
                user_b_id: u[1].clone(),
                context: Some(ml::MatchContext {
                    dates: Some("2026-13-45".into()),
                    ..Default::default()
                }),
            },
            Code::InvalidArgument,
            "invalid_field",
            Some("context.dates"),
            422,
        ),
        (
            ml::MatchRequest {
                user_a_id: u[0].clone(),
                user_b_id: uuid::Uuid::new_v4().to_string(),
                context: None,
            },
            Code::NotFound,
            "unknown_user",
            Some("user_b_id"),
            404,
        ),
    ];
    for (req, code, error_code, field, http_status) in cases {
        // The HTTP API refuses the same request with the status beside the code.
        let body = json!({
            "user_a_id": req.user_a_id, "user_b_id": req.user_b_id,
            "context": req.context.as_ref().map(|c| json!({"dates": c.dates})),
        });
        assert_eq!(
            app.post("/match/score", body).await.status().as_u16(),
            http_status
        );
        let e = c.score_match(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(meta(&e, "x-error-code"), Some(error_code));
        assert_eq!(meta(&e, "x-error-field"), field);
        // An invalid field is named in the message too (as in the HTTP body).
        if let (Some(f), Code::InvalidArgument) = (field, code) {
            assert!(e.message().contains(f), "{e:?}");
        }
    }
    let e = c
        .recommend_destinations(ml::RecommendRequest {
            user_id: u[0].clone(),
            limit: Some(0),
            filters: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(meta(&e, "x-error-field"), Some("limit"));
    let e = c
        .optimize_notification(ml::NotifyRequest {
            user_id: u[0].clone(),
            notification_type: "spam".into(),
            urgency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("match_found, message, reminder"),
        "{e:?}"
    );
}

#[tokio::test]
async fn grpc_needs_the_api_key_while_health_and_reflection_stay_open() {
    let f = fixture();
    let mut s = f.settings.clone();
    s.http.api_keys = vec!["grpc-key".to_string().into()];
    let app = spawn_with(s).await;
    let u = app.users(2);
    let req = || ml::MatchRequest {
        user_a_id: u[0].clone(),
        user_b_id: u[1].clone(),
        context: None,
    };
    let mut c = client(&app).await;
    let e = c.score_match(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-key".parse().unwrap());
    assert_eq!(
        c.score_match(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(req());
    right
        .metadata_mut()
        .insert("authorization", "Bearer grpc-key".parse().unwrap());
    assert!(c.score_match(right).await.is_ok());

    // Health: SERVING for the server and each service, with no key.
    let channel = Channel::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "mlservice.v1.MlService",
        "inference.GRPCInferenceService",
    ] {
        let mut status = 0;
        // The health service follows readiness within a moment of start-up.
        for _ in 0..50 {
            status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    // Reflection lists the services, with no key.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(channel);
    let mut stream = refl
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "mlservice.v1.MlService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
}
