//! The training data as the trainers read it, and the trainers of the match
//! and timing models (the recommendation trainer has a module of its own,
//! `recommender`, which reads this one). Each builds its training set from the app data
//! with the serving feature code, splits it by time (features only ever see the
//! past of their labels), trains a dense network, and evaluates it on the held-out
//! period next to a simple baseline. The result is a [`ModelArtifact`]: the
//! networks plus everything `model.json` records.

use crate::metrics;
use crate::nn::{self, Activation, Dense, Mlp, TrainConfig};
use crate::TrainError;
use chrono::{DateTime, Duration, Utc};
use ml_core::catalogue::Catalogue;
use ml_core::features::*;
use ml_core::model::*;
use ml_core::types::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// What interest phrases mean, for training a semantic model: the encoder's
/// name and the soft profile of every phrase in the data (normalized with
/// [`normalize_phrase`]).
#[derive(Debug, Clone, Default)]
pub struct SemanticInterests {
    pub encoder: String,
    pub phrases: HashMap<String, TagProfile>,
}

impl SemanticInterests {
    /// The profile of a list of phrases: per tag its strongest phrase; a
    /// phrase without a profile counts by its exact tag name, if it is one.
    pub fn profile_of<S: AsRef<str>>(&self, phrases: &[S]) -> TagProfile {
        combine_profiles(phrases.iter().map(|p| {
            let p = normalize_phrase(p.as_ref());
            self.phrases
                .get(&p)
                .copied()
                .unwrap_or_else(|| exact_profile(&TagSet::from_names(&[p.replace(' ', "_")])))
        }))
    }
}

/// A trained model, ready to export.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    pub kind: ModelKind,
    /// Input names, in column order.
    pub feature_names: Vec<String>,
    /// Output heads over the one `features` input, in [`ModelKind::outputs`] order.
    pub heads: Vec<Mlp>,
    pub metrics: BTreeMap<String, f64>,
    pub baseline: BTreeMap<String, f64>,
    /// A one-line name of the baseline, for reports.
    pub baseline_name: String,
    pub params: ModelParams,
    pub window: TrainingWindow,
    pub train_rows: usize,
    pub holdout_rows: usize,
    /// A few input rows, so an exported graph can be checked against the trainer.
    pub reference_inputs: Vec<Vec<f32>>,
}

impl ModelArtifact {
    /// The trainer's own outputs for one input row, head by head.
    pub fn predict(&self, x: &[f32]) -> Vec<Vec<f32>> {
        self.heads.iter().map(|h| h.forward(x)).collect()
    }
}

/// Most destinations the recommender trains on by default
/// (`REC_MAX_DESTINATIONS`); past [`REC_DENSE_MAX`] its item model is
/// low-rank, whose memory grows linearly (measured in
/// `docs/recommender-issue-34.md`).
pub const REC_MAX_ITEMS: usize = 100_000;

/// Most destinations the recommender fits its exact (dense) item model on
/// (`REC_DENSE_MAX`): one fit at 8,000 takes 4.4 s and 1.9 GB here, at
/// 12,000 about 15 s and 4 GB, and the search runs ~35.
pub const REC_DENSE_MAX: usize = 10_000;

/// The app data indexed per user, as the trainers read it.
pub struct TrainingData<'a> {
    pub data: &'a Dataset,
    pub catalogue: Catalogue,
    pub histories: HashMap<Uuid, UserHistory>,
    profiles: HashMap<Uuid, &'a Profile>,
    /// Set to train models that read interests by meaning.
    pub semantic: Option<SemanticInterests>,
    /// How many users declare each free-text interest (the match model
    /// learns with it and carries it).
    pub rarity: std::sync::Arc<InterestRarity>,
    /// Match rows with the free-text view (true unless evaluating a model
    /// trained without it).
    pub free_text: bool,
    /// Most destinations the recommender trains on.
    pub rec_max_items: usize,
    /// Most destinations its dense item model is fitted on (low-rank past it).
    pub rec_dense_max: usize,
}

