//! The prediction log's writer: an actor that owns a bounded queue of rows
//! and writes them to the store in batches, off the request path. A request
//! only offers its row to the queue ([`PredictionLog::record`]); when the
//! queue is full (the store is down, stalled or slower than the traffic) the
//! row is dropped and counted, never waited for, so logging can neither
//! slow an answer nor grow memory past PREDICTION_LOG_QUEUE rows. A failed
//! write drops its batch, counts it and backs off (1 s doubling to 30 s);
//! writing resumes by itself when the store answers again. A clean shutdown
//! writes what was queued ([`PredictionLog::close`]).

use crate::settings::PredictionLogSettings;
use ml_data::{ExperimentStore, PredictionRecord, PredictionStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Rows per write (one statement, one transaction).
const BATCH: usize = 2_000;
/// How long the writer waits for more rows after the first, so a quiet
/// service still writes in batches rather than a transaction per answer.
const LINGER: Duration = Duration::from_millis(50);
/// Longest wait for one batch's write before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed write, doubling up to the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often rows past the retention period are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3_600);

/// What became of logged rows, kept beside the metric for `/admin` and tests.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// The request side of the log: sampling and a non-blocking hand-off.
pub struct PredictionLog {
    tx: Option<mpsc::Sender<PredictionRecord>>,
    /// Users whose hash is at most this are logged (`u64::MAX`: everyone).
    threshold: Option<u64>,
    counts: Arc<LogCounts>,
    /// The writer's stop signal and task, taken by [`Self::close`].
    writer: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    describe: String,
    /// The store, for reads (`POST /feedback` looks predictions up), and
    /// the same store's outcomes and experiment sums.
    store: Option<Arc<dyn PredictionStore>>,
    experiments: Option<Arc<dyn ExperimentStore>>,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog")
            .field("store", &self.describe)
            .finish()
    }
}

impl PredictionLog {
    /// No log: answers still get ids, nothing is written.
    pub fn off() -> Self {
        Self {
            tx: None,
            threshold: None,
            counts: Default::default(),
            writer: Mutex::new(None),
            describe: "off".into(),
            store: None,
            experiments: None,
        }
    }

    /// Start the writer on the current runtime. `experiments` is the same
    /// store's outcomes side.
    pub fn start(
        store: Arc<dyn PredictionStore>,
        experiments: Option<Arc<dyn ExperimentStore>>,
        settings: &PredictionLogSettings,
    ) -> Self {
        let (tx, rx) = mpsc::channel(settings.prediction_log_queue.max(1) as usize);
        let (stop_tx, stop_rx) = oneshot::channel();
        let counts = Arc::new(LogCounts::default());
        let retention = (settings.prediction_log_retention_days > 0)
            .then(|| chrono::Duration::days(i64::from(settings.prediction_log_retention_days)));
        let describe = store.describe();
        let task = tokio::spawn(writer(
            Arc::clone(&store),
            rx,
            stop_rx,
            retention,
            Arc::clone(&counts),
        ));
        let sample = settings.prediction_log_sample;
        let threshold = if sample >= 1.0 {
            Some(u64::MAX)
        } else if sample <= 0.0 {
            None
        } else {
            Some((sample * u64::MAX as f64) as u64)
        };
        Self {
            tx: Some(tx),
            threshold,
            counts,
            writer: Mutex::new(Some((stop_tx, task))),
            describe,
            store: Some(store),
            experiments,
        }
    }

    /// The log's store, unless the log is off.
    pub fn store(&self) -> Option<&Arc<dyn PredictionStore>> {
        self.store.as_ref()
    }

    /// The outcomes and experiment sums beside the log, unless it is off.
    pub fn experiments(&self) -> Option<&Arc<dyn ExperimentStore>> {
        self.experiments.as_ref()
    }

    /// Where rows go, for the start-up log line.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Rows written and dropped so far.
    pub fn counts(&self) -> &LogCounts {
        &self.counts
    }

    /// Whether `user`'s predictions are logged: a hash of the id against the
    /// sampling rate, the same on every replica.
    pub fn sampled(&self, user: Uuid) -> bool {
        let Some(t) = self.threshold else {
            return false;
        };
        if self.tx.is_none() {
            return false;
        }
        t == u64::MAX || crate::lifecycle::user_hash(0x5851_f42d_4c95_7f2d, user) <= t
    }

