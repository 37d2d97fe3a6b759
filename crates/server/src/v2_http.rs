//! The Open Inference Protocol (KServe v2) over HTTP: `/v2/...` routes,
//! JSON tensors and the binary tensor data extension (Triton's
//! `Inference-Header-Content-Length`: a JSON header, then the tensors' raw
//! little-endian bytes), and the protocol's error form `{"error": "..."}`.
//! The protocol itself lives in `v2`; this module only decodes and encodes.

use crate::admission::{Admission, ApiKeys, Guard};
use crate::error::ServiceError;
use crate::extract::BodyLimit;
use crate::service::Predictor;
use crate::v2::{self, InputTensor};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// The header that splits a binary request or response into its JSON part
/// (this many bytes) and the tensors' bytes after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2ErrorBody {
    /// What was wrong, naming the field (e.g. `invalid inputs[0].shape: ...`).
    pub error: String,
}

/// A [`ServiceError`] in the protocol's form: the status of the one HTTP
/// mapping, except that an invalid field is 400 (Triton's status for a bad
/// request) rather than 422.
pub struct V2Error(pub ServiceError);

impl From<ServiceError> for V2Error {
    fn from(e: ServiceError) -> Self {
        Self(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let (mut status, _) = self.0.http_status();
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            status = StatusCode::BAD_REQUEST;
        }
        let body = V2ErrorBody {
            error: self.0.to_string(),
        };
        self.0.respond(status, body)
    }
}

type AppState = Arc<Predictor>;

/// Server metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// One tensor of a model's signature.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2TensorMetadata {
    pub name: String,
    /// `FP32`.
    pub datatype: String,
    /// `-1` marks the batch dimension.
    pub shape: Vec<i64>,
}

/// A model's metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2ModelMetadata {
    pub name: String,
    /// The versions loaded now (serving or shadow).
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<V2TensorMetadata>,
    pub outputs: Vec<V2TensorMetadata>,
}

/// An input tensor. Its data is either `data` (numbers, flat or nested
/// row-major) or, with the binary extension, `parameters.binary_data_size`
/// bytes of the binary part.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V2InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<f32>>)]
    pub data: Option<Value>,
}

/// A requested output; `parameters.binary_data: true` asks for it as bytes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V2RequestedOutput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST /v2/models/{name}/infer`. `parameters.binary_data_output: true`
/// asks for every output as bytes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V2InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<V2InputTensor>,
    #[serde(default)]
    pub outputs: Option<Vec<V2RequestedOutput>>,
}

/// One output of the answer: `data` in JSON, or `parameters.binary_data_size`
/// bytes of the binary part.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

/// The answer of an inference request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<V2OutputTensor>,
}

/// Open Inference Protocol: server metadata.
#[utoipa::path(get, path = "/v2", tag = "open inference protocol",
    responses((status = 200, body = V2ServerMetadata)))]
async fn server_metadata() -> Json<V2ServerMetadata> {
    let (name, version) = v2::server_name();
    Json(V2ServerMetadata {
        name: name.into(),
        version: version.into(),
        extensions: v2::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    })
}

/// Open Inference Protocol: the server answers (200).
#[utoipa::path(get, path = "/v2/health/live", tag = "open inference protocol",
    responses((status = 200, description = "live")))]
async fn server_live() -> Json<Value> {
    Json(serde_json::json!({"live": true}))
}

fn ready_response(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        // The protocol's "false" is a 4xx status.
        StatusCode::BAD_REQUEST
    };
    (status, Json(serde_json::json!({"ready": ready}))).into_response()
}

/// Open Inference Protocol: 200 when every model is loaded and shutdown has
/// not begun, else 400.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open inference protocol",
    responses((status = 200, description = "ready"), (status = 400, description = "not ready")))]
async fn server_ready(State(p): State<AppState>) -> Response {
    ready_response(v2::server_ready(&p))
}

/// Open Inference Protocol: a model's metadata (the version answering most users).
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open inference protocol",
    params(("name" = String, Path, description = "travel_match, recommendation or notification_timing")),
    responses((status = 200, body = V2ModelMetadata), (status = 401, body = V2ErrorBody),
        (status = 404, body = V2ErrorBody), (status = 503, body = V2ErrorBody)))]
