//! The backend's own checks: a corrupt or mismatched graph is refused at
//! load, a full inference queue refuses at once, and a missing ONNX Runtime
//! library is one clear error. Round trips of trained models (export, store,
//! load, run) are the training crate's tests (`crates/train/tests/backend.rs`).

use crate::tract::TractBackend;
use crate::*;
use ml_core::model::ModelKind;
use std::sync::Arc;

#[test]
fn a_corrupt_or_mismatched_model_is_rejected_at_load() {
    let meta = ModelMeta {
        format: meta::META_FORMAT,
        model: ModelKind::TravelMatch,
        version: 1,
        created_at: chrono::Utc::now(),
        producer: "test".into(),
        signature: ModelMeta::signature_for(
            ModelKind::TravelMatch,
            &ModelKind::TravelMatch.feature_names(),
        ),
        features: ModelKind::TravelMatch.feature_names(),
        evaluation: None,
        training_window: None,
        params: Default::default(),
        quantization: None,
    };
    let err = TractBackend.load(b"not an onnx file", &meta).unwrap_err();
    assert!(matches!(err, BackendError::InvalidModel { .. }), "{err}");
    let mut wrong = meta.clone();
    wrong.features.pop();
    let err = TractBackend.load(b"", &wrong).unwrap_err();
    assert!(err.to_string().contains("feature names"), "{err}");
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once() {
    #[derive(Debug)]
    struct Slow;
    impl LoadedModel for Slow {
        fn run(&self, _: &[f32], _: usize) -> Result<Outputs, BackendError> {
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(vec![])
        }
    }
    let pool = Arc::new(InferencePool::new(1, 1));
    let m: Arc<dyn LoadedModel> = Arc::new(Slow);
    let mut handles = vec![];
    for _ in 0..4 {
        let (p, m) = (Arc::clone(&pool), Arc::clone(&m));
        handles.push(tokio::spawn(async move { p.run(m, vec![], 0).await }));
    }
    let mut overloaded = 0;
    for h in handles {
        if matches!(h.await.unwrap(), Err(BackendError::Overloaded)) {
            overloaded += 1;
        }
    }
    // One runs, one waits in the queue of one; the rest are refused.
    assert!(overloaded >= 1, "no request was refused");
}

#[cfg(feature = "onnxruntime")]
#[test]
fn a_missing_or_wrong_runtime_library_is_one_clear_error() {
    let cfg = |dylib: std::path::PathBuf| onnxruntime::OrtConfig {
        dylib,
        intra_threads: 1,
        sessions: 1,
        gpu: false,
    };
    let err =
        onnxruntime::OrtBackend::new(cfg("/nonexistent/libonnxruntime.so".into())).unwrap_err();
    assert!(err.to_string().contains("fetch-onnxruntime.sh"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let err = onnxruntime::OrtBackend::new(cfg(fake))
        .unwrap_err()
        .to_string();
    // (When another test of this process loaded the real library first, the
    // refusal names that one instead.)
    assert!(
        err.contains("cannot load ONNX Runtime") || err.contains("already loaded"),
        "{err}"
    );
}
