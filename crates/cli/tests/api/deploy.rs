//! The deployment files, checked with what installs here (there is no Docker
//! engine or cluster): hadolint on both Dockerfiles, `docker-compose config`
//! on both Compose files, nginx on the load balancer's config, the
//! Kubernetes manifests against the API's JSON schemas (kubernetes-validate
//! --strict); every setting they name is one the binary knows, the probes ask
//! paths that answer; and `deploy/scale-out.sh` (three replicas behind nginx,
//! one killed mid-run) passes.

use super::*;
use std::path::Path;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder scripts/setup-deploy-tools.sh fills (hadolint,
/// kubernetes-validate, a Python with PyYAML).
fn deploy_tools() -> Option<PathBuf> {
    fetched(
        "DEPLOY_TOOLS_HADOLINT",
        ".fixtures/deploy-venv/bin/hadolint",
        "scripts/setup-deploy-tools.sh",
    )
    .map(|p| p.parent().unwrap().to_path_buf())
}

/// A Debian tool on PATH; missing: None with a loud SKIPPED line, or a
/// failure under CI.
fn debian_tool(name: &str) -> Option<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} is missing under CI (apt-get install {name})"
    );
    eprintln!("SKIPPED: {name} is missing (apt-get install {name})");
    None
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every document of a YAML text, as JSON (PyYAML in the tools' venv).
fn yaml(tools: &Path, text: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(tools.join("python"))
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The environment variables the binary reads (`[env: NAME=` in its help).
fn known_settings() -> Vec<String> {
    let help = run_ok(Command::new(env!("CARGO_BIN_EXE_ml-service")).args(["serve", "--help"]));
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

/// Variables read by libraries or the loader rather than by our flags.
fn read_elsewhere(name: &str) -> bool {
    name.starts_with("AWS_") || name == "LD_LIBRARY_PATH"
}

fn assert_known(names: impl IntoIterator<Item = String>, what: &str) {
    let known = known_settings();
    assert!(known.len() > 40, "{known:?}");
    for n in names {
        assert!(
            known.contains(&n) || read_elsewhere(&n),
            "{what} sets {n}, which ml-service does not read"
        );
    }
}

#[test]
fn the_dockerfiles_pass_hadolint_and_set_only_known_settings() {
    let Some(tools) = deploy_tools() else { return };
    for file in ["Dockerfile", "Dockerfile.gpu"] {
        run_ok(Command::new(tools.join("hadolint")).arg(root().join(file)));
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for needle in [
            "USER 10001",
            "HEALTHCHECK",
            "CMD [\"ml-service\", \"healthcheck\"]",
            "EXPOSE 8000 8001 9090",
            "cargo chef cook",
        ] {
            assert!(text.contains(needle), "{file} lacks {needle}");
        }
        // The names after ENV, up to the first `=` on each line of the block.
        let env_block = text.split("\nENV ").nth(1).unwrap();
        let names: Vec<String> = env_block
            .lines()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("EXPOSE"))
            .filter_map(|l| l.trim().split('=').next())
            .map(str::to_string)
            .collect();
        assert!(names.contains(&"ML_SERVICE_HOST".to_string()), "{names:?}");
        assert_known(names, file);
    }
}

#[test]
fn the_compose_files_parse_scale_and_reserve_a_gpu() {
    let Some(tools) = deploy_tools() else { return };
    let Some(()) = debian_tool("docker-compose") else {
        return;
    };
    let config = |file: &str, key: Option<&str>| {
        let mut c = Command::new("docker-compose");
        c.current_dir(root()).args(["-f", file, "config"]);
        c.env_remove("ML_SERVICE_API_KEY");
        if let Some(k) = key {
            c.env("ML_SERVICE_API_KEY", k);
        }
        c.output().unwrap()
    };
    // Without an API key the files refuse to start anything.
    let out = config("docker-compose.yml", None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ML_SERVICE_API_KEY"));

    let out = config("docker-compose.yml", Some("k"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = &yaml(&tools, &String::from_utf8_lossy(&out.stdout))[0];
    let services = c["services"].as_object().unwrap();
    for s in [
        "ml-service",
        "ml-init",
        "lb",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "{s}");
    }
    let ml = &c["services"]["ml-service"];
    // No fixed host port: `--scale ml-service=5` cannot collide.
    assert!(ml.get("ports").is_none(), "{ml}");
    assert_eq!(c["services"]["lb"]["ports"][0]["published"], 8000);
    assert_eq!(
        ml["healthcheck"]["test"],
        json!(["CMD", "ml-service", "healthcheck"])
    );
    assert_eq!(
        ml["depends_on"]["ml-init"]["condition"],
        "service_completed_successfully"
    );
    // The spec's vertical limits.
    let r = &ml["deploy"]["resources"];
    assert_eq!(r["limits"]["memory"], "8G");
    assert_eq!(r["reservations"]["memory"], "4G");
    let env: Vec<String> = ml["environment"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_known(env, "docker-compose.yml");
    assert!(c["services"]["ml-init"]["command"][0]
        .as_str()
        .unwrap()
        .contains("train --if-missing"));

    let out = config("docker-compose.gpu.yml", Some("k"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = &yaml(&tools, &String::from_utf8_lossy(&out.stdout))[0];
    let ml = &g["services"]["ml-service"];
    assert_eq!(ml["build"]["dockerfile"], "Dockerfile.gpu");
    assert_eq!(ml["environment"]["ENABLE_GPU"], "true");
    let dev = &ml["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(dev["driver"], "nvidia");
    assert_eq!(dev["count"], 1);
    assert_eq!(dev["capabilities"], json!(["gpu"]));
}

#[test]
fn the_load_balancer_config_passes_nginx() {
    let Some(()) = debian_tool("nginx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/nginx.pid; error_log {d}/error.log;\nevents {{}}\nhttp {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\ninclude {}; }}\n",
            root().join("deploy/nginx/compose.conf").display()
        ),
    )
    .unwrap();
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_kubernetes_manifests_validate_and_match_the_service() {
    let Some(tools) = deploy_tools() else { return };
    let dir = root().join("deploy/k8s");
    let kustomization = &yaml(
        &tools,
        &std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap(),
    )[0];
    let mut docs = std::collections::HashMap::new();
    let mut files: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    files.extend(["init-job.yaml".into(), "secret.example.yaml".into()]);
    for f in &files {
        let path = dir.join(f);
        run_ok(
            Command::new(tools.join("kubernetes-validate"))
                .args(["--strict", "--quiet"])
                .arg(&path),
        );
        let doc = yaml(&tools, &std::fs::read_to_string(&path).unwrap()).remove(0);
        docs.insert(doc["kind"].as_str().unwrap().to_string(), doc);
    }
    let config = docs["ConfigMap"]["data"].as_object().unwrap();
    let setting = |k: &str| config[k].as_str().unwrap().parse::<u64>().unwrap();
    assert_known(config.keys().cloned(), "configmap.yaml");
    assert_known(
        docs["Secret"]["stringData"]
            .as_object()
            .unwrap()
            .keys()
            .cloned(),
        "secret.example.yaml",
    );

    let pod = &docs["Deployment"]["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 > setting("SHUTDOWN_GRACE_MS") + setting("DRAIN_TIMEOUT_MS"),
        "the pod must outlive the grace period and the drain"
    );
    let c = &pod["containers"][0];
    let ports: std::collections::HashMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], setting("ML_SERVICE_PORT"));
    assert_eq!(ports["grpc"], setting("GRPC_PORT"));
    assert_eq!(ports["metrics"], setting("PROMETHEUS_PORT"));
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The probes ask paths the service answers.
    let app = spawn_app().await;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(c[probe]["httpGet"]["port"], "http");
        assert_eq!(app.get(path).await.status(), 200, "{probe} {path}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live");
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"], true,
        "the image's user is not root"
    );

    let hpa = &docs["HorizontalPodAutoscaler"]["spec"];
    assert_eq!(hpa["minReplicas"], 2);
    assert_eq!(hpa["maxReplicas"], 20);
    assert_eq!(
        hpa["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert_eq!(
        hpa["scaleTargetRef"]["name"],
        docs["Deployment"]["metadata"]["name"]
    );
    assert_eq!(docs["PodDisruptionBudget"]["spec"]["minAvailable"], 1);
    assert!(
        docs["Job"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
            .as_str()
            .unwrap()
            .contains("train --if-missing")
    );
}

#[test]
fn three_replicas_behind_nginx_lose_nothing_when_one_is_killed() {
    for t in ["nginx", "wrk", "psql", "redis-server", "redis-cli"] {
        let Some(()) = debian_tool(t) else { return };
    }
    // Its own Redis, on a port the OS picks.
    let redis = super::redis_cache::RedisServer::start();
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let out = Command::new(root().join("deploy/scale-out.sh"))
        .env("BENCH_BIN", env!("CARGO_BIN_EXE_ml-service"))
        .env("DATABASE_ADMIN_URL", &admin)
        .env("REDIS_URL", redis.url())
        .env("DURATION", "6")
        .env("KILL_AT", "3")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = text.lines().last().unwrap();
    assert!(result.starts_with("RESULT lost=0 "), "{text}");
    assert!(result.contains("cache_shared=yes"), "{text}");
    // Both A/B variants were seen, and every user got one variant everywhere.
    assert!(text.contains("travel_match/1 travel_match/2"), "{text}");
}
