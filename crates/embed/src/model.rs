//! all-MiniLM-L6-v2 on candle: the files (`model.safetensors`,
//! `tokenizer.json`, `config.json`) from `scripts/fetch-embedding-model.sh`,
//! and a batch forward pass with mean pooling over the attention mask.

use crate::EmbedError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

/// The name models trained on these embeddings record.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The sentence-embedding model, ready to encode.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("device", &self.device_name())
            .finish()
    }
}

impl MiniLm {
    /// Load the model from a folder. `gpu` asks for CUDA device 0, which
    /// needs a build with the `cuda` feature; without it the call fails
    /// rather than silently running on the CPU.
    pub fn load(dir: &Path, gpu: bool) -> Result<Self, EmbedError> {
        let load_err = |reason: String| EmbedError::Load {
            path: dir.display().to_string(),
            reason,
        };
        let device = if gpu { cuda_device()? } else { Device::Cpu };
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .map_err(|e| load_err(format!("config.json: {e}")))?,
        )
        .map_err(|e| load_err(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        // The file pads every text to 128 tokens; a batch only needs its
        // longest, and the mean pooling below ignores the padding anyway.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .map_err(|e| load_err(format!("model.safetensors: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| load_err(format!("weights: {e}")))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// "cpu" or "cuda".
    pub fn device_name(&self) -> &'static str {
        if self.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// Unit-length embeddings of texts, in order (texts over 128 tokens are
    /// truncated, as the model was trained).
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let enc = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| EmbedError::Compute(format!("tokenizing: {e}")))?;
        let rows = enc.len();
        let len = enc[0].get_ids().len();
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            enc.iter().flat_map(|e| f(e).iter().copied()).collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, len), &self.device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, len), &self.device)?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (rows, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens, then unit length.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = mean.broadcast_div(&norm)?;
        Ok(unit.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device, EmbedError> {
    Device::new_cuda(0).map_err(|e| EmbedError::Load {
        path: "cuda:0".into(),
        reason: e.to_string(),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device, EmbedError> {
    Err(EmbedError::Load {
        path: "cuda:0".into(),
        reason: "this build has no CUDA support (build with --features cuda)".into(),
    })
}
