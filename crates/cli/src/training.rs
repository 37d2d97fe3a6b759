//! Training as the commands run it: what a training run reads, the
//! interests' meaning attached when an embedding model is loaded, and the
//! first start's training of every model the repository lacks.

use crate::args::{DemoSettings, TrainingSettings};
use crate::store::training_sample;
use anyhow::Context;
use ml_backend::{InferenceBackend, ModelMeta, ModelRepository};
use ml_core::model::ModelKind;
use ml_server::app::Access;
use ml_server::interests::Interests;
use ml_server::settings::{DataSettings, InterestSettings};
use ml_train::publish::train_and_publish;
use ml_train::train::{SemanticInterests, TrainingData};
use std::time::Instant;

/// The data as a model version reads it: with its interests' meaning when
/// it was trained on them (which needs the same embedding model here).
pub fn training_data_for<'a>(
    data: &'a ml_core::types::Dataset,
    meta: &ModelMeta,
    settings: &InterestSettings,
    gpu: bool,
) -> anyhow::Result<TrainingData<'a>> {
    let mut td = TrainingData::new(data);
    // The rows the model reads: with its own rarity table, or none.
    td.free_text = meta.params.interest_rarity.is_some();
    if let Some(r) = &meta.params.interest_rarity {
        td.rarity = r.clone();
    }
    if let Some(wanted) = &meta.params.interest_encoder {
        let interests = Interests::load(settings, gpu)?;
        anyhow::ensure!(
            interests.encoder() == Some(wanted.as_str()),
            "{} v{} reads interests embedded by {wanted}: set EMBEDDING_MODEL_PATH to that model",
            meta.model,
            meta.version
        );
        attach_interests(&interests, &mut td)?;
    }
    Ok(td)
}

/// Make `td` train semantic models when an embedding model is loaded: every
/// interest phrase in the data gets its soft tag profile (embedded in
/// batches, off the async runtime).
pub fn attach_interests(interests: &Interests, td: &mut TrainingData) -> anyhow::Result<()> {
    if interests.encoder().is_none() {
        // Exact tag names: no phrase needs a profile (nor to be listed).
        return Ok(());
    }
    if let Some((encoder, phrases)) = interests.phrase_profiles(&td.interest_phrases())? {
        td.semantic = Some(SemanticInterests { encoder, phrases });
    }
    Ok(())
}

/// Train and write version 1 of every model the repository lacks, from the
/// store `open` opens (the demo dataset on a fresh machine).
pub fn train_missing(
    data_settings: &DataSettings,
    demo: &DemoSettings,
    training: &TrainingSettings,
    repo: &ModelRepository,
    backend: &dyn InferenceBackend,
    interests: &Interests,
) -> anyhow::Result<()> {
    let handle = tokio::runtime::Handle::current();
    let mut missing = vec![];
    for k in ModelKind::ALL {
        if handle
            .block_on(repo.latest(k))
            .with_context(|| format!("listing {k} in {}", repo.describe()))?
            .is_none()
        {
            missing.push(k);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let t0 = Instant::now();
    tracing::info!(models = ?missing.iter().map(|k| k.as_str()).collect::<Vec<_>>(), repository = %repo.describe(), "no trained models found: training them now");
    // Training reads whole tables: a session without the request path's
    // per-call deadline.
    let store = crate::store::open(data_settings, demo, Access::Read)?;
    let data = handle
        .block_on(store.load_sample(training_sample(training)))
        .context("loading the app data for training")?;
    let mut td = TrainingData::new(&data);
    td.rec_max_items = training.rec_max_destinations;
    td.rec_dense_max = training.rec_dense_max;
    attach_interests(interests, &mut td)?;
    for k in missing {
        // Data that cannot train a model (an imported dataset without match
        // outcomes, say) leaves that model out: its endpoint answers 503 and
        // /health says degraded, while the others serve.
        if let Err(e) = train_and_publish(k, &td, 1, repo, backend) {
            tracing::error!(model = %k, error = format!("{e:#}"), "cannot train this model on this data");
        }
    }
    tracing::info!(
        seconds = format!("{:.2}", t0.elapsed().as_secs_f64()),
        "training finished"
    );
    Ok(())
}