async fn model_metadata(
    State(p): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<V2ModelMetadata>, V2Error> {
    metadata(&p, &name, None)
}

/// Open Inference Protocol: a model version's metadata.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "open inference protocol",
    params(("name" = String, Path, description = "model name"), ("version" = String, Path, description = "a loaded version")),
    responses((status = 200, body = V2ModelMetadata), (status = 401, body = V2ErrorBody),
        (status = 404, body = V2ErrorBody), (status = 503, body = V2ErrorBody)))]
async fn version_metadata(
    State(p): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<V2ModelMetadata>, V2Error> {
    metadata(&p, &name, Some(&version))
}

fn metadata(
    p: &Predictor,
    name: &str,
    version: Option<&str>,
) -> Result<Json<V2ModelMetadata>, V2Error> {
    let m = v2::metadata(p, name, version)?;
    let t = |ts: Vec<v2::TensorMeta>| {
        ts.into_iter()
            .map(|t| V2TensorMetadata {
                name: t.name,
                datatype: t.datatype.into(),
                shape: t.shape,
            })
            .collect()
    };
    Ok(Json(V2ModelMetadata {
        name: m.name,
        versions: m.versions,
        platform: m.platform.into(),
        inputs: t(m.inputs),
        outputs: t(m.outputs),
    }))
}

/// Open Inference Protocol: 200 when the model is loaded, else 400.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open inference protocol",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, description = "ready"), (status = 400, description = "not ready or unknown"),
        (status = 401, body = V2ErrorBody)))]
async fn model_ready(State(p): State<AppState>, Path(name): Path<String>) -> Response {
    ready_response(v2::model_ready(&p, &name, None))
}

/// Open Inference Protocol: 200 when the model version is loaded, else 400.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "open inference protocol",
    params(("name" = String, Path, description = "model name"), ("version" = String, Path, description = "version")),
    responses((status = 200, description = "ready"), (status = 400, description = "not ready or unknown"),
        (status = 401, body = V2ErrorBody)))]
async fn version_ready(
    State(p): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    ready_response(v2::model_ready(&p, &name, Some(&version)))
}

/// Open Inference Protocol: run a model on a `features` tensor (FP32,
/// `[rows, width]`), through the same batcher as the domain endpoints. JSON,
/// or the binary extension (`Inference-Header-Content-Length`).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open inference protocol",
    params(("name" = String, Path, description = "model name")),
    request_body = V2InferRequest,
    responses((status = 200, body = V2InferResponse, headers(("x-model-version" = String, description = "model/version"))),
        (status = 400, body = V2ErrorBody), (status = 401, body = V2ErrorBody), (status = 404, body = V2ErrorBody),
        (status = 413, body = V2ErrorBody), (status = 503, body = V2ErrorBody)))]
async fn infer(
    State(p): State<AppState>,
    Path(name): Path<String>,
    Extension(limit): Extension<BodyLimit>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, V2Error> {
    run_infer(&p, &name, None, limit, &headers, body).await
}

/// Open Inference Protocol: run a given model version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "open inference protocol",
    params(("name" = String, Path, description = "model name"), ("version" = String, Path, description = "version")),
    request_body = V2InferRequest,
    responses((status = 200, body = V2InferResponse, headers(("x-model-version" = String, description = "model/version"))),
        (status = 400, body = V2ErrorBody), (status = 401, body = V2ErrorBody), (status = 404, body = V2ErrorBody),
        (status = 413, body = V2ErrorBody), (status = 503, body = V2ErrorBody)))]
async fn version_infer(
    State(p): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Extension(limit): Extension<BodyLimit>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, V2Error> {
    run_infer(&p, &name, Some(&version), limit, &headers, body).await
}

fn flag(params: Option<&Map<String, Value>>, key: &str) -> Option<bool> {
    params.and_then(|m| m.get(key)).and_then(Value::as_bool)
}

/// Numbers of a JSON tensor, flat or nested row-major.
fn flatten(v: &Value, out: &mut Vec<f32>, field: &str) -> Result<(), ServiceError> {
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out, field)),
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        other => Err(ServiceError::invalid(
            field,
            format!(
                "expected numbers (FP32), found {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::String(_) => "a string",
                    _ => "an object",
                }
            ),
        )),
    }
}