impl<'a> TrainingData<'a> {
    pub fn new(data: &'a Dataset) -> Self {
        let mut histories: HashMap<Uuid, UserHistory> = HashMap::with_capacity(data.profiles.len());
        for i in &data.interactions {
            histories
                .entry(i.user_id)
                .or_default()
                .interactions
                .push(i.clone());
        }
        for a in &data.activity {
            histories
                .entry(a.user_id)
                .or_default()
                .activity
                .push(a.occurred_at);
        }
        for n in &data.notifications {
            histories
                .entry(n.user_id)
                .or_default()
                .notifications
                .push(n.clone());
        }
        Self {
            data,
            catalogue: Catalogue::new(data.destinations.clone()),
            histories,
            profiles: data.profiles.iter().map(|p| (p.id, p)).collect(),
            semantic: None,
            rarity: std::sync::Arc::new(InterestRarity::of(
                data.profiles.iter().map(|p| p.interests.as_slice()),
            )),
            free_text: true,
            rec_max_items: REC_MAX_ITEMS,
            rec_dense_max: REC_DENSE_MAX,
        }
    }

    /// Every distinct interest phrase of the data (profiles and match
    /// outcomes' trip interests), normalized, in a stable order: what a
    /// sentence-embedding model must encode to train a semantic model.
    pub fn interest_phrases(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .data
            .profiles
            .iter()
            .flat_map(|p| p.interests.iter())
            .chain(
                self.data
                    .matches
                    .iter()
                    .flat_map(|m| m.trip_interests.iter()),
            )
            .map(|s| normalize_phrase(s))
            .filter(|s| !s.is_empty())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How the models trained on this data read interests.
    pub fn interest_space(&self) -> InterestSpace {
        if self.semantic.is_some() {
            InterestSpace::Semantic
        } else {
            InterestSpace::Exact
        }
    }

    /// The parameters that record [`TrainingData::interest_space`].
    pub(crate) fn interest_params(&self) -> ModelParams {
        ModelParams {
            interest_encoder: self.semantic.as_ref().map(|s| s.encoder.clone()),
            ..Default::default()
        }
    }

    /// The columns the match model trained on this data reads: its
    /// interest space and the free-text view.
    pub fn match_layout(&self) -> MatchLayout {
        MatchLayout {
            space: self.interest_space(),
            free_text: self.free_text,
        }
    }

    /// A match example's context, from its outcome record.
    pub fn match_context(&self, m: &MatchOutcome) -> MatchContext {
        let mut ctx = match_context(&self.catalogue, m);
        ctx.rarity = Some(self.rarity.clone());
        ctx.semantic_interests = self
            .semantic
            .as_ref()
            .filter(|_| !m.trip_interests.is_empty())
            .map(|s| s.profile_of(&m.trip_interests));
        ctx
    }

    /// Features of every user as of an instant.
    pub fn user_features(&self, as_of: DateTime<Utc>) -> HashMap<Uuid, UserFeatures> {
        let empty = UserHistory::default();
        self.data
            .profiles
            .iter()
            .map(|p| {
                let h = self.histories.get(&p.id).unwrap_or(&empty);
                let mut f = UserFeatures::from_history(p, h, &self.catalogue, as_of);
                f.semantic_interests = self.semantic.as_ref().map(|s| s.profile_of(&p.interests));
                (p.id, f)
            })
            .collect()
    }

    /// The same data with the interactions marked in `held` (indices into
    /// `data.interactions`) left out of every user's history: what the
    /// trainers see while those interactions are held out for validation.
    /// Code that reads `data.interactions` directly still sees them all.
    pub fn without(&self, held: &[bool]) -> TrainingData<'a> {
        let mut histories: HashMap<Uuid, UserHistory> = self
            .histories
            .iter()
            .map(|(id, h)| {
                (
                    *id,
                    UserHistory {
                        profile: h.profile.clone(),
                        interactions: vec![],
                        activity: h.activity.clone(),
                        notifications: h.notifications.clone(),
                        consents: h.consents.clone(),
                    },
                )
            })
            .collect();
        for (i, _) in self
            .data
            .interactions
            .iter()
            .zip(held)
            .filter(|(_, h)| !**h)
        {
            histories
                .entry(i.user_id)
                .or_default()
                .interactions
                .push(i.clone());
        }
        TrainingData {
            data: self.data,
            catalogue: self.catalogue.clone(),
            histories,
            profiles: self.profiles.clone(),
            semantic: self.semantic.clone(),
            rarity: self.rarity.clone(),
            free_text: self.free_text,
            rec_max_items: self.rec_max_items,
            rec_dense_max: self.rec_dense_max,
        }
    }

