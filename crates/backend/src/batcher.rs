//! Dynamic batching: one actor per loaded model, on its own OS thread, owns a
//! bounded queue of requests, forms batches of up to `max_batch` requests
//! (whatever is queued now, plus whatever arrives within `max_delay` of the
//! first), runs each batch as one model call on the inference pool, and answers
//! every request with its own rows. A full queue is refused at once; requests
//! whose caller has gone away are dropped before inference. The actor is a
//! thread rather than an async task because its waits are sub-millisecond:
//! tokio's timers tick in whole milliseconds, a parked thread wakes to the
//! microsecond.

use crate::{BackendError, InferencePool, LoadedModel, Outputs};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How a model's requests are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most requests in one model call; 1 turns batching off (each request goes
    /// straight to the inference pool).
    pub max_batch: usize,
    /// Requests of this many rows or more skip the batcher: they already fill
    /// a model call, and joining them only adds copies and a thread hop.
    pub max_rows: usize,
    /// How long the first request of a batch may wait for others; zero takes
    /// only what is queued at that moment.
    pub max_delay: Duration,
    /// Requests that may wait in the model's queue; beyond it, `Overloaded`.
    pub queue: usize,
    /// Batches of this model running at once (normally the inference threads):
    /// while all are busy, arriving requests gather into the next batch.
    pub concurrency: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_rows: 4,
            max_delay: Duration::ZERO,
            queue: 1024,
            concurrency: 2,
        }
    }
}

/// Called once per model call with (requests, rows) of the batch.
pub type BatchObserver = Arc<dyn Fn(usize, usize) + Send + Sync>;

struct Request {
    input: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Outputs, BackendError>>,
    arrived: Instant,
}

/// The handle to one model's batcher; cheap to clone. The actor thread ends
/// when the last handle is dropped, after answering what is queued.
#[derive(Clone)]
pub struct Batcher {
    model: Arc<dyn LoadedModel>,
    pool: Arc<InferencePool>,
    /// `None` when batching is off.
    tx: Option<Sender<Request>>,
    max_rows: usize,
    observer: BatchObserver,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.model)
            .field("batching", &self.tx.is_some())
            .finish()
    }
}

impl Batcher {
    /// Start the batching actor of `model` (or, with `max_batch` ≤ 1, a handle
    /// that sends each request on its own).
    pub fn spawn(
        model: Arc<dyn LoadedModel>,
        pool: Arc<InferencePool>,
        config: BatchConfig,
        observer: BatchObserver,
    ) -> Self {
        let tx = (config.max_batch > 1).then(|| {
            let (tx, rx) = bounded(config.queue.max(1));
            let slots = config.concurrency.max(1);
            let (slot_tx, slot_rx) = bounded(slots);
            for _ in 0..slots {
                let _ = slot_tx.send(());
            }
            let actor = Actor {
                model: Arc::clone(&model),
                pool: Arc::clone(&pool),
                rx,
                config,
                slot_tx,
                slot_rx,
                observer: Arc::clone(&observer),
            };
            std::thread::Builder::new()
                .name("batcher".into())
                .spawn(move || actor.run())
                .expect("spawn a batcher thread");
            tx
        });
        Self {
            model,
            pool,
            tx,
            max_rows: config.max_rows,
            observer,
        }
    }

    /// Requests waiting in this model's queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map(Sender::len).unwrap_or(0)
    }

    /// Run `rows` rows through the model, batched with other callers' rows.
    pub async fn run(&self, input: Vec<f32>, rows: usize) -> Result<Outputs, BackendError> {
        let tx = match &self.tx {
            Some(tx) if rows < self.max_rows => tx,
            _ => {
                (self.observer)(1, rows);
                return self.pool.run(Arc::clone(&self.model), input, rows).await;
            }
        };
        let (reply, rx) = oneshot::channel();
        tx.try_send(Request {
            input,
            rows,
            reply,
            arrived: Instant::now(),
        })
        .map_err(|e| match e {
            TrySendError::Full(_) => BackendError::Overloaded,
            TrySendError::Disconnected(_) => BackendError::ShutDown,
        })?;
        rx.await.map_err(|_| BackendError::ShutDown)?
    }
}

struct Actor {
    model: Arc<dyn LoadedModel>,
    pool: Arc<InferencePool>,
    rx: Receiver<Request>,
    config: BatchConfig,
    /// One token per batch allowed in flight; a finished batch returns its token.
    slot_tx: Sender<()>,
    slot_rx: Receiver<()>,
    observer: BatchObserver,
}

impl Actor {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            // Wait for a free slot first: while every slot is busy, arriving
            // requests queue up and join this batch, which is what makes batches
            // grow with load.
            if self.slot_rx.recv().is_err() {
                return;
            }
            let deadline = first.arrived + self.config.max_delay;
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            while batch.len() < self.config.max_batch {
                match self.rx.recv_deadline(deadline) {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // Callers that gave up (timeout, disconnect) cost no inference.
            batch.retain(|r| !r.reply.is_closed());
            if batch.is_empty() {
                let _ = self.slot_tx.send(());
                continue;
            }
            self.dispatch(batch);
        }
    }

