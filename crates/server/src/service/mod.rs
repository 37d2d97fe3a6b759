//! The prediction service: request → features → inference → post-processing.
//! It knows the data source, the caches and the serving model versions, but
//! no transport: the HTTP and gRPC handlers call these methods and map their
//! errors.
//!
//! Every endpoint runs one skeleton ([`endpoint`]: validation, the A/B
//! route, the prediction cache, the users' features, the model call within
//! its deadline, the fallbacks, the cache write); what differs per endpoint
//! (its rows, its answer, its fallbacks) is in its own file: [`matching`],
//! [`recommend`], [`notify`]. This file holds what they share: the
//! [`Predictor`], features from the caches or the store, the model call with
//! its shadow, and the fallback from another version's cached answer.

mod endpoint;
mod feedback;
mod matching;
mod notify;
mod recommend;

use crate::api::*;
use crate::error::ServiceError;
use crate::lifecycle::{Engine, Registry, ServedModel, Variants};
use chrono::Utc;
use ml_backend::BackendError;
use ml_core::catalogue::Catalogue;
use ml_core::features::UserFeatures;
use ml_core::model::ModelKind;
use ml_core::post;
use ml_data::DataSource;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// An answer and the model version that produced it.
#[derive(Debug)]
pub struct Versioned<T> {
    pub body: T,
    pub model: ModelKind,
    pub version: u64,
    /// `model/version` of the served model ([`ServedModel::label`]).
    pub label: bytes::Bytes,
    /// Whether the prediction cache answered.
    pub cached: bool,
    /// Whether the model could not answer and this is a fallback.
    pub fallback: bool,
    /// The answer's id (UUID v7), as `x-prediction-id` and in the prediction log.
    pub prediction_id: Option<Uuid>,
}

impl<T> Versioned<T> {
    fn new(body: T, m: &ServedModel, cached: bool) -> Self {
        Self {
            body,
            model: m.meta.model,
            version: m.meta.version,
            label: m.label.clone(),
            cached,
            fallback: false,
            prediction_id: None,
        }
    }

    fn fallback(body: T, m: &ServedModel) -> Self {
        Self {
            fallback: true,
            ..Self::new(body, m, false)
        }
    }
}

/// A response that can say it is a fallback.
trait Marked {
    fn marked(self) -> Self;
}

impl Marked for MatchResponse {
    fn marked(self) -> Self {
        Self {
            fallback: true,
            ..self
        }
    }
}

impl Marked for RecommendResponse {
    fn marked(self) -> Self {
        Self {
            fallback: true,
            ..self
        }
    }
}

impl Marked for NotifyResponse {
    fn marked(self) -> Self {
        Self {
            fallback: true,
            ..self
        }
    }
}

/// Versions before the answering one whose cached answer may stand in for it.
const FALLBACK_PREVIOUS_VERSIONS: u64 = 2;

/// Everything a prediction needs, shared by all requests.
pub struct Predictor {
    pub(crate) data: Arc<dyn DataSource>,
    pub(crate) catalogue: Catalogue,
    /// The serving model versions, swapped by reloads.
    pub(crate) models: Arc<Registry>,
    pub(crate) engine: Engine,
    pub(crate) caches: crate::cache::Caches,
    /// Quiet hours, default channels and the frequency cap.
    pub(crate) notification_policy: post::NotificationPolicy,
    pub(crate) gpu: bool,
    /// Longest wait for one model call before the fallback answers.
    pub(crate) inference_timeout: Duration,
    /// What interest phrases mean (exact names, or the embedding model's).
    pub(crate) interests: crate::interests::Interests,
    /// Set by the shutdown signal: readiness answers 503 from then on.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Use an affine recommendation model's effects table for its reasons
    /// (REC_LINEAR_ATTRIBUTION).
    pub(crate) linear_attribution: bool,
    /// Run a row-independent notification model on the plan's hours only
    /// (TIMING_PLAN_HOURS).
    pub(crate) timing_plan_hours: bool,
    /// Where each answer is recorded (PREDICTION_LOG).
    pub(crate) log: crate::predlog::PredictionLog,
    /// Outcome windows and how experiments are decided.
    pub(crate) experiments: crate::settings::ExperimentSettings,
}

impl Predictor {
    /// Whether shutdown has begun (readiness is false).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The destination catalogue the service answers with.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Where users' data is read.
    pub fn data(&self) -> &Arc<dyn DataSource> {
        &self.data
    }

    /// The prediction log's writer.
    pub fn prediction_log(&self) -> &crate::predlog::PredictionLog {
        &self.log
    }

    /// The serving model versions.
    pub fn models(&self) -> &Arc<Registry> {
        &self.models
    }

