//! The command line: the subcommands and their arguments. Each command
//! flattens only the settings groups it reads (`ml_server::settings` owns
//! the serving groups; training and the demo dataset are this crate's), so
//! `train --help` lists no HTTP settings and `models list --help` only the
//! repository's.

use clap::{Args, Parser, Subcommand};
use ml_server::settings::{
    parse_share, BackendSettings, CacheSettings, DataSettings, InterestSettings, LogSettings,
    ModelStoreSettings, Settings,
};

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
    Serve(Box<ServeArgs>),
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
    /// A/B tests between model versions: outcomes joined to logged
    /// predictions, and each split's report with a verdict.
    Experiments {
        #[command(subcommand)]
        command: ExperimentsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// The experiment on a model's current split: per arm its users,
    /// predictions, outcomes and online metric with a 95 % interval, the
    /// always-valid comparison with the control, guardrails, the
    /// sample-ratio check, and a verdict in words (outcomes are joined from
    /// the app's tables first).
    Report(ExperimentArgs),
    /// Join outcomes from the app's tables to the logged predictions now
    /// (`serve` does it every OUTCOME_JOIN_INTERVAL_S).
    Join(ExperimentArgs),
    /// Play the app on the demo world against a running service: ask
    /// `/match/score` for random pairs of demo users over HTTP, draw each
    /// pair's outcome from the world's true match probability, write it to
    /// the app's `match_outcomes` as the app would, join, and print the
    /// travel_match experiment's report.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The service's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Match requests to send (random pairs of demo users).
    #[arg(long, default_value_t = 4_000)]
    pub pairs: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seed of the pairs and of the outcomes drawn.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The API key to send (`Authorization: Bearer`), if the service wants one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub demo: DemoSettings,
    #[command(flatten)]
    pub stores: ExperimentStores,
}

