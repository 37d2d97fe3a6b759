//! The training side of ml-service: everything that makes or judges a model,
//! and nothing the request path needs.
//!
//! - [`train_model`] trains any kind; [`train`]: the training data
//!   ([`train::TrainingData`], built with the serving feature code of
//!   `ml-core`) and the match and timing trainers (time-based holdouts,
//!   baselines);
//!   [`recommender`] the recommendation trainer and its selection on each
//!   user's next interactions; [`nn`] the dense networks and Adam they fit;
//!   [`ease`] the EASE/EDLAE/DAN
//!   item model the recommendation blend uses.
//! - [`export`]: networks as ONNX graphs plus `model.json`, and the parity
//!   check of a graph against its trainer; [`publish`] trains, checks and
//!   writes a version to the repository (`train` and the first `serve`).
//! - [`eval`], [`timing_eval`], [`metrics`]: offline evaluation against the
//!   generator's ceiling and baselines; [`report`] the Markdown + SVG report.
//! - [`generator`]: the demo dataset and its documented generative process;
//!   [`movielens`] and [`rec_bench`]: the public-data ranking protocol.
//!
//! The server crate (`ml-server`) does not depend on this one, so Cargo keeps
//! serving apart from training; the binary (`ml-service`) links both.

pub mod ease;
pub mod error;
pub mod eval;
pub mod export;
pub mod generator;
pub mod lowrank;
pub mod metrics;
pub mod movielens;
pub mod nn;
pub mod publish;
pub mod rec_bench;
pub mod recommender;
pub mod report;
pub mod timing_eval;
pub mod train;

pub use error::TrainError;

use ml_core::model::ModelKind;
use train::{ModelArtifact, TrainingData};

/// Train one model of any kind on the app data.
pub fn train_model(
    kind: ModelKind,
    td: &TrainingData,
    seed: u64,
) -> Result<ModelArtifact, TrainError> {
    match kind {
        ModelKind::TravelMatch => train::train_match(td, seed),
        ModelKind::Recommendation => recommender::train_recommendation(td, seed),
        ModelKind::NotificationTiming => train::train_timing(td, seed),
    }
}
