//! Start-up and the server loop: open the data store (Postgres, or the
//! embedded SQLite file), load what the repository (local or S3) says should
//! serve, and serve until the shutdown signal, letting in-flight requests
//! finish, while a poller picks up new model versions. Filling an empty
//! store and training missing models happen before this, in the binary
//! (`ml-cli`): the server never trains.

use crate::admission::Admission;
use crate::interests::Interests;
use crate::lifecycle::Engine;
use crate::lifecycle::Registry;
use crate::predlog::PredictionLog;
use crate::routes;
use crate::service::Predictor;
use crate::settings::{BackendSettings, DataSettings, Settings};
use anyhow::Context;
use ml_backend::tract::TractBackend;
use ml_backend::{InferenceBackend, ModelRepository};
use ml_core::catalogue::Catalogue;
use ml_data::{
    AppStore, DataSource, ExperimentStore, PgOptions, PgPredictions, PgStore, PredictionStore,
    SqlitePredictions, SqliteStore,
};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections in the SQLite pool.
const SQLITE_CONNECTIONS: usize = 4;

/// How long start-up waits for Postgres before giving up.
const DATABASE_STARTUP_WAIT: Duration = Duration::from_secs(30);

/// Who opens the store, which decides how Postgres sessions behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The request path: read-only sessions, each call within DATABASE_TIMEOUT_MS.
    Serve,
    /// Training and reports: read-only, no deadline (whole tables are read).
    Read,
    /// The `data` commands: writes, no deadline.
    Write,
}

/// Open the app-data store: Postgres when DATABASE_URL is set (nothing is
/// written to it here), else the embedded SQLite file (created empty when
/// absent; the binary fills an empty one with the demo dataset).
pub fn open_store(settings: &DataSettings, access: Access) -> anyhow::Result<AppStore> {
    if let Some(url) = settings.database_url() {
        let opts = PgOptions {
            pool_size: settings.database_pool_size,
            timeout: (access == Access::Serve)
                .then(|| Duration::from_millis(settings.database_timeout_ms.max(1))),
            read_only: access != Access::Write,
        };
        return Ok(AppStore::Postgres(
            PgStore::connect(url, &opts).context("DATABASE_URL")?,
        ));
    }
    let store = SqliteStore::open(&settings.sqlite_path, SQLITE_CONNECTIONS)
        .with_context(|| format!("opening {}", settings.sqlite_path.display()))?;
    Ok(AppStore::Sqlite(store))
}

/// Wait until the store answers (Postgres may still be starting beside us).
pub async fn wait_for_store(store: &AppStore) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        match store.source().ping().await {
            Ok(()) => return Ok(()),
            Err(e) if t0.elapsed() < DATABASE_STARTUP_WAIT => {
                tracing::warn!(data = %store.describe(), error = %e, "the data store does not answer yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{} did not answer within {}s",
                        store.describe(),
                        DATABASE_STARTUP_WAIT.as_secs()
                    )
                })
            }
        }
    }
}

/// The inference backend the settings ask for. A missing or unloadable ONNX
/// Runtime library is an error here, at start-up, not at the first request.
pub fn backend(settings: &BackendSettings) -> anyhow::Result<Arc<dyn InferenceBackend>> {
    use crate::settings::BackendKind;
    let kind = if settings.enable_gpu {
        BackendKind::Onnxruntime
    } else {
        settings.inference_backend
    };
    match kind {
        BackendKind::Tract => Ok(Arc::new(TractBackend)),
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => {
            let dylib = settings.ort_dylib_path.clone().context(
                "INFERENCE_BACKEND=onnxruntime needs ORT_DYLIB_PATH: run scripts/fetch-onnxruntime.sh and set ORT_DYLIB_PATH to the path it prints",
            )?;
            let b = ml_backend::onnxruntime::OrtBackend::new(ml_backend::onnxruntime::OrtConfig {
                dylib,
                intra_threads: settings.ort_intra_op_threads,
                sessions: settings.inference_threads(),
                gpu: settings.enable_gpu,
            })
            .context("starting ONNX Runtime")?;
            tracing::info!(
                runtime = b.runtime_version(),
                gpu = b.gpu(),
                "ONNX Runtime loaded"
            );
            Ok(Arc::new(b))
        }
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => anyhow::bail!(
            "this build has no ONNX Runtime backend (build with --features onnxruntime)"
        ),
    }
}

/// Everything `serve` needs, ready before the port opens, from what the
/// store and the repository hold now.
pub fn prepare(settings: &Settings) -> anyhow::Result<Arc<Predictor>> {
    // A missing inference library is the cheapest thing to find out first.
    let backend = backend(&settings.backend)?;
    let interests = Interests::load(&settings.interests, settings.backend.enable_gpu)?;
    let handle = tokio::runtime::Handle::try_current()
        .context("start-up runs on the tokio runtime (the caches and Postgres need it)")?;
    // The calls below block on that runtime: this must run off its threads
    // (`serve` calls it through spawn_blocking).
    let store = open_store(&settings.data, Access::Serve)?;
    handle.block_on(wait_for_store(&store))?;
    let repo = repository(settings)?;
    start(settings, store, repo, backend, interests)
}

