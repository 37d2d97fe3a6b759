//! The ml-service binary's library: settings and CLI, the HTTP layer, the
//! prediction service that ties data, features, inference and post-processing
//! together, and start-up. Only this crate knows HTTP and gRPC.

pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod error;
pub mod extract;
pub mod grpc;
pub mod interests;
pub mod lifecycle;
pub mod report;
pub mod routes;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod training;
pub mod v2;
pub mod v2_http;
