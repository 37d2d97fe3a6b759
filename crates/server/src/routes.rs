//! The HTTP layer: routes, handlers and the OpenAPI document. Handlers only
//! extract, call the [`Predictor`], and shape the response.

use crate::admission::{authenticate_admin, Admission, ApiKeys, Guard};
use crate::api::*;
use crate::error::{ErrorBody, ServiceError};
use crate::extract::{ApiJson, BodyLimit};
use crate::headers::{
    CACHE_HEADER, FALLBACK_HEADER, MODEL_VERSION_HEADER, PREDICTION_ID_HEADER, REQUEST_ID,
};
use crate::service::{Predictor, Versioned};
use crate::settings::Settings;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use std::sync::Arc;
use utoipa::OpenApi;

impl<T: serde::Serialize> IntoResponse for Versioned<T> {
    fn into_response(self) -> Response {
        let mut r = Json(self.body).into_response();
        if let Ok(v) = HeaderValue::from_maybe_shared(self.label) {
            r.headers_mut()
                .insert(HeaderName::from_static(MODEL_VERSION_HEADER), v);
        }
        r.headers_mut().insert(
            HeaderName::from_static(CACHE_HEADER),
            HeaderValue::from_static(if self.cached { "hit" } else { "miss" }),
        );
        if self.fallback {
            r.headers_mut().insert(
                HeaderName::from_static(FALLBACK_HEADER),
                HeaderValue::from_static("true"),
            );
        }
        if let Some(id) = self.prediction_id {
            let mut buf = uuid::Uuid::encode_buffer();
            if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
                r.headers_mut()
                    .insert(HeaderName::from_static(PREDICTION_ID_HEADER), v);
            }
        }
        r
    }
}

type AppState = Arc<Predictor>;

