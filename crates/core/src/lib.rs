//! The serving contract of ml-service: the app-data types, the destination
//! catalogue, feature engineering (one code path for training and serving),
//! the models' names and parameters ([`model`]), their input layouts
//! ([`inputs`]), top-k selection ([`topk`]), post-processing ([`post`]) and
//! the statistics of A/B tests between versions ([`experiment`]).
//!
//! Nothing in this crate does I/O or knows a transport, a database or a cache:
//! it takes plain values and returns plain values, so the same code runs in
//! the server, in the trainers (`ml-train`) and in tests. Training itself
//! lives in `ml-train`, which the server never depends on.

pub mod catalogue;
pub mod error;
pub mod experiment;
pub mod features;
pub mod inputs;
pub mod model;
pub mod post;
pub mod recommend;
#[cfg(test)]
mod testing;
pub mod topk;
pub mod types;

pub use error::CoreError;
