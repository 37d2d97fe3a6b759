//! `model.json`: the contract of a model file beside its ONNX graph — signature,
//! feature names and order, metrics, training window and serving parameters.

use ml_core::model::{ModelKind, ModelParams, TrainingWindow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the `model.json` format.
pub const META_FORMAT: u32 = 1;

/// One tensor of the signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// Always `float32` for these models.
    pub dtype: String,
    /// `-1` marks the batch dimension.
    pub shape: Vec<i64>,
}

/// The ONNX signature: one `features` input, named outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Offline quality of the model on its held-out period, next to a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub metrics: BTreeMap<String, f64>,
    pub baseline: String,
    pub baseline_metrics: BTreeMap<String, f64>,
    pub train_rows: usize,
    pub holdout_rows: usize,
}

/// The contents of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: u32,
    pub model: ModelKind,
    pub version: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// What produced the file, e.g. `ml-service 0.1.0 trainer`.
    pub producer: String,
    pub signature: Signature,
    /// Input feature names in column order (must match the ONNX input width).
    pub features: Vec<String>,
    pub evaluation: Option<Evaluation>,
    pub training_window: Option<TrainingWindow>,
    #[serde(default)]
    pub params: ModelParams,
    /// Set on an INT8 variant written by `ml-service models quantize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// How an INT8 variant compares with the float version it came from, measured
/// when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// `int8-dynamic`: int8 weights per output column, activations per call.
    pub scheme: String,
    /// The float version quantized.
    pub source_version: u64,
    pub float_bytes: usize,
    pub int8_bytes: usize,
    /// The held-out metric, its value for the float and for the INT8 model.
    pub metric: String,
    pub float_metric: f64,
    pub int8_metric: f64,
    /// Median microseconds per model call at batch 1 and 32, float and INT8,
    /// on the backend named.
    pub backend: String,
    pub float_us_batch1: f64,
    pub int8_us_batch1: f64,
    pub float_us_batch32: f64,
    pub int8_us_batch32: f64,
}

impl ModelMeta {
    /// The signature of a model with `inputs` columns and these output widths.
    pub fn signature(inputs: usize, outputs: &[(&str, usize)]) -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "features".into(),
                dtype: "float32".into(),
                shape: vec![-1, inputs as i64],
            }],
            outputs: outputs
                .iter()
                .map(|(name, w)| TensorSpec {
                    name: (*name).into(),
                    dtype: "float32".into(),
                    shape: vec![-1, *w as i64],
                })
                .collect(),
        }
    }

    /// The signature every model of `kind` with these input names must have.
    pub fn signature_for(kind: ModelKind, features: &[String]) -> Signature {
        let items = features.iter().filter(|f| f.starts_with("item:")).count();
        let outputs: Vec<(&str, usize)> = kind
            .outputs()
            .into_iter()
            .map(|(n, w)| (n, if w == 0 { items } else { w }))
            .collect();
        Self::signature(features.len(), &outputs)
    }

    /// Destination ids of a recommendation model's columns, in order.
    pub fn items(&self) -> Vec<String> {
        self.features
            .iter()
            .filter_map(|f| f.strip_prefix("item:").map(str::to_string))
            .collect()
    }

    /// Check the metadata is what the service can serve for its model name.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != META_FORMAT {
            return Err(format!("unsupported model.json format {}", self.format));
        }
        match self.model {
            ModelKind::Recommendation => {
                let items = self.items();
                if items.is_empty()
                    || self.features[items.len()..] != ml_core::inputs::rec_profile_names()[..]
                {
                    return Err("feature names must be item:<destination id>… then the profile inputs (tag:…, budget:…, duration:…)".into());
                }
            }
            kind => {
                if self.features != kind.feature_names_for(&self.params.match_layout()) {
                    return Err(
                        "feature names or order differ from this service's feature code".into(),
                    );
                }
            }
        }
        if self.signature != Self::signature_for(self.model, &self.features) {
            return Err("signature differs from the one the service calls".into());
        }
        Ok(())
    }
}
