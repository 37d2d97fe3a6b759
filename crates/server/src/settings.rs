//! The serving settings, grouped by concern: HTTP and gRPC, the inference
//! backend, inference, interests, caches, app data, the model repository and
//! logs. Each group is a clap `Args` struct with a `--flag` and the spec's
//! environment variable per setting, flattened into [`Settings`] (what
//! `serve` needs) and into each offline command that uses it (the binary's
//! `args`), so every command takes only the groups it reads and
//! `serve --help` lists them under their headings.

use clap::{Args, Parser};
use std::net::IpAddr;
use std::path::PathBuf;

/// Everything the server reads: each group, plus the two serving settings
/// that belong to no other command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub backend: BackendSettings,
    #[command(flatten)]
    pub inference: InferenceSettings,
    #[command(flatten)]
    pub interests: InterestSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub data: DataSettings,
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub prediction_log: PredictionLogSettings,
    #[command(flatten)]
    pub experiments: ExperimentSettings,
    /// Seconds between checks of the repository for new, promoted or
    /// re-routed versions (loaded beside the serving ones, smoke-tested,
    /// then swapped in); 0 turns polling off (POST /admin/models/reload still works).
    #[arg(
        long,
        env = "MODEL_POLL_INTERVAL_S",
        default_value_t = 10,
        help_heading = "Model repository"
    )]
    pub model_poll_interval_s: u64,
    #[command(flatten)]
    pub log: LogSettings,
    /// OTLP/HTTP endpoint for traces, e.g. `http://otel-collector:4318`
    /// (spans go to `{endpoint}/v1/traces`); unset: no traces are exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", help_heading = "Logs")]
    pub otlp_endpoint: Option<String>,
}

/// The listeners, who may call, and the bounds on requests.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP and gRPC")]
pub struct HttpSettings {
    /// HTTP port of the API.
    #[arg(long, env = "ML_SERVICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on. Loopback by default; use 0.0.0.0 in a container.
    #[arg(long, env = "ML_SERVICE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
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
    /// API keys callers must send as `Authorization: Bearer <key>`; several,
    /// separated by commas, for rotation. Unset: no authentication, and the
    /// service listens on loopback only unless --insecure-no-auth.
    #[arg(long, env = "ML_SERVICE_API_KEY", value_parser = parse_secret, value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<secrecy::SecretString>,
    /// Listen on a non-loopback address without API keys (only behind a
    /// gateway that authenticates callers).
    #[arg(long, env = "ML_SERVICE_INSECURE_NO_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure_no_auth: bool,
    /// Keys for the admin endpoints (`POST /admin/models/reload`), sent as
    /// `Authorization: Bearer <key>`; several, separated by commas. Unset:
    /// the admin endpoints answer 403.
    #[arg(long, env = "ML_SERVICE_ADMIN_KEY", value_parser = parse_secret, value_delimiter = ',', hide_env_values = true)]
    pub admin_keys: Vec<secrecy::SecretString>,
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
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
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
}

