//! The prediction service: request → features → inference → post-processing.
//! It knows the data source and the inference pool, but no transport: the HTTP
//! handlers (and later gRPC) call these methods and map their errors.

use crate::api::*;
use crate::error::ServiceError;
use crate::lifecycle::{Registry, ServedModel, Variants};
use chrono::{SecondsFormat, Utc};
use ml_backend::{BackendError, BatchConfig, Batcher, InferencePool, LoadedModel, ModelMeta};
use ml_core::catalogue::Catalogue;
use ml_core::features::{self, UserFeatures, HOURS_PER_WEEK};
use ml_core::post;
use ml_core::train::ModelKind;
use ml_data::DataSource;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The inference engine: the pool of inference threads shared by all models
/// and how each model's requests are batched in front of it.
#[derive(Debug, Clone)]
pub struct Engine {
    pub pool: Arc<InferencePool>,
    pub batch: BatchConfig,
}

impl Engine {
    pub fn new(threads: usize, queue: usize, batch: BatchConfig) -> Self {
        Self {
            pool: Arc::new(InferencePool::new(threads, queue)),
            batch,
        }
    }

    /// Serve a loaded model version: start its batcher.
    pub fn serve_model(
        &self,
        meta: ModelMeta,
        model: Arc<dyn LoadedModel>,
        catalogue: &Catalogue,
        probes: crate::lifecycle::Probes,
    ) -> Arc<ServedModel> {
        let rows_per_call = crate::telemetry::batch_size(meta.model.as_str());
        let observer: ml_backend::BatchObserver =
            Arc::new(move |_requests, rows| rows_per_call.record(rows as f64));
        let batcher = Batcher::spawn(model, Arc::clone(&self.pool), self.batch, observer);
        Arc::new(ServedModel::new(meta, batcher, catalogue, probes))
    }
}

/// Scores by hour of the week from the scores of `hours` (in that order);
/// hours without a score are NaN, which a plan never reads.
fn by_hour_of_week(hours: &[usize], scores: Vec<f32>) -> Vec<f32> {
    if hours.len() == HOURS_PER_WEEK && hours.iter().enumerate().all(|(i, &h)| i == h) {
        return scores;
    }
    let mut all = vec![f32::NAN; HOURS_PER_WEEK];
    for (&h, s) in hours.iter().zip(scores) {
        all[h] = s;
    }
    all
}

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
    pub data: Arc<dyn DataSource>,
    pub catalogue: Catalogue,
    /// The serving model versions, swapped by reloads.
    pub models: Arc<Registry>,
    pub engine: Engine,
    pub caches: crate::cache::Caches,
    pub quiet_hours: post::QuietHours,
    pub gpu: bool,
    /// Longest wait for one model call before the fallback answers.
    pub inference_timeout: Duration,
    /// What interest phrases mean (exact names, or the embedding model's).
    pub interests: crate::interests::Interests,
    /// Set by the shutdown signal: readiness answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Use an affine recommendation model's effects table for its reasons
    /// (REC_LINEAR_ATTRIBUTION).
    pub linear_attribution: bool,
    /// Run a row-independent notification model on the plan's hours only
    /// (TIMING_PLAN_HOURS).
    pub timing_plan_hours: bool,
}

impl Predictor {
    /// Whether shutdown has begun (readiness is false).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
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
    async fn fallback<T, R>(
        &self,
        endpoint: &str,
        (vs, m): (&Variants, &ServedModel),
        user: Uuid,
        req: &R,
        default: impl FnOnce() -> T,
    ) -> Versioned<T>
    where
        T: serde::de::DeserializeOwned + Marked,
        R: serde::Serialize,
    {
        let body = match self
            .cached_fallback::<T, R>(endpoint, vs, m, user, req)
            .await
        {
            Some(body) => body,
            None => default(),
        };
        Versioned::fallback(body.marked(), m)
    }