/// The model repository the settings name.
pub fn repository(settings: &Settings) -> anyhow::Result<ModelRepository> {
    settings
        .models
        .repository()
        .context("opening the model repository (MODEL_STORAGE)")
}

/// The service on a store that answers and a repository already open (the
/// binary opens both before it trains what is missing, then hands them
/// over): the catalogue, the caches, the inference engine and every model
/// version that should serve, loaded.
pub fn start(
    settings: &Settings,
    store: AppStore,
    repo: ModelRepository,
    backend: Arc<dyn InferenceBackend>,
    interests: Interests,
) -> anyhow::Result<Arc<Predictor>> {
    let t0 = Instant::now();
    let handle = tokio::runtime::Handle::try_current()
        .context("start-up runs on the tokio runtime (the caches and Postgres need it)")?;
    let catalogue = Catalogue::new(
        handle
            .block_on(store.destinations())
            .context("reading the destination catalogue")?,
    );
    anyhow::ensure!(
        !catalogue.is_empty(),
        "the destination catalogue of {} is empty: fill it with `ml-service data demo` or `data import`",
        store.describe()
    );
    let fingerprint = crate::cache::catalogue_fingerprint(
        catalogue.destinations.iter().map(|d| d.id.to_string()),
    );
    let caches = handle
        .block_on(crate::cache::Caches::new(&settings.cache, fingerprint))
        .context("setting up the caches")?;
    let data: Arc<dyn DataSource> = store.source();
    let engine = Engine::new(
        settings.backend.inference_threads(),
        settings.inference.inference_queue,
        settings.inference.batch_config(),
    );
    // The newest version of each model that loads (a corrupt newest version
    // falls back to the one before it), or what serving.json says.
    let models = Arc::new(Registry::new(
        repo,
        Arc::clone(&backend),
        engine.clone(),
        catalogue.clone(),
        interests.encoder(),
    ));
    for status in handle.block_on(models.reload(true)) {
        if status.serving.is_empty() {
            tracing::error!(model = %status.model, error = ?status.error, "no usable version: its endpoint answers 503 until one loads");
        }
    }
    let log = prediction_log(settings, &store)?;
    tracing::info!(
        ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
        data = %data.describe(),
        models = %models.repository().describe(),
        backend = backend.name(),
        cache = %caches.store.describe(),
        inference_threads = settings.backend.inference_threads(),
        batch_size = settings.inference.batch_size,
        batch_max_delay_us = settings.inference.batch_max_delay_us,
        prediction_log = log.describe(),
        "ready"
    );
    Ok(Arc::new(Predictor {
        data,
        catalogue,
        models,
        engine,
        caches,
        notification_policy: settings.inference.notification_policy(),
        gpu: backend.gpu(),
        inference_timeout: Duration::from_millis(settings.inference.inference_timeout_ms.max(1)),
        interests,
        draining: Default::default(),
        linear_attribution: settings.inference.rec_linear_attribution,
        timing_plan_hours: settings.inference.timing_plan_hours,
        log,
        experiments: settings.experiments.clone(),
    }))
}

/// How long a clean shutdown waits for the prediction log to write its queue.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// The prediction log the settings ask for, beside the app data (see
/// [`log_stores`]). Its writer runs on the current runtime.
pub fn prediction_log(settings: &Settings, store: &AppStore) -> anyhow::Result<PredictionLog> {
    let s = &settings.prediction_log;
    if !s.prediction_log {
        return Ok(PredictionLog::off());
    }
    let (target, experiments) = log_stores(s, &settings.data, store)?;
    Ok(PredictionLog::start(target, Some(experiments), s))
}

/// The prediction log's store and, the same store seen from the other side,
/// its outcomes and experiment sums: the `ml_predictions` and `ml_outcomes`
/// tables of the SQLite file, or Postgres's `ml_service` schema through
/// sessions of its own (PREDICTION_LOG_DATABASE_URL, else DATABASE_URL),
/// read-write, unlike the app data's.
pub fn log_stores(
    s: &crate::settings::PredictionLogSettings,
    data: &DataSettings,
    store: &AppStore,
) -> anyhow::Result<(Arc<dyn PredictionStore>, Arc<dyn ExperimentStore>)> {
    fn both<S: PredictionStore + ExperimentStore + 'static>(
        s: S,
    ) -> (Arc<dyn PredictionStore>, Arc<dyn ExperimentStore>) {
        let s = Arc::new(s);
        (Arc::clone(&s) as _, s as _)
    }
    Ok(match store {
        AppStore::Sqlite(sqlite) => {
            both(SqlitePredictions::open(sqlite.path()).with_context(|| {
                format!("opening the prediction log in {}", sqlite.path().display())
            })?)
        }
        AppStore::Postgres(_) => {
            let url = s
                .database_url()
                .or(data.database_url())
                .context("a Postgres store without DATABASE_URL")?;
            let opts = PgOptions {
                pool_size: 2,
                timeout: Some(Duration::from_secs(5)),
                read_only: false,
            };
            both(PgPredictions::new(
                PgStore::connect(url, &opts).context("PREDICTION_LOG_DATABASE_URL")?,
            ))
        }
    })
}

