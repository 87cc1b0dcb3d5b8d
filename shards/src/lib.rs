//! Thread-per-core runtime for Ringtail.
//!
//! Each shard is one thread, pinned to one core with `core_affinity`, running one glommio
//! (io_uring) executor. Shards share nothing on the hot path: work for another shard is a
//! message in that shard's bounded mailbox ([`Mailboxes::send`]).
//!
//! This crate is the only one that names glommio. The rest of the code sees [`spawn`],
//! [`sleep`], [`net`] and the mailbox API, so that a runtime change touches this crate only.
//!
//! Architecture invariant: `shards` knows nothing of Kafka or of partitions; the message type
//! is the caller's.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::SinkExt;

pub mod memlock;
pub mod net;
pub mod retry;
pub mod scatter;
pub mod stats;
pub mod wait;

pub use retry::Backoff;
pub use scatter::scatter;
pub use wait::{every, WaitList};

/// Direct-I/O files of the shard runtime (O_DIRECT through io_uring).
pub mod fs {
    pub use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
}

/// A task running on the current shard; dropping it cancels the task.
pub type Task<T> = glommio::Task<T>;

/// Bound on messages queued to one shard before senders wait.
pub const MAILBOX_MESSAGES_MAX: usize = 1024;

/// The wall clock in milliseconds since the Unix epoch (Kafka's timestamps); 0 if the clock
/// reads before 1970.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Spawns a future on the current shard.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Spawns a future on the current shard and lets it run to completion on its own.
pub fn spawn_detached<T: 'static>(future: impl Future<Output = T> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Sleeps on the current shard's timer wheel (never a thread sleep).
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// Lets the shard's reactor and other tasks run if this task has held the thread for its
/// share (glommio's preemption timer); returns at once otherwise, and off a shard. For long
/// CPU-bound loops, called between steps.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

thread_local! {
    /// Set on shard threads (see [`Runtime::start`]).
    static ON_SHARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Waits `duration`: on a shard, on its timer wheel; on any other thread (start-up, a control
/// thread driving a future with `block_on`), by sleeping the thread. For code that runs in both.
pub async fn pause(duration: Duration) {
    if ON_SHARD.with(|s| s.get()) {
        sleep(duration).await
    } else {
        std::thread::sleep(duration)
    }
}

/// Runs blocking `work` (file writes with fsync, a scan of a mapped file) on a thread of its
/// own and resolves with its result, so that the shard awaiting it never blocks. None if the
/// thread could not start or died.
pub async fn off_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .ok()?;
    rx.await.ok()
}

/// `future`'s output, or None if `duration` passes first (the future is dropped then).
pub async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures::pin_mut!(future);
    let timer = sleep(duration);
    futures::pin_mut!(timer);
    match futures::future::select(future, timer).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

/// Runs `future` to completion on a fresh, unpinned executor thread (tools, benchmarks, tests).
pub fn block_on<T, F, Fut>(io_memory_bytes: usize, make: F) -> Result<T, ShardError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory_bytes)
        .spawn(make)
        .and_then(|h| h.join())
        .map_err(|e| ShardError::Start {
            shard: 0,
            reason: e.to_string(),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0} is gone (stopped or crashed)")]
    Gone(usize),
    #[error("could not start shard {shard}: {reason}")]
    Start { shard: usize, reason: String },
}

/// Senders to every shard's mailbox. Cheap to clone; `Send`, so it travels between shards.
pub struct Mailboxes<M> {
    senders: Vec<mpsc::Sender<M>>,
}

impl<M> Clone for Mailboxes<M> {
    fn clone(&self) -> Self {
        Mailboxes {
            senders: self.senders.clone(),
        }
    }
}

