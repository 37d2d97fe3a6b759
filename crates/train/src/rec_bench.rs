//! The recommendation benchmark protocol of RecBole's published MovieLens-1M
//! table: ratings ≥ 3 as positive implicit feedback, a random 8:1:1 split of each
//! user's positives, full ranking over all items excluding the user's training
//! and validation items, and Recall, NDCG, MRR, Hit and Precision at 10.

use crate::movielens::Rating;
use ml_core::topk::top_k_of;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;

/// Users' positive items, indexed densely.
#[derive(Debug, Clone)]
pub struct ImplicitData {
    pub items: Vec<String>,
    pub users: Vec<String>,
    pub user_items: Vec<Vec<u32>>,
}

impl ImplicitData {
    /// Ratings of at least `min_rating` as positives (duplicates removed).
    pub fn from_ratings(ratings: &[Rating], min_rating: f32) -> Self {
        let mut item_ix: HashMap<&str, u32> = HashMap::new();
        let mut user_ix: HashMap<&str, usize> = HashMap::new();
        let (mut items, mut users, mut user_items) = (vec![], vec![], Vec::<Vec<u32>>::new());
        for r in ratings.iter().filter(|r| r.rating >= min_rating) {
            let i = *item_ix.entry(r.item.as_str()).or_insert_with(|| {
                items.push(r.item.clone());
                (items.len() - 1) as u32
            });
            let u = *user_ix.entry(r.user.as_str()).or_insert_with(|| {
                users.push(r.user.clone());
                user_items.push(vec![]);
                users.len() - 1
            });
            user_items[u].push(i);
        }
        for v in user_items.iter_mut() {
            v.sort_unstable();
            v.dedup();
        }
        Self {
            items,
            users,
            user_items,
        }
    }

    pub fn interactions(&self) -> usize {
        self.user_items.iter().map(Vec::len).sum()
    }
}

/// Each user's positives split 8:1:1 at random.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Vec<Vec<u32>>,
    pub valid: Vec<Vec<u32>>,
    pub test: Vec<Vec<u32>>,
}

/// How RecBole splits `n` items by ratio: floor for each later part, the rest
/// to the first, and a part whose share is under one item gets one (taken from
/// the first) while the first keeps more than one.
pub fn split_counts(n: usize, ratios: [f64; 3]) -> [usize; 3] {
    let mut cnt = [
        0,
        (ratios[1] * n as f64) as usize,
        (ratios[2] * n as f64) as usize,
    ];
    cnt[0] = n - cnt[1] - cnt[2];
    for i in [2, 1] {
        if cnt[0] <= 1 {
            break;
        }
        let share = ratios[i] * n as f64;
        if share > 0.0 && share < 1.0 {
            cnt[i] += 1;
            cnt[0] -= 1;
        }
    }
    cnt
}

/// A per-user random 8:1:1 split (seeded).
pub fn split_811(d: &ImplicitData, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut valid, mut test) = (vec![], vec![], vec![]);
    for items in &d.user_items {
        let mut v = items.clone();
        v.shuffle(&mut rng);
        let [n_train, n_valid, _] = split_counts(v.len(), [0.8, 0.1, 0.1]);
        let mut t: Vec<u32> = v[..n_train].to_vec();
        let mut va: Vec<u32> = v[n_train..n_train + n_valid].to_vec();
        let mut te: Vec<u32> = v[n_train + n_valid..].to_vec();
        t.sort_unstable();
        va.sort_unstable();
        te.sort_unstable();
        train.push(t);
        valid.push(va);
        test.push(te);
    }
    Split { train, valid, test }
}

/// Top-10 ranking metrics, averaged over users with at least one target item.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RankingMetrics {
    pub users: usize,
    pub recall: f64,
    pub ndcg: f64,
    pub mrr: f64,
    pub hit: f64,
    pub precision: f64,
}

/// Accumulates ranking metrics user by user.
#[derive(Debug, Default)]
pub struct RankingAcc(RankingMetrics);

impl RankingAcc {
    /// Add one user: `scores` over all items, `exclude` and `targets` sorted.
    pub fn add(&mut self, scores: &[f32], exclude: &[&[u32]], targets: &[u32]) {
        if targets.is_empty() {
            return;
        }
        let top = top_k(scores, 10, |i| {
            exclude.iter().any(|e| e.binary_search(&i).is_ok())
        });
        let hits: Vec<bool> = top
            .iter()
            .map(|i| targets.binary_search(i).is_ok())
            .collect();
        let n_hits = hits.iter().filter(|h| **h).count() as f64;
        let m = &mut self.0;
        m.users += 1;
        m.recall += n_hits / targets.len() as f64;
        m.precision += n_hits / 10.0;
        m.hit += (n_hits > 0.0) as u8 as f64;
        m.mrr += hits
            .iter()
            .position(|h| *h)
            .map(|r| 1.0 / (r + 1) as f64)
            .unwrap_or(0.0);
        let dcg: f64 = hits
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(r, _)| 1.0 / ((r + 2) as f64).log2())
            .sum();
        let idcg: f64 = (0..targets.len().min(10))
            .map(|r| 1.0 / ((r + 2) as f64).log2())
            .sum();
        m.ndcg += dcg / idcg;
    }

    pub fn finish(self) -> RankingMetrics {
        let mut m = self.0;
        let n = m.users.max(1) as f64;
        m.recall /= n;
        m.ndcg /= n;
        m.mrr /= n;
        m.hit /= n;
        m.precision /= n;
        m
    }
}

