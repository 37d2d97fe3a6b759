//! Domain code of ml-service: the app-data types, the destination catalogue, the
//! demo-data generator, feature engineering (one code path for training and
//! serving), training math, offline metrics and post-processing.
//!
//! Nothing in this crate does I/O or knows a transport, a database or a cache: it
//! takes plain values and returns plain values, so the same code runs in `train`,
//! in `serve` and in tests.

pub mod catalogue;
pub mod ease;
pub mod error;
pub mod eval;
pub mod features;
pub mod generator;
pub mod metrics;
pub mod movielens;
pub mod nn;
pub mod post;
pub mod rec_bench;
pub mod timing_eval;
pub mod train;
pub mod types;

pub use error::CoreError;
