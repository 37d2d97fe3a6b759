//! Model files and inference: `model.json`, the model repository
//! (`{root}/{model}/{version}/model.onnx` + `model.json`), the inference
//! backend trait with its pure-Rust tract implementation (and ONNX Runtime),
//! the pool of dedicated inference threads the async server hands work to,
//! and each model's batcher. Exporting trained networks is the training
//! crate's (`ml-train`); this crate only reads and runs graphs.

pub mod batcher;
pub mod error;
pub mod linear;
pub mod meta;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod pool;
pub mod quantize;
pub mod repository;
pub mod rows;
pub mod tract;

pub use batcher::{BatchConfig, BatchObserver, Batcher};
pub use error::BackendError;
pub use meta::ModelMeta;
pub use pool::{InferencePool, Outputs};
pub use repository::{Desired, ModelRepository, Route, S3Config, ServingPolicy};

use std::sync::Arc;

/// One loaded model, ready to run. Implementations are immutable after loading,
/// so one instance serves every inference thread.
pub trait LoadedModel: Send + Sync + std::fmt::Debug {
    /// Run `rows` rows of the `features` input (row-major); returns each output,
    /// flattened row-major, in the order of the model's signature.
    fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError>;
}

/// An inference backend: turns an ONNX file into a runnable model.
pub trait InferenceBackend: Send + Sync {
    /// A short name for logs and health, e.g. `tract`.
    fn name(&self) -> &'static str;
    /// Load and check an ONNX file against its declared signature.
    fn load(
        &self,
        onnx: &[u8],
        meta: &ModelMeta,
    ) -> Result<std::sync::Arc<dyn LoadedModel>, BackendError>;
    /// Whether this backend runs on a GPU.
    fn gpu(&self) -> bool {
        false
    }
}

/// The error of a graph that cannot be served as `model`.
pub(crate) fn invalid_model(model: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidModel {
        model: model.to_string(),
        reason: reason.into(),
    }
}

/// Refuse an input that is not `rows` rows of `width` values.
pub(crate) fn check_input(
    model: &str,
    input: &[f32],
    rows: usize,
    width: usize,
) -> Result<(), BackendError> {
    if input.len() == rows * width {
        return Ok(());
    }
    Err(BackendError::Inference(format!(
        "{model}: expected {} values ({rows} rows × {width}), got {}",
        rows * width,
        input.len()
    )))
}

/// The smoke test every backend runs at load: two rows of zeros must give
/// finite outputs of the declared shapes, so a graph that does not fit its
/// signature is refused at load, never at request time.
pub(crate) fn smoke_test(
    model: Arc<dyn LoadedModel>,
    name: &str,
    width: usize,
) -> Result<Arc<dyn LoadedModel>, BackendError> {
    let out = model
        .run(&vec![0f32; width * 2], 2)
        .map_err(|e| invalid_model(name, format!("smoke test failed: {e}")))?;
    if out.iter().flatten().any(|v| !v.is_finite()) {
        return Err(invalid_model(
            name,
            "smoke test produced non-finite outputs",
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests;