    /// Offer a row to the writer; a full queue drops it (counted).
    pub fn record(&self, row: PredictionRecord) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(row).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::prediction_log_rows("dropped_queue_full", 1);
        }
    }

    /// Stop taking rows and write what is queued, waiting at most `deadline`.
    pub async fn close(&self, deadline: Duration) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((stop, mut task)) = writer else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ms = deadline.as_millis() as u64,
                "the prediction log did not finish writing its queue before the deadline"
            );
        }
    }
}

/// The actor: batches from the queue, written one at a time.
async fn writer(
    store: Arc<dyn PredictionStore>,
    mut rx: mpsc::Receiver<PredictionRecord>,
    mut stop: oneshot::Receiver<()>,
    retention: Option<chrono::Duration>,
    counts: Arc<LogCounts>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut backoff = Duration::ZERO;
    let mut next_purge = tokio::time::Instant::now();
    loop {
        if let Some(keep) = retention {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_EVERY;
                purge(&*store, keep).await;
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => break,
            n = rx.recv_many(&mut buf, BATCH) => if n == 0 { break },
        }
        if buf.len() < BATCH {
            tokio::select! {
                biased;
                _ = &mut stop => {}
                _ = tokio::time::sleep(LINGER) => {}
            }
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => buf.push(r),
                    Err(_) => break,
                }
            }
        }
        crate::telemetry::prediction_log_queue(rx.len());
        if write(&*store, &mut buf, &counts).await {
            backoff = Duration::ZERO;
        } else {
            backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
    // Shutdown: no new rows; write what is queued.
    rx.close();
    while let Some(r) = rx.recv().await {
        buf.push(r);
        if buf.len() == BATCH {
            write(&*store, &mut buf, &counts).await;
        }
    }
    write(&*store, &mut buf, &counts).await;
    crate::telemetry::prediction_log_queue(0);
}

/// Write and empty `buf`; false when the write failed (the rows are dropped).
async fn write(
    store: &dyn PredictionStore,
    buf: &mut Vec<PredictionRecord>,
    counts: &LogCounts,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let n = buf.len() as u64;
    let rows = std::mem::replace(buf, Vec::with_capacity(BATCH));
    match tokio::time::timeout(WRITE_TIMEOUT, store.write(rows)).await {
        Ok(Ok(_)) => {
            counts.written.fetch_add(n, Ordering::Relaxed);
            crate::telemetry::prediction_log_rows("written", n);
            true
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} s", WRITE_TIMEOUT.as_secs()),
            };
            counts.dropped.fetch_add(n, Ordering::Relaxed);
            crate::telemetry::prediction_log_rows("dropped_store_error", n);
            tracing::warn!(rows = n, store = %store.describe(), error = %why, "prediction log rows dropped: the store did not take them");
            false
        }
    }
}

