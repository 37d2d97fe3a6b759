//! Offline evaluation of the match model on its held-out period: probability
//! quality (AUC, log-loss, Brier, calibration) of the model under test next to
//! the generator's ceiling and simple baselines, accuracy by confidence decile,
//! and — on generated data, where the truth is known — whether each factor
//! tracks the generator's component of that group.

use crate::generator::MatchComponents;
use crate::metrics;
use crate::nn::{self, TrainConfig};
use crate::train::TrainingData;
use crate::TrainError;
use chrono::{DateTime, Utc};
use ml_core::post::match_confidence;
use serde::Serialize;

/// The four probability metrics of one predictor.
#[derive(Debug, Clone, Serialize)]
pub struct ProbabilityScores {
    pub name: String,
    pub auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub ece: f64,
}

impl ProbabilityScores {
    pub fn of(name: &str, p: &[f32], y: &[bool]) -> Self {
        Self {
            name: name.into(),
            auc: metrics::auc(p, y),
            log_loss: metrics::log_loss(p, y),
            brier: metrics::brier(p, y),
            ece: metrics::ece(p, y, 10),
        }
    }
}

/// Accuracy of the yes/no calls within one confidence decile.
#[derive(Debug, Clone, Serialize)]
pub struct Decile {
    pub mean_confidence: f64,
    pub accuracy: f64,
    pub n: usize,
}

/// One bin of the calibration curve.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationBin {
    pub mean_predicted: f64,
    pub observed_rate: f64,
    pub n: usize,
}

/// Everything `ml-service eval travel_match` reports.
#[derive(Debug, Clone, Serialize)]
pub struct MatchEvaluation {
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub model: ProbabilityScores,
    /// The generator's true probabilities, when the data has them.
    pub ceiling: Option<ProbabilityScores>,
    pub baselines: Vec<ProbabilityScores>,
    pub confidence_deciles: Vec<Decile>,
    pub calibration: Vec<CalibrationBin>,
    pub roc_model: Vec<(f64, f64)>,
    pub roc_ceiling: Option<Vec<(f64, f64)>>,
    /// Pearson correlation of each factor (interest, style, personality) with
    /// the generator's logit component of that group (generated data only).
    pub factor_truth_correlation: Option<[f64; 3]>,
}

impl MatchEvaluation {
    /// `(ceiling AUC − model AUC) / ceiling AUC`, when a ceiling is known.
    pub fn auc_gap(&self) -> Option<f64> {
        self.ceiling
            .as_ref()
            .map(|c| (c.auc - self.model.auc) / c.auc)
    }
}

/// The model under test: rows of match features in, `[scores, factors]` out
/// (the served ONNX graph, or the trainer's own networks).
pub type MatchPredictor<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<Vec<f32>>, TrainError> + 'a;

