//! The typed settings and the command line. Every setting has a `--flag` and the
//! spec's environment variable; the binary passes this struct around rather than
//! long argument lists.

use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

/// ml-service: match scoring, destination recommendations and notification timing.
#[derive(Debug, Parser)]
#[command(name = "ml-service", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the inference service (trains the models first if the repository is empty).
    Serve(Settings),
    /// Exit 0 when the service on this host's ML_SERVICE_PORT is ready
    /// (`GET /health/ready` answers 200), else 1: a container HEALTHCHECK
    /// that needs no curl in the image.
    Healthcheck(HealthcheckArgs),
    /// Train models on the app data and write new versions to the repository.
    Train(TrainArgs),
    /// Offline metrics of the served model version on its held-out period,
    /// against the ceiling and baselines; optionally a report with plots.
    Eval(EvalArgs),
    /// Manage the app data (the SQLite file, or Postgres when DATABASE_URL is
    /// set): schema, demo dataset, import.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The model repository: list versions, choose which serve (promote,
    /// roll back, A/B split, shadow), quantize.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// The feature store in Redis.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Compute users' features from the app data and write them to Redis, in
    /// batches, so serving never computes them on a cold path.
    Refresh(RefreshArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Port of the service's HTTP listener on 127.0.0.1.
    #[arg(long, env = "ML_SERVICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Path to ask (`/health/live` for liveness).
    #[arg(long, default_value = "/health/ready")]
    pub path: String,
    /// Longest wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Only these user ids (default: every user).
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<uuid::Uuid>,
    /// Users per Redis write.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Create or upgrade the schema (idempotent).
    Migrate(Settings),
    /// Generate the demo dataset into the data store.
    Demo(DemoArgs),
    /// Load app data from CSV or JSON Lines files, every row validated (all
    /// problems reported by file, line and field; nothing written unless none),
    /// in one transaction; or MovieLens (RecBole's .inter, .item, .user) as app
    /// data: users as profiles, movies as destinations, ratings ≥ 3 as
    /// interactions.
    Import(ImportArgs),
    /// Print user ids, one per line (for scripts and load tests).
    Users(UsersArgs),
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    /// How many (in id order).
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A folder of table files named after their tables (`profiles.csv`,
    /// `interactions.jsonl`, …; CSV or JSON Lines), one such file, or a
    /// folder holding one MovieLens dataset in RecBole's format (e.g.
    /// .fixtures/ml-100k).
    pub path: std::path::PathBuf,
    /// Replace any data already in the store.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List model versions with their held-out metrics.
    List(Settings),
    /// Write an INT8 (dynamically quantized) variant of a model version as a new
    /// version, with its size, held-out metric and latency next to the float
    /// model's in its model.json.
    Quantize(QuantizeArgs),
    /// Serve one version to every user (writes {model}/serving.json; running
    /// services pick it up within MODEL_POLL_INTERVAL_S).
    Promote(PromoteArgs),
    /// Go back to what served before the last promote or split (or, with no
    /// history, to the version before the serving one).
    Rollback(ModelArgs),
    /// A/B test: split users between versions by weight, e.g. `3=90 4=10`;
    /// each user keeps one version (a hash of the user id).
    Split(SplitArgs),
    /// Run a version in the shadow of live traffic (never answers; its
    /// disagreement with the served answer is a metric), or `--off`.
    Shadow(ShadowArgs),
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// The version to serve.
    pub version: u64,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// VERSION=WEIGHT pairs, e.g. `3=90 4=10`.
    #[arg(required = true, num_args = 1.., value_parser = parse_route)]
    pub routes: Vec<ml_backend::Route>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// The version to run in the shadow.
    #[arg(required_unless_present = "off")]
    pub version: Option<u64>,
    /// Stop shadowing.
    #[arg(long, conflicts_with = "version")]
    pub off: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// Parse `VERSION=WEIGHT`, e.g. `4=10` (a leading `v` is allowed: `v4=10`).
pub fn parse_route(s: &str) -> Result<ml_backend::Route, String> {
    let (v, w) = s
        .split_once('=')
        .ok_or("expected VERSION=WEIGHT, e.g. 4=10")?;
    let version = v
        .trim()
        .trim_start_matches('v')
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or(format!("{v:?} is not a version (1, 2, …)"))?;
    let weight = w
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{w:?} is not a weight (a whole number)"))?;
    Ok(ml_backend::Route { version, weight })
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// The float version to quantize (default: the newest).
    #[arg(long)]
    pub version: Option<u64>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Models to train (all three when none is named).
    #[arg(value_parser = ["travel_match", "recommendation", "notification_timing"])]
    pub models: Vec<String>,
    /// Seed of the training run.
    #[arg(long, env = "TRAIN_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Train only the models that have no version yet (a deployment's
    /// one-shot init job; run again, it does nothing).
    #[arg(long)]
    pub if_missing: bool,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model to evaluate; `interests` compares exact and semantic
    /// (embedding) match and recommendation models on demo data whose
    /// interests are partly synonyms (needs EMBEDDING_MODEL_PATH).
    #[arg(default_value = "travel_match", value_parser = ["travel_match", "recommendation", "notification_timing", "interests"])]
    pub model: String,
    /// `interests`: share of interests written as synonyms in the second
    /// dataset (the first has none).
    #[arg(long, default_value_t = 0.5, value_parser = crate::settings::parse_share)]
    pub synonym_rate: f64,
    /// Write a Markdown report with SVG plots into this folder.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Also train and evaluate on several generator settings (travel_match).
    #[arg(long)]
    pub robustness: bool,
    /// Scale of the robustness datasets' user counts (1 = 5,000 / 5,000 / 50,000 users).
    #[arg(long, default_value_t = 1.0)]
    pub robustness_scale: f64,
    /// Folder of MovieLens-1M in RecBole's format (`ml-1m.inter`, `ml-1m.user`),
    /// fetched by scripts/fetch-fixtures.sh (notification_timing).
    #[arg(long, env = "MOVIELENS_1M", default_value = ".fixtures/ml-1m")]
    pub movielens: std::path::PathBuf,
    /// Also run implicit's ALS on the same split (recommendation) with this
    /// Python (scripts/setup-als.sh makes .fixtures/venv/bin/python).
    #[arg(long)]
    pub als: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Users to generate (default: DEMO_USERS).
    #[arg(long)]
    pub users: Option<usize>,
    /// Seed of the generator (default: DEMO_SEED).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Replace any data already in the store.
    #[arg(long)]
    pub replace: bool,
    /// Do nothing (and succeed) when the store already holds users: a
    /// deployment's one-shot init job can run it on every start.
    #[arg(long, conflicts_with = "replace")]
    pub if_empty: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// HTTP port of the API.
    #[arg(long, env = "ML_SERVICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on. Loopback by default; use 0.0.0.0 in a container.
    #[arg(long, env = "ML_SERVICE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// API keys callers must send as `Authorization: Bearer <key>`; several,
    /// separated by commas, for rotation. Unset: no authentication, and the
    /// service listens on loopback only unless --insecure-no-auth.
    #[arg(long, env = "ML_SERVICE_API_KEY", value_parser = parse_secret, value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<secrecy::SecretString>,
    /// Listen on a non-loopback address without API keys (only behind a
    /// gateway that authenticates callers).
    #[arg(long, env = "ML_SERVICE_INSECURE_NO_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure_no_auth: bool,
    /// Port of the gRPC listener (the domain service, the Open Inference
    /// Protocol, health and reflection), on the same host; 0 lets the OS pick.
    #[arg(long, env = "GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,
    /// Serve gRPC (false: HTTP only).
    #[arg(long, env = "ENABLE_GRPC", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_grpc: bool,
    /// Port of the Prometheus metrics listener (`/metrics`), on the same host.
    #[arg(long, env = "PROMETHEUS_PORT", default_value_t = 9090)]
    pub prometheus_port: u16,
    /// Inference threads (0 = one per two CPU cores, at least one).
    #[arg(long, env = "ML_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Inference jobs that may wait for a thread; beyond this, requests get 503.
    #[arg(long, env = "INFERENCE_QUEUE", default_value_t = 1024)]
    pub inference_queue: usize,
    /// Most requests one model call serves (dynamic batching); 1 turns batching off.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// Requests of this many model rows or more skip batching: a match is 1
    /// row, a recommendation 4 (plus one per destination in the user's
    /// history, up to 30, without an effects table), a notification one per
    /// hour its plan weighs (up to 13 for a message, 37 at medium urgency,
    /// 168 for a week). The default batches all but week-long plans.
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 64)]
    pub batch_max_rows: usize,
    /// How long, in microseconds, the first request of a batch waits for more;
    /// 0 takes only what is already queued (no added latency).
    #[arg(long, env = "BATCH_MAX_DELAY_US", default_value_t = 0)]
    pub batch_max_delay_us: u64,
    /// Inference backend: `tract` (pure Rust, embedded) or `onnxruntime` (the
    /// library at ORT_DYLIB_PATH; ENABLE_GPU=true selects it).
    #[arg(long, env = "INFERENCE_BACKEND", value_enum, default_value_t = BackendKind::Tract)]
    pub inference_backend: BackendKind,
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`), as printed by
    /// scripts/fetch-onnxruntime.sh.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Run models on the GPU through ONNX Runtime's CUDA execution provider,
    /// and (in a `cuda` build, with EMBEDDING_MODEL_PATH) the embedding model
    /// with candle's CUDA backend; each falls back to the CPU, with a
    /// warning, when CUDA is not usable.
    #[arg(long, env = "ENABLE_GPU", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_gpu: bool,
    /// Folder of the sentence-embedding model all-MiniLM-L6-v2
    /// (`model.safetensors`, `tokenizer.json`, `config.json`, as
    /// scripts/fetch-embedding-model.sh prints it). Set: interests are read by
    /// meaning ("trekking" counts as hiking), training trains match and
    /// recommendation models on that, and models so trained can serve.
    /// Unset: exact tag names only. With ENABLE_GPU=true and a `cuda` build it
    /// runs on the GPU.
    #[arg(long, env = "EMBEDDING_MODEL_PATH")]
    pub embedding_model_path: Option<PathBuf>,
    /// Longest wait, in milliseconds, for phrases not embedded yet; past it
    /// (or with the embedding queue full) a request reads those interests by
    /// their exact names, and the features are not cached.
    #[arg(long, env = "EMBEDDING_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub embedding_timeout_ms: u64,
    /// Threads ONNX Runtime uses inside one model call. 1 suits these small
    /// models: calls already run in parallel on the inference threads.
    #[arg(long, env = "ORT_INTRA_OP_THREADS", default_value_t = 1)]
    pub ort_intra_op_threads: usize,
    /// Redis for the feature store and the prediction cache, shared by replicas
    /// (`redis://[:password@]host:port[/db]`; for a cluster, node URLs separated
    /// by commas). Unset: both caches are in process.
    #[arg(long, env = "REDIS_URL", value_parser = parse_secret, hide_env_values = true)]
    pub redis_url: Option<secrecy::SecretString>,
    /// REDIS_URL names a Redis Cluster.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
    /// Longest wait for one Redis call, in milliseconds; a slower Redis counts as a miss.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 50)]
    pub redis_timeout_ms: u64,
    /// Seconds a cached feature vector or prediction lives.
    #[arg(long, env = "CACHE_TTL", default_value_t = 3600)]
    pub cache_ttl: u64,
    /// Seconds the in-process near-cache keeps a user's features when Redis is
    /// set (capped at CACHE_TTL); without Redis it keeps them CACHE_TTL.
    #[arg(long, env = "NEAR_CACHE_TTL", default_value_t = 30)]
    pub near_cache_ttl: u64,
    /// Users whose features the near-cache holds.
    #[arg(long, env = "NEAR_CACHE_USERS", default_value_t = 100_000)]
    pub near_cache_users: u64,
    /// Size of the in-process prediction cache (without Redis), in MiB.
    #[arg(long, env = "CACHE_MEMORY_MB", default_value_t = 64)]
    pub cache_memory_mb: u64,
    /// Prefix of every cache key (several services can share one Redis).
    #[arg(long, env = "CACHE_PREFIX", default_value = "mls")]
    pub cache_prefix: String,
    /// Cache responses (the same request for the same model version gets the
    /// stored answer until it expires).
    #[arg(long, env = "PREDICTION_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub prediction_cache: bool,
    /// Name a recommendation's history reasons from the model's effects table
    /// when the model is affine (found at load; the trained one is): four
    /// model rows per request instead of four plus one per history
    /// destination, the same answers. `false` measures every share with its
    /// own model row, as for a model that is not affine.
    #[arg(long, env = "REC_LINEAR_ATTRIBUTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub rec_linear_attribution: bool,
    /// Run the notification model only on the hours a plan weighs (those of
    /// the send window that quiet hours allow: up to 13 for a message at
    /// medium urgency, all 168 for a reminder at low urgency) when the model
    /// answers each row on its own (checked at load; the trained one does):
    /// the same answers. `false` runs all 168 hours of the week every time.
    #[arg(long, env = "TIMING_PLAN_HOURS", default_value_t = true, action = clap::ArgAction::Set)]
    pub timing_plan_hours: bool,
    /// Where model versions live: `local` (MODEL_PATH) or `s3` (S3_BUCKET,
    /// credentials from the usual AWS_* variables).
    #[arg(long, env = "MODEL_STORAGE", value_enum, default_value_t = StorageKind::Local)]
    pub model_storage: StorageKind,
    /// Model repository folder: {MODEL_PATH}/{model}/{version}/model.onnx + model.json.
    #[arg(long, env = "MODEL_PATH", default_value = "./models")]
    pub model_path: PathBuf,
    /// Bucket of the model repository when MODEL_STORAGE=s3.
    #[arg(long, env = "S3_BUCKET", default_value = "travelmatch-models")]
    pub s3_bucket: String,
    /// Region of S3_BUCKET.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// An S3-compatible endpoint (MinIO, R2, moto…), e.g. `http://minio:9000`;
    /// unset: AWS.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Key prefix of the repository inside S3_BUCKET (default: the bucket's root).
    #[arg(long, env = "S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// Longest wait for one call to the model store, in milliseconds.
    #[arg(long, env = "MODEL_STORE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub model_store_timeout_ms: u64,
    /// Seconds between checks of the repository for new, promoted or
    /// re-routed versions (loaded beside the serving ones, smoke-tested,
    /// then swapped in); 0 turns polling off (POST /admin/models/reload still works).
    #[arg(long, env = "MODEL_POLL_INTERVAL_S", default_value_t = 10)]
    pub model_poll_interval_s: u64,
    /// Keys for the admin endpoints (`POST /admin/models/reload`), sent as
    /// `Authorization: Bearer <key>`; several, separated by commas. Unset:
    /// the admin endpoints answer 403.
    #[arg(long, env = "ML_SERVICE_ADMIN_KEY", value_parser = parse_secret, value_delimiter = ',', hide_env_values = true)]
    pub admin_keys: Vec<secrecy::SecretString>,
    /// Longest wait for one model call, in milliseconds; past it (or on a
    /// model error) the answer comes from the prediction cache or the
    /// documented fallback, marked `"fallback": true`.
    #[arg(long, env = "INFERENCE_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub inference_timeout_ms: u64,
    /// The app's Postgres, e.g. a Supabase project's database
    /// (`postgres://user:password@host:5432/postgres`; direct or session
    /// pooler). Set: app data is read from it (read-only sessions) instead of
    /// the SQLite file, and the `data` commands write to it.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
    pub database_url: Option<secrecy::SecretString>,
    /// Connections in the Postgres pool of each replica.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 8)]
    pub database_pool_size: usize,
    /// Longest wait, in milliseconds, for one read of a user's data from
    /// Postgres (a connection included); a slower read fails the request with
    /// 503 unless the user's features are cached.
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = 500)]
    pub database_timeout_ms: u64,
    /// Training samples about this many users (a deterministic sample, plus
    /// both users of a sampled share of match outcomes: about 2.6× as many
    /// users in all), so memory stays bounded however large the app's data
    /// grows: about 37 KiB per user read (bench/train-memory.sh).
    #[arg(long, env = "TRAIN_MAX_USERS", default_value_t = 20_000)]
    pub train_max_users: usize,
    /// SQLite file of the embedded app-data store (created with the demo data on first start).
    #[arg(long, env = "SQLITE_PATH", default_value = "./data/ml-service.db")]
    pub sqlite_path: PathBuf,
    /// Users in the demo dataset generated on first start.
    #[arg(long, env = "DEMO_USERS", default_value_t = 5000)]
    pub demo_users: usize,
    /// Seed of the demo dataset.
    #[arg(long, env = "DEMO_SEED", default_value_t = 42)]
    pub demo_seed: u64,
    /// Share of the demo dataset's interests written as synonymous phrases
    /// ("trekking" for hiking), as free text reads; 0 writes tag names only.
    #[arg(long, env = "DEMO_SYNONYM_RATE", default_value_t = 0.0, value_parser = parse_share)]
    pub demo_synonym_rate: f64,
    /// Prediction requests handled at once; more wait (up to QUEUE_TIMEOUT_MS)
    /// for a turn, so memory and latency stay bounded under any load.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Longest wait, in milliseconds, for a turn when MAX_IN_FLIGHT requests
    /// are being handled; then the request is shed with 503 and Retry-After.
    #[arg(long, env = "QUEUE_TIMEOUT_MS", default_value_t = 100)]
    pub queue_timeout_ms: u64,
    /// Deadline of a whole prediction request, in milliseconds (the spec's
    /// client timeout); past it, the work is dropped and the caller gets 503.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// After SIGTERM/SIGINT, how long, in milliseconds, the service keeps
    /// accepting connections while readiness already says 503 (load
    /// balancers need a moment to stop sending).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Then, how long requests in flight may take to finish before the
    /// process exits anyway (keep grace + drain below Kubernetes'
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 20000)]
    pub drain_timeout_ms: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Local hours in which only urgent notifications are sent, as START-END (24 h clock).
    #[arg(long, env = "QUIET_HOURS", default_value = "22-8", value_parser = parse_quiet_hours)]
    pub quiet_hours: ml_core::post::QuietHours,
    /// OTLP/HTTP endpoint for traces, e.g. `http://otel-collector:4318`
    /// (spans go to `{endpoint}/v1/traces`); unset: no traces are exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A secret from the command line or environment (kept out of logs and Debug).
