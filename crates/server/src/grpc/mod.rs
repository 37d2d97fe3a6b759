//! The gRPC transport (tonic) on `GRPC_PORT`: the domain service
//! `mlservice.v1.MlService` (`proto/mlservice/v1/ml_service.proto`), the Open
//! Inference Protocol's `inference.GRPCInferenceService`
//! (`proto/inference/grpc_predict_v2.proto`), the standard `grpc.health.v1`
//! health service and server reflection. Requests carry the same API key
//! (`authorization: Bearer <key>` metadata), share the HTTP endpoints'
//! admission (one bound on requests in flight for both transports) and
//! metrics, and fail with the gRPC code beside the HTTP status of the same
//! [`ServiceError`].

use crate::admission::{Admission, ApiKeys};
use crate::error::ServiceError;
use crate::service::{Predictor, Versioned};
use crate::settings::Settings;
use crate::v2;
use ml_core::model::ModelKind;
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

mod convert;

use convert::{infer_inputs, match_request, notify_request, recommend_request, tensors};
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
    prediction_id: Option<uuid::Uuid>,
}

impl<B> Versioned<B> {
    fn answer<T>(self, f: impl FnOnce(B) -> T) -> Answer<T> {
        Answer {
            model: Some((self.model, self.version)),
            cached: self.cached,
            fallback: self.fallback,
            prediction_id: self.prediction_id,
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
                        md.insert(crate::headers::MODEL_VERSION_HEADER, v);
                    }
                    md.insert(
                        crate::headers::CACHE_HEADER,
                        MetadataValue::from_static(if a.cached { "hit" } else { "miss" }),
                    );
                }
                if a.fallback {
                    md.insert(
                        crate::headers::FALLBACK_HEADER,
                        MetadataValue::from_static("true"),
                    );
                }
                if let Some(id) = a.prediction_id {
                    if let Ok(v) = id.to_string().parse() {
                        md.insert(crate::headers::PREDICTION_ID_HEADER, v);
                    }
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

    async fn feedback(
        &self,
        req: Request<ml::FeedbackRequest>,
    ) -> Result<Response<ml::FeedbackResponse>, Status> {
        self.feedback_call(req).await
    }
}

impl Grpc {
    async fn feedback_call(
        &self,
        req: Request<ml::FeedbackRequest>,
    ) -> Result<Response<ml::FeedbackResponse>, Status> {
        let p = &self.p;
        self.call("/mlservice.v1.MlService/Feedback", true, async move {
            let r = convert::feedback_request(req.into_inner())?;
            let a = p.feedback(&r).await?;
            Ok(plain(ml::FeedbackResponse {
                prediction_id: a.prediction_id.to_string(),
                outcome: a.outcome.as_str().into(),
                recorded: a.recorded,
            }))
        })
        .await
    }
}

fn plain<T>(body: T) -> Answer<T> {
    Answer {
        body,
        model: None,
        cached: false,
        fallback: false,
        prediction_id: None,
    }
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
                    prediction_id: None,
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
    let auth = Authenticate(ApiKeys::new(settings.http.api_keys.clone()));
    let max = settings.http.max_body_bytes;
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