impl<M: Send + 'static> Mailboxes<M> {
    /// Queues `message` for `shard`, waiting while its mailbox is full (backpressure).
    pub async fn send(&self, shard: usize, message: M) -> Result<(), ShardError> {
        let mut sender = self.senders[shard].clone();
        sender
            .send(message)
            .await
            .map_err(|_| ShardError::Gone(shard))
    }

    /// Request/reply: sends the message `make` builds around a reply channel to `shard` and
    /// waits for the answer. `Gone` if the shard is gone or dropped the request unanswered.
    pub async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> M,
    ) -> Result<T, ShardError> {
        let (tx, rx) = oneshot::channel();
        self.send(shard, make(tx)).await?;
        rx.await.map_err(|_| ShardError::Gone(shard))
    }

    /// Queues the message `make` builds for every shard but `except` (a gone shard is skipped:
    /// the process is stopping).
    pub async fn broadcast(&self, except: Option<usize>, make: impl Fn() -> M) {
        for shard in (0..self.senders.len()).filter(|&s| Some(s) != except) {
            let _ = self.send(shard, make()).await;
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

/// Everything a shard's main future gets.
pub struct ShardContext<M> {
    pub id: usize,
    pub count: usize,
    /// Messages for this shard.
    pub inbox: mpsc::Receiver<M>,
    pub mailboxes: Mailboxes<M>,
    /// Resolves when the shard must stop.
    pub stop: oneshot::Receiver<()>,
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub shards: usize,
    /// Registered I/O buffer memory per shard (locked memory); see [`memlock::plan`].
    pub io_memory_bytes: usize,
    pub name: String,
    /// How long an idle shard keeps polling before it parks (sleeps in the kernel). Parking and
    /// waking cost system calls and, in glommio, a process-wide memory barrier (an IPI to every
    /// core running the process); spinning costs a busy core. Zero: park at once.
    pub spin_before_park: std::time::Duration,
}

/// Running shards: stop them and wait for them with [`Runtime::stop_and_join`].
pub struct Runtime {
    threads: Vec<JoinHandle<()>>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Runtime {
    /// Starts `config.shards` pinned executors; each runs `shard_main(ctx)`.
    pub fn start<M, F, Fut>(config: &RuntimeConfig, shard_main: F) -> Result<Runtime, ShardError>
    where
        M: Send + 'static,
        F: Fn(ShardContext<M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        assert!(config.shards > 0, "at least one shard");
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.shards)
            .map(|_| mpsc::channel(MAILBOX_MESSAGES_MAX))
            .unzip();
        let mailboxes = Mailboxes { senders };
        let mut runtime = Runtime {
            threads: Vec::new(),
            stops: Vec::new(),
        };
        for (id, inbox) in receivers.into_iter().enumerate() {
            let (stop_tx, stop) = oneshot::channel();
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let ctx = ShardContext {
                id,
                count: config.shards,
                inbox,
                mailboxes: mailboxes.clone(),
                stop,
            };
            let main = shard_main.clone();
            let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&format!("{}-shard-{id}", config.name))
                .io_memory(config.io_memory_bytes);
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let handle = builder
                .spawn(move || async move {
                    ON_SHARD.with(|s| s.set(true));
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(
                                shard = id,
                                core = core.id,
                                "could not pin shard to its core"
                            );
                        }
                    }
                    main(ctx).await
                })
                .map_err(|e| ShardError::Start {
                    shard: id,
                    reason: e.to_string(),
                })?;
            runtime.stops.push(stop_tx);
            runtime.threads.push(std::thread::spawn(move || {
                if let Err(e) = handle.join() {
                    tracing::error!(shard = id, error = %e, "shard executor failed");
                }
            }));
        }
        Ok(runtime)
    }

    /// Tells every shard to stop, then waits for all of them.
    pub fn stop_and_join(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Every shard sends one message to every shard (itself included); each answers back.
    #[test]
    fn shards_exchange_messages_and_stop() {
        let delivered = Arc::new(AtomicUsize::new(0));
        let config = RuntimeConfig {
            shards: 3,
            io_memory_bytes: 512 * 1024,
            name: "test".into(),
            spin_before_park: std::time::Duration::from_micros(50),
        };
        let counter = delivered.clone();
        let runtime = Runtime::start(
            &config,
            move |mut ctx: ShardContext<(usize, oneshot::Sender<usize>)>| {
                let counter = counter.clone();
                async move {
                    let me = ctx.id;
                    let server = spawn(async move {
                        while let Some((from, reply)) = ctx.inbox.next().await {
                            let _ = reply.send(from * 100 + me);
                        }
                    });
                    for to in 0..ctx.count {
                        let (tx, rx) = oneshot::channel();
                        ctx.mailboxes.send(to, (me, tx)).await.unwrap();
                        assert_eq!(rx.await.unwrap(), me * 100 + to);
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = ctx.stop.await;
                    drop(server);
                }
            },
        )
        .unwrap();
        for _ in 0..500 {
            if delivered.load(Ordering::SeqCst) == 9 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        runtime.stop_and_join();
        assert_eq!(delivered.load(Ordering::SeqCst), 9);
    }
}
