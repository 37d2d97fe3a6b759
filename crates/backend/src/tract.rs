//! The pure-Rust inference backend: tract, with a symbolic batch dimension so one
//! optimised plan serves any batch size.

use crate::{BackendError, InferenceBackend, LoadedModel, ModelMeta, Outputs};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

/// Run states kept per model for reuse: about one per inference thread.
const SPARE_STATES: usize = 8;

/// The tract backend (the embedded default).
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

#[derive(Debug)]
struct TractModel {
    name: String,
    plan: Arc<TypedRunnableModel>,
    /// Run states between runs. Spawning one per run (what `plan.run` does)
    /// allocates every node's value slot and op state each time, a fixed
    /// cost as large as the arithmetic of a small batch (issue 16).
    states: Mutex<Vec<TypedSimpleState>>,
    inputs: usize,
    outputs: Vec<usize>,
}

impl TractModel {
    /// One model call on a spare state (or a new one); the state goes back to
    /// the spares only after a run that succeeded, so a failed run cannot
    /// leave anything behind for the next.
    fn run_plan(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let spare = self.states.lock().map(|mut s| s.pop()).unwrap_or(None);
        let mut state = match spare {
            Some(s) => s,
            None => self.plan.spawn()?,
        };
        let out = state.run(tvec!(input))?;
        if let Ok(mut spares) = self.states.lock() {
            if spares.len() < SPARE_STATES {
                spares.push(state);
            }
        }
        Ok(out)
    }
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
            states: Mutex::new(Vec::new()),
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
            .run_plan(t.into())
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
                // A tensor's storage is contiguous: one copy of its slice, with
                // no array view between (building one, and walking it element
                // by element, took a tenth of the recommendation endpoint's
                // CPU, and the view alone a twelfth of a match's model call).
                let v = o
                    .try_as_plain_ram()
                    .and_then(|plain| plain.as_slice::<f32>().map(<[f32]>::to_vec))
                    .map_err(|e| BackendError::Inference(e.to_string()))?;
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
