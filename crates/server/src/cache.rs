//! The service's caches. User features: an in-process near-cache, then the
//! shared store (Redis) in one round trip for all the users of a request, then
//! the data source, with what was computed written back. Predictions: the
//! response of an endpoint for a model version and a normalized request, in the
//! shared store (or in process without Redis). Every cache failure is a miss;
//! none fails a request.

use crate::settings::CacheSettings;
use ml_cache::{keys, Entry, KvStore, MemoryStore, RedisConfig, RedisStore};
use ml_core::features::UserFeatures;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Features and predictions caches.
pub struct Caches {
    /// Where features (with Redis) and predictions live.
    pub store: Arc<dyn KvStore>,
    near: NearCache,
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

/// The cache metrics' counters, looked up in the recorder once: the
/// `counter!` macro builds and hashes the key on every call (1.3 % of a
/// match request's samples, issue 16, session 11).
struct Counters {
    features_near: metrics::Counter,
    features_redis: metrics::Counter,
    features_miss: metrics::Counter,
    predictions_memory: metrics::Counter,
    predictions_redis: metrics::Counter,
    predictions_miss: metrics::Counter,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        crate::telemetry::handle();
        let hits = |cache: &'static str, layer: &'static str| {
            metrics::counter!("ml_cache_hits_total", "cache" => cache, "layer" => layer)
        };
        let misses =
            |cache: &'static str| metrics::counter!("ml_cache_misses_total", "cache" => cache);
        Counters {
            features_near: hits("features", "near"),
            features_redis: hits("features", "redis"),
            features_miss: misses("features"),
            predictions_memory: hits("predictions", "memory"),
            predictions_redis: hits("predictions", "redis"),
            predictions_miss: misses("predictions"),
        }
    })
}

fn count(counter: &metrics::Counter, n: usize) {
    if n > 0 {
        counter.increment(n as u64);
    }
}

/// The near-cache of user features: in process, bounded in users, each
/// entry kept for a time to live from when it was stored. quick_cache
/// (S3-FIFO) rather than moka: a hit is a hash lookup and an atomic bit,
/// where moka's read path queues every read for its policy and runs that
/// policy's housekeeping inline — 8.5 % of a match request's samples for
/// two lookups (issue 16, session 11 profile). An expired entry reads as
/// absent and is replaced when the features are stored again.
struct NearCache {
    entries: quick_cache::sync::Cache<Uuid, (Arc<UserFeatures>, Instant)>,
    ttl: Duration,
}