/// Score how well two users would travel together.
#[utoipa::path(post, path = "/match/score", request_body = MatchRequest,
    responses((status = 200, body = MatchResponse, headers(("x-model-version" = String, description = "model/version"), ("x-prediction-id" = String, description = "the answer's id (UUID v7), for POST /feedback"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn match_score(
    State(p): State<AppState>,
    ApiJson(req): ApiJson<MatchRequest>,
) -> Result<Versioned<MatchResponse>, ServiceError> {
    p.score_match(&req).await
}

/// Recommend destinations the user has not been to.
#[utoipa::path(post, path = "/recommend/destinations", request_body = RecommendRequest,
    responses((status = 200, body = RecommendResponse, headers(("x-model-version" = String, description = "model/version"), ("x-prediction-id" = String, description = "the answer's id (UUID v7), for POST /feedback"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn recommend(
    State(p): State<AppState>,
    ApiJson(req): ApiJson<RecommendRequest>,
) -> Result<Versioned<RecommendResponse>, ServiceError> {
    p.recommend(&req).await
}

/// Choose when and on which channel to notify a user: a channel they agreed
/// to (`DEFAULT_CHANNELS` where the app has no answer), a time outside quiet
/// hours and within the frequency cap (`NOTIFICATION_CAP`) unless urgent.
#[utoipa::path(post, path = "/notifications/optimize", request_body = NotifyRequest,
    responses((status = 200, body = NotifyResponse, headers(("x-model-version" = String, description = "model/version"), ("x-prediction-id" = String, description = "the answer's id (UUID v7), for POST /feedback"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no_consented_channel: the user agreed to no notification channel"),
        (status = 413, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn notify(
    State(p): State<AppState>,
    ApiJson(req): ApiJson<NotifyRequest>,
) -> Result<Versioned<NotifyResponse>, ServiceError> {
    p.optimize_notification(&req).await
}

/// Report what happened after an answer (its `x-prediction-id`): a match
/// decided, a recommended destination saved, booked or visited, a
/// notification opened. A repeat is recorded once; a report wins over the
/// outcome the service joins from the app's tables.
#[utoipa::path(post, path = "/feedback", request_body = FeedbackRequest,
    responses((status = 200, body = FeedbackResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "unknown_prediction: the log holds no prediction with this id (never answered, not sampled, or past retention)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_field: an outcome that does not fit the prediction's endpoint, a destination it did not recommend, a time before it"),
        (status = 503, body = ErrorBody)))]
async fn feedback(
    State(p): State<AppState>,
    ApiJson(req): ApiJson<FeedbackRequest>,
) -> Result<Json<FeedbackResponse>, ServiceError> {
    Ok(Json(p.feedback(&req).await?))
}

/// The experiment on a model's current split: per arm its users,
/// predictions, outcomes, online metric with a 95 % interval, guardrails,
/// the always-valid comparison with the control, the sample-ratio check and
/// a verdict in words. Needs an admin key.
#[utoipa::path(get, path = "/admin/experiments/{model}",
    params(("model" = String, Path, description = "travel_match, recommendation or notification_timing")),
    responses((status = 200, description = "the report (JSON)", body = serde_json::Value),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn admin_experiment(
    State(p): State<AppState>,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> Result<Json<crate::experiments::ExperimentReport>, ServiceError> {
    let kind = ml_core::model::ModelKind::parse(&model)
        .ok_or_else(|| ServiceError::UnknownModel(model.chars().take(100).collect()))?;
    let store = p.log.experiments().ok_or(ServiceError::LogOff)?;
    let repo = p.models.repository();
    let policy = repo.serving(kind).await.map_err(ServiceError::ModelStore)?;
    let report =
        crate::experiments::report(&**store, kind, policy.as_ref(), &p.experiments).await?;
    Ok(Json(report))
}

/// Join outcomes from the app's tables now (the service also does it every
/// OUTCOME_JOIN_INTERVAL_S): rows written or changed per endpoint. Needs an
/// admin key.
#[utoipa::path(post, path = "/admin/experiments/join",
    responses((status = 200, description = "outcome rows written or changed per endpoint", body = serde_json::Value),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn admin_join(State(p): State<AppState>) -> Result<Json<ml_data::Joined>, ServiceError> {
    let store = p.log.experiments().ok_or(ServiceError::LogOff)?;
    Ok(Json(
        crate::experiments::join_now(&**store, &p.experiments).await?,
    ))
}

/// Liveness and the state of each part.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)))]
async fn health(State(p): State<AppState>) -> Json<HealthResponse> {
    Json(p.health().await)
}

/// Kubernetes liveness: the process answers (nothing else is checked, so a
/// slow dependency never gets the pod restarted).
#[utoipa::path(get, path = "/health/live", responses((status = 200, description = "alive")))]
async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

/// Kubernetes readiness: every model is loaded and shutdown has not begun
/// (from the signal on it answers 503, while requests are still served
/// through the grace period). Neither a down Redis nor a
/// down Postgres makes the service unready: both are shared by every replica,
/// so readiness would take them all out of the load balancer at once, while
/// they can still answer from their caches (`/health` reports both).
#[utoipa::path(get, path = "/health/ready", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
async fn ready(State(p): State<AppState>) -> Response {
    let models_loaded = p.models_loaded();
    let draining = p.draining();
    let ok = models_loaded && !draining;
    let status = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            serde_json::json!({"ready": ok, "models_loaded": models_loaded, "draining": draining}),
        ),
    )
        .into_response()
}

/// What serves now: each model's versions with their share of users, and
/// the shadow version. Needs an admin key.
#[utoipa::path(get, path = "/admin/models", responses((status = 200, body = Vec<crate::lifecycle::ModelStatus>),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn admin_models(State(p): State<AppState>) -> Json<Vec<crate::lifecycle::ModelStatus>> {
    Json(p.models.statuses())
}

/// Read the model repository now and swap in what changed (new, promoted or
/// re-routed versions), retrying versions that failed to load before. A
/// version that does not load is reported in `error` and the old one keeps
/// serving. Needs an admin key.
#[utoipa::path(post, path = "/admin/models/reload", responses((status = 200, body = Vec<crate::lifecycle::ModelStatus>),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn admin_reload(State(p): State<AppState>) -> Json<Vec<crate::lifecycle::ModelStatus>> {
    Json(p.models.reload(true).await)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ml-service",
        description = "Match scoring, destination recommendations and notification timing."
    ),
    paths(
        match_score,
        recommend,
        notify,
        health,
        live,
        ready,
        admin_models,
        admin_reload,
        feedback,
        admin_experiment,
        admin_join
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The whole document: the domain API and the Open Inference Protocol.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::v2_http::V2Doc::openapi());
    doc
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_doc())
}

async fn not_found(uri: axum::http::Uri) -> ServiceError {
    ServiceError::NoRoute(uri.path().chars().take(100).collect())
}

/// Request ids for requests that come without one: random UUIDs (version 4
/// layout) from a per-thread generator seeded once from the OS, instead of
/// one `getrandom` system call per request. They only need to be unique.
fn generate_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    // SplitMix64 (Steele, Lea & Flood 2014): two outputs per id.
    let next = || {
        STATE.with(|s| {
            let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let bits = (u128::from(next()) << 64) | u128::from(next());
    let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .expect("a UUID is a valid header value")
}

/// The outermost layer of every HTTP request, in place of four (tower-http's
/// set request id, trace and propagate request id, and a `from_fn` metrics
/// middleware), whose nested futures and per-request service clones cost
/// about a fifth of a match request's CPU (issue 16, session 8): the
/// request's id (`X-Request-Id` as sent, else generated), its span (method,
/// path, id; continuing the caller's W3C trace), the request metrics
/// (in flight, count, latency, errors by route and model version), one log
/// line at INFO when it is answered (status, latency; a 5xx also at ERROR),
/// and the id on the response.
#[derive(Clone, Copy, Debug, Default)]
struct RequestLayer;

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestService { inner }
    }
}

#[derive(Clone, Debug)]
struct RequestService<S> {
    inner: S,
}

impl<S> tower::Service<axum::extract::Request> for RequestService<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::extract::Request) -> Self::Future {
        use tracing::Instrument as _;
        let id = match req.headers().get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = generate_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = request_span(&req);
        let endpoint = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned();
        // Counted in flight until answered or dropped (the caller hung up).
        struct InFlight(&'static metrics::Gauge);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.decrement(1.0);
            }
        }
        let inflight = crate::telemetry::inflight();
        inflight.increment(1.0);
        let in_flight = InFlight(inflight);
        let t0 = std::time::Instant::now();
        let answer = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let Ok(mut resp) = answer.instrument(span.clone()).await;
            let elapsed = t0.elapsed();
            drop(in_flight);
            crate::telemetry::track(endpoint.as_ref(), &resp, elapsed.as_secs_f64());
            let _entered = span.enter();
            let latency = format_args!("{} μs", elapsed.as_micros());
            let status = resp.status();
            tracing::info!(latency = %latency, status = status.as_u16(), "finished processing request");
            if status.is_server_error() {
                tracing::error!(classification = %format_args!("Status code: {status}"), latency = %latency, "response failed");
            }
            resp.headers_mut().entry(REQUEST_ID).or_insert(id);
            Ok(resp)
        })
    }
}

/// The span of one request: method, path and request id — never bodies, query
/// strings or user data.
fn request_span(req: &axum::extract::Request) -> tracing::Span {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id);
    if span.is_disabled() {
        // Below LOG_LEVEL=info and without OTLP nothing reads the span:
        // skip the trace-context lookup.
        return span;
    }
    // W3C trace context (`traceparent`): the caller's trace continues here.
    // Without an OTLP endpoint the propagator is a no-op.
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
    });
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let _ = span.set_parent(parent);
    span
}

