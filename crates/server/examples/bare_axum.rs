//! The bare limit of this machine's HTTP stack for the API's shape: an axum
//! server that parses and validates the same JSON bodies (`ml-api`) on the
//! same three paths and answers a constant body of the same shape, with no
//! features, model or cache. `bench/perf.sh` runs it beside ml-service and
//! prints each endpoint's throughput as a share of this one.
//!
//!   bare_axum PORT
//!
//! It runs on the same allocator as the service (jemalloc), so a share
//! compares the work done, not the allocators (which alone moved the bare
//! rate by about a tenth: docs/performance-history.md, session 13).

use axum::routing::post;
use axum::{Json, Router};
use ml_api::{
    MatchFactors, MatchRequest, MatchResponse, NotifyRequest, NotifyResponse, RecommendRequest,
    RecommendResponse, Recommendation,
};
use ml_core::types::Channel;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn score(Json(r): Json<MatchRequest>) -> Json<MatchResponse> {
    let ok = r.validate().is_ok();
    Json(MatchResponse {
        score: if ok { 0.5 } else { 0.0 },
        confidence: 0.5,
        factors: MatchFactors {
            interest_overlap: 0.5,
            travel_style: 0.5,
            personality: 0.5,
        },
        latency_ms: 0.0,
        fallback: false,
    })
}

async fn recommend(Json(r): Json<RecommendRequest>) -> Json<RecommendResponse> {
    let n = if r.validate().is_ok() { r.limit } else { 0 };
    Json(RecommendResponse {
        recommendations: (0..n)
            .map(|k| Recommendation {
                destination: format!("Destination {k}"),
                score: 0.5,
                reason: "Because you explored Lisbon and Porto".into(),
            })
            .collect(),
        fallback: false,
    })
}

async fn notify(Json(_): Json<NotifyRequest>) -> Json<NotifyResponse> {
    Json(NotifyResponse {
        send_at: "2026-11-28T10:00:00Z".into(),
        channel: Channel::Push,
        confidence: 0.5,
        reason: "Active around 10-11am on weekdays".into(),
        fallback: false,
    })
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bare_axum PORT"))?
        .parse()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let app = Router::new()
            .route("/match/score", post(score))
            .route("/recommend/destinations", post(recommend))
            .route("/notifications/optimize", post(notify));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
