//! The service's caches. User features: an in-process near-cache, then the
//! shared store (Redis) in one round trip for all the users of a request, then
//! the data source, with what was computed written back. Predictions: the
//! response of an endpoint for a model version and a normalized request, in the
//! shared store (or in process without Redis). Every cache failure is a miss;
//! none fails a request.

use crate::settings::Settings;
use ml_cache::{keys, Entry, KvStore, MemoryStore, RedisConfig, RedisStore};
use ml_core::features::UserFeatures;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Features and predictions caches.
pub struct Caches {
    /// Where features (with Redis) and predictions live.
    pub store: Arc<dyn KvStore>,
    near: moka::sync::Cache<Uuid, Arc<UserFeatures>>,
    ttl: Duration,
    prefix: String,
    catalogue: String,
    predictions: bool,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("store", &self.store.describe())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn hit(cache: &'static str, layer: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("ml_cache_hits_total", "cache" => cache, "layer" => layer)
            .increment(n as u64);
    }
}

fn miss(cache: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("ml_cache_misses_total", "cache" => cache).increment(n as u64);
    }
}

/// A short, stable fingerprint of the destination catalogue's ids in order.
pub fn catalogue_fingerprint(ids: impl IntoIterator<Item = String>) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())[..8].to_string()
}

impl Caches {
    /// The caches the settings ask for: Redis when `REDIS_URL` is set (the
    /// service starts even when Redis is down), otherwise in process.
    pub async fn new(settings: &Settings, catalogue: String) -> anyhow::Result<Self> {
        let ttl = Duration::from_secs(settings.cache_ttl);
        let (store, near_ttl): (Arc<dyn KvStore>, Duration) = match &settings.redis_url {
            Some(url) => {
                let redis = RedisStore::connect(RedisConfig {
                    url: url.clone(),
                    cluster: settings.redis_cluster,
                    timeout: Duration::from_millis(settings.redis_timeout_ms),
                    retry_after: Duration::from_secs(1),
                })
                .await?;
                // With a shared store the near-cache only absorbs bursts, so
                // a refresh reaches every replica within NEAR_CACHE_TTL.
                let near = Duration::from_secs(settings.near_cache_ttl).min(ttl);
                (Arc::new(redis), near)
            }
            None => (
                Arc::new(MemoryStore::new(settings.cache_memory_mb << 20)),
                ttl,
            ),
        };
        let near = moka::sync::Cache::builder()
            .max_capacity(settings.near_cache_users)
            .time_to_live(near_ttl.max(Duration::from_millis(1)))
            .build();
        Ok(Self {
            store,
            near,
            ttl,
            prefix: settings.cache_prefix.clone(),
            catalogue,
            predictions: settings.prediction_cache,
        })
    }

    /// Whether a Redis is configured and reachable.
    pub fn redis_connected(&self) -> bool {
        self.store.shared() && self.store.connected()
    }

    pub fn feature_key(&self, user: Uuid) -> String {
        keys::features(&self.prefix, &self.catalogue, user)
    }

    /// Features of `ids` from the near-cache and then the shared store (one
    /// round trip); `None` where neither has them.
    pub async fn features(&self, ids: &[Uuid]) -> Vec<Option<Arc<UserFeatures>>> {
        let mut out: Vec<Option<Arc<UserFeatures>>> =
            ids.iter().map(|id| self.near.get(id)).collect();
        hit(
            "features",
            "near",
            out.iter().filter(|f| f.is_some()).count(),
        );
        if out.iter().all(Option::is_some) {
            return out;
        }
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if self.store.shared() {
            let keys: Vec<String> = missing.iter().map(|&i| self.feature_key(ids[i])).collect();
            if let Ok(values) = self.store.get_many(&keys).await {
                let mut n = 0;
                for (&i, v) in missing.iter().zip(values) {
                    if let Some(f) = v.as_deref().and_then(ml_cache::codec::decode) {
                        let f = Arc::new(f);
                        self.near.insert(ids[i], Arc::clone(&f));
                        out[i] = Some(f);
                        n += 1;
                    }
                }
                hit("features", "redis", n);
            }
        }
        miss("features", out.iter().filter(|f| f.is_none()).count());
        out
    }

    /// Remember features computed from the data source: in the near-cache now,
    /// in the shared store in the background (the request does not wait).
    pub fn put_features(&self, computed: &[Arc<UserFeatures>]) {
        for f in computed {
            self.near.insert(f.user_id, Arc::clone(f));
        }
        if self.store.shared() && !computed.is_empty() {
            let entries = self.feature_entries(computed.iter().map(|f| &**f));
            let store = Arc::clone(&self.store);
            tokio::spawn(async move {
                let _ = store.set_many(entries).await;
            });
        }
    }

    /// Write features of many users to the shared store (`features refresh`).
    pub async fn store_features(&self, batch: &[UserFeatures]) -> Result<(), ml_cache::CacheError> {
        self.store
            .set_many(self.feature_entries(batch.iter()))
            .await
    }

    fn feature_entries<'a>(&self, fs: impl Iterator<Item = &'a UserFeatures>) -> Vec<Entry> {
        fs.map(|f| Entry {
            key: self.feature_key(f.user_id),
            value: ml_cache::codec::encode(f),
            ttl: self.ttl,
        })
        .collect()
    }

    /// The cache key of a response: the endpoint, the model version and a
    /// digest of the request as the service parsed it (so field order,
    /// whitespace and defaults do not matter).
    pub fn prediction_key(
        &self,
        endpoint: &str,
        model: &str,
        version: u64,
        user: Uuid,
        request: &impl Serialize,
    ) -> Option<String> {
        if !self.predictions {
            return None;
        }
        let body = serde_json::to_vec(request).ok()?;
        let digest = format!("{:x}", Sha256::digest(&body));
        Some(keys::prediction(
            &self.prefix,
            endpoint,
            model,
            version,
            user,
            &digest[..32],
        ))
    }

    /// A cached response, if any.
    pub async fn prediction<T: DeserializeOwned>(&self, key: &Option<String>) -> Option<T> {
        let key = key.as_ref()?;
        let v = self
            .store
            .get_many(std::slice::from_ref(key))
            .await
            .ok()
            .and_then(|mut v| v.pop().flatten())
            .and_then(|b| serde_json::from_slice(&b).ok());
        match v {
            Some(_) => hit(
                "predictions",
                if self.store.shared() {
                    "redis"
                } else {
                    "memory"
                },
                1,
            ),
            None => miss("predictions", 1),
        }
        v
    }

    /// Remember a response for `ttl` (capped at `CACHE_TTL`), in the background.
    pub fn put_prediction(&self, key: Option<String>, body: &impl Serialize, ttl: Duration) {
        let Some(key) = key else { return };
        let ttl = ttl.min(self.ttl);
        if ttl < Duration::from_secs(1) {
            return;
        }
        let Ok(value) = serde_json::to_vec(body) else {
            return;
        };
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let _ = store.set_many(vec![Entry { key, value, ttl }]).await;
        });
    }

    /// The full time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