/// Evaluate a match model on the outcomes decided at or after `holdout_from`.
/// Baselines are fitted on the outcomes before it. `truth`, if given, holds the
/// generator's components in the order of `td.data.matches`.
pub fn evaluate_match(
    td: &TrainingData,
    holdout_from: DateTime<Utc>,
    predict: &mut MatchPredictor,
    truth: Option<&[MatchComponents]>,
) -> Result<MatchEvaluation, TrainError> {
    let cols = td.match_layout().columns().len();
    let rows = crate::train::match_rows(td, holdout_from);
    let (xtr, ytr, xte, yte) = (&rows.x_train, &rows.y_train, &rows.x_test, &rows.y_test);
    let (ptrue, completeness) = (&rows.true_probability, &rows.completeness);
    let comps: Vec<MatchComponents> = truth
        .map(|t| rows.test_index.iter().map(|&i| t[i]).collect())
        .unwrap_or_default();
    if ytr.len() < 50 || yte.len() < 50 {
        return Err(TrainError::Training(format!(
            "too few match outcomes around {holdout_from} ({} before, {} after)",
            ytr.len(),
            yte.len()
        )));
    }
    let n = yte.len();
    let out = predict(xte, n)?;
    let (p, factors) = (&out[0], &out[1]);

    let lr = TrainConfig {
        hidden: vec![],
        epochs: 25,
        learning_rate: 0.005,
        ..Default::default()
    };
    let overlap: Vec<f32> = xtr.chunks_exact(cols).map(|r| r[0]).collect();
    let overlap_te: Vec<f32> = xte.chunks_exact(cols).map(|r| r[0]).collect();
    let overlap_model = nn::train_binary(&overlap, 1, ytr, &lr);
    let lr_model = nn::train_binary(xtr, cols, ytr, &lr);
    let baselines = vec![
        ProbabilityScores::of(
            "interest overlap alone (logistic on Jaccard)",
            &overlap_model.predict(&overlap_te),
            yte,
        ),
        ProbabilityScores::of(
            "logistic regression on the same features",
            &lr_model.predict(xte),
            yte,
        ),
    ];
    let ceiling: Option<Vec<f32>> = ptrue.iter().copied().collect();

    let conf: Vec<f32> = p
        .iter()
        .zip(completeness)
        .map(|(p, c)| match_confidence(*p, *c))
        .collect();
    let factor_truth_correlation = (comps.len() == n).then(|| {
        let col = |g: usize| -> Vec<f64> { (0..n).map(|i| factors[i * 3 + g] as f64).collect() };
        let truth = |f: fn(&MatchComponents) -> f32| -> Vec<f64> {
            comps.iter().map(|c| f(c) as f64).collect()
        };
        [
            pearson(&col(0), &truth(|c| c.interest)),
            pearson(&col(1), &truth(|c| c.travel_style)),
            pearson(&col(2), &truth(|c| c.personality)),
        ]
    });
    Ok(MatchEvaluation {
        train_rows: ytr.len(),
        holdout_rows: n,
        model: ProbabilityScores::of("served model", p, yte),
        ceiling: ceiling
            .as_ref()
            .map(|t| ProbabilityScores::of("generator's true probability (ceiling)", t, yte)),
        baselines,
        confidence_deciles: deciles(p, &conf, yte),
        calibration: calibration(p, yte, 10),
        roc_model: roc(p, yte),
        roc_ceiling: ceiling.as_ref().map(|t| roc(t, yte)),
        factor_truth_correlation,
    })
}

/// Accuracy of the yes/no calls per confidence decile, least confident first.
pub fn deciles(p: &[f32], confidence: &[f32], y: &[bool]) -> Vec<Decile> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| confidence[a].total_cmp(&confidence[b]));
    (0..10)
        .map(|d| {
            let part = &idx[d * idx.len() / 10..(d + 1) * idx.len() / 10];
            let right = part.iter().filter(|&&i| (p[i] >= 0.5) == y[i]).count();
            Decile {
                mean_confidence: part.iter().map(|&i| confidence[i] as f64).sum::<f64>()
                    / part.len().max(1) as f64,
                accuracy: right as f64 / part.len().max(1) as f64,
                n: part.len(),
            }
        })
        .collect()
}

/// Equal-width calibration bins (empty bins left out).
pub fn calibration(p: &[f32], y: &[bool], bins: usize) -> Vec<CalibrationBin> {
    let mut sp = vec![0f64; bins];
    let mut sy = vec![0f64; bins];
    let mut n = vec![0usize; bins];
    for (p, y) in p.iter().zip(y) {
        let b = ((*p as f64 * bins as f64) as usize).min(bins - 1);
        sp[b] += *p as f64;
        sy[b] += *y as u8 as f64;
        n[b] += 1;
    }
    (0..bins)
        .filter(|&b| n[b] > 0)
        .map(|b| CalibrationBin {
            mean_predicted: sp[b] / n[b] as f64,
            observed_rate: sy[b] / n[b] as f64,
            n: n[b],
        })
        .collect()
}