/// What the `experiments` commands read: the app data and the log beside it,
/// the outcome windows and test settings, the repository, the log level.
#[derive(Debug, Args)]
pub struct ExperimentStores {
    #[command(flatten)]
    pub data: DataSettings,
    #[command(flatten)]
    pub prediction_log: ml_server::settings::PredictionLogSettings,
    #[command(flatten)]
    pub experiments: ml_server::settings::ExperimentSettings,
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// The model (report only): travel_match, recommendation or notification_timing.
    pub model: Option<String>,
    /// Print the report as JSON (the same document as GET /admin/experiments/{model}).
    #[arg(long)]
    pub json: bool,
    /// Report on the outcomes joined so far, without joining first.
    #[arg(long)]
    pub no_join: bool,
    #[command(flatten)]
    pub stores: ExperimentStores,
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
    pub data: DataSettings,
    #[command(flatten)]
    pub demo: DemoSettings,
    #[command(flatten)]
    pub training: TrainingSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub interests: InterestSettings,
    #[command(flatten)]
    pub backend: BackendSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Create or upgrade the schema (idempotent).
    Migrate(MigrateArgs),
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
    pub data: DataSettings,
    #[command(flatten)]
    pub demo: DemoSettings,
    #[command(flatten)]
    pub log: LogSettings,
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
    pub data: DataSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List model versions with their held-out metrics.
    List(ListArgs),
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
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// The version to serve.
    pub version: u64,
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The model: travel_match, recommendation or notification_timing.
    pub model: String,
    /// VERSION=WEIGHT pairs, e.g. `3=90 4=10`; the first is the control.
    #[arg(required = true, num_args = 1.., value_parser = parse_route)]
    pub routes: Vec<ml_backend::Route>,
    /// Let the service decide the experiment by itself: promote the winner
    /// when the sequential test decides, roll back at once when a guardrail
    /// trips or the challenger is significantly worse (`serve` with
    /// EXPERIMENT_AUTO_INTERVAL_S > 0; the decision and its evidence go into
    /// serving.json).
    #[arg(long)]
    pub auto: bool,
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
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
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
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
    pub run: RunSettings,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Models to train (all three when none is named).
    #[arg(value_name = "MODELS", value_parser = ["travel_match", "recommendation", "notification_timing"])]
    pub kinds: Vec<String>,
    /// Seed of the training run.
    #[arg(long, env = "TRAIN_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Train only the models that have no version yet (a deployment's
    /// one-shot init job; run again, it does nothing).
    #[arg(long)]
    pub if_missing: bool,
    #[command(flatten)]
    pub run: RunSettings,
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
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
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
    pub run: RunSettings,
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
    pub demo: DemoSettings,
    #[command(flatten)]
    pub data: DataSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// `serve`: the server's settings, plus what the first start needs to fill
/// an empty store and train missing models.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: Settings,
    #[command(flatten)]
    pub training: TrainingSettings,
    #[command(flatten)]
    pub demo: DemoSettings,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub data: DataSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// What the commands that read the app data, run models and use the
/// repository need (`train`, `eval`, `models quantize`).
#[derive(Debug, Clone, Args)]
pub struct RunSettings {
    #[command(flatten)]
    pub models: ModelStoreSettings,
    #[command(flatten)]
    pub data: DataSettings,
    #[command(flatten)]
    pub demo: DemoSettings,
    #[command(flatten)]
    pub training: TrainingSettings,
    #[command(flatten)]
    pub interests: InterestSettings,
    #[command(flatten)]
    pub backend: BackendSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// How much of the app's data training reads.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Training")]
pub struct TrainingSettings {
    /// Training samples about this many users (a deterministic sample, plus
    /// both users of a sampled share of match outcomes: about 2.6× as many
    /// users in all), so memory stays bounded however large the app's data
    /// grows: about 37 KiB per user read (bench/train-memory.sh).
    #[arg(long, env = "TRAIN_MAX_USERS", default_value_t = 20_000)]
    pub train_max_users: usize,
    /// Most destinations the recommender trains on; a larger catalogue
    /// leaves the recommendation model out with a clear error (the other
    /// models train and serve; its endpoint answers 503).
    #[arg(long, env = "REC_MAX_DESTINATIONS", default_value_t = ml_train::train::REC_MAX_ITEMS)]
    pub rec_max_destinations: usize,
    /// Most destinations the recommender fits its exact item-item model on:
    /// it is dense, so time and memory grow as the square and cube of the
    /// catalogue (one fit of ~35 takes 4.4 s and 1.9 GB at 8,000, 80 s and
    /// 11 GB at 20,000 on 2 cores). Past it the model is low-rank (rank 256),
    /// linear in the catalogue, at some cost in quality.
    #[arg(long, env = "REC_DENSE_MAX", default_value_t = ml_train::train::REC_DENSE_MAX)]
    pub rec_dense_max: usize,
}

/// The demo dataset: generated into an empty embedded store on first
/// start, and by `data demo`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Demo data")]
pub struct DemoSettings {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_parses() {
        Cli::command().debug_assert();
        let c = Cli::parse_from(["ml-service", "data", "demo", "--users", "10", "--seed", "3"]);
        let Command::Data {
            command: DataCommand::Demo(d),
        } = c.command
        else {
            panic!("not data demo")
        };
        assert_eq!((d.users, d.seed), (Some(10), Some(3)));
        let c = Cli::parse_from(["ml-service", "serve", "--port", "9001", "--demo-users", "7"]);
        let Command::Serve(s) = c.command else {
            panic!("not serve")
        };
        assert_eq!((s.server.http.port, s.demo.demo_users), (9001, 7));
    }

    /// Each command takes only the settings groups it reads: the model
    /// commands know nothing of the app data or HTTP, `train` nothing of
    /// HTTP or the caches, `data migrate` nothing of the repository.
    #[test]
    fn each_command_takes_only_its_own_settings() {
        let takes = |path: &[&str], flag: &str| {
            let mut argv = vec!["ml-service"];
            argv.extend_from_slice(path);
            argv.extend([flag, "x"]);
            match Cli::try_parse_from(argv) {
                Ok(_) => true,
                Err(e) => e.kind() != clap::error::ErrorKind::UnknownArgument,
            }
        };
        for models in [
            &["models", "list"][..],
            &["models", "promote", "recommendation", "2"],
            &["models", "rollback", "recommendation"],
        ] {
            assert!(takes(models, "--model-path"), "{models:?}");
            assert!(!takes(models, "--sqlite-path"), "{models:?}");
            assert!(!takes(models, "--port"), "{models:?}");
        }
        assert!(takes(&["train"], "--sqlite-path"));
        assert!(takes(&["train"], "--train-max-users"));
        assert!(!takes(&["train"], "--port"));
        assert!(!takes(&["train"], "--redis-url"));
        assert!(takes(&["data", "migrate"], "--database-url"));
        assert!(!takes(&["data", "migrate"], "--model-path"));
        assert!(takes(&["features", "refresh"], "--redis-url"));
        assert!(!takes(&["features", "refresh"], "--port"));
        assert!(takes(&["serve"], "--port"));
        assert!(takes(&["serve"], "--train-max-users"));
    }
}
