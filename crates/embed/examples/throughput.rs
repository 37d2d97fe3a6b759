//! Embedding throughput: texts per second at batch 1 and batch 32, on the CPU
//! and (with `--gpu` and a `cuda` build) the GPU, over the demo generator's
//! interest phrasings and a few longer free-text interests.
//!
//!     cargo run --release -p ml-embed --example throughput -- "$(scripts/fetch-embedding-model.sh)" [--gpu] [--seconds 5] [--print-texts]

use ml_embed::MiniLm;
use std::time::{Duration, Instant};

fn texts() -> Vec<String> {
    let mut v: Vec<String> = ml_train::generator::SYNONYMS
        .iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    v.extend(ml_core::types::TAGS.iter().map(|t| t.replace('_', " ")));
    v.extend(
        [
            "a slow week of street food markets and live jazz in an old port town",
            "hut-to-hut trekking in the high mountains, then a few quiet days by a lake",
            "scuba diving on coral reefs between small islands, with some island hopping",
            "museums and galleries by day, wine bars and small concerts at night",
        ]
        .map(String::from),
    );
    v
}

/// Texts per second embedding `texts` in batches of `batch` for about `secs`.
fn measure(m: &MiniLm, texts: &[String], batch: usize, secs: f64) -> f64 {
    // Warm-up: first calls allocate and (on a GPU) load kernels.
    for c in texts.chunks(batch).take(3) {
        m.embed(c).unwrap();
    }
    let t0 = Instant::now();
    let mut n = 0usize;
    'outer: loop {
        for c in texts.chunks(batch) {
            m.embed(c).unwrap();
            n += c.len();
            if t0.elapsed() >= Duration::from_secs_f64(secs) {
                break 'outer;
            }
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .expect("usage: throughput MODEL_DIR [--gpu] [--seconds S]");
    let gpu = args.iter().any(|a| a == "--gpu");
    let secs: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let texts = texts();
    if args.iter().any(|a| a == "--print-texts") {
        // The same texts for another implementation to time (bench/gpu-embeddings.sh).
        texts.iter().for_each(|t| println!("{t}"));
        return;
    }
    let mut devices = vec![false];
    if gpu {
        devices.push(true);
    }
    let mut outputs = vec![];
    for on_gpu in devices {
        let m = MiniLm::load(std::path::Path::new(dir), on_gpu).unwrap();
        let b1 = measure(&m, &texts, 1, secs);
        let b32 = measure(&m, &texts, 32, secs);
        println!(
            "{}: {:.0} texts/s at batch 1, {:.0} texts/s at batch 32 ({} distinct texts, {secs} s each)",
            m.device_name(),
            b1,
            b32,
            texts.len()
        );
        outputs.push(m.embed(&texts).unwrap());
    }
    if let [cpu, gpu] = &outputs[..] {
        let worst = cpu
            .iter()
            .flatten()
            .zip(gpu.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("largest difference between CPU and GPU embeddings: {worst:.2e}");
    }
}
