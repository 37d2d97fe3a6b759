//! The pure-Rust inference backend: tract, with a symbolic batch dimension so one
//! optimised plan serves any batch size.

use crate::{BackendError, InferenceBackend, LoadedModel, ModelMeta, Outputs};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// The tract backend (the embedded default).
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

#[derive(Debug)]
struct TractModel {
    name: String,
    plan: Arc<TypedRunnableModel>,
    inputs: usize,
    outputs: Vec<usize>,
}

impl InferenceBackend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, onnx: &[u8], meta: &ModelMeta) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let name = meta.model.as_str().to_string();
        let invalid = |reason: String| BackendError::InvalidModel {
            model: name.clone(),
            reason,
        };
        meta.validate().map_err(invalid)?;
        let inputs = meta.features.len();
        let outputs: Vec<usize> = meta
            .signature
            .outputs
            .iter()
            .map(|o| o.shape[1] as usize)
            .collect();
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| invalid(format!("{e:#}")))?;
        let model = TractModel {
            name: name.clone(),
            plan,
            inputs,
            outputs,
        };
        // Smoke test: a graph that does not take and give the declared shapes is
        // rejected here, at load, never at request time.
        let probe = vec![0f32; inputs * 2];
        let out = model
            .run(&probe, 2)
            .map_err(|e| invalid(format!("smoke test failed: {e}")))?;
        if out.iter().flatten().any(|v| !v.is_finite()) {
            return Err(invalid("smoke test produced non-finite outputs".into()));
        }
        Ok(Arc::new(model))
    }
}

impl LoadedModel for TractModel {
    fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
        if input.len() != rows * self.inputs {
            return Err(BackendError::Inference(format!(
                "{}: expected {} values ({} rows × {}), got {}",
                self.name,
                rows * self.inputs,
                rows,
                self.inputs,
                input.len()
            )));
        }
        let t = Tensor::from_shape(&[rows, self.inputs], input)
            .map_err(|e| BackendError::Inference(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(t.into()))
            .map_err(|e| BackendError::Inference(format!("{}: {e:#}", self.name)))?;
        if out.len() != self.outputs.len() {
            return Err(BackendError::Inference(format!(
                "{}: graph gave {} outputs, signature declares {}",
                self.name,
                out.len(),
                self.outputs.len()
            )));
        }
        out.iter()
            .zip(&self.outputs)
            .map(|(o, w)| {
                let v = o
                    .to_plain_array_view::<f32>()
                    .map_err(|e| BackendError::Inference(e.to_string()))?
                    .iter()
                    .copied()
                    .collect::<Vec<f32>>();
                if v.len() != rows * w {
                    return Err(BackendError::Inference(format!(
                        "{}: output has {} values, expected {}",
                        self.name,
                        v.len(),
                        rows * w
                    )));
                }
                Ok(v)
            })
            .collect()
    }
}