/// Which runtime runs the models, on how many threads, on which device.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Inference backend")]
pub struct BackendSettings {
    /// Inference threads (0 = one per two CPU cores, at least one).
    #[arg(long, env = "ML_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Inference backend: `tract` (pure Rust, embedded) or `onnxruntime` (the
    /// library at ORT_DYLIB_PATH; ENABLE_GPU=true selects it).
    #[arg(long, env = "INFERENCE_BACKEND", value_enum, default_value_t = BackendKind::Tract)]
    pub inference_backend: BackendKind,
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`), as printed by
    /// scripts/fetch-onnxruntime.sh.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Threads ONNX Runtime uses inside one model call. 1 suits these small
    /// models: calls already run in parallel on the inference threads.
    #[arg(long, env = "ORT_INTRA_OP_THREADS", default_value_t = 1)]
    pub ort_intra_op_threads: usize,
    /// Run models on the GPU through ONNX Runtime's CUDA execution provider,
    /// and (in a `cuda` build, with EMBEDDING_MODEL_PATH) the embedding model
    /// with candle's CUDA backend; each falls back to the CPU, with a
    /// warning, when CUDA is not usable.
    #[arg(long, env = "ENABLE_GPU", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_gpu: bool,
}

/// How requests reach the models (queue, batching, deadline) and how answers are made from their outputs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Inference")]
pub struct InferenceSettings {
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
    /// Longest wait for one model call, in milliseconds; past it (or on a
    /// model error) the answer comes from the prediction cache or the
    /// documented fallback, marked `"fallback": true`.
    #[arg(long, env = "INFERENCE_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub inference_timeout_ms: u64,
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
    /// Local hours in which only urgent notifications are sent, as START-END (24 h clock).
    #[arg(long, env = "QUIET_HOURS", default_value = "22-8", value_parser = parse_quiet_hours)]
    pub quiet_hours: ml_core::post::QuietHours,
    /// Notification channels a user is taken to have agreed to where the
    /// app's `channel_consent` table has no row for them and the channel
    /// (comma-separated: push, email, sms; at least one). A row always wins:
    /// a channel it refuses is never used, and email or SMS are never used
    /// without a row granting them unless listed here. A user who agreed to
    /// no channel gets 409 `no_consented_channel`.
    #[arg(long, env = "DEFAULT_CHANNELS", default_value = "push", value_parser = parse_channels)]
    pub default_channels: [bool; 3],
    /// Frequency cap: at most this many notifications within any 24 hours
    /// around a non-urgent one, counted from the app's `notification_log`
    /// (sent and scheduled rows, of any urgency, as of when the user's
    /// features were read); a send time that would go over moves to the
    /// first hour the cap allows, and the reason says so. Urgent
    /// notifications are never held back. 0 turns the cap off.
    #[arg(long, env = "NOTIFICATION_CAP", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=48))]
    pub notification_cap: u32,
}

impl InferenceSettings {
    /// The notification policy these settings describe.
    pub fn notification_policy(&self) -> ml_core::post::NotificationPolicy {
        ml_core::post::NotificationPolicy {
            quiet: self.quiet_hours,
            default_channels: self.default_channels,
            cap: self.notification_cap,
        }
    }
}

/// What interest phrases mean: exact tag names, or the sentence-embedding model's reading.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Interests")]
pub struct InterestSettings {
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
}

/// The feature store and the prediction cache: Redis, or in process.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Caches")]
pub struct CacheSettings {
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
}

/// Where the app's data is read: Postgres, or the embedded SQLite file.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "App data")]
pub struct DataSettings {
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
    /// SQLite file of the embedded app-data store (created with the demo data on first start).
    #[arg(long, env = "SQLITE_PATH", default_value = "./data/ml-service.db")]
    pub sqlite_path: PathBuf,
}

/// Where model versions live: a local folder or an S3 bucket.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model repository")]
pub struct ModelStoreSettings {
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
}

/// The prediction log: one row per answer, in the service's own table.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Prediction log")]
pub struct PredictionLogSettings {
    /// Log every answered prediction (match, recommendations, notification;
    /// HTTP and gRPC) with its id, model version, A/B route and what was
    /// decided: to SQLite `ml_predictions` beside the app data, or with
    /// DATABASE_URL to Postgres `ml_service.predictions`. Written off the
    /// request path; false: answers still carry `x-prediction-id`.
    #[arg(long, env = "PREDICTION_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub prediction_log: bool,
    /// Share of users whose predictions are logged, from 0 to 1, by a hash
    /// of the user id (the same on every replica: a user is logged wholly or
    /// not at all).
    #[arg(long, env = "PREDICTION_LOG_SAMPLE", default_value_t = 1.0, value_parser = parse_share)]
    pub prediction_log_sample: f64,
    /// Days a logged prediction is kept; older rows are deleted every hour.
    /// 0 keeps them forever.
    #[arg(long, env = "PREDICTION_LOG_RETENTION_DAYS", default_value_t = 90)]
    pub prediction_log_retention_days: u32,
    /// Rows waiting to be written, at most. When the queue is full (the
    /// store is down or slower than the traffic) new rows are dropped and
    /// counted, never waited for.
    #[arg(long, env = "PREDICTION_LOG_QUEUE", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub prediction_log_queue: u32,
    /// The Postgres URL the log is written with: a login role granted
    /// `ml_service_writer` (the app data stays read-only). Unset: DATABASE_URL,
    /// whose role then needs that grant.
    #[arg(long, env = "PREDICTION_LOG_DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
    pub prediction_log_database_url: Option<secrecy::SecretString>,
}

/// Outcomes tied to logged predictions, and how A/B tests are decided.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Outcomes and experiments")]
pub struct ExperimentSettings {
    /// Days after a match prediction within which a match outcome the app
    /// records for the same pair (either order) counts as its outcome.
    #[arg(long, env = "OUTCOME_MATCH_WINDOW_DAYS", default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub outcome_match_window_days: u32,
    /// Days after a recommendation within which the user saving, booking or
    /// visiting a recommended destination counts as its outcome.
    #[arg(long, env = "OUTCOME_RECOMMEND_WINDOW_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub outcome_recommend_window_days: u32,
    /// Minutes between a notification plan's send time and the notification
    /// the app sent on the chosen channel, at most, for it to be the plan's.
    #[arg(long, env = "OUTCOME_NOTIFY_SEND_TOLERANCE_MIN", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub outcome_notify_send_tolerance_min: u32,
    /// Hours after its send within which opening a notification counts; one
    /// not opened by then is recorded as not opened.
    #[arg(long, env = "OUTCOME_NOTIFY_OPEN_WINDOW_H", default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=720))]
    pub outcome_notify_open_window_h: u32,
    /// Seconds between outcome joins from the app's tables (one replica at a
    /// time, under a lease in the log's store); 0: no periodic join
    /// (`POST /admin/experiments/join` and `experiments report` still join).
    #[arg(long, env = "OUTCOME_JOIN_INTERVAL_S", default_value_t = 300)]
    pub outcome_join_interval_s: u64,
    /// The experiments' false-positive rate, which the sequential test keeps
    /// however often a report is looked at (split among challengers when a
    /// split has more than two arms).
    #[arg(long, env = "EXPERIMENT_ALPHA", default_value_t = 0.05, value_parser = parse_alpha)]
    pub experiment_alpha: f64,
    /// Seconds between automatic decisions of splits set with `models split
    /// --auto` (one replica at a time, under a lease); 0: none.
    #[arg(long, env = "EXPERIMENT_AUTO_INTERVAL_S", default_value_t = 60)]
    pub experiment_auto_interval_s: u64,
    /// Users with an outcome an arm needs before a challenger can be
    /// promoted automatically.
    #[arg(long, env = "EXPERIMENT_MIN_USERS", default_value_t = 100)]
    pub experiment_min_users: u64,
    /// Guardrail: a challenger whose share of fallback answers exceeds the
    /// control's by more than this (absolute) is rolled back.
    #[arg(long, env = "EXPERIMENT_MAX_FALLBACK_INCREASE", default_value_t = 0.02, value_parser = parse_share)]
    pub experiment_max_fallback_increase: f64,
    /// Guardrail: a challenger whose p99 latency exceeds the control's by
    /// more than this factor is rolled back.
    #[arg(long, env = "EXPERIMENT_MAX_P99_RATIO", default_value_t = 2.0)]
    pub experiment_max_p99_ratio: f64,
}

