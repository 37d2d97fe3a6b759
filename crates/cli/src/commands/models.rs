//! `models list|promote|rollback|split|shadow|quantize`: what the model
//! repository holds and which versions serve.

use crate::args::{ModelsCommand, QuantizeArgs};
use crate::commands::eval::onnx_predictor;
use crate::logs::init_tracing;
use crate::store::{block_on, load_app_data, repository};
use crate::training::training_data_for;
use anyhow::Context;
use ml_backend::{ModelMeta, ModelRepository, Route, ServingPolicy};
use ml_core::model::ModelKind;
use ml_server::settings::ModelStoreSettings;
use ml_train::publish::summary;
use ml_train::train::TrainingData;
use std::time::Instant;

/// The version most users get: the heaviest route of `serving.json`, else
/// the newest version.
pub(crate) async fn serving_version(
    repo: &ModelRepository,
    kind: ModelKind,
) -> anyhow::Result<Option<u64>> {
    Ok(match repo.desired(kind).await? {
        Some(ml_backend::Desired::Pinned(p)) => {
            p.routes.iter().max_by_key(|r| r.weight).map(|r| r.version)
        }
        Some(ml_backend::Desired::Latest(v)) => v.last().copied(),
        None => None,
    })
}

fn parse_model(name: &str) -> anyhow::Result<ModelKind> {
    ModelKind::parse(name).with_context(|| {
        format!(
            "unknown model {name:?}: expected travel_match, recommendation or notification_timing"
        )
    })
}

/// `models …`: list versions and what serves; change what serves.
pub fn models(command: ModelsCommand) -> anyhow::Result<()> {
    let log = match &command {
        ModelsCommand::List(a) => &a.log,
        ModelsCommand::Quantize(a) => &a.run.log,
        ModelsCommand::Promote(a) => &a.log,
        ModelsCommand::Rollback(a) => &a.log,
        ModelsCommand::Split(a) => &a.log,
        ModelsCommand::Shadow(a) => &a.log,
    };
    init_tracing(&log.log_level);
    match command {
        ModelsCommand::List(s) => {
            let repo = repository(&s.models)?;
            block_on(async {
                for k in ModelKind::ALL {
                    let policy = repo.serving(k).await?;
                    let versions = repo.versions(k).await?;
                    match &policy {
                        Some(p) => println!("{k}: serving {}", describe_policy(p)),
                        None => match versions.last() {
                            Some(v) => println!("{k}: serving the newest version (v{v})"),
                            None => println!("{k}: no versions"),
                        },
                    }
                    for v in versions {
                        match repo.read(k, v).await {
                            Ok((_, meta)) => println!(
                                "  v{v} ({}){}: {}",
                                meta.created_at.format("%Y-%m-%d %H:%M"),
                                if meta.quantization.is_some() {
                                    " INT8"
                                } else {
                                    ""
                                },
                                summary(&meta)
                            ),
                            Err(e) => println!("  v{v}: unreadable ({e})"),
                        }
                    }
                }
                anyhow::Ok(())
            })
        }
        ModelsCommand::Quantize(q) => quantize(q),
        ModelsCommand::Promote(a) => {
            let kind = parse_model(&a.model)?;
            change_policy(&a.models, kind, &[a.version], |p| {
                let routes = vec![Route {
                    version: a.version,
                    weight: 100,
                }];
                p.serve_routes(routes, chrono::Utc::now());
            })
        }
        ModelsCommand::Split(a) => {
            let kind = parse_model(&a.model)?;
            let versions: Vec<u64> = a.routes.iter().map(|r| r.version).collect();
            change_policy(&a.models, kind, &versions, |p| {
                p.serve_routes(a.routes.clone(), chrono::Utc::now());
                p.auto = a.auto;
            })
        }
        ModelsCommand::Shadow(a) => {
            let kind = parse_model(&a.model)?;
            let versions: Vec<u64> = a.version.into_iter().collect();
            change_policy(&a.models, kind, &versions, |p| p.shadow = a.version)
        }
        ModelsCommand::Rollback(a) => {
            let kind = parse_model(&a.model)?;
            let repo = repository(&a.models)?;
            let current = block_on(repo.serving(kind))?;
            let versions = block_on(repo.versions(kind))?;
            let policy = match current {
                Some(mut p) if !p.history.is_empty() => {
                    p.routes = p.history.pop().expect("not empty");
                    p.since = Some(chrono::Utc::now());
                    p.auto = false;
                    p
                }
                current => {
                    // No history: step back from the serving version to the
                    // newest version before it.
                    let serving = block_on(serving_version(&repo, kind))?
                        .with_context(|| format!("no {kind} model in {}", repo.describe()))?;
                    let previous = versions
                        .iter()
                        .rev()
                        .find(|v| **v < serving)
                        .copied()
                        .with_context(|| {
                            format!(
                                "{kind} v{serving} is the oldest version: nothing to roll back to"
                            )
                        })?;
                    ServingPolicy {
                        routes: vec![Route {
                            version: previous,
                            weight: 100,
                        }],
                        shadow: current.as_ref().and_then(|c| c.shadow),
                        since: Some(chrono::Utc::now()),
                        decisions: current.map(|c| c.decisions).unwrap_or_default(),
                        ..Default::default()
                    }
                }
            };
            block_on(repo.set_serving(kind, &policy))?;
            println!("{kind}: serving {}", describe_policy(&policy));
            Ok(())
        }
    }
}

