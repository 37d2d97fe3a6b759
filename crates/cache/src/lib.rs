//! Caches for ml-service: the [`KvStore`] trait (bytes under string keys with a
//! time to live), its in-process implementation ([`MemoryStore`], the embedded
//! default) and its Redis implementation ([`RedisStore`], one server or a
//! cluster, shared by replicas), plus the key layout ([`keys`]) and the
//! versioned binary encoding of user features ([`codec`]). What is cached, and
//! when, is the service's business; this crate only stores bytes.

pub mod codec;
pub mod keys;
mod memory;
mod redis_store;

pub use memory::MemoryStore;
pub use redis_store::{RedisConfig, RedisStore};

use std::time::Duration;

/// What can go wrong talking to a cache. Callers treat every error as a miss.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store is down or was recently found down (calls are skipped for a
    /// moment rather than made to wait).
    #[error("cache unavailable")]
    Unavailable,
    /// The store did not answer in time.
    #[error("cache timed out after {0:?}")]
    Timeout(Duration),
    /// The store answered with an error.
    #[error("cache error: {0}")]
    Backend(String),
    /// The configuration cannot work (a bad URL, say).
    #[error("cache configuration: {0}")]
    Config(String),
}

/// One value to write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub ttl: Duration,
}

/// A key-value store with expiry.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// The values of `keys`, in order (`None` where absent or expired).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError>;
    /// Write `entries`, each with its own time to live.
    async fn set_many(&self, entries: Vec<Entry>) -> Result<(), CacheError>;
    /// Whether the store is reachable now (always true in process).
    fn connected(&self) -> bool;
    /// Whether replicas share it (Redis) or each has its own (memory).
    fn shared(&self) -> bool;
    /// What and where, for logs (never with credentials).
    fn describe(&self) -> String;
    /// Calls that failed since start (timeouts, errors).
    fn failures(&self) -> u64 {
        0
    }
}
