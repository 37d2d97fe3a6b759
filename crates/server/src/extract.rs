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

/// Parse a JSON body, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if !body.trim_ascii_start().starts_with(b"{") => {
                ServiceError::invalid("body", "expected a JSON object")
            }
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                // serde reports a missing field at its parent; name the field itself.
                let field = match msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    Some(f) if path == "." => f.to_string(),
                    Some(f) => format!("{path}.{f}"),
                    None if path == "." => "body".to_string(),
                    None => path,
                };
                let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                ServiceError::invalid(field, reason)
            }
            _ => ServiceError::MalformedJson {
                reason: inner.to_string(),
            },
        }
    })
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        user_id: uuid::Uuid,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        limit: u32,
    }

    fn field_of(body: &str) -> String {
        match parse_json::<Req>(body.as_bytes()).unwrap_err() {
            ServiceError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("{}"), "user_id");
        assert_eq!(field_of(r#"{"user_id":"nope"}"#), "user_id");
        let u = uuid::Uuid::nil();
        assert_eq!(
            field_of(&format!(r#"{{"user_id":"{u}","inner":{{"limit":-1}}}}"#)),
            "inner.limit"
        );
        assert_eq!(
            field_of(&format!(r#"{{"user_id":"{u}","inner":{{}}}}"#)),
            "inner.limit"
        );
        assert!(matches!(
            parse_json::<Req>(b"{not json"),
            Err(ServiceError::MalformedJson { .. })
        ));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
