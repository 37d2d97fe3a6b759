//! Which model versions serve, and changing them while serving. The
//! `Registry` holds, per model, the versions that answer (with their A/B
//! weights) and an optional shadow version, behind one atomic pointer.
//! `reload` reads the repository (`serving.json`, else the newest version),
//! loads what is new beside what serves (the backend's smoke inference
//! included), then swaps the pointer: a request holds the `Arc` of the
//! version it started with until it finishes, and a version that does not
//! load is rejected with a log line and a metric while the old one keeps
//! serving. A poller and `POST /admin/models/reload` call `reload`. The
//! [`Engine`] (the inference threads and the batching settings) starts each
//! loaded version's batcher.

use arc_swap::ArcSwap;
use ml_backend::{BatchConfig, InferencePool, LoadedModel};
use ml_backend::{Batcher, Desired, InferenceBackend, ModelMeta, ModelRepository, ServingPolicy};
use ml_core::catalogue::Catalogue;
use ml_core::features::{PopulationActivity, HOURS_PER_WEEK};
use ml_core::model::ModelKind;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
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
        probes: Probes,
    ) -> Arc<ServedModel> {
        let rows_per_call = crate::telemetry::batch_size(meta.model.as_str());
        let observer: ml_backend::BatchObserver =
            Arc::new(move |_requests, rows| rows_per_call.record(rows as f64));
        let batcher = Batcher::spawn(model, Arc::clone(&self.pool), self.batch, observer);
        Arc::new(ServedModel::new(meta, batcher, catalogue, probes))
    }
}

/// A model version in memory: its batcher and what serving needs from its
/// `model.json`.
#[derive(Debug)]
pub struct ServedModel {
    pub meta: ModelMeta,
    pub batcher: Batcher,
    /// Recommendation: for each output column, the catalogue index of its
    /// destination (None for one the catalogue no longer has).
    pub rec_columns: Vec<Option<usize>>,
    /// Notification timing: the population's activity by hour of week and
    /// each channel's open rate, as of training.
    pub population: PopulationActivity,
    pub channel_prior: [f32; 3],
    /// Recommendation: the effect of each input column on each score, when
    /// the model is affine (`ml_backend::linear`).
    pub effects: Option<ml_backend::linear::Effects>,
    /// Notification timing: whether the model answers each row on its own
    /// (`ml_backend::rows`), so a plan's hours may run without the rest.
    pub rows_independent: bool,
    /// `model/version` (e.g. `travel_match/1`), as the `x-model-version`
    /// header names it: made once here rather than formatted per answer.
    pub label: bytes::Bytes,
}

/// What is learned about a model version once, at load, for shortcuts that
/// keep its answers exactly.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub effects: Option<ml_backend::linear::Effects>,
    pub rows_independent: bool,
}

impl Probes {
    /// Probe a loaded model of `kind`: a recommendation model for its
    /// effects table, a notification model for row independence (one call
    /// of a few hundred rows and a few small ones).
    pub fn of(
        kind: ModelKind,
        model: &dyn ml_backend::LoadedModel,
        inputs: usize,
    ) -> Result<Self, ml_backend::BackendError> {
        Ok(Self {
            effects: match kind {
                ModelKind::Recommendation => ml_backend::linear::probe(model, inputs)?,
                _ => None,
            },
            rows_independent: match kind {
                ModelKind::NotificationTiming => {
                    ml_backend::rows::independent(model, inputs, HOURS_PER_WEEK)?
                }
                _ => false,
            },
        })
    }
}

impl ServedModel {
    pub fn new(meta: ModelMeta, batcher: Batcher, catalogue: &Catalogue, probes: Probes) -> Self {
        let rec_columns = if meta.model == ModelKind::Recommendation {
            meta.items()
                .iter()
                .map(|id| id.parse().ok().and_then(|id| catalogue.index_of(&id)))
                .collect()
        } else {
            vec![]
        };
        let population =
            meta.params
                .population_activity
                .clone()
                .unwrap_or_else(|| PopulationActivity {
                    hour_of_week: vec![1.0 / HOURS_PER_WEEK as f32; HOURS_PER_WEEK],
                });
        let channel_prior = meta.params.channel_open_rate.unwrap_or([0.3; 3]);
        let label = format!("{}/{}", meta.model, meta.version).into();
        Self {
            label,
            meta,
            batcher,
            rec_columns,
            population,
            channel_prior,
            effects: probes.effects,
            rows_independent: probes.rows_independent,
        }
    }

    pub fn version(&self) -> u64 {
        self.meta.version
    }
}