/// Delete rows older than `keep`.
async fn purge(store: &dyn PredictionStore, keep: chrono::Duration) {
    let before = chrono::Utc::now() - keep;
    match tokio::time::timeout(WRITE_TIMEOUT * 6, store.purge(before)).await {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(rows = n, %before, "prediction log: rows past the retention period deleted")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "prediction log: retention purge failed"),
        Err(_) => tracing::warn!("prediction log: retention purge timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use ml_data::DataError;

    /// A store that keeps rows in memory, or fails while `down` is set.
    #[derive(Default)]
    struct Fake {
        rows: Mutex<Vec<PredictionRecord>>,
        down: std::sync::atomic::AtomicBool,
        writes: AtomicU64,
    }

    #[async_trait::async_trait]
    impl PredictionStore for Fake {
        async fn write(&self, rows: Vec<PredictionRecord>) -> Result<u64, DataError> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(DataError::Unavailable("down".into()));
            }
            let n = rows.len() as u64;
            self.rows.lock().unwrap().extend(rows);
            Ok(n)
        }
        async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DataError> {
            let mut rows = self.rows.lock().unwrap();
            let n = rows.len();
            rows.retain(|r| r.at >= before);
            Ok((n - rows.len()) as u64)
        }
        async fn get(&self, id: Uuid) -> Result<Option<PredictionRecord>, DataError> {
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.id == id)
                .cloned())
        }
        async fn count(&self) -> Result<u64, DataError> {
            Ok(self.rows.lock().unwrap().len() as u64)
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn row(i: u128) -> PredictionRecord {
        PredictionRecord {
            id: Uuid::from_u128(i),
            at: Utc::now(),
            endpoint: "match".into(),
            model: "travel_match".into(),
            version: 1,
            route: "1".into(),
            user_id: Uuid::from_u128(i),
            other_user_id: None,
            request_digest: String::new(),
            score: None,
            decision: "{}".into(),
            cached: false,
            fallback: false,
            latency_us: Some(900),
        }
    }

    fn settings(queue: u32, sample: f64) -> PredictionLogSettings {
        PredictionLogSettings {
            prediction_log: true,
            prediction_log_sample: sample,
            prediction_log_retention_days: 0,
            prediction_log_queue: queue,
            prediction_log_database_url: None,
        }
    }

    #[tokio::test]
    async fn rows_are_written_in_batches_and_close_flushes_the_queue() {
        let store = Arc::new(Fake::default());
        let log = PredictionLog::start(store.clone(), None, &settings(10_000, 1.0));
        for i in 0..5_000 {
            log.record(row(i));
        }
        log.close(Duration::from_secs(10)).await;
        assert_eq!(store.rows.lock().unwrap().len(), 5_000);
        assert_eq!(log.counts().written.load(Ordering::Relaxed), 5_000);
        assert_eq!(log.counts().dropped.load(Ordering::Relaxed), 0);
        // Batches, not a write per row.
        let writes = store.writes.load(Ordering::Relaxed);
        assert!(writes <= 5, "{writes} writes for 5,000 rows");
        // After close nothing is taken, nothing panics.
        log.record(row(9));
        assert_eq!(store.rows.lock().unwrap().len(), 5_000);
    }

    #[tokio::test]
    async fn a_down_store_drops_and_counts_rows_within_the_bound_and_writing_resumes() {
        let store = Arc::new(Fake::default());
        store.down.store(true, Ordering::Relaxed);
        let log = PredictionLog::start(store.clone(), None, &settings(100, 1.0));
        for i in 0..1_000 {
            log.record(row(i));
        }
        // The queue holds 100: the rest were dropped at once, without waiting.
        let dropped = log.counts().dropped.load(Ordering::Relaxed);
        assert!(dropped >= 900, "{dropped}");
        tokio::time::sleep(LINGER * 4).await;
        store.down.store(false, Ordering::Relaxed);
        // After the back-off the writer writes again, by itself.
        tokio::time::sleep(BACKOFF_MIN + LINGER * 4).await;
        for i in 1_000..1_010 {
            log.record(row(i));
        }
        log.close(Duration::from_secs(10)).await;
        let rows = store.rows.lock().unwrap();
        assert!(
            rows.iter().any(|r| r.id == Uuid::from_u128(1_005)),
            "rows after the store came back were written"
        );
        let c = log.counts();
        assert_eq!(
            c.written.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed),
            1_010,
            "every row is either written or counted as dropped"
        );
    }

    #[tokio::test]
    async fn sampling_keeps_whole_users_at_about_the_rate() {
        let store = Arc::new(Fake::default());
        let log = PredictionLog::start(store, None, &settings(10, 0.25));
        let users: Vec<Uuid> = (0..20_000).map(|_| Uuid::new_v4()).collect();
        let kept = users.iter().filter(|u| log.sampled(**u)).count();
        assert!((4_500..=5_500).contains(&kept), "{kept} of 20,000");
        // The same user always gets the same answer.
        assert!(users.iter().all(|u| log.sampled(*u) == log.sampled(*u)));
        let none = PredictionLog::start(Arc::new(Fake::default()), None, &settings(10, 0.0));
        assert!(!users.iter().any(|u| none.sampled(*u)));
        let all = PredictionLog::start(Arc::new(Fake::default()), None, &settings(10, 1.0));
        assert!(users.iter().all(|u| all.sampled(*u)));
        assert!(!PredictionLog::off().sampled(users[0]));
    }
}
