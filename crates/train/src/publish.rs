//! Train, check and publish models: the one routine `train` and the first start
//! of `serve` share. A model is written only after its ONNX graph, loaded by the
//! serving backend, reproduces the trainer's own outputs.

use crate::export::{self, check_parity};
use crate::train::TrainingData;
use crate::train_model as train;
use anyhow::Context;
use ml_backend::{InferenceBackend, ModelMeta, ModelRepository};
use ml_core::model::ModelKind;
use std::time::Instant;

/// Train `kind`, verify the export, and write it as the next version. Runs
/// off the runtime's threads (it blocks on the repository write).
pub fn train_and_publish(
    kind: ModelKind,
    td: &TrainingData,
    seed: u64,
    repo: &ModelRepository,
    backend: &dyn InferenceBackend,
) -> anyhow::Result<ModelMeta> {
    let t0 = Instant::now();
    let art = train(kind, td, seed).with_context(|| format!("training {kind}"))?;
    let onnx = export::to_onnx(&art);
    let meta = export::meta_of(&art, 0);
    check_parity(&art, &onnx, &meta, backend)
        .with_context(|| format!("checking the exported {kind}"))?;
    let meta = tokio::runtime::Handle::current()
        .block_on(repo.write(&onnx, meta))
        .with_context(|| format!("writing {kind} to {}", repo.describe()))?;
    tracing::info!(
        model = %kind,
        version = meta.version,
        seconds = format!("{:.2}", t0.elapsed().as_secs_f64()),
        holdout = %summary(&meta),
        "trained"
    );
    Ok(meta)
}

/// "metric value (baseline value)" for each held-out metric.
pub fn summary(meta: &ModelMeta) -> String {
    let Some(e) = &meta.evaluation else {
        return "no evaluation".into();
    };
    e.metrics
        .iter()
        .map(|(k, v)| match e.baseline_metrics.get(k) {
            Some(b) => format!("{k} {v:.4} (baseline {b:.4})"),
            None => format!("{k} {v:.4}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