/// The versions of one model that serve now.
#[derive(Debug)]
pub struct Variants {
    /// Versions with their weights (all positive).
    pub routes: Vec<(Arc<ServedModel>, u32)>,
    /// Runs on a copy of live traffic; never answers.
    pub shadow: Option<Arc<ServedModel>>,
    /// What the repository said when these were chosen.
    desired: Desired,
    /// The split as `version=weight` pairs (`3=90,4=10`; a lone version
    /// alone), as the prediction log records each answer's route.
    pub split: Arc<str>,
}

/// Where a user falls in a model's split: a hash of the model and the user
/// id, the same on every replica and every request (no process-random seed).
pub fn bucket(model: ModelKind, user: Uuid) -> u64 {
    let salt = match model {
        ModelKind::TravelMatch => 0x9e37_79b9_7f4a_7c15,
        ModelKind::Recommendation => 0xbf58_476d_1ce4_e5b9,
        ModelKind::NotificationTiming => 0x94d0_49bb_1331_11eb,
    };
    user_hash(salt, user)
}

/// A hash of a user id under `salt`: uniform, and the same on every replica.
pub(crate) fn user_hash(salt: u64, user: Uuid) -> u64 {
    let (hi, lo) = user.as_u64_pair();
    splitmix(splitmix(hi ^ salt) ^ lo)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Variants {
    fn new(
        routes: Vec<(Arc<ServedModel>, u32)>,
        shadow: Option<Arc<ServedModel>>,
        desired: Desired,
    ) -> Self {
        let split = ml_backend::repository::split_label(
            &routes
                .iter()
                .map(|(m, w)| (m.meta.version, *w))
                .collect::<Vec<_>>(),
        );
        Self {
            routes,
            shadow,
            desired,
            split: split.into(),
        }
    }

    /// The version that answers `user`.
    pub fn pick(&self, model: ModelKind, user: Uuid) -> &Arc<ServedModel> {
        if self.routes.len() == 1 {
            return &self.routes[0].0;
        }
        let total: u64 = self.routes.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut b = bucket(model, user) % total.max(1);
        for (m, w) in &self.routes {
            if b < u64::from(*w) {
                return m;
            }
            b -= u64::from(*w);
        }
        &self.routes[0].0
    }

    /// Every loaded version: those that answer, then the shadow.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.routes.iter().map(|(m, _)| m).chain(self.shadow.iter())
    }
}

/// What a reload did to one model, for the admin endpoint and logs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    pub model: String,
    /// Versions answering, with their share of users (sums to 1).
    pub serving: Vec<VersionShare>,
    pub shadow: Option<u64>,
    /// Whether this reload changed what serves.
    pub changed: bool,
    /// Why a wanted version is not serving, if one is not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionShare {
    pub version: u64,
    pub share: f64,
}

