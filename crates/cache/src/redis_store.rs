//! Redis as the shared store: one server through a `ConnectionManager` (which
//! reconnects by itself), or a cluster through `ClusterConnection`. Every call
//! has a short timeout; after a failure the store is skipped for a moment (one
//! call per `retry_after` probes it) so a dead or slow Redis costs requests
//! nothing, and a task connects in the background when Redis was down at start.

use crate::{CacheError, Entry, KvStore};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://…` (credentials allowed, never logged); for a cluster, one or
    /// more node URLs separated by commas.
    pub url: SecretString,
    pub cluster: bool,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// How long a failure keeps calls away before the next probe.
    pub retry_after: Duration,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    config: RedisConfig,
    conn: RwLock<Option<Conn>>,
    connected: AtomicBool,
    /// Milliseconds since `epoch` before which calls are skipped.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    failures: AtomicU64,
}

/// Redis, shared by every replica.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The host and port parts of the URLs, without credentials.
fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            let scheme_end = u.find("://").map(|i| i + 3).unwrap_or(0);
            match u[scheme_end..].rfind('@') {
                Some(at) => format!("{}{}", &u[..scheme_end], &u[scheme_end + at + 1..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl RedisStore {
    /// A store for `config`. It tries to connect now (within the timeout) and,
    /// if Redis is not there, keeps trying in the background: the service
    /// starts and serves either way. Must be called on a tokio runtime.
    pub async fn connect(config: RedisConfig) -> Result<Self, CacheError> {
        // Parse the URLs now, so a typo is a start-up error, not a silent miss.
        for u in config.url.expose_secret().split(',') {
            redis::Client::open(u.trim())
                .map_err(|e| CacheError::Config(format!("{}: {e}", redact(u))))?;
        }
        let store = Self {
            inner: Arc::new(Inner {
                config,
                conn: RwLock::new(None),
                connected: AtomicBool::new(false),
                skip_until_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                failures: AtomicU64::new(0),
            }),
        };
        if let Err(e) = store.open().await {
            tracing::warn!(redis = %store.describe(), error = %e, "Redis is not reachable: serving without it and retrying in the background");
        }
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let retry = inner.config.retry_after;
                let needs = inner.conn.read().map(|c| c.is_none()).unwrap_or(false);
                if needs {
                    let s = RedisStore { inner };
                    if s.open().await.is_ok() {
                        tracing::info!(redis = %s.describe(), "connected to Redis");
                    }
                } else {
                    drop(inner);
                }
                tokio::time::sleep(retry).await;
            }
        });
        Ok(store)
    }

    async fn open(&self) -> Result<(), CacheError> {
        let c = &self.inner.config;
        let url = c.url.expose_secret();
        let conn = if c.cluster {
            let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(c.timeout)
                .response_timeout(c.timeout)
                .retries(1)
                .build()
                .map_err(|e| CacheError::Config(e.to_string()))?;
            let conn = tokio::time::timeout(c.timeout * 4, client.get_async_connection())
                .await
                .map_err(|_| CacheError::Timeout(c.timeout * 4))?
                .map_err(|e| CacheError::Backend(e.to_string()))?;
            Conn::Cluster(conn)
        } else {
            let client = redis::Client::open(url).map_err(|e| CacheError::Config(e.to_string()))?;
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(c.timeout))
                .set_response_timeout(Some(c.timeout))
                .set_number_of_retries(2)
                .set_max_delay(c.retry_after);
            let conn = tokio::time::timeout(
                c.timeout * 4,
                client.get_connection_manager_with_config(cfg),
            )
            .await
            .map_err(|_| CacheError::Timeout(c.timeout * 4))?
            .map_err(|e| CacheError::Backend(e.to_string()))?;
            Conn::Single(conn)
        };
        if let Ok(mut slot) = self.inner.conn.write() {
            *slot = Some(conn);
        }
        self.inner.connected.store(true, Ordering::Relaxed);
        self.inner.skip_until_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// The connection to use now, or `Unavailable` while Redis is down or in
    /// its back-off after a failure.
    fn conn(&self) -> Result<Conn, CacheError> {
        if self.now_ms() < self.inner.skip_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::Unavailable);
        }
        self.inner
            .conn
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or(CacheError::Unavailable)
    }

    /// Run one call with the timeout, recording success or failure.
    async fn call<T, F>(&self, f: F) -> Result<T, CacheError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let t = self.inner.config.timeout;
        let r = match tokio::time::timeout(t, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Backend(e.to_string())),
            Err(_) => Err(CacheError::Timeout(t)),
        };
        match &r {
            Ok(_) => self.inner.connected.store(true, Ordering::Relaxed),
            Err(e) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
                let was = self.inner.connected.swap(false, Ordering::Relaxed);
                let retry = self.inner.config.retry_after.as_millis() as u64;
                self.inner
                    .skip_until_ms
                    .store(self.now_ms() + retry, Ordering::Relaxed);
                if was {
                    tracing::warn!(error = %e, "Redis call failed: skipping Redis for {retry} ms between probes");
                }
            }
        }
        r
    }
}

#[async_trait::async_trait]
impl KvStore for RedisStore {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        match self.conn()? {
            // One round trip for all the keys.
            Conn::Single(mut c) => {
                self.call(async move {
                    redis::cmd("MGET")
                        .arg(keys)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                        .await
                })
                .await
            }
            // Keys of different users live in different slots (and maybe
            // nodes): one GET each, all in flight together.
            Conn::Cluster(c) => {
                self.call(futures::future::try_join_all(keys.iter().map(|k| {
                    let mut c = c.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(k)
                            .query_async::<Option<Vec<u8>>>(&mut c)
                            .await
                    }
                })))
                .await
            }
        }
    }

    async fn set_many(&self, entries: Vec<Entry>) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let px = |e: &Entry| (e.ttl.as_millis() as u64).max(1);
        match self.conn()? {
            Conn::Single(mut c) => {
                let mut p = redis::pipe();
                for e in &entries {
                    p.cmd("SET")
                        .arg(&e.key)
                        .arg(&e.value)
                        .arg("PX")
                        .arg(px(e))
                        .ignore();
                }
                self.call(async move { p.query_async::<()>(&mut c).await })
                    .await
            }
            Conn::Cluster(c) => self
                .call(futures::future::try_join_all(entries.iter().map(|e| {
                    let mut c = c.clone();
                    async move {
                        redis::cmd("SET")
                            .arg(&e.key)
                            .arg(&e.value)
                            .arg("PX")
                            .arg(px(e))
                            .query_async::<()>(&mut c)
                            .await
                    }
                })))
                .await
                .map(|_| ()),
        }
    }

    fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn shared(&self) -> bool {
        true
    }

    fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let kind = if self.inner.config.cluster {
            "Redis Cluster"
        } else {
            "Redis"
        };
        format!(
            "{kind} at {}",
            redact(self.inner.config.url.expose_secret())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_descriptions() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/0,redis://:pw@h:1"),
            "redis://10.0.0.1:6379/0,redis://h:1"
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
