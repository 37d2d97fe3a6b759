//! The model repository: `{root}/{model}/{version}/model.onnx` + `model.json`,
//! plus `{root}/{model}/serving.json` (which versions serve), in a local folder
//! or an S3-compatible bucket, both through `object_store`.
//!
//! Versions are positive integers. A version exists once its `model.json` does:
//! the writer claims a version number by creating its `model.onnx` only if
//! absent (so two writers never share a number, e.g. replicas training at the
//! same first start), then writes `model.json` last, so a reader never sees
//! half a model.

use crate::{BackendError, ModelMeta};
use ml_core::model::ModelKind;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How many taken version numbers a writer skips before giving up.
const MAX_VERSION_CLAIMS: u64 = 64;

/// Where an S3 repository is, and how long its calls may take.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// An S3-compatible endpoint (MinIO, moto, R2…); None for AWS itself.
    pub endpoint: Option<String>,
    /// A key prefix inside the bucket ("" for the bucket's root).
    pub prefix: String,
    /// Each HTTP call's deadline (retries included, see `retry_timeout`).
    pub timeout: Duration,
}

/// One version's share of a model's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub version: u64,
    /// Relative weight; a user goes to a version with probability weight / sum.
    pub weight: u32,
}

/// `serving.json`: which versions of a model answer, by weight, and which one
/// (if any) runs in the shadow of live traffic. Without the file, the newest
/// loadable version serves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingPolicy {
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<u64>,
    /// Earlier `routes`, oldest first, for `models rollback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Vec<Route>>,
    /// When `routes` were set: the start of the experiment they make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Let the service end the split's experiment by itself (`models split
    /// --auto`): promote the winner, roll back a loser or a guardrail trip.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    /// What the service decided by itself, with the evidence, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<AutoDecision>,
}

/// An experiment ended by the service (`models split --auto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoDecision {
    pub at: chrono::DateTime<chrono::Utc>,
    /// The split that ran (`3=90,4=10`).
    pub split: String,
    /// `promoted` (a challenger won) or `rolled_back` (it lost or tripped a
    /// guardrail; the control serves alone).
    pub action: String,
    /// The version that serves alone afterwards.
    pub serving: u64,
    /// Why, in words.
    pub reason: String,
    /// The experiment report the decision was taken on.
    pub evidence: serde_json::Value,
}

// The evidence's numbers are never NaN (JSON has none), so equality is total.
impl Eq for AutoDecision {}