/// The serving versions of every model, swapped atomically by `reload`.
pub struct Registry {
    current: ArcSwap<HashMap<ModelKind, Arc<Variants>>>,
    repo: ModelRepository,
    backend: Arc<dyn InferenceBackend>,
    engine: Engine,
    catalogue: Catalogue,
    /// One reload at a time (the poller and the admin endpoint may overlap).
    reloading: tokio::sync::Mutex<()>,
    /// Versions that failed to load: not retried by the poller (a failing
    /// version would otherwise be read and logged every few seconds), only
    /// by a forced reload.
    rejected: Mutex<HashSet<(ModelKind, u64)>>,
    /// The sentence-embedding model this service reads interests with, if
    /// any: a version trained on another one's meanings is refused.
    interest_encoder: Option<&'static str>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(
        repo: ModelRepository,
        backend: Arc<dyn InferenceBackend>,
        engine: Engine,
        catalogue: Catalogue,
        interest_encoder: Option<&'static str>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(HashMap::new()),
            repo,
            backend,
            engine,
            catalogue,
            reloading: tokio::sync::Mutex::new(()),
            rejected: Mutex::new(HashSet::new()),
            interest_encoder,
        }
    }

    pub fn repository(&self) -> &ModelRepository {
        &self.repo
    }

    /// The versions of `kind` serving now (a snapshot: later swaps do not
    /// change it).
    pub fn get(&self, kind: ModelKind) -> Option<Arc<Variants>> {
        self.current.load().get(&kind).cloned()
    }

    /// Whether every model has a serving version.
    pub fn all_loaded(&self) -> bool {
        let m = self.current.load();
        ModelKind::ALL.iter().all(|k| m.contains_key(k))
    }

    /// Every loaded version (serving or shadow), for metrics.
    pub fn loaded(&self) -> Vec<(ModelKind, Arc<ServedModel>)> {
        let m = self.current.load();
        let mut out = vec![];
        for (k, v) in m.iter() {
            for s in v.versions() {
                out.push((*k, Arc::clone(s)));
            }
        }
        out
    }

    /// Bring every model in line with the repository. `force` retries
    /// versions that failed before.
    pub async fn reload(&self, force: bool) -> Vec<ModelStatus> {
        let _one = self.reloading.lock().await;
        if force {
            self.rejected.lock().expect("not poisoned").clear();
        }
        let mut out = vec![];
        for kind in ModelKind::ALL {
            out.push(self.reload_model(kind).await);
        }
        out
    }

    async fn reload_model(&self, kind: ModelKind) -> ModelStatus {
        let current = self.get(kind);
        let (changed, error) = match self.repo.desired(kind).await {
            Err(e) => {
                crate::telemetry::model_reload(kind.as_str(), "error");
                tracing::error!(model = %kind, repository = %self.repo.describe(), error = %e, "cannot read the model repository; the serving versions stay");
                (false, Some(e.to_string()))
            }
            Ok(None) => (false, None),
            Ok(Some(desired)) => {
                // History does not change what serves.
                let desired = strip_history(desired);
                if current.as_ref().is_some_and(|c| c.desired == desired) {
                    (false, None)
                } else {
                    match self.build(kind, desired, current.as_deref()).await {
                        Ok((Some(v), note)) => {
                            self.swap(kind, v);
                            crate::telemetry::model_reload(kind.as_str(), "swapped");
                            (true, note)
                        }
                        Ok((None, note)) => (false, note),
                        Err(e) => {
                            crate::telemetry::model_reload(kind.as_str(), "rejected");
                            (false, Some(e))
                        }
                    }
                }
            }
        };
        self.status(kind, changed, error)
    }

    /// What serves now, per model (no repository read).
    pub fn statuses(&self) -> Vec<ModelStatus> {
        ModelKind::ALL
            .iter()
            .map(|k| self.status(*k, false, None))
            .collect()
    }

    fn status(&self, kind: ModelKind, changed: bool, error: Option<String>) -> ModelStatus {
        let v = self.get(kind);
        let total: u32 = v
            .as_ref()
            .map(|v| v.routes.iter().map(|(_, w)| w).sum())
            .unwrap_or(0);
        ModelStatus {
            model: kind.as_str().into(),
            serving: v
                .as_ref()
                .map(|v| {
                    v.routes
                        .iter()
                        .map(|(m, w)| VersionShare {
                            version: m.version(),
                            share: f64::from(*w) / f64::from(total.max(1)),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            shadow: v
                .as_ref()
                .and_then(|v| v.shadow.as_ref().map(|s| s.version())),
            changed,
            error,
        }
    }

    fn swap(&self, kind: ModelKind, new: Variants) {
        let new = Arc::new(new);
        let old = self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(kind, Arc::clone(&new));
            m
        });
        let total: u32 = new.routes.iter().map(|(_, w)| w).sum();
        let mut now: HashSet<u64> = HashSet::new();
        for (m, w) in &new.routes {
            now.insert(m.version());
            crate::telemetry::traffic_share(
                kind.as_str(),
                m.version(),
                f64::from(*w) / f64::from(total.max(1)),
            );
        }
        if let Some(prev) = old.get(&kind) {
            for (m, _) in &prev.routes {
                if !now.contains(&m.version()) {
                    crate::telemetry::traffic_share(kind.as_str(), m.version(), 0.0);
                }
            }
            // A version neither serving nor shadowing is unloaded once the
            // last request holding it finishes.
            let kept: HashSet<u64> = new.versions().map(|m| m.version()).collect();
            for m in prev.versions() {
                if !kept.contains(&m.version()) {
                    crate::telemetry::model_unloaded(kind.as_str(), m.version());
                }
            }
        }
        let versions: Vec<String> = new
            .routes
            .iter()
            .map(|(m, w)| format!("v{} ({w})", m.version()))
            .collect();
        tracing::info!(model = %kind, serving = %versions.join(", "), shadow = ?new.shadow.as_ref().map(|s| s.version()), "model versions swapped in");
    }

    /// The variants `desired` asks for, reusing versions already in memory,
    /// with a note when a newer version was skipped because it does not load.
    /// `Ok((None, _))`: nothing changes.
    async fn build(
        &self,
        kind: ModelKind,
        desired: Desired,
        current: Option<&Variants>,
    ) -> Result<(Option<Variants>, Option<String>), String> {
        let loaded =
            |v: u64| current.and_then(|c| c.versions().find(|m| m.version() == v).cloned());
        match &desired {
            Desired::Latest(versions) => {
                // The newest version that loads; one that does not is
                // rejected and the next older one tried (at start-up there
                // is nothing else to serve).
                let mut skipped = vec![];
                for &v in versions.iter().rev() {
                    let note = (!skipped.is_empty()).then(|| {
                        format!(
                            "{kind} {} does not load; serving v{v}",
                            versions_list(&skipped)
                        )
                    });
                    let m = match loaded(v) {
                        Some(m) => {
                            let same = current.is_some_and(|c| {
                                c.routes.len() == 1
                                    && c.shadow.is_none()
                                    && c.routes[0].0.version() == v
                            });
                            if same {
                                return Ok((None, note));
                            }
                            m
                        }
                        None => match self.load(kind, v).await {
                            Some(m) => m,
                            None => {
                                skipped.push(v);
                                continue;
                            }
                        },
                    };
                    let routes = vec![(m, 1)];
                    return Ok((Some(Variants::new(routes, None, desired)), note));
                }
                Err(format!(
                    "no version of {kind} loads ({})",
                    versions_list(&skipped)
                ))
            }
            Desired::Pinned(policy) => {
                let mut routes = vec![];
                for r in policy.routes.iter().filter(|r| r.weight > 0) {
                    let m = match loaded(r.version) {
                        Some(m) => m,
                        None => self.load(kind, r.version).await.ok_or_else(|| {
                            format!(
                                "{kind} v{} does not load: serving.json is not applied",
                                r.version
                            )
                        })?,
                    };
                    routes.push((m, r.weight));
                }
                let mut note = None;
                let shadow = match policy.shadow {
                    None => None,
                    Some(v) => match loaded(v) {
                        Some(m) => Some(m),
                        // A shadow that does not load leaves the live
                        // versions to change as asked.
                        None => {
                            let m = self.load(kind, v).await;
                            if m.is_none() {
                                note = Some(format!("shadow {kind} v{v} does not load"));
                            }
                            m
                        }
                    },
                };
                Ok((Some(Variants::new(routes, shadow, desired)), note))
            }
        }
    }

    /// Read, load and smoke-test one version (the backend runs the smoke
    /// inference), then start its batcher. None when it is unusable.
    async fn load(&self, kind: ModelKind, version: u64) -> Option<Arc<ServedModel>> {
        if self
            .rejected
            .lock()
            .expect("not poisoned")
            .contains(&(kind, version))
        {
            return None;
        }
        let t0 = Instant::now();
        let result = async {
            let (bytes, meta) = self
                .repo
                .read(kind, version)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(wanted) = &meta.params.interest_encoder {
                if self.interest_encoder != Some(wanted.as_str()) {
                    return Err(format!(
                        "this version reads interests embedded by {wanted}, and this service {}",
                        match self.interest_encoder {
                            Some(have) => format!("embeds them with {have}"),
                            None => "has no embedding model (set EMBEDDING_MODEL_PATH)".into(),
                        }
                    ));
                }
            }
            let backend = Arc::clone(&self.backend);
            let size = bytes.len();
            // Parsing and optimising a graph is CPU work: off the runtime.
            let model: Arc<ServedModel> = tokio::task::spawn_blocking(move || {
                let m = backend.load(&bytes, &meta)?;
                // An affine recommendation model's effects table (the reasons
                // without a model row per history destination) and whether a
                // notification model's rows are independent (a plan's hours
                // without the rest of the week).
                let probes = Probes::of(kind, m.as_ref(), meta.features.len())?;
                Ok::<_, ml_backend::BackendError>((m, meta, probes))
            })
            .await
            .map_err(|e| e.to_string())?
            .map(|(m, meta, probes)| {
                let served = self.engine.serve_model(meta, m, &self.catalogue, probes);
                crate::telemetry::model_loaded(
                    kind.as_str(),
                    version,
                    t0.elapsed().as_secs_f64(),
                    size,
                );
                served
            })
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(model)
        }
        .await;
        match result {
            Ok(m) => {
                tracing::info!(model = %kind, version, ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3), "model version loaded");
                Some(m)
            }
            Err(e) => {
                crate::telemetry::model_load_failed(kind.as_str(), version);
                tracing::error!(model = %kind, version, error = %e, "model version rejected: it does not load; the serving version stays");
                self.rejected
                    .lock()
                    .expect("not poisoned")
                    .insert((kind, version));
                None
            }
        }
    }

    /// Reload every `interval`, for ever (the server aborts this task when
    /// it stops).
    pub async fn poll(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.reload(false).await;
        }
    }
}

fn versions_list(v: &[u64]) -> String {
    v.iter()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip_history(d: Desired) -> Desired {
    match d {
        // What serves, not how it came to: history, the experiment's start
        // and its decisions change no model in memory.
        Desired::Pinned(p) => Desired::Pinned(ServingPolicy {
            history: vec![],
            decisions: vec![],
            since: None,
            auto: false,
            ..p
        }),
        d => d,
    }
}
