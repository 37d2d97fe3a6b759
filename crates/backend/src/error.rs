//! The backend layer's error type.

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The ONNX file could not be parsed, optimised or does not match its
    /// `model.json` signature.
    #[error("invalid model {model}: {reason}")]
    InvalidModel { model: String, reason: String },
    /// A model run failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The inference queue is full; the caller should retry later.
    #[error("inference queue is full")]
    Overloaded,
    /// The inference threads are gone (shutdown).
    #[error("inference pool is shut down")]
    ShutDown,
    /// No such model or version in the repository.
    #[error("model not found: {0}")]
    NotFound(String),
    /// Reading or writing the repository failed.
    #[error("model repository I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The model store (local folder or S3) failed or timed out.
    #[error("model repository: {0}")]
    Storage(String),
    /// The inference runtime could not be loaded or started.
    #[error("inference runtime: {0}")]
    Runtime(String),
    /// A `model.json` that does not parse.
    #[error("invalid model.json at {path}: {reason}")]
    InvalidMeta { path: String, reason: String },
}

impl BackendError {
    /// The same failure, for each request of a batch that shared one model call.
    pub fn for_each_caller(&self) -> Self {
        match self {
            Self::Overloaded => Self::Overloaded,
            Self::ShutDown => Self::ShutDown,
            other => Self::Inference(other.to_string()),
        }
    }
}
