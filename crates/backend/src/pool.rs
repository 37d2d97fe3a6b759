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

struct Job {
    model: Arc<dyn LoadedModel>,
    input: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Outputs, BackendError>>,
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
                            // The caller gave up (timeout, disconnect): skip the work.
                            if job.reply.is_closed() {
                                continue;
                            }
                            let out = job.model.run(&job.input, job.rows);
                            let _ = job.reply.send(out);
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
        let tx = self.tx.as_ref().ok_or(BackendError::ShutDown)?;
        tx.try_send(Job {
            model,
            input,
            rows,
            reply,
        })
        .map_err(|e| match e {
            TrySendError::Full(_) => BackendError::Overloaded,
            TrySendError::Disconnected(_) => BackendError::ShutDown,
        })?;
        rx.await.map_err(|_| BackendError::ShutDown)?
    }
}

impl Drop for InferencePool {
    /// Close the queue; the threads finish the jobs already queued, then exit.
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