/// A split as the prediction log records each answer's route: `version=weight`
/// pairs (`3=90,4=10`), or a lone version alone (`3`).
pub fn split_label(routes: &[(u64, u32)]) -> String {
    if routes.len() == 1 {
        return routes[0].0.to_string();
    }
    routes
        .iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How many earlier routes (and automatic decisions) `serving.json` remembers.
pub const HISTORY: usize = 20;

impl ServingPolicy {
    /// Serve `routes` from now on: the routes serving until now go into
    /// `history` (the last [`HISTORY`]), and a change of routes starts a new
    /// experiment (`since` now; nothing decides it by itself until asked
    /// again with `auto`).
    pub fn serve_routes(&mut self, routes: Vec<Route>, now: chrono::DateTime<chrono::Utc>) {
        self.auto = false;
        if self.routes == routes {
            return;
        }
        self.since = Some(now);
        let before = std::mem::replace(&mut self.routes, routes);
        if !before.is_empty() {
            self.history.push(before);
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
    }

    /// The routes as the prediction log labels them ([`split_label`]).
    pub fn label(&self) -> String {
        split_label(
            &self
                .routes
                .iter()
                .map(|r| (r.version, r.weight))
                .collect::<Vec<_>>(),
        )
    }

    /// Every version this policy needs in memory (routes, then the shadow).
    pub fn versions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.routes.iter().map(|r| r.version).collect();
        v.extend(self.shadow);
        v.dedup();
        v
    }

    /// Refuse a policy that cannot route: no versions, a zero total weight,
    /// or one version listed twice.
    pub fn validate(&self, model: ModelKind) -> Result<(), BackendError> {
        let bad = |reason: String| BackendError::InvalidMeta {
            path: format!("{model}/serving.json"),
            reason,
        };
        if self.routes.is_empty() || self.routes.iter().all(|r| r.weight == 0) {
            return Err(bad("no version has a positive weight".into()));
        }
        let distinct: BTreeSet<u64> = self.routes.iter().map(|r| r.version).collect();
        if distinct.len() != self.routes.len() {
            return Err(bad("a version is listed twice".into()));
        }
        if distinct.contains(&0) {
            return Err(bad("versions start at 1".into()));
        }
        if self.shadow.is_some_and(|s| distinct.contains(&s)) {
            return Err(bad(
                "the shadow version also serves: a version cannot shadow itself".into(),
            ));
        }
        Ok(())
    }
}

/// The model repository over any `ObjectStore` (local folder or S3).
#[derive(Clone)]
pub struct ModelRepository {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    describe: String,
}

impl std::fmt::Debug for ModelRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

fn storage(what: impl std::fmt::Display, e: object_store::Error) -> BackendError {
    BackendError::Storage(format!("{what}: {e}"))
}

impl ModelRepository {
    /// A repository in a local folder, created if absent.
    pub fn local(root: impl AsRef<std::path::Path>) -> Result<Self, BackendError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|source| BackendError::Io {
            path: root.display().to_string(),
            source,
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(root)
            .map_err(|e| storage(root.display(), e))?;
        Ok(Self {
            store: Arc::new(store),
            root: ObjectPath::default(),
            describe: format!("local folder {}", root.display()),
        })
    }

    /// A repository in an S3 bucket; credentials come from the usual AWS
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// or the instance's role).
    pub fn s3(c: &S3Config) -> Result<Self, BackendError> {
        use object_store::aws::AmazonS3Builder;
        use object_store::{BackoffConfig, ClientOptions, RetryConfig};
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(c.timeout)
                    .with_connect_timeout(c.timeout.min(Duration::from_secs(2))),
            )
            // A few quick retries: the poller tries again in seconds anyway,
            // and a request must never wait minutes on S3.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: c.timeout * 2,
            });
        if let Some(e) = &c.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| storage("S3 settings", e))?;
        let where_ = match &c.endpoint {
            Some(e) => format!("s3://{}/{} at {e}", c.bucket, c.prefix),
            None => format!("s3://{}/{}", c.bucket, c.prefix),
        };
        Ok(Self {
            store: Arc::new(store),
            root: ObjectPath::from(c.prefix.trim_matches('/')),
            describe: where_,
        })
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        parts
            .iter()
            .fold(self.root.clone(), |p, part| p.child(*part))
    }

    /// Where this repository is, for logs.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Committed versions of a model (those with a `model.json`), ascending.
    pub async fn versions(&self, model: ModelKind) -> Result<Vec<u64>, BackendError> {
        use futures::TryStreamExt as _;
        let prefix = self.path(&[model.as_str()]);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| storage(format!("listing {prefix}"), e))?;
        let mut v: Vec<u64> = objects
            .iter()
            .filter_map(|o| {
                let mut parts = o.location.prefix_match(&prefix)?;
                let version = parts.next()?.as_ref().parse().ok()?;
                let file = parts.next()?;
                (file.as_ref() == "model.json" && parts.next().is_none()).then_some(version)
            })
            .filter(|v| *v > 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// The newest committed version, if any.
    pub async fn latest(&self, model: ModelKind) -> Result<Option<u64>, BackendError> {
        Ok(self.versions(model).await?.last().copied())
    }

    async fn get(&self, path: &ObjectPath) -> Result<bytes::Bytes, BackendError> {
        let r = self.store.get(path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound(path.to_string()),
            e => storage(path, e),
        })?;
        r.bytes().await.map_err(|e| storage(path, e))
    }

    /// The ONNX bytes and metadata of one version.
    pub async fn read(
        &self,
        model: ModelKind,
        version: u64,
    ) -> Result<(Vec<u8>, ModelMeta), BackendError> {
        let v = version.to_string();
        let meta_path = self.path(&[model.as_str(), &v, "model.json"]);
        let text = self.get(&meta_path).await?;
        let meta: ModelMeta =
            serde_json::from_slice(&text).map_err(|e| BackendError::InvalidMeta {
                path: meta_path.to_string(),
                reason: e.to_string(),
            })?;
        if meta.model != model || meta.version != version {
            return Err(BackendError::InvalidMeta {
                path: meta_path.to_string(),
                reason: format!(
                    "says {} version {}, stored as {model} version {version}",
                    meta.model, meta.version
                ),
            });
        }
        let onnx = self
            .get(&self.path(&[model.as_str(), &v, "model.onnx"]))
            .await?;
        Ok((onnx.to_vec(), meta))
    }

    /// Store a new version (the next free number); returns its metadata.
    pub async fn write(&self, onnx: &[u8], mut meta: ModelMeta) -> Result<ModelMeta, BackendError> {
        let model = meta.model;
        let mut version = self.latest(model).await?.unwrap_or(0) + 1;
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(onnx));
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        for _ in 0..MAX_VERSION_CLAIMS {
            let onnx_path = self.path(&[model.as_str(), &version.to_string(), "model.onnx"]);
            match self
                .store
                .put_opts(&onnx_path, payload.clone(), create.clone())
                .await
            {
                Ok(_) => {
                    meta.version = version;
                    let json = serde_json::to_vec_pretty(&meta).map_err(|e| {
                        BackendError::InvalidMeta {
                            path: onnx_path.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                    let meta_path =
                        self.path(&[model.as_str(), &version.to_string(), "model.json"]);
                    self.store
                        .put_opts(&meta_path, json.into(), create.clone())
                        .await
                        .map_err(|e| storage(&meta_path, e))?;
                    return Ok(meta);
                }
                // Another writer holds this number (committed or not yet):
                // take the next one.
                Err(object_store::Error::AlreadyExists { .. }) => version += 1,
                Err(e) => return Err(storage(&onnx_path, e)),
            }
        }
        Err(BackendError::Storage(format!(
            "{model}: no free version number after {MAX_VERSION_CLAIMS} tries"
        )))
    }

    /// `serving.json` of a model, if one was written.
    pub async fn serving(&self, model: ModelKind) -> Result<Option<ServingPolicy>, BackendError> {
        let path = self.path(&[model.as_str(), "serving.json"]);
        let bytes = match self.get(&path).await {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let p: ServingPolicy =
            serde_json::from_slice(&bytes).map_err(|e| BackendError::InvalidMeta {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        p.validate(model)?;
        Ok(Some(p))
    }

    /// Replace `serving.json` (one object put: readers see the old or the new).
    pub async fn set_serving(
        &self,
        model: ModelKind,
        policy: &ServingPolicy,
    ) -> Result<(), BackendError> {
        policy.validate(model)?;
        let path = self.path(&[model.as_str(), "serving.json"]);
        let json = serde_json::to_vec_pretty(policy).map_err(|e| BackendError::InvalidMeta {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        self.store
            .put(&path, json.into())
            .await
            .map_err(|e| storage(&path, e))?;
        Ok(())
    }

    /// What should serve: `serving.json`, else the newest version alone
    /// (None when the model has no version at all).
    pub async fn desired(&self, model: ModelKind) -> Result<Option<Desired>, BackendError> {
        if let Some(p) = self.serving(model).await? {
            return Ok(Some(Desired::Pinned(p)));
        }
        let versions = self.versions(model).await?;
        Ok((!versions.is_empty()).then_some(Desired::Latest(versions)))
    }
}

/// What the repository says should serve a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// `serving.json`: exactly these versions.
    Pinned(ServingPolicy),
    /// No `serving.json`: the newest of these versions (ascending) that loads.
    Latest(Vec<u64>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::META_FORMAT;
    use ml_core::model::ModelParams;

    fn meta(model: ModelKind) -> ModelMeta {
        ModelMeta {
            format: META_FORMAT,
            model,
            version: 0,
            created_at: chrono::Utc::now(),
            producer: "test".into(),
            signature: ModelMeta::signature_for(model, &["x".into()]),
            features: vec!["x".into()],
            evaluation: None,
            training_window: None,
            params: ModelParams::default(),
            quantization: None,
        }
    }

    #[tokio::test]
    async fn versions_are_numbered_and_only_committed_ones_count() {
        let dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::local(dir.path()).unwrap();
        let m = ModelKind::TravelMatch;
        assert_eq!(repo.versions(m).await.unwrap(), Vec::<u64>::new());
        assert_eq!(repo.desired(m).await.unwrap(), None);
        assert_eq!(repo.write(b"one", meta(m)).await.unwrap().version, 1);
        // A writer that died after claiming version 2 (its model.onnx, no
        // model.json): readers do not see it, and the next writer skips it.
        std::fs::create_dir_all(dir.path().join("travel_match/2")).unwrap();
        std::fs::write(dir.path().join("travel_match/2/model.onnx"), b"half").unwrap();
        // Stray entries are not versions either.
        std::fs::create_dir_all(dir.path().join("travel_match/notes")).unwrap();
        std::fs::write(dir.path().join("travel_match/notes/model.json"), b"{}").unwrap();
        assert_eq!(repo.versions(m).await.unwrap(), vec![1]);
        assert_eq!(repo.write(b"three", meta(m)).await.unwrap().version, 3);
        assert_eq!(repo.versions(m).await.unwrap(), vec![1, 3]);
        let (bytes, read) = repo.read(m, 3).await.unwrap();
        assert_eq!((bytes.as_slice(), read.version), (&b"three"[..], 3));
        assert!(matches!(
            repo.read(m, 2).await,
            Err(BackendError::NotFound(_))
        ));
        // Other models are separate.
        assert_eq!(
            repo.versions(ModelKind::Recommendation).await.unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(
            repo.desired(m).await.unwrap(),
            Some(Desired::Latest(vec![1, 3]))
        );
    }

    #[tokio::test]
    async fn concurrent_writers_never_share_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::local(dir.path()).unwrap();
        let m = ModelKind::NotificationTiming;
        let writes = (0..6).map(|i| {
            let repo = repo.clone();
            async move { repo.write(format!("w{i}").as_bytes(), meta(m)).await }
        });
        let mut versions: Vec<u64> = futures::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap().version)
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
        // Each version holds the bytes of the writer that was told its number.
        for v in 1..=6 {
            let (bytes, meta) = repo.read(m, v).await.unwrap();
            assert_eq!(meta.version, v);
            assert!(bytes.starts_with(b"w"));
        }
    }

    #[tokio::test]
    async fn a_serving_policy_round_trips_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::local(dir.path()).unwrap();
        let m = ModelKind::Recommendation;
        assert_eq!(repo.serving(m).await.unwrap(), None);
        let p = ServingPolicy {
            routes: vec![
                Route {
                    version: 3,
                    weight: 90,
                },
                Route {
                    version: 4,
                    weight: 10,
                },
            ],
            shadow: Some(5),
            history: vec![vec![Route {
                version: 2,
                weight: 1,
            }]],
            ..Default::default()
        };
        repo.set_serving(m, &p).await.unwrap();
        assert_eq!(repo.serving(m).await.unwrap(), Some(p.clone()));
        assert_eq!(p.versions(), vec![3, 4, 5]);
        assert_eq!(repo.desired(m).await.unwrap(), Some(Desired::Pinned(p)));
        for bad in [
            ServingPolicy::default(),
            ServingPolicy {
                routes: vec![Route {
                    version: 3,
                    weight: 0,
                }],
                ..Default::default()
            },
            ServingPolicy {
                routes: vec![
                    Route {
                        version: 3,
                        weight: 1,
                    },
                    Route {
                        version: 3,
                        weight: 1,
                    },
                ],
                ..Default::default()
            },
            ServingPolicy {
                routes: vec![Route {
                    version: 3,
                    weight: 1,
                }],
                shadow: Some(3),
                ..Default::default()
            },
        ] {
            assert!(repo.set_serving(m, &bad).await.is_err(), "{bad:?}");
        }
        // A hand-edited file that does not parse is an error, not "latest".
        std::fs::write(dir.path().join("recommendation/serving.json"), b"{oops").unwrap();
        assert!(repo.serving(m).await.is_err());
    }
}