    /// One model call for the whole batch; each request gets its own rows.
    fn dispatch(&self, batch: Vec<Request>) {
        let rows: usize = batch.iter().map(|r| r.rows).sum();
        (self.observer)(batch.len(), rows);
        let input: Vec<f32> = if batch.len() == 1 {
            batch[0].input.clone()
        } else {
            batch.iter().flat_map(|r| r.input.iter().copied()).collect()
        };
        let (replies, sizes): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.reply, r.rows)).unzip();
        let slot = self.slot_tx.clone();
        let answer = move |result: Result<Outputs, BackendError>| {
            match result {
                Ok(outputs) => {
                    let mut start = 0;
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let part = outputs
                            .iter()
                            .map(|o| {
                                let w = o.len() / rows;
                                o[start * w..(start + n) * w].to_vec()
                            })
                            .collect();
                        start += n;
                        let _ = reply.send(Ok(part));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.for_each_caller()));
                    }
                }
            }
            let _ = slot.send(());
        };
        if let Err((e, answer)) =
            self.pool
                .submit(Arc::clone(&self.model), input, rows, Box::new(answer))
        {
            answer(Err(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A model that doubles its 2-wide input rows, records each call's row
    /// count, and sleeps a little so concurrent callers pile up.
    #[derive(Debug, Default)]
    struct Doubler {
        calls: Mutex<Vec<usize>>,
    }

    impl LoadedModel for Doubler {
        fn run(&self, input: &[f32], rows: usize) -> Result<Outputs, BackendError> {
            self.calls.lock().unwrap().push(rows);
            std::thread::sleep(Duration::from_millis(2));
            Ok(vec![
                input.iter().map(|v| v * 2.0).collect(),
                (0..rows).map(|r| r as f32).collect(),
            ])
        }
    }

    fn counting() -> (BatchObserver, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = Arc::clone(&n);
        (
            Arc::new(move |_, _| {
                n2.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_share_model_calls_and_get_their_own_rows() {
        let model = Arc::new(Doubler::default());
        let pool = Arc::new(InferencePool::new(1, 64));
        let (obs, calls) = counting();
        let config = BatchConfig {
            max_batch: 16,
            max_rows: 32,
            max_delay: Duration::from_millis(5),
            queue: 64,
            concurrency: 1,
        };
        let b = Batcher::spawn(model.clone(), pool, config, obs);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    // Requests of one and of two rows, mixed.
                    let rows = 1 + i % 2;
                    let input: Vec<f32> = (0..rows * 2).map(|k| (i * 10 + k) as f32).collect();
                    let out = b.run(input.clone(), rows).await.unwrap();
                    assert_eq!(out[0], input.iter().map(|v| v * 2.0).collect::<Vec<_>>());
                    assert_eq!(out[1].len(), rows);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let sizes = model.calls.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 60, "every row ran once");
        assert!(
            sizes.len() < 40,
            "40 concurrent requests ran in {} model calls: no batching",
            sizes.len()
        );
        assert!(
            sizes.iter().all(|s| *s <= 32),
            "a batch exceeded 16 requests"
        );
        assert_eq!(calls.load(Ordering::SeqCst), sizes.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_of_many_rows_skip_the_batcher() {
        let model = Arc::new(Doubler::default());
        let pool = Arc::new(InferencePool::new(1, 64));
        let (obs, _) = counting();
        let config = BatchConfig {
            max_batch: 16,
            max_rows: 3,
            max_delay: Duration::from_millis(20),
            queue: 64,
            concurrency: 1,
        };
        let b = Batcher::spawn(model.clone(), pool, config, obs);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.run(vec![1.0; 8], 4).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *model.calls.lock().unwrap(),
            vec![4; 6],
            "large requests were batched"
        );
    }

    #[tokio::test]
    async fn batching_off_sends_each_request_alone() {
        let model = Arc::new(Doubler::default());
        let pool = Arc::new(InferencePool::new(1, 64));
        let (obs, _) = counting();
        let config = BatchConfig {
            max_batch: 1,
            ..Default::default()
        };
        let b = Batcher::spawn(model.clone(), pool, config, obs);
        let out = futures_join(&b, 5).await;
        assert!(out.iter().all(|r| r.is_ok()));
        assert_eq!(*model.calls.lock().unwrap(), vec![1; 5]);
    }

    async fn futures_join(b: &Batcher, n: usize) -> Vec<Result<Outputs, BackendError>> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.run(vec![i as f32, 0.0], 1).await })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_at_once() {
        let model = Arc::new(Doubler::default());
        let pool = Arc::new(InferencePool::new(1, 4));
        let (obs, _) = counting();
        let config = BatchConfig {
            max_batch: 2,
            max_rows: 32,
            max_delay: Duration::ZERO,
            queue: 2,
            concurrency: 1,
        };
        let b = Batcher::spawn(model, pool, config, obs);
        let out = futures_join(&b, 50).await;
        let refused = out
            .iter()
            .filter(|r| matches!(r, Err(BackendError::Overloaded)))
            .count();
        assert!(
            refused > 0,
            "50 requests into a queue of 2 were all accepted"
        );
        assert!(out
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(BackendError::Overloaded))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_requests_are_not_run() {
        let model = Arc::new(Doubler::default());
        let pool = Arc::new(InferencePool::new(1, 64));
        let (obs, _) = counting();
        let config = BatchConfig {
            max_batch: 8,
            max_rows: 32,
            max_delay: Duration::from_millis(50),
            queue: 64,
            concurrency: 1,
        };
        let b = Batcher::spawn(model.clone(), pool, config, obs);
        let busy = {
            let b = b.clone();
            tokio::spawn(async move { b.run(vec![1.0, 1.0], 1).await })
        };
        // Three callers enqueue a request (the first poll sends it) and give up
        // at once, well inside the 50 ms the batch waits for company.
        for i in 0..3 {
            let mut call = Box::pin(b.run(vec![i as f32, 0.0], 1));
            std::future::poll_fn(|cx| {
                assert!(std::future::Future::poll(call.as_mut(), cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
            drop(call);
        }
        busy.await.unwrap().unwrap();
        // Let the actor drain the abandoned requests, then check nothing else ran.
        b.run(vec![9.0, 9.0], 1).await.unwrap();
        let rows: usize = model.calls.lock().unwrap().iter().sum();
        assert_eq!(rows, 2, "abandoned requests reached the model");
    }
}
