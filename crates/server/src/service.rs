//! The prediction service: request → features → inference → post-processing.
//! It knows the data source and the inference pool, but no transport: the HTTP
//! handlers (and later gRPC) call these methods and map their errors.

use crate::api::*;
use crate::error::ServiceError;
use chrono::{SecondsFormat, Utc};
use ml_backend::{BatchConfig, Batcher, InferencePool, LoadedModel, ModelMeta};
use ml_core::catalogue::Catalogue;
use ml_core::features::{self, PopulationActivity, UserFeatures, HOURS_PER_WEEK};
use ml_core::post;
use ml_core::train::ModelKind;
use ml_data::DataSource;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// History destinations whose share of a recommendation is measured.
const MAX_ATTRIBUTED_HISTORY: usize = 30;

/// A model version in memory, with its batcher.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub meta: ModelMeta,
    pub batcher: Batcher,
}

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

    /// Serve a loaded model version: start its batcher (on the current runtime).
    pub fn serve(&self, meta: ModelMeta, model: Arc<dyn LoadedModel>) -> ServedModel {
        let name = meta.model.as_str();
        let observer: ml_backend::BatchObserver =
            Arc::new(move |_requests, rows| crate::telemetry::batch(name, rows));
        ServedModel {
            batcher: Batcher::spawn(model, Arc::clone(&self.pool), self.batch, observer),
            meta,
        }
    }
}

/// An answer and the model version that produced it.
#[derive(Debug)]
pub struct Versioned<T> {
    pub body: T,
    pub model: ModelKind,
    pub version: u64,
    /// Whether the prediction cache answered.
    pub cached: bool,
}

/// Everything a prediction needs, shared by all requests.
pub struct Predictor {
    pub data: Arc<dyn DataSource>,
    pub catalogue: Catalogue,
    pub models: HashMap<ModelKind, ServedModel>,
    pub engine: Engine,
    pub caches: crate::cache::Caches,
    pub quiet_hours: post::QuietHours,
    pub gpu: bool,
    /// For each column of the recommendation model, the catalogue index of its
    /// destination (None for a destination the catalogue no longer has).
    rec_columns: Vec<Option<usize>>,
    population: PopulationActivity,
    channel_prior: [f32; 3],
}

impl Predictor {
    pub fn new(
        data: Arc<dyn DataSource>,
        catalogue: Catalogue,
        models: HashMap<ModelKind, (ModelMeta, Arc<dyn LoadedModel>)>,
        engine: Engine,
        caches: crate::cache::Caches,
        quiet_hours: post::QuietHours,
        gpu: bool,
    ) -> Self {
        let models: HashMap<ModelKind, ServedModel> = models
            .into_iter()
            .map(|(k, (meta, model))| (k, engine.serve(meta, model)))
            .collect();
        let rec_columns = models
            .get(&ModelKind::Recommendation)
            .map(|m| {
                m.meta
                    .items()
                    .iter()
                    .map(|id| id.parse().ok().and_then(|id| catalogue.index_of(&id)))
                    .collect()
            })
            .unwrap_or_default();
        let timing = models
            .get(&ModelKind::NotificationTiming)
            .map(|m| &m.meta.params);
        let population = timing
            .and_then(|p| p.population_activity.clone())
            .unwrap_or_else(|| PopulationActivity {
                hour_of_week: vec![1.0 / HOURS_PER_WEEK as f32; HOURS_PER_WEEK],
            });
        let channel_prior = timing.and_then(|p| p.channel_open_rate).unwrap_or([0.3; 3]);
        Self {
            data,
            catalogue,
            models,
            engine,
            caches,
            quiet_hours,
            gpu,
            rec_columns,
            population,
            channel_prior,
        }
    }

    pub fn models_loaded(&self) -> bool {
        ModelKind::ALL.iter().all(|k| self.models.contains_key(k))
    }

    fn model(&self, kind: ModelKind) -> Result<&ServedModel, ServiceError> {
        self.models
            .get(&kind)
            .ok_or(ServiceError::ModelUnavailable(kind.as_str()))
    }

