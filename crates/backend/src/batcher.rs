//! Dynamic batching without a thread of its own: each loaded model has a
//! bounded queue of requests and at most one batching task on the inference
//! pool, scheduled by the first request that finds none. The inference
//! thread running it takes what is queued (up to `max_batch` requests,
//! waiting up to `max_delay` after the first for more), runs it as one model
//! call, answers every request with its own rows, and goes on with what
//! queued meanwhile, so batches grow with load and a busy model costs no
//! thread wake-ups. After `TURN` batches the task goes to the back of the
//! pool's queue, so other models' work is not held up. A full queue is
//! refused at once; requests whose caller has gone away are dropped before
//! inference.
//!
//! An earlier version ran an actor thread per model that formed batches and
//! handed them to the pool: two thread wake-ups per batch, and the actor's
//! spinning waits took a seventh of the CPU under load (issue 16's profile).

use crate::{BackendError, InferencePool, LoadedModel, Outputs};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// a model call, and joining them only adds copies.
    pub max_rows: usize,
    /// How long the first request of a batch may wait for others; zero takes
    /// only what is queued at that moment.
    pub max_delay: Duration,
    /// Requests that may wait in the model's queue; beyond it, `Overloaded`.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_rows: 64,
            max_delay: Duration::ZERO,
            queue: 1024,
        }
    }
}

/// Batches one model's task runs before it yields its inference thread.
const TURN: usize = 16;

/// Called once per model call with (requests, rows) of the batch.
pub type BatchObserver = Arc<dyn Fn(usize, usize) + Send + Sync>;

struct Request {
    input: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Outputs, BackendError>>,
    arrived: Instant,
}

/// One model's queue and whether a batch of it is scheduled on the pool.
struct Queue {
    model: Arc<dyn LoadedModel>,
    pool: Arc<InferencePool>,
    tx: Sender<Request>,
    rx: Receiver<Request>,
    /// Whether this model's batching task is queued on the pool or running.
    /// Whoever queues a request and finds it false schedules the task, so a
    /// queued request always has a task coming for it.
    scheduled: AtomicBool,
    config: BatchConfig,
    observer: BatchObserver,
}

/// The handle to one model's batcher; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    model: Arc<dyn LoadedModel>,
    pool: Arc<InferencePool>,
    /// `None` when batching is off.
    queue: Option<Arc<Queue>>,
    max_rows: usize,
    observer: BatchObserver,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.model)
            .field("batching", &self.queue.is_some())
            .finish()
    }
}

impl Batcher {
    /// The batcher of `model` (with `max_batch` ≤ 1, a handle that sends each
    /// request on its own).
    pub fn spawn(
        model: Arc<dyn LoadedModel>,
        pool: Arc<InferencePool>,
        config: BatchConfig,
        observer: BatchObserver,
    ) -> Self {
        let queue = (config.max_batch > 1).then(|| {
            let (tx, rx) = bounded(config.queue.max(1));
            Arc::new(Queue {
                model: Arc::clone(&model),
                pool: Arc::clone(&pool),
                tx,
                rx,
                scheduled: AtomicBool::new(false),
                config,
                observer: Arc::clone(&observer),
            })
        });
        Self {
            model,
            pool,
            queue,
            max_rows: config.max_rows,
            observer,
        }
    }

    /// Requests waiting in this model's queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.as_ref().map(|q| q.rx.len()).unwrap_or(0)
    }

    /// Run `rows` rows through the model, batched with other callers' rows.
    pub async fn run(&self, input: Vec<f32>, rows: usize) -> Result<Outputs, BackendError> {
        let queue = match &self.queue {
            Some(q) if rows < self.max_rows => q,
            _ => {
                (self.observer)(1, rows);
                return self.pool.run(Arc::clone(&self.model), input, rows).await;
            }
        };
        let (reply, rx) = oneshot::channel();
        queue
            .tx
            .try_send(Request {
                input,
                rows,
                reply,
                arrived: Instant::now(),
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => BackendError::Overloaded,
                TrySendError::Disconnected(_) => BackendError::ShutDown,
            })?;
        Queue::schedule(queue);
        rx.await.map_err(|_| BackendError::ShutDown)?
    }
}

impl Queue {
    /// Make sure a batch task is coming for what is queued.
    fn schedule(this: &Arc<Self>) {
        if this.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        Self::submit(this);
    }

