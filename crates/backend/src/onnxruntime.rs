//! The ONNX Runtime backend (cargo feature `onnxruntime`): the `ort` crate with
//! the runtime loaded from a shared library at start-up (`ORT_DYLIB_PATH`), never
//! downloaded at build time. CPU by default; with `gpu` it asks for the CUDA
//! execution provider and falls back to CPU, with a warning, when CUDA cannot
//! be used, so `gpu()` is true only when CUDA really runs the models.

use crate::{BackendError, InferenceBackend, LoadedModel, ModelMeta, Outputs};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How the ONNX Runtime backend runs.
#[derive(Debug, Clone)]
pub struct OrtConfig {
    /// The `libonnxruntime.so` to load.
    pub dylib: PathBuf,
    /// Intra-op threads of each session. One is right for these small graphs:
    /// the service already runs one model call per inference thread, and more
    /// threads per call oversubscribe the cores.
    pub intra_threads: usize,
    /// Sessions per model, so that that many inference threads run it at once
    /// (an `ort` session runs one call at a time through `&mut`).
    pub sessions: usize,
    /// Ask for the CUDA execution provider.
    pub gpu: bool,
}

/// The ONNX Runtime backend.
#[derive(Debug)]
pub struct OrtBackend {
    config: OrtConfig,
    env: Environment,
    /// Whether CUDA is active (asked for and registered).
    cuda: AtomicBool,
    version: String,
}

/// Load the runtime library and create its environment, once per process (a
/// second, different path is refused: one library per process).
fn load_library(path: &Path) -> Result<Environment, BackendError> {
    static LOADED: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);
    if !path.is_file() {
        return Err(BackendError::Runtime(format!(
            "no ONNX Runtime library at {} (run scripts/fetch-onnxruntime.sh and set ORT_DYLIB_PATH to the path it prints)",
            path.display()
        )));
    }
    let mut loaded = LOADED
        .lock()
        .map_err(|_| BackendError::Runtime("ONNX Runtime start-up panicked".into()))?;
    if let Some((p, env)) = loaded.as_ref() {
        return if p == path {
            Ok(env.clone())
        } else {
            Err(BackendError::Runtime(format!(
                "ONNX Runtime is already loaded from {}; one library per process",
                p.display()
            )))
        };
    }
    let env = ort::init_from(path)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))
        .and_then(|b| {
            b.with_name("ml-service")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .map_err(BackendError::Runtime)?;
    *loaded = Some((path.to_path_buf(), env.clone()));
    Ok(env)
}

impl OrtBackend {
    /// Load the runtime and probe the execution provider. A missing or wrong
    /// library is one clear error here, at start-up.
    pub fn new(config: OrtConfig) -> Result<Self, BackendError> {
        let env = load_library(&config.dylib)?;
        let mut backend = Self {
            config,
            env,
            cuda: AtomicBool::new(false),
            version: String::new(),
        };
        // A session of a one-node graph proves the library works (and tells
        // whether CUDA registers) before any model is loaded.
        backend.session(&identity_graph())?;
        backend.version = ort::info()
            .split(',')
            .find_map(|p| p.trim().strip_prefix("git-branch="))
            .unwrap_or("unknown")
            .to_string();
        Ok(backend)
    }

    /// The ONNX Runtime build, e.g. `rel-1.31.1`.
    pub fn runtime_version(&self) -> &str {
        &self.version
    }

    fn session(&self, onnx: &[u8]) -> Result<Session, BackendError> {
        let err = |e: ort::Error| BackendError::Runtime(e.to_string());
        let mut builder = Session::builder(&self.env)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.into()))?
            .with_intra_threads(self.config.intra_threads.max(1))
            .map_err(|e| err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.into()))?;
        if self.config.gpu {
            let cuda = ort::ep::CUDA::default().build().error_on_failure();
            match builder.clone().with_execution_providers([cuda]) {
                Ok(b) => {
                    builder = b;
                    if !self.cuda.swap(true, Ordering::Relaxed) {
                        tracing::info!("ONNX Runtime: CUDA execution provider active");
                    }
                }
                Err(e) => {
                    if self.cuda.swap(false, Ordering::Relaxed) || first_warning() {
                        tracing::warn!(error = %e, "ENABLE_GPU=true but the CUDA execution provider cannot run here: using the CPU");
                    }
                }
            }
        }
        builder.commit_from_memory(onnx).map_err(err)
    }
}

/// True the first time it is called in this process.
fn first_warning() -> bool {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.set(()).is_ok()
}

/// A graph `features → Identity → out` with a batch dimension, for the probe.
fn identity_graph() -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb;
    let info = |name: &str| {
        use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![Dimension {
                            value: Some(Dim::DimParam("N".into())),
                            ..Default::default()
                        }],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "probe".into(),
            node: vec![pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[derive(Debug)]
struct OrtModel {
    name: String,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    inputs: usize,
    outputs: Vec<(String, usize)>,
}

impl InferenceBackend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, onnx: &[u8], meta: &ModelMeta) -> Result<Arc<dyn LoadedModel>, BackendError> {
        let name = meta.model.as_str();
        let invalid = |reason: String| crate::invalid_model(name, reason);
        meta.validate().map_err(invalid)?;
        let sessions = (0..self.config.sessions.max(1))
            .map(|_| self.session(onnx).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let model = OrtModel {
            name: name.to_string(),
            sessions,
            next: AtomicUsize::new(0),
            inputs: meta.features.len(),
            outputs: meta
                .signature
                .outputs
                .iter()
                .map(|o| (o.name.clone(), o.shape[1] as usize))
                .collect(),
        };
        let width = model.inputs;
        crate::smoke_test(Arc::new(model), name, width)
    }

    fn gpu(&self) -> bool {
        self.cuda.load(Ordering::Relaxed)
    }
}

impl LoadedModel for OrtModel {
    fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
        crate::check_input(&self.name, input, rows, self.inputs)?;
        let fail = |e: ort::Error| BackendError::Inference(format!("{}: {e}", self.name));
        // Take a free session if there is one, else wait for the next in turn.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        let mut guard = (0..n)
            .find_map(|i| self.sessions[(start + i) % n].try_lock().ok())
            .map(Ok)
            .unwrap_or_else(|| self.sessions[start % n].lock())
            .map_err(|_| BackendError::Inference(format!("{}: a session panicked", self.name)))?;
        let x = TensorRef::from_array_view(([rows, self.inputs], input)).map_err(fail)?;
        let out = guard.run(ort::inputs!["features" => x]).map_err(fail)?;
        self.outputs
            .iter()
            .map(|(name, w)| {
                let v = out.get(name.as_str()).ok_or_else(|| {
                    BackendError::Inference(format!("{}: no output {name}", self.name))
                })?;
                let (_, data) = v.try_extract_tensor::<f32>().map_err(fail)?;
                if data.len() != rows * w {
                    return Err(BackendError::Inference(format!(
                        "{}: output {name} has {} values, expected {}",
                        self.name,
                        data.len(),
                        rows * w
                    )));
                }
                Ok(data.to_vec())
            })
            .collect()
    }
}
