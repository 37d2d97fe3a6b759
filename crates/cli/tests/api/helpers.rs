//! The integration tests' harness: the shared fixture (a demo store and
//! models trained once per run), `settings_in` for a fresh store and
//! repository, the service started in process as `serve` starts it
//! (`spawn_app`, `spawn_with`, `spawn_serve`) or as a process
//! (`serve_process`), the commands run as `main` runs them (`run_cli`), and
//! the small readers the tests share (`error_of`, `marked_fallback`, …).

use chrono::Utc;
use ml_backend::ModelRepository;
use ml_cli::args::{DemoSettings, ServeArgs, TrainingSettings};
use ml_core::catalogue::Catalogue;
use ml_core::features::UserFeatures;
use ml_data::{DataSource, SqliteStore};
use ml_server::app;
use ml_server::settings::Settings;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// A data store and model repository shared by the tests (built once).
pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) settings: Settings,
}

pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_in(dir.path().join("data/app.db"), dir.path().join("models"));
        // Start-up code, run as `serve` runs it: off any async runtime's
        // threads, with a runtime to block on.
        let s = settings.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let _entered = rt.enter();
            ml_cli::store::open(&s.data, &demo(), app::Access::Serve).unwrap();
            let repo = ModelRepository::local(&s.models.model_path).unwrap();
            ml_cli::training::train_missing(
                &s.data,
                &demo(),
                &ml_server::settings::from_env::<TrainingSettings>(),
                &repo,
                &ml_backend::tract::TractBackend,
                &ml_server::interests::Interests::exact(),
            )
            .unwrap();
        })
        .join()
        .unwrap();
        Fixture {
            _dir: dir,
            settings,
        }
    })
}

/// The tests' demo dataset: small, and the same every run.
pub(crate) fn demo() -> DemoSettings {
    DemoSettings {
        demo_users: 800,
        demo_seed: 5,
        demo_synonym_rate: 0.0,
    }
}

pub(crate) fn settings_in(sqlite: PathBuf, models: PathBuf) -> Settings {
    let mut s = Settings::from_env();
    // The embedded store, even where the environment names a Postgres.
    s.data.database_url = None;
    s.data.sqlite_path = sqlite;
    s.models.model_path = models;
    s.backend.workers = 2;
    s.http.max_body_bytes = 64 * 1024;
    s
}

pub(crate) struct TestApp {
    pub(crate) base: String,
    /// The gRPC listener's `host:port`.
    pub(crate) grpc: String,
    /// The metrics listener's base URL.
    pub(crate) metrics: String,
    pub(crate) client: reqwest::Client,
    pub(crate) store: SqliteStore,
    /// The service itself (its prediction log's counts).
    pub(crate) predictor: Arc<ml_server::service::Predictor>,
}