/// Split the body into its JSON header and binary part, and decode the
/// inputs.
fn decode(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(V2InferRequest, Vec<InputTensor>), ServiceError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                ServiceError::invalid(
                    "Inference-Header-Content-Length",
                    format!(
                        "must be a byte count within the body ({} bytes)",
                        body.len()
                    ),
                )
            })?,
    };
    let (head, mut binary) = body.split_at(json_len);
    let mut de = serde_json::Deserializer::from_slice(head);
    let req: V2InferRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ServiceError::MalformedJson {
                reason: inner.to_string(),
            }
        } else {
            ServiceError::invalid(
                if path == "." { "body".into() } else { path },
                inner.to_string(),
            )
        }
    })?;
    de.end().map_err(|e| ServiceError::MalformedJson {
        reason: e.to_string(),
    })?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.iter().enumerate() {
        v2::check_datatype(i, &t.datatype)?;
        let size = t
            .parameters
            .as_ref()
            .and_then(|m| m.get("binary_data_size"));
        let data = match (size, &t.data) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::invalid(
                    format!("inputs[{i}]"),
                    "has both data and parameters.binary_data_size",
                ))
            }
            (Some(size), None) => {
                let n = size
                    .as_u64()
                    .map(|n| n as usize)
                    .filter(|n| n.is_multiple_of(4) && *n <= binary.len())
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            format!("inputs[{i}].parameters.binary_data_size"),
                            format!(
                                "must be a multiple of 4 within the {} bytes of binary data left",
                                binary.len()
                            ),
                        )
                    })?;
                let (bytes, rest) = binary.split_at(n);
                binary = rest;
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            (None, Some(v)) => {
                let mut out = vec![];
                flatten(v, &mut out, &format!("inputs[{i}].data"))?;
                out
            }
            (None, None) => return Err(ServiceError::invalid(
                format!("inputs[{i}]"),
                "has no data (send data, or parameters.binary_data_size with the binary extension)",
            )),
        };
        inputs.push(InputTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data,
        });
    }
    if !binary.is_empty() {
        return Err(ServiceError::invalid(
            "Inference-Header-Content-Length",
            format!("{} bytes of binary data belong to no input", binary.len()),
        ));
    }
    Ok((req, inputs))
}

async fn run_infer(
    p: &Predictor,
    name: &str,
    version: Option<&str>,
    limit: BodyLimit,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, V2Error> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::TooLarge { limit: limit.0 }
        } else {
            ServiceError::MalformedJson {
                reason: "the body could not be read".into(),
            }
        }
    })?;
    let (req, inputs) = decode(headers, &body)?;
    let requested: Vec<String> = req
        .outputs
        .iter()
        .flatten()
        .map(|o| o.name.clone())
        .collect();
    for (i, o) in req.outputs.iter().flatten().enumerate() {
        if o.parameters
            .as_ref()
            .is_some_and(|m| m.contains_key("classification"))
        {
            return Err(ServiceError::invalid(
                format!("outputs[{i}].parameters.classification"),
                "the classification extension is not supported",
            )
            .into());
        }
    }
    let all_binary = flag(req.parameters.as_ref(), "binary_data_output").unwrap_or(false);
    let done = v2::infer(p, name, version, inputs, &requested).await?;
    let mut binary = Vec::new();
    let outputs = done
        .outputs
        .into_iter()
        .map(|t| {
            let asked = req
                .outputs
                .iter()
                .flatten()
                .find(|o| o.name == t.name)
                .and_then(|o| flag(o.parameters.as_ref(), "binary_data"));
            let as_bytes = asked.unwrap_or(all_binary);
            let mut out = V2OutputTensor {
                name: t.name,
                shape: t.shape,
                datatype: v2::FP32.into(),
                parameters: None,
                data: None,
            };
            if as_bytes {
                let start = binary.len();
                binary.extend(t.data.iter().flat_map(|x| x.to_le_bytes()));
                let mut m = Map::new();
                m.insert("binary_data_size".into(), (binary.len() - start).into());
                out.parameters = Some(m);
            } else {
                out.data = Some(t.data);
            }
            out
        })
        .collect();
    let answer = V2InferResponse {
        model_name: done.model.as_str().into(),
        model_version: done.version.to_string(),
        id: req.id,
        outputs,
    };
    let version_header = HeaderValue::from_str(&format!("{}/{}", done.model, done.version)).ok();
    let mut r = if binary.is_empty() {
        Json(answer).into_response()
    } else {
        let mut bytes = serde_json::to_vec(&answer).map_err(|_| {
            V2Error(ServiceError::MalformedJson {
                reason: "the answer could not be encoded".into(),
            })
        })?;
        let json_len = bytes.len();
        bytes.extend_from_slice(&binary);
        let mut r = bytes.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert(HeaderName::from_static(HEADER_LENGTH), json_len.into());
        r
    };
    if let Some(v) = version_header {
        r.headers_mut().insert(
            HeaderName::from_static(crate::headers::MODEL_VERSION_HEADER),
            v,
        );
    }
    Ok(r)
}

