//! The model repository in S3, against a real S3-compatible server (moto's
//! server mode from PyPI, `scripts/setup-moto.sh`, started here on a free
//! loopback port): `train` writes versions there (concurrent writers get
//! distinct numbers), `models list|promote|rollback` change what serves,
//! `serve` trains what is missing into the bucket, loads from it and picks
//! up promotions while running, and keeps serving when S3 goes away.

use super::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// moto's server: MOTO_SERVER, else what scripts/setup-moto.sh installs.
fn moto_server() -> Option<PathBuf> {
    fetched(
        "MOTO_SERVER",
        ".fixtures/moto-venv/bin/moto_server",
        "scripts/setup-moto.sh",
    )
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start moto on a free port and create `bucket`; returns the endpoint.
async fn start_s3(bin: &std::path::Path, bucket: &str) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Child(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        // moto takes unsigned requests: enough to create the bucket.
        if let Ok(r) = client.put(format!("{endpoint}/{bucket}")).send().await {
            assert!(
                r.status().is_success(),
                "creating the bucket: {}",
                r.status()
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, endpoint)
}

/// `ml-service` with the repository in the bucket and the fixture's app data.
fn ml_service(endpoint: &str, bucket: &str) -> Command {
    let s = &fixture().settings;
    let mut c = Command::new(env!("CARGO_BIN_EXE_ml-service"));
    c.env("MODEL_STORAGE", "s3")
        .env("S3_BUCKET", bucket)
        .env("S3_ENDPOINT", endpoint)
        .env("S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test-key-id")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("MODEL_STORE_TIMEOUT_MS", "2000")
        .env("SQLITE_PATH", &s.data.sqlite_path)
        // Nothing may land in a local folder.
        .env("MODEL_PATH", "/nonexistent/ml-service-models")
        .env("LOG_LEVEL", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    c
}

/// Run a command to completion; its stdout.
async fn run_ok(mut c: Command) -> String {
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_live_in_s3_train_writes_there_and_serve_follows_promotions() {
    let Some(bin) = moto_server() else { return };
    let bucket = "travelmatch-models";
    let (mut s3, endpoint) = start_s3(&bin, bucket).await;
    let cli = |args: &[&str]| {
        let mut c = ml_service(&endpoint, bucket);
        c.args(args);
        c
    };

    // train writes version 1; two trainers at once get versions 2 and 3.
    let out = run_ok(cli(&["train", "travel_match"])).await;
    assert!(out.contains("travel_match v1:"), "{out}");
    let (a, b) = tokio::join!(
        run_ok(cli(&["train", "travel_match", "--seed", "2"])),
        run_ok(cli(&["train", "travel_match", "--seed", "3"]))
    );
    let mut written: Vec<&str> = [&a, &b]
        .iter()
        .map(|o| {
            if o.contains("travel_match v2:") {
                "v2"
            } else if o.contains("travel_match v3:") {
                "v3"
            } else {
                "?"
            }
        })
        .collect();
    written.sort();
    assert_eq!(written, ["v2", "v3"], "{a}\n{b}");
    let list = run_ok(cli(&["models", "list"])).await;
    assert!(
        list.contains("travel_match: serving the newest version (v3)"),
        "{list}"
    );
    assert!(list.contains("recommendation: no versions"), "{list}");
    // Each version reads back whole (a model.json whose version differs
    // from its folder would be listed as unreadable).
    for v in 1..=3 {
        assert!(list.contains(&format!("\n  v{v} (")), "{list}");
    }
    assert!(!list.contains("unreadable"), "{list}");
    let client = reqwest::Client::new();

    // serve trains the missing models into the bucket and serves the newest.
    let mut serve = cli(&["serve"]);
    serve.env("MODEL_POLL_INTERVAL_S", "1");
    let server = serve_process(serve).await;
    let (addr, metrics) = (server.addr.clone(), server.metrics.clone());
    let users = SqliteStore::open(&fixture().settings.data.sqlite_path, 1)
        .unwrap()
        .user_ids(2)
        .unwrap();
    let version = || {
        let client = client.clone();
        let (addr, users) = (addr.clone(), users.clone());
        async move {
            let r = client
                .post(format!("http://{addr}/match/score"))
                .json(&json!({"user_a_id": users[0], "user_b_id": users[1]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-model-version"].to_str().unwrap().to_string()
        }
    };
    let wait_for = |want: &'static str| async move {
        let t0 = Instant::now();
        loop {
            let got = version().await;
            if got == want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "still {got}, waiting for {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(version().await, "travel_match/3");
    let list = run_ok(cli(&["models", "list"])).await;
    assert!(
        list.contains("recommendation: serving the newest version (v1)"),
        "{list}"
    );
    assert!(
        list.contains("notification_timing: serving the newest version (v1)"),
        "{list}"
    );

    // Promote and roll back in the bucket; the running service follows.
    let out = run_ok(cli(&["models", "promote", "travel_match", "1"])).await;
    assert!(out.contains("serving v1 (100%)"), "{out}");
    wait_for("travel_match/1").await;
    run_ok(cli(&["models", "rollback", "travel_match"])).await;
    wait_for("travel_match/3").await;

    // S3 goes away: the service keeps serving what it has, and says so in
    // its metrics.
    drop(s3.0.kill());
    let _ = s3.0.wait();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..10 {
        assert_eq!(version().await, "travel_match/3");
    }
    let m = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("ml_model_reloads_total{") && l.contains("outcome=\"error\"")),
        "no failed reload counted"
    );
    let ready = client
        .get(format!("http://{addr}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
