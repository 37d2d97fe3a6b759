//! The gRPC transport (tonic) on `GRPC_PORT`: the domain service
//! `mlservice.v1.MlService` (`proto/mlservice/v1/ml_service.proto`), the Open
//! Inference Protocol's `inference.GRPCInferenceService`
//! (`proto/inference/grpc_predict_v2.proto`), the standard `grpc.health.v1`
//! health service and server reflection. Requests carry the same API key
//! (`authorization: Bearer <key>` metadata), share the HTTP endpoints'
//! admission (one bound on requests in flight for both transports) and
//! metrics, and fail with the gRPC code beside the HTTP status of the same
//! [`ServiceError`].

use crate::api::{
    MatchContextBody, MatchRequest, NotifyRequest, RecommendFilters, RecommendRequest,
};
use crate::error::ServiceError;
use crate::routes::{Admission, ApiKeys};
use crate::service::{Predictor, Versioned};
use crate::settings::Settings;
use crate::v2;
use ml_core::train::ModelKind;
use ml_core::types::{Budget, NotificationType, TripDuration, Urgency};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

/// Code generated from `proto/` by the build script.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    pub mod mlservice {
        tonic::include_proto!("mlservice.v1");
    }
    pub mod inference {
        tonic::include_proto!("inference");
    }
    /// The encoded descriptors of both files, served by reflection.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
}

use pb::inference as oip;
use pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use pb::mlservice as ml;
use pb::mlservice::ml_service_server::{MlService, MlServiceServer};

/// How often the health service re-reads readiness.
const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// An answer with what the response metadata says about it.
struct Answer<T> {
    body: T,
    model: Option<(ModelKind, u64)>,
    cached: bool,
    fallback: bool,
}

impl<B> Versioned<B> {
    fn answer<T>(self, f: impl FnOnce(B) -> T) -> Answer<T> {
        Answer {
            model: Some((self.model, self.version)),
            cached: self.cached,
            fallback: self.fallback,
            body: f(self.body),
        }
    }
}

/// The gRPC services' shared state.
#[derive(Clone)]
pub struct Grpc {
    p: Arc<Predictor>,
    admission: Admission,
}

