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
        let name = meta.model.as_str();
        let invalid = |reason: String| crate::invalid_model(name, reason);
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
            name: name.to_string(),
            plan,
            inputs,
            outputs,
        };
        crate::smoke_test(Arc::new(model), name, inputs)
    }
}

impl LoadedModel for TractModel {
    fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
        crate::check_input(&self.name, input, rows, self.inputs)?;
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
                let view = o
                    .to_plain_array_view::<f32>()
                    .map_err(|e| BackendError::Inference(e.to_string()))?;
                // Outputs are contiguous: one copy of the slice, not a walk of
                // the view element by element (which took a tenth of the
                // recommendation endpoint's CPU).
                let v = match view.as_slice() {
                    Some(s) => s.to_vec(),
                    None => view.iter().copied().collect::<Vec<f32>>(),
                };
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
