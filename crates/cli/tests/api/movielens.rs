//! The recommender measured through the product path (issue 34): MovieLens-1M's
//! training and validation parts of RecBole's split written as a MovieLens
//! folder, loaded with `data import`, trained by `serve` itself, and every test
//! user's `POST /recommend/destinations` (limit 10) answered over HTTP. The
//! figures are computed from those answers alone.

use crate::helpers::*;
use futures::StreamExt;
use ml_train::metrics::{ndcg_at_k, recall_at_k};
use ml_train::movielens::parse_inter;
use ml_train::rec_bench::{split_811, top_k, train_and_valid, tune_ease, ImplicitData};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// NDCG@10 the served recommender must reach on this split (the floor).
const FLOOR: f64 = 0.30;

#[tokio::test]
async fn movielens_1m_imported_trained_and_served_over_http_ranks_above_the_floor() {
    let Some(ml) = fixture_dir("ml-1m") else {
        return;
    };
    let text = std::fs::read_to_string(ml.join("ml-1m.inter")).unwrap();
    let ratings = parse_inter(&text).unwrap();
    let data = ImplicitData::from_ratings(&ratings, 3.0);
    let split = split_811(&data, 2020);
    let data = &data;

    // The training and validation parts, as the rows of the original file.
    let known: HashSet<(&str, &str)> = (0..data.users.len())
        .flat_map(|u| {
            split.train[u]
                .iter()
                .chain(&split.valid[u])
                .map(move |&i| (data.users[u].as_str(), data.items[i as usize].as_str()))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ml-1m");
    std::fs::create_dir_all(&folder).unwrap();
    let mut lines = text.lines();
    let mut inter = format!("{}\n", lines.next().unwrap().trim_end_matches('\r'));
    let mut written = 0;
    for (line, r) in lines.filter(|l| !l.trim().is_empty()).zip(&ratings) {
        if r.rating >= 3.0 && known.contains(&(r.user.as_str(), r.item.as_str())) {
            inter.push_str(line.trim_end_matches('\r'));
            inter.push('\n');
            written += 1;
        }
    }
    assert_eq!(written, known.len(), "every known pair is one rating row");
    std::fs::write(folder.join("ml-1m.inter"), inter).unwrap();
    for f in ["ml-1m.item", "ml-1m.user"] {
        std::fs::copy(ml.join(f), folder.join(f)).unwrap();
    }

    // The product path: import, then serve (which trains what is missing).
    let settings = settings_in(dir.path().join("app.db"), dir.path().join("models"));
    let t0 = std::time::Instant::now();
    run_cli(
        &["data", "import", &folder.display().to_string()],
        &settings,
    )
    .await;
    let import_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let app = spawn_with(settings).await;
    let serve_s = t1.elapsed().as_secs_f64();

    let item_of: HashMap<&str, u32> = data
        .items
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let test_users: Vec<usize> = (0..data.users.len())
        .filter(|u| !split.test[*u].is_empty())
        .collect();
    let answers: Vec<(usize, Vec<u32>)> = futures::stream::iter(test_users.iter().copied())
        .map(|u| {
            let app = &app;
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, data.users[u].as_bytes());
            let item_of = &item_of;
            async move {
                let r = app
                    .post(
                        "/recommend/destinations",
                        json!({"user_id": id, "limit": 10}),
                    )
                    .await;
                assert_eq!(r.status(), 200, "user {}", data.users[u]);
                let v: Value = r.json().await.unwrap();
                let ranked = v["recommendations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| item_of[x["destination"].as_str().unwrap()])
                    .collect::<Vec<u32>>();
                (u, ranked)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let (mut ndcg, mut recall, mut leaked) = (0.0, 0.0, 0);
    for (u, ranked) in &answers {
        assert_eq!(ranked.len(), 10);
        let mut pos = split.test[*u].clone();
        pos.sort_unstable();
        leaked += ranked
            .iter()
            .filter(|i| split.train[*u].contains(i) || split.valid[*u].contains(i))
            .count();
        ndcg += ndcg_at_k(ranked, &pos, 10);
        recall += recall_at_k(ranked, &pos, 10);
    }
    let n = answers.len() as f64;
    let (ndcg, recall) = (ndcg / n, recall / n);

    // The paired comparison: EASE as `eval recommendation` tunes it (λ and
    // dropout on the split's validation part, refitted on train +
    // validation), per test user against the served answer.
    let items = data.items.len();
    let grid: Vec<(f64, f64)> = [250.0, 500.0, 1000.0, 2000.0]
        .iter()
        .flat_map(|l| [(*l, 0.0), (*l, 0.25)])
        .collect();
    let ease = tune_ease(items, &split, &grid);
    let history = train_and_valid(&split);
    let diffs: Vec<f64> = answers
        .iter()
        .map(|(u, ranked)| {
            let mut pos = split.test[*u].clone();
            pos.sort_unstable();
            let h = &history[*u];
            let s = ml_train::ease::scores(&ease.weights, items, h);
            let e = top_k(&s, 10, |i| h.binary_search(&i).is_ok());
            ndcg_at_k(ranked, &pos, 10) - ndcg_at_k(&e, &pos, 10)
        })
        .collect();
    let gain = diffs.iter().sum::<f64>() / n;
    let se = (diffs.iter().map(|d| (d - gain).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt();
    let ease_ndcg = ndcg - gain;

    // What the trainer chose and measured on its own held-out tenth.
    let meta: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("models/recommendation/1/model.json")).unwrap(),
    )
    .unwrap();
    let rec = json!({
        "evaluation": meta["evaluation"],
        "blend": meta["params"]["recommendation_blend"],
    });
    let mut report = String::new();
    writeln!(
        report,
        "MovieLens-1M through the product path (data import, serve, POST /recommend/destinations over HTTP): \
         {} test users, NDCG@10 {ndcg:.4}, Recall@10 {recall:.4}; import {import_s:.0} s, serve's start with training {serve_s:.0} s\n\
         EASE tuned on the split's validation (λ {}, dropout {}): NDCG@10 {ease_ndcg:.4}; served − EASE {gain:+.4} (paired standard error {se:.4}, {:+.1} %)\n\
         the served version: {rec}",
        answers.len(),
        ease.lambda,
        ease.dropout,
        gain / ease_ndcg * 100.0
    )
    .unwrap();
    println!("{report}");
    if let Ok(out) = std::env::var("MOVIELENS_PRODUCT_REPORT") {
        std::fs::write(out, &report).unwrap();
    }
    assert_eq!(leaked, 0, "a rated film was recommended");
    assert_eq!(answers.len(), test_users.len());
    assert!(ndcg >= FLOOR, "{report}");
    assert!(gain > 0.0, "the served model does not beat EASE: {report}");
}