    pub fn models_loaded(&self) -> bool {
        self.models.all_loaded()
    }

    /// The versions of `kind` serving now, and the one that answers `user`.
    fn model(
        &self,
        kind: ModelKind,
        user: Uuid,
    ) -> Result<(Arc<Variants>, Arc<ServedModel>), ServiceError> {
        let vs = self
            .models
            .get(kind)
            .ok_or(ServiceError::ModelUnavailable(kind.as_str()))?;
        let m = Arc::clone(vs.pick(kind, user));
        Ok((vs, m))
    }

    /// The features as a model of exact names reads them (no soft profile).
    fn exact_names(u: Arc<UserFeatures>) -> Arc<UserFeatures> {
        if u.semantic_interests.is_none() {
            return u;
        }
        let mut f = (*u).clone();
        f.semantic_interests = None;
        Arc::new(f)
    }

    /// Features of users (each with the request field that named it): from the
    /// caches, else computed from the data source and written back.
    async fn users<const N: usize>(
        &self,
        ids: [(&str, Uuid); N],
    ) -> Result<[Arc<UserFeatures>; N], ServiceError> {
        let uuids: [Uuid; N] = std::array::from_fn(|i| ids[i].1);
        let mut found = self.caches.features(&uuids).await;
        // The steady state (every user from a cache) skips this: nothing to
        // compute or to store.
        if !found.iter().all(Option::is_some) {
            let missing: Vec<usize> = (0..N).filter(|&i| found[i].is_none()).collect();
            let computed = futures::future::try_join_all(
                missing
                    .iter()
                    .map(|&i| self.compute_user(ids[i].0, ids[i].1)),
            )
            .await?;
            // Features whose interests could not be embedded in time are
            // used once, not cached, so the next request tries again.
            let complete: Vec<Arc<UserFeatures>> = computed
                .iter()
                .filter(|(_, complete)| *complete)
                .map(|(f, _)| Arc::clone(f))
                .collect();
            self.caches.put_features(&complete);
            for (i, (f, _)) in missing.into_iter().zip(computed) {
                found[i] = Some(f);
            }
        }
        // Every slot is filled: from a cache, or computed just above.
        let mut found = found.into_iter();
        Ok(std::array::from_fn(|_| {
            found
                .next()
                .flatten()
                .expect("each user was found in a cache or computed")
        }))
    }

    /// Features of a user from the data source, as of now, and whether they
    /// are complete (false: the interests' meaning was not available in time).
    async fn compute_user(
        &self,
        field: &str,
        id: Uuid,
    ) -> Result<(Arc<UserFeatures>, bool), ServiceError> {
        let unknown = || ServiceError::UnknownUser {
            field: field.to_string(),
            id,
        };
        let h = self.data.user_history(id).await?.ok_or_else(unknown)?;
        let p = h.profile.as_ref().ok_or_else(unknown)?;
        let mut f = UserFeatures::from_history(p, &h, &self.catalogue, Utc::now());
        let semantic = self.interests.profile(&p.interests).await;
        let complete = semantic.is_ok();
        f.semantic_interests = semantic.unwrap_or(None);
        Ok((Arc::new(f), complete))
    }