/// The router of the API. The prediction endpoints need an API key when keys
/// are configured and pass admission control; health and the OpenAPI
/// document stay open.
pub fn router(p: Arc<Predictor>, settings: &Settings, admission: Admission) -> Router {
    let max_body = settings.http.max_body_bytes;
    let keys = ApiKeys::new(settings.http.api_keys.clone());
    // Layers on each method router, not the path: an undeclared method gets
    // 405 (with `Allow`) before any key check or admission.
    let v2 = crate::v2_http::router(keys.clone(), admission.clone());
    let guard = Guard::new(keys, Some(admission), IntoResponse::into_response);
    let prediction = |m: axum::routing::MethodRouter<AppState>| m.route_layer(guard.clone());
    let predictions = Router::new()
        .route("/match/score", prediction(post(match_score)))
        .route("/recommend/destinations", prediction(post(recommend)))
        .route("/notifications/optimize", prediction(post(notify)))
        .route("/feedback", prediction(post(feedback)));
    let admin_auth = axum::middleware::from_fn_with_state(
        ApiKeys::new(settings.http.admin_keys.clone()),
        authenticate_admin,
    );
    let admin = Router::new()
        .route(
            "/admin/models",
            get(admin_models).route_layer(admin_auth.clone()),
        )
        .route(
            "/admin/models/reload",
            post(admin_reload).route_layer(admin_auth.clone()),
        )
        .route(
            "/admin/experiments/{model}",
            get(admin_experiment).route_layer(admin_auth.clone()),
        )
        .route(
            "/admin/experiments/join",
            post(admin_join).route_layer(admin_auth),
        );
    Router::new()
        .merge(predictions)
        .merge(admin)
        .merge(v2)
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        // One `layer` call for the three: axum wraps every route in a boxed
        // service per call, and each request clones that box and boxes its
        // future once per wrapping (issue 16, session 11: the framework's
        // allocations were a few percent of a notification's samples).
        // Outermost first: request ids come from `X-Request-Id` or are
        // generated (UUID), are echoed on the response, and tag the one log
        // line of each request; then the body limit for the extractor's
        // error and for axum's.
        .layer(
            tower::ServiceBuilder::new()
                .layer(RequestLayer)
                .layer(Extension(BodyLimit(max_body)))
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .with_state(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated request ids are version-4 UUIDs and do not repeat, within a
    /// thread and across threads (each seeds its own generator).
    #[test]
    fn generated_request_ids_are_unique_v4_uuids() {
        let ids = |n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    let id = generate_request_id();
                    id.to_str().expect("ascii").to_string()
                })
                .collect()
        };
        let mut all = ids(20_000);
        let other = std::thread::spawn(move || ids(20_000))
            .join()
            .expect("no panic");
        all.extend(other);
        for id in &all[..100] {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 4, "{id}");
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a request id repeated");
    }
}