/// Serve the API on `listener` until `shutdown` completes, then drain in-flight requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    predictor: Arc<Predictor>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admission = Admission::new(&settings.http);
    run_http(listener, predictor, settings, admission, shutdown).await
}

/// `run` with a given admission (shared with gRPC, so one bound on requests
/// in flight covers both transports).
pub async fn run_http(
    listener: tokio::net::TcpListener,
    predictor: Arc<Predictor>,
    settings: &Settings,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // New, promoted or re-routed model versions are picked up while serving.
    let poller = (settings.model_poll_interval_s > 0).then(|| {
        tokio::spawn(
            Arc::clone(&predictor.models).poll(Duration::from_secs(settings.model_poll_interval_s)),
        )
    });
    // The learning loop's background work, on whichever replica holds its
    // lease: outcomes joined from the app's tables, `--auto` splits decided.
    let mut background: Vec<tokio::task::JoinHandle<()>> = poller.into_iter().collect();
    if let Some(store) = predictor.log.experiments() {
        let e = &settings.experiments;
        if e.outcome_join_interval_s > 0 {
            background.push(tokio::spawn(crate::experiments::join_periodically(
                Arc::clone(store),
                e.clone(),
                Duration::from_secs(e.outcome_join_interval_s),
            )));
        }
        if e.experiment_auto_interval_s > 0 {
            background.push(tokio::spawn(crate::experiments::decide_periodically(
                Arc::clone(store),
                Arc::clone(&predictor.models),
                e.clone(),
                Duration::from_secs(e.experiment_auto_interval_s),
            )));
        }
    }
    let app = routes::router(predictor, settings, admission);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    for task in background {
        task.abort();
    }
    served
}

/// Serve `/metrics` on `listener` until `shutdown` completes.
pub async fn run_metrics(
    listener: tokio::net::TcpListener,
    predictor: Arc<Predictor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, crate::scrape::metrics_router(predictor))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The listeners `serve` binds.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    /// None when gRPC is off (ENABLE_GRPC=false).
    pub grpc: Option<tokio::net::TcpListener>,
    pub metrics: tokio::net::TcpListener,
}

/// Serve the API (HTTP and gRPC) and the metrics until `signal`, then shut
/// down as Kubernetes expects: readiness turns false at once, the listeners
/// keep accepting for SHUTDOWN_GRACE_MS (load balancers still send while
/// they notice), then stop accepting; requests in flight get up to
/// DRAIN_TIMEOUT_MS to finish.
pub async fn serve_until(
    listeners: Listeners,
    predictor: Arc<Predictor>,
    settings: &Settings,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_millis(settings.http.shutdown_grace_ms);
    let drain = Duration::from_millis(settings.http.drain_timeout_ms);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let p = Arc::clone(&predictor);
    tokio::spawn(async move {
        signal.await;
        p.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: readiness is false; still accepting during the grace period"
        );
        tokio::time::sleep(grace).await;
        tracing::info!("no longer accepting connections: draining in-flight requests");
        let _ = tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admission = Admission::new(&settings.http);
    let grpc = async {
        match listeners.grpc {
            Some(l) => {
                crate::grpc::run(
                    l,
                    Arc::clone(&predictor),
                    settings,
                    admission.clone(),
                    stop(rx.clone()),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let serve = async {
        tokio::try_join!(
            async {
                run_http(
                    listeners.http,
                    Arc::clone(&predictor),
                    settings,
                    admission.clone(),
                    stop(rx.clone()),
                )
                .await
                .map_err(anyhow::Error::from)
            },
            grpc,
            async {
                run_metrics(listeners.metrics, Arc::clone(&predictor), stop(rx.clone()))
                    .await
                    .map_err(anyhow::Error::from)
            },
        )
    };
    let deadline = async {
        stop(rx.clone()).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = serve => { served?; }
        _ = deadline => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "requests still in flight at the drain timeout: exiting anyway");
        }
    }
    // Answers given are logged: write what the log still holds.
    predictor.log.close(LOG_FLUSH_WAIT).await;
    tracing::info!("shut down");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}
