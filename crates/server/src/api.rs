//! The API's bodies and their validation live in `ml-api` (no transport, so
//! the fuzz targets and both transports share them); re-exported here under
//! the name the server's modules use.

pub use ml_api::*;