    /// One model call within INFERENCE_TIMEOUT_MS, mirrored to the shadow
    /// version if there is one. `Ok(None)`: the model failed or timed out,
    /// and the caller answers with a fallback. A full queue is not a model
    /// failure: it stays 503 `overloaded`, so load is shed, not hidden.
    async fn infer(
        &self,
        vs: &Variants,
        m: &ServedModel,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<Option<Vec<Vec<f32>>>, ServiceError> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "inference",
            model = m.meta.model.as_str(),
            version = m.meta.version,
            rows
        );
        let mirror = vs.shadow.as_ref().map(|s| (Arc::clone(s), input.clone()));
        let result = tokio::time::timeout(
            self.inference_timeout,
            m.batcher.run(input, rows).instrument(span),
        )
        .await;
        let reason = match result {
            Ok(Ok(out)) => {
                if let Some((shadow, input)) = mirror {
                    self.shadow(shadow, input, rows, &out);
                }
                return Ok(Some(out));
            }
            Ok(Err(e @ (BackendError::Overloaded | BackendError::ShutDown))) => {
                return Err(e.into())
            }
            Ok(Err(e)) => {
                tracing::warn!(model = %m.meta.model, version = m.meta.version, error = %e, "model call failed: answering with the fallback");
                "inference_failed"
            }
            Err(_) => {
                tracing::warn!(model = %m.meta.model, version = m.meta.version, ms = self.inference_timeout.as_millis() as u64, "model call timed out: answering with the fallback");
                "inference_timeout"
            }
        };
        crate::telemetry::fallback(m.meta.model.as_str(), m.meta.version, reason);
        Ok(None)
    }

    /// Run the shadow version on a copy of the input, off the request, and
    /// record how far its first output is from the served one. A shadow
    /// never delays or changes an answer; when its queue is full the copy is
    /// dropped.
    fn shadow(&self, shadow: Arc<ServedModel>, input: Vec<f32>, rows: usize, served: &[Vec<f32>]) {
        let served = served.first().cloned().unwrap_or_default();
        let timeout = self.inference_timeout;
        tokio::spawn(async move {
            let model = shadow.meta.model.as_str();
            let version = shadow.meta.version;
            match tokio::time::timeout(timeout, shadow.batcher.run(input, rows)).await {
                Ok(Ok(out)) => {
                    let theirs = out.first().map(Vec::as_slice).unwrap_or(&[]);
                    let n = theirs.len().min(served.len()).max(1);
                    let mad = theirs
                        .iter()
                        .zip(&served)
                        .map(|(a, b)| (a - b).abs() as f64)
                        .sum::<f64>()
                        / n as f64;
                    crate::telemetry::shadow(model, version, "ok", Some(mad));
                }
                Ok(Err(BackendError::Overloaded)) => {
                    crate::telemetry::shadow(model, version, "dropped", None)
                }
                _ => crate::telemetry::shadow(model, version, "error", None),
            }
        });
    }

    /// A marked fallback answer: the same request's cached answer from
    /// another version (`cached_fallback`), else `default()`. Never cached.
    async fn fallback<T>(
        &self,
        endpoint: &str,
        (vs, m): (&Variants, &ServedModel),
        user: Uuid,
        digest: Option<&str>,
        default: impl FnOnce() -> T,
    ) -> Versioned<T>
    where
        T: serde::de::DeserializeOwned + Marked,
    {
        let cached = match digest {
            Some(d) => self.cached_fallback::<T>(endpoint, vs, m, user, d).await,
            None => None,
        };
        let body = match cached {
            Some(body) => body,
            None => default(),
        };
        Versioned::fallback(body.marked(), m)
    }

    /// A cached answer to the same request from another serving version or
    /// one of the versions just before the failing one.
    async fn cached_fallback<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        vs: &Variants,
        m: &ServedModel,
        user: Uuid,
        digest: &str,
    ) -> Option<T> {
        let v = m.meta.version;
        let mut versions: Vec<u64> = vs
            .routes
            .iter()
            .map(|(r, _)| r.meta.version)
            .chain((1..=FALLBACK_PREVIOUS_VERSIONS).filter_map(|d| v.checked_sub(d)))
            .filter(|o| *o != v && *o > 0)
            .collect();
        versions.dedup();
        for other in versions {
            let key =
                self.caches
                    .prediction_key(endpoint, m.meta.model.as_str(), other, user, digest);
            if let Some(body) = self.caches.prediction::<T>(&key).await {
                return Some(body);
            }
        }
        None
    }

    pub async fn score_match(
        &self,
        req: &MatchRequest,
    ) -> Result<Versioned<MatchResponse>, ServiceError> {
        self.predict::<matching::Match, 2>(req).await
    }

    pub async fn recommend(
        &self,
        req: &RecommendRequest,
    ) -> Result<Versioned<RecommendResponse>, ServiceError> {
        self.predict::<recommend::Recommend, 1>(req).await
    }

    pub async fn optimize_notification(
        &self,
        req: &NotifyRequest,
    ) -> Result<Versioned<NotifyResponse>, ServiceError> {
        self.predict::<notify::Notify, 1>(req).await
    }

    /// Log and count an answer given without the user's data.
    fn data_fallback(&self, m: &ServedModel, e: &ml_data::DataError) {
        tracing::warn!(model = %m.meta.model, error = %e, "user data unavailable: answering with the fallback");
        crate::telemetry::fallback(m.meta.model.as_str(), m.meta.version, "data_unavailable");
    }

    pub async fn health(&self) -> HealthResponse {
        let models_loaded = self.models_loaded();
        let data_ok = self.data.ping().await.is_ok();
        let redis_connected = self.caches.redis_connected();
        let redis_ok = redis_connected || !self.caches.store.shared();
        HealthResponse {
            status: if models_loaded && data_ok && redis_ok {
                "healthy"
            } else {
                "degraded"
            }
            .into(),
            models_loaded,
            database_connected: data_ok,
            redis_connected,
            gpu_available: self.gpu,
        }
    }
}
