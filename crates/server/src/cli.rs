//! The subcommands: `serve`, `train`, `data migrate|demo`, `models list`.

use crate::app;
use crate::report::{self, RobustnessRow};
use crate::settings::{Cli, Command, DataCommand, EvalArgs, ModelsCommand, Settings};
use crate::training::{summary, train_and_publish};
use anyhow::Context;
use ml_backend::tract::TractBackend;
use ml_backend::{InferenceBackend as _, LocalRepository, ModelMeta, ModelRepository as _};
use ml_core::generator::{generate, GeneratorConfig};
use ml_core::train::{ModelKind, TrainingData};
use std::time::Instant;

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Run one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(s) => serve(s),
        Command::Train(t) => {
            init_tracing(&t.settings.log_level);
            let kinds: Vec<ModelKind> = if t.models.is_empty() {
                ModelKind::ALL.to_vec()
            } else {
                t.models
                    .iter()
                    .filter_map(|m| ModelKind::parse(m))
                    .collect()
            };
            let store = app::open_store(&t.settings)?;
            let data = store.load_dataset()?;
            let td = TrainingData::new(&data);
            let repo = LocalRepository::new(&t.settings.model_path);
            for k in kinds {
                let meta = train_and_publish(k, &td, t.seed, &repo, &TractBackend)?;
                let baseline = meta
                    .evaluation
                    .as_ref()
                    .map(|e| e.baseline.clone())
                    .unwrap_or_default();
                println!(
                    "{k} v{}: {} — baseline: {baseline}",
                    meta.version,
                    summary(&meta)
                );
            }
            Ok(())
        }
        Command::Eval(e) => eval(e),
        Command::Data { command } => match command {
            DataCommand::Migrate(s) => {
                init_tracing(&s.log_level);
                let store = ml_data::SqliteStore::open(&s.sqlite_path, 1)?;
                println!("schema of {} is up to date", store.path().display());
                Ok(())
            }
            DataCommand::Demo(d) => {
                init_tracing(&d.settings.log_level);
                let s = &d.settings;
                let store = ml_data::SqliteStore::open(&s.sqlite_path, 1)?;
                if store.count_profiles()? > 0 {
                    anyhow::ensure!(
                        d.replace,
                        "{} already holds data; pass --replace to overwrite it",
                        s.sqlite_path.display()
                    );
                    drop(store);
                    std::fs::remove_file(&s.sqlite_path).context("removing the old database")?;
                    for ext in ["-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{ext}", s.sqlite_path.display()));
                    }
                }
                let store = ml_data::SqliteStore::open(&s.sqlite_path, 1)?;
                let t0 = Instant::now();
                let data = generate(&GeneratorConfig {
                    users: d.users.unwrap_or(s.demo_users),
                    seed: d.seed.unwrap_or(s.demo_seed),
                    ..Default::default()
                });
                let generated = t0.elapsed();
                store.write_dataset(&data)?;
                println!(
                    "{} users, {} interactions, {} match outcomes, {} activity events, {} notifications: generated in {:.2}s, written in {:.2}s to {}",
                    data.profiles.len(),
                    data.interactions.len(),
                    data.matches.len(),
                    data.activity.len(),
                    data.notifications.len(),
                    generated.as_secs_f64(),
                    (t0.elapsed() - generated).as_secs_f64(),
                    s.sqlite_path.display()
                );
                Ok(())
            }
        },
        Command::Models {
            command: ModelsCommand::List(s),
        } => {
            let repo = LocalRepository::new(&s.model_path);
            for k in ModelKind::ALL {
                for v in repo.versions(k)? {
                    match repo.read(k, v) {
                        Ok((_, meta)) => println!(
                            "{k} v{v} ({}): {}",
                            meta.created_at.format("%Y-%m-%d %H:%M"),
                            summary(&meta)
                        ),
                        Err(e) => println!("{k} v{v}: unreadable ({e})"),
                    }
                }
            }
            Ok(())
        }
    }
}

/// A predictor over a loaded ONNX model, for the evaluation code.
fn onnx_predictor(
    model: std::sync::Arc<dyn ml_backend::LoadedModel>,
) -> impl FnMut(&[f32], usize) -> Result<Vec<Vec<f32>>, ml_core::CoreError> {
    move |x, n| {
        model
            .run(x, n)
            .map_err(|e| ml_core::CoreError::ModelMismatch(e.to_string()))
    }
}

fn eval(e: EvalArgs) -> anyhow::Result<()> {
    init_tracing(&e.settings.log_level);
    let kind = ModelKind::parse(&e.model).context("unknown model")?;
    let repo = LocalRepository::new(&e.settings.model_path);
    let version = repo
        .latest(kind)?
        .with_context(|| format!("no {kind} model in {}", repo.describe()))?;
    let (bytes, meta) = repo.read(kind, version)?;
    if kind != ModelKind::TravelMatch {
        // The recommendation and timing evaluations live in model.json for now.
        println!("{kind} v{version}: {}", summary(&meta));
        return Ok(());
    }
    let window = meta
        .training_window
        .clone()
        .context("model.json has no training window")?;
    let model = TractBackend.load(&bytes, &meta)?;
    let store = app::open_store(&e.settings)?;
    let data = store.load_dataset()?;
    let td = TrainingData::new(&data);
    let mut predict = onnx_predictor(model);
    let ev = ml_core::eval::evaluate_match(&td, window.holdout_from, &mut predict, None)?;
    println!(
        "{kind} v{version} on {} held-out pairs (from {}):",
        ev.holdout_rows, window.holdout_from
    );
    println!("{}", report::metrics_table(&ev));
    let mut rows = vec![];
    if e.robustness {
        for (setting, cfg) in GeneratorConfig::robustness_settings(e.robustness_scale) {
            let t0 = Instant::now();
            let (d, truth) = ml_core::generator::generate_with_truth(&cfg);
            let td = TrainingData::new(&d);
            let art = ml_core::train::train_match(&td, 1)?;
            let m = ModelMeta::from_artifact(&art, 1);
            let model = TractBackend.load(&ml_backend::export::to_onnx(&art), &m)?;
            let mut predict = onnx_predictor(model);
            let evaluation = ml_core::eval::evaluate_match(
                &td,
                art.window.holdout_from,
                &mut predict,
                Some(&truth.matches),
            )?;
            tracing::info!(setting = %setting, seconds = format!("{:.1}", t0.elapsed().as_secs_f64()), "robustness setting evaluated");
            rows.push(RobustnessRow {
                setting,
                users: cfg.users,
                evaluation,
            });
        }
        println!("{}", report::robustness_table(&rows));
    }
    if let Some(dir) = &e.report {
        let source = format!(
            "{} ({} users), {kind} v{version}",
            e.settings.sqlite_path.display(),
            data.profiles.len()
        );
        report::write_match_report(dir, &source, &ev, &rows)
            .with_context(|| format!("writing the report to {}", dir.display()))?;
        println!(
            "report written to {}",
            dir.join("travel_match.md").display()
        );
    }
    Ok(())
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    init_tracing(&settings.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let s = settings.clone();
        let predictor = tokio::task::spawn_blocking(move || app::prepare(&s)).await??;
        let addr = std::net::SocketAddr::new(settings.host, settings.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, "listening");
        app::run(
            listener,
            predictor,
            settings.max_body_bytes,
            app::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}
