//! The Open Inference Protocol (KServe v2): over HTTP with our own calls
//! (JSON tensors, the protocol's errors), and with NVIDIA Triton's own
//! Python client (`tritonclient[all]`, scripts/setup-tritonclient.sh) over
//! HTTP and gRPC, whose answers must equal the domain endpoints'.

use super::*;

/// The width of a model's `features` input, from its protocol metadata.
async fn input_width(app: &TestApp, model: &str) -> usize {
    let m: Value = app
        .get(&format!("/v2/models/{model}"))
        .await
        .json()
        .await
        .unwrap();
    m["inputs"][0]["shape"][1].as_u64().unwrap() as usize
}

/// Match feature rows of pairs of users, as the service computes them, cut
/// to the width the served model reads.
async fn match_rows(app: &TestApp, pairs: &[(String, String)]) -> Vec<Vec<f32>> {
    let store = &app.store;
    let cat = Catalogue::new(store.load_destinations().unwrap());
    let width = input_width(app, "travel_match").await;
    // The served version's layout and rarity table, from its model.json.
    let meta: ml_backend::ModelMeta = serde_json::from_slice(
        &std::fs::read(
            fixture()
                .settings
                .models
                .model_path
                .join("travel_match/1/model.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut rows = vec![];
    for (a, b) in pairs {
        let (fa, fb) = (
            features_of(store, &cat, a).await,
            features_of(store, &cat, b).await,
        );
        let mut ctx = match_context(&cat, None, &[]);
        ctx.rarity = meta.params.interest_rarity.clone();
        let x = meta
            .params
            .match_layout()
            .select(&match_features(&fa, &fb, &ctx));
        assert_eq!(x.len(), width);
        rows.push(x);
    }
    rows
}

async fn http_scores(app: &TestApp, pairs: &[(String, String)]) -> Vec<Value> {
    let mut out = vec![];
    for (a, b) in pairs {
        let r = app
            .post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
            .await;
        assert_eq!(r.status(), 200);
        out.push(r.json().await.unwrap());
    }
    out
}

fn pairs(app: &TestApp, n: usize) -> Vec<(String, String)> {
    app.users(2 * n)
        .chunks(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

#[tokio::test]
async fn the_protocol_over_http_with_json_tensors() {
    let app = spawn_app().await;
    let server: Value = app.get("/v2").await.json().await.unwrap();
    assert_eq!(server["name"], "ml-service");
    assert_eq!(app.get("/v2/health/live").await.status(), 200);
    assert_eq!(app.get("/v2/health/ready").await.status(), 200);
    for model in ["travel_match", "recommendation", "notification_timing"] {
        let m: Value = app
            .get(&format!("/v2/models/{model}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(m["name"], model);
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(m["inputs"][0]["name"], "features");
        assert_eq!(m["inputs"][0]["datatype"], "FP32");
        assert_eq!(m["inputs"][0]["shape"][0], -1);
        assert_eq!(
            app.get(&format!("/v2/models/{model}/ready")).await.status(),
            200
        );
        assert_eq!(
            app.get(&format!("/v2/models/{model}/versions/1/ready"))
                .await
                .status(),
            200
        );
    }

    // One request of three rows answers each row as /match/score does.
    let p = pairs(&app, 3);
    let rows = match_rows(&app, &p).await;
    let width = rows[0].len();
    let expected = http_scores(&app, &p).await;
    let r = app
        .post(
            "/v2/models/travel_match/versions/1/infer",
            json!({"id": "req-7", "inputs": [{"name": "features", "shape": [3, width], "datatype": "FP32", "data": rows}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model-version"], "travel_match/1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "req-7");
    assert_eq!(v["model_version"], "1");
    let score = &v["outputs"][0];
    assert_eq!(score["name"], "score");
    assert_eq!(score["shape"], json!([3, 1]));
    let factors = &v["outputs"][1];
    assert_eq!(factors["shape"], json!([3, 3]));
    for (k, e) in expected.iter().enumerate() {
        let s = score["data"][k].as_f64().unwrap();
        assert!(
            (s - e["score"].as_f64().unwrap()).abs() < 1e-3,
            "{s} vs {e}"
        );
        let pers = factors["data"][3 * k + 2].as_f64().unwrap();
        assert!((pers - e["factors"]["personality"].as_f64().unwrap()).abs() < 1e-3);
    }

    // Only the outputs asked for.
    let r: Value = app
        .post(
            "/v2/models/travel_match/infer",
            json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": rows[0]}],
                   "outputs": [{"name": "factors"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(r["outputs"][0]["name"], "factors");

    // Errors in the protocol's form, naming what is wrong.
    let bad = |shape: Value, datatype: &str, name: &str, data: Value| json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]});
    let cases = [
        (
            bad(
                json!([1, width - 1]),
                "FP32",
                "features",
                json!(rows[0][1..]),
            ),
            400,
            "inputs[0].shape",
        ),
        (
            bad(json!([2, width]), "FP32", "features", json!(rows[0])),
            400,
            "inputs[0].data",
        ),
        (
            bad(json!([1, width]), "INT64", "features", json!(rows[0])),
            400,
            "inputs[0].datatype",
        ),
        (
            bad(json!([1, width]), "FP32", "input__0", json!(rows[0])),
            400,
            "\"features\"",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": rows[0]}],
                   "outputs": [{"name": "logits"}]}),
            400,
            "outputs[0].name",
        ),
        (json!({"inputs": "none"}), 400, "inputs"),
    ];
    for (body, status, needle) in cases {
        let r = app.post("/v2/models/travel_match/infer", body).await;
        assert_eq!(r.status(), status);
        let e: Value = r.json().await.unwrap();
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} lacks {needle}");
    }
    let r = app
        .post(
            "/v2/models/resnet50/infer",
            bad(json!([1, width]), "FP32", "features", json!(rows[0])),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("resnet50"));
    assert_eq!(
        app.get("/v2/models/travel_match/versions/99")
            .await
            .status(),
        404
    );
    assert_eq!(app.get("/v2/models/resnet50/ready").await.status(), 400);

    // The protocol's calls count in the same metrics as the domain's.
    let text = app.scrape().await;
    assert!(
        text.contains(r#"ml_inference_requests_total{endpoint="/v2/models/{name}/versions/{version}/infer",model="travel_match",version="1",status="200"}"#),
        "{text}"
    );
    // The OpenAPI document describes the protocol.
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"]["/v2/models/{name}/infer"]["post"].is_object());
}

/// tritonclient's Python: TRITON_PYTHON, else what
/// scripts/setup-tritonclient.sh installs.
fn triton_python() -> Option<PathBuf> {
    fetched(
        "TRITON_PYTHON",
        ".fixtures/triton-venv/bin/python",
        "scripts/setup-tritonclient.sh",
    )
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_own_client_gets_the_domain_answers_over_http_and_grpc() {
    let Some(python) = triton_python() else {
        return;
    };
    let app = spawn_app().await;
    let p = pairs(&app, 4);
    let rows = match_rows(&app, &p).await;
    let expected = http_scores(&app, &p).await;
    // The other two models on rows of their width (any finite values): the
    // four ways of calling must agree with each other.
    let mut cases = vec![json!({"model": "travel_match", "rows": rows})];
    for model in ["recommendation", "notification_timing"] {
        let w = input_width(&app, model).await;
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|r| {
                (0..w)
                    .map(|c| (((r * 7 + c * 3) % 11) as f32) / 10.0)
                    .collect()
            })
            .collect();
        cases.push(json!({"model": model, "rows": rows}));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    let output = dir.path().join("out.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({
            "http": app.base.trim_start_matches("http://"),
            "grpc": app.grpc,
            "cases": cases,
        }))
        .unwrap(),
    )
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kserve_client.py");
    let (i, o) = (input.clone(), output.clone());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .arg(&i)
            .arg(&o)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "tritonclient failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    for key in ["http_live", "http_ready", "grpc_live", "grpc_ready"] {
        assert_eq!(got[key], true, "{key}");
    }
    assert_eq!(got["http_server"]["name"], "ml-service");
    assert_eq!(got["grpc_server_name"], "ml-service");

    for case in got["cases"].as_array().unwrap() {
        let model = case["model"].as_str().unwrap();
        assert_eq!(case["http_model_ready"], true);
        assert_eq!(case["grpc_model_ready"], true);
        assert_eq!(case["http_version"], "1");
        assert_eq!(
            case["http_metadata"]["inputs"], case["grpc_metadata"]["inputs"],
            "{model}: the two transports describe the same tensors"
        );
        assert_eq!(
            case["http_metadata"]["outputs"],
            case["grpc_metadata"]["outputs"]
        );
        assert_eq!(case["grpc_typed_id"], "typed-1");
        // Four ways of calling, one answer (bit for bit: one model, FP32 out).
        let outs = case["http_metadata"]["outputs"].as_array().unwrap();
        for o in outs {
            let name = o["name"].as_str().unwrap();
            let reference = floats(&case["http_binary"][name]);
            assert!(!reference.is_empty());
            for form in ["http_json", "grpc_raw", "grpc_typed"] {
                let other = floats(&case[form][name]);
                assert_eq!(other.len(), reference.len(), "{model} {form} {name}");
                for (a, b) in reference.iter().zip(&other) {
                    assert!((a - b).abs() < 1e-6, "{model} {form} {name}: {a} vs {b}");
                }
            }
        }
        // Errors reach the client in each transport's form.
        let e = &case["http_wrong_shape"];
        assert_eq!(e["status"], "400", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("inputs[0].shape"),
            "{e}"
        );
        let e = &case["grpc_wrong_shape"];
        assert_eq!(e["status"], "StatusCode.INVALID_ARGUMENT", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("inputs[0].shape"),
            "{e}"
        );
        for key in ["http_wrong_datatype", "grpc_wrong_datatype"] {
            assert!(
                case[key]["message"].as_str().unwrap().contains("FP32"),
                "{key}: {}",
                case[key]
            );
        }
        assert!(case["grpc_wrong_name"]["message"]
            .as_str()
            .unwrap()
            .contains("\"features\""));
    }
    // The match rows answer as /match/score does.
    let m = &got["cases"][0];
    let scores = floats(&m["http_binary"]["score"]);
    let factors = floats(&m["grpc_raw"]["factors"]);
    for (k, e) in expected.iter().enumerate() {
        assert!(
            (scores[k] - e["score"].as_f64().unwrap()).abs() < 1e-3,
            "{k}: {e}"
        );
        for (j, f) in ["interest_overlap", "travel_style", "personality"]
            .iter()
            .enumerate()
        {
            assert!((factors[3 * k + j] - e["factors"][f].as_f64().unwrap()).abs() < 1e-3);
        }
    }
    assert_eq!(got["http_unknown_model"]["status"], "404");
    assert_eq!(got["http_unknown_model_ready"], false);
    assert_eq!(got["grpc_unknown_model"]["status"], "StatusCode.NOT_FOUND");
}

/// With API keys configured, the protocol's model routes (metadata,
/// readiness, inference) need one, refused in the protocol's error form
/// (`{"error": ...}`, 401, `WWW-Authenticate`), while server metadata and
/// health stay open as `/health` does.
#[tokio::test]
async fn the_protocols_model_routes_need_an_api_key_when_keys_are_set() {
    let mut s = fixture().settings.clone();
    s.http.api_keys = vec!["v2-key-1".to_string().into()];
    let app = spawn_with(s).await;
    let send = |method: reqwest::Method, path: &str, key: Option<&str>| {
        let mut r = app.client.request(method, format!("{}{path}", app.base));
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.json(&json!({"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}))
            .send()
    };
    let guarded = [
        (reqwest::Method::GET, "/v2/models/travel_match"),
        (reqwest::Method::GET, "/v2/models/travel_match/versions/1"),
        (reqwest::Method::GET, "/v2/models/travel_match/ready"),
        (
            reqwest::Method::GET,
            "/v2/models/travel_match/versions/1/ready",
        ),
        (reqwest::Method::POST, "/v2/models/travel_match/infer"),
        (
            reqwest::Method::POST,
            "/v2/models/travel_match/versions/1/infer",
        ),
    ];
    for (method, path) in &guarded {
        for key in [None, Some("v2-key-")] {
            let r = send(method.clone(), path, key).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} {key:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            let error = body["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty() && !error.contains("v2-key"), "{body}");
        }
        // With the key, the route answers as without keys: metadata and
        // readiness 200, inference of a one-column row 400 (the model reads
        // more columns), never 401.
        let r = send(method.clone(), path, Some("v2-key-1")).await.unwrap();
        let expected = if *method == reqwest::Method::GET {
            200
        } else {
            400
        };
        assert_eq!(r.status(), expected, "{method} {path}");
    }
    for path in ["/v2", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}
