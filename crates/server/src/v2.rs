//! The Open Inference Protocol (KServe v2, as Triton speaks it) without a
//! transport: which models and versions exist, their tensors, and inference
//! on raw feature tensors through each version's batcher, with the same
//! admission, deadlines and metrics as the domain endpoints. `v2_http` (JSON
//! and binary tensors) and `grpc` (`inference.GRPCInferenceService`) speak it.
//!
//! A model is named as the service names it (`travel_match`,
//! `recommendation`, `notification_timing`); a version is a loaded version's
//! number (serving or shadow), and no version means the one that answers
//! most users.

use crate::error::ServiceError;
use crate::lifecycle::ServedModel;
use crate::service::Predictor;
use ml_core::model::ModelKind;
use std::sync::Arc;

/// How every model is served, as the protocol's metadata names it.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// The only tensor type of these models.
pub const FP32: &str = "FP32";
/// Most rows one inference request may carry.
pub const MAX_ROWS: usize = 1024;
/// The protocol extensions this server implements (the binary tensor data
/// extension applies to HTTP).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// One tensor of a model's signature.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    /// `-1` marks the batch dimension.
    pub shape: Vec<i64>,
}

/// A model's metadata: its loaded versions and its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// An input tensor as the transport decoded it (its data already FP32; see
/// [`check_datatype`]).
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// One output of an answer, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// The answer of an inference request and the version that gave it.
#[derive(Debug)]
pub struct Inferred {
    pub model: ModelKind,
    pub version: u64,
    pub outputs: Vec<OutputTensor>,
}

/// The server's name and version.
pub fn server_name() -> (&'static str, &'static str) {
    ("ml-service", env!("CARGO_PKG_VERSION"))
}

fn kind(name: &str) -> Result<ModelKind, ServiceError> {
    ModelKind::ALL
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| ServiceError::UnknownModel(shorten(name)))
}

/// Names come from paths and messages: never echo more than a short prefix.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The loaded version `version` of model `name`, or (None or empty) the
/// version that answers the largest share of users.
pub fn resolve(
    p: &Predictor,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ServedModel>, ServiceError> {
    let k = kind(name)?;
    let variants = p
        .models
        .get(k)
        .ok_or(ServiceError::ModelUnavailable(k.as_str()))?;
    match version.filter(|v| !v.is_empty()) {
        None => variants
            .routes
            .iter()
            .fold(None::<&(Arc<ServedModel>, u32)>, |best, r| match best {
                Some(b) if b.1 >= r.1 => Some(b),
                _ => Some(r),
            })
            .map(|(m, _)| Arc::clone(m))
            .ok_or(ServiceError::ModelUnavailable(k.as_str())),
        Some(v) => {
            let unknown = || ServiceError::UnknownModel(format!("{k} version {}", shorten(v)));
            let n: u64 = v.parse().map_err(|_| unknown())?;
            variants
                .versions()
                .find(|m| m.version() == n)
                .cloned()
                .ok_or_else(unknown)
        }
    }
}

/// Whether model `name` (at `version`) is loaded and the server is not
/// shutting down.
pub fn model_ready(p: &Predictor, name: &str, version: Option<&str>) -> bool {
    !p.draining() && resolve(p, name, version).is_ok()
}

/// Whether the server is ready: every model loaded, not shutting down.
pub fn server_ready(p: &Predictor) -> bool {
    p.models_loaded() && !p.draining()
}

fn tensors(specs: &[ml_backend::meta::TensorSpec]) -> Vec<TensorMeta> {
    specs
        .iter()
        .map(|t| TensorMeta {
            name: t.name.clone(),
            datatype: FP32,
            shape: t.shape.clone(),
        })
        .collect()
}

/// A model's metadata, for `version` (or the default one).
pub fn metadata(
    p: &Predictor,
    name: &str,
    version: Option<&str>,
) -> Result<ModelMetadata, ServiceError> {
    let m = resolve(p, name, version)?;
    let mut versions: Vec<u64> = p
        .models
        .get(m.meta.model)
        .map(|v| v.versions().map(|s| s.version()).collect())
        .unwrap_or_default();
    versions.sort_unstable();
    versions.dedup();
    Ok(ModelMetadata {
        name: m.meta.model.as_str().into(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: PLATFORM,
        inputs: tensors(&m.meta.signature.inputs),
        outputs: tensors(&m.meta.signature.outputs),
    })
}

/// The error for an input whose datatype is not the models' FP32; the
/// transports check it before decoding the data.
pub fn check_datatype(index: usize, datatype: &str) -> Result<(), ServiceError> {
    if datatype == FP32 {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            format!("inputs[{index}].datatype"),
            format!(
                "must be {FP32} (the model's input type), got {}",
                shorten(datatype)
            ),
        ))
    }
}

