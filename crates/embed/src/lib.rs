//! Sentence embeddings for interests: all-MiniLM-L6-v2 (BERT, 6 layers,
//! 384 dimensions, mean pooling, unit length) run with candle, on the CPU or,
//! with the `cuda` feature, an NVIDIA GPU.
//!
//! [`MiniLm`] is the model itself (load, tokenize, encode a batch). The
//! service never calls it on an async thread: [`Embedder`] owns it on one
//! dedicated OS thread behind a bounded queue, batches what is queued, and
//! caches each phrase's soft tag profile by its text, so a phrase is encoded
//! once per process. The domain side (what a profile is, how cosines map to
//! tag membership) is `ml_core::features::TagSpace`.

mod embedder;
mod model;

pub use embedder::{Embedder, EmbedderConfig};
pub use model::{MiniLm, MODEL_NAME};

/// Errors of the embedding layer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model folder lacks a file or holds one that does not parse.
    #[error("cannot load the embedding model from {path}: {reason}")]
    Load { path: String, reason: String },
    /// Tokenization or the forward pass failed.
    #[error("embedding failed: {0}")]
    Compute(String),
    /// The queue in front of the embedding thread is full.
    #[error("the embedding queue is full")]
    Overloaded,
    /// No answer within the configured time.
    #[error("embedding took longer than {0} ms")]
    Timeout(u64),
    /// The embedding thread has stopped.
    #[error("the embedding thread has stopped")]
    Stopped,
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Compute(e.to_string())
    }
}