    /// Features of users (each with the request field that named it): from the
    /// caches, else computed from the data source and written back.
    async fn users<const N: usize>(
        &self,
        ids: [(&str, Uuid); N],
    ) -> Result<[Arc<UserFeatures>; N], ServiceError> {
        let uuids: Vec<Uuid> = ids.iter().map(|(_, id)| *id).collect();
        let mut found = self.caches.features(&uuids).await;
        let missing: Vec<usize> = (0..N).filter(|&i| found[i].is_none()).collect();
        let computed = futures::future::try_join_all(
            missing
                .iter()
                .map(|&i| self.compute_user(ids[i].0, ids[i].1)),
        )
        .await?;
        self.caches.put_features(&computed);
        for (i, f) in missing.into_iter().zip(computed) {
            found[i] = Some(f);
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

    /// Features of a user from the data source, as of now.
    async fn compute_user(&self, field: &str, id: Uuid) -> Result<Arc<UserFeatures>, ServiceError> {
        let unknown = || ServiceError::UnknownUser {
            field: field.to_string(),
            id,
        };
        let h = self.data.user_history(id).await?.ok_or_else(unknown)?;
        let p = h.profile.as_ref().ok_or_else(unknown)?;
        Ok(Arc::new(UserFeatures::from_history(
            p,
            &h,
            &self.catalogue,
            Utc::now(),
        )))
    }

    async fn run(
        &self,
        m: &ServedModel,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<Vec<Vec<f32>>, ServiceError> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "inference",
            model = m.meta.model.as_str(),
            version = m.meta.version,
            rows
        );
        Ok(m.batcher.run(input, rows).instrument(span).await?)
    }

    pub async fn score_match(
        &self,
        req: &MatchRequest,
    ) -> Result<Versioned<MatchResponse>, ServiceError> {
        let t0 = Instant::now();
        req.validate()?;
        let m = self.model(ModelKind::TravelMatch)?;
        let key = self.caches.prediction_key(
            "match",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_a_id,
            req,
        );
        if let Some(mut body) = self.caches.prediction::<MatchResponse>(&key).await {
            body.latency_ms = (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            return Ok(Versioned {
                body,
                model: ModelKind::TravelMatch,
                version: m.meta.version,
                cached: true,
            });
        }
        let [a, b] = self
            .users([("user_a_id", req.user_a_id), ("user_b_id", req.user_b_id)])
            .await?;
        let ctx = req.context.clone().unwrap_or_default();
        let ctx = post::match_context(
            &self.catalogue,
            ctx.destination.as_deref(),
            ctx.interests.as_deref().unwrap_or(&[]),
        );
        let x = features::match_features(&a, &b, &ctx);
        let out = self.run(m, x.to_vec(), 1).await?;
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
            latency_ms: (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        };
        self.caches.put_prediction(key, &body, self.caches.ttl());
        Ok(Versioned {
            body,
            model: ModelKind::TravelMatch,
            version: m.meta.version,
            cached: false,
        })
    }

    pub async fn recommend(
        &self,
        req: &RecommendRequest,
    ) -> Result<Versioned<RecommendResponse>, ServiceError> {
        req.validate()?;
        let m = self.model(ModelKind::Recommendation)?;
        let key = self.caches.prediction_key(
            "recommend",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_id,
            req,
        );
        if let Some(body) = self.caches.prediction::<RecommendResponse>(&key).await {
            return Ok(Versioned {
                body,
                model: ModelKind::Recommendation,
                version: m.meta.version,
                cached: true,
            });
        }
        let [u] = self.users([("user_id", req.user_id)]).await?;
        let filters = req.filters.clone().unwrap_or_default();
        let cols = self.rec_columns.len();
        // Row 0: the user as they are. Then the same user without profile
        // (interests, budget, trip length), without history, with neither
        // (popularity alone), and without each
        // destination of their history: the differences are each signal's exact
        // share of every score (the graph is linear), which the reason names.
        let profile = ml_core::train::rec_profile_input(&u);
        let mut full = vec![0f32; cols + profile.len()];
        let mut history = vec![];
        for (c, d) in self.rec_columns.iter().enumerate() {
            if let Some(d) = d {
                if u.has_engaged(*d) {
                    full[c] = 1.0;
                    history.push(c);
                }
            }
        }
        full[cols..].copy_from_slice(&profile);
        history.truncate(MAX_ATTRIBUTED_HISTORY);
        let mut rows = full.clone();
        let mut no_interests = full.clone();
        no_interests[cols..].fill(0.0);
        let mut no_history = full.clone();
        no_history[..cols].fill(0.0);
        rows.extend(&no_interests);
        rows.extend(&no_history);
        rows.extend(vec![0f32; full.len()]);
        for &c in &history {
            let mut r = full.clone();
            r[c] = 0.0;
            rows.extend(r);
        }
        let n_rows = 4 + history.len();
        let out = self.run(m, rows, n_rows).await?.swap_remove(0);
        let row = |r: usize| &out[r * cols..(r + 1) * cols];
        // Filters apply before top-k, so `limit` results come back whenever that
        // many destinations match.
        let candidates: Vec<u32> = (0..cols)
            .filter(|&c| {
                self.rec_columns[c].is_some_and(|d| {
                    !u.has_consumed(d)
                        && post::passes_filters(
                            &self.catalogue.destinations[d],
                            filters.budget,
                            filters.duration,
                        )
                })
            })
            .map(|c| c as u32)
            .collect();
        let scores = row(0);
        let top = ml_core::rec_bench::top_k_of(scores, candidates, req.limit as usize);
        let recommendations = top
            .into_iter()
            .map(|c| {
                let c = c as usize;
                let d = self.rec_columns[c].unwrap_or_default();
                let from_interests = row(0)[c] - row(1)[c];
                let from_history = row(0)[c] - row(2)[c];
                let from_popularity = row(3)[c];
                let driver = if from_history > 0.0
                    && from_history >= from_interests
                    && from_history >= from_popularity
                {
                    let mut items: Vec<(f32, usize)> = history
                        .iter()
                        .enumerate()
                        .map(|(k, &h)| (row(0)[c] - row(4 + k)[c], h))
                        .filter(|(s, _)| *s > 0.0)
                        .collect();
                    items.sort_by(|a, b| b.0.total_cmp(&a.0));
                    post::RecDriver::History(
                        items
                            .iter()
                            .take(2)
                            .filter_map(|(_, h)| self.rec_columns[*h])
                            .map(|d| {
                                (
                                    self.catalogue.destinations[d].name.clone(),
                                    u.has_consumed(d),
                                )
                            })
                            .collect(),
                    )
                } else if from_interests > 0.0 && from_interests >= from_popularity {
                    post::RecDriver::Profile {
                        interests: u
                            .interests
                            .intersection(&self.catalogue.tags[d])
                            .names()
                            .into_iter()
                            .take(2)
                            .collect(),
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
        let body = RecommendResponse { recommendations };
        self.caches.put_prediction(key, &body, self.caches.ttl());
        Ok(Versioned {
            body,
            model: ModelKind::Recommendation,
            version: m.meta.version,
            cached: false,
        })
    }

    pub async fn optimize_notification(
        &self,
        req: &NotifyRequest,
    ) -> Result<Versioned<NotifyResponse>, ServiceError> {
        let m = self.model(ModelKind::NotificationTiming)?;
        let key = self.caches.prediction_key(
            "notify",
            m.meta.model.as_str(),
            m.meta.version,
            req.user_id,
            req,
        );
        if let Some(body) = self.caches.prediction::<NotifyResponse>(&key).await {
            return Ok(Versioned {
                body,
                model: ModelKind::NotificationTiming,
                version: m.meta.version,
                cached: true,
            });
        }
        let [u] = self.users([("user_id", req.user_id)]).await?;
        let x = features::timing_features(&u, &self.population);
        let scores = self.run(m, x, HOURS_PER_WEEK).await?.swap_remove(0);
        let now = Utc::now();
        let plan = post::plan_notification(&post::NotificationRequest {
            user: &u,
            scores: &scores,
            population: &self.population,
            channel_prior: self.channel_prior,
            kind: req.notification_type,
            urgency: req.urgency,
            now,
            quiet: self.quiet_hours,
        });
        let body = NotifyResponse {
            send_at: plan.send_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            channel: plan.channel,
            confidence: round4(plan.confidence),
            reason: plan.reason,
        };
        self.caches
            .put_prediction(key, &body, post::plan_valid_for(now, plan.send_at));
        Ok(Versioned {
            body,
            model: ModelKind::NotificationTiming,
            version: m.meta.version,
            cached: false,
        })
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