/// A share in 0..=1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

pub fn parse_secret(s: &str) -> Result<secrecy::SecretString, String> {
    if s.trim().is_empty() {
        return Err("empty".into());
    }
    Ok(secrecy::SecretString::from(s.to_string()))
}

/// Where the model repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    Local,
    S3,
}

/// The inference backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Tract,
    Onnxruntime,
}

/// Parse `START-END` quiet hours, e.g. `22-8`.
pub fn parse_quiet_hours(s: &str) -> Result<ml_core::post::QuietHours, String> {
    let (a, b) = s.split_once('-').ok_or("expected START-END, e.g. 22-8")?;
    let h = |x: &str| {
        x.trim()
            .parse::<u32>()
            .ok()
            .filter(|h| *h < 24)
            .ok_or(format!("{x:?} is not an hour 0-23"))
    };
    Ok(ml_core::post::QuietHours {
        start: h(a)?,
        end: h(b)?,
    })
}

impl Settings {
    /// Settings from defaults and the environment alone (tests and tools).
    pub fn from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            s: Settings,
        }
        Only::parse_from(["ml-service"]).s
    }

    /// Refuse to serve unauthenticated on a public address: without API keys
    /// only a loopback `ML_SERVICE_HOST` is allowed, unless --insecure-no-auth.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.api_keys.is_empty() && !self.host.is_loopback() && !self.insecure_no_auth {
            return Err(format!(
                "refusing to listen on {} without ML_SERVICE_API_KEY: set a key, listen on loopback, or pass --insecure-no-auth",
                self.host
            ));
        }
        Ok(())
    }

    /// How each model's requests are batched.
    pub fn batch_config(&self) -> ml_backend::BatchConfig {
        ml_backend::BatchConfig {
            max_batch: self.batch_size as usize,
            max_rows: self.batch_max_rows.max(1),
            max_delay: std::time::Duration::from_micros(self.batch_max_delay_us),
            queue: self.inference_queue,
        }
    }

    /// The model repository these settings name (local folder or S3).
    pub fn repository(&self) -> Result<ml_backend::ModelRepository, ml_backend::BackendError> {
        match self.model_storage {
            StorageKind::Local => ml_backend::ModelRepository::local(&self.model_path),
            StorageKind::S3 => ml_backend::ModelRepository::s3(&ml_backend::S3Config {
                bucket: self.s3_bucket.clone(),
                region: self.s3_region.clone(),
                endpoint: self.s3_endpoint.clone(),
                prefix: self.s3_prefix.clone(),
                timeout: std::time::Duration::from_millis(self.model_store_timeout_ms),
            }),
        }
    }

    /// The Postgres URL, when one is set (kept secret everywhere else).
    pub fn database_url(&self) -> Option<&str> {
        use secrecy::ExposeSecret;
        self.database_url.as_ref().map(|u| u.expose_secret())
    }

    /// Inference threads: ML_WORKERS, else one per two cores. Each model
    /// runs one batch at a time, and its calls are a fifth to a third of a
    /// request's CPU, so more threads than that mostly wait (spinning and
    /// yielding the core the request threads need) and split batches: on 2
    /// cores one thread took less CPU per match and per notification than
    /// two, and no more on mixed traffic (issue 16, session 14).
    pub fn inference_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_parse_and_reject_nonsense() {
        let q = parse_quiet_hours("23-7").unwrap();
        assert_eq!((q.start, q.end), (23, 7));
        assert!(parse_quiet_hours("25-7").is_err());
        assert!(parse_quiet_hours("night").is_err());
    }

    #[test]
    fn no_key_means_loopback_only_unless_told_otherwise() {
        let mut s = Settings::from_env();
        s.api_keys.clear();
        s.host = "127.0.0.1".parse().unwrap();
        assert!(s.check_exposure().is_ok());
        s.host = "::1".parse().unwrap();
        assert!(s.check_exposure().is_ok());
        s.host = "0.0.0.0".parse().unwrap();
        let err = s.check_exposure().unwrap_err();
        assert!(err.contains("ML_SERVICE_API_KEY"), "{err}");
        s.insecure_no_auth = true;
        assert!(s.check_exposure().is_ok());
        s.insecure_no_auth = false;
        s.api_keys = vec!["k".to_string().into()];
        assert!(s.check_exposure().is_ok());
    }

    #[test]
    fn several_api_keys_parse_and_stay_out_of_debug_output() {
        let c = Cli::parse_from([
            "ml-service",
            "serve",
            "--api-keys",
            "alpha-secret,beta-secret",
        ]);
        let Command::Serve(s) = c.command else {
            panic!("not serve")
        };
        assert_eq!(s.api_keys.len(), 2);
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("alpha-secret") && !debug.contains("beta-secret"),
            "{debug}"
        );
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::parse_from([
            "ml-service",
            "serve",
            "--port",
            "9001",
            "--quiet-hours",
            "21-9",
        ]);
        let Command::Serve(s) = c.command else {
            panic!("not serve")
        };
        assert_eq!(s.port, 9001);
        assert_eq!(s.quiet_hours.start, 21);
        let c = Cli::parse_from(["ml-service", "data", "demo", "--users", "10", "--seed", "3"]);
        let Command::Data {
            command: DataCommand::Demo(d),
        } = c.command
        else {
            panic!("not data demo")
        };
        assert_eq!((d.users, d.seed), (Some(10), Some(3)));
    }
}