/// The `k` best items, best first, skipping excluded ones (ties by item index).
pub fn top_k(scores: &[f32], k: usize, excluded: impl Fn(u32) -> bool) -> Vec<u32> {
    top_k_of(
        scores,
        (0..scores.len() as u32).filter(|i| !excluded(*i)),
        k,
    )
}

/// Popularity (training counts) as a scorer.
pub fn popularity(items: usize, train: &[Vec<u32>]) -> Vec<f32> {
    let mut c = vec![0f32; items];
    for u in train {
        for &i in u {
            c[i as usize] += 1.0;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_811_and_disjoint() {
        let d = ImplicitData {
            items: (0..100).map(|i| i.to_string()).collect(),
            users: vec!["u".into()],
            user_items: vec![(0..50).collect()],
        };
        let s = split_811(&d, 1);
        assert_eq!(
            (s.train[0].len(), s.valid[0].len(), s.test[0].len()),
            (40, 5, 5)
        );
        assert_eq!(split_counts(25, [0.8, 0.1, 0.1]), [21, 2, 2]);
        assert_eq!(split_counts(5, [0.8, 0.1, 0.1]), [3, 1, 1]);
        assert_eq!(split_counts(2, [0.8, 0.1, 0.1]), [1, 0, 1]);
        let mut all: Vec<u32> =
            [s.train[0].clone(), s.valid[0].clone(), s.test[0].clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn metrics_of_a_known_ranking() {
        let scores: Vec<f32> = (0..20).map(|i| 20.0 - i as f32).collect(); // item 0 best
        let mut acc = RankingAcc::default();
        // Items 0 and 1 excluded; targets 2 (rank 1) and 15 (outside the top 10).
        acc.add(&scores, &[&[0, 1]], &[2, 15]);
        let m = acc.finish();
        assert_eq!(m.users, 1);
        assert!((m.recall - 0.5).abs() < 1e-12 && (m.precision - 0.1).abs() < 1e-12);
        assert!((m.mrr - 1.0).abs() < 1e-12 && (m.hit - 1.0).abs() < 1e-12);
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg - 1.0 / idcg).abs() < 1e-12);
        assert_eq!(top_k(&scores, 3, |i| i == 0), vec![1, 2, 3]);
    }
}

/// Each user's training and validation items together.
pub fn train_and_valid(s: &Split) -> Vec<Vec<u32>> {
    s.train
        .iter()
        .zip(&s.valid)
        .map(|(t, v)| {
            let mut x = [t.as_slice(), v.as_slice()].concat();
            x.sort_unstable();
            x
        })
        .collect()
}

/// EASE with hyper-parameters picked on validation, refitted on train + valid.
#[derive(Debug, Clone)]
pub struct TunedEase {
    pub lambda: f64,
    pub dropout: f64,
    pub valid_ndcg: f64,
    /// Seconds of the final fit.
    pub fit_seconds: f64,
    pub weights: Vec<f32>,
}

/// Pick `(λ, dropout)` by validation NDCG@10 (trained on train, ranked
/// excluding train items), then refit on train + valid.
pub fn tune_ease(items: usize, s: &Split, grid: &[(f64, f64)]) -> TunedEase {
    let mut best = (f64::MIN, grid[0]);
    for &(lambda, dropout) in grid {
        let b = crate::ease::fit_with_dropout(items, &s.train, lambda, dropout);
        let mut acc = RankingAcc::default();
        for u in 0..s.train.len() {
            acc.add(
                &crate::ease::scores(&b, items, &s.train[u]),
                &[&s.train[u]],
                &s.valid[u],
            );
        }
        let n = acc.finish().ndcg;
        if n > best.0 {
            best = (n, (lambda, dropout));
        }
    }
    let t0 = std::time::Instant::now();
    let weights = crate::ease::fit_with_dropout(items, &train_and_valid(s), best.1 .0, best.1 .1);
    TunedEase {
        lambda: best.1 .0,
        dropout: best.1 .1,
        valid_ndcg: best.0,
        fit_seconds: t0.elapsed().as_secs_f64(),
        weights,
    }
}

/// A scorer of a batch of users' histories: their scores, row-major.
pub type BatchScorer<'a> = dyn FnMut(&[Vec<u32>]) -> Result<Vec<f32>, crate::TrainError> + 'a;

/// Test metrics of a scorer: history = train + valid, which is also excluded
/// from the ranking. `score` gets a batch of users and returns their scores.
pub fn evaluate_test(
    s: &Split,
    items: usize,
    batch: usize,
    score: &mut BatchScorer,
) -> Result<RankingMetrics, crate::TrainError> {
    let history = train_and_valid(s);
    let mut acc = RankingAcc::default();
    let users: Vec<usize> = (0..s.test.len())
        .filter(|u| !s.test[*u].is_empty())
        .collect();
    for chunk in users.chunks(batch.max(1)) {
        let hist: Vec<Vec<u32>> = chunk.iter().map(|u| history[*u].clone()).collect();
        let out = score(&hist)?;
        for (k, u) in chunk.iter().enumerate() {
            acc.add(
                &out[k * items..(k + 1) * items],
                &[&history[*u]],
                &s.test[*u],
            );
        }
    }
    Ok(acc.finish())
}
