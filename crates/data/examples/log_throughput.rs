//! How many prediction-log rows per second each store takes on this machine:
//! batches as the server's writer makes them (2,000 rows, one transaction),
//! written back to back for a while, into a fresh SQLite file and a fresh
//! Postgres database (`DATABASE_URL`, default the local server; dropped after).
//!
//!   cargo run --release -p ml-data --example log_throughput -- [SECONDS]
//!
//! (bench/log-store.sh runs it.) The rows look like the service's: a match
//! decision of about 110 bytes of JSON, UUID v7 ids, three indexes.

use chrono::Utc;
use ml_data::testing::TestDb;
use ml_data::{PgPredictions, PredictionRecord, PredictionStore, SqlitePredictions};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BATCH: usize = 2_000;

fn batch() -> Vec<PredictionRecord> {
    (0..BATCH)
        .map(|_| PredictionRecord {
            id: Uuid::now_v7(),
            at: Utc::now(),
            endpoint: "match".into(),
            model: "travel_match".into(),
            version: 3,
            route: "3=90,4=10".into(),
            user_id: Uuid::new_v4(),
            other_user_id: Some(Uuid::new_v4()),
            request_digest: "0123456789abcdef0123456789abcdef".into(),
            score: Some(0.4321),
            decision: r#"{"score":0.4321,"confidence":0.61,"factors":{"interest_overlap":0.52,"travel_style":0.33,"personality":0.71}}"#.into(),
            cached: false,
            fallback: false,
            latency_us: Some(900),
        })
        .collect()
}

async fn measure(name: &str, store: &dyn PredictionStore, seconds: u64) {
    let t0 = Instant::now();
    let mut rows = 0u64;
    let mut written = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(seconds) {
        // Rows are made outside the timed part: the server makes them on
        // the request path, not in the writer.
        let b = batch();
        let t = Instant::now();
        rows += store.write(b).await.expect("write");
        written += t.elapsed();
    }
    println!(
        "| {name} | {rows} | {:.1} s | {:.0} rows/s |",
        written.as_secs_f64(),
        rows as f64 / written.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("| store | rows | time writing | rows per second |");
    println!("| --- | ---: | ---: | ---: |");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqlitePredictions::open(&dir.path().join("app.db")).unwrap();
    measure("SQLite (WAL, synchronous=NORMAL)", &sqlite, seconds).await;
    match TestDb::new().await {
        Some(db) => {
            db.store(false).migrate().await.unwrap();
            let pg = PgPredictions::new(db.store(false));
            measure("Postgres (local, one session)", &pg, seconds).await;
        }
        None => println!("| Postgres | skipped: unreachable | | |"),
    }
}
