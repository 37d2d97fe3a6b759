//! Prometheus metrics with the spec's names, recorded through the `metrics`
//! facade and rendered at `/metrics` on `PROMETHEUS_PORT`:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `ml_inference_requests_total` | counter | endpoint, model, version, status |
//! | `ml_inference_duration_seconds` | histogram | endpoint, model, version |
//! | `ml_inference_errors_total` | counter | endpoint, kind |
//! | `ml_model_load_time_seconds` | gauge | model, version |
//! | `ml_model_memory_bytes` | gauge | model, version (ONNX weights) |
//! | `ml_prediction_batch_size` | histogram | model (rows per model run) |
//! | `ml_inflight_requests` | gauge | |
//! | `ml_inference_queue_depth` | gauge | queue (`pool`: batches waiting for an inference thread; a model name: requests waiting in its batcher) |
//! | `ml_process_resident_memory_bytes` | gauge | |
//! | `ml_build_info` | gauge (1) | version |
//!
//! | `ml_cache_hits_total` | counter | cache (`features`, `predictions`), layer (`near`, `redis`, `memory`) |
//! | `ml_cache_misses_total` | counter | cache |
//! | `ml_redis_failures_total` | counter | (Redis calls that failed or timed out) |
//! | `ml_model_reloads_total` | counter | model, outcome (`swapped`, `rejected`, `error`) |
//! | `ml_model_load_failures_total` | counter | model, version (a version that did not load) |
//! | `ml_model_traffic_share` | gauge | model, version (share of users routed to it) |
//! | `ml_fallbacks_total` | counter | model, version, reason (`inference_failed`, `inference_timeout`, `data_unavailable`) |
//! | `ml_shadow_requests_total` | counter | model, version, outcome (`ok`, `error`, `dropped`) |
//! | `ml_shadow_disagreement` | histogram | model, version (mean absolute difference of the first output) |
//! | `ml_prediction_log_rows_total` | counter | outcome (`written`, `dropped_queue_full`, `dropped_store_error`) |
//! | `ml_prediction_log_queue_depth` | gauge | (rows waiting to be written) |
//!
//! A fallback answer is also counted in `ml_inference_errors_total` with the
//! endpoint and the reason as `kind`, though its status is 200.

use crate::headers::MODEL_VERSION_HEADER;
use axum::extract::MatchedPath;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Histogram buckets in seconds, fine enough for sub-millisecond requests.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `ml_prediction_batch_size` (rows per model run).
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Buckets of `ml_shadow_disagreement` (scores are probabilities).
pub const DISAGREEMENT_BUCKETS: [f64; 9] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5];

/// The error kind of a failed response (its `code`), for `ml_inference_errors_total`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

/// The process-wide Prometheus recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("ml_inference_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("ml_prediction_batch_size".into()),
                    &BATCH_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("ml_embedding_batch_seconds".into()),
                    &LATENCY_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("ml_shadow_disagreement".into()),
                    &DISAGREEMENT_BUCKETS,
                )
            })
            .expect("bucket lists are not empty");
        let handle = builder
            .install_recorder()
            .expect("one metrics recorder per process");
        // Histogram samples pile up in the recorder until they are folded
        // into their buckets, which rendering does — but nothing may scrape
        // for hours. Without this upkeep memory grows by ~30 bytes per
        // request (found by bench/soak.sh: +10 MiB per 30 s at 12k req/s).
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
            .expect("spawn the metrics upkeep thread");
        describe();
        metrics::gauge!("ml_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ml_inference_requests_total",
        "API requests by endpoint, model, version and status."
    );
    describe_histogram!(
        "ml_inference_duration_seconds",
        Unit::Seconds,
        "Time in the server per API request."
    );
    describe_counter!(
        "ml_inference_errors_total",
        "Failed API requests by endpoint and error kind."
    );
    describe_gauge!(
        "ml_model_load_time_seconds",
        Unit::Seconds,
        "Time to load and smoke-test a model version."
    );
    describe_gauge!(
        "ml_model_memory_bytes",
        Unit::Bytes,
        "Size of a loaded model's ONNX weights."
    );
    describe_histogram!(
        "ml_prediction_batch_size",
        "Rows per model call (a whole batch)."
    );
    describe_counter!(
        "ml_cache_hits_total",
        "Cache hits by cache (features, predictions) and layer (near, redis, memory)."
    );
    describe_counter!("ml_cache_misses_total", "Cache misses by cache.");
    describe_counter!(
        "ml_redis_failures_total",
        "Redis calls that failed or timed out (each is served as a miss)."
    );
    describe_gauge!("ml_inflight_requests", "API requests being served now.");
    describe_gauge!(
        "ml_inference_queue_depth",
        "Requests waiting in a model's batcher, or batches waiting for an inference thread (queue=pool)."
    );
    describe_gauge!(
        "ml_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!("ml_build_info", "Always 1; the version is a label.");
    describe_counter!(
        "ml_model_reloads_total",
        "Changes of a model's serving versions by outcome (swapped, rejected, error)."
    );
    describe_counter!(
        "ml_model_load_failures_total",
        "Model versions that did not load (corrupt, truncated or wrong signature)."
    );
    describe_gauge!(
        "ml_model_traffic_share",
        "Share of users a model version answers (A/B routing)."
    );
    describe_counter!(
        "ml_fallbacks_total",
        "Answers given by the fallback: the model failed or timed out, or the user's data could not be read."
    );
    describe_counter!(
        "ml_shadow_requests_total",
        "Copies of live requests run on a shadow version, by outcome."
    );
    describe_histogram!(
        "ml_shadow_disagreement",
        "Mean absolute difference between a shadow version's first output and the served one's."
    );
    describe_counter!(
        "ml_embedding_texts_total",
        "Interest phrases encoded by the sentence-embedding model (each once per process)."
    );
    describe_histogram!(
        "ml_embedding_batch_seconds",
        Unit::Seconds,
        "Time of one batch of the sentence-embedding model."
    );
    describe_counter!(
        "ml_outcomes_joined_total",
        "Outcome rows the join wrote or changed, by endpoint (match, recommend, notify)."
    );
    describe_counter!(
        "ml_outcome_feedback_total",
        "Outcomes reported with POST /feedback (and its gRPC twin), by result (recorded, repeat)."
    );
    describe_gauge!(
        "ml_experiment_arm_metric",
        "Each arm's primary online metric (match: log-loss; recommendation: converted places per recommendation; notification: open rate) at the last report, by model and version."
    );
    describe_gauge!(
        "ml_experiment_arm_users",
        "Users with an outcome in each arm at the last report, by model and version."
    );
    describe_counter!(
        "ml_embedding_errors_total",
        "Embedding calls that failed, by reason (overloaded, compute); those interests are read by their exact names."
    );
}

