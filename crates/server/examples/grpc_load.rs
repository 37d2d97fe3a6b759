//! A load generator that drives match scoring over HTTP (JSON, reqwest) or
//! gRPC (tonic, one HTTP/2 channel) from the same single-threaded runtime,
//! so the two transports are compared with the same client-side costs.
//! Used by `bench/grpc.sh`.
//!
//!   grpc_load http|grpc ADDR PAIRS_FILE CONCURRENCY SECONDS
//!
//! PAIRS_FILE has one "user_a user_b" pair per line; requests rotate over
//! them. Prints: transport, requests/s, p50 ms, p99 ms, errors.

use ml_server::grpc::pb::mlservice::{ml_service_client::MlServiceClient, MatchRequest};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Client {
    Http(reqwest::Client, String),
    Grpc(MlServiceClient<tonic::transport::Channel>),
}

impl Client {
    async fn call(&mut self, a: &str, b: &str) -> bool {
        match self {
            Client::Http(c, url) => c
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(format!(r#"{{"user_a_id":"{a}","user_b_id":"{b}"}}"#))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Client::Grpc(c) => c
                .score_match(MatchRequest {
                    user_a_id: a.into(),
                    user_b_id: b.into(),
                    context: None,
                })
                .await
                .is_ok(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: grpc_load http|grpc ADDR PAIRS_FILE CONCURRENCY SECONDS"
    );
    let (transport, addr) = (args[1].clone(), args[2].clone());
    let pairs: Arc<Vec<(String, String)>> = Arc::new(
        std::fs::read_to_string(&args[3])?
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    );
    anyhow::ensure!(!pairs.is_empty(), "no pairs in {}", args[3]);
    let concurrency: usize = args[4].parse()?;
    let seconds: f64 = args[5].parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = match transport.as_str() {
            "http" => Client::Http(
                reqwest::Client::builder()
                    .pool_max_idle_per_host(concurrency)
                    .build()?,
                format!("http://{addr}/match/score"),
            ),
            "grpc" => Client::Grpc(MlServiceClient::connect(format!("http://{addr}")).await?),
            other => anyhow::bail!("unknown transport {other}"),
        };
        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let t0 = Instant::now();
        let mut tasks = vec![];
        for _ in 0..concurrency {
            let (mut c, pairs, next, errors) =
                (client.clone(), pairs.clone(), next.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = vec![];
                while Instant::now() < deadline {
                    let (a, b) = &pairs[next.fetch_add(1, Ordering::Relaxed) % pairs.len()];
                    let t = Instant::now();
                    if !c.call(a, b).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                lat
            }));
        }
        let mut lat = vec![];
        for t in tasks {
            lat.extend(t.await?);
        }
        let wall = t0.elapsed().as_secs_f64();
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e3;
        println!(
            "{transport} {:.0} {:.2} {:.2} {}",
            lat.len() as f64 / wall,
            q(0.5),
            q(0.99),
            errors.load(Ordering::Relaxed)
        );
        Ok(())
    })
}
