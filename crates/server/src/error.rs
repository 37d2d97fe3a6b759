//! The service layer's error type, its one mapping to HTTP statuses and,
//! beside it, its one mapping to gRPC status codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ml_backend::BackendError;
use ml_data::DataError;
use serde::Serialize;
use utoipa::ToSchema;

/// What a request can fail with, independent of the transport.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The body is not JSON at all (or not UTF-8).
    #[error("malformed JSON: {reason}")]
    MalformedJson { reason: String },
    /// A field has the wrong type, is missing, unknown, or out of range.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The body is not declared as JSON.
    #[error("unsupported content type: {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the configured limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// No such endpoint.
    #[error("no endpoint at {0}")]
    NoRoute(String),
    /// No or a wrong API key (`Authorization: Bearer …`).
    #[error("a valid API key is required: send Authorization: Bearer <key>")]
    Unauthorized,
    /// An admin endpoint while no ML_SERVICE_ADMIN_KEY is configured.
    #[error("admin endpoints are disabled: set ML_SERVICE_ADMIN_KEY")]
    AdminDisabled,
    /// A user id that the app data does not know.
    #[error("unknown user {id}")]
    UnknownUser { field: String, id: uuid::Uuid },
    /// A notification for a user who agreed to no channel (the app's
    /// `channel_consent`, and DEFAULT_CHANNELS where it has no answer).
    #[error("user {id} has agreed to no notification channel")]
    NoConsentedChannel { id: uuid::Uuid },
    /// A prediction id the log does not hold (never given, not sampled, or
    /// past the retention period).
    #[error("unknown prediction {id}: not in the prediction log (never answered, not sampled, or past retention)")]
    UnknownPrediction { id: uuid::Uuid },
    /// Outcomes need the prediction log, which is off.
    #[error(
        "the prediction log is off (PREDICTION_LOG=false): outcomes cannot be tied to predictions"
    )]
    LogOff,
    /// A model name (or version) the Open Inference Protocol endpoints do not
    /// know.
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// The model for this endpoint is not loaded.
    #[error("model {0} is not available")]
    ModelUnavailable(&'static str),
    /// Too much load: retry later.
    #[error("overloaded, retry later")]
    Overloaded,
    /// The request ran past its deadline (REQUEST_TIMEOUT_MS) and was stopped.
    #[error("no answer within {ms} ms, retry later")]
    DeadlineExceeded { ms: u64 },
    /// The app-data store failed.
    #[error("data store error")]
    Data(#[from] DataError),
    /// A model run failed.
    #[error("inference error")]
    Inference(BackendError),
    /// The model repository could not be read (its store is down, or a
    /// file in it is unreadable): an admin call that needs it cannot answer.
    #[error("model repository error: {0}")]
    ModelStore(BackendError),
}

impl From<ml_api::ApiError> for ServiceError {
    fn from(e: ml_api::ApiError) -> Self {
        match e {
            ml_api::ApiError::MalformedJson { reason } => ServiceError::MalformedJson { reason },
            ml_api::ApiError::Invalid { field, reason } => ServiceError::Invalid { field, reason },
        }
    }
}

impl From<BackendError> for ServiceError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Overloaded | BackendError::ShutDown => ServiceError::Overloaded,
            other => ServiceError::Inference(other),
        }
    }
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The HTTP status and stable error code of each error kind.
    pub fn http_status(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "malformed_json"),
            ServiceError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ServiceError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ServiceError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ServiceError::NoRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServiceError::AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            ServiceError::UnknownUser { .. } => (StatusCode::NOT_FOUND, "unknown_user"),
            ServiceError::NoConsentedChannel { .. } => {
                (StatusCode::CONFLICT, "no_consented_channel")
            }
            ServiceError::UnknownModel(_) => (StatusCode::NOT_FOUND, "unknown_model"),
            ServiceError::UnknownPrediction { .. } => (StatusCode::NOT_FOUND, "unknown_prediction"),
            ServiceError::LogOff => (StatusCode::SERVICE_UNAVAILABLE, "prediction_log_off"),
            ServiceError::ModelUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "model_unavailable")
            }
            ServiceError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ServiceError::DeadlineExceeded { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded")
            }
            ServiceError::Data(_) => (StatusCode::SERVICE_UNAVAILABLE, "data_unavailable"),
            ServiceError::Inference(_) => (StatusCode::SERVICE_UNAVAILABLE, "inference_failed"),
            ServiceError::ModelStore(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "model_store_unavailable")
            }
        }
    }

    /// The gRPC status code of each error kind, beside [`Self::http_status`]:
    /// the same meanings (a caller's mistake, a missing thing, a retryable
    /// condition) in gRPC's terms; the HTTP error code travels along.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ServiceError::MalformedJson { .. } | ServiceError::Invalid { .. } => {
                Code::InvalidArgument
            }
            ServiceError::UnsupportedMediaType(_) => Code::InvalidArgument,
            ServiceError::TooLarge { .. } => Code::ResourceExhausted,
            ServiceError::NoRoute(_) => Code::Unimplemented,
            ServiceError::Unauthorized => Code::Unauthenticated,
            ServiceError::AdminDisabled => Code::PermissionDenied,
            ServiceError::UnknownUser { .. }
            | ServiceError::UnknownModel(_)
            | ServiceError::UnknownPrediction { .. } => Code::NotFound,
            ServiceError::NoConsentedChannel { .. } => Code::FailedPrecondition,
            ServiceError::ModelUnavailable(_)
            | ServiceError::LogOff
            | ServiceError::Overloaded
            | ServiceError::Data(_)
            | ServiceError::Inference(_)
            | ServiceError::ModelStore(_) => Code::Unavailable,
            ServiceError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        }
    }

    /// The gRPC status of this error: its code, the same message as the
    /// HTTP body's, and the HTTP error code and field as metadata
    /// (`x-error-code`, `x-error-field`).
    pub fn to_grpc(&self) -> tonic::Status {
        let (status, code) = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = ?self, code, "request failed");
        }
        let mut s = tonic::Status::new(self.grpc_code(), self.to_string());
        let md = s.metadata_mut();
        md.insert(
            "x-error-code",
            tonic::metadata::MetadataValue::from_static(code),
        );
        if let Some(f) = self.field() {
            if let Ok(v) = f.parse() {
                md.insert("x-error-field", v);
            }
        }
        s
    }

    pub(crate) fn field(&self) -> Option<String> {
        match self {
            ServiceError::Invalid { field, .. } | ServiceError::UnknownUser { field, .. } => {
                Some(field.clone())
            }
            ServiceError::NoConsentedChannel { .. } => Some("user_id".into()),
            ServiceError::UnknownPrediction { .. } => Some("prediction_id".into()),
            _ => None,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`.
    pub code: String,
    /// Human-readable explanation (never internals such as SQL or file paths).
    pub message: String,
    /// The offending request field as a JSON path, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ServiceError {
    /// An HTTP error response: `body` with `status`, the error kind for the
    /// metrics, `WWW-Authenticate` on 401 and `Retry-After` on 503; 5xx
    /// internals are logged for operators, never sent. Shared by the
    /// domain API's body and the Open Inference Protocol's.
    pub fn respond(&self, status: StatusCode, body: impl Serialize) -> Response {
        let (_, code) = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = ?self, code, "request failed");
        }
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut()
            .insert(crate::telemetry::ErrorKind(code));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, code) = self.http_status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        self.respond(status, body)
    }
}