    /// A cached answer to the same request from another serving version or
    /// one of the versions just before the failing one.
    async fn cached_fallback<T: serde::de::DeserializeOwned, R: serde::Serialize>(
        &self,
        endpoint: &str,
        vs: &Variants,
        m: &ServedModel,
        user: Uuid,
        req: &R,
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
            let key = self
                .caches
                .prediction_key(endpoint, m.meta.model.as_str(), other, user, req);
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
        let t0 = Instant::now();
        req.validate()?;
        let (vs, m) = self.model(ModelKind::TravelMatch, req.user_a_id)?;
        let key = self.caches.prediction_key(
            "match",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_a_id,
            req,
        );
        let elapsed_ms = || (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        if let Some(mut body) = self.caches.prediction::<MatchResponse>(&key).await {
            body.latency_ms = elapsed_ms();
            return Ok(Versioned::new(body, &m, true));
        }
        let [a, b] = match self
            .users([("user_a_id", req.user_a_id), ("user_b_id", req.user_b_id)])
            .await
        {
            Ok(users) => users,
            Err(ServiceError::Data(e)) => {
                // The users' data cannot be read now: another version's
                // cached answer, else "no information" (0.5, confidence 0).
                self.data_fallback(&m, &e);
                let mut v = self
                    .fallback("match", (&vs, &m), req.user_a_id, req, || MatchResponse {
                        score: 0.5,
                        confidence: 0.0,
                        factors: MatchFactors {
                            interest_overlap: 0.5,
                            travel_style: 0.5,
                            personality: 0.5,
                        },
                        latency_ms: 0.0,
                        fallback: true,
                    })
                    .await;
                v.body.latency_ms = elapsed_ms();
                return Ok(v);
            }
            Err(e) => return Err(e),
        };
        let ctx = req.context.clone().unwrap_or_default();
        let interests = ctx.interests.as_deref().unwrap_or(&[]);
        let mut ctx = post::match_context(&self.catalogue, ctx.destination.as_deref(), interests);
        let (a, b) = if m.meta.params.interest_space() == features::InterestSpace::Semantic {
            ctx.semantic_interests = self.interests.profile(interests).await.unwrap_or(None);
            (a, b)
        } else {
            // A model trained on exact names reads exact names, even where
            // the cached features carry the interests' meaning.
            (Self::exact_names(a), Self::exact_names(b))
        };
        let x = features::match_features(&a, &b, &ctx);
        // An exact model reads the row's first columns, a semantic one all.
        let width = m.meta.features.len().min(x.len());
        let Some(out) = self.infer(&vs, &m, x[..width].to_vec(), 1).await? else {
            let mut v = self
                .fallback("match", (&vs, &m), req.user_a_id, req, || {
                    let f = post::match_fallback(&x);
                    MatchResponse {
                        score: round4(f.score),
                        confidence: 0.0,
                        factors: MatchFactors {
                            interest_overlap: round4(f.interest_overlap),
                            travel_style: round4(f.travel_style),
                            personality: round4(f.personality),
                        },
                        latency_ms: 0.0,
                        fallback: true,
                    }
                })
                .await;
            v.body.latency_ms = elapsed_ms();
            return Ok(v);
        };
        let score = out[0][0];
        let f = &out[1];
        let confidence = post::match_confidence(score, post::match_completeness(&a, &b));
        let body = MatchResponse {
            score: round4(score),
            confidence: round4(confidence),
            factors: MatchFactors {
                interest_overlap: round4(f[0]),
                travel_style: round4(f[1]),
                personality: round4(f[2]),
            },
            latency_ms: elapsed_ms(),
            fallback: false,
        };
        self.caches.put_prediction(key, &body, self.caches.ttl());
        Ok(Versioned::new(body, &m, false))
    }

    /// Columns of the recommendation model a request may get: destinations
    /// the catalogue knows, within the filters, and (when the user is known)
    /// not yet consumed. Filters apply before top-k, so `limit` results come
    /// back whenever that many destinations match.
    fn rec_candidates<'a>(
        &'a self,
        m: &'a ServedModel,
        req: &RecommendRequest,
        user: Option<&UserFeatures>,
    ) -> impl Iterator<Item = u32> + 'a {
        let (budget, duration) = req
            .filters
            .as_ref()
            .map_or((None, None), |f| (f.budget, f.duration));
        let consumed = user
            .map(|u| post::destination_mask(&u.consumed))
            .unwrap_or_default();
        m.rec_columns
            .iter()
            .enumerate()
            .filter(move |(_, d)| {
                d.is_some_and(|d| {
                    !consumed.get(d).is_some_and(|c| *c)
                        && post::passes_filters(&self.catalogue.destinations[d], budget, duration)
                })
            })
            .map(|(c, _)| c as u32)
    }

    /// The documented recommendation fallback: the most popular candidates
    /// (`params.destination_popularity` of the version), marked.
    fn popular(
        &self,
        m: &ServedModel,
        req: &RecommendRequest,
        user: Option<&UserFeatures>,
    ) -> RecommendResponse {
        let popularity = m.meta.params.destination_popularity.as_deref();
        let scores: Vec<f32> = (0..m.rec_columns.len())
            .map(|c| popularity.and_then(|p| p.get(c).copied()).unwrap_or(0.0))
            .collect();
        let candidates = self.rec_candidates(m, req, user);
        let top = ml_core::rec_bench::top_k_of(&scores, candidates, req.limit as usize);
        RecommendResponse {
            recommendations: top
                .into_iter()
                .filter_map(|c| m.rec_columns[c as usize])
                .map(|d| Recommendation {
                    destination: self.catalogue.destinations[d].name.clone(),
                    score: 0.0,
                    reason: post::recommendation_reason(&post::RecDriver::Popularity),
                })
                .collect(),
            fallback: true,
        }
    }

    /// Log and count an answer given without the user's data.
    fn data_fallback(&self, m: &ServedModel, e: &ml_data::DataError) {
        tracing::warn!(model = %m.meta.model, error = %e, "user data unavailable: answering with the fallback");
        crate::telemetry::fallback(m.meta.model.as_str(), m.meta.version, "data_unavailable");
    }

    pub async fn recommend(
        &self,
        req: &RecommendRequest,
    ) -> Result<Versioned<RecommendResponse>, ServiceError> {
        req.validate()?;
        let (vs, m) = self.model(ModelKind::Recommendation, req.user_id)?;
        let key = self.caches.prediction_key(
            "recommend",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_id,
            req,
        );
        if let Some(body) = self.caches.prediction::<RecommendResponse>(&key).await {
            return Ok(Versioned::new(body, &m, true));
        }
        let u = match self.users([("user_id", req.user_id)]).await {
            Ok([u]) => u,
            Err(ServiceError::Data(e)) => {
                // The user's data cannot be read now: the most popular
                // destinations within the filters (their history unknown).
                self.data_fallback(&m, &e);
                return Ok(self
                    .fallback("recommend", (&vs, &m), req.user_id, req, || {
                        self.popular(&m, req, None)
                    })
                    .await);
            }
            Err(e) => return Err(e),
        };
        let rec_columns = &m.rec_columns;
        let cols = rec_columns.len();
        let effects = m.effects.as_ref().filter(|_| self.linear_attribution);
        let (rows, history) = post::rec_attribution_rows(
            &u,
            rec_columns,
            m.meta.params.interest_space(),
            effects.is_none(),
        );
        let n_rows = if effects.is_none() {
            4 + history.len()
        } else {
            3
        };
        let Some(mut out) = self.infer(&vs, &m, rows, n_rows).await? else {
            // Another version's cached answer, else the most popular
            // destinations the user has not been to, within the filters.
            return Ok(self
                .fallback("recommend", (&vs, &m), req.user_id, req, || {
                    self.popular(&m, req, Some(&u))
                })
                .await);
        };
        let out = out.swap_remove(0);
        let row = |r: usize| &out[r * cols..(r + 1) * cols];
        let scores = row(0);
        let candidates = self.rec_candidates(&m, req, Some(&u));
        let top = ml_core::rec_bench::top_k_of(scores, candidates, req.limit as usize);
        let recommendations = top
            .into_iter()
            .map(|c| {
                let c = c as usize;
                let d = rec_columns[c].unwrap_or_default();
                let from_interests = row(0)[c] - row(1)[c];
                let from_history = row(0)[c] - row(2)[c];
                // An affine model's answer on the empty row is known from
                // load (its effects' base), so that row is not run.
                let from_popularity = match effects {
                    Some(e) => e.base[c],
                    None => row(3)[c],
                };
                // The two history destinations with the largest share: their
                // effect, else the score less the score without them.
                let mut names = [("", false); 2];
                let mut named = 0;
                let driver = if from_history > 0.0
                    && from_history >= from_interests
                    && from_history >= from_popularity
                {
                    let on_c = effects.map(|e| e.on(c));
                    let (top, n) =
                        post::strongest_two(history.iter().enumerate().map(|(k, &h)| {
                            let share = match on_c {
                                Some(e) => e[h],
                                None => row(0)[c] - row(4 + k)[c],
                            };
                            (share, h)
                        }));
                    for (_, h) in &top[..n] {
                        if let Some(d) = rec_columns[*h] {
                            names[named] = (
                                self.catalogue.destinations[d].name.as_str(),
                                u.has_consumed(d),
                            );
                            named += 1;
                        }
                    }
                    post::RecDriver::History(&names[..named])
                } else if from_interests > 0.0 && from_interests >= from_popularity {
                    post::RecDriver::Profile {
                        interests: u.interests.intersection(&self.catalogue.tags[d]),
                        budget: u.budget,
                        duration: u.preferred_duration,
                    }
                } else {
                    post::RecDriver::Popularity
                };
                Recommendation {
                    destination: self.catalogue.destinations[d].name.clone(),
                    score: round4(scores[c]),
                    reason: post::recommendation_reason(&driver),
                }
            })
            .collect();
        let body = RecommendResponse {
            recommendations,
            fallback: false,
        };
        self.caches.put_prediction(key, &body, self.caches.ttl());
        Ok(Versioned::new(body, &m, false))
    }

    pub async fn optimize_notification(
        &self,
        req: &NotifyRequest,
    ) -> Result<Versioned<NotifyResponse>, ServiceError> {
        let (vs, m) = self.model(ModelKind::NotificationTiming, req.user_id)?;
        let key = self.caches.prediction_key(
            "notify",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_id,
            req,
        );
        if let Some(body) = self.caches.prediction::<NotifyResponse>(&key).await {
            return Ok(Versioned::new(body, &m, true));
        }
        let now = Utc::now();
        let u = match self.users([("user_id", req.user_id)]).await {
            Ok([u]) => u,
            Err(ServiceError::Data(e)) => {
                // The user's data cannot be read now: another version's
                // cached answer, else the population's activity under the
                // same policy for a user known only by id. Their time zone is
                // unknown too, so quiet hours are kept in UTC and the answer
                // claims no confidence (the caller sees `fallback`).
                self.data_fallback(&m, &e);
                let u = UserFeatures::from_activity(req.user_id, "UTC", &[]);
                return Ok(self
                    .fallback("notify", (&vs, &m), req.user_id, req, || {
                        let (mut body, _) =
                            self.plan(&m, &u, &m.population.hour_of_week, req, now, None);
                        body.confidence = 0.0;
                        body.reason = format!(
                            "User data unavailable: {} (time zone unknown, UTC assumed)",
                            body.reason
                        );
                        body
                    })
                    .await);
            }
            Err(e) => return Err(e),
        };
        // The plan reads the scores of its hours only (those of the send
        // window, ~10 for a message): when the model answers each row on its
        // own, those rows give the answer all 168 would.
        let slots = post::plan_slots(
            &u,
            req.notification_type,
            req.urgency,
            now,
            self.quiet_hours,
        );
        let hours: Vec<usize> = if self.timing_plan_hours && m.rows_independent {
            slots.hours()
        } else {
            (0..HOURS_PER_WEEK).collect()
        };
        let x = features::timing_rows(&u, &m.population, &hours);
        let Some(mut out) = self.infer(&vs, &m, x, hours.len()).await? else {
            // Another version's cached answer, else the documented default:
            // the population's activity by hour of week stands in for the
            // user's, under the same policy (quiet hours, urgency, channel).
            return Ok(self
                .fallback("notify", (&vs, &m), req.user_id, req, || {
                    self.plan(&m, &u, &m.population.hour_of_week, req, now, Some(&slots))
                        .0
                })
                .await);
        };
        let scores = by_hour_of_week(&hours, out.swap_remove(0));
        let (body, send_at) = self.plan(&m, &u, &scores, req, now, Some(&slots));
        self.caches
            .put_prediction(key, &body, post::plan_valid_for(now, send_at));
        Ok(Versioned::new(body, &m, false))
    }

    /// The notification policy on activity `scores` (one per local hour of
    /// the week); the answer and its send time. `slots`: those already made
    /// for this user, request and clock, if any.
    fn plan(
        &self,
        m: &ServedModel,
        u: &UserFeatures,
        scores: &[f32],
        req: &NotifyRequest,
        now: chrono::DateTime<Utc>,
        slots: Option<&post::PlanSlots>,
    ) -> (NotifyResponse, chrono::DateTime<Utc>) {
        let r = post::NotificationRequest {
            user: u,
            scores,
            population: &m.population,
            channel_prior: m.channel_prior,
            kind: req.notification_type,
            urgency: req.urgency,
            now,
            quiet: self.quiet_hours,
        };
        let plan = match slots {
            Some(slots) => post::plan_notification_in(&r, slots),
            None => post::plan_notification(&r),
        };
        let body = NotifyResponse {
            send_at: plan.send_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            channel: plan.channel,
            confidence: round4(plan.confidence),
            reason: plan.reason,
            fallback: false,
        };
        (body, plan.send_at)
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