/// Record a loaded model version.
pub fn model_loaded(model: &str, version: u64, seconds: f64, bytes: usize) {
    handle();
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
    ];
    metrics::gauge!("ml_model_load_time_seconds", &labels).set(seconds);
    metrics::gauge!("ml_model_memory_bytes", &labels).set(bytes as f64);
}

/// A version no longer held by the registry: its memory gauge drops to 0.
pub fn model_unloaded(model: &str, version: u64) {
    handle();
    metrics::gauge!("ml_model_memory_bytes", "model" => model.to_string(), "version" => version.to_string())
        .set(0.0);
}

/// Count a reload of a model's serving versions by outcome.
pub fn model_reload(model: &str, outcome: &'static str) {
    handle();
    metrics::counter!("ml_model_reloads_total", "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Count a version that did not load (corrupt, truncated, wrong signature).
pub fn model_load_failed(model: &str, version: u64) {
    handle();
    metrics::counter!("ml_model_load_failures_total", "model" => model.to_string(), "version" => version.to_string())
        .increment(1);
}

/// The share of users a version answers (0 once it stops serving).
pub fn traffic_share(model: &str, version: u64, share: f64) {
    handle();
    metrics::gauge!("ml_model_traffic_share", "model" => model.to_string(), "version" => version.to_string())
        .set(share);
}

/// The endpoint of each model, for errors counted outside the HTTP layer.
fn endpoint_of(model: &str) -> &'static str {
    match model {
        "travel_match" => "/match/score",
        "recommendation" => "/recommend/destinations",
        _ => "/notifications/optimize",
    }
}

/// Count an answer given by the fallback (the model failed or timed out, or
/// the user's data could not be read).
pub fn fallback(model: &str, version: u64, reason: &'static str) {
    handle();
    metrics::counter!("ml_fallbacks_total", "model" => model.to_string(), "version" => version.to_string(), "reason" => reason)
        .increment(1);
    metrics::counter!("ml_inference_errors_total", "endpoint" => endpoint_of(model), "kind" => reason)
        .increment(1);
}

/// Record one shadow run and, when it answered, its disagreement.
pub fn shadow(model: &str, version: u64, outcome: &'static str, disagreement: Option<f64>) {
    handle();
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
    ];
    let mut with_outcome = labels.to_vec();
    with_outcome.push(("outcome", outcome.to_string()));
    metrics::counter!("ml_shadow_requests_total", &with_outcome).increment(1);
    if let Some(d) = disagreement {
        metrics::histogram!("ml_shadow_disagreement", &labels).record(d);
    }
}

/// The histogram of a model's rows per model call (a whole batch), to
/// record each call in.
pub fn batch_size(model: &str) -> metrics::Histogram {
    handle();
    metrics::histogram!("ml_prediction_batch_size", "model" => model.to_string())
}

/// The `ml_inflight_requests` gauge (looked up once).
pub fn inflight() -> &'static metrics::Gauge {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| {
        handle();
        metrics::gauge!("ml_inflight_requests")
    })
}

