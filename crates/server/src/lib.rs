//! The serving side of ml-service: the settings it reads, the prediction
//! service that ties data, features, inference and post-processing together
//! ([`service`]), the serving model versions ([`lifecycle`]), caches, the
//! HTTP ([`routes`], [`v2_http`]) and gRPC ([`grpc`]) transports with their
//! shared admission ([`admission`]), the prediction log's writer
//! ([`predlog`]), metrics ([`telemetry`], [`scrape`]) and
//! start-up and the serve loop ([`app`]). Only this crate knows HTTP and gRPC.
//!
//! It never depends on the training crate (`ml-train`): it serves what the
//! model repository holds. The binary (`ml-cli`) trains what is missing
//! before it hands over to [`app::start`] and [`app::serve_until`].

pub mod admission;
pub mod api;
pub mod app;
pub mod cache;
pub mod error;
pub mod experiments;
pub mod extract;
pub mod grpc;
pub mod headers;
pub mod interests;
pub mod lifecycle;
pub mod predlog;
pub mod routes;
pub mod scrape;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod v2;
pub mod v2_http;
