//! `experiments report|join`: outcomes joined to the logged predictions, and
//! the report on a model's current split with its verdict (the same
//! document as `GET /admin/experiments/{model}`).

use crate::args::{ExperimentsCommand, SimulateArgs};
use crate::logs::init_tracing;
use crate::store::{block_on, repository};
use anyhow::Context;
use ml_core::model::ModelKind;
use ml_server::app::{self, Access};
use ml_server::experiments::{self, ExperimentReport};

pub fn experiments(command: ExperimentsCommand) -> anyhow::Result<()> {
    let (a, report) = match command {
        ExperimentsCommand::Report(a) => (a, true),
        ExperimentsCommand::Join(a) => (a, false),
        ExperimentsCommand::Simulate(s) => return simulate(s),
    };
    init_tracing(&a.stores.log.log_level);
    let store = app::open_store(&a.stores.data, Access::Read)?;
    let (_, outcomes) = app::log_stores(&a.stores.prediction_log, &a.stores.data, &store)?;
    if !report || !a.no_join {
        let j = block_on(experiments::join_now(&*outcomes, &a.stores.experiments))
            .context("joining outcomes")?;
        if !report || !a.json {
            println!(
                "outcomes joined: {} match, {} recommendation, {} notification (rows new or changed)",
                j.matches, j.recommendations, j.notifications
            );
        }
    }
    if !report {
        return Ok(());
    }
    let name = a
        .model
        .as_deref()
        .context("which model? `experiments report travel_match`")?;
    let model = ModelKind::parse(name).with_context(|| {
        format!(
            "unknown model {name:?}: expected travel_match, recommendation or notification_timing"
        )
    })?;
    let repo = repository(&a.stores.models)?;
    let r = block_on(experiments::report_now(
        &*outcomes,
        &repo,
        model,
        &a.stores.experiments,
    ))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", text(&r));
    }
    Ok(())
}

/// The report as a table and the verdict.
pub fn text(r: &ExperimentReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): split {}{}{}",
        r.model,
        r.endpoint,
        if r.split.is_empty() { "none" } else { &r.split },
        r.since
            .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_default(),
        if r.auto {
            ", --auto: the service decides it"
        } else {
            ""
        }
    );
    if !r.arms.is_empty() {
        let better = if r.metric.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(out, "metric: {} ({better}), per user", r.metric.name);
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:>7} {:>9} {:>9} {:>7} {:>22} {:>9} {:>9} {:>8}",
            "arm",
            "weight",
            "users",
            "predict.",
            "outcomes",
            "units",
            "metric [95 % CI]",
            "second.",
            "fallback",
            "p99 ms"
        );
        for a in &r.arms {
            let metric = match (a.metric, a.interval95) {
                (Some(m), Some((lo, hi))) => format!("{m:.4} [{lo:.4}, {hi:.4}]"),
                (Some(m), None) => format!("{m:.4}"),
                _ => "-".into(),
            };
            let opt = |x: Option<f64>, f: fn(f64) -> String| x.map(f).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<9} {:>6} {:>7} {:>9} {:>9} {:>7} {:>22} {:>9} {:>9} {:>8}",
                format!("v{}{}", a.version, if a.control { "*" } else { "" }),
                a.weight,
                a.users,
                a.predictions,
                a.outcomes,
                a.units,
                metric,
                opt(a.secondary, |x| format!("{x:.4}")),
                opt(a.fallback_share, |x| format!("{:.2} %", x * 100.0)),
                opt(a.latency_p99_ms, |x| format!("{x:.2}")),
            );
        }
        for a in r.arms.iter().filter(|a| !a.control) {
            if let Some(c) = &a.comparison {
                let _ = writeln!(
                    out,
                    "v{} − control: {:+.4}, always-valid interval [{:+.4}, {:+.4}], p = {:.4}",
                    a.version, c.difference, c.interval.0, c.interval.1, c.p_value
                );
            }
        }
        if let Some(p) = r.sample_ratio_p {
            let _ = writeln!(out, "sample ratio check: p = {p:.3}");
        }
        let _ = writeln!(out, "(* control; units: users with a value of the metric)");
    }
    let _ = writeln!(out, "verdict: {}", r.verdict.text);
    out
}

/// What the simulated app saw of one answer.
struct Asked {
    a: uuid::Uuid,
    b: uuid::Uuid,
    version: String,
    score: f64,
    prediction: Option<uuid::Uuid>,
}

