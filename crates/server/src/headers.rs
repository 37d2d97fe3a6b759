//! The response headers every transport sets beside an answer (gRPC as
//! metadata of the same names), and the request id's.

use axum::http::HeaderName;

/// The header that names the model version behind an answer, e.g. `travel_match/1`.
pub const MODEL_VERSION_HEADER: &str = "x-model-version";
/// `hit` when the answer came from the prediction cache, else `miss`.
pub const CACHE_HEADER: &str = "x-cache";
/// The answer's id (a time-ordered UUID, v7): the prediction log's key, and
/// what `POST /feedback` names.
pub const PREDICTION_ID_HEADER: &str = "x-prediction-id";
/// `true` when the model could not answer and a fallback did.
pub const FALLBACK_HEADER: &str = "x-fallback";
/// The header that carries a request's id (the caller's, else one made
/// here), on the request and its response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
