//! The Grafana dashboard and the alert rules (`deploy/`) against a real
//! Prometheus (Debian package `prometheus`) that scrapes a running ml-service:
//! every expression of both returns data, the rules pass `promtool check rules`
//! and Prometheus evaluates them without error.

use super::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Whether `prometheus` and `promtool` exist; missing: skipped loudly, or a
/// failure under CI.
fn have_prometheus() -> bool {
    let ok = ["prometheus", "promtool"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus/promtool missing under CI"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
    }
    ok
}

/// Expressions of the dashboard's panels, with Grafana's `$__rate_interval`
/// set to a window the test's scrapes fill.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(deploy().join("grafana/dashboards/ml-service.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m"),
            ));
        }
    }
    out
}

/// The alert rules' expressions without their threshold (an alert that does
/// not fire returns nothing; the query under it must still return data).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let mut out = vec![];
    let mut name = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = n.to_string();
        } else if let Some(e) = l.strip_prefix("expr: ") {
            let cut = [" > ", " == ", " < "]
                .iter()
                .filter_map(|op| e.rfind(op))
                .max()
                .expect("an alert compares with a threshold");
            out.push((name.clone(), e[..cut].to_string()));
        }
    }
    out
}

async fn query(client: &reqwest::Client, prom: &str, expr: &str) -> Value {
    client
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_work_against_a_real_prometheus() {
    if !have_prometheus() {
        return;
    }
    let rules = deploy().join("prometheus/alerts.yml");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(alert_exprs().len(), 6);
    // The shipped scrape config (replicas by DNS, the rules beside it) is valid.
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy().join("prometheus/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let app = spawn_app().await;
    let target = app
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: ml-service\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prom_proc = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut prom_proc);
    let prom = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while app
        .client
        .get(format!("{prom}/-/ready"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Prometheus did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus applies discovered targets every few seconds: wait for the
    // first good scrape.
    let t0 = Instant::now();
    loop {
        let targets: Value = app.get_json(&format!("{prom}/api/v1/targets")).await;
        let t = &targets["data"]["activeTargets"][0];
        if t["health"] == "up" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no good scrape: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic on every endpoint for several scrapes: new pairs all along (so
    // the model keeps running: a counter's rate needs increases between
    // scrapes), repeats (cache hits), and errors.
    let u = app.users(30);
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        let (a, b) = (&u[i % 30], &u[(i + 1 + i / 30) % 30]);
        app.post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
            .await;
        app.post("/recommend/destinations", json!({"user_id": a}))
            .await;
        app.post(
            "/notifications/optimize",
            json!({"user_id": a, "notification_type": "reminder"}),
        )
        .await;
        app.post("/match/score", json!({"user_a_id": a})).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every expression returns data.
    for (what, expr) in dashboard_exprs().into_iter().chain(alert_exprs()) {
        let v = query(&app.client, &prom, &expr).await;
        assert_eq!(v["status"], "success", "{what}: {expr}: {v}");
        let result = v["data"]["result"].as_array().unwrap();
        assert!(!result.is_empty(), "{what}: {expr} returned no data");
        assert!(
            result
                .iter()
                .any(|r| r["value"][1].as_str().is_some_and(|x| x != "NaN")),
            "{what}: {expr} is NaN everywhere: {v}"
        );
    }
    // Prometheus itself loaded and evaluated every rule without error.
    let rules: Value = app.get_json(&format!("{prom}/api/v1/rules")).await;
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 6);
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
}

/// Spans an OTLP/HTTP receiver of this test got: (name, trace id, parent span id).
type Received = Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// A minimal OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf), on a port
/// the OS picked: a real protocol peer for the exporter.
async fn otlp_receiver() -> (String, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            sink.lock().unwrap().push((
                                s.name,
                                hex(&s.trace_id),
                                hex(&s.parent_span_id),
                            ));
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), got)
}

/// The release binary serving the fixture's data at LOG_LEVEL=info with
/// `env`, killed on drop; its JSON log lines (stderr) arrive on `lines`.
struct Served {
    child: std::process::Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve_binary(env: &[(&str, &str)]) -> Served {
    use std::io::BufRead;
    let s = &fixture().settings;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ml-service"))
        .arg("serve")
        .env("SQLITE_PATH", &s.data.sqlite_path)
        .env("MODEL_PATH", &s.models.model_path)
        .env("ML_SERVICE_PORT", "0")
        .env("PROMETHEUS_PORT", "0")
        .env("GRPC_PORT", "0")
        .env("LOG_LEVEL", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let mut served = Served {
        child,
        addr: String::new(),
        lines,
    };
    // The log line that says where it listens (port 0: the OS chose).
    let lines = &served.lines;
    served.addr = tokio::task::block_in_place(|| loop {
        let v = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("ml-service exited or was silent without listening");
        if v["message"] == "listening" {
            return v["addr"].as_str().unwrap().to_string();
        }
    });
    served
}

/// Each request leaves one log line when it is answered, inside its span:
/// the request id (as sent, or generated and echoed), method, path, status
/// and latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_logs_one_line_with_its_id_status_and_latency() {
    let served = serve_binary(&[]).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{}/health/live", served.addr))
        .header("x-request-id", "trip-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("http://{}/nope", served.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let lines = &served.lines;
    let answered = tokio::task::block_in_place(|| {
        let mut found = vec![];
        while found.len() < 2 {
            let v = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("a log line for each request");
            if v["message"] == "finished processing request" {
                found.push(v);
            }
        }
        found
    });
    let (a, b) = (&answered[0], &answered[1]);
    assert_eq!(a["span"]["request_id"], "trip-9", "{a}");
    assert_eq!(a["span"]["method"], "GET");
    assert_eq!(a["span"]["path"], "/health/live");
    assert_eq!(a["status"], 200);
    assert!(a["latency"].as_str().unwrap().ends_with(" μs"), "{a}");
    assert_eq!(b["span"]["request_id"], generated.as_str(), "{b}");
    assert_eq!(b["span"]["path"], "/nope");
    assert_eq!(b["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let (endpoint, got) = otlp_receiver().await;
    let s = &fixture().settings;
    let served = serve_binary(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let addr = &served.addr;
    let client = reqwest::Client::new();
    let u = {
        let store = SqliteStore::open(&s.data.sqlite_path, 1).unwrap();
        store.user_ids(2).unwrap()
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = client
        .post(format!("http://{addr}/match/score"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"user_a_id": u[0], "user_b_id": u[1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    loop {
        let spans = got.lock().unwrap().clone();
        let request = spans
            .iter()
            .find(|(n, t, p)| n == "request" && t == trace_id && p == caller_span);
        let inference = spans
            .iter()
            .find(|(n, t, _)| n == "inference" && t == trace_id);
        if request.is_some() && inference.is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "spans received: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
