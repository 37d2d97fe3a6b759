//! The embedding actor: one OS thread owns the model and drains a bounded
//! queue, encoding what several callers queued in one batch; phrases' soft
//! tag profiles are cached by their normalized text, so each is encoded once.

use crate::{EmbedError, MiniLm, MODEL_NAME};
use ml_core::features::{combine_profiles, normalize_phrase, TagProfile, TagSpace};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Bounds of the embedding actor.
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Jobs waiting for the thread; beyond it a caller is told `Overloaded`.
    pub queue: usize,
    /// Most texts in one forward pass.
    pub max_batch: usize,
    /// Phrases whose profiles are kept.
    pub cache_entries: u64,
    /// How long an async caller waits for its phrases.
    pub timeout: Duration,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            queue: 256,
            max_batch: 32,
            cache_entries: 100_000,
            timeout: Duration::from_millis(1000),
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
}

/// Soft tag profiles of interest phrases, from the model on its own thread.
pub struct Embedder {
    tx: crossbeam_channel::Sender<Job>,
    space: Arc<TagSpace>,
    cache: moka::sync::Cache<String, TagProfile>,
    timeout: Duration,
    device: &'static str,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("device", &self.device)
            .finish()
    }
}

impl Embedder {
    /// Embed the tag vocabulary (the space profiles are read in), then start
    /// the thread. The thread ends when the last `Embedder` handle is dropped.
    pub fn start(model: MiniLm, cfg: EmbedderConfig) -> Result<Arc<Self>, EmbedError> {
        let space = TagSpace::new(model.embed(&TagSpace::texts())?)
            .map_err(|e| EmbedError::Compute(e.to_string()))?;
        let device = model.device_name();
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue.max(1));
        let max_batch = cfg.max_batch.max(1);
        std::thread::Builder::new()
            .name("embedder".into())
            .spawn(move || run(model, rx, max_batch))
            .map_err(|e| EmbedError::Compute(format!("starting the embedding thread: {e}")))?;
        Ok(Arc::new(Self {
            tx,
            space: Arc::new(space),
            cache: moka::sync::Cache::new(cfg.cache_entries),
            timeout: cfg.timeout,
            device,
        }))
    }

    /// The model's name, as trained models record it.
    pub fn name(&self) -> &'static str {
        MODEL_NAME
    }

    /// "cpu" or "cuda".
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// The tag vocabulary in the model's space.
    pub fn space(&self) -> &TagSpace {
        &self.space
    }

    /// Soft profiles of several phrase lists; phrases not cached yet are
    /// encoded in one queued job, waited for up to the configured timeout.
    pub async fn profiles(&self, lists: &[&[String]]) -> Result<Vec<TagProfile>, EmbedError> {
        let missing = self.missing(lists);
        if !missing.is_empty() {
            let (reply, rx) = oneshot::channel();
            self.send(missing.clone(), reply)?;
            let ms = self.timeout.as_millis() as u64;
            let vectors = tokio::time::timeout(self.timeout, rx)
                .await
                .map_err(|_| EmbedError::Timeout(ms))?
                .map_err(|_| EmbedError::Stopped)??;
            self.remember(&missing, &vectors);
        }
        Ok(self.combine(lists))
    }

    /// [`Embedder::profiles`] for code off the async runtime (training):
    /// waits without a timeout.
    pub fn profiles_blocking(&self, lists: &[&[String]]) -> Result<Vec<TagProfile>, EmbedError> {
        let missing = self.missing(lists);
        for chunk in missing.chunks(1024) {
            let (reply, rx) = oneshot::channel();
            self.send(chunk.to_vec(), reply)?;
            let vectors = rx.blocking_recv().map_err(|_| EmbedError::Stopped)??;
            self.remember(chunk, &vectors);
        }
        Ok(self.combine(lists))
    }

    /// The profile of every phrase, by normalized text (for training).
    pub fn phrase_profiles(
        &self,
        phrases: &[String],
    ) -> Result<HashMap<String, TagProfile>, EmbedError> {
        let lists: Vec<&[String]> = phrases.iter().map(std::slice::from_ref).collect();
        let profiles = self.profiles_blocking(&lists)?;
        Ok(phrases
            .iter()
            .map(|p| normalize_phrase(p))
            .zip(profiles)
            .collect())
    }

    /// Whether a (normalized) phrase's profile is cached.
    pub fn is_cached(&self, phrase: &str) -> bool {
        self.cache.contains_key(phrase)
    }

    fn missing(&self, lists: &[&[String]]) -> Vec<String> {
        let mut v: Vec<String> = lists
            .iter()
            .flat_map(|l| l.iter())
            .map(|p| normalize_phrase(p))
            .filter(|p| !p.is_empty() && !self.cache.contains_key(p))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn send(&self, texts: Vec<String>, reply: Reply) -> Result<(), EmbedError> {
        self.tx.try_send(Job { texts, reply }).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => {
                metrics::counter!("ml_embedding_errors_total", "reason" => "overloaded")
                    .increment(1);
                EmbedError::Overloaded
            }
            crossbeam_channel::TrySendError::Disconnected(_) => EmbedError::Stopped,
        })
    }

    fn remember(&self, phrases: &[String], vectors: &[Vec<f32>]) {
        for (p, v) in phrases.iter().zip(vectors) {
            self.cache
                .insert(p.clone(), self.space.phrase_profile(p, v));
        }
    }

    fn combine(&self, lists: &[&[String]]) -> Vec<TagProfile> {
        lists
            .iter()
            .map(|l| {
                combine_profiles(
                    l.iter()
                        .filter_map(|p| self.cache.get(&normalize_phrase(p))),
                )
            })
            .collect()
    }
}

/// The thread: take a job, add whatever else is queued up to a batch, encode,
/// answer each job its rows. A job whose caller has gone is skipped.
fn run(model: MiniLm, rx: crossbeam_channel::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut n = jobs[0].texts.len();
        while n < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.texts.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(texts.len());
        let mut failed = None;
        for chunk in texts.chunks(max_batch) {
            match model.embed(chunk) {
                Ok(v) => out.extend(v),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        metrics::histogram!("ml_embedding_batch_seconds").record(t0.elapsed().as_secs_f64());
        metrics::counter!("ml_embedding_texts_total").increment(texts.len() as u64);
        let mut rows = out.into_iter();
        for j in jobs {
            let answer = match &failed {
                Some(e) => {
                    metrics::counter!("ml_embedding_errors_total", "reason" => "compute")
                        .increment(1);
                    Err(EmbedError::Compute(e.clone()))
                }
                None => Ok(rows.by_ref().take(j.texts.len()).collect()),
            };
            let _ = j.reply.send(answer);
        }
    }
}