impl ExperimentSettings {
    /// The attribution windows the join uses.
    pub fn windows(&self) -> ml_data::JoinWindows {
        use chrono::Duration;
        ml_data::JoinWindows {
            matched: Duration::days(i64::from(self.outcome_match_window_days)),
            recommended: Duration::days(i64::from(self.outcome_recommend_window_days)),
            send_tolerance: Duration::minutes(i64::from(self.outcome_notify_send_tolerance_min)),
            open: Duration::hours(i64::from(self.outcome_notify_open_window_h)),
        }
    }
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    let a: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if a > 0.0 && a < 0.5 {
        Ok(a)
    } else {
        Err(format!("{a} is not between 0 and 0.5"))
    }
}

/// What the process logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs")]
pub struct LogSettings {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Any settings group from defaults and the environment alone (tests and tools).
pub fn from_env<T: Args>() -> T {
    #[derive(Parser)]
    struct Only<T: Args> {
        #[command(flatten)]
        s: T,
    }
    Only::<T>::parse_from(["ml-service"]).s
}

/// A share in 0..=1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// A secret from the command line or environment (kept out of logs and Debug).
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

/// Parse a comma-separated list of notification channels, e.g. `push,email`,
/// into one flag per channel (push, email, sms); at least one.
pub fn parse_channels(s: &str) -> Result<[bool; 3], String> {
    use ml_core::types::Channel;
    let mut on = [false; 3];
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let c: Channel = name
            .parse()
            .map_err(|_| format!("{name:?} is not a channel (push, email or sms)"))?;
        on[c.index()] = true;
    }
    if on.iter().any(|x| *x) {
        Ok(on)
    } else {
        Err("at least one channel (push, email or sms)".into())
    }
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
        from_env()
    }
}