    pub fn profile(&self, id: &Uuid) -> Option<&Profile> {
        self.profiles.get(id).copied()
    }
}

pub(crate) fn span<I: Iterator<Item = DateTime<Utc>>>(
    it: I,
    what: &str,
) -> Result<(DateTime<Utc>, DateTime<Utc>), TrainError> {
    let mut lo: Option<DateTime<Utc>> = None;
    let mut hi: Option<DateTime<Utc>> = None;
    for t in it {
        lo = Some(lo.map_or(t, |l| l.min(t)));
        hi = Some(hi.map_or(t, |h| h.max(t)));
    }
    match (lo, hi) {
        (Some(l), Some(h)) if h > l => Ok((l, h + Duration::seconds(1))),
        _ => Err(TrainError::Training(format!("no {what} to train on"))),
    }
}

fn take_reference(x: &[f32], cols: usize) -> Vec<Vec<f32>> {
    let rows = x.len() / cols;
    (0..rows.min(8))
        .map(|i| x[i * cols..(i + 1) * cols].to_vec())
        .collect()
}

/// A match example's context, from its outcome record.
pub fn match_context(cat: &Catalogue, m: &MatchOutcome) -> MatchContext {
    MatchContext {
        destination_tags: m
            .destination_id
            .and_then(|d| cat.index_of(&d))
            .map(|i| cat.tags[i]),
        interests: TagSet::from_names(&m.trip_interests),
        ..Default::default()
    }
}

/// Match outcomes as model rows, in time order, split at `split`; features are
/// computed as of `split`, so none sees the period it is evaluated on.
pub struct MatchRows {
    pub x_train: Vec<f32>,
    pub y_train: Vec<f32>,
    pub x_test: Vec<f32>,
    pub y_test: Vec<bool>,
    /// Per test row: the generator's true probability, if recorded.
    pub true_probability: Vec<Option<f32>>,
    /// Per test row: how complete the pair's inputs are.
    pub completeness: Vec<f32>,
    /// Per test row: its index in `Dataset::matches`.
    pub test_index: Vec<usize>,
}

/// Build the match rows of a dataset around `split`.
pub fn match_rows(td: &TrainingData, split: DateTime<Utc>) -> MatchRows {
    let layout = td.match_layout();
    let feats = td.user_features(split);
    let mut ordered: Vec<(usize, &MatchOutcome)> = td.data.matches.iter().enumerate().collect();
    ordered.sort_by_key(|(_, m)| m.decided_at);
    let mut r = MatchRows {
        x_train: vec![],
        y_train: vec![],
        x_test: vec![],
        y_test: vec![],
        true_probability: vec![],
        completeness: vec![],
        test_index: vec![],
    };
    for (i, m) in ordered {
        let (Some(a), Some(b)) = (feats.get(&m.user_a), feats.get(&m.user_b)) else {
            continue;
        };
        let f = &layout.select(&match_features(a, b, &td.match_context(m)));
        if m.decided_at < split {
            r.x_train.extend_from_slice(f);
            r.y_train.push(m.matched as u8 as f32);
        } else {
            r.x_test.extend_from_slice(f);
            r.y_test.push(m.matched);
            r.true_probability.push(m.true_probability);
            r.completeness.push(ml_core::post::match_completeness(a, b));
            r.test_index.push(i);
        }
    }
    r
}

