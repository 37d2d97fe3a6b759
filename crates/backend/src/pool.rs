//! The inference threads: a fixed set of OS threads, fed through one bounded
//! queue, so model runs never block the async runtime and excess load is refused
//! at once instead of queueing without bound.

use crate::{BackendError, LoadedModel};
use crossbeam_channel::{bounded, Sender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// A model's outputs, each flattened row-major, in signature order.
pub type Outputs = Vec<Vec<f32>>;

/// Work handed to an inference thread whole: a batcher's "take what is
/// queued for my model and run it as one call".
pub type Task = Box<dyn FnOnce() + Send>;

enum Job {
    /// One model call for a waiting caller; skipped when it has gone away.
    Run {
        model: Arc<dyn LoadedModel>,
        input: Vec<f32>,
        rows: usize,
        reply: oneshot::Sender<Result<Outputs, BackendError>>,
    },
    Task(Task),
}

/// The pool of inference threads.
pub struct InferencePool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferencePool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl InferencePool {
    /// Start `threads` inference threads behind a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> Self {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || {
                        for job in rx.iter() {
                            match job {
                                // The caller gave up (timeout, disconnect): skip the work.
                                Job::Run { reply, .. } if reply.is_closed() => {}
                                Job::Run {
                                    model,
                                    input,
                                    rows,
                                    reply,
                                } => {
                                    let _ = reply.send(model.run(&input, rows));
                                }
                                Job::Task(task) => task(),
                            }
                        }
                    })
                    .expect("spawn an inference thread")
            })
            .collect();
        Self {
            tx: Some(tx),
            threads,
        }
    }

    /// Jobs waiting for an inference thread.
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map(|t| t.len()).unwrap_or(0)
    }

    /// Run a model on the inference threads and wait for its outputs.
    pub async fn run(
        &self,
        model: Arc<dyn LoadedModel>,
        input: Vec<f32>,
        rows: usize,
    ) -> Result<Outputs, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Run {
            model,
            input,
            rows,
            reply,
        })
        .map_err(|(e, _)| e)?;
        rx.await.map_err(|_| BackendError::ShutDown)?
    }

    /// Queue a task for an inference thread. When the queue is full or
    /// closed, the error and the task come back at once.
    pub fn submit(&self, task: Task) -> Result<(), (BackendError, Task)> {
        self.enqueue(Job::Task(task)).map_err(|(e, job)| match job {
            Job::Task(t) => (e, t),
            Job::Run { .. } => unreachable!("a task comes back as a task"),
        })
    }

    fn enqueue(&self, job: Job) -> Result<(), (BackendError, Job)> {
        let Some(tx) = self.tx.as_ref() else {
            return Err((BackendError::ShutDown, job));
        };
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) => (BackendError::Overloaded, j),
            TrySendError::Disconnected(j) => (BackendError::ShutDown, j),
        })
    }
}

impl Drop for InferencePool {
    /// Close the queue; the threads finish the jobs already queued, then exit.
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            // A batching task holds the pool (to queue its next turn), so the
            // last handle can go on an inference thread, which must not wait
            // for itself; it ends once this job returns.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that holds the last handle of the pool ends normally: the pool
    /// closes without an inference thread waiting for itself.
    #[test]
    fn the_last_handle_may_go_on_an_inference_thread() {
        let pool = Arc::new(InferencePool::new(1, 4));
        let (tx, rx) = std::sync::mpsc::channel();
        let held = Arc::clone(&pool);
        let submitted = pool.submit(Box::new(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(held);
            tx.send(()).expect("the test waits");
        }));
        assert!(submitted.is_ok());
        drop(pool);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the task ran to its end after dropping the pool");
    }
}
