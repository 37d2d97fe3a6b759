//! The model contract every served model shares with its trainer: which
//! models exist ([`ModelKind`]: names, input names, output heads), and what
//! `model.json` records beside the graph ([`ModelParams`], [`TrainingWindow`]).
//! Trainers produce these; the server reads them to feed and check a model.

use crate::features::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The models the service serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    TravelMatch,
    Recommendation,
    NotificationTiming,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [
        ModelKind::TravelMatch,
        ModelKind::Recommendation,
        ModelKind::NotificationTiming,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelKind::TravelMatch => "travel_match",
            ModelKind::Recommendation => "recommendation",
            ModelKind::NotificationTiming => "notification_timing",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
    /// Names of the input features, in order, of a model reading exact
    /// interests. (Empty for the recommendation model, whose inputs follow
    /// its catalogue: see [`crate::inputs::rec_feature_names`].)
    pub fn feature_names(&self) -> Vec<String> {
        self.feature_names_in(InterestSpace::Exact)
    }
    /// Names of the input features, in order, of a model in `space` (a match
    /// model without the free-text view).
    pub fn feature_names_in(&self, space: InterestSpace) -> Vec<String> {
        self.feature_names_for(&MatchLayout {
            space,
            free_text: false,
        })
    }
    /// Names of the input features, in order, of a model whose match
    /// features follow `layout`.
    pub fn feature_names_for(&self, layout: &MatchLayout) -> Vec<String> {
        match self {
            ModelKind::TravelMatch => layout.features().iter().map(|f| f.0.to_string()).collect(),
            ModelKind::Recommendation => vec![],
            ModelKind::NotificationTiming => {
                TIMING_FEATURES.iter().map(|f| f.to_string()).collect()
            }
        }
    }
    /// Output heads: name and width (the recommendation model's `score` has one
    /// column per destination; its width here is 0).
    pub fn outputs(&self) -> Vec<(&'static str, usize)> {
        match self {
            ModelKind::TravelMatch => vec![("score", 1), ("factors", MATCH_FACTORS.len())],
            ModelKind::Recommendation => vec![("score", 0)],
            ModelKind::NotificationTiming => vec![("score", 1)],
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The time span a model learned from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingWindow {
    pub data_start: DateTime<Utc>,
    pub data_end: DateTime<Utc>,
    /// Labels after this instant were held out for evaluation.
    pub holdout_from: DateTime<Utc>,
}

/// Parameters a model needs at serving besides its network (for example the
/// population's activity pattern the timing model shrinks towards).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelParams {
    /// Recommendation: the blend's hyper-parameters (its weights are in the graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation_blend: Option<RecBlend>,
    /// Recommendation: standardised log popularity of each output column's
    /// destination (the graph's bias, unweighted), for the fallback ranking
    /// when the model cannot run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_popularity: Option<Vec<f32>>,
    /// Timing: the population's share of sessions per local hour of week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population_activity: Option<PopulationActivity>,
    /// Timing: the population's open rate per channel (push, email, sms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_open_rate: Option<[f32; 3]>,
    /// Match and recommendation: the sentence-embedding model whose meaning
    /// of interests the model reads ([`InterestSpace::Semantic`]); absent when
    /// it reads exact tag names. A service without that model refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interest_encoder: Option<String>,
    /// Match: how many users of the training data declare each free-text
    /// interest. Present: the model reads the free-text columns
    /// ([`FREE_TEXT_MATCH_FEATURES`]), a shared interest weighed by its
    /// rarity in this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interest_rarity: Option<std::sync::Arc<InterestRarity>>,
}

impl ModelParams {
    /// How the model reads interests.
    pub fn interest_space(&self) -> InterestSpace {
        if self.interest_encoder.is_some() {
            InterestSpace::Semantic
        } else {
            InterestSpace::Exact
        }
    }

    /// Which match-feature columns a match model with these parameters reads.
    pub fn match_layout(&self) -> MatchLayout {
        MatchLayout {
            space: self.interest_space(),
            free_text: self.interest_rarity.is_some(),
        }
    }
}

fn no_item_norm() -> f64 {
    1.0
}

/// Hyper-parameters of the recommendation blend, picked on validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecBlend {
    /// EASE's L2 weight.
    pub lambda: f64,
    /// EDLAE's dropout emphasis (0 = plain EASE).
    pub dropout: f64,
    /// DAN's user normalisation `β`: each user's row weighs `|u|^−β` in the
    /// Gram matrix (0 = none; older versions have none).
    #[serde(default)]
    pub user_norm: f64,
    /// DAN's item normalisation `α`: `B` rescaled by item degree (1 = none).
    #[serde(default = "no_item_norm")]
    pub item_norm: f64,
    /// Weight of the content score (cosine of interests and destination tags).
    pub content: f32,
    /// Weight of the standardised log popularity.
    pub popularity: f32,
    /// Weight of the budget fit (−|budget − cost| / 2).
    pub budget: f32,
    /// Weight of the trip-length fit (1 when the place suits the preferred length).
    pub duration: f32,
    /// Weight of the fit of the tags of the places the user engaged with.
    #[serde(default)]
    pub affinity: f32,
    /// Weight of a place the user already engaged with (but has not booked or
    /// visited): people return to places they are considering.
    #[serde(default)]
    pub repeat: f32,
    /// Rank of the low-rank item model (a catalogue past `REC_DENSE_MAX`);
    /// absent: the dense one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::RecBlend;

    /// A `model.json` written before DAN's parameters existed still loads, as
    /// the plain EDLAE it was: no user normalisation, no item normalisation.
    #[test]
    fn a_blend_from_before_the_normalisations_reads_as_none() {
        let old = r#"{"lambda": 300.0, "dropout": 0.25, "content": 0.15,
            "popularity": 0.03, "budget": 0.0, "duration": 0.0}"#;
        let b: RecBlend = serde_json::from_str(old).unwrap();
        assert_eq!((b.user_norm, b.item_norm), (0.0, 1.0));
        assert_eq!((b.affinity, b.repeat, b.rank), (0.0, 0.0, None));
        let round: RecBlend = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(round, b);
    }
}
