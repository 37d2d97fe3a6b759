//! Interests read by meaning: with EMBEDDING_MODEL_PATH the service trains
//! semantic match and recommendation models on demo data whose interests are
//! partly synonyms, serves them and reads a request's free-text interests; a
//! service without the embedding model refuses those versions; `eval
//! interests` reports exact against semantic models.

use super::*;
use ml_core::types::{tag_index, TagSet, TAGS};
use ml_train::generator::SYNONYMS;

/// The model folder scripts/fetch-embedding-model.sh fills (required under CI).
fn minilm() -> Option<PathBuf> {
    let p = fetched(
        "EMBEDDING_MODEL_FILE",
        ".fixtures/minilm/model.safetensors",
        "scripts/fetch-embedding-model.sh",
    )?;
    Some(p.parent().unwrap().to_path_buf())
}

/// The tags a list of phrases stands for: tag names, or the generator's
/// phrasings of them.
fn tags_of(phrases: &[String]) -> TagSet {
    let mut m = 0u32;
    for p in phrases {
        let t = tag_index(p).or_else(|| SYNONYMS.iter().position(|s| s.contains(&p.as_str())));
        if let Some(t) = t {
            m |= 1 << t;
        }
    }
    TagSet(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_models_train_serve_and_read_free_text_interests() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings_in(dir.path().join("data/app.db"), dir.path().join("models"));
    s.interests.embedding_model_path = Some(model);
    let mut args = serve_args(s.clone());
    args.demo.demo_synonym_rate = 0.5;
    let backend = app::backend(&s.backend).unwrap();
    let app = spawn_serve(args, backend).await;

    // Both models that read interests were trained on their meaning, and say so.
    let repo = ModelRepository::local(&s.models.model_path).unwrap();
    for kind in [ModelKind::TravelMatch, ModelKind::Recommendation] {
        let (_, meta) = repo.read(kind, 1).await.unwrap();
        assert_eq!(
            meta.params.interest_encoder.as_deref(),
            Some("all-MiniLM-L6-v2"),
            "{kind}"
        );
    }
    let (_, m) = repo.read(ModelKind::TravelMatch, 1).await.unwrap();
    // The semantic columns follow the exact ones (the free-text view after).
    let exact = ml_core::features::MATCH_FEATURES.len();
    assert_eq!(
        &m.features[exact..exact + 2],
        ["semantic_interest_cosine", "semantic_context_fit"]
    );
    assert_eq!(m.features.len(), ml_core::features::MATCH_ROW);
    let (_, t) = repo.read(ModelKind::NotificationTiming, 1).await.unwrap();
    assert_eq!(t.params.interest_encoder, None);

    // A trip described in free text moves the score as its meaning says: for
    // pairs who both like a tag, a trip named by a phrasing of that tag
    // scores above one named by a phrasing of a tag neither likes. (Read by
    // exact names, neither phrasing is a tag and both requests score alike.)
    let ids = app.users(300);
    let mut profiles = vec![];
    for id in &ids {
        let h = app
            .store
            .user_history(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        profiles.push((id.clone(), tags_of(&h.profile.unwrap().interests)));
    }
    let (mut pairs, mut up) = (0, 0);
    'outer: for (i, (a, ta)) in profiles.iter().enumerate() {
        for (b, tb) in &profiles[i + 1..] {
            let shared = ta.intersection(tb);
            let Some(t) = (0..TAGS.len()).find(|&t| shared.contains(t)) else {
                continue;
            };
            let Some(n) = (0..TAGS.len()).find(|&n| !ta.union(tb).contains(n)) else {
                continue;
            };
            let score = |phrase: &str| {
                app.post(
                    "/match/score",
                    json!({"user_a_id": a, "user_b_id": b, "context": {"interests": [phrase]}}),
                )
            };
            let good = score(SYNONYMS[t][pairs % 3]).await;
            assert_eq!(good.status(), 200);
            let good: Value = good.json().await.unwrap();
            let bad: Value = score(SYNONYMS[n][pairs % 3]).await.json().await.unwrap();
            pairs += 1;
            up += (good["score"].as_f64().unwrap() > bad["score"].as_f64().unwrap()) as usize;
            if pairs == 40 {
                break 'outer;
            }
        }
    }
    assert_eq!(pairs, 40);
    assert!(
        up * 10 >= pairs * 8,
        "{up}/{pairs} pairs scored the trip about a shared interest higher"
    );
    // Phrases are embedded once per process (here all at training) and counted.
    let metrics = app.scrape().await;
    assert!(
        sample(&metrics, "ml_embedding_texts_total", &[]).unwrap() > 0.0,
        "{metrics}"
    );

    // A service without the embedding model refuses the semantic versions
    // (their endpoints answer 503) and serves the rest.
    let mut plain = s.clone();
    plain.interests.embedding_model_path = None;
    let app = spawn_with(plain).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": ids[0], "user_b_id": ids[1]}),
        )
        .await;
    assert_eq!(r.status(), 503);
    let r = app
        .post(
            "/notifications/optimize",
            json!({"user_id": ids[0], "notification_type": "reminder"}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn eval_interests_compares_exact_and_semantic_models() {
    let Some(model) = minilm() else { return };
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ml-service"))
            .args(["eval", "interests", "--synonym-rate", "0.5"])
            .env("EMBEDDING_MODEL_PATH", model)
            .env("DEMO_USERS", "1500")
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One row per dataset and reading: AUC, log loss, NDCG and recall.
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| 0 %") || l.starts_with("| 50 %"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    let auc = |r: &Vec<String>| r[3].parse::<f64>().unwrap();
    for r in &rows {
        for (i, c) in r[3..7].iter().enumerate() {
            let v: f64 = c.parse().unwrap();
            // Column 1 is the log loss (positive); the others are shares.
            assert!(v > 0.0 && (i == 1 || v <= 1.0), "{text}");
        }
    }
    assert_eq!(rows[2][2], "exact names");
    assert_eq!(rows[3][2], "all-MiniLM-L6-v2");
    // Half the interests written as synonyms: reading their meaning recovers
    // match quality the exact names lose.
    assert!(auc(&rows[3]) > auc(&rows[2]), "{text}");
}