    /// Hand the batching task (scheduled already) to the pool.
    fn submit(this: &Arc<Self>) {
        let q = Arc::clone(this);
        if let Err((e, _task)) = this.pool.submit(Box::new(move || q.run_turn())) {
            // The pool cannot take it (full or shutting down): what is queued
            // now is refused with its error rather than left waiting. A
            // request queued after the flag drops schedules its own task.
            this.scheduled.store(false, Ordering::SeqCst);
            for r in this.rx.try_iter() {
                let _ = r.reply.send(Err(e.for_each_caller()));
            }
        }
    }

    /// On an inference thread: run batches while requests keep coming, up
    /// to a turn's worth.
    fn run_turn(self: Arc<Self>) {
        for _ in 0..TURN {
            match self.take_batch() {
                Some(batch) => self.dispatch(batch),
                None => {
                    // Nothing queued: stand down, unless a request came in
                    // between the look and the flag (it saw the flag up and
                    // counted on this task).
                    self.scheduled.store(false, Ordering::SeqCst);
                    if self.rx.is_empty() || self.scheduled.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
        // Still busy: to the back of the pool's queue (the flag stays up).
        Self::submit(&self);
    }

    /// The next batch from the queue (callers that gave up are left out);
    /// `None` when nothing is queued.
    fn take_batch(&self) -> Option<Vec<Request>> {
        let first = self.rx.try_recv().ok()?;
        let deadline = first.arrived + self.config.max_delay;
        let mut batch = vec![first];
        while batch.len() < self.config.max_batch {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Only while the deadline is ahead: crossbeam's receive spins and
        // yields the core through its whole backoff before it looks at the
        // deadline, so with the default delay of zero every batch paid for
        // a wait it never meant (issue 16, session 9 profile).
        while batch.len() < self.config.max_batch && Instant::now() < deadline {
            match self.rx.recv_deadline(deadline) {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Callers that gave up (timeout, disconnect) cost no inference.
        batch.retain(|r| !r.reply.is_closed());
        Some(batch)
    }

    /// One model call for the whole batch; each request gets its own rows.
    fn dispatch(&self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        let rows: usize = batch.iter().map(|r| r.rows).sum();
        (self.observer)(batch.len(), rows);
        let result = if batch.len() == 1 {
            self.model.run(&batch[0].input, rows)
        } else {
            // One copy of each request's rows (a flat_map over the values
            // went value by value: a tenth of a recommendation's inference
            // thread time, issue 16).
            let mut input = Vec::with_capacity(batch.iter().map(|r| r.input.len()).sum());
            for r in &batch {
                input.extend_from_slice(&r.input);
            }
            self.model.run(&input, rows)
        };
        match result {
            Ok(outputs) => {
                let mut start = 0;
                for r in batch {
                    let part = outputs
                        .iter()
                        .map(|o| {
                            let w = o.len() / rows;
                            o[start * w..(start + r.rows) * w].to_vec()
                        })
                        .collect();
                    start += r.rows;
                    let _ = r.reply.send(Ok(part));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.for_each_caller()));
                }
            }
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

    /// One inference thread, one model flooded: another model's request is
    /// answered within a turn, not after the flood.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_model_does_not_hold_up_another() {
        let pool = Arc::new(InferencePool::new(1, 64));
        let config = BatchConfig {
            max_batch: 2,
            max_rows: 32,
            max_delay: Duration::ZERO,
            queue: 1024,
        };
        let busy = Batcher::spawn(
            Arc::new(Doubler::default()),
            Arc::clone(&pool),
            config,
            counting().0,
        );
        let other = Batcher::spawn(Arc::new(Doubler::default()), pool, config, counting().0);
        let done = Arc::new(AtomicUsize::new(0));
        let flood: Vec<_> = (0..300)
            .map(|i| {
                let (b, done) = (busy.clone(), Arc::clone(&done));
                tokio::spawn(async move {
                    b.run(vec![i as f32, 0.0], 1).await.unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        other.run(vec![1.0, 2.0], 1).await.unwrap();
        let finished = done.load(Ordering::SeqCst);
        assert!(
            finished < 300,
            "the other model waited for all {finished} of the flood"
        );
        for t in flood {
            t.await.unwrap();
        }
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
