//! The caches against real Redis servers this test starts (`redis-server` on
//! ports the OS picked), each test with its own key prefix: the shared feature
//! store, the prediction cache across model versions, `features refresh`,
//! Redis down at start, killed and restarted under load, stalled, and a
//! three-node Redis Cluster.

use super::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `redis-server` exists; missing: skipped loudly, or a failure under CI.
fn have_redis() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is missing under CI"
        );
        eprintln!("SKIPPED: redis-server is not installed");
    }
    ok
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port(), &[])
    }

    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(port, dir, extra)
    }

    fn start_in(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let s = Self { child, port, dir };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(mut c) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port (after `stop`), empty.
    pub fn restart(&mut self) {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let port = self.port;
        let fresh = Self::start_in(port, dir, &[]);
        // Take the new process; the old handle is already reaped.
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }

    /// Keys under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut self.conn())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh key prefix per test.
fn prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

fn with_redis(url: String, prefix: &str) -> Settings {
    let mut s = fixture().settings.clone();
    s.cache.redis_url = Some(secrecy::SecretString::from(url));
    s.cache.cache_prefix = prefix.to_string();
    s
}

/// A copy of the fixture's store without `user`'s profile: a replica whose
/// data source does not know the user can only answer from the shared store.
fn store_without(user: &str, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("replica.db");
    let store = SqliteStore::open(&fixture().settings.data.sqlite_path, 1).unwrap();
    let dest = path.display().to_string();
    store
        .with_blocking(|c| {
            c.execute("VACUUM INTO ?1", [&dest]).unwrap();
            Ok(())
        })
        .unwrap();
    let copy = SqliteStore::open(&path, 1).unwrap();
    let n = copy
        .with_blocking(|c| {
            c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
            Ok(c.execute("DELETE FROM profiles WHERE id = ?1", [user])
                .unwrap())
        })
        .unwrap();
    assert_eq!(n, 1);
    path
}

fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `/health` until Redis is connected (it reconnects by itself).
async fn wait_until_connected(app: &TestApp) {
    let t0 = Instant::now();
    loop {
        let health: Value = app.get("/health").await.json().await.unwrap();
        if health["redis_connected"] == true {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "Redis never (re)connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the service has written something under `prefix` (writes happen
/// in the background), sending a request now and then.
async fn wait_for_keys(redis: &RedisServer, app: &TestApp, prefix: &str) {
    let t0 = Instant::now();
    let mut i = 0;
    while redis.keys(prefix).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "nothing written to Redis"
        );
        let u = app.users(40);
        app.post(
            "/match/score",
            json!({"user_a_id": u[i % 40], "user_b_id": u[(i + 1) % 40]}),
        )
        .await;
        i += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_features_another_replica_wrote_to_redis() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let p = prefix();
    let a = spawn_with(with_redis(redis.url(), &p)).await;
    let u = a.users(2);
    let body = json!({"user_a_id": u[0], "user_b_id": u[1]});
    let r = a.post("/match/score", body.clone()).await;
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    let health: Value = a.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis_connected"], true);
    assert_eq!(health["status"], "healthy");
    // Both users' features are in Redis, under the documented layout, with a TTL.
    let mut keys = vec![];
    for _ in 0..250 {
        keys = redis.keys(&p);
        // The answer is written to Redis off the request path, like the
        // features: wait for all three (a loaded machine can take a while).
        if keys.iter().filter(|k| k.contains(":f")).count() == 2
            && keys.iter().any(|k| k.contains(":p:match:"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let layout = format!(":f{}:", ml_core::features::FEATURE_SCHEMA_VERSION);
    let fkeys: Vec<&String> = keys.iter().filter(|k| k.contains(&layout)).collect();
    assert_eq!(fkeys.len(), 2, "{keys:?}");
    for k in &fkeys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(k.as_str())
            .query(&mut redis.conn())
            .unwrap();
        assert!(ttl > 3000 && ttl <= 3600, "{k}: ttl {ttl}");
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(k.as_str())
            .query(&mut redis.conn())
            .unwrap();
        let f = ml_cache::codec::decode(&bytes).expect("decodes");
        assert!(k.ends_with(&format!("{{{}}}", f.user_id)));
    }
    // The response itself is cached too, under the model version.
    assert!(
        keys.iter().any(|k| k.contains(":p:match:travel_match:1:")),
        "{keys:?}"
    );
    // A replica whose own data lacks user A answers from Redis alone.
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_redis(redis.url(), &p);
    s.data.sqlite_path = store_without(&u[0], dir.path());
    s.cache.prediction_cache = false;
    let b = spawn_with(s.clone()).await;
    let r = b.post("/match/score", body.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let second: Value = b.post("/match/score", body).await.json().await.unwrap();
    assert_eq!(first["score"], second["score"]);
    // The same replica without Redis does not know the user: proof of the above.
    s.cache.redis_url = None;
    let c = spawn_with(s).await;
    let r = c
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_predictions_are_reused_but_never_across_model_versions() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let p = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_redis(redis.url(), &p);
    copy_dir(&fixture().settings.models.model_path, dir.path());
    s.models.model_path = dir.path().to_path_buf();
    let v1 = spawn_with(s.clone()).await;
    let u = v1.users(3);
    let body = json!({"user_id": u[2], "limit": 5});
    let a: Value = v1
        .post("/recommend/destinations", body.clone())
        .await
        .json()
        .await
        .unwrap();
    // The same request in another spelling is the same cached answer.
    let spelled = format!(
        "{{ \"limit\" : 5,\n \"user_id\": \"{}\" }}",
        u[2].to_uppercase()
    );
    let mut key = String::new();
    for _ in 0..100 {
        if let Some(k) = redis
            .keys(&p)
            .into_iter()
            .find(|k| k.contains(":p:recommend:"))
        {
            key = k;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(key.contains(":recommendation:1:"), "{key}");
    // Overwrite the stored answer: if the service reads it, we will see it.
    let mut planted = a.clone();
    planted["recommendations"][0]["reason"] = json!("planted in the cache");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(planted.to_string())
        .arg("EX")
        .arg(600)
        .query(&mut redis.conn())
        .unwrap();
    let r = v1
        .post_raw(
            "/recommend/destinations",
            "application/json",
            spelled.into_bytes(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b, planted, "a repeat was not answered from the cache");
    // A new model version reads other keys: its answer is computed, not planted.
    run_cli(&["models", "quantize", "recommendation"], &s).await;
    let v2 = spawn_with(s).await;
    let r = v2.post("/recommend/destinations", body).await;
    assert_eq!(r.headers()["x-model-version"], "recommendation/2");
    let c: Value = r.json().await.unwrap();
    assert_ne!(c["recommendations"][0]["reason"], "planted in the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_answers_are_cached_only_while_they_hold() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let p = prefix();
    let app = spawn_with(with_redis(redis.url(), &p)).await;
    let u = app.users(1);
    let r = app
        .post(
            "/notifications/optimize",
            json!({"user_id": u[0], "notification_type": "message", "urgency": "high"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let send_at = DateTime::parse_from_rfc3339(v["send_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let now = Utc::now();
    let until_quarter = 900 - now.timestamp().rem_euclid(900);
    let bound = until_quarter.min((send_at - now).num_seconds().max(0)) + 2;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for k in redis.keys(&p).iter().filter(|k| k.contains(":p:notify:")) {
        let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut redis.conn()).unwrap();
        assert!(
            ttl <= bound,
            "{k} lives {ttl} s, the answer holds {bound} s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_refresh_fills_redis_for_every_user() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let p = prefix();
    let s = with_redis(redis.url(), &p);
    let app = spawn_app().await;
    let users = app.users(10_000);
    run_cli(
        &[
            "features",
            "refresh",
            "--batch",
            "97",
            "--cache-prefix",
            &p,
            "--redis-url",
            &redis.url(),
        ],
        &s,
    )
    .await;
    let keys = redis.keys(&p);
    assert_eq!(keys.len(), users.len(), "one key per user");
    // What refresh wrote is what serving computes.
    let store = SqliteStore::open(&s.data.sqlite_path, 1).unwrap();
    let data = store.load_dataset().unwrap();
    let td = TrainingData::new(&data);
    let some = &users[users.len() / 2];
    let k = keys.iter().find(|k| k.contains(some.as_str())).unwrap();
    let bytes: Vec<u8> = redis::cmd("GET").arg(k).query(&mut redis.conn()).unwrap();
    let f = ml_cache::codec::decode(&bytes).unwrap();
    let id: uuid::Uuid = some.parse().unwrap();
    let fresh = td.user_features(Utc::now()).remove(&id).unwrap();
    assert_eq!(
        (f.engaged, f.interests, f.age),
        (fresh.engaged, fresh.interests, fresh.age)
    );
    // A replica that lacks the user serves it from what refresh wrote.
    let dir = tempfile::tempdir().unwrap();
    let mut r = s.clone();
    r.data.sqlite_path = store_without(some, dir.path());
    let replica = spawn_with(r).await;
    let resp = replica
        .post(
            "/notifications/optimize",
            json!({"user_id": some, "notification_type": "match_found"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Unknown ids are refused, and nothing runs without Redis.
    let err = try_cli(
        &[
            "features",
            "refresh",
            "--users",
            &uuid::Uuid::new_v4().to_string(),
            "--cache-prefix",
            &p,
            "--redis-url",
            &redis.url(),
        ],
        &s,
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("unknown users"), "{err:#}");
    let mut no_redis = s.clone();
    no_redis.cache.redis_url = None;
    let err = try_cli(&["features", "refresh"], &no_redis)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("REDIS_URL"), "{err:#}");
}

/// Requests over many users until `stop`, counting statuses.
async fn drive(
    app: Arc<TestApp>,
    users: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u16> {
    let mut statuses = vec![];
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let a = &users[i % users.len()];
        let b = &users[(i * 7 + 1) % users.len()];
        i += 1;
        if a == b {
            continue;
        }
        let r = match i % 3 {
            0 => {
                app.post("/match/score", json!({"user_a_id": a, "user_b_id": b}))
                    .await
            }
            1 => {
                app.post("/recommend/destinations", json!({"user_id": a}))
                    .await
            }
            _ => {
                app.post(
                    "/notifications/optimize",
                    json!({"user_id": a, "notification_type": "reminder"}),
                )
                .await
            }
        };
        statuses.push(r.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_under_load_costs_no_request() {
    if !have_redis() {
        return;
    }
    let mut redis = RedisServer::start();
    let p = prefix();
    let mut s = with_redis(redis.url(), &p);
    // Short near-cache so requests keep going to Redis.
    s.cache.near_cache_ttl = 0;
    let app = Arc::new(spawn_with(s).await);
    let users = app.users(400);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|k| {
            let mut us = users.clone();
            us.rotate_left(k * 50);
            tokio::spawn(drive(app.clone(), us, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis_connected"], false, "{health}");
    assert_eq!(health["status"], "degraded");
    redis.restart();
    // It reconnects by itself.
    wait_until_connected(&app).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = vec![];
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    assert!(statuses.len() > 100, "only {} requests", statuses.len());
    let bad: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {bad:?}",
        bad.len(),
        statuses.len()
    );
    // The failures were counted, and the restarted Redis is written again.
    assert!(counter(&app.scrape().await, "ml_redis_failures_total", &[]) > 0.0);
    wait_for_keys(&redis, &app, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_up() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let p = prefix();
    let app = spawn_with(with_redis(format!("redis://127.0.0.1:{port}"), &p)).await;
    let u = app.users(2);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[0], "user_b_id": u[1]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis_connected"], false);
    let redis = RedisServer::start_on(port, &[]);
    wait_until_connected(&app).await;
    let u = app.users(4);
    let r = app
        .post(
            "/match/score",
            json!({"user_a_id": u[2], "user_b_id": u[3]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    wait_for_keys(&redis, &app, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_does_not_stall_requests() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start_on(free_port(), &["--enable-debug-command", "yes"]);
    let p = prefix();
    let app = spawn_with(with_redis(redis.url(), &p)).await;
    let u = app.users(40);
    // Redis freezes for 3 s (it runs nothing while DEBUG SLEEP lasts).
    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(3)
            .query(&mut c)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    for i in 0..20 {
        let r = app
            .post(
                "/match/score",
                json!({"user_a_id": u[2 * i], "user_b_id": u[2 * i + 1]}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // Twenty requests while Redis is frozen finish long before it wakes: each
    // Redis call gives up after REDIS_TIMEOUT_MS, and after one failure Redis
    // is skipped until the next probe.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    sleeper.join().unwrap();
}

/// Three Redis nodes made into a cluster with `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_on(
                    free_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let t0 = Instant::now();
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut nodes[0].conn())
                .unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{info}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(prefix)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_each_users_keys_in_one_slot() {
    if !have_redis() {
        return;
    }
    let cluster = Cluster::start();
    let p = prefix();
    let mut s = with_redis(cluster.url(), &p);
    s.cache.redis_cluster = true;
    let app = spawn_with(s.clone()).await;
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["redis_connected"], true, "{health}");
    let u = app.users(12);
    for i in 0..6 {
        let r = app
            .post(
                "/match/score",
                json!({"user_a_id": u[2 * i], "user_b_id": u[2 * i + 1]}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let r = app
            .post("/recommend/destinations", json!({"user_id": u[2 * i]}))
            .await;
        assert_eq!(r.status(), 200);
    }
    let mut keys = vec![];
    for _ in 0..100 {
        keys = cluster.keys(&p);
        if keys.len() >= 12 + 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keys spread over the nodes, and every key of a user shares its slot.
    let per_node: Vec<usize> = cluster.nodes.iter().map(|n| n.keys(&p).len()).collect();
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "{per_node:?}"
    );
    let mut c = cluster.nodes[0].conn();
    for user in &u[..12] {
        let mine: Vec<&String> = keys
            .iter()
            .filter(|k| k.contains(&format!("{{{user}}}")))
            .collect();
        assert!(!mine.is_empty(), "no key for {user}");
        let slots: std::collections::BTreeSet<i64> = mine
            .iter()
            .map(|k| {
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(k.as_str())
                    .query(&mut c)
                    .unwrap()
            })
            .collect();
        assert_eq!(slots.len(), 1, "{user}: {mine:?} in slots {slots:?}");
    }
    // A replica without user 0 in its data reads the features through the cluster.
    let dir = tempfile::tempdir().unwrap();
    s.data.sqlite_path = store_without(&u[0], dir.path());
    s.cache.prediction_cache = false;
    let replica = spawn_with(s).await;
    let r = replica
        .post("/recommend/destinations", json!({"user_id": u[0]}))
        .await;
    assert_eq!(r.status(), 200);
}
