//! Round trips: a trained network exported to ONNX, stored in the repository,
//! loaded by tract and run on the inference threads gives the trainer's outputs.

use crate::tract::TractBackend;
use crate::*;
use ml_core::generator::{generate, GeneratorConfig};
use ml_core::train::{train, ModelKind, TrainingData};
use std::sync::Arc;

#[tokio::test]
async fn exported_models_match_the_trainer_through_repository_and_pool() {
    let data = generate(&GeneratorConfig {
        users: 600,
        seed: 3,
        ..Default::default()
    });
    let td = TrainingData::new(&data);
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepository::new(dir.path());
    let pool = InferencePool::new(2, 16);
    for kind in ModelKind::ALL {
        let art = train(kind, &td, 1).unwrap();
        let written = repo
            .write(&export::to_onnx(&art), ModelMeta::from_artifact(&art, 0))
            .unwrap();
        assert_eq!(written.version, 1);
        let (bytes, meta) = repo.read(kind, 1).unwrap();
        assert!(!art.reference_inputs.is_empty());
        export::check_parity(&art, &bytes, &meta, &TractBackend).unwrap();
        // The same rows through the inference threads give the same outputs.
        let model = TractBackend.load(&bytes, &meta).unwrap();
        let rows = art.reference_inputs.len();
        let out = pool
            .run(Arc::clone(&model), art.reference_inputs.concat(), rows)
            .await
            .unwrap();
        assert_eq!(
            out,
            model.run(&art.reference_inputs.concat(), rows).unwrap()
        );
    }
    // A graph whose weights were changed fails the parity check.
    let art = train(ModelKind::Recommendation, &td, 1).unwrap();
    let mut tampered = art.clone();
    tampered.heads[0].layers.last_mut().unwrap().bias[0] += 0.5;
    let meta = ModelMeta::from_artifact(&art, 1);
    assert!(export::check_parity(&art, &export::to_onnx(&tampered), &meta, &TractBackend).is_err());
    // A second write is version 2 and the first stays readable.
    let art = train(ModelKind::TravelMatch, &td, 2).unwrap();
    let meta = repo
        .write(&export::to_onnx(&art), ModelMeta::from_artifact(&art, 0))
        .unwrap();
    assert_eq!(meta.version, 2);
    assert_eq!(repo.versions(ModelKind::TravelMatch).unwrap(), vec![1, 2]);
}

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