impl HttpSettings {
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
}

impl InferenceSettings {
    /// How each model's requests are batched.
    pub fn batch_config(&self) -> ml_backend::BatchConfig {
        ml_backend::BatchConfig {
            max_batch: self.batch_size as usize,
            max_rows: self.batch_max_rows.max(1),
            max_delay: std::time::Duration::from_micros(self.batch_max_delay_us),
            queue: self.inference_queue,
        }
    }
}

impl ModelStoreSettings {
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
}

impl DataSettings {
    /// The Postgres URL, when one is set (kept secret everywhere else).
    pub fn database_url(&self) -> Option<&str> {
        use secrecy::ExposeSecret;
        self.database_url.as_ref().map(|u| u.expose_secret())
    }
}

impl PredictionLogSettings {
    /// PREDICTION_LOG_DATABASE_URL's value, if set.
    pub fn database_url(&self) -> Option<&str> {
        use secrecy::ExposeSecret;
        self.prediction_log_database_url
            .as_ref()
            .map(|u| u.expose_secret())
    }
}

impl BackendSettings {
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
    fn default_channels_parse_and_refuse_none_or_unknown() {
        assert_eq!(parse_channels("push"), Ok([true, false, false]));
        assert_eq!(parse_channels(" email, push "), Ok([true, true, false]));
        assert!(parse_channels("").is_err());
        assert!(parse_channels("pigeon").unwrap_err().contains("pigeon"));
        let s = Settings::from_env().inference;
        assert_eq!(
            s.notification_policy(),
            ml_core::post::NotificationPolicy::default()
        );
    }

    #[test]
    fn no_key_means_loopback_only_unless_told_otherwise() {
        let mut s = Settings::from_env().http;
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

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn several_api_keys_parse_and_stay_out_of_debug_output() {
        let s = Serve::parse_from(["serve", "--api-keys", "alpha-secret,beta-secret"]).s;
        assert_eq!(s.http.api_keys.len(), 2);
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("alpha-secret") && !debug.contains("beta-secret"),
            "{debug}"
        );
    }

    #[test]
    fn the_settings_parse_into_their_groups() {
        use clap::CommandFactory;
        Serve::command().debug_assert();
        let s = Serve::parse_from(["serve", "--port", "9001", "--quiet-hours", "21-9"]).s;
        assert_eq!(s.http.port, 9001);
        assert_eq!(s.inference.quiet_hours.start, 21);
        // Every setting is listed under its group's heading.
        let help = Serve::command().render_help().to_string();
        for heading in [
            "HTTP and gRPC:",
            "Inference backend:",
            "Inference:",
            "Interests:",
            "Caches:",
            "App data:",
            "Model repository:",
            "Logs:",
        ] {
            assert!(help.contains(heading), "{heading} missing from:\n{help}");
        }
    }
}
