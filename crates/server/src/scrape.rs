//! The metrics listener (`PROMETHEUS_PORT`): `GET /metrics` renders the
//! process's recorder ([`crate::telemetry`]) after setting the gauges read
//! at scrape time (queue depths, Redis failures, resident memory).

use crate::service::Predictor;
use crate::telemetry::handle;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Resident memory of this process, from /proc (Linux); None elsewhere.
fn resident_memory_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}

async fn render(State(p): State<Arc<Predictor>>) -> String {
    metrics::gauge!("ml_inference_queue_depth", "queue" => "pool")
        .set(p.engine.pool.queue_depth() as f64);
    // Versions of one model share its queue label: their depths add up.
    let mut depth: std::collections::HashMap<&str, usize> = Default::default();
    for (k, m) in p.models.loaded() {
        *depth.entry(k.as_str()).or_default() += m.batcher.queue_depth();
    }
    for (k, d) in depth {
        metrics::gauge!("ml_inference_queue_depth", "queue" => k).set(d as f64);
    }
    metrics::counter!("ml_redis_failures_total").absolute(p.caches.store.failures());
    if let Some(rss) = resident_memory_bytes() {
        metrics::gauge!("ml_process_resident_memory_bytes").set(rss);
    }
    handle().render()
}

/// The metrics listener's router: `GET /metrics`.
pub fn metrics_router(p: Arc<Predictor>) -> Router {
    Router::new().route("/metrics", get(render)).with_state(p)
}