/// Count one answered HTTP request of `endpoint` (its route, or
/// "unmatched"): request count, latency and errors, labelled with the model
/// version the response names. The in-flight gauge is [`inflight`]; both
/// are kept by the HTTP layer (`routes::RequestLayer`).
pub fn track(endpoint: Option<&MatchedPath>, resp: &Response, seconds: f64) {
    let (model, version) = resp
        .headers()
        .get(MODEL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('/'))
        .unwrap_or(("none", "none"));
    let kind = resp
        .extensions()
        .get::<ErrorKind>()
        .map(|k| k.0)
        .unwrap_or("http");
    record(
        endpoint.map_or("unmatched", MatchedPath::as_str),
        model,
        version,
        resp.status().as_u16(),
        kind,
        seconds,
    );
}

/// The handles of one label set of the request metrics.
#[derive(Clone)]
struct RequestMetrics {
    duration: metrics::Histogram,
    requests: metrics::Counter,
    errors: Option<metrics::Counter>,
}

/// Label sets a thread keeps handles of before it starts afresh; far more
/// than endpoints × versions × statuses, so only a flood of distinct labels
/// (which the labels' sources rule out) would reach it.
const MAX_CACHED_LABEL_SETS: usize = 4096;

/// Count one API request (HTTP or gRPC) in `ml_inference_requests_total`,
/// `ml_inference_duration_seconds` and, when `status` is a 4xx or 5xx (gRPC
/// errors are counted under their HTTP equivalent), in
/// `ml_inference_errors_total` with `kind`.
///
/// The metric handles of each label set are kept per thread: looking them up
/// in the recorder builds the labels' strings and hashes them, which cost a
/// few percent of a request's CPU.
pub fn record(
    endpoint: &str,
    model: &str,
    version: &str,
    status: u16,
    kind: &'static str,
    seconds: f64,
) {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::fmt::Write as _;
    thread_local! {
        static CACHE: RefCell<(String, HashMap<String, RequestMetrics>)> = RefCell::default();
    }
    let m = CACHE.with_borrow_mut(|(key, cache)| {
        key.clear();
        let _ = write!(key, "{endpoint}\0{model}\0{version}\0{status}\0{kind}");
        if let Some(m) = cache.get(key.as_str()) {
            return m.clone();
        }
        let labels = [
            ("endpoint", endpoint.to_string()),
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        let mut with_status = labels.to_vec();
        with_status.push(("status", status.to_string()));
        let m = RequestMetrics {
            duration: metrics::histogram!("ml_inference_duration_seconds", &labels),
            requests: metrics::counter!("ml_inference_requests_total", &with_status),
            errors: (status >= 400).then(|| {
                metrics::counter!("ml_inference_errors_total", "endpoint" => endpoint.to_string(), "kind" => kind)
            }),
        };
        if cache.len() >= MAX_CACHED_LABEL_SETS {
            cache.clear();
        }
        cache.insert(key.clone(), m.clone());
        m
    });
    m.duration.record(seconds);
    m.requests.increment(1);
    if let Some(e) = m.errors {
        e.increment(1);
    }
}

/// The OTLP/HTTP span exporter and the `tracing` layer that feeds it: every
/// `tracing` span (one per request, one per model call) becomes an
/// OpenTelemetry span, batched and sent to `{endpoint}/v1/traces`. W3C trace
/// context is read from incoming requests (see `routes::request_span`).
pub fn otlp_layer<S>(
    endpoint: &str,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    opentelemetry_sdk::trace::SdkTracerProvider,
)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("ml-service")
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("ml-service");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}

/// Count prediction-log rows by what became of them.
pub fn prediction_log_rows(outcome: &'static str, n: u64) {
    handle();
    metrics::counter!("ml_prediction_log_rows_total", "outcome" => outcome).increment(n);
}

/// Rows waiting in the prediction log's queue.
pub fn prediction_log_queue(n: usize) {
    handle();
    metrics::gauge!("ml_prediction_log_queue_depth").set(n as f64);
}

/// Outcome rows a join wrote or changed.
pub fn outcomes_joined(endpoint: &'static str, n: u64) {
    handle();
    metrics::counter!("ml_outcomes_joined_total", "endpoint" => endpoint).increment(n);
}

/// One outcome reported by the app.
pub fn outcome_feedback(result: &'static str) {
    handle();
    metrics::counter!("ml_outcome_feedback_total", "result" => result).increment(1);
}

/// An experiment arm's metric and users at the last report.
pub fn experiment_arm(model: &str, version: u64, metric: Option<f64>, users: u64) {
    handle();
    let labels = [
        ("model", model.to_string()),
        ("version", version.to_string()),
    ];
    if let Some(m) = metric {
        metrics::gauge!("ml_experiment_arm_metric", &labels).set(m);
    }
    metrics::gauge!("ml_experiment_arm_users", &labels).set(users as f64);
}
