//! Round trips: a trained network exported to ONNX, stored in the repository,
//! loaded by tract (and ONNX Runtime, when its library is present) and run on
//! the inference threads gives the trainer's outputs.

use ml_backend::tract::TractBackend;
use ml_backend::*;
use ml_core::model::ModelKind;
use ml_train::export;
use ml_train::generator::{generate, GeneratorConfig};
use ml_train::train::TrainingData;
use ml_train::train_model as train;
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
    let repo = ModelRepository::local(dir.path()).unwrap();
    let pool = InferencePool::new(2, 16);
    for kind in ModelKind::ALL {
        let art = train(kind, &td, 1).unwrap();
        let written = repo
            .write(&export::to_onnx(&art), export::meta_of(&art, 0))
            .await
            .unwrap();
        assert_eq!(written.version, 1);
        let (bytes, meta) = repo.read(kind, 1).await.unwrap();
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
    let meta = export::meta_of(&art, 1);
    assert!(export::check_parity(&art, &export::to_onnx(&tampered), &meta, &TractBackend).is_err());
    // A second write is version 2 and the first stays readable.
    let art = train(ModelKind::TravelMatch, &td, 2).unwrap();
    let meta = repo
        .write(&export::to_onnx(&art), export::meta_of(&art, 0))
        .await
        .unwrap();
    assert_eq!(meta.version, 2);
    assert_eq!(
        repo.versions(ModelKind::TravelMatch).await.unwrap(),
        vec![1, 2]
    );
}

/// Past `REC_DENSE_MAX` the recommender is low-rank: a graph of two linear
/// layers (the profile passed through the first) that tract runs as the
/// trainer computes, that the service's probe reads as affine (its reasons'
/// effects table), and that still ranks above popularity on held-out data.
#[test]
fn a_low_rank_recommender_exports_runs_and_probes_as_affine() {
    let data = generate(&GeneratorConfig {
        users: 600,
        seed: 5,
        ..Default::default()
    });
    let mut td = TrainingData::new(&data);
    td.rec_dense_max = 0;
    let art = train(ModelKind::Recommendation, &td, 1).unwrap();
    let layers = &art.heads[0].layers;
    assert_eq!(layers.len(), 2, "low-rank: two layers");
    let items = td.catalogue.len();
    assert_eq!(layers[1].output, items);
    assert!(
        art.metrics["ndcg_at_10"] > art.baseline["ndcg_at_10"],
        "{:?} vs {:?}",
        art.metrics,
        art.baseline
    );
    let meta = export::meta_of(&art, 1);
    let onnx = export::to_onnx(&art);
    export::check_parity(&art, &onnx, &meta, &TractBackend).unwrap();
    let model = TractBackend.load(&onnx, &meta).unwrap();
    let inputs = meta.features.len();
    let effects = linear::probe(model.as_ref(), inputs)
        .unwrap()
        .expect("two linear layers are affine");
    // The effect of a history destination on another is `L_j · Rᵀ_i`.
    let (l, r) = (&layers[0], &layers[1]);
    let k = r.input - (inputs - items);
    let (j, i) = (3, 7);
    let want: f32 = (0..k)
        .map(|c| l.weights[j * l.output + c] * r.weights[c * items + i])
        .sum();
    assert!(
        (effects.on(i)[j] - want).abs() < 1e-4,
        "{} vs {want}",
        effects.on(i)[j]
    );
}

/// The ONNX Runtime library for the tests: ORT_DYLIB_PATH, else the one
/// scripts/fetch-onnxruntime.sh puts in .fixtures. Missing: the test is skipped
/// with a message, except under CI=true, where it fails.
#[cfg(feature = "onnxruntime")]
fn ort_dylib() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.fixtures/onnxruntime/libonnxruntime.so.1.31.1")
        });
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no ONNX Runtime library at {} under CI (scripts/fetch-onnxruntime.sh)",
        p.display()
    );
    eprintln!(
        "SKIPPED: no ONNX Runtime library at {} (run scripts/fetch-onnxruntime.sh)",
        p.display()
    );
    None
}

#[cfg(feature = "onnxruntime")]
fn ort_backend(dylib: std::path::PathBuf) -> onnxruntime::OrtBackend {
    onnxruntime::OrtBackend::new(onnxruntime::OrtConfig {
        dylib,
        intra_threads: 1,
        sessions: 2,
        gpu: false,
    })
    .unwrap()
}

/// Rows spread over each input's observed range: the reference rows of the
/// artifact, then `extra` rows mixing them at random.
fn probe_rows(art: &ml_train::train::ModelArtifact, extra: usize) -> (Vec<f32>, usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let refs = &art.reference_inputs;
    let mut x = refs.concat();
    for _ in 0..extra {
        let a = &refs[rng.gen_range(0..refs.len())];
        let b = &refs[rng.gen_range(0..refs.len())];
        let t: f32 = rng.gen();
        x.extend(a.iter().zip(b).map(|(a, b)| a * t + b * (1.0 - t)));
    }
    (x, refs.len() + extra)
}