/// Run model `name` (at `version`) on `inputs`, answering the `requested`
/// outputs (None or empty: all) in the signature's order of the request.
pub async fn infer(
    p: &Predictor,
    name: &str,
    version: Option<&str>,
    inputs: Vec<InputTensor>,
    requested: &[String],
) -> Result<Inferred, ServiceError> {
    let m = resolve(p, name, version)?;
    let sig = &m.meta.signature;
    let expected = &sig.inputs[0];
    let width = expected.shape.last().copied().unwrap_or(0).max(0) as usize;
    let mut inputs = inputs;
    if inputs.len() != 1 || inputs[0].name != expected.name {
        let got: Vec<String> = inputs
            .iter()
            .map(|t| format!("{:?}", shorten(&t.name)))
            .collect();
        return Err(ServiceError::invalid(
            "inputs",
            format!(
                "expected one input tensor named {:?}, got [{}]",
                expected.name,
                got.join(", ")
            ),
        ));
    }
    let input = inputs.remove(0);
    let rows = match input.shape.as_slice() {
        [r, w] if *w == width as i64 && *r >= 1 && *r <= MAX_ROWS as i64 => *r as usize,
        _ => {
            return Err(ServiceError::invalid(
                "inputs[0].shape",
                format!(
                    "must be [rows, {width}] with 1 ≤ rows ≤ {MAX_ROWS}, got {:?}",
                    &input.shape[..input.shape.len().min(8)]
                ),
            ))
        }
    };
    if input.data.len() != rows * width {
        return Err(ServiceError::invalid(
            "inputs[0].data",
            format!(
                "has {} values; shape [{rows}, {width}] needs {}",
                input.data.len(),
                rows * width
            ),
        ));
    }
    if let Some(k) = input.data.iter().position(|x| !x.is_finite()) {
        return Err(ServiceError::invalid(
            "inputs[0].data",
            format!("value {k} is not a finite number"),
        ));
    }
    let names: Vec<&str> = sig.outputs.iter().map(|t| t.name.as_str()).collect();
    let mut wanted = vec![];
    for (i, r) in requested.iter().enumerate() {
        match names.iter().position(|n| n == r) {
            Some(k) => wanted.push(k),
            None => {
                return Err(ServiceError::invalid(
                    format!("outputs[{i}].name"),
                    format!(
                        "the model has no output {:?}; its outputs are {}",
                        shorten(r),
                        names.join(", ")
                    ),
                ))
            }
        }
    }
    if wanted.is_empty() {
        wanted = (0..names.len()).collect();
    }
    let out = match tokio::time::timeout(p.inference_timeout, m.batcher.run(input.data, rows)).await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(ServiceError::DeadlineExceeded {
                ms: p.inference_timeout.as_millis() as u64,
            })
        }
    };
    let outputs = wanted
        .into_iter()
        .map(|k| OutputTensor {
            name: names[k].into(),
            shape: vec![rows as i64, (out[k].len() / rows) as i64],
            data: out[k].clone(),
        })
        .collect();
    Ok(Inferred {
        model: m.meta.model,
        version: m.meta.version,
        outputs,
    })
}
