//! The model repository: `{root}/{model}/{version}/model.onnx` + `model.json`.
//! Versions are positive integers; writing a version is atomic (a hidden temp
//! folder renamed into place), so a reader never sees half a model.

use crate::{BackendError, ModelMeta};
use ml_core::train::ModelKind;
use std::path::{Path, PathBuf};

/// Where model versions live. The local folder is the embedded default.
pub trait ModelRepository: Send + Sync {
    /// Versions of a model, ascending.
    fn versions(&self, model: ModelKind) -> Result<Vec<u64>, BackendError>;
    /// The ONNX bytes and metadata of one version.
    fn read(&self, model: ModelKind, version: u64) -> Result<(Vec<u8>, ModelMeta), BackendError>;
    /// Store a new version (the next free number); returns its metadata.
    fn write(&self, onnx: &[u8], meta: ModelMeta) -> Result<ModelMeta, BackendError>;
    /// Where this repository is, for logs.
    fn describe(&self) -> String;
    /// The newest version, if any.
    fn latest(&self, model: ModelKind) -> Result<Option<u64>, BackendError> {
        Ok(self.versions(model)?.last().copied())
    }
}

/// A repository in a local folder (`MODEL_PATH`).
#[derive(Debug, Clone)]
pub struct LocalRepository {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalRepository {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of one model version.
    pub fn version_dir(&self, model: ModelKind, version: u64) -> PathBuf {
        self.root.join(model.as_str()).join(version.to_string())
    }
}

impl ModelRepository for LocalRepository {
    fn versions(&self, model: ModelKind) -> Result<Vec<u64>, BackendError> {
        let dir = self.root.join(model.as_str());
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut v: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.path().join("model.onnx").is_file() && e.path().join("model.json").is_file()
            })
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|v| *v > 0)
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn read(&self, model: ModelKind, version: u64) -> Result<(Vec<u8>, ModelMeta), BackendError> {
        let dir = self.version_dir(model, version);
        if !dir.is_dir() {
            return Err(BackendError::NotFound(format!("{model} version {version}")));
        }
        let onnx_path = dir.join("model.onnx");
        let meta_path = dir.join("model.json");
        let onnx = std::fs::read(&onnx_path).map_err(io(&onnx_path))?;
        let text = std::fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
        let meta: ModelMeta =
            serde_json::from_str(&text).map_err(|e| BackendError::InvalidMeta {
                path: meta_path.display().to_string(),
                reason: e.to_string(),
            })?;
        if meta.model != model || meta.version != version {
            return Err(BackendError::InvalidMeta {
                path: meta_path.display().to_string(),
                reason: format!(
                    "says {} version {}, stored as {model} version {version}",
                    meta.model, meta.version
                ),
            });
        }
        Ok((onnx, meta))
    }

    fn write(&self, onnx: &[u8], mut meta: ModelMeta) -> Result<ModelMeta, BackendError> {
        let model_dir = self.root.join(meta.model.as_str());
        std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
        let version = self.latest(meta.model)?.unwrap_or(0) + 1;
        meta.version = version;
        let tmp = model_dir.join(format!(".tmp-{version}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| BackendError::InvalidMeta {
            path: tmp.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(tmp.join("model.onnx"), onnx).map_err(io(&tmp))?;
        std::fs::write(tmp.join("model.json"), json).map_err(io(&tmp))?;
        let dest = self.version_dir(meta.model, version);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(meta)
    }

    fn describe(&self) -> String {
        format!("local folder {}", self.root.display())
    }
}