impl NearCache {
    /// A cache of about `users` users (none when zero), each for `ttl`.
    fn new(users: u64, ttl: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(usize::try_from(users).unwrap_or(usize::MAX)),
            ttl,
        }
    }

    fn get(&self, id: &Uuid) -> Option<Arc<UserFeatures>> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &Uuid, now: Instant) -> Option<Arc<UserFeatures>> {
        let (f, stored) = self.entries.get(id)?;
        (now.saturating_duration_since(stored) < self.ttl).then_some(f)
    }

    fn insert(&self, id: Uuid, f: Arc<UserFeatures>) {
        self.insert_at(id, f, Instant::now());
    }

    fn insert_at(&self, id: Uuid, f: Arc<UserFeatures>, now: Instant) {
        self.entries.insert(id, (f, now));
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
    pub async fn new(settings: &CacheSettings, catalogue: String) -> anyhow::Result<Self> {
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
        let near = NearCache::new(
            settings.near_cache_users,
            near_ttl.max(Duration::from_millis(1)),
        );
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
        count(
            &counters().features_near,
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
                count(&counters().features_redis, n);
            }
        }
        count(
            &counters().features_miss,
            out.iter().filter(|f| f.is_none()).count(),
        );
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

    /// The cache key of a response: the endpoint, the model version and the
    /// request's [`request_digest`].
    pub fn prediction_key(
        &self,
        endpoint: &str,
        model: &str,
        version: u64,
        user: Uuid,
        digest: &str,
    ) -> Option<String> {
        if !self.predictions {
            return None;
        }
        Some(keys::prediction(
            &self.prefix,
            endpoint,
            model,
            version,
            user,
            digest,
        ))
    }

    /// Whether answers are cached (PREDICTION_CACHE).
    pub fn predictions_on(&self) -> bool {
        self.predictions
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
            Some(_) if self.store.shared() => counters().predictions_redis.increment(1),
            Some(_) => counters().predictions_memory.increment(1),
            None => counters().predictions_miss.increment(1),
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

/// A digest of a request as the service parsed it (so field order,
/// whitespace and defaults do not matter): 32 hex digits of a SHA-256. It
/// keys the prediction cache and stands for the request in the prediction
/// log, which never stores the body. The request is hashed in postcard's
/// compact binary form, fed straight into the hash: it costs a fraction of
/// writing it as JSON (numbers as text, strings escaped) on every request.
/// A shape postcard cannot write (none of the API's requests) is hashed as
/// JSON, never left out.
pub fn request_digest(request: &(impl Serialize + ?Sized)) -> String {
    let hash = postcard::serialize_with_flavor(request, Hashing(Sha256::new()))
        .unwrap_or_else(|_| Sha256::digest(serde_json::to_vec(request).unwrap_or_default()).into());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digest = String::with_capacity(32);
    for b in &hash[..16] {
        digest.push(HEX[usize::from(b >> 4)] as char);
        digest.push(HEX[usize::from(b & 15)] as char);
    }
    digest
}

/// A postcard output that hashes what it is given instead of storing it.
struct Hashing(Sha256);

impl postcard::ser_flavors::Flavor for Hashing {
    type Output = [u8; 32];

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.update([data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.update(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<[u8; 32]> {
        Ok(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_digests_tell_requests_apart_and_ignore_how_they_were_written() {
        let a: ml_api::MatchRequest = serde_json::from_str(
            r#"{"user_a_id":"00000000-0000-0000-0000-000000000001","user_b_id":"00000000-0000-0000-0000-000000000002","context":{"destination":"Lisbon"}}"#,
        )
        .unwrap();
        // The same request, fields in another order and spaced out.
        let same: ml_api::MatchRequest = serde_json::from_str(
            r#"{ "context": {"destination": "Lisbon"}, "user_b_id": "00000000-0000-0000-0000-000000000002", "user_a_id": "00000000-0000-0000-0000-000000000001" }"#,
        )
        .unwrap();
        let other: ml_api::MatchRequest = serde_json::from_str(
            r#"{"user_a_id":"00000000-0000-0000-0000-000000000001","user_b_id":"00000000-0000-0000-0000-000000000002","context":{"destination":"Porto"}}"#,
        )
        .unwrap();
        let d = request_digest(&a);
        assert_eq!(d.len(), 32);
        assert!(d
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(d, request_digest(&same));
        assert_ne!(d, request_digest(&other));
    }

    #[test]
    fn a_shape_postcard_cannot_write_is_still_told_apart() {
        // A flattened map has no length up front, which postcard refuses:
        // the digest falls back to the JSON form rather than to nothing.
        #[derive(serde::Serialize)]
        struct Flat {
            #[serde(flatten)]
            rest: std::collections::BTreeMap<String, u32>,
        }
        let one = Flat {
            rest: [("a".to_string(), 1)].into(),
        };
        let two = Flat {
            rest: [("a".to_string(), 2)].into(),
        };
        assert!(postcard::serialize_with_flavor(&one, Hashing(Sha256::new())).is_err());
        assert_ne!(request_digest(&one), request_digest(&two));
        assert_eq!(request_digest(&one).len(), 32);
    }

    fn user(seed: u128) -> Arc<UserFeatures> {
        let id = Uuid::from_u128(seed);
        Arc::new(UserFeatures::from_activity(id, "UTC", &[]))
    }

    /// An entry reads back until its time to live has passed since it was
    /// stored, and a newer store of the same user starts the clock again.
    #[test]
    fn near_cache_entries_live_for_their_ttl_from_when_they_were_stored() {
        let ttl = Duration::from_secs(30);
        let near = NearCache::new(100, ttl);
        let (a, t0) = (user(1), Instant::now());
        near.insert_at(a.user_id, Arc::clone(&a), t0);
        let got = near.get_at(&a.user_id, t0 + ttl - Duration::from_nanos(1));
        assert!(got.is_some_and(|f| Arc::ptr_eq(&f, &a)));
        assert!(near.get_at(&a.user_id, t0 + ttl).is_none());
        assert!(near.get_at(&Uuid::from_u128(2), t0).is_none());
        let fresh = user(1);
        near.insert_at(a.user_id, Arc::clone(&fresh), t0 + ttl);
        let got = near.get_at(&a.user_id, t0 + ttl + Duration::from_secs(29));
        assert!(got.is_some_and(|f| Arc::ptr_eq(&f, &fresh)));
    }

    /// The cache holds about as many users as asked, not every user stored.
    #[test]
    fn near_cache_is_bounded_in_users() {
        let near = NearCache::new(100, Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..10_000u128 {
            let u = user(i);
            near.insert_at(u.user_id, u, t0);
        }
        let held = (0..10_000u128)
            .filter(|&i| near.get_at(&Uuid::from_u128(i), t0).is_some())
            .count();
        assert!((50..=200).contains(&held), "{held} users held for 100");
        assert!(near.entries.len() <= 200);
    }

    /// NEAR_CACHE_USERS=0 keeps nothing.
    #[test]
    fn a_near_cache_of_zero_users_holds_none() {
        let near = NearCache::new(0, Duration::from_secs(30));
        let u = user(7);
        near.insert(u.user_id, Arc::clone(&u));
        assert!(near.get(&u.user_id).is_none());
    }
}