/// A refusal (key, admission) in the protocol's error form.
fn refuse(e: ServiceError) -> Response {
    V2Error(e).into_response()
}

/// The protocol's routes: health and server metadata open to all (like
/// `/health/*`), model metadata and readiness behind the API key, inference
/// behind the key and admission.
pub fn router(keys: ApiKeys, admission: Admission) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    // The key for every model route; admission for inference only.
    let auth = Guard::new(keys.clone(), None, refuse);
    let admit = Guard::new(keys, Some(admission), refuse);
    let open = axum::Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(server_live))
        .route("/v2/health/ready", get(server_ready));
    let models = axum::Router::new()
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route_layer(auth.clone());
    let inference = axum::Router::new()
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        )
        .route_layer(admit);
    open.merge(models).merge(inference)
}

/// The protocol's paths and schemas, merged into the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        server_metadata,
        server_live,
        server_ready,
        model_metadata,
        version_metadata,
        model_ready,
        version_ready,
        infer,
        version_infer
    ),
    components(schemas(V2ErrorBody))
)]
pub struct V2Doc;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, n.into());
        h
    }

    #[test]
    fn json_tensors_flat_or_nested() {
        let body = br#"{"inputs":[{"name":"features","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        let (_, t) = decode(&HeaderMap::new(), body).unwrap();
        assert_eq!(t[0].data, vec![1.0, 2.0, 3.0, 4.5]);
        let body =
            br#"{"inputs":[{"name":"features","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        assert_eq!(decode(&HeaderMap::new(), body).unwrap().1[0].data.len(), 4);
    }

    #[test]
    fn binary_tensors_follow_the_json_header() {
        let json = br#"{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend(1.5f32.to_le_bytes());
        body.extend((-2.0f32).to_le_bytes());
        let (_, t) = decode(&headers(json.len()), &body).unwrap();
        assert_eq!(t[0].data, vec![1.5, -2.0]);
        // Bytes that belong to no input, or a size beyond the body, are errors.
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&headers(json.len()), &extra).is_err());
        assert!(decode(&headers(json.len()), &body[..body.len() - 4]).is_err());
        assert!(decode(&headers(body.len() + 1), &body).is_err());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let body =
            br#"{"inputs":[{"name":"features","shape":[1,1],"datatype":"INT64","data":[1]}]}"#;
        let e = decode(&HeaderMap::new(), body).unwrap_err();
        assert!(e.to_string().contains("inputs[0].datatype"), "{e}");
        let body =
            br#"{"inputs":[{"name":"features","shape":[1,1],"datatype":"FP32","data":["x"]}]}"#;
        let e = decode(&HeaderMap::new(), body).unwrap_err();
        assert!(e.to_string().contains("inputs[0].data"), "{e}");
        let body = br#"{"inputs":[{"name":"features","shape":"x","datatype":"FP32"}]}"#;
        let e = decode(&HeaderMap::new(), body).unwrap_err();
        assert!(e.to_string().contains("inputs[0].shape"), "{e}");
        assert!(matches!(
            decode(&HeaderMap::new(), b"{not json").unwrap_err(),
            ServiceError::MalformedJson { .. }
        ));
    }
}
