//! What interest phrases mean to this service: nothing beyond their exact tag
//! names by default, or their soft tag profiles from the sentence-embedding
//! model (`EMBEDDING_MODEL_PATH`, cargo feature `embeddings`). Serving asks
//! for profiles of a user's interests when it computes their features (then
//! cached with them) and of a request's interests (cached by text inside the
//! embedder); training attaches the profile of every phrase in its data.

use anyhow::Context;
use ml_core::features::TagProfile;
use std::collections::HashMap;
use std::sync::Arc;

use crate::settings::InterestSettings;

/// The optional sentence-embedding model, shared by serving and training.
#[derive(Debug, Clone, Default)]
pub struct Interests {
    #[cfg(feature = "embeddings")]
    embedder: Option<Arc<ml_embed::Embedder>>,
}

impl Interests {
    /// Exact tag names only.
    pub fn exact() -> Self {
        Self::default()
    }

    /// Load the model the settings name, if any (a missing or broken model
    /// folder is an error: the operator asked for it).
    /// `gpu`: try the GPU first (ENABLE_GPU, in a `cuda` build).
    pub fn load(settings: &InterestSettings, gpu: bool) -> anyhow::Result<Self> {
        let Some(dir) = &settings.embedding_model_path else {
            return Ok(Self::exact());
        };
        // The embedding thread counts its work from the first batch (the
        // tags' own embeddings, then training's phrases): the recorder must
        // be installed before it starts.
        crate::telemetry::handle();
        load_embedder(dir, settings, gpu)
    }

    /// The embedding model's name, when one is loaded.
    pub fn encoder(&self) -> Option<&'static str> {
        #[cfg(feature = "embeddings")]
        if let Some(e) = &self.embedder {
            return Some(e.name());
        }
        None
    }

    /// The soft profile of a list of phrases: `Ok(None)` without a model or
    /// for an empty list; `Err` when the model could not answer in time, so
    /// the caller reads the exact names and does not cache the result.
    pub async fn profile(&self, phrases: &[String]) -> Result<Option<TagProfile>, String> {
        #[cfg(feature = "embeddings")]
        if let Some(e) = &self.embedder {
            if phrases.is_empty() {
                return Ok(None);
            }
            return match e.profiles(&[phrases]).await {
                Ok(mut v) => Ok(v.pop()),
                Err(err) => {
                    tracing::warn!(error = %err, "interests read by their exact names");
                    Err(err.to_string())
                }
            };
        }
        let _ = phrases;
        Ok(None)
    }

    /// The encoder's name and the soft profile of every phrase, for training
    /// semantic models: `None` without an embedding model. Runs off the async
    /// runtime (it blocks on the embedding thread's batches).
    pub fn phrase_profiles(
        &self,
        phrases: &[String],
    ) -> anyhow::Result<Option<(String, HashMap<String, TagProfile>)>> {
        #[cfg(feature = "embeddings")]
        if let Some(e) = &self.embedder {
            let t0 = std::time::Instant::now();
            let profiles = e
                .phrase_profiles(phrases)
                .context("embedding the interest phrases of the training data")?;
            tracing::info!(
                phrases = phrases.len(),
                ms = format!("{:.0}", t0.elapsed().as_secs_f64() * 1e3),
                device = e.device(),
                "interest phrases embedded for training"
            );
            return Ok(Some((e.name().to_string(), profiles)));
        }
        let _ = phrases;
        Ok(None)
    }
}

#[cfg(feature = "embeddings")]
fn load_embedder(
    dir: &std::path::Path,
    settings: &InterestSettings,
    gpu: bool,
) -> anyhow::Result<Interests> {
    let t0 = std::time::Instant::now();
    let model = ml_embed::MiniLm::load(dir, gpu)
        .or_else(|e| {
            if gpu {
                tracing::warn!(error = %e, "embedding on the CPU: the GPU is not usable");
                ml_embed::MiniLm::load(dir, false)
            } else {
                Err(e)
            }
        })
        .context("loading the embedding model (EMBEDDING_MODEL_PATH)")?;
    let embedder = ml_embed::Embedder::start(
        model,
        ml_embed::EmbedderConfig {
            timeout: std::time::Duration::from_millis(settings.embedding_timeout_ms),
            ..Default::default()
        },
    )
    .context("starting the embedding thread")?;
    tracing::info!(
        model = embedder.name(),
        device = embedder.device(),
        ms = format!("{:.0}", t0.elapsed().as_secs_f64() * 1e3),
        "interests are read by meaning"
    );
    Ok(Interests {
        embedder: Some(embedder),
    })
}

#[cfg(not(feature = "embeddings"))]
fn load_embedder(
    _dir: &std::path::Path,
    _settings: &InterestSettings,
    _gpu: bool,
) -> anyhow::Result<Interests> {
    anyhow::bail!("EMBEDDING_MODEL_PATH is set, but this build has no embedding support (build with --features embeddings)")
}
