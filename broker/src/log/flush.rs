//! Group commit: one flusher thread per broker fsyncs the segments that
//! producers wait on, so that many concurrent `acks` share each fsync and no
//! fsync runs under a partition log's lock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::segment::LogFile;
use crate::{Error, Result};

/// When appended records are fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before a produce is acknowledged; concurrent producers share fsyncs.
    Always,
    /// Every interval, in the background; a produce is acknowledged once
    /// the records are in the page cache.
    Interval(Duration),
    /// Left to the operating system (Kafka's default).
    Never,
}

/// A handle on one segment's log file that can fsync it without the
/// partition log's lock. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    log: Arc<LogFile>,
}

impl SyncHandle {
    pub(crate) fn new(log: Arc<LogFile>) -> Self {
        SyncHandle { log }
    }

    /// Fsyncs the segment if anything was appended since its last fsync.
    pub fn sync(&self) -> Result<()> {
        self.log.sync().map(|_| ())
    }

    /// Identifies the file, so that waiters on one file share its fsync.
    fn key(&self) -> usize {
        Arc::as_ptr(&self.log) as usize
    }
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("path", &self.log.path())
            .finish()
    }
}

struct Waiter {
    handle: SyncHandle,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    dirty: HashMap<usize, SyncHandle>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    fsyncs: AtomicU64,
}

impl Shared {
    fn sync(&self, handle: &SyncHandle) -> Result<()> {
        if handle.log.sync()? {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The broker's fsync thread; see [`FsyncPolicy`] for what it does when.
pub struct Flusher {
    policy: FsyncPolicy,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("policy", &self.policy)
            .field("fsyncs", &self.fsyncs())
            .finish()
    }
}

enum Pending {
    Ready(Result<()>),
    Waiting(oneshot::Receiver<Result<()>>, SyncHandle),
}

impl Flusher {
    /// Starts the flusher's thread (none is needed for [`FsyncPolicy::Never`]).
    pub fn start(policy: FsyncPolicy) -> Flusher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        });
        let thread = match policy {
            FsyncPolicy::Never => None,
            FsyncPolicy::Always => {
                let shared = Arc::clone(&shared);
                Some(spawn(move || run_always(&shared)))
            }
            FsyncPolicy::Interval(every) => {
                let shared = Arc::clone(&shared);
                Some(spawn(move || run_interval(&shared, every)))
            }
        };
        Flusher {
            policy,
            shared,
            thread,
        }
    }

    /// The policy the flusher was started with.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Resolves once what was appended to `handle`'s segment before this call
    /// is as durable as the policy promises. With `Always`, that takes an
    /// fsync begun after this call (unless one already covered the records),
    /// shared with every caller waiting at the time; with `Interval` the
    /// segment is marked for the next round and this resolves at once; with
    /// `Never` it resolves at once. Fails once an fsync of the segment has
    /// failed. Call it after every append, whatever the policy.
    pub fn durable(&self, handle: SyncHandle) -> impl Future<Output = Result<()>> + Send + use<> {
        let pending = self.register(handle);
        async move {
            match pending {
                Pending::Ready(result) => result,
                Pending::Waiting(done, handle) => done.await.unwrap_or_else(|_| {
                    Err(Error::Io {
                        what: "fsync",
                        path: handle.log.path().to_path_buf(),
                        source: std::io::Error::other("the flusher stopped before the fsync"),
                    })
                }),
            }
        }
    }

    fn register(&self, handle: SyncHandle) -> Pending {
        if let Err(e) = handle.log.check_healthy() {
            return Pending::Ready(Err(e));
        }
        match self.policy {
            FsyncPolicy::Never => Pending::Ready(Ok(())),
            FsyncPolicy::Interval(_) => {
                self.shared.queue.lock().dirty.insert(handle.key(), handle);
                Pending::Ready(Ok(()))
            }
            FsyncPolicy::Always => {
                if handle.log.is_synced() {
                    return Pending::Ready(Ok(()));
                }
                let (done, wait) = oneshot::channel();
                self.shared.queue.lock().waiting.push(Waiter {
                    handle: handle.clone(),
                    done,
                });
                self.shared.wake.notify_one();
                Pending::Waiting(wait, handle)
            }
        }
    }

    /// Fsyncs performed so far.
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for Flusher {
    /// Stops the thread after it has served everyone waiting (and, with
    /// `Interval`, fsynced what is dirty).
    fn drop(&mut self) {
        self.shared.queue.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn(run: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("tally-fsync".to_string())
        .spawn(run)
        .unwrap_or_else(|e| panic!("cannot start the fsync thread: {e}"))
}

fn run_always(shared: &Shared) {
    loop {
        let round = {
            let mut queue = shared.queue.lock();
            while queue.waiting.is_empty() && !queue.stopping {
                shared.wake.wait(&mut queue);
            }
            if queue.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        // Everyone queued by now shares this round: one fsync per file.
        let mut outcomes: HashMap<usize, Result<()>> = HashMap::new();
        for waiter in round {
            let outcome = outcomes
                .entry(waiter.handle.key())
                .or_insert_with(|| shared.sync(&waiter.handle));
            let _ = waiter.done.send(duplicate(outcome));
        }
    }
}

fn run_interval(shared: &Shared, every: Duration) {
    loop {
        let (dirty, stopping) = {
            let mut queue = shared.queue.lock();
            if !queue.stopping {
                shared.wake.wait_for(&mut queue, every);
            }
            (std::mem::take(&mut queue.dirty), queue.stopping)
        };
        for handle in dirty.values() {
            if let Err(e) = shared.sync(handle) {
                tracing::error!(error = %e, "background fsync failed");
            }
        }
        if stopping {
            return;
        }
    }
}

/// The same outcome for each waiter sharing an fsync (I/O errors do not clone).
fn duplicate(outcome: &Result<()>) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(Error::Io { what, path, source }) => Err(Error::Io {
            what,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        }),
        Err(other) => Err(Error::Io {
            what: "fsync",
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        }),
    }
}
