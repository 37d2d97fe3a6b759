//! Offline metrics: ranking (AUC, recall@k, NDCG@k) and probability quality
//! (log-loss, Brier score, expected calibration error).

/// Area under the ROC curve (ties get half credit); 0.5 when a class is missing.
pub fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut n_pos) = (0f64, 0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Average 1-based rank of the tie group.
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum += avg;
                n_pos += 1.0;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return 0.5;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Mean log-loss, probabilities clipped to [1e-7, 1 − 1e-7].
pub fn log_loss(p: &[f32], labels: &[bool]) -> f64 {
    let n = p.len().max(1) as f64;
    p.iter()
        .zip(labels)
        .map(|(p, y)| {
            let p = (*p as f64).clamp(1e-7, 1.0 - 1e-7);
            if *y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / n
}

/// Mean squared error of probabilities.
pub fn brier(p: &[f32], labels: &[bool]) -> f64 {
    let n = p.len().max(1) as f64;
    p.iter()
        .zip(labels)
        .map(|(p, y)| (*p as f64 - *y as u8 as f64).powi(2))
        .sum::<f64>()
        / n
}

/// Expected calibration error over `bins` equal-width bins.
pub fn ece(p: &[f32], labels: &[bool], bins: usize) -> f64 {
    let mut sum_p = vec![0f64; bins];
    let mut sum_y = vec![0f64; bins];
    let mut cnt = vec![0f64; bins];
    for (p, y) in p.iter().zip(labels) {
        let b = ((*p as f64 * bins as f64) as usize).min(bins - 1);
        sum_p[b] += *p as f64;
        sum_y[b] += *y as u8 as f64;
        cnt[b] += 1.0;
    }
    let n: f64 = cnt.iter().sum::<f64>().max(1.0);
    (0..bins)
        .filter(|&b| cnt[b] > 0.0)
        .map(|b| (sum_p[b] - sum_y[b]).abs() / n)
        .sum()
}

/// Recall@k of one ranked list: share of the relevant items in the top k.
pub fn recall_at_k(ranked: &[u32], relevant: &[u32], k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let hits = ranked
        .iter()
        .take(k)
        .filter(|i| relevant.contains(i))
        .count();
    hits as f64 / relevant.len() as f64
}

/// NDCG@k of one ranked list with binary relevance.
pub fn ndcg_at_k(ranked: &[u32], relevant: &[u32], k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, i)| relevant.contains(i))
        .map(|(r, _)| 1.0 / ((r + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(k))
        .map(|r| 1.0 / ((r + 2) as f64).log2())
        .sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// Accuracy of the yes/no calls (`p ≥ 0.5`) in the more confident half of the
/// examples and in the other half: a confidence that means something gives the
/// first a higher accuracy.
pub fn accuracy_by_confidence(p: &[f32], confidence: &[f32], labels: &[bool]) -> (f64, f64) {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    let acc = |ix: &[usize]| {
        let right = ix.iter().filter(|&&i| (p[i] >= 0.5) == labels[i]).count();
        right as f64 / ix.len().max(1) as f64
    };
    let (hi, lo) = idx.split_at(idx.len() / 2);
    (acc(hi), acc(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_known_values() {
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        // One inversion out of four pairs.
        assert_eq!(
            auc(&[0.1, 0.3, 0.2, 0.4], &[false, false, true, true]),
            0.75
        );
    }

    #[test]
    fn calibration_metrics() {
        let p = [0.9f32, 0.9, 0.1, 0.1];
        let y = [true, true, false, false];
        assert!((brier(&p, &y) - 0.01).abs() < 1e-6);
        assert!((ece(&p, &y, 10) - 0.1).abs() < 1e-6);
        assert!((log_loss(&p, &y) - (-(0.9f64).ln())).abs() < 1e-6);
    }

    #[test]
    fn accuracy_by_confidence_splits_in_halves() {
        let p = [0.9f32, 0.9, 0.6, 0.6];
        let conf = [0.9f32, 0.9, 0.6, 0.6];
        let y = [true, true, false, true];
        assert_eq!(accuracy_by_confidence(&p, &conf, &y), (1.0, 0.5));
    }

    #[test]
    fn ranking_metrics() {
        assert_eq!(recall_at_k(&[1, 2, 3], &[3, 9], 2), 0.0);
        assert_eq!(recall_at_k(&[1, 2, 3], &[3, 9], 3), 0.5);
        assert_eq!(ndcg_at_k(&[7, 1], &[7], 10), 1.0);
        assert!((ndcg_at_k(&[1, 7], &[7], 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
    }
}