/// `experiments simulate`: the app's side of an A/B test on the demo world.
fn simulate(s: SimulateArgs) -> anyhow::Result<()> {
    use ml_train::generator::{generate_with_truth, GeneratorConfig};
    use rand::{Rng, SeedableRng};
    init_tracing(&s.stores.log.log_level);
    let (world, truth) = generate_with_truth(&GeneratorConfig {
        users: s.demo.demo_users,
        seed: s.demo.demo_seed,
        synonym_rate: s.demo.demo_synonym_rate,
        ..Default::default()
    });
    let store = app::open_store(&s.stores.data, Access::Write)?;
    let known = block_on(store.count_profiles())?;
    anyhow::ensure!(
        known as usize == world.profiles.len(),
        "the store holds {known} users, the demo world {} (DEMO_USERS / DEMO_SEED as the store was made?)",
        world.profiles.len()
    );
    let users: Vec<uuid::Uuid> = world.profiles.iter().map(|p| p.id).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
    let pairs: Vec<(uuid::Uuid, uuid::Uuid)> = (0..s.pairs)
        .map(|_| loop {
            let (i, j) = (rng.gen_range(0..users.len()), rng.gen_range(0..users.len()));
            if i != j {
                break (users[i], users[j]);
            }
        })
        .collect();
    let t0 = std::time::Instant::now();
    let asked = block_on(ask(&s, pairs))?;
    let secs = t0.elapsed().as_secs_f64();
    // The world decides each pair, after every answer was given.
    let decided_at = chrono::Utc::now();
    let mut matches = Vec::with_capacity(asked.len());
    let mut per_version: std::collections::BTreeMap<&str, (usize, f64, f64)> = Default::default();
    for q in &asked {
        let p = truth
            .oracle
            .probability(q.a, q.b)
            .context("a pair outside the demo world")?;
        let matched = rng.gen::<f32>() < p;
        let e = per_version.entry(q.version.as_str()).or_default();
        e.0 += 1;
        let y = f64::from(u8::from(matched));
        let sc = q.score.clamp(1e-6, 1.0 - 1e-6);
        e.1 += -(y * sc.ln() + (1.0 - y) * (1.0 - sc).ln());
        e.2 += f64::from(p);
        matches.push(ml_core::types::MatchOutcome {
            user_a: q.a,
            user_b: q.b,
            destination_id: None,
            trip_start: None,
            trip_interests: vec![],
            matched,
            decided_at,
            true_probability: Some(p),
        });
    }
    block_on(store.write_dataset(
        &ml_core::types::Dataset {
            matches,
            ..Default::default()
        },
        false,
    ))
    .context("writing the match outcomes into the app's tables")?;
    if !s.json {
        println!(
            "asked {} pairs in {secs:.1} s; outcomes written to {}",
            asked.len(),
            store.describe()
        );
        for (v, (n, loss, p)) in &per_version {
            println!(
                "  {v}: {n} answers, log-loss per answer {:.4}, mean true match probability {:.3}",
                loss / *n as f64,
                p / *n as f64
            );
        }
    }
    let (log, outcomes) = app::log_stores(&s.stores.prediction_log, &s.stores.data, &store)?;
    // The service writes its log off the request path: wait (a while) for
    // the rows of these answers before joining.
    let waited = std::time::Instant::now();
    let mut pending: Vec<uuid::Uuid> = asked.iter().filter_map(|q| q.prediction).collect();
    while !pending.is_empty() && waited.elapsed() < std::time::Duration::from_secs(10) {
        let mut left = Vec::new();
        for id in pending {
            if block_on(log.get(id))?.is_none() {
                left.push(id);
            }
        }
        pending = left;
        if !pending.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    if !pending.is_empty() {
        tracing::warn!(
            missing = pending.len(),
            "answers not in the prediction log after 10 s (sampled out, or dropped): they have no outcome"
        );
    }
    let j = block_on(experiments::join_now(&*outcomes, &s.stores.experiments))?;
    let repo = repository(&s.stores.models)?;
    let r = block_on(experiments::report_now(
        &*outcomes,
        &repo,
        ModelKind::TravelMatch,
        &s.stores.experiments,
    ))?;
    if s.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("outcomes joined: {} match", j.matches);
        print!("{}", text(&r));
    }
    Ok(())
}

/// Ask the service about each pair, `concurrency` at a time.
async fn ask(s: &SimulateArgs, pairs: Vec<(uuid::Uuid, uuid::Uuid)>) -> anyhow::Result<Vec<Asked>> {
    let client = reqwest::Client::new();
    let url = format!("{}/match/score", s.url.trim_end_matches('/'));
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(s.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        let (client, url, limit, key) = (
            client.clone(),
            url.clone(),
            std::sync::Arc::clone(&limit),
            s.api_key.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut req = client
                .post(&url)
                .json(&serde_json::json!({"user_a_id": a, "user_b_id": b}));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let r = req.send().await.context("POST /match/score")?;
            anyhow::ensure!(
                r.status().is_success(),
                "POST /match/score answered {}",
                r.status()
            );
            let version = r
                .headers()
                .get("x-model-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let prediction = r
                .headers()
                .get("x-prediction-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body: serde_json::Value = r.json().await?;
            let score = body["score"]
                .as_f64()
                .context("an answer without a score")?;
            anyhow::Ok(Asked {
                a,
                b,
                version,
                score,
                prediction,
            })
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r??);
    }
    Ok(out)
}
