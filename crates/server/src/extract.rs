//! The JSON body extractor: checks the content type and size, parses, and on
//! failure names the field at fault (`serde_path_to_error`) with the right status.

use crate::error::ServiceError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

/// A JSON request body, parsed with field-precise errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn is_json(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parse a JSON body, naming the field at fault (`ml_api::parse_json`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    ml_api::parse_json(body).map_err(ServiceError::from)
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !is_json(&ct) {
            return Err(ServiceError::UnsupportedMediaType(if ct.is_empty() {
                "missing Content-Type; send application/json".into()
            } else {
                format!("{ct}; send application/json")
            }));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ServiceError::TooLarge { limit }
            } else {
                ServiceError::MalformedJson {
                    reason: e.body_text(),
                }
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The configured body limit, put in request extensions so errors can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