/// ROC curve points (false-positive rate, true-positive rate), at most ~200.
pub fn roc(p: &[f32], y: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let pos = y.iter().filter(|v| **v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let step = (idx.len() / 200).max(1);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![(0.0, 0.0)];
    for (k, &i) in idx.iter().enumerate() {
        if y[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if k % step == step - 1 {
            out.push((fp / neg, tp / pos));
        }
    }
    out.push((1.0, 1.0));
    out
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().max(1) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va.sqrt() * vb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{generate_with_truth, GeneratorConfig};
    use crate::train::train_match;

    fn evaluate(cfg: &GeneratorConfig) -> MatchEvaluation {
        let (d, truth) = generate_with_truth(cfg);
        let td = TrainingData::new(&d);
        let art = train_match(&td, 1).unwrap();
        let mut predict = |x: &[f32], _n: usize| {
            let cols = art.feature_names.len();
            let mut out = vec![vec![], vec![]];
            for r in x.chunks_exact(cols) {
                for (h, o) in art.predict(r).into_iter().enumerate() {
                    out[h].extend(o);
                }
            }
            Ok(out)
        };
        evaluate_match(
            &td,
            art.window.holdout_from,
            &mut predict,
            Some(&truth.matches),
        )
        .unwrap()
    }

    #[test]
    fn the_match_model_is_near_the_ceiling_calibrated_and_its_factors_and_confidence_mean_something(
    ) {
        let e = evaluate(&GeneratorConfig {
            users: 5000,
            seed: 42,
            ..Default::default()
        });
        let gap = e.auc_gap().unwrap();
        assert!(
            gap < 0.02,
            "AUC {:.4} vs ceiling {:.4}",
            e.model.auc,
            e.ceiling.as_ref().unwrap().auc
        );
        assert!(e.model.ece < 0.02, "ECE {:.4}", e.model.ece);
        assert!(
            e.model.auc > e.baselines[0].auc + 0.05,
            "no better than interest overlap"
        );
        assert!(
            e.model.auc >= e.baselines[1].auc - 0.005,
            "worse than logistic regression"
        );
        // Each factor tracks the generator's own component of its group.
        for (g, r) in e.factor_truth_correlation.unwrap().iter().enumerate() {
            assert!(*r > 0.3, "factor {g} correlates {r:.3} with its truth");
        }
        // Accuracy rises with confidence: the top three deciles beat the bottom
        // three, and decile rank and accuracy agree in order.
        let acc: Vec<f64> = e.confidence_deciles.iter().map(|d| d.accuracy).collect();
        let top = acc[7..].iter().sum::<f64>() / 3.0;
        let bottom = acc[..3].iter().sum::<f64>() / 3.0;
        assert!(top > bottom + 0.1, "{acc:?}");
        let ranks: Vec<f64> = (0..10).map(|d| d as f64).collect();
        assert!(pearson(&ranks, &acc) > 0.8, "{acc:?}");
    }

    #[test]
    fn context_moves_the_score_the_expected_way() {
        use ml_core::features::{match_features, MatchContext};
        use ml_core::types::{TagSet, TAGS};
        let (d, _) = generate_with_truth(&GeneratorConfig {
            users: 2000,
            seed: 3,
            ..Default::default()
        });
        let td = TrainingData::new(&d);
        let art = train_match(&td, 1).unwrap();
        let feats = td.user_features(art.window.data_end);
        let (mut up, mut pairs) = (0, 0);
        for m in d.matches.iter().take(400) {
            let (a, b) = (&feats[&m.user_a], &feats[&m.user_b]);
            let shared = a.interests.intersection(&b.interests);
            let neither = TagSet(!(a.interests.union(&b.interests).0) & ((1 << TAGS.len()) - 1));
            if shared.is_empty() || neither.is_empty() {
                continue;
            }
            let score = |ctx: &MatchContext| {
                art.predict(&td.match_layout().select(&match_features(a, b, ctx)))[0][0]
            };
            // A trip about interests both share beats one about interests neither has.
            let good = score(&MatchContext {
                destination_tags: None,
                interests: shared,
                ..Default::default()
            });
            let bad = score(&MatchContext {
                destination_tags: None,
                interests: neither,
                ..Default::default()
            });
            // So does a destination whose tags both like, over one neither does.
            let good_place = score(&MatchContext {
                destination_tags: Some(shared),
                interests: TagSet::default(),
                ..Default::default()
            });
            let bad_place = score(&MatchContext {
                destination_tags: Some(neither),
                interests: TagSet::default(),
                ..Default::default()
            });
            pairs += 1;
            up += (good > bad && good_place > bad_place) as usize;
        }
        assert!(
            pairs > 50 && up as f64 / pairs as f64 > 0.95,
            "{up} of {pairs}"
        );
    }

    #[test]
    fn curves_are_well_formed() {
        let p = [0.1f32, 0.4, 0.35, 0.8];
        let y = [false, false, true, true];
        let r = roc(&p, &y);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert!(r.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
        let c = calibration(&p, &y, 10);
        assert_eq!(c.iter().map(|b| b.n).sum::<usize>(), 4);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
    }
}