/// Change `serving.json` after checking every version it will name exists.
fn change_policy(
    settings: &ModelStoreSettings,
    kind: ModelKind,
    versions: &[u64],
    change: impl FnOnce(&mut ServingPolicy),
) -> anyhow::Result<()> {
    let repo = repository(settings)?;
    block_on(async {
        let existing = repo.versions(kind).await?;
        for v in versions {
            anyhow::ensure!(
                existing.contains(v),
                "{kind} has no version {v} in {} (versions: {existing:?})",
                repo.describe()
            );
        }
        let mut policy = match repo.serving(kind).await? {
            Some(p) => p,
            // Nothing pinned yet: the newest version is what serves now.
            None => ServingPolicy {
                routes: existing
                    .last()
                    .map(|v| {
                        vec![Route {
                            version: *v,
                            weight: 100,
                        }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            },
        };
        change(&mut policy);
        repo.set_serving(kind, &policy)
            .await
            .with_context(|| format!("writing {kind}/serving.json"))?;
        println!("{kind}: serving {}", describe_policy(&policy));
        Ok(())
    })
}

fn describe_policy(p: &ServingPolicy) -> String {
    let total: u32 = p.routes.iter().map(|r| r.weight).sum();
    let mut s = p
        .routes
        .iter()
        .map(|r| {
            format!(
                "v{} ({:.0}%)",
                r.version,
                100.0 * r.weight as f64 / total.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(v) = p.shadow {
        s.push_str(&format!(", shadow v{v}"));
    }
    s
}

fn quantize(q: QuantizeArgs) -> anyhow::Result<()> {
    let kind = ModelKind::parse(&q.model).context("unknown model")?;
    let repo = repository(&q.run.models)?;
    let version = match q.version {
        Some(v) => v,
        None => block_on(repo.latest(kind))?
            .with_context(|| format!("no {kind} model in {}", repo.describe()))?,
    };
    let (onnx, meta) = block_on(repo.read(kind, version))?;
    anyhow::ensure!(
        meta.quantization.is_none(),
        "{kind} v{version} is already an INT8 variant; name a float version with --version"
    );
    let (int8, summary) = ml_backend::quantize::quantize_dynamic(&onnx)?;
    let backend = ml_server::app::backend(&q.run.backend)?;
    let float_model = backend.load(&onnx, &meta)?;
    let int8_model = backend
        .load(&int8, &meta)
        .context("the INT8 graph does not load")?;
    let width = meta.features.len();
    let data = load_app_data(&q.run.data, &q.run.demo, &q.run.training)?;
    let td = training_data_for(&data, &meta, &q.run.interests, q.run.backend.enable_gpu)?;
    let (metric, float_metric) = holdout_metric(&meta, float_model.clone(), &td)?;
    let (_, int8_metric) = holdout_metric(&meta, int8_model.clone(), &td)?;
    let mut out = meta.clone();
    out.created_at = chrono::Utc::now();
    out.producer = format!("{} (INT8 of v{version})", meta.producer);
    out.quantization = Some(ml_backend::meta::Quantization {
        scheme: "int8-dynamic".into(),
        source_version: version,
        float_bytes: onnx.len(),
        int8_bytes: int8.len(),
        metric: metric.clone(),
        float_metric,
        int8_metric,
        backend: backend.name().into(),
        float_us_batch1: median_call_us(float_model.as_ref(), width, 1)?,
        int8_us_batch1: median_call_us(int8_model.as_ref(), width, 1)?,
        float_us_batch32: median_call_us(float_model.as_ref(), width, 32)?,
        int8_us_batch32: median_call_us(int8_model.as_ref(), width, 32)?,
    });
    let written = block_on(repo.write(&int8, out))?;
    let qz = written.quantization.as_ref().expect("just set");
    println!(
        "{kind} v{} = INT8 of v{version} ({} MatMuls quantized), latency on {}:",
        written.version, summary.matmuls, qz.backend
    );
    println!(
        "| | float v{version} | INT8 v{} | float ÷ INT8 |",
        written.version
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| file bytes | {} | {} | {:.2} |",
        qz.float_bytes,
        qz.int8_bytes,
        qz.float_bytes as f64 / qz.int8_bytes as f64
    );
    println!(
        "| held-out {metric} | {:.4} | {:.4} | {:.4} |",
        qz.float_metric,
        qz.int8_metric,
        qz.float_metric / qz.int8_metric
    );
    for (b, f, i) in [
        (1, qz.float_us_batch1, qz.int8_us_batch1),
        (32, qz.float_us_batch32, qz.int8_us_batch32),
    ] {
        println!(
            "| µs per call, batch {b} | {f:.1} | {i:.1} | {:.2} |",
            f / i
        );
    }
    Ok(())
}

/// Median microseconds of one model call on `rows` rows.
fn median_call_us(
    model: &dyn ml_backend::LoadedModel,
    width: usize,
    rows: usize,
) -> anyhow::Result<f64> {
    let x: Vec<f32> = (0..width * rows)
        .map(|i| ((i * 7919) % 100) as f32 / 100.0)
        .collect();
    for _ in 0..50 {
        model.run(&x, rows)?;
    }
    let mut t: Vec<f64> = (0..400)
        .map(|_| {
            let t0 = Instant::now();
            model
                .run(&x, rows)
                .map(|_| t0.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// The held-out metric of a served model version on the app data: (name, value).
pub fn holdout_metric(
    meta: &ModelMeta,
    model: std::sync::Arc<dyn ml_backend::LoadedModel>,
    td: &TrainingData,
) -> anyhow::Result<(String, f64)> {
    let split = meta
        .training_window
        .as_ref()
        .context("model.json has no training window")?
        .holdout_from;
    let mut predict = onnx_predictor(model);
    Ok(match meta.model {
        ModelKind::TravelMatch => {
            let ev = ml_train::eval::evaluate_match(td, split, &mut predict, None)?;
            ("auc".into(), ev.model.auc)
        }
        ModelKind::NotificationTiming => {
            use ml_train::timing_eval::*;
            let feats = td.user_features(split);
            let pop = ml_core::features::PopulationActivity::from_users(feats.values());
            let held = demo_holdout(td.data, &feats, split, None);
            let (ev, _) = evaluate_slots("app data", &held, &pop, &mut predict)?;
            ("share_within_1h".into(), ev.model.share_within_1h)
        }
        ModelKind::Recommendation => {
            // The served recommender is refit on all the data, so its quality on
            // the held-out quarter is in-sample: comparable between float and
            // INT8, not with the trainer's out-of-sample figure.
            let (ndcg, _, _) = ml_train::recommender::rec_period_quality(td, split, |x, n| {
                predict(x, n).map(|mut o| o.swap_remove(0))
            })?;
            ("ndcg_at_10_in_sample".into(), ndcg)
        }
    })
}