impl TestApp {
    pub(crate) async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
    /// POST a body and parse the JSON answer.
    pub(crate) async fn post_json(&self, path: &str, body: Value) -> Value {
        self.post(path, body).await.json().await.unwrap()
    }
    pub(crate) async fn post_raw(&self, path: &str, ct: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap()
    }
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
    /// An admin call, with `key` as the bearer token if given.
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().await.unwrap()
    }

    /// An admin call's JSON answer.
    pub(crate) async fn admin_json(&self, method: reqwest::Method, path: &str, key: &str) -> Value {
        self.admin(method, path, Some(key))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Ids of users in the store, in a stable order.
    pub(crate) fn users(&self, n: usize) -> Vec<String> {
        self.store.user_ids(n).unwrap()
    }

    /// The metrics listener's text.
    pub(crate) async fn scrape(&self) -> String {
        self.client
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GET a URL and parse the JSON answer.
    pub(crate) async fn get_json(&self, url: &str) -> Value {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Background traffic over the three endpoints (a match, a notification,
/// a recommendation in turn, every 5 ms per worker) until stopped, counting
/// the statuses it got: fault tests assert that every one was a 200.
pub(crate) struct Background {
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<std::collections::BTreeMap<u16, usize>>>,
}

impl Background {
    pub(crate) fn start<U: ToString>(app: &TestApp, users: Vec<U>, workers: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let users: Arc<Vec<String>> = Arc::new(users.iter().map(U::to_string).collect());
        let tasks = (0..workers)
            .map(|t| {
                let (client, base) = (app.client.clone(), app.base.clone());
                let (users, stop) = (Arc::clone(&users), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                    let mut i = t;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let u = |k: usize| &users[k % users.len()];
                        let (path, body) = match i % 3 {
                            0 => (
                                "/match/score",
                                json!({"user_a_id": u(i), "user_b_id": u(i + 1)}),
                            ),
                            1 => (
                                "/notifications/optimize",
                                json!({"user_id": u(i), "notification_type": "message"}),
                            ),
                            _ => ("/recommend/destinations", json!({"user_id": u(i)})),
                        };
                        let r = client
                            .post(format!("{base}{path}"))
                            .json(&body)
                            .send()
                            .await;
                        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                        *statuses.entry(status).or_default() += 1;
                        i += workers;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    statuses
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stop, and assert that every request was answered 200 (and that
    /// there was some load).
    pub(crate) async fn assert_all_ok(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for t in self.tasks {
            for (k, n) in t.await.unwrap() {
                *statuses.entry(k).or_default() += n;
            }
        }
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "{statuses:?}"
        );
        assert!(statuses[&200] >= 8, "too little load: {statuses:?}");
    }
}

/// A user's features computed here, from the store, as the service computes
/// them (to check its answers against the trained model's).
pub(crate) async fn features_of(store: &SqliteStore, cat: &Catalogue, id: &str) -> UserFeatures {
    let h = store
        .user_history(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    UserFeatures::from_history(h.profile.as_ref().unwrap(), &h, cat, Utc::now())
}

/// Assert that `r` is a marked fallback (200, `x-fallback`, `fallback:
/// true`, confidence 0) and return its body.
pub(crate) async fn marked_fallback(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "true");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["fallback"].clone(), v["confidence"].clone()),
        (json!(true), json!(0.0)),
        "{v}"
    );
    v
}

pub(crate) async fn spawn_with(settings: Settings) -> TestApp {
    let backend = app::backend(&settings.backend).unwrap();
    spawn_with_backend(settings, backend).await
}

/// `serve`'s start-up on `settings`: the tests' demo dataset into an empty
/// store and any missing model trained first.
pub(crate) fn serve_args(settings: Settings) -> ServeArgs {
    ServeArgs {
        server: settings,
        training: ml_server::settings::from_env::<TrainingSettings>(),
        demo: demo(),
    }
}

/// A server whose models run on `backend` (tests wrap the real one).
pub(crate) async fn spawn_with_backend(
    settings: Settings,
    backend: Arc<dyn ml_backend::InferenceBackend>,
) -> TestApp {
    spawn_serve(serve_args(settings), backend).await
}

/// A server started as `serve` starts, on `args`.
pub(crate) async fn spawn_serve(
    args: ServeArgs,
    backend: Arc<dyn ml_backend::InferenceBackend>,
) -> TestApp {
    let settings = args.server.clone();
    let predictor =
        tokio::task::spawn_blocking(move || ml_cli::serve::prepare_with(&args, backend))
            .await
            .unwrap()
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mlistener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = mlistener.local_addr().unwrap();
    tokio::spawn(app::run_metrics(
        mlistener,
        predictor.clone(),
        std::future::pending(),
    ));
    let glistener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gaddr = glistener.local_addr().unwrap();
    // One admission for both transports, as `serve` has it.
    let admission = ml_server::admission::Admission::new(&settings.http);
    let (s, p, a) = (settings.clone(), predictor.clone(), admission.clone());
    tokio::spawn(
        async move { ml_server::grpc::run(glistener, p, &s, a, std::future::pending()).await },
    );
    let (s, p) = (settings.clone(), predictor.clone());
    tokio::spawn(
        async move { app::run_http(listener, p, &s, admission, std::future::pending()).await },
    );
    TestApp {
        base: format!("http://{addr}"),
        grpc: gaddr.to_string(),
        metrics: format!("http://{maddr}/metrics"),
        client: reqwest::Client::new(),
        store: SqliteStore::open(&settings.data.sqlite_path, 1).unwrap(),
        predictor,
    }
}

/// Run an `ml-service` command (as `main` would) off the async runtime, on the
/// store and model repository of `settings`, logging only warnings.
pub(crate) async fn run_cli(args: &[&str], settings: &Settings) {
    try_cli(args, settings).await.unwrap();
}

pub(crate) async fn try_cli(args: &[&str], settings: &Settings) -> anyhow::Result<()> {
    use clap::{CommandFactory, Parser};
    let sqlite = settings.data.sqlite_path.display().to_string();
    let models = settings.models.model_path.display().to_string();
    let database = settings.data.database_url().map(str::to_string);
    // Each command takes only its own settings groups: pass the store, the
    // repository and the log level to those that read them.
    let cli = ml_cli::args::Cli::command();
    let mut command = &cli;
    for a in args {
        match command.find_subcommand(a) {
            Some(sub) => command = sub,
            None => break,
        }
    }
    let takes = |id: &str| command.get_arguments().any(|a| a.get_id() == id);
    let mut argv = vec!["ml-service"];
    argv.extend_from_slice(args);
    for (id, flag, value) in [
        ("sqlite_path", "--sqlite-path", Some(sqlite.as_str())),
        ("model_path", "--model-path", Some(models.as_str())),
        ("log_level", "--log-level", Some("warn")),
        ("database_url", "--database-url", database.as_deref()),
    ] {
        if let (true, Some(v)) = (takes(id), value) {
            argv.extend([flag, v]);
        }
    }
    let cli = ml_cli::args::Cli::parse_from(argv);
    tokio::task::spawn_blocking(move || ml_cli::run(cli))
        .await
        .unwrap()
}

/// A running `ml-service serve` process, killed when dropped.
pub(crate) struct Process {
    pub(crate) child: std::process::Child,
    /// Where the API and the metrics listen (the log line says; port 0 lets
    /// the OS choose).
    pub(crate) addr: String,
    pub(crate) metrics: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `serve` as `cmd` sets it up (ports 0, JSON logs at info) and wait
/// for it to listen. Its log keeps being read, so it never blocks on a full pipe.
pub(crate) async fn serve_process(mut cmd: std::process::Command) -> Process {
    use std::io::BufRead;
    cmd.env("ML_SERVICE_PORT", "0")
        .env("PROMETHEUS_PORT", "0")
        .env("GRPC_PORT", "0")
        .env("LOG_LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let found = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    let found = (
                        v["addr"].as_str().unwrap().to_string(),
                        v["metrics"].as_str().unwrap().to_string(),
                    );
                    std::thread::spawn(move || lines.for_each(drop));
                    return Some(found);
                }
            }
        }
        None
    })
    .await
    .unwrap();
    let mut p = Process {
        child,
        addr: String::new(),
        metrics: String::new(),
    };
    let (addr, metrics) = found.expect("ml-service exited without listening");
    (p.addr, p.metrics) = (addr, metrics);
    p
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_with(fixture().settings.clone()).await
}

pub(crate) async fn error_of(r: reqwest::Response) -> (u16, String, Option<String>) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    (
        status,
        e["code"].as_str().unwrap().to_string(),
        e["field"].as_str().map(str::to_string),
    )
}

/// The repository's `.fixtures` folder (filled by scripts/fetch-fixtures.sh),
/// or `None` with a loud skip; under `CI=true` a missing fixture fails.
pub(crate) fn fixture_dir(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.fixtures")
        .join(name);
    if dir.join(".ok").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but {} is missing: run scripts/fetch-fixtures.sh",
            dir.display()
        );
    }
    eprintln!("\n*** SKIPPED: {} is missing; run scripts/fetch-fixtures.sh. Under CI=true this fails. ***\n", dir.display());
    None
}