fn max_diff(a: &Outputs, b: &Outputs) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(a, b)| {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnx_runtime_and_tract_agree_on_every_model_float_and_int8() {
    let Some(dylib) = ort_dylib() else { return };
    let ort = ort_backend(dylib);
    assert!(!ort.gpu(), "no GPU was asked for");
    let data = generate(&GeneratorConfig {
        users: 600,
        seed: 4,
        ..Default::default()
    });
    let td = TrainingData::new(&data);
    for kind in ModelKind::ALL {
        let art = train(kind, &td, 1).unwrap();
        let meta = export::meta_of(&art, 1);
        let onnx = export::to_onnx(&art);
        // ONNX Runtime reproduces the trainer, as tract does.
        export::check_parity(&art, &onnx, &meta, &ort).unwrap();
        let (x, rows) = probe_rows(&art, 60);
        let t = TractBackend
            .load(&onnx, &meta)
            .unwrap()
            .run(&x, rows)
            .unwrap();
        let o = ort.load(&onnx, &meta).unwrap().run(&x, rows).unwrap();
        let d = max_diff(&t, &o);
        assert!(
            d <= export::PARITY_TOLERANCE,
            "{kind}: float outputs differ by {d}"
        );
        // Batch 1 gives the same as the row inside a batch.
        let one = ort
            .load(&onnx, &meta)
            .unwrap()
            .run(&x[..meta.features.len()], 1)
            .unwrap();
        for (h, out) in one.iter().enumerate() {
            let w = out.len();
            let dd = max_diff(&vec![out.clone()], &vec![o[h][..w].to_vec()]);
            assert!(
                dd <= export::PARITY_TOLERANCE,
                "{kind}: batch 1 differs by {dd}"
            );
        }
        // INT8: both backends compute the same integer graph.
        let (q, summary) = quantize::quantize_dynamic(&onnx).unwrap();
        assert_eq!(
            summary.matmuls,
            art.heads.iter().map(|h| h.layers.len()).sum::<usize>()
        );
        if kind == ModelKind::Recommendation {
            // Its file is almost all weights: int8 stores them in a quarter.
            assert!(
                q.len() * 3 < onnx.len(),
                "INT8 file is {} bytes, float {}",
                q.len(),
                onnx.len()
            );
        }
        let tq = TractBackend.load(&q, &meta).unwrap().run(&x, rows).unwrap();
        let oq = ort.load(&q, &meta).unwrap().run(&x, rows).unwrap();
        // Each backend's INT8 model approximates the float one (not exactly).
        let scale = o
            .iter()
            .flatten()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        for (name, out) in [("tract", &tq), ("ONNX Runtime", &oq)] {
            let err = max_diff(&t, out) / scale;
            assert!(
                err > 0.0 && err < 0.1,
                "{kind}: {name} INT8 relative error {err}"
            );
        }
        // And the two agree closely, though not bit for bit everywhere: on
        // x86 CPUs without VNNI, ONNX Runtime's u8×s8 kernel (vpmaddubsw)
        // saturates pairwise sums at 16 bits where tract sums exactly in 32
        // (seen here on an AVX2-only EPYC: 0.016 on scores up to 0.44).
        let dq = max_diff(&tq, &oq) / scale;
        assert!(
            dq <= 0.05,
            "{kind}: INT8 outputs of tract and ONNX Runtime differ by {dq} of the output scale"
        );
    }
}

/// The float models the service trains answer each row on their own in
/// tract (and in ONNX Runtime when its library is present), so the
/// notification model may run on a plan's hours only; their INT8 versions
/// do not (one activation scale per call), so they run all rows.
#[test]
fn float_models_answer_rows_on_their_own_and_int8_ones_do_not() {
    let data = generate(&GeneratorConfig {
        users: 600,
        seed: 5,
        ..Default::default()
    });
    let td = TrainingData::new(&data);
    let mut backends: Vec<Box<dyn InferenceBackend>> = vec![Box::new(TractBackend)];
    #[cfg(feature = "onnxruntime")]
    if let Some(dylib) = ort_dylib() {
        backends.push(Box::new(ort_backend(dylib)));
    }
    for kind in ModelKind::ALL {
        let art = train(kind, &td, 1).unwrap();
        let meta = export::meta_of(&art, 1);
        let onnx = export::to_onnx(&art);
        let (q, _) = quantize::quantize_dynamic(&onnx).unwrap();
        let width = meta.features.len();
        for backend in &backends {
            let float = backend.load(&onnx, &meta).unwrap();
            assert!(
                rows::independent(float.as_ref(), width, 168).unwrap(),
                "{kind} on {}: float rows depend on each other",
                backend.name()
            );
            let int8 = backend.load(&q, &meta).unwrap();
            assert!(
                !rows::independent(int8.as_ref(), width, 168).unwrap(),
                "{kind} on {}: INT8 rows found independent",
                backend.name()
            );
        }
    }
}