impl Grpc {
    /// Run one call: admission (when `admit`), metrics under the method's
    /// path, and the response metadata or the error's status.
    async fn call<T>(
        &self,
        endpoint: &'static str,
        admit: bool,
        work: impl Future<Output = Result<Answer<T>, ServiceError>>,
    ) -> Result<Response<T>, Status> {
        let t0 = Instant::now();
        let inflight = crate::telemetry::inflight();
        inflight.increment(1.0);
        let r = if admit {
            self.admission.run(work).await.and_then(|r| r)
        } else {
            work.await
        };
        inflight.decrement(1.0);
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok(a) => {
                let (model, version) = a
                    .model
                    .map(|(m, v)| (m.as_str(), v.to_string()))
                    .unwrap_or_else(|| ("none", "none".into()));
                let header = format!("{model}/{version}");
                crate::telemetry::record(endpoint, model, &version, 200, "", secs);
                let mut resp = Response::new(a.body);
                let md = resp.metadata_mut();
                if a.model.is_some() {
                    if let Ok(v) = header.parse() {
                        md.insert(crate::routes::MODEL_VERSION_HEADER, v);
                    }
                    md.insert(
                        crate::routes::CACHE_HEADER,
                        MetadataValue::from_static(if a.cached { "hit" } else { "miss" }),
                    );
                }
                if a.fallback {
                    md.insert(
                        crate::routes::FALLBACK_HEADER,
                        MetadataValue::from_static("true"),
                    );
                }
                Ok(resp)
            }
            Err(e) => {
                let (status, code) = e.http_status();
                crate::telemetry::record(endpoint, "none", "none", status.as_u16(), code, secs);
                Err(e.to_grpc())
            }
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn uuid(field: &str, s: &str) -> Result<uuid::Uuid, ServiceError> {
    s.parse()
        .map_err(|_| ServiceError::invalid(field, format!("{:?} is not a UUID", short(s))))
}

fn one_of<T: std::str::FromStr + std::fmt::Display>(
    field: &str,
    s: &str,
    all: &[T],
) -> Result<T, ServiceError> {
    s.parse().map_err(|_| {
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        ServiceError::invalid(
            field,
            format!(
                "unknown value {:?}, expected one of {}",
                short(s),
                names.join(", ")
            ),
        )
    })
}

/// The HTTP API's request from the gRPC one: the same struct, so the same
/// validation follows.
fn match_request(r: ml::MatchRequest) -> Result<MatchRequest, ServiceError> {
    Ok(MatchRequest {
        user_a_id: uuid("user_a_id", &r.user_a_id)?,
        user_b_id: uuid("user_b_id", &r.user_b_id)?,
        context: r.context.map(|c| MatchContextBody {
            destination: c.destination,
            dates: c.dates,
            interests: (!c.interests.is_empty()).then_some(c.interests),
        }),
    })
}

fn recommend_request(r: ml::RecommendRequest) -> Result<RecommendRequest, ServiceError> {
    let filters = match r.filters {
        None => None,
        Some(f) => Some(RecommendFilters {
            budget: f
                .budget
                .map(|b| one_of("filters.budget", &b, Budget::ALL))
                .transpose()?,
            duration: f
                .duration
                .map(|d| one_of("filters.duration", &d, TripDuration::ALL))
                .transpose()?,
        }),
    };
    Ok(RecommendRequest {
        user_id: uuid("user_id", &r.user_id)?,
        limit: r.limit.unwrap_or(10),
        filters,
    })
}

fn notify_request(r: ml::NotifyRequest) -> Result<NotifyRequest, ServiceError> {
    Ok(NotifyRequest {
        user_id: uuid("user_id", &r.user_id)?,
        notification_type: one_of(
            "notification_type",
            &r.notification_type,
            NotificationType::ALL,
        )?,
        urgency: match r.urgency {
            None => Urgency::Medium,
            Some(u) => one_of("urgency", &u, Urgency::ALL)?,
        },
    })
}

#[tonic::async_trait]
impl MlService for Grpc {
    async fn score_match(
        &self,
        req: Request<ml::MatchRequest>,
    ) -> Result<Response<ml::MatchResponse>, Status> {
        let p = &self.p;
        self.call("/mlservice.v1.MlService/ScoreMatch", true, async move {
            let r = match_request(req.into_inner())?;
            Ok(p.score_match(&r).await?.answer(|b| ml::MatchResponse {
                score: b.score,
                confidence: b.confidence,
                factors: Some(ml::MatchFactors {
                    interest_overlap: b.factors.interest_overlap,
                    travel_style: b.factors.travel_style,
                    personality: b.factors.personality,
                }),
                latency_ms: b.latency_ms,
                fallback: b.fallback,
            }))
        })
        .await
    }

    async fn recommend_destinations(
        &self,
        req: Request<ml::RecommendRequest>,
    ) -> Result<Response<ml::RecommendResponse>, Status> {
        let p = &self.p;
        self.call(
            "/mlservice.v1.MlService/RecommendDestinations",
            true,
            async move {
                let r = recommend_request(req.into_inner())?;
                Ok(p.recommend(&r).await?.answer(|b| ml::RecommendResponse {
                    recommendations: b
                        .recommendations
                        .into_iter()
                        .map(|r| ml::Recommendation {
                            destination: r.destination,
                            score: r.score,
                            reason: r.reason,
                        })
                        .collect(),
                    fallback: b.fallback,
                }))
            },
        )
        .await
    }

    async fn optimize_notification(
        &self,
        req: Request<ml::NotifyRequest>,
    ) -> Result<Response<ml::NotifyResponse>, Status> {
        let p = &self.p;
        self.call(
            "/mlservice.v1.MlService/OptimizeNotification",
            true,
            async move {
                let r = notify_request(req.into_inner())?;
                Ok(p.optimize_notification(&r)
                    .await?
                    .answer(|b| ml::NotifyResponse {
                        send_at: b.send_at,
                        channel: b.channel.as_str().into(),
                        confidence: b.confidence,
                        reason: b.reason,
                        fallback: b.fallback,
                    }))
            },
        )
        .await
    }
}

fn plain<T>(body: T) -> Answer<T> {
    Answer {
        body,
        model: None,
        cached: false,
        fallback: false,
    }
}

fn tensors(ts: Vec<v2::TensorMeta>) -> Vec<oip::model_metadata_response::TensorMetadata> {
    ts.into_iter()
        .map(|t| oip::model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype.into(),
            shape: t.shape,
        })
        .collect()
}

/// The inputs of a `ModelInfer` request: raw little-endian bytes (one entry
/// of `raw_input_contents` per input) or typed `fp32_contents`.
fn infer_inputs(
    r: &mut oip::ModelInferRequest,
) -> Result<(Vec<v2::InputTensor>, bool), ServiceError> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServiceError::invalid(
            "raw_input_contents",
            format!(
                "has {} entries for {} inputs",
                r.raw_input_contents.len(),
                r.inputs.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.iter_mut().enumerate() {
        v2::check_datatype(i, &t.datatype)?;
        let data = if raw {
            let bytes = &r.raw_input_contents[i];
            if !bytes.len().is_multiple_of(4) {
                return Err(ServiceError::invalid(
                    format!("raw_input_contents[{i}]"),
                    format!(
                        "has {} bytes, not a whole number of FP32 values",
                        bytes.len()
                    ),
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            t.contents
                .take()
                .map(|c| c.fp32_contents)
                .unwrap_or_default()
        };
        out.push(v2::InputTensor {
            name: std::mem::take(&mut t.name),
            shape: std::mem::take(&mut t.shape),
            data,
        });
    }
    Ok((out, raw))
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<oip::ServerLiveRequest>,
    ) -> Result<Response<oip::ServerLiveResponse>, Status> {
        Ok(Response::new(oip::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<oip::ServerReadyRequest>,
    ) -> Result<Response<oip::ServerReadyResponse>, Status> {
        Ok(Response::new(oip::ServerReadyResponse {
            ready: v2::server_ready(&self.p),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<oip::ModelReadyRequest>,
    ) -> Result<Response<oip::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(oip::ModelReadyResponse {
            ready: v2::model_ready(&self.p, &r.name, Some(&r.version)),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<oip::ServerMetadataRequest>,
    ) -> Result<Response<oip::ServerMetadataResponse>, Status> {
        let (name, version) = v2::server_name();
        Ok(Response::new(oip::ServerMetadataResponse {
            name: name.into(),
            version: version.into(),
            extensions: v2::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<oip::ModelMetadataRequest>,
    ) -> Result<Response<oip::ModelMetadataResponse>, Status> {
        let p = &self.p;
        self.call(
            "/inference.GRPCInferenceService/ModelMetadata",
            false,
            async move {
                let r = req.into_inner();
                let m = v2::metadata(p, &r.name, Some(&r.version))?;
                Ok(plain(oip::ModelMetadataResponse {
                    name: m.name,
                    versions: m.versions,
                    platform: m.platform.into(),
                    inputs: tensors(m.inputs),
                    outputs: tensors(m.outputs),
                }))
            },
        )
        .await
    }

    async fn model_infer(
        &self,
        req: Request<oip::ModelInferRequest>,
    ) -> Result<Response<oip::ModelInferResponse>, Status> {
        let p = &self.p;
        self.call(
            "/inference.GRPCInferenceService/ModelInfer",
            true,
            async move {
                let mut r = req.into_inner();
                let (inputs, raw) = infer_inputs(&mut r)?;
                let requested: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
                let done =
                    v2::infer(p, &r.model_name, Some(&r.model_version), inputs, &requested).await?;
                let mut resp = oip::ModelInferResponse {
                    model_name: done.model.as_str().into(),
                    model_version: done.version.to_string(),
                    id: r.id,
                    ..Default::default()
                };
                for t in done.outputs {
                    let mut out = oip::model_infer_response::InferOutputTensor {
                        name: t.name,
                        datatype: v2::FP32.into(),
                        shape: t.shape,
                        ..Default::default()
                    };
                    // Answer in the request's form: raw bytes for raw inputs.
                    if raw {
                        resp.raw_output_contents
                            .push(t.data.iter().flat_map(|x| x.to_le_bytes()).collect());
                    } else {
                        out.contents = Some(oip::InferTensorContents {
                            fp32_contents: t.data,
                            ..Default::default()
                        });
                    }
                    resp.outputs.push(out);
                }
                Ok(Answer {
                    body: resp,
                    model: Some((done.model, done.version)),
                    cached: false,
                    fallback: false,
                })
            },
        )
        .await
    }
}

/// The API-key check of every call to the two APIs (health and reflection
/// stay open, like `/health`).
#[derive(Clone)]
struct Authenticate(ApiKeys);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.0.is_empty() || self.0.accepts_authorization(value) {
            Ok(req)
        } else {
            Err(ServiceError::Unauthorized.to_grpc())
        }
    }
}

/// The accepted connections of `listener`, with Nagle's algorithm off:
/// with it on, a small response waits for the client's delayed ACK, which
/// put a 40 ms p99 on gRPC calls at 50 concurrent streams (bench/grpc.sh).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Serve gRPC on `listener` until `shutdown` completes; calls in flight
/// then finish. `admission` is the HTTP endpoints' own, so the bound on
/// requests in flight covers both transports.
pub async fn run(
    listener: tokio::net::TcpListener,
    predictor: Arc<Predictor>,
    settings: &Settings,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tonic::service::interceptor::InterceptedService;
    let (reporter, health) = tonic_health::server::health_reporter();
    // The health service follows readiness: SERVING while every model is
    // loaded and shutdown has not begun.
    let p = Arc::clone(&predictor);
    let watcher = tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = v2::server_ready(&p);
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in [
                    "",
                    "mlservice.v1.MlService",
                    "inference.GRPCInferenceService",
                ] {
                    reporter.set_service_status(name, status).await;
                }
                last = Some(ready);
            }
            tokio::time::sleep(HEALTH_EVERY).await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let svc = Grpc {
        p: predictor,
        admission,
    };
    let auth = Authenticate(ApiKeys::new(settings.api_keys.clone()));
    let max = settings.max_body_bytes;
    let domain = MlServiceServer::new(svc.clone()).max_decoding_message_size(max);
    let inference = GrpcInferenceServiceServer::new(svc).max_decoding_message_size(max);
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(InterceptedService::new(domain, auth.clone()))
        .add_service(InterceptedService::new(inference, auth))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    watcher.abort();
    served.context("serving gRPC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_convert_with_the_http_field_names() {
        let e = match_request(ml::MatchRequest {
            user_a_id: "nope".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("user_a_id"));
        let e = recommend_request(ml::RecommendRequest {
            user_id: uuid::Uuid::nil().to_string(),
            limit: None,
            filters: Some(ml::RecommendFilters {
                budget: Some("cheap".into()),
                duration: None,
            }),
        })
        .unwrap_err();
        assert_eq!(e.field().as_deref(), Some("filters.budget"));
        assert!(e.to_string().contains("low, medium, high"), "{e}");
        let r = recommend_request(ml::RecommendRequest {
            user_id: uuid::Uuid::nil().to_string(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.limit, 10, "an unset limit is the HTTP API's default");
        let n = notify_request(ml::NotifyRequest {
            user_id: uuid::Uuid::nil().to_string(),
            notification_type: "reminder".into(),
            urgency: None,
        })
        .unwrap();
        assert_eq!(n.urgency, Urgency::Medium);
    }

    #[test]
    fn raw_inputs_decode_little_endian_and_check_counts() {
        let mut r = oip::ModelInferRequest {
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                ..Default::default()
            }],
            raw_input_contents: vec![[1.0f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat()],
            ..Default::default()
        };
        let (t, raw) = infer_inputs(&mut r.clone()).unwrap();
        assert!(raw);
        assert_eq!(t[0].data, vec![1.0, 2.5]);
        r.raw_input_contents[0].pop();
        assert!(infer_inputs(&mut r.clone()).is_err());
        r.raw_input_contents.push(vec![]);
        assert!(infer_inputs(&mut r).is_err());
    }
}
