//! The in-process store (the embedded default without `REDIS_URL`): a `moka`
//! cache bounded in bytes, each entry with its own time to live.

use crate::{CacheError, Entry, KvStore};
use moka::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Value = Arc<(Vec<u8>, Duration)>;

struct PerEntryTtl;

impl moka::Expiry<String, Value> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, v: &Value, _: Instant) -> Option<Duration> {
        Some(v.1)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &Value,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.1)
    }
}

/// Bytes under keys, in this process.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Value>,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_bytes` of keys and values; the least
    /// used entries go first.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Value| {
                u32::try_from(k.len() + v.0.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { cache, max_bytes }
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.cache.get(key).map(|v| v.0.clone())
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        if ttl > Duration::ZERO {
            self.cache.insert(key, Arc::new((value, ttl)));
        }
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        Ok(keys.iter().map(|k| self.get(k)).collect())
    }

    async fn set_many(&self, entries: Vec<Entry>) -> Result<(), CacheError> {
        for e in entries {
            self.set(e.key, e.value, e.ttl);
        }
        Ok(())
    }

    fn connected(&self) -> bool {
        true
    }

    fn shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("in-process cache ({} MiB)", self.max_bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_by_their_own_ttl() {
        let s = MemoryStore::new(1 << 20);
        s.set("short".into(), b"a".to_vec(), Duration::from_millis(30));
        s.set("long".into(), b"b".to_vec(), Duration::from_secs(60));
        s.set("none".into(), b"c".to_vec(), Duration::ZERO);
        assert_eq!(s.get("short").as_deref(), Some(&b"a"[..]));
        assert_eq!(s.get("none"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.get("short"), None);
        assert_eq!(s.get("long").as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn the_byte_bound_holds() {
        let s = MemoryStore::new(64 * 1024);
        for i in 0..1000 {
            s.set(format!("k{i}"), vec![0u8; 1024], Duration::from_secs(60));
        }
        s.cache.run_pending_tasks();
        assert!(
            s.cache.weighted_size() <= 64 * 1024,
            "{}",
            s.cache.weighted_size()
        );
        assert!(s.cache.entry_count() < 1000);
    }
}