/// Train the match model: a network for the score, and one calibrated logistic
/// sub-model per factor group for `factors`.
pub fn train_match(td: &TrainingData, seed: u64) -> Result<ModelArtifact, TrainError> {
    let (start, end) = span(
        td.data.matches.iter().map(|m| m.decided_at),
        "match outcomes",
    )?;
    let split = start + (end - start) * 3 / 4;
    let features = td.match_layout().features();
    let cols = features.len();
    let rows = match_rows(td, split);
    let (xtr, ytr, xte, yte) = (&rows.x_train, &rows.y_train, &rows.x_test, &rows.y_test);
    let pte_true = &rows.true_probability;
    let completeness_te = &rows.completeness;
    let jac_te: Vec<f32> = xte.chunks_exact(cols).map(|r| r[0]).collect();
    if ytr.len() < 50 || yte.len() < 20 {
        return Err(TrainError::Training(format!(
            "too few match outcomes ({} to train, {} to evaluate)",
            ytr.len(),
            yte.len()
        )));
    }
    // Model selection on the last 15 % of the training period (rows are in
    // time order): a logistic regression (the right shape when compatibility is
    // additive in the features) against a small network, by validation log-loss.
    let candidates = [
        TrainConfig {
            hidden: vec![],
            epochs: 25,
            learning_rate: 0.005,
            seed,
            ..Default::default()
        },
        TrainConfig {
            hidden: vec![8],
            epochs: 15,
            learning_rate: 0.003,
            l2: 1e-3,
            seed,
            ..Default::default()
        },
    ];
    let cut = ytr.len() * 85 / 100;
    let yval: Vec<bool> = ytr[cut..].iter().map(|v| *v > 0.5).collect();
    let cfg = candidates
        .iter()
        .map(|c| {
            let net = nn::train_binary(&xtr[..cut * cols], cols, &ytr[..cut], c);
            (
                c,
                metrics::log_loss(&net.predict(&xtr[cut * cols..]), &yval),
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c.clone())
        .unwrap_or_else(|| candidates[0].clone());
    let score = nn::train_binary(xtr, cols, ytr, &cfg);
    // One logistic model per factor group over that group's features only; packed
    // into one layer whose weights are zero outside each group.
    let mut fw = vec![0f32; cols * MATCH_FACTORS.len()];
    let mut fb = vec![0f32; MATCH_FACTORS.len()];
    for g in 0..MATCH_FACTORS.len() {
        let idx: Vec<usize> = (0..cols).filter(|&j| features[j].1 == g).collect();
        let xg: Vec<f32> = xtr
            .chunks_exact(cols)
            .flat_map(|r| idx.iter().map(|&j| r[j]).collect::<Vec<_>>())
            .collect();
        let sub = nn::train_binary(
            &xg,
            idx.len(),
            ytr,
            &TrainConfig {
                hidden: vec![],
                ..cfg.clone()
            },
        );
        let l = &sub.layers[0];
        for (k, &j) in idx.iter().enumerate() {
            fw[j * MATCH_FACTORS.len() + g] = l.weights[k];
        }
        fb[g] = l.bias[0];
    }
    let factors = Mlp {
        layers: vec![Dense {
            input: cols,
            output: MATCH_FACTORS.len(),
            weights: fw,
            bias: fb,
            activation: Activation::Sigmoid,
        }],
    };
    let p = score.predict(xte);
    let mut m = BTreeMap::new();
    m.insert("auc".into(), metrics::auc(&p, yte));
    m.insert("log_loss".into(), metrics::log_loss(&p, yte));
    m.insert("brier".into(), metrics::brier(&p, yte));
    m.insert("ece".into(), metrics::ece(&p, yte, 10));
    if pte_true.iter().all(Option::is_some) {
        let t: Vec<f32> = pte_true.iter().map(|v| v.unwrap_or(0.5)).collect();
        m.insert("ceiling_auc".into(), metrics::auc(&t, yte));
    }
    // Confidence must track accuracy: the more confident half of the held-out
    // calls is right more often than the less confident half.
    let conf: Vec<f32> = p
        .iter()
        .zip(completeness_te)
        .map(|(p, c)| ml_core::post::match_confidence(*p, *c))
        .collect();
    let (hi, lo) = metrics::accuracy_by_confidence(&p, &conf, yte);
    m.insert("accuracy_confident_half".into(), hi);
    m.insert("accuracy_other_half".into(), lo);
    let mut base = BTreeMap::new();
    base.insert("auc".into(), metrics::auc(&jac_te, yte));
    Ok(ModelArtifact {
        kind: ModelKind::TravelMatch,
        feature_names: ModelKind::TravelMatch.feature_names_for(&td.match_layout()),
        reference_inputs: take_reference(xte, cols),
        heads: vec![score, factors],
        metrics: m,
        baseline: base,
        baseline_name: "interest overlap (Jaccard) alone".into(),
        params: ModelParams {
            interest_rarity: Some(td.rarity.clone()),
            ..td.interest_params()
        },
        window: TrainingWindow {
            data_start: start,
            data_end: end,
            holdout_from: split,
        },
        train_rows: ytr.len(),
        holdout_rows: yte.len(),
    })
}

/// Population open rate per channel from notifications sent before `as_of`.
pub fn channel_open_rates(td: &TrainingData, as_of: DateTime<Utc>) -> [f32; 3] {
    let mut sent = [0f32; 3];
    let mut opened = [0f32; 3];
    for n in td.data.notifications.iter().filter(|n| n.sent_at < as_of) {
        sent[n.channel.index()] += 1.0;
        opened[n.channel.index()] += n.opened_at.is_some() as u8 as f32;
    }
    // A weak prior of 30 % keeps an unused channel from reading as 0 or 1.
    std::array::from_fn(|c| (opened[c] + 3.0) / (sent[c] + 10.0))
}

/// The best local hour of day of a 168-hour score vector (mean over the week).
pub fn best_hour_of_day(scores: &[f32]) -> usize {
    (0..24)
        .max_by(|&a, &b| {
            let s = |h: usize| (0..7).map(|d| scores[d * 24 + h]).sum::<f32>();
            s(a).total_cmp(&s(b))
        })
        .unwrap_or(0)
}

/// Fit the timing network on examples of (a user's features from their past,
/// their sessions per local hour of week in the period that followed).
pub fn fit_timing<'a>(
    examples: impl Iterator<Item = (&'a UserFeatures, &'a [f32])>,
    pop: &PopulationActivity,
    seed: u64,
) -> Mlp {
    let (mut x, mut y) = (vec![], vec![]);
    for (u, next) in examples {
        // The label is the share of the following sessions in each hour, so the
        // network learns the user's weekly distribution (users with no later
        // sessions teach nothing about where their sessions fall).
        let total: f32 = next.iter().sum();
        if total <= 0.0 {
            continue;
        }
        x.extend(timing_features(u, pop));
        y.extend(next.iter().map(|c| c / total));
    }
    nn::train_binary(
        &x,
        TIMING_FEATURES.len(),
        &y,
        &TrainConfig {
            hidden: vec![8],
            epochs: 4,
            learning_rate: 0.005,
            batch_size: 512,
            seed,
            ..Default::default()
        },
    )
}

/// Train the timing model: (user, local hour of week) → probability the user
/// opens the app in that hour during the next four weeks.
pub fn train_timing(td: &TrainingData, seed: u64) -> Result<ModelArtifact, TrainError> {
    let (start, end) = span(td.data.activity.iter().map(|a| a.occurred_at), "activity")?;
    let label_len = Duration::days(28).min((end - start) / 4);
    let split = end - label_len;
    let train_at = split - label_len;
    let cols = TIMING_FEATURES.len();
    let labels_between = |from: DateTime<Utc>, to: DateTime<Utc>| {
        let mut out: HashMap<Uuid, Vec<f32>> = HashMap::new();
        for a in td
            .data
            .activity
            .iter()
            .filter(|a| a.occurred_at >= from && a.occurred_at < to)
        {
            let Some(p) = td.profile(&a.user_id) else {
                continue;
            };
            let h = hour_of_week(a.occurred_at, &parse_tz(&p.timezone));
            out.entry(a.user_id)
                .or_insert_with(|| vec![0.0; HOURS_PER_WEEK])[h] += 1.0;
        }
        out
    };
    let feats_tr = td.user_features(train_at);
    let pop_tr = PopulationActivity::from_users(feats_tr.values());
    let lab_tr = labels_between(train_at, split);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut users: Vec<&Uuid> = feats_tr.keys().collect();
    users.sort();
    users.shuffle(&mut rng);
    users.truncate(3000);
    let zero = vec![0f32; HOURS_PER_WEEK];
    let train_rows = users.len() * HOURS_PER_WEEK;
    let examples = users.into_iter().map(|uid| {
        (
            &feats_tr[uid],
            lab_tr.get(uid).map(Vec::as_slice).unwrap_or(&zero),
        )
    });
    let net = fit_timing(examples, &pop_tr, seed);
    let feats_te = td.user_features(split);
    let pop_te = PopulationActivity::from_users(feats_te.values());
    let lab_te = labels_between(split, end);
    let pop_best = best_hour_of_day(&pop_te.hour_of_week);
    let (mut hit, mut base_hit, mut n_users) = (0.0, 0.0, 0usize);
    let (mut all_p, mut all_y) = (vec![], vec![]);
    let mut reference = vec![];
    let mut test_users: Vec<&Uuid> = lab_te.keys().collect();
    test_users.sort();
    for uid in test_users {
        let held = &lab_te[uid];
        let total: f32 = held.iter().sum();
        if total < 3.0 {
            continue;
        }
        let rows = timing_features(&feats_te[uid], &pop_te);
        if reference.len() < 8 {
            reference.push(rows[..cols].to_vec());
        }
        let scores = net.predict(&rows);
        let hod_share = |h: usize| (0..7).map(|d| held[d * 24 + h]).sum::<f32>() / total;
        hit += hod_share(best_hour_of_day(&scores)) as f64;
        base_hit += hod_share(pop_best) as f64;
        n_users += 1;
        all_p.extend(scores);
        all_y.extend(held.iter().map(|c| *c > 0.0));
    }
    if n_users == 0 {
        return Err(TrainError::Training(
            "no held-out activity to evaluate on".into(),
        ));
    }
    let n = n_users as f64;
    let feats_all = td.user_features(end);
    Ok(ModelArtifact {
        kind: ModelKind::NotificationTiming,
        feature_names: ModelKind::NotificationTiming.feature_names(),
        heads: vec![net],
        metrics: BTreeMap::from([
            ("share_in_predicted_hour".into(), hit / n),
            ("hour_of_week_auc".into(), metrics::auc(&all_p, &all_y)),
        ]),
        baseline: BTreeMap::from([("share_in_predicted_hour".into(), base_hit / n)]),
        baseline_name: "the population's busiest local hour".into(),
        params: ModelParams {
            population_activity: Some(PopulationActivity::from_users(feats_all.values())),
            channel_open_rate: Some(channel_open_rates(td, end)),
            ..Default::default()
        },
        window: TrainingWindow {
            data_start: start,
            data_end: end,
            holdout_from: split,
        },
        train_rows,
        holdout_rows: n_users,
        reference_inputs: reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{generate, GeneratorConfig};
    use ml_core::inputs::interest_input;

    fn data() -> Dataset {
        generate(&GeneratorConfig {
            users: 1500,
            seed: 11,
            ..Default::default()
        })
    }

    #[test]
    fn a_semantic_model_reads_meanings_and_records_its_encoder() {
        let d = generate(&GeneratorConfig {
            users: 1500,
            seed: 11,
            synonym_rate: 0.5,
            ..Default::default()
        });
        let exact = TrainingData::new(&d);
        // A perfect encoder: each phrasing means exactly its own tag.
        let mut semantic = TrainingData::new(&d);
        let phrases = semantic.interest_phrases();
        assert!(phrases.iter().any(|p| p == "trekking"), "{phrases:?}");
        semantic.semantic = Some(SemanticInterests {
            encoder: "oracle".into(),
            phrases: phrases
                .iter()
                .filter_map(|p| {
                    let t = crate::generator::SYNONYMS
                        .iter()
                        .position(|s| s.contains(&p.as_str()))?;
                    Some((p.clone(), exact_profile(&TagSet(1 << t))))
                })
                .collect(),
        });
        let me = train_match(&exact, 1).unwrap();
        let ms = train_match(&semantic, 1).unwrap();
        assert_eq!(ms.params.interest_encoder.as_deref(), Some("oracle"));
        assert_eq!(me.params.interest_encoder, None);
        assert_eq!(
            ms.feature_names,
            ModelKind::TravelMatch.feature_names_for(&semantic.match_layout())
        );
        assert_eq!(
            me.feature_names.len(),
            MATCH_FEATURES.len() + FREE_TEXT_MATCH_FEATURES.len()
        );
        let (ae, asem) = (me.metrics["auc"], ms.metrics["auc"]);
        assert!(asem > ae + 0.01, "semantic AUC {asem:.4} vs exact {ae:.4}");
        let re = crate::train_model(ModelKind::Recommendation, &exact, 1).unwrap();
        let rs = crate::train_model(ModelKind::Recommendation, &semantic, 1).unwrap();
        assert_eq!(rs.params.interest_encoder.as_deref(), Some("oracle"));
        assert!(rs.metrics["ndcg_at_10"] >= re.metrics["ndcg_at_10"] - 0.002);
        // Profiles that are the exact tags give the exact interest input.
        let feats = semantic.user_features(Utc::now());
        for u in feats.values().take(50) {
            if u.interest_profile() == exact_profile(&u.interests) {
                assert_eq!(
                    interest_input(u, InterestSpace::Semantic),
                    interest_input(u, InterestSpace::Exact)
                );
            }
        }
    }

    #[test]
    fn every_model_beats_its_baseline_on_the_holdout() {
        let d = data();
        let td = TrainingData::new(&d);
        let m = train_match(&td, 1).unwrap();
        let (auc, base) = (m.metrics["auc"], m.baseline["auc"]);
        assert!(
            auc > base + 0.05,
            "match AUC {auc:.3} vs baseline {base:.3}"
        );
        assert!(m.metrics["ceiling_auc"] >= auc - 0.01);
        let (hi, lo) = (
            m.metrics["accuracy_confident_half"],
            m.metrics["accuracy_other_half"],
        );
        assert!(
            hi > lo + 0.05,
            "confidence does not track accuracy: {hi:.3} vs {lo:.3}"
        );

        let r = crate::train_model(ModelKind::Recommendation, &td, 1).unwrap();
        let (ndcg, base) = (r.metrics["ndcg_at_10"], r.baseline["ndcg_at_10"]);
        assert!(
            ndcg > base * 1.2,
            "rec NDCG@10 {ndcg:.3} vs popularity {base:.3}"
        );

        let t = train_timing(&td, 1).unwrap();
        let (hit, base) = (
            t.metrics["share_in_predicted_hour"],
            t.baseline["share_in_predicted_hour"],
        );
        assert!(
            hit > base * 1.3,
            "timing share {hit:.3} vs population hour {base:.3}"
        );
    }
}

#[cfg(test)]
mod free_text_tests {
    use super::*;
    use crate::generator::{generate, GeneratorConfig};

    /// AUC of the match model trained on `d`, with or without the free-text
    /// view, and the generator's ceiling on the same held-out pairs.
    fn auc(d: &Dataset, free_text: bool) -> (f64, f64) {
        let mut td = TrainingData::new(d);
        td.free_text = free_text;
        let art = train_match(&td, 1).unwrap();
        (art.metrics["auc"], art.metrics["ceiling_auc"])
    }

    /// On users who share hobbies the tags do not name, and whose
    /// compatibility is not additive, the free-text view (shared phrases by
    /// rarity, the shape columns) closes much of the gap to the ceiling;
    /// on the default demo it changes nothing that matters.
    #[test]
    fn the_free_text_view_learns_shared_rare_hobbies_and_costs_nothing_elsewhere() {
        let free = generate(&GeneratorConfig::free_text(3000, 13));
        let ((with, ceiling), (without, _)) = (auc(&free, true), auc(&free, false));
        assert!(with > without + 0.01, "{with:.4} vs {without:.4}");
        assert!(with > 0.96 * ceiling, "{with:.4} vs ceiling {ceiling:.4}");
        let plain = generate(&GeneratorConfig {
            users: 3000,
            ..Default::default()
        });
        let ((with, _), (without, _)) = (auc(&plain, true), auc(&plain, false));
        assert!(with > without - 0.003, "{with:.4} vs {without:.4}");
    }
}
